"""The web page for editors (served at ``/``) and the endpoints only it needs.

The page is plain HTML/CSS/JS under ``worker/http/static/`` (no build step, nothing fetched from
elsewhere at run time). It needs a few things the job API does not give:

- ``GET  /v1/options``: separators, trackers and modes this server offers, whether a bearer
  token is required and whether a media root is configured. Public (no token), so the page
  can decide whether to ask for one.
- ``GET  /v1/media``: the video files under ``SONOMASK_MEDIA_ROOT``.
- ``POST /v1/uploads``: open a video for drawing. The body is the video itself (raw, file
  name in ``?name=``), or multipart with a ``video`` file, or JSON ``{"path": ...}`` (a file
  under the media root) or ``{"job": id}`` (the video of an earlier job). The video is
  probed with the same untrusted-input rules as the pipeline, so a bad file is refused now
  with the pipeline's own message. Answers ``201`` with the upload id and probe info.
- ``GET  /v1/uploads/{id}``: that probe info again.
- ``GET  /v1/uploads/{id}/frames/{n}.jpg``: frame ``n`` exactly (``?max=`` longest side).
- ``GET  /v1/uploads/{id}/peaks``: waveform peaks of the audio, on the picture's clock.
- ``POST /v1/uploads/{id}/track``: the tracking preview (``worker.http.tracking``): the
  keyframes drawn so far (multipart ``mask`` files and ``spec`` ``{"mask_frames",
  "tracker", "tracker_model"}``, as ``POST /v1/jobs`` takes them) tracked through the clip
  by the job's own tracker, in the background; only frames whose keyframes changed since
  the last preview are tracked again. ``202`` with the state.
- ``GET  /v1/uploads/{id}/track``: that state (progress, frames re-tracked, warnings).
- ``GET  /v1/uploads/{id}/track/masks/{n}.png``: frame ``n``'s tracked mask, video size.
- ``GET  /v1/jobs/{id}/peaks/{name}``: waveform peaks of a finished job's WAV stem.
- ``GET  /v1/jobs/{id}/links``: a URL per output that ``<video>``, ``<audio>`` and download
  links can use without an ``Authorization`` header: signed and expiring when a token is set
  (``GET /v1/signed/{id}/{name}``), the plain output URL otherwise.

Submitting uses the existing ``POST /v1/jobs`` multipart form with a text field ``upload``
(the upload id) in place of the ``video`` file; :func:`claim_upload` hands the video over.
Upload sessions live in ``<workspace>/.uploads/`` and expire like finished jobs.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from vision.tracker import TrackerName
from worker import media
from worker.errors import BadInput
from worker.http import links, paths, peaks, sessions, tracking
from worker.http.context import ApiSettings, job_or_404, output_or_404
from worker.http.problems import errors
from worker.http.safejson import json_body
from worker.http.staging import Staging
from worker.jobs import store
from worker.spec import MAX_KEYFRAMES, Mode, SeparatorName

STATIC = Path(__file__).resolve().parent / "static"


VIDEO_EXTS = {
    ".mp4",
    ".m4v",
    ".mov",
    ".3gp",
    ".mkv",
    ".webm",
    ".avi",
    ".ts",
    ".m2ts",
    ".mts",
    ".flv",
    ".ogv",
    ".mxf",
    ".wmv",
    ".asf",
    ".mpg",
    ".mpeg",
}


_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


_OPENAPI_UPLOAD = {
    "requestBody": {
        "required": True,
        "description": "the video as the raw body (file name in ?name=), as multipart field "
        "'video', or JSON naming a file under the media root or an earlier job's video",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {"video": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["path"],
                            "properties": {"path": {"type": "string"}},
                        },
                        {
                            "type": "object",
                            "required": ["job"],
                            "properties": {"job": {"type": "string"}},
                        },
                    ]
                },
                "example": {"path": "shoot/day1/take3.mov"},
            },
        },
    }
}


def router(cfg: ApiSettings, authorize: Callable[..., None]) -> APIRouter:
    """Routes for the page; ``cfg`` is the API's settings, ``authorize`` its token check."""
    r = APIRouter()
    auth = [Depends(authorize)]
    web = ["web page"]

    @r.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return _static_file("index.html")

    @r.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        return _static_file(name)

    @r.get("/v1/options", tags=web)
    async def options() -> dict[str, Any]:
        """What the page may offer: separators (sam-audio only with a model), trackers, modes,
        rankers, and the model names a spec may choose (``model``, ``tracker_model``). Async and
        free of I/O, so it answers at once however busy the thread pool is."""
        base = cfg.base
        model = base.model is not None or bool(base.models)
        separators = [s for s in get_args(SeparatorName) if s != "sam-audio" or model]
        return {
            "separators": separators,
            "default_separator": "auto",
            "auto_runs": "sam-audio" if base.model is not None else "classical",
            # Every tracker but flow and copy needs weights, like SAM Audio: offered only
            # when the operator configured weights for it (Settings.offers_tracker).
            "trackers": [t for t in get_args(TrackerName) if base.offers_tracker(t)],
            "default_tracker": "flow",
            "modes": list(get_args(Mode)),
            "default_mode": "both",
            "model": model,
            "models": sorted(base.models),
            "tracker_models": sorted(base.tracker_models),
            # SAM Audio's rankers: activity needs no weights; the judge and CLAP are offered
            # when the operator named their weights (SONOMASK_JUDGE_MODEL,
            # SONOMASK_CLAP_MODEL; a job checks they load).
            "rankers": [
                "activity",
                *(["judge"] if base.judge_model else []),
                *(["clap"] if base.clap_model else []),
            ],
            "auth": cfg.token is not None,
            "media_root": cfg.media_root is not None,
            "max_upload_bytes": cfg.max_upload,
        }

    @r.get("/v1/media", tags=web, dependencies=auth, responses=errors(401))
    def list_media(limit: int = 1000) -> dict[str, Any]:
        """Video files under SONOMASK_MEDIA_ROOT, paths relative to it (hidden folders skipped)."""
        root = cfg.media_root
        if root is None:
            return {"configured": False, "files": [], "truncated": False}
        files: list[dict[str, Any]] = []
        truncated = False
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(folder) / name
                if name.startswith(".") or path.suffix.lower() not in VIDEO_EXTS:
                    continue
                try:  # the same rule as a job's video_path (symlink loops included)
                    real = paths.media_file(path.relative_to(root).as_posix(), root, "path")
                except BadInput:
                    continue
                if len(files) >= max(1, min(limit, 10_000)):
                    truncated = True
                    break
                rel = path.relative_to(root).as_posix()
                files.append({"path": rel, "size": real.stat().st_size})
            if truncated:
                break
        return {"configured": True, "files": files, "truncated": truncated}

    _upload_routes(r, cfg, auth)
    _track_routes(r, cfg, auth)
    _job_routes(r, cfg, auth)
    return r


