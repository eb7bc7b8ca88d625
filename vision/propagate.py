"""The flow tracker: keyframe masks carried through the clip, weight-free; and copy.

The tracker needs no model download, so a job runs on any machine, and it is fast enough
(tens of frames per second at 854x480 on two CPU cores) to re-run after every correction.
``benchmarks/tracking.py`` measures it (DAVIS J&F, fps) on clips with exact ground truth.

Each keyframe's mask is carried frame by frame by a ``vision.flow.chain.Chain``: dense
optical flow both ways, the object's motion fitted to the reliable flow inside it,
composed with the map back to the keyframe (so neither blur nor rounding accumulates),
occluders cut out, drift controlled by re-aligning to the keyframe's own appearance, and
the object found again after it left the frame (``vision.flow.search``). The steps are
spelt out in ``vision/flow/chain.py``; every tuning constant is in
``vision/flow/params.py``.

This module decides which chain covers which frame: frames before the first keyframe are
tracked backward from it, frames after the last forward; frames between two keyframes
blend both propagated soft masks by temporal distance. Masks come back at the frames'
own resolution (soft masks upscaled, then thresholded, so edges are smooth); keyframes
keep the user's mask exactly.

``propagate`` and ``copy_first`` take the keyframes as a dict; ``FlowTracker`` and
``CopyTracker`` are the same trackers behind the ``vision.tracker.Tracker`` contract.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping

import cv2
import numpy as np

from vision.flow.chain import Chain
from vision.flow.params import KERNEL3, REFINE, WORK_SIDE
from vision.masks import check_clip, check_keyframe_index, check_keyframe_mask
from vision.sink import MaskSink, ProgressCallback, ProgressTicker, track_warnings
from vision.tracker import Clip, KeyframeTracker, Tracking

__all__ = ["CopyTracker", "FlowTracker", "MaskSink", "ProgressCallback", "copy_first", "propagate"]


def _validate(frames: np.ndarray, keyframes: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Check shapes and indices; return keyframe masks as bool [h, w], sorted by index."""
    n, h, w = check_clip(frames, keyframes)
    out: dict[int, np.ndarray] = {}
    for key in sorted(keyframes):
        idx = check_keyframe_index(key, n)
        out[idx] = check_keyframe_mask(idx, keyframes[key], (w, h))
    return out


# ----------------------------------------------------------------------------- resolution


class _Frames:
    """The clip at the working resolution, grey, converted on demand (a few kept)."""

    def __init__(self, frames: np.ndarray, refine: bool = False) -> None:
        self.frames = frames
        self.refine = refine  # whether chains get colour (``vision.flow.refine``)
        n, h, w, _ = frames.shape
        s = min(1.0, WORK_SIDE / max(h, w))
        self.size = (max(1, round(w * s)), max(1, round(h * s)))  # (w, h) at work resolution
        self.full = (w, h)
        self.scaled = self.size != (w, h)
        self._cache: dict[int, np.ndarray] = {}
        self._rgb: dict[int, np.ndarray] = {}

    def rgb(self, t: int) -> np.ndarray:
        """Frame ``t`` in colour at the working resolution (for the refinement)."""
        c = self._rgb.get(t)
        if c is None:
            c = np.ascontiguousarray(self.frames[t])
            if self.scaled:
                c = cv2.resize(c, self.size, interpolation=cv2.INTER_AREA)
            if len(self._rgb) >= 4:
                self._rgb.pop(next(iter(self._rgb)))
            self._rgb[t] = c
        return c

    def gray(self, t: int) -> np.ndarray:
        g = self._cache.get(t)
        if g is None:
            g = cv2.cvtColor(self.rgb(t), cv2.COLOR_RGB2GRAY)
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[t] = g
        return g

    def to_work(self, mask: np.ndarray) -> np.ndarray:
        """A full-size bool mask as a soft float32 mask at the working resolution."""
        m = mask.astype(np.float32)
        if not self.scaled:
            return m
        soft = cv2.resize(m, self.size, interpolation=cv2.INTER_AREA)
        if not (soft > 0.5).any():  # thinner than a work pixel: keep it visible
            soft = np.maximum(soft, 0.51 * (soft > 0))
        return soft

    def to_full(self, soft: np.ndarray) -> np.ndarray:
        """A soft work-resolution mask as a soft full-size one (bilinear: smooth edges)."""
        if not self.scaled:
            return soft
        return cv2.resize(soft, self.full, interpolation=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------- output


def _clean(soft: np.ndarray, ref_area: float) -> np.ndarray:
    """Threshold at 0.5, close pinholes, drop specks; uint8 0/1 [h, w]."""
    binary = (soft > 0.5).astype(np.uint8)
    rows = np.nonzero(binary.any(axis=1))[0]
    if rows.size == 0:
        return binary
    cols = np.nonzero(binary.any(axis=0))[0]
    h, w = binary.shape
    y0, y1 = max(0, int(rows[0]) - 2), min(h, int(rows[-1]) + 3)
    x0, x1 = max(0, int(cols[0]) - 2), min(w, int(cols[-1]) + 3)
    box = cv2.morphologyEx(binary[y0:y1, x0:x1], cv2.MORPH_CLOSE, KERNEL3)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8)
    if count > 2:
        areas = stats[1:, cv2.CC_STAT_AREA]
        min_area = min(max(3, int(0.01 * ref_area)), int(areas.max()))
        keep = np.concatenate([[0], areas >= min_area]).astype(np.uint8)
        box = keep[labels]
    binary[y0:y1, x0:x1] = box
    return binary


