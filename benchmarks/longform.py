"""Wall time and peak memory of the main job on long clips: memory must not grow with length.

    python benchmarks/longform.py [--minutes 10 60] [--size 320x180 | --height 1080]
                                  [--fps 25] [--work DIR] [--keep] [--json FILE]

For each length it generates a clip with ffmpeg's lavfi sources only (H.264 ultrafast yuv420p
picture of a scrolling grey test pattern with one red square (40x40 at 320x180, the same share
of the height at other sizes) moving periodically; stereo
48 kHz FLAC audio of 880 Hz beep bursts over low pink noise; Matroska), writes the square's
frame-0 mask as a PNG, and runs the job exactly as a user would:

    sonomask separate CLIP --mask MASK.png --out OUT --quiet

(the ``sonomask`` script next to this interpreter, ``SONOMASK_WORKSPACE`` under the work
folder). While it runs, psutil samples every 0.2 s the RSS of the sonomask Python process and
the summed RSS of its whole process tree (Python + ffmpeg children); the kernel's own peak
(``ru_maxrss`` from ``wait4``: the largest single process, between samples included) is
reported too. The job's work folder is sampled as well (``disk.PeakSampler``: its largest size on
disk and the files that held it). Prints wall time, realtime factor and peaks per clip, the per-stage timings from
``job.json``, and the ratio of the longest clip's peaks to the shortest's against the 1.2x goal
(PASS/FAIL is printed; the exit status is non-zero only when a job fails). Generation time is
printed separately and is not part of the job's wall time.

Each clip's files (a 60-minute job's workspace takes 20+ GB) are deleted right after its run,
before the next clip is generated, unless ``--keep``. Minutes may be fractions (``--minutes
0.5 1`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import psutil
import soundfile as sf
from disk import PeakSampler

MIB = 1024 * 1024
GOAL = 1.2  # the longest clip's peak RSS may be at most this many times the shortest's
SAMPLE_S = 0.2
OBJ = 40  # side of the square object, pixels, at 320x180 (scaled with the picture's height)


def object_side(h: int) -> int:
    """The square's side: 40 px at 180 px high, the same share of a larger picture (at 1080p
    a 40 px square is 10 px at the working size, too small to follow on the test pattern)."""
    return max(OBJ, round(OBJ * h / 180 / 2) * 2)


WS_BYTES_PER_S = 6e6  # rough workspace size per clip second at 320x180 (60 min: ~20 GB)


@dataclass
class Run:
    """One clip's numbers, as printed and written to --json."""

    minutes: float
    seconds: float
    gen_s: float = 0.0
    clip_mb: float = 0.0
    wall_s: float = 0.0
    realtime: float = 0.0
    peak_rss_python_mib: float = 0.0
    peak_rss_tree_mib: float = 0.0
    maxrss_kernel_mib: float = 0.0
    samples: int = 0
    returncode: int = 0
    folder_peak_gb: float = 0.0
    work_peak_gb: float = 0.0  # without the outputs (benchmarks/disk.py)
    work_at_peak: dict[str, int] = field(default_factory=dict)
    source_audio_s: float = 0.0
    target_s: float = 0.0
    outputs_ok: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = ""
    warnings: list[str] = field(default_factory=list)


def object_origin(w: int, h: int) -> tuple[int, int]:
    """Top-left corner of the square at t=0 (the centre of the picture)."""
    side = object_side(h)
    return (w - side) // 2, (h - side) // 2


def generate(path: Path, seconds: float, w: int, h: int, fps: float) -> None:
    """Write the clip with lavfi sources only, so an hour takes about a minute on 2 cores."""
    x0, y0 = object_origin(w, h)
    side = object_side(h)
    ax, ay = (w - side) // 3, (h - side) // 3
    video = (
        f"testsrc2=s={w}x{h}:r={fps},hue=s=0,scroll=horizontal=0.001[bg];"
        f"color=c=red:s={side}x{side}:r={fps},"
        f"drawgrid=w={side // 4}:h={side // 4}:t={max(2, side // 20)}:c=yellow[obj];"
        f"[bg][obj]overlay=x='{x0}+{ax}*sin(2*PI*t/8)':y='{y0}+{ay}*sin(2*PI*t/5)'"
        ":shortest=1,format=yuv420p"
    )
    beep = "sin(2*PI*880*t)*lt(mod(t\\,1)\\,0.25)"  # 0.25 s burst every second
    audio = (
        f"aevalsrc=exprs='0.3*{beep}|0.2*{beep}':s=48000,aformat=channel_layouts=stereo[b];"
        "anoisesrc=c=pink:a=0.02:r=48000,aformat=channel_layouts=stereo[n];"
        "[b][n]amix=inputs=2:normalize=0"
    )
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i", audio]
        + ["-t", f"{seconds:.3f}", "-c:v", "libx264", "-preset", "ultrafast"]
        + ["-pix_fmt", "yuv420p", "-c:a", "flac", str(path)],
        check=True,
    )