def _upload_routes(r: APIRouter, cfg: ApiSettings, auth: list[Any]) -> None:
    """Opening a video for drawing: the upload session, its frames and its waveform."""
    web = ["web page"]

    @r.post(
        "/v1/uploads",
        tags=web,
        status_code=201,
        dependencies=auth,
        openapi_extra=_OPENAPI_UPLOAD,
        responses=errors(400, 401, 403, 404, 408, 413, 422),
    )
    async def create_upload(request: Request, name: str | None = None) -> dict[str, Any]:
        """Open a video for drawing: raw body (``?name=``), multipart ``video``, or JSON."""
        cfg.housekeeping.kick()
        upload_id = uuid.uuid4().hex[:16]
        stage = Staging(sessions.uploads_root(cfg) / f".tmp-{upload_id}")
        tmp = stage.path
        ctype = request.headers.get("content-type", "")
        try:
            await run_in_threadpool(stage.create)
            if ctype.startswith("application/json"):
                body = await json_body(request)
                video, source = await run_in_threadpool(sessions.json_source, body, cfg, tmp)
            elif ctype.startswith("multipart/form-data"):
                video, source = (
                    await sessions.multipart_source(request, tmp, cfg.max_upload),
                    "upload",
                )
            else:
                video = tmp / sessions.safe_name(name)
                await sessions.save_stream(request, video, cfg.max_upload)
                source = "upload"
            meta = await cfg.offload(sessions.create_session, cfg, tmp, upload_id, video, source)
            stage.release(moved_to=sessions.uploads_root(cfg) / upload_id)
        except BaseException:
            stage.remove()
            raise
        return sessions.public(meta)

    @r.get("/v1/uploads/{upload_id}", tags=web, dependencies=auth, responses=errors(401, 404))
    def get_upload(upload_id: str) -> dict[str, Any]:
        return sessions.public(sessions.read_meta(sessions.session_dir(cfg, upload_id)))

    @r.get(
        "/v1/uploads/{upload_id}/frames/{n}.jpg",
        tags=web,
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **errors(401, 404, 422)},
    )
    def get_frame(upload_id: str, n: int, max: int = Query(1280, ge=16, le=8192)) -> Response:
        """Frame ``n`` (0-based, as ``mask_frames`` counts) as JPEG, longest side <= ``max``."""
        folder = sessions.session_dir(cfg, upload_id)
        meta = sessions.read_meta(folder)
        if not 0 <= n < meta["frames"]:
            raise HTTPException(404, f"frame {n} is outside 0..{meta['frames'] - 1}")
        pts = np.load(folder / "pts.npy", mmap_mode="r")
        jpeg = media.extract_frame(meta, pts, n, max)
        headers = {"Cache-Control": "private, max-age=86400, immutable"}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    @r.get(
        "/v1/uploads/{upload_id}/peaks",
        tags=web,
        dependencies=auth,
        responses=errors(401, 404, 422),
    )
    def get_upload_peaks(upload_id: str, stream: int = Query(0, ge=0)) -> Response:
        """Waveform min/max per bucket (``rate`` buckets a second), sample 0 = frame 0."""
        folder = sessions.session_dir(cfg, upload_id)
        cache = folder / f"peaks-{stream}.json"
        if not cache.exists():
            doc = peaks.upload_peaks(sessions.read_meta(folder), stream)
            part = cache.with_suffix(f".part{uuid.uuid4().hex[:6]}")
            part.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(part, cache)
        return Response(cache.read_bytes(), media_type="application/json")


