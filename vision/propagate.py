"""Masks across frames: carry the user's keyframe mask(s) through the clip.

The tracker is weight-free so a job runs on any machine. Each step, from a frame whose
mask is known to its neighbour, works in a window around the object and proposes a few
motions for it, keeping the one that best explains the new frame (lowest colour error
of the object's pixels moved onto it):

- flow: dense DIS optical flow (OpenCV) fitted with a robust affine model weighted
  toward pixels deep inside the mask (DIS blurs object and background motion together
  near the edge), plus the smoothed part of the flow the affine model misses (limbs,
  bending), or the same motion as a similarity or a rigid motion;
- jump: the object translated to where masked template matching finds it (jumps larger
  than DIS follows, flat-coloured objects it sees no texture in);
- anchor: the keyframe's own object found again by template matching (turned by up to
  24 degrees when nothing else explains the frame), which re-anchors the chain to the
  keyframe mask and sheds the error accumulated so far.

Only the object's own motion moves the mask, so its trailing edge does not smear over
the still background it uncovers. Steps are composed into one map back to the keyframe
and the keyframe mask is sampled through it once per frame, so neither interpolation
blur nor per-step rounding accumulates.

Frames before the first keyframe are tracked backward, after the last forward; frames
between two keyframes blend both propagated soft masks by temporal distance.

Work at the working resolution the caller chose (frames downscaled to <= ~480 px);
resize the result with ``vision.masks.resize_masks``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import cv2
import numpy as np

from vision.errors import MaskError

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], short description)."""

# A propagated mask whose area grows past this multiple of its keyframe's area has
# probably leaked into the background; shrinking below 1/this is reported as well.
_AREA_DRIFT_FACTOR = 4.0


