"""Shapes and maps on pixel grids: affine motions, their fits, and mask morphology.

Conventions: an affine *point map* ``m`` [2, 3] takes p to ``m @ [p, 1]``; an affine
*displacement* ``m`` [2, 3] moves p by ``m @ [p, 1]``. Window pixels q and frame pixels
p differ by the window's origin (x0, y0): p = q + (x0, y0).
"""

from __future__ import annotations

import cv2
import numpy as np

from vision.flow.params import MAX_SCALE_STEP, ROBUST_PX

_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinate grids (x, y), float32 [h, w], cached by shape."""
    g = _GRIDS.get((h, w))
    if g is None:
        if len(_GRIDS) > 64:
            _GRIDS.clear()
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        g = _GRIDS[(h, w)] = (gx, gy)
    return g


def grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """A uint8 mask dilated by ``radius`` px (a disc)."""
    if radius <= 0 or not mask.any():
        return mask
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, disc)


def edge_depth(obj: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the mask edge, the window border counting as edge."""
    return cv2.distanceTransform(
        cv2.copyMakeBorder(obj, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0), cv2.DIST_L2, 3
    )[1:-1, 1:-1]


def apply_affine(m: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The displacement field [h, w, 2] of an affine motion m ([2, 3]) on a pixel grid."""
    out = np.empty(gx.shape + (2,), np.float32)
    out[..., 0] = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
    out[..., 1] = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
    return out


def affine_disp(m: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Displacement (x, y) float32 of the affine point map m ([2, 3]): m @ [p, 1] - p."""
    dx = (m[0, 0] - 1.0) * gx + m[0, 1] * gy + m[0, 2]
    dy = m[1, 0] * gx + (m[1, 1] - 1.0) * gy + m[1, 2]
    return dx.astype(np.float32), dy.astype(np.float32)


def to_frame(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """A displacement affine on window pixels q re-expressed on frame pixels p = q + o."""
    out = m.astype(np.float64).copy()
    out[:, 2] = m[:, 2] - m[:, 0] * x0 - m[:, 1] * y0
    return out


def to_window(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Inverse of ``to_frame``."""
    out = m.astype(np.float64).copy()
    out[:, 2] = m[:, 2] + m[:, 0] * x0 + m[:, 1] * y0
    return out


def invert_affine(m: np.ndarray) -> np.ndarray:
    """The inverse of the affine point map m ([2, 3])."""
    lin = np.linalg.inv(m[:, :2])
    return np.concatenate([lin, (-lin @ m[:, 2])[:, None]], axis=1)


def lstsq_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares affine [2, 3] taking src points [N, 2] to dst points [N, 2]."""
    if len(src) < 6:
        return None
    design = np.concatenate([src, np.ones((len(src), 1))], axis=1)
    coef, *_ = np.linalg.lstsq(design, dst, rcond=None)
    m = coef.T
    if not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-6:
        return None
    return m


def plausible(m: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """The affine motion with its stretch limited to what one frame plausibly holds.

    The singular values of I + L are clamped to [1/MAX_SCALE_STEP, MAX_SCALE_STEP]
    (rotation untouched), keeping the object's centre where m moves it: a fit to garbage
    flow could otherwise blow the object up or squash it.
    """
    u, sv, vt = np.linalg.svd(np.eye(2) + m[:, :2].astype(np.float64))
    if not np.isfinite(sv).all():
        sv = np.ones(2)
    clamped = np.clip(sv, 1.0 / MAX_SCALE_STEP, MAX_SCALE_STEP)
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


def fit_affine(flow: np.ndarray, weight: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
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
        wt = w0 / (1.0 + (res / ROBUST_PX) ** 2)
    a = coef.T  # rows: u, v; columns: x - cx, y - cy, 1
    out = np.empty((2, 3), np.float32)
    out[:, :2] = a[:, :2]
    out[:, 2] = a[:, 2] - a[:, 0] * cx - a[:, 1] * cy
    return out
