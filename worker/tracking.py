"""``sonomask track``: only the tracking half of a job, for editors who want the matte."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from worker import media
from worker.config import Settings
from worker.pipeline import (
    StageProgress,
    _load_keyframe_mask,
    _noop,
    decode_working_frames,
    stage_preview,
    stage_track,
)
from worker.spec import JobSpec
from worker.workspace import Workspace


def track_to_file(
    spec: JobSpec,
    out: Path,
    preview: Path | None = None,
    progress: StageProgress = _noop,
    settings: Settings | None = None,
) -> list[str]:
    """Track the keyframe mask(s) through ``spec.video``; write ``out`` (npz) and a preview."""
    settings = settings or Settings.from_env()
    p = media.probe(Path(spec.video), require_audio=False)
    size = p.display_size
    for k in spec.keyframes:
        _load_keyframe_mask(k, size)
    settings.workspace.mkdir(parents=True, exist_ok=True)
    ws = Workspace.create(
        Path(tempfile.mkdtemp(prefix="track-", dir=settings.workspace)), spec, job_id="job"
    )
    try:
        ws.write_json("probe.json", {"display_size": list(size), "frame_rate": p.frame_rate})
        decode_working_frames(ws, p, size, lambda f, m: progress("decode", f, m))
        stage_track(ws, progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(ws.file("masks.npz"), out) if _same_fs(ws.path, out) else _copy(
            ws.file("masks.npz"), out
        )
        if preview is not None:
            stage_preview(ws, progress)
            _copy(ws.file("preview.mp4"), preview)
        return ws.manifest().get("track_warnings", [])
    finally:
        ws.remove()
        ws.path.parent.rmdir() if ws.path.parent.exists() else None


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b.parent).st_dev
    except OSError:
        return False


def _copy(src: Path, dst: Path) -> None:
    """Copy to a temporary name beside ``dst`` then rename, so ``dst`` is never half-written."""
    import shutil

    tmp = dst.with_name(f".{dst.name}.part")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
