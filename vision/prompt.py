"""Visual prompt frames: what the separation backends see of the tracked object.

Two products of the tracked masks live here:

- ``masked_video_for_model``: the frames SAM Audio is fed. This is THE one place where
  sonomask's 1 = object masks are converted to the model's convention.
- ``motion_activity``: per-frame motion inside / outside the object (a shortcut to
  ``vision.evidence``, which measures more than motion for the weight-free backend).
"""

from __future__ import annotations

import cv2
import numpy as np

from vision.errors import MaskError


def _masks_at(masks: np.ndarray, n: int, h: int, w: int, what: str) -> np.ndarray:
    """Masks as bool [n, h, w]; resized (nearest) per frame when their size differs."""
    m = np.asarray(masks)
    if m.ndim != 3:
        raise MaskError(f"{what}: masks must be [F, H, W], got shape {m.shape}")
    if m.shape[0] != n:
        raise MaskError(f"{what}: {m.shape[0]} masks for {n} frames; give one mask per frame")
    if m.shape[1:] == (h, w):
        return m != 0
    out = np.empty((n, h, w), dtype=bool)
    for i in range(n):
        small = (m[i] != 0).astype(np.uint8)
        out[i] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) != 0
    return out


def _check_frames(frames: np.ndarray, what: str) -> tuple[int, int, int]:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise MaskError(
            f"{what}: frames must be uint8 [F, H, W, 3], got {getattr(frames, 'shape', None)}"
        )
    if frames.dtype != np.uint8:
        raise MaskError(f"{what}: frames must be uint8, got {frames.dtype}")
    n, h, w, _ = frames.shape
    return n, h, w


def masked_video_for_model(frames: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The frames SAM Audio is fed for a visual prompt: the tracked object blacked out.

    frames: uint8 [F, H, W, 3] RGB. masks: [F, h, w], non-zero = object (sonomask's
    convention), at any resolution (resized to the frames with nearest neighbour).
    Returns uint8 [F, H, W, 3]: every object pixel set to 0 (all three channels), every
    other pixel unchanged.

    Why the object is zeroed: the reference processor's ``mask_videos(videos, masks)``
    returns ``video * mask.eq(0)``, i.e. it keeps the pixels where its mask is 0 and zeroes
    the rest. In the reference's visual-prompting examples the mask handed to it is the
    object's segmentation mask (1 = object), so the model was trained and demonstrated
    on frames with the prompted object blacked out. sonomask passes its own 1 = object
    mask as that ``mask`` argument, unchanged and not inverted: the result is
    bit-for-bit what ``processor.mask_videos([frames], [masks])`` gives (in our [F, H, W,
    3] layout; the model package reorders to the reference's [F, C, H, W]).
    """
    n, h, w = _check_frames(frames, "masked video")
    keep = ~_masks_at(masks, n, h, w, "masked video")  # reference: mask.eq(0)
    out = np.zeros_like(frames)
    for i in range(n):  # one frame at a time: no [F, H, W, 3] temporary
        cv2.copyTo(np.ascontiguousarray(frames[i]), keep[i].view(np.uint8), out[i])
    return out


def motion_activity(frames: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much the tracked object moves in each frame, and how much everything else does.

    frames: uint8 [F, h, w, 3]; masks: [F, h, w] (non-zero = object; resized to the
    frames if their size differs). Returns (object, background), float32 [F] each, >= 0:
    the ``motion`` column of ``vision.evidence`` and its ``background`` (camera motion
    removed; see there), kept as a two-curve shortcut.
    """
    from vision.evidence import EvidenceMeter

    n, h, w = _check_frames(frames, "motion activity")
    m = _masks_at(masks, n, h, w, "motion activity")
    meter = EvidenceMeter(h, w)
    for t in range(n):
        meter.add(frames[t], m[t])
    ev = meter.result()
    return ev.motion.copy(), ev.background
