"""Tracking preview for an upload session: the job's track stage alone, before the job.

The web page sends the keyframes drawn so far (mask PNGs at the video's size with their
frame numbers, as it sends them to ``POST /v1/jobs``) to ``POST /v1/uploads/{id}/track``.
The tracker the job would use (``worker.stages.track`` chooses it, through
``vision.choose``) carries them through the clip's frames decoded as the demux stage
decodes them (every frame, longest side at most 480 px: ``media.working_size``), so what
the page shows is what the job will get. ``GET .../track`` says how far it is;
``GET .../track/masks/{n}.png`` is frame ``n``'s mask at the video's size, scaled up as
the track stage scales it (on a keyframe: the drawn mask itself).

Why a background thread that the page polls, not an answer at the end of the request: an
upload may be hours long (``SONOMASK_MAX_VIDEO_SECONDS``) and the first preview decodes
and tracks every frame, which takes minutes, longer than proxies keep a request open. The
thread runs in the API process (``slots`` at once; the others wait as ``queued``). Its
state is a file in the session, so any API process answers the polling, and a lock file
held while it runs tells a run whose process died from one still going.

Re-tracking only what changed. With the flow and copy trackers a frame's mask depends only
on the keyframes either side of it (``vision.propagate``: before the first keyframe it is
tracked back from it, after the last forward from it, between two from both). So the clip
is cut into segments, each named after the tracker and the keyframes (frame and mask hash)
that decide it. A run tracks only the segments whose names are new, each on the slice of
frames from one keyframe to the next, and leaves every other frame as it is. A correction
at frame k re-tracks the frames between its neighbouring keyframes, and the answer lists
them (``retracked``). The result is the same as tracking the whole clip at once
(tests/test_web.py checks it frame by frame against the track stage). Trackers that carry
a memory through the whole clip (SAM 2 and the other model trackers) make one segment: any
change re-tracks every frame, as the job will; their weights load in the API process.

Files, all in ``<session>/track/`` and gone when the session expires: ``frames.h264``,
``frame_offsets.npy`` and ``times.npy`` (the working frames, stored as a job stores them),
``masks.npy`` (working-size masks), ``stats.npz`` (each frame's mask area and whether it touches the border, for the
warnings), ``keys/<hash>.png`` (the keyframes as the job reads them), ``state.json``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from fastapi import HTTPException
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from vision import masks as vmasks
from vision.sink import MaskSink, track_warnings
from worker import arrays, media
from worker.arrays import RowFile, VideoFrames
from worker.errors import BadInput, as_sonomask_error
from worker.http import safejson
from worker.settings import Settings
from worker.spec import JobSpec, first_error
from worker.stages.models import check_tracker_config
from worker.stages.track import choose_job_tracker

log = logging.getLogger("sonomask.api")

FOLDER = "track"  # inside the upload session's folder
LOCAL_TRACKERS = frozenset({"flow", "copy"})  # a frame depends only on its neighbouring keyframes
SPEC_KEYS = ("mask_frames", "tracker", "tracker_model")
MAX_SPEC_BYTES = 1 << 16
RUNNING = ("queued", "running")
_STATE = "state.json"
_LOCK = ".lock"
_SAVE_EVERY = 0.25  # seconds between progress writes


class TrackState(BaseModel):
    """Where the tracking preview of an upload stands (``GET /v1/uploads/{id}/track``)."""

    state: Literal["none", "queued", "running", "done", "failed"]
    run: int = Field(0, ge=0, description="counts the previews of this upload")
    progress: float = Field(0.0, ge=0, le=1)
    message: str = ""
    tracker: str | None = None
    keyframes: list[int] = Field(default_factory=list, description="the keyframes tracked")
    frames: int | None = Field(None, description="frames decoded (as the job decodes them)")
    working_size: list[int] | None = Field(None, description="[w, h] tracking runs at")
    tracked: list[list[int]] = Field(
        default_factory=list, description="[first, last] runs of frames that have a mask"
    )
    retracked: list[list[int]] = Field(
        default_factory=list, description="[first, last] runs of frames the last run tracked"
    )
    frames_retracked: int = 0
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None
    seconds: float | None = None


# ----------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Segment:
    """Frames whose masks the same keyframes decide: ``first..last`` (inclusive), tracked
    on the slice of frames ``lo..hi`` holding the keyframes ``keys``."""

    key: str
    first: int
    last: int
    lo: int
    hi: int
    keys: tuple[int, ...]


def plan(n: int, keyframes: dict[int, str], tracker: str, local: bool) -> list[Segment]:
    """The segments of an ``n``-frame clip for these keyframes (frame -> mask hash)."""
    order = sorted(keyframes)
    name = {k: f"{k}:{keyframes[k]}" for k in order}
    if not local:
        every = ",".join(name[k] for k in order)
        return [Segment(f"{tracker}|all|{every}", 0, n - 1, 0, n - 1, tuple(order))]
    out = [Segment(f"{tracker}|key|{name[k]}", k, k, k, k, (k,)) for k in order]
    first, last = order[0], order[-1]
    if first > 0:
        out.append(Segment(f"{tracker}|-|{name[first]}", 0, first - 1, 0, first, (first,)))
    for a, b in zip(order, order[1:], strict=False):
        if b - a >= 2:
            out.append(Segment(f"{tracker}|{name[a]}|{name[b]}", a + 1, b - 1, a, b, (a, b)))
    if last < n - 1:
        out.append(Segment(f"{tracker}|{name[last]}|-", last + 1, n - 1, last, n - 1, (last,)))
    return sorted(out, key=lambda s: s.first)


def runs(frames: list[tuple[int, int]]) -> list[list[int]]:
    """Inclusive ranges merged where they touch: [(0, 0), (1, 39)] -> [[0, 39]]."""
    out: list[list[int]] = []
    for a, b in sorted(frames):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def mask_hash(mask: np.ndarray) -> str:
    """A short name for a mask's pixels (the same drawing re-encoded keeps its name)."""
    m = np.asarray(mask, dtype=bool)
    h = hashlib.sha256(f"{m.shape}".encode() + np.packbits(m).tobytes())
    return h.hexdigest()[:20]


