"""Masks across frames: carry the user's keyframe mask(s) through the clip, weight-free.

The tracker needs no model download, so a job runs on any machine, and it is fast enough
(tens of frames per second at 854x480 on two CPU cores) to re-run after every correction.
``benchmarks/tracking.py`` measures it (DAVIS J&F, fps) on clips with exact ground truth.

Each step, from a frame whose mask is known to the next one, works in a window around
the object at a working resolution (longest side <= 480 px) and:

1. computes dense optical flow both ways (OpenCV DIS); where the forward and backward
   flows disagree (forward-backward check) the flow is not used;
2. fits the object's motion to the reliable flow deep inside its visible part (a robust
   affine fit: DIS mixes object and background motion near the edge), plus the smoothed
   part of the textured flow the affine model misses (a bending neck, a limb). When that
   explains the new frame poorly, the object's translation found by template matching
   (edges included) takes over: flat-coloured objects and jumps DIS cannot follow;
3. composes the step with the map back to the keyframe, so the keyframe mask is sampled
   once per frame and neither interpolation blur nor rounding accumulates. The map
   carries the whole object (amodal), also the parts hidden right now;
4. handles occlusion: inside the object, pixels whose reliable backward flow does not
   follow the object's motion belong to something passing in front (or to background the
   mask overreached into) and are cut from that frame's visible mask, and their
   surroundings are kept out of the motion fit; when the occluder moves on, the hidden
   parts come back from the amodal map;
5. controls drift: the map's affine part is re-aligned each frame to the keyframe's own
   appearance (ECC image alignment, insensitive to brightness and contrast changes); its
   non-rigid part relaxes toward it in frames where the image says the keyframe looks
   more like itself without it; an object with too little texture for ECC re-anchors to
   its keyframe found again by template matching;
6. finds the object again after it left the frame (or was lost): the keyframe's
   appearance is searched for in the whole frame, at a few sizes and as halves against
   the frame's edges (an object coming back shows a part first), and the chain restarts
   where ECC confirms it.

Frames before the first keyframe are tracked backward from it, frames after the last
forward; frames between two keyframes blend both propagated soft masks by temporal
distance. Masks come back at the frames' own resolution (soft masks upscaled, then
thresholded, so edges are smooth); keyframes keep the user's mask exactly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping

import cv2
import numpy as np

from vision.errors import MaskError
from vision.masks import check_clip

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], short description)."""

# A propagated mask whose area grows past this multiple of its keyframe's area has
# probably leaked into the background; shrinking below 1/this is reported as well.
_AREA_DRIFT_FACTOR = 4.0

# Working resolution and window.
_WORK_SIDE = 480  # longest side of the working resolution (px)
_MARGIN = 0.3  # the window reaches this share of the object's size beyond it (plus its motion)
_MIN_MARGIN = 24  # px, at least
# Optical flow (OpenCV DIS).
_FINE_PIXELS = 60_000  # windows up to this many pixels get flow at full working resolution
_GD_ITERS = 12  # DIS gradient-descent iterations per patch
_VAR_ITERS = 0  # DIS variational refinement iterations (costly at full resolution, no gain)
_BWD_COARSER = 1  # the backward flow's finest DIS scale is this many octaves coarser
_MIN_FLOW_SIDE = 16  # DIS needs a few 8-px patches per side
# The object's motion.
_EDGE = 5.0  # px band (doubled for coarser flow) inside the edge where DIS mixes both motions
_DEEP = 10.0  # px from the edge beyond which a pixel's flow counts fully
_SIGMA = 4.0  # px, reach of the smoothing of the motion the affine model misses
_TEX = 400.0  # structure-tensor eigenvalue (Sobel units^2) at which flow is half trusted
_ROBUST_PX = 1.0  # flow residual (px) at which a pixel's say in the affine fit halves
_MAX_SCALE_STEP = 1.06  # most a fitted motion may stretch or shrink the object in one frame
_TRUST = 0.3  # share of the recent best flow support below which the last motion is blended in
# Template translation (flat-coloured objects, jumps).
_SWITCH = 0.8  # it replaces the flow's motion when its error is this much lower
_TEMPLATE_PIXELS = 1600  # its coarse search runs on templates downscaled to this size
# Occlusion.
_OCC_PX = 1.5  # backward flow this far (+15 % of the motion) off the object's is something else
_OCC_TEX = 0.1  # texture confidence (see _texture) needed to call a pixel occluded
_OCC_ZONE = 14  # px around an occluder where flow is not used for the object's motion
_OCC_OUT = 3  # px the occluder is grown by when cut from the visible mask
# Drift control.
_ECC_MIN = 0.55  # correlation with the keyframe's appearance below which ECC is not believed
_ECC_SHIFT = 0.2  # ECC's result is refused if it moves the object more than this x its size
_ECC_STRETCH = 1.1  # ... or scales it by more than this in one frame
_TEXTURED = 0.05  # mean texture confidence over the keyframe object below which ECC is not tried
_ECC_GAIN = 0.7  # share of ECC's correction applied per frame (damps noise, keeps up with drift)
_RELAX = 0.3  # share of the non-rigid part given up in a frame where it does not help
_ANCHOR = 1.3  # a flat object re-anchors to its keyframe when that fits at most this much worse
# Finding a lost object again.
_FIND_MIN = 0.6  # normalised template score worth confirming with ECC
_FIND_SCALES = (0.8, 0.9, 1.0, 1.12, 1.25)  # sizes tried, relative to the last known one
_SEARCH_PIXELS = 1200  # the frame is downscaled so the template has about this many pixels
_KERNEL3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
_KERNEL5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))