def write_mask(path: Path, w: int, h: int) -> None:
    """The frame-0 mask: white where the square starts."""
    x0, y0 = object_origin(w, h)
    mask = np.zeros((h, w), np.uint8)
    side = object_side(h)
    mask[y0 : y0 + side, x0 : x0 + side] = 255
    cv2.imwrite(str(path), mask)


def audio_duration(path: Path) -> float:
    """The first audio stream's duration by ffprobe (Matroska keeps it in a DURATION tag)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-of", "json"]
        + ["-show_entries", "stream=duration:stream_tags=DURATION:format=duration", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    info = json.loads(out)
    stream = info["streams"][0]
    if stream.get("duration") not in (None, "N/A"):
        return float(stream["duration"])
    tag = stream.get("tags", {}).get("DURATION")
    if tag:
        hh, mm, ss = tag.split(":")
        return int(hh) * 3600 + int(mm) * 60 + float(ss)
    return float(info["format"]["duration"])


def rss_sample(pid: int) -> tuple[int, int]:
    """(RSS of ``pid``, summed RSS of ``pid`` and all its descendants), bytes."""
    try:
        root = psutil.Process(pid)
        own = root.memory_info().rss
        kids = root.children(recursive=True)
    except psutil.Error:
        return 0, 0
    total = own
    for k in kids:
        try:
            total += k.memory_info().rss
        except psutil.Error:
            pass  # finished between listing and reading
    return own, total


def run_job(run: Run, clip: Path, mask: Path, folder: Path) -> None:
    """Run ``sonomask separate`` as a user would, sampling memory until it exits."""
    sonomask = Path(sys.executable).parent / "sonomask"
    env = {
        **os.environ,
        "SONOMASK_WORKSPACE": str(folder / "ws"),
        "SONOMASK_MAX_VIDEO_SECONDS": str(max(4 * 3600, int(run.seconds) + 60)),
    }
    out = folder / "out"
    log = folder / "sonomask.log"
    cmd = [str(sonomask), "separate", str(clip), "--mask", str(mask), "--out", str(out)]
    peak_own = peak_tree = 0
    (folder / "ws").mkdir(exist_ok=True)
    with log.open("wb") as logf, PeakSampler(folder / "ws", every=1.0) as disk:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd + ["--quiet"], env=env, stdout=logf, stderr=subprocess.STDOUT)
        while True:
            # wait4 rather than poll: its rusage carries the kernel's peak RSS
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            own, tree = rss_sample(proc.pid)
            peak_own, peak_tree = max(peak_own, own), max(peak_tree, tree)
            run.samples += 1
            time.sleep(SAMPLE_S)
        run.wall_s = time.perf_counter() - t0
    run.folder_peak_gb = disk.peak / 1e9
    run.work_peak_gb, run.work_at_peak = disk.work_peak / 1e9, disk.at_work_peak
    disk.report(run.seconds)
    proc.returncode = run.returncode = os.waitstatus_to_exitcode(status)
    run.realtime = run.seconds / run.wall_s
    run.peak_rss_python_mib = peak_own / MIB
    run.peak_rss_tree_mib = peak_tree / MIB
    run.maxrss_kernel_mib = usage.ru_maxrss / 1024  # KiB on Linux
    if run.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-20:]
        sys.stdout.flush()
        print(f"sonomask failed (exit {run.returncode}):", *tail, sep="\n  ", file=sys.stderr)
        return
    manifest = json.loads((out / "job.json").read_text())
    run.timings = manifest.get("timings", {})
    run.backend = str(manifest.get("backend", ""))
    run.warnings = list(manifest.get("warnings", []))
    for w in run.warnings:  # e.g. the tracker lost the object: the timings would mislead
        print(f"  job warning: {w}", flush=True)
    run.source_audio_s = audio_duration(clip)
    target = out / "target.wav"
    if target.exists():
        run.target_s = sf.info(str(target)).duration
    run.outputs_ok = target.exists() and abs(run.target_s - run.source_audio_s) <= 0.1
    if not run.outputs_ok:
        sys.stdout.flush()
        print(
            f"bad output: target.wav {run.target_s:.3f} s vs source audio "
            f"{run.source_audio_s:.3f} s",
            file=sys.stderr,
        )


def report(runs: list[Run]) -> dict[str, float | bool]:
    """Print the tables and the 1.2x verdict; return the ratios for --json."""
    print()
    print(
        f"{'minutes':>8} {'gen s':>7} {'wall s':>8} {'x realtime':>10} "
        f"{'py RSS MiB':>11} {'tree RSS MiB':>13} {'kernel max MiB':>15} {'samples':>8} "
        f"{'folder GB':>9} {'work GB':>8}"
    )
    for r in runs:
        print(
            f"{r.minutes:8g} {r.gen_s:7.1f} {r.wall_s:8.1f} {r.realtime:10.2f} "
            f"{r.peak_rss_python_mib:11.0f} {r.peak_rss_tree_mib:13.0f} "
            f"{r.maxrss_kernel_mib:15.0f} {r.samples:8d} {r.folder_peak_gb:9.2f} "
            f"{r.work_peak_gb:8.2f}"
        )
    stages = list(dict.fromkeys(k for r in runs for k in r.timings))
    if stages:
        print()
        print(f"{'stage s':>8}" + "".join(f" {r.minutes:>9g}m" for r in runs))
        for s in stages:
            print(f"{s:>8}" + "".join(f" {r.timings.get(s, float('nan')):10.2f}" for r in runs))
    done = [r for r in runs if r.returncode == 0]
    if len(done) < 2:
        return {}
    small = min(done, key=lambda r: r.seconds)
    large = max(done, key=lambda r: r.seconds)
    ratio_py = large.peak_rss_python_mib / small.peak_rss_python_mib
    ratio_tree = large.peak_rss_tree_mib / small.peak_rss_tree_mib
    ok = ratio_py <= GOAL and ratio_tree <= GOAL
    print()
    print(f"peak RSS {large.minutes:g} min / {small.minutes:g} min:")
    print(
        f"  python {ratio_py:.2f}x, tree {ratio_tree:.2f}x (goal <= {GOAL}x): "
        + ("PASS" if ok else "FAIL")
    )
    return {"ratio_python": ratio_py, "ratio_tree": ratio_tree, "goal": GOAL, "pass": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10.0, 60.0])
    ap.add_argument("--size", default="320x180")
    ap.add_argument("--height", type=int, help="a 16:9 clip this high (overrides --size)")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "sonomask-longform")
    ap.add_argument("--keep", action="store_true", help="keep clips, workspaces and outputs")
    ap.add_argument("--json", type=Path, help="write all numbers to this file")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    if args.height:
        w, h = int(round(args.height * 16 / 9 / 2)) * 2, args.height
        args.size = f"{w}x{h}"
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"work folder {args.work}; RSS sampled every {SAMPLE_S} s with psutil")
    runs: list[Run] = []
    for minutes in args.minutes:
        run = Run(minutes=minutes, seconds=minutes * 60)
        runs.append(run)
        folder = args.work / f"{minutes:g}min"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        free = shutil.disk_usage(folder).free
        if free < run.seconds * WS_BYTES_PER_S:
            print(
                f"warning: {free / 1e9:.1f} GB free under {folder}, the job may need "
                f"~{run.seconds * WS_BYTES_PER_S / 1e9:.0f} GB",
                file=sys.stderr,
            )
        clip, mask = folder / "clip.mkv", folder / "mask.png"
        t0 = time.perf_counter()
        generate(clip, run.seconds, w, h, args.fps)
        run.gen_s = time.perf_counter() - t0
        run.clip_mb = clip.stat().st_size / 1e6
        write_mask(mask, w, h)
        print(
            f"{minutes:g} min: generated {w}x{h} {args.fps:g} fps clip in {run.gen_s:.1f} s "
            f"({run.clip_mb:.0f} MB); running sonomask separate ...",
            flush=True,
        )
        try:
            run_job(run, clip, mask, folder)
        finally:
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        print(
            f"{minutes:g} min: exit {run.returncode}, wall {run.wall_s:.1f} s, "
            f"peak RSS python {run.peak_rss_python_mib:.0f} MiB, tree "
            f"{run.peak_rss_tree_mib:.0f} MiB, target.wav {run.target_s:.2f} s "
            f"(source {run.source_audio_s:.2f} s)",
            flush=True,
        )
        if run.returncode != 0:
            break  # a failed job makes the longer ones pointless
    verdict = report(runs)
    if args.json:
        result = {
            "size": args.size,
            "fps": args.fps,
            "clips": [asdict(r) for r in runs],
            **verdict,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep and not any(args.work.iterdir()):
        args.work.rmdir()
    if any(r.returncode != 0 or not r.outputs_ok for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
