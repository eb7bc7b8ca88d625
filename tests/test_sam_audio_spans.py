"""SAM Audio span prediction (``model.sam_audio.spans``, ``separate(..., predict_spans=True)``).

* Against the reference: ``tests/fixtures/sam_audio_spans`` holds a tiny random PE-A-Frame in
  the released perception_models layout and every intermediate and final output of the
  reference code on it (README.md there says how it was recorded). The port loads the same
  files and must agree within 1e-5 (floats) and exactly (token ids, spans, anchor tensors).
* The reference quirk: the reference builds the forward arguments before ``predict_spans``
  replaces the batch's anchors, so the spans do not reach the separation. The fixture records
  what the reference ``separate`` passed to ``forward``; the port is checked to do the same by
  default and to condition on the spans with ``apply_predicted_spans=True``.
* Loading: folder, local HF cache, one-line errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_sam_audio_tiny import (  # noqa: F401 - stub_components is an autouse fixture
    needs_tokenizer,
    stub_components,
    tiny_model,
)

from model.sam_audio import SAMAudioLoadError, SAMAudioProcessor
from model.sam_audio.processor import Batch
from model.sam_audio.spans import (
    PEAudioFrameSpanPredictor,
    SpanPredictorConfig,
    spans_from_probs,
)

SPANS = Path(__file__).parent / "fixtures" / "sam_audio_spans"
ATOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def single_thread(one_torch_thread):
    """Small tensors: one torch thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def expected():
    return torch.load(SPANS / "expected.pt", weights_only=False)


@pytest.fixture(scope="module")
def inputs():
    return torch.load(SPANS / "inputs.pt", weights_only=False)


@pytest.fixture(scope="module")
def predictor():
    return PEAudioFrameSpanPredictor.from_pretrained(SPANS)


def as_lists(anchors):
    return [[list(a) for a in item] for item in anchors]


def reference_batch(inp) -> Batch:
    """The batch the recording script built (zeros as audio; only sizes and mask matter)."""
    n = len(inp["descriptions"])
    return Batch(
        audios=torch.zeros(n, 1, int(inp["wav_sizes"].max())),
        sizes=torch.ceil(inp["wav_sizes"] / 1920),
        wav_sizes=inp["wav_sizes"],
        descriptions=inp["descriptions"],
        hop_length=1920,
        audio_sampling_rate=48000,
        anchors=None,
        audio_pad_mask=inp["audio_pad_mask"],
    )


# ---------------------------------------------------------------------------------------------
# The port against the reference outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["one", "batch"])
def test_matches_reference_outputs(predictor, inputs, expected, name):
    inp, exp = inputs[name], expected["cases"][name]
    tokens = predictor.tokenize(inp["descriptions"])
    assert torch.equal(tokens["input_ids"], exp["input_ids"])
    assert torch.equal(tokens["attention_mask"], exp["attention_mask"])
    with torch.inference_mode():
        out = predictor(inp["audio_features"][:, :, :128], inp["audio_pad_mask"], **tokens)
        _, _, embedded = predictor.audio_model.audio_transformer(
            out.data_proj, attention_mask=inp["audio_pad_mask"]
        )
    got = {
        "data_proj": out.data_proj,
        "embeddings": embedded,
        "audio_last_hidden_state": out.audio_last_hidden_state,
        "audio_pooler_output": out.audio_pooler_output,
        "text_hidden": out.text_hidden,
        "text_pooled": out.text_pooled,
        "text_embeds": out.text_embeds,
        "audio_embeds": out.audio_embeds,
        "logits": out.logits,
        "probs": out.probs,
    }
    for key, value in got.items():
        ref = exp[key]
        assert value.shape == ref.shape, key
        err = (value - ref).abs().max().item()
        assert err <= ATOL, f"{key}: max |port - reference| = {err:.3g}"
    assert out.spans == exp["spans"]  # exact, including the float32 times
    # the fixture keeps every probability >= 0.01 away from the threshold, so exact span
    # equality is not luck at 1e-5
    assert (exp["probs"] - 0.3).abs().min() > 0.01


