"""One keyframe's mask carried step by step through neighbouring frames (weight-free).

Each step, from a frame whose mask is known to the next one, works in a window around
the object at the working resolution and:

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
6. finds the object again after it left the frame (or was lost): see ``search``;
7. refines the mask by the object's appearance (``refine``): grows it into what looks
   like the object and moves with it, trims what does not; the change is written back
   to the key's mask through the map (so it adds up over frames), and when the mask grew
   beyond what the key can hold the chain re-seeds on the refined mask (the search for a
   lost object still uses the keyframe's own).

``Chain.step`` runs these as named methods, in this order; the tuning constants are in
``params``, the affine algebra in ``geometry`` and the image measures in ``measure``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vision.flow import search
from vision.flow.geometry import (
    affine_disp,
    apply_affine,
    edge_depth,
    fit_affine,
    grid,
    grow,
    invert_affine,
    lstsq_affine,
    plausible,
    to_frame,
    to_window,
)
from vision.flow.measure import (
    consistent,
    match_template,
    match_translation,
    photo_error,
    texture,
)
from vision.flow.params import (
    ANCHOR,
    BWD_COARSER,
    DEEP,
    ECC_GAIN,
    ECC_MIN,
    ECC_SHIFT,
    ECC_STRETCH,
    EDGE,
    FINE_PIXELS,
    GD_ITERS,
    KERNEL3,
    KERNEL5,
    MARGIN,
    MIN_FLOW_SIDE,
    MIN_MARGIN,
    OCC_OUT,
    OCC_PX,
    OCC_TEX,
    OCC_ZONE,
    RELAX,
    RESEED,
    REVERSE,
    SIGMA,
    SWITCH,
    TEXTURED,
    TRUST,
    VAR_ITERS,
)
from vision.flow.refine import Refiner

_REPLICATE = {"borderMode": cv2.BORDER_REPLICATE}


@dataclass(frozen=True)
class _Window:
    """One step's window around the object: its place in the frame (rows y0:y1, columns
    x0:x1), the two grey frames cut to it (a: known frame, b: new frame), its pixel grid,
    the object's visible part in a, and the DIS flow a -> b (fwd) and b -> a (bwd)."""

    y0: int
    y1: int
    x0: int
    x1: int
    a: np.ndarray
    b: np.ndarray
    gx: np.ndarray
    gy: np.ndarray
    vis: np.ndarray
    fwd: np.ndarray
    bwd: np.ndarray


