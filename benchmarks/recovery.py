"""Time to recovery after worker crashes and broker outages, with the default settings.

    python benchmarks/recovery.py [--runs 5] [--brokers redis,rabbitmq] [--stages track,separate,remux]

For each broker and stage: submit a job over HTTP, SIGKILL the whole worker process group
while it runs that stage, start a new worker, and measure the seconds from the kill until a
live worker took the stage again. Also: two workers with different hostnames (one killed),
and Redis stopped for 30 s mid-stage (recovery = seconds from Redis' restart to the job's
end). Prints median and max time to recovery, jobs lost and duplicate outputs per case.
Nothing is tuned here: the lease (20 s), the reaper (5 s) and the visibility timeout (6 h)
are the defaults a user gets.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from faults import Cluster, duplicates, kill_during, make_media, recovery_seconds  # noqa: E402


def _row(case: str, results: list[dict]) -> str:
    times = [r["recovery_s"] for r in results if r.get("recovery_s") is not None]
    lost = sum(r["state"] != "succeeded" for r in results)
    dup = sum(r["duplicates"] for r in results)
    med = f"{statistics.median(times):.1f}" if times else "-"
    worst = f"{max(times):.1f}" if times else "-"
    return f"| {case} | {len(results)} | {med} | {worst} | {lost} | {dup} |"


def _safely(fn, *args) -> dict:  # noqa: ANN001
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a failed run is a lost job, reported
        print(f"  run failed: {type(e).__name__}: {e}", file=sys.stderr)
        return {"state": "lost", "recovery_s": None, "duplicates": 0}


def two_workers(c: Cluster, i: int) -> dict:
    job_id = c.submit()
    c.wait_in_stage(job_id, "separate")
    victim = c.holder(job_id)
    killed_at = time.time()
    c.workers.pop(victim).kill()
    rec = recovery_seconds(c, job_id, "separate", killed_at)
    doc = c.wait_done(job_id)
    c.start_worker(f"spare{i}")  # back to two for the next run
    return {"recovery_s": rec, "state": doc["state"], "duplicates": duplicates(c, job_id, doc)}


def redis_outage(c: Cluster, seconds: float) -> dict:
    job_id = c.submit()
    c.wait_in_stage(job_id, "track")
    c.redis.stop()
    time.sleep(seconds)
    c.redis.start()
    back = time.time()
    doc = c.wait_done(job_id)
    return {
        "recovery_s": time.time() - back,
        "state": doc["state"],
        "duplicates": duplicates(c, job_id, doc),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--brokers", default="redis,rabbitmq")
    ap.add_argument("--stages", default="track,separate,remux")
    ap.add_argument("--no-extra", action="store_true", help="skip the two-worker/outage cases")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        media = make_media(tmp / "media")
        for broker in args.brokers.split(","):
            c = Cluster(tmp / broker, broker=broker).start(media)
            c.start_worker("w0")
            try:
                for stage in args.stages.split(","):
                    res = []
                    for i in range(args.runs):
                        r = _safely(kill_during, c, stage, f"w-{stage}-{i}")
                        print(f"{broker} kill during {stage} #{i}: {r}", file=sys.stderr)
                        res.append(r)
                        if not c.workers:
                            c.start_worker(f"w-again-{stage}-{i}")
                    rows.append(_row(f"{broker}: SIGKILL during {stage}", res))
            finally:
                c.stop()
        if not args.no_extra:
            c = Cluster(tmp / "two", broker="redis").start(media)
            c.start_worker("alpha")
            c.start_worker("beta")
            try:
                res = [_safely(two_workers, c, i) for i in range(args.runs)]
                rows.append(_row("redis: two workers, one killed in separate", res))
            finally:
                c.stop()
            c = Cluster(tmp / "outage", broker="redis").start(media)
            c.start_worker("steady")
            try:
                res = [_safely(redis_outage, c, 30.0) for _ in range(args.runs)]
                rows.append(_row("Redis stopped 30 s in track (s from restart to done)", res))
            finally:
                c.stop()
    print("| case | runs | median s | max s | jobs lost | duplicate outputs |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
