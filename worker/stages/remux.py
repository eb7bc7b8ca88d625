"""Stage 7, remux: the stems into the original container, the picture stream-copied.

Several objects: ``stems.mkv`` (or ``.mov``, ``stems_format``) holds the picture and one
track per object plus the residual, titled by label; with ``object_videos`` each object
also gets ``objects/<label>/isolated<ext>`` / ``removed<ext>`` as ``mode`` says.

Then what an editor's timeline takes: ``matte.mov`` (``objects/<label>/matte.mov`` per
object; ``matte_format``: grey, or the picture with the mask as alpha) at the source's start
timecode, and the timeline files ``JobSpec.timeline`` asks for (``worker/timeline.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from worker import files, mattes, media, timeline
from worker.settings import Settings
from worker.spec import DEFAULT_LABEL, JobSpec
from worker.stages.common import StageProgress, noop
from worker.timecode import StartTimecode
from worker.workspace import Workspace

READS = (files.SPEC, files.PROBE, files.TARGET, files.RESIDUAL, files.MASKS, files.FRAME_TIMES)
# by mode (<ext> is the source's container), matte_format and timeline
WRITES = ("isolated<ext>", "removed<ext>", files.MATTE, *files.TIMELINES.values())


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    spec = ws.spec
    if spec.several:
        _run_objects(ws, report)
        return
    pj = ws.read_json(files.PROBE)
    plan = media.RemuxPlan(**pj["remux"])
    jobs = []
    if spec.wants_isolated:
        jobs.append((f"isolated{plan.ext}", files.TARGET))
    if spec.wants_removed:
        jobs.append((f"removed{plan.ext}", files.RESIDUAL))
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
    write_editorial(ws, p, report)
    report("remux", 1.0, "remuxed")


def stems_name(spec: JobSpec) -> str:
    """The multitrack file's name: stems.mkv or stems.mov."""
    return f"{files.STEMS_STEM}.{spec.stems_format}"


def object_videos(ws: Workspace) -> list[tuple[str, str, str]]:
    """(output name, object label, isolated | removed) of each per-object video asked for."""
    spec = ws.spec
    if not spec.object_videos:
        return []
    ext = ws.read_json(files.PROBE)["remux"]["ext"]
    kinds = [
        k for k, on in (("isolated", spec.wants_isolated), ("removed", spec.wants_removed)) if on
    ]
    return [
        (files.object_file(o.label, f"{kind}{ext}"), o.label, kind)
        for o in spec.targets()
        for kind in kinds
    ]


def _run_objects(ws: Workspace, report: StageProgress) -> None:
    spec = ws.spec
    pj = ws.read_json(files.PROBE)
    p = media.probe(Path(spec.video))
    jobs = object_videos(ws)
    total = 1 + len(jobs)
    name = stems_name(spec)
    if not ws.has(name):
        stems = [
            (o.label, ws.file(files.object_file(o.label, files.TARGET))) for o in spec.targets()
        ]
        stems.append(("residual", ws.file(files.RESIDUAL)))

        def prog(f: float, m: str) -> None:
            report("remux", f / total, m)

        with ws.atomic(name) as tmp:
            media.remux_stems(
                p, spec.audio_stream, stems, tmp, spec.stems_format, spec.stem_format, prog
            )
    plan = media.RemuxPlan(**pj["remux"])
    for i, (out, label, kind) in enumerate(jobs, start=1):
        if ws.has(out):
            continue

        def prog(f: float, m: str, i: int = i, label: str = label) -> None:
            report("remux", (i + f) / total, f"object {label!r}: {m}")

        target = ws.file(files.object_file(label, files.TARGET))
        without = ws.file(files.object_file(label, f".without-{os.getpid()}.wav"))
        try:
            audio = target
            if kind == "removed":  # the source without this object: the source less its stem
                _subtract(ws.file(files.AUDIO_SOURCE), target, without, spec.stem_format)
                audio = without
            with ws.atomic(out) as tmp:
                warnings = media.remux(
                    p, spec.audio_stream, audio, tmp, plan, prog, keep_original=spec.keep_original
                )
        finally:
            without.unlink(missing_ok=True)  # a work file, never published
        if warnings:
            ws.update_manifest(remux_warnings=warnings)
    write_editorial(ws, p, report)
    report("remux", 1.0, "remuxed")


