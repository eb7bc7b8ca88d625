"""Media I/O with ffmpeg: probe, demux audio, decode frames, remux.

Untrusted input rules, applied to every ffmpeg/ffprobe call on a user's file:
- the file is sniffed first (playlists, concat lists, text and images are refused before
  any demuxer sees them);
- it is opened as ``file:<absolute path>`` with ``-protocol_whitelist file`` (no network,
  no pipes, no other protocols) and ``-format_whitelist`` limited to real media containers,
  so a playlist or concat file can never make ffmpeg open other files.

Timeline convention: everything sonomask writes is on the picture's clock. Sample 0 of
every audio array (and of the stems) is the presentation time of video frame 0, and frame
times are seconds from there. Audio that starts after the picture is padded with silence,
audio before the first frame is trimmed (with a warning).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np
import soundfile as sf

from worker import arrays
from worker.errors import BadInput, SonomaskError, as_sonomask_error
from worker.timecode import read_start_timecode

FORMAT_WHITELIST = ",".join(
    [
        "mov,mp4,m4a,3gp,3g2,mj2",
        "matroska,webm",
        "avi",
        "mpegts",
        "flv",
        "mxf",
        "asf",
        "ogg",
        "mpeg",
    ]
)
INPUT_OPTIONS = {"protocol_whitelist": "file", "format_whitelist": FORMAT_WHITELIST}
FFMPEG_QUIET = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
FFPROBE_SAFE = [
    "ffprobe",
    "-v",
    "error",
    "-protocol_whitelist",
    "file",
    "-format_whitelist",
    FORMAT_WHITELIST,
]
"""ffprobe on untrusted input: local files only, real media containers only."""
AUDIO_FORMAT_WHITELIST = FORMAT_WHITELIST + ",wav,w64,flac,mp3,aiff,caf"
"""Containers ``read_audio`` takes: the video containers and plain audio files (stems)."""

ProgressFn = Callable[[float, str], None]


# --------------------------------------------------------------------------- sniffing


_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF87a": "a GIF image",
    b"GIF89a": "a GIF image",
    b"BM": "a BMP image",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
}


def sniff(path: Path) -> None:
    """Refuse what is plainly not a media container, before any demuxer reads it."""
    name = path.name
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if not path.is_file():
        raise BadInput(f"{path}: not a regular file; give a video file")
    if path.stat().st_size == 0:
        raise BadInput(f"{name} is empty (0 bytes); give a video file")
    with path.open("rb") as f:
        head = f.read(4096)
    for magic, what in _IMAGE_MAGIC.items():
        if head.startswith(magic):
            raise BadInput(f"{name} is {what}, not a video; give a video with an audio track")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        raise BadInput(f"{name} is a WebP image, not a video; give a video with an audio track")
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    low = text[:64].lower()
    if low.startswith(b"#extm3u") or low.startswith(b"[playlist]"):
        raise BadInput(f"{name} is a playlist, not a media file; give the video file itself")
    if low.startswith(b"ffconcat") or low.startswith(b"file ") or low.startswith(b"file\t"):
        raise BadInput(f"{name} is an ffmpeg concat list, not a media file; give the video itself")
    if low.startswith(b"<?xml") or low.startswith(b"<mpd") or low.startswith(b"<smil"):
        raise BadInput(f"{name} is an XML manifest, not a media file; give the video itself")
    if _looks_like_text(head):
        raise BadInput(f"{name} is a text file, not a video; give a video with an audio track")


def _looks_like_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A multi-byte character cut at the 4096-byte boundary is still text.
        if e.start < len(head) - 4:
            return False
    return True


# --------------------------------------------------------------------------- probing


@dataclass
class Stream:
    index: int
    kind: str  # video | audio | subtitle | data | attachment
    codec: str
    raw: dict[str, Any]

    @property
    def start_time(self) -> float | None:
        v = self.raw.get("start_time")
        return float(v) if v not in (None, "N/A") else None

    @property
    def duration(self) -> float | None:
        v = self.raw.get("duration")
        return float(v) if v not in (None, "N/A") else None


@dataclass
class Probe:
    path: Path
    format_name: str
    format_start: float
    duration: float
    streams: list[Stream]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def video(self) -> Stream:
        """The main picture stream (not cover art)."""
        for s in self.streams:
            if s.kind == "video" and not s.raw.get("disposition", {}).get("attached_pic"):
                return s
        raise BadInput(f"{self.path.name} has no video stream; sonomask needs a picture to track")

    @property
    def audio_streams(self) -> list[Stream]:
        return [s for s in self.streams if s.kind == "audio"]

    def audio(self, n: int) -> Stream:
        streams = self.audio_streams
        if not streams:
            raise BadInput(f"{self.path.name} has no audio stream; there is no sound to separate")
        if n >= len(streams):
            raise BadInput(
                f"{self.path.name} has {len(streams)} audio stream(s); --audio-stream {n} does not exist"
            )
        return streams[n]

    @property
    def rotation(self) -> int:
        """Display rotation in degrees (0, 90, 180, 270) from the stream's display matrix."""
        v = self.video.raw
        rot = 0.0
        for sd in v.get("side_data_list", []) or []:
            if "rotation" in sd:
                rot = float(sd["rotation"])
        if not rot and "rotate" in v.get("tags", {}):
            rot = -float(v["tags"]["rotate"])
        return int(round(rot)) % 360

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of frames as shown (after rotation), which is what users draw on."""
        w, h = int(self.video.raw["width"]), int(self.video.raw["height"])
        return (h, w) if self.rotation in (90, 270) else (w, h)

    @property
    def frame_rate(self) -> float:
        for key in ("avg_frame_rate", "r_frame_rate"):
            fr = self.video.raw.get(key, "0/0")
            try:
                val = float(Fraction(fr))
            except (ZeroDivisionError, ValueError):
                continue
            if val > 0:
                return val
        return 25.0


def _input(path: Path, **extra: Any) -> Any:
    return ffmpeg.input(f"file:{path.resolve()}", **INPUT_OPTIONS, **extra)


def probe(path: Path, require_audio: bool = True) -> Probe:
    """Read the container and streams, refusing non-media, damaged and (if asked) soundless files."""
    path = Path(path)
    sniff(path)
    cmd = [
        *FFPROBE_SAFE,
        "-show_format",
        "-show_streams",
        "-of",
        "json",
        f"file:{path.resolve()}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        detail = _last_line(res.stderr)
        if "not on whitelist" in detail:
            raise BadInput(f"{path.name} is not a video container sonomask reads ({detail})")
        if "moov atom not found" in detail:
            raise BadInput(f"{path.name} is truncated or damaged (no index); re-export the video")
        raise BadInput(f"{path.name} is not a readable video file ({detail or 'ffprobe failed'})")
    info = json.loads(res.stdout or "{}")
    fmt = info.get("format", {})
    streams = [
        Stream(int(s["index"]), s.get("codec_type", "data"), s.get("codec_name", "none"), s)
        for s in info.get("streams", [])
    ]
    p = Probe(
        path=path,
        format_name=fmt.get("format_name", ""),
        format_start=float(fmt.get("start_time", 0) or 0),
        duration=float(fmt.get("duration", 0) or 0),
        streams=streams,
        tags=fmt.get("tags", {}) or {},
    )
    p.video  # noqa: B018 - validates presence
    if require_audio and not p.audio_streams:
        raise BadInput(f"{path.name} has no audio stream; there is no sound to separate")
    return p


def _last_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _ffmpeg_failed(what: str, stderr: str) -> SonomaskError:
    """One line for a failed ffmpeg run; a full disk is named as such, not as a decode error."""
    if "No space left on device" in stderr:
        return SonomaskError(
            f"no space left on device: ffmpeg could not {what}; free space in the work folder"
        )
    return SonomaskError(f"ffmpeg failed to {what}: {_last_line(stderr)}")


# --------------------------------------------------------------------------- running ffmpeg


def _run(
    stream: Any,
    what: str,
    progress_seconds: float | None = None,
    progress: ProgressFn | None = None,
) -> str:
    """Run an ffmpeg-python graph, raising a one-line error; returns stderr."""
    args = ffmpeg.compile(stream, overwrite_output=True)
    args = [args[0], "-hide_banner", "-nostdin", "-loglevel", "error", *args[1:]]
    return run_ffmpeg_args(args, what, progress_seconds, progress)


def run_ffmpeg_args(
    args: list[str],
    what: str,
    progress_seconds: float | None = None,
    progress: ProgressFn | None = None,
) -> str:
    if progress is not None and progress_seconds:
        args = [args[0], "-progress", "pipe:1", "-nostats", *args[1:]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_chunks: list[str] = []
    t = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    t.start()
    assert proc.stdout is not None
    for line in proc.stdout:
        if progress is not None and progress_seconds and line.startswith("out_time_us="):
            try:
                us = int(line.split("=", 1)[1])
            except ValueError:
                continue
            progress(min(1.0, us / 1e6 / progress_seconds), what)
    rc = proc.wait()
    t.join()
    stderr = "".join(err_chunks)
    if rc != 0:
        raise _ffmpeg_failed(what, stderr)
    return stderr


# --------------------------------------------------------------------------- audio


def read_audio(path: Path, rate: int) -> np.ndarray:
    """The first audio stream of a media or audio file, mixed down to mono (mean of the
    channels) at ``rate``: float32 [samples]. For scoring files (``sonomask judge``), not for
    jobs; untrusted input, so local files and known containers only."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    sniff(path)
    safe = ["-protocol_whitelist", "file", "-format_whitelist", AUDIO_FORMAT_WHITELIST]
    res = subprocess.run(
        [
            *FFMPEG_QUIET,
            *safe,
            "-i",
            f"file:{path.resolve()}",
            *("-map", "0:a:0", "-ac", "1", "-ar", str(rate)),
            *("-af", "aresample=resampler=soxr:precision=28"),
            *("-f", "f32le", "-c:a", "pcm_f32le", "pipe:1"),
        ],
        capture_output=True,
    )
    if res.returncode != 0:
        detail = _last_line(res.stderr.decode("utf-8", "replace"))
        if "matches no streams" in detail:
            raise BadInput(f"{path.name} has no audio stream")
        raise BadInput(f"{path.name} is not a readable audio file ({detail or 'ffmpeg failed'})")
    audio = np.frombuffer(res.stdout, dtype="<f4").astype(np.float32)
    if audio.size == 0:
        raise BadInput(f"{path.name} has no audio samples")
    return audio


