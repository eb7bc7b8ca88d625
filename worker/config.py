"""Settings from ``SONOMASK_*`` environment variables, one place, documented in the README."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    workspace: Path
    model: str | None
    device: str | None
    broker_url: str
    result_backend: str
    max_video_seconds: float
    window_seconds: float | None  # separation window; None = the backend's own

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        default_ws = Path(tempfile.gettempdir()) / "sonomask-jobs"
        return cls(
            workspace=Path(env.get("SONOMASK_WORKSPACE", default_ws)),
            model=env.get("SONOMASK_MODEL") or None,
            device=env.get("SONOMASK_DEVICE") or None,
            broker_url=env.get("SONOMASK_BROKER_URL", "redis://127.0.0.1:6379/0"),
            result_backend=env.get("SONOMASK_RESULT_BACKEND", "redis://127.0.0.1:6379/1"),
            max_video_seconds=float(env.get("SONOMASK_MAX_VIDEO_SECONDS", 4 * 3600)),
            window_seconds=float(env["SONOMASK_WINDOW_SECONDS"])
            if env.get("SONOMASK_WINDOW_SECONDS")
            else None,
        )
