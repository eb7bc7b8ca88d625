"""The SAM Audio Judge (``model.sam_audio.judge``) against the reference.

* ``tests/fixtures/sam_audio_judge`` holds a tiny random judge in the released layout and the
  outputs of the reference code on it (README.md there says how they were recorded): processor
  outputs, every intermediate of the model, the four scores, and the reference ``JudgeRanker``'s
  scores for 2 items x 3 candidates. The port loads the same files and must agree within 1e-4
  (it agrees within ~2e-6: float32 rounding).
* The reference quirk (its transformers never see the padding mask) is pinned by the
  ``second_alone`` case: the same clip scores differently alone and padded in a batch.
* Reranking: ``SAMAudio.separate(..., reranking_candidates=3, ranker=JudgeRanker)`` on the tiny
  separation model keeps, per item, the candidate the judge scores highest when each candidate
  is scored separately.
* Loading: a missing folder, cache miss or weight file is a one-line SAMAudioLoadError.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_sam_audio_rerank import K, _candidate, _inputs
from test_sam_audio_tiny import (  # noqa: F401 - stub_components is an autouse fixture
    needs_tokenizer,
    stub_components,
    tiny_model,
    two_item_batch,
)

from model.sam_audio import SAMAudioInputError, SAMAudioLoadError
from model.sam_audio.errors import ConfigError
from model.sam_audio.judge import (
    JudgeRanker,
    JudgeScores,
    SAMAudioJudge,
    SAMAudioJudgeConfig,
    judge_waveforms,
    load_judge,
)

FIXTURE = Path(__file__).parent / "fixtures" / "sam_audio_judge"
ATOL = 1e-4
SR = 48_000
SCORES = ("overall", "recall", "precision", "faithfulness")
INTERMEDIATES = (
    "text_hidden",
    "text_pooled",
    "text_features",
    "text_embeds",
    "codec_features",
    "data_proj",
    "transformer_hidden",
    "transformer_pooled",
    "audio_features",
    "audio_and_text",
    "finetune_input",
    "finetune_hidden",
    "frame_scores",
)
PROCESSED = ("input_ids", "attention_mask", "input_values", "padding_mask", "separated_values")


@pytest.fixture(scope="module", autouse=True)
def single_thread(one_torch_thread):
    """Small tensors: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE / "expected.pt", weights_only=False)


@pytest.fixture(scope="module")
def inputs():
    return torch.load(FIXTURE / "inputs.pt", weights_only=False)


@pytest.fixture(scope="module")
def judge() -> SAMAudioJudge:
    return load_judge(FIXTURE)


def _process(judge, case):
    return judge.processor(
        text=case["descriptions"],
        input_audio=case["input_audio"],
        separated_audio=case["separated_audio"],
        sampling_rate=SR,
    )


# ---------------------------------------------------------------------------------------------
# Against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["one", "batch", "second_alone"])
def test_processor_equals_reference(judge, inputs, expected, case):
    """Tokens, reflect- and zero-padded waveforms and the per-sample mask, exactly."""
    got = _process(judge, inputs["cases"][case])
    want = expected["cases"][case]
    for key in PROCESSED:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("case", ["one", "batch", "second_alone"])
def test_judge_equals_reference(judge, inputs, expected, case):
    """Every intermediate and the four scores within 1e-4 of the reference (fp32, CPU)."""
    want = expected["cases"][case]
    out = judge(**_process(judge, inputs["cases"][case]))
    for key in INTERMEDIATES:
        got = getattr(out, key)
        assert got.shape == want[key].shape, key
        torch.testing.assert_close(got, want[key], rtol=0, atol=ATOL, msg=key)
    for name in SCORES:
        torch.testing.assert_close(
            getattr(out.scores, name), want[name][:, 0], rtol=0, atol=ATOL, msg=name
        )
    if case == "batch":  # the padded item's mean skips its 5 padded frames
        assert out.frame_mask.sum(1).tolist() == [13, 8]


