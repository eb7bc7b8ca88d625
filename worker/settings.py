"""Settings from ``SONOMASK_*`` environment variables, one place, documented in the README."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vision.tracker import WEIGHTED_TRACKERS


@dataclass(frozen=True)
class Settings:
    workspace: Path
    model: str | None
    device: str | None
    broker_url: str
    result_backend: str
    max_video_seconds: float
    window_seconds: float | None  # separation window; None = the backend's own
    # Crash recovery (worker/jobs/leases.py): where leases live, how long one lasts unrenewed.
    lease_url: str = "redis://127.0.0.1:6379/0"
    lease_seconds: float = 20.0
    visibility_timeout: int = 6 * 3600  # the broker's own redelivery: the last line of defence
    job_ttl: float = 7 * 24 * 3600
    # What clients may choose (worker/stages/models.py resolve_model): operator-named models only.
    models: dict[str, str] = field(default_factory=dict)  # SONOMASK_MODELS name -> path
    # Trackers' weights (sam2, sam3, edgetam): SONOMASK_TRACKER_MODEL gives each tracker's
    # default, SONOMASK_TRACKER_MODELS the names a spec may choose; each value is
    # [TRACKER:]WEIGHTS, the tracker sam2 when none is named.
    tracker_defaults: dict[str, str] = field(default_factory=dict)  # tracker -> weights
    tracker_models: dict[str, str] = field(default_factory=dict)  # name -> weights
    tracker_model_for: dict[str, str] = field(default_factory=dict)  # name -> its tracker
    webhook_allow: tuple[str, ...] = ()  # SONOMASK_WEBHOOK_ALLOW hosts, IPs, CIDRs
    # SONOMASK_WEBHOOK_SECRET: signs every webhook POST (kept out of repr and logs)
    webhook_secret: str | None = field(default=None, repr=False)
    # The watch folder (worker/watch.py): a file is taken once it stopped changing this long
    # and no process has it open for writing; the folder is looked at this often.
    watch_settle: float = 5.0  # SONOMASK_WATCH_SETTLE
    watch_interval: float = 1.0  # SONOMASK_WATCH_INTERVAL
    allow_downloads: bool = False  # SONOMASK_ALLOW_DOWNLOADS: workers may reach the HF Hub
    # The HTTP API (worker/http/).
    media_root: Path | None = None  # SONOMASK_MEDIA_ROOT: what the JSON form may read
    api_token: str | None = None  # SONOMASK_API_TOKEN
    max_upload_bytes: int = 4 * 1024**3
    body_timeout: float = 30.0  # seconds a request body may stall
    debug: bool = False  # SONOMASK_DEBUG: tracebacks for internal errors
    # Decoding the working frames (worker/media.py decode_frames): ffmpeg's -hwaccel (auto:
    # a hardware decoder when ffmpeg finds one; none: never), plain decoding again when it
    # fails; and its decoding threads (0: ffmpeg's choice).
    hwaccel: str = "auto"  # SONOMASK_HWACCEL
    decode_threads: int = 0  # SONOMASK_DECODE_THREADS
    # SAM Audio's rankers' weights (--ranker judge / clap): a local folder or a Hub id in the
    # local Hugging Face cache, named by the operator only (clients choose the ranker, not
    # a path).
    judge_model: str | None = None  # SONOMASK_JUDGE_MODEL (default facebook/sam-audio-judge)
    clap_model: str | None = None  # SONOMASK_CLAP_MODEL
    # SAM Audio windows solved as one batch (None: as memory allows on CUDA, 1 on the CPU).
    window_batch: int | None = None  # SONOMASK_WINDOW_BATCH

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
            max_video_seconds=_positive(env, "SONOMASK_MAX_VIDEO_SECONDS", 4 * 3600),
            window_seconds=_positive(env, "SONOMASK_WINDOW_SECONDS", 0.0) or None,
            lease_url=env.get("SONOMASK_LEASE_URL") or _lease_url(env),
            lease_seconds=_positive(env, "SONOMASK_LEASE_SECONDS", 20.0),
            visibility_timeout=int(_positive(env, "SONOMASK_VISIBILITY_TIMEOUT", 6 * 3600)),
            job_ttl=_positive(env, "SONOMASK_JOB_TTL", 7 * 24 * 3600),
            models=_named(env, "SONOMASK_MODELS"),
            **_tracker_weights(env),
            webhook_allow=tuple(
                h.strip() for h in env.get("SONOMASK_WEBHOOK_ALLOW", "").split(",") if h.strip()
            ),
            webhook_secret=env.get("SONOMASK_WEBHOOK_SECRET") or None,
            watch_settle=_positive(env, "SONOMASK_WATCH_SETTLE", 5.0),
            watch_interval=_positive(env, "SONOMASK_WATCH_INTERVAL", 1.0),
            allow_downloads=env.get("SONOMASK_ALLOW_DOWNLOADS", "").strip().lower()
            in ("1", "true", "yes"),
            media_root=Path(env["SONOMASK_MEDIA_ROOT"]).resolve()
            if env.get("SONOMASK_MEDIA_ROOT")
            else None,
            api_token=env.get("SONOMASK_API_TOKEN") or None,
            max_upload_bytes=int(_positive(env, "SONOMASK_MAX_UPLOAD_BYTES", 4 * 1024**3, "bytes")),
            body_timeout=_positive(env, "SONOMASK_BODY_TIMEOUT", 30.0),
            debug=bool(env.get("SONOMASK_DEBUG")),
            hwaccel=_hwaccel(env.get("SONOMASK_HWACCEL", "auto")),
            decode_threads=int(_positive(env, "SONOMASK_DECODE_THREADS", 0, "threads")),
            judge_model=env.get("SONOMASK_JUDGE_MODEL") or None,
            clap_model=env.get("SONOMASK_CLAP_MODEL") or None,
            window_batch=_window_batch(env.get("SONOMASK_WINDOW_BATCH", "auto")),
        )

    @property
    def tracker_model(self) -> str | None:
        """The default SAM 2 weights (``--tracker sam2`` without a ``tracker_model``)."""
        return self.tracker_default("sam2")

    def tracker_default(self, tracker: str) -> str | None:
        """The weights ``tracker`` runs when a spec names none: its SONOMASK_TRACKER_MODEL
        entry, else the first by name of its SONOMASK_TRACKER_MODELS; None without any."""
        if tracker in self.tracker_defaults:
            return self.tracker_defaults[tracker]
        names = self.tracker_model_names(tracker)
        return self.tracker_models[names[0]] if names else None

    def tracker_model_names(self, tracker: str) -> list[str]:
        """The SONOMASK_TRACKER_MODELS names a spec may choose for ``tracker``, sorted."""
        return sorted(n for n, t in self.tracker_model_for.items() if t == tracker)

    def offers_tracker(self, tracker: str) -> bool:
        """Whether this server can run ``tracker``: flow and copy always, a video model only
        when its weights are configured (so the page and the CLI offer it only then)."""
        return tracker not in WEIGHTED_TRACKERS or self.tracker_default(tracker) is not None


def _tracker_weights(env: os._Environ[str] | dict[str, str]) -> dict[str, dict[str, str]]:
    """SONOMASK_TRACKER_MODEL and SONOMASK_TRACKER_MODELS as Settings' three tracker fields.

    ``/models/sam2-tiny`` or ``/models/sam2-tiny,sam3:/models/sam3`` (one default per
    tracker); ``tiny=/models/sam2-tiny,big=sam3:/models/sam3`` (names)."""
    defaults: dict[str, str] = {}
    var = "SONOMASK_TRACKER_MODEL"
    for item in env.get(var, "").split(","):
        if item.strip():
            tracker, weights = _tracker_and_weights(var, item.strip())
            if tracker in defaults:
                raise ValueError(f"{var}: two default weights for tracker {tracker}; give one")
            defaults[tracker] = weights
    models: dict[str, str] = {}
    made_for: dict[str, str] = {}
    var = "SONOMASK_TRACKER_MODELS"
    for name, value in _named(env, var).items():
        made_for[name], models[name] = _tracker_and_weights(var, value)
    return {"tracker_defaults": defaults, "tracker_models": models, "tracker_model_for": made_for}


def _tracker_and_weights(var: str, value: str) -> tuple[str, str]:
    """``sam3:/models/sam3`` as ("sam3", "/models/sam3"); without a tracker, sam2's."""
    head, sep, rest = value.partition(":")
    if not sep or not _TRACKER_PREFIX.fullmatch(head):
        return "sam2", value  # a plain path or Hub id (a drive letter is not a tracker)
    if head not in WEIGHTED_TRACKERS or not rest.strip():
        raise ValueError(
            f"{var}: {value!r} is not [TRACKER:]WEIGHTS (TRACKER: {', '.join(WEIGHTED_TRACKERS)})"
        )
    return head, rest.strip()


