"""Stage 4, prompt: the object's motion over time, and which frame the model sees at each
feature step."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from vision import prompt as vprompt
from vision.evidence import FEATURES, EvidenceMeter
from worker import arrays, files
from worker.arrays import RowFile
from worker.settings import Settings
from worker.stages.common import MASK_CHUNK, StageProgress, noop, working_frames
from worker.stages.models import choose_windowing
from worker.workspace import Workspace

READS = (files.FRAMES, files.FRAME_TIMES, files.MASKS_WORK, files.AUDIO_MODEL)
WRITES = (files.PROMPT_INDEX, files.PROMPT_TIMES, files.ACTIVITY)


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """The object's motion over time, and which frame the model sees at each feature step.

    The masked frames themselves are built window by window in the separate stage from
    the working frames and masks (``MaskedFrames``): a second copy of the whole clip on
    disk would cost as much as the frames and buy nothing.
    """
    if ws.has(files.PROMPT_INDEX, files.PROMPT_TIMES, files.ACTIVITY):
        return
    frames, times = working_frames(ws)
    n = len(times)
    duration = sf.info(str(ws.file(files.AUDIO_MODEL))).duration
    rate = choose_windowing(ws.spec, settings).feature_rate  # the model's feature frames
    t = np.arange(0.0, max(duration, 1.0 / rate), 1.0 / rate)
    idx = np.clip(np.searchsorted(times, t + 1e-6, side="right") - 1, 0, n - 1)
    ws.write_npy(files.PROMPT_INDEX, idx.astype(np.int64))
    ws.write_npy(files.PROMPT_TIMES, t)
    meter = EvidenceMeter(*frames.shape[1:3])
    with arrays.open_npy(ws.file(files.MASKS_WORK)) as masks:
        for lo in range(0, n, MASK_CHUNK):
            chunk, mchunk = frames.read(lo, lo + MASK_CHUNK), masks.read(lo, lo + MASK_CHUNK)
            for frame, mask in zip(chunk, mchunk, strict=True):
                meter.add(frame, mask)
            report("prompt", min(1.0, (lo + MASK_CHUNK) / n), "measuring the object's motion")
    ev = meter.result()
    ws.write_npz(
        files.ACTIVITY,
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

    def __init__(self, frames: RowFile, masks: RowFile, index: np.ndarray) -> None:
        self.frames, self.masks, self.index = frames, masks, np.asarray(index)
        self.shape = (len(self.index), *frames.shape[1:])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        idx = self.index[key]
        return vprompt.masked_video_for_model(self.frames[idx], self.masks[idx])
