"""The source's start timecode: where frame 0 (and so sample 0 of every stem) sits on the
editor's clock.

Read, in order, from the MOV/MP4 ``tmcd`` track's ``timecode`` tag, the picture stream's
tag, the container's tag (MXF, Matroska ``TIMECODE``), any other stream's tag; a tag that is
absent or not a valid timecode for the rate falls back to the container's start time (the
first frame's presentation time, counted in frames of the rate) and says so in a warning.

The rate is the timecode's counting rate: the ``tmcd`` track's own rate, else the picture's
(``r_frame_rate``, else ``avg_frame_rate``) snapped to a broadcast rate (23.976, 24, 25,
29.97, 30, 50, 59.94, 60 ...) when it is within 0.5 % of one; a variable-frame-rate
picture (the two rates disagree) counts at its nominal rate, snapped within 5 %. Drop-frame
counting (``;`` before the frames) exists only at 29.97 and 59.94.

``frames`` counts real frames since midnight at ``rate``, so ``frames / rate`` is the
start in seconds (for drop-frame too: drop-frame skips labels, not frames) and a stem at
``sr`` Hz starts ``round(frames * sr / rate)`` samples after midnight: the BWF
TimeReference. Pure: takes what ffprobe reported (``media.Probe``), runs nothing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

STANDARD_RATES = tuple(
    Fraction(r)
    for r in (
        Fraction(24000, 1001),
        24,
        25,
        Fraction(30000, 1001),
        30,
        Fraction(48000, 1001),
        48,
        50,
        Fraction(60000, 1001),
        60,
        100,
        Fraction(120000, 1001),
        120,
    )
)
DROP_FRAME_RATES = (Fraction(30000, 1001), Fraction(60000, 1001))
DAY_SECONDS = 24 * 3600

_TC_RE = re.compile(r"^(\d{1,2}):(\d{2}):(\d{2})([:;.,])(\d{2,3})$")


@dataclass(frozen=True)
class StartTimecode:
    """The timecode of frame 0: ``frames`` real frames after midnight at ``rate``."""

    frames: int
    rate: Fraction
    drop_frame: bool = False
    source: str = "container start time"  # where it was read
    vfr: bool = False  # the picture's frame rate varies; ``rate`` is its nominal rate

    @property
    def fps(self) -> int:
        """The frames a timecode second counts (24 for 23.976, 30 for 29.97)."""
        return max(1, round(self.rate))

    @property
    def text(self) -> str:
        return format_timecode(self.frames, self.rate, self.drop_frame)

    @property
    def seconds(self) -> Fraction:
        return Fraction(self.frames) / self.rate

    def samples(self, sample_rate: int) -> int:
        """Samples since midnight at ``sample_rate``: the BWF TimeReference of sample 0."""
        return round(Fraction(self.frames * sample_rate) / self.rate)

    def to_json(self) -> dict[str, Any]:
        return {
            "timecode": self.text,
            "frames": self.frames,
            "rate": f"{self.rate.numerator}/{self.rate.denominator}",
            "fps": float(self.rate),
            "drop_frame": self.drop_frame,
            "source": self.source,
            "vfr": self.vfr,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> StartTimecode:
        """Back from ``to_json`` (probe.json); a missing entry is 00:00:00:00 at 25."""
        if not d:
            return cls(0, Fraction(25))
        return cls(
            int(d["frames"]),
            Fraction(d["rate"]),
            bool(d.get("drop_frame")),
            str(d.get("source", "")),
            bool(d.get("vfr")),
        )


# ----------------------------------------------------------------------------- counting


def _drop_per_minute(rate: Fraction) -> int:
    return 2 * round(rate / 30) if rate in DROP_FRAME_RATES else 0


def parse_timecode(text: str, rate: Fraction) -> tuple[int, bool]:
    """``HH:MM:SS:FF`` (or ``;``/``.``/``,`` before FF for drop-frame) as real frames since
    midnight at ``rate`` and whether it is drop-frame; ValueError when it is not a valid
    timecode at that rate (out-of-range fields, a dropped label, drop-frame at a rate
    without it)."""
    m = _TC_RE.match(text.strip()) if isinstance(text, str) and len(text) <= 20 else None
    if not m:
        raise ValueError("not of the form HH:MM:SS:FF")
    hh, mm, ss, sep, ff = int(m[1]), int(m[2]), int(m[3]), m[4], int(m[5])
    fps = max(1, round(rate))
    if hh >= 24 or mm >= 60 or ss >= 60 or ff >= fps:
        raise ValueError(f"a field is out of range at {fps} frames a second")
    drop = sep != ":"
    if not drop:
        return (hh * 3600 + mm * 60 + ss) * fps + ff, False
    per = _drop_per_minute(rate)
    if not per:
        raise ValueError(f"drop-frame timecode at {float(rate):.3f} fps (only 29.97 and 59.94)")
    if ss == 0 and ff < per and mm % 10 != 0:
        raise ValueError("a drop-frame label that does not exist (dropped)")
    minutes = hh * 60 + mm
    labels = (minutes * 60 + ss) * fps + ff
    return labels - per * (minutes - minutes // 10), True


def format_timecode(frames: int, rate: Fraction, drop_frame: bool = False) -> str:
    """Real frames since midnight as ``HH:MM:SS:FF`` (``HH:MM:SS;FF`` for drop-frame)."""
    fps = max(1, round(rate))
    per = _drop_per_minute(rate) if drop_frame else 0
    if per:  # the labels skipped so far: ``per`` at each minute but every tenth
        per10 = fps * 600 - per * 9  # real frames in ten minutes
        per1 = fps * 60 - per  # real frames in a minute after the first of ten
        tens, rem = divmod(frames, per10)
        skipped = per * 9 * tens
        if rem > per:
            skipped += per * ((rem - per) // per1)
        frames += skipped
    ff = frames % fps
    total = frames // fps
    sep = ";" if per else ":"
    return f"{total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}{sep}{ff:02d}"


# ----------------------------------------------------------------------------- rates


def _fraction(text: Any) -> Fraction | None:
    try:
        f = Fraction(str(text))
    except (ValueError, ZeroDivisionError):
        return None
    return f if 0 < f < 1000 else None


def snap_rate(rate: Fraction, tolerance: float = 0.005) -> Fraction:
    """The broadcast rate within ``tolerance`` (relative) of ``rate``; else the rate
    itself as a whole number (a timecode counts whole frames a second)."""
    best = min(STANDARD_RATES, key=lambda r: abs(float(r) - float(rate)))
    if abs(float(best) - float(rate)) <= tolerance * float(best):
        return best
    return Fraction(max(1, round(rate)))


def _timecode_rate(probe: Any) -> tuple[Fraction, bool]:
    """(the timecode's rate, whether the picture's frame rate varies)."""
    v = probe.video.raw
    r = _fraction(v.get("r_frame_rate"))
    avg = _fraction(v.get("avg_frame_rate"))
    vfr = bool(r and avg and abs(float(r) - float(avg)) > 0.002 * float(r))
    for s in probe.streams:
        if s.raw.get("codec_tag_string") == "tmcd":
            own = _fraction(s.raw.get("avg_frame_rate"))
            if own:
                return snap_rate(own), vfr
    if vfr:
        assert avg is not None and r is not None
        near = snap_rate(avg, 0.05)
        return (near if near in STANDARD_RATES else snap_rate(r)), True
    for rate in (r, avg):
        if rate:
            return snap_rate(rate), False
    return Fraction(25), False


def _candidates(probe: Any) -> list[tuple[str, str]]:
    """(where, text) of every timecode tag, the most trusted first."""
    out: list[tuple[str, str]] = []

    def tags(d: dict[str, Any] | None) -> str | None:
        for k, val in (d or {}).items():
            if str(k).lower() == "timecode" and isinstance(val, str) and val.strip():
                return val
        return None

    video = probe.video
    tmcd = [s for s in probe.streams if s.raw.get("codec_tag_string") == "tmcd"]
    for s in tmcd:
        if t := tags(s.raw.get("tags")):
            out.append(("the tmcd track", t))
    if t := tags(video.raw.get("tags")):
        out.append(("the picture stream's timecode tag", t))
    if t := tags(probe.tags):
        out.append(("the container's timecode tag", t))
    for s in probe.streams:
        if s is not video and s not in tmcd and (t := tags(s.raw.get("tags"))):
            out.append((f"stream {s.index}'s timecode tag", t))
    return out


def read_start_timecode(probe: Any, picture_start: float = 0.0) -> tuple[StartTimecode, list[str]]:
    """The source's start timecode and warnings (a tag that could not be used).

    ``probe`` is a ``media.Probe``; ``picture_start`` the first frame's presentation time
    in seconds (``media.picture_start``), the fallback when no tag is usable."""
    rate, vfr = _timecode_rate(probe)
    warnings: list[str] = []
    for where, text in _candidates(probe):
        try:
            frames, drop = parse_timecode(text, rate)
        except ValueError as e:
            shown = text.encode("unicode_escape").decode()[:40]
            warnings.append(
                f"the timecode {shown!r} in {where} is not usable at "
                f"{float(rate):.3f} fps ({e}); the start timecode is taken from the container's "
                "start time instead"
            )
            continue
        return StartTimecode(frames, rate, drop, where, vfr), []
    start = picture_start if picture_start and picture_start > 0 else 0.0
    # the frame the start falls in (a picture 21 ms after an AAC track's priming is frame 0)
    at = Fraction(start).limit_denominator(10**9) * rate
    frames = math.floor(at + Fraction(1, 100)) % round(DAY_SECONDS * rate)
    drop = rate in DROP_FRAME_RATES
    return StartTimecode(frames, rate, drop, "container start time", vfr), warnings[:1]
