"""Tracking accuracy (DAVIS J, F, J&F) and speed: synthetic scenes and real footage.

    python benchmarks/tracking.py [--size 854x480] [--trackers flow,flow-plain,copy] [--scenes a,b]
                                  [--keyframes 0] [--threads N] [--variant 1]
                                  [--synthetic-only | --real-only] [--objects a,b]
                                  [--half dev|heldout] [--json PATH]

Synthetic: each scene of ``benchmarks/tracking_scenes.py`` (real photographs composited
and moved, blurred, occluded, relit, then encoded with H.264 and decoded) is tracked from
the true mask of its keyframe(s) (default frame 0, as DAVIS's semi-supervised task), and
every other frame is scored against the truth. fps counts every frame of the clip over the
tracker's wall time at the given size (frames in, full-size masks out); "fps/CPU" over
the CPU time it used (all threads), which other work on a shared machine does not skew.

Real: each object of ``benchmarks/real_clips`` (Debian's opencv-doc videos, annotated by
hand with tool help on every 6th to 30th frame) is tracked at the worker's working size
(longest side 480) in two modes: ``rough``, from the loose first-frame outline an editor
draws (``clips.rough_mask``), and ``+key``, the same plus the true mask of one correction
keyframe (the annotated frame nearest the middle). Both are scored on the same annotated
frames, the two keyframes left out. The dev half is for tuning, the held-out half is not
to be tuned on; their means are reported apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.real_clips import clips as real  # noqa: E402
from benchmarks.tracking_scenes import SCENES, make_sequence  # noqa: E402
from vision.flow.refine import STATS as REFINE_STATS  # noqa: E402
from vision.metrics import boundary_f, region_similarity, score_sequence  # noqa: E402
from vision.propagate import copy_first, propagate  # noqa: E402

Tracker = Callable[[np.ndarray, dict[int, np.ndarray]], np.ndarray]


def _flow(frames: np.ndarray, keys: dict[int, np.ndarray]) -> np.ndarray:
    return propagate(frames, keys)[0]


def _flow_plain(frames: np.ndarray, keys: dict[int, np.ndarray]) -> np.ndarray:
    """The flow tracker without appearance refinement (its default before it was on)."""
    return propagate(frames, keys, refine=False)[0]


TRACKERS: dict[str, Tracker] = {"flow": _flow, "flow-plain": _flow_plain, "copy": copy_first}


def _keyframes(spec: str, n: int) -> list[int]:
    """'0' -> [0]; '0,40' -> [0, 40]; negative counts from the end."""
    out = []
    for part in spec.split(","):
        k = int(part)
        out.append(k % n)
    return sorted(set(out))


Result = tuple[float, float, float, float]  # J, F, fps, fps per CPU-second


def _refine_share(seconds: float) -> str:
    """The appearance refinement's share of a run's wall time, when it ran."""
    if not REFINE_STATS.frames:
        return ""
    return f"  refine {100 * REFINE_STATS.seconds / seconds:4.1f} %"


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
            REFINE_STATS.reset()
            t0, c0 = time.perf_counter(), time.process_time()
            masks = TRACKERS[tracker](seq.frames, key_masks)
            seconds = time.perf_counter() - t0
            cpu = max(time.process_time() - c0, 1e-9)
            j, f = score_sequence(masks, seq.masks, skip=set(keys))
            results[tracker][name] = (j, f, n / seconds, n / cpu)
            print(
                f"  {tracker:>5} {name:<13} J {j:.3f}  F {f:.3f}  J&F {(j + f) / 2:.3f}  "
                f"{n / seconds:6.1f} fps  {n / cpu:6.1f} fps/CPU{_refine_share(seconds)}",
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


# ----------------------------------------------------------------------------- real footage

MODES = ("rough", "+key")


@dataclass
class RealResult:
    """One object tracked one way: mean J and F over its scored frames, and speed."""

    j: float
    f: float
    fps: float  # frames tracked per second of wall time
    fps_cpu: float  # ... per second of CPU time (all threads): steadier on a shared machine
    frames: int  # frames tracked
    scored: int  # annotated frames scored

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def score_frames(
    pred: np.ndarray, truth: dict[int, np.ndarray], frames: list[int]
) -> tuple[float, float]:
    """Mean (J, F) of ``pred[t]`` against ``truth[t]`` over the listed frames only."""
    j = [region_similarity(pred[t], truth[t]) for t in frames]
    f = [boundary_f(pred[t], truth[t]) for t in frames]
    return float(np.mean(j)), float(np.mean(f))


def real_keyframes(seq: real.RealSequence, mode: str) -> dict[int, np.ndarray]:
    """The keyframes a mode gives the tracker: the rough first mask, plus for ``+key``
    the true mask of the correction frame."""
    keys = {0: seq.rough.astype(bool)}
    if mode == "+key":
        keys[seq.correction] = seq.truth[seq.correction].astype(bool)
    return keys


def run_real(
    trackers: list[str], objects: list[real.TrackObject], modes: tuple[str, ...] = MODES
) -> dict[str, dict[str, dict[str, RealResult]]]:
    """Track every object both ways; returns {tracker: {mode: {object: RealResult}}}."""
    results: dict[str, dict[str, dict[str, RealResult]]] = {
        t: {m: {} for m in modes} for t in trackers
    }
    for obj in objects:
        seq = real.sequence(obj)
        scored = seq.scored()
        n = len(seq.frames)
        for tracker in trackers:
            for mode in modes:
                keys = real_keyframes(seq, mode)
                REFINE_STATS.reset()
                t0, c0 = time.perf_counter(), time.process_time()
                masks = TRACKERS[tracker](seq.frames, keys)
                seconds = max(time.perf_counter() - t0, 1e-9)
                cpu = max(time.process_time() - c0, 1e-9)
                j, f = score_frames(masks, seq.truth, scored)
                res = RealResult(j, f, n / seconds, n / cpu, n, len(scored))
                results[tracker][mode][obj.name] = res
                print(
                    f"  {tracker:>5} {mode:<5} {obj.name:<13} ({obj.half}) J {j:.3f}  "
                    f"F {f:.3f}  J&F {res.jf:.3f}  {res.fps:6.1f} fps  {res.fps_cpu:6.1f} fps/CPU"
                    f"{_refine_share(seconds)}",
                    file=sys.stderr,
                )
    return results


def real_means(
    results: dict[str, dict[str, dict[str, RealResult]]], objects: list[real.TrackObject]
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """Per tracker, mode and half: mean J, F, J&F over its objects; fps and fps/CPU over
    all its frames (total frames / total seconds)."""
    halves = {o.name: o.half for o in objects}
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for tracker, per_mode in results.items():
        out[tracker] = {}
        for mode, per_obj in per_mode.items():
            out[tracker][mode] = {}
            for half in ("dev", "heldout"):
                rs = [r for name, r in per_obj.items() if halves[name] == half]
                if not rs:
                    continue
                j = float(np.mean([r.j for r in rs]))
                f = float(np.mean([r.f for r in rs]))
                frames = sum(r.frames for r in rs)
                seconds = sum(r.frames / r.fps for r in rs)
                cpu = sum(r.frames / r.fps_cpu for r in rs)
                out[tracker][mode][half] = {
                    "J": j, "F": f, "J&F": (j + f) / 2, "fps": frames / seconds,
                    "fps_cpu": frames / cpu, "objects": len(rs),
                }  # fmt: skip
    return out


def real_table(
    results: dict[str, dict[str, dict[str, RealResult]]], objects: list[real.TrackObject]
) -> str:
    """Markdown table of the real clips: one row per object, tracker and mode, then the
    means of each half."""
    lines = [
        "real clips at the working size (longest side 480)",
        "",
        "| object | half | tests | tracker | mode | J | F | J&F | fps | fps/CPU |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for obj in objects:
        for tracker, per_mode in results.items():
            for mode, per_obj in per_mode.items():
                if obj.name not in per_obj:
                    continue
                r = per_obj[obj.name]
                lines.append(
                    f"| {obj.name} | {obj.half} | {', '.join(obj.tests)} | {tracker} | {mode} "
                    f"| {r.j:.3f} | {r.f:.3f} | {r.jf:.3f} | {r.fps:.1f} | {r.fps_cpu:.1f} |"
                )
    for tracker, per_mode in real_means(results, objects).items():
        for mode, per_half in per_mode.items():
            for half, m in per_half.items():
                lines.append(
                    f"| **mean {half}** ({m['objects']}) | {half} | | {tracker} | {mode} "
                    f"| {m['J']:.3f} | {m['F']:.3f} | {m['J&F']:.3f} | {m['fps']:.1f} "
                    f"| {m['fps_cpu']:.1f} |"
                )
    return "\n".join(lines)


def real_json(
    results: dict[str, dict[str, dict[str, RealResult]]], objects: list[real.TrackObject]
) -> dict:
    """The real section as plain data for ``--json``."""
    per_object = {
        tracker: {
            mode: {name: {**asdict(r), "jf": r.jf} for name, r in per_obj.items()}
            for mode, per_obj in per_mode.items()
        }
        for tracker, per_mode in results.items()
    }
    halves = {o.name: {"half": o.half, "tests": list(o.tests), "clip": o.clip} for o in objects}
    return {"objects": halves, "results": per_object, "means": real_means(results, objects)}


def select_objects(names: str, half: str) -> list[real.TrackObject]:
    """The objects of ``objects.json`` named in ``names`` (all when empty) in ``half``
    (both when empty)."""
    objects = real.load_objects()
    wanted = [n for n in names.split(",") if n]
    unknown = set(wanted) - {o.name for o in objects}
    if unknown:
        raise SystemExit(f"unknown object(s) {sorted(unknown)}; see benchmarks/real_clips")
    return [o for o in objects if (not wanted or o.name in wanted) and (not half or o.half == half)]


# ----------------------------------------------------------------------------- main


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
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--synthetic-only", action="store_true", help="skip the real clips")
    only.add_argument("--real-only", action="store_true", help="skip the synthetic scenes")
    ap.add_argument("--objects", default="", help="real objects, comma list (default: all)")
    ap.add_argument("--half", default="", choices=["", "dev", "heldout"], help="real half")
    ap.add_argument("--json", default="", help="also write the results to this JSON file")
    args = ap.parse_args()
    if args.threads:
        import cv2

        cv2.setNumThreads(args.threads)
    w, h = (int(v) for v in args.size.lower().split("x"))
    trackers = [t for t in args.trackers.split(",") if t]
    unknown = set(trackers) - set(TRACKERS)
    if unknown:
        raise SystemExit(f"unknown tracker(s) {sorted(unknown)}; one of {', '.join(TRACKERS)}")
    report: dict = {}
    if not args.real_only:
        scenes = [s for s in args.scenes.split(",") if s]
        results = run((w, h), trackers, scenes, args.keyframes, args.variant)
        print(table(results, (w, h), args.variant))
        report["synthetic"] = {
            "size": [w, h],
            "variant": args.variant,
            "results": {
                tracker: {
                    name: dict(zip(("J", "F", "fps", "fps_cpu"), vals, strict=True))
                    for name, vals in res.items()
                }
                for tracker, res in results.items()
            },
        }
    if not args.synthetic_only:
        if not real.available():
            print(f"real clips skipped: {real.MISSING_HINT}", file=sys.stderr)
        else:
            objects = select_objects(args.objects, args.half)
            real_results = run_real(trackers, objects)
            if not args.real_only:
                print()
            print(real_table(real_results, objects))
            report["real"] = real_json(real_results, objects)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
