"""Stage 3, track: carry the keyframe masks through the clip, then write them at full size.

Several objects (``JobSpec.objects``): every object is tracked from the same working
frames, one tracker each, then made exclusive (``vision.objects``); each object's masks go
to ``objects/<label>/masks_work.npy`` and ``masks.npz``."""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from vision import masks as vmasks
from vision.choose import choose_tracker, model_title, weights_hint
from vision.errors import MaskError, TrackerLoadError
from vision.objects import ObjectKeyframes, exclusive, track_objects
from vision.tracker import WEIGHTED_TRACKERS, Tracker
from worker import arrays, files
from worker.arrays import PackedMasks
from worker.errors import BadInput
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages.common import (
    MASK_CHUNK,
    StageProgress,
    load_keyframe_mask,
    noop,
    stage_progress,
    working_frames,
)
from worker.stages.models import resolve_tracker_model
from worker.workspace import Workspace

READS = (files.SPEC, files.PROBE, files.FRAMES, files.FRAME_OFFSETS, files.FRAME_TIMES)
WRITES = (files.MASKS_WORK, files.MASKS)


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """Carry the keyframe masks through the clip (at working size), then to full size."""
    spec = ws.spec
    if spec.several:
        _run_objects(ws, settings, report)
        return
    if ws.has(files.MASKS, files.MASKS_WORK):
        return
    pj = ws.read_json(files.PROBE)
    size = tuple(pj["display_size"])
    frames, times = working_frames(ws)
    n = len(times)
    wsize = (frames.shape[2], frames.shape[1])
    full_keyframes, drawn = _keyframes(spec.keyframes, times, size)
    prog = stage_progress(report, "track")
    tracker = choose_job_tracker(spec, settings)  # a model loads before any work file is written
    # Masks go straight to disk as they are made: memory stays flat however long the clip.
    with ws.atomic(files.MASKS_WORK) as work_tmp, _packed(work_tmp, n, wsize) as work:
        tracker.init(frames, size=size, out=work)
        for idx, k in drawn.items():
            if k.box is not None:
                tracker.add_box(idx, k.box)
            else:
                tracker.add_mask(idx, full_keyframes[idx])
        result = tracker.propagate(prog)
        exact = {i: full_keyframes[i] for i in result.exact}  # the user's own, full size
        with ws.atomic(files.MASKS) as full_tmp:
            found = write_full_masks(full_tmp, work, size, exact)
            others = np.ones(n, dtype=bool)
            others[list(full_keyframes)] = False
            if others.any() and not found[others].any():
                raise MaskError(
                    "the object was lost on every frame but the keyframe(s): the tracker "
                    "could not follow it. Check that the mask covers the object on its "
                    "frame, or add keyframes"
                )
        arrays.deflate_masks(work, work_tmp)
    ws.update_manifest(track_warnings=result.warnings)
    report("track", 1.0, "tracked")


@contextlib.contextmanager
def _packed(final_tmp: Path, n: int, wsize: tuple[int, int]) -> Iterator[PackedMasks]:
    """Packed masks the trackers write in any order, in a scratch file beside ``final_tmp``
    (deleted after): deflated into ``final_tmp`` once tracking is done (``deflate_masks``)."""
    scratch = final_tmp.with_name(final_tmp.name + ".packed")
    try:
        with arrays.create_packed_masks(scratch, n, wsize) as work:
            yield work
    finally:
        scratch.unlink(missing_ok=True)


def _keyframes(
    keyframes: list[Any], times: np.ndarray, size: tuple[int, int]
) -> tuple[dict[int, np.ndarray], dict[int, Any]]:
    """The user's masks at full size by frame, and the keyframe drawn on each frame (a
    later one on the same frame replaces an earlier one)."""
    n = len(times)
    full_keyframes: dict[int, np.ndarray] = {}
    drawn: dict[int, Any] = {}
    for k in keyframes:
        if k.time is not None:
            idx = int(np.clip(np.searchsorted(times, k.time + 1e-6, side="right") - 1, 0, n - 1))
            if k.time > times[-1] + 1.0:
                raise BadInput(
                    f"keyframe time {k.time:g} s is after the clip's end ({times[-1]:.2f} s)"
                )
        else:
            idx = k.frame or 0
            if idx >= n:
                raise BadInput(
                    f"keyframe frame {idx} does not exist; the video has {n} frames (0-{n - 1})"
                )
        full_keyframes[idx] = load_keyframe_mask(k, size)
        drawn[idx] = k
    return full_keyframes, drawn


