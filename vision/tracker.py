"""The contract every mask tracker follows (``vision.choose.choose_tracker`` picks one by name).

A tracker carries what an editor drew on one or more keyframes (a mask, or a box around
the object) through every frame of a clip. Its verbs follow SAM 2's video predictor
(``init_state`` / ``add_new_mask`` / ``propagate_in_video``)::

    tracker = choose_tracker("flow")                      # vision.choose
    tracker.init(frames, size=(1920, 1080), out=masks)  # the clip, and where masks go
    tracker.add_mask(0, drawn)                           # the object on frame 0 ...
    tracker.add_box(250, (400.0, 120.0, 880.0, 700.0))   # ... and a box on frame 250
    result = tracker.propagate(progress)                 # every frame's mask, warnings

Conventions, the same for every tracker:

- Masks are uint8 [h, w], 1 = object, 0 = everything else (masks given in may be bool or
  any dtype: non-zero = object). An object that cannot be followed gets empty masks and
  a line in ``Tracking.warnings`` ("object lost on frames 40–55"); that is not an error.
- Frame indices are positions in ``frames``, from 0 in decode order (the caller turns a
  keyframe's time into its frame index first).
- Two sizes. ``frames`` come at the *working size* (w, h), the size tracking runs at (the
  worker decodes at most 480 px on the longest side; a tracker may work smaller inside).
  Keyframes are drawn at the video's *full size* ``size`` = (W, H): masks [H, W], boxes
  in its pixels. Every tracker scales them to the working size the same way
  (``vision.masks.resize_masks``; boxes by w/W, h/H) and writes masks at the working
  size. Scaling those up is the caller's job; for the keyframes in ``Tracking.exact``
  (whose working-size mask is the keyframe's own) it puts the user's full-size mask back.
  Without ``size`` both sizes are the frames'.
- A box: flow and copy track the pixels it covers (that rectangle is its keyframe's
  mask, kept exactly); the video models (SAM 2, SAM 3, EdgeTAM) segment the object inside
  it, and their output, not the rectangle, is that frame's mask (the frame is not in
  ``exact``).
- What the user gave is checked: a keyframe outside the clip, an empty mask, a mask or
  box not of ``size``, or frames that are not uint8 RGB raise ``MaskError`` with a
  one-line message. A video model's weights that are missing, unreadable or of another
  model raise ``TrackerLoadError`` from ``choose_tracker``, before any frame is read.

The flow tracker lives in ``vision.propagate`` (its insides in ``vision.flow``), copy
beside it, SAM 2, SAM 3 and EdgeTAM (transformers' video models) in
``vision.hf_video_tracker``; what they share for output (mask storage, progress, warnings)
is in ``vision.sink``. A tracker that can follow several objects in one pass (the video
models, as SAM 2's multi-object session) is also a ``JointTracker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from vision.masks import (
    Box,
    Size,
    box_mask,
    check_frames,
    check_keyframe_index,
    check_keyframe_mask,
    resize_masks,
)
from vision.sink import ProgressCallback

TrackerName = Literal["flow", "copy", "sam2", "sam3", "edgetam"]
TRACKERS: tuple[TrackerName, ...] = ("flow", "copy", "sam2", "sam3", "edgetam")
# The trackers that run a model and need its weights (the others need none): SAM 2, SAM 3's
# tracker, EdgeTAM. A server offers one only when its weights are configured.
WEIGHTED_TRACKERS: tuple[TrackerName, ...] = ("sam2", "sam3", "edgetam")


@dataclass(frozen=True)
class Keyframe:
    """One keyframe as a tracker holds it, scaled to the working size."""

    frame: int
    mask: np.ndarray  # bool [h, w], True = object (a box keyframe: the pixels its box covers)
    box: Box | None = None  # (x0, y0, x1, y1) in working-size pixels, when drawn as a box


@dataclass
class Clip:
    """What a tracker was given since ``init``: the frames (working size), the size the
    keyframes are drawn at, where the masks go, and the keyframes (working size)."""

    frames: np.ndarray
    size: Size
    out: object | None = None
    keyframes: dict[int, Keyframe] = field(default_factory=dict)

    def masks(self) -> dict[int, np.ndarray]:
        """Frame index -> keyframe mask (bool, working size), in frame order."""
        return {k: self.keyframes[k].mask for k in sorted(self.keyframes)}


@dataclass
class Tracking:
    """What a tracker made: masks at the working size and what the caller should know."""

    masks: np.ndarray  # uint8 [F, h, w], 1 = object (``out`` when one was given)
    tracker: str
    warnings: list[str] = field(default_factory=list)
    exact: frozenset[int] = frozenset()  # keyframes whose mask is the keyframe's own


class Tracker(Protocol):
    """A mask tracker (module doc): ``init`` on a clip, add keyframes, ``propagate``."""

    name: str

    def init(self, frames: np.ndarray, size: Size | None = None, out: object | None = None) -> None:
        """Start on a clip, forgetting any earlier one and its keyframes.

        frames: uint8 RGB [F, h, w, 3] at the working size (an array, or anything with
        ``shape``/``dtype`` returning a frame for ``frames[t]``: a file read frame by frame).
        size: (W, H) the keyframes are drawn at, default (w, h). out: where the masks go,
        anything taking ``out[t] = mask`` (a file for a long clip; default a new array).
        """
        ...

    def add_mask(self, frame: int, mask: np.ndarray) -> None:
        """The object on ``frame`` as a mask [H, W] at ``size`` (non-zero = object).

        Replaces an earlier keyframe on that frame."""
        ...

    def add_box(self, frame: int, box: Box) -> None:
        """The object on ``frame`` as a box (x0, y0, x1, y1) in pixels of ``size``, inside
        the frame. Replaces an earlier keyframe on that frame."""
        ...

    def propagate(self, progress: ProgressCallback | None = None) -> Tracking:
        """Every frame's mask, written to ``out``, from the keyframes added since ``init``."""
        ...


