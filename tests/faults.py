"""Fault injection on a real deployment: a private Redis (and RabbitMQ vhost), `sonomask serve`
and `sonomask worker` processes, all with the settings a user gets by default.

Shared by tests/test_recovery.py (one run per case) and benchmarks/recovery.py (five runs,
median and max time to recovery).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
from service import RabbitVhost, Redis, Server, Worker, service_env, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from scene import first_mask, make_scene, write_clip  # noqa: E402

FINISHED = ("succeeded", "failed", "cancelled")


def make_media(folder: Path, seconds: float = 48.0) -> tuple[Path, Path]:
    """A clip long enough that track, separate and remux each take a second or more."""
    folder.mkdir(parents=True, exist_ok=True)
    video, mask = folder / "clip.mp4", folder / "mask.png"
    if not video.exists():
        scene = make_scene(duration=seconds, width=320, height=180, fps=25.0)
        write_clip(scene, video, stereo=True, crf=30)
        cv2.imwrite(str(mask), first_mask(scene, "a"))
    return video, mask


@dataclass
class Cluster:
    """One deployment: Redis (leases, results, and the broker unless RabbitMQ), API, workers."""

    root: Path
    broker: str = "redis"
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)

    def start(self, media: tuple[Path, Path]) -> Cluster:
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)
        self.redis = Redis(self.root / "redis")
        self.redis.start()
        self.vhost = RabbitVhost() if self.broker == "rabbitmq" else None
        if self.vhost:
            self.vhost.start()
        self.env = service_env(
            self.root, self.redis, self.vhost.url if self.vhost else None, **self.extra_env
        )
        media_root = self.root / "media"
        media_root.mkdir(exist_ok=True)
        for f in media:
            shutil.copyfile(f, media_root / f.name)
        self.video, self.mask = media[0].name, media[1].name
        self.server = Server(self.env, self.logs / "api.log")
        return self

    def start_worker(self, name: str, queues: str = "cpu,gpu") -> Worker:
        w = Worker(self.env, queues, f"{name}@{name}-host", self.logs / f"{name}.log")
        w.wait_ready()
        self.workers[name] = w
        return w

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.server.stop()
        self.redis.stop()
        if self.vhost:
            self.vhost.stop()

    def submit(self, **spec: object) -> str:
        body = {"video_path": self.video, "mask_paths": [self.mask], "mode": "both", **spec}
        r = httpx.post(f"{self.server.url}/v1/jobs", json=body, timeout=60)
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def folder(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def manifest(self, job_id: str) -> dict:
        try:
            return json.loads((self.folder(job_id) / "job.json").read_text())
        except (OSError, ValueError):
            return {}

    def document(self, job_id: str) -> dict:
        r = httpx.get(f"{self.server.url}/v1/jobs/{job_id}", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_done(self, job_id: str, timeout: float = 300) -> dict:
        return wait_for(
            lambda: (d := self.document(job_id))["state"] in FINISHED and d,
            timeout,
            f"job {job_id} to finish",
            0.5,
        )

    def wait_in_stage(self, job_id: str, stage: str, timeout: float = 300) -> dict:
        """Block until a worker holds ``stage`` of the job (its attempt is recorded)."""

        def running() -> dict | None:
            m = self.manifest(job_id)
            att = m.get("attempts") or [{}]
            ok = m.get("next_stage") == stage and att[-1].get("stage") == stage
            return m if ok and m.get("state") == "running" else None

        return wait_for(running, timeout, f"job {job_id} to run {stage}", 0.05)

    def holder(self, job_id: str) -> str:
        """The worker name (as given to start_worker) running the job now."""
        holder = self.manifest(job_id)["attempts"][-1]["holder"]
        return next(n for n in self.workers if f"{n}@{n}-host" in holder)


def recovery_seconds(cluster: Cluster, job_id: str, stage: str, killed_at: float) -> float:
    """Seconds from the kill until a live worker took ``stage`` again (waits up to 120 s)."""

    def retaken() -> float | None:
        for a in cluster.manifest(job_id).get("attempts", []):
            if a["stage"] == stage and a["at"] > killed_at:
                return a["at"] - killed_at
        return None

    return wait_for(retaken, 120, f"{stage} of job {job_id} to be taken again", 0.2)


def duplicates(cluster: Cluster, job_id: str, doc: dict) -> int:
    """Output files beyond the one set the job document lists, plus temporary leftovers."""
    out = cluster.folder(job_id) / "outputs"
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    extra = len(names) - len(set(names) & set(doc["outputs"]))
    leftovers = len(list(cluster.folder(job_id).rglob(".*.part*")))
    return extra + leftovers


def kill_during(cluster: Cluster, stage: str, replacement: str | None) -> dict:
    """SIGKILL the worker holding ``stage`` of a new job; start ``replacement`` (if named);
    return the time to recovery, the final state and the duplicate count."""
    job_id = cluster.submit()
    cluster.wait_in_stage(job_id, stage)
    victim = cluster.holder(job_id)
    killed_at = time.time()
    cluster.workers.pop(victim).kill()
    m = cluster.manifest(job_id)
    assert m.get("next_stage") == stage, f"{stage} finished before the kill landed; retry"
    if replacement:
        cluster.start_worker(replacement)
    recovered = recovery_seconds(cluster, job_id, stage, killed_at)
    doc = cluster.wait_done(job_id)
    return {
        "job": job_id,
        "stage": stage,
        "recovery_s": recovered,
        "state": doc["state"],
        "error": doc["error"],
        "duplicates": duplicates(cluster, job_id, doc),
        "victim": victim,
    }
