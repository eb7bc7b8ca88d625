"""The error answers of the HTTP API: one ``{"detail": "..."}`` shape, each status documented.

Every route lists the statuses it really returns with ``errors(...)``; ``fix_openapi``
removes what FastAPI would otherwise advertise but this API never answers (its default
``422 HTTPValidationError``: malformed requests answer ``400`` with a one-line ``detail``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Why a request was refused, in one line that says what to fix."""

    detail: str = Field(examples=["spans.0.end: Input should be a finite number"])


WHY = {
    400: "Malformed request: a field, the JSON or the form is wrong; `detail` says which.",
    401: "A bearer token is required (SONOMASK_API_TOKEN is set) and was missing or wrong.",
    403: "Refused: a file outside the media root, missing or unreadable, or a bad signed link.",
    404: "No such job, upload, output or frame (it may have expired).",
    408: "The request body did not arrive in time (SONOMASK_BODY_TIMEOUT).",
    409: "Busy: the job is still stopping after a cancel, or the upload's tracking preview "
    "is still running; try again in a few seconds.",
    413: "The upload or body is larger than this server accepts.",
    415: "Unsupported Content-Type for this request.",
    422: "The request is well-formed but its media cannot be used (not a video, mask size, "
    "times outside the clip, ...).",
    503: "A service this request needs (the job queue) is unreachable; try again shortly.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each code with the Problem body and why it happens."""
    return {code: {"model": Problem, "description": WHY[code]} for code in codes}


def fix_openapi(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop FastAPI's default 422 (never answered: validation errors are 400 Problems) and
    document 400 on every operation that takes parameters or a body."""
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.get("responses", {})
            default = responses.get("422", {})
            ref = str(default.get("content", {}).get("application/json", {}).get("schema", {}))
            if "HTTPValidationError" in ref:
                del responses["422"]
            if (op.get("parameters") or op.get("requestBody")) and "400" not in responses:
                responses["400"] = {
                    "description": WHY[400],
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                }
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
