"""The job's stages, in order: probe → demux → track → prompt → separate → restore → remux →
preview.

Each stage is a module with ``run(ws, settings, report)``: it reads files from the job's
folder and writes files there (``READS`` / ``WRITES`` name them; see ``files.py``), each
written to a temporary name and renamed when complete. A stage whose outputs exist returns
at once, so a re-run (or a redelivered queued stage) resumes where the job stopped. Work
files no later stage reads are deleted after the stage that last reads them (``RELEASES``). The same
functions run in-process (``jobs/runner.py``) and as Celery tasks (``jobs/tasks.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker.errors import SonomaskError, as_sonomask_error
from worker.settings import Settings
from worker.stages import demux, preview, probe, prompt, remux, restore, separate, track
from worker.stages.common import StageProgress, noop
from worker.workspace import Workspace

Stage = Callable[[Workspace, Settings, StageProgress], None]

STAGES: list[tuple[str, Stage]] = [
    ("probe", probe.run),
    ("demux", demux.run),
    ("track", track.run),
    ("prompt", prompt.run),
    ("separate", separate.run),
    ("restore", restore.run),
    ("remux", remux.run),
    ("preview", preview.run),
]

RELEASES: dict[str, Callable[[Workspace], list[str]]] = {
    "separate": separate.done_with,
}
"""After a stage, the work files no later stage reads: deleted (``Workspace.release``), so
a long job's disk peak does not hold them (the restore stage releases the model's stems
itself, between its two passes)."""


def run_stage(
    ws: Workspace, name: str, fn: Stage, settings: Settings, report: StageProgress = noop
) -> None:
    """Run one stage, recording its time; errors become SonomaskError with the stage named."""
    ws.update_manifest(stage=name)
    t0 = time.perf_counter()
    try:
        fn(ws, settings, report)
    except SonomaskError:
        raise
    except Exception as exc:  # noqa: BLE001 - mapped to one line for the person
        raise as_sonomask_error(exc) from exc
    ws.release(*RELEASES.get(name, lambda ws: [])(ws))
    timings = ws.manifest().get("timings", {})
    timings[name] = round(time.perf_counter() - t0, 3)
    ws.update_manifest(timings=timings)
