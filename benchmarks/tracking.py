"""Tracking accuracy (DAVIS J, F, J&F) and speed on sequences with exact ground truth.

    python benchmarks/tracking.py [--size 854x480] [--trackers flow,copy] [--scenes a,b]
                                  [--keyframes 0] [--threads N] [--variant 1]

Each scene of ``benchmarks/tracking_scenes.py`` (real photographs composited and moved,
blurred, occluded, relit, then encoded with H.264 and decoded) is tracked from the true
mask of its keyframe(s) (default frame 0, as DAVIS's semi-supervised task), and every
other frame is scored against the truth. fps counts every frame of the clip over the
tracker's wall time at the given size (frames in, full-size masks out); "fps/CPU" over
the CPU time it used (all threads), which other work on a shared machine does not skew.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tracking_scenes import SCENES, make_sequence  # noqa: E402
from vision.metrics import score_sequence  # noqa: E402
from vision.propagate import copy_first, propagate  # noqa: E402

Tracker = Callable[[np.ndarray, dict[int, np.ndarray]], np.ndarray]


def _flow(frames: np.ndarray, keys: dict[int, np.ndarray]) -> np.ndarray:
    return propagate(frames, keys)[0]


TRACKERS: dict[str, Tracker] = {"flow": _flow, "copy": copy_first}


def _keyframes(spec: str, n: int) -> list[int]:
    """'0' -> [0]; '0,40' -> [0, 40]; negative counts from the end."""
    out = []
    for part in spec.split(","):
        k = int(part)
        out.append(k % n)
    return sorted(set(out))


Result = tuple[float, float, float, float]  # J, F, fps, fps per CPU-second


def run(
    size: tuple[int, int], trackers: list[str], scenes: list[str], keyspec: str, variant: int = 0
) -> dict[str, dict[str, Result]]:
    """Score every tracker on every scene; returns {tracker: {scene: (J, F, fps, fps/CPU)}}."""
    results: dict[str, dict[str, Result]] = {t: {} for t in trackers}
    for name in scenes:
        seq = make_sequence(name, size, variant=variant)
        keys = _keyframes(keyspec, len(seq.frames))
        key_masks = {k: seq.masks[k].astype(bool) for k in keys}
        if not all(m.any() for m in key_masks.values()):
            raise SystemExit(f"{name}: the object is not visible on keyframe(s) {keys}")
        n = len(seq.frames)
        for tracker in trackers:
            t0, c0 = time.perf_counter(), time.process_time()
            masks = TRACKERS[tracker](seq.frames, key_masks)
            seconds = time.perf_counter() - t0
            cpu = max(time.process_time() - c0, 1e-9)
            j, f = score_sequence(masks, seq.masks, skip=set(keys))
            results[tracker][name] = (j, f, n / seconds, n / cpu)
            print(
                f"  {tracker:>5} {name:<13} J {j:.3f}  F {f:.3f}  J&F {(j + f) / 2:.3f}  "
                f"{n / seconds:6.1f} fps  {n / cpu:6.1f} fps/CPU",
                file=sys.stderr,
            )
    return results


def table(results: dict[str, dict[str, Result]], size: tuple[int, int], variant: int = 0) -> str:
    """Markdown table: one row per scene and tracker, then the means (fps: harmonic)."""
    lines = [
        f"tracking at {size[0]}x{size[1]}" + (f", held-out variant {variant}" if variant else ""),
        "",
        "| scene | tracker | J | F | J&F | fps | fps/CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    scenes = list(next(iter(results.values())))
    rows = [(name, tracker, *res[name]) for name in scenes for tracker, res in results.items()]
    for tracker, res in results.items():
        vals = np.array(list(res.values()))
        j, f = vals[:, 0].mean(), vals[:, 1].mean()
        fps, cpu = (len(vals) / np.sum(1.0 / vals[:, k]) for k in (2, 3))
        rows.append(("**mean**", tracker, j, f, fps, cpu))
    for name, tracker, j, f, fps, cpu in rows:
        lines.append(
            f"| {name} | {tracker} | {j:.3f} | {f:.3f} | {(j + f) / 2:.3f} | {fps:.1f} | {cpu:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="854x480", help="frame size WxH (default 854x480)")
    ap.add_argument("--trackers", default="flow,copy", help=f"comma list of {', '.join(TRACKERS)}")
    ap.add_argument("--scenes", default=",".join(SCENES), help="comma list of scenes")
    ap.add_argument("--keyframes", default="0", help="keyframe indices, e.g. 0 or 0,-1")
    ap.add_argument("--threads", type=int, default=0, help="OpenCV threads (0: its default)")
    ap.add_argument(
        "--variant", type=int, default=0, help="1: held-out set (same motions, other photos)"
    )
    args = ap.parse_args()
    if args.threads:
        import cv2

        cv2.setNumThreads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    trackers = [t for t in args.trackers.split(",") if t]
    unknown = set(trackers) - set(TRACKERS)
    if unknown:
        raise SystemExit(f"unknown tracker(s) {sorted(unknown)}; one of {', '.join(TRACKERS)}")
    scenes = [s for s in args.scenes.split(",") if s]
    results = run((w, h), trackers, scenes, args.keyframes, args.variant)
    print(table(results, (w, h), args.variant))


if __name__ == "__main__":
    main()