def _subtract(source: Path, stem: Path, out: Path, stem_format: str) -> None:
    """``out`` = ``source`` - ``stem`` (same rate and channels), streamed in blocks."""
    subtype = "FLOAT" if stem_format == "float32" else "PCM_24"
    with sf.SoundFile(str(source)) as a, sf.SoundFile(str(stem)) as b:
        fmt = "RF64" if a.frames * a.channels * 4 > 3_500_000_000 else "WAV"
        with sf.SoundFile(str(out), "w", a.samplerate, a.channels, subtype, format=fmt) as o:
            while True:
                x = a.read(1 << 18, dtype="float32", always_2d=True)
                if not len(x):
                    break
                o.write(x - b.read(len(x), dtype="float32", always_2d=True))


# ----------------------------------------------------------------------------- matte, timeline


def matte_outputs(spec: JobSpec) -> list[tuple[str, str, str]]:
    """(matte output, its masks file, object label) per matte the job writes."""
    if spec.matte_format == "none":
        return []
    if not spec.several:
        return [(files.MATTE, files.MASKS, DEFAULT_LABEL)]
    return [
        (files.object_file(o.label, files.MATTE), files.object_file(o.label, files.MASKS), o.label)
        for o in spec.targets()
    ]


def timeline_outputs(spec: JobSpec) -> list[str]:
    return [files.TIMELINES[f] for f in spec.timeline]


def write_editorial(ws: Workspace, p: media.Probe, report: StageProgress = noop) -> None:
    """The matte(s) at the source's timecode, then the timeline files, each skipped when
    it exists (the stage resumes)."""
    spec = ws.spec
    pj = ws.read_json(files.PROBE)
    tc = StartTimecode.from_json(pj.get("timecode"))
    todo = [m for m in matte_outputs(spec) if not ws.has(m[0])]
    if todo:
        times = np.load(ws.file(files.FRAME_TIMES))
        for i, (out, masks, label) in enumerate(todo):

            def prog(f: float, m: str, i: int = i, label: str = label) -> None:
                report("remux", min(0.99, (i + f) / len(todo)), f"matte {label}: {m}")

            with ws.atomic(out) as tmp:
                mattes.write_matte(
                    ws.file(masks),
                    times,
                    tmp,
                    prog,
                    timecode=tc,
                    matte_format=spec.matte_format,
                    picture=p,
                )
    if all(ws.has(name) for name in timeline_outputs(spec)):
        return
    plan = timeline_plan(ws, pj, tc)
    for fmt in spec.timeline:
        name = files.TIMELINES[fmt]
        if not ws.has(name):
            with ws.atomic(name) as tmp:
                timeline.write(plan, fmt, tmp)


def timeline_plan(ws: Workspace, pj: dict, tc: StartTimecode) -> timeline.TimelinePlan:
    """The timeline of the job's outputs: where they will be published (``spec.out``, as
    file URLs) or, for a job without one (HTTP), their names relative to the timeline."""
    spec = ws.spec
    base = Path(spec.out).resolve() if spec.out else None

    def url(name: str) -> str:
        return (base / name).as_uri() if base else name

    source = Path(spec.video)
    source_url = source.resolve().as_uri() if base else source.name
    times = np.load(ws.file(files.FRAME_TIMES))
    frames = len(times)
    if tc.vfr and frames > 1:  # the picture's length counted at the nominal rate
        frames = round(float(times[-1]) * tc.rate) + 1

    def audio(name: str, path: str) -> timeline.Media:
        info = sf.info(str(ws.file(path)))
        n = timeline.frames_of_audio(info.frames, info.samplerate, tc.rate)
        return timeline.Media(name, url(path) if path != files.AUDIO_SOURCE else source_url, n)

    mattes_ = [
        (
            "matte" if not spec.several else f"matte {label}",
            timeline.Media(Path(out).name if not spec.several else out, url(out), frames),
        )
        for out, _, label in matte_outputs(spec)
    ]
    if spec.several:
        stems = [
            (
                f"isolated {o.label}",
                audio(f"{o.label} {files.TARGET}", files.object_file(o.label, files.TARGET)),
            )
            for o in spec.targets()
        ]
    else:
        stems = [("isolated", audio(files.TARGET, files.TARGET))]
    stems.append(("removed", audio(files.RESIDUAL, files.RESIDUAL)))
    w, h = pj["display_size"]
    return timeline.TimelinePlan(
        name=spec.project_name,
        timecode=tc,
        size=(int(w), int(h)),
        picture=timeline.Media(source.name, source_url, frames),
        original_audio=audio(source.name, files.AUDIO_SOURCE),
        mattes=mattes_,
        stems=stems,
    )
