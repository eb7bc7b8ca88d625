"""Several objects in one job (issue 15): the spec and its labels, the CLI's --object groups
and --spec file, tracking with exclusive masks, separation with the classical backend, the
stems and the multitrack file, on generated media with real ffmpeg.

The scene (``examples/objects_scene.py``) has three sounding on-screen objects and one
off-screen bell: one three-object job against three one-object jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, decode_audio, run_cli

sys.path.insert(0, str(ROOT / "examples"))
from objects_scene import LABELS, make_crossing, make_trio, write_trio  # noqa: E402

from vision.metrics import boundary_f, region_similarity  # noqa: E402
from worker.errors import BadInput  # noqa: E402
from worker.media import stream_md5  # noqa: E402
from worker.spec import DEFAULT_LABEL, JobSpec  # noqa: E402


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    est, ref = est.astype(np.float64), ref.astype(np.float64)
    a = est @ ref / (ref @ ref + 1e-12)
    e = est - a * ref
    return float(10 * np.log10((a * a * (ref @ ref)) / (e @ e + 1e-12)))


# --------------------------------------------------------------------------- spec


def test_the_single_object_form_is_one_object_labelled_object():
    spec = JobSpec.build(video="v.mp4", masks=["m.png"], text="a dog", spans=["+0-1"])
    assert not spec.several and spec.objects == []
    (one,) = spec.targets()
    assert (one.label, one.text, len(one.keyframes)) == (DEFAULT_LABEL, "a dog", 1)


def test_each_object_takes_the_per_object_forms_the_top_level_takes():
    spec = JobSpec.build(
        video="v.mp4",
        objects=[
            {"label": "ball", "masks": ["a.png", "b.png"], "mask_times": [0, 1.5]},
            {"label": "box", "boxes": ["1,2,30,40"], "mask_frames": [3], "spans": ["+1-2"]},
            {"label": "mouth", "keyframes": [{"box": "0,0,9,9", "frame": 2}], "text": " hum "},
        ],
    )
    ball, box, mouth = spec.targets()
    assert [k.time for k in ball.keyframes] == [0, 1.5]
    assert box.keyframes[0].frame == 3 and str(box.spans[0]) == "+1-2"
    assert mouth.text == "hum"
    assert spec.input_files()[1:] == [type(spec.input_files()[0])(p) for p in ("a.png", "b.png")]


@pytest.mark.parametrize(
    "label",
    ["../x", "", "a/b", "a\\b", "x" * 41, "a\x07b", "a\u202eb", "tab\there", ".x", "x.", "ünï"],
)
def test_labels_that_cannot_name_a_folder_or_a_track_are_refused(label):
    with pytest.raises(BadInput) as e:
        JobSpec.build(video="v", objects=[{"label": label, "masks": ["m"]}])
    assert "label" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"objects": [{"label": "a", "masks": ["m"]}, {"label": "A", "masks": ["m"]}]}, "differ"),
        ({"objects": [{"label": "Residual", "masks": ["m"]}]}, "reserved"),
        ({"objects": [{"label": "a", "masks": ["m"]}], "masks": ["m"]}, "not masks"),
        ({"objects": [{"label": "a", "masks": ["m"]}], "text": "x"}, "not text"),
        ({"objects": [{"label": "a"}]}, "draw object 'a'"),
        ({"objects": [{"label": "a", "masks": ["m"], "mask_frames": [0, 1]}]}, "1 mask"),
        ({"objects": [{"label": f"o{i}", "masks": ["m"]} for i in range(17)]}, "16"),
        ({"masks": ["m"], "object_videos": True}, "need objects"),
        ({"objects": [{"label": "a", "masks": ["m"], "video": "x"}]}, "extra"),
    ],
)
def test_bad_groupings_get_one_line(fields, words):
    with pytest.raises(BadInput) as e:
        JobSpec.build(video="v", **fields)
    assert words.lower() in str(e.value).lower() and "\n" not in str(e.value)


# --------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--mask", "m.png", "--object", "a", "--mask", "m.png"], "after the --object"),
        (["--object", "a", "--mask", "m.png", "--object", "a", "--mask", "m.png"], "differ"),
        (["--object", "../etc", "--mask", "m.png"], "label"),
        (["--object"], "needs a LABEL"),
        (["--object", "a", "--mask"], "needs a value"),
        (["--object", "a", "--mask-frame", "x", "--mask", "m.png"], "--object 'a'"),
        (["--object-videos", "--mask", "m.png"], "need --object"),
        (["--spec", "nope.json"], "cannot read"),
    ],
)
def test_cli_bad_object_groupings_get_one_line(tmp_path, args, words):
    res = run_cli("separate", str(tmp_path / "v.mp4"), *args)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and words.lower() in line.lower(), line


def test_cli_track_refuses_objects(tmp_path):
    res = run_cli("track", "v.mp4", "--object", "a", "--mask", "m.png", "--out", "x.npz")
    assert res.returncode == 2 and "one object" in res.stderr


# --------------------------------------------------------------------------- tracking


@pytest.mark.parametrize("order", [("ball", "box"), ("box", "ball")])
def test_a_ball_crossing_in_front_of_a_box_leaves_both_exclusive_and_found(order):
    """No pixel in two masks at any frame, and both objects recovered after the crossing
    (J&F >= 0.9 each), whichever object is listed first."""
    from vision.choose import choose_tracker
    from vision.objects import ObjectKeyframes, track_objects

    c = make_crossing()
    n = round(c.duration * c.fps)
    frames, truth = [], {lb: [] for lb in order}
    for i in range(n):
        img, masks = c.frame(i)
        frames.append(img)
        for lb in order:
            truth[lb].append(masks[lb])
    frames = np.stack(frames)
    objs = [ObjectKeyframes(lb, masks={0: truth[lb][0] * 255}) for lb in order]
    outs = [np.zeros((n, c.height, c.width), np.uint8) for _ in objs]
    track_objects(lambda j: choose_tracker("flow"), frames, (c.width, c.height), objs, outs)
    assert not np.any(outs[0] & outs[1]), "a pixel is in two masks"
    after = range(int(0.8 * n), n)
    for j, lb in enumerate(order):
        jf = np.mean(
            [
                (region_similarity(outs[j][i], truth[lb][i]) + boundary_f(outs[j][i], truth[lb][i]))
                / 2
                for i in after
            ]
        )
        assert jf >= 0.9, (lb, jf)
    ball = outs[order.index("ball")]
    mid = n // 2  # the ball is over the box: it is in front, so it keeps its whole disc
    assert region_similarity(ball[mid], truth["ball"][mid]) >= 0.9


def test_objects_tracked_in_processes_are_the_masks_tracked_one_after_the_other(tmp_path, caplog):
    """The worker tracks the objects in processes (two per core) on its row files; each
    object's masks are exactly those of tracking them one after the other, the processes'
    progress reaches the caller, and they end cleanly (nothing on their stderr)."""
    from vision.choose import choose_tracker
    from vision.objects import ObjectKeyframes, track_objects
    from worker import arrays

    trio = make_trio(duration=2.0, width=320, height=180)
    bg = trio.background()
    n = round(trio.duration * trio.fps)
    frames = arrays.create_npy(tmp_path / "frames.npy", (n, 180, 320, 3), np.uint8)
    for i in range(n):
        frames.write(i, trio.frame(i, bg)[0][None])
    objs = [ObjectKeyframes(lb, masks={0: m}) for lb, m in trio.first_masks().items()]
    got = {}
    for procs in (1, 2):
        outs = [
            arrays.create_packed_masks(tmp_path / f"{o.label}{procs}.npy", n, (320, 180))
            for o in objs
        ]
        said: list[str] = []
        stats: dict = {}
        results, order = track_objects(
            lambda j: choose_tracker("flow"), frames, (320, 180), objs, outs,
            lambda f, m, said=said: said.append(m), processes=procs, stats=stats,
        )  # fmt: skip
        assert stats == {"processes": procs}  # they really ran in processes
        assert [r.tracker for r in results] == ["flow"] * 3
        assert any("'mouth' (3/3)" in m for m in said)
        got[procs] = ([o.read(0, n) for o in outs], order)
    for a, b in zip(got[1][0], got[2][0], strict=True):
        assert a.any() and np.array_equal(a, b)
    assert np.array_equal(got[1][1], got[2][1])
    assert not [r for r in caplog.records if r.name == "vision.track_process"]


class StubTracker:
    """A tracker for the process plumbing: writes its process id to ``pids/``, then either
    fails (``fail``), or sleeps ``sleep`` seconds in small steps, reporting progress."""

    name = "stub"

    def __init__(self, pids: Path, sleep: float = 0.0, fail: bool = False) -> None:
        self.pids, self.sleep, self.fail = Path(pids), sleep, fail

    def init(self, frames, size=None, out=None) -> None:
        self.out, self.n = out, len(frames)

    def add_mask(self, frame, mask) -> None:
        self.key = frame

    def add_box(self, frame, box) -> None:
        self.key = frame

    def propagate(self, progress=None):
        from vision.errors import MaskError
        from vision.tracker import Tracking

        (self.pids / str(os.getpid())).touch()
        if self.fail:
            raise MaskError("the stub lost the object")
        deadline = time.monotonic() + self.sleep
        while time.monotonic() < deadline:
            if progress is not None:
                progress(0.5, "waiting")
            time.sleep(0.05)
        return Tracking(self.out, self.name, ["stub warning"], frozenset({self.key}))


def _stub_objects(n: int) -> tuple[list, np.ndarray, list[np.ndarray]]:
    from vision.objects import ObjectKeyframes

    objs = [ObjectKeyframes(f"o{j}", masks={0: np.full((8, 8), 255, np.uint8)}) for j in range(n)]
    return objs, np.zeros((2, 8, 8, 3), np.uint8), [np.zeros((2, 8, 8), np.uint8) for _ in objs]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_tracker_error_in_a_process_is_raised_here(tmp_path):
    from vision.errors import MaskError
    from vision.objects import track_objects

    objs, frames, outs = _stub_objects(2)
    stats: dict = {}
    with pytest.raises(MaskError, match="the stub lost the object"):
        track_objects(
            lambda j: StubTracker(tmp_path, fail=j == 1), frames, (8, 8), objs, outs,
            processes=2, stats=stats,
        )  # fmt: skip
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert pids and os.getpid() not in pids and not any(_alive(p) for p in pids)


def test_a_task_that_does_not_pickle_is_tracked_here(tmp_path):
    from vision.objects import track_objects

    objs, frames, outs = _stub_objects(3)
    stats: dict = {}
    trackers = [StubTracker(tmp_path) for _ in objs]
    trackers[2].unpicklable = lambda: None
    results, _ = track_objects(
        lambda j: trackers[j], frames, (8, 8), objs, outs, processes=3, stats=stats
    )
    assert stats == {"processes": 1}
    assert [p.name for p in tmp_path.iterdir()] == [str(os.getpid())]
    assert [r.warnings for r in results] == [["stub warning"]] * 3


def test_processes_are_killed_when_the_caller_stops_waiting(tmp_path):
    """The progress callback raises (a queued stage whose lease was lost does): every
    tracking process is dead when the error reaches the caller."""
    from vision.objects import track_objects

    objs, frames, outs = _stub_objects(3)

    def report(f: float, m: str) -> None:
        if len(list(tmp_path.iterdir())) >= 2 and "waiting" in m:
            raise RuntimeError("lease lost")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="lease lost"):
        track_objects(
            lambda j: StubTracker(tmp_path, sleep=60), frames, (8, 8), objs, outs, report,
            processes=2,
        )  # fmt: skip
    assert time.monotonic() - t0 < 30
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(pids) == 2 and not any(_alive(p) for p in pids)


def test_processes_die_with_a_killed_caller(tmp_path):
    """SIGKILL to the process tracking (Celery's revoke with terminate, its hard time
    limit, the OOM killer): its tracking processes do not outlive it."""
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    script = f"""
import sys
sys.path[:0] = [{str(ROOT / "tests")!r}]
from test_objects import StubTracker, _stub_objects
from vision.objects import track_objects
objs, frames, outs = _stub_objects(2)
track_objects(lambda j: StubTracker({str(pids_dir)!r}, sleep=120), frames, (8, 8), objs,
              outs, processes=2)
