"""Matte videos of ``masks.npz``: what ``sonomask track`` exports and a separation job's
timeline puts on a track above the picture.

Two kinds:

- ``grey`` (the default): white = object, the source's displayed size and frame count.
  The container picks the codec: ``.mkv`` FFV1 (lossless), ``.mov`` ProRes 422 HQ (what
  every NLE opens; 10-bit, visually lossless), ``.mp4`` H.264 lossless (``-qp 0``, 4:4:4);
- ``prores4444`` (``.mov`` only): the source's picture with the mask as its alpha channel
  (ProRes 4444, ``yuva444p10le`` in, which ffmpeg decodes as ``yuva444p12le``; the alpha
  is coded losslessly, so it is the mask exactly: 0 or full scale).

Either way every frame keeps the source frame's timestamp (variable frame rates too), and
the file carries the source's start timecode (``-timecode``: a ``tmcd`` track in MOV/MP4,
the ``TIMECODE`` tag in Matroska) counted at the timecode's rate, which MOV records as the
track's and ``tmcd``'s rate (for VFR: the nominal rate).

ffmpeg runs in ``worker/media.py``; this module feeds it frames.
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from worker import media
from worker.arrays import read_npy_header
from worker.errors import BadInput, SonomaskError
from worker.timecode import StartTimecode

MATTE_FORMATS = ("grey", "prores4444")

MATTE_CODECS: dict[str, list[str]] = {
    ".mkv": ["-c:v", "ffv1", "-level", "3", "-pix_fmt", "gray", "-f", "matroska"],
    ".mov": [
        *("-c:v", "prores_aw", "-profile:v", "3", "-pix_fmt", "yuv422p10le"),
        *("-vendor", "apl0", "-f", "mov"),
    ],
    ".mp4": [
        *("-c:v", "libx264", "-qp", "0", "-preset", "veryfast", "-pix_fmt", "yuv444p"),
        *("-movflags", "+faststart", "-f", "mp4"),
    ],
}
"""ffmpeg output options for the grey matte, by file extension. ProRes comes from ffmpeg's
``prores_aw`` encoder: the same bitstream as ``prores_ks`` at about a quarter of the time
(35 against 125 ms a 1080p frame on this project's two-core machine, a binary matte about
50 KB a frame in HQ)."""

PRORES4444 = [
    *("-c:v", "prores_aw", "-profile:v", "4", "-pix_fmt", "yuva444p10le"),
    *("-vendor", "apl0", "-f", "mov"),
]
"""ffmpeg output options for the picture with the mask as alpha."""

_MAX_PTS_SEGMENTS = 2000  # pieces of the piecewise-linear timestamp map (see _pts_expression)


def check_matte_name(path: Path, matte_format: str) -> None:
    """BadInput when ``path``'s extension cannot hold a matte of ``matte_format``."""
    ext = path.suffix.lower()
    if matte_format == "prores4444":
        if ext != ".mov":
            raise BadInput(f"matte {path.name}: a ProRes 4444 matte is a .mov file")
    elif matte_format != "grey":
        raise BadInput(f"matte format {matte_format!r}: choose grey or prores4444")
    elif ext not in MATTE_CODECS:
        raise BadInput(
            f"matte {path.name}: use a .mkv (FFV1, lossless), .mov (ProRes 422 HQ) or .mp4 "
            "(H.264 lossless) file name"
        )


# ----------------------------------------------------------------------------- reading masks


def iter_masks(npz: Path) -> Iterator[np.ndarray]:
    """The frames of ``masks.npz`` one at a time (uint8 [H, W]), without loading them all:
    the .npy inside the zip is read sequentially."""
    with zipfile.ZipFile(npz) as zf, zf.open("masks.npy") as f:
        (n, h, w), _, dtype = read_npy_header(f)
        for _ in range(n):
            buf = f.read(h * w * dtype.itemsize)
            yield np.frombuffer(buf, dtype=dtype).reshape(h, w)


def npz_shape(npz: Path) -> tuple[int, int, int]:
    with zipfile.ZipFile(npz) as zf, zf.open("masks.npy") as f:
        shape, _, _ = read_npy_header(f)
    return shape  # type: ignore[return-value]


# ----------------------------------------------------------------------------- timestamps


