"""ASGI middleware of the API: bounded request bodies and honest ``OPTIONS`` answers.

``BodyGuard`` wraps ``receive`` while a request body is still arriving: each chunk must come
within ``timeout`` seconds (a client that sends less than its Content-Length is not held
forever: 408) and the body may not exceed ``max_bytes`` in all (chunked uploads included:
413). Once the body is complete, ``receive`` is passed through untouched (responses wait on
it for the client's disconnect). ``AllowOptions`` answers ``OPTIONS`` with every method the
path really has (``GET, DELETE`` on a job, not just the first route that matched).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTimeout(Exception):
    """The client stopped sending its request body (HTTP 408)."""


class BodyTooLarge(Exception):
    """The request body outgrew the server's limit (HTTP 413)."""


class BodyGuard:
    """Time out stalled request bodies and cap their size."""

    def __init__(self, app: ASGIApp, timeout: float, max_bytes: int) -> None:
        self.app, self.timeout, self.max_bytes = app, timeout, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"complete": False, "total": 0}

        async def guarded() -> Message:
            if state["complete"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body stalled for {self.timeout:g} s; send it whole"
                ) from None
            if message["type"] == "http.request":
                state["total"] += len(message.get("body", b""))
                if state["total"] > self.max_bytes:
                    raise BodyTooLarge(
                        f"the request body is larger than the limit of {self.max_bytes} bytes"
                    )
                state["complete"] = not message.get("more_body", False)
            else:
                state["complete"] = True
            return message

        await self.app(scope, guarded, send)


class AllowOptions:
    """``OPTIONS`` on a known path: 204 with ``Allow`` listing all of its methods."""

    def __init__(self, app: ASGIApp, routes: Any) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        methods: set[str] = set()
        for route in self.routes:
            match, _ = route.matches({**scope, "method": "GET"})
            if match != Match.NONE and getattr(route, "methods", None):
                methods |= set(route.methods)
        if not methods:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        await send(
            {"type": "http.response.start", "status": 204, "headers": [(b"allow", allow.encode())]}
        )
        await send({"type": "http.response.body", "body": b""})
