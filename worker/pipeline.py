"""The job's stages, each a plain ``stage(workspace)`` that reads files and writes files.

probe → demux → track → prompt → separate → restore → remux → preview. A stage whose outputs
exist is skipped, so a re-run (or a redelivered Celery task) resumes where the job stopped.
``run_job`` runs them in-process and publishes the outputs into the output folder only
when every stage succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf

from model.separator import MODEL_SAMPLE_RATE, Prompt, Separation, Separator, Span
from model.windows import crossfade_gains, plan_windows, window_prompt
from vision import masks as vmasks
from vision import prompt as vprompt
from vision import propagate as vpropagate
from vision.preview import draw_overlay
from worker import arrays, media
from worker.arrays import RowFile
from worker.config import Settings
from worker.errors import BadInput, SonomaskError, as_sonomask_error
from worker.spec import JobSpec
from worker.workspace import Workspace

StageProgress = Callable[[str, float, str], None]
"""(stage name, fraction of that stage done, message)."""

STEMS_MODEL = ("stems_target.npy", "stems_residual.npy")  # mono 48 kHz, from the separator
RESTORE_BLOCK_SECONDS = 30.0
RESTORE_MARGIN_SECONDS = 0.5
FEATURE_RATE = 25.0  # SAM Audio's latent frame rate: 48 kHz / hop 1920.
FEATURE_HOP = 1920
WINDOW_SECONDS = 60.0  # separation window when the backend names none
WINDOW_OVERLAP_SECONDS = 2.0
WINDOWS_DIR = "windows"  # one finished file per separated window (resume point)
WINDOWS_PLAN = "windows.json"
WORK_FORMAT = 2  # bump when a stage's files change meaning: old work folders are not resumed
MIN_AUDIO_FRACTION = 0.9  # below this share of the declared duration the file is truncated.


def _noop(stage: str, fraction: float, message: str) -> None:
    pass


def _stage_progress(report: StageProgress, stage: str) -> media.ProgressFn:
    return lambda fraction, message: report(stage, fraction, message)


# =========================================================================== stages


def stage_probe(ws: Workspace, report: StageProgress = _noop) -> None:
    """Check the video and the keyframe masks before any decoding work is spent."""
    if ws.has("probe.json"):
        return
    spec = ws.spec
    p = media.probe(Path(spec.video))
    info = media.audio_info(p, spec.audio_stream)
    if info.sample_rate <= 0 or info.channels <= 0:
        raise BadInput(f"{p.path.name}: the audio stream has no sample rate or channel count")
    size = p.display_size
    limit = Settings.from_env().max_video_seconds
    if p.duration > limit:
        raise BadInput(
            f"{p.path.name} is {p.duration:.0f} s long; this service accepts up to {limit:.0f} s "
            "(SONOMASK_MAX_VIDEO_SECONDS)"
        )
    warnings = []
    if info.offset_seconds < -0.001:
        warnings.append(
            f"the audio starts {-info.offset_seconds:.3f} s before the first frame; "
            "that part is not in the stems"
        )
    for k in spec.keyframes:  # validate masks now: a bad mask should not cost a decode
        _load_keyframe_mask(k, size)
    check_separator_config(spec, Settings.from_env())
    plan = media.plan_remux(p, spec.audio_stream)
    ws.write_json(
        "probe.json",
        {
            "format": p.format_name,
            "duration": p.duration,
            "display_size": list(size),
            "rotation": p.rotation,
            "frame_rate": p.frame_rate,
            "picture_start": media.picture_start(p),
            "audio": info.__dict__,
            "remux": plan.__dict__,
            "warnings": warnings + plan.warnings,
            "streams": [s.raw for s in p.streams],
        },
    )
    report("probe", 1.0, "probed")


def stage_demux(ws: Workspace, report: StageProgress = _noop) -> None:
    """Audio at its own rate and channels, the model's mono 48 kHz copy, downscaled frames."""
    outputs = ("audio_source.wav", "audio_model.wav", "frames.raw", "frame_times.npy")
    if ws.has(*outputs):
        return
    spec = ws.spec
    pj = ws.read_json("probe.json")
    p = media.probe(Path(spec.video))
    prog = _stage_progress(report, "demux")
    with ws.atomic("audio_source.wav") as tmp:
        media.demux_audio(p, spec.audio_stream, tmp, lambda f, m: prog(0.4 * f, m))
        frames_audio = sf.info(str(tmp)).frames
        sr = pj["audio"]["sample_rate"]
        declared = (p.audio(spec.audio_stream).duration or p.duration) - max(
            0.0, -pj["audio"]["offset_seconds"]
        )
        if declared > 0.5 and frames_audio / sr < MIN_AUDIO_FRACTION * declared:
            raise BadInput(
                f"{p.path.name} is truncated or damaged: {declared:.1f} s of audio declared, "
                f"only {frames_audio / sr:.1f} s could be decoded"
            )
        if frames_audio == 0:
            raise BadInput(f"{p.path.name}: the audio stream holds no samples")
    with ws.atomic("audio_model.wav") as tmp:
        media.mixdown_for_model(ws.file("audio_source.wav"), tmp, MODEL_SAMPLE_RATE)
    prog(0.5, "decode frames")
    decode_working_frames(ws, p, tuple(pj["display_size"]), lambda f, m: prog(0.5 + 0.5 * f, m))
    report("demux", 1.0, "demuxed")


