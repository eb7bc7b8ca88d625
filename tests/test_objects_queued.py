"""Several objects through the queue (issue 15): a real Redis and a real `sonomask worker`
(Celery prefork: its task processes are daemonic, and ``multiprocessing`` gives them no
children). The track stage still tracks the objects in processes of their own
(``vision.track_process``), and each object's masks are the masks of tracking the objects
one after the other (their full-size masks, byte for byte: the working ones are released
once the job has separated).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ROOT
from service import Redis, Worker, service_env

sys.path.insert(0, str(ROOT / "examples"))
from objects_scene import LABELS, make_trio, write_trio  # noqa: E402

from worker import files  # noqa: E402
from worker.settings import Settings  # noqa: E402
from worker.stages import demux, track  # noqa: E402
from worker.workspace import Workspace  # noqa: E402

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

CORES = len(os.sched_getaffinity(0))


@pytest.mark.skipif(CORES < 2, reason="one core: the track stage gives one process")
def test_a_queued_job_tracks_its_objects_in_processes(tmp_path, monkeypatch):
    redis = Redis(tmp_path / "redis")
    redis.start()
    media = tmp_path / "media"
    media.mkdir()
    env = service_env(tmp_path, redis)
    log = tmp_path / "worker.log"
    worker = Worker(env, "cpu,gpu", "objects@test", log, concurrency=1)
    try:
        worker.wait_ready()
        trio = make_trio(duration=2.0, width=320, height=180)
        clip = media / "trio.mp4"
        write_trio(trio, clip)
        args = []
        for lb, m in trio.first_masks().items():
            cv2.imwrite(str(media / f"{lb}.png"), m)
            args += ["--object", lb, "--mask", str(media / f"{lb}.png")]
        sub = subprocess.run(
            [str(BIN / "sonomask"), "submit", str(clip), *args, "--separator", "classical"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sub.returncode == 0, sub.stderr
        job_id = sub.stdout.strip()
        done = subprocess.run(
            [str(BIN / "sonomask"), "wait", job_id, "--quiet", "--timeout", "400"],
            env=env, capture_output=True, text=True, timeout=450,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + log.read_text()[-3000:]
    finally:
        worker.stop()
        redis.stop()
    job = tmp_path / "jobs" / job_id
    doc = json.loads((job / "outputs" / "job.json").read_text())
    assert doc["state"] == "succeeded"
    assert doc["track_processes"] == min(2 * CORES, len(LABELS)) >= 2, doc.get("track_processes")
    assert "one after the other" not in log.read_text()

    # The same track stage on a copy of the job's folder, the objects one after the other.
    # The job released its working frames and masks once separated: decode them again.
    copy = tmp_path / "again" / job_id
    shutil.copytree(job, copy, ignore=shutil.ignore_patterns("outputs"))
    manifest = json.loads((copy / files.MANIFEST).read_text())
    released = manifest.pop("released")
    assert files.FRAMES in released and files.object_file("ball", files.MASKS_WORK) in released
    (copy / files.MANIFEST).write_text(json.dumps(manifest))
    for lb in LABELS:
        (copy / files.object_file(lb, files.MASKS)).unlink()
    demux.run(Workspace(copy), Settings.from_env())
    plain = track.track_objects
    seen: dict = {}

    def one_after_the_other(*a, **kw):
        kw["processes"] = 1
        out = plain(*a, **kw)
        seen.update(kw.get("stats") or {})
        return out

    monkeypatch.setattr(track, "track_objects", one_after_the_other)
    track.run(Workspace(copy), Settings.from_env())
    assert seen == {"processes": 1}
    assert json.loads((copy / files.MANIFEST).read_text())["track_processes"] == 1
    for lb in LABELS:
        full = files.object_file(lb, files.MASKS)
        a, b = np.load(job / full)["masks"], np.load(copy / full)["masks"]
        assert a.any() and np.array_equal(a, b), lb
