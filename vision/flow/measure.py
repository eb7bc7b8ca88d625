"""What the pixels say: where flow can be trusted, and how well a motion or a template
explains a new frame (photometric error, template matching)."""

from __future__ import annotations

import cv2
import numpy as np

from vision.flow.params import TEMPLATE_PIXELS, TEX


def texture(gray: np.ndarray) -> np.ndarray:
    """How well flow is measured at each pixel, in [0, 1): the smaller eigenvalue of the
    local structure tensor (texture in both directions) against ``TEX``."""
    g = gray.astype(np.float32)
    ix = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
    iy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
    a = cv2.boxFilter(ix * ix, -1, (7, 7))
    b = cv2.boxFilter(ix * iy, -1, (7, 7))
    c = cv2.boxFilter(iy * iy, -1, (7, 7))
    lmin = 0.5 * (a + c - np.sqrt((a - c) ** 2 + 4 * b * b))
    lmin = np.maximum(lmin, 0)
    return lmin / (lmin + TEX)


def consistent(flow: np.ndarray, back: np.ndarray) -> np.ndarray:
    """Forward-backward check (Sundaram et al. 2010): flow and the reverse flow at its end
    point cancel out up to a tolerance growing with the motion. float32 0/1."""
    su = flow[..., 0] + back[..., 0]
    sv = flow[..., 1] + back[..., 1]
    mag = flow[..., 0] ** 2 + flow[..., 1] ** 2 + back[..., 0] ** 2 + back[..., 1] ** 2
    return (su * su + sv * sv <= 0.01 * mag + 0.5).astype(np.float32)


def photo_error(
    a: np.ndarray,
    b: np.ndarray,
    weight: np.ndarray,
    motion: np.ndarray,
    gx: np.ndarray,
    gy: np.ndarray,
) -> float:
    """Weighted squared grey-level error of the known frame's object moved onto the new
    frame: sum((w * diff)^2) / sum(w^2), the normalisation of ``match_template``."""
    moved = cv2.remap(b, gx + motion[..., 0], gy + motion[..., 1], cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REFLECT)  # fmt: skip
    wn = weight / float(weight.max())
    return float((((moved - a) * wn) ** 2).sum() / (wn**2).sum())


def match_translation(
    a: np.ndarray, b: np.ndarray, weight: np.ndarray
) -> tuple[float, float, float] | None:
    """Best translation (dx, dy, error) of the weighted object of a within b (px)."""
    rows = np.nonzero(weight.any(axis=1))[0]
    cols = np.nonzero(weight.any(axis=0))[0]
    ty0, ty1, tx0, tx1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    found = match_template(b, a[ty0:ty1, tx0:tx1], weight[ty0:ty1, tx0:tx1])
    if found is None:
        return None
    mx, my, err = found
    return mx - tx0, my - ty0, err


def match_template(
    b: np.ndarray, templ: np.ndarray, weight: np.ndarray
) -> tuple[float, float, float] | None:
    """Where (x, y of its top-left, sub-pixel) a weighted template fits best in b, and
    the fit's error sum((w * diff)^2) / sum(w^2) (as ``photo_error``).

    A coarse search on templates downscaled to ~``TEMPLATE_PIXELS`` pixels, then a
    +-2 px refinement at full resolution with a parabolic sub-pixel fit. None if the
    template does not fit inside b.
    """
    h, w = b.shape[:2]
    th, tw = templ.shape[:2]
    if th >= h or tw >= w:
        return None
    tmask = (weight / float(weight.max())).astype(np.float32)
    templ = np.ascontiguousarray(templ, dtype=np.float32)
    f = max(1.0, (th * tw / TEMPLATE_PIXELS) ** 0.5)
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
