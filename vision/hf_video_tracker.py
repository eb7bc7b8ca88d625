"""Masks across frames with the promptable video models of transformers: SAM 2, SAM 3, EdgeTAM.

For users who have the weights: ``choose_tracker(name, weights=...)`` (``vision.choose``;
the worker's ``--tracker NAME --tracker-model``) with a local folder saved by transformers
or a Hub id already in the Hugging Face cache. Nothing is downloaded here: a worker must
not fetch gigabytes in the middle of a job. Three families, one streaming driver, because
transformers gives them the same inference-session API (``init_video_session``,
``add_inputs_to_inference_session``, ``model(inference_session=..., frame=...)``):

- ``sam2``: Meta's SAM 2, ``Sam2VideoModel`` with ``Sam2VideoProcessor``
  (e.g. ``facebook/sam2.1-hiera-tiny``).
- ``sam3``: SAM 3's tracker, ``Sam3TrackerVideoModel`` with ``Sam3TrackerVideoProcessor``
  (e.g. ``facebook/sam3``; the tracker's weights are read out of the full SAM 3 checkpoint).
  Prompted by the drawn mask or box; SAM 3's text-prompted detector is not used.
- ``edgetam``: EdgeTAM, SAM 2 made fast for small devices, ``EdgeTamVideoModel`` with
  ``Sam2VideoProcessor`` (e.g. ``yonigozlan/EdgeTAM-hf``).

The user's keyframe mask (or box) prompts the model on its keyframe: a box as a box, so the
model segments the object inside it and that output, not the rectangle, is the frame's
mask; a mask as a mask, kept exactly. Frames are streamed through the model one at a time
in the order it tracks them (forward from the first keyframe to the end, each later
keyframe added as a correction when it is reached; then backward from the first keyframe
to frame 0), and the session's state is pruned as it goes to what the model's memory can
still attend to (its last ``num_maskmem`` frames, its last ``max_object_pointers_in_encoder``
object pointers, the keyframes), so memory stays flat however long the clip is. The frames
may be a ``numpy.memmap``: only the frame being tracked is read.

``VideoModelTracker`` follows the ``vision.tracker.Tracker`` contract; ``load`` and
``VideoModel.propagate`` take the keyframes as a dict, like ``vision.propagate.propagate``:
masks uint8 [F, h, w] (1 = object) at the frames' resolution, keyframe masks kept exactly,
and warnings for frames where the object is absent (the model says so itself, through its
object score).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from vision.errors import MaskError, TrackerLoadError
from vision.masks import Box, check_clip, check_keyframe_index, check_keyframe_mask
from vision.sink import MaskSink, ProgressCallback, ProgressTicker, track_warnings
from vision.tracker import Clip, KeyframeTracker, Tracking

__all__ = [
    "FAMILIES",
    "Family",
    "Prompt",
    "TrackerLoadError",
    "VideoModel",
    "VideoModelTracker",
    "load",
]

Prompt = np.ndarray | Box
"""A keyframe's prompt: a mask [h, w] (non-zero = object) or a box (x0, y0, x1, y1) in
pixels of the frames given to the tracker."""


@dataclass(frozen=True)
class Family:
    """One kind of video model transformers can stream: which classes load it, and what to
    tell a user who has not given its weights."""

    tracker: str  # the tracker's name (vision.tracker.TRACKERS)
    title: str  # the model's name in messages
    model_class: str  # a transformers class
    processor_class: str  # a transformers class
    example: str  # a Hub id of its weights, for messages

    @property
    def weights_hint(self) -> str:
        """What to give as weights, in words."""
        return (
            f"a folder saved by transformers ({self.model_class}.save_pretrained) or a Hub id "
            f"such as {self.example} in the Hugging Face cache"
        )


FAMILIES: dict[str, Family] = {
    f.tracker: f
    for f in (
        Family(
            "sam2", "SAM 2", "Sam2VideoModel", "Sam2VideoProcessor", "facebook/sam2.1-hiera-tiny"
        ),
        Family(
            "sam3", "SAM 3", "Sam3TrackerVideoModel", "Sam3TrackerVideoProcessor", "facebook/sam3"
        ),
        Family(
            "edgetam", "EdgeTAM", "EdgeTamVideoModel", "Sam2VideoProcessor", "yonigozlan/EdgeTAM-hf"
        ),
    )
}
"""The trackers of this module by name. A checkpoint's ``model_type`` starts with its
family's name (``sam2_video``, ``sam3_video``, ``sam3_tracker_video``, ``edgetam_video``...),
which is how weights of another family are told apart before loading them."""


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # what is not a folder may be a Hub id, or nothing


def load(tracker: str, weights: str | os.PathLike[str] | None, device: str = "auto") -> VideoModel:
    """Load ``tracker``'s model (a name of ``FAMILIES``) from a local folder or a Hub id in
    the local Hugging Face cache.

    ``device``: "auto" (CUDA when available), "cpu" or "cuda[:N]". Loaded models are kept
    (one at a time), so a worker running many jobs loads the weights once. Missing,
    unreadable or wrong-family weights raise ``TrackerLoadError`` with a one-line message.
    """
    family = FAMILIES.get(tracker)
    if family is None:
        raise ValueError(f"unknown video model {tracker!r}; one of {', '.join(FAMILIES)}")
    if not weights:
        raise TrackerLoadError(
            f"tracker {tracker} needs {family.title} weights: {family.weights_hint}"
        )
    source = str(weights)
    path = Path(source).expanduser()
    # What can be told without importing torch, so a mistyped folder fails at once.
    if path.exists() and not (path / "config.json").is_file():
        raise TrackerLoadError(
            f"{source} has no config.json; give {family.title} weights: {family.weights_hint}"
        )
    if not path.exists() and not _HUB_ID.fullmatch(source):
        raise TrackerLoadError(
            f"{source} does not exist; give {family.title} weights: {family.weights_hint}"
        )
    if path.exists():
        try:
            _check_family(family, source, _local_model_type(path))
        except ValueError as exc:
            raise TrackerLoadError(f"could not load {family.title} from {source}: {exc}") from None
    return _load(tracker, source, device)


@lru_cache(maxsize=1)
def _load(tracker: str, source: str, device: str) -> VideoModel:
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    family = FAMILIES[tracker]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    path = Path(source).expanduser()
    local = path.exists()
    where = str(path) if local else source
    kwargs: dict[str, Any] = {} if local else {"local_files_only": True}
    hf_logging.disable_progress_bar()  # stderr belongs to the caller's progress display
    try:
        if not local:  # a Hub id: its config.json from the cache, or a clear refusal
            try:
                model_type = _cached_model_type(source)
            except OSError:
                raise TrackerLoadError(
                    f"{source} is not a local folder, and not in the Hugging Face cache either "
                    f"(nothing is downloaded): run `huggingface-cli download {source}` once, "
                    f"or give {family.title} weights as a folder"
                ) from None
            _check_family(family, source, model_type)
        net = getattr(transformers, family.model_class).from_pretrained(where, **kwargs)
        processor = getattr(transformers, family.processor_class).from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackerLoadError(f"could not load {family.title} from {source}: {first}") from None
    finally:
        hf_logging.enable_progress_bar()
    return VideoModel(_objects_apart(net).to(device).eval(), processor, device, family)


def _objects_apart(net: Any) -> Any:
    """Keep several objects of one session from changing each other's masks, as in SAM 2's
    own video predictor, where each object's memory is encoded as its own prompt says.

    transformers (5.x) encodes the memories of all objects on a frame in one batch with
    one flag, ``is_mask_from_pts=any(...)``: on a frame where one object gets a prompt,
    every other object's memory is encoded from its binarised mask, and its next frames
    change. Here the batch is split by that flag (one call per kind, same maths per
    object). EdgeTAM's mask-as-output path also returns object scores one dimension short,
    so a prompted object and a tracked one cannot be concatenated on the same frame; the
    missing dimension is added (the value, and a single object's result, are unchanged).
    """
    encode = getattr(net, "_batch_encode_memories", None)  # EdgeTAM encodes one at a time

    def encode_by_kind(
        inference_session: Any,
        frame_idx: int,
        objects_needing_memory_encoding: list[int],
        high_res_masks_for_memory: list[Any],
        object_score_logits_for_memory: list[Any],
        is_mask_from_pts_per_obj: list[bool],
    ) -> None:
        for kind in (False, True):
            pick = [i for i, k in enumerate(is_mask_from_pts_per_obj) if k is kind]
            if pick:
                encode(
                    inference_session=inference_session,
                    frame_idx=frame_idx,
                    objects_needing_memory_encoding=[
                        objects_needing_memory_encoding[i] for i in pick
                    ],
                    high_res_masks_for_memory=[high_res_masks_for_memory[i] for i in pick],
                    object_score_logits_for_memory=[
                        object_score_logits_for_memory[i] for i in pick
                    ],
                    is_mask_from_pts_per_obj=[kind] * len(pick),
                )

    if encode is not None:
        net._batch_encode_memories = encode_by_kind
    as_output = net._use_mask_as_output

    def mask_as_output(*args: Any, **kwargs: Any) -> Any:
        out = as_output(*args, **kwargs)
        if out.object_score_logits is not None and out.object_score_logits.dim() == 2:
            out.object_score_logits = out.object_score_logits.unsqueeze(-1)
        return out

    net._use_mask_as_output = mask_as_output
    return net


def _local_model_type(folder: Path) -> str:
    """A checkpoint folder's ``model_type``, from its config.json (no torch needed)."""
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"config.json is unreadable ({exc})") from None


