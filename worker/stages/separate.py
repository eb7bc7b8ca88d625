"""Stage 5, separate: the model's mono copy, window by window (resumable), joined with
complementary crossfades.

Several objects (``JobSpec.objects``): every window separates all objects at once
(``model.separator.separate_objects``: the classical backend lets them compete for each
component, SAM Audio runs them as one batch); each object's stem goes to
``objects/<label>/stems_target.npy``, what no object took to ``stems_residual.npy``.

Windows batched: a separator with ``separate_windows`` (SAM Audio) is handed as many pending
windows at once as its ``window_batch_size`` says (SONOMASK_WINDOW_BATCH; on CUDA as memory
allows, on the CPU one); each window's result is the same as alone and is still kept in its
own file, so resuming works the same."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import soundfile as sf

from model.separator import (
    MODEL_SAMPLE_RATE,
    ObjectsSeparation,
    Prompt,
    Separation,
    Separator,
    Span,
    separate_objects,
)
from model.windows import crossfade_gains, window_prompt
from worker import arrays, files
from worker.errors import SonomaskError
from worker.settings import Settings
from worker.stages.common import (
    StageProgress,
    model_stems,
    noop,
    working_frames,
    working_masks,
)
from worker.stages.models import choose_separator
from worker.stages.prompt import MaskedFrames
from worker.workspace import Workspace

READS = (
    files.AUDIO_MODEL,
    files.ACTIVITY,
    files.FRAMES,
    files.FRAME_OFFSETS,
    files.MASKS_WORK,
    files.PROMPT_INDEX,
    files.PROMPT_TIMES,
)
WRITES = files.STEMS_MODEL


def _job_prompt(ws: Workspace, separator: Separator, obj: Any = None) -> Prompt:
    """The whole clip's prompt for ``obj`` (one of ``spec.targets()``; default the single
    object); video parts stay on disk until a window reads them."""
    spec = ws.spec
    obj = obj or spec.targets()[0]
    prefix = files.object_file(obj.label, "") if spec.several else ""
    prompt = Prompt(text=obj.text, spans=[Span(s.sign, s.start, s.end) for s in obj.spans])
    if separator.name == "classical":
        # The weight-free backend follows the object's motion, sampled at the frame times.
        act = np.load(ws.file(prefix + files.ACTIVITY))
        prompt.object_activity = act["object"]
        prompt.background_activity = act["background"]
        prompt.video_times = act["times"]
        if "features" in act:  # work folders from before the richer evidence lack them
            prompt.object_features = act["features"]
            prompt.feature_names = tuple(act["feature_names"].tolist())
    else:
        # SAM Audio sees the masked frames, sampled at its feature rate.
        frames, _ = working_frames(ws)
        masks = working_masks(ws, prefix + files.MASKS_WORK)
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
    spec = ws.spec
    if spec.several:
        _run_objects(ws, settings, report)
        return
    if ws.has(*files.STEMS_MODEL):
        return
    separator = choose_separator(spec, settings)
    _release_pictures(ws, separator)
    with sf.SoundFile(str(ws.file(files.AUDIO_MODEL))) as audio:
        n = audio.frames
        plan = separator.windowing.plan(n, settings.window_seconds)
        plan_doc = {"backend": separator.name, "windows": [list(w) for w in plan]}
        done = _windows_done(ws, plan_doc)
        if done:
            report(
                "separate",
                len(done) / len(plan),
                f"resuming: {len(done)} of {len(plan)} windows already separated",
            )
        ws.update_manifest(separate_windows={"count": len(plan), "resumed": len(done)})
        prompt = _job_prompt(ws, separator)
        whole_has_evidence = _has_evidence(prompt)
        for group in _window_groups(separator, _pending_windows(audio, plan, done)):
            if len(group) > 1:
                _separate_window_group(ws, separator, [prompt], group, plan, report)
                continue
            i, chunk = group[0]
            _separate_window(ws, separator, prompt, i, plan, chunk, whole_has_evidence, report)
    _join_windows(ws, plan, n, drop=separator.name == "classical")
    shutil.rmtree(ws.file(files.WINDOWS_DIR), ignore_errors=True)
    report("separate", 1.0, f"separated with {ws.manifest().get('backend')}")


def done_with(ws: Workspace) -> list[str]:
    """What no stage after this one reads: the model's mono copy, and the working frames
    and masks unless the preview stage still has to draw its picture from them."""
    return [files.AUDIO_MODEL, *_pictures_done_with(ws)]


def _pictures_done_with(ws: Workspace) -> list[str]:
    """The working frames and masks, once only SAM Audio could still read them (none if
    the preview stage must still draw its picture from them)."""
    if ws.spec.preview and not ws.has(files.PREVIEW_PICTURE):
        return []
    prefixes = [files.object_file(o.label, "") for o in ws.spec.targets()]
    masks = [p + files.MASKS_WORK for p in (prefixes if ws.spec.several else [""])]
    return [files.FRAMES, files.FRAME_OFFSETS, *masks]


def _release_pictures(ws: Workspace, separator: Separator) -> None:
    """The classical backend reads the object's evidence (activity.npz), not the pictures:
    they go before separation, which is then the disk's peak."""
    if separator.name == "classical":
        ws.release(*_pictures_done_with(ws))


