"""Finding a lost object again: the keyframe's appearance searched for in the whole frame.

Used by the flow chain once the object has left the picture (or shrunk to nothing):
masked template matching (normalised, so a change of light does not hide it) of the whole
object at a few sizes, and of its halves against the frame's edges (an object coming back
into the picture shows only a part of itself at first); the best candidates are then
confirmed by ECC alignment before the chain restarts there.
"""

from __future__ import annotations

import cv2
import numpy as np

from vision.flow.params import ECC_MIN, FIND_MIN, FIND_SCALES, SEARCH_PIXELS

Place = tuple[float, float, float]
"""(size relative to the keyframe's object, x, y of its template's origin) in frame px."""


def places(img: np.ndarray, templ: np.ndarray, tmask: np.ndarray, scale: float) -> list[Place]:
    """Where the keyframe's object may be in the grey float32 frame ``img``, best first:
    at most two places, each scoring at least ``FIND_MIN`` (worth confirming with ECC).

    ``templ``/``tmask``: the keyframe's object and its mask (0/255); ``scale``: its last
    known size relative to the keyframe.
    """
    th, tw = templ.shape
    r = min(1.0, float(np.sqrt(SEARCH_PIXELS / max(1.0, th * tw * scale * scale))))
    small = cv2.resize(img, None, fx=r, fy=r, interpolation=cv2.INTER_AREA) if r < 1 else img
    sh, sw = small.shape
    found: list[tuple[float, float, float, float]] = []  # (score, size, origin x, y)
    for rel in FIND_SCALES:
        f = rel * scale * r
        size = (max(4, round(tw * f)), max(4, round(th * f)))
        if size[0] >= sw or size[1] >= sh:
            continue
        t = cv2.resize(templ, size, interpolation=cv2.INTER_AREA)
        m = cv2.resize(tmask, size, interpolation=cv2.INTER_NEAREST)
        found += _match(small, t, m, rel * scale, 0, 0)
        if rel != 1.0:
            continue
        # Halves against the edges: entering from the right shows the left half, etc.
        pw, ph = size[0] // 2, size[1] // 2
        if size[0] < sw:
            found += _match(small[:, sw - size[0] :], t[:, :pw], m[:, :pw], scale, sw - size[0], 0)
            found += _match(small[:, : size[0]], t[:, pw:], m[:, pw:], scale, -pw, 0)
        if size[1] < sh:
            found += _match(small[sh - size[1] :], t[:ph], m[:ph], scale, 0, sh - size[1])
            found += _match(small[: size[1]], t[ph:], m[ph:], scale, 0, -ph)
    found.sort(reverse=True)
    out: list[Place] = []
    for score, s, mx, my in found[:2]:
        if score < FIND_MIN:
            break
        out.append((s, mx / r, my / r))
    return out


def confirm(
    img: np.ndarray,
    templ: np.ndarray,
    tmask: np.ndarray,
    origin: tuple[int, int],
    place: Place,
    ecc_scores: list[float],
) -> np.ndarray | None:
    """ECC-align the keyframe's object (``templ`` cut at ``origin`` of the keyframe) placed
    at ``place``: the keyframe -> frame affine map on a close enough fit, else None.

    Close enough: above ``ECC_MIN`` + 0.1 and not far below the correlations ECC found
    while the object was still tracked (``ecc_scores``), so a look-alike is not taken.
    """
    s, x, y = place
    tx, ty = origin
    w0 = np.array([[s, 0.0, x], [0.0, s, y]], np.float32)  # template -> frame
    full = np.full(img.shape, 255, np.uint8)
    crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 1e-4)
    try:
        cc, w1 = cv2.findTransformECCWithMask(
            templ, img, tmask, full, w0, cv2.MOTION_AFFINE, crit, 3
        )
    except cv2.error:
        return None
    floor = float(np.median(ecc_scores)) - 0.15 if ecc_scores else 0.0
    if not np.isfinite(w1).all() or cc < max(ECC_MIN + 0.1, floor):
        return None
    g = (np.vstack([w1, [0, 0, 1]]) @ np.array([[1, 0, -tx], [0, 1, -ty], [0, 0, 1.0]]))[:2]
    if abs(np.linalg.det(g[:, :2])) < 1e-3:
        return None
    return g


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
