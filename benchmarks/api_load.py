"""How fast the API answers while uploads are in flight.

    python benchmarks/api_load.py [--seconds 15] [--uploads 12] [--clip-seconds 60]

Starts a private Redis and a real ``sonomask serve`` (default settings but for the
workspace, the broker and a token), keeps ``--uploads`` real multipart ``POST /v1/jobs``
(a real clip and mask) in flight the whole time from another process, and meanwhile asks
``GET /v1/options`` from one client, one request after another. Prints the options latency (p50, p99, max,
in ms) with and without the uploads, and how many uploads completed. The goal is a p99
under 100 ms: no upload, probe or scan may hold the event loop. No worker is started:
the submitted jobs just wait in the queue.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))

from scene import first_mask, make_scene, write_clip  # noqa: E402
from service import Redis, Server  # noqa: E402

TOKEN = "bench-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def measure_options(url: str, seconds: float) -> list[float]:
    """Latencies (s) of back-to-back ``GET /v1/options`` for ``seconds``."""
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=30) as c:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            r = await c.get(f"{url}/v1/options")
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            await asyncio.sleep(0.01)
    return latencies


async def upload_forever(url: str, video: bytes, mask: bytes, stop: asyncio.Event) -> int:
    """Submit jobs one after another until ``stop``; returns how many were accepted."""
    done = 0
    async with httpx.AsyncClient(timeout=300, headers=AUTH) as c:
        while not stop.is_set():
            files = [("video", ("clip.mp4", video, "video/mp4")), ("mask", ("m.png", mask))]
            r = await c.post(f"{url}/v1/jobs", files=files, data={"spec": '{"mode": "isolate"}'})
            if r.status_code != 202:
                raise RuntimeError(f"upload answered {r.status_code}: {r.text}")
            done += 1
    return done


def uploader(url: str, video: bytes, mask: bytes, n: int, seconds: float, out: Any) -> None:
    """A separate process keeps ``n`` uploads in flight for ``seconds``: its own event loop
    and CPU, so the measuring client's latencies are the server's, not the load's."""

    async def run() -> int:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(upload_forever(url, video, mask, stop)) for _ in range(n)]
        await asyncio.sleep(seconds)
        stop.set()
        return sum(await asyncio.gather(*tasks))

    out.put(asyncio.run(run()))


def under_load(url: str, video: bytes, mask: bytes, n: int, seconds: float):
    """Options latencies while another process keeps ``n`` uploads in flight."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=uploader, args=(url, video, mask, n, seconds + 2.0, out))
    proc.start()
    time.sleep(2.0)  # let every upload get going
    lat = asyncio.run(measure_options(url, seconds))
    accepted = out.get(timeout=600)
    proc.join(60)
    return lat, accepted


def _summary(name: str, lat: list[float]) -> str:
    a = np.array(lat) * 1000
    return (
        f"{name}: {len(a)} requests, p50 {np.percentile(a, 50):.1f} ms, "
        f"p99 {np.percentile(a, 99):.1f} ms, max {a.max():.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--uploads", type=int, default=12)
    ap.add_argument("--clip-seconds", type=float, default=60)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        redis = Redis(root / "redis")
        redis.start()
        env = {
            **os.environ,
            "SONOMASK_WORKSPACE": str(root / "jobs"),
            "SONOMASK_BROKER_URL": f"{redis.url}/0",
            "SONOMASK_RESULT_BACKEND": f"{redis.url}/1",
            "SONOMASK_API_TOKEN": TOKEN,
        }
        server = Server(env, root / "api.log")
        try:
            scene = make_scene(duration=args.clip_seconds, width=320, height=180)
            write_clip(scene, root / "clip.mp4")
            cv2.imwrite(str(root / "mask.png"), first_mask(scene, "a"))
            video, mask = (root / "clip.mp4").read_bytes(), (root / "mask.png").read_bytes()
            idle = asyncio.run(measure_options(server.url, 3.0))
            busy, accepted = under_load(server.url, video, mask, args.uploads, args.seconds)
        finally:
            server.stop()
            redis.stop()
    print(f"clip {len(video) / 1e6:.1f} MB ({args.clip_seconds:g} s 320x180)")
    print(_summary("GET /v1/options, idle", idle))
    print(_summary(f"GET /v1/options, {args.uploads} uploads in flight", busy))
    print(f"uploads accepted meanwhile: {accepted}")
    p99 = float(np.percentile(np.array(busy) * 1000, 99))
    print(f"goal p99 < 100 ms under load: {'met' if p99 < 100 else 'NOT met'} ({p99:.1f} ms)")


if __name__ == "__main__":
    main()
