"""What the HTTP job document adds to ``store.document``: the queue position of a queued job
and what a person recognises a job by (the video's file name and the mode).

Kept in ``worker/http/`` because only the API and the page show them; ``sonomask status``
and webhooks send the store's document as it is. Everything here reads the workspace
(``job.json``, ``spec.json``), the single source of truth, so every API process agrees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker import files
from worker.jobs import store
from worker.workspace import Workspace


def _order_key(doc: dict[str, Any], root: Path) -> tuple[str, int, str]:
    """Creation order: ``created`` has whole seconds, so the spec file's write time (ns),
    then the id, break ties the same way on every call."""
    try:
        ns = (root / doc["id"] / files.SPEC).stat().st_mtime_ns
    except OSError:
        ns = 0
    return (doc.get("created") or "", ns, doc["id"])


def queue_positions(docs: list[dict[str, Any]], root: Path) -> dict[str, int]:
    """1-based position of each queued job among the queued jobs, oldest first.

    An estimate of when a worker takes it: the broker serves each queue first in, first
    out, but a job waiting between stages was queued again when its last stage ended, so
    it may sit behind jobs created after it. Creation order is what a person expects.
    """
    queued = sorted((d for d in docs if d["state"] == "queued"), key=lambda d: _order_key(d, root))
    return {d["id"]: i for i, d in enumerate(queued, start=1)}


def describe(ws: Workspace) -> dict[str, Any]:
    """The video's file name and the mode from the job's spec, read as plain JSON so an
    older or newer spec still lists (the objects are the store's document's own field)."""
    try:
        spec = json.loads(ws.file(files.SPEC).read_text())
    except (OSError, ValueError):
        spec = None
    if not isinstance(spec, dict):
        return {"name": None, "mode": None}
    video = spec.get("video")
    mode = spec.get("mode")
    return {
        "name": Path(video).name if isinstance(video, str) and video else None,
        "mode": mode if isinstance(mode, str) else None,
    }


def all_documents(root: Path) -> list[dict[str, Any]]:
    """Every job's document, newest first (ties in creation order, as the queue)."""
    docs = store.list_jobs(root, limit=10**9)
    docs.sort(key=lambda d: _order_key(d, root), reverse=True)
    return docs


def with_details(doc: dict[str, Any], ws: Workspace, positions: dict[str, int]) -> dict[str, Any]:
    """The document with its queue position and the spec's name and mode."""
    return {**doc, **describe(ws), "queue_position": positions.get(doc["id"])}


def job_document(ws: Workspace, root: Path) -> dict[str, Any]:
    """One job's HTTP document; the workspace is scanned only when the job is queued."""
    doc = store.document(ws)
    positions = queue_positions(all_documents(root), root) if doc["state"] == "queued" else {}
    return with_details(doc, ws, positions)


def list_documents(root: Path, limit: int) -> list[dict[str, Any]]:
    """The ``limit`` most recent jobs' HTTP documents, newest first."""
    docs = all_documents(root)
    positions = queue_positions(docs, root)
    return [with_details(d, Workspace(Path(root) / d["id"]), positions) for d in docs[:limit]]