def _run_objects(ws: Workspace, settings: Settings, report: StageProgress) -> None:
    """Every object tracked from the same working frames, made exclusive, written per object."""
    spec = ws.spec
    objs = spec.targets()
    names = [files.object_file(o.label, f) for o in objs for f in (files.MASKS, files.MASKS_WORK)]
    if ws.has(*names):
        return
    size = tuple(ws.read_json(files.PROBE)["display_size"])
    frames, times = working_frames(ws)
    n = len(times)
    wsize = (frames.shape[2], frames.shape[1])
    prompts, fulls = [], []
    for o in objs:
        full, drawn = _keyframes(o.keyframes, times, size)
        fulls.append(full)
        prompts.append(
            ObjectKeyframes(
                o.label,
                masks={i: full[i] for i, k in drawn.items() if k.box is None},
                boxes={i: k.box for i, k in drawn.items() if k.box is not None},
            )
        )
    tracker = choose_job_tracker(spec, settings)  # one model load for every object
    prog = stage_progress(report, "track")
    with contextlib.ExitStack() as stack:
        tmps = [
            stack.enter_context(ws.atomic(files.object_file(o.label, files.MASKS_WORK)))
            for o in objs
        ]
        works = [stack.enter_context(_packed(t, n, wsize)) for t in tmps]
        used: dict[str, Any] = {}
        results, order = track_objects(
            lambda j: tracker,
            frames,
            size,
            prompts,
            works,
            prog,
            processes=_tracking_processes(),  # frames and masks are files: they pickle
            stats=used,  # how many processes tracked at once (1: one after the other)
        )
        exact = [{i: fulls[j][i] for i in r.exact} for j, r in enumerate(results)]
        full_tmps = [
            stack.enter_context(ws.atomic(files.object_file(o.label, files.MASKS))) for o in objs
        ]
        found = write_full_object_masks(full_tmps, works, size, exact, order)
        for j, o in enumerate(objs):
            others = np.ones(n, dtype=bool)
            others[list(fulls[j])] = False
            if others.any() and not found[j][others].any():
                raise MaskError(
                    f"object {o.label!r} was lost on every frame but its keyframe(s): the "
                    "tracker could not follow it. Check that its mask covers it on its frame, "
                    "or add keyframes"
                )
        for work, tmp in zip(works, tmps, strict=True):
            arrays.deflate_masks(work, tmp)
    warnings = [f"{o.label}: {w}" for o, r in zip(objs, results, strict=True) for w in r.warnings]
    ws.update_manifest(track_warnings=warnings, track_processes=used["processes"])
    report("track", 1.0, f"tracked {len(objs)} object(s)")


def _tracking_processes() -> int:
    """How many objects may track at once, in child processes: two per core.

    Each child runs OpenCV on one thread. With one per core, three objects on two cores
    track in two rounds, and the second leaves a core idle; side by side the cores stay
    busy until the end (8 s three-object scene, ``benchmarks/objects.py``: track stage
    5.6-5.9 s with two children, 5.0-5.6 s with three). Each child holds about 190 MB at
    480x270, so the number stays bounded.
    """
    return 2 * len(os.sched_getaffinity(0))


def write_full_object_masks(
    paths: list[Path],
    works: list[PackedMasks],
    size: tuple[int, int],
    exact: list[dict[int, np.ndarray]],
    order: np.ndarray,
) -> list[np.ndarray]:
    """Every object's full-size masks (one npz each, key ``masks``), exclusive with each
    frame's depth ``order`` as at the working size; keyframes keep the user's own mask
    where no object in front claims it. Returns per object whether each frame holds any
    of its pixels."""
    w, h = size
    n = len(works[0])
    found = [np.zeros(n, dtype=bool) for _ in works]
    header = {"descr": "|u1", "fortran_order": False, "shape": (n, h, w)}
    with contextlib.ExitStack() as stack:
        zips = [
            stack.enter_context(
                zipfile.ZipFile(
                    p, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
                )
            )
            for p in paths
        ]
        outs = [stack.enter_context(_open_masks_entry(z)) for z in zips]
        for f in outs:
            np.lib.format.write_array_header_1_0(f, header)
        up = FullSize((works[0].shape[2], works[0].shape[1]), size)

        def frames() -> Iterator[Callable[[], list[np.ndarray]]]:
            for lo in range(0, n, MASK_CHUNK):
                chunks = [np.asarray(wk[lo : lo + MASK_CHUNK]) for wk in works]
                for t in range(len(chunks[0])):
                    yield (lambda i=lo + t, smalls=[c[t] for c in chunks]: full(i, smalls))

        def full(i: int, smalls: list[np.ndarray]) -> list[np.ndarray]:
            ms = [exact[j].get(i) for j in range(len(works))]
            ms = [up(sm) if m is None else m for m, sm in zip(ms, smalls, strict=True)]
            return exclusive(ms, order[i])

        for i, anys in enumerate(_write_masks(outs, frames())):
            for j, any_pixel in enumerate(anys):
                found[j][i] = any_pixel
    return found


