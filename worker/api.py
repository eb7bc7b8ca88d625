"""The HTTP API editors' plugins and automation call (FastAPI, OpenAPI at /openapi.json).

Contract (keep these names): ``POST /v1/jobs`` takes multipart fields ``video`` (file),
``mask`` (file, repeatable, in keyframe order) and ``spec`` (JSON string with the JobSpec's
other fields), or a JSON body with ``video_path`` / ``mask_paths`` under
``SONOMASK_MEDIA_ROOT`` plus the same fields; it answers ``202 {"id", "state", "url"}``.
``GET /v1/jobs/{id}`` answers ``{"id", "state", "stage", "progress", "error", "outputs",
"created", "finished"}``. Bad requests get a 4xx with a message a person can act on.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from worker import jobs, media
from worker.config import Settings
from worker.errors import BadInput, SonomaskError, as_sonomask_error
from worker.spec import JobSpec, first_error
from worker.web import json_body

CHUNK = 1 << 20


class JobAccepted(BaseModel):
    id: str = Field(examples=["3f2a9c0d1e4b5a67"])
    state: str = Field(examples=["queued"])
    url: str = Field(examples=["/v1/jobs/3f2a9c0d1e4b5a67"])


class JobDocument(BaseModel):
    id: str
    state: str = Field(description="queued | running | succeeded | failed | cancelled")
    stage: str | None = Field(default=None, examples=["separate"])
    progress: float = Field(ge=0, le=1, examples=[0.42])
    error: str | None = None
    outputs: list[str] = Field(default_factory=list, examples=[["target.wav", "isolated.mp4"]])
    created: str | None = None
    finished: str | None = None
    backend: str | None = None
    warnings: list[str] = Field(default_factory=list)
    bad_input: bool = False


class Problem(BaseModel):
    detail: str


SPEC_EXAMPLE = {"mask_frames": [0], "mode": "both", "separator": "auto", "text": None, "spans": []}
_OPENAPI_SUBMIT = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video", "mask"],
                    "properties": {
                        "video": {"type": "string", "format": "binary"},
                        "mask": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "mask PNGs (white = object), keyframe order",
                        },
                        "spec": {
                            "type": "string",
                            "description": "JSON JobSpec fields",
                            "example": json.dumps(SPEC_EXAMPLE),
                        },
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["video_path"],
                    "properties": {
                        "video_path": {"type": "string"},
                        "mask_paths": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "example": {
                    "video_path": "shoot/day1/take3.mov",
                    "mask_paths": ["shoot/day1/take3_guitar.png"],
                    **SPEC_EXAMPLE,
                },
            },
        },
    }
}


class ApiSettings:
    def __init__(self) -> None:
        env = os.environ
        self.base = Settings.from_env()
        root = env.get("SONOMASK_MEDIA_ROOT")
        self.media_root = Path(root).resolve() if root else None
        self.token = env.get("SONOMASK_API_TOKEN") or None
        self.max_upload = int(env.get("SONOMASK_MAX_UPLOAD_BYTES", 4 * 1024**3))
        self.job_ttl = timedelta(seconds=float(env.get("SONOMASK_JOB_TTL", 7 * 24 * 3600)))


def create_app(submit_fn: Any = None, cancel_fn: Any = None) -> FastAPI:
    """Build the app; ``submit_fn``/``cancel_fn`` default to the Celery ones."""
    cfg = ApiSettings()
    api = FastAPI(
        title="sonomask",
        version="0.1.0",
        description="Isolate or remove the sound of an on-screen object in a video.",
    )

    def submit(spec: JobSpec, job_id: str) -> str:
        from worker import tasks

        return (submit_fn or tasks.submit)(spec, cfg.base, job_id)

    def authorize(request: Request) -> None:
        if cfg.token is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {cfg.token}":
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer ...)")

    @api.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return JSONResponse(
            {"detail": f"{loc}: {err.get('msg', 'invalid request')}"}, status_code=400
        )

    @api.exception_handler(BadInput)
    async def _bad_input(request: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @api.exception_handler(SonomaskError)
    async def _internal(request: Request, exc: SonomaskError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @api.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        dependencies=[Depends(authorize)],
        openapi_extra=_OPENAPI_SUBMIT,
        responses={
            400: {"model": Problem},
            401: {"model": Problem},
            403: {"model": Problem},
            413: {"model": Problem},
            422: {"model": Problem},
        },
    )
    async def create_job(request: Request) -> JobAccepted:
        """Queue a job from uploads (multipart) or from files under the media root (JSON)."""
        jobs.expire_jobs(cfg.base.workspace, cfg.job_ttl)
        job_id = uuid.uuid4().hex[:16]
        staging = cfg.base.workspace / f".upload-{job_id}"
        ctype = request.headers.get("content-type", "")
        try:
            if ctype.startswith("multipart/form-data"):
                fields = await _from_multipart(request, staging, cfg)
            elif ctype.startswith("application/json"):
                fields = _from_json(await json_body(request), cfg)
            else:
                raise HTTPException(
                    415,
                    "send multipart/form-data (video, mask, spec) or "
                    "application/json (video_path, mask_paths, ...)",
                )
            try:
                spec = JobSpec(**fields)
            except ValidationError as e:
                raise HTTPException(400, first_error(e)) from None
            _check_inputs(spec)
            final = cfg.base.workspace / job_id / "inputs"
            if staging.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging, final)
                spec = _rebase(spec, staging, final)
            submit(spec, job_id)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return JobAccepted(id=job_id, state="queued", url=f"/v1/jobs/{job_id}")

    @api.get("/v1/jobs", response_model=list[JobDocument], dependencies=[Depends(authorize)])
    def list_jobs(limit: int = 50) -> list[dict[str, Any]]:
        """The most recent jobs, newest first."""
        return jobs.list_jobs(cfg.base.workspace, limit=max(1, min(limit, 1000)))

    def _ws(job_id: str):  # noqa: ANN202
        try:
            return jobs.job_workspace(cfg.base.workspace, job_id)
        except KeyError:
            raise HTTPException(404, f"no job {job_id!r}") from None

    @api.get(
        "/v1/jobs/{job_id}",
        response_model=JobDocument,
        dependencies=[Depends(authorize)],
        responses={404: {"model": Problem}},
    )
    def get_job(job_id: str) -> dict[str, Any]:
        return jobs.document(_ws(job_id))

    @api.get(
        "/v1/jobs/{job_id}/outputs/{name}",
        dependencies=[Depends(authorize)],
        responses={404: {"model": Problem}},
    )
    def get_output(job_id: str, name: str) -> FileResponse:
        """Download one output (the file names ``sonomask separate`` writes)."""
        ws = _ws(job_id)
        try:
            path = jobs.output_path(ws, name)
        except KeyError:
            raise HTTPException(404, f"job {job_id} has no output {name!r} (yet)") from None
        return FileResponse(path, filename=name)

    @api.delete(
        "/v1/jobs/{job_id}",
        response_model=JobDocument,
        dependencies=[Depends(authorize)],
        responses={404: {"model": Problem}},
    )
    def delete_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (partial outputs are removed)."""
        _ws(job_id)
        from worker import tasks

        if cancel_fn is not None:
            return cancel_fn(job_id, cfg.base)
        return tasks.cancel(job_id, cfg.base, wait=False)

    @api.get("/healthz")
    def healthz() -> JSONResponse:
        """Broker and worker reachability."""
        from worker.app import app as celery_app

        broker_ok, workers = False, {}
        try:
            with celery_app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
                broker_ok = True
            replies = celery_app.control.inspect(timeout=1.0).active_queues() or {}
            workers = {name: sorted(q["name"] for q in qs) for name, qs in replies.items()}
        except Exception as e:  # noqa: BLE001 - reported, not raised
            return JSONResponse(
                {"ok": False, "broker": broker_ok, "workers": workers, "error": str(e)},
                status_code=503,
            )
        ok = broker_ok
        return JSONResponse(
            {"ok": ok, "broker": broker_ok, "workers": workers}, status_code=200 if ok else 503
        )

    from worker.web import router as web_router

    api.include_router(web_router(cfg, authorize))
    return api