def _window_file(i: int) -> str:
    return f"{files.WINDOWS_DIR}/{i:05d}.npz"


def _windows_done(ws: Workspace, plan_doc: dict[str, Any]) -> list[int]:
    """The windows already separated under this plan (a run with another backend, plan or
    objects left windows that do not belong to it: they are dropped)."""
    if ws.has(files.WINDOWS_PLAN) and ws.read_json(files.WINDOWS_PLAN) != plan_doc:
        shutil.rmtree(ws.file(files.WINDOWS_DIR), ignore_errors=True)
    ws.write_json(files.WINDOWS_PLAN, plan_doc)
    return [i for i in range(len(plan_doc["windows"])) if ws.has(_window_file(i))]


def _pending_windows(
    audio: sf.SoundFile, plan: list[tuple[int, int]], done: list[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """Each window not yet separated, read from the model-rate audio as mono float32."""
    for i, (a, b) in enumerate(plan):
        if i in done:
            continue
        audio.seek(a)
        chunk = audio.read(b - a, dtype="float32")
        yield i, chunk[:, 0] if chunk.ndim == 2 else chunk


def _window_groups(
    separator: Separator, pending: Iterator[tuple[int, np.ndarray]]
) -> Iterator[list[tuple[int, np.ndarray]]]:
    """Pending windows in groups of the separator's batch size (1 without ``separate_windows``),
    read one group at a time."""
    group: list[tuple[int, np.ndarray]] = []
    for i, chunk in pending:
        size = 1
        if hasattr(separator, "separate_windows") and hasattr(separator, "window_batch_size"):
            size = max(1, int(separator.window_batch_size(len(chunk))))
        if group and len(group) >= size:
            yield group
            group = []
        group.append((i, chunk))
    if group:
        yield group


def _separate_window_group(
    ws: Workspace,
    separator: Any,
    prompts: list[Prompt],
    group: list[tuple[int, np.ndarray]],
    plan: list[tuple[int, int]],
    report: StageProgress,
) -> None:
    """Several windows through ``separator.separate_windows`` at once, each kept in its own
    file as ``_separate_window`` / ``_separate_objects_window`` keep it (SAM Audio: every
    object of every window runs, as in the one-window path)."""
    sr = MODEL_SAMPLE_RATE
    several = ws.spec.several
    labels = [o.label for o in ws.spec.targets()] if several else []
    first, last = group[0][0], group[-1][0]
    where = f"windows {first + 1}-{last + 1}/{len(plan)}"

    def prog(f: float, m: str) -> None:
        report("separate", (first + f * len(group)) / len(plan), f"{where}: {m}")

    local = [
        [window_prompt(p, plan[i][0] / sr, plan[i][1] / sr) for p in prompts] for i, _ in group
    ]
    results = separator.separate_windows([c for _, c in group], local, prog)
    for (i, chunk), seps in zip(group, results, strict=True):
        for r in seps:
            _check_stems(r, len(chunk))
        details = seps[0].details
        offset = plan[i][0] / sr
        if not several:
            (r,) = seps
            conf = np.nan if r.confidence is None else r.confidence
            _save_window(
                ws, i, offset, target=r.target, residual=r.residual, backend=r.backend,
                warnings=r.warnings, confidence=conf, details=details,
            )  # fmt: skip
        else:
            targets = np.stack([np.asarray(r.target, np.float32) for r in seps])
            confs = [np.nan if r.confidence is None else r.confidence for r in seps]
            warnings = [f"{labels[j]}: {w}" for j, r in enumerate(seps) for w in r.warnings]
            _save_window(
                ws, i, offset, targets=targets,
                residual=chunk - targets.sum(axis=0, dtype=np.float32),
                backend=seps[0].backend, warnings=warnings,
                confidences=np.array(confs, np.float64),
                details={**details, "objects": labels} if details else {},
            )  # fmt: skip
    report("separate", (last + 1) / len(plan), f"{where} separated")


def _save_window(ws: Workspace, i: int, offset_s: float, **parts: Any) -> None:
    """Keep window ``i``'s result in ``windows/`` (atomically: a crash leaves none or all)."""
    details = parts.pop("details")
    arrays_ = {}
    for k, v in parts.items():
        if k in ("target", "residual", "targets"):
            arrays_[k] = np.asarray(v, dtype=np.float32)
        elif k == "warnings":
            arrays_[k] = np.array(v, dtype=str)
        elif k == "confidence":
            arrays_[k] = np.array(np.nan if v is None else v)
        else:
            arrays_[k] = np.asarray(v)
    with ws.atomic(_window_file(i)) as tmp, tmp.open("wb") as f:
        np.savez(f, **arrays_, details=np.array(_window_details(details, offset_s)))


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
    details: dict = {}
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
        details = result.details
    _save_window(
        ws, i, a / MODEL_SAMPLE_RATE, target=target, residual=residual, backend=backend,
        warnings=warnings, confidence=confidence, details=details,
    )  # fmt: skip
    report("separate", (i + 1) / len(plan), f"{where} separated")


def _window_details(details: dict, offset_s: float) -> str:
    """A window's ``Separation.details`` as JSON, its times moved onto the job's clock."""
    out: dict[str, list] = {}
    for key in ("rerank", "predicted_spans"):
        for entry in details.get(key, []):
            moved = {**entry, "start_s": entry["start_s"] + offset_s}
            if details.get("objects"):  # the batch's items, in order (several objects)
                moved["objects"] = details["objects"]
            moved["end_s"] = entry["end_s"] + offset_s
            if key == "predicted_spans":
                moved["spans"] = [
                    [[sign, a + offset_s, b + offset_s] for sign, a, b in item]
                    for item in entry["spans"]
                ]
            out.setdefault(key, []).append(moved)
    return json.dumps(out)


def _add_details(out: dict[str, list], part: Any) -> None:
    """Add a window's reranking and predicted spans to ``out`` (job.json ``rerank``,
    ``predicted_spans``: what each candidate scored and which one was kept)."""
    if "details" in part:
        for key, entries in json.loads(str(part["details"])).items():
            out.setdefault(key, []).extend(entries)


def _check_stems(result: Separation, n: int) -> None:
    for name in ("target", "residual"):
        x = np.asarray(getattr(result, name))
        if x.shape != (n,) or not np.isfinite(x).all():
            raise SonomaskError(f"the {result.backend} backend returned a bad {name} {x.shape}")


def _join_windows(ws: Workspace, plan: list[tuple[int, int]], n: int, drop: bool) -> None:
    """Crossfade the windows' results into the two stems, one window in memory at a time.

    ``drop``: delete each window's file once joined, so the disk never holds the windows
    and the stems whole at once (for a backend whose windows are cheap to redo should the
    join be cut short: the classical one; SAM Audio's stay until the stems are written)."""
    backends: set[str] = set()
    warnings: dict[str, int] = {}
    confidences: list[float] = []
    details: dict[str, list] = {}
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
                    _add_details(details, part)
                    for w in part["warnings"].tolist():
                        warnings[w] = warnings.get(w, 0) + 1
                if drop:
                    ws.file(_window_file(i)).unlink()
    notes = [
        w if c == len(plan) or len(plan) == 1 else f"{w} ({c} of {len(plan)} windows)"
        for w, c in warnings.items()
    ]
    ws.update_manifest(
        backend=" + ".join(sorted(backends)),
        separate_warnings=notes,
        confidence=round(float(np.mean(confidences)), 3) if confidences else None,
        **details,
    )


# --------------------------------------------------------------------------- several objects


def _run_objects(ws: Workspace, settings: Settings, report: StageProgress) -> None:
    """Every object separated from the same windows at once (module doc), resumable."""
    names = model_stems(ws)
    if ws.has(*names):
        return
    spec = ws.spec
    objs = spec.targets()
    separator = choose_separator(spec, settings)
    _release_pictures(ws, separator)
    with sf.SoundFile(str(ws.file(files.AUDIO_MODEL))) as audio:
        n = audio.frames
        plan = separator.windowing.plan(n, settings.window_seconds)
        plan_doc = {
            "backend": separator.name,
            "windows": [list(w) for w in plan],
            "objects": [o.label for o in objs],
        }
        done = _windows_done(ws, plan_doc)
        ws.update_manifest(separate_windows={"count": len(plan), "resumed": len(done)})
        prompts = [_job_prompt(ws, separator, o) for o in objs]
        whole = [_has_evidence(p) for p in prompts]
        for group in _window_groups(separator, _pending_windows(audio, plan, done)):
            if len(group) > 1:
                _separate_window_group(ws, separator, prompts, group, plan, report)
                continue
            i, chunk = group[0]
            _separate_objects_window(ws, separator, prompts, whole, i, plan, chunk, report)
    _join_object_windows(ws, plan, n, names, drop=separator.name == "classical")
    shutil.rmtree(ws.file(files.WINDOWS_DIR), ignore_errors=True)
    report("separate", 1.0, f"separated {len(objs)} object(s) with {ws.manifest().get('backend')}")


def _separate_objects_window(
    ws: Workspace,
    separator: Separator,
    prompts: list[Prompt],
    whole: list[bool],
    i: int,
    plan: list[tuple[int, int]],
    chunk: np.ndarray,
    report: StageProgress,
) -> None:
    """Window ``i`` for every object; an object with nothing to go on in this stretch (the
    classical backend: no picture, no span) gets silence there, with a warning."""
    a, b = plan[i]
    sr = MODEL_SAMPLE_RATE
    labels = [o.label for o in ws.spec.targets()]
    local = [window_prompt(p, a / sr, b / sr) for p in prompts]
    use = [
        j
        for j, p in enumerate(local)
        if separator.name != "classical" or not whole[j] or _has_evidence(p)
    ]
    warnings = [
        f"{labels[j]}: no picture or span covers part of the audio; that part was left in "
        "the residual"
        for j in range(len(local))
        if j not in use
    ]
    where = f"window {i + 1}/{len(plan)}"
    targets = np.zeros((len(local), len(chunk)), np.float32)
    backend, confidences = separator.name, [np.nan] * len(local)
    details: dict = {}
    if use:

        def prog(f: float, m: str) -> None:
            report(
                "separate",
                (i + f) / len(plan),
                f"{where}, objects {', '.join(labels[j] for j in use)}: {m}",
            )

        result: ObjectsSeparation = separate_objects(
            separator, chunk, [local[j] for j in use], prog
        )
        for j, target, notes, conf in zip(
            use, result.targets, result.warnings, result.confidences, strict=True
        ):
            _check_stems(Separation(target, target, result.backend), len(chunk))
            targets[j] = target
            warnings += [f"{labels[j]}: {w}" for w in notes]
            confidences[j] = np.nan if conf is None else conf
        backend = result.backend
        details = result.details  # (in the order of the objects that ran: ``objects``)
        details = {**details, "objects": [labels[j] for j in use]} if details else {}
    residual = chunk - targets.sum(axis=0, dtype=np.float32)
    _save_window(
        ws, i, a / MODEL_SAMPLE_RATE, targets=targets, residual=residual, backend=backend,
        warnings=warnings, confidences=np.array(confidences, dtype=np.float64), details=details,
    )  # fmt: skip
    report("separate", (i + 1) / len(plan), f"{where} separated")


def _join_object_windows(
    ws: Workspace, plan: list[tuple[int, int]], n: int, names: list[str], drop: bool
) -> None:
    """Crossfade the windows into each object's stem and the residual, one window in memory
    (``drop``: as ``_join_windows``)."""
    backends: set[str] = set()
    warnings: dict[str, int] = {}
    confidences: list[np.ndarray] = []
    details: dict[str, list] = {}
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(ws.atomic(name)) for name in names]
        stems = [stack.enter_context(arrays.create_npy(t, (n,), np.float32)) for t in tmps]
        for i, (a, b) in enumerate(plan):
            with np.load(ws.file(_window_file(i))) as part:
                gain = crossfade_gains(plan, i)
                rows = [*part["targets"], part["residual"]]
                for stem, row in zip(stems, rows, strict=True):
                    acc = stem.read(a, b)
                    acc += gain * row
                    stem.write(a, acc)
                backends.add(str(part["backend"]))
                confidences.append(part["confidences"])
                _add_details(details, part)
                for w in part["warnings"].tolist():
                    warnings[w] = warnings.get(w, 0) + 1
            if drop:
                ws.file(_window_file(i)).unlink()
    notes = [
        w if c == len(plan) or len(plan) == 1 else f"{w} ({c} of {len(plan)} windows)"
        for w, c in warnings.items()
    ]
    labels = [o.label for o in ws.spec.targets()]
    table = np.array(confidences, dtype=np.float64).reshape(len(plan), len(labels))
    per_object = {}
    for j, lb in enumerate(labels):
        known = table[:, j][np.isfinite(table[:, j])]
        per_object[lb] = round(float(known.mean()), 3) if known.size else None
    ws.update_manifest(
        backend=" + ".join(sorted(backends)),
        separate_warnings=notes,
        confidence=None,
        object_confidence=per_object,
        **details,
    )
