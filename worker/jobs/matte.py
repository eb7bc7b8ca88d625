"""``sonomask track``: only the tracking half of a job, for editors who want the matte.

Outputs, each written to a temporary name and renamed when complete:

- ``masks.npz`` (key ``masks``): uint8 [frames, height, width], 1 = object, at the
  source's displayed size (rotation applied) with one mask per decoded frame;
- a matte video an NLE can use as a track matte (``worker/mattes.py``): grayscale, white =
  object, or with ``matte_format="prores4444"`` the picture with the mask as alpha; the
  source's displayed size and frame count, the source's frame timestamps (also for
  variable frame rate), start timecode and rate, so it lines up frame for frame. The
  grey matte's container picks the codec: ``.mkv`` FFV1 (lossless), ``.mov`` ProRes 422
  HQ (what every NLE opens; 10-bit, visually lossless), ``.mp4`` H.264 lossless;
- optionally a PNG sequence (8-bit grayscale, ``<name>_000000.png`` ...);
- optionally the preview (the mask drawn over the picture).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from worker import files, media
from worker.errors import BadInput, SonomaskError, as_sonomask_error
from worker.mattes import (  # noqa: F401 - iter_masks and write_matte are used from here too
    MATTE_CODECS,
    check_matte_name,
    iter_masks,
    npz_shape,
    write_matte,
)
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages import preview as preview_stage
from worker.stages import track as track_stage
from worker.stages.common import StageProgress, decode_working_frames, load_keyframe_mask, noop
from worker.stages.models import local_models
from worker.timecode import read_start_timecode
from worker.workspace import Workspace


def default_matte_path(out: Path, matte_format: str = "grey") -> Path:
    """``masks.npz`` -> ``masks_matte.mkv`` beside it (``.mov`` for ProRes 4444)."""
    ext = ".mov" if matte_format == "prores4444" else ".mkv"
    return out.with_name(f"{out.stem}_matte{ext}")


def track_to_file(
    spec: JobSpec,
    out: Path,
    preview: Path | None = None,
    progress: StageProgress = noop,
    settings: Settings | None = None,
    matte: Path | None = None,
    png_dir: Path | None = None,
    matte_format: str = "grey",
) -> list[str]:
    """Track the keyframe mask(s) through ``spec.video``; write ``out`` (npz) and, when
    given, the matte video (``matte_format`` grey or prores4444, at the source's start
    timecode), a PNG sequence and a preview. Returns the warnings (tracking, timecode)."""
    settings = settings or Settings.from_env()
    if matte is not None:
        check_matte_name(matte, matte_format)
    p = media.probe(Path(spec.video), require_audio=False)
    timecode, tc_warnings = read_start_timecode(p, media.picture_start(p))
    size = p.display_size
    for k in spec.keyframes:
        try:
            load_keyframe_mask(k, size)
        except Exception as exc:  # noqa: BLE001 - MaskError and friends become one line
            raise as_sonomask_error(exc) from exc
    settings.workspace.mkdir(parents=True, exist_ok=True)
    ws = Workspace.create(
        Path(tempfile.mkdtemp(prefix="track-", dir=settings.workspace)), spec, job_id="job"
    )
    try:
        ws.write_json(files.PROBE, {"display_size": list(size), "frame_rate": p.frame_rate})
        decode_working_frames(
            ws,
            p,
            size,
            lambda f, m: progress("decode", f, m),
            settings.hwaccel,
            settings.decode_threads,
        )
        try:
            with local_models():  # the local user's own run: --tracker-model may be a path
                track_stage.run(ws, settings, progress)
        except SonomaskError:
            raise
        except Exception as exc:  # noqa: BLE001 - MaskError etc. -> BadInput, one line
            raise as_sonomask_error(exc) from exc
        times = np.load(ws.file(files.FRAME_TIMES))
        masks_file = ws.file(files.MASKS)
        if matte is not None:
            write_matte(
                masks_file,
                times,
                matte,
                lambda f, m: progress("matte", f, m),
                timecode=timecode,
                matte_format=matte_format,
                picture=p,
            )
        if png_dir is not None:
            write_png_sequence(masks_file, png_dir, out.stem, lambda f, m: progress("png", f, m))
        if preview is not None:
            preview_stage.run(ws, settings, progress)
            _copy(ws.file(files.PREVIEW), preview)
        out.parent.mkdir(parents=True, exist_ok=True)
        if _same_fs(ws.path, out):
            os.replace(masks_file, out)
        else:
            _copy(masks_file, out)
        return ws.manifest().get("track_warnings", []) + (tc_warnings if matte else [])
    finally:
        ws.remove()
        ws.path.parent.rmdir() if ws.path.parent.exists() else None


# ----------------------------------------------------------------------------- PNG sequence


def write_png_sequence(
    npz: Path, folder: Path, stem: str, progress: media.ProgressFn | None = None
) -> None:
    """One 8-bit grayscale PNG per frame (``<stem>_000000.png`` ...), white = object.

    Written into a hidden folder beside ``folder`` and moved in when complete, so an
    interrupted export never looks finished.
    """
    n, _, _ = npz_shape(npz)
    folder.parent.mkdir(parents=True, exist_ok=True)
    part = Path(tempfile.mkdtemp(prefix=f".{folder.name}.part-", dir=folder.parent))
    digits = max(6, len(str(n - 1)))
    try:
        for i, m in enumerate(iter_masks(npz)):
            path = part / f"{stem}_{i:0{digits}d}.png"
            if not cv2.imwrite(str(path), m * np.uint8(255), [cv2.IMWRITE_PNG_COMPRESSION, 1]):
                raise SonomaskError(f"could not write {path.name}")
            if progress is not None and (i % 64 == 0 or i == n - 1):
                progress((i + 1) / n, "writing PNG sequence")
        if folder.exists():
            if not folder.is_dir():
                raise BadInput(f"--png-dir {folder} exists and is not a folder")
            for f in sorted(part.iterdir()):
                os.replace(f, folder / f.name)
        else:
            os.replace(part, folder)
    finally:
        shutil.rmtree(part, ignore_errors=True)


# ----------------------------------------------------------------------------- helpers


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b.parent).st_dev
    except OSError:
        return False


def _copy(src: Path, dst: Path) -> None:
    """Copy to a temporary name beside ``dst`` then rename, so ``dst`` is never half-written."""
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
