"""The API's per-process context: its Settings, the thread limiter for blocking work, and
housekeeping (expiry of old jobs and uploads)."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import HTTPException

from worker.jobs import store
from worker.settings import Settings
from worker.workspace import Workspace

log = logging.getLogger("sonomask.api")


class ApiSettings:
    """The API's view of the process's Settings, plus its thread limiter and housekeeping."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings
        self.media_root = settings.media_root
        self.token = settings.api_token
        self.max_upload = settings.max_upload_bytes
        self.job_ttl = timedelta(seconds=settings.job_ttl)
        self.body_timeout = settings.body_timeout
        self.housekeeping = Housekeeping(
            [lambda: store.expire_jobs(settings.workspace, self.job_ttl)]
        )  # create_app adds the upload sessions' expiry
        self.heavy = max(2, os.cpu_count() or 2)
        self._limiters: weakref.WeakKeyDictionary[Any, anyio.CapacityLimiter] = (
            weakref.WeakKeyDictionary()
        )

    async def offload(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run blocking ``fn`` (probing, PIL, big copies) in a thread, at most ``heavy`` at
        once and apart from the default pool, so a burst of uploads neither starves the CPU
        the event loop needs nor the threads of the plain endpoints."""
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            limiter = self._limiters[loop] = anyio.CapacityLimiter(self.heavy)
        return await anyio.to_thread.run_sync(fn, *args, limiter=limiter)


class Housekeeping:
    """Expiry of old jobs and uploads: a directory scan, so at most once a minute and in a
    background thread, never in a request's way. ``chores`` are the scans to run."""

    def __init__(self, chores: list[Callable[[], object]], every: float = 60.0) -> None:
        self.chores, self.every, self.last = chores, every, -every
        self.busy = threading.Lock()

    def kick(self) -> None:
        now = time.monotonic()
        if now - self.last < self.every or not self.busy.acquire(blocking=False):
            return
        self.last = now
        threading.Thread(target=self._run, daemon=True, name="sonomask-expiry").start()

    def _run(self) -> None:
        try:
            for chore in self.chores:
                chore()
        except Exception:  # noqa: BLE001 - housekeeping never fails a request
            log.exception("expiring old jobs and uploads failed")
        finally:
            self.busy.release()


def job_or_404(cfg: ApiSettings, job_id: str) -> Workspace:
    """The job's folder, or the API's one 404 for an unknown (or malformed) id."""
    try:
        return store.job_workspace(cfg.base.workspace, job_id)
    except KeyError:
        raise HTTPException(404, f"no job {job_id[:40]!r}") from None


def output_or_404(cfg: ApiSettings, job_id: str, name: str) -> Path:
    """A published output of a succeeded job, or a 404 that says it is not there (yet)."""
    try:
        return store.output_path(job_or_404(cfg, job_id), name)
    except KeyError:
        raise HTTPException(404, f"job {job_id} has no output {name[:80]!r} (yet)") from None