def decode_working_frames(
    ws: Workspace, p: media.Probe, size: tuple[int, int], prog: media.ProgressFn
) -> None:
    """Every frame at the working size (frames.raw) and its time (frame_times.npy)."""
    wsize = media.working_size(size)
    with ws.atomic("frames.raw") as tmp:
        times = media.decode_frames(p, tmp, wsize, prog)
        if tmp.stat().st_size != len(times) * wsize[0] * wsize[1] * 3:
            raise SonomaskError("frame decoding produced an unexpected number of bytes")
    ws.write_npy("frame_times.npy", times)
    ws.update_manifest(frames={"count": len(times), "working_size": list(wsize)})


def _frames(ws: Workspace) -> tuple[RowFile, np.ndarray]:
    """The working frames, read frame by frame from disk, and their times."""
    times = np.load(ws.file("frame_times.npy"))
    w, h = ws.manifest()["frames"]["working_size"]
    return RowFile(ws.file("frames.raw"), (len(times), h, w, 3), np.uint8), times


def _load_keyframe_mask(k: Any, size: tuple[int, int]) -> np.ndarray:
    if k.mask is not None:
        return vmasks.load_mask(Path(k.mask), size)
    return vmasks.box_mask(k.box, size)


def stage_track(ws: Workspace, report: StageProgress = _noop) -> None:
    """Carry the keyframe masks through the clip (at working size), then to full size."""
    if ws.has("masks.npz", "masks_work.npy"):
        return
    spec = ws.spec
    pj = ws.read_json("probe.json")
    size = tuple(pj["display_size"])
    frames, times = _frames(ws)
    n = len(times)
    wsize = (frames.shape[2], frames.shape[1])
    keyframes: dict[int, np.ndarray] = {}
    full_keyframes: dict[int, np.ndarray] = {}
    boxes: dict[int, tuple[float, float, float, float]] = {}  # keyframes drawn as boxes
    for k in spec.keyframes:
        if k.time is not None:
            idx = int(np.clip(np.searchsorted(times, k.time + 1e-6, side="right") - 1, 0, n - 1))
            if k.time > times[-1] + 1.0:
                raise BadInput(
                    f"keyframe time {k.time:g} s is after the clip's end ({times[-1]:.2f} s)"
                )
        else:
            idx = k.frame or 0
            if idx >= n:
                raise BadInput(
                    f"keyframe frame {idx} does not exist; the video has {n} frames (0-{n - 1})"
                )
        full = _load_keyframe_mask(k, size)
        full_keyframes[idx] = full
        keyframes[idx] = vmasks.resize_masks(full[None], wsize)[0].astype(bool)
        boxes.pop(idx, None)
        if k.box is not None:
            boxes[idx] = k.box
    prog = _stage_progress(report, "track")
    tracker_options: Any = None
    if spec.tracker == "sam2":
        tracker_options = _load_sam2(spec, keyframes, boxes, full_keyframes, wsize, size)
    # Masks go straight to disk as they are made: memory stays flat however long the clip.
    with ws.atomic("masks_work.npy") as work_tmp:
        work = arrays.create_npy(work_tmp, (n, wsize[1], wsize[0]), np.uint8)
        with work:
            if spec.tracker == "copy":
                vpropagate.copy_first(frames, keyframes, out=work)
                warnings: list[str] = []
            elif spec.tracker == "sam2":
                tracker, prompts = tracker_options
                _, warnings = tracker.propagate(frames, prompts, progress=prog, out=work)
            else:
                _, warnings = vpropagate.propagate(frames, keyframes, progress=prog, out=work)
            with ws.atomic("masks.npz") as full_tmp:
                found = write_full_masks(full_tmp, work, size, full_keyframes)
                others = np.ones(n, dtype=bool)
                others[list(keyframes)] = False
                if others.any() and not found[others].any():
                    from vision.errors import MaskError

                    raise MaskError(
                        "the object was lost on every frame but the keyframe(s): the tracker "
                        "could not follow it. Check that the mask covers the object on its "
                        "frame, or add keyframes"
                    )
    ws.update_manifest(track_warnings=warnings)
    report("track", 1.0, "tracked")