@dataclass
class AudioInfo:
    sample_rate: int
    channels: int
    channel_layout: str
    codec: str
    bit_rate: int | None
    offset_seconds: float  # audio start minus picture start (positive: audio starts later)


def audio_info(p: Probe, n: int) -> AudioInfo:
    a = p.audio(n)
    v = p.video
    a0 = a.start_time if a.start_time is not None else p.format_start
    v0 = v.start_time if v.start_time is not None else p.format_start
    br = a.raw.get("bit_rate")
    return AudioInfo(
        sample_rate=int(a.raw.get("sample_rate", 0) or 0),
        channels=int(a.raw.get("channels", 0) or 0),
        channel_layout=a.raw.get("channel_layout", "") or "",
        codec=a.codec,
        bit_rate=int(br) if br and br != "N/A" else None,
        offset_seconds=a0 - v0,
    )


def picture_start(p: Probe) -> float:
    v = p.video
    return v.start_time if v.start_time is not None else p.format_start


def demux_audio(p: Probe, n: int, out_wav: Path, progress: ProgressFn | None = None) -> None:
    """Decode audio stream ``n`` to float32 WAV at its own rate and channels, on the picture clock.

    ffmpeg's ``aresample`` with ``first_pts`` pads or trims the start so that sample 0 is
    the picture's first frame; ``async`` fills gaps inside the stream the same way players do.
    """
    info = audio_info(p, n)
    if info.sample_rate <= 0 or info.channels <= 0:
        raise BadInput(f"{p.path.name}: audio stream {n} has no sample rate or channels")
    first = round(picture_start(p) * info.sample_rate)
    stream = _input(p.path, copyts=None)
    audio = stream[f"a:{n}"].filter("aresample", **{"async": 1, "first_pts": first})
    out = ffmpeg.output(audio, str(out_wav), acodec="pcm_f32le", f="wav", rf64="auto")
    _run(out, "decode the audio", p.duration, progress)