@runtime_checkable
class JointTracker(Tracker, Protocol):
    """A tracker that can also follow several objects over the same frames in one pass
    (SAM 2's multi-object session): each object's keyframes are collected as one ``Clip``
    (``init``, ``add_mask``/``add_box``, ``clip``), then all are tracked together."""

    def clip(self) -> Clip:
        """The clip and keyframes given since ``init`` (one object's)."""
        ...

    def propagate_clips(
        self, clips: Sequence[Clip], progress: ProgressCallback | None = None
    ) -> list[Tracking]:
        """Every object's masks (into each clip's ``out``), in one pass over the frames."""
        ...


class KeyframeTracker:
    """The bookkeeping every tracker shares: ``init``, ``add_mask`` and ``add_box`` check
    what they are given and scale it to the working size the same way for every tracker
    (module doc); a tracker subclasses this and writes ``_track``."""

    name = "keyframes"

    def __init__(self) -> None:
        self._clip: Clip | None = None

    def init(self, frames: np.ndarray, size: Size | None = None, out: object | None = None) -> None:
        """Start on a clip (``Tracker.init``)."""
        _, h, w = check_frames(frames)
        self._clip = Clip(frames, (w, h) if size is None else (int(size[0]), int(size[1])), out)

    def add_mask(self, frame: int, mask: np.ndarray) -> None:
        """The object on ``frame`` as a mask at ``size`` (``Tracker.add_mask``)."""
        clip = self._need_clip()
        idx = check_keyframe_index(frame, len(clip.frames))
        full = check_keyframe_mask(
            idx, mask, clip.size, "the keyframes are drawn at", "draw it on a frame of the video"
        )
        clip.keyframes[idx] = Keyframe(idx, self._to_work(clip, full))

    def add_box(self, frame: int, box: Box) -> None:
        """The object on ``frame`` as a box in pixels of ``size`` (``Tracker.add_box``)."""
        clip = self._need_clip()
        idx = check_keyframe_index(frame, len(clip.frames))
        mask = self._to_work(clip, box_mask(box, clip.size))
        (width, height), (w, h) = clip.size, _frame_size(clip)
        sx, sy = w / width, h / height
        x0, y0, x1, y1 = box
        clip.keyframes[idx] = Keyframe(idx, mask, (x0 * sx, y0 * sy, x1 * sx, y1 * sy))

    def clip(self) -> Clip:
        """The clip and keyframes given since ``init``."""
        return self._need_clip()

    def propagate(self, progress: ProgressCallback | None = None) -> Tracking:
        """Every frame's mask (``Tracker.propagate``)."""
        return self._track(self._need_clip(), progress)

    def _track(self, clip: Clip, progress: ProgressCallback | None) -> Tracking:
        raise NotImplementedError

    def _need_clip(self) -> Clip:
        if self._clip is None:
            raise RuntimeError(f"{type(self).__name__}: call init(frames) first")
        return self._clip

    @staticmethod
    def _to_work(clip: Clip, full: np.ndarray) -> np.ndarray:
        """A bool mask at ``clip.size`` as a bool mask at the working size."""
        return resize_masks(full, _frame_size(clip)).astype(bool)


def _frame_size(clip: Clip) -> Size:
    return clip.frames.shape[2], clip.frames.shape[1]