def choose_job_tracker(spec: JobSpec, settings: Settings) -> Tracker:
    """The job's tracker (``vision.choose.choose_tracker``); a video model (sam2, sam3,
    edgetam) with the weights this job may load (``resolve_tracker_model``)."""
    if spec.tracker not in WEIGHTED_TRACKERS:
        return choose_tracker(spec.tracker)
    source = resolve_tracker_model(spec.tracker, spec.tracker_model, settings)
    if not source:
        raise missing_weights(spec.tracker)
    try:
        return choose_tracker(spec.tracker, weights=source, device=settings.device or "auto")
    except TrackerLoadError as exc:
        raise BadInput(str(exc)) from None


def missing_weights(tracker: str) -> BadInput:
    """The one-line error for a video-model tracker run with no weights at all."""
    env = "SONOMASK_TRACKER_MODEL" + ("" if tracker == "sam2" else f"={tracker}:WEIGHTS")
    return BadInput(
        f"--tracker {tracker} needs {model_title(tracker)} weights: give --tracker-model "
        f"({weights_hint(tracker)}) or set {env}"
    )


def write_full_masks(
    path: Path,
    work: PackedMasks | np.ndarray,
    size: tuple[int, int],
    exact: dict[int, np.ndarray],
) -> np.ndarray:
    """Stream full-size masks into the npz ``path`` (key ``masks``), a chunk at a time.

    Full-resolution masks of a long clip do not fit comfortably in memory, so the .npy
    inside the zip is written incrementally; keyframes keep the user's exact mask.
    Returns whether each frame's mask holds any object pixel.
    """
    w, h = size
    n = len(work)
    found = np.zeros(n, dtype=bool)
    header = {"descr": "|u1", "fortran_order": False, "shape": (n, h, w)}
    up = FullSize((work.shape[2], work.shape[1]), size)

    def frames() -> Iterator[Callable[[], list[np.ndarray]]]:
        for lo in range(0, n, MASK_CHUNK):
            chunk = np.asarray(work[lo : lo + MASK_CHUNK])
            for i, small in enumerate(chunk, start=lo):
                m = exact.get(i)
                yield (lambda m=m, small=small: [up(small) if m is None else m])

    with zipfile.ZipFile(
        path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
    ) as zf:
        with _open_masks_entry(zf) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for i, (any_pixel,) in enumerate(_write_masks([f], frames())):
                found[i] = any_pixel
    return found


def _write_masks(
    entries: list[IO[bytes]], frames: Iterable[Callable[[], list[np.ndarray]]]
) -> Iterator[list[bool]]:
    """Write each frame's masks (one per entry, made by calling the frame's function) in
    order, making and deflating them on two threads: at 1080p the upscaling and deflating
    cost more than the tracking, and both release the GIL. Yields, per frame, whether each
    mask holds any pixel."""

    def make(job: Callable[[], list[np.ndarray]]) -> list[tuple[memoryview, bytes | None, bool]]:
        out = []
        for e, m in zip(entries, job(), strict=True):
            data = np.ascontiguousarray(m, dtype=np.uint8).reshape(-1).data
            out.append((data, _deflate(data) if _is_parallel(e) else None, bool(m.any())))
        return out

    with ThreadPoolExecutor(2, thread_name_prefix="masks") as pool:
        ahead: collections.deque[Any] = collections.deque()
        it = iter(frames)
        for job in itertools.islice(it, _AHEAD):
            ahead.append(pool.submit(make, job))
        while ahead:
            done = ahead.popleft().result()
            for job in itertools.islice(it, 1):
                ahead.append(pool.submit(make, job))
            for e, (data, packed, _) in zip(entries, done, strict=True):
                if packed is not None:
                    e._compressor.ready.append(packed)  # type: ignore[attr-defined]
                e.write(data)
            yield [any_pixel for _, _, any_pixel in done]


_AHEAD = 8  # frames made and deflated ahead of the one being written