class Chain:
    """Carries one keyframe's mask step by step through neighbouring frames (module doc).

    State: ``dx, dy`` map each current pixel to its keyframe position (as a displacement;
    outside the window, where the object cannot be, it is the affine map, so the map is
    smooth everywhere and sampling it never mixes in a sentinel); ``g`` is the map's
    affine part (keyframe -> current pixels); ``amodal`` the whole object now, hidden
    parts included, ``visible`` the part of it in view; ``occ_zone`` where an occluder was.
    """

    def __init__(
        self, key_soft: np.ndarray, key_gray: np.ndarray, key_rgb: np.ndarray | None = None
    ) -> None:
        h, w = key_soft.shape
        self.h, self.w = h, w
        self.prev_step: np.ndarray | None = None  # last motion (displacement affine, frame px)
        self.best_support = 0.0
        self.lost = False
        self.ecc_scores: list[float] = []
        self.reseeds = 0  # how often the refined mask became the chain's key (step 7)
        self._dis_cache: dict[tuple[int, int, int], cv2.DISOpticalFlow] = {}
        self._set_key(key_soft, key_gray)
        self._first = (self.key, key_gray)  # the keyframe's own, to search for when lost
        # Step 7: the appearance model that grows and trims the mask (``refine``); None
        # without the keyframe's colours.
        self.refiner = Refiner(self.key, key_rgb) if key_rgb is not None else None

    def _set_key(self, key_soft: np.ndarray, key_gray: np.ndarray) -> None:
        """Take ``key_soft`` on the frame ``key_gray`` as the mask the map leads back to:
        the keyframe's own at the start, the refined mask on a re-seed."""
        h, w = self.h, self.w
        self.key = key_soft.astype(np.float32)
        key_bin = self.key > 0.5
        self.key_area = float(max(1, np.count_nonzero(key_bin)))
        self.dx = np.zeros((h, w), np.float32)
        self.dy = np.zeros((h, w), np.float32)
        self.amodal = self.key.copy()
        self.visible = self.key.copy()
        self.occ_zone = np.zeros((h, w), np.uint8)  # occluders and the band around them
        self.g = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
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
        eroded = cv2.erode(tmask, KERNEL3)
        self.tmask = (eroded if eroded.sum() >= 0.5 * tmask.sum() else tmask) * 255
        # Enough texture inside for ECC to pin scale and rotation down (a smooth gradient
        # or a flat colour lets it slide): the mean flow confidence over the object.
        inner = self.tmask > 0
        self.textured = bool(inner.any()) and float(texture(self.templ)[inner].mean()) > TEXTURED

    # ------------------------------------------------------------------ helpers

    def _flow(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward (a -> b) and backward (b -> a) DIS flow of two grey windows.

        The forward flow moves the object, so it is computed at full working resolution
        (DIS's half-resolution finest scale blurs the object's edge motion into the
        background's and the mask creeps); the backward flow only has to say which pixels
        moved with the object, so a coarser one does.
        """
        fine = 0 if a.size <= FINE_PIXELS else 1
        fwd = self._dis(fine, GD_ITERS, VAR_ITERS).calc(a, b, None)
        bwd = self._dis(fine + BWD_COARSER, GD_ITERS, VAR_ITERS).calc(b, a, None)
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
        """Where the object can be in the next frame: its box, a margin, its last motion
        ahead and half of it behind (a bouncing ball or a nodding head reverses in one
        frame; the bundled demo's ball was lost at its first bounce without it)."""
        ys = np.nonzero((self.amodal > 0.5).any(axis=1))[0]
        xs = np.nonzero((self.amodal > 0.5).any(axis=0))[0]
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        margin = max(MIN_MARGIN, int(MARGIN * max(y1 - y0, x1 - x0)))
        vx, vy = self._velocity()
        y0, y1 = (
            min(y0 + int(vy), y0 - int(REVERSE * abs(vy))),
            max(y1 + int(vy), y1 + int(REVERSE * abs(vy))),
        )
        x0, x1 = (
            min(x0 + int(vx), x0 - int(REVERSE * abs(vx))),
            max(x1 + int(vx), x1 + int(REVERSE * abs(vx))),
        )
        y0, y1, x0, x1 = y0 - margin, y1 + margin, x0 - margin, x1 + margin
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

    def step(self, prev: np.ndarray, new: np.ndarray, rgb: np.ndarray | None = None) -> np.ndarray:
        """Move to the next frame (grey, working resolution); return its visible soft mask.

        The numbered steps of the module doc, in order; a lost object is searched for.
        ``rgb``: the new frame in colour (working resolution), for the refinement (step 7;
        skipped without it or without a refiner).
        """
        if self.lost or not (self.amodal > 0.5).any():
            self.lost = True
            self._search(new)
            return self.visible
        win = self._open_window(prev, new)
        motion, step, trust = self._object_motion(win)
        motion, step, err = self._template_jump(win, motion, step)
        self.prev_step = step
        d = _invert_motion(motion, win.gx, win.gy)
        dx, dy = self._compose(win, d, step)
        amodal = self._sample(win.gx + win.x0 + dx, win.gy + win.y0 + dy)
        inside = amodal > 0.5
        occ, zone = self._occlusion(win, d, inside)
        realigned = self._control_drift(win, dx, dy, inside, zone, trust, err)
        if realigned is not None:
            dx, dy = realigned
            amodal = self._sample(win.gx + win.x0 + dx, win.gy + win.y0 + dy)
            occ &= (amodal > 0.5).astype(np.uint8)
        self._commit(win, dx, dy, amodal, occ, zone)
        if self.refiner is not None and rgb is not None and not self.lost:
            self._refine(win, d, rgb, new, zone)
        return self.visible

    def _refine(
        self, win: _Window, d: np.ndarray, rgb: np.ndarray, new: np.ndarray, zone: np.ndarray
    ) -> None:
        """Step 7 of the module doc: the visible mask grown into what looks like the
        object and moves with it, trimmed of what does not (``refine``); the chain starts
        again from the refined mask when that changed it enough (``RESEED``)."""
        y0, y1, x0, x1 = win.y0, win.y1, win.x0, win.x1
        before = self.visible[y0:y1, x0:x1].copy()
        rgb_win = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        refined = self.refiner.refine(before, rgb_win, win.a, win.b, win.bwd, d, zone)
        if refined is None:
            return
        changed = np.count_nonzero((refined > 0.5) != (before > 0.5))
        area = max(1, np.count_nonzero(before > 0.5))
        # The hidden part (amodal but not visible) stays as the chain carries it.
        amodal = np.maximum(refined, self.amodal[y0:y1, x0:x1] - before)
        self.visible[y0:y1, x0:x1] = refined
        self.amodal[y0:y1, x0:x1] = amodal
        # Only to grow (a part the key never showed, or beyond the frame's edge, has no
        # place in the key's mask); trimming is written back. Never while an occluder
        # is in the way.
        grew = np.count_nonzero(refined > 0.5) > area
        if changed > RESEED * area and grew and not zone.any():
            keep = (self.prev_step, self.best_support)
            self._set_key(self.amodal, new)
            self.prev_step, self.best_support = keep
            self.reseeds += 1
        elif changed and not self._cut(win):  # a part cut by the frame's edge says little
            self._write_back(win, refined, before)

    def _write_back(self, win: _Window, refined: np.ndarray, before: np.ndarray) -> None:
        """Carry the refinement's change back to the keyframe's mask through the map, so
        the next frames start from it and small changes add up (growth of a few pixels a
        frame). Each changed pixel sets the keyframe pixel it maps to."""
        y0, x0 = win.y0, win.x0
        ys, xs = np.nonzero((refined > 0.5) != (before > 0.5))
        kx = xs + x0 + self.dx[ys + y0, xs + x0]
        ky = ys + y0 + self.dy[ys + y0, xs + x0]
        value = (refined[ys, xs] > 0.5).astype(np.float32)
        ix, iy = np.rint(kx).astype(np.int64), np.rint(ky).astype(np.int64)
        ok = (ix >= 0) & (ix < self.w) & (iy >= 0) & (iy < self.h)
        self.key[iy[ok], ix[ok]] = value[ok]

    def _open_window(self, prev: np.ndarray, new: np.ndarray) -> _Window:
        """Cut the window (``_window``) out of both frames; the DIS flow between them."""
        y0, y1, x0, x1 = self._window()
        a = np.ascontiguousarray(prev[y0:y1, x0:x1])
        b = np.ascontiguousarray(new[y0:y1, x0:x1])
        hh, ww = a.shape
        gx, gy = grid(hh, ww)
        vis = (self.visible[y0:y1, x0:x1] > 0.5).astype(np.uint8)
        if min(hh, ww) >= MIN_FLOW_SIDE:
            fwd, bwd = self._flow(a, b)
        else:
            fwd = bwd = np.zeros((hh, ww, 2), np.float32)
        return _Window(y0, y1, x0, x1, a, b, gx, gy, vis, fwd, bwd)

    def _flow_weight(self, win: _Window) -> np.ndarray:
        """How much each window pixel's flow says about the object's motion: reliable
        (forward-backward consistent) flow deep inside its visible part, away from
        occluders."""
        fwd, bwd, vis = win.fwd, win.bwd, win.vis
        back = cv2.remap(bwd, win.gx + fwd[..., 0], win.gy + fwd[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
        depth = edge_depth(vis)
        edge = EDGE * (1 if win.a.size <= FINE_PIXELS else 2)
        weight = np.minimum(depth, DEEP) ** 2 * consistent(fwd, back)
        if np.count_nonzero(depth > edge) >= 0.2 * np.count_nonzero(vis):
            weight *= depth > edge
        # Next to an occluder the flow mixes both motions too.
        weight *= self.occ_zone[win.y0 : win.y1, win.x0 : win.x1] == 0
        return weight

    def _object_motion(self, win: _Window) -> tuple[np.ndarray, np.ndarray, float]:
        """The object's motion (steps 1-2 of the module doc): a displacement field on the
        window's grid [h, w, 2], its affine part as a displacement on frame pixels, and how
        far the flow was trusted (1: fully; below, blended with the last motion)."""
        fwd, gx, gy, x0, y0 = win.fwd, win.gx, win.gy, win.x0, win.y0
        weight = self._flow_weight(win)
        # How much reliable flow the object offers (it shrinks while the object leaves the
        # frame or goes behind something): below a share of the recent best the fit is
        # blended with the last trusted motion.
        support = float(weight.sum())
        # Flow is only measured where there is texture; elsewhere DIS fills it in from
        # the surroundings (the background's motion, near the edge). The non-rigid part
        # of the motion is taken from textured pixels only and interpolated in between.
        res_weight = weight * texture(win.a)
        self.best_support = max(0.97 * self.best_support, support)
        trust = min(1.0, support / (TRUST * self.best_support)) if support > 0 else 0.0
        measured = np.count_nonzero(weight) >= 6
        if measured:
            fitted = plausible(fit_affine(fwd, weight, gx, gy), weight, gx, gy)
            step = to_frame(fitted, x0, y0)
            if trust < 1.0 and self.prev_step is not None:
                step = trust * step + (1.0 - trust) * self.prev_step
        else:  # no reliable flow at all: the last motion, unless the template search finds better
            fitted = np.zeros((2, 3), np.float32)
            step = self.prev_step if self.prev_step is not None else np.zeros((2, 3))
        affine = to_window(step, x0, y0)
        motion = apply_affine(affine, gx, gy)
        if measured and trust > 0:
            # What the affine model misses, smoothed with the same depth weights so edge
            # pixels barely count; away from the object it fades to the affine motion.
            num = cv2.GaussianBlur(
                (fwd - apply_affine(fitted, gx, gy)) * res_weight[..., None], (0, 0), SIGMA
            )
            den = cv2.GaussianBlur(res_weight, (0, 0), SIGMA)
            motion += trust * num / (den + 0.05 * float(den.max()) + 1e-6)[..., None]
        return motion, step, trust

    def _template_jump(
        self, win: _Window, motion: np.ndarray, step: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """The motion and step, replaced by a whole-body translation found by template
        matching when that explains the new frame much better; and how well the chosen
        motion explains it (``photo_error``; inf when not judged).

        A flat-coloured object gives DIS nothing to follow inside, and a jump larger than
        DIS's pyramid reaches leaves the flow behind; template matching (edges included,
        where a wrong motion of a flat object shows) sees both. Not while the object is
        cut by the frame's edge (it is leaving).
        """
        vis = win.vis
        cut = self._cut(win)
        err = np.inf  # how well the chosen motion explains the new frame
        if vis.any() and not cut:
            af, bf = win.a.astype(np.float32), win.b.astype(np.float32)
            judge = vis.astype(np.float32)
            err = photo_error(af, bf, judge, motion, win.gx, win.gy)
            jump = match_translation(af, bf, judge)
            if jump is not None and jump[2] < SWITCH * err:
                tx, ty, err = jump
                motion = np.empty(win.a.shape + (2,), np.float32)
                motion[..., 0], motion[..., 1] = tx, ty
                step = np.array([[0.0, 0.0, tx], [0.0, 0.0, ty]])
        return motion, step, err

    def _cut(self, win: _Window) -> bool:
        """Whether the object's visible part touches the frame's edge (leaving or entering)."""
        vis = win.vis
        return bool(
            (win.y0 == 0 and vis[0].any())
            or (win.y1 == self.h and vis[-1].any())
            or (win.x0 == 0 and vis[:, 0].any())
            or (win.x1 == self.w and vis[:, -1].any())
        )

    def _compose(
        self, win: _Window, d: np.ndarray, step: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Step 3 of the module doc: the map back to the keyframe (dx, dy) on the window.

        New pixel x came from p = x - d(x), which came from p + disp(p). Beyond the frame
        the displacement is extended as it is at the border, so an object keeps sliding
        out (or in).
        """
        gx, gy, y0, y1, x0, x1 = win.gx, win.gy, win.y0, win.y1, win.x0, win.x1
        px, py = gx + (x0 - d[..., 0]), gy + (y0 - d[..., 1])
        dx = cv2.remap(self.dx, px, py, cv2.INTER_LINEAR, **_REPLICATE) - d[..., 0]
        dy = cv2.remap(self.dy, px, py, cv2.INTER_LINEAR, **_REPLICATE) - d[..., 1]
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
            fx, fy = affine_disp(invert_affine(guess), gx + x0, gy + y0)
            dx[outside], dy[outside] = fx[outside], fy[outside]
        return dx, dy

    def _occlusion(
        self, win: _Window, d: np.ndarray, inside: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Step 4 of the module doc: the occluded part of the object (uint8 0/1) and the
        zone around it: reliable backward flow inside the object (``inside``) that does not
        follow the object's motion (``d``, on the new grid)."""
        fwd, bwd, gx, gy = win.fwd, win.bwd, win.gx, win.gy
        fwd_at = cv2.remap(fwd, gx + bwd[..., 0], gy + bwd[..., 1], cv2.INTER_LINEAR, **_REPLICATE)
        off = np.hypot(bwd[..., 0] + d[..., 0], bwd[..., 1] + d[..., 1])
        tau = OCC_PX + 0.15 * np.hypot(d[..., 0], d[..., 1])
        occ = (off > tau) & (consistent(bwd, fwd_at) > 0) & inside
        if occ.any():  # only where there is texture to measure flow on
            occ &= texture(win.b) > OCC_TEX
        occ = occ.astype(np.uint8)
        occ = cv2.morphologyEx(occ, cv2.MORPH_OPEN, KERNEL5) if occ.any() else occ
        return occ, grow(occ, OCC_ZONE)

    def _control_drift(
        self,
        win: _Window,
        dx: np.ndarray,
        dy: np.ndarray,
        inside: np.ndarray,
        zone: np.ndarray,
        trust: float,
        err: float,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Step 5 of the module doc: the map (dx, dy) with its affine part re-aligned to the
        keyframe's own appearance (ECC, or the template for a flat object; sets ``g``) and
        its non-rigid remainder relaxed a little toward it, so neither slow errors of scale
        and rotation nor of shape build up. None when too little of the object is left to
        fit an affine map to (the map stays as it is)."""
        gx, gy, x0, y0 = win.gx, win.gy, win.x0, win.y0
        g_fit = self._fit_global(gx + x0 + dx, gy + y0 + dy, inside, x0, y0)
        if g_fit is None:
            return None
        target, anchored = self._drift_target(win, zone, g_fit, trust, err)
        self.g = target
        fit_x, fit_y = affine_disp(invert_affine(g_fit), gx + x0, gy + y0)
        tgt_x, tgt_y = affine_disp(invert_affine(target), gx + x0, gy + y0)
        dx = tgt_x + (0.0 if anchored else dx - fit_x)
        dy = tgt_y + (0.0 if anchored else dy - fit_y)
        # The non-rigid part relaxes toward the affine map when the image says the
        # object looks more like its keyframe under the affine map alone (errors of
        # shape built up by the flow); a real deformation keeps it.
        seen = inside & (zone == 0)
        if RELAX > 0 and np.count_nonzero(seen) >= 30:
            bf = win.b.astype(np.float32)
            e_full = self._mismatch(bf, gx + x0 + dx, gy + y0 + dy, seen)
            e_aff = self._mismatch(bf, gx + x0 + tgt_x, gy + y0 + tgt_y, seen)
            if e_aff <= e_full:
                dx = tgt_x + (1.0 - RELAX) * (dx - tgt_x)
                dy = tgt_y + (1.0 - RELAX) * (dy - tgt_y)
        return dx, dy

    def _drift_target(
        self, win: _Window, zone: np.ndarray, g_fit: np.ndarray, trust: float, err: float
    ) -> tuple[np.ndarray, bool]:
        """Where the map's affine part should be (keyframe -> frame), and whether that was
        found by re-anchoring to the keyframe's template (then the non-rigid part goes)."""
        target = g_fit
        g_ecc = None
        if trust >= 1.0 and self.textured:
            g_ecc = self._realign(win.b, zone, g_fit, win.x0, win.y0)
            if g_ecc is not None:
                target = g_fit + ECC_GAIN * (g_ecc - g_fit)
        anchored = False
        if g_ecc is None and trust >= 1.0 and np.isfinite(err) and ANCHOR > 0:
            # Nothing to align inside (a flat-coloured object): the keyframe's object
            # found again by template matching, edges included, re-anchors the chain
            # when it explains the frame about as well as the step did.
            # At the current size and at the keyframe's (undoing any drift of size).
            for size in {round(float(np.sqrt(abs(np.linalg.det(g_fit[:, :2])))), 3), 1.0}:
                found = self._anchor(win.b, size, win.x0, win.y0)
                if found is not None and found[1] <= ANCHOR * err:
                    target, anchored, err = found[0], True, found[1] / ANCHOR
        return target, anchored

    def _commit(
        self,
        win: _Window,
        dx: np.ndarray,
        dy: np.ndarray,
        amodal: np.ndarray,
        occ: np.ndarray,
        zone: np.ndarray,
    ) -> None:
        """Take the step: the new map, amodal and visible masks (occluders cut out) and
        occluder zone; lost when the object shrank to nothing (or left the frame)."""
        y0, y1, x0, x1 = win.y0, win.y1, win.x0, win.x1
        hidden = grow(occ, OCC_OUT).astype(np.float32)
        visible = amodal * (1.0 - cv2.GaussianBlur(hidden, (3, 3), 0))
        self.occ_zone = np.zeros((self.h, self.w), np.uint8)
        self.occ_zone[y0:y1, x0:x1] = zone
        # Beyond the window the map is the object's affine map: smooth, so sampling it
        # next step never mixes in a sentinel, and never inside the object.
        full_x, full_y = grid(self.h, self.w)
        self.dx, self.dy = affine_disp(invert_affine(self.g), full_x, full_y)
        self.dx[y0:y1, x0:x1], self.dy[y0:y1, x0:x1] = dx, dy
        self.amodal = np.zeros((self.h, self.w), np.float32)
        self.visible = np.zeros((self.h, self.w), np.float32)
        self.amodal[y0:y1, x0:x1], self.visible[y0:y1, x0:x1] = amodal, visible
        expected = self.key_area * abs(float(np.linalg.det(self.g[:, :2])))
        if np.count_nonzero(amodal > 0.5) < max(2.0, 0.02 * expected):
            self.lost = True  # left the frame (or shrank to nothing): search from now on

    # ------------------------------------------------------------------ drift control

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
        (keyframe -> frame affine map, error as ``photo_error``), or None."""
        th, tw = self.templ.shape
        size = (max(2, round(tw * scale)), max(2, round(th * scale)))
        templ = cv2.resize(self.templ, size, interpolation=cv2.INTER_AREA)
        tx, ty = self.t_origin
        weight = cv2.resize(
            self.key[ty : ty + th, tx : tx + tw], size, interpolation=cv2.INTER_AREA
        )
        if not (weight > 0).any():
            return None
        found = match_template(b.astype(np.float32), templ, weight)
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
        return lstsq_affine(key, cur)

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
        if not np.isfinite(w1).all() or cc < ECC_MIN:
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
        if shift > ECC_SHIFT * size or sv.max() > ECC_STRETCH or sv.min() < 1 / ECC_STRETCH:
            return None
        self.ecc_scores = (self.ecc_scores + [float(cc)])[-30:]
        return g_ecc

    # ------------------------------------------------------------------ lost objects

    def _search(self, new: np.ndarray) -> None:
        """Look for the keyframe's object in the whole frame; restart the chain where ECC
        confirms it (``search``). Until then the object is absent."""
        if self.key is not self._first[0]:  # re-seeded: search for the keyframe's object
            self._set_key(self._first[0], self._first[1])
        self.visible = np.zeros((self.h, self.w), np.float32)
        self.amodal = self.visible
        if not self.textured:
            return
        scale = float(np.sqrt(abs(np.linalg.det(self.g[:, :2]))))
        img = new.astype(np.float32)
        for place in search.places(img, self.templ, self.tmask, scale):
            g = search.confirm(img, self.templ, self.tmask, self.t_origin, place, self.ecc_scores)
            if g is not None and self._restart(g):
                return

    def _restart(self, g: np.ndarray) -> bool:
        """Restart the chain with the keyframe -> frame affine map ``g``; False (and no
        change) if the object would not be in the frame there."""
        gx, gy = grid(self.h, self.w)
        dx, dy = affine_disp(invert_affine(g), gx, gy)
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


def _invert_motion(motion: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The motion for the new grid: ``motion`` lives on the known grid (p -> p + v(p));
    x = p + v(p)  =>  p = x - v(p), by fixed-point iteration."""
    d = motion
    for _ in range(2):
        d = cv2.remap(motion, gx - d[..., 0], gy - d[..., 1], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return d
