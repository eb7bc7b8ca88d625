"""The job's stages, each a plain ``stage(workspace)`` that reads files and writes files.

probe → demux → track → prompt → separate → restore → remux → preview. A stage whose outputs
exist is skipped, so a re-run (or a redelivered Celery task) resumes where the job stopped.
``run_job`` runs them in-process and publishes the outputs into the output folder only
when every stage succeeded.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from model.separator import MODEL_SAMPLE_RATE, Prompt, Separation, Separator, Span
from vision import masks as vmasks
from vision import prompt as vprompt
from vision import propagate as vpropagate
from vision.preview import draw_overlay
from worker import media
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


def _frames(ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    times = np.load(ws.file("frame_times.npy"))
    wsize = tuple(ws.manifest()["frames"]["working_size"])
    return media.load_frames(ws.file("frames.raw"), len(times), wsize), times


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
    if spec.tracker == "copy":
        work, warnings = vpropagate.copy_first(frames, keyframes), []
    elif spec.tracker == "sam2":
        from vision import sam2_tracker

        source = spec.tracker_model or os.environ.get("SONOMASK_TRACKER_MODEL")
        if not source:
            raise BadInput(
                "--tracker sam2 needs SAM 2 weights: give --tracker-model (a folder saved by "
                "transformers, or a Hub id such as facebook/sam2.1-hiera-tiny in the Hugging Face "
                "cache) or set SONOMASK_TRACKER_MODEL"
            )
        try:
            tracker = sam2_tracker.load(source, Settings.from_env().device or "auto")
        except sam2_tracker.TrackerLoadError as exc:
            raise BadInput(str(exc)) from None
        # A box prompts SAM 2 as a box (it segments the object inside); its output on the
        # keyframe is then the mask, not the rectangle.
        prompts: dict[int, Any] = dict(keyframes)
        sx, sy = wsize[0] / size[0], wsize[1] / size[1]
        for idx, (x0, y0, x1, y1) in boxes.items():
            prompts[idx] = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
            full_keyframes.pop(idx)
        work, warnings = tracker.propagate(frames, prompts, progress=prog)
    else:
        work, warnings = vpropagate.propagate(frames, keyframes, progress=prog)
    others = [i for i in range(n) if i not in keyframes]
    if others and not any(work[i].any() for i in others):
        from vision.errors import MaskError

        raise MaskError(
            "the object was lost on every frame but the keyframe(s): the tracker could not "
            "follow it. Check that the mask covers the object on its frame, or add keyframes"
        )
    ws.write_npy("masks_work.npy", work.astype(np.uint8))
    write_full_masks(ws, "masks.npz", work, size, full_keyframes)
    ws.update_manifest(track_warnings=warnings)
    report("track", 1.0, "tracked")


def write_full_masks(
    ws: Workspace,
    name: str,
    work: np.ndarray,
    size: tuple[int, int],
    exact: dict[int, np.ndarray],
) -> None:
    """Stream full-size masks into ``name`` (npz, key ``masks``) one frame at a time.

    Full-resolution masks of a long clip do not fit comfortably in memory, so the .npy
    inside the zip is written incrementally; keyframes keep the user's exact mask.
    """
    w, h = size
    n = len(work)
    header = {"descr": "|u1", "fortran_order": False, "shape": (n, h, w)}
    with ws.atomic(name) as tmp:
        with zipfile.ZipFile(
            tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True
        ) as zf:
            with zf.open("masks.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for i in range(n):
                    m = exact.get(i)
                    if m is None:
                        m = vmasks.resize_masks(work[i : i + 1], size)[0]
                    f.write(np.ascontiguousarray(m, dtype=np.uint8).tobytes())


def stage_prompt(ws: Workspace, report: StageProgress = _noop) -> None:
    """Masked frames at the model's feature rate, and the object's motion over time."""
    if ws.has("prompt_video.npy", "prompt_times.npy", "activity.npz"):
        return
    frames, times = _frames(ws)
    masks = np.load(ws.file("masks_work.npy"), mmap_mode="r")
    duration = sf.info(str(ws.file("audio_model.wav"))).duration
    t = np.arange(0.0, max(duration, 1.0 / FEATURE_RATE), 1.0 / FEATURE_RATE)
    idx = np.clip(np.searchsorted(times, t + 1e-6, side="right") - 1, 0, len(times) - 1)
    ws.write_npy("prompt_video.npy", vprompt.masked_video_for_model(frames[idx], masks[idx]))
    ws.write_npy("prompt_times.npy", t)
    obj, bg = vprompt.motion_activity(frames, masks)
    ws.write_npz("activity.npz", object=obj, background=bg, times=times)
    report("prompt", 1.0, "prompt built")


def check_separator_config(spec: JobSpec, settings: Settings) -> None:
    """Fail before any decoding when SAM Audio is asked for without a usable model."""
    model_path = spec.model or settings.model
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


def choose_separator(spec: JobSpec, settings: Settings) -> Separator:
    """``auto`` runs SAM Audio when a model is configured, otherwise the weight-free backend."""
    model_path = spec.model or settings.model
    name = spec.separator
    if name == "auto":
        name = "sam-audio" if model_path else "classical"
    if name == "classical":
        from model.classical import ClassicalSeparator

        return ClassicalSeparator()
    if not model_path:
        raise BadInput("--separator sam-audio needs --model PATH (or SONOMASK_MODEL)")
    from model.sam_audio.backend import SamAudioSeparator

    return SamAudioSeparator(model_path, device=settings.device)


def stage_separate(
    ws: Workspace, report: StageProgress = _noop, settings: Settings | None = None
) -> None:
    if ws.has(*STEMS_MODEL):
        return
    spec = ws.spec
    settings = settings or Settings.from_env()
    separator = choose_separator(spec, settings)
    audio, sr = sf.read(str(ws.file("audio_model.wav")), dtype="float32")
    prompt = Prompt(text=spec.text, spans=[Span(s.sign, s.start, s.end) for s in spec.spans])
    if separator.name == "classical":
        # The weight-free backend follows the object's motion, sampled at the frame times.
        act = np.load(ws.file("activity.npz"))
        prompt.object_activity = act["object"]
        prompt.background_activity = act["background"]
        prompt.video_times = act["times"]
    else:
        # SAM Audio sees the masked frames, sampled at its feature rate.
        prompt.masked_video = np.load(ws.file("prompt_video.npy"), mmap_mode="r")
        prompt.video_times = np.load(ws.file("prompt_times.npy"))
    result: Separation = separator.separate(audio, prompt, _stage_progress(report, "separate"))
    _check_stems(result, len(audio))
    # Two plain .npy files, so the restore stage can memory-map them block by block.
    ws.write_npy(STEMS_MODEL[1], result.residual.astype(np.float32))
    ws.write_npy(STEMS_MODEL[0], result.target.astype(np.float32))
    ws.update_manifest(backend=result.backend, separate_warnings=result.warnings)
    report("separate", 1.0, f"separated with {result.backend}")


def _check_stems(result: Separation, n: int) -> None:
    for name in ("target", "residual"):
        x = getattr(result, name)
        if x.shape != (n,) or not np.isfinite(x).all():
            raise SonomaskError(f"the {result.backend} backend returned a bad {name} {x.shape}")


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
    target48 = np.load(ws.file(STEMS_MODEL[0]), mmap_mode="r")
    residual48 = np.load(ws.file(STEMS_MODEL[1]), mmap_mode="r")
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
                        np.asarray(target48[m_lo:m_hi]),
                        np.asarray(residual48[m_lo:m_hi]),
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
    masks = np.load(ws.file("masks_work.npy"), mmap_mode="r")
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
                chunk = draw_overlay(
                    np.asarray(frames[s : s + step]), np.asarray(masks[s : s + step])
                )
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
            os.replace(tmp, out_dir / name)
        finally:
            if tmp.exists():
                tmp.unlink()
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


def run_job(
    spec: JobSpec,
    progress: StageProgress | None = None,
    settings: Settings | None = None,
    keep_workspace: bool = False,
) -> dict[str, Any]:
    """Run every stage in-process and publish the outputs into ``spec.out``."""
    settings = settings or Settings.from_env()
    report = progress or _noop
    out_dir = Path(spec.out or "sonomask-out")
    ws = Workspace.create(settings.workspace, spec)
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
        if isinstance(exc, SonomaskError | KeyboardInterrupt):
            raise
        raise err from exc
    finally:
        if not keep_workspace:
            ws.remove()