def _under_root(rel: str, cfg: ApiSettings) -> str:
    if cfg.media_root is None:
        raise HTTPException(
            400,
            "this server has no SONOMASK_MEDIA_ROOT; upload the files "
            "as multipart/form-data instead",
        )
    path = (cfg.media_root / rel).resolve()
    if not path.is_relative_to(cfg.media_root):
        raise HTTPException(403, f"{rel!r} is outside the media root")
    if not path.is_file():
        raise HTTPException(404, f"{rel!r} does not exist under the media root")
    return str(path)


def _from_json(body: dict[str, Any], cfg: ApiSettings) -> dict[str, Any]:
    fields = dict(body)
    if "video" in fields or "masks" in fields:
        raise HTTPException(
            400,
            "name files with video_path / mask_paths (relative to the "
            "media root), not video / masks",
        )
    if "video_path" not in fields:
        raise HTTPException(400, "video_path is required")
    fields["video"] = _under_root(str(fields.pop("video_path")), cfg)
    fields["masks"] = [_under_root(str(p), cfg) for p in fields.pop("mask_paths", []) or []]
    fields.pop("out", None)
    return fields


async def _save_upload(upload: UploadFile, dest: Path, budget: list[int], max_bytes: int) -> None:
    with dest.open("wb") as f:
        while chunk := await upload.read(CHUNK):
            budget[0] += len(chunk)
            if budget[0] > max_bytes:
                raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
            f.write(chunk)


