"""Make the real clips' true masks from the hints in ``objects.json``, and sheets to check them.

    python benchmarks/real_clips/annotate.py [--objects cup,box] [--review DIR] [--no-save]

A person wrote hints for each annotated frame (working-size pixels, see below) reading
coordinates off gridded, zoomed frames; this script turns them into masks with OpenCV's
GrabCut, writes them to ``truth.npz`` and draws review sheets (each annotated frame zoomed
on the object, the mask tinted with its outline, the box and strokes drawn, then the rough
first-frame mask) that the person looks at, frame by frame, correcting the hints where the
outline is wrong. The masks are only as good as that look: GrabCut does the pixel work,
the person decides.

Why GrabCut: it fits colour models of object and background from a loose box and a few
strokes and cuts along image edges, so a handful of numbers per frame gives an outline
that follows hair, fingers and legs; a drawn polygon would not. Clips from a fixed camera
(``"method": "bgsub"``) first take the difference from the clip's median background as
the probable object (twice the threshold: surely object), which separates a walker from
a path of the same grey.

Hints per annotated frame (all optional except ``box``):

- ``box`` [x0, y0, x1, y1]: the object lies inside; everything outside is background.
- ``poly`` [[x, y], ...]: a rough outline; inside the box but outside it is probably
  background (without it the whole box is probably object).
- ``band`` N, with ``poly``: the outline was traced point by point (a box's corners, a
  figure against a background as dark as her hair) and is right to about N px; GrabCut
  only moves the edge within N px of it.
- ``fg`` / ``bg``: strokes, lists of [x, y] points (3 px wide), surely object / surely not.
- ``cut``: strokes that separate the object from a touching look-alike (another walker);
  they count as background and only the parts connected to the ``fg`` strokes (or the
  largest part) are kept.
- ``add`` / ``erase``: polygons (one, or a list) forced into / out of the mask afterwards,
  a last manual fix where GrabCut cannot see an edge (a sheet of paper held out).
- ``absent``: true when the object is not in view (an empty mask).

Per object: ``method`` ("grabcut", default, or "bgsub" with ``background`` [start, stop,
step], the frames whose median is the empty scene, and ``threshold``), ``iters``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from benchmarks.real_clips.clips import (  # noqa: E402
    TRUTH_FILE,
    TrackObject,
    decode,
    load_objects,
    load_truth,
    rough_mask,
    save_truth,
)

STROKE = 3


def _pts(points: list) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)


def _strokes(shape: tuple[int, int], strokes: list, width: int = STROKE) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for s in strokes:
        cv2.polylines(out, [_pts(s)], False, 1, width)
        if len(s) == 1:
            cv2.circle(out, tuple(int(v) for v in s[0]), width, 1, -1)
    return out.astype(bool)


def _polys(shape: tuple[int, int], polys: list) -> np.ndarray:
    """Filled polygons: one [[x, y], ...] or a list of them."""
    if polys and np.ndim(polys[0]) == 1:
        polys = [polys]
    out = np.zeros(shape, np.uint8)
    for p in polys:
        cv2.fillPoly(out, [_pts(p)], 1)
    return out.astype(bool)


def background(frames: np.ndarray, spec: list[int]) -> np.ndarray:
    """The empty scene of a fixed camera: the per-pixel median of some frames, float32."""
    start, stop, step = spec
    return np.median(np.asarray(frames[start:stop:step], dtype=np.float32), axis=0)


def segment(
    frame: np.ndarray, hint: dict, bg_model: np.ndarray | None = None, threshold: float = 30.0
) -> np.ndarray:
    """One frame's mask (uint8, 1 = object) from its hints (module doc)."""
    h, w = frame.shape[:2]
    if hint.get("absent"):
        return np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in hint["box"])
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    inside = np.zeros((h, w), bool)
    inside[y0:y1, x0:x1] = True
    gc = np.full((h, w), cv2.GC_BGD, np.uint8)
    if "poly" in hint and hint.get("band"):
        band = int(hint["band"])
        poly = _polys((h, w), hint["poly"]).astype(np.uint8)
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1))
        gc[cv2.dilate(poly, disk) > 0] = cv2.GC_PR_BGD
        gc[poly > 0] = cv2.GC_PR_FGD
        gc[cv2.erode(poly, disk) > 0] = cv2.GC_FGD
        gc[~inside] = cv2.GC_BGD
    elif "poly" in hint:
        prob = _polys((h, w), hint["poly"]) & inside
        gc[inside] = cv2.GC_PR_BGD
        gc[prob] = cv2.GC_PR_FGD
    elif bg_model is not None:
        diff = np.abs(frame.astype(np.float32) - bg_model).max(axis=2)
        moving = cv2.morphologyEx(
            (diff > threshold).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)
        ).astype(bool)
        gc[inside] = cv2.GC_PR_BGD
        gc[inside & moving] = cv2.GC_PR_FGD
        gc[inside & moving & (diff > 2 * threshold)] = cv2.GC_FGD
    else:
        gc[inside] = cv2.GC_PR_FGD
    fg = _strokes((h, w), hint.get("fg", []))
    bgs = _strokes((h, w), hint.get("bg", []))
    cuts = _strokes((h, w), hint.get("cut", []), 2)
    gc[fg & inside] = cv2.GC_FGD
    gc[bgs | cuts] = cv2.GC_BGD
    if (gc == cv2.GC_FGD).any() or (gc == cv2.GC_PR_FGD).any():
        bgr = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(bgr, gc, None, bgd, fgd, int(hint.get("iters", 5)), cv2.GC_INIT_WITH_MASK)
    mask = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    mask = _keep_parts(mask, fg, bool(hint.get("cut")), hint.get("min_part", 0.05))
    if "add" in hint:
        mask[_polys((h, w), hint["add"])] = 1
    if "erase" in hint:
        mask[_polys((h, w), hint["erase"])] = 0
    return mask