def _validate(frames: np.ndarray, keyframes: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Check shapes and indices; return keyframe masks as bool [h, w], sorted by index."""
    n, h, w = check_clip(frames, keyframes)
    out: dict[int, np.ndarray] = {}
    for key in sorted(keyframes):
        idx = int(key)
        if idx != key or not 0 <= idx < n:
            raise MaskError(f"keyframe {key} is outside the clip (frames 0..{n - 1})")
        mask = np.asarray(keyframes[key])
        if mask.shape != (h, w):
            raise MaskError(
                f"keyframe {idx} mask is {mask.shape[1] if mask.ndim == 2 else '?'}x"
                f"{mask.shape[0] if mask.ndim >= 1 else '?'} but the frames are {w}x{h}; "
                "resize the mask to the working resolution first"
            )
        mask = mask != 0
        if not mask.any():
            raise MaskError(f"keyframe {idx} mask is empty; paint the object white")
        out[idx] = mask
    return out


# ----------------------------------------------------------------------------- resolution


class _Frames:
    """The clip at the working resolution, grey, converted on demand (a few kept)."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames
        n, h, w, _ = frames.shape
        s = min(1.0, _WORK_SIDE / max(h, w))
        self.size = (max(1, round(w * s)), max(1, round(h * s)))  # (w, h) at work resolution
        self.full = (w, h)
        self.scaled = self.size != (w, h)
        self._cache: dict[int, np.ndarray] = {}

    def gray(self, t: int) -> np.ndarray:
        g = self._cache.get(t)
        if g is None:
            g = cv2.cvtColor(np.ascontiguousarray(self.frames[t]), cv2.COLOR_RGB2GRAY)
            if self.scaled:
                g = cv2.resize(g, self.size, interpolation=cv2.INTER_AREA)
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


# ----------------------------------------------------------------------------- the tracker


class _Chain:
    """Carries one keyframe's mask step by step through neighbouring frames (module doc).

    State: ``dx, dy`` map each current pixel to its keyframe position (as a displacement;
    outside the window, where the object cannot be, it is the affine map, so the map is
    smooth everywhere and sampling it never mixes in a sentinel); ``g`` is the map's
    affine part (keyframe -> current pixels); ``amodal`` the whole object now, hidden
    parts included, ``visible`` the part of it in view; ``occ_zone`` where an occluder was.
    """

    def __init__(self, key_soft: np.ndarray, key_gray: np.ndarray) -> None:
        h, w = key_soft.shape
        self.h, self.w = h, w
        self.key = key_soft.astype(np.float32)
        key_bin = self.key > 0.5
        self.key_area = float(max(1, np.count_nonzero(key_bin)))
        self.dx = np.zeros((h, w), np.float32)
        self.dy = np.zeros((h, w), np.float32)
        self.amodal = self.key.copy()
        self.visible = self.key.copy()
        self.occ_zone = np.zeros((h, w), np.uint8)  # occluders and the band around them
        self.g = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
        self.prev_step: np.ndarray | None = None  # last motion (displacement affine, frame px)
        self.best_support = 0.0
        self.lost = False
        self.ecc_scores: list[float] = []
        # Keyframe appearance: ECC template (object pixels, edge excluded) and search template.
        ys, xs = np.nonzero(key_bin)
        if ys.size == 0:
            ys, xs = np.nonzero(self.key > 0)
        m = 2
        y0, y1 = max(0, int(ys.min()) - m), min(h, int(ys.max()) + 1 + m)
        x0, x1 = max(0, int(xs.min()) - m), min(w, int(xs.max()) + 1 + m)
        self.t_origin = (x0, y0)
        self.key_img = key_gray.astype(np.float32)
        self.templ = self.key_img[y0:y1, x0:x1]
        tmask = key_bin[y0:y1, x0:x1].astype(np.uint8)
        eroded = cv2.erode(tmask, _KERNEL3)
        self.tmask = (eroded if eroded.sum() >= 0.5 * tmask.sum() else tmask) * 255
        # Enough texture inside for ECC to pin scale and rotation down (a smooth gradient
        # or a flat colour lets it slide): the mean flow confidence over the object.
        inner = self.tmask > 0
        self.textured = bool(inner.any()) and float(_texture(self.templ)[inner].mean()) > _TEXTURED
        self._dis_cache: dict[tuple[int, int, int], cv2.DISOpticalFlow] = {}

    # ------------------------------------------------------------------ helpers

    def _flow(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward (a -> b) and backward (b -> a) DIS flow of two grey windows.

        The forward flow moves the object, so it is computed at full working resolution
        (DIS's half-resolution finest scale blurs the object's edge motion into the
        background's and the mask creeps); the backward flow only has to say which pixels
        moved with the object, so a coarser one does.
        """
        fine = 0 if a.size <= _FINE_PIXELS else 1
        fwd = self._dis(fine, _GD_ITERS, _VAR_ITERS).calc(a, b, None)
        bwd = self._dis(fine + _BWD_COARSER, _GD_ITERS, _VAR_ITERS).calc(b, a, None)
        return fwd, bwd

    def _dis(self, finest: int, iters: int, var_iters: int) -> cv2.DISOpticalFlow:
        dis = self._dis_cache.get((finest, iters, var_iters))
        if dis is None:
            dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
            dis.setFinestScale(finest)
            dis.setPatchSize(8)
            dis.setPatchStride(4)
            dis.setGradientDescentIterations(iters)
            dis.setVariationalRefinementIterations(var_iters)
            self._dis_cache[(finest, iters, var_iters)] = dis
        return dis

    def _window(self) -> tuple[int, int, int, int]:
        """Where the object can be in the next frame: its box, a margin, its last motion."""
        ys = np.nonzero((self.amodal > 0.5).any(axis=1))[0]
        xs = np.nonzero((self.amodal > 0.5).any(axis=0))[0]
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        margin = max(_MIN_MARGIN, int(_MARGIN * max(y1 - y0, x1 - x0)))
        vx, vy = self._velocity()
        y0 = min(y0, int(y0 + vy)) - margin
        y1 = max(y1, int(y1 + vy)) + margin
        x0 = min(x0, int(x0 + vx)) - margin
        x1 = max(x1, int(x1 + vx)) + margin
        return max(0, y0), min(self.h, y1), max(0, x0), min(self.w, x1)

    def _velocity(self) -> tuple[float, float]:
        if self.prev_step is None:
            return 0.0, 0.0
        ys, xs = np.nonzero(self.amodal > 0.5)
        c = np.array([xs.mean(), ys.mean(), 1.0]) if xs.size else np.array([0.0, 0.0, 1.0])
        v = self.prev_step @ c
        return float(v[0]), float(v[1])

    def _sample(self, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """The keyframe mask at keyframe positions (map_x, map_y): soft, in [0, 1].

        Bilinear for smooth edges, but never below 0.51 where the nearest keyframe pixel
        is object, so a one-pixel-thin part (a mic stand) survives half-pixel positions.
        """
        border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": 0.0}
        soft = cv2.remap(self.key, map_x, map_y, cv2.INTER_LINEAR, **border)
        nearest = cv2.remap(self.key, map_x, map_y, cv2.INTER_NEAREST, **border)
        return np.maximum(soft, 0.51 * (nearest > 0.5))

    # ------------------------------------------------------------------ one step

    def step(self, prev: np.ndarray, new: np.ndarray) -> np.ndarray:
        """Move to the next frame (grey, working resolution); return its visible soft mask."""
        if self.lost or not (self.amodal > 0.5).any():
            self.lost = True
            self._search(new)
            return self.visible
        y0, y1, x0, x1 = self._window()
        a = np.ascontiguousarray(prev[y0:y1, x0:x1])
        b = np.ascontiguousarray(new[y0:y1, x0:x1])
        hh, ww = a.shape
        gx, gy = _grid(hh, ww)
        vis = (self.visible[y0:y1, x0:x1] > 0.5).astype(np.uint8)
        if min(hh, ww) >= _MIN_FLOW_SIDE:
            fwd, bwd = self._flow(a, b)
        else:
            fwd = bwd = np.zeros((hh, ww, 2), np.float32)

        # 1. The object's motion, from reliable flow deep inside its visible part.
        back = cv2.remap(bwd, gx + fwd[..., 0], gy + fwd[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        depth = _depth(vis)
        edge = _EDGE * (1 if a.size <= _FINE_PIXELS else 2)
        weight = np.minimum(depth, _DEEP) ** 2 * _consistent(fwd, back)
        if np.count_nonzero(depth > edge) >= 0.2 * np.count_nonzero(vis):
            weight *= depth > edge
        # Next to an occluder the flow mixes both motions too.
        weight *= self.occ_zone[y0:y1, x0:x1] == 0
        # How much reliable flow the object offers (it shrinks while the object leaves the
        # frame or goes behind something): below a share of the recent best the fit is
        # blended with the last trusted motion.
        support = float(weight.sum())
        # Flow is only measured where there is texture; elsewhere DIS fills it in from
        # the surroundings (the background's motion, near the edge). The non-rigid part
        # of the motion is taken from textured pixels only and interpolated in between.
        res_weight = weight * _texture(a)
        self.best_support = max(0.97 * self.best_support, support)
        trust = min(1.0, support / (_TRUST * self.best_support)) if support > 0 else 0.0
        measured = np.count_nonzero(weight) >= 6
        if measured:
            fitted = _plausible(_fit_affine(fwd, weight, gx, gy), weight, gx, gy)
            step = _to_frame(fitted, x0, y0)
            if trust < 1.0 and self.prev_step is not None:
                step = trust * step + (1.0 - trust) * self.prev_step
        else:  # no reliable flow at all: the last motion, unless the template search finds better
            fitted = np.zeros((2, 3), np.float32)
            step = self.prev_step if self.prev_step is not None else np.zeros((2, 3))
        affine = _to_window(step, x0, y0)
        motion = _apply(affine, gx, gy)
        if measured and trust > 0:
            # What the affine model misses, smoothed with the same depth weights so edge
            # pixels barely count; away from the object it fades to the affine motion.
            num = cv2.GaussianBlur(
                (fwd - _apply(fitted, gx, gy)) * res_weight[..., None], (0, 0), _SIGMA
            )
            den = cv2.GaussianBlur(res_weight, (0, 0), _SIGMA)
            motion += trust * num / (den + 0.05 * float(den.max()) + 1e-6)[..., None]
        # A flat-coloured object gives DIS nothing to follow inside, and a jump larger than
        # DIS's pyramid reaches leaves the flow behind: the object's whole-body translation
        # found by template matching (edges included, where a wrong motion of a flat
        # object shows) replaces the flow's motion when it explains the new frame much
        # better. Not while the object is cut by the frame's edge (it is leaving).
        cut = (
            (y0 == 0 and vis[0].any())
            or (y1 == self.h and vis[-1].any())
            or (x0 == 0 and vis[:, 0].any())
            or (x1 == self.w and vis[:, -1].any())
        )
        err = np.inf  # how well the chosen motion explains the new frame
        if vis.any() and not cut:
            af, bf = a.astype(np.float32), b.astype(np.float32)
            judge = vis.astype(np.float32)
            err = _photo_error(af, bf, judge, motion, gx, gy)
            jump = _match_translation(af, bf, judge)
            if jump is not None and jump[2] < _SWITCH * err:
                tx, ty, err = jump
                motion = np.empty((hh, ww, 2), np.float32)
                motion[..., 0], motion[..., 1] = tx, ty
                step = np.array([[0.0, 0.0, tx], [0.0, 0.0, ty]])
        self.prev_step = step
        # motion lives on the known grid (p -> p + v(p)); invert it for the new grid:
        # x = p + v(p)  =>  p = x - v(p), by fixed-point iteration.
        d = motion
        for _ in range(2):
            d = cv2.remap(motion, gx - d[..., 0], gy - d[..., 1], cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)  # fmt: skip

        # 2. Compose with the map back to the keyframe: new pixel x came from p = x - d(x),
        # which came from p + disp(p). Beyond the frame the displacement is extended as it
        # is at the border, so an object keeps sliding out (or in).
        rep = {"borderMode": cv2.BORDER_REPLICATE}
        px, py = gx + (x0 - d[..., 0]), gy + (y0 - d[..., 1])
        dx = cv2.remap(self.dx, px, py, cv2.INTER_LINEAR, **rep) - d[..., 0]
        dy = cv2.remap(self.dy, px, py, cv2.INTER_LINEAR, **rep) - d[..., 1]
        # A source outside the window (other than beyond the frame's edge) has no motion
        # estimate of its own (the inversion extrapolated there): it moves with the
        # object's affine motion, composed onto the previous affine map.
        outside = (
            ((px < x0) & (x0 > 0))
            | ((px > x1 - 1) & (x1 < self.w))
            | ((py < y0) & (y0 > 0))
            | ((py > y1 - 1) & (y1 < self.h))
        )
        if outside.any():
            moved = np.eye(3)
            moved[:2] += step
            guess = (moved @ np.vstack([self.g, [0.0, 0.0, 1.0]]))[:2]
            fx, fy = _affine_disp(_invert_affine(guess), gx + x0, gy + y0)
            dx[outside], dy[outside] = fx[outside], fy[outside]
        kx, ky = gx + x0 + dx, gy + y0 + dy
        amodal = self._sample(kx, ky)

        # 3. Occlusion: reliable backward flow that does not follow the object's motion.
        fwd_at = cv2.remap(fwd, gx + bwd[..., 0], gy + bwd[..., 1], cv2.INTER_LINEAR, **rep)
        off = np.hypot(bwd[..., 0] + d[..., 0], bwd[..., 1] + d[..., 1])
        tau = _OCC_PX + 0.15 * np.hypot(d[..., 0], d[..., 1])
        inside = amodal > 0.5
        occ = (off > tau) & (_consistent(bwd, fwd_at) > 0) & inside
        if occ.any():  # only where there is texture to measure flow on
            occ &= _texture(b) > _OCC_TEX
        occ = occ.astype(np.uint8)
        occ = cv2.morphologyEx(occ, cv2.MORPH_OPEN, _KERNEL5) if occ.any() else occ
        zone = _grow(occ, _OCC_ZONE)

        # 4. Drift control: the map's affine part is re-aligned to the keyframe's own
        # appearance (ECC), and its non-rigid remainder relaxes a little toward it, so
        # neither slow errors of scale and rotation nor of shape build up.
        g_fit = self._fit_global(kx, ky, inside, x0, y0)
        if g_fit is not None:
            target = g_fit
            g_ecc = None
            if trust >= 1.0 and self.textured:
                g_ecc = self._realign(b, zone, g_fit, x0, y0)
                if g_ecc is not None:
                    target = g_fit + _ECC_GAIN * (g_ecc - g_fit)
            anchored = False
            if g_ecc is None and trust >= 1.0 and np.isfinite(err) and _ANCHOR > 0:
                # Nothing to align inside (a flat-coloured object): the keyframe's object
                # found again by template matching, edges included, re-anchors the chain
                # when it explains the frame about as well as the step did.
                # At the current size and at the keyframe's (undoing any drift of size).
                for size in {round(float(np.sqrt(abs(np.linalg.det(g_fit[:, :2])))), 3), 1.0}:
                    found = self._anchor(b, size, x0, y0)
                    if found is not None and found[1] <= _ANCHOR * err:
                        target, anchored, err = found[0], True, found[1] / _ANCHOR
            self.g = target
            fit_x, fit_y = _affine_disp(_invert_affine(g_fit), gx + x0, gy + y0)
            tgt_x, tgt_y = _affine_disp(_invert_affine(target), gx + x0, gy + y0)
            dx = tgt_x + (0.0 if anchored else dx - fit_x)
            dy = tgt_y + (0.0 if anchored else dy - fit_y)
            # The non-rigid part relaxes toward the affine map when the image says the
            # object looks more like its keyframe under the affine map alone (errors of
            # shape built up by the flow); a real deformation keeps it.
            seen = inside & (zone == 0)
            if _RELAX > 0 and np.count_nonzero(seen) >= 30:
                bf = b.astype(np.float32)
                e_full = self._mismatch(bf, gx + x0 + dx, gy + y0 + dy, seen)
                e_aff = self._mismatch(bf, gx + x0 + tgt_x, gy + y0 + tgt_y, seen)
                if e_aff <= e_full:
                    dx = tgt_x + (1.0 - _RELAX) * (dx - tgt_x)
                    dy = tgt_y + (1.0 - _RELAX) * (dy - tgt_y)
            kx, ky = gx + x0 + dx, gy + y0 + dy
            amodal = self._sample(kx, ky)
            inside = amodal > 0.5
            occ &= inside.astype(np.uint8)

        hidden = _grow(occ, _OCC_OUT).astype(np.float32)
        visible = amodal * (1.0 - cv2.GaussianBlur(hidden, (3, 3), 0))
        self.occ_zone = np.zeros((self.h, self.w), np.uint8)
        self.occ_zone[y0:y1, x0:x1] = zone
        # Beyond the window the map is the object's affine map: smooth, so sampling it
        # next step never mixes in a sentinel, and never inside the object.
        full_x, full_y = _grid(self.h, self.w)
        self.dx, self.dy = _affine_disp(_invert_affine(self.g), full_x, full_y)
        self.dx[y0:y1, x0:x1], self.dy[y0:y1, x0:x1] = dx, dy
        self.amodal = np.zeros((self.h, self.w), np.float32)
        self.visible = np.zeros((self.h, self.w), np.float32)
        self.amodal[y0:y1, x0:x1], self.visible[y0:y1, x0:x1] = amodal, visible
        expected = self.key_area * abs(float(np.linalg.det(self.g[:, :2])))
        if np.count_nonzero(inside) < max(2.0, 0.02 * expected):
            self.lost = True  # left the frame (or shrank to nothing): search from now on
        return self.visible

    def _mismatch(
        self, b: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, sel: np.ndarray
    ) -> float:
        """1 - correlation of the new window's pixels ``sel`` with the keyframe image at
        their mapped positions (insensitive to brightness and contrast changes)."""
        ref = cv2.remap(self.key_img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        u, v = b[sel], ref[sel]
        u = u - u.mean()
        v = v - v.mean()
        den = float(np.sqrt((u * u).sum() * (v * v).sum()))
        return 1.0 - float((u * v).sum()) / den if den > 0 else 1.0

    def _anchor(
        self, b: np.ndarray, scale: float, x0: int, y0: int
    ) -> tuple[np.ndarray, float] | None:
        """Where the keyframe's object (at ``scale``) fits best in the new window:
        (keyframe -> frame affine map, error as ``_photo_error``), or None."""
        th, tw = self.templ.shape
        size = (max(2, round(tw * scale)), max(2, round(th * scale)))
        templ = cv2.resize(self.templ, size, interpolation=cv2.INTER_AREA)
        tx, ty = self.t_origin
        weight = cv2.resize(
            self.key[ty : ty + th, tx : tx + tw], size, interpolation=cv2.INTER_AREA
        )
        if not (weight > 0).any():
            return None
        found = _match_template(b.astype(np.float32), templ, weight)
        if found is None:
            return None
        mx, my, err = found
        sx, sy = size[0] / tw, size[1] / th
        g = np.array([[sx, 0.0, x0 + mx - sx * tx], [0.0, sy, y0 + my - sy * ty]])
        return g, err

    def _fit_global(
        self, kx: np.ndarray, ky: np.ndarray, inside: np.ndarray, x0: int, y0: int
    ) -> np.ndarray | None:
        """The map's affine part: keyframe -> current frame pixels, least squares."""
        ys, xs = np.nonzero(inside)
        if ys.size < 30:
            return None
        step = max(1, int(np.sqrt(ys.size / 2000)))
        ys, xs = ys[::step], xs[::step]
        cur = np.stack([xs + x0, ys + y0], axis=1).astype(np.float64)
        key = np.stack([kx[ys, xs], ky[ys, xs]], axis=1).astype(np.float64)
        return _lstsq_affine(key, cur)

    def _realign(
        self, b: np.ndarray, occ: np.ndarray, g_fit: np.ndarray, x0: int, y0: int
    ) -> np.ndarray | None:
        """ECC-align the keyframe's appearance to the new window: the keyframe -> frame
        affine map it finds, or None if not believed."""
        tx, ty = self.t_origin
        to_win = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]])
        from_t = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
        w0 = (to_win @ np.vstack([g_fit, [0, 0, 1]]) @ from_t)[:2].astype(np.float32)
        imask = ((1 - occ) * 255).astype(np.uint8)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 20, 1e-4)
        try:
            cc, w1 = cv2.findTransformECCWithMask(
                self.templ,
                b.astype(np.float32),
                self.tmask,
                imask,
                w0.copy(),
                cv2.MOTION_AFFINE,
                crit,
                3,
            )
        except cv2.error:
            return None
        if not np.isfinite(w1).all() or cc < _ECC_MIN:
            return None
        g_ecc = (np.linalg.inv(to_win) @ np.vstack([w1, [0, 0, 1]]) @ np.linalg.inv(from_t))[:2]
        # Plausible: close to the flow's estimate (within a fifth of the object's size and
        # 10 % in scale); else ECC slid into a wrong optimum.
        size = np.sqrt(self.key_area * abs(np.linalg.det(g_fit[:, :2])))
        centre = np.array([self.t_origin[0], self.t_origin[1]]) + 0.5 * np.array(
            self.templ.shape[::-1]
        )
        shift = np.hypot(*((g_ecc[:, :2] - g_fit[:, :2]) @ centre + g_ecc[:, 2] - g_fit[:, 2]))
        sv = np.linalg.svd(g_ecc[:, :2] @ np.linalg.inv(g_fit[:, :2]), compute_uv=False)
        if shift > _ECC_SHIFT * size or sv.max() > _ECC_STRETCH or sv.min() < 1 / _ECC_STRETCH:
            return None
        self.ecc_scores = (self.ecc_scores + [float(cc)])[-30:]
        return g_ecc

    # ------------------------------------------------------------------ lost objects

    def _search(self, new: np.ndarray) -> None:
        """Look for the keyframe's object in the whole frame; restart the chain there.

        Masked template matching (normalised, so a change of light does not hide it) of
        the whole object at a few sizes, and of its halves against the frame's edges (an
        object coming back into the picture shows only a part of itself at first); the
        best candidates are confirmed by ECC alignment before the chain restarts.
        """
        self.visible = np.zeros((self.h, self.w), np.float32)
        self.amodal = self.visible
        if not self.textured:
            return
        scale = float(np.sqrt(abs(np.linalg.det(self.g[:, :2]))))
        th, tw = self.templ.shape
        r = min(1.0, float(np.sqrt(_SEARCH_PIXELS / max(1.0, th * tw * scale * scale))))
        img = new.astype(np.float32)
        small = cv2.resize(img, None, fx=r, fy=r, interpolation=cv2.INTER_AREA) if r < 1 else img
        sh, sw = small.shape
        found: list[tuple[float, float, float, float]] = []  # (score, size, origin x, y)
        for rel in _FIND_SCALES:
            f = rel * scale * r
            size = (max(4, round(tw * f)), max(4, round(th * f)))
            if size[0] >= sw or size[1] >= sh:
                continue
            t = cv2.resize(self.templ, size, interpolation=cv2.INTER_AREA)
            m = cv2.resize(self.tmask, size, interpolation=cv2.INTER_NEAREST)
            found += _match(small, t, m, rel * scale, 0, 0)
            if rel != 1.0:
                continue
            # Halves against the edges: entering from the right shows the left half, etc.
            pw, ph = size[0] // 2, size[1] // 2
            if size[0] < sw:
                found += _match(
                    small[:, sw - size[0] :], t[:, :pw], m[:, :pw], scale, sw - size[0], 0
                )
                found += _match(small[:, : size[0]], t[:, pw:], m[:, pw:], scale, -pw, 0)
            if size[1] < sh:
                found += _match(small[sh - size[1] :], t[:ph], m[:ph], scale, 0, sh - size[1])
                found += _match(small[: size[1]], t[ph:], m[ph:], scale, 0, -ph)
        found.sort(reverse=True)
        for score, s, mx, my in found[:2]:
            if score < _FIND_MIN:
                break
            if self._confirm(img, s, mx / r, my / r):
                return

    def _confirm(self, img: np.ndarray, s: float, x: float, y: float) -> bool:
        """ECC-align the keyframe's object placed at size ``s`` with its template's origin
        at (x, y); on a close enough fit restart the chain there. True if it did."""
        tx, ty = self.t_origin
        w0 = np.array([[s, 0.0, x], [0.0, s, y]], np.float32)  # template -> frame
        full = np.full(img.shape, 255, np.uint8)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-4)
        try:
            cc, w1 = cv2.findTransformECCWithMask(
                self.templ, img, self.tmask, full, w0, cv2.MOTION_AFFINE, crit, 3
            )
        except cv2.error:
            return False
        floor = float(np.median(self.ecc_scores)) - 0.15 if self.ecc_scores else 0.0
        if not np.isfinite(w1).all() or cc < max(_ECC_MIN + 0.1, floor):
            return False
        g = (np.vstack([w1, [0, 0, 1]]) @ np.array([[1, 0, -tx], [0, 1, -ty], [0, 0, 1.0]]))[:2]
        if abs(np.linalg.det(g[:, :2])) < 1e-3:
            return False
        gx, gy = _grid(self.h, self.w)
        dx, dy = _affine_disp(_invert_affine(g), gx, gy)
        amodal = self._sample(gx + dx, gy + dy)
        if not (amodal > 0.5).any():
            return False
        self.g = g
        self.dx, self.dy = dx, dy
        self.amodal = amodal
        self.visible = amodal.copy()
        self.occ_zone = np.zeros((self.h, self.w), np.uint8)
        self.lost = False
        self.prev_step = None
        self.best_support = 0.0
        return True


