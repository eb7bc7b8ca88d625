"""The web page for editors (served at ``/``) and the endpoints only it needs.

The page is plain HTML/CSS/JS under ``worker/static/`` (no build step, nothing fetched from
elsewhere at run time). It needs a few things the job API does not give:

- ``GET  /v1/options``: separators, trackers and modes this server offers, whether a bearer
  token is required and whether a media root is configured. Public (no token), so the page
  can decide whether to ask for one.
- ``GET  /v1/media``: the video files under ``SONOMASK_MEDIA_ROOT``.
- ``POST /v1/uploads``: open a video for drawing. The body is the video itself (raw, file
  name in ``?name=``), or multipart with a ``video`` file, or JSON ``{"path": ...}`` (a file
  under the media root) or ``{"job": id}`` (the video of an earlier job). The video is
  probed with the same untrusted-input rules as the pipeline, so a bad file is refused now
  with the pipeline's own message. Answers ``201`` with the upload id and probe info.
- ``GET  /v1/uploads/{id}``: that probe info again.
- ``GET  /v1/uploads/{id}/frames/{n}.jpg``: frame ``n`` exactly (``?max=`` longest side).
- ``GET  /v1/uploads/{id}/peaks``: waveform peaks of the audio, on the picture's clock.
- ``GET  /v1/jobs/{id}/peaks/{name}``: waveform peaks of a finished job's WAV stem.
- ``GET  /v1/jobs/{id}/links``: a URL per output that ``<video>``, ``<audio>`` and download
  links can use without an ``Authorization`` header: signed and expiring when a token is set
  (``GET /v1/signed/{id}/{name}``), the plain output URL otherwise.

Submitting uses the existing ``POST /v1/jobs`` multipart form with a text field ``upload``
(the upload id) in place of the ``video`` file; :func:`claim_upload` hands the video over.
Upload sessions live in ``<workspace>/.uploads/`` and expire like finished jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import ffmpeg
import numpy as np
import soundfile as sf
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from worker import jobs, media, paths, safejson
from worker.errors import BadInput, SonomaskError
from worker.problems import errors
from worker.spec import Mode, SeparatorName, TrackerName
from worker.staging import Staging

STATIC = Path(__file__).resolve().parent / "static"
UPLOADS = ".uploads"
CHUNK = 1 << 20
LINK_TTL = 12 * 3600  # seconds a signed output URL stays valid
MAX_JSON_BYTES = 1 << 20  # a JSON request body (paths and options only, never media)
PEAKS_PER_SECOND = 100
MAX_PEAKS = 20_000
VIDEO_EXTS = {
    ".mp4",
    ".m4v",
    ".mov",
    ".3gp",
    ".mkv",
    ".webm",
    ".avi",
    ".ts",
    ".m2ts",
    ".mts",
    ".flv",
    ".ogv",
    ".mxf",
    ".wmv",
    ".asf",
    ".mpg",
    ".mpeg",
}
_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_SHOWINFO_RE = re.compile(r"\bn:\s*\d+\s+pts:\s*(-?\d+)\s+pts_time:")
_TB_RE = re.compile(r"time_base:\s*(\d+)/(\d+)")
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


_OPENAPI_UPLOAD = {
    "requestBody": {
        "required": True,
        "description": "the video as the raw body (file name in ?name=), as multipart field "
        "'video', or JSON naming a file under the media root or an earlier job's video",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {"video": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {
                "schema": {
                    "oneOf": [
                        {
                            "type": "object",
                            "required": ["path"],
                            "properties": {"path": {"type": "string"}},
                        },
                        {
                            "type": "object",
                            "required": ["job"],
                            "properties": {"job": {"type": "string"}},
                        },
                    ]
                },
                "example": {"path": "shoot/day1/take3.mov"},
            },
        },
    }
}


# --------------------------------------------------------------------------- upload sessions


def uploads_root(cfg: Any) -> Path:
    return Path(cfg.base.workspace) / UPLOADS


def _session_dir(cfg: Any, upload_id: str) -> Path:
    """The folder of upload ``upload_id``, or 404 (ids are checked so no path can escape)."""
    folder = uploads_root(cfg) / upload_id
    if not _ID_RE.match(upload_id) or not (folder / "meta.json").is_file():
        raise HTTPException(
            404, f"no upload {upload_id!r} (it may have expired; open the video again)"
        )
    return folder


def _meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "meta.json").read_text())


def _public(meta: dict[str, Any]) -> dict[str, Any]:
    """What the page is told about an upload (never server paths)."""
    keys = ("id", "name", "source", "width", "height", "duration", "fps", "frames")
    out = {k: meta[k] for k in keys}
    out.update(audio_streams=meta["audio_streams"], size=meta["size"], rotation=meta["rotation"])
    return out


def claim_upload(cfg: Any, upload_id: str, staging: Path) -> Path:
    """The video of upload ``upload_id`` for a new job (``POST /v1/jobs`` field ``upload``).

    A video stored by the upload (or taken from an earlier job) is hard-linked (copied where
    links are impossible) into the job's staging folder, so expiring the upload or the old
    job never takes it away; a file under the media root is used in place, as the JSON form
    of ``POST /v1/jobs`` does.
    """
    folder = _session_dir(cfg, upload_id.strip())
    meta = _meta(folder)
    src = Path(meta["path"])
    if meta["source"] == "media":
        root = cfg.media_root
        if root is None or not paths.inside(root, src) or not src.is_file():
            raise HTTPException(404, f"{meta['name']!r} is no longer under the media root")
        return src
    if not src.is_file():
        raise HTTPException(404, f"the video of upload {upload_id!r} is gone; open it again")
    (staging / "video").mkdir(parents=True, exist_ok=True)  # apart from the mask files
    dest = staging / "video" / src.name
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)
    return dest


def expire_uploads(cfg: Any) -> None:
    """Drop upload sessions older than the job TTL (and half-written ones older than a day)."""
    root = uploads_root(cfg)
    if not root.is_dir():
        return
    now = time.time()
    ttl = cfg.job_ttl.total_seconds()
    for d in root.iterdir():
        try:
            age = now - d.stat().st_mtime
        except OSError:
            continue
        limit = 24 * 3600 if d.name.startswith(".tmp-") else ttl
        if age > max(limit, 60):
            shutil.rmtree(d, ignore_errors=True)


def _safe_name(name: str | None) -> str:
    """A file name a person recognises in error messages, with nothing a shell or path needs."""
    base = Path((name or "").replace("\\", "/")).name
    base = re.sub(r"[^\w.\- ]+", "_", base).strip(" .") or "video"
    stem, suffix = os.path.splitext(base)
    return stem[:80] + suffix.lower()[:8] if suffix else stem[:80] + ".bin"


def _frame_pts(p: media.Probe) -> tuple[list[int], float]:
    """Presentation timestamps (stream ticks, sorted) of every frame, and the tick length.

    Read from packets (no decoding, fast on long files); packets the demuxer marks as
    discarded (``D``: before an edit list's start) are not frames the pipeline decodes.
    """
    v = p.video
    tb = str(v.raw.get("time_base", "1/1000"))
    num, den = (int(x) for x in tb.split("/"))
    res = subprocess.run(
        [
            *media.FFPROBE_SAFE,
            "-select_streams",
            str(v.index),
            "-show_entries",
            "packet=pts,dts,flags",
            "-of",
            "csv=p=0",
            f"file:{p.path.resolve()}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0:
        raise BadInput(f"{p.path.name}: the picture's packets could not be read")
    pts: list[int] = []
    for line in res.stdout.splitlines():
        parts = line.strip().split(",")
        if len(parts) < 3 or "D" in parts[2]:
            continue
        value = parts[0] if parts[0] not in ("", "N/A") else parts[1]
        if value in ("", "N/A"):
            continue
        pts.append(int(value))
    pts.sort()
    if not pts:
        raise BadInput(f"{p.path.name}: no video frame could be read; the file is damaged")
    return pts, num / den


def frame_count(p: media.Probe) -> int:
    """How many frames the pipeline will decode from ``p`` (read from packets: fast)."""
    return len(_frame_pts(p)[0])


def _create_session(cfg: Any, tmp: Path, upload_id: str, video: Path, source: str) -> dict:
    """Probe ``video``, record its frames, and publish ``tmp`` as upload ``upload_id``."""
    p = media.probe(video)
    if p.duration > cfg.base.max_video_seconds:
        raise BadInput(
            f"{p.path.name} is {p.duration:.0f} s long; this server takes at most "
            f"{cfg.base.max_video_seconds:.0f} s (SONOMASK_MAX_VIDEO_SECONDS)"
        )
    pts, tick = _frame_pts(p)
    w, h = p.display_size
    np.save(tmp / "pts.npy", np.asarray(pts, dtype=np.int64))
    meta = {
        "id": upload_id,
        "name": video.name,
        "source": source,
        "path": str(video.resolve()),
        "width": w,
        "height": h,
        "rotation": p.rotation,
        "fps": round(p.frame_rate, 6),
        "frames": len(pts),
        "duration": round(max(p.duration, (pts[-1] - pts[0]) * tick), 6),
        "tick": tick,
        "video_index": _video_specifier(p),
        "format_start": p.format_start,
        "audio_streams": len(p.audio_streams),
        "size": video.stat().st_size,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    final = uploads_root(cfg) / upload_id
    os.replace(tmp, final)
    if source == "upload":  # the path moved with its folder
        meta["path"] = str(final / video.name)
        (final / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def _video_specifier(p: media.Probe) -> str:
    vids = [s for s in p.streams if s.kind == "video"]
    return f"v:{vids.index(p.video)}"


# --------------------------------------------------------------------------- frames


def extract_frame(meta: dict[str, Any], pts: np.ndarray, n: int, max_side: int) -> bytes:
    """JPEG of frame ``n`` (the n-th frame the pipeline decodes), scaled to ``max_side``.

    Seeks to a second before the frame and selects it by timestamp, then checks the frame
    that came out really has frame n's timestamp; where the container's seeking is not
    exact (MPEG-TS, files with few keyframes) it decodes from the start instead, which
    reaches every frame in order, like the pipeline's decode.
    """
    tick = float(meta["tick"])
    target = int(pts[n])
    threshold = -1e18 if n == 0 else (int(pts[n - 1]) + target) / 2 * tick
    w, h = int(meta["width"]), int(meta["height"])
    s = min(1.0, max_side / max(w, h))
    sw, sh = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
    seek = target * tick - float(meta["format_start"]) - 1.0
    if seek > 0:
        jpeg, got = _run_frame(meta, threshold, sw, sh, seek)
        if jpeg and got is not None and abs(got - target * tick) <= 0.25 * _gap(pts, n) * tick:
            return jpeg
    jpeg, _ = _run_frame(meta, threshold, sw, sh, None)
    if jpeg:
        return jpeg
    raise BadInput(f"frame {n} of {meta['name']} could not be decoded")


def _gap(pts: np.ndarray, n: int) -> float:
    """Ticks to the nearest neighbouring frame (the tolerance scale for a timestamp match)."""
    gaps = [abs(int(pts[i]) - int(pts[n])) for i in (n - 1, n + 1) if 0 <= i < len(pts)]
    return float(min(gaps)) if gaps else 1.0


def _run_frame(
    meta: dict[str, Any], threshold: float, sw: int, sh: int, seek: float | None
) -> tuple[bytes, float | None]:
    args = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "info", "-copyts"]
    if seek is not None:
        args += ["-noaccurate_seek", "-ss", f"{seek:.6f}"]
    args += ["-protocol_whitelist", "file", "-format_whitelist", media.FORMAT_WHITELIST]
    args += ["-i", f"file:{meta['path']}", "-map", f"0:{meta['video_index']}", "-an", "-sn", "-dn"]
    vf = f"select=gte(t\\,{threshold:.9f}),showinfo,scale={sw}:{sh}:flags=area,format=yuvj420p"
    args += ["-vf", vf, "-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", "3"]
    args += ["pipe:1"]
    res = subprocess.run(args, capture_output=True, timeout=120)
    err = res.stderr.decode(errors="replace")
    m, tb = _SHOWINFO_RE.search(err), _TB_RE.search(err)
    if res.returncode != 0 or not m or not tb:
        return b"", None
    return res.stdout, int(m.group(1)) * int(tb.group(1)) / int(tb.group(2))


# --------------------------------------------------------------------------- peaks


def _reduce(blocks: Any, bucket: int) -> tuple[list[float], list[float]]:
    """Min and max per ``bucket`` samples (over all channels) of float32 [N, C] blocks."""
    lo: list[float] = []
    hi: list[float] = []
    rest_lo = rest_hi = np.zeros(0, np.float32)
    for block in blocks:
        b = np.asarray(block, np.float32).reshape(len(block), -1)
        x_hi = np.concatenate([rest_hi, b.max(1)])
        x_lo = np.concatenate([rest_lo, b.min(1)])
        full = (len(x_hi) // bucket) * bucket
        if full:
            hi += x_hi[:full].reshape(-1, bucket).max(1).tolist()
            lo += x_lo[:full].reshape(-1, bucket).min(1).tolist()
        rest_hi, rest_lo = x_hi[full:], x_lo[full:]
    if len(rest_hi):
        hi.append(float(rest_hi.max()))
        lo.append(float(rest_lo.min()))
    return lo, hi


def _bucket(sample_rate: int, seconds: float) -> int:
    per_second = min(PEAKS_PER_SECOND, MAX_PEAKS / max(seconds, 1e-3))
    return max(1, int(math.ceil(sample_rate / per_second)))


def _peaks_doc(lo: list[float], hi: list[float], bucket: int, rate: int) -> dict[str, Any]:
    return {
        "rate": rate / bucket,
        "duration": len(hi) * bucket / rate,
        "min": [round(v, 4) for v in lo],
        "max": [round(v, 4) for v in hi],
    }


def upload_peaks(meta: dict[str, Any], stream: int) -> dict[str, Any]:
    """Peaks of audio stream ``stream`` decoded on the picture's clock, as demux does."""
    p = media.probe(Path(meta["path"]))
    info = media.audio_info(p, stream)
    rate, ch = info.sample_rate, info.channels
    if rate <= 0 or ch <= 0:
        raise BadInput(f"{p.path.name}: audio stream {stream} has no sample rate or channels")
    first = round(media.picture_start(p) * rate)
    src = ffmpeg.input(f"file:{p.path.resolve()}", copyts=None, **media.INPUT_OPTIONS)
    audio = src[f"a:{stream}"].filter("aresample", **{"async": 1, "first_pts": first})
    out = ffmpeg.output(audio, "pipe:1", f="f32le", acodec="pcm_f32le")
    args = ffmpeg.compile(out)
    args = [args[0], "-hide_banner", "-nostdin", "-loglevel", "error", *args[1:]]
    bucket = _bucket(rate, p.duration)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None

    def blocks() -> Any:
        size = bucket * ch * 4 * 256
        carry = b""
        while data := proc.stdout.read(size):
            data = carry + data
            usable = len(data) // (4 * ch) * 4 * ch
            carry = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], np.float32).reshape(-1, ch)

    lo, hi = _reduce(blocks(), bucket)
    if proc.wait() != 0:
        raise SonomaskError(f"ffmpeg failed to decode the audio of {p.path.name}")
    return _peaks_doc(lo, hi, bucket, rate)


