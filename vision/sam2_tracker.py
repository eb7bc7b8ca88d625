"""Masks across frames with SAM 2, Meta's Segment Anything 2 video model (via transformers).

For users who have the weights: ``choose_tracker("sam2", weights=...)`` (``vision.choose``;
the worker's ``--tracker sam2 --tracker-model``) with a local folder saved by transformers
(``Sam2VideoModel.save_pretrained``) or a Hub id already in the Hugging Face cache, e.g.
``facebook/sam2.1-hiera-tiny``. Nothing is downloaded here: a worker must not fetch
gigabytes in the middle of a job.

The user's keyframe mask (or box) prompts the model on its keyframe: a box as a box, so
SAM 2 segments the object inside it and that output, not the rectangle, is the frame's
mask; a mask as a mask, kept exactly. Frames are streamed through the model one at a time
in the order it tracks them (forward from the first keyframe to the end, each later
keyframe added as a correction when it is reached; then backward from the first keyframe
to frame 0), and the session's state is pruned as it goes to what SAM 2's memory can
still attend to (its last ``num_maskmem`` frames, its last
``max_object_pointers_in_encoder`` object pointers, the keyframes), so memory stays flat
however long the clip is. The frames may be a ``numpy.memmap``: only the frame
being tracked is read.

``Sam2VideoTracker`` follows the ``vision.tracker.Tracker`` contract; ``load`` and
``Sam2Tracker.propagate`` take the keyframes as a dict, like ``vision.propagate.propagate``:
masks uint8 [F, h, w] (1 = object) at the frames' resolution, keyframe masks kept exactly,
and warnings for frames where the object is absent (SAM 2 says so itself, through its
object score).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from vision.errors import MaskError, TrackerLoadError
from vision.masks import Box, check_clip, check_keyframe_index, check_keyframe_mask
from vision.sink import MaskSink, ProgressCallback, ProgressTicker, track_warnings
from vision.tracker import Clip, KeyframeTracker, Tracking

__all__ = ["Prompt", "Sam2Tracker", "Sam2VideoTracker", "TrackerLoadError", "load"]

Prompt = np.ndarray | Box
"""A keyframe's prompt: a mask [h, w] (non-zero = object) or a box (x0, y0, x1, y1) in
pixels of the frames given to the tracker."""


def load(model: str | os.PathLike[str], device: str = "auto") -> Sam2Tracker:
    """Load SAM 2 from a local folder or a Hub id in the local Hugging Face cache.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda[:N]". Loaded models are
    kept (one at a time), so a worker running many jobs loads the weights once.
    """
    return _load(str(model), device)


@lru_cache(maxsize=1)
def _load(source: str, device: str) -> Sam2Tracker:
    import torch
    from transformers import Sam2VideoModel, Sam2VideoProcessor

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(source).expanduser()
    kwargs: dict[str, Any] = {} if path.exists() else {"local_files_only": True}
    where = str(path) if path.exists() else source
    if path.exists() and not (path / "config.json").is_file():
        raise TrackerLoadError(
            f"{source} has no config.json; point --tracker-model at a folder saved by "
            "transformers (Sam2VideoModel.save_pretrained) or a Hub id such as "
            "facebook/sam2.1-hiera-tiny"
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr belongs to the caller's progress display
    try:
        net = Sam2VideoModel.from_pretrained(where, **kwargs)
        processor = Sam2VideoProcessor.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        hint = (
            ""
            if path.exists()
            else " (it is not a local folder, and not in the Hugging Face cache either: "
            f"run `huggingface-cli download {source}` once, or give the folder)"
        )
        raise TrackerLoadError(f"could not load SAM 2 from {source}{hint}: {exc}") from None
    finally:
        hf_logging.enable_progress_bar()
    return Sam2Tracker(net.to(device).eval(), processor, device)


class Sam2Tracker:
    """A loaded SAM 2 video model and its processor, ready to track keyframe prompts.

    Shared by every job of a process (``load`` keeps it); a job's keyframes live in its
    own ``Sam2VideoTracker``."""

    def __init__(self, model: Any, processor: Any, device: str = "cpu") -> None:
        self.model = model
        self.processor = processor
        self.device = device
        cfg = model.config
        # Outputs older than this many frames are never attended to again (module doc).
        self.keep = max(int(cfg.num_maskmem), int(cfg.max_object_pointers_in_encoder)) + 1
        self.peak_frames_held = 0  # largest number of frames the session held at once
        self.peak_outputs_held = 0  # largest number of per-frame outputs it held

    def propagate(
        self,
        frames: np.ndarray,
        keyframes: Mapping[int, Prompt],
        progress: ProgressCallback | None = None,
        out: object | None = None,
    ) -> tuple[np.ndarray, list[str]]:
        """Track the keyframe prompt(s) through every frame.

        frames: uint8 [F, h, w, 3] RGB (an array or a file read frame by frame). keyframes:
        frame index -> mask [h, w] or box (x0, y0, x1, y1). out: where the masks go, as in
        ``vision.propagate.propagate``. Returns (masks uint8 [F, h, w], warnings).
        """
        keys = _validate(frames, keyframes)
        n, h, w = frames.shape[:3]
        sink = MaskSink(n, h, w, out)
        order = sorted(keys)
        first = order[0]
        ticker = ProgressTicker(max(1, n - 1), progress)
        exact = {k: v for k, v in keys.items() if isinstance(v, np.ndarray)}
        for t, m in self._stream(frames, keys, range(first, n), reverse=False):
            sink.put(t, exact.get(t, m))
            if t != first:
                ticker.tick(f"SAM 2 tracking forward from frame {first}")
        if first > 0:
            only_first = {first: keys[first]}
            for t, m in self._stream(frames, only_first, range(first, -1, -1), reverse=True):
                if t != first:
                    sink.put(t, m)
                    ticker.tick(f"SAM 2 tracking backward from frame {first}")
        ticker.finish()
        ref_area = np.zeros(n)
        for t in range(n):
            ref_area[t] = sink.areas[min(order, key=lambda k: abs(k - t))]
        return sink.masks, track_warnings(sink, order, ref_area)

    def _stream(
        self, frames: np.ndarray, prompts: Mapping[int, Prompt], order: range, reverse: bool
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Run the model over ``order`` one frame at a time; yield (t, mask uint8 [h, w])."""
        import torch

        h, w = frames.shape[1:3]
        session = self.processor.init_video_session(
            inference_device=self.device, dtype=torch.float32
        )
        with torch.inference_mode():
            for t in order:
                pixels = self.processor(images=np.array(frames[t]), return_tensors="pt")
                prompt = prompts.get(t)
                if isinstance(prompt, np.ndarray):
                    self.processor.add_inputs_to_inference_session(
                        session, frame_idx=t, obj_ids=1, input_masks=prompt
                    )
                elif prompt is not None:
                    self.processor.add_inputs_to_inference_session(
                        session,
                        frame_idx=t,
                        obj_ids=1,
                        input_boxes=[[list(prompt)]],
                        original_size=(h, w),
                    )
                out = self.model(
                    inference_session=session,
                    frame=pixels.pixel_values[0],
                    frame_idx=t,
                    reverse=reverse,
                )
                mask = self.processor.post_process_masks(
                    [out.pred_masks], original_sizes=[[h, w]], binarize=True
                )[0]
                yield t, mask.reshape(-1, h, w)[0].cpu().numpy().astype(np.uint8)
                self._prune(session, t)

    def _prune(self, session: Any, t: int) -> None:
        """Drop what SAM 2 will not attend to again: decoded frames, old per-frame outputs."""
        frames = session.processed_frames or {}
        self.peak_frames_held = max(self.peak_frames_held, len(frames))
        for k in list(frames):
            del frames[k]
        held = 0
        for per_obj in session.output_dict_per_obj.values():
            outputs = per_obj["non_cond_frame_outputs"]
            for k in [k for k in outputs if abs(k - t) >= self.keep]:
                del outputs[k]
            held += len(outputs)
        for tracked in session.frames_tracked_per_obj.values():
            for k in [k for k in tracked if abs(k - t) >= self.keep]:
                del tracked[k]
        self.peak_outputs_held = max(self.peak_outputs_held, held)


