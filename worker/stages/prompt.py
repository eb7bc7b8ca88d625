"""Stage 4, prompt: the object's motion over time, and which frame the model sees at each
feature step."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from vision import prompt as vprompt
from vision.evidence import FEATURES, EvidenceMeter
from worker import files
from worker.arrays import DeflatedMasks, VideoFrames
from worker.settings import Settings
from worker.stages.common import MASK_CHUNK, StageProgress, noop, working_frames, working_masks
from worker.stages.models import choose_windowing
from worker.stages.preview import PreviewPainter
from worker.workspace import Workspace

READS = (
    files.SPEC,
    files.PROBE,
    files.FRAMES,
    files.FRAME_OFFSETS,
    files.FRAME_TIMES,
    files.MASKS_WORK,
    files.AUDIO_MODEL,
)
WRITES = (files.PROMPT_INDEX, files.PROMPT_TIMES, files.ACTIVITY, files.PREVIEW_PICTURE)


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """The object's motion over time, and which frame the model sees at each feature step.

    The masked frames themselves are built window by window in the separate stage from
    the working frames and masks (``MaskedFrames``): a second copy of the whole clip on
    disk would cost as much as the frames and buy nothing.

    The same pass draws the preview's picture (``files.PREVIEW_PICTURE``, unless the job
    asks for no preview): the frames and masks are read once for both, and the preview
    stage only adds the sound.
    """
    spec = ws.spec
    objs = spec.targets()
    prefix = [files.object_file(o.label, "") if spec.several else "" for o in objs]
    activities = [p + files.ACTIVITY for p in prefix]
    picture = (files.PREVIEW_PICTURE,) if spec.preview else ()
    if ws.has(files.PROMPT_INDEX, files.PROMPT_TIMES, *activities, *picture):
        return
    frames, times = working_frames(ws)
    n = len(times)
    duration = sf.info(str(ws.file(files.AUDIO_MODEL))).duration
    rate = choose_windowing(ws.spec, settings).feature_rate  # the model's feature frames
    t = np.arange(0.0, max(duration, 1.0 / rate), 1.0 / rate)
    idx = np.clip(np.searchsorted(times, t + 1e-6, side="right") - 1, 0, n - 1)
    ws.write_npy(files.PROMPT_INDEX, idx.astype(np.int64))
    ws.write_npy(files.PROMPT_TIMES, t)
    # One pass over the frames for every object and the preview: each frame is read once.
    meter = EvidenceMeter(*frames.shape[1:3], objects=len(objs))  # one pass for them all
    masks = [working_masks(ws, p + files.MASKS_WORK) for p in prefix]
    labels = [o.label for o in objs] if spec.several else None
    with contextlib.ExitStack() as stack:
        for m in masks:
            stack.callback(m.close)
        painter = None
        if spec.preview:
            tmp = stack.enter_context(ws.atomic(files.PREVIEW_PICTURE))
            painter = stack.enter_context(PreviewPainter(ws, tmp, labels, None))
        # The next chunk's frames decode on other threads while this one is measured.
        reader = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="prompt"))
        ahead = reader.submit(frames.read, 0, MASK_CHUNK)
        for lo in range(0, n, MASK_CHUNK):
            chunk = ahead.result()
            if lo + MASK_CHUNK < n:
                ahead = reader.submit(frames.read, lo + MASK_CHUNK, lo + 2 * MASK_CHUNK)
            ms = [m.read(lo, lo + MASK_CHUNK) for m in masks]
            for t, frame in enumerate(chunk):
                meter.add(frame, *(mk[t] for mk in ms))
            what = "the objects' motion" if spec.several else "the object's motion"
            report("prompt", min(1.0, (lo + MASK_CHUNK) / n), f"measuring {what}")
            if painter is not None:
                painter.add(chunk, ms)
    for j, name in enumerate(activities):
        ev = meter.result(j)
        ws.write_npz(
            name,
            object=ev.motion,
            background=ev.background,
            features=ev.object,
            feature_names=np.array(FEATURES),
            times=times,
        )
    report("prompt", 1.0, "prompt built")


class MaskedFrames:
    """The model's visual prompt for a whole clip, built only for the frames asked for.

    ``self[a:b]`` gives uint8 [b - a, h, w, 3]: the working frames at the feature steps
    ``a`` to ``b`` with the tracked object blacked out (``vision.prompt``); the windows of a
    long clip each build their own few hundred frames and nothing more.
    """

    def __init__(self, frames: VideoFrames, masks: DeflatedMasks, index: np.ndarray) -> None:
        self.frames, self.masks, self.index = frames, masks, np.asarray(index)
        self.shape = (len(self.index), *frames.shape[1:])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        idx = self.index[key]
        return vprompt.masked_video_for_model(self.frames[idx], self.masks[idx])
