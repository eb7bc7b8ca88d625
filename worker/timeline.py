"""The job's timeline: ``timeline.otio`` (OpenTimelineIO) and its exports through OTIO's
adapters: FCP 7 XML (``otio-fcp-adapter``, Premiere Pro and DaVinci Resolve import it),
FCPXML (``otio-fcpx-xml-adapter``, Final Cut Pro) and CMX 3600 EDL
(``otio-cmx3600-adapter``).

Tracks, bottom up: V1 the source's picture, V2 (and up, one per object) the matte above it;
A1 the source's original audio, then the isolated stem(s) and the removed one (residual).
Every clip starts at the source's start timecode (``worker/timecode.py``) at its rate and
sits at the start of a timeline whose global start is that timecode, so frame 0 and sample
0 of every file land on it.

Where the adapters fall short, this module helps them, and says so here:

- FCP 7 XML: drop-frame timecode is asked for through the adapter's own ``fcp_xml``
  timecode metadata (``displayformat`` DF), or it would print drop-frame frames as NDF.
- FCPXML: the adapter's frame-duration table has no entry for the exact NTSC rates
  (24000/1001 ...) and it runs a bare ``ffprobe`` on every clip's file to name the
  format; the table gets the exact rates and the format name comes from the picture size
  we know (no subprocess). Its output gains what FCP reads and the adapter does not write:
  the sequence's ``tcStart``/``tcFormat`` and the format's ``width``/``height``.
  (Reading FCPXML back, the adapter counts frames at the rate rounded down to a whole
  number, 29 for 29.97: exact at whole rates, within a frame at NTSC rates.)
- CMX 3600: an EDL holds one track; the adapter writes the picture's events (the first
  track) and ignores audio, so ``timeline.edl`` lists the picture, with its record
  timecode at the source's start (a leading gap) like the other timelines.
"""

from __future__ import annotations

import math
import re
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from worker.errors import BadInput
from worker.timecode import StartTimecode

TIMELINE_FORMATS = ("otio", "fcp7xml", "fcpxml", "edl")
ADAPTERS = {"otio": "otio_json", "fcp7xml": "fcp_xml", "fcpxml": "fcpx_xml", "edl": "cmx_3600"}
_LOCK = threading.Lock()
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # an EDL is lines of text: no line breaks in names
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def parse_formats(text: str) -> list[str]:
    """``otio,fcp7xml,fcpxml,edl`` (any of them, comma-separated) or ``none``; BadInput else."""
    raw = [t.strip().lower() for t in str(text).split(",")]
    if raw == ["none"] or raw == [""]:
        return []
    bad = [t for t in raw if t not in TIMELINE_FORMATS]
    if bad or len(text) > 100:
        shown = (bad[0] if bad else text)[:40]
        raise BadInput(
            f"--timeline {shown!r}: choose from {', '.join(TIMELINE_FORMATS)} "
            "(comma-separated) or none"
        )
    return list(dict.fromkeys(raw))


@dataclass
class Media:
    """One clip of the timeline: a file (URL) and how many frames of it the clip shows."""

    name: str
    url: str
    frames: int


@dataclass
class TimelinePlan:
    """What goes on the timeline, in track order (see the module's docstring)."""

    name: str
    timecode: StartTimecode
    size: tuple[int, int]  # the picture's displayed size
    picture: Media
    original_audio: Media
    mattes: list[tuple[str, Media]] = field(default_factory=list)  # (track name, matte)
    stems: list[tuple[str, Media]] = field(default_factory=list)  # (track name, stem)


def frames_of_audio(samples: int, sample_rate: int, rate: Fraction) -> int:
    """Whole frames at ``rate`` that ``samples`` at ``sample_rate`` fill (rounded down:
    a clip never runs past its file)."""
    return max(1, math.floor(Fraction(samples) * rate / sample_rate))


def build(plan: TimelinePlan) -> Any:
    """The OTIO timeline of ``plan``."""
    import opentimelineio as otio

    tc = plan.timecode
    rate = float(tc.rate)
    start = otio.opentime.RationalTime(tc.frames, rate)
    # the FCP 7 adapter's own metadata: the counting rate comes from the clip's rate
    fcp_tc = {"timecode": {"displayformat": "DF" if tc.drop_frame else "NDF"}}

    def clip(media: Media) -> Any:  # names without what XML cannot hold (FCP XML, FCPXML)
        media = Media(_NOT_XML.sub("?", media.name), media.url, media.frames)
        span = otio.opentime.TimeRange(start, otio.opentime.RationalTime(media.frames, rate))
        ref = otio.schema.ExternalReference(
            target_url=media.url, available_range=span, metadata={"fcp_xml": fcp_tc}
        )
        return otio.schema.Clip(name=media.name, media_reference=ref, source_range=span)

    def track(name: str, kind: str, media: Media) -> Any:
        t = otio.schema.Track(name=name, kind=kind)
        t.append(clip(media))
        return t

    video, audio = otio.schema.TrackKind.Video, otio.schema.TrackKind.Audio
    tl = otio.schema.Timeline(
        name=_NOT_XML.sub("?", plan.name),
        global_start_time=start,
        metadata={
            "fcp_xml": fcp_tc,
            "sonomask": {
                "start_timecode": tc.text,
                "rate": f"{tc.rate.numerator}/{tc.rate.denominator}",
                "drop_frame": tc.drop_frame,
                "vfr": tc.vfr,
                "timecode_source": tc.source,
            },
        },
    )
    tl.tracks.append(track("picture", video, plan.picture))
    for name, media in plan.mattes:
        tl.tracks.append(track(name, video, media))
    tl.tracks.append(track("original audio", audio, plan.original_audio))
    for name, media in plan.stems:
        tl.tracks.append(track(name, audio, media))
    return tl


