"""What the tracked object does over time: the measurements the weight-free separator
matches against the sound.

Why several curves rather than one "motion energy": objects show their sound in
different ways. A speaker's jaw opens (the mask grows taller), a drum jolts at each
strike (the object moves), a string vibrates (the pixels inside it flicker), a pulsing
light or a struck bar changes brightness or size. Which of these follows a given sound
is not known in advance, so the meter measures all of them per frame and the separator
(``model.classical``) finds the ones that rise and fall with some part of the audio.

Camera motion would show up in every curve, so each frame is first registered to the
previous one: the global shift is the median motion of corners tracked outside the
object (OpenCV's Lucas-Kanade), trusted only when most corners agree and they are spread
over the frame (on a plain backdrop the only corners may sit on another moving object),
and the previous frame is moved by that shift before differencing. The object's own displacement is then measured relative
to the camera.

Per frame t (frame 0 takes frame 1's values), with g the grayscale frame in [0, 1] and R
the union of the object's masks at t and t-1 dilated by ~2 % of the short side:

==============  ===============================================================
``motion``      mean |g_t - shift(g_{t-1})| over R (the object's own flicker and
                movement, camera removed)
``shift``       the centroid's displacement minus the camera's, in object sizes
``area``        mask area / the clip's median area (size: scale pulses, approach)
``height``      vertical spread (sqrt of the second central moment) / its median
                (a jaw opening, a bow stroke)
``width``       horizontal spread / its median
``brightness``  mean g inside the mask (a lamp, a struck bar lighting up)
==============  ===============================================================

``background`` is mean |g_t - shift(g_{t-1})| outside R: what else moves in the picture,
other sounding objects included. A frame where the object is absent gets the previous
frame's shape values and zero motion.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import cv2
import numpy as np

from vision.errors import MaskError

FEATURES = ("motion", "shift", "area", "height", "width", "brightness")
"""Column names of ``Evidence.object``, in order."""
MIN_CAMERA_POINTS = 8
CAMERA_POINTS = 80
"""Corners tracked per frame to measure the camera's motion."""
"""Background corners needed to measure the camera's motion; fewer: assume it is still."""


@dataclass
class Evidence:
    """Per-frame measurements: ``object`` float32 [F, len(FEATURES)], ``background`` [F]."""

    object: np.ndarray
    background: np.ndarray

    @property
    def motion(self) -> np.ndarray:
        return self.object[:, FEATURES.index("motion")]


def _dilation_kernel(h: int, w: int) -> np.ndarray:
    r = max(1, round(0.02 * min(h, w)))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


class EvidenceMeter:
    """Measure one frame at a time (bounded memory on long clips): ``add`` each frame with
    its mask (bool [h, w], at the frame's size) in order, then ``result``.

    ``objects`` > 1 measures several objects from the same pass (``add(frame, *masks)``,
    one mask each, then ``result(j)``): the frame's grey level, the camera's shift and the
    frame difference are computed once for all of them, and the camera is measured from
    corners outside every object (each one's own motion is not the camera's). With one
    object this is exactly the single-object measurement.
    """

    def __init__(self, h: int, w: int, objects: int = 1) -> None:
        self.size = (h, w)
        self._kernel = _dilation_kernel(h, w)
        self._objects = [_ObjectRows() for _ in range(objects)]
        self._prev: tuple[np.ndarray, np.ndarray] | None = None  # grey float, grey uint8

    def add(self, frame: np.ndarray, *masks: np.ndarray) -> None:
        if len(masks) != len(self._objects):
            raise MaskError(
                f"visual evidence: {len(masks)} mask(s) for {len(self._objects)} object(s)"
            )
        for mask in masks:
            if frame.shape[:2] != self.size or mask.shape != self.size:
                raise MaskError(
                    f"visual evidence: frame {frame.shape[:2]} and mask {mask.shape} must both "
                    f"be {self.size}"
                )
        cur8 = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
        cur = cur8.astype(np.float32) / np.float32(255.0)
        bools = [m != 0 for m in masks]
        shapes = [_shape(m, cur) for m in bools]
        if self._prev is None:
            for obj, mask, shape in zip(self._objects, bools, shapes, strict=True):
                obj.first(mask, shape)
            self._prev = (cur, cur8)
            return
        prev, prev8 = self._prev
        regions = [
            cv2.dilate((m | o.prev_mask).view(np.uint8), self._kernel)
            for m, o in zip(bools, self._objects, strict=True)
        ]
        every = regions[0] if len(regions) == 1 else np.bitwise_or.reduce(regions)
        dx, dy = self._camera_shift(prev8, cur8, every)
        moved = cv2.warpAffine(
            prev,
            np.float32([[1, 0, dx], [0, 1, dy]]),
            (self.size[1], self.size[0]),
            borderMode=cv2.BORDER_REPLICATE,
        )
        diff = cv2.absdiff(cur, moved)
        total = float(cv2.sumElems(diff)[0])
        for obj, mask, shape, region8 in zip(self._objects, bools, shapes, regions, strict=True):
            inside = cv2.countNonZero(region8)
            in_sum = float(cv2.mean(diff, mask=region8)[0]) * inside if inside else 0.0
            obj.step(mask, shape, inside, in_sum, total, region8.size, dx, dy)
        self._prev = (cur, cur8)

    def _camera_shift(
        self, prev: np.ndarray, cur: np.ndarray, region: np.ndarray
    ) -> tuple[float, float]:
        """The picture's global shift from prev to cur (uint8 grey): the median motion of
        corner points tracked (pyramidal Lucas-Kanade) outside the objects' ``region``;
        0 without enough of them."""
        outside = (region == 0).view(np.uint8)
        pts = cv2.goodFeaturesToTrack(prev, CAMERA_POINTS, 0.01, 4, mask=outside)
        if pts is None or len(pts) < MIN_CAMERA_POINTS:
            return 0.0, 0.0
        nxt, ok, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts, None, winSize=(11, 11), maxLevel=2)
        ok = ok.ravel() == 1
        if ok.sum() < MIN_CAMERA_POINTS:
            return 0.0, 0.0
        d = (nxt - pts).reshape(-1, 2)[ok]
        where = pts.reshape(-1, 2)[ok]
        dx, dy = np.median(d, axis=0)
        agree = np.hypot(d[:, 0] - dx, d[:, 1] - dy) <= 1.0
        # Corners on one moving object (a plain backdrop has no others) are not the camera:
        # the agreeing points must be spread over at least three quarters of the frame.
        h, w = self.size
        quarter = (where[agree, 0] >= w / 2).astype(int) + 2 * (where[agree, 1] >= h / 2)
        counts = np.bincount(quarter, minlength=4)
        if agree.mean() < 0.6 or (counts >= 2).sum() < 3:
            return 0.0, 0.0
        return float(dx), float(dy)

    def result(self, j: int = 0) -> Evidence:
        """Object j's measurements so far; size-like columns divided by their clip median."""
        o = self._objects[j]
        obj = np.array(o.rows, dtype=np.float64).reshape(-1, len(FEATURES))  # a copy
        bg = np.array(o.bg, dtype=np.float64)
        if len(obj) >= 2:
            obj[0, :2], bg[0] = obj[1, :2], bg[1]
        for name in ("area", "height", "width"):
            col = obj[:, FEATURES.index(name)]
            med = np.median(col[col > 0]) if (col > 0).any() else 1.0
            col /= med
        return Evidence(object=obj.astype(np.float32), background=bg.astype(np.float32))


