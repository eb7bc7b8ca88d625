"""The job's record (``job.json``): inputs, parameters, versions, timings, outcome; and
publishing the outputs, all together or not at all."""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from worker import files
from worker.errors import BadInput, SonomaskError
from worker.stages import remux as remux_stage
from worker.workspace import Workspace


def output_names(ws: Workspace) -> list[str]:
    """The files a finished job publishes, in a stable order."""
    spec = ws.spec
    if spec.several:
        return [name for _, names in object_outputs(ws) for name in names] + [
            files.RESIDUAL,
            *([files.TARGET] if len(spec.objects) == 1 else []),
            remux_stage.stems_name(spec),
            *([files.PREVIEW] if spec.preview else []),
            *remux_stage.timeline_outputs(spec),
            files.MANIFEST,
        ]
    ext = ws.read_json(files.PROBE)["remux"]["ext"]
    names = [files.TARGET, files.RESIDUAL]
    if spec.wants_isolated:
        names.append(f"isolated{ext}")
    if spec.wants_removed:
        names.append(f"removed{ext}")
    names += [m[0] for m in remux_stage.matte_outputs(spec)]
    return names + [
        files.MASKS,
        *([files.PREVIEW] if spec.preview else []),
        *remux_stage.timeline_outputs(spec),
        files.MANIFEST,
    ]


def object_outputs(ws: Workspace) -> list[tuple[str, list[str]]]:
    """Each object's label and its own outputs (several-object form), in object order."""
    spec = ws.spec
    videos = remux_stage.object_videos(ws)
    mattes = remux_stage.matte_outputs(spec)
    return [
        (
            o.label,
            [files.object_file(o.label, files.TARGET), files.object_file(o.label, files.MASKS)]
            + [name for name, _, label in mattes if label == o.label]
            + [name for name, label, _ in videos if label == o.label],
        )
        for o in spec.targets()
    ]


def publish(ws: Workspace, out_dir: Path) -> list[str]:
    """Copy finished outputs into ``out_dir``; each appears complete or not at all, job.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = output_names(ws)
    published: list[Path] = []
    try:
        for name in names:
            src = ws.file(name)
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            tmp = (out_dir / name).with_name(f".{Path(name).name}.part")
            try:
                if name == files.MANIFEST:
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
    for pkg in (
        "sonomask",
        "numpy",
        "scipy",
        "opencv-python-headless",
        "torch",
        "transformers",
        "opentimelineio",
    ):
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


def finish_manifest(ws: Workspace) -> dict[str, Any]:
    m = ws.manifest()
    pj = ws.read_json(files.PROBE)
    warnings = (
        list(pj.get("warnings", [])) + m.get("track_warnings", []) + m.get("separate_warnings", [])
    )
    several = {}
    if ws.spec.several:
        conf = m.get("object_confidence", {})
        several["objects"] = [
            {"label": label, "outputs": names, "confidence": conf.get(label)}
            for label, names in object_outputs(ws)
        ]
    return ws.update_manifest(
        **several,
        state="succeeded",
        stage=None,
        progress=1.0,
        finished=_now(),
        warnings=warnings,
        outputs=output_names(ws),
        timecode=pj.get("timecode"),
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
