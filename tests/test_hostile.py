"""A hostile client against a real `sonomask serve` and `sonomask worker` with DEFAULT settings.

Only the workspace, the broker, the media root and a token are set (no test-friendly
timeouts or limits). Every finding of issue 11 items 2-8 is tried here and must answer a
clear 4xx (status and words checked), the server staying up: path escapes through every
field, models and webhooks outside what the operator configured (a real local listener
must receive nothing), non-finite and out-of-range numbers, deep JSON, NUL bytes, a body
that stalls, DELETE on a finished job, /healthz without a token, a broker that is down,
and an API killed mid-upload.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import cv2
import httpx
import pytest
from scene import first_mask, make_scene, write_clip
from service import Redis, Server, Worker, free_port, wait_for

from worker.jobs import webhooks

TOKEN = "hostile-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
pytestmark = pytest.mark.slow


def default_env(root: Path, redis: Redis, db: int = 0, **extra: str) -> dict[str, str]:
    """The user's defaults: no SONOMASK_* setting but the workspace, broker, media root and
    token, and no Hugging Face offline switch inherited from the test runner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOMASK_")}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    env.update(
        SONOMASK_WORKSPACE=str(root / "jobs"),
        SONOMASK_BROKER_URL=f"{redis.url}/{db}",
        SONOMASK_RESULT_BACKEND=f"{redis.url}/{db + 1}",
        SONOMASK_MEDIA_ROOT=str(root / "media"),
        SONOMASK_API_TOKEN=TOKEN,
        **extra,
    )
    return env


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    media, outside = root / "media", root / "outside"
    media.mkdir()
    outside.mkdir()
    (root / "logs").mkdir()
    scene = make_scene(duration=4.0, width=160, height=96, fps=25.0)
    write_clip(scene, media / "clip.mp4", stereo=True, crf=23)
    mask = first_mask(scene, "a")
    cv2.imwrite(str(media / "mask.png"), mask)
    cv2.imwrite(str(outside / "secret.png"), mask)  # a usable mask, but not the client's
    (media / "folder").mkdir()
    (media / "escape.png").symlink_to(outside / "secret.png")
    (media / "etc").symlink_to("/etc")
    redis = Redis(root / "redis")
    redis.start()
    env = default_env(root, redis)

    class Svc:
        pass

    s = Svc()
    s.root, s.redis, s.env, s.scene, s.media, s.outside = root, redis, env, scene, media, outside
    s.server = Server(env, root / "logs" / "api.log")
    s.worker = Worker(env, "cpu,gpu", "hostile@test", root / "logs" / "worker.log")
    try:
        s.worker.wait_ready()
        yield s
    finally:
        s.worker.stop()
        s.server.stop()
        redis.stop()