class _ObjectRows:
    """One object's rows so far (flat, len(FEATURES) per frame: 48 B a frame on long
    clips), and its mask and shape on the previous frame."""

    def __init__(self) -> None:
        self.rows = array("d")
        self.bg = array("d")
        self.prev_mask = np.zeros(0, bool)
        self.prev_shape: list[float] = []

    def first(self, mask: np.ndarray, shape: list[float]) -> None:
        self.rows.extend([0.0, 0.0, *shape_features(shape)])
        self.bg.append(0.0)
        self.prev_mask, self.prev_shape = mask, shape

    def step(
        self,
        mask: np.ndarray,
        shape: list[float],
        inside: int,
        in_sum: float,
        total: float,
        pixels: int,
        dx: float,
        dy: float,
    ) -> None:
        """The frame's row from its difference image's sums: ``in_sum`` over the object's
        ``inside`` region pixels, ``total`` over all ``pixels``; (dx, dy) the camera."""
        outside = pixels - inside
        self.bg.append((total - in_sum) / outside if outside else 0.0)
        prev_mask, prev_shape = self.prev_mask, self.prev_shape
        self.prev_mask = mask
        if shape[0] <= 0:  # object absent: it keeps its last shape and does not move
            self.rows.extend([0.0, 0.0, *shape_features(prev_shape)])
            return
        self.prev_shape = shape
        motion = in_sum / inside if inside else 0.0
        shift = 0.0
        if prev_mask.any():  # not when it reappears: that jump is not motion
            size = np.sqrt(max(shape[0], prev_shape[0]))
            shift = float(np.hypot(shape[1] - prev_shape[1] - dx, shape[2] - prev_shape[2] - dy))
            shift /= size
        self.rows.extend([motion, shift, *shape_features(shape)])


def _shape(mask: np.ndarray, gray: np.ndarray) -> list[float]:
    """[area, cx, cy, sqrt(mu20), sqrt(mu02), mean gray inside]; zeros when empty."""
    m = cv2.moments(mask.view(np.uint8), binaryImage=True)
    area = m["m00"]
    if area <= 0:
        return [0.0] * 6
    cx, cy = m["m10"] / area, m["m01"] / area
    return [
        area,
        cx,
        cy,
        float(np.sqrt(max(m["mu20"], 0.0) / area)),
        float(np.sqrt(max(m["mu02"], 0.0) / area)),
        float(gray[mask].mean()),
    ]


def shape_features(shape: list[float]) -> list[float]:
    """area, height, width, brightness from ``_shape``'s row (normalised in ``result``)."""
    return [shape[0], shape[4], shape[3], shape[5]]


def visual_evidence(frames: np.ndarray, masks: np.ndarray) -> Evidence:
    """``EvidenceMeter`` over a whole clip: frames uint8 [F, h, w, 3], masks [F, h, w]."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise MaskError(f"visual evidence: frames must be uint8 [F, H, W, 3], got {frames.shape}")
    m = np.asarray(masks)
    if m.shape != frames.shape[:3]:
        raise MaskError(f"visual evidence: masks {m.shape} must match frames {frames.shape[:3]}")
    meter = EvidenceMeter(*frames.shape[1:3])
    for f, mk in zip(frames, m, strict=True):
        meter.add(f, mk)
    return meter.result()