def test_padding_reaches_the_transformers_as_in_the_reference(expected):
    """The reference transformers ignore the padding mask, so the second clip of ``batch``
    (padded from 8 to 13 frames) scores differently from the same clip alone. The port
    reproduces both (test above); the difference is far above the tolerance, so a port that
    masked the transformers would fail there."""
    batch, alone = expected["cases"]["batch"], expected["cases"]["second_alone"]
    for name in SCORES:
        assert (batch[name][1] - alone[name][0]).abs().max() > 20 * ATOL, name


def test_ranker_equals_reference(judge, inputs, expected):
    """The reference JudgeRanker's scores for 2 items x 3 candidates, and the same choice."""
    r = inputs["ranker"]
    k = r["k"]
    scores = JudgeRanker(judge)(
        extracted_audio=r["candidates"],
        input_audio=[m[None].expand(k, -1) for m in r["mixtures"]],
        descriptions=r["descriptions"],
        sample_rate=SR,
        spans=None,  # other keywords of the ranker contract are ignored
    )
    want = expected["ranker"]["scores"]
    assert scores.shape == (2, k)
    torch.testing.assert_close(scores, want, rtol=0, atol=ATOL)
    assert scores.argmax(1).tolist() == want.argmax(1).tolist()
    # the choice is not decided by rounding: best and second best are far apart
    top2 = want.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1]) > 20 * ATOL).all(), want


def test_judge_waveforms(judge, inputs, expected):
    """The CLI helper: one (mixture, separated, text) triple -> the four scores."""
    case = inputs["cases"]["one"]
    mix, sep = case["input_audio"][0][0], case["separated_audio"][0][0]  # 1-D
    scores = judge_waveforms(judge, mix, sep, SR, case["descriptions"][0])
    assert isinstance(scores, JudgeScores)
    want = expected["cases"]["one"]
    got = scores.to_dict()
    assert list(got) == list(SCORES)
    for name in SCORES:
        assert got[name] == pytest.approx(float(want[name][0, 0]), abs=ATOL)
    # a stereo file with equal channels is the same clip
    stereo = judge_waveforms(judge, mix.expand(2, -1), sep.expand(2, -1), SR, "dog barking")
    assert stereo.to_dict() == pytest.approx(got, abs=1e-6)
    # another rate is resampled to the judge's: a 24 kHz copy scores close to the original
    half = judge_waveforms(judge, mix[::2].clone(), sep[::2].clone(), SR // 2, "dog barking")
    assert all(torch.isfinite(getattr(half, n)).all() for n in SCORES)
    with pytest.raises(SAMAudioInputError, match="same length"):
        judge_waveforms(judge, mix, sep[:-100], SR, "dog barking")


# ---------------------------------------------------------------------------------------------
# Reranking SAM Audio's candidates with the judge
# ---------------------------------------------------------------------------------------------


@needs_tokenizer
def test_reranking_with_the_judge_keeps_its_best_candidate(judge):
    """``separate(..., reranking_candidates=3, ranker=JudgeRanker)`` scores the 3 candidates of
    each item and keeps the highest; scoring each candidate on its own (one separate run per
    candidate, then the judge on those targets) gives the same scores and the same choice."""
    model = tiny_model()
    ranker = JudgeRanker(judge)
    batch = two_item_batch(model)
    noise, message = _inputs(model, batch, K, seed=3)
    res = model.separate(
        batch, noise=noise, watermark_message=message, reranking_candidates=K, ranker=ranker
    )
    assert res.ranker == "judge" and res.scores.shape == (2, K)

    ref = two_item_batch(model)
    sizes = (ref.sizes * model.hop_length).int()
    mixtures = [audio[:, : int(n)] for audio, n in zip(ref.audios, sizes, strict=True)]
    per = [_candidate(model, lambda: two_item_batch(model), noise, message, K, j) for j in range(K)]
    separately = torch.stack(
        [
            ranker(
                extracted_audio=[p.target[b][None] for b in range(2)],
                input_audio=mixtures,
                descriptions=list(ref.descriptions),
                sample_rate=SR,
            )[:, 0]
            for p in per
        ],
        dim=1,
    )
    torch.testing.assert_close(res.scores, separately, rtol=0, atol=ATOL)
    deviation = float((res.scores - separately).abs().max())  # batch of 6 vs 2: rounding
    assert res.chosen.tolist() == separately.argmax(dim=1).tolist()
    for b in range(2):
        best = int(res.chosen[b])
        torch.testing.assert_close(res.target[b], per[best].target[b], rtol=0, atol=1e-6)
        torch.testing.assert_close(res.residual[b], per[best].residual[b], rtol=0, atol=1e-6)
    # the test means something: the kept candidate is not always the first, and the best and
    # second best scores lie far apart compared with how much the two scorings differ (the
    # tiny model's quiet, noise-like candidates are close for the random judge: ~1e-4 apart)
    top2 = separately.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1]) > max(20 * deviation, 2e-5)).all(), (separately, deviation)
    assert res.chosen.tolist() != [0, 0], separately


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_state_dict_is_the_released_layout(judge):
    """The module's state dict has exactly the reference's keys and shapes."""
    released = load_file(str(FIXTURE / "model.safetensors"))
    own = judge.state_dict()
    assert set(own) == set(released)
    assert all(own[k].shape == released[k].shape for k in own)


