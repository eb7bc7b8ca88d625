"""Celery tasks: one per pipeline stage plus ``finish``; each hands the job on to the next.

Every task takes only the job id. The job's ``job.json`` names the stage it waits for
(``next_stage``); a message for any other stage, or for a job that is cancelled, finished or
gone, does nothing, so stale and redelivered messages are harmless. A stage runs under a
lease (``worker/jobs/leases.py``): the reaper sends the pending stage again when its worker dies,
and fencing keeps a worker that lost its stage from writing anything.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import signals
from celery.exceptions import Ignore
from kombu.exceptions import OperationalError

from worker.errors import (
    BadInput,
    JobCancelled,
    QueueUnavailable,
    SonomaskError,
    TransientError,
    as_sonomask_error,
)
from worker.jobs import leases, store
from worker.jobs.queue import SETTINGS, app
from worker.jobs.record import fail_manifest, finish_manifest, publish, start_manifest
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages import STAGES, run_stage
from worker.stages.common import StageProgress
from worker.workspace import Workspace

log = logging.getLogger("sonomask.tasks")

FINISH = "finish"
ORDER = [name for name, _ in STAGES] + [FINISH]
NEXT = dict(zip(ORDER, [*ORDER[1:], None], strict=True))
MAX_RECOVERIES = 3  # a stage whose worker died this often fails the job (out of memory?)
_clients: dict[int, redis.Redis] = {}


def _lease_store() -> redis.Redis:
    """One Redis client per process (pool children are forked: never share a socket)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = leases.connect(SETTINGS.lease_url)
    return _clients[pid]


def _workspace(job_id: str) -> Workspace | None:
    try:
        return store.job_workspace(SETTINGS.workspace, job_id)
    except KeyError:
        return None


def _should_skip(ws: Workspace | None) -> bool:
    if ws is None:
        return True
    if store.is_cancelled(ws):
        store.remove_partial_outputs(ws)
        return True
    m = ws.manifest()
    if m.get("state") == "succeeded":  # done unless its publishing was interrupted
        return m.get("next_stage") != FINISH
    return m.get("state") in store.FINISHED


def send(job_id: str, stage: str, patient: bool = False) -> None:
    """Queue ``stage`` of the job (routing puts ``separate`` on the gpu queue).

    ``patient`` rides out a broker restart (about two minutes of retries).
    """
    task = finish if stage == FINISH else STAGE_TASKS[stage]
    policy = {"max_retries": 30, "interval_start": 1, "interval_step": 1, "interval_max": 5}
    task.apply_async((job_id,), retry=True, retry_policy=policy if patient else None)


def _acquire(task: Any, ws: Workspace, name: str) -> leases.Lease:
    """The lease on this stage, or Ignore when the message is stale or a duplicate.

    A finished stage queues the next one before it releases its lease, so the next stage's
    worker can arrive while the previous stage still holds the job: it waits for that
    release (a duplicate of the same stage is dropped at once). Dropping it instead would
    strand the job, because the release also clears the reaper's record of it.
    """
    m = ws.manifest()
    pending = m.get("next_stage", name)
    if pending != name:
        log.info("job %s waits for %s; dropping a stale %s message", ws.job_id, pending, name)
        raise Ignore()
    holder = f"{task.request.hostname}:{os.getpid()}"
    redis_deadline = time.monotonic() + leases.REDIS_WAIT_SECONDS
    handover_deadline = time.monotonic() + 2 * SETTINGS.lease_seconds
    while True:
        try:
            lease = leases.acquire(
                _lease_store(), ws.job_id, name, holder, SETTINGS.lease_seconds, m.get("fence", 0)
            )
            if lease is not None:
                return lease
            held = leases.held_stage(_lease_store(), ws.job_id)
        except redis.RedisError as e:
            if time.monotonic() > redis_deadline:
                raise TransientError(f"the lease store is unreachable: {e}") from None
            time.sleep(1.0)
            continue
        if held == name:
            log.info("job %s: %s is held by a live worker; dropping a duplicate", ws.job_id, name)
            raise Ignore()
        if held is not None and time.monotonic() > handover_deadline:
            raise TransientError(f"stage {held} of job {ws.job_id} has not let go of the job")
        time.sleep(0.1)  # the previous stage is between handing on and releasing


def _record_start(task: Any, ws: Workspace, name: str, lease: leases.Lease) -> None:
    for part in ws.path.rglob(".*.part*"):  # half-written files of a worker that died
        part.unlink(missing_ok=True)
    m = ws.manifest()
    hosts = m.get("stage_hosts", {})
    hosts[name] = {
        "hostname": task.request.hostname,
        "queue": (task.request.delivery_info or {}).get("routing_key"),
    }
    attempts = m.get("attempts", [])
    attempts.append({"stage": name, "token": lease.token, "holder": lease.value, "at": time.time()})
    ws.update_manifest(
        state="running",
        task_id=task.request.id,
        stage_hosts=hosts,
        attempts=attempts,
        fence=lease.token,
    )


