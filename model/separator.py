"""The contract every separation backend follows.

A backend takes mono 48 kHz float32 audio plus a prompt and returns two mono signals of
the same length, the target (the prompted sound) and the residual (everything else).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

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
    used by the weight-free backend. video_times gives each frame's time in seconds on
    the audio's clock (sample 0 = 0.0 s).
    """

    text: str | None = None
    spans: list[Span] = field(default_factory=list)
    masked_video: np.ndarray | None = None
    video_times: np.ndarray | None = None
    object_activity: np.ndarray | None = None
    background_activity: np.ndarray | None = None


@dataclass
class Separation:
    """Mono float32 signals at MODEL_SAMPLE_RATE, each as long as the input audio."""

    target: np.ndarray
    residual: np.ndarray
    backend: str
    warnings: list[str] = field(default_factory=list)


class Separator(Protocol):
    """A separation backend."""

    name: str

    def separate(
        self,
        audio: np.ndarray,
        prompt: Prompt,
        progress: ProgressCallback | None = None,
    ) -> Separation:
        """Split mono 48 kHz float32 ``audio`` [N] into target and residual."""
        ...
