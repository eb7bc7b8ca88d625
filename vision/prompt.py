"""Visual prompt frames: what the separation backends see of the tracked object.

Two products of the tracked masks live here:

- ``masked_video_for_model``: the frames SAM Audio is fed. This is THE one place where
  sonomask's 1 = object masks are converted to the model's convention.
- ``motion_activity``: per-frame motion inside / outside the object, which the weight-free
  backend correlates with audio component activations.
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


def _dilation_kernel(h: int, w: int) -> np.ndarray:
    r = max(1, round(0.02 * min(h, w)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def motion_activity(frames: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much the tracked object moves in each frame, and how much everything else does.

    frames: uint8 [F, h, w, 3]; masks: [F, h, w] (non-zero = object; resized to the
    frames if their size differs). Returns (object, background), float32 [F] each, >= 0.

    For frame t >= 1, with g the grayscale frame in [0, 1] and R the union of the masks of
    t and t-1 dilated by ~2 % of the frame's short side (so the edges the object sweeps
    over count as its motion, not the background's):

    - object[t] = mean |g_t - g_{t-1}| over R
      + |centroid_t - centroid_{t-1}| / sqrt(area) (the mask's own displacement, in
      object sizes) + |area_t - area_{t-1}| / max(area_t, area_{t-1});
    - background[t] = mean |g_t - g_{t-1}| outside R.

    Frame 0 takes frame 1's values. A frame where the object is absent on both t and t-1
    gets object 0. The values are only comparable within one clip; the weight-free
    separator correlates them over time with audio activations (what is moving when a
    sound component is active), so the object's motion must rise when it moves and stay
    low when it does not, whatever the rest of the picture does.
    """
    n, h, w = _check_frames(frames, "motion activity")
    m = _masks_at(masks, n, h, w, "motion activity")
    meter = MotionMeter(h, w)
    for t in range(n):
        meter.add(frames[t], m[t])
    return meter.result()


class MotionMeter:
    """``motion_activity`` one frame at a time, for clips too long to hold: ``add`` each
    frame with its mask (bool [h, w], at the frame's size) in order, then ``result``."""

    def __init__(self, h: int, w: int) -> None:
        self.size = (h, w)
        self._kernel = _dilation_kernel(h, w)
        self._obj: list[float] = []
        self._bg: list[float] = []
        self._prev: tuple[np.ndarray, np.ndarray, tuple[float, float, float]] | None = None

    def add(self, frame: np.ndarray, mask: np.ndarray) -> None:
        if frame.shape[:2] != self.size or mask.shape != self.size:
            raise MaskError(
                f"motion activity: frame {frame.shape[:2]} and mask {mask.shape} must both be "
                f"{self.size}"
            )
        mask = mask != 0
        cur = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        cur = cur.astype(np.float32) / 255.0
        stats = _mask_stats(mask)
        if self._prev is None:
            self._obj.append(0.0)
            self._bg.append(0.0)
        else:
            prev, prev_mask, prev_stats = self._prev
            diff = np.abs(cur - prev)
            region = cv2.dilate((mask | prev_mask).astype(np.uint8), self._kernel) != 0
            inside = int(region.sum())
            outside = region.size - inside
            total = float(diff.sum())
            in_sum = float(diff[region].sum()) if inside else 0.0
            self._obj.append(in_sum / inside + _shape_change(prev_stats, stats) if inside else 0.0)
            self._bg.append((total - in_sum) / outside if outside else 0.0)
        self._prev = (cur, mask, stats)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(object, background), float32 [frames added]; frame 0 takes frame 1's values."""
        obj = np.asarray(self._obj, dtype=np.float32)
        bg = np.asarray(self._bg, dtype=np.float32)
        if len(obj) >= 2:
            obj[0], bg[0] = obj[1], bg[1]
        return obj, bg


def _mask_stats(mask: np.ndarray) -> tuple[float, float, float]:
    """(area, centroid x, centroid y) of a bool mask; area 0 for an empty one."""
    m = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    area = m["m00"]
    if area <= 0:
        return 0.0, 0.0, 0.0
    return area, m["m10"] / area, m["m01"] / area


def _shape_change(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Centroid shift in object sizes plus relative area change; 0 if either is empty."""
    if a[0] <= 0 or b[0] <= 0:
        return 0.0
    size = np.sqrt(max(a[0], b[0]))
    shift = float(np.hypot(b[1] - a[1], b[2] - a[2])) / size
    return shift + abs(b[0] - a[0]) / max(a[0], b[0])