def _photo_error(
    a: np.ndarray,
    b: np.ndarray,
    weight: np.ndarray,
    motion: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
) -> float:
    """Weighted squared grey-level error of the known frame's object moved onto the new
    frame: sum((w * diff)^2) / sum(w^2), the normalisation of ``_match_template``."""
    moved = cv2.remap(b, gx + motion[..., 0], gy + motion[..., 1], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REFLECT)  # fmt: skip
    wn = weight / float(weight.max())
    return float((((moved - a) * wn) ** 2).sum() / (wn**2).sum())


def _match_translation(
    a: np.ndarray, b: np.ndarray, weight: np.ndarray
) -> tuple[float, float, float] | None:
    """Best translation (dx, dy, error) of the weighted object of a within b (px)."""
    rows = np.nonzero(weight.any(axis=1))[0]
    cols = np.nonzero(weight.any(axis=0))[0]
    ty0, ty1, tx0, tx1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    found = _match_template(b, a[ty0:ty1, tx0:tx1], weight[ty0:ty1, tx0:tx1])
    if found is None:
        return None
    mx, my, err = found
    return mx - tx0, my - ty0, err


def _match_template(
    b: np.ndarray, templ: np.ndarray, weight: np.ndarray
) -> tuple[float, float, float] | None:
    """Where (x, y of its top-left, sub-pixel) a weighted template fits best in b, and
    the fit's error sum((w * diff)^2) / sum(w^2) (as ``_photo_error``).

    A coarse search on templates downscaled to ~``_TEMPLATE_PIXELS`` pixels, then a
    +-2 px refinement at full resolution with a parabolic sub-pixel fit. None if the
    template does not fit inside b.
    """
    h, w = b.shape[:2]
    th, tw = templ.shape[:2]
    if th >= h or tw >= w:
        return None
    tmask = (weight / float(weight.max())).astype(np.float32)
    templ = np.ascontiguousarray(templ, dtype=np.float32)
    f = max(1.0, (th * tw / _TEMPLATE_PIXELS) ** 0.5)
    if f > 1.5:
        small = (max(1, round(w / f)), max(1, round(h / f)))
        fx, fy = w / small[0], h / small[1]
        ts = (max(1, round(tw / fx)), max(1, round(th / fy)))
        if ts[0] >= small[0] or ts[1] >= small[1]:
            return None
        res = cv2.matchTemplate(
            cv2.resize(b, small, interpolation=cv2.INTER_AREA),
            cv2.resize(templ, ts, interpolation=cv2.INTER_AREA),
            cv2.TM_SQDIFF,
            mask=cv2.resize(tmask, ts, interpolation=cv2.INTER_AREA),
        )
        _, _, (mx, my), _ = cv2.minMaxLoc(res)
        cx, cy = round(mx * fx), round(my * fy)
        pad = int(np.ceil(max(fx, fy))) + 2
    else:  # small enough to search everything at once
        cx, cy, pad = 0, 0, max(h, w)
    sy0, sx0 = max(0, cy - pad), max(0, cx - pad)
    sy1, sx1 = min(h, cy + pad + th), min(w, cx + pad + tw)
    if sy1 - sy0 < th or sx1 - sx0 < tw:
        return None
    res = cv2.matchTemplate(b[sy0:sy1, sx0:sx1], templ, cv2.TM_SQDIFF, mask=tmask)
    best, _, (mx, my), _ = cv2.minMaxLoc(res)
    dx = _parabola(res[my, mx - 1 : mx + 2]) if 0 < mx < res.shape[1] - 1 else 0.0
    dy = _parabola(res[my - 1 : my + 2, mx]) if 0 < my < res.shape[0] - 1 else 0.0
    err = max(0.0, best) / float((tmask**2).sum())
    return sx0 + mx + dx, sy0 + my + dy, err


