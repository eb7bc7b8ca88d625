"""The HTTP API editors' plugins and automation call (FastAPI, OpenAPI at /openapi.json).

Contract (keep these names): ``POST /v1/jobs`` takes multipart fields ``video`` (file),
``mask`` (file, repeatable, in keyframe order) and ``spec`` (JSON string with the JobSpec's
other fields), or a JSON body with ``video_path`` / ``mask_paths`` under
``SONOMASK_MEDIA_ROOT`` plus the same fields; it answers ``202 {"id", "state", "url"}``.
``GET /v1/jobs/{id}`` answers ``{"id", "state", "stage", "progress", "error", "outputs",
"created", "finished"}`` plus ``queue_position`` (while queued) and the spec's ``name``
and ``mode`` (``worker.http.joblist``). Bad requests get a 4xx with a message a person can
act on.

Nothing a client sends is trusted: paths go through ``worker.http.paths``, JSON through
``worker.http.safejson``, models through ``stages.models.resolve_model``, webhooks through
``worker.jobs.webhooks``; bodies are bounded in time and size (``worker.http.asgi``). Probing and
file copies run in the thread pool, so one upload never stalls other requests.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from kombu.exceptions import OperationalError
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from worker.errors import BadInput, QueueUnavailable, SonomaskError
from worker.http import joblist, paths, safejson, staging
from worker.http.asgi import AllowOptions, BodyGuard, BodyTimeout, BodyTooLarge
from worker.http.context import ApiSettings, job_or_404, output_or_404
from worker.http.problems import errors, fix_openapi
from worker.http.safejson import json_body
from worker.http.sessions import expire_uploads
from worker.http.uploads import from_multipart, openapi_submit
from worker.jobs import store, webhooks
from worker.jobs.intake import check_inputs
from worker.settings import Settings
from worker.spec import MAX_KEYFRAMES, MAX_OBJECTS, JobSpec, first_error
from worker.stages.models import NotOffered

log = logging.getLogger("sonomask.api")
BROKER_DOWN = "the job queue (broker) is unreachable; try again shortly"
STOPPING_SECONDS = 30.0  # a cancelled job's stage gets this long to stop before DELETE frees it


class JobAccepted(BaseModel):
    id: str = Field(examples=["3f2a9c0d1e4b5a67"])
    state: str = Field(examples=["queued"])
    url: str = Field(examples=["/v1/jobs/3f2a9c0d1e4b5a67"])


class ObjectOutputs(BaseModel):
    label: str = Field(examples=["guitar"])
    outputs: list[str] = Field(
        default_factory=list, examples=[["objects/guitar/target.wav", "objects/guitar/masks.npz"]]
    )
    confidence: float | None = Field(default=None, ge=0, le=1)


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
    confidence: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="how well the prompt explains the separated sound (weight-free backend: "
        "held-out correlation of the object's motion with the target's loudness); null "
        "when the backend cannot say",
    )
    warnings: list[str] = Field(default_factory=list)
    bad_input: bool = False
    message: str | None = Field(
        default=None,
        description="what the stage is doing now, e.g. the current object and window",
        examples=["window 1/2, objects guitar, drum: NMF dictionary"],
    )
    objects: list[ObjectOutputs] | None = Field(
        default=None,
        description="several-object jobs: each object's label and its outputs (names as in "
        "'outputs', e.g. objects/guitar/target.wav); null for a single-object job",
    )
    queue_position: int | None = Field(
        default=None,
        ge=1,
        examples=[2],
        description="while queued: 1 for the oldest queued job, 2 for the next, ... (order "
        "of creation among all queued jobs, whichever stage they wait for: an estimate of "
        "when a worker takes it); null otherwise",
    )
    name: str | None = Field(
        default=None, examples=["take3.mov"], description="the video's file name"
    )
    mode: str | None = Field(default=None, examples=["both"], description="isolate | remove | both")


class Health(BaseModel):
    ok: bool
    broker: bool
    worker_count: int = Field(ge=0)
    workers: dict[str, list[str]] | None = Field(
        default=None, description="worker name -> queues; only with a valid token"
    )
    error: str | None = None


def create_app(
    submit_fn: Any = None, cancel_fn: Any = None, settings: Settings | None = None
) -> FastAPI:
    """Build the app; ``submit_fn``/``cancel_fn`` default to the Celery ones, ``settings`` to
    this process's (read from the environment once, here)."""
    cfg = ApiSettings(settings or Settings.from_env())
    cfg.housekeeping.chores.append(lambda: expire_uploads(cfg))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        gone = await run_in_threadpool(staging.sweep, cfg.base.workspace)
        if gone:
            log.warning("removed %d upload folder(s) left by a stopped server", len(gone))
        yield

    api = FastAPI(
        title="sonomask",
        version=metadata.version("sonomask"),
        description="Isolate or remove the sound of an on-screen object in a video.",
        lifespan=lifespan,
    )
    _error_handlers(api)
    authorized = _authorizer(cfg)

    def authorize(request: Request) -> None:
        if not authorized(request):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer ...)")

    _job_routes(api, cfg, authorize, submit_fn, cancel_fn)
    _health_route(api, authorized)
    from worker.http.page import router as web_router

    api.include_router(web_router(cfg, authorize))
    api.add_middleware(BodyGuard, timeout=cfg.body_timeout, max_bytes=cfg.max_upload + (1 << 20))
    api.add_middleware(AllowOptions, routes=api.router.routes)

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title,
                version=api.version,
                description=api.description,
                routes=api.routes,
            )
            api.openapi_schema = fix_openapi(schema)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api