async def _from_multipart(request: Request, staging: Path, cfg: ApiSettings) -> dict[str, Any]:
    length = int(request.headers.get("content-length") or 0)
    if length > cfg.max_upload + 1024 * 1024:
        raise HTTPException(413, f"upload larger than the limit of {cfg.max_upload} bytes")
    form = await request.form(max_files=64, max_fields=64)
    try:
        video = form.get("video")
        masks = form.getlist("mask")
        upload = form.get("upload")  # the web page's upload id instead of the video file
        unknown = set(form.keys()) - {"video", "mask", "spec", "upload"}
        if unknown:
            raise HTTPException(
                400, f"unknown form field(s) {sorted(unknown)}; send video, mask and spec"
            )
        if not isinstance(video, UploadFile) and not isinstance(upload, str):
            raise HTTPException(400, "the 'video' file field is missing")
        if any(not isinstance(m, UploadFile) for m in masks):
            raise HTTPException(400, "each 'mask' field must be a file (PNG, white = object)")
        raw_spec = form.get("spec") or "{}"
        if not isinstance(raw_spec, str):
            raw_spec = (await raw_spec.read()).decode()
        try:
            fields = json.loads(raw_spec)
        except ValueError:
            raise HTTPException(400, "the 'spec' field is not valid JSON") from None
        if not isinstance(fields, dict):
            raise HTTPException(400, "the 'spec' field must be a JSON object")
        for key in ("video", "masks", "video_path", "mask_paths", "out"):
            if key in fields:
                raise HTTPException(400, f"'{key}' cannot be set in spec; upload the files")
        staging.mkdir(parents=True, exist_ok=True)
        budget = [0]
        if isinstance(video, UploadFile):
            suffix = Path(video.filename or "video").suffix.lower()[:8] or ".bin"
            vpath = staging / f"video{suffix}"
            await _save_upload(video, vpath, budget, cfg.max_upload)
        else:
            from worker.web import claim_upload

            vpath = claim_upload(cfg, str(upload), staging)
        mpaths = []
        for i, m in enumerate(masks):
            p = staging / f"mask{i}.png"
            await _save_upload(m, p, budget, cfg.max_upload)
            mpaths.append(str(p))
        fields["video"] = str(vpath)
        fields["masks"] = mpaths
        return fields
    finally:
        await form.close()


def _check_inputs(spec: JobSpec) -> None:
    """Refuse bad media and masks now, with the pipeline's own messages, not after queueing."""
    from worker.pipeline import _load_keyframe_mask, check_separator_config

    try:
        p = media.probe(Path(spec.video))
        p.audio(spec.audio_stream)
        for k in spec.keyframes:
            _load_keyframe_mask(k, p.display_size)
        check_separator_config(spec, Settings.from_env())
    except Exception as exc:  # vision/model errors become BadInput with their message
        raise as_sonomask_error(exc) from exc


def _rebase(spec: JobSpec, old: Path, new: Path) -> JobSpec:
    def move(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p)
        return str(new / path.relative_to(old)) if path.is_relative_to(old) else p

    keyframes = [k.model_copy(update={"mask": move(k.mask)}) for k in spec.keyframes]
    return spec.model_copy(update={"video": move(spec.video), "keyframes": keyframes})


app = create_app()
