"""The hand-over between two stages of one job, against a real Redis.

A finished stage queues the next one and only then releases its lease. A fast worker can
take the next stage's message in between; it must wait for the release, not drop the
message as a duplicate (that stranded jobs under load: the release also clears the
reaper's record, so nothing would ever send the stage again).
"""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from celery.exceptions import Ignore
from service import Redis

from worker.jobs import leases, tasks
from worker.spec import JobSpec
from worker.workspace import Workspace


@pytest.fixture(scope="module")
def lease_store(tmp_path_factory):
    r = Redis(tmp_path_factory.mktemp("redis"))
    r.start()
    yield leases.connect(r.url)
    r.stop()


@pytest.fixture
def job(tmp_path, lease_store, monkeypatch):
    monkeypatch.setattr(tasks, "_lease_store", lambda: lease_store)
    spec = JobSpec(video=str(tmp_path / "clip.mp4"), boxes=["1,1,20,20"])
    ws = Workspace.create(tmp_path / "ws", spec, uuid.uuid4().hex[:16])
    ws.update_manifest(state="queued", next_stage="track")
    return ws


def _task() -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(hostname="w@test"))


def test_next_stage_waits_for_the_previous_stage_to_let_go(job, lease_store):
    demux = leases.acquire(lease_store, job.job_id, "demux", "old@test:1", 20.0)
    assert demux is not None
    got: dict = {}

    def take() -> None:
        try:
            got["lease"] = tasks._acquire(_task(), job, "track")
        except BaseException as e:  # noqa: BLE001 - the assertion below names it
            got["error"] = e

    t = threading.Thread(target=take)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), f"track did not wait for demux to let go: {got}"
    demux.release()
    t.join(timeout=10)
    assert "error" not in got, got
    lease = got["lease"]
    assert lease.stage == "track" and lease.token > demux.token
    assert leases.held_stage(lease_store, job.job_id) == "track"
    # the reaper knows the new stage: if this worker dies now, the job is sent again
    assert lease_store.hget(leases.INFLIGHT, job.job_id).decode() == lease.value
    lease.release()


def test_a_duplicate_of_the_running_stage_is_dropped_at_once(job, lease_store):
    track = leases.acquire(lease_store, job.job_id, "track", "first@test:1", 20.0)
    assert track is not None
    started = time.monotonic()
    with pytest.raises(Ignore):
        tasks._acquire(_task(), job, "track")
    assert time.monotonic() - started < 2.0
    assert leases.held_stage(lease_store, job.job_id) == "track"
    track.release()


def test_a_stale_message_for_an_earlier_stage_is_dropped(job, lease_store):
    with pytest.raises(Ignore):
        tasks._acquire(_task(), job, "demux")
    assert leases.held_stage(lease_store, job.job_id) is None
