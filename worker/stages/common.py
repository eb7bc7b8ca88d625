"""What every stage shares: the progress callback, the working frames, keyframe masks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vision import masks as vmasks
from worker import files, media
from worker.arrays import RowFile
from worker.errors import SonomaskError
from worker.workspace import Workspace

StageProgress = Callable[[str, float, str], None]
"""(stage name, fraction of that stage done, message)."""


def noop(stage: str, fraction: float, message: str) -> None:
    pass


def stage_progress(report: StageProgress, stage: str) -> media.ProgressFn:
    return lambda fraction, message: report(stage, fraction, message)


MASK_CHUNK = 256  # frames of masks read, resized or written at a time


def decode_working_frames(
    ws: Workspace, p: media.Probe, size: tuple[int, int], prog: media.ProgressFn
) -> None:
    """Every frame at the working size (frames.raw) and its time (frame_times.npy)."""
    wsize = media.working_size(size)
    with ws.atomic(files.FRAMES) as tmp:
        times = media.decode_frames(p, tmp, wsize, prog)
        if tmp.stat().st_size != len(times) * wsize[0] * wsize[1] * 3:
            raise SonomaskError("frame decoding produced an unexpected number of bytes")
    ws.write_npy(files.FRAME_TIMES, times)
    ws.update_manifest(frames={"count": len(times), "working_size": list(wsize)})


def working_frames(ws: Workspace) -> tuple[RowFile, np.ndarray]:
    """The working frames, read frame by frame from disk, and their times."""
    times = np.load(ws.file(files.FRAME_TIMES))
    w, h = ws.manifest()["frames"]["working_size"]
    return RowFile(ws.file(files.FRAMES), (len(times), h, w, 3), np.uint8), times


def load_keyframe_mask(k: Any, size: tuple[int, int]) -> np.ndarray:
    if k.mask is not None:
        return vmasks.load_mask(Path(k.mask), size)
    return vmasks.box_mask(k.box, size)
