"""Running a whole job in-process (``sonomask separate``), resumable after a crash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from worker import files
from worker.errors import BadInput, SonomaskError, as_sonomask_error
from worker.jobs.record import fail_manifest, finish_manifest, publish, start_manifest
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages import STAGES, run_stage
from worker.stages.common import StageProgress, noop
from worker.stages.models import local_models
from worker.workspace import Workspace


def resumable_job_id(spec: JobSpec, settings: Settings) -> str:
    """A job id that is the same for the same request on the same input files.

    The CLI runs under it, so after a crash or an interruption the same command finds the
    work folder the last run left and carries on: finished stages are skipped and the
    separation restarts at its first unfinished window. An input file that changed (size
    or modification time), another model or another layout of the work folder
    (``files.WORK_FORMAT``) gives another id, hence a fresh start.
    """
    h = hashlib.sha256(spec.model_dump_json().encode())
    for f in spec.input_files():
        st = f.stat() if f.exists() else None
        h.update(f"{f.resolve()}|{st and st.st_size}|{st and st.st_mtime_ns}".encode())
    h.update(f"{settings.model}|{settings.window_seconds}|{files.WORK_FORMAT}".encode())
    return f"cli-{h.hexdigest()[:16]}"


def run_job(
    spec: JobSpec,
    progress: StageProgress | None = None,
    settings: Settings | None = None,
    keep_workspace: bool = False,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Run every stage in-process and publish the outputs into ``spec.out``.

    With ``job_id`` (see ``resumable_job_id``) a work folder of that id left by an earlier
    run is reused, and this run's folder is kept when it stops for any reason but bad
    input, so running again resumes it. Without, every run starts afresh and cleans up.
    """
    settings = settings or Settings.from_env()
    report = progress or noop
    out_dir = Path(spec.out or "sonomask-out")
    ws = Workspace.create(settings.workspace, spec, job_id)
    keep = keep_workspace
    with ws.lock(), local_models():
        try:
            start_manifest(ws)
            for name, fn in STAGES:
                run_stage(ws, name, fn, settings, report)
            manifest = finish_manifest(ws)
            publish(ws, out_dir)
            return manifest
        except BaseException as exc:
            err = (
                as_sonomask_error(exc)
                if not isinstance(exc, KeyboardInterrupt)
                else SonomaskError("interrupted")
            )
            fail_manifest(ws, err)
            keep = keep or (job_id is not None and not isinstance(err, BadInput))
            if isinstance(exc, SonomaskError | KeyboardInterrupt):
                raise
            raise err from exc
        finally:
            if not keep:
                ws.remove()
