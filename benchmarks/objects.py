"""Several objects in one job against one job per object (issue 15), classical backend.

    python benchmarks/objects.py [--seconds 8] [--size 480x270] [--repeat 1] [--queued]

On the generated trio scene (``examples/objects_scene.py``: three sounding on-screen
objects and an off-screen bell) it runs ``sonomask separate`` once with three ``--object``
groups and three times with one ``--mask`` each, as a user would (each a fresh process),
and prints: wall-clock seconds of each (and their ratio), seconds per stage, each
object's SI-SDR against its true sound in both (and the difference), and how far the
stems plus the residual are from the source. Numbers, not pass/fail: the machine's load
moves the times, so run it on a quiet machine and compare ratios.

``--queued``: the same jobs through the queue instead: a private ``redis-server`` and one
``sonomask worker`` (Celery prefork, concurrency 1, queues cpu and gpu) are started, and
each job is ``sonomask submit`` then ``sonomask wait``; a job's time runs from the submit
to the end of the wait, one job at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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


class Local:
    """``sonomask separate`` in a fresh process, as a user would run it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> Local:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def job(self, args: list[str], name: str) -> tuple[float, Path]:
        """Seconds one job took, and its output folder."""
        out = self.root / name
        t0 = time.perf_counter()
        subprocess.run(
            [SONOMASK, "separate", *args, "--out", str(out), "--quiet"],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - t0, out


class Queued:
    """The jobs through the queue: a private Redis, one Celery prefork worker (concurrency
    1, queues cpu and gpu), each job submitted then waited for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        url = f"redis://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "SONOMASK_WORKSPACE": str(root / "jobs"),
            "SONOMASK_BROKER_URL": f"{url}/0",
            "SONOMASK_RESULT_BACKEND": f"{url}/1",
        }
        self.env.pop("SONOMASK_MODEL", None)
        self.port = port
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Queued:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(redis)
        self._wait(lambda: _redis_up(self.port), "redis-server")
        log = self.root / "worker.log"
        worker = subprocess.Popen(
            [SONOMASK, "worker", "--queues", "cpu,gpu", "--concurrency", "1"],
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(worker)
        self._wait(lambda: b"ready." in log.read_bytes(), "the worker", worker)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                if p is self.procs[-1] and len(self.procs) > 1:
                    os.killpg(p.pid, signal.SIGTERM)
                else:
                    p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    @staticmethod
    def _wait(cond: Callable[[], bool], what: str, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + 120
        while not cond():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not start")
            time.sleep(0.2)

    def job(self, args: list[str], name: str) -> tuple[float, Path]:
        """Seconds from the submit to the end of the wait, and the job's output folder."""
        t0 = time.perf_counter()
        job_id = subprocess.run(
            [SONOMASK, "submit", *args],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        subprocess.run(
            [SONOMASK, "wait", job_id, "--quiet"], env=self.env, check=True, capture_output=True
        )
        return time.perf_counter() - t0, self.root / "jobs" / job_id / "outputs"


def _redis_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def mono(path: Path) -> np.ndarray:
    x, _ = sf.read(str(path), dtype="float64", always_2d=True)
    return x.mean(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--size", default="480x270")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each; the best time counts")
    ap.add_argument(
        "--queued", action="store_true", help="through the queue: Redis and one Celery worker"
    )
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
        outs: dict[str, Path] = {}
        with (Queued if opts.queued else Local)(root) as jobs:
            for r in range(opts.repeat):
                t, outs["all"] = jobs.job([*common, *groups], f"all{r}")
                t_many.append(t)
                total = 0.0
                for lb in LABELS:
                    t, outs[lb] = jobs.job([*common, "--mask", str(root / f"{lb}.png")], f"{lb}{r}")
                    total += t
                t_ones.append(total)
        many, ones = min(t_many), min(t_ones)
        how = "queued (one Celery prefork worker)" if opts.queued else "sonomask separate"
        print(f"scene: {opts.seconds:g} s at {w}x{h}, 3 objects + 1 off-screen source; {how}")
        print(f"three-object job      {many:7.2f} s")
        print(f"three one-object jobs {ones:7.2f} s  (together)")
        print(f"speed-up              {ones / many:7.2f}x")
        doc = json.loads((outs["all"] / "job.json").read_text())
        timings = doc["timings"]
        print(f"tracking processes    {doc.get('track_processes', 'not recorded')}")
        single = json.loads((outs[LABELS[0]] / "job.json").read_text())["timings"]
        print("stage seconds (three-object job | one one-object job):")
        for stage, t in timings.items():
            print(f"  {stage:9s} {t:7.2f} | {single.get(stage, float('nan')):7.2f}")
        print("SI-SDR against each true sound (dB): three-object | one-object | difference")
        for lb in LABELS:
            a = si_sdr(mono(outs["all"] / "objects" / lb / "target.wav"), trio.sounds[lb])
            b = si_sdr(mono(outs[lb] / "target.wav"), trio.sounds[lb])
            print(f"  {lb:6s} {a:7.2f} | {b:7.2f} | {a - b:+6.2f}")
        src = subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(clip), "-f", "f32le", "-c:a", "pcm_f32le", "-"],
            capture_output=True,
            check=True,
        ).stdout
        src = np.frombuffer(src, np.float32).reshape(-1, 2)
        total = sf.read(str(outs["all"] / "residual.wav"), always_2d=True)[0]
        for lb in LABELS:
            total = (
                total + sf.read(str(outs["all"] / "objects" / lb / "target.wav"), always_2d=True)[0]
            )
        n = min(len(total), len(src))
        print(f"max |sum(stems) + residual - source| = {np.abs(total[:n] - src[:n]).max():.2e}")


if __name__ == "__main__":
    main()
