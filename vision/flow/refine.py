"""Appearance-aware refinement of a chain's mask: grow into what looks like the object and
moves with it, give up what does not (issue 14).

The flow chain carries the keyframe's mask: it cannot know about parts of the object the
keyframe did not show (a person standing up from behind a desk), and it keeps whatever
background an editor's loose outline took in. After each step, the pixels in a band
around the carried mask's edge are decided again, each by the sum of three log-odds:

- **where the chain put the edge** (the prior): the signed distance to the carried edge,
  so a pixel far inside stays in and one far outside stays out unless the image says
  otherwise strongly, and the mask changes by a few pixels a frame at most;
- **colour**: a discriminative colour model learnt on the keyframe, the object's colour
  histogram (its mask, eroded, so a loose outline's margin does not count) against the
  background's right around it (a ring outside the mask). Colours the object and its
  surroundings share say nothing, so a similar-coloured background touching the object
  gives no reason to spill into it. Both histograms follow the clip slowly (the sure
  inside and the ring around the refined mask of each frame), so a colour revealed later
  and the background's new neighbours are learnt, the keyframe's model never forgotten;
- **motion**: the new frame's backward flow (from the chain's step) against the object's
  motion and the background's (the median flow of the window outside the mask). A
  pixel that follows the object is evidence for it, one that follows the background
  against it, in proportion to how far the two motions differ (nothing when the object
  and its background move alike).

A pixel of the band is the object where the sum is positive; the result is cleaned (specks
and pinholes dropped, parts not connected to the object's sure inside dropped). Why this
and not GrabCut or superpixels: it costs about a millisecond a frame on the band at the
working resolution (GrabCut re-fits colour mixtures every frame, several times that, and
has no way to take the motion in), its colour evidence comes from the keyframe the user
drew rather than from the chain's own, possibly wrong, labels, and motion is what tells
a newly visible limb from a look-alike wall.

Growth accumulates through the chain: when the refined mask differs from the carried one
by more than ``RESEED`` of its area, the chain starts again from the refined mask on the
current frame (``Chain.reseed``). The trade-off: a re-seeded chain's drift control aligns
to that frame's appearance instead of the keyframe's, so each re-seed can add an error of
its own; re-seeding only on real change (not every frame) and never while something
occludes the object keeps that rare. The colour model is not re-learnt on a re-seed: it
stays the keyframe's (slowly adapted), the thing the user vouched for. A frame's mask
still depends only on the clip and on the keyframe its chain started from.

``STATS`` counts the time spent here (``benchmarks/tracking.py`` reports its share).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np

from vision.flow.geometry import grid, grow
from vision.flow.params import (
    KERNEL3,
    REF_ADAPT,
    REF_BAND,
    REF_BAND_MAX,
    REF_BAND_MIN,
    REF_BINS,
    REF_COLOUR_CLIP,
    REF_CORE,
    REF_FG_ERODE,
    REF_HOLD,
    REF_MIN_AREA,
    REF_MOTION,
    REF_MOTION_SEP,
    REF_NOISE,
    REF_PRIOR,
    REF_RING,
)

_SHIFT = 8 - int(np.log2(REF_BINS))  # bits dropped per channel to quantise colours


@dataclass
class RefineStats:
    """Time spent refining (seconds) and frames refined, since the last ``reset``."""

    seconds: float = 0.0
    frames: int = 0

    def reset(self) -> None:
        self.seconds, self.frames = 0.0, 0


STATS = RefineStats()
"""Process-wide counter: what the refinement cost (read by the benchmark)."""


def _codes(rgb: np.ndarray) -> np.ndarray:
    """Each pixel's quantised colour as one histogram bin index (int32 [h, w])."""
    q = (rgb >> _SHIFT).astype(np.int32)
    return (q[..., 0] * REF_BINS + q[..., 1]) * REF_BINS + q[..., 2]


def _histogram(codes: np.ndarray, sel: np.ndarray) -> np.ndarray | None:
    """Normalised, slightly smoothed colour histogram (float64 [bins^3]) of the selected
    pixels; None if there are none. Smoothed over neighbouring bins so compression noise
    and shading do not leave holes."""
    picked = codes[sel]
    if picked.size == 0:
        return None
    h = np.bincount(picked, minlength=REF_BINS**3).astype(np.float64)
    cube = h.reshape(REF_BINS, REF_BINS, REF_BINS)
    for axis in range(3):
        pad = np.pad(cube, [(1, 1) if a == axis else (0, 0) for a in range(3)], mode="edge")
        lo = np.take(pad, range(0, REF_BINS), axis=axis)
        mid = np.take(pad, range(1, REF_BINS + 1), axis=axis)
        hi = np.take(pad, range(2, REF_BINS + 2), axis=axis)
        cube = 0.25 * lo + 0.5 * mid + 0.25 * hi
    flat = cube.ravel()
    return flat / flat.sum()


