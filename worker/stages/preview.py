"""Stage 8, preview: a small H.264 preview with the tracked mask drawn over the picture.

Several objects: every object in its own colour with its label (``vision.objects``), over
the source's own sound.

The picture is cheap: drawn at a low resolution (longest side ``PREVIEW_MAX_SIDE``) and
encoded with a fast x264 preset. The prompt stage draws and encodes it in the pass it
makes over the frames and masks anyway (``files.PREVIEW_PICTURE``, no sound); this stage
then only muxes in the sound, which exists only after separation (the target). Where no
picture was drawn (``sonomask track --preview`` runs no prompt stage) it draws it here,
reading the frames and masks once. A job with ``preview`` false (``--no-preview``) writes
nothing here or in the prompt stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from vision.objects import draw_objects
from vision.preview import draw_overlay
from worker import files, media
from worker.settings import Settings
from worker.stages.common import StageProgress, noop, working_frames, working_masks
from worker.workspace import Workspace

READS = (
    files.SPEC,
    files.PREVIEW_PICTURE,
    files.FRAMES,
    files.FRAME_OFFSETS,
    files.FRAME_TIMES,
    files.MASKS_WORK,
    files.PROBE,
    files.TARGET,
)
WRITES = (files.PREVIEW,)

PREVIEW_MAX_SIDE = 320  # the preview's longest side, in pixels (never above the working size)
CHUNK = 64  # frames drawn at a time


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """A small H.264 preview with the tracked mask drawn over the picture, target audio."""
    if ws.has(files.PREVIEW) or not ws.spec.preview:  # --no-preview: nothing to write
        return
    if ws.spec.several:
        audio = ws.file(files.AUDIO_SOURCE)  # several stems: hear the whole scene
    else:  # hear the isolated sound
        audio = ws.file(files.TARGET) if ws.has(files.TARGET) else None
    if ws.has(files.PREVIEW_PICTURE):
        with ws.atomic(files.PREVIEW) as tmp:
            media.mux_preview(ws.file(files.PREVIEW_PICTURE), audio, tmp)
        report("preview", 1.0, "preview written")
        return
    frames, times = working_frames(ws)
    labels = [o.label for o in ws.spec.targets()] if ws.spec.several else None
    masks = [working_masks(ws, mask_file(ws, lb)) for lb in labels or [None]]
    try:
        with ws.atomic(files.PREVIEW) as tmp, PreviewPainter(ws, tmp, labels, audio) as painter:
            for s in range(0, len(times), CHUNK):
                painter.add(frames.read(s, s + CHUNK), [m.read(s, s + CHUNK) for m in masks])
                report("preview", min(1.0, (s + CHUNK) / len(times)), "preview")
    finally:
        for m in masks:
            m.close()
    report("preview", 1.0, "preview written")


def mask_file(ws: Workspace, label: str | None) -> str:
    return files.object_file(label, files.MASKS_WORK) if label else files.MASKS_WORK


def preview_size(working: tuple[int, int]) -> tuple[int, int]:
    """The preview's (w, h): the working size scaled to ``PREVIEW_MAX_SIDE``, even."""
    return media.working_size(working, PREVIEW_MAX_SIDE)


class PreviewPainter:
    """Draws working frames and their masks, chunk by chunk, into a preview video at
    ``preview_size``: one object in the default colour, or every object of ``labels``."""

    def __init__(
        self, ws: Workspace, out: Path, labels: Sequence[str] | None, audio: Path | None
    ) -> None:
        w, h = ws.manifest()["frames"]["working_size"]
        self.size = preview_size((w, h))
        self.labels = labels
        fps = ws.read_json(files.PROBE)["frame_rate"]
        self.enc = media.PreviewEncoder(self.size, fps, audio, out)

    def add(self, frames: np.ndarray, masks: Sequence[np.ndarray]) -> None:
        """``frames`` uint8 [k, h, w, 3] at the working size; ``masks``: one [k, h, w]
        per object."""
        w, h = self.size
        if frames.shape[1:3] != (h, w):
            frames = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames])
        if self.labels is None:
            self.enc.write(draw_overlay(frames, masks[0]))  # masks resized nearest inside
            return
        small = [
            [cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in ms] for ms in masks
        ]
        self.enc.write(
            np.stack(
                [
                    draw_objects(f, [ms[i] for ms in small], self.labels)
                    for i, f in enumerate(frames)
                ]
            )
        )

    def __enter__(self) -> PreviewPainter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.enc.__exit__(*exc)