def _cached_model_type(repo: str) -> str:
    """A Hub checkpoint's ``model_type``, from the config.json in the local cache only
    (``OSError`` when it is not there)."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(repo, local_files_only=True)
    return str(config.get("model_type", ""))


def _check_family(family: Family, source: str, model_type: str) -> None:
    """Refuse weights of another family: transformers would load them with a warning and
    random layers, and the tracker would quietly produce nonsense."""
    for other in FAMILIES.values():
        if other is not family and model_type.startswith(other.tracker):
            raise TrackerLoadError(
                f"{source} holds {other.title} weights ({model_type}), not {family.title}; "
                f"use tracker {other.tracker}, or give {family.title} weights: "
                f"{family.weights_hint}"
            )


class VideoModel:
    """A loaded video model (``Sam2VideoModel``, ``Sam3TrackerVideoModel`` or
    ``EdgeTamVideoModel``) and its processor, ready to track keyframe prompts.

    Shared by every job of a process (``load`` keeps it); a job's keyframes live in its
    own ``VideoModelTracker``."""

    def __init__(
        self, model: Any, processor: Any, device: str = "cpu", family: Family | None = None
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.family = family or FAMILIES["sam2"]
        cfg = model.config
        # Outputs older than this many frames are never attended to again (module doc).
        self.keep = max(int(cfg.num_maskmem), int(cfg.max_object_pointers_in_encoder)) + 1
        self.peak_frames_held = 0  # largest number of frames the session held at once
        self.peak_outputs_held = 0  # largest number of per-frame outputs it held
        self.frames_read = 0  # frames read and encoded, every session together

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
        return self.propagate_objects(frames, [keyframes], progress, [out])[0]

    def propagate_objects(
        self,
        frames: np.ndarray,
        keyframes: Sequence[Mapping[int, Prompt]],
        progress: ProgressCallback | None = None,
        outs: Sequence[object | None] | None = None,
    ) -> list[tuple[np.ndarray, list[str]]]:
        """Track several objects through the frames as one multi-object session (the way
        the SAM 2 video predictor tracks several object ids): each frame is read and
        encoded once for all of them, and each object keeps its own memory, so an object
        comes out as it would alone.

        keyframes: one mapping per object (frame index -> mask or box). Each object joins
        the session on its first keyframe: forward from the earliest first keyframe to
        the end, then backward from the latest first keyframe to frame 0, each object
        output only before its own first keyframe there. outs: one ``out`` per object.
        Returns (masks, warnings) per object.
        """
        keys = [_validate(frames, k) for k in keyframes]
        n, h, w = frames.shape[:3]
        outs = list(outs) if outs is not None else [None] * len(keys)
        sinks = [MaskSink(n, h, w, o) for o in outs]
        firsts = [min(k) for k in keys]
        title = self.family.title
        ticks = (n - min(firsts)) + max(firsts)  # frames streamed forward, then backward
        ticker = ProgressTicker(max(1, ticks - 1), progress)
        exact = [{t: v for t, v in k.items() if isinstance(v, np.ndarray)} for k in keys]
        start = min(firsts)
        for t, masks in self._stream(frames, keys, range(start, n), reverse=False):
            for j, m in masks.items():
                sinks[j].put(t, exact[j].get(t, m))
            if t != start:
                ticker.tick(f"{title} tracking forward from frame {start}")
        if max(firsts) > 0:
            only_first = [{firsts[j]: k[firsts[j]]} for j, k in enumerate(keys)]
            back = max(firsts)
            for t, masks in self._stream(frames, only_first, range(back, -1, -1), reverse=True):
                for j, m in masks.items():
                    if t < firsts[j]:
                        sinks[j].put(t, m)
                if t != back:
                    ticker.tick(f"{title} tracking backward from frame {back}")
        ticker.finish()
        results = []
        for j, sink in enumerate(sinks):
            order = sorted(keys[j])
            ref_area = np.array(
                [sink.areas[min(order, key=lambda k: abs(k - t))] for t in range(n)]
            )
            results.append((sink.masks, track_warnings(sink, order, ref_area)))
        return results

    def _stream(
        self,
        frames: np.ndarray,
        prompts: Sequence[Mapping[int, Prompt]],
        order: range,
        reverse: bool,
    ) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
        """Run the model over ``order`` one frame at a time, object j (id j + 1) joining
        on its first prompt; yield (t, {j: mask uint8 [h, w]}) for the objects present."""
        import torch

        h, w = frames.shape[1:3]
        session = self.processor.init_video_session(
            inference_device=self.device, dtype=torch.float32
        )
        joined: set[int] = set()
        with torch.inference_mode():
            for t in order:
                pixels = self.processor(images=np.array(frames[t]), return_tensors="pt")
                self.frames_read += 1
                new_inputs = []
                for j, per_object in enumerate(prompts):
                    prompt = per_object.get(t)
                    if isinstance(prompt, np.ndarray):
                        self.processor.add_inputs_to_inference_session(
                            session, frame_idx=t, obj_ids=j + 1, input_masks=prompt
                        )
                    elif prompt is not None:
                        self.processor.add_inputs_to_inference_session(
                            session,
                            frame_idx=t,
                            obj_ids=j + 1,
                            input_boxes=[[list(prompt)]],
                            original_size=(h, w),
                        )
                    if prompt is not None:
                        joined.add(j)
                        new_inputs.append(j + 1)
                if new_inputs:  # each add_inputs call names only its own object as new
                    session.obj_with_new_inputs = new_inputs
                if not joined:
                    continue
                out = self.model(
                    inference_session=session,
                    frame=pixels.pixel_values[0],
                    frame_idx=t,
                    reverse=reverse,
                )
                masks = self.processor.post_process_masks(
                    [out.pred_masks], original_sizes=[[h, w]], binarize=True
                )[0]
                masks = masks.reshape(-1, h, w).cpu().numpy().astype(np.uint8)
                yield t, {int(i) - 1: masks[k] for k, i in enumerate(out.object_ids)}
                self._prune(session, t)

    def _prune(self, session: Any, t: int) -> None:
        """Drop what the model will not attend to again: decoded frames, old per-frame outputs
        (the three families' sessions keep their state under the same names)."""
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


class VideoModelTracker(KeyframeTracker):
    """A loaded video model (``load``) behind the ``vision.tracker.Tracker`` contract; its
    ``name`` is its family's (``sam2``, ``sam3``, ``edgetam``).

    A box keyframe prompts the model as a box, scaled to the working size (it segments the
    object inside; that output, not the rectangle, is the frame's mask, so the frame is
    not in ``Tracking.exact``); a mask keyframe prompts it as a mask and is kept exactly.
    """

    def __init__(self, model: VideoModel) -> None:
        super().__init__()
        self.model = model
        self.name = model.family.tracker

    def _track(self, clip: Clip, progress: ProgressCallback | None) -> Tracking:
        return self.propagate_clips([clip], progress)[0]

    def propagate_clips(
        self, clips: Sequence[Clip], progress: ProgressCallback | None = None
    ) -> list[Tracking]:
        """Several objects' clips (the same frames, one object's keyframes each) tracked as
        one multi-object session (``VideoModel.propagate_objects``); ``JointTracker``."""
        frames = clips[0].frames
        if any(c.frames is not frames for c in clips):
            raise ValueError("a multi-object session tracks one set of frames")
        prompts = [
            {k: kf.mask if kf.box is None else kf.box for k, kf in c.keyframes.items()}
            for c in clips
        ]
        outs = self.model.propagate_objects(frames, prompts, progress, [c.out for c in clips])
        return [
            Tracking(
                masks,
                self.name,
                warnings,
                frozenset(k for k, kf in c.keyframes.items() if kf.box is None),
            )
            for c, (masks, warnings) in zip(clips, outs, strict=True)
        ]


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