def mixdown_for_model(source_wav: Path, out_wav: Path, rate: int) -> None:
    """Mean of the channels (as SAM Audio's processor mixes down) at ``rate``, streamed.

    ``pan`` with explicit equal gains (no renormalisation) makes the plain mean; soxr
    resamples. Our own intermediate file, so no untrusted-input options are needed.
    """
    with sf.SoundFile(str(source_wav)) as f:
        channels = f.channels
    gains = "+".join(f"{1.0 / channels:.10f}*c{i}" for i in range(channels))
    args = [
        *FFMPEG_QUIET,
        "-i",
        str(source_wav),
        "-af",
        f"pan=mono|c0={gains},aresample={rate}:resampler=soxr:precision=28",
        "-c:a",
        "pcm_f32le",
        "-rf64",
        "auto",
        "-f",
        "wav",
        str(out_wav),
    ]
    run_ffmpeg_args(args, "make the model's mono copy")


# --------------------------------------------------------------------------- frames


def working_size(display: tuple[int, int], max_side: int = 480) -> tuple[int, int]:
    """Downscaled (w, h), even, keeping the aspect ratio; never upscaled."""
    w, h = display
    s = min(1.0, max_side / max(w, h))
    ww = max(2, int(round(w * s / 2)) * 2)
    hh = max(2, int(round(h * s / 2)) * 2)
    return ww, hh


_PTS_RE = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+)\s+pts_time:\s*(-?[\d.e+-]+)")


HWACCEL_NONE = "none"


def decode_frames(
    p: Probe,
    out_raw: Path,
    size: tuple[int, int],
    progress: ProgressFn | None = None,
    hwaccel: str = HWACCEL_NONE,
    threads: int = 0,
    notes: list[str] | None = None,
) -> np.ndarray:
    """Decode every frame (no drops or duplicates, also for VFR) scaled to ``size``.

    Writes raw RGB24 frames to ``out_raw`` and returns each frame's presentation time in
    seconds relative to frame 0. ffmpeg applies the display rotation. The picture is
    scaled inside ffmpeg's filter graph, so only working-size frames leave it.

    ``hwaccel`` is ffmpeg's ``-hwaccel`` (``auto``: a hardware decoder when ffmpeg finds a
    device, else its own; ``none``: never). A hardware decode that fails (no such
    hwaccel, no device, a stream the hardware refuses) is done again plainly, and a line
    saying so is appended to ``notes``. ``threads``: the decoder's threads (0: ffmpeg's
    choice, one per core).
    """
    return _decode_with_fallback(p, out_raw, size, progress, hwaccel, threads, notes, False)[0]


