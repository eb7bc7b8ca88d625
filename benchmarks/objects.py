"""Several objects in one job against one job per object (issue 15), classical backend.

    python benchmarks/objects.py [--seconds 8] [--size 480x270] [--repeat 1]

On the generated trio scene (``examples/objects_scene.py``: three sounding on-screen
objects and an off-screen bell) it runs ``sonomask separate`` once with three ``--object``
groups and three times with one ``--mask`` each, as a user would (each a fresh process),
and prints: wall-clock seconds of each (and their ratio), seconds per stage, each
object's SI-SDR against its true sound in both (and the difference), and how far the
stems plus the residual are from the source. Numbers, not pass/fail: the machine's load
moves the times, so run it on a quiet machine and compare ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))

from objects_scene import LABELS, make_trio, write_trio  # noqa: E402

SONOMASK = str(Path(sys.executable).parent / "sonomask")


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    n = min(len(est), len(ref))
    est, ref = est[:n].astype(np.float64), ref[:n].astype(np.float64)
    a = est @ ref / (ref @ ref + 1e-12)
    e = est - a * ref
    return float(10 * np.log10((a * a * (ref @ ref)) / (e @ e + 1e-12)))


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([SONOMASK, "separate", *args, "--quiet"], check=True, capture_output=True)
    return time.perf_counter() - t0


def mono(path: Path) -> np.ndarray:
    x, _ = sf.read(str(path), dtype="float64", always_2d=True)
    return x.mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--size", default="480x270")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the best time counts")
    opts = ap.parse_args()
    w, h = (int(v) for v in opts.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        trio = make_trio(duration=opts.seconds, width=w, height=h)
        clip = root / "trio.mp4"
        write_trio(trio, clip)
        for lb, m in trio.first_masks().items():
            cv2.imwrite(str(root / f"{lb}.png"), m)
        common = [str(clip), "--separator", "classical"]
        groups = [a for lb in LABELS for a in ("--object", lb, "--mask", str(root / f"{lb}.png"))]
        t_many, t_ones = [], []
        for r in range(opts.repeat):
            t_many.append(run([*common, *groups, "--out", str(root / f"all{r}")]))
            t_ones.append(
                sum(
                    run(
                        [
                            *common,
                            "--mask",
                            str(root / f"{lb}.png"),
                            "--out",
                            str(root / f"{lb}{r}"),
                        ]
                    )
                    for lb in LABELS
                )
            )
        many, ones = min(t_many), min(t_ones)
        print(f"scene: {opts.seconds:g} s at {w}x{h}, 3 objects + 1 off-screen source")
        print(f"three-object job      {many:7.2f} s")
        print(f"three one-object jobs {ones:7.2f} s  (together)")
        print(f"speed-up              {ones / many:7.2f}x")
        timings = json.loads((root / "all0" / "job.json").read_text())["timings"]
        single = json.loads((root / f"{LABELS[0]}0" / "job.json").read_text())["timings"]
        print("stage seconds (three-object job | one one-object job):")
        for stage, t in timings.items():
            print(f"  {stage:9s} {t:7.2f} | {single.get(stage, float('nan')):7.2f}")
        print("SI-SDR against each true sound (dB): three-object | one-object | difference")
        for lb in LABELS:
            a = si_sdr(mono(root / "all0" / "objects" / lb / "target.wav"), trio.sounds[lb])
            b = si_sdr(mono(root / f"{lb}0" / "target.wav"), trio.sounds[lb])
            print(f"  {lb:6s} {a:7.2f} | {b:7.2f} | {a - b:+6.2f}")
        src = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(clip), "-f", "f32le", "-c:a", "pcm_f32le", "-"],
            capture_output=True,
            check=True,
        ).stdout
        src = np.frombuffer(src, np.float32).reshape(-1, 2)
        total = sf.read(str(root / "all0" / "residual.wav"), always_2d=True)[0]
        for lb in LABELS:
            total = (
                total
                + sf.read(str(root / "all0" / "objects" / lb / "target.wav"), always_2d=True)[0]
            )
        n = min(len(total), len(src))
        print(f"max |sum(stems) + residual - source| = {np.abs(total[:n] - src[:n]).max():.2e}")


if __name__ == "__main__":
    main()
