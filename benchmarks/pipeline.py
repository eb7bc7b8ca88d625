"""Seconds per pipeline stage for a generated clip, against bare ffmpeg demux + remux.

    python benchmarks/pipeline.py [--seconds 60] [--size 1280x720]

Prints each stage's time and the ratio of sonomask's non-separation time to the time bare
ffmpeg needs to demux the audio and remux it with the picture copied (the floor any tool
that touches the file must pay).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from scene import first_mask, make_scene, write_clip  # noqa: E402

from worker.jobs.runner import run_job  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.spec import JobSpec  # noqa: E402


def bare_ffmpeg(src: Path, tmp: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-map",
            "0:a:0",
            "-c:a",
            "pcm_f32le",
            str(tmp / "bare.wav"),
        ],
        check=True,
    )
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-i",
            str(tmp / "bare.wav"),
            "-map",
            "0:v",
            "-map",
            "1:a",
            "-c:v",
            "copy",
            "-c:a",
            "aac",
            str(tmp / "bare.mp4"),
        ],
        check=True,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--mode", default="isolate")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scene = make_scene(duration=args.seconds, width=w, height=h, fps=25.0)
        src = tmp / "clip.mp4"
        t0 = time.perf_counter()
        write_clip(scene, src, stereo=True, crf=23)
        print(
            f"generated {args.seconds:g} s {w}x{h} clip in {time.perf_counter() - t0:.1f} s "
            f"({src.stat().st_size / 1e6:.1f} MB)"
        )
        cv2.imwrite(str(tmp / "mask.png"), first_mask(scene, "a"))
        spec = JobSpec.build(
            video=str(src),
            masks=[str(tmp / "mask.png")],
            mode=args.mode,
            out=str(tmp / "out"),
            separator="classical",
        )
        settings = Settings.from_env()
        settings = Settings(**{**settings.__dict__, "workspace": tmp / "ws"})
        t0 = time.perf_counter()
        manifest = run_job(spec, settings=settings)
        total = time.perf_counter() - t0
        bare = min(bare_ffmpeg(src, tmp) for _ in range(2))
    timings = manifest["timings"]
    print(f"{'stage':>10} {'seconds':>8}")
    for name, sec in timings.items():
        print(f"{name:>10} {sec:8.2f}")
    non_sep = sum(v for k, v in timings.items() if k != "separate")
    print(f"{'total':>10} {total:8.2f}")
    print(f"bare ffmpeg demux + remux: {bare:.2f} s")
    print(f"non-separation time: {non_sep:.2f} s = {non_sep / bare:.1f}x bare ffmpeg")
    print(
        f"separation ({manifest['backend']}): {timings['separate']:.2f} s "
        f"= {timings['separate'] / args.seconds:.3f} s per s of audio"
    )


if __name__ == "__main__":
    main()