def wav_peaks(path: Path) -> dict[str, Any]:
    """Peaks of a WAV stem, read in blocks so a long stem never sits in memory whole."""
    info = sf.info(str(path))
    bucket = _bucket(info.samplerate, info.duration)
    blocks = sf.blocks(str(path), blocksize=bucket * 256, dtype="float32", always_2d=True)
    lo, hi = _reduce(blocks, bucket)
    return _peaks_doc(lo, hi, bucket, info.samplerate)


# --------------------------------------------------------------------------- signed links


def _link_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"sonomask output links", hashlib.sha256).digest()


def _signature(token: str, job_id: str, name: str, expires: int) -> str:
    msg = f"{job_id}/{name}/{expires}".encode()
    return hmac.new(_link_key(token), msg, hashlib.sha256).hexdigest()[:32]


# --------------------------------------------------------------------------- the router


def router(cfg: Any, authorize: Callable[..., None]) -> APIRouter:
    """Routes for the page; ``cfg`` is the API's settings, ``authorize`` its token check."""
    r = APIRouter()
    auth = [Depends(authorize)]
    web = ["web page"]

    @r.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return _static_file("index.html")

    @r.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        return _static_file(name)

    @r.get("/v1/options", tags=web)
    async def options() -> dict[str, Any]:
        """What the page may offer: separators (sam-audio only with a model), trackers, modes,
        and the model names a spec may choose (``model``, ``tracker_model``). Async and
        free of I/O, so it answers at once however busy the thread pool is."""
        base = cfg.base
        model = base.model is not None or bool(base.models)
        separators = [s for s in get_args(SeparatorName) if s != "sam-audio" or model]
        sam2 = base.tracker_model is not None or bool(base.tracker_models)
        return {
            "separators": separators,
            "default_separator": "auto",
            "auto_runs": "sam-audio" if base.model is not None else "classical",
            # SAM 2 needs its weights, like SAM Audio: offered only when configured.
            "trackers": [t for t in get_args(TrackerName) if t != "sam2" or sam2],
            "default_tracker": "flow",
            "modes": list(get_args(Mode)),
            "default_mode": "both",
            "model": model,
            "models": sorted(base.models),
            "tracker_models": sorted(base.tracker_models),
            "auth": cfg.token is not None,
            "media_root": cfg.media_root is not None,
            "max_upload_bytes": cfg.max_upload,
        }

    @r.get("/v1/media", tags=web, dependencies=auth, responses=errors(401))
    def list_media(limit: int = 1000) -> dict[str, Any]:
        """Video files under SONOMASK_MEDIA_ROOT, paths relative to it (hidden folders skipped)."""
        root = cfg.media_root
        if root is None:
            return {"configured": False, "files": [], "truncated": False}
        files: list[dict[str, Any]] = []
        truncated = False
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(folder) / name
                if name.startswith(".") or path.suffix.lower() not in VIDEO_EXTS:
                    continue
                try:  # the same rule as a job's video_path (symlink loops included)
                    real = paths.media_file(path.relative_to(root).as_posix(), root, "path")
                except BadInput:
                    continue
                if len(files) >= max(1, min(limit, 10_000)):
                    truncated = True
                    break
                rel = path.relative_to(root).as_posix()
                files.append({"path": rel, "size": real.stat().st_size})
            if truncated:
                break
        return {"configured": True, "files": files, "truncated": truncated}

    _upload_routes(r, cfg, auth)
    _job_routes(r, cfg, auth)
    return r