def _pts_expression(times: np.ndarray, tolerance: float = 2e-4) -> str:
    """An ffmpeg expression of the frame number N giving each frame's time in seconds.

    The timestamps are followed by a piecewise-linear map (one piece for a constant frame
    rate, one per rate change for a clip joined from parts; jittery phone timestamps are
    followed to within ``tolerance`` s, finer than Matroska's 1 ms clock), written as a
    balanced sum of ramps so ffmpeg's expression parser never nests deeply.
    """
    t = np.asarray(times, dtype=np.float64)
    n = len(t)
    if n == 1:
        return "0"
    while True:
        pieces: list[tuple[int, float, float]] = []  # (first frame, time there, seconds per frame)
        i = 0
        while i < n - 1:
            lo, hi = -np.inf, np.inf
            j = i + 1
            while j < n:
                k = j - i
                lo2 = max(lo, (t[j] - tolerance - t[i]) / k)
                hi2 = min(hi, (t[j] + tolerance - t[i]) / k)
                if lo2 > hi2:
                    break
                lo, hi = lo2, hi2
                j += 1
            pieces.append((i, float(t[i]), 0.5 * (lo + hi)))
            i = j - 1 if j - 1 > i else i + 1
            if i == n - 1:
                break
        if len(pieces) <= _MAX_PTS_SEGMENTS:
            break
        tolerance *= 2
    terms = [f"{pieces[0][1]:.9f}+{pieces[0][2]:.12f}*N"]
    for (i0, a, s), (pi, pa, ps) in zip(pieces[1:], pieces[:-1], strict=False):
        c = a - (pa + ps * (i0 - pi))  # jump at the piece's start, then the change of slope
        terms.append(f"gte(N,{i0})*({c:.9f}+{s - ps:.12f}*(N-{i0}))")

    def balanced(items: list[str]) -> str:
        if len(items) == 1:
            return items[0]
        mid = len(items) // 2
        return f"({balanced(items[:mid])}+{balanced(items[mid:])})"

    return balanced(terms)


def _clock(rate: Fraction) -> int:
    """A clock (ticks a second) finer than 1 ms on which the rate's frames fall exactly, so
    MOV's tmcd track counts at the exact rate (23.976 is 15015 ticks of 1/360000 s)."""
    tb = math.lcm(90000, rate.numerator)
    return tb if tb % rate.numerator == 0 and tb <= 10**7 else 90000


# ----------------------------------------------------------------------------- writing


def write_matte(
    npz: Path,
    times: np.ndarray,
    out: Path,
    progress: media.ProgressFn | None = None,
    timecode: StartTimecode | None = None,
    matte_format: str = "grey",
    picture: media.Probe | None = None,
) -> None:
    """Encode the masks of ``npz`` as a matte video with the given frame times (seconds
    from the first frame), written to a temporary name and renamed when complete.

    ``timecode``: the source's start timecode and rate, carried by the file (default: none,
    the rate measured from ``times``). ``matte_format`` ``prores4444`` needs ``picture``,
    the source, whose frames (every decoded frame, as the masks) get the mask as alpha.
    Frames are piped one at a time, so memory stays flat for long clips.
    """
    check_matte_name(out, matte_format)
    n, h, w = npz_shape(npz)
    if len(times) != n:
        raise SonomaskError(f"matte: {n} masks but {len(times)} frame times")
    if timecode is not None:
        rate = timecode.rate
    else:
        duration = float(times[-1]) if n > 1 else 0.0
        rate = Fraction((n - 1) / duration if duration > 0 else 25.0).limit_denominator(1001)
    clock = _clock(rate)
    out_args: list[str] = []
    if matte_format == "prores4444":
        if picture is None:
            raise SonomaskError("a ProRes 4444 matte needs the source's picture")
        if picture.display_size != (w, h):
            raise SonomaskError(f"matte: masks are {w}x{h}, the picture {picture.display_size}")
        out_args += [*PRORES4444, *media.picture_color_args(picture)]
        frames = _with_alpha(iter_masks(npz), media.iter_picture(picture), n, progress)
        pix_fmt = "yuva444p16le"
        title = "sonomask matte (picture, alpha = object)"
    else:
        out_args += MATTE_CODECS[out.suffix.lower()]
        frames = _grey(iter_masks(npz), n, progress)
        pix_fmt = "gray"
        title = "sonomask matte (white = object)"
    out_args += ["-metadata:s:v", f"title={title}"]
    if timecode is not None:
        out_args += ["-timecode", timecode.text]
        if out.suffix.lower() == ".mkv":
            rate_text = f"{rate.numerator}/{rate.denominator}"
            out_args += ["-metadata", f"TIMECODE_RATE={rate_text}"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="matte-") as tmpdir:
        graph = Path(tmpdir) / "setpts.txt"
        # settb first: ffmpeg 5.1 mis-times the second frame when only -enc_time_base is fine.
        graph.write_text(f"settb=1/{clock},setpts='({_pts_expression(times)})/TB'")
        tmp = out.with_name(f".{out.name}.part{out.suffix}")
        try:
            media.encode_raw_video(frames, (w, h), pix_fmt, rate, graph, out_args, tmp, clock)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)


def _grey(
    masks: Iterator[np.ndarray], n: int, progress: media.ProgressFn | None
) -> Iterator[bytes]:
    for i, m in enumerate(masks):
        yield (m * np.uint8(255)).tobytes()
        if progress is not None and (i % 64 == 0 or i == n - 1):
            progress((i + 1) / n, "writing matte")


def _with_alpha(
    masks: Iterator[np.ndarray],
    pictures: Iterator[bytes],
    n: int,
    progress: media.ProgressFn | None,
) -> Iterator[bytes]:
    """Each picture frame (yuv444p16le planes) followed by its mask as a 16-bit alpha plane."""
    count = 0
    for count, (m, frame) in enumerate(zip(masks, pictures, strict=False), start=1):
        yield frame + (m.astype("<u2") * np.uint16(65535)).tobytes()
        if progress is not None and (count % 64 == 1 or count == n):
            progress(count / n, "writing matte (picture + alpha)")
    if count != n:
        raise SonomaskError(f"matte: {n} masks but the source decoded to {count} frames")
