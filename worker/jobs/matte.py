"""``sonomask track``: only the tracking half of a job, for editors who want the matte.

Outputs, each written to a temporary name and renamed when complete:

- ``masks.npz`` (key ``masks``): uint8 [frames, height, width], 1 = object, at the
  source's displayed size (rotation applied) with one mask per decoded frame;
- a matte video an NLE can use as a track matte: grayscale, white = object, the source's
  displayed size and frame count, and the source's frame timestamps (also for variable
  frame rate), so it lines up frame for frame. The container picks the codec: ``.mkv``
  FFV1 (lossless), ``.mov`` ProRes 422 HQ (what every NLE opens; 10-bit, visually
  lossless), ``.mp4`` H.264 lossless (``-qp 0``, 4:4:4);
- optionally a PNG sequence (8-bit grayscale, ``<name>_000000.png`` ...);
- optionally the preview (the mask drawn over the picture).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from worker import files, media
from worker.arrays import read_npy_header
from worker.errors import BadInput, SonomaskError, as_sonomask_error
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages import preview as preview_stage
from worker.stages import track as track_stage
from worker.stages.common import StageProgress, decode_working_frames, load_keyframe_mask, noop
from worker.stages.models import local_models
from worker.workspace import Workspace

MATTE_CODECS: dict[str, list[str]] = {
    ".mkv": ["-c:v", "ffv1", "-level", "3", "-pix_fmt", "gray", "-f", "matroska"],
    ".mov": ["-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le", "-f", "mov"],
    ".mp4": [
        *("-c:v", "libx264", "-qp", "0", "-preset", "veryfast", "-pix_fmt", "yuv444p"),
        *("-movflags", "+faststart", "-f", "mp4"),
    ],
}
"""ffmpeg output options for the matte, by file extension."""

_MAX_PTS_SEGMENTS = 2000  # pieces of the piecewise-linear timestamp map (see _pts_expression)


def default_matte_path(out: Path) -> Path:
    """``masks.npz`` -> ``masks_matte.mkv`` beside it."""
    return out.with_name(f"{out.stem}_matte.mkv")


def track_to_file(
    spec: JobSpec,
    out: Path,
    preview: Path | None = None,
    progress: StageProgress = noop,
    settings: Settings | None = None,
    matte: Path | None = None,
    png_dir: Path | None = None,
) -> list[str]:
    """Track the keyframe mask(s) through ``spec.video``; write ``out`` (npz) and, when
    given, the matte video, a PNG sequence and a preview. Returns the tracking warnings."""
    settings = settings or Settings.from_env()
    if matte is not None and matte.suffix.lower() not in MATTE_CODECS:
        raise BadInput(
            f"matte {matte.name}: use a .mkv (FFV1, lossless), .mov (ProRes 422 HQ) or .mp4 "
            "(H.264 lossless) file name"
        )
    p = media.probe(Path(spec.video), require_audio=False)
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
        decode_working_frames(ws, p, size, lambda f, m: progress("decode", f, m))
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
            write_matte(masks_file, times, matte, lambda f, m: progress("matte", f, m))
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
        return ws.manifest().get("track_warnings", [])
    finally:
        ws.remove()
        ws.path.parent.rmdir() if ws.path.parent.exists() else None


# ----------------------------------------------------------------------------- reading masks


def iter_masks(npz: Path) -> Iterator[np.ndarray]:
    """The frames of ``masks.npz`` one at a time (uint8 [H, W]), without loading them all:
    the .npy inside the zip is read sequentially."""
    with zipfile.ZipFile(npz) as zf, zf.open("masks.npy") as f:
        (n, h, w), _, dtype = read_npy_header(f)
        for _ in range(n):
            buf = f.read(h * w * dtype.itemsize)
            yield np.frombuffer(buf, dtype=dtype).reshape(h, w)


def _npz_shape(npz: Path) -> tuple[int, int, int]:
    with zipfile.ZipFile(npz) as zf, zf.open("masks.npy") as f:
        shape, _, _ = read_npy_header(f)
    return shape  # type: ignore[return-value]


# ----------------------------------------------------------------------------- matte video


def _pts_expression(times: np.ndarray, tolerance: float = 2e-4) -> str:
    """An ffmpeg expression of the frame number N giving each frame's time in seconds.

    The timestamps are followed by a piecewise-linear map (one piece for a constant frame
    rate, one per rate change for a clip joined from parts; jittery phone timestamps are
    followed to within ``tolerance`` s, finer than Matroska's 1 ms clock), written as a
    balanced sum of ramps so ffmpeg's expression parser never nests deeply.
    """
    t = np.asarray(times, dtype=np.float64)
    n = len(t)
    if n == 1:
        return "0"
    while True:
        pieces: list[tuple[int, float, float]] = []  # (first frame, time there, seconds per frame)
        i = 0
        while i < n - 1:
            lo, hi = -np.inf, np.inf
            j = i + 1
            while j < n:
                k = j - i
                lo2 = max(lo, (t[j] - tolerance - t[i]) / k)
                hi2 = min(hi, (t[j] + tolerance - t[i]) / k)
                if lo2 > hi2:
                    break
                lo, hi = lo2, hi2
                j += 1
            pieces.append((i, float(t[i]), 0.5 * (lo + hi)))
            i = j - 1 if j - 1 > i else i + 1
            if i == n - 1:
                break
        if len(pieces) <= _MAX_PTS_SEGMENTS:
            break
        tolerance *= 2
    terms = [f"{pieces[0][1]:.9f}+{pieces[0][2]:.12f}*N"]
    for (i0, a, s), (pi, pa, ps) in zip(pieces[1:], pieces[:-1], strict=False):
        c = a - (pa + ps * (i0 - pi))  # jump at the piece's start, then the change of slope
        terms.append(f"gte(N,{i0})*({c:.9f}+{s - ps:.12f}*(N-{i0}))")

    def balanced(items: list[str]) -> str:
        if len(items) == 1:
            return items[0]
        mid = len(items) // 2
        return f"({balanced(items[:mid])}+{balanced(items[mid:])})"

    return balanced(terms)


def write_matte(
    npz: Path, times: np.ndarray, out: Path, progress: media.ProgressFn | None = None
) -> None:
    """Encode the masks of ``npz`` as a grayscale matte video with the given frame times.

    Frames are piped to ffmpeg one at a time (memory stays flat for long clips); the
    timestamps come from ``times`` (seconds from the first frame) through ``setpts``.
    """
    n, h, w = _npz_shape(npz)
    if len(times) != n:
        raise SonomaskError(f"matte: {n} masks but {len(times)} frame times")
    ext = out.suffix.lower()
    duration = float(times[-1]) if n > 1 else 0.0
    rate = (n - 1) / duration if duration > 0 else 25.0
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="matte-") as tmpdir:
        graph = Path(tmpdir) / "setpts.txt"
        # settb first: ffmpeg 5.1 mis-times the second frame when only -enc_time_base is fine.
        graph.write_text(f"settb=1/90000,setpts='({_pts_expression(times)})/TB'")
        tmp = out.with_name(f".{out.name}.part{out.suffix}")
        args = [
            *("ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y"),
            *("-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{w}x{h}", "-r", f"{rate:.6f}"),
            *("-i", "pipe:0", "-filter_script:v", str(graph)),
            *("-fps_mode", "passthrough", "-enc_time_base", "1/90000"),
            *MATTE_CODECS[ext],
            *("-metadata:s:v", "title=sonomask matte (white = object)"),
            str(tmp),
        ]
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        err: list[bytes] = []
        reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        reader.start()
        try:
            with contextlib.suppress(BrokenPipeError):
                for i, m in enumerate(iter_masks(npz)):
                    proc.stdin.write((m * np.uint8(255)).tobytes())
                    if progress is not None and (i % 64 == 0 or i == n - 1):
                        progress((i + 1) / n, "writing matte")
                proc.stdin.close()
            rc = proc.wait()
            reader.join()
            if rc != 0:
                message = b"".join(err).decode(errors="replace").strip().splitlines()
                raise SonomaskError(
                    f"ffmpeg failed to write the matte: {message[-1] if message else rc}"
                )
            os.replace(tmp, out)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- PNG sequence


def write_png_sequence(
    npz: Path, folder: Path, stem: str, progress: media.ProgressFn | None = None
) -> None:
    """One 8-bit grayscale PNG per frame (``<stem>_000000.png`` ...), white = object.

    Written into a hidden folder beside ``folder`` and moved in when complete, so an
    interrupted export never looks finished.
    """
    n, _, _ = _npz_shape(npz)
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