def _stopped(ws: Workspace) -> None:
    store.remove_partial_outputs(ws)
    ws.file(store.STOPPED_MARK).touch()


def _fail(ws: Workspace, err: SonomaskError) -> None:
    fail_manifest(ws, err)
    ws.guard = None
    leases.forget(_lease_store(), ws.job_id)
    notify(ws)


def _run_leased(
    task: Any, job_id: str, name: str, body: Callable[[Workspace, StageProgress], None]
) -> str:
    """Run ``body`` as stage ``name`` under a lease, then hand the job on to the next stage."""
    ws = _workspace(job_id)
    if _should_skip(ws):
        raise Ignore()
    assert ws is not None
    try:
        lease = _acquire(task, ws, name)
    except (Ignore, TransientError):
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable job.json: the job fails, visibly
        _fail(ws, as_sonomask_error(exc))
        raise Ignore() from None
    base = store.progress_reporter(ws)

    def report(stage: str, fraction: float, message: str) -> None:
        if lease.lost:
            raise leases.LeaseLost(f"stage {name} of job {job_id} was taken over")
        base(stage, fraction, message)

    with lease.heartbeat():
        ws.guard = lease.check
        try:
            _record_start(task, ws, name, lease)
            body(ws, report)
            if store.is_cancelled(ws):  # cancelled while the stage's last step ran
                raise JobCancelled("the job was cancelled")
            nxt = NEXT[name]
            ws.update_manifest(next_stage=nxt, **({"state": "queued"} if nxt else {}))
            if nxt is None:
                leases.forget(_lease_store(), job_id)
            elif not _hand_on(job_id, nxt):
                return job_id  # the claim stays: the reaper sends the stage once it can
        except leases.LeaseLost as e:
            log.warning("job %s: %s; stopping without writing", job_id, e)
            raise Ignore() from None
        except JobCancelled:
            ws.guard = None
            _stopped(ws)
            lease.release()
            raise Ignore() from None
        except TransientError:
            if task.request.retries >= task.max_retries:
                _fail(ws, SonomaskError(f"stage {name} kept failing; gave up after retries"))
                raise Ignore() from None
            lease.release()  # the retry must be able to take the stage
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as the job's error
            try:  # taken over meanwhile: the error is the new holder's cleanup, not the job's
                lease.check()
            except leases.LeaseLost as e:
                log.warning("job %s: %s (%s); stopping without writing", job_id, e, exc)
                raise Ignore() from None
            try:
                _fail(ws, as_sonomask_error(exc))
            except leases.LeaseLost:
                raise Ignore() from None
            if isinstance(exc, SonomaskError):
                raise Ignore() from None
            raise
        else:
            lease.release()
        finally:
            ws.guard = None
    return job_id


def _hand_on(job_id: str, stage: str) -> bool:
    """Queue the next stage; False (the broker stayed away) leaves it to the reaper."""
    try:
        send(job_id, stage, patient=True)
        return True
    except (OperationalError, OSError) as e:
        log.error("job %s: could not queue %s (%s); the reaper will", job_id, stage, e)
        return False


def _stage_body(name: str, fn: Callable[..., None]) -> Callable[[Workspace, StageProgress], None]:
    def body(ws: Workspace, report: StageProgress) -> None:
        if name == STAGES[0][0] and not ws.manifest().get("versions"):
            start_manifest(ws)
        run_stage(ws, name, fn, SETTINGS, report)

    return body


def _make_stage_task(name: str, fn: Callable[..., None]) -> Any:
    body = _stage_body(name, fn)

    @app.task(
        name=f"sonomask.stage.{name}",
        bind=True,
        autoretry_for=(TransientError,),
        retry_backoff=True,
        retry_backoff_max=300,
        max_retries=5,
    )
    def stage_task(self: Any, job_id: str) -> str:
        return _run_leased(self, job_id, name, body)

    stage_task.__doc__ = f"Run the {name} stage of a job."
    return stage_task


STAGE_TASKS = {name: _make_stage_task(name, fn) for name, fn in STAGES}


def _publish(ws: Workspace, report: StageProgress) -> None:
    finish_manifest(ws)
    publish(ws, Path(ws.spec.out or ws.path / "outputs"))


@app.task(
    name="sonomask.finish",
    bind=True,
    autoretry_for=(TransientError,),
    retry_backoff=True,
    max_retries=5,
)
def finish(self: Any, job_id: str) -> str:
    """Publish the outputs into the job's ``outputs/`` and mark it succeeded."""
    _run_leased(self, job_id, FINISH, _publish)
    ws = _workspace(job_id)
    if ws is not None:
        notify(ws)
    return job_id


