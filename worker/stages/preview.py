"""Stage 8, preview: a small H.264 preview with the tracked mask drawn over the picture.

Several objects: every object in its own colour with its label (``vision.objects``), over
the source's own sound."""

from __future__ import annotations

import numpy as np

from vision.objects import draw_objects
from vision.preview import draw_overlay
from worker import arrays, files, media
from worker.settings import Settings
from worker.stages.common import StageProgress, noop, working_frames
from worker.workspace import Workspace

READS = (files.FRAMES, files.FRAME_TIMES, files.MASKS_WORK, files.PROBE, files.TARGET)
WRITES = (files.PREVIEW,)


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """A small H.264 preview with the tracked mask drawn over the picture, target audio."""
    if ws.has(files.PREVIEW):
        return
    if ws.spec.several:
        _run_objects(ws, report)
        return
    frames, times = working_frames(ws)
    masks = arrays.open_npy(ws.file(files.MASKS_WORK))
    h, w = frames.shape[1:3]
    fps = ws.read_json(files.PROBE)["frame_rate"]
    audio = ws.file(files.TARGET) if ws.has(files.TARGET) else None  # hear the isolated sound
    with ws.atomic(files.PREVIEW) as tmp, media.PreviewEncoder((w, h), fps, audio, tmp) as enc:
        step = 64
        for s in range(0, len(times), step):
            enc.write(draw_overlay(frames.read(s, s + step), masks.read(s, s + step)))
            report("preview", min(1.0, (s + step) / len(times)), "preview")
    report("preview", 1.0, "preview written")


def _run_objects(ws: Workspace, report: StageProgress) -> None:
    frames, times = working_frames(ws)
    labels = [o.label for o in ws.spec.targets()]
    masks = [arrays.open_npy(ws.file(files.object_file(lb, files.MASKS_WORK))) for lb in labels]
    h, w = frames.shape[1:3]
    fps = ws.read_json(files.PROBE)["frame_rate"]
    audio = ws.file(files.AUDIO_SOURCE)  # several stems: hear the whole scene
    try:
        with (
            ws.atomic(files.PREVIEW) as tmp,
            media.PreviewEncoder((w, h), fps, audio, tmp) as enc,
        ):
            step = 64
            for s in range(0, len(times), step):
                chunk = frames.read(s, s + step)
                ms = [m.read(s, s + step) for m in masks]
                enc.write(
                    np.stack(
                        [draw_objects(f, [m[i] for m in ms], labels) for i, f in enumerate(chunk)]
                    )
                )
                report("preview", min(1.0, (s + step) / len(times)), "preview")
    finally:
        for m in masks:
            m.close()
    report("preview", 1.0, "preview written")