class _SoftSpill:
    """Soft masks parked between a forward and a backward pass, on an anonymous temporary
    file: two keyframes an hour apart must not hold an hour of masks in memory."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="sonomask-soft-")
        self._index: dict[int, tuple[int, int, int, int, int]] = {}
        self._end = 0

    def put(self, t: int, soft: np.ndarray) -> None:
        if not (soft > 0.5).any():
            return
        rows = np.nonzero(soft.any(axis=1))[0]
        cols = np.nonzero(soft.any(axis=0))[0]
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        crop = np.clip(soft[y0:y1, x0:x1] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        os.pwrite(self._file.fileno(), crop.tobytes(), self._end)
        self._index[t] = (y0, y1, x0, x1, self._end)
        self._end += crop.size

    def pop(self, t: int, shape: tuple[int, int]) -> np.ndarray | None:
        """The soft mask parked for frame ``t`` (float32 ``shape``), or None if it was empty."""
        entry = self._index.pop(t, None)
        if entry is None:
            return None
        y0, y1, x0, x1, at = entry
        data = os.pread(self._file.fileno(), (y1 - y0) * (x1 - x0), at)
        soft = np.zeros(shape, dtype=np.float32)
        crop = np.frombuffer(data, dtype=np.uint8).reshape(y1 - y0, x1 - x0)
        soft[y0:y1, x0:x1] = crop.astype(np.float32) / 255.0
        return soft

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- public API


def propagate(
    frames: np.ndarray,
    keyframes: Mapping[int, np.ndarray],
    progress: ProgressCallback | None = None,
    out: object | None = None,
    refine: bool = REFINE,
) -> tuple[np.ndarray, list[str]]:
    """Track keyframe mask(s) through every frame with dense optical flow.

    frames: uint8 [F, h, w, 3] RGB (any size; the tracker works at <= 480 px internally),
    an array or anything with ``shape``/``dtype`` that returns a frame for ``frames[t]``.
    keyframes: frame index -> mask [h, w] (non-zero = object). out: where the masks go
    (default: a new array), anything taking ``out[t] = mask``; a long clip passes a file
    written row by row, so memory does not grow with the clip's length. Returns (the
    masks, uint8 [F, h, w] 1 = object, i.e. ``out``; warnings).

    Frames before the first keyframe are tracked backward from it, frames after the last
    forward from it; frames between two keyframes blend both soft masks by distance (or
    take the one that still sees the object if the other lost it). Keyframes keep the
    user's mask exactly. Losing the object is not an error: it is reported in warnings
    ("object lost on frames 40–55") and the caller decides.

    refine: grow and trim each chain's mask by the object's colour and motion
    (``vision.flow.refine``); off, the keyframe's mask is only carried.
    """
    keys = _validate(frames, keyframes)
    n = frames.shape[0]
    h, w = frames.shape[1:3]
    work = _Frames(frames, refine)
    sink = MaskSink(n, h, w, out)
    ref_area = np.zeros(n, dtype=np.float64)  # area of the keyframe each frame leans on
    order = list(keys)
    for k in order:
        sink.put(k, keys[k])
        ref_area[k] = keys[k].sum()
    if len(order) == n:  # every frame is a keyframe (or the clip is one frame)
        return sink.masks, []

    total = order[0] + (n - 1 - order[-1])
    total += sum(2 * (b - a - 1) for a, b in zip(order, order[1:], strict=False))
    ticker = ProgressTicker(total, progress)
    first, last = order[0], order[-1]
    msg = f"tracking backward from frame {first}"
    for t, soft in _walk(work, keys[first], first, -1, -1, ticker, msg):
        sink.put(t, _clean(work.to_full(soft), float(keys[first].sum())))
        ref_area[t] = keys[first].sum()
    for a, b in zip(order, order[1:], strict=False):
        if b - a >= 2:
            _between(work, keys, a, b, ticker, sink, ref_area)
    msg = f"tracking forward from frame {last}"
    for t, soft in _walk(work, keys[last], last, n, 1, ticker, msg):
        sink.put(t, _clean(work.to_full(soft), float(keys[last].sum())))
        ref_area[t] = keys[last].sum()
    ticker.finish()
    return sink.masks, track_warnings(sink, keys, ref_area)


def _walk(
    work: _Frames,
    key_mask: np.ndarray,
    start: int,
    stop: int,
    step: int,
    ticker: ProgressTicker,
    msg: str,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (t, soft work-resolution mask) walking from keyframe ``start`` (its mask
    ``key_mask``) by ``step`` up to ``stop`` (not included)."""
    colour = work.rgb(start) if work.refine else None
    chain = Chain(work.to_work(key_mask), work.gray(start), colour)
    for t in range(start + step, stop, step):
        soft = chain.step(work.gray(t - step), work.gray(t), work.rgb(t) if work.refine else None)
        ticker.tick(msg)
        yield t, soft