def _load_sam2(
    spec: JobSpec,
    keyframes: dict[int, np.ndarray],
    boxes: dict[int, tuple[float, float, float, float]],
    full_keyframes: dict[int, np.ndarray],
    wsize: tuple[int, int],
    size: tuple[int, int],
) -> tuple[Any, dict[int, Any]]:
    """The SAM 2 tracker and its prompts (a box keyframe prompts it as a box)."""
    from vision import sam2_tracker

    settings = Settings.from_env()
    source = resolve_model(spec.tracker_model, settings, "tracker_model")
    if not source:
        raise BadInput(
            "--tracker sam2 needs SAM 2 weights: give --tracker-model (a folder saved by "
            "transformers, or a Hub id such as facebook/sam2.1-hiera-tiny in the Hugging Face "
            "cache) or set SONOMASK_TRACKER_MODEL"
        )
    try:
        tracker = sam2_tracker.load(source, settings.device or "auto")
    except sam2_tracker.TrackerLoadError as exc:
        raise BadInput(str(exc)) from None
    # A box prompts SAM 2 as a box (it segments the object inside); its output on the
    # keyframe is then the mask, not the rectangle.
    prompts: dict[int, Any] = dict(keyframes)
    sx, sy = wsize[0] / size[0], wsize[1] / size[1]
    for idx, (x0, y0, x1, y1) in boxes.items():
        prompts[idx] = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
        full_keyframes.pop(idx)
    return tracker, prompts


MASK_CHUNK = 256  # frames of masks read, resized or written at a time


