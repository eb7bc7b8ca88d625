"""The job specification shared by the CLI, the HTTP API and the Celery tasks.

One pydantic model, so every entry point validates the same way and the manifest records
exactly what ran. Flat list fields (``masks``, ``mask_frames``, ``mask_times``, ``boxes``)
exist because that is what plugins send over HTTP; they are folded into ``keyframes``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from worker.errors import BadInput

_NUM = r"\d+(?:\.\d*)?|\.\d+"
_SPAN_RE = re.compile(rf"^\s*([+-])\s*({_NUM})\s*(?:-|:|\.\.)\s*({_NUM})\s*$")


class SpanSpec(BaseModel):
    """A time range in seconds (on the picture's clock) where the sound is present (+) or absent (-)."""

    model_config = ConfigDict(extra="forbid")

    sign: Literal["+", "-"]
    start: float = Field(ge=0)
    end: float

    @model_validator(mode="after")
    def _ordered(self) -> SpanSpec:
        if self.end <= self.start:
            raise ValueError(f"span {self.sign}{self.start}-{self.end} ends before it starts")
        return self

    @classmethod
    def parse(cls, text: str) -> SpanSpec:
        """Parse ``+1.2-3.4`` (present from 1.2 s to 3.4 s) or ``-0-2``."""
        m = _SPAN_RE.match(text)
        if not m:
            raise BadInput(
                f"span {text!r} is not of the form +START-END or -START-END in seconds, e.g. +1.2-3.4"
            )
        try:
            return cls(sign=m.group(1), start=float(m.group(2)), end=float(m.group(3)))
        except ValidationError as e:
            raise BadInput(first_error(e)) from None

    def __str__(self) -> str:
        return f"{self.sign}{self.start:g}-{self.end:g}"


class Keyframe(BaseModel):
    """The object drawn on one frame: a mask image (white = object) or a box, at a frame or a time."""

    model_config = ConfigDict(extra="forbid")

    mask: str | None = None
    box: tuple[float, float, float, float] | None = None
    frame: int | None = Field(default=None, ge=0)
    time: float | None = Field(default=None, ge=0)

    @field_validator("box", mode="before")
    @classmethod
    def _parse_box(cls, v: Any) -> Any:
        if isinstance(v, str):
            parts = [p for p in re.split(r"[,\s]+", v.strip()) if p]
            if len(parts) != 4:
                raise ValueError(f"box {v!r} must be x0,y0,x1,y1 in pixels")
            try:
                return tuple(float(p) for p in parts)
            except ValueError:
                raise ValueError(f"box {v!r} must be four numbers x0,y0,x1,y1") from None
        return v

    @model_validator(mode="after")
    def _one_source(self) -> Keyframe:
        if (self.mask is None) == (self.box is None):
            raise ValueError("each keyframe needs exactly one of a mask image or a box")
        if self.frame is not None and self.time is not None:
            raise ValueError("give a keyframe either a frame index or a time, not both")
        return self


Mode = Literal["isolate", "remove", "both"]
SeparatorName = Literal["auto", "sam-audio", "classical"]
TrackerName = Literal["flow", "copy", "sam2"]


class JobSpec(BaseModel):
    """What to separate and how. Paths are local to the machine that runs the job."""

    model_config = ConfigDict(extra="forbid")

    video: str
    keyframes: list[Keyframe] = Field(default_factory=list)
    masks: list[str] = Field(default_factory=list, description="mask images, in keyframe order")
    boxes: list[str] = Field(default_factory=list, description="boxes x0,y0,x1,y1, after masks")
    mask_frames: list[int] = Field(default_factory=list)
    mask_times: list[float] = Field(default_factory=list)
    text: str | None = None
    spans: list[SpanSpec] = Field(default_factory=list)
    mode: Mode = "both"
    separator: SeparatorName = "auto"
    model: str | None = Field(default=None, description="SAM Audio checkpoint folder or repo id")
    tracker: TrackerName = "flow"
    tracker_model: str | None = Field(
        default=None, description="SAM 2 model folder or Hub id in the HF cache (tracker sam2)"
    )
    audio_stream: int = Field(default=0, ge=0, description="index among the audio streams")
    reconstruct: Literal["masked", "generative"] = "masked"
    stem_format: Literal["pcm24", "float32"] = Field(
        default="pcm24", description="stems as 24-bit PCM or 32-bit float WAV"
    )
    keep_original: bool = Field(
        default=False, description="keep the original audio as an extra track in the videos"
    )
    out: str | None = None
    webhook: str | None = Field(default=None, description="URL POSTed the job document at the end")

    @field_validator("webhook")
    @classmethod
    def _http_only(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s]+$", v):
            raise ValueError("webhook must be an http:// or https:// URL")
        return v

    @field_validator("spans", mode="before")
    @classmethod
    def _parse_spans(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [SpanSpec.parse(s) if isinstance(s, str) else s for s in v]
        return v

    @field_validator("text")
    @classmethod
    def _strip_text(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @model_validator(mode="after")
    def _fold_keyframes(self) -> JobSpec:
        if self.masks or self.boxes:
            if self.keyframes:
                raise ValueError("give keyframes either as 'keyframes' or as masks/boxes, not both")
            sources: list[dict[str, Any]] = [{"mask": m} for m in self.masks]
            sources += [{"box": b} for b in self.boxes]
            n = len(sources)
            if self.mask_frames and self.mask_times:
                raise ValueError("give mask_frames or mask_times, not both")
            where = self.mask_frames or self.mask_times
            if where and len(where) != n:
                raise ValueError(f"{n} mask(s)/box(es) but {len(where)} frame indices/times")
            key = "frame" if self.mask_frames else "time"
            for i, src in enumerate(sources):
                if where:
                    src[key] = where[i]
            self.keyframes = [Keyframe(**s) for s in sources]
            self.masks, self.boxes, self.mask_frames, self.mask_times = [], [], [], []
        if not self.keyframes:
            raise ValueError("draw the object: give at least one --mask PNG or --box x0,y0,x1,y1")
        return self

    @classmethod
    def build(cls, **fields: Any) -> JobSpec:
        """Validate, turning pydantic's report into one actionable BadInput line."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise BadInput(first_error(e)) from None

    @property
    def wants_isolated(self) -> bool:
        return self.mode in ("isolate", "both")

    @property
    def wants_removed(self) -> bool:
        return self.mode in ("remove", "both")

    def input_files(self) -> list[Path]:
        """Every local file the job reads, for hashing into the manifest."""
        files = [Path(self.video)]
        files += [Path(k.mask) for k in self.keyframes if k.mask]
        return files


def first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
