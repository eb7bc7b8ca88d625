"""Celery tasks: one per pipeline stage plus ``finish``, chained per job by ``submit``.

Every task takes only the job id. A task for a job that is cancelled, finished or gone
does nothing, so stale or redelivered messages are harmless.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from celery import chain
from celery.exceptions import Ignore

from worker import jobs
from worker.app import app
from worker.config import Settings
from worker.errors import BadInput, JobCancelled, SonomaskError, TransientError, as_sonomask_error
from worker.pipeline import (
    STAGES,
    fail_manifest,
    finish_manifest,
    publish,
    run_stage,
    start_manifest,
)
from worker.spec import JobSpec
from worker.workspace import Workspace

log = logging.getLogger("sonomask.tasks")


def _workspace(job_id: str) -> Workspace | None:
    try:
        return jobs.job_workspace(Settings.from_env().workspace, job_id)
    except KeyError:
        return None


def _should_skip(ws: Workspace | None) -> bool:
    if ws is None:
        return True
    if jobs.is_cancelled(ws):
        jobs.remove_partial_outputs(ws)
        return True
    return ws.manifest().get("state") in jobs.FINISHED


def _run_stage_task(task: Any, job_id: str, name: str) -> str:
    ws = _workspace(job_id)
    if _should_skip(ws):
        raise Ignore()
    assert ws is not None
    m = ws.manifest()
    hosts = m.get("stage_hosts", {})
    hosts[name] = {
        "hostname": task.request.hostname,
        "queue": (task.request.delivery_info or {}).get("routing_key"),
    }
    ws.update_manifest(state="running", task_id=task.request.id, stage_hosts=hosts)
    if name == STAGES[0][0] and not m.get("versions"):
        start_manifest(ws)
        ws.update_manifest(state="running")
    fn = dict(STAGES)[name]
    try:
        run_stage(ws, name, fn, jobs.progress_reporter(ws))
    except JobCancelled:
        jobs.remove_partial_outputs(ws)
        ws.file(jobs.STOPPED_MARK).touch()
        raise Ignore() from None
    except TransientError:
        raise
    except SonomaskError as err:
        fail_manifest(ws, err)
        notify(ws)
        raise Ignore() from None
    except Exception as exc:  # noqa: BLE001 - recorded as the job's error
        fail_manifest(ws, as_sonomask_error(exc))
        notify(ws)
        raise
    if jobs.is_cancelled(ws):  # cancelled while the stage's last step ran
        jobs.remove_partial_outputs(ws)
        ws.file(jobs.STOPPED_MARK).touch()
        raise Ignore()
    return job_id


def _make_stage_task(name: str) -> Any:
    @app.task(
        name=f"sonomask.stage.{name}",
        bind=True,
        autoretry_for=(TransientError,),
        retry_backoff=True,
        retry_backoff_max=300,
        max_retries=5,
    )
    def stage_task(self: Any, job_id: str) -> str:
        return _run_stage_task(self, job_id, name)

    stage_task.__doc__ = f"Run the {name} stage of a job."
    return stage_task


STAGE_TASKS = {name: _make_stage_task(name) for name, _ in STAGES}


@app.task(name="sonomask.finish", bind=True)
def finish(self: Any, job_id: str) -> str:
    """Publish the outputs into the job's ``outputs/`` and mark it succeeded."""
    ws = _workspace(job_id)
    if _should_skip(ws):
        raise Ignore()
    assert ws is not None
    finish_manifest(ws)
    publish(ws, Path(ws.spec.out or ws.path / "outputs"))
    notify(ws)
    return job_id


def submit(spec: JobSpec, settings: Settings | None = None, job_id: str | None = None) -> str:
    """Queue a job: register it in the workspace and send its chain of stage tasks."""
    settings = settings or Settings.from_env()
    job_id = job_id or uuid.uuid4().hex[:16]
    jobs.create_job(settings.workspace, spec, job_id)
    flow = chain(*(STAGE_TASKS[name].si(job_id) for name, _ in STAGES), finish.si(job_id))
    flow.apply_async()
    return job_id


def cancel(
    job_id: str, settings: Settings | None = None, grace: float = 5.0, wait: bool = True
) -> dict[str, Any]:
    """Cancel a job: mark it, stop its running task, remove partial outputs.

    The mark makes the state ``cancelled`` at once and stops the running stage at its next
    progress report (it then cleans up after itself). A task that has not stopped after
    ``grace`` seconds is killed and its leftovers removed. ``wait=False`` does that last part
    in a background thread so an HTTP request returns at once.
    """
    settings = settings or Settings.from_env()
    ws = jobs.job_workspace(settings.workspace, job_id)
    doc = jobs.document(ws)
    if doc["state"] in jobs.FINISHED:
        return doc
    ws.file(jobs.CANCEL_MARK).touch()
    ws.update_manifest(state="cancelled", finished=jobs.now(), error=None)
    task_id = ws.manifest().get("task_id")
    if task_id:
        app.control.revoke(task_id)  # queued copies of it are dropped

    def stop_and_clean() -> None:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and not ws.file(jobs.STOPPED_MARK).exists():
            time.sleep(0.2)
        if task_id and not ws.file(jobs.STOPPED_MARK).exists():
            app.control.revoke(task_id, terminate=True, signal="SIGKILL")
            time.sleep(1.0)
        jobs.remove_partial_outputs(ws)
        notify(ws)

    if wait or not task_id:
        stop_and_clean()
    else:
        threading.Thread(target=stop_and_clean, daemon=True).start()
    return jobs.document(ws)


def notify(ws: Workspace) -> None:
    """POST the job document to the job's webhook, if it has one; failures are logged only."""
    url = ws.spec.webhook
    if not url:
        return
    body = json.dumps(jobs.document(ws)).encode()
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        urllib.request.urlopen(req, timeout=10).close()  # noqa: S310 - http(s) checked by spec
    except OSError as e:
        log.warning("webhook %s failed: %s", url, e)


__all__ = ["BadInput", "cancel", "finish", "submit", "STAGE_TASKS"]