@pytest.mark.parametrize("name", ["one", "batch"])
def test_anchors_match_reference_predict_spans(predictor, inputs, expected, name):
    """SAMAudio.predict_spans of the reference (as recorded): '+' anchors from the first 128
    feature channels, then Batch.process_anchors; anchor ids and per-frame alignment equal."""
    inp, exp = inputs[name], expected["cases"][name]
    anchors = predictor.predict_anchors(
        inp["descriptions"], inp["audio_features"], inp["audio_pad_mask"]
    )
    assert as_lists(anchors) == exp["anchors"]
    batch = reference_batch(inp)
    batch.process_anchors(anchors)
    assert torch.equal(batch.anchor_ids, exp["anchor_ids"])
    assert torch.equal(batch.anchor_alignment, exp["anchor_alignment"])


def test_first_128_channels_are_read(predictor, inputs, expected):
    """The fixture's second feature half differs from the first: reading it would change
    the spans (the reference slices audio_features[:, :, :128])."""
    inp = inputs["batch"]
    swapped = torch.cat([inp["audio_features"][..., 128:], inp["audio_features"][..., :128]], -1)
    anchors = predictor.predict_anchors(inp["descriptions"], swapped, inp["audio_pad_mask"])
    assert as_lists(anchors) != expected["cases"]["batch"]["anchors"]


def test_float32_span_times_shift_anchor_frames(expected):
    """Recorded reference behaviour: 1.12 s comes out as float32 1.1200000047683716, whose
    anchor frame is ceil(28.0000001) = 29, so the '+' run covers one frame more."""
    spans = expected["cases"]["batch"]["spans"][0]
    assert spans[0][1] == pytest.approx(1.12, abs=1e-6) and spans[0][1] > 1.12
    alignment = expected["cases"]["batch"]["anchor_alignment"][0]
    assert alignment[:29].eq(2).all() and alignment[29] != 2


