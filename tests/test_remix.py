"""Restoring the model's mono 48 kHz stems to the source's rate and channel layout."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from model import remix
from model.errors import ModelInputError
from model.remix import resample, restore, stft_size
from model.separator import MODEL_SAMPLE_RATE

RATES = [44_100, 48_000, 96_000]


def tone(sr: int, seconds: float, f0: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 7)).astype(np.float32) * 0.3


def noise(sr: int, seconds: float, seed: int, band: tuple[float, float]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sos = butter(4, band, btype="band", fs=sr, output="sos")
    return (0.3 * sosfilt(sos, rng.standard_normal(int(sr * seconds)))).astype(np.float32)


def model_view(x: np.ndarray, sr: int) -> np.ndarray:
    """What the separator would hear of a [N, C] source: mono downmix at 48 kHz."""
    return resample(x.mean(axis=1), sr, MODEL_SAMPLE_RATE)


@pytest.mark.parametrize("sr", RATES)
@pytest.mark.parametrize("channels", [2, 6], ids=["stereo", "5.1"])
def test_shapes_and_sum_identity(sr: int, channels: int) -> None:
    seconds = 1.5
    rng = np.random.default_rng(channels)
    gains = rng.uniform(0.2, 1.0, (2, channels)).astype(np.float32)
    a, b = tone(sr, seconds), noise(sr, seconds, 1, (200, 8000))
    source = a[:, None] * gains[0] + b[:, None] * gains[1]
    source[:, -1] *= 0.1  # an LFE-like quiet channel
    target_48 = model_view(a[:, None] * gains[0], sr)
    residual_48 = model_view(b[:, None] * gains[1], sr)
    tgt, res = restore(source, target_48, residual_48, sr)
    assert tgt.shape == res.shape == source.shape
    assert tgt.dtype == res.dtype == np.float32
    assert np.max(np.abs(tgt + res - source), axis=0).max() <= 1e-4
    assert np.all(np.isfinite(tgt))
    gen_t, gen_r = restore(source, target_48, residual_48, sr, method="generative")
    assert gen_t.shape == gen_r.shape == source.shape
    np.testing.assert_array_equal(gen_t[:, 0], gen_t[:, -1])


@pytest.mark.parametrize("sr", RATES)
def test_target_stays_in_its_channel(sr: int) -> None:
    """Left carries only the target (a tone), right only the other sound (noise)."""
    seconds = 2.0
    a, b = tone(sr, seconds), noise(sr, seconds, 2, (2500, 9000))
    source = np.stack([a, b], axis=1)
    # An ideal separator on the mono downmix (a + b) / 2.
    tgt, _ = restore(source, model_view(source * [1, 0], sr), model_view(source * [0, 1], sr), sr)
    left, right = np.sum(tgt[:, 0] ** 2), np.sum(tgt[:, 1] ** 2)
    assert 10 * np.log10(left / right) >= 20.0
    assert np.sum((tgt[:, 0] - a) ** 2) < 0.01 * np.sum(a**2)


@pytest.mark.parametrize("sr", RATES)
def test_click_keeps_its_sample(sr: int) -> None:
    seconds = 1.0
    at = int(0.6137 * sr)
    clicks = np.zeros((int(sr * seconds), 2), np.float32)
    clicks[at] = [1.0, 0.7]
    bed = noise(sr, seconds, 3, (100, 6000))[:, None] * np.float32(0.05)
    source = clicks + bed
    tgt, _ = restore(source, model_view(clicks, sr), model_view(np.repeat(bed, 2, 1), sr), sr)
    tolerance = int(round(0.001 * sr))  # 1 ms (48 samples at 48 kHz)
    for ch in range(2):
        assert abs(int(np.argmax(np.abs(tgt[:, ch]))) - at) <= tolerance


def test_blocks_match_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    sr, seconds = 96_000, 1.2
    source = np.stack([tone(sr, seconds), noise(sr, seconds, 4, (300, 30000))], axis=1)
    t48, r48 = model_view(source * [1, 0], sr), model_view(source * [0, 1], sr)
    whole, _ = restore(source, t48, r48, sr)
    monkeypatch.setattr(remix, "BLOCK_FRAMES", 7)
    blocked, res = restore(source, t48, r48, sr)
    np.testing.assert_allclose(blocked, whole, atol=1e-6)
    assert np.max(np.abs(blocked + res - source)) <= 1e-4


def test_lengths_are_forced_and_mono_source_is_one_channel() -> None:
    sr = 44_100
    source = tone(sr, 1.0)
    short = np.zeros(40_000, np.float32)  # model output a little short: zero-padded
    tgt, res = restore(source, short, short, sr)
    assert tgt.shape == res.shape == (source.size, 1)
    long = np.zeros(60_000, np.float32)  # a little long: cut
    tgt, _ = restore(source[:, None], long, long, sr, method="generative")
    assert tgt.shape == (source.size, 1)
    tgt, res = restore(np.zeros((0, 2), np.float32), short[:0], short[:0], sr)
    assert tgt.shape == res.shape == (0, 2)


def test_above_the_model_band_follows_the_target() -> None:
    """At 96 kHz, content above 24 kHz goes where the model's top octave says."""
    sr, seconds = 96_000, 1.0
    n = int(sr * seconds)
    gate = (np.arange(n) < n // 2).astype(np.float32)  # target sounds in the first half
    hiss = noise(sr, seconds, 5, (12_000, 40_000)) * gate
    other = tone(sr, seconds) * (1 - gate)
    source = np.stack([hiss + other, hiss + other], axis=1)
    tgt, _ = restore(
        source,
        model_view(np.stack([hiss, hiss], 1), sr),
        model_view(np.stack([other, other], 1), sr),
        sr,
    )
    sos = butter(8, 26_000, btype="high", fs=sr, output="sos")
    hf_src, hf_tgt = sosfilt(sos, source[:, 0]), sosfilt(sos, tgt[:, 0])
    assert np.sum(hf_tgt**2) > 0.9 * np.sum(hf_src**2)


def test_resample_and_errors() -> None:
    x = np.random.default_rng(0).standard_normal((4410, 3)).astype(np.float32)
    y = resample(x, 44_100, 48_000)
    assert y.shape == (4800, 3) and y.dtype == np.float32
    assert resample(x, 48_000, 48_000) is not None
    assert stft_size(44_100) == stft_size(48_000) == 2048 and stft_size(96_000) == 4096
    with pytest.raises(ModelInputError):
        restore(np.zeros((10, 2, 2), np.float32), np.zeros(10), np.zeros(10), 48_000)
    with pytest.raises(ModelInputError):
        restore(np.zeros((10, 2), np.float32), np.zeros(10), np.zeros(11), 48_000)
    with pytest.raises(ModelInputError):
        restore(np.zeros((10, 2), np.float32), np.zeros(10), np.zeros(10), 48_000, method="x")  # type: ignore[arg-type]
