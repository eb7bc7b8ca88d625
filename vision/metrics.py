"""How good a tracked mask is, measured as the DAVIS benchmark does.

- J, region similarity: intersection over union of the predicted and true masks.
- F, boundary accuracy: F-measure of the mask outlines, a boundary pixel counting as
  matched when the other outline passes within ``bound_th`` of the image diagonal
  (DAVIS: 0.008, i.e. ~8 px at 854x480).

Both are 1 when both masks are empty (the object is correctly reported absent) and 0
when exactly one is. Kept here rather than in benchmarks/ so tests and the benchmark
score the same way.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

DAVIS_BOUND_TH = 0.008


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """J: IoU of two masks [H, W] (non-zero = object); 1 if both are empty."""
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    union = np.count_nonzero(p | g)
    if union == 0:
        return 1.0
    return np.count_nonzero(p & g) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel outline of a mask, as DAVIS's ``seg2bmap`` at the same resolution.

    A pixel is on the boundary when it differs from its right, lower or lower-right
    neighbour (the image's last row/column counts only its existing neighbours).
    """
    m = (np.asarray(mask) != 0).astype(np.uint8)
    e = np.zeros_like(m)
    s = np.zeros_like(m)
    se = np.zeros_like(m)
    e[:, :-1] = m[:, 1:]
    s[:-1, :] = m[1:, :]
    se[:-1, :-1] = m[1:, 1:]
    b = (m ^ e) | (m ^ s) | (m ^ se)
    b[-1, :] = m[-1, :] ^ e[-1, :]
    b[:, -1] = m[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = DAVIS_BOUND_TH) -> float:
    """F: boundary F-measure with DAVIS's tolerance (``bound_th`` x image diagonal, rounded up)."""
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    h, w = g.shape
    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(h, w))
    pb, gb = boundary_map(p), boundary_map(g)
    n_p, n_g = int(pb.sum()), int(gb.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    g_dil = cv2.dilate(gb, disk)
    p_dil = cv2.dilate(pb, disk)
    precision = float((pb & g_dil).sum()) / n_p
    recall = float((gb & p_dil).sum()) / n_g
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def score_sequence(
    pred: np.ndarray, gt: np.ndarray, skip: set[int] | None = None
) -> tuple[float, float]:
    """Mean (J, F) over the frames of [F, H, W] masks, leaving out ``skip`` (the keyframes,
    which the tracker was given)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ")
    idx = [i for i in range(len(gt)) if not skip or i not in skip]
    if not idx:
        return 1.0, 1.0
    j = float(np.mean([region_similarity(pred[i], gt[i]) for i in idx]))
    f = float(np.mean([boundary_f(pred[i], gt[i]) for i in idx]))
    return j, f
