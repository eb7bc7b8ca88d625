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
  Reading FCPXML back, the adapter counts frames at the rate truncated to a whole number
  (29 for 29.97) and truncates every time to a frame at that rate, so an NTSC file reads
  back up to a frame off; ``read_fcpxml`` reads it through the same adapter with those two
  helpers counting at the exact rate (the file itself is exact either way).
- CMX 3600: the adapter writes the events of the first track only. An EDL holds one
  picture channel and two audio channels (``A``, ``A2``), so ``timeline.edl`` lists the
  picture (V) and the first two stems (A, A2: the isolated and the removed sound of a
  one-object job; the first two objects' stems of a multi-object job), each written
  by the adapter's own event writer and numbered in one list; every record timecode
  starts at the source's start (a leading gap), like the other timelines.
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

    module = otio.adapters.from_name("cmx_3600").module()
    tc = plan.timecode
    rate = float(tc.rate)
    audio = [t for t in tl.tracks if t.kind == otio.schema.TrackKind.Audio]
    stems = audio[1:3]  # after the original audio: the first two stems (A, A2)
    edl = otio.schema.Timeline(name=_CONTROL.sub("?", plan.name))
    for source in [tl.tracks[0], *stems]:
        track = otio.schema.Track(name=source.name, kind=source.kind)
        if tc.frames:  # the record side starts at the source's timecode too
            gap = otio.opentime.TimeRange(
                otio.opentime.RationalTime(0, rate), otio.opentime.RationalTime(tc.frames, rate)
            )
            track.append(otio.schema.Gap(source_range=gap))
        clip = source[0].clone()
        clip.name = _CONTROL.sub("?", clip.name)
        ref = clip.media_reference
        if getattr(ref, "target_url", None):
            ref.target_url = _CONTROL.sub("?", ref.target_url)
        track.append(clip)
        edl.tracks.append(track)
    # the adapter's entry point writes the first track only; its writer does each track
    writer = module.EDLWriter(tracks=edl.tracks, rate=rate, style="avid", reelname_len=8)
    events: list[list[str]] = []
    for index, channel in enumerate(["V", "A", "A2"][: len(edl.tracks)]):
        text = writer.get_content_for_track_at_index(index, title=None)
        for line in text.splitlines():
            if re.match(r"\d{3} ", line):
                head, reel, _kind, rest = line.split(None, 3)
                events.append([f"{len(events) + 1:03d}  {reel:8} {channel:5} {rest}"])
            elif line.strip() and events:
                events[-1].append(line)
    fcm = "DROP FRAME" if tc.drop_frame else "NON-DROP FRAME"
    body = "\n".join("\n".join(e) for e in events)
    return f"TITLE: {edl.name}\nFCM: {fcm}\n\n{body}\n"


def read_fcpxml(path: Path) -> Any:
    """Read an FCPXML file with OTIO's adapter, counting at the file's exact frame rate.

    The adapter (1.0.0) turns ``frameDuration="1001/30000s"`` into a rate of ``int(29.97)``
    = 29 and truncates every time to a frame at that rate; here its two time helpers count
    with exact fractions for the duration of the read (see the module docstring).
    """
    import opentimelineio as otio

    module = otio.adapters.from_name("fcpx_xml").module()
    reader = module.FcpxXml

    def exact_rate(self: Any, format_id: str) -> float:
        total, per = self._format_frame_duration(format_id)
        return float(Fraction(per) / Fraction(total))

    def frames(seconds: str | None, fps: float) -> int:
        if seconds in (None, "0s"):
            return 0
        num, _, den = seconds.removesuffix("s").partition("/")
        exact = Fraction(num) / Fraction(den or 1)
        return math.floor(exact * Fraction(fps).limit_denominator(100_000))

    def to_rational_time(seconds: str | None, fps: float) -> Any:
        return otio.opentime.RationalTime(frames(seconds, fps), float(fps))

    def number_of_frames(self: Any, seconds: str | None, format_id: str) -> int:
        return frames(seconds, exact_rate(self, format_id))

    with _LOCK:
        saved = (module.to_rational_time, reader._format_frame_rate, reader._number_of_frames)
        module.to_rational_time = to_rational_time
        reader._format_frame_rate = exact_rate
        reader._number_of_frames = number_of_frames
        try:
            return otio.adapters.read_from_file(str(path), adapter_name="fcpx_xml")
        finally:
            module.to_rational_time, reader._format_frame_rate, reader._number_of_frames = saved