def _authorizer(cfg: ApiSettings) -> Callable[[Request], bool]:
    expected = f"Bearer {cfg.token}".encode() if cfg.token else b""

    def authorized(request: Request) -> bool:
        """No token configured, or the right one (compared in constant time)."""
        if cfg.token is None:
            return True
        header = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(header, expected)

    return authorized


def _error_handlers(api: FastAPI) -> None:
    """Map each refusal to its status; every answer is ``{"detail": one line}``."""

    def handle(status: int, detail: Callable[[Exception], str] = str, close: bool = False):
        async def handler(request: Request, exc: Exception) -> JSONResponse:
            headers = {"Connection": "close"} if close else None
            return JSONResponse({"detail": detail(exc)}, status_code=status, headers=headers)

        return handler

    def validation(exc: Exception) -> str:
        errs = exc.errors() if isinstance(exc, RequestValidationError) else []
        err = errs[0] if errs else {}
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        return f"{loc}: {err.get('msg', 'invalid request')}"

    table: list[tuple[type[Exception], Any]] = [
        (RequestValidationError, handle(400, validation)),
        (safejson.BadJSON, handle(400)),
        (paths.PathInvalid, handle(400)),
        (paths.PathRefused, handle(403)),
        (webhooks.WebhookRefused, handle(400)),
        (NotOffered, handle(400)),
        (BadInput, handle(422)),
        (BodyTimeout, handle(408, close=True)),
        (BodyTooLarge, handle(413, close=True)),
        (QueueUnavailable, handle(503, lambda e: BROKER_DOWN)),
        (OperationalError, handle(503, lambda e: BROKER_DOWN)),
        (SonomaskError, handle(500)),
    ]
    for cls, handler in table:
        api.add_exception_handler(cls, handler)


def _job_routes(
    api: FastAPI, cfg: ApiSettings, authorize: Callable[..., None], submit_fn: Any, cancel_fn: Any
) -> None:
    auth = [Depends(authorize)]

    def submit(spec: JobSpec, job_id: str) -> str:
        from worker.jobs import tasks

        return (submit_fn or tasks.submit)(spec, cfg.base, job_id)

    @api.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobAccepted,
        dependencies=auth,
        openapi_extra=openapi_submit(),
        responses=errors(400, 401, 403, 404, 408, 413, 415, 422, 503),
    )
    async def create_job(request: Request) -> JobAccepted:
        """Queue a job from uploads (multipart) or from files under the media root (JSON)."""
        cfg.housekeeping.kick()
        job_id = uuid.uuid4().hex[:16]
        stage = staging.Staging(cfg.base.workspace / f".upload-{job_id}")
        ctype = request.headers.get("content-type", "")
        try:
            if ctype.startswith("multipart/form-data"):
                fields = await from_multipart(request, stage, cfg)
            elif ctype.startswith("application/json"):
                fields = await run_in_threadpool(_from_json, await json_body(request), cfg)
            else:
                raise HTTPException(
                    415,
                    "send multipart/form-data (video, mask, spec) or "
                    "application/json (video_path, mask_paths, ...)",
                )
            await cfg.offload(_queue, fields, stage, job_id, cfg, submit)
        except BaseException:
            stage.remove()
            raise
        return JobAccepted(id=job_id, state="queued", url=f"/v1/jobs/{job_id}")

    @api.get("/v1/jobs", response_model=list[JobDocument], dependencies=auth, responses=errors(401))
    def list_jobs(limit: int = 50) -> list[dict[str, Any]]:
        """The most recent jobs, newest first."""
        return joblist.list_documents(cfg.base.workspace, limit=max(1, min(limit, 1000)))

    _job_item_routes(api, cfg, auth, cancel_fn)