_TRACKER_PREFIX = re.compile(r"[a-z][a-z0-9]+")


def _lease_url(env: os._Environ[str] | dict[str, str]) -> str:
    """Leases live in Redis: the broker when it is Redis, else the (Redis) result backend."""
    broker = env.get("SONOMASK_BROKER_URL", "redis://127.0.0.1:6379/0")
    if broker.startswith(("redis://", "rediss://", "unix://")):
        return broker
    return env.get("SONOMASK_RESULT_BACKEND", "redis://127.0.0.1:6379/1")


def _named(env: os._Environ[str] | dict[str, str], name: str) -> dict[str, str]:
    """``base=/models/a,large=/models/b`` as {name: path}, or a one-line error naming ``name``."""
    out: dict[str, str] = {}
    for item in env.get(name, "").split(","):
        if not item.strip():
            continue
        key, sep, path = (part.strip() for part in item.partition("="))
        if not sep or not path or not _MODEL_NAME.fullmatch(key):
            raise ValueError(
                f"{name}: {item.strip()!r} is not NAME=PATH (NAME: letters, digits, . _ -)"
            )
        out[key] = path
    return out


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _positive(
    env: os._Environ[str] | dict[str, str], name: str, default: float, unit: str = "seconds"
) -> float:
    """A positive finite number from the environment, or a one-line error naming the variable."""
    raw = env.get(name)
    if not raw:
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"{name}={raw!r} must be a positive number of {unit}")
    return value


def _window_batch(raw: str) -> int | None:
    """SONOMASK_WINDOW_BATCH: auto (None) or a whole number of windows, 1 to 64."""
    value = raw.strip().lower() or "auto"
    if value == "auto":
        return None
    if not re.fullmatch(r"[0-9]{1,2}", value) or not 1 <= int(value) <= 64:
        raise ValueError(f"SONOMASK_WINDOW_BATCH={raw!r} must be auto or a whole number 1-64")
    return int(value)


def _hwaccel(raw: str) -> str:
    """SONOMASK_HWACCEL: auto, none, or one of ffmpeg's hwaccel names (``ffmpeg -hwaccels``)."""
    value = raw.strip().lower() or "auto"
    if not re.fullmatch(r"[a-z0-9_]{1,32}", value):
        raise ValueError(f"SONOMASK_HWACCEL={raw!r} must be auto, none or an ffmpeg hwaccel name")
    return value


def go_offline(settings: Settings) -> None:
    """Keep the Hugging Face libraries off the network in this process (and its children)
    unless the operator allowed downloads: a worker loads only weights already on disk."""
    if not settings.allow_downloads:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