def _keep_parts(mask: np.ndarray, fg: np.ndarray, seeded_only: bool, min_part: float) -> np.ndarray:
    """Drop specks: keep the parts touching an ``fg`` stroke and, unless the object was
    cut from a neighbour, any part at least ``min_part`` of the largest."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 2:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    seeded = set(np.unique(labels[fg & (mask > 0)]).tolist()) - {0}
    keep = np.zeros(count, np.uint8)
    if seeded:
        keep[list(seeded)] = 1
    if not seeded_only or not seeded:
        big = areas >= min_part * areas.max()
        keep[1:][big] = 1
    return keep[labels]


def annotate(obj: TrackObject, spec: dict) -> dict[int, np.ndarray]:
    """Every hinted frame's mask for one object: clip frame -> uint8 [h, w]."""
    frames = decode(obj.clip)
    bg_model = None
    if spec.get("method") == "bgsub":
        bg_model = background(frames, spec["background"])
    thr = float(spec.get("threshold", 30.0))
    out = {}
    for t, hint in sorted(obj.hints.items()):
        hint = {"iters": spec.get("iters", 5), **hint}
        out[t] = segment(np.asarray(frames[t]), hint, bg_model, thr)
    return out


# ----------------------------------------------------------------------------- review


def overlay(
    frame: np.ndarray, mask: np.ndarray, hint: dict, label: str, tile: tuple[int, int] = (720, 540)
) -> np.ndarray:
    """A review tile (BGR, ``tile`` px): the mask tinted with its outline, the box and the
    strokes, zoomed on the object so a small walker is as easy to check as a large cup."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = _view(mask, hint, (w, h), tile[0] / tile[1])
    s = tile[0] / (x1 - x0)
    crop = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2BGR)
    big = cv2.resize(crop, tile, interpolation=cv2.INTER_CUBIC)
    m = cv2.resize(mask[y0:y1, x0:x1], tile, interpolation=cv2.INTER_NEAREST)
    tint = big.copy()
    tint[m > 0] = (0.6 * tint[m > 0] + 0.4 * np.array([0, 255, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(tint, contours, -1, (0, 0, 255), 1)

    def to_tile(points: list) -> np.ndarray:
        return ((_pts(points) - np.array([x0, y0])) * s).astype(np.int32)

    if "box" in hint:
        bx0, by0, bx1, by1 = hint["box"]
        cv2.polylines(tint, [to_tile([[bx0, by0], [bx1, by0], [bx1, by1], [bx0, by1]])], True,
                      (255, 128, 0), 1)  # fmt: skip
    for key, colour in (("fg", (0, 255, 255)), ("bg", (255, 0, 255)), ("cut", (255, 255, 255))):
        for stroke in hint.get(key, []):
            cv2.polylines(tint, [to_tile(stroke)], False, colour, 1)
    cv2.putText(tint, label, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 255), 2)
    return tint


def _view(mask: np.ndarray, hint: dict, size: tuple[int, int], aspect: float):
    """The part of the frame a review tile shows: the object and its box with a margin,
    at least a quarter of the frame's width, at the tile's aspect ratio, inside the frame."""
    w, h = size
    ys, xs = np.nonzero(mask)
    boxes = []
    if xs.size:
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    if "box" in hint:
        boxes.append(tuple(hint["box"]))
    if not boxes:
        return 0, 0, w, h
    bx0 = min(b[0] for b in boxes)
    by0 = min(b[1] for b in boxes)
    bx1 = max(b[2] for b in boxes)
    by1 = max(b[3] for b in boxes)
    cw = max((bx1 - bx0) * 1.4, (by1 - by0) * 1.4 * aspect, w / 4)
    cw = min(cw, w, h * aspect)
    ch = cw / aspect
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    x0 = int(round(min(max(0, cx - cw / 2), w - cw)))
    y0 = int(round(min(max(0, cy - ch / 2), h - ch)))
    return x0, y0, x0 + int(round(cw)), y0 + int(round(ch))


def sheet(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles in a grid."""
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    out = np.zeros((rows * h, min(cols, len(tiles)) * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return out


def review(obj: TrackObject, masks: dict[int, np.ndarray], folder: Path, per_sheet: int = 6):
    """Write review sheets for one object: every annotated frame, then the rough mask."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = decode(obj.clip)
    tiles = [
        overlay(np.asarray(frames[t]), masks[t], obj.hints.get(t, {}), f"{obj.name} #{t}")
        for t in sorted(masks)
    ]
    first = min(masks)
    tiles.append(
        overlay(np.asarray(frames[first]), rough_mask(masks[first]), {}, f"rough #{first}")
    )
    written = []
    for k in range(0, len(tiles), per_sheet):
        path = folder / f"{obj.name}-{k // per_sheet}.png"
        cv2.imwrite(str(path), sheet(tiles[k : k + per_sheet], 3 if per_sheet > 4 else 2))
        written.append(path)
    return written


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", default="", help="comma list (default: all)")
    ap.add_argument("--review", default="/tmp/sonomask-annotate", help="folder for review sheets")
    ap.add_argument("--no-save", action="store_true", help="do not update truth.npz")
    args = ap.parse_args()
    specs = json.loads((HERE / "objects.json").read_text())["objects"]
    objects = load_objects()
    wanted = [o for o in args.objects.split(",") if o] or [o.name for o in objects]
    unknown = set(wanted) - {o.name for o in objects}
    if unknown:
        raise SystemExit(f"unknown object(s) {sorted(unknown)}")
    all_masks: dict[str, dict[int, np.ndarray]] = {}
    for obj in objects:
        if obj.name in wanted:
            masks = annotate(obj, specs[obj.name])
            for path in review(obj, masks, Path(args.review)):
                print(path)
            all_masks[obj.name] = masks
        elif TRUTH_FILE.exists():
            try:
                all_masks[obj.name] = load_truth(obj)
            except KeyError:
                pass
    if not args.no_save:
        save_truth(all_masks)
        print(f"{TRUTH_FILE} ({TRUTH_FILE.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
