"""The multipart form of ``POST /v1/jobs``: uploads land in the job's own staging folder.

The form's ``spec`` may not name any server file: ``video``, ``masks``, ``video_path``,
``mask_paths``, ``out`` and ``keyframes[].mask`` are refused there. Masks come only from
the uploaded ``mask`` files, in keyframe order, placed with ``mask_frames`` or
``mask_times``; ``keyframes`` with a ``box`` stay allowed (and ``boxes`` follow the masks).
The file copies run in the thread pool; the body itself is streamed by Starlette.

Several objects: the ``spec`` holds ``objects: [{label, mask_frames | mask_times, boxes,
text, spans}]`` (no ``masks`` or ``keyframes[].mask``: no server file) and each object's
masks are file parts named ``mask:<label>``, in that object's keyframe order. The label in
a part's name only picks its object; the file is saved under a name the server makes
(``mask-<object index>-<n>.png``). Plain ``mask`` parts do not mix with ``objects``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from worker.http import paths, safejson
from worker.http.context import ApiSettings
from worker.http.staging import Staging

SPEC_EXAMPLE = {"mask_frames": [0], "mode": "both", "separator": "auto", "text": None, "spans": []}
MAX_SPEC_BYTES = 1 << 20
_SERVER_FILES = ("video", "masks", "video_path", "mask_paths", "out")
MASK_PART = "mask:"  # a several-object job's mask parts: mask:<label>


def openapi_submit() -> dict[str, Any]:
    """The request bodies of ``POST /v1/jobs`` for the OpenAPI document."""
    return {
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
                                "description": "mask PNGs (white = object), keyframe order; "
                                "with spec.objects, name each object's parts 'mask:<label>' "
                                "instead",
                            },
                            "spec": {
                                "type": "string",
                                "description": "JSON JobSpec fields; no file paths "
                                "(keyframes[].mask is refused: upload masks as 'mask')",
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


def _copy(upload: UploadFile, dest: Path, budget: list[int], max_bytes: int) -> None:
    upload.file.seek(0)
    with dest.open("wb") as f:
        while chunk := upload.file.read(1 << 20):
            budget[0] += len(chunk)
            if budget[0] > max_bytes:
                raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
            f.write(chunk)


def _spec_fields(raw: str) -> dict[str, Any]:
    """The ``spec`` field as JobSpec fields that name no server file."""
    if len(raw) > MAX_SPEC_BYTES:
        raise HTTPException(413, f"the 'spec' field is larger than {MAX_SPEC_BYTES} bytes")
    fields = safejson.loads(raw, "the 'spec' field")
    if not isinstance(fields, dict):
        raise HTTPException(400, "the 'spec' field must be a JSON object")
    for key in _SERVER_FILES:
        if key in fields:
            raise HTTPException(400, f"'{key}' cannot be set in spec; upload the files")
    _no_mask_files(fields, "", "a 'mask' file")
    objects = fields.get("objects")
    if objects is not None and not isinstance(objects, list):
        raise HTTPException(400, "'objects' must be a list of objects")
    for j, o in enumerate(objects or []):
        if isinstance(o, dict):
            for key in ("masks", "mask_paths"):
                if key in o:
                    raise HTTPException(
                        400,
                        f"objects[{j}].{key} cannot be set in spec; upload the object's masks "
                        f"as '{MASK_PART}<label>' files",
                    )
            _no_mask_files(o, f"objects[{j}].", f"a '{MASK_PART}<label>' file")
    return fields


def _no_mask_files(fields: dict[str, Any], where: str, part: str) -> None:
    """Refuse ``keyframes[].mask`` (a server path) in a multipart spec."""
    keyframes = fields.get("keyframes")
    for i, k in enumerate(keyframes if isinstance(keyframes, list) else []):
        if isinstance(k, dict) and k.get("mask") is not None:
            raise HTTPException(
                400,
                f"{where}keyframes[{i}].mask cannot name a file in a multipart spec; upload "
                f"each mask as {part} (keyframe order) and place it with mask_frames or "
                "mask_times",
            )


def _save_files(
    video: Any,
    upload: Any,
    masks: list[UploadFile],
    stage: Staging,
    cfg: ApiSettings,
    object_masks: list[list[UploadFile]] | None = None,
) -> tuple[Path, list[Path], list[list[Path]]]:
    """Write the uploads into ``stage`` (a worker thread: these are big blocking copies)."""
    budget = [0]
    if isinstance(video, UploadFile):
        vpath = stage.path / f"video{paths.upload_suffix(video.filename)}"
        _copy(video, vpath, budget, cfg.max_upload)
    else:
        from worker.http.sessions import claim_upload

        vpath = claim_upload(cfg, str(upload), stage.path)
    mpaths = []
    for i, m in enumerate(masks):
        p = stage.path / f"mask{i}.png"
        _copy(m, p, budget, cfg.max_upload)
        mpaths.append(p)
    opaths = []
    for j, parts in enumerate(object_masks or []):
        opaths.append([])
        for i, m in enumerate(parts):
            p = stage.path / f"mask-{j}-{i}.png"  # named by the server, never by the client
            _copy(m, p, budget, cfg.max_upload)
            opaths[-1].append(p)
    return vpath, mpaths, opaths


async def from_multipart(request: Request, stage: Staging, cfg: ApiSettings) -> dict[str, Any]:
    """JobSpec fields from the multipart form, the files saved into ``stage``."""
    length = int(request.headers.get("content-length") or 0)
    if length > cfg.max_upload + (1 << 20):
        raise HTTPException(413, f"upload larger than the limit of {cfg.max_upload} bytes")
    form = await request.form(max_files=64, max_fields=64)
    try:
        video = form.get("video")
        masks = form.getlist("mask")
        upload = form.get("upload")  # the web page's upload id instead of the video file
        unknown = {k for k in form.keys() if k not in ("video", "mask", "spec", "upload")} - {
            k for k in form.keys() if k.startswith(MASK_PART)
        }
        if unknown:
            shown = sorted(k[:40] for k in unknown)[:8]
            raise HTTPException(
                400,
                f"unknown form field(s) {shown}; send video, mask (or {MASK_PART}<label>) and spec",
            )
        if not isinstance(video, UploadFile) and not isinstance(upload, str):
            raise HTTPException(400, "the 'video' file field is missing")
        if any(not isinstance(m, UploadFile) for m in masks):
            raise HTTPException(400, "each 'mask' field must be a file (PNG, white = object)")
        raw_spec = form.get("spec") or "{}"
        if not isinstance(raw_spec, str):
            raw_spec = (await raw_spec.read(MAX_SPEC_BYTES + 1)).decode("utf-8", "replace")
        fields = _spec_fields(raw_spec)
        per_object = _object_parts(form, fields, masks)
        await run_in_threadpool(stage.create)
        vpath, mpaths, opaths = await cfg.offload(
            _save_files, video, upload, masks, stage, cfg, per_object
        )
        fields["video"] = str(vpath)
        if per_object is None:
            fields["masks"] = [str(p) for p in mpaths]
        else:
            for o, paths in zip(fields["objects"], opaths, strict=True):
                if isinstance(o, dict) and paths:
                    o["masks"] = [str(p) for p in paths]
        return fields
    finally:
        await form.close()


def _object_parts(
    form: Any, fields: dict[str, Any], masks: list[Any]
) -> list[list[UploadFile]] | None:
    """Each object's ``mask:<label>`` files in spec.objects' order; None without objects."""
    parts = {k: form.getlist(k) for k in set(form.keys()) if k.startswith(MASK_PART)}
    objects = fields.get("objects")
    if not objects:
        if parts:
            raise HTTPException(
                400,
                f"'{MASK_PART}<label>' files need spec.objects naming those labels; for one "
                "object send its masks as 'mask'",
            )
        return None
    if masks:
        raise HTTPException(
            400, f"with spec.objects, send each object's masks as '{MASK_PART}<label>', not 'mask'"
        )
    labels = [o.get("label") if isinstance(o, dict) else None for o in objects]
    for name, files in parts.items():
        label = name[len(MASK_PART) :]
        if label not in labels:
            raise HTTPException(
                400, f"file part {name[:60]!r} names no object of spec.objects (by label)"
            )
        if any(not isinstance(f, UploadFile) for f in files):
            raise HTTPException(400, f"each '{name[:60]}' field must be a file (PNG)")
    return [parts.get(f"{MASK_PART}{lb}", []) if isinstance(lb, str) else [] for lb in labels]