def write(plan: TimelinePlan, fmt: str, path: Path) -> None:
    """Write the timeline of ``plan`` as ``fmt`` (one of ``TIMELINE_FORMATS``) to ``path``."""
    import opentimelineio as otio

    tl = build(plan)
    if fmt == "otio":
        otio.adapters.write_to_file(tl, str(path), adapter_name="otio_json")
    elif fmt == "fcp7xml":
        text = otio.adapters.write_to_string(tl, adapter_name="fcp_xml")
        path.write_text(text, encoding="utf-8")
    elif fmt == "fcpxml":
        path.write_text(_fcpxml(tl, plan), encoding="utf-8")
    elif fmt == "edl":
        path.write_text(_edl(tl, plan), encoding="utf-8")
    else:
        raise BadInput(f"timeline format {fmt!r}: choose from {', '.join(TIMELINE_FORMATS)}")


# ----------------------------------------------------------------------------- FCPXML


def _fcpx_rate_code(rate: Fraction) -> str:
    """FCP's format-name rate: 2398, 25, 2997, 5994 ..."""
    if rate.denominator == 1001:
        return f"{round(rate * 100)}"
    return f"{round(rate)}"


def _fcpxml(tl: Any, plan: TimelinePlan) -> str:
    import opentimelineio as otio

    module = otio.adapters.from_name("fcpx_xml").module()
    w, h = plan.size
    rate = plan.timecode.rate
    name = f"FFVideoFormat{w}x{h}p{_fcpx_rate_code(rate)}"
    with _LOCK:
        table = module.FRAMERATE_FRAMEDURATION
        for exact in (Fraction(24000, 1001), Fraction(30000, 1001), Fraction(60000, 1001)):
            table.setdefault(float(exact), f"{exact.denominator}/{exact.numerator}s")
        if float(rate) not in table and int(float(rate)) not in table:
            table[float(rate)] = f"{rate.denominator}/{rate.numerator}s"
        saved = module.format_name
        module.format_name = lambda frame_rate, path: name  # no ffprobe on the files
        try:
            text = otio.adapters.write_to_string(tl, adapter_name="fcpx_xml")
        finally:
            module.format_name = saved
    root = ET.fromstring(text.split("<!DOCTYPE fcpxml>", 1)[-1].strip())
    for fmt in root.iter("format"):
        fmt.set("width", str(w))
        fmt.set("height", str(h))
    tc = plan.timecode
    start = Fraction(tc.frames) / tc.rate
    for seq in root.iter("sequence"):
        seq.set("tcStart", f"{start.numerator}/{start.denominator}s")
        seq.set("tcFormat", "DF" if tc.drop_frame else "NDF")
    ET.indent(root, "    ")
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n{body}\n'


# ----------------------------------------------------------------------------- EDL


def _edl(tl: Any, plan: TimelinePlan) -> str:
    import opentimelineio as otio

    tc = plan.timecode
    rate = float(tc.rate)
    picture = tl.tracks[0]
    track = otio.schema.Track(name="picture", kind=otio.schema.TrackKind.Video)
    if tc.frames:  # the record side starts at the source's timecode too
        gap = otio.opentime.TimeRange(
            otio.opentime.RationalTime(0, rate), otio.opentime.RationalTime(tc.frames, rate)
        )
        track.append(otio.schema.Gap(source_range=gap))
    clip = picture[0].clone()
    clip.name = _CONTROL.sub("?", clip.name)
    ref = clip.media_reference
    if getattr(ref, "target_url", None):
        ref.target_url = _CONTROL.sub("?", ref.target_url)
    track.append(clip)
    edl = otio.schema.Timeline(name=_CONTROL.sub("?", plan.name))
    edl.tracks.append(track)
    text = otio.adapters.write_to_string(edl, adapter_name="cmx_3600", rate=rate)
    fcm = "DROP FRAME" if tc.drop_frame else "NON-DROP FRAME"
    head, sep, rest = text.partition("\n\n")
    return f"{head}\nFCM: {fcm}\n\n{rest}" if sep else text