def requeue(job_id: str, stage: str) -> None:
    """The reaper's action: the worker running ``stage`` of the job died; queue it again."""
    ws = _workspace(job_id)
    if _should_skip(ws):
        return
    assert ws is not None
    m = ws.manifest()
    pending = m.get("next_stage") or stage
    counts = m.get("recoveries", {})
    counts[pending] = counts.get(pending, 0) + 1
    if counts[pending] > MAX_RECOVERIES:
        _fail(
            ws,
            SonomaskError(
                f"stage {pending} was interrupted {counts[pending]} times: the worker running "
                "it died each time (out of memory?); the job was stopped"
            ),
        )
        return
    ws.update_manifest(recoveries=counts, state="queued")
    log.warning("job %s: the worker running %s died; queued it again", job_id, pending)
    send(job_id, pending)


def reaper(interval: float = 5.0) -> leases.Reaper:
    """A reaper over this deployment's leases."""
    return leases.Reaper(leases.connect(SETTINGS.lease_url), requeue, interval)


_worker_reaper: list[leases.Reaper] = []


@signals.worker_ready.connect
def _start_reaper(**_: Any) -> None:
    """Every worker also reaps: no extra process is needed for recovery."""
    r = reaper()
    r.start()
    _worker_reaper.append(r)


@signals.worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    for r in _worker_reaper:
        r.stop()


def submit(spec: JobSpec, settings: Settings | None = None, job_id: str | None = None) -> str:
    """Queue a job: register it in the workspace and send its first stage.

    Raises QueueUnavailable (and leaves nothing behind) when the broker cannot be reached.
    """
    settings = settings or SETTINGS
    job_id = job_id or uuid.uuid4().hex[:16]
    ws = store.create_job(settings.workspace, spec, job_id)
    ws.update_manifest(next_stage=ORDER[0])
    try:
        STAGE_TASKS[ORDER[0]].apply_async(
            (job_id,), retry=True, retry_policy={"max_retries": 2, "interval_start": 0.5}
        )
    except (OperationalError, OSError) as e:
        ws.remove()
        raise QueueUnavailable(
            f"the job queue (broker) is unreachable ({e}); try again shortly"
        ) from None
    return job_id


def cancel(
    job_id: str, settings: Settings | None = None, grace: float = 5.0, wait: bool = True
) -> dict[str, Any]:
    """Cancel a job: mark it, stop its running task, remove partial outputs.

    The mark makes the state ``cancelled`` at once and stops the running stage at its next
    progress report (it then cleans up after itself). A task that has not stopped after
    ``grace`` seconds is killed and its leftovers removed. ``wait=False`` does that last part
    in a background thread so an HTTP request returns at once. A job still queued has no
    stage to wait for (one that starts meanwhile meets the mark at its first report).
    """
    settings = settings or SETTINGS
    ws = store.job_workspace(settings.workspace, job_id)
    doc = store.document(ws)
    if doc["state"] in store.FINISHED:
        return doc
    running = doc["state"] == "running"
    ws.file(store.CANCEL_MARK).touch()
    ws.update_manifest(state="cancelled", finished=store.now(), error=None)
    task_id = ws.manifest().get("task_id")
    if task_id:
        app.control.revoke(task_id)  # queued copies of it are dropped

    def stop_and_clean() -> None:
        deadline = time.monotonic() + (grace if running else 0.0)
        while time.monotonic() < deadline and not ws.file(store.STOPPED_MARK).exists():
            time.sleep(0.2)
        if running and task_id and not ws.file(store.STOPPED_MARK).exists():
            app.control.revoke(task_id, terminate=True, signal="SIGKILL")
            time.sleep(1.0)
        store.remove_partial_outputs(ws)
        notify(ws)

    if wait or not task_id:
        stop_and_clean()
    else:
        threading.Thread(target=stop_and_clean, daemon=True).start()
    return store.document(ws)


def notify(ws: Workspace) -> None:
    """POST the job document to the job's webhook, if it has one; failures are logged only."""
    from worker.jobs import webhooks

    try:
        url = ws.spec.webhook
    except (OSError, ValueError):  # a spec that cannot be read names no webhook we trust
        return
    if not url:
        return
    body = json.dumps(store.document(ws)).encode()
    # Checked again now (DNS may have changed since submit), sent to the checked address,
    # no redirects, 10 s timeout, signed with SONOMASK_WEBHOOK_SECRET, retried with
    # back-off on a background thread; see worker/jobs/webhooks.py.
    webhooks.deliver_later(url, body, SETTINGS.webhook_allow, SETTINGS.webhook_secret)


__all__ = ["BadInput", "cancel", "finish", "requeue", "submit", "STAGE_TASKS"]