def test_spans_from_probs_edges():
    probs = torch.tensor(
        [
            [0.9, 0.9, 0.1, 0.31, 0.3, 0.5],  # run at the start, one-frame run, run at the end
            [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # nothing
        ]
    )
    spans = spans_from_probs(probs, 0.3, 1920, 48000)
    flat = [t for span in spans[0] for t in span]
    assert flat == pytest.approx([0.0, 0.08, 0.12, 0.16, 0.2, 0.24])
    assert spans[1] == []
    # padded frames are not masked out (reference): a run may end inside the padding
    assert spans_from_probs(torch.tensor([[0.1, 0.9, 0.9]]), 0.3, 1920, 48000) == [
        [[0.03999999910593033, 0.11999999731779099]]
    ]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_released_layout_loads_and_skips_the_dac_encoder():
    keys = load_file(str(SPANS / "model.safetensors")).keys()
    assert any(k.startswith("audio_model.dac_vae_encoder.") for k in keys)
    assert "audio_model.audio_transformer.embeddings.cls_token" in keys
    model = PEAudioFrameSpanPredictor.from_pretrained(SPANS)
    assert not any(k.startswith("audio_model.dac_vae_encoder.") for k in model.state_dict())


def test_resolves_from_local_hf_cache_at_the_reference_revision(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    commit = "1" * 40
    repo = cache / "models--facebook--pe-a-frame-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "perception_models").write_text(commit)
    shutil.copytree(SPANS, repo / "snapshots" / commit)
    model = PEAudioFrameSpanPredictor.from_pretrained("pe-a-frame-tiny", cache_dir=cache)
    assert model.config.nth_text_layer == 2


def test_missing_model_is_one_clear_line(tmp_path):
    with pytest.raises(SAMAudioLoadError) as err:
        PEAudioFrameSpanPredictor.from_pretrained("pe-a-frame-nowhere", cache_dir=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "facebook/pe-a-frame-nowhere" in msg and "huggingface-cli download" in msg


def test_mismatched_weights_name_the_key(tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(SPANS, folder)
    state = load_file(str(folder / "model.safetensors"))
    del state["logit_bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(SAMAudioLoadError, match="logit_bias"):
        PEAudioFrameSpanPredictor.from_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# separate(..., predict_spans=True) on the tiny SAM Audio (stub codec, see test_sam_audio_tiny)
# ---------------------------------------------------------------------------------------------


def tiny_predictor(codebook_dim: int) -> PEAudioFrameSpanPredictor:
    """A random span predictor for the tiny model's 2C feature channels, with the fixture's
    tokenizer and a logit affine that gives several spans."""
    data = json.loads((SPANS / "config.json").read_text())
    data["audio_model"]["dac_vae_encoder"]["codebook_dim"] = codebook_dim
    torch.manual_seed(3)
    model = PEAudioFrameSpanPredictor(
        SpanPredictorConfig.from_dict(data),
        PEAudioFrameSpanPredictor.from_pretrained(SPANS).tokenizer,
    )
    with torch.no_grad():
        model.logit_scale.fill_(40.0)
        model.logit_bias.fill_(0.0)
    return model.eval()


def spans_batch(model, anchors=None):
    proc = SAMAudioProcessor.from_config(model.config)
    g = torch.Generator().manual_seed(4)
    a1 = torch.randn(1, 48000 * 2, generator=g) * 0.1
    a2 = torch.randn(1, 30000, generator=g) * 0.1
    return proc(descriptions=["a dog barking", "car horn"], audios=[a1, a2], anchors=anchors)


@needs_tokenizer
def test_separate_predict_spans_reference_behaviour_and_fixed_option(expected):
    model = tiny_model()
    width = 2 * model.config.audio_codec.codebook_dim  # fewer than 128 channels: all of them
    model.use_span_predictor(tiny_predictor(min(128, width)))
    wm = torch.randint(0, 2, (4, 16), generator=torch.Generator().manual_seed(0)).float()

    plain = model.separate(spans_batch(model), watermark_message=wm)
    batch = spans_batch(model)
    spanned = model.separate(batch, noise=plain.noise, watermark_message=wm, predict_spans=True)
    assert spanned.spans is not None and any(spanned.spans) and not spanned.spans_applied
    assert as_lists(batch.anchors) == as_lists(spanned.spans)  # the batch is updated in place
    # the reference quirk: the output is that of the run without predict_spans
    for x, y in zip(plain.target + plain.residual, spanned.target + spanned.residual, strict=True):
        assert torch.equal(x, y)
    # what the recorded reference separate did: forward saw the null anchors for every step
    for k in ("k1", "k2"):
        quirk = expected["quirk"][k]
        assert quirk["forward_calls"] == 32
        assert quirk["forward_anchor_ids_all_null"] and quirk["forward_anchor_alignment_all_null"]
        assert quirk["batch_anchors_after"] == expected["cases"]["batch"]["anchors"]

    # sonomask's option: condition on the spans = pass them as anchors
    fixed = model.separate(
        spans_batch(model),
        noise=plain.noise,
        watermark_message=wm,
        predict_spans=True,
        apply_predicted_spans=True,
    )
    assert fixed.spans_applied and fixed.spans == spanned.spans
    explicit = model.separate(
        spans_batch(model, anchors=spanned.spans), noise=plain.noise, watermark_message=wm
    )
    for x, y in zip(
        fixed.target + fixed.residual, explicit.target + explicit.residual, strict=True
    ):
        assert torch.equal(x, y)
    assert any(not torch.equal(x, y) for x, y in zip(fixed.target, plain.target, strict=True))

    # given anchors win: no prediction (reference: only when batch.anchors is None)
    given = [[("+", 0.1, 0.5)], []]
    r = model.separate(spans_batch(model, anchors=given), predict_spans=True)
    assert r.spans is None

    # with reranking candidates the spans are predicted once per item
    r2 = model.separate(spans_batch(model), predict_spans=True, reranking_candidates=2)
    assert r2.spans == spanned.spans


@needs_tokenizer
def test_separate_predict_spans_without_or_with_missing_model(tmp_path, monkeypatch):
    model = tiny_model()  # config span_predictor: null -> nothing happens, like the reference
    r = model.separate(spans_batch(model), predict_spans=True)
    assert r.spans is None
    cfg = model.config.to_dict()
    cfg["span_predictor"] = "pe-a-frame-missing"
    model.config = type(model.config).from_dict(cfg)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(SAMAudioLoadError, match="pe-a-frame-missing") as err:
        model.separate(spans_batch(model), predict_spans=True)
    assert "\n" not in str(err.value)