def _between(
    work: _Frames,
    keys: dict[int, np.ndarray],
    a: int,
    b: int,
    ticker: ProgressTicker,
    sink: MaskSink,
    ref_area: np.ndarray,
) -> None:
    """The frames strictly between keyframes ``a`` and ``b``: tracked forward from a and
    backward from b, the two soft masks blended by temporal distance (or the one that
    still sees the object when the other lost it)."""
    msg = f"tracking frames {a}\u2013{b}"
    fwd = _SoftSpill()
    try:
        for t, soft in _walk(work, keys[a], a, b, 1, ticker, msg):
            fwd.put(t, soft)
        area_a, area_b = keys[a].sum(), keys[b].sum()
        for t, soft in _walk(work, keys[b], b, a, -1, ticker, msg):
            wa = (b - t) / (b - a)  # weight of keyframe a: 1 next to a, 0 next to b
            soft_a = fwd.pop(t, soft.shape)
            if soft_a is None:  # the forward chain lost it: the backward one alone
                blended = soft
            else:
                blended = wa * soft_a + (1.0 - wa) * soft if (soft > 0.5).any() else soft_a
            sink.put(t, _clean(work.to_full(blended), float(max(area_a, area_b))))
            ref_area[t] = wa * area_a + (1.0 - wa) * area_b
    finally:
        fwd.close()


def copy_first(
    frames: np.ndarray, keyframes: Mapping[int, np.ndarray], out: object | None = None
) -> np.ndarray:
    """Baseline "tracker": every frame gets its nearest keyframe's mask unchanged.

    Returns uint8 [F, h, w] (1 = object; ``out`` when given, as in ``propagate``),
    validated like ``propagate``. It is what no tracking at all scores in tests and
    benchmarks, and a safe choice for shots where the object does not move (ties go to the
    earlier keyframe).
    """
    keys = _validate(frames, keyframes)
    n, h, w, _ = frames.shape
    order = np.array(list(keys))
    sink = MaskSink(n, h, w, out)
    for t in range(n):
        nearest = int(order[np.argmin(np.abs(order - t))])
        sink.put(t, keys[nearest])
    return sink.masks


class FlowTracker(KeyframeTracker):
    """``propagate`` behind the ``vision.tracker.Tracker`` contract: weight-free flow."""

    name = "flow"

    def _track(self, clip: Clip, progress: ProgressCallback | None) -> Tracking:
        masks, warnings = propagate(clip.frames, clip.masks(), progress, clip.out)
        return Tracking(masks, self.name, warnings, frozenset(clip.keyframes))


class CopyTracker(KeyframeTracker):
    """``copy_first`` behind the ``vision.tracker.Tracker`` contract: no tracking at all.

    It reports no progress (it takes no time) and no warnings."""

    name = "copy"

    def _track(self, clip: Clip, progress: ProgressCallback | None) -> Tracking:
        masks = copy_first(clip.frames, clip.masks(), clip.out)
        return Tracking(masks, self.name, [], frozenset(clip.keyframes))
