"""Queued jobs: the job document, progress, cancellation and expiry, kept in the workspace.

The job's folder under ``SONOMASK_WORKSPACE`` is the single source of truth, shared by the
API process and every worker machine: ``job.json`` (state, stage, progress, error,
outputs), ``inputs/`` (uploads), the stage artifacts, and ``outputs/`` (published only
when the job succeeded). Only the job id travels through the broker.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from worker import files
from worker.errors import JobCancelled
from worker.jobs.record import output_names
from worker.spec import JobSpec
from worker.stages import STAGES
from worker.stages.common import StageProgress
from worker.workspace import Workspace

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
CANCEL_MARK = "CANCELLED"
STOPPED_MARK = "STOPPED"  # the cancelled job's running stage saw the mark and cleaned up

# Share of the whole job each stage takes, for one overall progress number.
STAGE_WEIGHTS = {
    "probe": 0.02,
    "demux": 0.10,
    "track": 0.20,
    "prompt": 0.05,
    "separate": 0.45,
    "restore": 0.08,
    "remux": 0.07,
    "preview": 0.03,
}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def job_workspace(root: Path, job_id: str) -> Workspace:
    if not job_id or not all(c.isalnum() or c in "-_" for c in job_id):
        raise KeyError(job_id)
    ws = Workspace(Path(root) / job_id)
    if not ws.file(files.SPEC).exists():
        raise KeyError(job_id)
    return ws


def create_job(root: Path, spec: JobSpec, job_id: str) -> Workspace:
    """Register a queued job; ``spec.out`` is set to the job's ``outputs/`` folder."""
    ws = Workspace(Path(root) / job_id)
    spec = spec.model_copy(update={"out": str(ws.path / "outputs")})
    ws = Workspace.create(root, spec, job_id=job_id)
    ws.update_manifest(
        id=job_id,
        state="queued",
        stage=None,
        progress=0.0,
        error=None,
        outputs=[],
        created=now(),
        finished=None,
    )
    return ws


def document(ws: Workspace) -> dict[str, Any]:
    """The job document the API and ``sonomask status --json`` return."""
    m = ws.manifest()
    if is_cancelled(ws):  # sticky: a stage finishing after the cancel cannot undo it
        m["state"] = "cancelled"
    elif m.get("state") == "succeeded" and m.get("next_stage"):  # still publishing
        m["state"] = "running"
    return {
        "id": ws.job_id,
        "state": m.get("state", "queued"),
        "stage": m.get("stage"),
        "progress": round(float(m.get("progress") or 0.0), 4),
        "error": m.get("error"),
        "outputs": m.get("outputs", []) if m.get("state") == "succeeded" else [],
        "created": m.get("created"),
        "finished": m.get("finished"),
        "backend": m.get("backend"),
        "confidence": m.get("confidence"),
        "warnings": m.get("warnings", []),
        "bad_input": m.get("bad_input", False),
        "message": m.get("progress_message"),
        "objects": _objects(ws, m),
    }


def _objects(ws: Workspace, m: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Several objects: each label with its outputs (once the job succeeded); else None."""
    if m.get("state") == "succeeded" and not m.get("next_stage") and "objects" in m:
        return m["objects"]
    try:
        spec = ws.spec
    except (OSError, ValueError):
        return None
    if not spec.several:
        return None
    return [{"label": o.label, "outputs": [], "confidence": None} for o in spec.objects]


def is_cancelled(ws: Workspace) -> bool:
    return ws.file(CANCEL_MARK).exists()


def progress_reporter(
    ws: Workspace, extra: StageProgress | None = None, min_interval: float = 0.5
) -> StageProgress:
    """A stage callback that records overall progress in job.json and honours cancellation."""
    order = [name for name, _ in STAGES]
    last = [0.0]

    def report(stage: str, fraction: float, message: str) -> None:
        if is_cancelled(ws):
            raise JobCancelled("the job was cancelled")
        if extra is not None:
            extra(stage, fraction, message)
        t = time.monotonic()
        if t - last[0] < min_interval and fraction < 1.0:
            return
        last[0] = t
        done = (
            sum(STAGE_WEIGHTS.get(n, 0) for n in order[: order.index(stage)])
            if stage in order
            else 0
        )
        overall = done + STAGE_WEIGHTS.get(stage, 0) * max(0.0, min(1.0, fraction))
        ws.update_manifest(
            stage=stage, progress=round(min(overall, 0.999), 4), progress_message=message[:200]
        )

    return report


def remove_partial_outputs(ws: Workspace) -> None:
    """Delete every artifact but the job's description, so nothing looks finished."""
    keep = {files.SPEC, files.MANIFEST, CANCEL_MARK, STOPPED_MARK, "inputs"}
    for child in ws.path.iterdir():
        if child.name in keep:
            continue
        if child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def list_jobs(root: Path, limit: int = 100) -> list[dict[str, Any]]:
    root = Path(root)
    if not root.exists():
        return []
    docs = []
    for d in root.iterdir():
        if (d / files.SPEC).exists() and (d / files.MANIFEST).exists():
            try:
                docs.append(document(Workspace(d)))
            except (OSError, ValueError):
                continue
    docs.sort(key=lambda j: j.get("created") or "", reverse=True)
    return docs[:limit]


def expire_jobs(root: Path, max_age: timedelta) -> list[str]:
    """Remove finished jobs older than ``max_age``; returns their ids."""
    removed = []
    cutoff = datetime.now(UTC) - max_age
    for doc in list_jobs(root, limit=10**9):
        if doc["state"] in FINISHED and doc.get("finished"):
            try:
                finished = datetime.fromisoformat(doc["finished"])
            except ValueError:
                continue
            if finished < cutoff:
                shutil.rmtree(Path(root) / doc["id"], ignore_errors=True)
                removed.append(doc["id"])
    return removed


def output_path(ws: Workspace, name: str) -> Path:
    """The published output ``name`` of a succeeded job, or KeyError."""
    m = ws.manifest()
    if m.get("state") != "succeeded" or m.get("next_stage") or name not in output_names(ws):
        raise KeyError(name)
    path = ws.path / "outputs" / name
    if not path.is_file():
        raise KeyError(name)
    return path