def _deflate(data: memoryview) -> bytes:
    """``data`` as a piece of one raw deflate stream: compressed on its own (level 1, run
    length), ending on a byte boundary (a sync flush), so pieces deflated apart join up."""
    c = zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE)
    return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)


class _Deflater:
    """Stands in for a zip entry's compressor: hands back pieces deflated beforehand
    (``ready``, in the order the data is written) or deflates the data itself (the header);
    its final flush is an empty last block, which closes the stream."""

    def __init__(self) -> None:
        self.ready: collections.deque[bytes] = collections.deque()

    def compress(self, data: bytes) -> bytes:
        return self.ready.popleft() if self.ready else _deflate(memoryview(data))

    def flush(self) -> bytes:
        return zlib.compressobj(1, zlib.DEFLATED, -15, 8, zlib.Z_RLE).flush()


def _is_parallel(entry: IO[bytes]) -> bool:
    return isinstance(getattr(entry, "_compressor", None), _Deflater)


def _open_masks_entry(zf: zipfile.ZipFile) -> IO[bytes]:
    """The ``masks.npy`` entry of a masks npz, open for writing.

    Deflate with zlib's run-length strategy (``Z_RLE``): a 0/1 mask is long runs of equal
    bytes, which it codes about 4 times smaller and faster than the default strategy at
    level 1 (1080p: 2.6 against 10.5 kB a frame). It is still plain deflate: ``np.load``
    and every zip reader read it as before. (``zipfile`` has no option for the strategy, so
    the entry's compressor is replaced before anything is written.)
    """
    f = zf.open("masks.npy", "w", force_zip64=True)
    if hasattr(f, "_compressor"):
        f._compressor = _Deflater()
    return f


class FullSize:
    """Working-size masks to the source size, exactly as ``vision.masks.resize_masks``
    makes them, but resizing only the part of the frame around the object.

    Linear upscaling maps destination pixel ``x`` to source ``(x + 0.5) * s - 0.5``
    (``s`` = source / destination size); where ``s`` is a fraction ``a / b`` with ``b`` a
    power of two (1080p, 720p, 4K, 8K from the usual working sizes) every weight is exact
    in floating point, and a crop starting at a source pixel that is a multiple of ``a``
    maps to destination pixels starting at the same multiple of ``b`` with the very same
    weights. So a crop of the mask, with two zero pixels of margin around the object, gives
    the full frame's pixels there, and every pixel outside is 0. Other ratios (and a mask
    so thin that ``resize_masks`` falls back to area or nearest resizing) take the full
    ``resize_masks``. ``tests/test_lean.py`` checks both against each other.
    """

    MARGIN = 2  # zero source pixels kept around the object (linear reads 1 neighbour)

    def __init__(self, work: tuple[int, int], size: tuple[int, int]) -> None:
        self.work, self.size = work, size
        self.periods = []  # per axis (x, y): (source period a, destination period b)
        for s, d in zip(work, size, strict=True):
            f = Fraction(s, d)
            if d <= s or f.denominator & (f.denominator - 1) or f.denominator > 256:
                self.periods = []
                break
            self.periods.append((f.numerator, f.denominator))

    def __call__(self, small: np.ndarray) -> np.ndarray:
        if not self.periods:
            return vmasks.resize_masks(small[None], self.size)[0]
        w, h = self.size
        ys = np.flatnonzero(small.any(axis=1))
        if ys.size == 0:
            return np.zeros((h, w), np.uint8)
        xs = np.flatnonzero(small.any(axis=0))
        (ax, bx), (ay, by) = self.periods
        c0, c1 = self._span(int(xs[0]), int(xs[-1]), ax, small.shape[1])
        r0, r1 = self._span(int(ys[0]), int(ys[-1]), ay, small.shape[0])
        crop = (small[r0:r1, c0:c1] != 0).astype(np.float32)
        x0, x1, y0, y1 = c0 // ax * bx, c1 // ax * bx, r0 // ay * by, r1 // ay * by
        part = cv2.resize(crop, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR) > 0.5
        if not part.any():  # thinner than a pixel: resize_masks' own fallback, whole frame
            return vmasks.resize_masks(small[None], self.size)[0]
        out = np.zeros((h, w), np.uint8)
        out[y0:y1, x0:x1] = part
        return out

    def _span(self, lo: int, hi: int, a: int, n: int) -> tuple[int, int]:
        """Source pixels ``[start, stop)`` around ``lo..hi`` with the margin, whole periods."""
        start = max(0, (lo - self.MARGIN) // a * a)
        stop = min(n, -(-(hi + 1 + self.MARGIN) // a) * a)
        return start, stop