class Sam2VideoTracker(KeyframeTracker):
    """A loaded SAM 2 (``load``) behind the ``vision.tracker.Tracker`` contract.

    A box keyframe prompts SAM 2 as a box, scaled to the working size (it segments the
    object inside; that output, not the rectangle, is the frame's mask, so the frame is
    not in ``Tracking.exact``); a mask keyframe prompts it as a mask and is kept exactly.
    """

    name = "sam2"

    def __init__(self, model: Sam2Tracker) -> None:
        super().__init__()
        self.model = model

    def _track(self, clip: Clip, progress: ProgressCallback | None) -> Tracking:
        prompts: dict[int, Prompt] = {
            k: kf.mask if kf.box is None else kf.box for k, kf in clip.keyframes.items()
        }
        masks, warnings = self.model.propagate(clip.frames, prompts, progress, clip.out)
        exact = frozenset(k for k, kf in clip.keyframes.items() if kf.box is None)
        return Tracking(masks, self.name, warnings, exact)


def _validate(frames: np.ndarray, keyframes: Mapping[int, Prompt]) -> dict[int, Prompt]:
    """Check shapes, indices and prompts; masks come back as bool [h, w], boxes as floats."""
    n, h, w = check_clip(frames, keyframes)
    out: dict[int, Prompt] = {}
    for key in sorted(keyframes):
        idx = check_keyframe_index(key, n)
        prompt = keyframes[key]
        if isinstance(prompt, np.ndarray) and prompt.ndim == 2:
            out[idx] = check_keyframe_mask(idx, prompt, (w, h))
        else:
            box = tuple(float(v) for v in np.asarray(prompt, dtype=float).ravel())
            if len(box) != 4 or not (box[2] > box[0] and box[3] > box[1]):
                raise MaskError(f"keyframe {idx} box {prompt} must be x0,y0,x1,y1 with an area")
            out[idx] = box  # type: ignore[assignment]
    return out