def _parabola(v: np.ndarray) -> float:
    """Sub-pixel offset in [-0.5, 0.5] of the minimum of three samples."""
    denom = float(v[0] - 2 * v[1] + v[2])
    if denom <= 0:
        return 0.0
    return float(np.clip(0.5 * (v[0] - v[2]) / denom, -0.5, 0.5))


def _match(
    img: np.ndarray, templ: np.ndarray, mask: np.ndarray, size: float, ox: float, oy: float
) -> list[tuple[float, float, float, float]]:
    """Best normalised masked match of ``templ`` in ``img``: [(score, size, x, y)] with
    (x, y) = match position + (ox, oy) (where the whole template's origin lands), or []."""
    th, tw = templ.shape
    if th >= img.shape[0] or tw >= img.shape[1] or th < 4 or tw < 4:
        return []
    if np.count_nonzero(mask) < 8 or templ[mask > 0].std() < 1.0:
        return []
    res = cv2.matchTemplate(img, templ, cv2.TM_CCOEFF_NORMED, mask=mask)
    res[~np.isfinite(res)] = -1.0
    _, score, _, (mx, my) = cv2.minMaxLoc(res)
    return [(float(score), size, float(mx + ox), float(my + oy))]


# ----------------------------------------------------------------------------- geometry


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinate grids (x, y), float32 [h, w], cached by shape."""
    g = _GRIDS.get((h, w))
    if g is None:
        if len(_GRIDS) > 64:
            _GRIDS.clear()
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        g = _GRIDS[(h, w)] = (gx, gy)
    return g


def _texture(gray: np.ndarray) -> np.ndarray:
    """How well flow is measured at each pixel, in [0, 1): the smaller eigenvalue of the
    local structure tensor (texture in both directions) against ``_TEX``."""
    g = gray.astype(np.float32)
    ix = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    iy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    a = cv2.boxFilter(ix * ix, -1, (7, 7))
    b = cv2.boxFilter(ix * iy, -1, (7, 7))
    c = cv2.boxFilter(iy * iy, -1, (7, 7))
    lmin = 0.5 * (a + c - np.sqrt((a - c) ** 2 + 4 * b * b))
    lmin = np.maximum(lmin, 0)
    return lmin / (lmin + _TEX)


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """A uint8 mask dilated by ``radius`` px (a disc)."""
    if radius <= 0 or not mask.any():
        return mask
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, disc)


def _consistent(flow: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Forward-backward check (Sundaram et al. 2010): flow and the reverse flow at its end
    point cancel out up to a tolerance growing with the motion. float32 0/1."""
    su = flow[..., 0] + back[..., 0]
    sv = flow[..., 1] + back[..., 1]
    mag = flow[..., 0] ** 2 + flow[..., 1] ** 2 + back[..., 0] ** 2 + back[..., 1] ** 2
    return (su * su + sv * sv <= 0.01 * mag + 0.5).astype(np.float32)


