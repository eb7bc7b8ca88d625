"""SAM Audio's CLAP ranker (``model/sam_audio/clap.py``) against the reference.

``tests/fixtures/sam_audio_clap`` holds a tiny random laion CLAP (real 48 kHz front end, small
HTSAT and RoBERTa) in the layout of laion's ``630k-best.pt``, a word-level stand-in for
roberta-base's tokenizer, and what the reference ``sam_audio/ranking/clap.py`` (sam-audio
68b48d48, laion_clap 1.1.7) computed from it: tokens, log-mel features, HTSAT's pooled output,
audio and text embeddings, scores [batch, k] (see the fixture's README). The port loads the
laion checkpoint, converting its keys to transformers' ``ClapModel`` at load time, and must
match every tensor within 1e-4 in float32 (tokens exactly).

Then: reranking with k = 3 through ``SAMAudio.separate(..., ranker=ClapRanker)`` on the tiny
SAM Audio of test_sam_audio_tiny keeps the candidate the ranker scores best when each candidate
is scored on its own; and a missing checkpoint or tokenizer is a one-line ``ConfigError``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sam_audio_rerank import SR, K, _candidate, _inputs
from test_sam_audio_tiny import (  # noqa: F401 - stub_components is an autouse fixture
    needs_tokenizer,
    stub_components,
    tiny_model,
    two_item_batch,
)

from model.sam_audio.clap import (
    ClapRanker,
    LogMelFrontEnd,
    _build_model,
    convert_laion_state_dict,
    laion_clap_config,
    load_clap_ranker,
    slaney_mel_filterbank,
    stft_kernels,
)
from model.sam_audio.errors import ConfigError, SAMAudioInputError, SAMAudioLoadError

FIXTURE = Path(__file__).parent / "fixtures" / "sam_audio_clap"
MODEL = FIXTURE / "model"
TOL = 1e-4
CASES = ("short", "long", "resample")


@pytest.fixture(scope="module", autouse=True)
def single_thread(one_torch_thread):
    """Small model, one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def data():
    return (
        torch.load(FIXTURE / "inputs.pt", weights_only=True),
        torch.load(FIXTURE / "expected.pt", weights_only=True),
    )


@pytest.fixture(scope="module")
def ranker():
    return load_clap_ranker(MODEL)


def candidates(case: dict) -> list[torch.Tensor]:
    """The float32 candidates of a fixture case (the recipe of make_fixture.candidates):
    int16 / 32768 times a power-of-two gain; the long case tiles a 1 s chunk with one gain per
    second and its candidate 1 is candidate 0 reversed."""
    if "chunk" in case:
        n = int(case["seconds"] * 48000)
        chunk = case["chunk"].float() / 32768
        tiled = torch.cat([chunk * g for g in case["gains"]])[:n]
        return [torch.stack([tiled, tiled.flip(0)])]
    return [
        (p.float() / 32768) * torch.tensor(gain)[:, None]
        for p, gain in zip(case["pcm"], case["gain"], strict=True)
    ]


class RecordingRNG:
    """numpy RandomState that records its randint calls."""

    def __init__(self, seed: int) -> None:
        self.state = np.random.RandomState(seed)
        self.calls: list[tuple[tuple, int]] = []

    def randint(self, low: int, high: int) -> int:
        value = self.state.randint(low, high)
        self.calls.append(((low, high), int(value)))
        return value


