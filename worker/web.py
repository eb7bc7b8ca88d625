"""The web page for editors (served at ``/``) and the endpoints only it needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter


def router(cfg: Any, authorize: Callable[..., None]) -> APIRouter:
    """Routes for the page; ``cfg`` is the API's settings, ``authorize`` its token check."""
    return APIRouter()