# ----------------------------------------------------------------------------- state


def _folder(session: Path) -> Path:
    return session / FOLDER


def _read(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / _STATE).read_text())
    except (FileNotFoundError, ValueError):
        return {"state": "none"}


def _write(folder: Path, st: dict[str, Any]) -> None:
    part = folder / f".{_STATE}.{uuid.uuid4().hex[:8]}"
    part.write_text(json.dumps(st))
    os.replace(part, folder / _STATE)


def _try_lock(folder: Path) -> int | None:
    """The run lock's descriptor when it was free, else None (a run is going on)."""
    fd = os.open(folder / _LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def public(st: dict[str, Any]) -> dict[str, Any]:
    """The state as the page sees it (no mask hashes, no bookkeeping)."""
    segments = st.get("segments", {})
    doc = {k: st[k] for k in TrackState.model_fields if k in st}
    doc["tracked"] = runs([tuple(v) for v in segments.values()])
    return TrackState(**doc).model_dump()


def state(session: Path) -> dict[str, Any]:
    """The preview's state; a run whose process is gone is reported as failed."""
    folder = _folder(session)
    st = _read(folder)
    if st["state"] in RUNNING and folder.is_dir():
        fd = _try_lock(folder)
        if fd is not None:  # nobody holds the lock: the process running it died
            _unlock(fd)
            st.update(
                state="failed",
                error="the preview stopped (the server restarted); press Preview tracking again",
            )
    return public(st)


# ----------------------------------------------------------------------------- starting


def _spec_fields(raw: str) -> dict[str, Any]:
    if len(raw) > MAX_SPEC_BYTES:
        raise HTTPException(413, f"the 'spec' field is larger than {MAX_SPEC_BYTES} bytes")
    fields = safejson.loads(raw, "the 'spec' field")
    if not isinstance(fields, dict):
        raise HTTPException(400, "the 'spec' field must be a JSON object")
    extra = sorted(str(k)[:40] for k in fields if k not in SPEC_KEYS)
    if extra:
        raise HTTPException(
            400, f"spec field(s) {extra[:8]} are not used by tracking; send {', '.join(SPEC_KEYS)}"
        )
    if not isinstance(fields.get("mask_frames"), list):
        raise HTTPException(400, "mask_frames: give the frame number of each 'mask', in order")
    return fields


def start(
    session: Path,
    meta: dict[str, Any],
    raw_spec: str,
    masks: list[UploadFile],
    settings: Settings,
    slots: threading.Semaphore,
) -> dict[str, Any]:
    """Check the keyframes and start a run in the background (blocking: call it in a
    thread). Every refusal is one line: 400 for the form, 409 while a run is going on,
    422 for masks and frames the video cannot take."""
    fields = _spec_fields(raw_spec)
    if not masks:
        raise HTTPException(400, "draw the object first: send at least one 'mask' file")
    if len(fields["mask_frames"]) != len(masks):
        raise HTTPException(
            400,
            f"{len(masks)} 'mask' file(s) but {len(fields['mask_frames'])} mask_frames; "
            "give the frame number of each mask",
        )
    try:
        spec = JobSpec(video=meta["path"], masks=[f"mask{i}" for i in range(len(masks))], **fields)
    except ValidationError as e:
        raise HTTPException(400, first_error(e)) from None
    n = int(meta["frames"])
    frames = [int(k.frame or 0) for k in spec.keyframes]
    seen: set[int] = set()
    for i, f in enumerate(frames):
        if f >= n:
            raise BadInput(f"mask_frames[{i}] is frame {f}; the video has {n} frames (0-{n - 1})")
        if f in seen:
            raise HTTPException(400, f"mask_frames has frame {f} twice; send one mask per frame")
        seen.add(f)
    check_tracker_config(spec, settings)
    folder = _folder(session)
    folder.mkdir(exist_ok=True)
    (folder / "keys").mkdir(exist_ok=True)
    fd = _try_lock(folder)
    if fd is None:
        st = _read(folder)
        raise HTTPException(
            409,
            f"tracking is still running ({round(100 * st.get('progress', 0))}%); wait for it "
            "to finish",
        )
    try:
        keyframes = _save_masks(folder, masks, frames, (int(meta["width"]), int(meta["height"])))
        st = _read(folder)
        st.update(
            state="queued",
            run=int(st.get("run", 0)) + 1,
            progress=0.0,
            message="waiting for the tracker",
            tracker=spec.tracker,
            keyframes=sorted(keyframes),
            error=None,
            warnings=[],
            retracked=[],
            frames_retracked=0,
            seconds=None,
        )
        _write(folder, st)
    except BaseException:
        _unlock(fd)
        raise
    job = _Run(folder, meta, spec, keyframes, settings, fd)
    threading.Thread(target=job.run, args=(slots,), daemon=True, name="sonomask-track").start()
    return public(st)


def _save_masks(
    folder: Path, masks: list[UploadFile], frames: list[int], size: tuple[int, int]
) -> dict[int, str]:
    """Read each uploaded mask as the job will (``vision.masks.load_mask``) and keep it as
    ``keys/<hash>.png``; returns frame -> hash."""
    incoming = folder / f".in-{uuid.uuid4().hex[:8]}"
    incoming.mkdir()
    try:
        out: dict[int, str] = {}
        for upload, f in zip(masks, frames, strict=True):
            path = incoming / f"frame-{f}.png"
            upload.file.seek(0)
            with path.open("wb") as dst:
                shutil.copyfileobj(upload.file, dst, 1 << 20)
            try:
                mask = vmasks.load_mask(path, size)
            except Exception as exc:  # noqa: BLE001 - MaskError and friends: one line
                raise BadInput(f"the mask of frame {f}: {as_sonomask_error(exc)}") from None
            h = mask_hash(mask)
            key = folder / "keys" / f"{h}.png"
            if not key.exists():
                part = incoming / f"{h}.png"
                cv2.imwrite(str(part), mask.astype(np.uint8) * 255)
                os.replace(part, key)
            out[f] = h
        return out
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


# ----------------------------------------------------------------------------- running


class _Window:
    """``out`` for a tracker working on frames ``lo..``: frame ``t`` of the slice is row
    ``lo + t`` of the preview's masks, stored only for the frames its segment decides."""

    def __init__(self, sink: MaskSink, masks: RowFile, seg: Segment) -> None:
        self.sink, self.masks, self.seg = sink, masks, seg

    def __setitem__(self, t: int, mask: np.ndarray) -> None:
        i = self.seg.lo + int(t)
        if self.seg.first <= i <= self.seg.last:
            self.sink.put(i, mask)

    def __getitem__(self, t: int) -> np.ndarray:
        return self.masks[self.seg.lo + int(t)]


class _Run:
    """One preview run: decode the frames once, track the segments that changed."""

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        spec: JobSpec,
        keyframes: dict[int, str],
        settings: Settings,
        lock: int,
    ) -> None:
        self.folder, self.meta, self.spec, self.settings = folder, meta, spec, settings
        self.keyframes, self.lock = keyframes, lock
        self.st = _read(folder)
        self.saved = 0.0

    def save(self, force: bool = False, **changes: Any) -> None:
        self.st.update(changes)
        now = time.monotonic()
        if force or now - self.saved >= _SAVE_EVERY:
            _write(self.folder, self.st)
            self.saved = now

    def run(self, slots: threading.Semaphore) -> None:
        t0 = time.monotonic()
        try:
            with slots:
                self.save(True, state="running", message="starting")
                self._track(t0)
        except Exception as exc:  # noqa: BLE001 - reported on the page, in one line
            err = as_sonomask_error(exc)
            if not isinstance(err, BadInput):
                log.exception("tracking preview failed")
            try:
                self.save(True, state="failed", error=str(err), seconds=time.monotonic() - t0)
            except OSError:  # the session expired (its folder is gone) while it ran
                pass
        finally:
            _unlock(self.lock)

    def _decoding(self, fraction: float, message: str) -> None:
        self.save(progress=0.3 * fraction, message="decoding the frames")

    def _frames(self) -> tuple[VideoFrames, np.ndarray]:
        """The working frames, decoded and stored by the demux stage's rules the first time
        (the same frames, so the preview tracks exactly what the job's track stage will)."""
        raw, times_file = self.folder / "frames.h264", self.folder / "times.npy"
        offsets_file = self.folder / "frame_offsets.npy"
        src = Path(self.meta["path"])
        if not src.is_file():
            raise BadInput(f"the video {self.meta['name']} is gone; open it again")
        p = media.probe(src, require_audio=False)
        w, h = media.working_size(p.display_size)
        if not (raw.is_file() and times_file.is_file() and offsets_file.is_file()):
            part = self.folder / f".frames-{uuid.uuid4().hex[:8]}.h264"
            try:
                times, offsets = media.decode_stored_frames(p, part, (w, h), self._decoding)
                np.save(self.folder / ".times.npy", times)
                np.save(self.folder / ".offsets.npy", offsets)
                os.replace(self.folder / ".times.npy", times_file)
                os.replace(self.folder / ".offsets.npy", offsets_file)
                os.replace(part, raw)
            finally:
                part.unlink(missing_ok=True)
        times = np.load(times_file)
        return VideoFrames(raw, np.load(offsets_file), (w, h)), times

    def _track(self, t0: float) -> None:
        decoded = (self.folder / "frames.h264").is_file()
        frames, _ = self._frames()
        n, h, w = frames.shape[:3]
        size = (int(self.meta["width"]), int(self.meta["height"]))
        for k in self.keyframes:
            if k >= n:
                raise BadInput(f"frame {k} does not exist; the video decodes to {n} frames")
        spec = self.spec
        name = f"{spec.tracker}:{spec.tracker_model or ''}"
        local = spec.tracker in LOCAL_TRACKERS
        segments = plan(n, self.keyframes, name, local)
        same_clip = self.st.get("frames") == n and self.st.get("working_size") == [w, h]
        stored: dict[str, list[int]] = self.st.get("segments", {}) if same_clip else {}
        todo = [s for s in segments if stored.get(s.key) != [s.first, s.last]]
        kept = {s.key: [s.first, s.last] for s in segments if s not in todo}
        exact = {
            k: v
            for k, v in self.st.get("exact", {}).items()
            if same_clip and any(a <= int(k) <= b for a, b in kept.values())
        }
        # Frames about to be rewritten stop counting as tracked before any is written.
        self.save(True, frames=n, working_size=[w, h], segments=kept, exact=exact)
        masks_file = self.folder / "masks.npy"
        stats_file = self.folder / "stats.npz"
        if not same_clip or not masks_file.is_file():
            arrays.create_npy(masks_file, (n, h, w), np.uint8).close()
            stats_file.unlink(missing_ok=True)
        masks = arrays.open_npy(masks_file, writable=True)
        sink = MaskSink(n, h, w, masks)
        if stats_file.is_file():
            with np.load(stats_file) as z:
                sink.areas[:], sink.border[:] = z["areas"], z["border"]
        tracker = choose_job_tracker(spec, self.settings) if todo else None
        total = max(1, sum(s.hi - s.lo + 1 for s in todo))
        done, base = 0, 0.0 if decoded else 0.3
        full: dict[str, np.ndarray] = {}
        warnings: list[str] = []
        try:
            for seg in todo:
                at = done

                def prog(f: float, msg: str, at: int = at, seg: Segment = seg) -> None:
                    part = (at + f * (seg.hi - seg.lo + 1)) / total
                    self.save(state="running", progress=base + (1 - base) * part, message=msg)

                assert tracker is not None
                sliced = frames.view(seg.lo, seg.hi + 1)
                try:
                    tracker.init(sliced, size=size, out=_Window(sink, masks, seg))
                    for k in seg.keys:
                        tracker.add_mask(k - seg.lo, self._key_mask(k, full))
                    result = tracker.propagate(prog)
                finally:
                    sliced.close()
                for t in result.exact:
                    i = seg.lo + t
                    if seg.first <= i <= seg.last and i in self.keyframes:
                        exact[str(i)] = self.keyframes[i]
                if not local:
                    warnings = list(result.warnings)
                done += seg.hi - seg.lo + 1
                _save_stats(stats_file, sink)
                kept[seg.key] = [seg.first, seg.last]
                self.save(True, segments=kept, exact=exact)
        finally:
            masks.close()
            frames.close()
        if local:
            warnings = track_warnings(sink, sorted(self.keyframes), _ref_area(sink, self.keyframes))
        retracked = runs([(s.first, s.last) for s in todo])
        used = {f"{key}.png" for key in self.keyframes.values()}
        for old in (self.folder / "keys").iterdir():  # masks drawn over since
            if old.name not in used:
                old.unlink(missing_ok=True)
        self.save(
            True,
            state="done",
            progress=1.0,
            message="tracked",
            warnings=warnings,
            retracked=retracked,
            frames_retracked=sum(b - a + 1 for a, b in retracked),
            seconds=round(time.monotonic() - t0, 3),
        )

    def _key_mask(self, k: int, cache: dict[str, np.ndarray]) -> np.ndarray:
        h = self.keyframes[k]
        if h not in cache:
            img = cv2.imread(str(self.folder / "keys" / f"{h}.png"), cv2.IMREAD_GRAYSCALE)
            if img is None:
                raise BadInput(f"the mask of frame {k} is gone; draw it again")
            cache[h] = img > 0
        return cache[h]