def _upload_routes(r: APIRouter, cfg: Any, auth: list[Any]) -> None:
    """Opening a video for drawing: the upload session, its frames and its waveform."""
    web = ["web page"]

    @r.post(
        "/v1/uploads",
        tags=web,
        status_code=201,
        dependencies=auth,
        openapi_extra=_OPENAPI_UPLOAD,
        responses=errors(400, 401, 403, 404, 408, 413, 422),
    )
    async def create_upload(request: Request, name: str | None = None) -> dict[str, Any]:
        """Open a video for drawing: raw body (``?name=``), multipart ``video``, or JSON."""
        cfg.housekeeping.kick()
        upload_id = uuid.uuid4().hex[:16]
        stage = Staging(uploads_root(cfg) / f".tmp-{upload_id}")
        tmp = stage.path
        ctype = request.headers.get("content-type", "")
        try:
            await run_in_threadpool(stage.create)
            if ctype.startswith("application/json"):
                body = await json_body(request)
                video, source = await run_in_threadpool(_json_source, body, cfg, tmp)
            elif ctype.startswith("multipart/form-data"):
                video, source = await _multipart_source(request, tmp, cfg.max_upload), "upload"
            else:
                video = tmp / _safe_name(name)
                await _save_stream(request, video, cfg.max_upload)
                source = "upload"
            meta = await cfg.offload(_create_session, cfg, tmp, upload_id, video, source)
            stage.release(moved_to=uploads_root(cfg) / upload_id)
        except BaseException:
            stage.remove()
            raise
        return _public(meta)

    @r.get("/v1/uploads/{upload_id}", tags=web, dependencies=auth, responses=errors(401, 404))
    def get_upload(upload_id: str) -> dict[str, Any]:
        return _public(_meta(_session_dir(cfg, upload_id)))

    @r.get(
        "/v1/uploads/{upload_id}/frames/{n}.jpg",
        tags=web,
        dependencies=auth,
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **errors(401, 404, 422)},
    )
    def get_frame(upload_id: str, n: int, max: int = Query(1280, ge=16, le=8192)) -> Response:
        """Frame ``n`` (0-based, as ``mask_frames`` counts) as JPEG, longest side <= ``max``."""
        folder = _session_dir(cfg, upload_id)
        meta = _meta(folder)
        if not 0 <= n < meta["frames"]:
            raise HTTPException(404, f"frame {n} is outside 0..{meta['frames'] - 1}")
        pts = np.load(folder / "pts.npy", mmap_mode="r")
        jpeg = extract_frame(meta, pts, n, max)
        headers = {"Cache-Control": "private, max-age=86400, immutable"}
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    @r.get(
        "/v1/uploads/{upload_id}/peaks",
        tags=web,
        dependencies=auth,
        responses=errors(401, 404, 422),
    )
    def get_upload_peaks(upload_id: str, stream: int = Query(0, ge=0)) -> Response:
        """Waveform min/max per bucket (``rate`` buckets a second), sample 0 = frame 0."""
        folder = _session_dir(cfg, upload_id)
        cache = folder / f"peaks-{stream}.json"
        if not cache.exists():
            doc = upload_peaks(_meta(folder), stream)
            part = cache.with_suffix(f".part{uuid.uuid4().hex[:6]}")
            part.write_text(json.dumps(doc, separators=(",", ":")))
            os.replace(part, cache)
        return Response(cache.read_bytes(), media_type="application/json")


