"""JSON from clients, parsed so that nothing in it can crash or stall the server.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity`` and turns ``1e309`` into
``inf``; a job holding such a number stored it as ``null`` and then never ran. Deep nesting
raised ``RecursionError`` (a 500), and a NUL byte or a lone surrogate in a string crashed
the first filesystem call that saw it. ``loads`` refuses all of these with one line that
says what is wrong.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool

MAX_DEPTH = 32  # a JobSpec nests 4 deep; anything far deeper is not a request


class BadJSON(ValueError):
    """The client's JSON is unusable; the message says why (HTTP 400)."""


def _no_constant(name: str) -> Any:
    raise BadJSON(f"{name} is not a number sonomask accepts; send finite numbers only")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(f"{text[:30]} is too large a number; send finite numbers only")
    return value


def loads(raw: bytes | str, what: str = "the request body") -> Any:
    """Parse ``raw`` strictly: finite numbers, bounded nesting, no NUL, valid UTF-8."""
    try:
        value = json.loads(raw, parse_constant=_no_constant, parse_float=_finite)
    except BadJSON as e:
        raise BadJSON(f"{what}: {e}") from None
    except RecursionError:
        raise BadJSON(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError):
        raise BadJSON(f"{what} is not valid JSON") from None
    check(value, what)
    return value


def check(value: Any, what: str) -> None:
    """Refuse nesting over ``MAX_DEPTH`` and strings a filesystem or encoder cannot take."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        v, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadJSON(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
        if isinstance(v, str):
            _check_text(v, where or what)
        elif isinstance(v, dict):
            for k, item in v.items():
                _check_text(k, f"a key in {where or what}")
                stack.append((item, f"{where}.{k}" if where else str(k), depth + 1))
        elif isinstance(v, list):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(v))


def _check_text(s: str, where: str) -> None:
    if "\x00" in s:
        raise BadJSON(f"{where[:100]} contains a NUL byte; remove it")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise BadJSON(f"{where[:100]} is not valid Unicode text (a lone surrogate)") from None


MAX_JSON_BYTES = 1 << 20  # a JSON request body (paths and options only, never media)


async def json_body(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The request body as a JSON object (finite numbers, bounded size and nesting, no NUL),
    or a 4xx that says what is wrong."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(413, f"the JSON body is larger than {limit} bytes")
    body = await run_in_threadpool(loads, bytes(raw))
    if not isinstance(body, dict):
        raise HTTPException(400, "the JSON body must be an object")
    return body
