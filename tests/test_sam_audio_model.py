"""SAM Audio port vs the official implementation (fixture A: random weights, reference outputs).

Every intermediate the fixture records is compared, loading through ``from_pretrained`` on the
fixture folder itself. Tolerances follow the fixture README: exact for integer/bool tensors,
1e-5 for encoder outputs, 1e-4 for the DiT, ODE and waveforms (fp32, CPU). The codec decode is
the slow part (tens of seconds per case on 2 cores), so full separations are marked slow and
encoder outputs are computed once per case.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAM_AUDIO_FIXTURE

from model.backends.sam_audio import SamAudioSeparator, load_cached
from model.sam_audio import SAMAudio, SAMAudioProcessor
from model.separator import Prompt, Span

FIXTURE = SAM_AUDIO_FIXTURE
CASES = ["text", "span", "visual", "batch"]
pytestmark = pytest.mark.skipif(
    not (FIXTURE / "expected.pt").is_file(), reason=f"SAM Audio fixture A not found at {FIXTURE}"
)


@pytest.fixture(scope="module", autouse=True)
def single_thread(one_torch_thread):
    """These tensors are small: one torch thread (see conftest.one_torch_thread)."""


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def expected():
    return torch.load(FIXTURE / "expected.pt", weights_only=False)


@pytest.fixture(scope="module")
def inputs():
    return torch.load(FIXTURE / "inputs.pt", weights_only=False)


@pytest.fixture(scope="module")
def model() -> SAMAudio:
    # Shared with the backend's per-process cache, so the backend test reuses it.
    model, _ = load_cached(str(FIXTURE), "cpu")
    return model


@pytest.fixture(scope="module")
def processor() -> SAMAudioProcessor:
    return SAMAudioProcessor.from_pretrained(FIXTURE)


def make_batch(processor, inputs, name):
    case = inputs["cases"][name]
    videos = [inputs["video_masked"]] if case["uses_video"] else None
    return processor(
        descriptions=case["descriptions"],
        audios=case["audios"],
        anchors=case["anchors"],
        masked_videos=videos,
    )


@pytest.fixture(scope="module")
def encoded(model, processor, inputs):
    """Per case: (batch, forward_args), encoded once."""
    out = {}
    with torch.inference_mode():
        for name in CASES:
            batch = make_batch(processor, inputs, name)
            out[name] = (batch, model.get_forward_args(batch))
    return out


def test_loaded_in_eval_mode(model):
    assert not model.training
    assert all(not m.training for m in model.modules())
    assert model.sample_rate == 48_000 and model.hop_length == 1920


@pytest.mark.parametrize("name", CASES)
def test_processor_batch(processor, inputs, expected, name):
    exp = expected["cases"][name]["batch"]
    batch = make_batch(processor, inputs, name)
    assert maxerr(batch.audios, exp["audios"]) == 0
    assert batch.sizes.dtype == exp["sizes"].dtype == torch.float32
    assert torch.equal(batch.sizes, exp["sizes"])
    assert torch.equal(batch.wav_sizes, exp["wav_sizes"])
    assert batch.descriptions == exp["descriptions"]
    assert batch.anchors == exp["anchors"]
    assert torch.equal(batch.anchor_ids, exp["anchor_ids"])
    assert torch.equal(batch.anchor_alignment, exp["anchor_alignment"])
    assert torch.equal(batch.audio_pad_mask, exp["audio_pad_mask"])
    assert batch.hop_length == exp["hop_length"]
    assert batch.audio_sampling_rate == exp["audio_sampling_rate"]
    if exp["masked_video"] is None:
        assert batch.masked_video is None
    else:
        assert len(batch.masked_video) == len(exp["masked_video"])
        for got, want in zip(batch.masked_video, exp["masked_video"], strict=True):
            assert got.dtype == want.dtype and torch.equal(got, want)


def test_mask_videos_matches_reference(processor, inputs):
    got = processor.mask_videos([inputs["video_frames"]], [inputs["video_object_mask"]])[0]
    assert got.dtype == torch.uint8
    assert torch.equal(got, inputs["video_masked"])


def test_anchor_frames_use_float64_rounding(processor):
    wav = torch.zeros(1, 48000 * 3)
    batch = processor(descriptions=["x"], audios=[wav], anchors=[[("+", 0.68, 2.24)]])
    aligned = batch.anchor_alignment[0]
    assert aligned[17] == 0 and aligned[18] == 2 and aligned[56] == 2 and aligned[57] == 0


@pytest.mark.parametrize("name", CASES)
def test_text_encoder(model, encoded, expected, name):
    exp = expected["cases"][name]
    batch, args = encoded[name]
    tok = model.text_encoder.tokenize(batch.descriptions)
    assert torch.equal(tok["input_ids"], exp["text_input_ids"])
    assert torch.equal(tok["attention_mask"], exp["text_attention_mask"])
    assert torch.equal(args["text_mask"], exp["text_mask"])
    assert maxerr(args["text_features"], exp["text_features"]) <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_codec_features(model, encoded, expected, name):
    exp = expected["cases"][name]
    batch, args = encoded[name]
    with torch.inference_mode():
        codec = model.audio_codec.encode(batch.audios)
    assert maxerr(codec, exp["codec_encoded"]) <= 1e-5
    assert maxerr(args["audio_features"], exp["audio_features"]) <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_video_features(model, encoded, expected, name):
    exp = expected["cases"][name]
    batch, args = encoded[name]
    assert maxerr(args["masked_video_features"], exp["masked_video_features"]) <= 1e-5
    if "vision_encoder_output" in exp:
        resized = model.vision_encoder.resize(batch.masked_video[0][:2])
        assert torch.equal(resized, exp["vision_resized_first2_uint8"])
        # forward args hold vision_encoder(batch.masked_video) transposed to [B, dim, T]
        out = args["masked_video_features"].transpose(1, 2)
        assert maxerr(out, exp["vision_encoder_output"]) <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_aligned_inputs(model, encoded, inputs, expected, name):
    exp = expected["cases"][name]
    _, args = encoded[name]
    noise = inputs["cases"][name]["noise"]
    with torch.inference_mode():
        aligned = model.align_inputs(
            noise,
            args["audio_features"],
            args["masked_video_features"],
            args["anchor_ids"],
            args["anchor_alignment"],
        )
        cond = model.prepare_conditioning(**args)
        fast = torch.nn.functional.linear(noise, cond.noisy_weight) + cond.cond_input
    assert maxerr(aligned, exp["aligned_inputs_t05"]) <= 1e-5
    assert maxerr(fast, exp["aligned_inputs_t05"]) <= 1e-5


@pytest.mark.parametrize("name", CASES)
def test_vector_field_t05(model, encoded, inputs, expected, name):
    exp = expected["cases"][name]
    _, args = encoded[name]
    case = inputs["cases"][name]
    with torch.inference_mode():
        naive = model(noisy_audio=case["noise"], time=case["forward_time"], **args)
        fast = model.velocity(
            case["noise"], case["forward_time"], model.prepare_conditioning(**args)
        )
    assert maxerr(naive, exp["forward_t05"]) <= 1e-4
    assert maxerr(fast, exp["forward_t05"]) <= 1e-4


@pytest.mark.parametrize("name", CASES)
def test_ode_final_state(model, encoded, inputs, expected, name):
    exp = expected["cases"][name]
    _, args = encoded[name]
    noise = inputs["cases"][name]["noise"]
    steps = []
    with torch.inference_mode():
        fast = model.solve(args, noise, on_step=lambda i, n: steps.append((i, n)))
    assert steps[-1] == (16, 16) and len(steps) == 16
    assert maxerr(fast, exp["ode_final_state"]) <= 1e-4
    if name in ("span", "batch"):  # anchors / padding: the naive path on the paths that differ
        with torch.inference_mode():
            naive = model.solve(args, noise, naive=True)
        assert maxerr(naive, exp["ode_final_state"]) <= 1e-4
    B, T, C2 = fast.shape
    stacked = fast.transpose(1, 2).reshape(2 * B, C2 // 2, T)  # the layout decode receives
    assert maxerr(stacked, exp["decode_latents"]) <= 1e-4


def test_watermark_bits_follow_global_seed(inputs, expected):
    for name in CASES:
        torch.manual_seed(inputs["cases"][name]["wm_seed"])
        B = len(inputs["cases"][name]["descriptions"])
        bits = torch.randint(0, 2, (2 * B, 16), dtype=torch.float32)
        assert torch.equal(bits, expected["cases"][name]["wm_message"])


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_separate_end_to_end(model, encoded, inputs, expected, name):
    """Whole ``separate`` (encoders, ODE, decode incl. watermark, unbatching) vs the reference.

    text/visual draw the watermark bits from the seeded global RNG like the reference;
    span/batch pass them explicitly.
    """
    exp = expected["cases"][name]
    case = inputs["cases"][name]
    batch, _ = encoded[name]
    if name in ("text", "visual"):
        torch.manual_seed(case["wm_seed"])
        result = model.separate(batch, noise=case["noise"])
    else:
        result = model.separate(batch, noise=case["noise"], watermark_message=exp["wm_message"])
    assert len(result.target) == len(exp["target"]) == len(result.residual)
    for got, want in zip(result.target, exp["target"], strict=True):
        assert got.ndim == 1 and maxerr(got, want) <= 1e-4
    for got, want in zip(result.residual, exp["residual"], strict=True):
        assert got.ndim == 1 and maxerr(got, want) <= 1e-4


@pytest.mark.slow
def test_backend_on_fixture_model(model, inputs):
    """The sonomask backend end to end on the real (fixture) network: 1 s of audio, text +
    span + a masked video with timestamps, two windows."""
    audio = inputs["clips"]["c1"][0, :48000].numpy()
    video = inputs["video_masked"].permute(0, 2, 3, 1).numpy()  # [F, H, W, 3]
    times = np.arange(len(video)) / 30.0
    sep = SamAudioSeparator(str(FIXTURE), "cpu", window_seconds=0.64, overlap_seconds=0.24)
    assert sep.model is model  # loaded once per process
    seen = []
    out = sep.separate(
        audio,
        Prompt(
            text="dog barking", spans=[Span("+", 0.2, 0.5)], masked_video=video, video_times=times
        ),
        progress=lambda f, what: seen.append(f),
    )
    assert out.backend == "sam-audio"
    assert out.target.shape == out.residual.shape == audio.shape
    assert out.target.dtype == np.float32
    assert np.isfinite(out.target).all() and np.isfinite(out.residual).all()
    assert seen == sorted(seen) and seen[-1] == 1.0