def _copy_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "judge"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("*.pt", "*.py", "*.md"))
    return folder


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_missing_checkpoint_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SAMAudioLoadError) as err:
        load_judge(tmp_path / "no-such-judge")
    assert "does not exist" in _one_line(err)
    with pytest.raises(SAMAudioLoadError) as err:
        load_judge("facebook/sam-audio-judge", cache_dir=tmp_path / "hub")
    msg = _one_line(err)
    assert "local Hugging Face cache" in msg and "huggingface-cli download" in msg
    folder = _copy_fixture(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(SAMAudioLoadError) as err:
        load_judge(folder)
    assert "model.safetensors" in _one_line(err)
    (folder / "config.json").unlink()
    with pytest.raises(SAMAudioLoadError) as err:
        load_judge(folder)
    assert "config.json" in _one_line(err)
    # a ranker naming a missing judge is built (a config can name it) and fails when scoring
    ranker = JudgeRanker(tmp_path / "no-such-judge")
    with pytest.raises(SAMAudioLoadError, match="does not exist"):
        ranker(
            extracted_audio=[torch.zeros(2, 4000)],
            input_audio=[torch.zeros(2, 4000)],
            descriptions=["dog"],
        )


def test_weights_that_do_not_match_are_an_error(tmp_path):
    folder = _copy_fixture(tmp_path)
    sd = load_file(str(folder / "model.safetensors"))
    sd.pop("finetune_transformer.layers.1.mlp.up_proj.weight")
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(SAMAudioLoadError, match=r"finetune_transformer\.layers\.1\.mlp\.up_proj"):
        load_judge(folder)


def test_repo_id_resolves_from_the_local_cache(tmp_path, monkeypatch, expected):
    """A Hub id is read from the local cache (revision ``sam_audio``), offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hub" / "models--facebook--sam-audio-judge"
    commit = "0" * 40
    snap = repo / "snapshots" / commit
    shutil.copytree(FIXTURE, snap, ignore=shutil.ignore_patterns("*.pt", "*.py", "*.md"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "sam_audio").write_text(commit)
    judge = load_judge("sam-audio-judge", cache_dir=tmp_path / "hub")
    assert isinstance(judge, SAMAudioJudge)


def test_config_fields_are_checked():
    data = json.loads((FIXTURE / "config.json").read_text())
    cfg = SAMAudioJudgeConfig.from_dict(data)
    assert cfg.hop_length == 1920 and cfg.nth_text_layer == 2
    # RoPE base: max(10000, 2 * max_position_embeddings), not rope_theta (as the reference)
    assert cfg.transformer.rope_theta == 12000 and cfg.finetune_transformer.rope_theta == 10000
    with pytest.raises(ConfigError, match="bottleneck"):
        SAMAudioJudgeConfig.from_dict({**data, "bottleneck": 3})
    with pytest.raises(ConfigError, match="audio_codec.encoder_dims"):
        SAMAudioJudgeConfig.from_dict({**data, "audio_codec": {"encoder_dims": 2}})
