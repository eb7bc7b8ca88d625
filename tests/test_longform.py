"""Long-form building blocks: row files, disk-backed tracking, windowed separation that
joins exactly and resumes after a real crash (SIGKILL) at window granularity.

Memory that stays flat with length is measured by ``benchmarks/longform.py``; here the
disk-backed paths are proven to give exactly what the in-memory ones give.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT, run_cli

from model.separator import Separation, Windowing, plan_windows
from model.windows import crossfade_gains, window_prompt
from vision.propagate import propagate
from worker import arrays, files
from worker.jobs.runner import resumable_job_id
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages import STAGES, run_stage
from worker.stages import separate as separate_stage
from worker.workspace import Workspace

# ----------------------------------------------------------------------------- row files


def test_row_file_reads_and_writes_like_numpy(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (50, 7, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", data)
    with arrays.open_npy(tmp_path / "a.npy") as f:
        assert f.shape == data.shape and f.dtype == np.uint8 and len(f) == 50
        np.testing.assert_array_equal(f[3], data[3])
        np.testing.assert_array_equal(f[-1], data[-1])
        np.testing.assert_array_equal(f[10:20], data[10:20])
        np.testing.assert_array_equal(f[45:99], data[45:])
        idx = np.array([7, 7, 3, 4, 5, 40, 0])  # repeats, runs, any order
        np.testing.assert_array_equal(f[idx], data[idx])
        with pytest.raises(IndexError):
            f[50]
    with arrays.create_npy(tmp_path / "b.npy", (20, 3), np.float32) as g:
        g[5] = np.ones(3)
        g.write(10, np.full((4, 3), 2.0))
        g[18:20] = 3.0
    back = np.load(tmp_path / "b.npy")  # numpy reads what the row file wrote
    assert back.shape == (20, 3) and back[5].tolist() == [1, 1, 1]
    assert (back[10:14] == 2).all() and (back[18:] == 3).all() and back[:5].sum() == 0
    raw = tmp_path / "frames.raw"
    data.tofile(raw)
    np.testing.assert_array_equal(arrays.RowFile(raw, data.shape, np.uint8)[20:30], data[20:30])
    with pytest.raises(ValueError, match="fewer"):
        arrays.RowFile(raw, (51, 7, 5, 3), np.uint8)


# ----------------------------------------------------------------------------- tracking


def _moving_square(n: int = 60, h: int = 72, w: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    bg = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    frames = np.empty((n, h, w, 3), np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        x, y = 10 + t, 20 + (t // 3) % 12
        frames[t] = np.roll(bg, t // 2, axis=1)
        frames[t, y : y + 16, x : x + 16] = (230, 30, 30)
        masks[t, y : y + 16, x : x + 16] = 1
    return frames, masks


def test_tracking_from_and_to_disk_equals_in_memory(tmp_path):
    """Frames read from disk and masks written to disk (the two keyframes far apart, so the
    forward pass is parked on a temporary file) give exactly the in-memory result."""
    frames, truth = _moving_square()
    keys = {5: truth[5], 50: truth[50]}
    expect, warn_expect = propagate(frames, keys)
    frames.tofile(tmp_path / "frames.raw")
    on_disk = arrays.RowFile(tmp_path / "frames.raw", frames.shape, np.uint8)
    out = arrays.create_npy(tmp_path / "masks.npy", truth.shape, np.uint8)
    got, warnings = propagate(on_disk, keys, out=out)
    assert got is out and warnings == warn_expect
    out.close()
    np.testing.assert_array_equal(np.load(tmp_path / "masks.npy"), expect)
    assert (expect[5] == truth[5]).all() and (expect[50] == truth[50]).all()


# ----------------------------------------------------------------------------- windows


def test_windows_join_to_the_mixture_exactly():
    n = 48_000 * 7 + 123
    plan = plan_windows(n, 48_000 * 2, 48_000 // 2)
    total = np.zeros(n)
    for i, (a, b) in enumerate(plan):
        total[a:b] += crossfade_gains(plan, i)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # no swell or dip at any join


def test_window_prompt_clips_spans_and_frames():
    from model.separator import Prompt, Span

    times = np.arange(100) / 25.0
    video = np.arange(100)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    p = Prompt(
        text="dog",
        spans=[Span("+", 0.5, 1.5), Span("-", 3.0, 3.5)],
        masked_video=video,
        video_times=times,
        object_activity=np.arange(100, dtype=np.float32),
    )
    w = window_prompt(p, 1.0, 2.0)
    assert w.text == "dog" and w.spans == [Span("+", 0.0, 0.5)]
    # frames within half a period of the window: 0.98 s .. 2.02 s -> frames 25..50
    assert w.video_times[0] == pytest.approx(0.0) and len(w.video_times) == 26
    assert w.masked_video[0, 0, 0, 0] == 25 and w.object_activity[-1] == 50
    empty = window_prompt(p, 10.0, 11.0)
    assert empty.video_times is None and empty.masked_video is None and empty.spans == []


class _Recording:
    """A separator whose target is a fixed share of each window; it records the calls."""

    name = "classical"
    windowing = Windowing(seconds=1.0, overlap_seconds=0.25, hop=1920)

    def __init__(self) -> None:
        self.calls: list[int] = []

    def separate(self, audio, prompt, progress=None):
        self.calls.append(len(audio))
        target = 0.7 * audio
        return Separation(target=target, residual=audio - target, backend="recording")


def _prepared_workspace(tmp_path, scene_mp4, mask_a) -> Workspace:
    spec = JobSpec.build(video=str(scene_mp4), masks=[str(mask_a)], out=str(tmp_path / "out"))
    ws = Workspace.create(tmp_path / "ws", spec, "job")
    for name, fn in STAGES[:4]:  # probe, demux, track, prompt
        run_stage(ws, name, fn, Settings.from_env())
    return ws


def test_windowed_separation_keeps_gain_and_sum(tmp_path, scene_mp4, mask_a, monkeypatch):
    """Through the joins the target is exactly 0.7 x the mixture: crossfades neither swell
    nor dip, and target + residual is the mixture."""
    ws = _prepared_workspace(tmp_path, scene_mp4, mask_a)
    sep = _Recording()
    monkeypatch.setattr(separate_stage, "choose_separator", lambda spec, settings: sep)
    separate_stage.run(ws, Settings.from_env())
    mix, _ = sf.read(str(ws.file("audio_model.wav")), dtype="float32")
    target = np.load(ws.file(files.STEMS_MODEL[0]))
    residual = np.load(ws.file(files.STEMS_MODEL[1]))
    assert len(sep.calls) == ws.manifest()["separate_windows"]["count"] >= 6
    np.testing.assert_allclose(target, 0.7 * mix, atol=1e-6)
    np.testing.assert_allclose(target + residual, mix, atol=1e-6)
    assert not ws.file(files.WINDOWS_DIR).exists()  # window files go once joined


_CRASH_ON_THIRD_WINDOW = textwrap.dedent(
    """
    import os, signal, sys
    from model.classical import ClassicalSeparator
    from worker.cli import main

    real = ClassicalSeparator.separate
    calls = []

    def separate(self, audio, prompt, progress=None):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, not an exception
        return real(self, audio, prompt, progress)

    ClassicalSeparator.separate = separate
    sys.exit(main(sys.argv[1:]))
    """
)


def test_cli_resumes_after_a_crash_at_the_window_it_stopped(tmp_path, scene_mp4, mask_a):
    """A run killed during its third window leaves two finished windows; the same command
    then separates only the rest, and its outputs equal an uninterrupted run's."""
    env = {**os.environ, "SONOMASK_WINDOW_SECONDS": "1", "SONOMASK_WORKSPACE": str(tmp_path / "ws")}
    args = ["separate", str(scene_mp4), "--mask", str(mask_a), "--out", str(tmp_path / "out")]
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH_ON_THIRD_WINDOW, *args, "--quiet"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (job,) = (tmp_path / "ws").iterdir()
    assert sorted(p.name for p in (job / "windows").glob("*.npz")) == ["00000.npz", "00001.npz"]
    assert not (tmp_path / "out").exists()

    resumed = run_cli(*args, env=env)
    assert resumed.returncode == 0, resumed.stderr
    manifest = json.loads((tmp_path / "out" / "job.json").read_text())
    windows = manifest["separate_windows"]
    assert windows["resumed"] == 2 and windows["count"] >= 6
    assert list((tmp_path / "ws").iterdir()) == []  # the finished job cleaned up

    clean_env = {**env, "SONOMASK_WORKSPACE": str(tmp_path / "ws2")}
    clean_args = [*args[:-1], str(tmp_path / "clean")]
    assert run_cli(*clean_args, env=clean_env).returncode == 0
    for name in ("target.wav", "residual.wav"):
        a, _ = sf.read(str(tmp_path / "out" / name))
        b, _ = sf.read(str(tmp_path / "clean" / name))
        np.testing.assert_array_equal(a, b)


def test_a_second_run_of_a_running_job_is_refused(tmp_path, scene_mp4, mask_a):
    spec = JobSpec.build(video=str(scene_mp4), masks=[str(mask_a)], out=str(tmp_path / "o"))
    settings = Settings.from_env()
    job_id = resumable_job_id(spec, settings)
    assert job_id == resumable_job_id(spec, settings)  # same request, same job
    other = JobSpec.build(video=str(scene_mp4), masks=[str(mask_a)], text="x", out=spec.out)
    assert resumable_job_id(other, settings) != job_id
    ws = Workspace.create(tmp_path / "ws", spec, job_id)
    from worker.errors import BadInput

    with ws.lock(), pytest.raises(BadInput, match="already running"), ws.lock():
        pass