"""
    caller = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while len(list(pids_dir.iterdir())) < 2:
            assert caller.poll() is None, "the caller exited"
            assert time.monotonic() < deadline, "the tracking processes did not start"
            time.sleep(0.1)
        pids = [int(p.name) for p in pids_dir.iterdir()]
        assert caller.pid not in pids and all(_alive(p) for p in pids)
    finally:
        caller.kill()
        caller.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "a tracking process outlived its caller"


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trio_jobs(tmp_path_factory):
    """One three-object job (CLI --object groups) and three one-object jobs on the trio."""
    root = tmp_path_factory.mktemp("trio")
    trio = make_trio(duration=8.0, width=320, height=180)
    clip = root / "trio.mp4"
    write_trio(trio, clip)
    for lb, m in trio.first_masks().items():
        cv2.imwrite(str(root / f"{lb}.png"), m)
    args = []
    for lb in LABELS:
        args += ["--object", lb, "--mask", str(root / f"{lb}.png")]
    res = run_cli(
        "separate", str(clip), *args, "--separator", "classical", "--out", str(root / "all")
    )
    assert res.returncode == 0, res.stderr
    for lb in LABELS:
        res = run_cli(
            "separate",
            str(clip),
            "--mask",
            str(root / f"{lb}.png"),
            "--separator",
            "classical",
            "--out",
            str(root / f"one-{lb}"),
        )
        assert res.returncode == 0, res.stderr
    return trio, clip, root


def _mono(path):
    x, _ = sf.read(str(path), dtype="float64", always_2d=True)
    return x.mean(axis=1)


def test_three_objects_are_never_worse_than_three_single_jobs(trio_jobs):
    """Each object's stem from the three-object job is within 0.5 dB SI-SDR of its
    one-object job's, or better: each object's mask is the one it would get alone, and
    objects share only what they both claim (here the box gains about 2 dB from that: a
    component the ball also claims is not all the box's). The box and the mouth gain at least 6 dB over
    the mixture (the mouth is found only because the tracker's mask grows as it opens). The
    ball is not held to that: the scene's off-screen bell rings only inside the ball's
    bouncing spells, so its loudness follows the ball as well as the plucks do (the ball's
    stem is mostly bell, alone or with the others)."""
    trio, _, root = trio_jobs
    for lb in LABELS:
        ref = trio.sounds[lb].astype(np.float64)
        many = _mono(root / "all" / "objects" / lb / "target.wav")[: len(ref)]
        one = _mono(root / f"one-{lb}" / "target.wav")[: len(ref)]
        a, b = si_sdr(many, ref[: len(many)]), si_sdr(one, ref[: len(one)])
        print(f"{lb}: three-object job {a:+.2f} dB, one-object job {b:+.2f} dB SI-SDR")
        assert a >= b - 0.5, (lb, a, b)
        if lb != "ball":  # the off-screen bell rings only while the ball bounces (see below)
            mix = si_sdr(trio.mixture().astype(np.float64)[: len(ref)], ref)
            assert a - mix >= 6.0, (lb, a, mix)  # the separation itself is real
    masks = [np.load(root / "all" / "objects" / lb / "masks.npz")["masks"] for lb in LABELS]
    for lb, m in zip(LABELS, masks, strict=True):  # tracked the same way as alone
        alone = np.load(root / f"one-{lb}" / "masks.npz")["masks"]
        assert np.mean(m != alone) < 1e-3, lb


def test_stems_and_residual_add_back_to_the_source(trio_jobs):
    _, clip, root = trio_jobs
    out = root / "all"
    src, sr = decode_audio(clip)
    parts = [sf.read(str(out / "objects" / lb / "target.wav"), always_2d=True) for lb in LABELS]
    res, rate = sf.read(str(out / "residual.wav"), always_2d=True)
    assert rate == sr and all(r == sr for _, r in parts)
    total = res + sum(p for p, _ in parts)
    n = min(len(total), len(src))
    assert np.abs(total[:n] - src[:n]).max() <= 1e-4
    assert not (out / "target.wav").exists()  # three objects: no one target at the top


def test_the_job_document_lists_outputs_per_object(trio_jobs):
    _, _, root = trio_jobs
    job = json.loads((root / "all" / "job.json").read_text())
    assert [o["label"] for o in job["objects"]] == list(LABELS)
    for o in job["objects"]:
        assert f"objects/{o['label']}/target.wav" in o["outputs"]
        assert f"objects/{o['label']}/masks.npz" in o["outputs"]
        for name in o["outputs"]:
            assert name in job["outputs"] and (root / "all" / name).is_file()
    assert {"residual.wav", "stems.mkv", "preview.mp4"} <= set(job["outputs"])


def test_object_masks_are_exclusive_at_full_size(trio_jobs):
    _, _, root = trio_jobs
    masks = [np.load(root / "all" / "objects" / lb / "masks.npz")["masks"] for lb in LABELS]
    assert masks[0].shape == (200, 180, 320)
    assert int(np.sum(masks, axis=0, dtype=np.int32).max()) == 1


def test_the_multitrack_file(trio_jobs):
    """N + 1 audio tracks titled by label, the picture bit-exact, every track decoding to
    its stem within one 24-bit step."""
    _, clip, root = trio_jobs
    stems = root / "all" / "stems.mkv"
    info = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(stems)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )["streams"]
    audio = [s for s in info if s["codec_type"] == "audio"]
    titles = [*LABELS, "residual"]
    assert [s["tags"]["title"] for s in audio] == titles
    assert [s["tags"].get("HANDLER_NAME", s["tags"].get("handler_name")) for s in audio] == titles
    src_rate = int(
        json.loads(
            subprocess.run(
                [
                    "ffprobe",
                    "-v",
                    "error",
                    "-select_streams",
                    "a:0",
                    "-show_streams",
                    "-of",
                    "json",
                    str(clip),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["streams"][0]["sample_rate"]
    )
    assert all(int(s["sample_rate"]) == src_rate and s["channels"] == 2 for s in audio)
    assert stream_md5(stems, "v") == stream_md5(clip, "v")
    files = [root / "all" / "objects" / lb / "target.wav" for lb in LABELS]
    files.append(root / "all" / "residual.wav")
    for i, f in enumerate(files):
        track, _ = decode_audio(stems, f"a:{i}")
        want, _ = sf.read(str(f), dtype="float32", always_2d=True)
        n = min(len(track), len(want))
        assert n >= len(want) - 1
        assert np.abs(track[:n] - want[:n]).max() <= 1.0 / (1 << 23) + 1e-9, titles[i]


def test_one_object_in_the_objects_form_keeps_target_wav_and_asks_for_videos(trio_jobs, tmp_path):
    """A --spec file with one object: objects/<label>/, plus target.wav at the top as
    plugins expect, and the per-object isolated video asked for."""
    _, clip, root = trio_jobs
    spec = tmp_path / "job.json"
    spec.write_text(
        json.dumps(
            {
                "objects": [{"label": "ball", "masks": [str(root / "ball.png")]}],
                "mode": "isolate",
                "object_videos": True,
            }
        )
    )
    out = tmp_path / "out"
    res = run_cli(
        "separate", str(clip), "--spec", str(spec), "--separator", "classical", "--out", str(out)
    )
    assert res.returncode == 0, res.stderr
    job = json.loads((out / "job.json").read_text())
    assert "target.wav" in job["outputs"] and (out / "target.wav").is_file()
    assert job["objects"][0]["outputs"][-1] == "objects/ball/isolated.mp4"
    assert stream_md5(out / "objects" / "ball" / "isolated.mp4", "v") == stream_md5(clip, "v")
    a, _ = sf.read(str(out / "target.wav"))
    b, _ = sf.read(str(out / "objects" / "ball" / "target.wav"))
    assert np.array_equal(a, b)
    assert not list(out.rglob(".without*")) and not list(out.rglob("*.part*"))
