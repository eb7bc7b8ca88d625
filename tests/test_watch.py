"""`sonomask watch`: real watcher processes, real copies written slowly, real ffmpeg clips.

The main test runs with the settings a user gets (no SONOMASK_WATCH_* set: a file is taken
5 s after it stopped changing and once no writer has it open); the hostile-input test
shortens the settle time through its option (the mechanism, not the proof); the queue test
goes through a real Redis and real `sonomask worker` processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import cv2
import pytest
import soundfile as sf
import yaml
from conftest import SONOMASK, decode_audio
from scene import first_mask, make_scene, write_clip
from service import Redis, Worker, free_port, service_env, wait_for

from worker.jobs import webhooks

DOCKER = Path(__file__).resolve().parent.parent / "docker"
DONE = re.compile(r"^(?P<name>.+?): (?:already )?done -> ")
TAKEN = re.compile(r"^(?P<name>.+?): (?P<how>taken|resuming), job (?P<job>watch-[0-9a-f]{16}) ")
FAILED = re.compile(r"^(?P<name>.+?): failed: (?P<reason>.*)$")
OUTPUTS = {  # at least these (other options add more); the folder holds what job.json lists
    "target.wav",
    "residual.wav",
    "isolated.mp4",
    "removed.mp4",
    "masks.npz",
    "preview.mp4",
    "job.json",
}

# A copy in progress, as a separate process: the sidecar mask first, then the clip in
# chunks over time, either held open throughout (like cp; "pause" seconds after chunk
# "pause_at") or opened again for every chunk (a writer /proc cannot catch between
# chunks: only the settle time guards against it). It notes when the copy ended.
WRITER = r"""
import json, os, sys, time
plan = json.loads(sys.argv[1])
time.sleep(plan["delay"])
for src, dst in plan["sidecars"]:
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(f.read())
data = open(plan["src"], "rb").read()
n = plan["chunks"]
step = -(-len(data) // n)
if plan["held"]:
    with open(plan["dst"], "wb") as out:
        for i in range(n):
            out.write(data[i * step : (i + 1) * step])
            out.flush()
            if i < n - 1:
                time.sleep(plan["pause"] if i == plan["pause_at"] else plan["gap"])
else:
    for i in range(n):
        with open(plan["dst"], "ab") as out:
            out.write(data[i * step : (i + 1) * step])
        if i < n - 1:
            time.sleep(plan["gap"])
with open(plan["mark"], "w") as f:
    f.write(repr(time.time()))
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three tiny clips (64x48, 1.2-1.6 s, stereo AAC, moov at the end: a partial copy does
    not probe) and their first-frame masks."""
    root = tmp_path_factory.mktemp("watch-media")
    out = []
    for i, dur in enumerate((1.2, 1.4, 1.6)):
        scene = make_scene(duration=dur, width=64, height=48, fps=25.0, seed=i + 1)
        video, mask = root / f"src{i}.mp4", root / f"src{i}.png"
        write_clip(scene, video, stereo=True)
        cv2.imwrite(str(mask), first_mask(scene, "a"))
        out.append((video, mask, decode_audio(video)[0].shape[0]))
    return out


class Watch:
    """A real `sonomask watch` process; its stdout lines recorded with the time they came."""

    def __init__(self, args: list[str], env: dict[str, str], lines: list[tuple[float, str]]):
        self.lines = lines
        self.proc = subprocess.Popen(
            [SONOMASK, "watch", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.reader.join(5)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.reader.join(5)
        return rc


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONOMASK_")}
    return {**env, "SONOMASK_WORKSPACE": str(tmp_path / "jobs"), **extra}


def _matches(lines, pattern):
    return [(t, m) for t, line in lines if (m := pattern.match(line))]


def _results(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


@pytest.mark.slow
def test_ten_slow_copies_each_processed_once_across_a_sigkill_with_the_defaults(clips, tmp_path):
    inbox, out, marks = tmp_path / "in", tmp_path / "out", tmp_path / "marks"
    for d in (inbox, marks):
        d.mkdir()
    env = _env(tmp_path)  # no SONOMASK_WATCH_*: the defaults a user gets
    lines: list[tuple[float, str]] = []
    first = Watch([str(inbox), "--out", str(out), "--local"], env, lines)
    writers, expected = [], {}
    for i in range(10):
        video, mask, samples = clips[i % 3]
        name = f"clip{i:02d}.mp4"
        expected[name] = samples
        plan = {
            "delay": 1.5 * i,
            "sidecars": [[str(mask), str(inbox / f"clip{i:02d}.mask.png")]],
            "src": str(video),
            "dst": str(inbox / name),
            "chunks": 6,
            "gap": 0.4,
            # Three copies stall for 7-15 s (longer than the 5 s settle time) holding the
            # file open: only the open-writer check keeps the watcher off them. (The last
            # one also keeps a copy in progress until well after the kill below.)
            "held": i != 4,
            "pause_at": 2 if i in (1, 8, 9) else -1,
            "pause": 15.0 if i == 9 else 7.0,
            "mark": str(marks / name),
        }
        if i == 4:  # reopened for every chunk, 2 s apart: the settle time alone guards it
            plan["gap"] = 2.0
        writers.append(subprocess.Popen([sys.executable, "-c", WRITER, json.dumps(plan)]))
    # A file that is no video (with a proper mask sidecar) lands in _failed/.
    (inbox / "bad.mask.png").write_bytes(clips[0][1].read_bytes())
    (inbox / "bad.mp4").write_text("this is a shopping list, not a video\n" * 50)

    # SIGKILL the watcher halfway: some clips done, copies still going, and one job running
    # with its first stage written in its work folder.
    def halfway():
        done = len(_matches(lines, DONE))
        running = TAKEN.match(lines[-1][1]) if lines else None
        started = running and (tmp_path / "jobs" / running["job"] / "probe.json").exists()
        return done >= 2 and started and any(w.poll() is None for w in writers)

    try:
        wait_for(halfway, 150, "half of the clips", interval=0.02)
    except TimeoutError:
        print("\n".join(f"{t - lines[0][0]:.2f} {x}" for t, x in lines))
        raise
    first.kill()
    killed_at = time.time()
    done_before = {m["name"] for _, m in _matches(lines, DONE)}
    ended = done_before | {m["name"] for _, m in _matches(lines, FAILED)}
    in_flight = [m["name"] for _, m in _matches(lines, TAKEN) if m["name"] not in ended]
    copying = sum(1 for w in writers if w.poll() is None)
    assert len(done_before) < 10 and copying >= 1
    job_of = {m["name"]: m["job"] for _, m in _matches(lines, TAKEN)}
    cut = [n for n in in_flight if (tmp_path / "jobs" / job_of[n]).is_dir()]
    assert len(cut) == 1, (in_flight, cut)  # killed in the middle of one job

    second = Watch([str(inbox), "--out", str(out), "--local"], env, lines)

    def finished():
        names = {m["name"] for _, m in _matches(lines, DONE)}
        return names >= set(expected) and _matches(lines, FAILED)

    wait_for(finished, 240, "every clip", interval=0.2)
    for w in writers:
        assert w.wait(10) == 0
    settled_lines = len(lines)
    time.sleep(7)  # longer than the settle time: nothing is taken again
    assert len(lines) == settled_lines, lines[settled_lines:]
    assert second.stop() == 0

    # Each clip done exactly once, one job per clip; the one in flight resumed, not redone.
    done = [m["name"] for _, m in _matches(lines, DONE)]
    assert sorted(done) == sorted(expected), done
    taken = _matches(lines, TAKEN)
    jobs = {}
    for _, m in taken:
        jobs.setdefault(m["name"], set()).add(m["job"])
        if m["how"] == "resuming":  # only what the kill interrupted, in the same job
            assert m["name"] not in done_before, m.group(0)
    assert set(jobs) == {*expected, "bad.mp4"}
    assert all(len(ids) == 1 for ids in jobs.values()), jobs
    fresh = [m["name"] for _, m in taken if m["how"] == "taken"]
    assert len(fresh) == len(set(fresh)), fresh  # nobody taken twice
    # Nothing taken before its copy ended and then 5 s of quiet (the defaults).
    for t, m in taken:
        if m["name"] in expected:
            ended = float((marks / m["name"]).read_text())
            assert t >= ended + 5.0, (m["name"], t - ended)
    # One complete result folder per clip, made from the whole file.
    assert _results(out) == sorted(n[:-4] for n in expected)
    for name, samples in expected.items():
        folder = out / name[:-4]
        assert _published(folder) >= OUTPUTS, folder
        assert json.loads((folder / "job.json").read_text())["id"] in jobs[name]
        assert sf.info(str(folder / "target.wav")).frames == samples
    # The bad file: failed once with the CLI's own reason; nothing else failed.
    assert [p.name for p in (out / "_failed").iterdir()] == ["bad.txt"]
    reason = (out / "_failed" / "bad.txt").read_text()
    assert reason.startswith("bad.mp4 is a text file, not a video") and reason.count("\n") == 1
    assert [m["name"] for _, m in _matches(lines, FAILED)] == ["bad.mp4"]
    # Nothing left over: no work folders, no job workspaces.
    assert list((out / ".sonomask-watch" / "work").iterdir()) == []
    assert not (tmp_path / "jobs").exists() or list((tmp_path / "jobs").iterdir()) == []
    state = json.loads((out / ".sonomask-watch" / "state.json").read_text())["clips"]
    assert {n: e["state"] for n, e in state.items()} == {
        **{n: "done" for n in expected},
        "bad.mp4": "failed",
    }
    resumed = [m["name"] for _, m in taken if m["how"] == "resuming"]
    assert resumed == cut  # the same job carried on from its work folder:
    manifest = json.loads((out / cut[0][:-4] / "job.json").read_text())
    assert datetime.fromisoformat(manifest["created"]).timestamp() <= killed_at
    print(
        f"killed {killed_at - lines[0][0]:.1f} s in with {len(done_before)} done, "
        f"{in_flight} running ({cut} with a work folder), {copying} copies in progress; "
        f"resumed {resumed}; "
        f"all 10 done after {lines[-1][0] - lines[0][0]:.1f} s"
    )


def _published(folder: Path) -> set[str]:
    """The files of a results folder, checked to be exactly the outputs its job.json lists."""
    names = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
    assert names == set(json.loads((folder / "job.json").read_text())["outputs"]), folder
    return names


def _drop(inbox: Path, name: str, data: bytes) -> None:
    tmp = inbox / f".{name}.part"
    tmp.write_bytes(data)
    os.replace(tmp, inbox / name)


@pytest.mark.slow
def test_hostile_inputs_fail_with_their_reason_and_the_watcher_goes_on(clips, tmp_path):
    root, inbox, out = tmp_path, tmp_path / "in", tmp_path / "out"
    (inbox / "sub").mkdir(parents=True)
    video, mask, samples = clips[0]
    clip, png = video.read_bytes(), mask.read_bytes()
    big = cv2.resize(cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE), (128, 96))
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(clip)
    (outside / "secret.png").write_bytes(png)
    cv2.imwrite(str(inbox / "wrongsize.mask.png"), big)
    _drop(inbox, "wrongsize.mp4", clip)
    _drop(inbox, "badjson.mask.png", png)
    _drop(inbox, "badjson.json", b'{"mode": "isolate",')
    _drop(inbox, "badjson.mp4", clip)
    _drop(inbox, "text.mask.png", png)
    _drop(inbox, "text.mp4", b"not a video at all\n")
    _drop(inbox, "outside.mask.png", png)
    os.symlink(outside / "secret.mp4", inbox / "outside.mp4")
    os.symlink(outside / "secret.png", inbox / "sidelink.mask.png")
    _drop(inbox, "sidelink.mp4", clip)
    _drop(inbox, "escape.json", b'{"masks": ["../outside/secret.png"]}')
    _drop(inbox, "escape.mp4", clip)
    _drop(inbox, "absolute.json", json.dumps({"masks": [str(outside / "secret.png")]}).encode())
    _drop(inbox, "absolute.mp4", clip)
    _drop(inbox, "model.mask.png", png)
    _drop(inbox, "model.json", b'{"separator": "sam-audio", "model": "/etc"}')
    _drop(inbox, "model.mp4", clip)
    _drop(inbox, "video.mask.png", png)
    _drop(inbox, "video.json", b'{"video": "/etc/passwd"}')
    _drop(inbox, "video.mp4", clip)
    _drop(inbox, "nomask.mp4", clip)
    os.mkfifo(inbox / "fifo.mp4")
    _drop(inbox, "fifo.mask.png", png)
    _drop(inbox, "_failed.mp4", clip)
    # Fine ones among them: keyframe sidecars, a spec sidecar, a link that stays inside,
    # a name with a newline in it.
    _drop(inbox, "kf.mask.png", png)
    _drop(inbox, "kf.mask_10.png", png)
    _drop(inbox, "kf.mp4", clip)
    _drop(inbox, "iso.mask.png", png)
    hook = HTTPServer(("127.0.0.1", free_port()), _Hook)
    _Hook.secret, _Hook.got = "local-secret", []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/iso"
    _drop(inbox, "iso.json", json.dumps({"mode": "isolate", "webhook": url}).encode())
    _drop(inbox, "iso.mp4", clip)
    (inbox / "sub" / "real.mp4").write_bytes(clip)
    os.symlink(inbox / "sub" / "real.mp4", inbox / "inlink.mp4")
    _drop(inbox, "inlink.mask.png", png)
    _drop(inbox, "new\nline.mask.png", png)
    _drop(inbox, "new\nline.mp4", clip)

    lines: list[tuple[float, str]] = []
    args = [str(inbox), "--out", str(out), "--local", "--settle", "0.5", "--interval", "0.2"]
    env = _env(tmp_path, SONOMASK_WEBHOOK_SECRET="local-secret", SONOMASK_WEBHOOK_ALLOW="127.0.0.1")
    w = Watch(args, env, lines)
    reasons = {
        "wrongsize": "wrongsize.mask.png is 128x96 but the video is 64x48",
        "badjson": "badjson.json is not JSON",
        "text": "text.mp4 is a text file, not a video",
        "outside": "outside.mp4 is a link to a file outside the watch folder",
        "sidelink": "sidelink.mask.png is a link to a file outside the watch folder",
        "escape": "must be a path inside the watch folder",
        "absolute": "must be a path inside the watch folder",
        "model": "model '/etc'",
        "video": "'video' is the watch folder's to set",
        "nomask": "no mask for nomask.mp4: drop nomask.mask.png beside it",
        "fifo": "fifo.mp4 is not a regular file",
        "_failed.mp4": "reserved",
    }
    good = {"kf", "iso", "inlink", "new_line"}
    wait_for(
        lambda: (
            len(_matches(lines, FAILED)) >= len(reasons) and len(_matches(lines, DONE)) >= len(good)
        ),
        180,
        "every hostile file",
    )
    assert w.proc.poll() is None  # still watching
    for name, words in reasons.items():
        text = (out / "_failed" / f"{name}.txt").read_text()
        assert words in text and text.count("\n") == 1, (name, text)
    assert sorted(p.stem for p in (out / "_failed").iterdir()) == sorted(reasons)
    assert _results(out) == sorted(good)
    assert (
        json.loads((out / "kf" / "job.json").read_text())["params"]["keyframes"][1]["frame"] == 10
    )
    iso = _published(out / "iso")
    assert "isolated.mp4" in iso and "removed.mp4" not in iso
    wait_for(lambda: _Hook.got, 10, "the local job's signed webhook")
    hook.shutdown()
    assert [(d["name"], d["state"]) for d in _Hook.got] == [("iso.mp4", "succeeded")]
    assert _Hook.got[0]["id"] == json.loads((out / "iso" / "job.json").read_text())["id"]
    # Every line is one line: the newline in a name is shown escaped.
    assert any(line.startswith("new\\nline.mp4: done -> ") for _, line in lines), lines
    # Nothing outside the folder was read into a job.
    for folder in (out / ".sonomask-watch" / "work").glob("*"):
        assert not list(folder.rglob("secret*")), folder

    # Fixed: a mask of the right size is a new request for that clip; its failure is gone.
    n = len(lines)
    _drop(inbox, "wrongsize.mask.png", png)
    wait_for(lambda: any(DONE.match(x) for _, x in lines[n:]), 60, "the fixed clip")
    assert not (out / "_failed" / "wrongsize.txt").exists()
    assert sf.info(str(out / "wrongsize" / "target.wav")).frames == samples
    # And a restart takes nothing again.
    assert w.stop() == 0
    n = len(lines)
    w = Watch(args, env, lines)
    time.sleep(4)
    assert w.stop() == 0
    again = [x for _, x in lines[n:] if TAKEN.match(x) or FAILED.match(x) or DONE.match(x)]
    assert again == [], again


class _Hook(BaseHTTPRequestHandler):
    secret = ""
    got: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            webhooks.verify(body, self.headers.get(webhooks.SIGNATURE_HEADER), self.secret)
        except webhooks.SignatureError:
            self.send_response(400)
        else:
            _Hook.got.append(json.loads(body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_through_the_queue_a_restart_follows_the_jobs_it_queued(clips, tmp_path):
    """Real Redis and `sonomask worker`: the watcher SIGKILLed once every clip is queued
    and started again resubmits nothing; each job's signed webhook arrives once."""
    redis = Redis(tmp_path / "redis")
    redis.start()
    secret = "watch-hook-secret"
    hook = HTTPServer(("127.0.0.1", free_port()), _Hook)
    _Hook.secret, _Hook.got = secret, []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = service_env(
        tmp_path,
        redis,
        SONOMASK_WEBHOOK_SECRET=secret,
        SONOMASK_WEBHOOK_ALLOW="127.0.0.1",
    )
    for k in ("SONOMASK_WATCH_SETTLE", "SONOMASK_WATCH_INTERVAL"):
        env.pop(k, None)
    worker = Worker(env, "cpu,gpu", "watchq@test", tmp_path / "worker.log", concurrency=2)
    inbox, out = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    default = tmp_path / "default.json"
    url = f"http://127.0.0.1:{hook.server_address[1]}/done"
    default.write_text(json.dumps({"mode": "both", "webhook": url}))
    try:
        worker.wait_ready()
        names = []
        for i, (video, mask, _) in enumerate(clips):
            names.append(f"q{i}.mp4")
            _drop(inbox, f"q{i}.mask.png", mask.read_bytes())
            _drop(inbox, f"q{i}.mp4", video.read_bytes())
        lines: list[tuple[float, str]] = []
        args = [str(inbox), "--out", str(out), "--spec", str(default)]
        first = Watch(args, env, lines)
        queued = re.compile(r"^(?P<name>.+?): queued, job (?P<job>watch-[0-9a-f]{16})$")
        wait_for(lambda: len(_matches(lines, queued)) == 3, 60, "three queued jobs")
        first.kill()
        done_before = len(_matches(lines, DONE))
        second = Watch(args, env, lines)
        wait_for(lambda: len(_matches(lines, DONE)) == 3, 240, "three results")
        wait_for(lambda: len(_Hook.got) >= 3, 30, "three webhooks")
        time.sleep(3)
        assert second.stop() == 0
    finally:
        worker.stop()
        redis.stop()
        hook.shutdown()
    jobs = {m["name"]: m["job"] for _, m in _matches(lines, queued)}
    assert sorted(jobs) == names and len(_matches(lines, queued)) == 3, lines  # once each
    assert sorted(m["name"] for _, m in _matches(lines, DONE)) == names
    # One job per clip in the shared workspace: the restart created none.
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == sorted(jobs.values())
    assert _results(out) == ["q0", "q1", "q2"]
    for i, (_, _, samples) in enumerate(clips):
        folder = out / f"q{i}"
        assert _published(folder) >= OUTPUTS
        assert json.loads((folder / "job.json").read_text())["id"] == jobs[f"q{i}.mp4"]
        assert sf.info(str(folder / "target.wav")).frames == samples
    # Each job's end arrived once, signed (the receiver refuses anything else).
    assert sorted(d["id"] for d in _Hook.got) == sorted(jobs.values())
    assert {d["state"] for d in _Hook.got} == {"succeeded"}
    print(f"{done_before} done before the kill; 3 jobs, 3 results, 3 signed webhooks")


def test_writers_are_found_in_proc_and_readers_are_not(tmp_path):
    """The open-writer check on its own: another process holding a file open for writing
    (append, read-write) is seen; one reading it is not; once it closes, nothing is."""
    from worker.watch import open_for_writing

    files = {mode: tmp_path / f"{mode}.bin" for mode in ("ab", "r+b", "rb")}
    for f in files.values():
        f.write_bytes(b"x")
    hold = "import sys, time\nfs = [open(p, m) for p, m in zip(sys.argv[1::2], sys.argv[2::2])]\n"
    hold += "print('open', flush=True)\ntime.sleep(60)\n"
    args = [a for mode, f in files.items() for a in (str(f), mode)]
    proc = subprocess.Popen([sys.executable, "-c", hold, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "open"
        paths = {str(f.resolve()) for f in files.values()}
        assert open_for_writing(paths) == {str(files["ab"].resolve()), str(files["r+b"].resolve())}
    finally:
        proc.kill()
        proc.wait()
    assert open_for_writing(paths) == set()


def test_the_compose_file_runs_the_watch_folder_as_a_service():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    watch = compose["services"]["watch"]
    assert watch["command"][:2] == ["sonomask", "watch"]
    assert "--out" in watch["command"] and "--local" not in watch["command"]
    assert "jobs:/data/jobs" in watch["volumes"]  # the queue's shared workspace
    assert watch["environment"]["SONOMASK_WORKSPACE"] == "/data/jobs"
    assert watch["restart"] == "unless-stopped"
    common = compose["x-common"]["environment"]
    assert common["SONOMASK_WEBHOOK_SECRET"] == "${SONOMASK_WEBHOOK_SECRET:-}"
