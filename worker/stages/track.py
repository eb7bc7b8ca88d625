"""Stage 3, track: carry the keyframe masks through the clip, then write them at full size."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vision import masks as vmasks
from vision.choose import choose_tracker, model_title, weights_hint
from vision.errors import MaskError, TrackerLoadError
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
    if ws.has(files.MASKS, files.MASKS_WORK):
        return
    spec = ws.spec
    pj = ws.read_json(files.PROBE)
    size = tuple(pj["display_size"])
    frames, times = working_frames(ws)
    n = len(times)
    wsize = (frames.shape[2], frames.shape[1])
    full_keyframes: dict[int, np.ndarray] = {}  # the user's masks at full size, by frame
    drawn: dict[int, Any] = {}  # frame -> the keyframe drawn there (a later one replaces it)
    for k in spec.keyframes:
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
