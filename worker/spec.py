"""The job specification shared by the CLI, the HTTP API and the Celery tasks.

One pydantic model, so every entry point validates the same way and the manifest records
exactly what ran. Flat list fields (``masks``, ``mask_frames``, ``mask_times``, ``boxes``)
exist because that is what plugins send over HTTP; they are folded into ``keyframes``.

Several objects: ``objects: [{label, masks | boxes | keyframes, mask_frames | mask_times,
text, spans}]``, one entry per on-screen source, each with the same per-object fields the
top level takes. The top-level form (masks/boxes/keyframes/text/spans, no ``objects``) is
one object labelled ``object`` (``DEFAULT_LABEL``) and keeps its historic file layout
(``target.wav`` ... at the top of the output folder); the two forms do not mix. A label
names a folder (``objects/<label>/``) and an audio track's title, so it is checked here:
``LABEL_RULE``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vision.tracker import TrackerName
from worker.errors import BadInput

# Limits that keep one request from costing the server without bound (finite numbers only:
# a NaN or infinite time would store as null and stall the job).
MAX_TEXT = 1000  # characters of the text prompt
MAX_SPANS = 256
MAX_KEYFRAMES = 256
MAX_PATH = 4096  # characters of a file path
MAX_MODEL_NAME = 200
MAX_URL = 2048
MAX_OBJECTS = 16  # objects in one job (each is tracked and gets its own stems)
MAX_LABEL = 40
MAX_CANDIDATES = 8  # SAM Audio reranking: noise draws solved per window (each a full solve)
DEFAULT_LABEL = "object"  # the one object of the top-level (single-object) form
RESERVED_LABELS = ("residual",)  # the residual's own track title
LABEL_RULE = (
    f"a label is 1-{MAX_LABEL} characters: ASCII letters, digits, '_', '-' and '.', "
    "starting with a letter or digit and not ending with '.'"
)
_LABEL_RE = re.compile(rf"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{{0,{MAX_LABEL - 2}}}[A-Za-z0-9_-])?$")
_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
Seconds = Annotated[float, Field(ge=0)]
FrameIndex = Annotated[int, Field(ge=0, le=10**9)]
PathText = Annotated[str, Field(max_length=MAX_PATH)]

_NUM = r"\d+(?:\.\d*)?|\.\d+"
_SPAN_RE = re.compile(rf"^\s*([+-])\s*({_NUM})\s*(?:-|:|\.\.)\s*({_NUM})\s*$")


class SpanSpec(BaseModel):
    """A time range in seconds (on the picture's clock) where the sound is present (+) or absent (-)."""

    model_config = _STRICT

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
        m = _SPAN_RE.match(text) if len(text) <= 100 else None
        if not m:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise BadInput(
                f"span {shown!r} is not of the form +START-END or -START-END in seconds, e.g. +1.2-3.4"
            )
        try:
            return cls(sign=m.group(1), start=float(m.group(2)), end=float(m.group(3)))
        except ValidationError as e:
            raise BadInput(first_error(e)) from None

    def __str__(self) -> str:
        return f"{self.sign}{self.start:g}-{self.end:g}"


class Keyframe(BaseModel):
    """The object drawn on one frame: a mask image (white = object) or a box, at a frame or a time."""

    model_config = _STRICT

    mask: PathText | None = None
    box: tuple[float, float, float, float] | None = None
    frame: FrameIndex | None = None
    time: Seconds | None = None

    @field_validator("box", mode="before")
    @classmethod
    def _parse_box(cls, v: Any) -> Any:
        if isinstance(v, str):
            if len(v) > 200:
                raise ValueError("box must be x0,y0,x1,y1 in pixels (four numbers)")
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


def check_label(label: Any) -> str:
    """The label unchanged when it can name a folder and a track title; else ValueError.

    ASCII only, so no control, bidi or look-alike characters reach a file name or a
    container's metadata; no '/', no leading '.', so it cannot climb out of ``objects/``."""
    if not isinstance(label, str):
        raise ValueError("label must be a string")
    if not _LABEL_RE.match(label):
        shown = label.encode("unicode_escape").decode()[:40]
        raise ValueError(f"label {shown!r} is not allowed: {LABEL_RULE}")
    if label.lower() in RESERVED_LABELS:
        raise ValueError(f"label {label!r} is reserved (the residual's track); choose another")
    return label


def _fold(
    keyframes: list[Keyframe],
    masks: list[str],
    boxes: list[str],
    mask_frames: list[int],
    mask_times: list[float],
) -> list[Keyframe]:
    """Flat masks/boxes with their frames or times, as keyframes (``keyframes`` if none)."""
    if not (masks or boxes):
        return keyframes
    if keyframes:
        raise ValueError("give keyframes either as 'keyframes' or as masks/boxes, not both")
    sources: list[dict[str, Any]] = [{"mask": m} for m in masks]
    sources += [{"box": b} for b in boxes]
    n = len(sources)
    if n > MAX_KEYFRAMES:
        raise ValueError(f"{n} masks and boxes; at most {MAX_KEYFRAMES} keyframes")
    if mask_frames and mask_times:
        raise ValueError("give mask_frames or mask_times, not both")
    where = mask_frames or mask_times
    if where and len(where) != n:
        raise ValueError(f"{n} mask(s)/box(es) but {len(where)} frame indices/times")
    key = "frame" if mask_frames else "time"
    for i, src in enumerate(sources):
        if where:
            src[key] = where[i]
    return [Keyframe(**s) for s in sources]


def _parse_span_list(v: Any) -> Any:
    if isinstance(v, list):
        return [SpanSpec.parse(s) if isinstance(s, str) else s for s in v]
    return v


def _strip(v: str | None) -> str | None:
    return v.strip() or None if v is not None else None


class ObjectSpec(BaseModel):
    """One on-screen source of a several-object job: its label, keyframes, text and spans."""

    model_config = _STRICT

    label: Annotated[str, Field(min_length=1, max_length=MAX_LABEL)]
    keyframes: list[Keyframe] = Field(default_factory=list, max_length=MAX_KEYFRAMES)
    masks: list[PathText] = Field(default_factory=list, max_length=MAX_KEYFRAMES)
    boxes: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=MAX_KEYFRAMES
    )
    mask_frames: list[FrameIndex] = Field(default_factory=list, max_length=MAX_KEYFRAMES)
    mask_times: list[Seconds] = Field(default_factory=list, max_length=MAX_KEYFRAMES)
    text: str | None = Field(default=None, max_length=MAX_TEXT)
    spans: list[SpanSpec] = Field(default_factory=list, max_length=MAX_SPANS)

    @field_validator("label")
    @classmethod
    def _check_label(cls, v: str) -> str:
        return check_label(v)

    @field_validator("spans", mode="before")
    @classmethod
    def _parse_spans(cls, v: Any) -> Any:
        return _parse_span_list(v)

    @field_validator("text")
    @classmethod
    def _strip_text(cls, v: str | None) -> str | None:
        return _strip(v)

    @model_validator(mode="after")
    def _fold_keyframes(self) -> ObjectSpec:
        self.keyframes = _fold(
            self.keyframes, self.masks, self.boxes, self.mask_frames, self.mask_times
        )
        self.masks, self.boxes, self.mask_frames, self.mask_times = [], [], [], []
        if not self.keyframes:
            raise ValueError(f"draw object {self.label!r}: give it at least one mask image or box")
        return self