def decode_stored_frames(
    p: Probe,
    out: Path,
    size: tuple[int, int],
    progress: ProgressFn | None = None,
    hwaccel: str = HWACCEL_NONE,
    threads: int = 0,
    notes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``decode_frames``, but the frames go to ``out`` as lossless H.264
    (``arrays.VideoFramesWriter``), encoded here as ffmpeg hands them over. Returns the
    frames' times and their packets' byte offsets (n + 1, for ``arrays.VideoFrames``)."""
    times, offsets = _decode_with_fallback(p, out, size, progress, hwaccel, threads, notes, True)
    assert offsets is not None
    return times, offsets


def _decode_with_fallback(
    p: Probe,
    out: Path,
    size: tuple[int, int],
    progress: ProgressFn | None,
    hwaccel: str,
    threads: int,
    notes: list[str] | None,
    stored: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``_decode_frames`` with ``hwaccel``, redone plainly when the hardware decode fails."""
    if hwaccel and hwaccel != HWACCEL_NONE:
        try:
            return _decode_frames(p, out, size, progress, hwaccel, threads, stored)
        except SonomaskError as exc:
            if "no space left on device" in str(exc):
                raise
            if notes is not None:
                notes.append(f"hardware decoding ({hwaccel}) failed, decoded plainly: {exc}")
    return _decode_frames(p, out, size, progress, None, threads, stored)


def _decode_frames(
    p: Probe,
    out_raw: Path,
    size: tuple[int, int],
    progress: ProgressFn | None,
    hwaccel: str | None,
    threads: int,
    stored: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    w, h = size
    extra: dict[str, Any] = {"copyts": None}
    if hwaccel:
        extra["hwaccel"] = hwaccel
    if threads > 0:
        extra["threads"] = str(int(threads))
    stream = _input(p.path, **extra)
    v = stream[f"{_video_index_among(p)}"]
    v = v.filter("scale", w, h, flags="area").filter("showinfo")
    target = "pipe:1" if stored else str(out_raw)
    out = ffmpeg.output(v, target, f="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
    args = ffmpeg.compile(out, overwrite_output=True)
    args = [args[0], "-hide_banner", "-nostdin", "-loglevel", "info", *args[1:]]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE if stored else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    encoder = _FramePipe(proc, out_raw, (w, h)) if stored else None
    times: list[float] = []
    tail: list[str] = []
    total = p.duration or 1.0
    v0 = picture_start(p)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            m = _PTS_RE.search(line)
            if m:
                times.append(float(m.group(3)))
                if progress is not None and len(times) % 30 == 0:
                    progress(min(1.0, (times[-1] - v0) / total), "decode frames")
            elif "No space left on device" in line:
                tail = [line]  # the cause, whatever ffmpeg prints after it
            elif not any("No space left" in t for t in tail):
                tail = (tail + [line])[-5:]
        rc = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if encoder is not None:
            encoder.finish()
    if encoder is not None and encoder.error is not None:
        raise encoder.error  # the cause (a full disk): ffmpeg only saw its pipe close
    if rc != 0:
        raise _ffmpeg_failed("decode frames", "".join(tail))
    if not times:
        raise BadInput(f"{p.path.name}: no video frame could be decoded; the file is damaged")
    offsets = None
    if encoder is not None:
        offsets = np.asarray(encoder.offsets, dtype=np.int64)
        if len(offsets) != len(times) + 1:
            raise SonomaskError("frame decoding produced an unexpected number of frames")
    t = np.asarray(times, dtype=np.float64)
    return t - t[0], offsets


class _FramePipe:
    """Reads ffmpeg's raw frames from its stdout in a thread and stores them
    (``arrays.VideoFramesWriter``)."""

    def __init__(self, proc: subprocess.Popen[str], out: Path, size: tuple[int, int]) -> None:
        self.proc, self.out, self.size = proc, out, size
        self.offsets: list[int] = [0]  # where each stored frame starts, and the end
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._store()
        except Exception as exc:  # noqa: BLE001 - raised in the decoding thread after finish()
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                self.error = as_sonomask_error(exc)  # "no space left on device ..."
            elif isinstance(exc, SonomaskError):
                self.error = exc
            else:
                self.error = SonomaskError(f"could not store the working frames: {exc}")
            self.proc.kill()

    def _store(self) -> None:
        w, h = self.size
        frame_bytes = w * h * 3
        pipe = self.proc.stdout.buffer if hasattr(self.proc.stdout, "buffer") else self.proc.stdout
        writer = arrays.VideoFramesWriter(self.out, self.size)
        try:
            while buf := pipe.read(frame_bytes):
                if len(buf) != frame_bytes:
                    raise SonomaskError("ffmpeg stopped in the middle of a frame")
                writer.add(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
            writer.finish()
        finally:
            writer.close()
        self.offsets = writer.offsets

    def finish(self) -> None:
        self.thread.join()


def _video_index_among(p: Probe) -> str:
    """ffmpeg stream specifier of the main video stream (v:N among video streams)."""
    vids = [s for s in p.streams if s.kind == "video"]
    return f"v:{vids.index(p.video)}"


_COLOR_KEYS = {  # ffprobe's field -> ffmpeg's output option, for the colour tags passed on
    "color_range": "-color_range",
    "color_space": "-colorspace",
    "color_primaries": "-color_primaries",
    "color_transfer": "-color_trc",
}


def picture_color_args(p: Probe) -> list[str]:
    """The source's colour tags as output options (a re-encoded picture keeps its look)."""
    out: list[str] = []
    for key, opt in _COLOR_KEYS.items():
        value = str(p.video.raw.get(key, "") or "")
        if value and value != "unknown" and re.fullmatch(r"[a-z0-9_-]{1,32}", value):
            out += [opt, value]
    return out


def iter_picture(p: Probe, pix_fmt: str = "yuv444p16le") -> Any:
    """Every frame the pipeline decodes (no drops or duplicates, also for VFR), at the
    displayed size (rotation applied), as raw planes of ``pix_fmt``: yields bytes."""
    w, h = p.display_size
    bpp = {"yuv444p16le": 6, "yuv444p": 3, "rgb24": 3}[pix_fmt]
    size = w * h * bpp
    args = [*FFMPEG_QUIET, "-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST]
    args += ["-i", f"file:{p.path.resolve()}", "-map", f"0:{_video_index_among(p)}"]
    args += ["-an", "-sn", "-dn", "-fps_mode", "passthrough"]
    args += ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{w}x{h}", "pipe:1"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    assert proc.stdout is not None
    try:
        while True:
            frame = proc.stdout.read(size)
            if len(frame) < size:
                break
            yield frame
        rc = proc.wait()
        reader.join()
        if rc != 0:
            raise _ffmpeg_failed("decode the picture", b"".join(err).decode(errors="replace"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def encode_raw_video(
    frames: Any,
    size: tuple[int, int],
    pix_fmt: str,
    rate: Fraction,
    filter_script: Path,
    output_args: list[str],
    out: Path,
    time_base: int = 90000,
) -> None:
    """Encode raw frames (an iterable of bytes of ``pix_fmt`` at ``size``) to ``out``.

    Each frame's time comes from the ``setpts`` filter script (the source's timestamps,
    VFR included) on a 1/``time_base`` clock; ``rate`` is the nominal frame rate the
    container records (a MOV ``tmcd`` track counts at it). ``output_args`` hold the codec,
    container and metadata options (``-timecode`` among them)."""
    w, h = size
    args = [*FFMPEG_QUIET, "-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{w}x{h}"]
    args += ["-r", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0"]
    args += ["-filter_script:v", str(filter_script)]
    args += ["-fps_mode", "passthrough", "-enc_time_base", f"1/{time_base}"]
    args += [*output_args, str(out)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
        with contextlib.suppress(BrokenPipeError):
            for frame in frames:
                proc.stdin.write(frame)
            proc.stdin.close()
        rc = proc.wait()
        reader.join()
        if rc != 0:
            message = b"".join(err).decode(errors="replace").strip().splitlines()
            raise SonomaskError(
                f"ffmpeg failed to write {out.name}: {message[-1] if message else rc}"
            )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- remux

_OUTPUT_BY_EXT = {
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".3gp": "3gp",
    ".mkv": "matroska",
    ".webm": "webm",
    ".avi": "avi",
    ".ts": "mpegts",
    ".m2ts": "mpegts",
    ".mts": "mpegts",
    ".flv": "flv",
    ".ogv": "ogg",
    ".ogg": "ogg",
    ".mxf": "mxf",
    ".wmv": "asf",
    ".asf": "asf",
    ".mpg": "mpeg",
    ".mpeg": "mpeg",
}
_EXT_BY_FORMAT = {
    "mov": ".mp4",
    "matroska": ".mkv",
    "avi": ".avi",
    "mpegts": ".ts",
    "flv": ".flv",
    "mxf": ".mxf",
    "asf": ".wmv",
    "ogg": ".ogv",
    "mpeg": ".mpg",
}

# (codecs kept as they are, default codec) per muxer.
_AUDIO_CODECS: dict[str, tuple[set[str], str]] = {
    "mp4": ({"aac", "ac3", "eac3", "alac", "mp3", "flac", "opus"}, "aac"),
    "3gp": ({"aac"}, "aac"),
    "mov": (
        {
            "aac",
            "alac",
            "ac3",
            "pcm_s16le",
            "pcm_s24le",
            "pcm_s32le",
            "pcm_f32le",
            "pcm_s16be",
            "pcm_s24be",
        },
        "pcm_s24le",
    ),
    "matroska": (
        {
            "flac",
            "aac",
            "opus",
            "vorbis",
            "ac3",
            "eac3",
            "mp3",
            "alac",
            "pcm_s16le",
            "pcm_s24le",
            "pcm_s32le",
            "pcm_f32le",
        },
        "flac",
    ),
    "webm": ({"opus", "vorbis"}, "opus"),
    "avi": ({"pcm_s16le", "mp3", "ac3"}, "pcm_s16le"),
    "mpegts": ({"aac", "ac3", "eac3", "mp2", "mp3"}, "aac"),
    "flv": ({"aac", "mp3"}, "aac"),
    "ogg": ({"vorbis", "opus", "flac"}, "vorbis"),
    "mxf": ({"pcm_s16le", "pcm_s24le"}, "pcm_s24le"),
    "asf": ({"wmav2"}, "wmav2"),
    "mpeg": ({"mp2", "ac3"}, "mp2"),
}
_ENCODER = {"opus": "libopus", "vorbis": "libvorbis", "mp3": "libmp3lame"}
_LOSSY = {"aac", "ac3", "eac3", "mp3", "opus", "vorbis", "mp2", "wmav2"}
_OPUS_RATES = {8000, 12000, 16000, 24000, 48000}


@dataclass
class RemuxPlan:
    muxer: str
    ext: str
    codec: str
    options: dict[str, Any]
    warnings: list[str]


def plan_remux(p: Probe, n: int) -> RemuxPlan:
    """Pick the output container (the source's) and the audio codec the container supports."""
    ext = p.path.suffix.lower()
    muxer = _OUTPUT_BY_EXT.get(ext)
    if muxer is None:
        first = p.format_name.split(",")[0]
        ext = _EXT_BY_FORMAT.get(first, ".mkv")
        muxer = _OUTPUT_BY_EXT[ext]
    info = audio_info(p, n)
    keep, default = _AUDIO_CODECS[muxer]
    codec = info.codec if info.codec in keep else default
    warnings: list[str] = []
    opts: dict[str, Any] = {}
    if codec in _LOSSY:
        per_ch = 96_000 if codec != "opus" else 64_000
        br = info.bit_rate or per_ch * max(1, info.channels)
        opts["b"] = str(max(br, 64_000 * min(info.channels, 2)))
    if codec == "flac":
        opts["sample_fmt"] = "s32"
        opts["bits_per_raw_sample"] = 24
    if codec == "opus" and info.sample_rate not in _OPUS_RATES:
        opts["ar"] = 48000
        warnings.append(f"Opus cannot store {info.sample_rate} Hz; the remuxed audio is 48000 Hz")
    if codec == "aac" and info.channels > 2 and info.channel_layout.endswith("(side)"):
        pass
    return RemuxPlan(muxer, ext, codec, opts, warnings)


def remux(
    p: Probe,
    n: int,
    new_audio: Path,
    out_path: Path,
    plan: RemuxPlan,
    progress: ProgressFn | None = None,
    keep_original: bool = False,
) -> list[str]:
    """Write ``out_path``: the source with audio stream ``n`` replaced by ``new_audio``.

    Picture, other audio tracks, subtitles, data/timecode and attachments are copied
    (``-c copy``), global and per-stream metadata and chapters kept; the new audio keeps
    the replaced stream's position, tags and disposition, and starts at the first frame.
    A data stream the output muxer cannot carry is dropped with a warning (returned),
    rather than failing the job; MP4 timecode tracks are rebuilt from the timecode tag.
    """
    try:
        _remux(p, n, new_audio, out_path, plan, progress, True, keep_original)
        return []
    except SonomaskError:
        data = [s for s in p.streams if s.kind == "data" and not _is_tmcd(s, plan)]
        if not data:
            raise
    _remux(p, n, new_audio, out_path, plan, progress, False, keep_original)
    return [
        f"data stream {s.index} ({s.raw.get('codec_tag_string', s.codec)}) could not be "
        f"carried into {plan.muxer} and was left out"
        for s in data
    ]


def _is_tmcd(s: Stream, plan: RemuxPlan) -> bool:
    return plan.muxer == "mp4" and s.raw.get("codec_tag_string") == "tmcd"


def _remux(
    p: Probe,
    n: int,
    new_audio: Path,
    out_path: Path,
    plan: RemuxPlan,
    progress: ProgressFn | None,
    keep_data: bool,
    keep_original: bool = False,
) -> None:
    target = p.audio(n)
    offset = picture_start(p) - p.format_start
    info = audio_info(p, n)
    args = list(FFMPEG_QUIET)
    args += ["-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST]
    args += ["-i", f"file:{p.path.resolve()}"]
    if info.channel_layout:
        args += ["-ch_layout", info.channel_layout]
    args += ["-itsoffset", f"{offset:.6f}", "-i", f"file:{new_audio.resolve()}"]
    out_index = 0
    new_index = -1
    metadata: list[str] = []  # explicit per-stream tags: any one disables ffmpeg's default copy
    for s in p.streams:
        if s.kind == "attachment":
            continue  # mapped below with -map 0:t, Matroska only
        if s.index == target.index:
            args += ["-map", "1:a:0"]
            new_index = out_index
            if keep_original:  # the untouched source audio right after it, not default
                metadata += [f"-map_metadata:s:{out_index}", f"0:s:{s.index}"]
                out_index += 1
                args += [
                    "-map",
                    f"0:{s.index}",
                    f"-disposition:{out_index}",
                    "0",
                    f"-metadata:s:{out_index}",
                    "title=original audio",
                    f"-metadata:s:{out_index}",
                    "handler_name=original audio",
                ]
        elif s.kind in ("video", "audio", "subtitle", "data"):
            if s.kind == "data" and (not keep_data or _is_tmcd(s, plan)):
                continue
            args += ["-map", f"0:{s.index}"]
        else:
            continue
        metadata += [f"-map_metadata:s:{out_index}", f"0:s:{s.index}"]
        out_index += 1
    if plan.muxer == "matroska" and any(s.kind == "attachment" for s in p.streams):
        args += ["-map", "0:t?"]
    args += ["-c", "copy", f"-c:{new_index}", _ENCODER.get(plan.codec, plan.codec)]
    for k, v in plan.options.items():
        args += [f"-{k}:{new_index}", str(v)]
    if plan.codec == "opus":
        args += [f"-mapping_family:{new_index}", "255" if info.channels > 8 else "-1"]
    args += ["-map_metadata", "0", "-map_chapters", "0"]
    timecode = _timecode(p)
    if timecode and plan.muxer in ("mp4", "mov"):
        args += ["-timecode", timecode]
    args += metadata
    disp = "+".join(k for k, v in target.raw.get("disposition", {}).items() if v == 1) or "0"
    args += [f"-disposition:{new_index}", disp]
    if plan.muxer in ("mp4", "mov"):
        args += ["-movflags", "+faststart", "-strict", "experimental"]
    args += ["-f", plan.muxer, str(out_path)]
    run_ffmpeg_args(args, f"write {out_path.name}", p.duration, progress)


STEMS_CONTAINERS = {"mkv": "matroska", "mov": "mov"}
_STEM_CODEC = {"pcm24": "pcm_s24le", "float32": "pcm_f32le"}


def remux_stems(
    p: Probe,
    n: int,
    stems: list[tuple[str, Path]],
    out_path: Path,
    container: str = "mkv",
    stem_format: str = "pcm24",
    progress: ProgressFn | None = None,
) -> None:
    """Write ``out_path``: the source's picture stream-copied and one PCM audio track per
    (title, WAV) of ``stems``, in order, each titled and handler-named by its title, at the
    WAVs' rate and with audio stream ``n``'s channel layout, starting at the first frame.

    Matroska carries both the title and the handler name of a track; MOV (ffmpeg's muxer)
    carries the handler name only, which is what QuickTime-family NLEs show."""
    if container not in STEMS_CONTAINERS:
        raise BadInput(f"stems container {container!r}: choose mkv or mov")
    offset = picture_start(p) - p.format_start
    info = audio_info(p, n)
    args = list(FFMPEG_QUIET)
    args += ["-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST]
    args += ["-i", f"file:{p.path.resolve()}"]
    for _, wav in stems:
        if info.channel_layout:
            args += ["-ch_layout", info.channel_layout]
        args += ["-itsoffset", f"{offset:.6f}", "-i", f"file:{wav.resolve()}"]
    args += ["-map", f"0:{_video_index_among(p)}"]
    for i in range(len(stems)):
        args += ["-map", f"{i + 1}:a:0"]
    args += ["-c:v", "copy", "-c:a", _STEM_CODEC.get(stem_format, "pcm_s24le")]
    args += ["-map_metadata", "-1", "-map_metadata:s:v:0", "0:s:" + _video_index_among(p)]
    for i, (title, _) in enumerate(stems):
        args += [
            f"-metadata:s:a:{i}",
            f"title={title}",
            f"-metadata:s:a:{i}",
            f"handler_name={title}",
        ]
        args += [f"-disposition:a:{i}", "default" if i == 0 else "0"]
    muxer = STEMS_CONTAINERS[container]
    timecode = _timecode(p)
    if timecode:  # the stems start where the source does (mov: a tmcd track)
        args += ["-timecode", timecode]
    if muxer == "mov":
        args += ["-movflags", "+faststart"]
    args += ["-f", muxer, f"file:{out_path.resolve()}"]
    run_ffmpeg_args(args, f"write {out_path.name}", p.duration, progress)


def _timecode(p: Probe) -> str | None:
    """The source's start timecode tag when it is a valid timecode at its rate, else None:
    a garbage tag handed to ``-timecode`` would make ffmpeg refuse the whole output."""
    tc, _ = read_start_timecode(p, picture_start(p))
    return tc.text if tc.source != "container start time" else None


def stream_md5(path: Path, selector: str = "v") -> str:
    """MD5 of the copied packets of the selected streams (for bit-exactness checks)."""
    res = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            f"0:{selector}",
            "-c",
            "copy",
            "-f",
            "md5",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return res.stdout.strip()


def remove_quietly(*paths: Path) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- single frames


_SHOWINFO_RE = re.compile(r"\bn:\s*\d+\s+pts:\s*(-?\d+)\s+pts_time:")


_TB_RE = re.compile(r"time_base:\s*(\d+)/(\d+)")


def frame_pts(p: Probe) -> tuple[list[int], float]:
    """Presentation timestamps (stream ticks, sorted) of every frame, and the tick length.

    Read from packets (no decoding, fast on long files); packets the demuxer marks as
    discarded (``D``: before an edit list's start) are not frames the pipeline decodes.
    """
    v = p.video
    tb = str(v.raw.get("time_base", "1/1000"))
    num, den = (int(x) for x in tb.split("/"))
    res = subprocess.run(
        [
            *FFPROBE_SAFE,
            "-select_streams",
            str(v.index),
            "-show_entries",
            "packet=pts,dts,flags",
            "-of",
            "csv=p=0",
            f"file:{p.path.resolve()}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        raise BadInput(f"{p.path.name}: the picture's packets could not be read")
    pts: list[int] = []
    for line in res.stdout.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 3 or "D" in parts[2]:
            continue
        value = parts[0] if parts[0] not in ("", "N/A") else parts[1]
        if value in ("", "N/A"):
            continue
        pts.append(int(value))
    pts.sort()
    if not pts:
        raise BadInput(f"{p.path.name}: no video frame could be read; the file is damaged")
    return pts, num / den


def frame_count(p: Probe) -> int:
    """How many frames the pipeline will decode from ``p`` (read from packets: fast)."""
    return len(frame_pts(p)[0])


def video_specifier(p: Probe) -> str:
    vids = [s for s in p.streams if s.kind == "video"]
    return f"v:{vids.index(p.video)}"


def extract_frame(meta: dict[str, Any], pts: np.ndarray, n: int, max_side: int) -> bytes:
    """JPEG of frame ``n`` (the n-th frame the pipeline decodes), scaled to ``max_side``.

    Seeks to a second before the frame and selects it by timestamp, then checks the frame
    that came out really has frame n's timestamp; where the container's seeking is not
    exact (MPEG-TS, files with few keyframes) it decodes from the start instead, which
    reaches every frame in order, like the pipeline's decode.
    """
    tick = float(meta["tick"])
    target = int(pts[n])
    threshold = -1e18 if n == 0 else (int(pts[n - 1]) + target) / 2 * tick
    w, h = int(meta["width"]), int(meta["height"])
    s = min(1.0, max_side / max(w, h))
    sw, sh = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
    seek = target * tick - float(meta["format_start"]) - 1.0
    if seek > 0:
        jpeg, got = _run_frame(meta, threshold, sw, sh, seek)
        if jpeg and got is not None and abs(got - target * tick) <= 0.25 * _gap(pts, n) * tick:
            return jpeg
    jpeg, _ = _run_frame(meta, threshold, sw, sh, None)
    if jpeg:
        return jpeg
    raise BadInput(f"frame {n} of {meta['name']} could not be decoded")


def _gap(pts: np.ndarray, n: int) -> float:
    """Ticks to the nearest neighbouring frame (the tolerance scale for a timestamp match)."""
    gaps = [abs(int(pts[i]) - int(pts[n])) for i in (n - 1, n + 1) if 0 <= i < len(pts)]
    return float(min(gaps)) if gaps else 1.0


def _run_frame(
    meta: dict[str, Any], threshold: float, sw: int, sh: int, seek: float | None
) -> tuple[bytes, float | None]:
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "info", "-copyts"]
    if seek is not None:
        args += ["-noaccurate_seek", "-ss", f"{seek:.6f}"]
    args += ["-protocol_whitelist", "file", "-format_whitelist", FORMAT_WHITELIST]
    args += ["-i", f"file:{meta['path']}", "-map", f"0:{meta['video_index']}", "-an", "-sn", "-dn"]
    vf = f"select=gte(t\\,{threshold:.9f}),showinfo,scale={sw}:{sh}:flags=area,format=yuvj420p"
    args += ["-vf", vf, "-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "3"]
    args += ["pipe:1"]
    res = subprocess.run(args, capture_output=True, timeout=120)
    err = res.stderr.decode(errors="replace")
    m, tb = _SHOWINFO_RE.search(err), _TB_RE.search(err)
    if res.returncode != 0 or not m or not tb:
        return b"", None
    return res.stdout, int(m.group(1)) * int(tb.group(1)) / int(tb.group(2))


# --------------------------------------------------------------------------- preview encoding


PREVIEW_X264 = ["-c:v", "libx264", "-preset", "superfast", "-crf", "28", "-pix_fmt", "yuv420p"]
"""The preview's encoding: it is for looking at the tracking, not for keeping."""


class PreviewEncoder:
    """A small H.264 MP4 fed raw RGB frames on stdin: the preview the job and ``track`` write.

    ``audio`` (a WAV) is muxed in as AAC and the video cut to the shorter of the two;
    without, the picture alone (``mux_preview`` adds the sound later).
    """

    def __init__(self, size: tuple[int, int], fps: float, audio: Path | None, out: Path):
        w, h = size
        args = [*FFMPEG_QUIET, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}"]
        args += ["-r", f"{fps:.6f}", "-i", "pipe:0"]
        if audio is not None:
            args += ["-i", str(audio), "-map", "0:v", "-map", "1:a"]
            args += ["-c:a", "aac", "-b:a", "96k", "-shortest"]
        args += PREVIEW_X264
        args += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-movflags", "+faststart"]
        args += ["-f", "mp4", str(out)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        self._open = True

    def write(self, frames: np.ndarray) -> None:
        """Frames uint8 [n, h, w, 3]; ffmpeg closing early (it has what it needs) is fine."""
        if not self._open:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(np.ascontiguousarray(frames).tobytes())
        except BrokenPipeError:
            self._open = False

    def __enter__(self) -> PreviewEncoder:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        with contextlib.suppress(BrokenPipeError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
        rc = self.proc.wait()
        if exc_type is None and rc != 0:
            raise SonomaskError(f"ffmpeg failed to write the preview: {err.strip()[-300:]}")


def mux_preview(picture: Path, audio: Path | None, out: Path) -> None:
    """The preview: ``picture`` (an H.264 MP4 of ``PreviewEncoder``, no sound) with
    ``audio`` (a WAV of ours) as AAC, the picture copied, cut to the shorter of the two."""
    args = [*FFMPEG_QUIET, "-i", str(picture)]
    if audio is not None:
        args += ["-i", str(audio), "-map", "0:v", "-map", "1:a"]
        args += ["-c:a", "aac", "-b:a", "96k", "-shortest"]
    args += ["-c:v", "copy", "-movflags", "+faststart", "-f", "mp4", str(out)]
    run_ffmpeg_args(args, "write the preview")
