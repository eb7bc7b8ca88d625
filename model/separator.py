"""The contract every separation backend follows.

A backend takes mono 48 kHz float32 audio plus a prompt and returns two mono signals of
the same length, the target (the prompted sound) and the residual (everything else).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from model.errors import ModelInputError

MODEL_SAMPLE_RATE = 48_000

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], short description)."""


@dataclass(frozen=True)
class Span:
    """A time range (seconds from audio sample 0) where the target is present (+) or absent (-)."""

    sign: Literal["+", "-"]
    start: float
    end: float


@dataclass
class Prompt:
    """Everything a backend may use to know which sound is wanted.

    masked_video is what SAM Audio is fed: uint8 [F, H, W, 3] frames with the *object
    zeroed* (the reference keeps pixels where its mask is 0); build it with
    ``vision.prompt.masked_video_for_model``. object_activity is the motion inside the
    tracked object per frame and background_activity the motion outside it, both [F],
    used by the weight-free backend; object_features [F, D] are richer per-frame
    measurements of the object (``vision.evidence``: motion, shift, size, height, width,
    brightness), named by feature_names, which that backend prefers when given. video_times gives each frame's time in seconds on
    the audio's clock (sample 0 = 0.0 s).
    """

    text: str | None = None
    spans: list[Span] = field(default_factory=list)
    masked_video: np.ndarray | None = None
    video_times: np.ndarray | None = None
    object_activity: np.ndarray | None = None
    background_activity: np.ndarray | None = None
    object_features: np.ndarray | None = None
    feature_names: tuple[str, ...] | None = None


@dataclass
class Separation:
    """Mono float32 signals at MODEL_SAMPLE_RATE, each as long as the input audio."""

    target: np.ndarray
    residual: np.ndarray
    backend: str
    warnings: list[str] = field(default_factory=list)
    confidence: float | None = None
    """How well the prompt's evidence explains the target, in [0, 1] (the weight-free
    backend: held-out correlation of the object's picture with the target's loudness);
    None when the backend cannot say."""
    details: dict[str, Any] = field(default_factory=dict)
    """What the backend decided that a job records (``job.json``): SAM Audio's reranking
    (``rerank``: per window the ranker, every candidate's score, the kept candidate) and
    predicted spans (``predicted_spans``); empty when there is nothing to say."""


@dataclass
class ObjectsSeparation:
    """Several objects separated from one mixture: one target per object (the prompts'
    order) and one residual, ``residual = audio - sum(targets)``; mono float32 at
    MODEL_SAMPLE_RATE, each as long as the input. ``warnings`` and ``confidences`` are
    per object."""

    targets: list[np.ndarray]
    residual: np.ndarray
    backend: str
    warnings: list[list[str]] = field(default_factory=list)
    confidences: list[float | None] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """As ``Separation.details``, for the batch (per object where it says so)."""


def separate_objects(
    separator: Separator,
    audio: np.ndarray,
    prompts: list[Prompt],
    progress: ProgressCallback | None = None,
) -> ObjectsSeparation:
    """Separate every prompt's object from ``audio``: the backend's own
    ``separate_objects`` when it has one (one analysis of the mixture for all), else one
    ``separate`` per object; either way the residual is what no object took."""
    own = getattr(separator, "separate_objects", None)
    if own is not None:
        return own(audio, prompts, progress)
    targets, warnings, confidences = [], [], []
    for j, prompt in enumerate(prompts):

        def sub(f: float, m: str, j: int = j) -> None:
            if progress is not None:
                progress((j + f) / len(prompts), f"object {j + 1}/{len(prompts)}: {m}")

        one = separator.separate(audio, prompt, sub)
        targets.append(np.asarray(one.target, np.float32))
        warnings.append(list(one.warnings))
        confidences.append(one.confidence)
    residual = np.asarray(audio, np.float32) - np.sum(targets, axis=0, dtype=np.float32)
    return ObjectsSeparation(targets, residual, separator.name, warnings, confidences)


def plan_windows(num_samples: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) sample ranges covering ``num_samples``.

    Windows are ``window`` long and step by ``window - overlap``; the last one is moved back
    to end exactly at ``num_samples`` (so every window has the same length and the last
    overlap may be longer). Audio no longer than one window is a single window.
    """
    if window <= 0 or not 0 <= overlap < window:
        raise ModelInputError(f"need window > overlap >= 0 samples, got {window}, {overlap}")
    if num_samples <= window:
        return [(0, num_samples)]
    step = window - overlap
    starts = list(range(0, num_samples - window, step))
    starts.append(num_samples - window)
    return [(s, s + window) for s in starts]


@dataclass(frozen=True)
class Windowing:
    """How a backend wants long audio cut (part of the ``Separator`` contract).

    Windows of ``seconds`` overlap by ``overlap_seconds``; both lie on a grid of ``hop``
    samples, the model's feature hop, so every window holds whole feature frames and the
    visual prompt is sampled at ``feature_rate``. The worker and the backends plan their
    windows here and nowhere else.
    """

    seconds: float
    overlap_seconds: float
    hop: int

    @property
    def feature_rate(self) -> float:
        """Feature frames per second (SAM Audio: 48 kHz / 1920 = 25 Hz)."""
        return MODEL_SAMPLE_RATE / self.hop

    def plan(self, num_samples: int, seconds: float | None = None) -> list[tuple[int, int]]:
        """[start, end) windows over ``num_samples`` at 48 kHz.

        ``seconds`` overrides the window length (``SONOMASK_WINDOW_SECONDS``); the overlap
        then shrinks to at most a quarter of it. The overlap never exceeds half a window.
        """
        hop, sr = self.hop, MODEL_SAMPLE_RATE
        overlap_s = (
            self.overlap_seconds if seconds is None else min(self.overlap_seconds, seconds / 4)
        )
        seconds = self.seconds if seconds is None else seconds
        window = max(hop, round(seconds * sr / hop) * hop)
        overlap = min(round(overlap_s * sr / hop) * hop, window // 2)
        return plan_windows(num_samples, window, overlap)


class Separator(Protocol):
    """A separation backend.

    ``windowing`` says how a long clip is cut for it (``model.windows.Windowing``): the
    worker separates one window per call, keeps each result and joins them.
    """

    name: str
    windowing: Windowing

    def separate(
        self,
        audio: np.ndarray,
        prompt: Prompt,
        progress: ProgressCallback | None = None,
    ) -> Separation:
        """Split mono 48 kHz float32 ``audio`` [N] into target and residual."""
        ...