def write_full_masks(
    path: Path,
    work: RowFile | np.ndarray,
    size: tuple[int, int],
    exact: dict[int, np.ndarray],
) -> np.ndarray:
    """Stream full-size masks into the npz ``path`` (key ``masks``), a chunk at a time.

    Full-resolution masks of a long clip do not fit comfortably in memory, so the .npy
    inside the zip is written incrementally; keyframes keep the user's exact mask.
    Returns whether each frame's mask holds any object pixel.
    """
    w, h = size
    n = len(work)
    found = np.zeros(n, dtype=bool)
    header = {"descr": "|u1", "fortran_order": False, "shape": (n, h, w)}
    with zipfile.ZipFile(
        path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
    ) as zf:
        with zf.open("masks.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)
            for lo in range(0, n, MASK_CHUNK):
                chunk = np.asarray(work[lo : lo + MASK_CHUNK])
                for i, small in enumerate(chunk, start=lo):
                    m = exact.get(i)
                    if m is None:
                        m = vmasks.resize_masks(small[None], size)[0]
                    m = np.ascontiguousarray(m, dtype=np.uint8)
                    found[i] = bool(m.any())
                    f.write(m.tobytes())
    return found


def stage_prompt(ws: Workspace, report: StageProgress = _noop) -> None:
    """The object's motion over time, and which frame the model sees at each feature step.

    The masked frames themselves are built window by window in the separate stage from
    the working frames and masks (``MaskedFrames``): a second copy of the whole clip on
    disk would cost as much as the frames and buy nothing.
    """
    if ws.has("prompt_index.npy", "prompt_times.npy", "activity.npz"):
        return
    frames, times = _frames(ws)
    n = len(times)
    duration = sf.info(str(ws.file("audio_model.wav"))).duration
    t = np.arange(0.0, max(duration, 1.0 / FEATURE_RATE), 1.0 / FEATURE_RATE)
    idx = np.clip(np.searchsorted(times, t + 1e-6, side="right") - 1, 0, n - 1)
    ws.write_npy("prompt_index.npy", idx.astype(np.int64))
    ws.write_npy("prompt_times.npy", t)
    meter = vprompt.MotionMeter(*frames.shape[1:3])
    with arrays.open_npy(ws.file("masks_work.npy")) as masks:
        for lo in range(0, n, MASK_CHUNK):
            chunk, mchunk = frames.read(lo, lo + MASK_CHUNK), masks.read(lo, lo + MASK_CHUNK)
            for frame, mask in zip(chunk, mchunk, strict=True):
                meter.add(frame, mask)
            report("prompt", min(1.0, (lo + MASK_CHUNK) / n), "measuring the object's motion")
    obj, bg = meter.result()
    ws.write_npz("activity.npz", object=obj, background=bg, times=times)
    report("prompt", 1.0, "prompt built")


class MaskedFrames:
    """The model's visual prompt for a whole clip, built only for the frames asked for.

    ``self[a:b]`` gives uint8 [b - a, h, w, 3]: the working frames at the feature steps
    ``a`` to ``b`` with the tracked object blacked out (``vision.prompt``); the windows of a
    long clip each build their own few hundred frames and nothing more.
    """

    def __init__(self, frames: RowFile, masks: RowFile, index: np.ndarray) -> None:
        self.frames, self.masks, self.index = frames, masks, np.asarray(index)
        self.shape = (len(self.index), *frames.shape[1:])
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: slice) -> np.ndarray:
        idx = self.index[key]
        return vprompt.masked_video_for_model(self.frames[idx], self.masks[idx])


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


def choose_separator(spec: JobSpec, settings: Settings) -> Separator:
    """``auto`` runs SAM Audio when a model is configured, otherwise the weight-free backend."""
    model_path = resolve_model(spec.model, settings)
    name = spec.separator
    if name == "auto":
        name = "sam-audio" if model_path else "classical"
    if name == "classical":
        from model.classical import ClassicalSeparator

        return ClassicalSeparator()
    if not model_path:
        raise BadInput("--separator sam-audio needs --model PATH (or SONOMASK_MODEL)")
    from model.backends.sam_audio import SamAudioSeparator

    return SamAudioSeparator(model_path, device=settings.device)