_OPENAPI_TRACK = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["mask", "spec"],
                    "properties": {
                        "mask": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "mask PNGs at the video's size (white = object), "
                            "in the order of mask_frames",
                        },
                        "spec": {
                            "type": "string",
                            "description": "JSON: mask_frames (required), tracker, tracker_model",
                            "example": json.dumps({"mask_frames": [0, 40], "tracker": "flow"}),
                        },
                    },
                }
            }
        },
    }
}


def _track_routes(r: APIRouter, cfg: ApiSettings, auth: list[Any]) -> None:
    """The tracking preview of an upload: start it, follow it, read its masks."""
    web = ["web page"]
    slots = threading.Semaphore(max(1, cfg.heavy // 2))  # previews tracking at once

    @r.post(
        "/v1/uploads/{upload_id}/track",
        tags=web,
        status_code=202,
        dependencies=auth,
        response_model=tracking.TrackState,
        openapi_extra=_OPENAPI_TRACK,
        responses=errors(400, 401, 404, 409, 413, 415, 422),
    )
    async def track_upload(upload_id: str, request: Request) -> dict[str, Any]:
        """Track the keyframes drawn so far through the clip as the job will, in the
        background (follow it with ``GET``); frames the changed keyframes do not decide
        keep their masks."""
        folder = sessions.session_dir(cfg, upload_id)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(
                415, "send multipart/form-data: 'mask' files (PNG, white = object) and 'spec'"
            )
        form = await request.form(max_files=MAX_KEYFRAMES, max_fields=MAX_KEYFRAMES + 8)
        try:
            unknown = set(form.keys()) - {"mask", "spec"}
            if unknown:
                shown = sorted(k[:40] for k in unknown)[:8]
                raise HTTPException(400, f"unknown form field(s) {shown}; send mask and spec")
            masks = form.getlist("mask")
            if any(not isinstance(m, UploadFile) for m in masks):
                raise HTTPException(400, "each 'mask' field must be a file (PNG, white = object)")
            raw = form.get("spec") or "{}"
            if not isinstance(raw, str):
                raw = (await raw.read(tracking.MAX_SPEC_BYTES + 1)).decode("utf-8", "replace")
            meta = sessions.read_meta(folder)
            files = [m for m in masks if isinstance(m, UploadFile)]
            return await cfg.offload(tracking.start, folder, meta, raw, files, cfg.base, slots)
        finally:
            await form.close()

    @r.get(
        "/v1/uploads/{upload_id}/track",
        tags=web,
        dependencies=auth,
        response_model=tracking.TrackState,
        responses=errors(401, 404),
    )
    def get_track(upload_id: str) -> dict[str, Any]:
        """The tracking preview: state, progress, the frames it re-tracked, warnings."""
        return tracking.state(sessions.session_dir(cfg, upload_id))

    @r.get(
        "/v1/uploads/{upload_id}/track/masks/{n}.png",
        tags=web,
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **errors(401, 404)},
    )
    def get_track_mask(upload_id: str, n: int) -> Response:
        """Frame ``n``'s tracked mask at the video's size (PNG, white = object)."""
        png = tracking.mask_png(sessions.session_dir(cfg, upload_id), n)
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def _job_routes(r: APIRouter, cfg: ApiSettings, auth: list[Any]) -> None:
    """A finished job's waveforms and links the page's players can use."""
    web = ["web page"]

    @r.get(
        "/v1/jobs/{job_id}/peaks/{name:path}",
        tags=web,
        dependencies=auth,
        responses=errors(400, 401, 404),
    )
    def get_job_peaks(job_id: str, name: str) -> dict[str, Any]:
        """Waveform peaks of a stem (``target.wav``, ``residual.wav``, a several-object
        job's ``objects/<label>/target.wav``) of a finished job."""
        if not name.endswith(".wav"):
            raise HTTPException(
                400, f"{name!r} is not a WAV stem; ask for target.wav or residual.wav"
            )
        return peaks.wav_peaks(output_or_404(cfg, job_id, name))

    @r.get("/v1/jobs/{job_id}/links", tags=web, dependencies=auth, responses=errors(401, 404))
    def get_links(job_id: str) -> dict[str, Any]:
        """URLs for each output usable as a media ``src`` or a download without a header."""
        doc = store.document(job_or_404(cfg, job_id))
        expires = int(time.time()) + links.LINK_TTL
        urls = {}
        for name in doc["outputs"]:
            if cfg.token is None:
                urls[name] = f"/v1/jobs/{job_id}/outputs/{name}"
            else:
                sig = links.signature(cfg.token, job_id, name, expires)
                urls[name] = f"/v1/signed/{job_id}/{name}?expires={expires}&sig={sig}"
        return {"outputs": urls, "expires": expires}

    @r.get(
        "/v1/signed/{job_id}/{name:path}",
        tags=web,
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the file"},
            **errors(403, 404),
        },
    )
    def get_signed(job_id: str, name: str, expires: int = 0, sig: str = "") -> FileResponse:
        """An output through a link from ``/links`` (the signature stands in for the token)."""
        if cfg.token is not None:
            good = links.signature(cfg.token, job_id, name, expires)
            if not hmac.compare_digest(good, sig):
                raise HTTPException(403, "this link is not valid; reopen the job to get a new one")
            if expires < time.time():
                raise HTTPException(403, "this link has expired; reopen the job to get a new one")
        return FileResponse(output_or_404(cfg, job_id, name), filename=name)


def _static_file(name: str) -> FileResponse:
    """A file of the page; only names that exist in ``static/`` (nothing else is reachable)."""
    allowed = {p.name for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else set()
    if name not in allowed:
        raise HTTPException(404, f"no page file {name!r}")
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = _CSP
        headers["Referrer-Policy"] = "no-referrer"
    return FileResponse(STATIC / name, headers=headers)
