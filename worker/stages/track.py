"""Stage 3, track: carry the keyframe masks through the clip, then write them at full size.

Several objects (``JobSpec.objects``): every object is tracked from the same working
frames, one tracker each, then made exclusive (``vision.objects``); each object's masks go
to ``objects/<label>/masks_work.npy`` and ``masks.npz``."""

from __future__ import annotations

import contextlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vision import masks as vmasks
from vision.choose import choose_tracker, model_title, weights_hint
from vision.errors import MaskError, TrackerLoadError
from vision.objects import ObjectKeyframes, exclusive, track_objects
from vision.tracker import WEIGHTED_TRACKERS, Tracker
from worker import arrays, files
from worker.arrays import RowFile
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

READS = (files.SPEC, files.PROBE, files.FRAMES, files.FRAME_TIMES)
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
    with ws.atomic(files.MASKS_WORK) as work_tmp:
        work = arrays.create_npy(work_tmp, (n, wsize[1], wsize[0]), np.uint8)
        with work:
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
    ws.update_manifest(track_warnings=result.warnings)
    report("track", 1.0, "tracked")


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
        works = [
            stack.enter_context(arrays.create_npy(t, (n, wsize[1], wsize[0]), np.uint8))
            for t in tmps
        ]
        results, order = track_objects(
            lambda j: tracker,
            frames,
            size,
            prompts,
            works,
            prog,
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
    warnings = [f"{o.label}: {w}" for o, r in zip(objs, results, strict=True) for w in r.warnings]
    ws.update_manifest(track_warnings=warnings)
    report("track", 1.0, f"tracked {len(objs)} object(s)")


def write_full_object_masks(
    paths: list[Path],
    works: list[RowFile],
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
        outs = [stack.enter_context(z.open("masks.npy", "w", force_zip64=True)) for z in zips]
        for f in outs:
            np.lib.format.write_array_header_1_0(f, header)
        for lo in range(0, n, MASK_CHUNK):
            chunks = [np.asarray(wk[lo : lo + MASK_CHUNK]) for wk in works]
            for t in range(len(chunks[0])):
                i = lo + t
                full = []
                for j, chunk in enumerate(chunks):
                    m = exact[j].get(i)
                    if m is None:
                        m = vmasks.resize_masks(chunk[t][None], size)[0]
                    full.append(m)
                for j, m in enumerate(exclusive(full, order[i])):
                    found[j][i] = bool(m.any())
                    outs[j].write(np.ascontiguousarray(m, dtype=np.uint8).tobytes())
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
    work: RowFile | np.ndarray,
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
    with zipfile.ZipFile(
        path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
    ) as zf:
        with zf.open("masks.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for lo in range(0, n, MASK_CHUNK):
                chunk = np.asarray(work[lo : lo + MASK_CHUNK])
                for i, small in enumerate(chunk, start=lo):
                    m = exact.get(i)
                    if m is None:
                        m = vmasks.resize_masks(small[None], size)[0]
                    m = np.ascontiguousarray(m, dtype=np.uint8)
                    found[i] = bool(m.any())
                    f.write(m.tobytes())
    return found
