"""Seconds per pipeline stage for a generated clip, against bare ffmpeg demux + remux.

    python benchmarks/pipeline.py [--seconds 60] [--size 1280x720]
    python benchmarks/pipeline.py --height 1080 --minutes 10   # 1080p25 H.264, stereo AAC

Prints each stage's time, the non-model stages' speed against realtime (every stage but
``separate``), the work folder's peak size on disk (sampled every 0.2 s, allocated blocks,
so sparse files count what they hold) and that peak per hour of footage, and the ratio of
sonomask's non-separation time to the time bare ffmpeg needs to demux the audio and remux
it with the picture copied (the floor any tool that touches the file must pay). The
separator is the classical one; ``--no-preview`` runs the job without the preview.
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

from disk import PeakSampler  # noqa: E402
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
    ap.add_argument("--height", type=int, help="a 16:9 clip this high (overrides --size)")
    ap.add_argument("--minutes", type=float, help="the clip's length (overrides --seconds)")
    ap.add_argument("--mode", default="isolate")
    ap.add_argument("--no-preview", action="store_true", help="run the job without a preview")
    ap.add_argument(
        "--clip",
        type=Path,
        help="keep the generated clip here, or use it if it exists (the same clip for runs "
        "on two commits)",
    )
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    if args.height:
        h = args.height
        w = int(round(h * 16 / 9 / 2)) * 2
    if args.minutes:
        args.seconds = args.minutes * 60.0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        scene = make_scene(duration=args.seconds, width=w, height=h, fps=25.0)
        src = args.clip.resolve() if args.clip else tmp / "clip.mp4"
        if src.is_file():
            print(f"using {src} ({src.stat().st_size / 1e6:.1f} MB)")
        else:
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
            **({"preview": False} if args.no_preview else {}),
        )
        settings = Settings.from_env()
        settings = Settings(**{**settings.__dict__, "workspace": tmp / "ws"})
        (tmp / "ws").mkdir()
        t0 = time.perf_counter()
        with PeakSampler(tmp / "ws") as peak:
            manifest = run_job(spec, settings=settings)
        total = time.perf_counter() - t0
        bare = min(bare_ffmpeg(src, tmp) for _ in range(2))
    timings = manifest["timings"]
    print(f"{'stage':>10} {'seconds':>8}")
    for name, sec in timings.items():
        print(f"{name:>10} {sec:8.2f}")
    non_sep = sum(v for k, v in timings.items() if k != "separate")
    print(f"{'total':>10} {total:8.2f}")
    print(
        f"non-model stages: {non_sep:.2f} s for {args.seconds:g} s of {w}x{h} "
        f"= {args.seconds / non_sep:.1f}x realtime"
    )
    peak.report(args.seconds)
    print(f"bare ffmpeg demux + remux: {bare:.2f} s")
    print(f"non-separation time: {non_sep:.2f} s = {non_sep / bare:.1f}x bare ffmpeg")
    print(
        f"separation ({manifest['backend']}): {timings['separate']:.2f} s "
        f"= {timings['separate'] / args.seconds:.3f} s per s of audio"
    )


if __name__ == "__main__":
    main()