def _validate(frames: np.ndarray, keyframes: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Check shapes and indices; return keyframe masks as bool [h, w], sorted by index."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise MaskError(f"frames must be a uint8 array [F, H, W, 3], got shape {shape}")
    if frames.dtype != np.uint8:
        raise MaskError(f"frames must be uint8, got {frames.dtype}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise MaskError("the clip has no frames to track the mask through")
    if not keyframes:
        raise MaskError("no keyframe mask given; draw the object on at least one frame")
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


# Motion is estimated in a window around the object, at full resolution (DIS finest scale
# 0: the half-resolution presets under-estimate motion by a few percent, which accumulates
# over a long chain) as long as the window has at most this many pixels; larger windows
# are downscaled to it, so a step costs about the same for small and large objects.
_MAX_WORK_PIXELS = 40_000
_DEEP = 10.0  # work px from the mask edge beyond which DIS flow is no longer mixed with background
_SIGMA = 5.0  # work px, spatial reach of the depth-weighted flow smoothing
_TRUSTED_SUPPORT = 0.5  # fraction of the chain's best fit support at which a fit is fully trusted
_ROBUST_PX = 1.0  # flow residual (work px) at which a pixel's say in the affine fit halves
_MAX_SCALE_STEP = 1.03  # most a fitted motion may stretch or shrink the object in one frame
_SWITCH = 0.8  # template translation replaces the flow motion when its error is this much lower
_ANCHOR = 1.1  # re-anchor to the keyframe when its fit is at most this much worse
_POOR = 3.0  # a step error this many times the noise level sends the anchor looking for turns
_MIN_FLOOR = 4.0  # noise level never assumed below this (identical frames would give 0)
_ANGLES = (-24.0, -18.0, -12.0, -6.0, 6.0, 12.0, 18.0, 24.0)  # degrees tried when it does
_TEMPLATE_PIXELS = 1600  # coarse template search runs on templates downscaled to this size
_MIN_FLOW_SIDE = 16  # DIS needs a few 8-px patches per side
_FAR = -1.0e5  # map coordinate that lands outside every frame (remap border -> 0)


class _Chain:
    """Carries one keyframe's mask step by step through neighbouring frames (module doc).

    The window (downscaled to at most ``_MAX_WORK_PIXELS``) makes a step cost about the
    same for any object size. When the object runs out of the frame the fit loses
    support and the last trusted motion carries on, so the mask leaves with the object
    instead of a sliver freezing at the border.
    """

    def __init__(self, key_mask: np.ndarray, key_frame: np.ndarray) -> None:
        h, w = key_mask.shape
        self.h, self.w = h, w
        self.key = key_mask.astype(np.float32)
        rows = np.nonzero(key_mask.any(axis=1))[0]
        cols = np.nonzero(key_mask.any(axis=0))[0]
        self.key_box = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
        y0, y1, x0, x1 = self.key_box
        self.key_rgb = np.ascontiguousarray(key_frame[y0:y1, x0:x1])
        self.key_obj = key_mask[y0:y1, x0:x1].astype(np.uint8)
        self.gx, self.gy = np.meshgrid(
            np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
        )
        # Where each pixel of the current frame came from in the keyframe, stored as a
        # displacement (keyframe position - pixel position); _FAR outside the window.
        self.disp_x = np.zeros((h, w), np.float32)
        self.disp_y = np.zeros((h, w), np.float32)
        self.current = key_mask.copy()
        self.prev_affine: np.ndarray | None = None  # last trusted object motion, frame px
        self.best_support = 0.0
        self.floor = np.inf  # lowest step error seen: the clip's noise level, roughly
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.dis.setFinestScale(0)
        # FAST's patch stride and iteration count at full resolution: as accurate inside
        # the object as MEDIUM here, and ~1.5x quicker.
        self.dis.setPatchStride(4)
        self.dis.setGradientDescentIterations(16)

    def _window(self) -> tuple[int, int, int, int]:
        ys = np.nonzero(self.current.any(axis=1))[0]
        xs = np.nonzero(self.current.any(axis=0))[0]
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        margin = max(24, int(0.6 * max(y1 - y0, x1 - x0)))
        y0, x0 = max(0, y0 - margin), max(0, x0 - margin)
        y1, x1 = min(self.h, y1 + margin), min(self.w, x1 + margin)
        return y0, y1, x0, x1

    def _trust(
        self, weight: np.ndarray, obj: np.ndarray, edges: tuple[bool, ...], s: float
    ) -> float:
        """How far to believe this frame's fit, in [0, 1].

        Only an object cut by the frame border loses support (its depth weights shrink as
        it leaves); the summed weight against the best seen in this chain then says how
        much of it is still visible. Anywhere else the fit is trusted fully.
        """
        support = float(weight.sum()) * s
        self.best_support = max(self.best_support, support)
        top, bottom, left, right = edges
        cut = (
            (top and obj[0].any())
            or (bottom and obj[-1].any())
            or (left and obj[:, 0].any())
            or (right and obj[:, -1].any())
        )
        if not cut:
            return 1.0
        return min(1.0, support / (_TRUSTED_SUPPORT * self.best_support))

    def _motion(
        self,
        a: np.ndarray,
        b: np.ndarray,
        obj: np.ndarray,
        to_frame: np.ndarray,
        edges: tuple[bool, ...],
    ) -> tuple[str, np.ndarray]:
        """The chosen motion of one step, at work resolution.

        a, b: the window of the known and the new frame, RGB uint8 at work resolution;
        work pixel (i, j) is frame pixel to_frame @ [j, i, 1]. Returns ("field", d) with
        d [h, w, 2] such that new pixel x came from x - d(x) (work pixels), or
        ("anchor", A): the keyframe mask moved by the affine map A [2, 3] (keyframe to
        new-frame pixels).
        """
        h, w = obj.shape
        zero = np.zeros((h, w, 2), np.float32)
        # Depth of each mask pixel: distance to the mask edge, the frame border counting as
        # an edge (an object leaving the frame has unreliable flow there).
        dist = _depth(obj)
        if not dist.any():
            return "field", zero
        weight = np.minimum(dist, _DEEP) ** 2
        # Candidates are judged on every mask pixel alike: the edge is where a wrong
        # motion of a flat-coloured object shows (its interior matches itself anywhere).
        judge = (dist > 0).astype(np.float32)
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        af, bf = a.astype(np.float32), b.astype(np.float32)
        sx, sy = float(to_frame[0, 0]), float(to_frame[1, 1])
        trust = self._trust(weight, obj, edges, (sx * sy) ** 2)

        motion: np.ndarray | None = None
        chosen = np.zeros((2, 3))  # the motion's affine part in frame pixels
        err = np.inf
        if min(h, w) >= _MIN_FLOW_SIDE:  # else too small for DIS's patches
            flow = self.dis.calc(
                cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY), None
            )
            fitted = _plausible(_fit_affine(flow, weight, gx, gy), weight, gx, gy)
            affine_frame = _affine_to_frame(fitted, to_frame)
            if self.prev_affine is not None and trust < 1.0:
                affine_frame = trust * affine_frame + (1.0 - trust) * self.prev_affine
            affine = _affine_to_work(affine_frame, to_frame)
            # What the affine model misses (a limb, a bending neck) is added back, smoothed
            # with the same depth weights so edge pixels barely count; away from the mask
            # the residual fades to 0 and the affine motion alone carries the edge.
            num = cv2.GaussianBlur(
                (flow - _apply(fitted, gx, gy)) * weight[..., None], (0, 0), _SIGMA
            )
            den = cv2.GaussianBlur(weight, (0, 0), _SIGMA)
            residual = num / (den + 0.05 * float(den.max()) + 1e-6)[..., None]
            motion = _apply(affine, gx, gy) + trust * residual
            err = _photo_error(af, bf, judge, motion, gx, gy)
            chosen = affine_frame
            # The same motion as a similarity and as a rigid motion (nearest rotation, with
            # and without uniform scale, no remainder): flow on weakly textured objects
            # bends and shrinks them a little every step, and a rigid object is better
            # served by a rigid motion.
            if trust >= 1.0:
                for keep_scale in (True, False):
                    simple = _rigid(affine, weight, gx, gy, keep_scale)
                    simple_motion = _apply(simple, gx, gy)
                    simple_err = _photo_error(af, bf, judge, simple_motion, gx, gy)
                    if simple_err <= err:
                        motion, err = simple_motion, simple_err
                        chosen = _affine_to_frame(simple, to_frame)

        if trust >= 1.0:  # no jumps or re-anchoring while the object leaves the frame
            jump = _match_translation(af, bf, judge)
            if jump is not None and (motion is None or jump[2] < _SWITCH * err):
                dx, dy, err = jump
                motion = np.empty((h, w, 2), np.float32)
                motion[..., 0], motion[..., 1] = dx, dy
                chosen = np.array([[0.0, 0.0, dx * sx], [0.0, 0.0, dy * sy]])
            self.prev_affine = chosen
            self.floor = min(self.floor, max(err, _MIN_FLOOR))
            anchor = self._anchor(bf, to_frame, (0.0,))
            if anchor is not None and anchor[1] > _ANCHOR * err and err > _POOR * self.floor:
                # Nothing explains this frame well: maybe the object turned (a shaken drum).
                turned = self._anchor(bf, to_frame, _ANGLES)
                if turned is not None and turned[1] < anchor[1]:
                    anchor = turned
            if anchor is not None and anchor[1] <= _ANCHOR * err:
                return "anchor", anchor[0]
        elif self.prev_affine is None:
            self.prev_affine = chosen
        if motion is None:
            return "field", zero

        # motion lives on the known grid (p -> p + v(p)); invert it for the new grid:
        # x = p + v(p)  =>  p = x - v(p), solved by fixed-point iteration.
        d = motion
        for _ in range(2):
            d = cv2.remap(
                motion,
                gx - d[..., 0],
                gy - d[..., 1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        return "field", d

    def _anchor(
        self, b: np.ndarray, to_frame: np.ndarray, angles: tuple[float, ...]
    ) -> tuple[np.ndarray, float] | None:
        """Where the keyframe's object, turned by one of ``angles`` (degrees), best fits in
        the new window: (A, error) with A [2, 3] mapping keyframe to new-frame pixels, or
        None if it does not fit inside the window."""
        sx, sy = float(to_frame[0, 0]), float(to_frame[1, 1])
        kh, kw = self.key_obj.shape
        size = (max(1, round(kw / sx)), max(1, round(kh / sy)))
        if size != (kw, kh):
            templ = cv2.resize(self.key_rgb, size, interpolation=cv2.INTER_AREA)
            obj = (
                cv2.resize(self.key_obj * 255, size, interpolation=cv2.INTER_AREA) >= 128
            ).astype(np.float32)
        else:
            templ, obj = self.key_rgb, self.key_obj.astype(np.float32)
        if not obj.any():
            return None
        templ = templ.astype(np.float32)
        scale = np.diag([sx, sy])
        ky0, _, kx0, _ = self.key_box
        key0 = np.array([kx0 + 0.5 * sx - 0.5, ky0 + 0.5 * sy - 0.5])  # template (0, 0)
        origin = to_frame[:, 2]
        centre = np.array([(size[0] - 1) / 2, (size[1] - 1) / 2])
        best: tuple[np.ndarray, float] | None = None
        for angle in angles:
            if angle:
                side = int(np.ceil(np.hypot(*size))) | 1
                canvas_centre = np.array([(side - 1) / 2, (side - 1) / 2])
                m = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
                m[:, 2] += canvas_centre - centre
                t_img = cv2.warpAffine(templ, m, (side, side), flags=cv2.INTER_LINEAR)
                t_obj = cv2.warpAffine(obj, m, (side, side), flags=cv2.INTER_LINEAR)
                rot = m[:, :2]
            else:
                t_img, t_obj, rot, canvas_centre = templ, obj, np.eye(2), centre
            if t_img.shape[0] >= b.shape[0] or t_img.shape[1] >= b.shape[1]:
                continue
            found = _match_template(b, t_img, t_obj)
            if found is None or (best is not None and found[2] >= best[1]):
                continue
            mx, my, err = found
            # keyframe p -> template q = S^-1 (p - key0) -> canvas rot (q - c) + c'
            # -> new frame origin + S (m + canvas); composed into one affine map.
            lin = scale @ rot @ np.linalg.inv(scale)
            shift = (
                origin
                + scale @ (np.array([mx, my]) + canvas_centre)
                - scale @ rot @ centre
                - lin @ key0
            )
            best = (np.concatenate([lin, shift[:, None]], axis=1), err)
        return best

    def step(self, rgb_known: np.ndarray, rgb_new: np.ndarray) -> np.ndarray:
        """Move to the next frame; return its soft mask float32 [h, w] in [0, 1]."""
        soft = np.zeros((self.h, self.w), np.float32)
        if not self.current.any():
            return soft
        y0, y1, x0, x1 = self._window()
        wh, ww = y1 - y0, x1 - x0
        edges = (y0 == 0, y1 == self.h, x0 == 0, x1 == self.w)
        a, b = rgb_known[y0:y1, x0:x1], rgb_new[y0:y1, x0:x1]
        obj = self.current[y0:y1, x0:x1].astype(np.uint8)
        scale = max(1.0, (wh * ww / _MAX_WORK_PIXELS) ** 0.5)
        if scale > 1.0:
            size = (max(1, round(ww / scale)), max(1, round(wh / scale)))
            sx, sy = ww / size[0], wh / size[1]
            a = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
            b = cv2.resize(b, size, interpolation=cv2.INTER_AREA)
            obj = (cv2.resize(obj * 255, size, interpolation=cv2.INTER_AREA) >= 128).astype(
                np.uint8
            )
            to_frame = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])
        else:
            sx = sy = 1.0
            a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
            to_frame = np.array([[1.0, 0.0, float(x0)], [0.0, 1.0, float(y0)]])
        kind, d = self._motion(a, b, obj, to_frame, edges)

        if kind == "anchor":  # back to the keyframe mask, moved by the affine map d
            inv = cv2.invertAffineTransform(d.astype(np.float64))
            key_x = inv[0, 0] * self.gx + inv[0, 1] * self.gy + np.float32(inv[0, 2])
            key_y = inv[1, 0] * self.gx + inv[1, 1] * self.gy + np.float32(inv[1, 2])
            self.disp_x = (key_x - self.gx).astype(np.float32)
            self.disp_y = (key_y - self.gy).astype(np.float32)
            soft = self._sample(key_x.astype(np.float32), key_y.astype(np.float32))
            self.current = soft > 0.5
            return soft

        if scale > 1.0:
            d = cv2.resize(d, (ww, wh), interpolation=cv2.INTER_LINEAR)
            d[..., 0] *= sx
            d[..., 1] *= sy
        # Compose with the displacement back to the keyframe: new pixel x came from
        # p = x - d(x), which came from p + disp(p). Outside the frame the displacement
        # is extended as it is at the border, so an object keeps sliding out (or in).
        px = self.gx[y0:y1, x0:x1] - d[..., 0]
        py = self.gy[y0:y1, x0:x1] - d[..., 1]
        new_x = np.full((self.h, self.w), _FAR, np.float32)
        new_y = np.full((self.h, self.w), _FAR, np.float32)
        rep = {"borderMode": cv2.BORDER_REPLICATE}
        new_x[y0:y1, x0:x1] = cv2.remap(self.disp_x, px, py, cv2.INTER_LINEAR, **rep) - d[..., 0]
        new_y[y0:y1, x0:x1] = cv2.remap(self.disp_y, px, py, cv2.INTER_LINEAR, **rep) - d[..., 1]
        self.disp_x, self.disp_y = new_x, new_y
        soft[y0:y1, x0:x1] = self._sample(
            self.gx[y0:y1, x0:x1] + new_x[y0:y1, x0:x1], self.gy[y0:y1, x0:x1] + new_y[y0:y1, x0:x1]
        )
        self.current = soft > 0.5
        return soft

    def _sample(self, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
        """The keyframe mask at keyframe positions (map_x, map_y): soft, in [0, 1].

        Bilinear for smooth edges, but never below 0.51 where the nearest keyframe pixel
        is object, so a one-pixel-thin part (a mic stand) survives half-pixel positions.
        """
        border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": 0.0}
        soft = cv2.remap(self.key, map_x, map_y, cv2.INTER_LINEAR, **border)
        nearest = cv2.remap(self.key, map_x, map_y, cv2.INTER_NEAREST, **border)
        return np.maximum(soft, 0.51 * nearest)


def _depth(obj: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the mask edge, the image border counting as edge."""
    return cv2.distanceTransform(
        cv2.copyMakeBorder(obj, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0), cv2.DIST_L2, 3
    )[1:-1, 1:-1]


def _apply(m: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The displacement field [h, w, 2] of an affine motion m ([2, 3]) on a pixel grid."""
    return np.stack(
        [m[0, 0] * gx + m[0, 1] * gy + m[0, 2], m[1, 0] * gx + m[1, 1] * gy + m[1, 2]], axis=-1
    ).astype(np.float32)


def _plausible(m: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The affine motion with its stretch limited to what one frame plausibly holds.

    The singular values of I + L are clamped to [1/_MAX_SCALE_STEP, _MAX_SCALE_STEP]
    (rotation untouched), keeping the object's centre where m moves it. Flow on weakly
    textured objects otherwise shrinks them a little every step, and a fit to garbage
    flow can blow them up.
    """
    u, sv, vt = np.linalg.svd(np.eye(2) + m[:, :2].astype(np.float64))
    if not np.isfinite(sv).all():
        sv = np.ones(2)
    clamped = np.clip(sv, 1.0 / _MAX_SCALE_STEP, _MAX_SCALE_STEP)
    if np.array_equal(clamped, sv):
        return m
    return _with_linear(m, u @ np.diag(clamped) @ vt, weight, gx, gy)


def _rigid(
    m: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray, keep_scale: bool
) -> np.ndarray:
    """The rotation nearest to the affine motion m (times its mean scale if keep_scale),
    moving the object's centre as m does."""
    lin = np.eye(2) + m[:, :2].astype(np.float64)
    u, sv, vt = np.linalg.svd(lin)
    rot = u @ vt
    if np.linalg.det(rot) < 0:  # a reflection is no motion: keep the translation only
        rot = np.eye(2)
    elif keep_scale:
        rot = rot * float(np.sqrt(sv[0] * sv[1]))
    return _with_linear(m, rot, weight, gx, gy)


def _with_linear(
    m: np.ndarray, lin: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray
) -> np.ndarray:
    """Affine displacement with transform ``lin`` that moves the object's (weighted)
    centre exactly as m does."""
    total = float(weight.sum())
    c = np.array([(weight * gx).sum() / total, (weight * gy).sum() / total])
    moved = m[:, :2].astype(np.float64) @ c + m[:, 2]  # displacement of the centre
    out = np.empty((2, 3), np.float32)
    out[:, :2] = lin - np.eye(2)
    out[:, 2] = moved - (lin - np.eye(2)) @ c
    return out


def _photo_error(
    a: np.ndarray,
    b: np.ndarray,
    weight: np.ndarray,
    motion: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
) -> float:
    """Weighted squared colour error of the known frame's object moved onto the new frame.

    Same normalisation as ``_match_template``: sum((w * diff)^2) / sum(w^2).
    """
    moved = cv2.remap(
        b, gx + motion[..., 0], gy + motion[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    wn = weight / float(weight.max())
    return float((((moved - a) * wn[..., None]) ** 2).sum() / (wn**2).sum())


def _match_translation(
    a: np.ndarray, b: np.ndarray, weight: np.ndarray
) -> tuple[float, float, float] | None:
    """Best translation (dx, dy, error) of the weighted object of a within b (work px)."""
    rows = np.nonzero(weight.any(axis=1))[0]
    cols = np.nonzero(weight.any(axis=0))[0]
    ty0, ty1, tx0, tx1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    found = _match_template(b, a[ty0:ty1, tx0:tx1], weight[ty0:ty1, tx0:tx1])
    if found is None:
        return None
    mx, my, err = found
    return mx - tx0, my - ty0, err


def _match_template(
    b: np.ndarray,
    templ: np.ndarray,
    weight: np.ndarray,
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


def _affine_to_frame(m: np.ndarray, to_frame: np.ndarray) -> np.ndarray:
    """Re-express a displacement field v(q) = m @ [q, 1] on work pixels q in frame pixels.

    With p = S q + o: v_frame(p) = S v(q) = S L S^-1 (p - o) + S t.
    """
    s = to_frame[:, :2]
    o = to_frame[:, 2]
    lin = s @ m[:, :2].astype(np.float64) @ np.linalg.inv(s)
    return np.concatenate([lin, (s @ m[:, 2] - lin @ o)[:, None]], axis=1)


def _affine_to_work(m: np.ndarray, to_frame: np.ndarray) -> np.ndarray:
    """Inverse of ``_affine_to_frame``."""
    s = to_frame[:, :2]
    o = to_frame[:, 2]
    s_inv = np.linalg.inv(s)
    lin = s_inv @ m[:, :2] @ s
    return np.concatenate([lin, (s_inv @ (m[:, 2] + m[:, :2] @ o))[:, None]], axis=1).astype(
        np.float32
    )


def _fit_affine(flow: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Weighted, outlier-robust affine fit flow(x, y) ~ A @ [x, y, 1]; A is [2, 3].

    A few reweighting rounds (Cauchy weights on the residual) keep an occluder or a limb
    from dragging the object's overall motion; a small ridge pulls the linear part toward
    zero so thin or tiny masks degrade to a translation instead of an unstable fit.
    """
    sel = weight[::2, ::2] > 0
    w0 = weight[::2, ::2][sel].astype(np.float64)
    x = gx[::2, ::2][sel].astype(np.float64)
    y = gy[::2, ::2][sel].astype(np.float64)
    u = flow[::2, ::2, 0][sel].astype(np.float64)
    v = flow[::2, ::2, 1][sel].astype(np.float64)
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
    box = cv2.morphologyEx(binary[y0:y1, x0:x1], cv2.MORPH_CLOSE, _KERNEL)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(box, connectivity=8)
    if count > 2:
        areas = stats[1:, cv2.CC_STAT_AREA]
        min_area = min(max(3, int(0.01 * ref_area)), int(areas.max()))
        keep = np.concatenate([[0], areas >= min_area]).astype(np.uint8)
        box = keep[labels]
    binary[y0:y1, x0:x1] = box
    return binary


_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


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


def _warnings(masks: np.ndarray, keys: dict[int, np.ndarray], ref_area: np.ndarray) -> list[str]:
    """Human-readable notes on frames where the object was lost or the mask drifted."""
    n = masks.shape[0]
    areas = masks.reshape(n, -1).sum(axis=1, dtype=np.int64)
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
        exited = any(
            (a > 0 and _touches_border(masks[a - 1]))
            or (b < n - 1 and _touches_border(masks[b + 1]))
            for a, b in runs
        )
        word = "frame" if len(lost) == 1 else "frames"
        hint = " (it left the frame)" if exited else ""
        out.append(f"object lost{hint} on {word} {_fmt_runs(runs)}")
    drift = [
        i
        for i in range(n)
        if areas[i] > 0
        and (
            areas[i] > _AREA_DRIFT_FACTOR * ref_area[i]
            or (areas[i] * _AREA_DRIFT_FACTOR < ref_area[i] and not _touches_border(masks[i]))
        )
    ]
    if drift:
        out.append(
            f"tracked mask area changed more than {_AREA_DRIFT_FACTOR:g}x from its keyframe on "
            f"frames {_fmt_runs(_runs(drift))}; check the preview, add a keyframe there if wrong"
        )
    return out


def propagate(
    frames: np.ndarray,
    keyframes: Mapping[int, np.ndarray],
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Track keyframe mask(s) through every frame with dense optical flow.

    frames: uint8 [F, h, w, 3] RGB at the working resolution. keyframes: frame index ->
    mask [h, w] (non-zero = object). Returns (masks uint8 [F, h, w] 1 = object, warnings).

    Frames before the first keyframe are tracked backward from it, frames after the last
    forward from it; frames between two keyframes blend both soft masks by distance (or
    take the one that still sees the object if the other lost it). Keyframes keep the
    user's mask exactly. Losing the object is not an error: it is reported in warnings
    ("object lost on frames 40–55") and the caller decides.
    """
    keys = _validate(frames, keyframes)
    n, h, w, _ = frames.shape
    masks = np.zeros((n, h, w), dtype=np.uint8)
    ref_area = np.zeros(n, dtype=np.float64)  # area of the keyframe each frame leans on
    order = list(keys)
    for k in order:
        masks[k] = keys[k]
    if len(order) == n:  # every frame is a keyframe (or the clip is one frame)
        return masks, []

    # Flow computations: one per non-keyframe for each side that reaches it.
    total = (order[0]) + (n - 1 - order[-1])
    total += sum(2 * (b - a - 1) for a, b in zip(order, order[1:], strict=False))
    done = 0
    step = max(1, total // 100)

    def tick(msg: str) -> None:
        nonlocal done
        done += 1
        if progress is not None and (done % step == 0 or done == total):
            progress(min(1.0, done / total), msg)

    def chain(start: int, stop: int, step_dir: int, msg: str):
        """Yield (t, soft, binary) walking from keyframe ``start`` toward ``stop`` (exclusive)."""
        tracker = _Chain(keys[start], frames[start])
        area = float(keys[start].sum())
        for t in range(start + step_dir, stop, step_dir):
            soft = tracker.step(frames[t - step_dir], frames[t])
            tick(msg)
            yield t, soft, _clean(soft, area)

    # Before the first keyframe: backward only.
    first, last = order[0], order[-1]
    for t, _, binary in chain(first, -1, -1, f"tracking backward from frame {first}"):
        masks[t] = binary
        ref_area[t] = keys[first].sum()
    # After the last keyframe: forward only.
    for t, _, binary in chain(last, n, 1, f"tracking forward from frame {last}"):
        masks[t] = binary
        ref_area[t] = keys[last].sum()
    # Between two keyframes: forward from a, backward from b, blended by distance.
    for a, b in zip(order, order[1:], strict=False):
        if b - a < 2:
            continue
        # Forward soft masks, kept as uint8 crops of their non-zero box to bound memory.
        fwd: dict[int, tuple[int, int, int, int, np.ndarray]] = {}
        for t, soft, binary in chain(a, b, 1, f"tracking frames {a}\u2013{b}"):
            if binary.any():
                rows = np.nonzero(soft.any(axis=1))[0]
                cols = np.nonzero(soft.any(axis=0))[0]
                y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                crop = np.clip(soft[y0:y1, x0:x1] * 255.0 + 0.5, 0, 255).astype(np.uint8)
                fwd[t] = (y0, y1, x0, x1, crop)
        area_a, area_b = keys[a].sum(), keys[b].sum()
        for t, soft, binary in chain(b, a, -1, f"tracking frames {a}\u2013{b}"):
            wa = (b - t) / (b - a)  # weight of keyframe a: 1 next to a, 0 next to b
            from_a = fwd.pop(t, None)
            if from_a is None:  # the forward chain lost it: the backward one alone
                blended = soft
            else:
                y0, y1, x0, x1, crop = from_a
                soft_a = np.zeros_like(soft)
                soft_a[y0:y1, x0:x1] = crop.astype(np.float32) / 255.0
                blended = wa * soft_a + (1.0 - wa) * soft if binary.any() else soft_a
            masks[t] = _clean(blended, float(max(area_a, area_b)))
            ref_area[t] = wa * area_a + (1.0 - wa) * area_b
    for k in order:
        ref_area[k] = keys[k].sum()
    if progress is not None and done != total:
        progress(1.0, "tracking done")
    return masks, _warnings(masks, keys, ref_area)


def copy_first(frames: np.ndarray, keyframes: Mapping[int, np.ndarray]) -> np.ndarray:
    """Baseline "tracker": every frame gets its nearest keyframe's mask unchanged.

    Returns uint8 [F, h, w] (1 = object), validated like ``propagate``. It is what no
    tracking at all scores in tests and benchmarks, and a safe choice for shots where the
    object does not move (ties go to the earlier keyframe).
    """
    keys = _validate(frames, keyframes)
    n, h, w, _ = frames.shape
    order = np.array(list(keys))
    nearest = order[np.argmin(np.abs(np.arange(n)[:, None] - order[None, :]), axis=1)]
    masks = np.empty((n, h, w), dtype=np.uint8)
    for t in range(n):
        masks[t] = keys[int(nearest[t])]
    return masks
