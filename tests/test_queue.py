"""Queued jobs against a real Redis, real `celery worker` processes and a real HTTP server."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli
from scene import first_mask, make_scene, write_clip
from service import RabbitVhost, Redis, Server, Worker, brokers, free_port, service_env, wait_for

from worker.media import stream_md5

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=brokers())
def svc(request, tmp_path_factory):
    """The whole queue suite runs once per broker (Redis, RabbitMQ; leases stay in Redis)."""
    root = tmp_path_factory.mktemp(f"svc-{request.param}")
    redis = Redis(root / "redis")
    redis.start()
    vhost = RabbitVhost() if request.param == "rabbitmq" else None
    if vhost:
        vhost.start()
    media_root = root / "media"
    media_root.mkdir()
    env = service_env(
        root,
        redis,
        vhost.url if vhost else None,
        SONOMASK_API_TOKEN=TOKEN,
        SONOMASK_MAX_UPLOAD_BYTES=str(3_000_000),
        SONOMASK_WINDOW_SECONDS="5",  # the 90 s clip separates in 24 windows
        SONOMASK_WEBHOOK_ALLOW="127.0.0.1",  # the test's webhook listener is local
    )
    logs = root / "logs"
    logs.mkdir()

    class Svc:
        pass

    s = Svc()
    s.root, s.env, s.redis, s.media_root, s.logs = root, env, redis, media_root, logs
    s.server = Server(env, logs / "api.log")
    s.workers = {}

    def start_worker(queues: str, name: str, concurrency: int = 1) -> Worker:
        w = Worker(env, queues, f"{name}@test", logs / f"{name}.log", concurrency)
        w.wait_ready()
        s.workers[name] = w
        return w

    s.start_worker = start_worker
    start_worker("cpu", "cpu1", concurrency=2)
    start_worker("gpu", "gpu1")

    scene = make_scene(duration=4.0, width=160, height=96, fps=25.0)
    s.scene = scene
    s.video = media_root / "clip.mp4"
    write_clip(scene, s.video, stereo=True, crf=23)
    s.mask = media_root / "mask.png"
    cv2.imwrite(str(s.mask), first_mask(scene, "a"))
    long_scene = make_scene(duration=90.0, width=128, height=72, fps=25.0)
    s.long_video = media_root / "long.mp4"
    write_clip(long_scene, s.long_video, stereo=True, crf=30)
    s.long_mask = media_root / "long_mask.png"
    cv2.imwrite(str(s.long_mask), first_mask(long_scene, "a"))
    yield s
    for w in s.workers.values():
        w.stop()
    s.server.stop()
    redis.stop()
    if vhost:
        vhost.stop()


def _post_upload(svc, video: Path, mask: Path, spec: dict, headers=AUTH) -> httpx.Response:
    with video.open("rb") as v, mask.open("rb") as m:
        return httpx.post(
            f"{svc.server.url}/v1/jobs",
            headers=headers,
            timeout=60,
            files=[("video", (video.name, v, "video/mp4")), ("mask", (mask.name, m, "image/png"))],
            data={"spec": json.dumps(spec)},
        )


def _job(svc, job_id: str) -> dict:
    r = httpx.get(f"{svc.server.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def _wait_done(svc, job_id: str, timeout: float = 240) -> dict:
    return wait_for(
        lambda: (d := _job(svc, job_id))["state"] in ("succeeded", "failed", "cancelled") and d,
        timeout,
        f"job {job_id}",
        0.3,
    )


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_upload_job_matches_separate_and_stages_use_their_queues(svc, tmp_path):
    hook_port = free_port()
    hook = HTTPServer(("127.0.0.1", hook_port), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    spec = {
        "mask_frames": [0],
        "mode": "both",
        "separator": "auto",
        "text": None,
        "spans": [],
        "webhook": f"http://127.0.0.1:{hook_port}/done",
    }
    r = _post_upload(svc, svc.video, svc.mask, spec)
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"id", "state", "url"} and body["state"] == "queued"
    doc = _wait_done(svc, body["id"])
    assert doc["state"] == "succeeded", doc
    assert set(doc) >= {
        "id",
        "state",
        "stage",
        "progress",
        "error",
        "outputs",
        "created",
        "finished",
    }
    assert doc["progress"] == 1.0
    # The same job run in-process by the CLI.
    local = tmp_path / "local"
    res = run_cli("separate", str(svc.video), "--mask", str(svc.mask), "--out", str(local))
    assert res.returncode == 0, res.stderr
    expected = sorted(p.name for p in local.iterdir())
    assert sorted(doc["outputs"]) == expected
    for name in ("target.wav", "residual.wav", "isolated.mp4"):
        got = tmp_path / f"api-{name}"
        resp = httpx.get(f"{svc.server.url}{body['url']}/outputs/{name}", headers=AUTH)
        assert resp.status_code == 200
        got.write_bytes(resp.content)
        if name.endswith(".wav"):
            a, _ = sf.read(str(got))
            b, _ = sf.read(str(local / name))
            assert a.shape == b.shape and np.abs(a - b).max() < 1e-5
        else:
            assert stream_md5(got, "v") == stream_md5(local / name, "v")
    manifest = json.loads(
        httpx.get(f"{svc.server.url}{body['url']}/outputs/job.json", headers=AUTH).content
    )
    hosts = manifest["stage_hosts"]
    assert hosts["separate"]["queue"] == "gpu" and hosts["separate"]["hostname"].startswith("gpu")
    for stage in ("probe", "demux", "track", "prompt", "restore", "remux", "preview"):
        assert hosts[stage]["queue"] == "cpu", (stage, hosts[stage])
    wait_for(lambda: _Hook.received, 10, "the webhook")
    assert _Hook.received[-1]["id"] == body["id"]
    assert _Hook.received[-1]["state"] == "succeeded"
    hook.shutdown()


def _submit_long(svc) -> str:
    r = httpx.post(
        f"{svc.server.url}/v1/jobs",
        headers=AUTH,
        timeout=30,
        json={"video_path": "long.mp4", "mask_paths": ["long_mask.png"], "mode": "isolate"},
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_worker_killed_during_separation_job_still_completes(svc):
    """A gpu worker SIGKILLed mid-separation: the redelivered stage resumes at the first
    window not yet separated, and the job finishes with one set of outputs."""
    job_id = _submit_long(svc)
    folder = svc.root / "jobs" / job_id

    def finished_windows() -> int:  # not the hidden .part files of one being written
        return sum(not p.name.startswith(".") for p in (folder / "windows").glob("*.npz"))

    wait_for(lambda: finished_windows() >= 2, 180, "two windows", 0.05)
    svc.workers.pop("gpu1").kill()
    time.sleep(1.0)
    assert _job(svc, job_id)["state"] == "running"
    svc.start_worker("gpu", "gpu2")
    doc = _wait_done(svc, job_id, 300)
    assert doc["state"] == "succeeded", doc
    windows = json.loads((folder / "outputs" / "job.json").read_text())["separate_windows"]
    assert windows["count"] >= 20 and windows["resumed"] >= 2, windows
    assert sorted(p.name for p in (folder / "outputs").iterdir()) == sorted(doc["outputs"])
    assert not list(folder.rglob(".*.part*")), "temporary files left"
    t = sf.info(str(folder / "outputs" / "target.wav"))
    assert t.channels == 2 and abs(t.duration - 90.0) < 0.1


def test_cancel_in_the_middle_leaves_no_outputs(svc):
    job_id = _submit_long(svc)
    wait_for(lambda: _job(svc, job_id)["state"] == "running", 120, "the job to run", 0.05)
    r = httpx.delete(f"{svc.server.url}/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    time.sleep(7)  # the running stage stops at its next progress report (killed after 5 s)
    doc = _job(svc, job_id)
    assert doc["state"] == "cancelled" and doc["outputs"] == []
    folder = svc.root / "jobs" / job_id
    leftovers = sorted(p.name for p in folder.iterdir())
    assert set(leftovers) <= {"spec.json", "job.json", "CANCELLED", "STOPPED", "inputs"}, leftovers
    r = httpx.get(f"{svc.server.url}/v1/jobs/{job_id}/outputs/target.wav", headers=AUTH)
    assert r.status_code == 404


def test_ten_jobs_at_once(svc):
    ids = []
    for _ in range(10):
        r = _post_upload(svc, svc.video, svc.mask, {"mode": "isolate"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    docs = [_wait_done(svc, i, 600) for i in ids]
    assert [d["state"] for d in docs] == ["succeeded"] * 10
    listed = {d["id"] for d in httpx.get(f"{svc.server.url}/v1/jobs", headers=AUTH).json()}
    assert set(ids) <= listed


def test_redis_restart_with_queued_jobs_loses_none(svc):
    for w in list(svc.workers):
        svc.workers.pop(w).stop()
    ids = []
    for _ in range(3):
        r = _post_upload(svc, svc.video, svc.mask, {"mode": "remove"})
        assert r.status_code == 202
        ids.append(r.json()["id"])
    svc.redis.stop()
    svc.redis.start()
    svc.start_worker("cpu", "cpu3", concurrency=2)
    svc.start_worker("gpu", "gpu3")
    docs = [_wait_done(svc, i, 300) for i in ids]
    assert [d["state"] for d in docs] == ["succeeded"] * 3


def _assert_4xx(r: httpx.Response, code: int, words: str, svc) -> None:
    assert r.status_code == code, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail.lower(), detail
    assert httpx.get(f"{svc.server.url}/healthz").status_code == 200  # still serving


def test_bad_requests_get_clear_4xx(svc, tmp_path):
    url = f"{svc.server.url}/v1/jobs"
    with svc.mask.open("rb") as m:
        r = httpx.post(url, headers=AUTH, files=[("mask", ("m.png", m, "image/png"))])
    _assert_4xx(r, 400, "video", svc)

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((10, 10), 255, np.uint8))
    _assert_4xx(_post_upload(svc, svc.video, small, {}), 422, "10x10", svc)

    _assert_4xx(_post_upload(svc, svc.video, svc.mask, {"colour": "red"}), 400, "colour", svc)

    r = httpx.post(
        url, headers=AUTH, json={"video_path": "../../etc/passwd", "mask_paths": ["mask.png"]}
    )
    _assert_4xx(r, 403, "outside the media root", svc)

    playlist = tmp_path / "list.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXTINF:4,\nfile:{svc.video}\n#EXT-X-ENDLIST\n")
    _assert_4xx(_post_upload(svc, playlist, svc.mask, {}), 422, "playlist", svc)

    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(3_500_000))
    _assert_4xx(_post_upload(svc, big, svc.mask, {}), 413, "limit", svc)

    r = _post_upload(svc, svc.video, svc.mask, {}, headers={"Authorization": "Bearer nope"})
    _assert_4xx(r, 401, "token", svc)

    _assert_4xx(httpx.get(f"{url}/doesnotexist", headers=AUTH), 404, "no job", svc)
    leftovers = [p for p in (svc.root / "jobs").glob(".upload-*")]
    assert not leftovers, "rejected uploads left files behind"


def test_healthz_reports_broker_and_workers(svc):
    r = httpx.get(f"{svc.server.url}/healthz", headers=AUTH, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["broker"] is True
    assert any("cpu" in qs for qs in body["workers"].values())
    assert body["worker_count"] == len(body["workers"]) >= 2
    # Without the token: reachability and a count, but no worker (host) names.
    r = httpx.get(f"{svc.server.url}/healthz", timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["broker"] is True and body["worker_count"] >= 2
    assert "workers" not in body and "@test" not in r.text


def test_cli_status_and_wait(svc):
    env = svc.env
    r = _post_upload(svc, svc.video, svc.mask, {"mode": "isolate"})
    job_id = r.json()["id"]
    res = run_cli("wait", job_id, "--quiet", env=env)
    assert res.returncode == 0, res.stderr
    res = run_cli("status", job_id, "--json", env=env)
    doc = json.loads(res.stdout)
    assert doc["state"] == "succeeded" and "isolated.mp4" in doc["outputs"]
