"""The multipart form of ``POST /v1/jobs``: uploads land in the job's own staging folder.

The form's ``spec`` may not name any server file: ``video``, ``masks``, ``video_path``,
``mask_paths``, ``out`` and ``keyframes[].mask`` are refused there. Masks come only from
the uploaded ``mask`` files, in keyframe order, placed with ``mask_frames`` or
``mask_times``; ``keyframes`` with a ``box`` stay allowed (and ``boxes`` follow the masks).
The file copies run in the thread pool; the body itself is streamed by Starlette.
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
                                "description": "mask PNGs (white = object), keyframe order",
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
    keyframes = fields.get("keyframes")
    for i, k in enumerate(keyframes if isinstance(keyframes, list) else []):
        if isinstance(k, dict) and k.get("mask") is not None:
            raise HTTPException(
                400,
                f"keyframes[{i}].mask cannot name a file in a multipart spec; upload each "
                "mask as a 'mask' file (keyframe order) and place it with mask_frames or "
                "mask_times",
            )
    return fields


def _save_files(
    video: Any, upload: Any, masks: list[UploadFile], stage: Staging, cfg: ApiSettings
) -> tuple[Path, list[Path]]:
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
    return vpath, mpaths


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
        unknown = set(form.keys()) - {"video", "mask", "spec", "upload"}
        if unknown:
            shown = sorted(k[:40] for k in unknown)[:8]
            raise HTTPException(400, f"unknown form field(s) {shown}; send video, mask and spec")
        if not isinstance(video, UploadFile) and not isinstance(upload, str):
            raise HTTPException(400, "the 'video' file field is missing")
        if any(not isinstance(m, UploadFile) for m in masks):
            raise HTTPException(400, "each 'mask' field must be a file (PNG, white = object)")
        raw_spec = form.get("spec") or "{}"
        if not isinstance(raw_spec, str):
            raw_spec = (await raw_spec.read(MAX_SPEC_BYTES + 1)).decode("utf-8", "replace")
        fields = _spec_fields(raw_spec)
        await run_in_threadpool(stage.create)
        vpath, mpaths = await cfg.offload(_save_files, video, upload, masks, stage, cfg)
        fields["video"] = str(vpath)
        fields["masks"] = [str(p) for p in mpaths]
        return fields
    finally:
        await form.close()
