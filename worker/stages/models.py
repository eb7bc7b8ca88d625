"""Which weights a job may load, and which separator runs: one place for both choices."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Literal

from model.separator import Separator, Windowing
from worker.errors import BadInput
from worker.settings import Settings
from worker.spec import JobSpec

_LOCAL_MODELS: ContextVar[bool] = ContextVar("sonomask_local_models", default=False)


class NotOffered(BadInput):
    """A job asked for a model the operator does not offer (HTTP 400)."""


@contextlib.contextmanager
def local_models() -> Iterator[None]:
    """Let the jobs run inside this block name model folders and Hub ids directly.

    Only for the local user's own in-process runs (``sonomask separate`` / ``track``):
    queued and HTTP jobs come from clients, so they only ever pick from the operator's list.
    """
    token = _LOCAL_MODELS.set(True)
    try:
        yield
    finally:
        _LOCAL_MODELS.reset(token)


def resolve_model(
    requested: str | None, settings: Settings, kind: Literal["model", "tracker_model"] = "model"
) -> str | None:
    """The weights a job may load: its ``model``/``tracker_model`` NAME from the operator's
    list (``SONOMASK_MODELS`` / ``SONOMASK_TRACKER_MODELS``), else the default
    (``SONOMASK_MODEL`` / ``SONOMASK_TRACKER_MODEL``). A path or Hub id is taken as is only
    inside ``local_models()``; anywhere else it is refused, so no client can make a worker
    open a server path or download a repository."""
    if kind == "model":
        names, default, var = settings.models, settings.model, "SONOMASK_MODELS"
    else:
        names, default = settings.tracker_models, settings.tracker_model
        var = "SONOMASK_TRACKER_MODELS"
    if requested is None:
        return default
    if requested in names:
        return names[requested]
    if _LOCAL_MODELS.get():
        return requested
    shown = requested if len(requested) <= 60 else requested[:57] + "..."
    if names:
        raise NotOffered(
            f"{kind} {shown!r} is not one this server offers; choose one of: "
            f"{', '.join(sorted(names))} (or leave {kind} out for the default)"
        )
    raise NotOffered(
        f"{kind} {shown!r} is not one this server offers: it has no list of {kind}s "
        f"({var}); leave {kind} out"
    )


def check_separator_config(spec: JobSpec, settings: Settings) -> None:
    """Fail before any decoding when SAM Audio is asked for without a usable model."""
    model_path = resolve_model(spec.model, settings)
    if spec.separator == "sam-audio" and not model_path:
        raise BadInput("--separator sam-audio needs --model PATH (or SONOMASK_MODEL)")
    if model_path and spec.separator != "classical":
        local = Path(model_path).expanduser()
        is_repo_id = re.fullmatch(r"[\w.-]+/[\w.-]+", model_path) is not None
        if not local.exists() and not is_repo_id:
            raise BadInput(
                f"model folder {model_path} does not exist; download the SAM Audio "
                "weights (config.json + checkpoint.pt) into it first"
            )


def check_tracker_config(spec: JobSpec, settings: Settings) -> None:
    """Fail before any decoding when the SAM 2 tracker is asked for without weights."""
    source = resolve_model(spec.tracker_model, settings, "tracker_model")
    if spec.tracker == "sam2" and not source:
        raise BadInput(
            "tracker sam2 needs SAM 2 weights and this server has none "
            "(SONOMASK_TRACKER_MODEL / SONOMASK_TRACKER_MODELS); use tracker flow"
        )


def _backend(spec: JobSpec, settings: Settings) -> tuple[str, str | None]:
    """``auto`` runs SAM Audio when a model is configured, otherwise the weight-free backend."""
    model_path = resolve_model(spec.model, settings)
    name = spec.separator
    if name == "auto":
        name = "sam-audio" if model_path else "classical"
    if name == "sam-audio" and not model_path:
        raise BadInput("--separator sam-audio needs --model PATH (or SONOMASK_MODEL)")
    return name, model_path


def choose_separator(spec: JobSpec, settings: Settings) -> Separator:
    """The separation backend the job runs (SAM Audio loads its weights here)."""
    name, model_path = _backend(spec, settings)
    if name == "classical":
        from model.classical import ClassicalSeparator

        return ClassicalSeparator()
    from model.backends.sam_audio import SamAudioSeparator

    return SamAudioSeparator(model_path, device=settings.device)


def choose_windowing(spec: JobSpec, settings: Settings) -> Windowing:
    """How the chosen backend cuts the audio, known without loading any weights: the prompt
    stage samples the visual prompt at its feature rate before the model runs."""
    name, model_path = _backend(spec, settings)
    if name == "classical":
        from model.classical import ClassicalSeparator

        return ClassicalSeparator.windowing
    from model.backends.sam_audio import SamAudioSeparator

    return SamAudioSeparator.windowing_for(model_path)