def _depth(obj: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the mask edge, the window border counting as edge."""
    return cv2.distanceTransform(
        cv2.copyMakeBorder(obj, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0), cv2.DIST_L2, 3
    )[1:-1, 1:-1]


def _apply(m: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The displacement field [h, w, 2] of an affine motion m ([2, 3]) on a pixel grid."""
    out = np.empty(gx.shape + (2,), np.float32)
    out[..., 0] = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
    out[..., 1] = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
    return out


def _affine_disp(m: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (x, y) float32 of the affine point map m ([2, 3]): m @ [p, 1] - p."""
    dx = (m[0, 0] - 1.0) * gx + m[0, 1] * gy + m[0, 2]
    dy = m[1, 0] * gx + (m[1, 1] - 1.0) * gy + m[1, 2]
    return dx.astype(np.float32), dy.astype(np.float32)


def _to_frame(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """A displacement affine on window pixels q re-expressed on frame pixels p = q + o."""
    out = m.astype(np.float64).copy()
    out[:, 2] = m[:, 2] - m[:, 0] * x0 - m[:, 1] * y0
    return out


def _to_window(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Inverse of ``_to_frame``."""
    out = m.astype(np.float64).copy()
    out[:, 2] = m[:, 2] + m[:, 0] * x0 + m[:, 1] * y0
    return out


def _invert_affine(m: np.ndarray) -> np.ndarray:
    lin = np.linalg.inv(m[:, :2])
    return np.concatenate([lin, (-lin @ m[:, 2])[:, None]], axis=1)


def _lstsq_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares affine [2, 3] taking src points [N, 2] to dst points [N, 2]."""
    if len(src) < 6:
        return None
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    m = coef.T
    if not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-6:
        return None
    return m


def _plausible(m: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The affine motion with its stretch limited to what one frame plausibly holds.

    The singular values of I + L are clamped to [1/_MAX_SCALE_STEP, _MAX_SCALE_STEP]
    (rotation untouched), keeping the object's centre where m moves it: a fit to garbage
    flow could otherwise blow the object up or squash it.
    """
    u, sv, vt = np.linalg.svd(np.eye(2) + m[:, :2].astype(np.float64))
    if not np.isfinite(sv).all():
        sv = np.ones(2)
    clamped = np.clip(sv, 1.0 / _MAX_SCALE_STEP, _MAX_SCALE_STEP)
    if np.array_equal(clamped, sv):
        return m
    return _with_linear(m, u @ np.diag(clamped) @ vt, weight, gx, gy)


def _with_linear(
    m: np.ndarray, lin: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray
) -> np.ndarray:
    """Affine displacement with linear part ``lin`` that moves the object's (weighted)
    centre exactly as m does."""
    total = float(weight.sum())
    if total <= 0:
        c = np.array([gx.mean(), gy.mean()], np.float64)
    else:
        c = np.array([(weight * gx).sum() / total, (weight * gy).sum() / total])
    moved = m[:, :2].astype(np.float64) @ c + m[:, 2]  # displacement of the centre
    out = np.empty((2, 3), np.float32)
    out[:, :2] = lin - np.eye(2)
    out[:, 2] = moved - (lin - np.eye(2)) @ c
    return out


def _fit_affine(flow: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Weighted, outlier-robust affine fit flow(x, y) ~ A @ [x, y, 1]; A is [2, 3].

    A few reweighting rounds (Cauchy weights on the residual) keep an occluder or a limb
    from dragging the object's overall motion; a small ridge pulls the linear part toward
    zero so thin or tiny masks degrade to a translation instead of an unstable fit.
    """
    sub = 2 if np.count_nonzero(weight) > 400 else 1
    sel = weight[::sub, ::sub] > 0
    w0 = weight[::sub, ::sub][sel].astype(np.float64)
    x = gx[::sub, ::sub][sel].astype(np.float64)
    y = gy[::sub, ::sub][sel].astype(np.float64)
    u = flow[::sub, ::sub, 0][sel].astype(np.float64)
    v = flow[::sub, ::sub, 1][sel].astype(np.float64)
    total = w0.sum()
    cx, cy = (w0 * x).sum() / total, (w0 * y).sum() / total
    design = np.stack([x - cx, y - cy, np.ones_like(x)], axis=1)
    ridge = np.diag([1.0, 1.0, 0.0])
    wt = w0
    coef = np.zeros((3, 2))
    for _ in range(3):
        gram = design.T @ (design * wt[:, None]) + ridge * wt.sum()
        coef = np.linalg.solve(gram, design.T @ (np.stack([u, v], axis=1) * wt[:, None]))
        res = np.hypot(u - design @ coef[:, 0], v - design @ coef[:, 1])
        wt = w0 / (1.0 + (res / _ROBUST_PX) ** 2)
    a = coef.T  # rows: u, v; columns: x - cx, y - cy, 1
    out = np.empty((2, 3), np.float32)
    out[:, :2] = a[:, :2]
    out[:, 2] = a[:, 2] - a[:, 0] * cx - a[:, 1] * cy
    return out


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
    box = cv2.morphologyEx(binary[y0:y1, x0:x1], cv2.MORPH_CLOSE, _KERNEL3)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8)
    if count > 2:
        areas = stats[1:, cv2.CC_STAT_AREA]
        min_area = min(max(3, int(0.01 * ref_area)), int(areas.max()))
        keep = np.concatenate([[0], areas >= min_area]).astype(np.uint8)
        box = keep[labels]
    binary[y0:y1, x0:x1] = box
    return binary


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Group sorted frame indices into inclusive runs: [3,4,5,9] -> [(3,5), (9,9)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _fmt_runs(runs: list[tuple[int, int]], limit: int = 6) -> str:
    parts = [f"{a}" if a == b else f"{a}\u2013{b}" for a, b in runs[:limit]]
    if len(runs) > limit:
        parts.append(f"and {len(runs) - limit} more")
    return ", ".join(parts)


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


class MaskSink:
    """Where a tracker puts each frame's mask: an array, or any object taking ``out[t] = mask``
    (a file written row by row for a long clip). Each frame's area and whether it touches
    the border are kept as they are written, so the warnings need no second pass."""

    def __init__(self, n: int, h: int, w: int, out: object | None = None) -> None:
        self.masks = out if out is not None else np.zeros((n, h, w), dtype=np.uint8)
        self.areas = np.zeros(n, dtype=np.int64)
        self.border = np.zeros(n, dtype=bool)

    def put(self, t: int, mask: np.ndarray) -> None:
        mask = np.asarray(mask, dtype=np.uint8)
        self.masks[t] = mask
        self.areas[t] = int(np.count_nonzero(mask))
        self.border[t] = _touches_border(mask)


def _warnings(sink: MaskSink, keys: Mapping[int, object], ref_area: np.ndarray) -> list[str]:
    """Human-readable notes on frames where the object was lost or the mask drifted."""
    areas, border = sink.areas, sink.border
    n = len(areas)
    lost = [i for i in range(n) if areas[i] == 0]
    out: list[str] = []
    if lost and len(lost) == n - len(keys):
        which = ", ".join(str(k) for k in keys)
        out.append(
            f"object lost on every frame except the keyframe{'s' if len(keys) > 1 else ''} "
            f"({which}); the tracker could not follow it, add keyframes or check the mask"
        )
    elif lost:
        runs = _runs(lost)
        # A run that starts or ends next to a mask touching the frame border most likely
        # means the object went out of the picture rather than that tracking failed.
        exited = any((a > 0 and border[a - 1]) or (b < n - 1 and border[b + 1]) for a, b in runs)
        word = "frame" if len(lost) == 1 else "frames"
        hint = " (it left the frame)" if exited else ""
        out.append(f"object lost{hint} on {word} {_fmt_runs(runs)}")
    drift = [
        i
        for i in range(n)
        if areas[i] > 0
        and (
            areas[i] > _AREA_DRIFT_FACTOR * ref_area[i]
            or (areas[i] * _AREA_DRIFT_FACTOR < ref_area[i] and not border[i])
        )
    ]
    if drift:
        out.append(
            f"tracked mask area changed more than {_AREA_DRIFT_FACTOR:g}x from its keyframe on "
            f"frames {_fmt_runs(_runs(drift))}; check the preview, add a keyframe there if wrong"
        )
    return out


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
    """
    keys = _validate(frames, keyframes)
    n = frames.shape[0]
    h, w = frames.shape[1:3]
    work = _Frames(frames)
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
    done = 0
    every = max(1, total // 100)

    def tick(msg: str) -> None:
        nonlocal done
        done += 1
        if progress is not None and (done % every == 0 or done == total):
            progress(min(1.0, done / total), msg)

    def chain(start: int, stop: int, step: int, msg: str) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (t, soft work-resolution mask) walking from keyframe ``start`` to ``stop``."""
        tracker = _Chain(work.to_work(keys[start]), work.gray(start))
        for t in range(start + step, stop, step):
            soft = tracker.step(work.gray(t - step), work.gray(t))
            tick(msg)
            yield t, soft

    first, last = order[0], order[-1]
    for t, soft in chain(first, -1, -1, f"tracking backward from frame {first}"):
        sink.put(t, _clean(work.to_full(soft), float(keys[first].sum())))
        ref_area[t] = keys[first].sum()
    for a, b in zip(order, order[1:], strict=False):
        if b - a < 2:
            continue
        fwd = _SoftSpill()
        try:
            for t, soft in chain(a, b, 1, f"tracking frames {a}\u2013{b}"):
                fwd.put(t, soft)
            area_a, area_b = keys[a].sum(), keys[b].sum()
            for t, soft in chain(b, a, -1, f"tracking frames {a}\u2013{b}"):
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
    for t, soft in chain(last, n, 1, f"tracking forward from frame {last}"):
        sink.put(t, _clean(work.to_full(soft), float(keys[last].sum())))
        ref_area[t] = keys[last].sum()
    if progress is not None and done != total:
        progress(1.0, "tracking done")
    return sink.masks, _warnings(sink, keys, ref_area)


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
