"""Bring the model's mono 48 kHz stems back to the source's sample rate and channel layout.

Why a mask and not the model's waveforms: the separator hears a mono 48 kHz downmix,
but the delivered stems must keep the source's rate, bandwidth, channel layout and
spatial image. So by default (``method="masked"``) the model's target and residual are
only used to decide, per time-frequency cell, *how much* of the source belongs to the
target; that share of every source channel is the target stem and the rest is the
residual stem, so ``target + residual == source`` per channel by construction.

The mask is the power ratio ``|T|^2 / (|T|^2 + |R|^2)`` (a Wiener gain), not the
magnitude ratio: it suppresses the weaker estimate harder in cells both claim, which
leaks less of the residual into the target where the model is unsure. Above the
model's band (``sr`` > 48 kHz sources have content above 24 kHz the model never saw)
each frame reuses the power ratio of the model's top octave (of the whole frame where
that octave is silent).

``method="generative"`` hands out the model's own waveforms instead (resampled and
copied to every channel): closer to what the model produced, but the spatial image is
lost and the sum identity does not hold.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.signal import resample_poly

from model.classical import block_istft, block_stft, stft_window
from model.errors import ModelInputError
from model.separator import MODEL_SAMPLE_RATE

BLOCK_FRAMES = 512
"""Frames per processing block (~5.5 s at 48 kHz): bounds the multichannel STFT in memory."""
_MODEL_BAND = 0.95 * MODEL_SAMPLE_RATE / 2
"""Above this frequency the model's stems carry nothing (the resampler's anti-alias band)."""


def resample(x: np.ndarray, sr_from: int, sr_to: int) -> np.ndarray:
    """Resample along axis 0 with an exact rational polyphase filter (zero-phase, no delay)."""
    x = np.asarray(x, dtype=np.float32)
    if sr_from <= 0 or sr_to <= 0:
        raise ModelInputError(f"sample rates must be positive, got {sr_from} -> {sr_to}")
    if sr_from == sr_to or x.shape[0] == 0:
        return x
    g = math.gcd(int(sr_from), int(sr_to))
    return resample_poly(x, sr_to // g, sr_from // g, axis=0).astype(np.float32, copy=False)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Cut or zero-pad along axis 0 to exactly n samples."""
    if x.shape[0] >= n:
        return x[:n]
    pad = np.zeros((n - x.shape[0],) + x.shape[1:], dtype=x.dtype)
    return np.concatenate([x, pad], axis=0)


def stft_size(sr: int) -> int:
    """A power-of-two window of ~43 ms at any rate (2048 at 44.1/48 kHz, 4096 at 96 kHz)."""
    return max(256, 2 ** round(math.log2(2048 * sr / MODEL_SAMPLE_RATE)))


def restore(
    source: np.ndarray,
    separation_target: np.ndarray,
    separation_residual: np.ndarray,
    sr: int,
    method: Literal["masked", "generative"] = "masked",
) -> tuple[np.ndarray, np.ndarray]:
    """Target and residual stems [N, C] float32 at ``sr``, shaped like ``source`` [N, C].

    ``separation_target``/``separation_residual`` are the model's mono 48 kHz outputs
    [M]. A 1-D ``source`` is treated as one channel and the stems come back [N, 1].
    """
    source = np.asarray(source, dtype=np.float32)
    if source.ndim == 1:
        source = source[:, None]
    if source.ndim != 2 or source.shape[1] == 0:
        raise ModelInputError(f"source must be [samples, channels], got shape {source.shape}")
    tgt = np.asarray(separation_target, dtype=np.float32)
    res = np.asarray(separation_residual, dtype=np.float32)
    if tgt.ndim != 1 or res.shape != tgt.shape:
        raise ModelInputError(
            f"the model's target {tgt.shape} and residual {res.shape} must be matching mono arrays"
        )
    if method not in ("masked", "generative"):
        raise ModelInputError(f"unknown restore method {method!r}: use masked or generative")
    n, n_ch = source.shape
    t_sr = _fit(resample(tgt, MODEL_SAMPLE_RATE, sr), n)
    r_sr = _fit(resample(res, MODEL_SAMPLE_RATE, sr), n)

    if method == "generative":
        return (
            np.repeat(t_sr[:, None], n_ch, axis=1),
            np.repeat(r_sr[:, None], n_ch, axis=1),
        )

    target = np.empty_like(source)
    if n == 0:
        return target, source.copy()
    n_fft = stft_size(sr)
    hop = n_fft // 4
    win = stft_window(n_fft)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    above = freqs > _MODEL_BAND
    top = (freqs > _MODEL_BAND / 2) & ~above
    model = np.stack([t_sr, r_sr], axis=1)  # [N, 2]
    del t_sr, r_sr
    block = BLOCK_FRAMES * hop
    for a in range(0, n, block):
        b = min(a + block, n)
        spec = block_stft(source, a, b, n_fft, hop, win)  # [T, C, F]
        est = block_stft(model, a, b, n_fft, hop, win)
        pt = np.abs(est[:, 0]) ** 2
        pr = np.abs(est[:, 1]) ** 2
        floor = 1e-12 * max(float(pt.mean() + pr.mean()), 1e-20)
        mask = pt / (pt + pr + floor)
        if above.any():
            # The model's top octave decides; where it is silent, the whole frame does.
            num, den = pt[:, top].sum(axis=1), (pt[:, top] + pr[:, top]).sum(axis=1)
            all_num, all_den = pt.sum(axis=1), (pt + pr).sum(axis=1)
            quiet = den <= floor * top.sum()
            num, den = np.where(quiet, all_num, num), np.where(quiet, all_den, den)
            mask[:, above] = (num / (den + floor))[:, None]
        target[a:b] = block_istft(spec * mask[:, None, :], a, b, n_fft, hop, win)
    residual = source - target
    return target, residual