def _job_routes(r: APIRouter, cfg: Any, auth: list[Any]) -> None:
    """A finished job's waveforms and links the page's players can use."""
    web = ["web page"]

    def _output(job_id: str, name: str) -> Path:
        try:
            ws = jobs.job_workspace(cfg.base.workspace, job_id)
        except KeyError:
            raise HTTPException(404, f"no job {job_id!r}") from None
        try:
            return jobs.output_path(ws, name)
        except KeyError:
            raise HTTPException(404, f"job {job_id} has no output {name!r} (yet)") from None

    @r.get(
        "/v1/jobs/{job_id}/peaks/{name}",
        tags=web,
        dependencies=auth,
        responses=errors(400, 401, 404),
    )
    def get_job_peaks(job_id: str, name: str) -> dict[str, Any]:
        """Waveform peaks of a stem (``target.wav``, ``residual.wav``) of a finished job."""
        if not name.endswith(".wav"):
            raise HTTPException(
                400, f"{name!r} is not a WAV stem; ask for target.wav or residual.wav"
            )
        return wav_peaks(_output(job_id, name))

    @r.get("/v1/jobs/{job_id}/links", tags=web, dependencies=auth, responses=errors(401, 404))
    def get_links(job_id: str) -> dict[str, Any]:
        """URLs for each output usable as a media ``src`` or a download without a header."""
        doc = get_job_document(job_id)
        expires = int(time.time()) + LINK_TTL
        links = {}
        for name in doc["outputs"]:
            if cfg.token is None:
                links[name] = f"/v1/jobs/{job_id}/outputs/{name}"
            else:
                sig = _signature(cfg.token, job_id, name, expires)
                links[name] = f"/v1/signed/{job_id}/{name}?expires={expires}&sig={sig}"
        return {"outputs": links, "expires": expires}

    def get_job_document(job_id: str) -> dict[str, Any]:
        try:
            return jobs.document(jobs.job_workspace(cfg.base.workspace, job_id))
        except KeyError:
            raise HTTPException(404, f"no job {job_id!r}") from None

    @r.get(
        "/v1/signed/{job_id}/{name}",
        tags=web,
        response_class=FileResponse,
        responses={
            200: {"content": {"application/octet-stream": {}}, "description": "the file"},
            **errors(403, 404),
        },
    )
    def get_signed(job_id: str, name: str, expires: int = 0, sig: str = "") -> FileResponse:
        """An output through a link from ``/links`` (the signature stands in for the token)."""
        if cfg.token is not None:
            good = _signature(cfg.token, job_id, name, expires)
            if not hmac.compare_digest(good, sig):
                raise HTTPException(403, "this link is not valid; reopen the job to get a new one")
            if expires < time.time():
                raise HTTPException(403, "this link has expired; reopen the job to get a new one")
        return FileResponse(_output(job_id, name), filename=name)


