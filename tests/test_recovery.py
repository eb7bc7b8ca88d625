"""Crash recovery with the settings a user gets: real Redis / RabbitMQ, real workers, SIGKILL.

No test here shortens the visibility timeout or the lease: a dead worker's stage must be
picked up again within 60 s because of the leases and the reaper, not because of a timer a
test turned down. ``python benchmarks/recovery.py`` repeats these five times each.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import pytest
from faults import Cluster, duplicates, kill_during, make_media, recovery_seconds
from service import brokers, wait_for

pytestmark = pytest.mark.slow
RECOVERY_LIMIT_S = 60.0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("media"), seconds=36.0)  # benchmark: 48 s


@pytest.fixture(scope="module", params=brokers())
def cluster(request, tmp_path_factory, media):
    c = Cluster(tmp_path_factory.mktemp(f"cluster-{request.param}"), broker=request.param)
    c.start(media)
    c.start_worker("first")
    yield c
    c.stop()


@pytest.mark.parametrize("stage", ["track", "separate", "remux"])
def test_worker_killed_mid_stage_is_replaced_within_a_minute(cluster, stage):
    """The whole worker process group is SIGKILLed while it runs ``stage``; a new worker is
    started; the stage is taken again within 60 s and the job succeeds once."""
    res = kill_during(cluster, stage, replacement=f"after-{stage}")
    assert res["state"] == "succeeded", res
    assert res["recovery_s"] < RECOVERY_LIMIT_S, res
    assert res["duplicates"] == 0, res
    m = cluster.manifest(res["job"])
    assert m["recoveries"] == {stage: 1}, m.get("recoveries")


def test_two_workers_one_killed_the_other_finishes(tmp_path, media):
    c = Cluster(tmp_path / "two").start(media)
    try:
        c.start_worker("alpha")
        c.start_worker("beta")
        job_id = c.submit()
        c.wait_in_stage(job_id, "track")
        victim = c.holder(job_id)
        killed_at = time.time()
        c.workers.pop(victim).kill()
        assert recovery_seconds(c, job_id, "track", killed_at) < RECOVERY_LIMIT_S
        doc = c.wait_done(job_id)
        assert doc["state"] == "succeeded", doc
        assert duplicates(c, job_id, doc) == 0
        (survivor,) = c.workers
        hosts = c.manifest(job_id)["stage_hosts"]
        after = ("track", "prompt", "separate", "restore", "remux", "preview")
        assert all(hosts[s]["hostname"].startswith(survivor) for s in after), hosts
    finally:
        c.stop()


def test_redis_stopped_for_30_s_mid_stage_job_finishes(tmp_path, media):
    c = Cluster(tmp_path / "outage").start(media)
    try:
        c.start_worker("steady")
        job_id = c.submit()
        c.wait_in_stage(job_id, "track")
        c.redis.stop()
        time.sleep(30)
        c.redis.start()
        doc = c.wait_done(job_id)
        assert doc["state"] == "succeeded", doc
        assert duplicates(c, job_id, doc) == 0
    finally:
        c.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 32 MB tmpfs: room for the job's description and audio, not for its frames."""
    where = tmp_path / "disk" / "jobs"
    where.mkdir(parents=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)], capture_output=True
    )
    if res.returncode != 0:
        if os.environ.get("SONOMASK_TEST_ALL_BROKERS"):
            pytest.fail(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        pytest.skip("mounting a tmpfs needs root")
    yield where.parent
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_workspace_disk_full_fails_the_job_and_publishes_nothing(small_disk, media):
    c = Cluster(small_disk).start(media)
    try:
        c.start_worker("cramped")
        job_id = c.submit()
        doc = c.wait_done(job_id)
        assert doc["state"] == "failed", doc
        assert "no space left on device" in doc["error"], doc["error"]
        assert doc["outputs"] == []
        out = c.folder(job_id) / "outputs"
        assert not out.exists() or not any(out.iterdir())
        assert not list(c.folder(job_id).rglob(".*.part*"))
        r = httpx.get(f"{c.server.url}/v1/jobs/{job_id}/outputs/target.wav", timeout=10)
        assert r.status_code == 404
    finally:
        c.stop()


def test_paused_worker_cannot_publish_over_its_replacement(tmp_path, media):
    """Fencing: a worker frozen mid-stage (SIGSTOP) past its lease is replaced; when it
    wakes up it finds its token stale and stops without writing anything."""
    c = Cluster(tmp_path / "fence").start(media)
    try:
        sleepy = c.start_worker("sleepy")
        job_id = c.submit()
        c.wait_in_stage(job_id, "separate")
        paused_at = time.time()
        sleepy.pause()
        c.start_worker("fresh")
        assert recovery_seconds(c, job_id, "separate", paused_at) < RECOVERY_LIMIT_S
        sleepy.resume()
        doc = c.wait_done(job_id)
        assert doc["state"] == "succeeded", doc
        assert duplicates(c, job_id, doc) == 0
        wait_for(lambda: b"stopping without writing" in sleepy.log.read_bytes(), 60, "fencing")
        tokens = [a["token"] for a in c.manifest(job_id)["attempts"] if a["stage"] == "separate"]
        assert len(tokens) == 2 and tokens[1] > tokens[0]
        assert c.manifest(job_id)["stage_hosts"]["separate"]["hostname"].startswith("fresh")
    finally:
        c.stop()


def test_job_whose_spec_no_longer_validates_fails_with_the_reason(tmp_path, media):
    """A stage that cannot even read its job ends the job ``failed``; it never hangs."""
    c = Cluster(tmp_path / "broken").start(media)
    try:
        job_id = c.submit()
        spec_file = c.folder(job_id) / "spec.json"
        spec = json.loads(spec_file.read_text())
        spec_file.write_text(json.dumps({**spec, "spans": [{"sign": "+", "start": None}]}))
        assert c.document(job_id)["state"] == "queued"
        c.start_worker("late")
        doc = c.wait_done(job_id, 120)
        assert doc["state"] == "failed" and "spec is invalid" in doc["error"], doc
    finally:
        c.stop()