def _size_px(area: float, k: float, lo: int, hi: int) -> int:
    return int(np.clip(round(k * np.sqrt(max(area, 1.0))), lo, hi))


class Refiner:
    """One chain's appearance model and its per-frame refinement (module doc)."""

    def __init__(self, key_soft: np.ndarray, key_rgb: np.ndarray) -> None:
        t0 = time.perf_counter()
        obj = (key_soft > 0.5).astype(np.uint8)
        area = float(np.count_nonzero(obj))
        self.ok = area >= REF_MIN_AREA
        self.fg = self.bg = None
        self.lut = np.zeros(REF_BINS**3, np.float32)
        if self.ok:
            y0, y1, x0, x1 = _crop(obj, _size_px(area, 2 * REF_RING, 4, 80))
            codes = _codes(key_rgb[y0:y1, x0:x1])
            o = obj[y0:y1, x0:x1]
            inner = cv2.erode(o, _disc(_size_px(area, REF_FG_ERODE, 1, 20)))
            if np.count_nonzero(inner) < 0.2 * area:  # a thin object: its own pixels
                inner = o
            ring = _ring(o, area)
            self.fg, self.bg = _histogram(codes, inner > 0), _histogram(codes, ring)
            self.ok = self.fg is not None and self.bg is not None
            if self.ok:
                self._update_lut()
        STATS.seconds += time.perf_counter() - t0

    def _update_lut(self) -> None:
        eps = 0.25 / REF_BINS**3
        odds = np.log((self.fg + eps) / (self.bg + eps))
        self.lut = np.clip(odds, -REF_COLOUR_CLIP, REF_COLOUR_CLIP).astype(np.float32)

    def refine(
        self,
        soft: np.ndarray,
        rgb: np.ndarray,
        prev: np.ndarray,
        gray: np.ndarray,
        bwd: np.ndarray,
        d: np.ndarray,
        zone: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """The window's visible mask ``soft`` re-decided near its edge: the refined soft
        mask (same shape), or None when nothing changed or there is too little to judge.

        rgb: the new frame's window (uint8 RGB); prev, gray: the known and the new frame's
        window (grey); bwd: the DIS flow new -> known on the window; d: the object's motion
        on the new grid (a pixel x of the object came from x - d); zone: where an occluder
        is (and around it), left as it is.
        """
        t0 = time.perf_counter()
        try:
            return self._refine(soft, rgb, prev, gray, bwd, d, zone)
        finally:
            STATS.seconds += time.perf_counter() - t0
            STATS.frames += 1

    def _refine(
        self,
        soft: np.ndarray,
        rgb: np.ndarray,
        prev: np.ndarray,
        gray: np.ndarray,
        bwd: np.ndarray,
        d: np.ndarray,
        zone: np.ndarray | None = None,
    ) -> np.ndarray | None:
        if not self.ok:
            return None
        obj = (soft > 0.5).astype(np.uint8)
        area = float(np.count_nonzero(obj))
        if area < REF_MIN_AREA:
            return None
        band = _size_px(area, REF_BAND, REF_BAND_MIN, REF_BAND_MAX)
        y0, y1, x0, x1 = _crop(obj, 2 * band + 4)  # room for the background's motion
        o = obj[y0:y1, x0:x1]
        inside = _depth(o)
        outside = _depth(1 - o)
        if np.count_nonzero(inside > band) < REF_CORE * area:  # all edge (a thin line)
            return None
        sel = (inside <= band) & (outside <= band)
        # Where the chain put the edge: signed distance, + inside.
        logit = np.where(o > 0, REF_HOLD + REF_PRIOR * inside, -REF_HOLD - REF_PRIOR * outside)
        codes = _codes(rgb[y0:y1, x0:x1])
        logit += self.lut[codes]
        logit += REF_MOTION * self._motion(
            outside, band, prev[y0:y1, x0:x1], gray[y0:y1, x0:x1], bwd[y0:y1, x0:x1],
            d[y0:y1, x0:x1], *grid(y1 - y0, x1 - x0),
        )  # fmt: skip
        if zone is not None:  # next to an occluder the chain knows better
            sel &= zone[y0:y1, x0:x1] == 0
        new = np.where(sel, logit > 0, o > 0).astype(np.uint8)
        new = cv2.morphologyEx(new, cv2.MORPH_CLOSE, KERNEL3)
        new = cv2.morphologyEx(new, cv2.MORPH_OPEN, KERNEL3)
        new = np.where(sel, _connected_to(new, inside > band), o).astype(np.uint8)
        self._adapt(codes, new, area)
        changed = new != o
        if not changed.any():
            return None
        out = soft.copy()
        crop = out[y0:y1, x0:x1]
        crop[changed] = new[changed].astype(np.float32)
        return out

    def _motion(
        self,
        outside: np.ndarray,
        band: int,
        a: np.ndarray,
        b: np.ndarray,
        bwd: np.ndarray,
        d: np.ndarray,
        gx: np.ndarray,
        gy: np.ndarray,
    ) -> np.ndarray:
        """Per pixel in [-1, 1]: the new frame's pixel is explained by the known frame
        moved with the object (+) or with the background (-), in proportion to how far
        the two motions differ. Photometric (3x3 patches), so it is sharp at the edge,
        where flow mixes both motions, and says nothing on flat colour."""
        far = outside > band + 2
        if np.count_nonzero(far) < 20:
            return np.zeros(a.shape, np.float32)
        bgx = float(np.median(bwd[..., 0][far]))  # the background's motion, new -> known
        bgy = float(np.median(bwd[..., 1][far]))
        sep = np.hypot(d[..., 0] + bgx, d[..., 1] + bgy)  # object vs background motion
        reach = np.clip(sep - REF_MOTION_SEP, 0.0, 1.0)
        if not reach.any():
            return np.zeros(a.shape, np.float32)
        af, bf = a.astype(np.float32), b.astype(np.float32)
        border = {"borderMode": cv2.BORDER_REPLICATE}
        by_obj = cv2.remap(af, gx - d[..., 0], gy - d[..., 1], cv2.INTER_LINEAR, **border)
        by_bg = cv2.remap(af, gx + bgx, gy + bgy, cv2.INTER_LINEAR, **border)
        e_obj = cv2.boxFilter((bf - by_obj) ** 2, -1, (3, 3))
        e_bg = cv2.boxFilter((bf - by_bg) ** 2, -1, (3, 3))
        return (reach * (e_bg - e_obj) / (e_bg + e_obj + REF_NOISE)).astype(np.float32)

    def _adapt(self, codes: np.ndarray, new: np.ndarray, area: float) -> None:
        """Follow the clip slowly: the refined mask's sure inside and the ring around it."""
        if REF_ADAPT <= 0:
            return
        inner = cv2.erode(new, _disc(_size_px(area, REF_FG_ERODE, 1, 20))) > 0
        ring = _ring(new, area)
        fg, bg = _histogram(codes, inner), _histogram(codes, ring)
        if fg is not None:
            self.fg = (1 - REF_ADAPT) * self.fg + REF_ADAPT * fg
        if bg is not None:
            self.bg = (1 - REF_ADAPT) * self.bg + REF_ADAPT * bg
        self._update_lut()


def _disc(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _ring(obj: np.ndarray, area: float) -> np.ndarray:
    """The background right around a mask: between a few pixels and ``REF_RING`` x its
    size outside it (bool)."""
    near = grow(obj, _size_px(area, REF_FG_ERODE, 1, 20))
    far = grow(obj, _size_px(area, REF_RING, 3, 40))
    return (far > 0) & (near == 0)


def _crop(obj: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    """The mask's box grown by ``pad``, inside the array: (y0, y1, x0, x1)."""
    rows = np.nonzero(obj.any(axis=1))[0]
    cols = np.nonzero(obj.any(axis=0))[0]
    h, w = obj.shape
    return (
        max(0, int(rows[0]) - pad),
        min(h, int(rows[-1]) + 1 + pad),
        max(0, int(cols[0]) - pad),
        min(w, int(cols[-1]) + 1 + pad),
    )


def _depth(obj: np.ndarray) -> np.ndarray:
    """Distance of each pixel of a uint8 mask to its nearest non-mask pixel (0 outside)."""
    return cv2.distanceTransform(obj, cv2.DIST_L2, 3)


def _connected_to(mask: np.ndarray, core: np.ndarray) -> np.ndarray:
    """The parts of a uint8 mask that touch ``core`` (all of it if nothing does)."""
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    if count <= 2:
        return mask
    hit = np.unique(labels[core & (mask > 0)])
    hit = hit[hit > 0]
    if hit.size == 0:
        return mask
    keep = np.zeros(count, np.uint8)
    keep[hit] = 1
    return keep[labels]
