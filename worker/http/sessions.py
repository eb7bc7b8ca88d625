"""Upload sessions: a video opened on the web page for drawing, before it becomes a job.

A session is a folder under ``<workspace>/.uploads/<id>`` holding the video (or naming a
file under the media root), its probe info and every frame's timestamp; sessions expire
like finished jobs. ``claim_upload`` hands the video to a new job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile

from worker import media
from worker.errors import BadInput
from worker.http import paths
from worker.http.context import ApiSettings
from worker.jobs import store

UPLOADS = ".uploads"


CHUNK = 1 << 20


_ID_RE = re.compile(r"^[0-9a-f]{16}$")


def uploads_root(cfg: ApiSettings) -> Path:
    return Path(cfg.base.workspace) / UPLOADS


def session_dir(cfg: ApiSettings, upload_id: str) -> Path:
    """The folder of upload ``upload_id``, or 404 (ids are checked so no path can escape)."""
    folder = uploads_root(cfg) / upload_id
    if not _ID_RE.match(upload_id) or not (folder / "meta.json").is_file():
        raise HTTPException(
            404, f"no upload {upload_id!r} (it may have expired; open the video again)"
        )
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "meta.json").read_text())


def public(meta: dict[str, Any]) -> dict[str, Any]:
    """What the page is told about an upload (never server paths)."""
    keys = ("id", "name", "source", "width", "height", "duration", "fps", "frames")
    out = {k: meta[k] for k in keys}
    out.update(audio_streams=meta["audio_streams"], size=meta["size"], rotation=meta["rotation"])
    return out


def claim_upload(cfg: ApiSettings, upload_id: str, staging: Path) -> Path:
    """The video of upload ``upload_id`` for a new job (``POST /v1/jobs`` field ``upload``).

    A video stored by the upload (or taken from an earlier job) is hard-linked (copied where
    links are impossible) into the job's staging folder, so expiring the upload or the old
    job never takes it away; a file under the media root is used in place, as the JSON form
    of ``POST /v1/jobs`` does.
    """
    folder = session_dir(cfg, upload_id.strip())
    meta = read_meta(folder)
    src = Path(meta["path"])
    if meta["source"] == "media":
        root = cfg.media_root
        if root is None or not paths.inside(root, src) or not src.is_file():
            raise HTTPException(404, f"{meta['name']!r} is no longer under the media root")
        return src
    if not src.is_file():
        raise HTTPException(404, f"the video of upload {upload_id!r} is gone; open it again")
    (staging / "video").mkdir(parents=True, exist_ok=True)  # apart from the mask files
    dest = staging / "video" / src.name
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    return dest


def expire_uploads(cfg: ApiSettings) -> None:
    """Drop upload sessions older than the job TTL (and half-written ones older than a day)."""
    root = uploads_root(cfg)
    if not root.is_dir():
        return
    now = time.time()
    ttl = cfg.job_ttl.total_seconds()
    for d in root.iterdir():
        try:
            age = now - d.stat().st_mtime
        except OSError:
            continue
        limit = 24 * 3600 if d.name.startswith(".tmp-") else ttl
        if age > max(limit, 60):
            shutil.rmtree(d, ignore_errors=True)


def safe_name(name: str | None) -> str:
    """A file name a person recognises in error messages, with nothing a shell or path needs."""
    base = Path((name or "").replace("\\", "/")).name
    base = re.sub(r"[^\w.\- ]+", "_", base).strip(" .") or "video"
    stem, suffix = os.path.splitext(base)
    return stem[:80] + suffix.lower()[:8] if suffix else stem[:80] + ".bin"


def create_session(cfg: ApiSettings, tmp: Path, upload_id: str, video: Path, source: str) -> dict:
    """Probe ``video``, record its frames, and publish ``tmp`` as upload ``upload_id``."""
    p = media.probe(video)
    if p.duration > cfg.base.max_video_seconds:
        raise BadInput(
            f"{p.path.name} is {p.duration:.0f} s long; this server takes at most "
            f"{cfg.base.max_video_seconds:.0f} s (SONOMASK_MAX_VIDEO_SECONDS)"
        )
    pts, tick = media.frame_pts(p)
    w, h = p.display_size
    np.save(tmp / "pts.npy", np.asarray(pts, dtype=np.int64))
    meta = {
        "id": upload_id,
        "name": video.name,
        "source": source,
        "path": str(video.resolve()),
        "width": w,
        "height": h,
        "rotation": p.rotation,
        "fps": round(p.frame_rate, 6),
        "frames": len(pts),
        "duration": round(max(p.duration, (pts[-1] - pts[0]) * tick), 6),
        "tick": tick,
        "video_index": media.video_specifier(p),
        "format_start": p.format_start,
        "audio_streams": len(p.audio_streams),
        "size": video.stat().st_size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    final = uploads_root(cfg) / upload_id
    os.replace(tmp, final)
    if source == "upload":  # the path moved with its folder
        meta["path"] = str(final / video.name)
        (final / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def json_source(body: dict[str, Any], cfg: ApiSettings, tmp: Path) -> tuple[Path, str]:
    """``{"path": rel}`` under the media root (used in place) or ``{"job": id}`` (linked)."""
    if "path" in body:
        return paths.media_file(body["path"], cfg.media_root, "path"), "media"
    if "job" in body and isinstance(body["job"], str):
        try:
            ws = store.job_workspace(cfg.base.workspace, body["job"])
        except KeyError:
            raise HTTPException(404, f"no job {body['job'][:40]!r}") from None
        src = Path(ws.spec.video)
        if not src.is_file():
            raise HTTPException(404, f"the video of job {body['job']} is gone")
        dest = tmp / src.name
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        return dest, "upload"
    raise HTTPException(
        400,
        'send the video as the body, or JSON {"path": "<file under the media root>"} or {"job": "<id>"}',
    )


async def save_stream(request: Request, dest: Path, max_bytes: int) -> None:
    length = int(request.headers.get("content-length") or 0)
    if length > max_bytes:
        raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
    total = 0
    with dest.open("wb") as f:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
            f.write(chunk)
    if total == 0:
        raise HTTPException(400, "the upload is empty; send the video file as the request body")


async def multipart_source(request: Request, tmp: Path, max_bytes: int) -> Path:
    length = int(request.headers.get("content-length") or 0)
    if length > max_bytes + 1024 * 1024:
        raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
    form = await request.form(max_files=1, max_fields=4)
    try:
        video = form.get("video")
        if not isinstance(video, UploadFile):
            raise HTTPException(400, "the 'video' file field is missing")
        dest = tmp / safe_name(video.filename)
        total = 0
        with dest.open("wb") as f:
            while chunk := await video.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
                f.write(chunk)
        return dest
    finally:
        await form.close()
