"""Stage 5, separate: the model's mono copy, window by window (resumable), joined with
complementary crossfades."""

from __future__ import annotations

import shutil

import numpy as np
import soundfile as sf

from model.separator import MODEL_SAMPLE_RATE, Prompt, Separation, Separator, Span
from model.windows import crossfade_gains, window_prompt
from worker import arrays, files
from worker.errors import SonomaskError
from worker.settings import Settings
from worker.stages.common import StageProgress, noop, working_frames
from worker.stages.models import choose_separator
from worker.stages.prompt import MaskedFrames
from worker.workspace import Workspace

READS = (
    files.AUDIO_MODEL,
    files.ACTIVITY,
    files.FRAMES,
    files.MASKS_WORK,
    files.PROMPT_INDEX,
    files.PROMPT_TIMES,
)
WRITES = files.STEMS_MODEL


def _job_prompt(ws: Workspace, separator: Separator) -> Prompt:
    """The whole clip's prompt; video parts stay on disk until a window reads them."""
    spec = ws.spec
    prompt = Prompt(text=spec.text, spans=[Span(s.sign, s.start, s.end) for s in spec.spans])
    if separator.name == "classical":
        # The weight-free backend follows the object's motion, sampled at the frame times.
        act = np.load(ws.file(files.ACTIVITY))
        prompt.object_activity = act["object"]
        prompt.background_activity = act["background"]
        prompt.video_times = act["times"]
        if "features" in act:  # work folders from before the richer evidence lack them
            prompt.object_features = act["features"]
            prompt.feature_names = tuple(act["feature_names"].tolist())
    else:
        # SAM Audio sees the masked frames, sampled at its feature rate.
        frames, _ = working_frames(ws)
        masks = arrays.open_npy(ws.file(files.MASKS_WORK))
        prompt.masked_video = MaskedFrames(frames, masks, np.load(ws.file(files.PROMPT_INDEX)))
        prompt.video_times = np.load(ws.file(files.PROMPT_TIMES))
    return prompt


def _has_evidence(prompt: Prompt) -> bool:
    """Whether the weight-free backend has anything to go on in this prompt."""
    video = prompt.video_times is not None and len(prompt.video_times) >= 2
    return bool(prompt.spans) or video


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """Separate the model's mono copy window by window, then join the windows.

    Each window's result is kept in ``windows/`` as it is made, so a job that crashed
    (or whose worker was killed) resumes at the first window not yet done. The joined
    stems are written row by row: memory holds one window whatever the clip's length.
    """
    if ws.has(*files.STEMS_MODEL):
        return
    separator = choose_separator(ws.spec, settings)
    with sf.SoundFile(str(ws.file(files.AUDIO_MODEL))) as audio:
        n = audio.frames
        plan = separator.windowing.plan(n, settings.window_seconds)
        plan_doc = {"backend": separator.name, "windows": [list(w) for w in plan]}
        if ws.has(files.WINDOWS_PLAN) and ws.read_json(files.WINDOWS_PLAN) != plan_doc:
            shutil.rmtree(
                ws.file(files.WINDOWS_DIR), ignore_errors=True
            )  # another backend's windows
        ws.write_json(files.WINDOWS_PLAN, plan_doc)
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
    shutil.rmtree(ws.file(files.WINDOWS_DIR), ignore_errors=True)
    report("separate", 1.0, f"separated with {ws.manifest().get('backend')}")


def _window_file(i: int) -> str:
    return f"{files.WINDOWS_DIR}/{i:05d}.npz"


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
    confidence = None
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
        confidence = result.confidence
    with ws.atomic(_window_file(i)) as tmp, tmp.open("wb") as f:
        np.savez(
            f,
            target=np.asarray(target, dtype=np.float32),
            residual=np.asarray(residual, dtype=np.float32),
            backend=np.array(backend),
            warnings=np.array(warnings, dtype=str),
            confidence=np.array(np.nan if confidence is None else confidence),
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
    confidences: list[float] = []
    with ws.atomic(files.STEMS_MODEL[0]) as t_tmp, ws.atomic(files.STEMS_MODEL[1]) as r_tmp:
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
                    if "confidence" in part and np.isfinite(part["confidence"]):
                        confidences.append(float(part["confidence"]))
                    for w in part["warnings"].tolist():
                        warnings[w] = warnings.get(w, 0) + 1
    notes = [
        w if c == len(plan) or len(plan) == 1 else f"{w} ({c} of {len(plan)} windows)"
        for w, c in warnings.items()
    ]
    ws.update_manifest(
        backend=" + ".join(sorted(backends)),
        separate_warnings=notes,
        confidence=round(float(np.mean(confidences)), 3) if confidences else None,
    )