def _save_stats(path: Path, sink: MaskSink) -> None:
    part = path.with_name(f".stats-{uuid.uuid4().hex[:8]}.npz")
    with part.open("wb") as f:
        np.savez(f, areas=sink.areas, border=sink.border)
    os.replace(part, path)


def _ref_area(sink: MaskSink, keyframes: dict[int, str]) -> np.ndarray:
    """Per frame, the area of the keyframe(s) it leans on, as the flow tracker weighs them
    (before the first: the first's; after the last: the last's; between: by distance)."""
    n = len(sink.areas)
    order = sorted(keyframes)
    area = sink.areas.astype(np.float64)
    t = np.arange(n, dtype=np.float64)
    return np.interp(t, np.array(order, dtype=np.float64), area[order])


# ----------------------------------------------------------------------------- masks out


def mask_png(session: Path, n: int) -> bytes:
    """Frame ``n``'s tracked mask at the video's size as PNG (white = object), made as the
    track stage makes ``masks.npz``: the drawn mask on a keyframe, the working-size mask
    scaled up (``vision.masks.resize_masks``) elsewhere."""
    folder = _folder(session)
    st = _read(folder)
    frames = st.get("frames")
    if frames is not None and not 0 <= n < frames:
        raise HTTPException(404, f"frame {n} is outside 0..{frames - 1}")
    if not any(a <= n <= b for a, b in st.get("segments", {}).values()):
        raise HTTPException(404, f"frame {n} has no tracked mask yet; press Preview tracking")
    h = st.get("exact", {}).get(str(n))
    if h is not None:
        key = folder / "keys" / f"{h}.png"
        if key.is_file():
            return key.read_bytes()
    with arrays.open_npy(folder / "masks.npy") as masks:
        small = masks[n]
    size = _size_of(session)
    full = vmasks.resize_masks(small, size)
    ok, png = cv2.imencode(".png", full * 255)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise BadInput(f"frame {n}'s mask could not be encoded")
    return png.tobytes()


def _size_of(session: Path) -> tuple[int, int]:
    meta = json.loads((session / "meta.json").read_text())
    return int(meta["width"]), int(meta["height"])