def _refused(r: httpx.Response, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail, detail
    for w in words:
        assert w.lower() in detail.lower(), (w, detail)
    return detail


def _post_json(svc, body: dict | str, path: str = "/v1/jobs") -> httpx.Response:
    content = body if isinstance(body, str) else json.dumps(body)
    headers = {**AUTH, "Content-Type": "application/json"}
    return httpx.post(f"{svc.server.url}{path}", content=content, headers=headers, timeout=60)


def _post_form(svc, spec: dict | str, masks: int = 1) -> httpx.Response:
    files = [("video", ("clip.mp4", (svc.media / "clip.mp4").read_bytes(), "video/mp4"))]
    files += [("mask", ("m.png", (svc.media / "mask.png").read_bytes(), "image/png"))] * masks
    raw = spec if isinstance(spec, str) else json.dumps(spec)
    return httpx.post(
        f"{svc.server.url}/v1/jobs", headers=AUTH, files=files, data={"spec": raw}, timeout=60
    )


def _job_folders(svc) -> set[str]:
    """Jobs, staging folders and upload sessions in the workspace."""
    ws = svc.root / "jobs"
    found = {p.name for p in ws.glob("*") if not p.name.startswith(".uploads")}
    return found | {f".uploads/{p.name}" for p in ws.glob(".uploads/*")}


def _box(svc) -> str:
    """A box around the ball on frame 0, inside the frame."""
    (x, y), _, _ = svc.scene.positions(0)
    r, w, h = svc.scene.radius() + 3, svc.scene.width, svc.scene.height
    return f"{max(0, x - r)},{max(0, y - r)},{min(w, x + r)},{min(h, y + r)}"


TARGETS = [
    "/etc/shadow",  # exists, outside, unreadable
    "/etc/passwd",  # exists, outside, readable
    "../outside/secret.png",  # a real mask just outside the root
    "../../../../../etc/passwd",
    "escape.png",  # a symlink inside the root to a file outside
    "etc/hostname",  # through a symlinked folder
    "missing.png",
    "folder",  # a directory
    "",
]


def test_paths_outside_the_media_root_get_one_answer(svc):
    before = _job_folders(svc)
    fields = {
        "video_path": lambda t: {"video_path": t, "mask_paths": ["mask.png"]},
        "mask_paths[0]": lambda t: {"video_path": "clip.mp4", "mask_paths": [t]},
        "keyframes[0].mask": lambda t: {
            "video_path": "clip.mp4",
            "keyframes": [{"mask": t, "frame": 0}],
        },
    }
    for field, body in fields.items():
        answers = {_refused(_post_json(svc, body(t)), 403, field) for t in TARGETS}
        assert len(answers) == 1, answers  # nothing tells which of them exist
        assert "outside the media root" in answers.pop()
    answers = {_refused(_post_json(svc, {"path": t}, "/v1/uploads"), 403) for t in TARGETS}
    assert len(answers) == 1, answers
    assert _job_folders(svc) == before, "a refused request left a job behind"


def test_malformed_names_are_refused_before_the_filesystem(svc):
    long_name = "a" * 300 + ".mp4"
    long_path = "d/" * 2100 + "x.mp4"
    cases = [
        ({"video_path": "clip.mp4\x00.png", "mask_paths": ["mask.png"]}, "NUL"),
        ({"video_path": "clip.mp4", "mask_paths": ["mask.png\x00"]}, "NUL"),
        ({"video_path": "clip.mp4", "keyframes": [{"mask": "\x00", "frame": 0}]}, "NUL"),
        ({"video_path": long_name, "mask_paths": ["mask.png"]}, "longer than 255 bytes"),
        ({"video_path": "clip.mp4", "mask_paths": [long_name]}, "longer than 255 bytes"),
        ({"video_path": long_path}, "longer than 4096 bytes"),
        ({"video_path": ["clip.mp4"]}, "must be a string"),
    ]
    for body, words in cases:
        _refused(_post_json(svc, body), 400, words)
    _refused(_post_json(svc, {"path": "x\x00y"}, "/v1/uploads"), 400, "NUL")
    _refused(_post_json(svc, {"path": long_name}, "/v1/uploads"), 400, "255")


def test_a_multipart_spec_cannot_name_server_files(svc):
    before = _job_folders(svc)
    secret = str(svc.outside / "secret.png")
    spec = {"keyframes": [{"mask": secret, "frame": 0}]}
    _refused(_post_form(svc, spec, masks=0), 400, "keyframes[0].mask", "upload")
    _refused(_post_form(svc, {"mask_paths": [secret]}), 400, "mask_paths")
    _refused(_post_form(svc, {"video_path": "clip.mp4"}), 400, "video_path")
    _refused(_post_form(svc, {"masks": [secret]}), 400, "masks")
    assert _job_folders(svc) == before


def test_models_outside_the_configured_list_are_refused(svc):
    for field in ("model", "tracker_model"):
        for choice in ("/etc", "someone/any-repo", "facebook/sam2.1-hiera-tiny", "../models"):
            body = {"video_path": "clip.mp4", "mask_paths": ["mask.png"], field: choice}
            _refused(_post_json(svc, body), 400, field, "not one this server offers")
            _refused(_post_form(svc, {field: choice}), 400, field, "not one this server offers")
    options = httpx.get(f"{svc.server.url}/v1/options").json()
    assert options["models"] == [] and options["tracker_models"] == []
    assert options["rankers"] == ["activity"]  # no SONOMASK_JUDGE_MODEL: no judge offered
    body = {"video_path": "clip.mp4", "mask_paths": ["mask.png"], "candidates": 2}
    _refused(_post_json(svc, {**body, "ranker": "judge"}), 422, "judge", "SONOMASK_JUDGE_MODEL")


def test_a_worker_refuses_models_it_was_not_given_and_never_downloads(svc, tmp_path):
    """An API that offers "hub" (a Hub repo id) queues a job the worker, which offers no
    list, refuses with the reason (defence in depth); a worker that does offer it runs
    offline, so the Hub is never contacted."""
    offering = default_env(svc.root, svc.redis, SONOMASK_MODELS="hub=someone/any-repo")
    api = Server(offering, svc.root / "logs" / "api-models.log")
    try:
        options = httpx.get(f"{api.url}/v1/options").json()
        assert options["models"] == ["hub"] and "sam-audio" in options["separators"]
        body = {"video_path": "clip.mp4", "mask_paths": ["mask.png"], "model": "hub"}
        body["separator"] = "sam-audio"
        r = httpx.post(f"{api.url}/v1/jobs", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 202, r.text
        doc = _wait(svc, r.json()["id"])
        assert doc["state"] == "failed" and "not one this server offers" in doc["error"], doc
    finally:
        api.stop()
    # Its own broker database, so only the worker that offers "hub" takes the job.
    env = default_env(svc.root, svc.redis, db=4, SONOMASK_MODELS="hub=someone/any-repo")
    api = Server(env, svc.root / "logs" / "api-hub.log")
    worker = Worker(env, "cpu,gpu", "hub@test", svc.root / "logs" / "worker-hub.log")
    try:
        worker.wait_ready()
        r = httpx.post(f"{api.url}/v1/jobs", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 202, r.text
        doc = _wait(svc, r.json()["id"])
        assert doc["state"] == "failed" and "HF_HUB_OFFLINE is set" in doc["error"], doc
    finally:
        worker.stop()
        api.stop()


class _Listener(BaseHTTPRequestHandler):
    """Records every request; answers 204, or redirects when ``redirect`` is set."""

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.server.got.append((self.command, self.path, self.rfile.read(length)))
        target = getattr(self.server, "redirect", None)
        self.send_response(307 if target else 204)
        if target:
            self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _any  # noqa: N815

    def log_message(self, *args) -> None:
        pass


def _listener(redirect: str | None = None) -> HTTPServer:
    srv = HTTPServer(("127.0.0.1", free_port()), _Listener)
    srv.got, srv.redirect = [], redirect
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_webhooks_to_internal_addresses_are_refused(svc):
    hook = _listener()
    port = hook.server_address[1]
    host = socket.gethostname()
    addrs = {a[4][0] for a in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    assert all(webhooks._internal(webhooks.ipaddress.ip_address(a)) for a in addrs), addrs
    urls = [
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/done",
        f"http://0x7f000001:{port}/",
        f"http://2130706433:{port}/",
        f"http://0177.0.0.1:{port}/",
        f"http://127.1:{port}/",
        f"http://[::1]:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        f"http://{host}:{port}/",  # a name that resolves to this machine
        f"http://0.0.0.0:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://10.1.2.3/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
    ]
    for url in urls:
        spec = {"webhook": url}
        _refused(_post_form(svc, spec), 400, "webhook", "internal address")
        body = {"video_path": "clip.mp4", "mask_paths": ["mask.png"], "webhook": url}
        _refused(_post_json(svc, body), 400, "webhook")
    # The send-time check (a name may resolve elsewhere by the time the job ends).
    assert webhooks.send(f"http://localhost:{port}/late", b"{}") is False
    time.sleep(0.5)
    assert hook.got == [], hook.got
    hook.shutdown()


def test_an_allowed_webhook_is_not_redirected_and_times_out():
    inner = _listener()
    outer = _listener(redirect=f"http://127.0.0.1:{inner.server_address[1]}/stolen")
    url = f"http://127.0.0.1:{outer.server_address[1]}/hook"
    assert webhooks.send(url, b'{"id": "x"}', allow=("127.0.0.1",)) is False  # a 307
    assert outer.got == [("POST", "/hook", b'{"id": "x"}')]
    assert inner.got == []
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    t0 = time.monotonic()
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
    assert webhooks.send(url, b"{}", allow=("127.0.0.0/8",), timeout=1.0) is False
    assert time.monotonic() - t0 < 5
    with pytest.raises(webhooks.WebhookRefused, match="allow-list"):
        webhooks.check(url, ("example.org", "10.0.0.0/8"))  # the list is a list of hosts
    silent.close()
    inner.shutdown()
    outer.shutdown()


def test_non_finite_and_out_of_range_numbers(svc):
    base = '{"video_path": "clip.mp4", "mask_paths": ["mask.png"], '
    for raw in ("NaN", "Infinity", "-Infinity", "1e309", "-1e309"):
        r = _post_json(svc, base + f'"spans": [{{"sign": "+", "start": 0, "end": {raw}}}]}}')
        _refused(r, 400, "finite")
        _refused(_post_json(svc, base + f'"mask_times": [{raw}]}}'), 400, "finite")
        _refused(_post_form(svc, f'{{"mask_times": [{raw}]}}'), 400, "finite")
        box = f'{{"keyframes": [{{"box": [0, 0, {raw}, 10], "frame": 0}}]}}'
        _refused(_post_form(svc, box, masks=0), 400, "finite")
    ok = {"video_path": "clip.mp4", "mask_paths": ["mask.png"]}
    _refused(_post_json(svc, {**ok, "spans": ["+1-9"]}), 422, "spans[0]", "outside the clip")
    _refused(_post_json(svc, {**ok, "spans": ["-5-6"]}), 422, "spans[0]")
    _refused(_post_json(svc, {**ok, "mask_times": [9.5]}), 422, "time", "after the end")
    r = _post_json(svc, {**ok, "mask_frames": [100]})  # 4 s at 25 fps: frames 0-99
    _refused(r, 422, "frame", "100", "does not exist", "0-99")
    r = _post_form(svc, {"keyframes": [{"box": _box(svc), "frame": 5000}]}, masks=0)
    _refused(r, 422, "keyframes[0].frame", "does not exist")
    _refused(_post_json(svc, {**ok, "mask_frames": [-1]}), 400, "mask_frames")
    _refused(_post_json(svc, {**ok, "text": "x" * 1001}), 400, "text", "1000")
    _refused(_post_json(svc, {**ok, "spans": ["+0-1"] * 257}), 400, "spans", "256")
    many = {"video_path": "clip.mp4", "keyframes": [{"box": _box(svc)}] * 257}
    _refused(_post_json(svc, many), 400, "keyframes", "256")


def test_deep_json_and_nul_bytes(svc):
    deep = "[" * 5000 + "]" * 5000
    _refused(_post_json(svc, deep), 400, "nested too deeply")
    _refused(_post_json(svc, deep, "/v1/uploads"), 400, "nested too deeply")
    _refused(_post_json(svc, '{"video_path": ' + deep + "}"), 400, "nested too deeply")
    _refused(_post_form(svc, '{"spans": ' + deep + "}"), 400, "nested too deeply")
    _refused(_post_form(svc, {"text": "a\x00b"}), 400, "text", "NUL")
    _refused(_post_json(svc, '{"video_path": "\\ud800"}'), 400, "video_path")
    _refused(_post_json(svc, "[1, 2"), 400, "not valid JSON")


def test_a_stalled_body_is_cut_off(svc):
    """A client that announces more body than it sends gets a 408 after the default 30 s,
    instead of holding a connection and a staging folder forever."""
    with socket.create_connection(("127.0.0.1", svc.server.port)) as s:
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        s.sendall(head.encode() + b'{"video_path": ')
        s.settimeout(60)
        t0 = time.monotonic()
        reply = b""
        while chunk := s.recv(65536):  # until the server closes the connection
            reply += chunk
        waited = time.monotonic() - t0
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "stalled for 30 s" in reply and 25 < waited < 45, (waited, reply)


def _wait(svc, job_id: str, timeout: float = 300) -> dict:
    def done():
        r = httpx.get(f"{svc.server.url}/v1/jobs/{job_id}", headers=AUTH, timeout=10)
        doc = r.json() if r.status_code == 200 else None
        return doc if doc and doc["state"] in ("succeeded", "failed", "cancelled") else None

    return wait_for(done, timeout, f"job {job_id}", 0.5)


def test_delete_frees_a_finished_job_and_healthz_hides_workers(svc):
    r = _post_form(svc, {"keyframes": [{"box": _box(svc), "frame": 0}], "mode": "isolate"}, 0)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert _wait(svc, job_id)["state"] == "succeeded"
    folder = svc.root / "jobs" / job_id
    assert (folder / "outputs" / "target.wav").is_file()
    r = httpx.delete(f"{svc.server.url}/v1/jobs/{job_id}", headers=AUTH)
    assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
    assert not folder.exists() and not list((svc.root / "jobs").glob(".deleted-*"))
    _refused(httpx.get(f"{svc.server.url}/v1/jobs/{job_id}", headers=AUTH), 404, "no job")
    _refused(httpx.delete(f"{svc.server.url}/v1/jobs/{job_id}", headers=AUTH), 404, "no job")

    r = httpx.get(f"{svc.server.url}/healthz", timeout=10)
    assert r.status_code == 200 and r.json()["worker_count"] >= 1
    assert "workers" not in r.json() and "hostile@test" not in r.text
    r = httpx.get(f"{svc.server.url}/healthz", headers=AUTH, timeout=10)
    assert "hostile@test" in r.json()["workers"]
    r = httpx.request("OPTIONS", f"{svc.server.url}/v1/jobs/{job_id}")
    assert r.status_code == 204 and {"GET", "DELETE"} <= set(r.headers["allow"].split(", "))


def test_broker_unreachable_at_submit_answers_503_and_leaves_nothing(svc, tmp_path):
    env = default_env(tmp_path, svc.redis)
    env.update(
        SONOMASK_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
        SONOMASK_MEDIA_ROOT=str(svc.media),
    )
    api = Server(env, tmp_path / "api.log")
    try:
        body = {"video_path": "clip.mp4", "mask_paths": ["mask.png"]}
        r = httpx.post(f"{api.url}/v1/jobs", json=body, headers=AUTH, timeout=120)
        _refused(r, 503, "the job queue (broker) is unreachable; try again shortly")
        files = [("video", ("c.mp4", (svc.media / "clip.mp4").read_bytes(), "video/mp4"))]
        files.append(("mask", ("m.png", (svc.media / "mask.png").read_bytes(), "image/png")))
        r = httpx.post(f"{api.url}/v1/jobs", files=files, headers=AUTH, timeout=120)
        _refused(r, 503, "broker")
        assert list((tmp_path / "jobs").iterdir()) == []
    finally:
        api.stop()


def test_an_api_killed_mid_upload_leaves_no_staging_folder(svc, tmp_path):
    env = default_env(tmp_path, svc.redis)
    jobs = tmp_path / "jobs"
    api = Server(env, tmp_path / "api.log")
    dead = jobs / ".upload-0123456789abcdef"  # as an API killed while saving would leave it
    dead.mkdir(parents=True)
    (dead / ".owner.lock").touch()
    (dead / "video.mp4").write_bytes(b"x" * 1000)
    live = jobs / ".upload-live00000000000"  # owned by a live process: must survive
    live.mkdir()
    lock = os.open(live / ".owner.lock", os.O_CREAT | os.O_WRONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    s = socket.create_connection(("127.0.0.1", api.port))
    try:
        head = (
            f"POST /v1/uploads?name=big.mp4 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"{TOKEN}\r\nContent-Type: video/mp4\r\nContent-Length: 50000000\r\n\r\n"
        )
        s.sendall(head.encode() + b"\x00" * 2_000_000)
        wait_for(lambda: list(jobs.glob(".uploads/.tmp-*/big.mp4")), 30, "the staged upload")
        os.killpg(api.proc.pid, signal.SIGKILL)
        api.proc.wait(10)
        assert list(jobs.glob(".uploads/.tmp-*")) and dead.exists()
        api = Server(env, tmp_path / "api.log")
        assert list(jobs.glob(".uploads/.tmp-*")) == []
        assert not dead.exists() and live.exists()
    finally:
        s.close()
        os.close(lock)
        api.stop()


def _post_objects_form(svc, spec: dict | str, parts: list[tuple[str, str]]) -> httpx.Response:
    """A multipart job with named file parts: (field name, which mask: 'a' or 'b')."""
    masks = {
        "a": cv2.imencode(".png", first_mask(svc.scene, "a"))[1].tobytes(),
        "b": cv2.imencode(".png", first_mask(svc.scene, "b"))[1].tobytes(),
    }
    files = [("video", ("clip.mp4", (svc.media / "clip.mp4").read_bytes(), "video/mp4"))]
    files += [(name, ("m.png", masks[which], "image/png")) for name, which in parts]
    raw = spec if isinstance(spec, str) else json.dumps(spec)
    return httpx.post(
        f"{svc.server.url}/v1/jobs", headers=AUTH, files=files, data={"spec": raw}, timeout=60
    )


BAD_LABELS = ["../x", "", "a/b", "x" * 300, "a\u202eb", "a\x00b", "a\nb", ".hidden", "résumé"]


def test_several_objects_fields_are_attacked(svc):
    before = _job_folders(svc)
    # Paths in an object's mask_paths / keyframes get the same one answer as the top level's.
    fields = {
        "objects[0].mask_paths[0]": lambda t: {
            "video_path": "clip.mp4",
            "objects": [{"label": "ball", "mask_paths": [t]}],
        },
        "objects[0].keyframes[0].mask": lambda t: {
            "video_path": "clip.mp4",
            "objects": [{"label": "ball", "keyframes": [{"mask": t, "frame": 0}]}],
        },
    }
    for field, body in fields.items():
        answers = {_refused(_post_json(svc, body(t)), 403, field) for t in TARGETS}
        assert len(answers) == 1, answers
    secret = str(svc.outside / "secret.png")
    json_cases = [
        ({"objects": [{"label": "ball", "masks": [secret]}]}, 400, "objects[0].mask_paths"),
        ({"objects": [{"label": "ball", "boxes": [_box(svc)]}]}, 202, None),
        (
            {"mask_paths": ["mask.png"], "objects": [{"label": "b", "boxes": [_box(svc)]}]},
            400,
            "not",
        ),
        ({"objects": "ball"}, 400, "objects"),
        ({"objects": [{"label": "a", "boxes": [_box(svc)]}] * 17}, 400, "objects"),
    ]
    for label in BAD_LABELS:  # (a NUL is refused before any field is read)
        words = "NUL" if "\x00" in label else "label"
        json_cases.append(({"objects": [{"label": label, "boxes": [_box(svc)]}]}, 400, words))
    json_cases.append(
        (
            {
                "objects": [
                    {"label": "Ball", "boxes": [_box(svc)]},
                    {"label": "ball", "boxes": [_box(svc)]},
                ]
            },
            400,
            "labels must differ",
        )
    )
    json_cases.append(({"objects": [{"label": "residual", "boxes": [_box(svc)]}]}, 400, "reserved"))
    accepted = []
    for extra, status, words in json_cases:
        r = _post_json(svc, {"video_path": "clip.mp4", **extra})
        if status == 202:
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        else:
            _refused(r, status, *([words] if words else []))
    # Multipart: masks only as mask:<label> parts of objects the spec names.
    objects = {"objects": [{"label": "ball"}, {"label": "box"}]}
    form_cases = [
        (objects, [("mask:ball", "a"), ("mask:drum", "b")], "names no object"),
        (objects, [("mask:ball", "a"), ("mask:../../etc/passwd", "b")], "names no object"),
        (objects, [("mask", "a"), ("mask:box", "b")], "not 'mask'"),
        ({}, [("mask:ball", "a")], "spec.objects"),
        ({"objects": [{"label": "ball", "masks": [secret]}]}, [], "objects[0].masks"),
        ({"objects": [{"label": "ball", "mask_paths": [secret]}]}, [], "objects[0].mask_paths"),
        (
            {"objects": [{"label": "ball", "keyframes": [{"mask": secret, "frame": 0}]}]},
            [],
            "objects[0].keyframes[0].mask",
        ),
        (objects, [("mask:ball", "a")], "draw object 'box'"),
    ]
    for spec, parts, words in form_cases:
        _refused(_post_objects_form(svc, spec, parts), 400, words)
    assert _job_folders(svc) - before == set(accepted), "a refused request left a job behind"
    # And the good form runs: two objects, one stem each, listed per object.
    r = _post_objects_form(
        svc,
        {"objects": [{"label": "ball", "mask_frames": [0]}, {"label": "box"}], "mode": "isolate"},
        [("mask:ball", "a"), ("mask:box", "b")],
    )
    assert r.status_code == 202, r.text
    doc = _wait(svc, r.json()["id"])
    assert doc["state"] == "succeeded", doc
    assert [o["label"] for o in doc["objects"]] == ["ball", "box"]
    assert "objects/ball/target.wav" in doc["objects"][0]["outputs"]
    assert {"residual.wav", "stems.mkv", "objects/box/target.wav"} <= set(doc["outputs"])
    url = f"{svc.server.url}/v1/jobs/{doc['id']}/outputs"
    got = httpx.get(f"{url}/objects/box/target.wav", headers=AUTH, timeout=60)
    assert got.status_code == 200 and got.content[:4] == b"RIFF"
    # Only listed outputs are served: encoded climbs reach the server as '..' and miss.
    for name in (
        "objects%2F..%2F..%2Fspec.json",
        "objects/%2E%2E/%2E%2E/spec.json",
        "objects/ball/%2E%2E/%2E%2E/inputs/mask-0-0.png",
        "objects/zzz/target.wav",
        "spec.json",
    ):
        assert httpx.get(f"{url}/{name}", headers=AUTH, timeout=60).status_code == 404, name
    for job_id in accepted:
        _wait(svc, job_id)


def test_timeline_matte_project_and_preview_fields_are_attacked(svc):
    """The interchange fields (issue 16) and ``preview`` (issue 18): wrong types, unknown
    and path-like values, huge sizes, control characters, non-finite numbers: one line
    each, nothing left behind."""
    before = _job_folders(svc)
    ok = {"video_path": "clip.mp4", "mask_paths": ["mask.png"]}
    cases = [
        ({"timeline": ["otio", "../../etc/passwd"]}, 400, "timeline"),
        ({"timeline": "otio,/etc/passwd"}, 400, "timeline"),
        ({"timeline": ["otio"] * 5000}, 400, "timeline"),
        ({"timeline": [1, 2]}, 400, "timeline"),
        ({"timeline": {"otio": True}}, 400, "timeline"),
        ({"timeline": "x" * 100_000}, 400, "timeline"),
        ({"matte_format": "prores4444; rm -rf /"}, 400, "matte_format"),
        ({"matte_format": ["grey"]}, 400, "matte_format"),
        ({"matte_format": None}, 400, "matte_format"),
        ({"project": "p" * 201}, 400, "project"),
        ({"project": "a\nb"}, 400, "project", "control"),
        ({"project": 12}, 400, "project"),
        ({"project": ["x"]}, 400, "project"),
        ({"preview": "yes please"}, 400, "preview"),
        ({"preview": [True]}, 400, "preview"),
    ]
    for extra, status, *words in cases:
        _refused(_post_json(svc, {**ok, **extra}), status, *words)
        _refused(_post_form(svc, extra), status, *words)
    base = '{"video_path": "clip.mp4", "mask_paths": ["mask.png"], '
    for raw in ("NaN", "Infinity", "1e309"):
        _refused(_post_json(svc, base + f'"preview": {raw}}}'), 400)
        _refused(_post_json(svc, base + f'"project": {raw}}}'), 400)
    assert _job_folders(svc) == before
    # The legitimate forms are taken (and normalised the way the CLI does).
    r = _post_json(
        svc,
        {**ok, "timeline": "otio, EDL", "matte_format": "prores4444", "project": "Ep. 1 é"},
    )
    assert r.status_code == 202, r.text
    doc = httpx.delete(f"{svc.server.url}/v1/jobs/{r.json()['id']}", headers=AUTH, timeout=60)
    assert doc.status_code in (200, 202, 204, 409), doc.text