def separation_windows(separator: Separator, settings: Settings, n: int) -> list[tuple[int, int]]:
    """Where the model audio is cut: the backend's window length (or
    ``SONOMASK_WINDOW_SECONDS``) and overlap, on the model's feature grid."""
    seconds = settings.window_seconds or getattr(separator, "window_seconds", WINDOW_SECONDS)
    overlap_s = min(getattr(separator, "overlap_seconds", WINDOW_OVERLAP_SECONDS), seconds / 4)
    window = max(FEATURE_HOP, round(seconds * MODEL_SAMPLE_RATE / FEATURE_HOP) * FEATURE_HOP)
    overlap = min(round(overlap_s * MODEL_SAMPLE_RATE / FEATURE_HOP) * FEATURE_HOP, window // 2)
    return plan_windows(n, window, overlap)


def _job_prompt(ws: Workspace, separator: Separator) -> Prompt:
    """The whole clip's prompt; video parts stay on disk until a window reads them."""
    spec = ws.spec
    prompt = Prompt(text=spec.text, spans=[Span(s.sign, s.start, s.end) for s in spec.spans])
    if separator.name == "classical":
        # The weight-free backend follows the object's motion, sampled at the frame times.
        act = np.load(ws.file("activity.npz"))
        prompt.object_activity = act["object"]
        prompt.background_activity = act["background"]
        prompt.video_times = act["times"]
    else:
        # SAM Audio sees the masked frames, sampled at its feature rate.
        frames, _ = _frames(ws)
        masks = arrays.open_npy(ws.file("masks_work.npy"))
        prompt.masked_video = MaskedFrames(frames, masks, np.load(ws.file("prompt_index.npy")))
        prompt.video_times = np.load(ws.file("prompt_times.npy"))
    return prompt


def _has_evidence(prompt: Prompt) -> bool:
    """Whether the weight-free backend has anything to go on in this prompt."""
    video = prompt.video_times is not None and len(prompt.video_times) >= 2
    return bool(prompt.spans) or video


def stage_separate(
    ws: Workspace, report: StageProgress = _noop, settings: Settings | None = None
) -> None:
    """Separate the model's mono copy window by window, then join the windows.

    Each window's result is kept in ``windows/`` as it is made, so a job that crashed
    (or whose worker was killed) resumes at the first window not yet done. The joined
    stems are written row by row: memory holds one window whatever the clip's length.
    """
    if ws.has(*STEMS_MODEL):
        return
    settings = settings or Settings.from_env()
    separator = choose_separator(ws.spec, settings)
    with sf.SoundFile(str(ws.file("audio_model.wav"))) as audio:
        n = audio.frames
        plan = separation_windows(separator, settings, n)
        plan_doc = {"backend": separator.name, "windows": [list(w) for w in plan]}
        if ws.has(WINDOWS_PLAN) and ws.read_json(WINDOWS_PLAN) != plan_doc:
            shutil.rmtree(ws.file(WINDOWS_DIR), ignore_errors=True)  # another backend's windows
        ws.write_json(WINDOWS_PLAN, plan_doc)
        done = [i for i in range(len(plan)) if ws.has(_window_file(i))]
        if done:
            report(
                "separate",
                len(done) / len(plan),
                f"resuming: {len(done)} of {len(plan)} windows already separated",
            )
        ws.update_manifest(separate_windows={"count": len(plan), "resumed": len(done)})
        prompt = _job_prompt(ws, separator)
        whole_has_evidence = _has_evidence(prompt)
        for i, (a, b) in enumerate(plan):
            if i in done:
                continue
            audio.seek(a)
            chunk = audio.read(b - a, dtype="float32")
            if chunk.ndim == 2:
                chunk = chunk[:, 0]
            _separate_window(ws, separator, prompt, i, plan, chunk, whole_has_evidence, report)
    _join_windows(ws, plan, n)
    shutil.rmtree(ws.file(WINDOWS_DIR), ignore_errors=True)
    report("separate", 1.0, f"separated with {ws.manifest().get('backend')}")


def _window_file(i: int) -> str:
    return f"{WINDOWS_DIR}/{i:05d}.npz"


def _separate_window(
    ws: Workspace,
    separator: Separator,
    prompt: Prompt,
    i: int,
    plan: list[tuple[int, int]],
    chunk: np.ndarray,
    whole_has_evidence: bool,
    report: StageProgress,
) -> None:
    """Separate window ``i`` of ``plan`` and keep its result in ``windows/``."""
    a, b = plan[i]
    sr = MODEL_SAMPLE_RATE
    where = f"window {i + 1}/{len(plan)}"
    local = window_prompt(prompt, a / sr, b / sr)
    warnings: list[str] = []
    if separator.name == "classical" and whole_has_evidence and not _has_evidence(local):
        # Nothing in this stretch says which sound is the object's (no picture, no span).
        target, residual, backend = np.zeros_like(chunk), chunk, separator.name
        warnings.append(
            "no picture or span covers part of the audio; that part was left in the residual"
        )
    else:

        def prog(f: float, m: str) -> None:
            report("separate", (i + f) / len(plan), f"{where}: {m}")

        result: Separation = separator.separate(chunk, local, prog)
        _check_stems(result, len(chunk))
        target, residual, backend = result.target, result.residual, result.backend
        warnings += result.warnings
    with ws.atomic(_window_file(i)) as tmp, tmp.open("wb") as f:
        np.savez(
            f,
            target=np.asarray(target, dtype=np.float32),
            residual=np.asarray(residual, dtype=np.float32),
            backend=np.array(backend),
            warnings=np.array(warnings, dtype=str),
        )
    report("separate", (i + 1) / len(plan), f"{where} separated")


def _check_stems(result: Separation, n: int) -> None:
    for name in ("target", "residual"):
        x = np.asarray(getattr(result, name))
        if x.shape != (n,) or not np.isfinite(x).all():
            raise SonomaskError(f"the {result.backend} backend returned a bad {name} {x.shape}")


def _join_windows(ws: Workspace, plan: list[tuple[int, int]], n: int) -> None:
    """Crossfade the windows' results into the two stems, one window in memory at a time."""
    backends: set[str] = set()
    warnings: dict[str, int] = {}
    with ws.atomic(STEMS_MODEL[0]) as t_tmp, ws.atomic(STEMS_MODEL[1]) as r_tmp:
        with (
            arrays.create_npy(t_tmp, (n,), np.float32) as target,
            arrays.create_npy(r_tmp, (n,), np.float32) as residual,
        ):
            for i, (a, b) in enumerate(plan):
                with np.load(ws.file(_window_file(i))) as part:
                    gain = crossfade_gains(plan, i)
                    for stem, key in ((target, "target"), (residual, "residual")):
                        acc = stem.read(a, b)  # what the previous window left in the overlap
                        acc += gain * part[key]
                        stem.write(a, acc)
                    backends.add(str(part["backend"]))
                    for w in part["warnings"].tolist():
                        warnings[w] = warnings.get(w, 0) + 1
    notes = [
        w if c == len(plan) or len(plan) == 1 else f"{w} ({c} of {len(plan)} windows)"
        for w, c in warnings.items()
    ]
    ws.update_manifest(backend=" + ".join(sorted(backends)), separate_warnings=notes)


def stage_restore(ws: Workspace, report: StageProgress = _noop) -> None:
    """Stems back at the source rate and channel layout, streamed block by block.

    Each block is restored with a margin on both sides (longer than the STFT and the
    resampling filters) and only its centre is kept, so the result matches one pass over
    the whole clip while memory stays bounded by the block. Block edges fall on samples
    where the source and model clocks coincide exactly and on the STFT's frame grid.
    """
    if ws.has("target.wav", "residual.wav"):
        return
    from model.remix import restore, stft_size

    spec = ws.spec
    target48 = arrays.open_npy(ws.file(STEMS_MODEL[0]))
    residual48 = arrays.open_npy(ws.file(STEMS_MODEL[1]))
    subtype = "FLOAT" if spec.stem_format == "float32" else "PCM_24"
    with sf.SoundFile(str(ws.file("audio_source.wav"))) as src:
        sr, n, channels = src.samplerate, src.frames, src.channels
        g = math.gcd(sr, MODEL_SAMPLE_RATE)
        # Block edges on samples where both clocks and the STFT frame grid coincide.
        unit = math.lcm(sr // g, stft_size(sr) // 4)
        unit48 = unit * MODEL_SAMPLE_RATE // sr
        block = max(1, round(RESTORE_BLOCK_SECONDS * sr / unit)) * unit
        margin = math.ceil(RESTORE_MARGIN_SECONDS * sr / unit) * unit
        fmt = "RF64" if n * channels * 4 > 3_500_000_000 else "WAV"
        with ws.atomic("target.wav") as t_tmp, ws.atomic("residual.wav") as r_tmp:
            with (
                sf.SoundFile(str(t_tmp), "w", sr, channels, subtype, format=fmt) as t_out,
                sf.SoundFile(str(r_tmp), "w", sr, channels, subtype, format=fmt) as r_out,
            ):
                for a in range(0, n, block):
                    lo, hi = max(0, a - margin), min(n, a + block + margin)
                    src.seek(lo)
                    chunk = src.read(hi - lo, dtype="float32", always_2d=True)
                    m_lo, m_hi = lo // unit * unit48, -(-hi // unit) * unit48
                    tgt, res = restore(
                        chunk,
                        target48.read(m_lo, m_hi),
                        residual48.read(m_lo, m_hi),
                        sr,
                        method=spec.reconstruct,
                    )
                    keep = slice(a - lo, a - lo + min(block, n - a))
                    t_out.write(tgt[keep])
                    r_out.write(res[keep])
                    report("restore", min(1.0, (a + block) / n), "restoring the stems")
    report("restore", 1.0, "stems written")


def stage_remux(ws: Workspace, report: StageProgress = _noop) -> None:
    spec = ws.spec
    pj = ws.read_json("probe.json")
    plan = media.RemuxPlan(**pj["remux"])
    jobs = []
    if spec.wants_isolated:
        jobs.append((f"isolated{plan.ext}", "target.wav"))
    if spec.wants_removed:
        jobs.append((f"removed{plan.ext}", "residual.wav"))
    p = media.probe(Path(spec.video))
    for i, (name, stem) in enumerate(jobs):
        if ws.has(name):
            continue

        def prog(f: float, m: str, i: int = i) -> None:
            report("remux", (i + f) / len(jobs), m)

        with ws.atomic(name) as tmp:
            warnings = media.remux(
                p,
                spec.audio_stream,
                ws.file(stem),
                tmp,
                plan,
                prog,
                keep_original=spec.keep_original,
            )
        if warnings:
            ws.update_manifest(remux_warnings=warnings)
    report("remux", 1.0, "remuxed")


def stage_preview(ws: Workspace, report: StageProgress = _noop) -> None:
    """A small H.264 preview with the tracked mask drawn over the picture, target audio."""
    if ws.has("preview.mp4"):
        return
    frames, times = _frames(ws)
    masks = arrays.open_npy(ws.file("masks_work.npy"))
    h, w = frames.shape[1:3]
    fps = ws.read_json("probe.json")["frame_rate"]
    with ws.atomic("preview.mp4") as tmp:
        args = [
            *media.FFMPEG_QUIET,
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{w}x{h}",
            "-r",
            f"{fps:.6f}",
            "-i",
            "pipe:0",
        ]
        if ws.has("target.wav"):  # hear the isolated sound with the picture
            args += [
                "-i",
                str(ws.file("target.wav")),
                "-map",
                "0:v",
                "-map",
                "1:a",
                "-c:a",
                "aac",
                "-b:a",
                "96k",
                "-shortest",
            ]
        args += [
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "28",
            "-pix_fmt",
            "yuv420p",
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            str(tmp),
        ]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        step = 64
        try:
            for s in range(0, len(times), step):
                chunk = draw_overlay(frames.read(s, s + step), masks.read(s, s + step))
                proc.stdin.write(np.ascontiguousarray(chunk).tobytes())
                report("preview", min(1.0, (s + step) / len(times)), "preview")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.wait() != 0:
            raise SonomaskError(f"ffmpeg failed to write the preview: {err.strip()[-300:]}")
    report("preview", 1.0, "preview written")


STAGES: list[tuple[str, Callable[..., None]]] = [
    ("probe", stage_probe),
    ("demux", stage_demux),
    ("track", stage_track),
    ("prompt", stage_prompt),
    ("separate", stage_separate),
    ("restore", stage_restore),
    ("remux", stage_remux),
    ("preview", stage_preview),
]


# =========================================================================== outputs


def output_names(ws: Workspace) -> list[str]:
    """The files a finished job publishes, in a stable order."""
    spec = ws.spec
    ext = ws.read_json("probe.json")["remux"]["ext"]
    names = ["target.wav", "residual.wav"]
    if spec.wants_isolated:
        names.append(f"isolated{ext}")
    if spec.wants_removed:
        names.append(f"removed{ext}")
    return names + ["masks.npz", "preview.mp4", "job.json"]


def publish(ws: Workspace, out_dir: Path) -> list[str]:
    """Copy finished outputs into ``out_dir``; each appears complete or not at all, job.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(ws)
    published: list[Path] = []
    try:
        for name in names:
            src = ws.file(name)
            tmp = out_dir / f".{name}.part"
            try:
                if name == "job.json":
                    tmp.write_text(src.read_text())
                else:
                    try:
                        os.link(src, tmp)
                    except OSError:
                        shutil.copyfile(src, tmp)
                if ws.guard is not None:  # a queued job's lease: never publish over another worker
                    ws.guard()
                os.replace(tmp, out_dir / name)
                published.append(out_dir / name)
            finally:
                if tmp.exists():
                    tmp.unlink()
    except OSError:  # all or nothing: a disk that filled up halfway leaves no outputs
        for path in published:
            path.unlink(missing_ok=True)
        raise
    return names


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("sonomask", "numpy", "scipy", "opencv-python-headless", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    try:
        first = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout
        out["ffmpeg"] = first.split("\n", 1)[0].split(" ")[2]
    except (OSError, IndexError):
        pass
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start_manifest(ws: Workspace) -> None:
    spec = ws.spec
    inputs = []
    for f in spec.input_files():
        if f.is_file():
            inputs.append({"path": str(f), "bytes": f.stat().st_size, "sha256": sha256(f)})
        else:
            inputs.append({"path": str(f), "missing": True})
    ws.update_manifest(
        id=ws.job_id,
        state="running",
        stage=None,
        progress=0.0,
        created=ws.manifest().get("created", _now()),
        inputs=inputs,
        params=spec.model_dump(mode="json"),
        versions=versions(),
        timings=ws.manifest().get("timings", {}),
        error=None,
    )


def run_stage(
    ws: Workspace, name: str, fn: Callable[..., None], report: StageProgress = _noop
) -> None:
    """Run one stage, recording its time; errors become SonomaskError with the stage named."""
    ws.update_manifest(stage=name)
    t0 = time.perf_counter()
    try:
        fn(ws, report)
    except SonomaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to one line for the person
        raise as_sonomask_error(exc) from exc
    timings = ws.manifest().get("timings", {})
    timings[name] = round(time.perf_counter() - t0, 3)
    ws.update_manifest(timings=timings)


def finish_manifest(ws: Workspace) -> dict[str, Any]:
    m = ws.manifest()
    pj = ws.read_json("probe.json")
    warnings = (
        list(pj.get("warnings", [])) + m.get("track_warnings", []) + m.get("separate_warnings", [])
    )
    return ws.update_manifest(
        state="succeeded",
        stage=None,
        progress=1.0,
        finished=_now(),
        warnings=warnings,
        outputs=output_names(ws),
        audio={
            "sample_rate": pj["audio"]["sample_rate"],
            "channels": pj["audio"]["channels"],
            "offset_seconds": pj["audio"]["offset_seconds"],
        },
    )


def fail_manifest(ws: Workspace, err: SonomaskError) -> None:
    try:
        ws.update_manifest(
            state="failed", error=str(err), bad_input=isinstance(err, BadInput), finished=_now()
        )
    except OSError:
        pass


def resumable_job_id(spec: JobSpec, settings: Settings) -> str:
    """A job id that is the same for the same request on the same input files.

    The CLI runs under it, so after a crash or an interruption the same command finds the
    work folder the last run left and carries on: finished stages are skipped and the
    separation restarts at its first unfinished window. An input file that changed (size
    or modification time), another model or another layout of the work folder
    (``WORK_FORMAT``) gives another id, hence a fresh start.
    """
    h = hashlib.sha256(spec.model_dump_json().encode())
    for f in spec.input_files():
        st = f.stat() if f.exists() else None
        h.update(f"{f.resolve()}|{st and st.st_size}|{st and st.st_mtime_ns}".encode())
    h.update(f"{settings.model}|{settings.window_seconds}|{WORK_FORMAT}".encode())
    return f"cli-{h.hexdigest()[:16]}"


def run_job(
    spec: JobSpec,
    progress: StageProgress | None = None,
    settings: Settings | None = None,
    keep_workspace: bool = False,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Run every stage in-process and publish the outputs into ``spec.out``.

    With ``job_id`` (see ``resumable_job_id``) a work folder of that id left by an earlier
    run is reused, and this run's folder is kept when it stops for any reason but bad
    input, so running again resumes it. Without, every run starts afresh and cleans up.
    """
    settings = settings or Settings.from_env()
    report = progress or _noop
    out_dir = Path(spec.out or "sonomask-out")
    ws = Workspace.create(settings.workspace, spec, job_id)
    keep = keep_workspace
    with ws.lock(), local_models():
        try:
            start_manifest(ws)
            for name, fn in STAGES:
                run_stage(ws, name, fn, report)
            manifest = finish_manifest(ws)
            publish(ws, out_dir)
            return manifest
        except BaseException as exc:
            err = (
                as_sonomask_error(exc)
                if not isinstance(exc, KeyboardInterrupt)
                else SonomaskError("interrupted")
            )
            fail_manifest(ws, err)
            keep = keep or (job_id is not None and not isinstance(err, BadInput))
            if isinstance(exc, SonomaskError | KeyboardInterrupt):
                raise
            raise err from exc
        finally:
            if not keep:
                ws.remove()