def _job_item_routes(api: FastAPI, cfg: ApiSettings, auth: list[Any], cancel_fn: Any) -> None:
    """One job: its document, its outputs, cancelling or deleting it."""

    @api.get(
        "/v1/jobs/{job_id}",
        response_model=JobDocument,
        dependencies=auth,
        responses=errors(401, 404),
    )
    def get_job(job_id: str) -> dict[str, Any]:
        return joblist.job_document(job_or_404(cfg, job_id), cfg.base.workspace)

    @api.get(
        "/v1/jobs/{job_id}/outputs/{name:path}",
        dependencies=auth,
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the file"},
            **errors(401, 404),
        },
    )
    def get_output(job_id: str, name: str) -> FileResponse:
        """Download one output (the file names ``sonomask separate`` writes; an object's
        own outputs are ``objects/<label>/<name>``)."""
        return FileResponse(output_or_404(cfg, job_id, name), filename=Path(name).name)

    @api.delete(
        "/v1/jobs/{job_id}",
        response_model=JobDocument,
        dependencies=auth,
        responses=errors(401, 404, 409, 503),
    )
    def delete_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (partial outputs are removed); a finished one
        (succeeded, failed, cancelled) is deleted with all its files, then answers 404."""
        ws = job_or_404(cfg, job_id)
        doc = store.document(ws)
        details = joblist.describe(ws)  # read before a finished job's files go
        if doc["state"] in store.FINISHED:
            _free(ws, doc, cfg.base.workspace)
            return {**doc, **details}
        from worker.jobs import tasks

        if cancel_fn is not None:
            return {**cancel_fn(job_id, cfg.base), **details}
        return {**tasks.cancel(job_id, cfg.base, wait=False), **details}


def _health_route(api: FastAPI, authorized: Callable[[Request], bool]) -> None:
    @api.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "the broker is unreachable"}},
    )
    def healthz(request: Request) -> JSONResponse:
        """Broker and worker reachability; worker names only for a valid token."""
        from worker.jobs.queue import app as celery_app

        full = authorized(request)
        broker_ok, workers, error = False, {}, None
        try:
            with celery_app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
                broker_ok = True
            replies = celery_app.control.inspect(timeout=1.0).active_queues() or {}
            workers = {name: sorted(q["name"] for q in qs) for name, qs in replies.items()}
        except Exception as e:  # noqa: BLE001 - reported, not raised
            error = str(e) if full else "the broker did not answer"
        body: dict[str, Any] = {"ok": broker_ok, "broker": broker_ok, "worker_count": len(workers)}
        if full:
            body["workers"] = workers
        if error:
            body["error"] = error
        return JSONResponse(body, status_code=200 if broker_ok else 503)


def _from_json(body: dict[str, Any], cfg: ApiSettings) -> dict[str, Any]:
    """JobSpec fields from the JSON form: every named file resolved under the media root."""
    fields = dict(body)
    if "video" in fields or "masks" in fields:
        raise HTTPException(
            400,
            "name files with video_path / mask_paths (relative to the "
            "media root), not video / masks",
        )
    if "video_path" not in fields:
        raise HTTPException(400, "video_path is required")
    root = cfg.media_root
    fields["video"] = str(paths.media_file(fields.pop("video_path"), root, "video_path"))
    _resolve_masks(fields, root, "")
    objects = fields.get("objects")
    if isinstance(objects, list) and len(objects) <= MAX_OBJECTS:
        fields["objects"] = [
            _resolve_masks(dict(o), root, f"objects[{j}].") if isinstance(o, dict) else o
            for j, o in enumerate(objects)
        ]
    fields.pop("out", None)
    return fields


def _resolve_masks(fields: dict[str, Any], root: Path, where: str) -> dict[str, Any]:
    """``mask_paths`` and ``keyframes[].mask`` (of the job or of one object, ``where``)
    resolved under the media root into ``masks`` / ``keyframes``; ``masks`` is refused."""
    if where and "masks" in fields:
        raise HTTPException(
            400, f"name {where}masks with {where}mask_paths (relative to the media root)"
        )
    mask_paths = fields.pop("mask_paths", None) or []
    if not isinstance(mask_paths, list) or len(mask_paths) > MAX_KEYFRAMES:
        raise HTTPException(
            400, f"{where}mask_paths must be a list of at most {MAX_KEYFRAMES} file paths"
        )
    if mask_paths or not where:
        fields["masks"] = [
            str(paths.media_file(p, root, f"{where}mask_paths[{i}]"))
            for i, p in enumerate(mask_paths)
        ]
    keyframes = fields.get("keyframes")
    if isinstance(keyframes, list) and len(keyframes) <= MAX_KEYFRAMES:
        fields["keyframes"] = [
            {**k, "mask": str(paths.media_file(k["mask"], root, f"{where}keyframes[{i}].mask"))}
            if isinstance(k, dict) and k.get("mask") is not None
            else k
            for i, k in enumerate(keyframes)
        ]
    return fields


def _queue(
    fields: dict[str, Any],
    stage: staging.Staging,
    job_id: str,
    cfg: ApiSettings,
    submit: Callable[[JobSpec, str], str],
) -> None:
    """Validate the spec and the media, move the uploads into the job, queue it (in a
    worker thread: probing and PIL are blocking)."""
    try:
        spec = JobSpec(**fields)
    except ValidationError as e:
        raise HTTPException(400, first_error(e)) from None
    check_inputs(spec, cfg.base)
    folder = cfg.base.workspace / job_id
    if stage.created:
        final = folder / "inputs"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage.path, final)
        stage.release(moved_to=final)
        spec = _rebase(spec, stage.path, final)
    try:
        submit(spec, job_id)
    except (QueueUnavailable, OperationalError, ConnectionError, TimeoutError):
        shutil.rmtree(folder, ignore_errors=True)
        raise QueueUnavailable(BROKER_DOWN) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _free(ws: Any, doc: dict[str, Any], root: Path) -> None:
    """Delete a finished job's folder (renamed first, so it is gone for readers at once)."""
    if doc["state"] == "cancelled" and not ws.file(store.STOPPED_MARK).exists():
        task = ws.manifest().get("task_id")
        try:
            age = (datetime.now(UTC) - datetime.fromisoformat(doc["finished"])).total_seconds()
        except (TypeError, ValueError):
            age = 0.0
        if task and age < STOPPING_SECONDS:
            raise HTTPException(
                409, "the job is still stopping after its cancel; try again in a few seconds"
            )
    trash = root / f".deleted-{ws.job_id}-{uuid.uuid4().hex[:6]}"
    try:
        os.replace(ws.path, trash)
    except FileNotFoundError:
        raise HTTPException(404, f"no job {ws.job_id!r}") from None
    shutil.rmtree(trash, ignore_errors=True)


def _rebase(spec: JobSpec, old: Path, new: Path) -> JobSpec:
    def move(p: str | None) -> str | None:
        if p is None:
            return None
        path = Path(p)
        return str(new / path.relative_to(old)) if path.is_relative_to(old) else p

    def moved(keyframes: list[Any]) -> list[Any]:
        return [k.model_copy(update={"mask": move(k.mask)}) for k in keyframes]

    objects = [o.model_copy(update={"keyframes": moved(o.keyframes)}) for o in spec.objects]
    return spec.model_copy(
        update={"video": move(spec.video), "keyframes": moved(spec.keyframes), "objects": objects}
    )


app = create_app()
