"""Stage 3, track: carry the keyframe masks through the clip, then write them at full size."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from vision import masks as vmasks
from vision import propagate as vpropagate
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
from worker.stages.models import resolve_model
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
    keyframes: dict[int, np.ndarray] = {}
    full_keyframes: dict[int, np.ndarray] = {}
    boxes: dict[int, tuple[float, float, float, float]] = {}  # keyframes drawn as boxes
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
        full = load_keyframe_mask(k, size)
        full_keyframes[idx] = full
        keyframes[idx] = vmasks.resize_masks(full[None], wsize)[0].astype(bool)
        boxes.pop(idx, None)
        if k.box is not None:
            boxes[idx] = k.box
    prog = stage_progress(report, "track")
    tracker_options: Any = None
    if spec.tracker == "sam2":
        tracker_options = _load_sam2(spec, settings, keyframes, boxes, full_keyframes, wsize, size)
    # Masks go straight to disk as they are made: memory stays flat however long the clip.
    with ws.atomic(files.MASKS_WORK) as work_tmp:
        work = arrays.create_npy(work_tmp, (n, wsize[1], wsize[0]), np.uint8)
        with work:
            if spec.tracker == "copy":
                vpropagate.copy_first(frames, keyframes, out=work)
                warnings: list[str] = []
            elif spec.tracker == "sam2":
                tracker, prompts = tracker_options
                _, warnings = tracker.propagate(frames, prompts, progress=prog, out=work)
            else:
                _, warnings = vpropagate.propagate(frames, keyframes, progress=prog, out=work)
            with ws.atomic(files.MASKS) as full_tmp:
                found = write_full_masks(full_tmp, work, size, full_keyframes)
                others = np.ones(n, dtype=bool)
                others[list(keyframes)] = False
                if others.any() and not found[others].any():
                    from vision.errors import MaskError

                    raise MaskError(
                        "the object was lost on every frame but the keyframe(s): the tracker "
                        "could not follow it. Check that the mask covers the object on its "
                        "frame, or add keyframes"
                    )
    ws.update_manifest(track_warnings=warnings)
    report("track", 1.0, "tracked")


def _load_sam2(
    spec: JobSpec,
    settings: Settings,
    keyframes: dict[int, np.ndarray],
    boxes: dict[int, tuple[float, float, float, float]],
    full_keyframes: dict[int, np.ndarray],
    wsize: tuple[int, int],
    size: tuple[int, int],
) -> tuple[Any, dict[int, Any]]:
    """The SAM 2 tracker and its prompts (a box keyframe prompts it as a box)."""
    from vision import sam2_tracker

    source = resolve_model(spec.tracker_model, settings, "tracker_model")
    if not source:
        raise BadInput(
            "--tracker sam2 needs SAM 2 weights: give --tracker-model (a folder saved by "
            "transformers, or a Hub id such as facebook/sam2.1-hiera-tiny in the Hugging Face "
            "cache) or set SONOMASK_TRACKER_MODEL"
        )
    try:
        tracker = sam2_tracker.load(source, settings.device or "auto")
    except sam2_tracker.TrackerLoadError as exc:
        raise BadInput(str(exc)) from None
    # A box prompts SAM 2 as a box (it segments the object inside); its output on the
    # keyframe is then the mask, not the rectangle.
    prompts: dict[int, Any] = dict(keyframes)
    sx, sy = wsize[0] / size[0], wsize[1] / size[1]
    for idx, (x0, y0, x1, y1) in boxes.items():
        prompts[idx] = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        full_keyframes.pop(idx)
    return tracker, prompts


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