def _static_file(name: str) -> FileResponse:
    """A file of the page; only names that exist in ``static/`` (nothing else is reachable)."""
    allowed = {p.name for p in STATIC.iterdir() if p.is_file()} if STATIC.is_dir() else set()
    if name not in allowed:
        raise HTTPException(404, f"no page file {name!r}")
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if name.endswith(".html"):
        headers["Content-Security-Policy"] = _CSP
        headers["Referrer-Policy"] = "no-referrer"
    return FileResponse(STATIC / name, headers=headers)


async def json_body(request: Request, limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The request body as a JSON object (finite numbers, bounded size and nesting, no NUL),
    or a 4xx that says what is wrong."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise HTTPException(413, f"the JSON body is larger than {limit} bytes")
    body = await run_in_threadpool(safejson.loads, bytes(raw))
    if not isinstance(body, dict):
        raise HTTPException(400, "the JSON body must be an object")
    return body


def _json_source(body: dict[str, Any], cfg: Any, tmp: Path) -> tuple[Path, str]:
    """``{"path": rel}`` under the media root (used in place) or ``{"job": id}`` (linked)."""
    if "path" in body:
        return paths.media_file(body["path"], cfg.media_root, "path"), "media"
    if "job" in body and isinstance(body["job"], str):
        try:
            ws = jobs.job_workspace(cfg.base.workspace, body["job"])
        except KeyError:
            raise HTTPException(404, f"no job {body['job'][:40]!r}") from None
        src = Path(ws.spec.video)
        if not src.is_file():
            raise HTTPException(404, f"the video of job {body['job']} is gone")
        dest = tmp / src.name
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)
        return dest, "upload"
    raise HTTPException(
        400,
        'send the video as the body, or JSON {"path": "<file under the media root>"} or {"job": "<id>"}',
    )


async def _save_stream(request: Request, dest: Path, max_bytes: int) -> None:
    length = int(request.headers.get("content-length") or 0)
    if length > max_bytes:
        raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
    total = 0
    with dest.open("wb") as f:
        async for chunk in request.stream():
            total += len(chunk)
            if total > max_bytes:
                raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
            f.write(chunk)
    if total == 0:
        raise HTTPException(400, "the upload is empty; send the video file as the request body")


async def _multipart_source(request: Request, tmp: Path, max_bytes: int) -> Path:
    length = int(request.headers.get("content-length") or 0)
    if length > max_bytes + 1024 * 1024:
        raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
    form = await request.form(max_files=1, max_fields=4)
    try:
        video = form.get("video")
        if not isinstance(video, UploadFile):
            raise HTTPException(400, "the 'video' file field is missing")
        dest = tmp / _safe_name(video.filename)
        total = 0
        with dest.open("wb") as f:
            while chunk := await video.read(CHUNK):
                total += len(chunk)
                if total > max_bytes:
                    raise HTTPException(413, f"upload larger than the limit of {max_bytes} bytes")
                f.write(chunk)
        return dest
    finally:
        await form.close()