Mode = Literal["isolate", "remove", "both"]
SeparatorName = Literal["auto", "sam-audio", "classical"]
TimelineFormat = Literal["otio", "fcp7xml", "fcpxml", "edl"]
MAX_PROJECT = 200


class JobSpec(BaseModel):
    """What to separate and how. Paths are local to the machine that runs the job."""

    model_config = _STRICT

    video: PathText
    keyframes: list[Keyframe] = Field(default_factory=list, max_length=MAX_KEYFRAMES)
    masks: list[PathText] = Field(
        default_factory=list, max_length=MAX_KEYFRAMES, description="mask images, keyframe order"
    )
    boxes: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=MAX_KEYFRAMES, description="boxes x0,y0,x1,y1"
    )
    mask_frames: list[FrameIndex] = Field(default_factory=list, max_length=MAX_KEYFRAMES)
    mask_times: list[Seconds] = Field(default_factory=list, max_length=MAX_KEYFRAMES)
    text: str | None = Field(default=None, max_length=MAX_TEXT)
    spans: list[SpanSpec] = Field(default_factory=list, max_length=MAX_SPANS)
    objects: list[ObjectSpec] = Field(
        default_factory=list,
        max_length=MAX_OBJECTS,
        description="several on-screen sources, one stem each (instead of the top-level "
        "masks/boxes/keyframes/text/spans)",
    )
    object_videos: bool = Field(
        default=False,
        description="with objects: also write objects/<label>/isolated and removed videos "
        "(as mode says)",
    )
    stems_format: Literal["mkv", "mov"] = Field(
        default="mkv",
        description="with objects: the multitrack stems file, stems.mkv (each track titled "
        "and handler-named by its label) or stems.mov (handler name only: ffmpeg's MOV "
        "muxer writes no track title)",
    )
    mode: Mode = "both"
    separator: SeparatorName = "auto"
    predict_spans: bool = Field(
        default=False,
        description="SAM Audio: predict where the text's sound is present (PE-A-Frame) when "
        "no spans are given, as the reference's predict_spans (recorded in job.json "
        "predicted_spans)",
    )
    candidates: int = Field(
        default=1,
        ge=1,
        le=MAX_CANDIDATES,
        description="SAM Audio: solve each window from this many noise draws and keep the "
        "one the ranker scores best (the reference's reranking_candidates; 1 = no "
        "reranking); job.json rerank records every score",
    )
    ranker: Literal["activity", "clap", "judge"] | None = Field(
        default=None,
        description="SAM Audio reranking's ranker: activity (weight-free: the candidate's "
        "sound-activity against the spans), clap or judge (not in the port yet); default: "
        "the one the model's config names",
    )
    model: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME,
        description="SAM Audio model: over HTTP a name from the server's list (SONOMASK_MODELS)",
    )
    tracker: TrackerName = "flow"
    tracker_model: str | None = Field(
        default=None,
        max_length=MAX_MODEL_NAME,
        description="weights for tracker sam2, sam3 or edgetam: over HTTP a name from "
        "SONOMASK_TRACKER_MODELS made for that tracker (default: the tracker's own)",
    )
    audio_stream: int = Field(default=0, ge=0, le=1024, description="index among audio streams")
    reconstruct: Literal["masked", "generative"] = "masked"
    stem_format: Literal["pcm24", "float32"] = Field(
        default="pcm24", description="stems as 24-bit PCM or 32-bit float WAV"
    )
    keep_original: bool = Field(
        default=False, description="keep the original audio as an extra track in the videos"
    )
    timeline: list[TimelineFormat] = Field(
        default_factory=lambda: ["otio"],
        max_length=4,
        description="timelines to write at the source's start timecode: otio "
        "(timeline.otio), fcp7xml (timeline.xml, Premiere/Resolve), fcpxml "
        "(timeline.fcpxml, Final Cut Pro), edl (timeline.edl, CMX 3600); [] for none. "
        'Also a comma-separated string, e.g. "otio,edl"',
    )
    matte_format: Literal["none", "grey", "prores4444"] = Field(
        default="none",
        description="matte.mov (objects/<label>/matte.mov per object), the timeline's track "
        "above the picture: grey (ProRes 422 HQ, white = object), prores4444 (the picture "
        "with the mask as alpha) or none (the default: a full-size matte costs about 35 ms "
        "a 1080p frame)",
    )
    preview: bool = Field(
        default=True,
        description="write preview.mp4 (the mask drawn over a small picture); false for "
        "automation: the preview stage then writes nothing and the outputs omit it",
    )
    project: str | None = Field(
        default=None,
        max_length=MAX_PROJECT,
        description="project name for the stems' iXML and the timeline (default: the "
        "video's file name without its extension)",
    )
    out: str | None = None
    webhook: str | None = Field(
        default=None, max_length=MAX_URL, description="URL POSTed the job document at the end"
    )

    @field_validator("webhook")
    @classmethod
    def _http_only(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s]+$", v):
            raise ValueError("webhook must be an http:// or https:// URL")
        return v

    @field_validator("spans", mode="before")
    @classmethod
    def _parse_spans(cls, v: Any) -> Any:
        return _parse_span_list(v)

    @field_validator("text")
    @classmethod
    def _strip_text(cls, v: str | None) -> str | None:
        return _strip(v)

    @field_validator("timeline", mode="before")
    @classmethod
    def _parse_timeline(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [t.strip().lower() for t in v.split(",") if t.strip()] if len(v) <= 100 else [v]
            return [] if v == ["none"] else list(dict.fromkeys(v))
        return v

    @field_validator("timeline")
    @classmethod
    def _unique_timeline(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @field_validator("project")
    @classmethod
    def _printable_project(cls, v: str | None) -> str | None:
        v = _strip(v)
        if v is not None and not v.isprintable():
            raise ValueError("project must be printable text (no control characters)")
        return v

    @model_validator(mode="after")
    def _ranker_needs_candidates(self) -> JobSpec:
        if self.ranker is not None and self.candidates < 2:
            raise ValueError("ranker: a ranker chooses among candidates; give candidates 2 or more")
        if self.separator == "classical" and (self.predict_spans or self.candidates > 1):
            raise ValueError(
                "predict_spans and candidates are SAM Audio's; the classical separator has "
                "neither (use separator sam-audio or auto)"
            )
        return self

    @property
    def project_name(self) -> str:
        """The project the stems' iXML and the timeline name: ``project``, else the video's
        file name without its extension."""
        return self.project or Path(self.video).stem

    @model_validator(mode="after")
    def _fold_keyframes(self) -> JobSpec:
        if self.objects:
            top = [
                name
                for name in ("keyframes", "masks", "boxes", "mask_frames", "mask_times", "spans")
                if getattr(self, name)
            ] + (["text"] if self.text else [])
            if top:
                raise ValueError(
                    f"give each object its own masks/boxes/text/spans inside 'objects', "
                    f"not {', '.join(top)} at the top level as well"
                )
            seen: set[str] = set()
            for o in self.objects:
                if o.label.lower() in seen:
                    raise ValueError(f"two objects are labelled {o.label!r}; labels must differ")
                seen.add(o.label.lower())
            return self
        if self.object_videos or self.stems_format != "mkv":
            raise ValueError(
                "object_videos and stems_format need objects; the single object has its own "
                "isolated and removed videos"
            )
        self.keyframes = _fold(
            self.keyframes, self.masks, self.boxes, self.mask_frames, self.mask_times
        )
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

    @property
    def several(self) -> bool:
        """Whether the job uses the several-object form (``objects``), even with one."""
        return bool(self.objects)

    def targets(self) -> list[ObjectSpec]:
        """The job's objects; the top-level form as one object labelled ``DEFAULT_LABEL``."""
        if self.objects:
            return list(self.objects)
        return [
            ObjectSpec.model_construct(
                label=DEFAULT_LABEL,
                keyframes=self.keyframes,
                masks=[],
                boxes=[],
                mask_frames=[],
                mask_times=[],
                text=self.text,
                spans=self.spans,
            )
        ]

    def all_keyframes(self) -> list[Keyframe]:
        """Every object's keyframes, in object order."""
        return [k for o in self.targets() for k in o.keyframes]

    def input_files(self) -> list[Path]:
        """Every local file the job reads, for hashing into the manifest."""
        files = [Path(self.video)]
        files += [Path(k.mask) for k in self.all_keyframes() if k.mask]
        return files


def first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def rebase_mask_paths(fields: dict[str, Any], here: Callable[[Any], Any]) -> dict[str, Any]:
    """``fields`` of a JobSpec given as a file with every mask path (``masks``,
    ``keyframes[].mask``, the objects' too) passed through ``here``: a spec file's relative
    paths are relative to the file, not to the process (``--spec``, the watch folder)."""

    def rebase(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj
        obj = dict(obj)
        if isinstance(obj.get("masks"), list):
            obj["masks"] = [here(m) for m in obj["masks"]]
        if isinstance(obj.get("keyframes"), list):
            obj["keyframes"] = [
                {**k, "mask": here(k["mask"])} if isinstance(k, dict) and "mask" in k else k
                for k in obj["keyframes"]
            ]
        return obj

    fields = rebase(fields)
    if isinstance(fields.get("objects"), list):
        fields["objects"] = [rebase(o) for o in fields["objects"]]
    return fields


def read_spec_file(path: Path, set_elsewhere: str) -> tuple[dict[str, Any], str]:
    """A JSON spec file's fields and its text (``--spec`` of ``separate`` / ``submit`` and
    of ``watch``), refused in one line when unreadable, not a JSON object, or naming
    ``video`` / ``out`` (``set_elsewhere`` says where those come from, with ``{key}``)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise BadInput(f"cannot read --spec {path}: {e.strerror or e}") from None
    try:
        fields = json.loads(text)
    except ValueError as e:
        raise BadInput(f"--spec {path} is not JSON: {e}") from None
    if not isinstance(fields, dict):
        raise BadInput(f"--spec {path} must hold a JSON object of job fields")
    for key in ("video", "out"):
        if key in fields:
            raise BadInput(f"--spec {path}: " + set_elsewhere.format(key=repr(key)))
    return fields, text
