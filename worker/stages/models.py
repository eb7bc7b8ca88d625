"""Which weights a job may load (separator and tracker), and which separator runs."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path

from model.separator import Separator, Windowing
from vision.choose import model_title
from vision.tracker import TRACKERS, WEIGHTED_TRACKERS
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


def resolve_model(requested: str | None, settings: Settings) -> str | None:
    """The SAM Audio weights a job may load: its ``model`` NAME from the operator's list
    (``SONOMASK_MODELS``), else the default (``SONOMASK_MODEL``). A path or Hub id is taken
    as is only inside ``local_models()``; anywhere else it is refused, so no client can make
    a worker open a server path or download a repository. (Trackers' weights:
    ``resolve_tracker_model``.)"""
    names = settings.models
    if requested is None:
        return settings.model
    if requested in names:
        return names[requested]
    if _LOCAL_MODELS.get():
        return requested
    raise _not_offered("model", requested, names, "SONOMASK_MODELS")


def resolve_tracker_model(tracker: str, requested: str | None, settings: Settings) -> str | None:
    """The weights the video-model ``tracker`` (sam2, sam3, edgetam) may load, as
    ``resolve_model``: a NAME from SONOMASK_TRACKER_MODELS made for that tracker (a name
    made for another one is refused: its weights would not load), else the tracker's
    default (``Settings.tracker_default``); a path or Hub id only inside ``local_models()``.
    A name is checked whatever the tracker, so flow and copy refuse what is not offered."""
    names = settings.tracker_models
    if requested is None:
        return settings.tracker_default(tracker) if tracker in WEIGHTED_TRACKERS else None
    if requested in names:
        made_for = settings.tracker_model_for.get(requested, "sam2")
        if tracker in WEIGHTED_TRACKERS and made_for != tracker:
            mine = settings.tracker_model_names(tracker)
            choose = (
                f"choose one of: {', '.join(mine)} (or leave tracker_model out for the default)"
                if mine
                else f"this server has no {tracker} weights to choose"
            )
            raise NotOffered(
                f"tracker_model {requested!r} is {made_for} weights, not {tracker}; {choose}"
            )
        return names[requested]
    if _LOCAL_MODELS.get():
        return requested
    raise _not_offered("tracker_model", requested, names, "SONOMASK_TRACKER_MODELS")


def _not_offered(kind: str, requested: str, names: Mapping[str, str], var: str) -> NotOffered:
    """The refusal of a model name that is not in the operator's list."""
    shown = requested if len(requested) <= 60 else requested[:57] + "..."
    if names:
        return NotOffered(
            f"{kind} {shown!r} is not one this server offers; choose one of: "
            f"{', '.join(sorted(names))} (or leave {kind} out for the default)"
        )
    return NotOffered(
        f"{kind} {shown!r} is not one this server offers: it has no list of {kind}s "
        f"({var}); leave {kind} out"
    )


def check_separator_config(spec: JobSpec, settings: Settings) -> None:
    """Fail before any decoding when SAM Audio is asked for without a usable model, or
    SAM Audio's options for a job that will run the classical separator."""
    model_path = resolve_model(spec.model, settings)
    if spec.ranker == "judge":
        check_judge_weights(settings)
    if spec.ranker == "clap":
        check_clap_weights(settings)
    wanted = [n for n, on in (("--predict-spans", spec.predict_spans),
                               ("--candidates", spec.candidates > 1)) if on]  # fmt: skip
    if wanted and spec.separator == "auto" and not model_path:
        raise BadInput(
            f"{' and '.join(wanted)} {'need' if len(wanted) > 1 else 'needs'} SAM Audio and no "
            "model is configured "
            "(--model PATH or SONOMASK_MODEL); the classical separator has neither"
        )
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


def check_judge_weights(settings: Settings) -> None:
    """``--ranker judge`` needs the SAM Audio Judge's weights where the operator put them
    (SONOMASK_JUDGE_MODEL, else facebook/sam-audio-judge in the local Hugging Face cache):
    found before any decoding, not after the first window's separation."""
    from model.sam_audio.errors import SAMAudioLoadError
    from model.sam_audio.judge import DEFAULT_JUDGE_ID, resolve_judge_dir

    try:
        resolve_judge_dir(settings.judge_model or DEFAULT_JUDGE_ID)
    except SAMAudioLoadError as err:
        raise BadInput(
            f"--ranker judge needs the SAM Audio Judge's weights (SONOMASK_JUDGE_MODEL): {err}"
        ) from err


def check_clap_weights(settings: Settings) -> None:
    """``--ranker clap`` needs laion's CLAP checkpoint where the operator put it
    (SONOMASK_CLAP_MODEL: ``630k-best.pt`` or its folder, roberta-base's tokenizer beside it)."""
    where = settings.clap_model
    path = Path(where).expanduser() if where else None
    if path is None or not (path.is_file() or (path.is_dir() and any(path.glob("*.pt")))):
        raise BadInput(
            "--ranker clap needs laion's CLAP checkpoint (630k-best.pt, roberta-base's "
            "tokenizer files beside it) named by SONOMASK_CLAP_MODEL"
            + (f"; {where} holds none" if where else "; it is not set")
        )


def check_tracker_config(spec: JobSpec, settings: Settings) -> None:
    """Fail before any decoding when a video-model tracker (sam2, sam3, edgetam) is asked
    for without weights, or with weights made for another tracker."""
    source = resolve_tracker_model(spec.tracker, spec.tracker_model, settings)
    if spec.tracker in WEIGHTED_TRACKERS and not source:
        offered = [t for t in TRACKERS if settings.offers_tracker(t)]
        raise BadInput(
            f"tracker {spec.tracker} needs {model_title(spec.tracker)} weights and this server "
            f"has none (SONOMASK_TRACKER_MODEL / SONOMASK_TRACKER_MODELS); use one of "
            f"{', '.join(offered)}"
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

    return SamAudioSeparator(
        model_path,
        device=settings.device,
        candidates=spec.candidates,
        ranker=spec.ranker,
        predict_spans=spec.predict_spans,
        window_batch=settings.window_batch,
        ranker_weights={"judge": settings.judge_model, "clap": settings.clap_model}.get(
            spec.ranker or ""
        ),
    )


def choose_windowing(spec: JobSpec, settings: Settings) -> Windowing:
    """How the chosen backend cuts the audio, known without loading any weights: the prompt
    stage samples the visual prompt at its feature rate before the model runs."""
    name, model_path = _backend(spec, settings)
    if name == "classical":
        from model.classical import ClassicalSeparator

        return ClassicalSeparator.windowing
    from model.backends.sam_audio import SamAudioSeparator

    return SamAudioSeparator.windowing_for(model_path)
