"""Waveform peaks for the page: min/max per bucket, read in blocks so a long file never sits
in memory whole.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np
import soundfile as sf

from worker import media
from worker.errors import BadInput, SonomaskError

PEAKS_PER_SECOND = 100


MAX_PEAKS = 20_000


def _reduce(blocks: Any, bucket: int) -> tuple[list[float], list[float]]:
    """Min and max per ``bucket`` samples (over all channels) of float32 [N, C] blocks."""
    lo: list[float] = []
    hi: list[float] = []
    rest_lo = rest_hi = np.zeros(0, np.float32)
    for block in blocks:
        b = np.asarray(block, np.float32).reshape(len(block), -1)
        x_hi = np.concatenate([rest_hi, b.max(1)])
        x_lo = np.concatenate([rest_lo, b.min(1)])
        full = (len(x_hi) // bucket) * bucket
        if full:
            hi += x_hi[:full].reshape(-1, bucket).max(1).tolist()
            lo += x_lo[:full].reshape(-1, bucket).min(1).tolist()
        rest_hi, rest_lo = x_hi[full:], x_lo[full:]
    if len(rest_hi):
        hi.append(float(rest_hi.max()))
        lo.append(float(rest_lo.min()))
    return lo, hi


def _bucket(sample_rate: int, seconds: float) -> int:
    per_second = min(PEAKS_PER_SECOND, MAX_PEAKS / max(seconds, 1e-3))
    return max(1, int(math.ceil(sample_rate / per_second)))


def _peaks_doc(lo: list[float], hi: list[float], bucket: int, rate: int) -> dict[str, Any]:
    return {
        "rate": rate / bucket,
        "duration": len(hi) * bucket / rate,
        "min": [round(v, 4) for v in lo],
        "max": [round(v, 4) for v in hi],
    }


def upload_peaks(meta: dict[str, Any], stream: int) -> dict[str, Any]:
    """Peaks of audio stream ``stream`` decoded on the picture's clock, as demux does."""
    p = media.probe(Path(meta["path"]))
    info = media.audio_info(p, stream)
    rate, ch = info.sample_rate, info.channels
    if rate <= 0 or ch <= 0:
        raise BadInput(f"{p.path.name}: audio stream {stream} has no sample rate or channels")
    first = round(media.picture_start(p) * rate)
    src = ffmpeg.input(f"file:{p.path.resolve()}", copyts=None, **media.INPUT_OPTIONS)
    audio = src[f"a:{stream}"].filter("aresample", **{"async": 1, "first_pts": first})
    out = ffmpeg.output(audio, "pipe:1", f="f32le", acodec="pcm_f32le")
    args = ffmpeg.compile(out)
    args = [args[0], "-hide_banner", "-nostdin", "-loglevel", "error", *args[1:]]
    bucket = _bucket(rate, p.duration)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None

    def blocks() -> Any:
        size = bucket * ch * 4 * 256
        carry = b""
        while data := proc.stdout.read(size):
            data = carry + data
            usable = len(data) // (4 * ch) * 4 * ch
            carry = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], np.float32).reshape(-1, ch)

    lo, hi = _reduce(blocks(), bucket)
    if proc.wait() != 0:
        raise SonomaskError(f"ffmpeg failed to decode the audio of {p.path.name}")
    return _peaks_doc(lo, hi, bucket, rate)


def wav_peaks(path: Path) -> dict[str, Any]:
    """Peaks of a WAV stem, read in blocks so a long stem never sits in memory whole."""
    info = sf.info(str(path))
    bucket = _bucket(info.samplerate, info.duration)
    blocks = sf.blocks(str(path), blocksize=bucket * 256, dtype="float32", always_2d=True)
    lo, hi = _reduce(blocks, bucket)
    return _peaks_doc(lo, hi, bucket, info.samplerate)
