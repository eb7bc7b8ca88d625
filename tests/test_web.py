"""The web page: its endpoints (in-process) and the whole page in headless Chromium.

The browser tests drive the real page against a real ``sonomask serve`` and a real
``sonomask worker`` (private Redis): open a clip, draw the ball with the mouse, add a
correction keyframe and a span, submit, wait, play and download the results, and see a bad
upload refused with the service's own words; and the tracking preview: draw, preview, scrub
to a later frame and see the tracked mask there, add a correction, re-track only the
frames it decides, submit, and get the masks the preview showed; and several objects:
add, name and draw a second one, submit one job and play each object's stem. Screenshots
go to ``tests/_artifacts/web/``.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from scene import first_mask, make_scene, write_clip
from service import Redis, Server, Worker, service_env

from vision.tracker import TrackerName
from worker import media
from worker.settings import Settings
from worker.spec import JobSpec
from worker.workspace import Workspace

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "_artifacts" / "web"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TOKEN = "web-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --------------------------------------------------------------------------- media


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """The scene (a ball and a drum) as MP4, and a clip whose frames show their own index in
    binary, as MP4 (a keyframe a second, so seeking is exercised) and as MPEG-TS (starts at
    1.4 s, one keyframe: the decode-from-the-start fallback is exercised)."""
    folder = tmp_path_factory.mktemp("webclips")
    scene = make_scene(duration=3.0, width=160, height=96, fps=25.0)
    write_clip(scene, folder / "scene.mp4", stereo=True, crf=20)
    _numbered_clip(folder / "clip.mp4", ["-g", "25"])
    _numbered_clip(folder / "clip.ts", [])
    return {
        "scene": folder / "scene.mp4",
        "mp4": folder / "clip.mp4",
        "ts": folder / "clip.ts",
        "folder": folder,
    }


BITS = 7


def _numbered_clip(path: Path, extra: list[str], frames: int = 75) -> None:
    """160x96 at 25 fps; frame n shows n as 7 black/white squares, with a 440 Hz tone."""
    import subprocess

    video = np.full((frames, 96, 160, 3), 90, np.uint8)
    for n in range(frames):
        for b in range(BITS):
            video[n, 20:40, 8 + 20 * b : 24 + 20 * b] = 255 if n >> b & 1 else 0
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo"]
    cmd += ["-pix_fmt", "rgb24", "-s", "160x96", "-r", "25", "-i", "pipe:0"]
    cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(frames / 25)]
    cmd += [
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        "18",
        *extra,
        "-c:a",
        "aac",
        str(path),
    ]
    subprocess.run(cmd, input=video.tobytes(), check=True)


def _frame_number(rgb: np.ndarray) -> int:
    """The index a numbered frame shows (scaled to any size)."""
    img = cv2.resize(rgb, (160, 96), interpolation=cv2.INTER_AREA).mean(2)
    return sum(1 << b for b in range(BITS) if img[30, 16 + 20 * b] > 170)


def _client(monkeypatch, tmp_path: Path, media_root: Path, token: str | None = None):
    monkeypatch.setenv("SONOMASK_WORKSPACE", str(tmp_path / "jobs"))
    monkeypatch.setenv("SONOMASK_MEDIA_ROOT", str(media_root))
    monkeypatch.setenv("SONOMASK_MAX_UPLOAD_BYTES", "2000000")
    monkeypatch.delenv("SONOMASK_MODEL", raising=False)
    if token:
        monkeypatch.setenv("SONOMASK_API_TOKEN", token)
    else:
        monkeypatch.delenv("SONOMASK_API_TOKEN", raising=False)
    from worker.http.api import create_app

    submitted: list[tuple[JobSpec, str]] = []

    def fake_submit(spec: JobSpec, settings, job_id: str) -> str:
        from worker.jobs import store as jobs

        jobs.create_job(settings.workspace, spec, job_id)
        submitted.append((spec, job_id))
        return job_id

    client = TestClient(create_app(submit_fn=fake_submit))
    client.submitted = submitted
    return client


def _upload(client: TestClient, path: Path, name: str | None = None, headers=None):
    return client.post(
        f"/v1/uploads?name={name or path.name}",
        content=path.read_bytes(),
        headers={"content-type": "video/mp4", **(headers or {})},
    )


def _reference_frames(path: Path) -> np.ndarray:
    p = media.probe(path)
    w, h = p.display_size
    raw = path.with_suffix(".raw")
    media.decode_frames(p, raw, (w, h))
    return np.fromfile(raw, np.uint8).reshape(-1, h, w, 3)


# --------------------------------------------------------------------------- endpoints


def test_page_is_self_contained(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"])
    r = c.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/app.js" in r.text and "/static/style.css" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "style.css", "index.html"):
        assert c.get(f"/static/{name}").status_code == 200
        text = (ROOT / "worker" / "http" / "static" / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert "@import" not in text and "cdn" not in text.lower(), name
    assert c.get("/static/page.py").status_code == 404
    assert c.get("/static/..%2Fpage.py").status_code == 404


def test_options_offer_sam_audio_only_with_a_model(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"], token=TOKEN)
    o = c.get("/v1/options").json()  # public: the page needs it to know a token is needed
    assert o["separators"] == ["auto", "classical"] and o["auto_runs"] == "classical"
    assert o["trackers"] == ["flow", "copy"] and o["modes"] == ["isolate", "remove", "both"]
    assert o["auth"] is True and o["media_root"] is True
    monkeypatch.setenv("SONOMASK_MODEL", str(tmp_path))
    from worker.http.api import create_app

    o = TestClient(create_app()).get("/v1/options").json()
    assert "sam-audio" in o["separators"] and o["auto_runs"] == "sam-audio" and o["model"]
    assert str(tmp_path) not in json.dumps(o)
    assert o["trackers"] == ["flow", "copy"]  # no tracker weights: only the weight-free ones
    monkeypatch.setenv("SONOMASK_TRACKER_MODEL", str(tmp_path))  # SAM 2's weights
    o = TestClient(create_app()).get("/v1/options").json()
    assert o["trackers"][:3] == ["flow", "copy", "sam2"] and str(tmp_path) not in json.dumps(o)
    settings = Settings.from_env()  # a tracker needing weights is offered only with its own
    assert o["trackers"] == [t for t in get_args(TrackerName) if settings.offers_tracker(t)]


def test_frames_are_the_frames_the_pipeline_decodes(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"])
    uploaded = _upload(c, clips["mp4"]).json()
    from_root = c.post("/v1/uploads", json={"path": "clip.ts"}).json()
    for info, path in ((uploaded, clips["mp4"]), (from_root, clips["ts"])):
        ref = _reference_frames(path)
        assert [_frame_number(f) for f in ref] == list(range(75))
        assert info["frames"] == len(ref) == 75
        assert (info["width"], info["height"], info["fps"]) == (160, 96, 25.0)
        assert abs(info["duration"] - 3.0) < 0.05
        for n in (0, 1, 30, 52, 73, 74):
            r = c.get(f"/v1/uploads/{info['id']}/frames/{n}.jpg")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            img = cv2.cvtColor(
                cv2.imdecode(np.frombuffer(r.content, np.uint8), 1), cv2.COLOR_BGR2RGB
            )
            assert _frame_number(img) == n, (path.name, n)
    small = c.get(f"/v1/uploads/{uploaded['id']}/frames/3.jpg?max=80")
    assert cv2.imdecode(np.frombuffer(small.content, np.uint8), 1).shape[:2] == (48, 80)
    r = c.get(f"/v1/uploads/{uploaded['id']}/frames/75.jpg")
    assert r.status_code == 404 and "outside 0..74" in r.json()["detail"]
    assert c.get("/v1/uploads/../../etc/frames/1.jpg").status_code == 404
    assert c.get("/v1/uploads/0123456789abcdef").status_code == 404
    assert c.get(f"/v1/uploads/{uploaded['id']}").json() == uploaded


def test_peaks_follow_the_sound_on_the_picture_clock(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"])
    info = c.post("/v1/uploads", json={"path": "scene.mp4"}).json()
    p = c.get(f"/v1/uploads/{info['id']}/peaks").json()
    assert p["rate"] == 100 and abs(p["duration"] - 3.0) < 0.1
    hi = np.array(p["max"])
    assert len(hi) == len(p["min"]) and np.all(np.array(p["min"]) <= hi)
    # The ball's first note starts at 0.4 s and the drum's at 1.1 s: silence before.
    assert hi[:30].max() < 0.01 and hi[45:100].max() > 0.05
    again = c.get(f"/v1/uploads/{info['id']}/peaks").json()
    assert again == p


def test_bad_uploads_get_the_pipelines_message(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all\n")
    r = _upload(c, text)
    assert r.status_code == 422
    assert (
        r.json()["detail"]
        == "notes.mp4 is a text file, not a video; give a video with an audio track"
    )
    r = c.post("/v1/uploads?name=x.mp4", content=b"", headers={"content-type": "video/mp4"})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(2_100_000))
    assert _upload(c, big).status_code == 413
    r = c.post("/v1/uploads", json={"path": "../../etc/passwd"})
    assert r.status_code == 403 and "outside the media root" in r.json()["detail"]
    r = c.post("/v1/uploads", json={"nothing": 1})
    assert r.status_code == 400
    left = list((tmp_path / "jobs" / ".uploads").iterdir())
    assert left == [], left


def test_media_listing(monkeypatch, tmp_path, clips):
    root = tmp_path / "media"
    (root / "day1" / ".hidden").mkdir(parents=True)
    shutil.copy(clips["mp4"], root / "day1" / "take.mp4")
    shutil.copy(clips["mp4"], root / "day1" / ".hidden" / "secret.mp4")
    (root / "notes.txt").write_text("x")
    c = _client(monkeypatch, tmp_path, root)
    body = c.get("/v1/media").json()
    assert [f["path"] for f in body["files"]] == ["day1/take.mp4"] and body["configured"]


def test_submit_refers_to_the_upload(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"])
    up = _upload(c, clips["mp4"]).json()
    mask = tmp_path / "m.png"
    cv2.imwrite(str(mask), np.pad(np.full((20, 20), 255, np.uint8), ((30, 46), (30, 110))))
    spec = {"mask_frames": [0], "spans": ["+0.4-1.4"], "text": "ball", "tracker": "copy"}
    r = c.post(
        "/v1/jobs",
        data={"upload": up["id"], "spec": json.dumps(spec)},
        files=[("mask", ("m.png", mask.read_bytes(), "image/png"))],
    )
    assert r.status_code == 202, r.text
    sent, job_id = c.submitted[-1]
    video = Path(sent.video)
    assert video.name == "clip.mp4" and video.is_relative_to(tmp_path / "jobs" / job_id / "inputs")
    assert video.read_bytes() == clips["mp4"].read_bytes()
    assert sent.keyframes[0].frame == 0 and Path(sent.keyframes[0].mask).is_file()
    assert sent.tracker == "copy" and str(sent.spans[0]) == "+0.4-1.4"
    # A file from the media root is used in place, like the JSON form of POST /v1/jobs.
    ts = c.post("/v1/uploads", json={"path": "clip.ts"}).json()
    r = c.post(
        "/v1/jobs",
        data={"upload": ts["id"], "spec": "{}"},
        files=[("mask", ("m.png", mask.read_bytes(), "image/png"))],
    )
    assert r.status_code == 202 and c.submitted[-1][0].video == str(clips["ts"].resolve())
    # The video of an earlier job can be opened again for new masks.
    again = c.post("/v1/uploads", json={"job": job_id})
    assert again.status_code == 201 and again.json()["frames"] == 75
    r = c.post("/v1/jobs", data={"upload": "feedfacefeedface"}, files=[("mask", ("m.png", b"x"))])
    assert r.status_code == 404 and "no upload" in r.json()["detail"]
    assert not list((tmp_path / "jobs").glob(".upload-*"))


def _finished_job(root: Path, video: Path) -> str:
    """A succeeded job written straight into the workspace (no worker needed)."""
    from worker.jobs import store as jobs

    spec = JobSpec(video=str(video), boxes=["1,1,20,20"])
    ws = jobs.create_job(root, spec, "feedc0de00000001")
    ws.write_json("probe.json", {"remux": {"ext": ".mp4"}})
    out = ws.path / "outputs"
    out.mkdir()
    t = np.arange(48000) / 48000
    sf.write(out / "target.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 48000, subtype="PCM_24")
    sf.write(out / "residual.wav", np.zeros(48000), 48000, subtype="PCM_24")
    for name in ("isolated.mp4", "removed.mp4", "preview.mp4"):
        shutil.copy(video, out / name)
    (out / "masks.npz").write_bytes(b"npz")
    (out / "job.json").write_text("{}")
    names = ["target.wav", "residual.wav", "isolated.mp4", "removed.mp4", "masks.npz"]
    Workspace(ws.path).update_manifest(
        state="succeeded", outputs=[*names, "preview.mp4", "job.json"]
    )
    return ws.job_id


def test_output_links_are_signed_when_a_token_is_set(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"], token=TOKEN)
    job_id = _finished_job(tmp_path / "jobs", clips["mp4"])
    assert c.get(f"/v1/jobs/{job_id}/links").status_code == 401
    assert _upload(c, clips["mp4"]).status_code == 401
    links = c.get(f"/v1/jobs/{job_id}/links", headers=AUTH).json()["outputs"]
    assert set(links) == {
        "target.wav",
        "residual.wav",
        "isolated.mp4",
        "removed.mp4",
        "masks.npz",
        "preview.mp4",
        "job.json",
    }
    url = links["target.wav"]
    r = c.get(url)  # no header: the signature stands in for the token
    assert r.status_code == 200 and r.content[:4] == b"RIFF"
    assert c.get(url.replace("target.wav", "residual.wav")).status_code == 403
    assert c.get(re.sub(r"sig=\w+", "sig=" + "0" * 32, url)).status_code == 403
    expired = re.sub(r"expires=\d+", "expires=1", url)
    assert c.get(expired).status_code == 403
    r = c.get(links["preview.mp4"], headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100  # media elements seek with ranges
    peaks = c.get(f"/v1/jobs/{job_id}/peaks/target.wav", headers=AUTH).json()
    assert abs(max(peaks["max"]) - 0.5) < 0.01 and abs(peaks["duration"] - 1.0) < 0.02
    assert c.get(f"/v1/jobs/{job_id}/peaks/masks.npz", headers=AUTH).status_code == 400
    assert c.get("/v1/jobs/nope/peaks/target.wav", headers=AUTH).status_code == 404


def _submit_form(c: TestClient, upload: str, mask: bytes, **spec) -> str:
    r = c.post(
        "/v1/jobs",
        data={"upload": upload, "spec": json.dumps({"mask_frames": [0], **spec})},
        files=[("mask", ("m.png", mask, "image/png"))],
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_job_documents_give_the_queue_position_and_what_the_job_is(monkeypatch, tmp_path, clips):
    """Queued jobs are numbered 1, 2, 3 in the order they were created, among the queued
    jobs only: when the first starts or one is cancelled, those behind it move up. Every
    document names the video and the mode."""
    from worker.jobs import store as jobs

    c = _client(monkeypatch, tmp_path, clips["folder"])
    mask = np.zeros((96, 160), np.uint8)
    mask[30:50, 30:60] = 255
    png = cv2.imencode(".png", mask)[1].tobytes()
    ids = []
    for mode in ("isolate", "remove", "both"):
        up = _upload(c, clips["mp4"]).json()["id"]
        ids.append(_submit_form(c, up, png, mode=mode))
    root = tmp_path / "jobs"

    def position(job_id: str) -> int | None:
        doc = c.get(f"/v1/jobs/{job_id}").json()
        return doc["queue_position"]

    assert [position(i) for i in ids] == [1, 2, 3]
    listed = c.get("/v1/jobs").json()
    assert [d["id"] for d in listed] == ids[::-1]  # newest first, even within one second
    assert [d["queue_position"] for d in listed] == [3, 2, 1]
    assert {d["name"] for d in listed} == {"clip.mp4"}
    assert [d["mode"] for d in listed] == ["both", "remove", "isolate"]
    assert all(not d.get("objects") for d in listed)  # single-object jobs: no object list

    Workspace(root / ids[0]).update_manifest(state="running", stage="probe")  # a worker took it
    assert [position(i) for i in ids] == [None, 1, 2]
    jobs.job_workspace(root, ids[1]).file(jobs.CANCEL_MARK).touch()  # cancelled while queued
    assert [position(i) for i in ids] == [None, None, 1]
    Workspace(root / ids[0]).update_manifest(state="queued", stage="probe", progress=0.02)
    assert [position(i) for i in ids] == [1, None, 2]  # between stages: still by creation
    Workspace(root / ids[0]).update_manifest(state="succeeded")
    doc = c.get(f"/v1/jobs/{ids[0]}").json()
    assert doc["queue_position"] is None and doc["state"] == "succeeded"

    # A spec that cannot be read still lists, without what it would say.
    (root / ids[2] / "spec.json").write_text("{not json")
    doc = c.get(f"/v1/jobs/{ids[2]}").json()
    assert doc["name"] is None and doc["mode"] is None and doc["queue_position"] == 1
    assert c.get("/v1/jobs?limit=1").json()[0]["id"] == ids[2]


# --------------------------------------------------------------------------- tracking preview


def _ball_png(scene, frame: int, grow: int = 2) -> bytes:
    """The ball on ``frame`` a little grown, as a person paints it (PNG, white = object)."""
    _, ball, _ = scene.frame(frame, scene.background())
    ball = cv2.dilate(ball, np.ones((2 * grow + 1, 2 * grow + 1), np.uint8))
    return cv2.imencode(".png", ball * 255)[1].tobytes()


def _track(c: TestClient, upload: str, masks: dict[int, bytes], headers=None, **spec):
    """POST the keyframes for a tracking preview (the page's form)."""
    files = [("mask", (f"mask-frame-{n}.png", png, "image/png")) for n, png in masks.items()]
    fields = {"mask_frames": list(masks), **spec}
    return c.post(
        f"/v1/uploads/{upload}/track",
        data={"spec": json.dumps(fields)},
        files=files,
        headers=headers or {},
    )


def _tracked(c: TestClient, upload: str, timeout: float = 60.0) -> dict:
    """The preview's state once its run has ended."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = c.get(f"/v1/uploads/{upload}/track").json()
        if st["state"] not in ("queued", "running"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"tracking did not finish in {timeout} s: {st}")


def _preview_mask(c: TestClient, upload: str, n: int) -> np.ndarray:
    r = c.get(f"/v1/uploads/{upload}/track/masks/{n}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
    return cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_GRAYSCALE) > 0


def test_tracking_preview_is_the_track_stage_and_retracks_only_what_changed(
    monkeypatch, tmp_path, clips
):
    """Keyframes 0 and 40, then a correction at 20: only frames 1-39 are tracked again, the
    rest is left as it was, and every frame's mask is the one the job's track stage makes
    from the same three keyframes (with the same warnings)."""
    from worker.jobs.matte import iter_masks, track_to_file

    c = _client(monkeypatch, tmp_path, clips["folder"])
    scene = make_scene(duration=3.0, width=160, height=96, fps=25.0)
    up = c.post("/v1/uploads", json={"path": "scene.mp4"}).json()["id"]
    assert c.get(f"/v1/uploads/{up}/track").json()["state"] == "none"
    assert c.get(f"/v1/uploads/{up}/track/masks/3.png").status_code == 404
    keys = {0: _ball_png(scene, 0), 40: _ball_png(scene, 40)}
    r = _track(c, up, keys, tracker="flow")
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running", "done")
    st = _tracked(c, up)
    assert st["state"] == "done" and st["error"] is None, (st["error"], st)
    assert st["frames"] == 75 and st["working_size"] == [160, 96]
    assert st["tracked"] == [[0, 74]] and st["retracked"] == [[0, 74]]

    # Mark frame 60 (after keyframe 40) in the stored masks: a correction at 20 must not
    # touch it, whereas frames 1-39 must be tracked again.
    folder = tmp_path / "jobs" / ".uploads" / up / "track"
    from worker import arrays

    with arrays.open_npy(folder / "masks.npy", writable=True) as masks:
        kept, before = masks[60].copy(), masks[30].copy()
        masks[60] = np.ones_like(kept)
        masks[30] = np.zeros_like(before)
    keys[20] = _ball_png(scene, 20)
    st = _tracked(c, up) if _track(c, up, dict(sorted(keys.items()))).status_code == 202 else {}
    assert st["state"] == "done" and st["keyframes"] == [0, 20, 40], st
    assert st["retracked"] == [[1, 39]] and st["frames_retracked"] == 39
    with arrays.open_npy(folder / "masks.npy", writable=True) as masks:
        assert masks[60].all()  # not re-tracked
        assert masks[30].any()  # re-tracked
        masks[60] = kept
    # The same keyframes again: nothing to track.
    st = _tracked(c, up) if _track(c, up, dict(sorted(keys.items()))).status_code == 202 else {}
    assert st["retracked"] == [] and st["frames_retracked"] == 0 and st["tracked"] == [[0, 74]]

    # What the job's track stage makes from the same keyframes, frame by frame.
    for n, png in keys.items():
        (tmp_path / f"key{n}.png").write_bytes(png)
    frames = sorted(keys)
    spec = JobSpec(
        video=str(clips["scene"]),
        masks=[str(tmp_path / f"key{n}.png") for n in frames],
        mask_frames=frames,
    )
    job_warnings = track_to_file(spec, tmp_path / "masks.npz", settings=Settings.from_env())
    job = list(iter_masks(tmp_path / "masks.npz"))
    assert len(job) == 75
    for n, m in enumerate(job):
        assert np.array_equal(_preview_mask(c, up, n), m > 0), n
    assert st["warnings"] == job_warnings


def test_tracking_segments():
    """Which frames each segment decides, and which keyframes it is tracked from: for flow,
    the keyframes either side; for a tracker with a memory of the whole clip, all of them."""
    from worker.http.tracking import plan, runs

    segs = plan(75, {0: "a", 40: "b"}, "flow", local=True)
    assert [(s.first, s.last, s.lo, s.hi, s.keys) for s in segs] == [
        (0, 0, 0, 0, (0,)),
        (1, 39, 0, 40, (0, 40)),
        (40, 40, 40, 40, (40,)),
        (41, 74, 40, 74, (40,)),
    ]
    again = plan(75, {0: "a", 20: "c", 40: "b"}, "flow", local=True)
    new = [s for s in again if s.key not in {t.key for t in segs}]
    assert runs([(s.first, s.last) for s in new]) == [[1, 39]]
    redrawn = plan(75, {0: "a", 40: "B"}, "flow", local=True)  # keyframe 40 drawn again
    new = [s for s in redrawn if s.key not in {t.key for t in segs}]
    assert runs([(s.first, s.last) for s in new]) == [[1, 74]]
    assert [s.first for s in plan(75, {10: "a"}, "flow", local=True)] == [0, 10, 11]
    (whole,) = plan(75, {10: "a", 40: "b"}, "sam2", local=False)
    assert (whole.first, whole.last, whole.keys) == (0, 74, (10, 40))
    assert plan(75, {10: "a", 40: "c"}, "sam2", local=False)[0].key != whole.key


def test_tracking_preview_refuses_bad_input(monkeypatch, tmp_path, clips):
    """Every field is checked with a one-line message; nothing lands outside the session."""
    c = _client(monkeypatch, tmp_path, clips["folder"])
    up = _upload(c, clips["mp4"]).json()["id"]
    good = np.zeros((96, 160), np.uint8)
    good[30:50, 30:60] = 255
    png = cv2.imencode(".png", good)[1].tobytes()

    def refused(r, status: int, words: str) -> None:
        assert r.status_code == status, (r.status_code, r.text)
        detail = r.json()["detail"]
        assert words in detail and "\n" not in detail, detail

    def post(frames, masks, **spec):
        files = [("mask", (f"m{i}.png", m, "image/png")) for i, m in enumerate(masks)]
        body = json.dumps({"mask_frames": frames, **spec})
        return c.post(f"/v1/uploads/{up}/track", data={"spec": body}, files=files)

    refused(post([75], [png]), 422, "the video has 75 frames (0-74)")
    refused(post([-1], [png]), 400, "mask_frames.0")
    refused(post(["x"], [png]), 400, "mask_frames.0")
    refused(post([10**12], [png]), 400, "mask_frames.0")
    refused(post([3, 3], [png, png]), 400, "frame 3 twice")
    refused(post([0, 5], [png]), 400, "1 'mask' file(s) but 2 mask_frames")
    no_masks = [("spec", (None, json.dumps({"mask_frames": []})))]
    r = c.post(f"/v1/uploads/{up}/track", files=no_masks)
    refused(r, 400, "send at least one 'mask'")
    small = cv2.imencode(".png", good[:10, :10])[1].tobytes()
    refused(post([0], [small]), 422, "is 10x10 but the video is 160x96")
    empty = cv2.imencode(".png", np.zeros((96, 160), np.uint8))[1].tobytes()
    refused(post([0], [empty]), 422, "no white pixels")
    refused(post([0], [b"not an image"]), 422, "the mask of frame 0")
    refused(post([0], [png], tracker="nope"), 400, "tracker")
    refused(post([0], [png], tracker="sam2"), 422, "weights")
    refused(post([0], [png], tracker_model="/etc"), 400, "tracker_model")
    refused(post([0], [png], video="/etc/passwd"), 400, "not used by tracking")
    r = c.post(f"/v1/uploads/{up}/track", data={"spec": "[1]"}, files=[("mask", ("m", png))])
    refused(r, 400, "JSON object")
    r = c.post(f"/v1/uploads/{up}/track", data={"spec": "{nope"}, files=[("mask", ("m", png))])
    assert r.status_code == 400
    r = c.post(f"/v1/uploads/{up}/track", data={"spec": "{}"}, files=[("mask", ("m", png))])
    refused(r, 400, "mask_frames")
    r = c.post(
        f"/v1/uploads/{up}/track",
        data={"spec": '{"mask_frames": [0]}', "path": "../x"},
        files=[("mask", ("m", png))],
    )
    refused(r, 400, "unknown form field")
    r = c.post(f"/v1/uploads/{up}/track", json={"mask_frames": [0]})
    refused(r, 415, "multipart/form-data")
    for bad in ("0123456789abcdef", "ZZZZ", "..%2F..%2Fetc", "%2E%2E"):
        r = c.post(f"/v1/uploads/{bad}/track", data={"spec": "{}"}, files=[("mask", ("m", png))])
        assert r.status_code == 404, r.text
        assert c.get(f"/v1/uploads/{bad}/track").status_code == 404
        assert c.get(f"/v1/uploads/{bad}/track/masks/0.png").status_code == 404
    assert post([0], [png]).status_code == 202
    st = _tracked(c, up)
    assert st["state"] == "done" and st["keyframes"] == [0]
    assert c.get(f"/v1/uploads/{up}/track/masks/0.png").status_code == 200
    for n in (75, -1, 10**30):
        refused(c.get(f"/v1/uploads/{up}/track/masks/{n}.png"), 404, "outside 0..74")
    assert c.get(f"/v1/uploads/{up}/track/masks/x.png").status_code in (400, 404)

    # One run at a time: while one holds the session's lock, another is refused.
    lock = tmp_path / "jobs" / ".uploads" / up / "track" / ".lock"
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        refused(post([0], [png]), 409, "still running")
    finally:
        os.close(fd)
    assert post([0], [png]).status_code == 202
    _tracked(c, up)

    # Nothing was written outside the session's folder, and nothing temporary is left.
    root = tmp_path / "jobs"
    outside = [p for p in root.rglob("*") if ".uploads" not in p.relative_to(root).parts]
    assert outside == [], outside
    assert sorted(p.name for p in (root / ".uploads").iterdir()) == [up]
    left = [p.name for p in (root / ".uploads" / up / "track").iterdir()]
    assert not [n for n in left if n.startswith(".in-") or n.startswith(".frames-")], left


def test_tracking_preview_needs_the_token(monkeypatch, tmp_path, clips):
    c = _client(monkeypatch, tmp_path, clips["folder"], token=TOKEN)
    up = c.post("/v1/uploads", json={"path": "clip.mp4"}, headers=AUTH).json()["id"]
    png = cv2.imencode(".png", np.full((96, 160), 255, np.uint8))[1].tobytes()
    assert _track(c, up, {0: png}).status_code == 401
    assert c.get(f"/v1/uploads/{up}/track").status_code == 401
    assert c.get(f"/v1/uploads/{up}/track/masks/0.png").status_code == 401
    assert _track(c, up, {0: png}, headers=AUTH).status_code == 202
    t0 = time.monotonic()
    while c.get(f"/v1/uploads/{up}/track", headers=AUTH).json()["state"] != "done":
        assert time.monotonic() - t0 < 60
        time.sleep(0.05)
    assert c.get(f"/v1/uploads/{up}/track/masks/0.png").status_code == 401
    assert c.get(f"/v1/uploads/{up}/track/masks/0.png", headers=AUTH).status_code == 200


# --------------------------------------------------------------------------- the browser


def _playwright():
    """Playwright and Debian's Chromium, or a failure that says how to install them."""
    how = (
        "the web page test needs Debian's Chromium and Playwright's Python package: "
        "`apt-get install -y chromium` and `.venv/bin/pip install playwright` "
        "(do not run `playwright install`; the test uses /usr/bin/chromium)"
    )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed; {how}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing; {how}")
    return sync_playwright


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Real Redis, `sonomask serve` and `sonomask worker --queues cpu,gpu`, with a token."""
    root = tmp_path_factory.mktemp("live")
    redis = Redis(root / "redis")
    redis.start()
    media_root = root / "media"
    media_root.mkdir()
    env = service_env(root, redis, SONOMASK_API_TOKEN=TOKEN)
    (root / "logs").mkdir()
    server = Server(env, root / "logs" / "api.log")
    worker = Worker(env, "cpu,gpu", "web@test", root / "logs" / "worker.log", concurrency=1)
    try:
        worker.wait_ready()
        scene = make_scene(duration=4.0, width=320, height=180, fps=25.0)
        clip = media_root / "ball-and-drum.mp4"
        write_clip(scene, clip, stereo=True, crf=23)
        yield {"root": root, "server": server, "scene": scene, "clip": clip}
    finally:
        worker.stop()
        server.stop()
        redis.stop()


def _to_screen(page, selector: str, x: float, y: float, size: tuple[int, int]):
    """Viewport coordinates of video pixel (x, y) on ``selector`` (scrolled into view)."""
    page.locator(selector).scroll_into_view_if_needed()
    box = page.locator(selector).bounding_box()
    return box["x"] + x * box["width"] / size[0], box["y"] + y * box["height"] / size[1]


@pytest.mark.slow
def test_the_page_end_to_end(live, tmp_path):
    sync_playwright = _playwright()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scene, base = live["scene"], live["server"].url
    size = (scene.width, scene.height)
    errors: list[str] = []
    t0 = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.set_default_timeout(20_000)

        def shot(name: str, full: bool = False, part: str | None = None) -> None:
            page.wait_for_timeout(350)  # let smooth scrolling settle
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full)
            if part:  # the one panel, for the docs
                page.locator(part).screenshot(path=str(ARTIFACTS / f"{name}-panel.png"))

        # The server has a token: the page asks for it once and keeps it.
        page.goto(base + "/")
        page.locator("#token-dialog[open]").wait_for()
        shot("01-token")
        page.fill("#token-input", TOKEN)
        page.click("#token-save")
        page.locator("body[data-ready=true]").wait_for()
        assert page.evaluate("localStorage.getItem('sonomask.token')") == TOKEN
        options = page.locator("#media-select option").all_inner_texts()
        assert any("ball-and-drum.mp4" in o for o in options), options

        # Open the clip by uploading it.
        page.set_input_files("#file-input", str(live["clip"]))
        page.locator("#frame-img[data-frame='0']").wait_for()
        assert "320×180" in page.inner_text("#video-info")
        page.locator("#timeline[data-loaded=true]").wait_for()
        page.evaluate("window.scrollTo(0, 0)")
        shot("02-opened")

        # Frame 0: paint the ball with the brush.
        (ax, ay), _, _ = scene.positions(0)
        r = scene.radius()
        page.click("[data-tool=brush]")
        page.locator("#brush-size").fill(str(2 * r))
        page.mouse.move(*_to_screen(page, "#draft-canvas", ax - 4, ay, size))
        page.mouse.down()
        for dx, dy in ((4, -4), (4, 4), (-4, 4), (0, 0)):
            page.mouse.move(*_to_screen(page, "#draft-canvas", ax + dx, ay + dy, size), steps=3)
        page.mouse.up()
        page.get_by_role("button", name="Go to keyframe 0").wait_for()

        # Frame 40: a correction keyframe drawn as a box.
        page.fill("#frame-number", "40")
        page.press("#frame-number", "Enter")
        page.locator("#frame-img[data-frame='40']").wait_for()
        (bx, by), _, _ = scene.positions(40)
        page.click("[data-tool=box]")
        page.mouse.move(*_to_screen(page, "#draft-canvas", bx - r - 3, by - r - 3, size))
        page.mouse.down()
        page.mouse.move(*_to_screen(page, "#draft-canvas", bx + r + 3, by + r + 3, size), steps=5)
        page.mouse.up()
        page.get_by_role("button", name="Go to keyframe 40").wait_for()

        # A "+" span dragged on the timeline where the ball sounds (0.4-1.4 s of 4 s).
        page.locator("#timeline").scroll_into_view_if_needed()
        tl = page.locator("#timeline").bounding_box()
        y = tl["y"] + tl["height"] / 2
        page.mouse.move(tl["x"] + tl["width"] * 0.1, y)
        page.mouse.down()
        page.mouse.move(tl["x"] + tl["width"] * 0.35, y, steps=6)
        page.mouse.up()
        assert "+ sounding" in page.inner_text("#span-list")
        page.fill("#text-prompt", "the red ball")
        page.check("input[name=mode][value=both]")
        page.locator("#frame-slider").focus()
        page.evaluate("window.scrollTo(0, 0)")
        shot("03-drawn", full=True)

        # Submit and watch the job.
        page.click("#submit")
        page.locator("#job-panel:not([hidden])").wait_for()
        try:  # catch it mid-way for the picture (a fast machine may finish first)
            page.wait_for_function(
                "() => document.querySelector('#job-progress').value > 0.1", timeout=30_000
            )
        except PlaywrightTimeout:
            pass
        page.evaluate("window.scrollTo(0, 0)")
        shot("04-job", part=".side-col")
        page.locator("#job-state.succeeded").wait_for(timeout=120_000)
        page.locator("#results:not([hidden])").wait_for()
        job_id = page.inner_text("#job-id").strip()
        assert page.inner_text("#job-percent") == "100%"

        # The result players load, with a duration.
        page.wait_for_function(
            """() => ['#preview-video', '#audio-target', '#audio-residual'].every(s => {
                 const m = document.querySelector(s);
                 return m.src && !m.error && m.readyState >= 1 && m.duration > 0; })""",
            timeout=20_000,
        )
        durations = page.evaluate(
            "['#preview-video','#audio-target','#audio-residual']"
            ".map(s => document.querySelector(s).duration)"
        )
        assert all(abs(d - 4.0) < 0.2 for d in durations), durations
        page.check("input[name=ab][value=residual]")
        assert page.evaluate("document.querySelector('#audio-target').muted") is True
        page.check("input[name=ab][value=target]")
        page.wait_for_function("() => document.querySelector('#preview-video').readyState >= 2")
        page.evaluate("document.querySelector('#preview-video').currentTime = 1.0")
        page.wait_for_timeout(400)
        shot("05-results", full=True, part="#results")
        # A/B: the stems play along with the picture, the unselected one muted.
        page.evaluate("document.querySelector('#preview-video').play()")
        page.wait_for_function(
            """() => { const v = document.querySelector('#preview-video');
                       const a = document.querySelector('#audio-target');
                       return !a.paused && v.currentTime > 1.3
                              && Math.abs(a.currentTime - v.currentTime) < 0.25; }""",
            timeout=10_000,
        )
        page.evaluate("document.querySelector('#preview-video').pause()")

        # Every download link answers 200 without a header (signed links).
        hrefs = page.eval_on_selector_all(
            "#downloads a", "as => as.map(a => [a.dataset.output, a.getAttribute('href')])"
        )
        names = {n for n, _ in hrefs}
        assert {"target.wav", "residual.wav", "isolated.mp4", "removed.mp4", "preview.mp4"} <= names
        for name, href in hrefs:
            resp = httpx.get(base + href, timeout=30)
            assert resp.status_code == 200 and len(resp.content) > 0, (name, resp.status_code)

        # What the page sent: both keyframes, the span, the text; the mask covers the ball.
        spec = json.loads((live["root"] / "jobs" / job_id / "spec.json").read_text())
        assert [k["frame"] for k in spec["keyframes"]] == [0, 40]
        assert spec["text"] == "the red ball" and len(spec["spans"]) == 1
        assert spec["spans"][0]["sign"] == "+"
        assert (
            abs(spec["spans"][0]["start"] - 0.4) < 0.1 and abs(spec["spans"][0]["end"] - 1.4) < 0.1
        )
        drawn = cv2.imread(spec["keyframes"][0]["mask"], cv2.IMREAD_GRAYSCALE) > 0
        ball = first_mask(scene, "a", margin=0) > 0
        assert drawn.shape == (180, 320) and (drawn & ball).sum() / ball.sum() > 0.9
        assert drawn.sum() < 4 * ball.sum()
        boxed = cv2.imread(spec["keyframes"][1]["mask"], cv2.IMREAD_GRAYSCALE) > 0
        assert boxed[by, bx] and not boxed[by, bx + 3 * r]
        assert page.locator(f"#jobs-list button[data-job='{job_id}'] .badge.succeeded").count() == 1

        # Submit again and cancel at once.
        page.click("#submit")
        page.locator("#job-state.queued, #job-state.running").wait_for()
        page.click("#cancel-job")
        page.locator("#job-state.cancelled").wait_for()
        assert page.inner_text("#job-id").strip() != job_id and page.locator("#results").is_hidden()

        # Reopen the first job from the list (as after a reload).
        page.reload()
        page.locator("body[data-ready=true]").wait_for()
        page.click(f"#jobs-list button[data-job='{job_id}']")
        page.locator("#results:not([hidden]) #downloads a").first.wait_for()
        page.click("#reopen-video")  # and draw on its video again
        page.locator("#frame-img[data-frame='0']").wait_for()
        assert "ball-and-drum.mp4" in page.inner_text("#video-info")

        # A bad upload: the service's own message, on the page.
        bad = tmp_path / "notes.mp4"
        bad.write_text("shot list: take 3 is the good one\n")
        expected = httpx.post(
            f"{base}/v1/uploads?name=notes.mp4", content=bad.read_bytes(), headers=AUTH
        ).json()["detail"]
        page.set_input_files("#file-input", str(bad))
        page.locator("#open-error:not([hidden])").wait_for()
        assert page.inner_text("#open-error") == expected
        page.evaluate("window.scrollTo(0, 0)")
        shot("06-bad-upload", part="#open-panel")
        browser.close()
    assert not errors, errors
    assert time.monotonic() - t0 < 120


def _paint(page, scene, frame: int) -> None:
    """Go to ``frame`` and paint the ball there with the brush, as a person would."""
    size = (scene.width, scene.height)
    r = scene.radius()
    page.fill("#frame-number", str(frame))
    page.press("#frame-number", "Enter")
    page.locator(f"#frame-img[data-frame='{frame}']").wait_for()
    (ax, ay), _, _ = scene.positions(frame)
    page.click("[data-tool=brush]")
    page.locator("#brush-size").fill(str(2 * r))
    page.mouse.move(*_to_screen(page, "#draft-canvas", ax - 4, ay, size))
    page.mouse.down()
    for dx, dy in ((4, -4), (4, 4), (-4, 4), (0, 0)):
        page.mouse.move(*_to_screen(page, "#draft-canvas", ax + dx, ay + dy, size), steps=3)
    page.mouse.up()
    page.get_by_role("button", name=f"Go to keyframe {frame}").wait_for()


def _box(page, scene, frame: int) -> None:
    """Go to ``frame`` and drag a box around the ball there."""
    size = (scene.width, scene.height)
    r = scene.radius()
    page.fill("#frame-number", str(frame))
    page.press("#frame-number", "Enter")
    page.locator(f"#frame-img[data-frame='{frame}']").wait_for()
    (bx, by), _, _ = scene.positions(frame)
    page.click("[data-tool=box]")
    page.mouse.move(*_to_screen(page, "#draft-canvas", bx - r - 2, by - r - 2, size))
    page.mouse.down()
    page.mouse.move(*_to_screen(page, "#draft-canvas", bx + r + 2, by + r + 2, size), steps=5)
    page.mouse.up()
    page.get_by_role("button", name=f"Go to keyframe {frame}").wait_for()


def _overlay_alpha(page, x: int, y: int) -> int:
    """Opacity of the tracked-mask overlay at video pixel (x, y) (0: nothing drawn)."""
    return page.evaluate(
        f"document.querySelector('#track-canvas').getContext('2d')"
        f".getImageData({x}, {y}, 1, 1).data[3]"
    )


FILL = round(0.45 * 255)  # the overlays' fill at the default opacity (the outline is opaque)


@pytest.mark.slow
def test_preview_tracking_in_the_page(live):
    """Draw the ball on frame 0 and a box on frame 60, preview the tracking, scrub to frame
    30 and see the tracked mask on the ball, add a correction there, re-track: only frames
    1-59 are tracked again and the page says so. Submit: the job's masks are the preview's."""
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scene, base = live["scene"], live["server"].url
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 900})
        page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
        page.set_default_timeout(20_000)
        page.add_init_script(f"localStorage.setItem('sonomask.token', {json.dumps(TOKEN)})")

        def shot(name: str) -> None:
            page.wait_for_timeout(350)  # let smooth scrolling settle
            page.locator("#editor").screenshot(path=str(ARTIFACTS / f"{name}.png"))

        page.goto(base + "/")
        page.locator("body[data-ready=true]").wait_for()
        page.set_input_files("#file-input", str(live["clip"]))
        page.locator("#frame-img[data-frame='0']").wait_for()
        upload = page.evaluate("location.hash").split("=", 1)[1]
        assert page.locator("#track-status[data-state=none]").count() == 1
        assert page.is_disabled("#track-button")  # nothing drawn yet

        _paint(page, scene, 0)
        _box(page, scene, 60)
        page.click("#track-button")
        page.locator("#track-status[data-state=done][data-run='1']").wait_for(timeout=90_000)
        status = page.inner_text("#track-status")
        assert "Tracked frames 0–99 with flow" in status, status

        # Scrub to frame 30: the tracked mask is drawn over the ball, nowhere far from it.
        page.fill("#frame-number", "30")
        page.press("#frame-number", "Enter")
        page.locator("#frame-img[data-frame='30']").wait_for()
        page.locator("#track-canvas[data-frame='30'][data-run='1']").wait_for()
        (cx, cy), (dx, dy), _ = scene.positions(30)
        assert abs(_overlay_alpha(page, cx, cy) - FILL) <= 3
        assert _overlay_alpha(page, dx, dy) == 0 and _overlay_alpha(page, 2, 2) == 0
        area = int(page.get_attribute("#track-canvas", "data-area"))
        ball = np.pi * scene.radius() ** 2
        assert 0.5 * ball < area < 2.5 * ball, (area, ball)
        page.locator("#frame-slider").focus()
        page.evaluate("window.scrollTo(0, 0)")
        shot("07-preview-tracking")

        # A correction keyframe on frame 30, then re-track: only the frames between the
        # keyframes either side of it (0 and 60) are tracked again.
        assert page.is_disabled("#track-button")  # nothing changed yet
        _box(page, scene, 30)
        assert page.is_enabled("#track-button")
        assert "The keyframes changed since" in page.inner_text("#track-status")
        assert page.inner_text("#track-button") == "Re-track changes"
        page.click("#track-button")
        page.locator("#track-status[data-state=done][data-run='2']").wait_for(timeout=90_000)
        status = page.inner_text("#track-status")
        assert "Re-tracked frames 1–59" in status and "kept their masks" in status, status
        doc = httpx.get(f"{base}/v1/uploads/{upload}/track", headers=AUTH).json()
        assert doc["retracked"] == [[1, 59]] and doc["keyframes"] == [0, 30, 60], doc
        page.locator("#track-canvas[data-frame='30'][data-run='2']").wait_for()
        assert abs(_overlay_alpha(page, cx, cy) - FILL) <= 3
        page.fill("#frame-number", "45")  # a re-tracked frame
        page.press("#frame-number", "Enter")
        page.locator("#track-canvas[data-frame='45'][data-run='2']").wait_for()
        (cx, cy), _, _ = scene.positions(45)
        assert abs(_overlay_alpha(page, cx, cy) - FILL) <= 3 and _overlay_alpha(page, 2, 2) == 0
        page.locator("#frame-slider").focus()
        page.evaluate("window.scrollTo(0, 0)")
        shot("08-correction")

        # Submit: the keyframes go with the job, whose masks are the preview's.
        page.click("#submit")
        page.locator("#job-state.succeeded").wait_for(timeout=120_000)
        job_id = page.inner_text("#job-id").strip()
        spec = json.loads((live["root"] / "jobs" / job_id / "spec.json").read_text())
        assert [k["frame"] for k in spec["keyframes"]] == [0, 30, 60]
        browser.close()
    assert not errors, errors
    links = httpx.get(f"{base}/v1/jobs/{job_id}/links", headers=AUTH).json()["outputs"]
    masks = np.load(io.BytesIO(httpx.get(base + links["masks.npz"], timeout=30).content))["masks"]
    assert masks.shape == (100, scene.height, scene.width)
    for n, job_mask in enumerate(masks):
        png = httpx.get(f"{base}/v1/uploads/{upload}/track/masks/{n}.png", headers=AUTH)
        shown = cv2.imdecode(np.frombuffer(png.content, np.uint8), cv2.IMREAD_GRAYSCALE) > 0
        assert np.array_equal(shown, job_mask > 0), n


def _drag(page, scene, x0: float, y0: float, x1: float, y1: float) -> None:
    """Drag a box with the Box tool from video pixel (x0, y0) to (x1, y1), on the frame shown."""
    size = (scene.width, scene.height)
    page.click("[data-tool=box]")
    page.mouse.move(*_to_screen(page, "#draft-canvas", x0, y0, size))
    page.mouse.down()
    page.mouse.move(*_to_screen(page, "#draft-canvas", x1, y1, size), steps=5)
    page.mouse.up()


def _chip_colour(page, label: str) -> list[int]:
    """The colour of an object's chip in the objects list (its overlay colour)."""
    hex_ = page.evaluate(
        f"document.querySelector(\".chip.obj[data-label='{label}'] .chip-colour\")"
        ".style.getPropertyValue('--c')"
    )
    return _hex(hex_.strip())


@pytest.mark.slow
def test_several_objects_in_the_page(live):
    """Two objects in one job: the ball painted as today, a second object added, named (a
    bad label refused with one line), drawn as a box on the drum; each object keeps its own
    keyframes, colour, text and spans, the overlay marks the selected one, the tracking
    preview follows the selected one. Submitted as one job with mask:<label> parts; the
    results offer each object's stem and the residual, and each plays with the picture."""
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scene, base = live["scene"], live["server"].url
    r = scene.radius()
    (ax, ay), (bx, by), _ = scene.positions(0)  # the ball, the drum (not shaking at 0 s)
    dw, dh = round(1.1 * r), round(0.8 * r)  # the drum's half width and height
    with sync_playwright() as pw:
        browser, page, errors = _browser(pw)
        page.add_init_script(f"localStorage.setItem('sonomask.token', {json.dumps(TOKEN)})")
        _open_clip(page, base, live["clip"])

        # One object, as today: no name to give, no word about objects in the preview.
        assert page.locator(".chip.obj").count() == 1 and page.is_hidden("#object-name")
        assert page.is_hidden("#track-scope")
        _paint(page, scene, 0)
        assert page.get_attribute(".chip.obj", "data-keyframes") == "1"

        # A second object: selected at once, with a colour of its own and its name to give.
        page.click("#add-object")
        assert page.locator(".chip.obj").count() == 2 and page.is_visible("#object-name")
        assert page.evaluate("document.activeElement.id") == "object-label"
        assert page.locator(".chip.obj.current[data-index='1']").count() == 1
        assert page.locator("#keyframe-list .chip").count() == 0  # its own keyframes: none
        for bad, words in (
            ("the drum", 'The label "the drum" has a space: use only ASCII letters'),
            ("drum!", 'has "!"'),
            ("Residual", "is reserved for everything else"),
            ("OBJECT-1", 'Objects 1 and 2 are both labelled "OBJECT-1"'),
            (".drum", "must start with a letter or a digit"),
        ):
            page.fill("#object-label", bad)
            page.locator("#object-error:not([hidden])").wait_for()
            message = page.inner_text("#object-error")
            assert words in message and "\n" not in message, message
            assert page.get_attribute("#object-label", "aria-invalid") == "true"
        page.click("#submit")  # refused here, before anything is sent
        assert "must start with a letter or a digit" in page.inner_text("#submit-error")
        page.fill("#object-label", "drum")
        assert page.is_hidden("#object-error")
        _drag(page, scene, bx - dw - 3, by - dh - 3, bx + dw + 3, by + dh + 3)
        page.get_by_role("button", name="Go to keyframe 0").wait_for()
        assert page.get_attribute(".chip.obj[data-label=drum]", "data-keyframes") == "1"

        # The overlay: the selected object (the drum) in its colour at its opacity, the other
        # (the ball) in its own colour at half of it; both outlined.
        ball_c, drum_c = _chip_colour(page, "object-1"), _chip_colour(page, "drum")
        assert ball_c != drum_c
        assert _hex(page.get_attribute("#mask-canvas", "data-colour")) == drum_c
        assert _near(_rgba(page, "#mask-canvas", bx, by), [*drum_c, FILL])
        assert _near(_rgba(page, "#mask-canvas", ax, ay), [*ball_c, FILL / 2], tol=6)
        assert _rgba(page, "#mask-canvas", bx + dw + 3, by)[3] >= 200  # the drum's outline
        assert _rgba(page, "#mask-canvas", ax + r + 5, ay)[3] >= 200  # the ball's outline
        assert _rgba(page, "#mask-canvas", (ax + bx) // 2, ay)[3] == 0

        # Switch to the ball and name it: now it is drawn at full opacity, the drum dimmed.
        page.click(".chip.obj[data-index='0'] .obj-pick")
        assert page.locator(".chip.obj.current[data-index='0']").count() == 1
        page.fill("#object-label", "ball")
        assert _near(_rgba(page, "#mask-canvas", ax, ay), [*ball_c, FILL])
        assert _near(_rgba(page, "#mask-canvas", bx, by), [*drum_c, FILL / 2], tol=6)
        assert "Keyframes of ball" in page.inner_text("#keyframes-label")

        # A third object, removed again (nothing drawn on it: nothing to confirm).
        page.click("#add-object")
        assert page.get_attribute(".chip.obj.current", "data-label") == "object-1"
        assert _chip_colour(page, "object-1") not in (ball_c, drum_c)
        page.click(".chip.obj[data-index='2'] .x")
        assert page.locator(".chip.obj").count() == 2
        page.click(".chip.obj[data-label=ball] .obj-pick")

        # Each object its own text and spans.
        page.fill("#text-prompt", "a red ball")
        page.fill("#span-start", "0.4")
        page.fill("#span-end", "1.4")
        page.click("#span-form button[type=submit]")
        page.click(".chip.obj[data-label=drum] .obj-pick")
        assert page.input_value("#text-prompt") == ""
        assert "No spans" in page.inner_text("#span-list")
        page.fill("#text-prompt", "a rattling drum")
        page.click(".span-sign[data-sign='-']")
        page.fill("#span-start", "0")
        page.fill("#span-end", "1")
        page.click("#span-form button[type=submit]")
        page.click(".chip.obj[data-label=ball] .obj-pick")
        assert page.input_value("#text-prompt") == "a red ball"
        assert "0.40–1.40" in page.inner_text("#span-list")
        assert "− silent" not in page.inner_text("#span-list")
        summary = page.inner_text("#submit-summary")
        assert "2 objects" in summary and "ball (1 keyframe, 1 span)" in summary, summary

        # The tracking preview follows the selected object, and says so.
        page.click(".chip.obj[data-label=drum] .obj-pick")
        assert "the selected one (drum)" in page.inner_text("#track-scope")
        page.click("#track-button")
        page.locator("#track-status[data-state=done]").wait_for(timeout=90_000)
        status = page.inner_text("#track-status")
        assert status.startswith("drum: Tracked frames 0–99"), status
        page.locator("#track-canvas[data-frame='0']").wait_for()
        assert _overlay_alpha(page, bx, by) > 0 and _overlay_alpha(page, ax, ay) == 0
        page.click(".chip.obj[data-label=ball] .obj-pick")
        assert page.inner_text("#track-button") == "Preview tracking"
        assert "Showing the tracking of drum" in page.inner_text("#track-status")
        page.click(".chip.obj[data-label=drum] .obj-pick")
        page.locator("#frame-slider").focus()
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(350)
        page.screenshot(path=str(ARTIFACTS / "13-objects.png"))

        # One job for both objects.
        page.click("#submit")
        page.locator("#job-panel:not([hidden])").wait_for()
        page.locator("#job-state.succeeded").wait_for(timeout=180_000)
        job_id = page.inner_text("#job-id").strip()
        assert "2 objects: ball, drum" in page.inner_text("#job-what")
        row = page.locator(f"#jobs-list button[data-job='{job_id}']")
        row.wait_for()
        assert "2 objects: ball, drum" in row.text_content()

        # The results: one stem per object and the residual, each with its player.
        page.locator("#results:not([hidden]) #downloads a").first.wait_for()
        stems = page.eval_on_selector_all(
            "#stem-audios audio", "as => as.map(a => [a.dataset.stem, a.getAttribute('src')])"
        )
        assert [k for k, _ in stems] == ["object:ball", "object:drum", "residual"], stems
        for (_, src), name in zip(
            stems,
            ("objects/ball/target.wav", "objects/drum/target.wav", "residual.wav"),
            strict=True,
        ):
            assert urlparse(src).path.endswith(f"/{job_id}/{name}"), (src, name)
        labels = page.locator("#stem-list .stem-title").all_inner_texts()
        assert labels == ["ball", "drum", "everything else"], labels
        page.wait_for_function(
            """() => [...document.querySelectorAll('#stem-audios audio'),
                      document.querySelector('#preview-video')].every(m =>
                 m.src && !m.error && m.readyState >= 1 && Math.abs(m.duration - 4) < 0.2)""",
            timeout=20_000,
        )
        page.wait_for_function(  # every waveform is drawn: the peaks of objects/<label>/...
            "() => S.results && Object.keys(S.results.peaks).length === 3", timeout=20_000
        )
        # Keys 1, 2, 3 pick a stem wherever the focus is; the others stay muted.
        page.locator("#downloads a").first.focus()
        for key, stem in (("2", "object:drum"), ("3", "residual"), ("1", "object:ball")):
            page.keyboard.press(key)
            assert page.is_checked(f"input[name=ab][value='{stem}']")
            unmuted = page.eval_on_selector_all(
                "#stem-audios audio", "as => as.filter(a => !a.muted).map(a => a.dataset.stem)"
            )
            assert unmuted == [stem], (key, unmuted)
        page.wait_for_function("() => document.querySelector('#preview-video').readyState >= 2")
        page.evaluate("document.querySelector('#preview-video').currentTime = 0.5")
        page.wait_for_function(
            "() => { const v = document.querySelector('#preview-video');"
            " return !v.seeking && v.readyState >= 2; }"
        )
        page.wait_for_timeout(400)
        page.evaluate("window.scrollTo(0, 0)")
        page.locator("#results").screenshot(path=str(ARTIFACTS / "14-objects-results.png"))

        # Play: every stem plays along with the picture; each in turn is the one heard.
        page.evaluate("document.querySelector('#preview-video').play()")
        playing = """() => { const v = document.querySelector('#preview-video');
            return v.currentTime > 1.0 && [...document.querySelectorAll('#stem-audios audio')]
              .every(a => !a.paused && !a.error && Math.abs(a.currentTime - v.currentTime) < 0.25); }"""
        page.wait_for_function(playing, timeout=10_000)
        for key, stem in (("1", "object:ball"), ("2", "object:drum"), ("3", "residual")):
            page.keyboard.press(key)
            sel = f"#stem-audios audio[data-stem='{stem}']"
            t1 = page.evaluate(f'document.querySelector("{sel}").currentTime')
            page.wait_for_timeout(300)
            heard = page.evaluate(
                f'(() => {{ const a = document.querySelector("{sel}");'
                " return [a.currentTime, a.muted, a.paused, a.error && a.error.code]; })()"
            )
            assert heard[0] > t1 and heard[1:] == [False, False, None], (stem, t1, heard)
        page.evaluate("document.querySelector('#preview-video').pause()")

        # Every download answers without a header (signed links, objects/<label>/... too).
        hrefs = page.eval_on_selector_all(
            "#downloads a", "as => as.map(a => [a.dataset.output, a.getAttribute('href')])"
        )
        names = {n for n, _ in hrefs}
        want = {"objects/ball/target.wav", "objects/drum/target.wav", "residual.wav", "stems.mkv"}
        assert want <= names, names
        for name, href in hrefs:
            resp = httpx.get(base + href, timeout=30)
            assert resp.status_code == 200 and len(resp.content) > 0, (name, resp.status_code)
        browser.close()
    assert not errors, errors

    # What the page sent: one job, each object with its own keyframe, text and spans.
    spec = json.loads((live["root"] / "jobs" / job_id / "spec.json").read_text())
    assert [o["label"] for o in spec["objects"]] == ["ball", "drum"]
    ball, drum = spec["objects"]
    assert ball["text"] == "a red ball" and drum["text"] == "a rattling drum"
    assert [(s["sign"], s["start"], s["end"]) for s in ball["spans"]] == [("+", 0.4, 1.4)]
    assert [(s["sign"], s["start"], s["end"]) for s in drum["spans"]] == [("-", 0.0, 1.0)]
    assert [k["frame"] for k in ball["keyframes"]] == [0] == [k["frame"] for k in drum["keyframes"]]
    _, ball_true, drum_true = scene.frame(0, scene.background())
    ball_mask = cv2.imread(ball["keyframes"][0]["mask"], cv2.IMREAD_GRAYSCALE) > 0
    drum_mask = cv2.imread(drum["keyframes"][0]["mask"], cv2.IMREAD_GRAYSCALE) > 0
    assert (ball_mask & (ball_true > 0)).sum() / ball_true.sum() > 0.9
    assert (drum_mask & (drum_true > 0)).sum() == drum_true.sum()
    assert not (ball_mask & drum_mask).any() and not (drum_mask & (ball_true > 0)).any()
    doc = httpx.get(f"{base}/v1/jobs/{job_id}", headers=AUTH).json()
    assert [o["label"] for o in doc["objects"]] == ["ball", "drum"]


# --------------------------------------------------------------------------- no worker


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """Real Redis and `sonomask serve` but no worker: every job submitted stays queued (as
    when the workers are busy or down), so queue positions are there to see. One job is
    finished already (written into the workspace), for the results player."""
    root = tmp_path_factory.mktemp("idle")
    redis = Redis(root / "redis")
    redis.start()
    media_root = root / "media"
    media_root.mkdir()
    env = service_env(root, redis)
    (root / "logs").mkdir()
    server = Server(env, root / "logs" / "api.log")
    try:
        scene = make_scene(duration=4.0, width=320, height=180, fps=25.0)
        clip = media_root / "ball-and-drum.mp4"
        write_clip(scene, clip, stereo=True, crf=23)
        done = _finished_job(root / "jobs", clip)
        now = datetime.now(UTC)  # recent: older finished jobs expire
        Workspace(root / "jobs" / done).update_manifest(
            created=(now - timedelta(seconds=65)).isoformat(timespec="seconds"),
            finished=now.isoformat(timespec="seconds"),
        )
        yield {"root": root, "server": server, "scene": scene, "clip": clip, "done": done}
    finally:
        server.stop()
        redis.stop()


def _queue_json(base: str, mode: str = "isolate") -> str:
    """A job submitted as plugins do (JSON, a file under the media root): it waits."""
    body = {"video_path": "ball-and-drum.mp4", "boxes": ["100,50,160,110"], "mode": mode}
    r = httpx.post(f"{base}/v1/jobs", json=body, timeout=60)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _browser(pw, width: int = 1360, height: int = 900):
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": width, "height": height})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.set_default_timeout(20_000)
    return browser, page, errors


def _open_clip(page, base: str, clip: Path) -> None:
    page.goto(base + "/")
    page.locator("body[data-ready=true]").wait_for()
    page.set_input_files("#file-input", str(clip))
    page.locator("#frame-img[data-frame='0']").wait_for()


def _rgba(page, selector: str, x: int, y: int) -> list[int]:
    """The RGBA a canvas of the stage holds at video pixel (x, y)."""
    return page.evaluate(
        f"Array.from(document.querySelector('{selector}').getContext('2d')"
        f".getImageData({x}, {y}, 1, 1).data)"
    )


def _hex(colour: str) -> list[int]:
    return [int(colour[i : i + 2], 16) for i in (1, 3, 5)]


def _near(got: list[int], want: list[float], tol: int = 3) -> bool:
    """Equal up to the rounding of a canvas's premultiplied alpha."""
    return all(abs(g - w) <= tol for g, w in zip(got, want, strict=True))


@pytest.mark.slow
def test_queued_jobs_and_recent_jobs_in_the_page(idle):
    """With no worker, jobs wait: the page says "queued" and where in the queue, and the
    position moves up when a job ahead is cancelled. The recent jobs name the file, mode,
    objects, state and duration; twenty jobs alike fold into one row."""
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = idle["server"].url
    ahead = _queue_json(base, mode="remove")
    alike = [_queue_json(base) for _ in range(20)]
    with sync_playwright() as pw:
        browser, page, errors = _browser(pw)
        page.goto(base + "/")
        page.locator("body[data-ready=true]").wait_for()
        rows = page.locator("#jobs-list button[data-job]")
        # Newest first: the 20 alike (one row, folded), the one ahead, the finished one.
        assert rows.count() == 3, page.inner_text("#jobs-list")
        newest = page.locator(f"#jobs-list button[data-job='{alike[-1]}']")
        text = newest.text_content()  # as written (the badge is upper-cased on screen)
        for words in ("ball-and-drum.mp4", "isolate", "1 object", "queued", "#21 in the queue"):
            assert words in text, text
        folded = page.locator(".more-alike")
        assert folded.inner_text() == "+ 19 more alike"
        done = page.text_content(f"#jobs-list button[data-job='{idle['done']}']")
        assert "succeeded" in done and "took 1 min 05 s" in done, done
        assert "#1 in the queue" in page.inner_text(f"#jobs-list button[data-job='{ahead}']")
        assert page.locator("#jobs-panel").bounding_box()["height"] < 500
        folded.click()
        assert rows.count() == 22 and folded.get_attribute("aria-expanded") == "true"
        folded.click()
        assert rows.count() == 3

        # Open the last job: queued, 21st; cancel the one ahead: it moves up to 20th.
        newest.click()
        page.locator("#job-state.queued").wait_for()
        assert page.inner_text("#job-state").lower() == "queued"
        page.locator("#job-stage[data-position='21']").wait_for()
        assert "#21 in the queue, waiting for a worker" in page.inner_text("#job-stage")
        assert "ball-and-drum.mp4 · isolate · 1 object" in page.inner_text("#job-what")
        doc = httpx.get(f"{base}/v1/jobs/{alike[-1]}").json()
        assert doc["state"] == "queued" and doc["queue_position"] == 21
        assert httpx.delete(f"{base}/v1/jobs/{ahead}", timeout=60).json()["state"] == "cancelled"
        page.locator("#job-stage[data-position='20']").wait_for(timeout=10_000)
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        page.locator(".side-col").screenshot(path=str(ARTIFACTS / "09-queued-jobs.png"))
        browser.close()
    assert not errors, errors
    for job_id in alike:  # leave an empty queue to the next test
        httpx.delete(f"{base}/v1/jobs/{job_id}", timeout=60)


@pytest.mark.slow
def test_mask_overlay_box_by_numbers_and_keys(idle):
    """The mask is outlined and drawn in the colour and opacity chosen (kept across a
    reload); a box typed as numbers is checked, drawn and submitted exactly; the shortcuts
    work from anywhere on the page, one meaning per key, and "?" lists them."""
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base, scene = idle["server"].url, idle["scene"]
    with sync_playwright() as pw:
        browser, page, errors = _browser(pw)
        _open_clip(page, base, idle["clip"])
        assert page.is_hidden("#sam-options")  # no SAM Audio model: no reranking options

        # A box by numbers: refused with a clear message, then drawn.
        page.click("#box-numbers summary")
        (bx, by), _, _ = scene.positions(0)
        r = scene.radius()
        x0, y0, x1, y1 = bx - r - 4, by - r - 4, bx + r + 4, by + r + 4

        def typed(*values: object) -> None:
            for name, v in zip(("x0", "y0", "x1", "y1"), values, strict=True):
                page.fill(f"#box-{name}", str(v))
            page.click("#box-add")

        typed(x0, y0, x0 - 5, y1)
        page.locator("#box-error:not([hidden])").wait_for()
        assert page.inner_text("#box-error") == (
            f"x1 ({x0 - 5}) must be greater than x0 ({x0}): x0 is the left edge, x1 the right."
        )
        assert page.get_attribute("#box-x1", "aria-invalid") == "true"
        typed(x0, y0, 400, y1)
        assert "x1 = 400 is outside the 320×180 picture" in page.inner_text("#box-error")
        typed(x0, "", x1, y1)
        assert page.inner_text("#box-error").startswith("y0 is empty")
        assert page.locator("#keyframe-list .chip").count() == 0  # nothing drawn yet
        typed(x0, y0, x1, y1)
        page.get_by_role("button", name="Go to keyframe 0").wait_for()
        assert page.is_hidden("#box-error")

        # The overlay: filled at the chosen opacity in the chosen colour, outlined outside
        # the mask at full strength (its colour, then dark), nothing elsewhere.
        pink = _hex(page.get_attribute("#mask-canvas", "data-colour"))
        inside = _rgba(page, "#mask-canvas", bx, by)
        assert _near(inside, [*pink, 0.45 * 255]), inside
        ring = [_rgba(page, "#mask-canvas", x1, by), _rgba(page, "#mask-canvas", x0 - 1, by)]
        assert all(px[3] >= 200 for px in ring), ring
        assert _rgba(page, "#mask-canvas", x1 + 12, by)[3] == 0
        assert _rgba(page, "#mask-canvas", 2, 2)[3] == 0
        page.check("input[name=mask-colour][aria-label=yellow]")
        yellow = _hex(page.get_attribute("#mask-canvas", "data-colour"))
        assert yellow != pink and _near(_rgba(page, "#mask-canvas", bx, by), [*yellow, 0.45 * 255])
        page.locator("#mask-opacity").fill("80")
        assert _near(_rgba(page, "#mask-canvas", bx, by), [*yellow, 0.8 * 255])
        assert page.inner_text("#mask-opacity-out") == "80%"
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        page.locator("#editor").screenshot(path=str(ARTIFACTS / "10-overlay.png"))

        # Kept in the browser: a reload draws with the same look.
        page.reload()
        page.locator("body[data-ready=true]").wait_for()
        page.locator("#frame-img[data-frame='0']").wait_for()
        assert page.is_checked("input[name=mask-colour][aria-label=yellow]")
        assert page.input_value("#mask-opacity") == "80"
        page.click("#box-numbers summary")
        typed(x0, y0, x1, y1)
        page.get_by_role("button", name="Go to keyframe 0").wait_for()
        assert _near(_rgba(page, "#mask-canvas", bx, by), [*yellow, 0.8 * 255])

        # Keys from anywhere. The picture, a button, the page itself: one meaning each.
        def pressed(tool: str) -> bool:
            return page.get_attribute(f"[data-tool={tool}]", "aria-pressed") == "true"

        page.locator("#refresh-jobs").focus()
        page.keyboard.press("x")
        assert pressed("box")
        page.locator("body").focus()
        page.keyboard.press("p")
        assert pressed("polygon")
        page.keyboard.press(".")
        page.locator("#frame-img[data-frame='1']").wait_for()
        page.keyboard.press(">")  # Shift+.
        page.locator("#frame-img[data-frame='11']").wait_for()
        page.keyboard.press(",")
        page.locator("#frame-img[data-frame='10']").wait_for()
        page.fill("#text-prompt", "")
        page.locator("#text-prompt").press_sequentially("a bell")  # typing is typing
        assert page.input_value("#text-prompt") == "a bell" and pressed("polygon")
        page.locator("#mask-opacity").focus()
        page.keyboard.press("?")
        page.locator("#keys-dialog[open]").wait_for()
        keys = page.inner_text("#keys-dialog")
        assert "Brush, Eraser, Polygon, Box" in keys and "listen to A" in keys
        page.wait_for_timeout(200)
        page.locator("#keys-dialog").screenshot(path=str(ARTIFACTS / "11-keys.png"))
        page.keyboard.press("Escape")
        assert page.locator("#keys-dialog[open]").count() == 0

        # The results of a finished job: 1 and 2 switch A/B wherever the focus is, and B
        # is the Brush there too.
        page.click(f"#jobs-list button[data-job='{idle['done']}']")
        page.locator("#results:not([hidden]) #downloads a").first.wait_for()
        page.locator("#downloads a").first.focus()
        page.keyboard.press("2")
        assert page.is_checked("input[name=ab][value=residual]")
        assert page.evaluate("document.querySelector('#audio-target').muted") is True
        page.keyboard.press("b")
        assert pressed("brush") and page.is_checked("input[name=ab][value=residual]")
        page.locator("#draft-canvas").focus()
        page.keyboard.press("1")
        assert page.is_checked("input[name=ab][value=target]")
        assert page.evaluate("document.querySelector('#audio-residual').muted") is True

        # Submit the typed box (frame 0): the job's mask is exactly the box.
        page.click("#submit")
        page.locator("#job-state.queued").wait_for()
        job_id = page.inner_text("#job-id").strip()
        browser.close()
    assert not errors, errors
    spec = json.loads((idle["root"] / "jobs" / job_id / "spec.json").read_text())
    assert [k["frame"] for k in spec["keyframes"]] == [0]
    sent = cv2.imread(spec["keyframes"][0]["mask"], cv2.IMREAD_GRAYSCALE)
    want = np.zeros((180, 320), np.uint8)
    want[y0:y1, x0:x1] = 255
    assert np.array_equal(sent, want)
    httpx.delete(f"{base}/v1/jobs/{job_id}", timeout=60)


@pytest.mark.slow
def test_a_small_window_keeps_the_prompts_beside_the_picture(idle):
    """At 800x600 the Prompts panel sits beside the picture and starts in the first screen,
    and the page stays a few screens tall, results included."""
    sync_playwright = _playwright()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = idle["server"].url
    with sync_playwright() as pw:
        browser, page, errors = _browser(pw, 800, 600)
        _open_clip(page, base, idle["clip"])
        _paint(page, idle["scene"], 0)
        page.evaluate("window.scrollTo(0, 0)")
        page.wait_for_timeout(300)
        prompts = page.locator("#prompt-panel").bounding_box()
        stage = page.locator("#stage").bounding_box()
        submit = page.locator("#submit").bounding_box()
        assert prompts["x"] >= stage["x"] + stage["width"], (prompts, stage)
        assert prompts["y"] < stage["y"] + stage["height"] and prompts["y"] < 150
        assert submit["y"] + submit["height"] <= 600  # Separate is on the first screen
        assert stage["y"] < 600
        width, height = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        assert width <= 800 and height < 1500, (width, height)
        page.screenshot(path=str(ARTIFACTS / "12-small-window.png"))
        page.click(f"#jobs-list button[data-job='{idle['done']}']")
        page.locator("#results:not([hidden]) #downloads a").first.wait_for()
        height = page.evaluate("document.documentElement.scrollHeight")
        assert height < 2600, height
        browser.close()
    assert not errors, errors


@pytest.mark.slow
def test_sam_audio_options_in_the_page(tmp_path_factory):
    """With a SAM Audio model configured, the page offers reranking (candidates, ranker) and
    span prediction, and the job's spec carries them exactly; they are greyed out for the
    classical separator, and a bad number gets the service's own words. (A server without a
    model offers none of it: the other browser tests run without one, where it is hidden.)"""
    from conftest import SAM_AUDIO_FIXTURE

    if not (SAM_AUDIO_FIXTURE / "checkpoint.pt").is_file():
        pytest.skip(f"SAM Audio fixture A not found at {SAM_AUDIO_FIXTURE}")
    sync_playwright = _playwright()
    root = tmp_path_factory.mktemp("sam-page")
    redis = Redis(root / "redis")
    redis.start()
    (root / "media").mkdir()
    (root / "logs").mkdir()
    env = service_env(root, redis, SONOMASK_MODEL=str(SAM_AUDIO_FIXTURE))
    server = Server(env, root / "logs" / "api.log")  # no worker: the job waits in the queue
    try:
        scene = make_scene(duration=2.0, width=320, height=180, fps=25.0)
        clip = root / "media" / "ball.mp4"
        write_clip(scene, clip, stereo=True, crf=23)
        base = server.url
        with sync_playwright() as pw:
            browser, page, errors = _browser(pw)
            _open_clip(page, base, clip)
            assert page.is_visible("#sam-options")
            page.select_option("#separator", "classical")
            assert page.is_disabled("#candidates") and page.is_disabled("#predict-spans")
            page.select_option("#separator", "sam-audio")
            assert page.is_enabled("#candidates")
            page.click("#box-numbers summary")
            (bx, by), _, _ = scene.positions(0)
            r = scene.radius() + 4
            corners = (bx - r, by - r, bx + r, by + r)
            for name, v in zip(("x0", "y0", "x1", "y1"), corners, strict=True):
                page.fill(f"#box-{name}", str(v))
            page.click("#box-add")
            page.get_by_role("button", name="Go to keyframe 0").wait_for()
            page.fill("#text-prompt", "a plucked string")
            page.fill("#candidates", "12")  # over the limit: the service's words
            page.click("#submit")
            page.locator("#submit-error:not([hidden])").wait_for()
            assert "candidates" in page.inner_text("#submit-error").lower()
            page.fill("#candidates", "3")
            page.select_option("#ranker", "activity")
            page.check("#predict-spans")
            page.click("#submit")
            page.locator("#job-panel:not([hidden])").wait_for()
            job_id = page.inner_text("#job-id").strip()
            browser.close()
        assert not errors, errors
        spec = json.loads((root / "jobs" / job_id / "spec.json").read_text())
        assert spec["candidates"] == 3 and spec["ranker"] == "activity"
        assert spec["predict_spans"] is True and spec["separator"] == "sam-audio"
        httpx.delete(f"{base}/v1/jobs/{job_id}", timeout=60)
    finally:
        server.stop()
        redis.stop()
