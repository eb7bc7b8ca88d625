"""Stage 7, remux: the stems into the original container, the picture stream-copied.

Several objects: ``stems.mkv`` (or ``.mov``, ``stems_format``) holds the picture and one
track per object plus the residual, titled by label; with ``object_videos`` each object
also gets ``objects/<label>/isolated<ext>`` / ``removed<ext>`` as ``mode`` says."""

from __future__ import annotations

import os
from pathlib import Path

import soundfile as sf

from worker import files, media
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages.common import StageProgress, noop
from worker.workspace import Workspace

READS = (files.SPEC, files.PROBE, files.TARGET, files.RESIDUAL)
WRITES = ("isolated<ext>", "removed<ext>")  # by mode; <ext> is the source's container


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
