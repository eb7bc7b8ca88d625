"""Status requests per second and latency percentiles from the API while jobs run.

    python benchmarks/api_load.py [--seconds 20] [--clients 16] [--jobs 4]

Starts a private Redis, a real `sonomask worker` (cpu+gpu queues) and `sonomask serve`,
submits jobs, then hammers ``GET /v1/jobs/{id}`` from concurrent clients while the jobs
run, and prints requests per second and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))

from scene import first_mask, make_scene, write_clip  # noqa: E402
from service import Redis, Server, Worker  # noqa: E402


async def hammer(url: str, ids: list[str], seconds: float, clients: int) -> list[float]:
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(timeout=10) as c:
            k = i
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await c.get(f"{url}/v1/jobs/{ids[k % len(ids)]}")
                latencies.append(time.perf_counter() - t0)
                r.raise_for_status()
                k += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--jobs", type=int, default=4)
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
        }
        worker = Worker(env, "cpu,gpu", "bench@load", root / "worker.log", concurrency=1)
        worker.wait_ready()
        server = Server(env, root / "api.log")
        try:
            scene = make_scene(duration=30.0, width=320, height=180)
            video = root / "clip.mp4"
            write_clip(scene, video)
            cv2.imwrite(str(root / "mask.png"), first_mask(scene, "a"))
            ids = []
            for _ in range(args.jobs):
                with video.open("rb") as v, (root / "mask.png").open("rb") as m:
                    r = httpx.post(
                        f"{server.url}/v1/jobs",
                        files=[("video", v), ("mask", m)],
                        data={"spec": '{"mode": "isolate"}'},
                        timeout=60,
                    )
                r.raise_for_status()
                ids.append(r.json()["id"])
            lat = asyncio.run(hammer(server.url, ids, args.seconds, args.clients))
            states = [httpx.get(f"{server.url}/v1/jobs/{i}").json()["state"] for i in ids]
        finally:
            server.stop()
            worker.stop()
            redis.stop()
    arr = np.array(lat) * 1000
    print(
        f"{len(arr)} status requests in {args.seconds:g} s from {args.clients} clients "
        f"while {args.jobs} jobs ran (states at the end: {states})"
    )
    print(f"throughput: {len(arr) / args.seconds:.0f} requests/s")
    print(
        f"latency: p50 {np.percentile(arr, 50):.1f} ms, p99 {np.percentile(arr, 99):.1f} ms, "
        f"max {arr.max():.1f} ms"
    )


if __name__ == "__main__":
    main()
