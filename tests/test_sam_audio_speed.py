"""The DACVAE codec's fast inference path against its reference-exact (``naive=True``) path.

``DACVAECodec.decode`` runs the decoder time-major (channels-last oneDNN convolutions, the
upsamplers as GEMM + overlap-add, the wide k-tap convolutions as one GEMM per tap, blocked
Snake); ``decode(..., naive=True)`` computes what the reference computes, the way it computes
it. They must agree within 1e-5 (float32) on fixture A's weights, and to ~1e-12 in float64 on
a tiny random codec where a logic slip could not hide behind float32 rounding.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SAM_AUDIO_FIXTURE

from model.sam_audio import codec as codec_mod
from model.sam_audio.codec import DACVAECodec, DACVAEConfig, _Conv, _Snake1d

FIXTURE = SAM_AUDIO_FIXTURE
PREFIX = "audio_codec."
needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "checkpoint.pt").exists(), reason="SAM Audio fixture A is not available"
)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------


def _random_conv(*args, **kwargs) -> _Conv:
    m = _Conv(*args, **kwargs).double()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m


@pytest.mark.parametrize("stride", [2, 3, 5, 8, 10, 12])
@pytest.mark.parametrize("frames", [1, 2, 7, 40])
def test_transposed_conv_as_gemm(stride: int, frames: int) -> None:
    m = _random_conv(6, 5, 2 * stride, stride, transpose=True)
    assert m._gemm_transpose()
    x = torch.randn(2, frames, 6, dtype=torch.float64)
    with torch.inference_mode():
        got = m.forward_nwc(x)
        ref = m.forward_reference(x.transpose(1, 2).contiguous()).transpose(1, 2)
    assert _max_err(got, ref) <= 1e-12


@pytest.mark.parametrize("dilation", [1, 3, 9])
@pytest.mark.parametrize("frames", [1, 4, 30])
def test_wide_conv_as_gemm_per_tap(dilation: int, frames: int) -> None:
    c = codec_mod._GEMM_TAPS_MIN_CHANNELS
    m = _random_conv(c, c, 7, 1, dilation)
    assert m._gemm_taps()
    x = torch.randn(2, frames, c, dtype=torch.float64)
    with torch.inference_mode():
        got = m.forward_nwc(x)
        ref = m.forward_reference(x.transpose(1, 2).contiguous()).transpose(1, 2)
    assert _max_err(got, ref) <= 1e-10


def test_channels_last_conv_and_snake() -> None:
    m = _random_conv(8, 6, 7, 1, 3)
    assert not m._gemm_taps() and not m._gemm_transpose()
    x = torch.randn(2, 50, 8, dtype=torch.float64)
    with torch.inference_mode():
        got = m.forward_nwc(x)
        ref = m.forward_reference(x.transpose(1, 2).contiguous()).transpose(1, 2)
    assert _max_err(got, ref) <= 1e-12

    snake = _Snake1d(96)
    with torch.no_grad():
        snake.alpha.uniform_(0.2, 2.0)
    x = torch.randn(2, 3000, 96)
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the blocked path
    try:
        with torch.inference_mode():
            blocked = snake.forward_nwc(x)
    finally:
        torch.set_num_threads(n)
    with torch.inference_mode():
        ref = snake.forward_reference(x.transpose(1, 2)).transpose(1, 2)
    assert torch.equal(blocked, ref)  # same operations in the same order: same bits


# ------------------------------------------------------------------------------------------
# Whole codec, float64, tiny random config
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_codec() -> DACVAECodec:
    cfg = DACVAEConfig(
        encoder_dim=2,
        encoder_rates=(2, 2),
        latent_dim=4,
        decoder_dim=1536,
        decoder_rates=(4, 4, 4, 5),
        codebook_dim=2,
    )
    torch.manual_seed(0)
    codec = DACVAECodec(cfg).double()
    with torch.no_grad():  # O(1) activations (default init shrinks them)
        for name, p in codec.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "weight_g":
                p.fill_(1.0)
            elif leaf == "weight" and p.dim() == 3:
                p.normal_(0.0, (p.shape[1] * p.shape[2]) ** -0.5)
            elif leaf == "alpha":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif leaf == "bias" and p.dim() == 1:
                p.normal_(0.0, 0.02)
    return codec


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_decode_equals_reference_path_float64(tiny_codec: DACVAECodec, threads: int) -> None:
    torch.manual_seed(1)
    z = torch.randn(2, 2, 3, dtype=torch.float64)
    msg = torch.randint(0, 2, (2, 16), dtype=torch.float32)
    wav = torch.randn(2, 1, 4 * 37, dtype=torch.float64) * 0.3
    n = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = tiny_codec.decode(z, watermark_message=msg)
        fast_z = tiny_codec.encode(wav)
    finally:
        torch.set_num_threads(n)
    naive = tiny_codec.decode(z, watermark_message=msg, naive=True)
    naive_z = tiny_codec.encode(wav, naive=True)
    for a, b in ((fast, naive), (fast_z, naive_z)):
        scale = b.abs().max().item()
        assert scale > 1e-2
        assert _max_err(a, b) <= 1e-10 * scale


def test_reference_path_draws_the_message_like_the_reference(tiny_codec: DACVAECodec) -> None:
    z = torch.randn(1, 2, 2, dtype=torch.float64)
    torch.manual_seed(5)
    naive = tiny_codec.decode(z, naive=True)
    torch.manual_seed(5)
    fast = tiny_codec.decode(z)
    assert _max_err(naive, fast) <= 1e-10 * naive.abs().max().item()


# ------------------------------------------------------------------------------------------
# Fixture A (float32): the reference's outputs, both paths
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_codec() -> DACVAECodec:
    cfg = json.loads((FIXTURE / "config.json").read_text())["audio_codec"]
    sd = torch.load(FIXTURE / "checkpoint.pt", map_location="cpu")
    return DACVAECodec.from_state_dict(cfg, sd, prefix=PREFIX)


@needs_fixture
def test_fixture_decode_fast_within_1e5_of_naive(fixture_codec: DACVAECodec) -> None:
    inputs = torch.load(FIXTURE / "inputs.pt", map_location="cpu", weights_only=False)
    expected = torch.load(FIXTURE / "expected.pt", map_location="cpu", weights_only=False)
    latent = inputs["codec_decode"]["latent"]
    ref = expected["codec_decode"]
    msg = ref["wm_message"]
    naive = fixture_codec.decode(latent, watermark_message=msg, naive=True)
    fast = fixture_codec.decode(latent, watermark_message=msg)
    assert _max_err(naive, ref["wav"]) <= 1e-5  # the reference-exact path is the reference
    assert _max_err(fast, naive) <= 1e-5


@needs_fixture
def test_fixture_encode_fast_within_1e5_of_naive(fixture_codec: DACVAECodec) -> None:
    expected = torch.load(FIXTURE / "expected.pt", map_location="cpu", weights_only=False)
    c = expected["cases"]["text"]
    wav = c["batch"]["audios"]
    naive = fixture_codec.encode(wav, naive=True)
    assert _max_err(naive, c["codec_encoded"]) <= 1e-5
    assert _max_err(fixture_codec.encode(wav), naive) <= 1e-5


def test_time_major_fallbacks() -> None:
    """Below the channel threshold and with auto (causal) padding, oneDNN channels-last."""
    assert not _Conv(96, 96, 7)._gemm_taps()
    assert not _Conv(512, 512, 7, causal=True, pad_mode="auto", weight_norm=False)._gemm_taps()
    x = torch.randn(1, 10, 4)
    m = _Conv(4, 3, 7, 2, weight_norm=False, causal=True, pad_mode="auto")
    with torch.inference_mode():
        got = m.forward_nwc(x)
        ref = m(x.transpose(1, 2).contiguous()).transpose(1, 2)
    assert _max_err(got, ref) <= 1e-6


@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_causal_transposed_conv_as_gemm(stride: int) -> None:
    """The watermarker's causal upsamplers (``pad_mode="auto"``: the last K - s trimmed)."""
    m = _random_conv(4, 3, 2 * stride, stride, transpose=True, weight_norm=False, causal=True,
                     pad_mode="auto")  # fmt: skip
    assert m._gemm_transpose()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    with torch.inference_mode():
        got = m.forward_nwc(x)
        ref = m.forward_reference(x.transpose(1, 2).contiguous()).transpose(1, 2)
    assert _max_err(got, ref) <= 1e-12
