"""What every stage shares: the progress callback, the working frames, keyframe masks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vision import masks as vmasks
from worker import files, media
from worker.arrays import DeflatedMasks, VideoFrames
from worker.workspace import Workspace

StageProgress = Callable[[str, float, str], None]
"""(stage name, fraction of that stage done, message)."""


def noop(stage: str, fraction: float, message: str) -> None:
    pass


def stage_progress(report: StageProgress, stage: str) -> media.ProgressFn:
    return lambda fraction, message: report(stage, fraction, message)


MASK_CHUNK = 256  # frames of masks read, resized or written at a time


def decode_working_frames(
    ws: Workspace,
    p: media.Probe,
    size: tuple[int, int],
    prog: media.ProgressFn,
    hwaccel: str = media.HWACCEL_NONE,
    threads: int = 0,
) -> None:
    """Every frame at the working size (lossless H.264: ``arrays.VideoFrames``) and its time.

    ``hwaccel`` / ``threads``: ``Settings.hwaccel`` / ``decode_threads`` (``media.decode_frames``);
    a failed hardware decode is redone plainly and noted in the manifest (``frames.decode``).
    """
    wsize = media.working_size(size)
    notes: list[str] = []
    with ws.atomic(files.FRAMES) as tmp:
        times, offsets = media.decode_stored_frames(p, tmp, wsize, prog, hwaccel, threads, notes)
        ws.write_npy(files.FRAME_OFFSETS, offsets)
    ws.write_npy(files.FRAME_TIMES, times)
    decode = notes[-1] if notes else f"hwaccel {hwaccel}" if hwaccel != "none" else "plain"
    ws.update_manifest(frames={"count": len(times), "working_size": list(wsize), "decode": decode})


def working_frames(ws: Workspace) -> tuple[VideoFrames, np.ndarray]:
    """The working frames, decoded frame by frame from disk as asked for, and their times."""
    times = np.load(ws.file(files.FRAME_TIMES))
    w, h = ws.manifest()["frames"]["working_size"]
    return VideoFrames(ws.file(files.FRAMES), np.load(ws.file(files.FRAME_OFFSETS)), (w, h)), times


def model_stems(ws: Workspace) -> list[str]:
    """The separator's mono 48 kHz stems, as the separate stage writes them and restore
    reads them: each object's target, then the residual (one object: ``files.STEMS_MODEL``)."""
    if not ws.spec.several:
        return list(files.STEMS_MODEL)
    targets = [files.object_file(o.label, files.STEMS_TARGET) for o in ws.spec.targets()]
    return [*targets, files.STEMS_MODEL[1]]


def working_masks(ws: Workspace, name: str = files.MASKS_WORK) -> DeflatedMasks:
    """The tracked masks at the working size (``name``: ``files.MASKS_WORK``, or an object's
    own), read by rows and unpacked: uint8 0/1 ``[frames, h, w]``."""
    return DeflatedMasks(ws.file(name))


def load_keyframe_mask(k: Any, size: tuple[int, int]) -> np.ndarray:
    if k.mask is not None:
        return vmasks.load_mask(Path(k.mask), size)
    return vmasks.box_mask(k.box, size)
