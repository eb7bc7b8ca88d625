"""Stage 7, remux: the stems into the original container, the picture stream-copied."""

from __future__ import annotations

from pathlib import Path

from worker import files, media
from worker.settings import Settings
from worker.stages.common import StageProgress, noop
from worker.workspace import Workspace

READS = (files.SPEC, files.PROBE, files.TARGET, files.RESIDUAL)
WRITES = ("isolated<ext>", "removed<ext>")  # by mode; <ext> is the source's container


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    spec = ws.spec
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