def dev(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


# ---------------------------------------------------------------------------------------------
# Port vs reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_matches_reference(ranker, data, name):
    inputs, expected = data
    case, exp = inputs[name], expected["cases"][name]
    audio, sr = candidates(case), case["sample_rate"]

    tokens = ranker.tokenize(case["descriptions"])
    assert torch.equal(tokens["input_ids"], exp["input_ids"])
    assert torch.equal(tokens["attention_mask"], exp["attention_mask"])

    # the crops: same calls and values as the reference's np.random.randint (seeded alike)
    rng = RecordingRNG(case["np_seed"])
    ranker.rng = rng
    try:
        features = ranker.audio_features(audio, sr)
    finally:
        ranker.rng = None
    assert [list(a) for a, _ in rng.calls] == exp["crop_calls"]
    assert [v for _, v in rng.calls] == exp["crops"]
    k = audio[0].shape[0]
    assert features.shape == (len(audio) * k, 1, 1001, 64)
    deviations = {"mel": dev(features[exp["mel_rows"], 0], exp["mel"])}

    embeds, htsat = ranker.audio_embeddings(features)
    text, pooled = ranker.text_embeddings(case["descriptions"])
    deviations.update(
        htsat=dev(htsat, exp["htsat_embedding"]),
        audio_embeds=dev(embeds, exp["audio_embeds"]),
        text_pooled=dev(pooled, exp["text_pooled"]),
        text_embeds=dev(text, exp["text_embeds"]),
    )
    # the ranker as SAMAudio calls it, crops from numpy's global RNG as in the reference
    np.random.seed(case["np_seed"])
    scores = ranker(
        extracted_audio=audio,
        descriptions=list(case["descriptions"]),
        sample_rate=sr,
        input_audio=audio,  # keywords other rankers take are ignored
        spans=None,
    )
    assert scores.shape == (len(audio), k) == exp["scores"].shape
    deviations["scores"] = dev(scores, exp["scores"])
    assert all(v <= TOL for v in deviations.values()), deviations


def test_the_crop_matters(ranker, data):
    """The long case would catch a wrong crop: another seed moves the embeddings by far more
    than the tolerance."""
    inputs, expected = data
    case, exp = inputs["long"], expected["cases"]["long"]
    ranker.rng = np.random.RandomState(case["np_seed"] + 1)
    try:
        embeds, _ = ranker.audio_embeddings(ranker.audio_features(candidates(case)))
    finally:
        ranker.rng = None
    assert dev(embeds, exp["audio_embeds"]) > 10 * TOL


def test_front_end_computed_kernels(data):
    """Without the checkpoint's kernels the front end computes torchlibrosa's: the STFT basis
    within float32 rounding, the Slaney mel matrix exactly; the log-mel stays within 1e-4."""
    state = torch.load(MODEL / "clap.pt", weights_only=True)["state_dict"]
    real, imag = stft_kernels(1024)
    prefix = "module.audio_branch."
    assert dev(real, state[prefix + "spectrogram_extractor.stft.conv_real.weight"]) < 1e-7
    assert dev(imag, state[prefix + "spectrogram_extractor.stft.conv_imag.weight"]) < 1e-7
    mel = slaney_mel_filterbank(48000, 1024, 64, 50, 14000)
    assert torch.equal(mel, state[prefix + "logmel_extractor.melW"])
    inputs, expected = data
    case, exp = inputs["short"], expected["cases"]["short"]
    ranker = ClapRanker(load_clap_ranker(MODEL).parts)
    ranker.parts.front_end = LogMelFrontEnd()
    features = ranker.audio_features(candidates(case), case["sample_rate"])
    assert dev(features[exp["mel_rows"], 0], exp["mel"]) <= TOL


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion
# ---------------------------------------------------------------------------------------------


def test_conversion_covers_the_model():
    """Every ClapModel weight comes from the checkpoint; what is dropped is named; the fused
    qkv is split in query/key/value order; with or without the ``module.`` prefix alike."""
    state = torch.load(MODEL / "clap.pt", weights_only=True)["state_dict"]
    converted, front, dropped = convert_laion_state_dict(state)
    assert set(front) == {"conv_real.weight", "conv_imag.weight", "melW"}

    def family(key: str) -> str:
        if key.endswith("attn_mask"):
            return "attn_mask"
        if key.startswith(("audio_transform.", "text_transform.")):
            return key.split(".")[0]
        return key.rsplit(".", 1)[0]

    assert {family(k) for k in dropped} == {
        "attn_mask",
        "audio_transform",
        "text_transform",
        "audio_branch.tscam_conv",
        "audio_branch.head",
    }  # (text_branch.embeddings.position_ids is removed first, as the reference does)
    assert sum("attn_mask" in k for k in dropped) == 3  # shifted blocks of stages 0-2
    qkv = state["module.audio_branch.layers.1.blocks.0.attn.qkv.weight"]
    enc = "audio_model.audio_encoder.layers.1.blocks.0.attention.self."
    d = qkv.shape[0] // 3
    for i, part in enumerate(("query", "key", "value")):
        assert torch.equal(converted[enc + part + ".weight"], qkv[i * d : (i + 1) * d])
    bare = {k[len("module.") :]: v for k, v in state.items()}
    again, _, _ = convert_laion_state_dict(bare)
    assert again.keys() == converted.keys()
    laion = json.loads((MODEL / "laion_model_config.json").read_text())
    model = _build_model(laion_clap_config(laion), converted)
    own = model.state_dict()
    for key, value in converted.items():
        assert torch.equal(own[key], value), key


def test_conversion_errors_name_the_keys():
    state = torch.load(MODEL / "clap.pt", weights_only=True)["state_dict"]
    with pytest.raises(SAMAudioLoadError, match="audio_branch.layers.0.blocks.0.attn.extra"):
        convert_laion_state_dict(
            {**state, "module.audio_branch.layers.0.blocks.0.attn.extra": torch.zeros(1)}
        )
    converted, _, _ = convert_laion_state_dict(state)
    laion = json.loads((MODEL / "laion_model_config.json").read_text())
    with pytest.raises(SAMAudioLoadError, match="mis-shaped .*word_embeddings"):
        _build_model(
            laion_clap_config({**laion, "roberta": {**laion["roberta"], "vocab_size": 9}}),
            converted,
        )
    del converted["audio_projection.linear2.bias"]
    with pytest.raises(SAMAudioLoadError, match="missing 1: audio_projection.linear2.bias"):
        _build_model(laion_clap_config(laion), converted)


def test_default_config_is_htsat_tiny_and_roberta_base():
    cfg = laion_clap_config()
    a, t = cfg.audio_config, cfg.text_config
    assert (a.patch_embeds_hidden_size, list(a.depths), list(a.num_attention_heads)) == (
        96,
        [2, 2, 6, 2],
        [4, 8, 16, 32],
    )
    assert (a.hidden_size, cfg.projection_dim, a.num_mel_bins, a.spec_size) == (768, 512, 64, 256)
    assert (t.vocab_size, t.hidden_size, t.num_hidden_layers, t.layer_norm_eps) == (
        50265,
        768,
        12,
        1e-5,
    )
    with pytest.raises(ConfigError, match="embed_dim"):
        laion_clap_config({"embed_dim": 512})


# ---------------------------------------------------------------------------------------------
# Loading errors and config entries
# ---------------------------------------------------------------------------------------------


def _one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_missing_checkpoint_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_clap_ranker(tmp_path / "630k-best.pt")
    assert "CLAP checkpoint not found" in _one_line(err) and "630k-best.pt" in str(err.value)
    # a config entry loads without its weights; using it says what to set
    lazy = ClapRanker.from_config({"kind": "clap", "checkpoint": None})
    with pytest.raises(ConfigError) as err:
        lazy(extracted_audio=[torch.zeros(2, 4800)], descriptions=["a dog"])
    assert "'checkpoint'" in _one_line(err)
    missing = ClapRanker.from_config({"kind": "clap", "checkpoint": "nope/clap.pt"}, tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        missing.load()
    with pytest.raises(ConfigError, match="unknown clap ranker field"):
        ClapRanker.from_config({"kind": "clap", "checkpoint": "x.pt", "device": "cpu"})
    # a checkpoint without its tokenizer
    shutil.copy(MODEL / "clap.pt", tmp_path / "clap.pt")
    with pytest.raises(ConfigError) as err:
        load_clap_ranker(tmp_path / "clap.pt")
    assert "tokenizer" in _one_line(err)


def test_config_entry_with_relative_checkpoint(ranker, data):
    lazy = ClapRanker.from_config({"kind": "clap", "checkpoint": "model/clap.pt"}, FIXTURE)
    inputs, expected = data
    case = inputs["short"]
    scores = lazy(
        extracted_audio=candidates(case), descriptions=case["descriptions"], sample_rate=48000
    )
    assert dev(scores, expected["cases"]["short"]["scores"]) <= TOL
    with pytest.raises(SAMAudioInputError, match="one description per item"):
        ranker(extracted_audio=candidates(case), descriptions=["only one"])


# ---------------------------------------------------------------------------------------------
# Reranking through SAMAudio.separate
# ---------------------------------------------------------------------------------------------


@needs_tokenizer
def test_reranking_keeps_the_candidate_clap_scores_best(ranker):
    """k = 3 on the tiny SAM Audio: the scores separate gets equal each candidate scored on its
    own, and the kept target is the best of them."""
    model = tiny_model()
    batch = two_item_batch(model)
    descriptions = list(batch.descriptions)
    # seed 4: the best candidate is not the first for either item, by a margin of 1e-3
    noise, message = _inputs(model, batch, K, seed=4)
    res = model.separate(
        batch, noise=noise, watermark_message=message, reranking_candidates=K, ranker=ranker
    )
    assert res.ranker == "clap" and res.scores.shape == (2, K)
    per = [_candidate(model, lambda: two_item_batch(model), noise, message, K, j) for j in range(K)]
    separately = torch.stack(
        [
            ranker(
                extracted_audio=[p.target[b][None] for b in range(2)],
                descriptions=descriptions,
                sample_rate=SR,
            )[:, 0]
            for p in per
        ],
        dim=1,
    )
    assert torch.allclose(res.scores, separately, atol=1e-5), (res.scores, separately)
    assert res.chosen.tolist() == separately.argmax(dim=1).tolist()
    for b in range(2):
        best = int(res.chosen[b])
        assert torch.allclose(res.target[b], per[best].target[b], atol=1e-6)
        assert torch.allclose(res.residual[b], per[best].residual[b], atol=1e-6)
    # the test means something: the best beats the runner-up by far more than the rounding of
    # scoring 3 candidates in one batch, and the kept one is not always the first
    top2 = separately.sort(dim=1, descending=True).values[:, :2]
    assert (top2[:, 0] - top2[:, 1]).min() > 1e-4, separately
    assert res.chosen.tolist() != [0, 0], separately
