"""`sonomask separate --separator sam-audio` end to end on the fixture network (random weights:
the sound is meaningless, the plumbing is real)."""

from __future__ import annotations

import json

import cv2
import pytest
import soundfile as sf
from conftest import SAM_AUDIO_FIXTURE, ffmpeg, run_cli
from scene import first_mask, make_scene, write_clip

from worker.media import stream_md5
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages.models import choose_separator

FIXTURE = SAM_AUDIO_FIXTURE
pytestmark = pytest.mark.skipif(
    not (FIXTURE / "checkpoint.pt").is_file(), reason=f"SAM Audio fixture A not found at {FIXTURE}"
)


def test_separate_with_sam_audio_and_a_visual_prompt(tmp_path):
    scene = make_scene(duration=2.5, width=160, height=96, fps=25.0)
    mp4 = tmp_path / "clip.mp4"
    write_clip(scene, mp4, stereo=True, crf=23)
    src = tmp_path / "clip.mkv"  # 44.1 kHz stereo FLAC: the stems must come back like that
    ffmpeg("-i", str(mp4), "-map", "0", "-c:v", "copy", "-c:a", "flac", "-ar", "44100", str(src))
    cv2.imwrite(str(tmp_path / "mask.png"), first_mask(scene, "a"))
    out = tmp_path / "out"
    res = run_cli(
        "separate",
        str(src),
        "--mask",
        str(tmp_path / "mask.png"),
        "--separator",
        "sam-audio",
        "--model",
        str(FIXTURE),
        "--text",
        "a plucked string",
        "--span",
        "+0.4-1.4",
        "--out",
        str(out),
    )
    assert res.returncode == 0, res.stderr
    job = json.loads((out / "job.json").read_text())
    assert job["backend"] == "sam-audio"
    for name in ("target.wav", "residual.wav"):
        info = sf.info(str(out / name))
        assert (info.samplerate, info.channels) == (44100, 2)
        assert abs(info.duration - 2.5) < 0.05
    assert stream_md5(out / "isolated.mkv", "v") == stream_md5(src, "v")
    assert stream_md5(out / "removed.mkv", "v") == stream_md5(src, "v")
    assert (out / "masks.npz").exists() and (out / "preview.mp4").exists()


def test_auto_picks_sam_audio_when_a_model_is_configured():
    spec = JobSpec.build(video="x.mp4", boxes=["0,0,4,4"])
    settings = Settings.from_env()
    with_model = Settings(**{**settings.__dict__, "model": str(FIXTURE)})
    without = Settings(**{**settings.__dict__, "model": None})
    assert choose_separator(spec, with_model).name == "sam-audio"
    assert choose_separator(spec, without).name == "classical"


def test_job_windows_give_what_the_backend_gives_in_one_call(tmp_path, monkeypatch):
    """The worker cuts a job into windows itself (bounded memory, resumable); the result is
    the SAM Audio backend's own windowed separation of the whole clip: same windows, same
    frames, spans and noise per window, same crossfades. The stages run as a queued job's
    do, so the model is named from the operator's list, not given as a path."""
    import numpy as np

    from model.backends.sam_audio import SamAudioSeparator
    from model.separator import Prompt, Span
    from vision.prompt import masked_video_for_model
    from worker import files
    from worker.stages import STAGES, run_stage
    from worker.stages import separate as separate_stage
    from worker.stages.common import working_frames, working_masks
    from worker.workspace import Workspace

    scene = make_scene(duration=2.5, width=160, height=96, fps=25.0)
    clip = tmp_path / "clip.mp4"
    write_clip(scene, clip, stereo=True, crf=23)
    cv2.imwrite(str(tmp_path / "mask.png"), first_mask(scene, "a"))
    monkeypatch.setenv("SONOMASK_MODELS", f"fixture={FIXTURE}")
    spec = JobSpec.build(
        video=str(clip),
        masks=[str(tmp_path / "mask.png")],
        separator="sam-audio",
        model="fixture",
        text="a plucked string",
        spans=["+0.33-1.27"],
        out=str(tmp_path / "out"),
    )
    ws = Workspace.create(tmp_path / "ws", spec, "job")
    for name, fn in STAGES[:4]:  # probe, demux, track, prompt
        run_stage(ws, name, fn, Settings.from_env())
    settings = Settings(**{**Settings.from_env().__dict__, "window_seconds": 1.0})
    separate_stage.run(ws, settings)
    assert ws.manifest()["separate_windows"]["count"] == 3
    target = np.load(ws.file(files.STEMS_MODEL[0]))
    residual = np.load(ws.file(files.STEMS_MODEL[1]))

    audio, _ = sf.read(str(ws.file("audio_model.wav")), dtype="float32")
    frames, _ = working_frames(ws)
    masks = working_masks(ws)
    idx = np.load(ws.file("prompt_index.npy"))
    whole = Prompt(
        text="a plucked string",
        spans=[Span("+", 0.33, 1.27)],
        masked_video=masked_video_for_model(frames[idx], masks[idx]),
        video_times=np.load(ws.file("prompt_times.npy")),
    )
    sep = SamAudioSeparator(str(FIXTURE), device="cpu", window_seconds=1.0, overlap_seconds=0.25)
    expect = sep.separate(audio, whole)
    np.testing.assert_allclose(target, expect.target, atol=1e-6)
    np.testing.assert_allclose(residual, expect.residual, atol=1e-6)


def test_reranking_and_span_prediction_through_the_command(tmp_path):
    """``--candidates 3 --ranker activity``: job.json records every candidate's score per
    window and keeps the best (argmax, as the reference); ``--predict-spans`` with a model
    whose config names no span predictor says so instead of failing."""
    scene = make_scene(duration=2.0, width=160, height=96, fps=25.0)
    clip = tmp_path / "clip.mp4"
    write_clip(scene, clip, stereo=False, crf=23)
    cv2.imwrite(str(tmp_path / "mask.png"), first_mask(scene, "a"))
    common = ["--mask", str(tmp_path / "mask.png"), "--separator", "sam-audio"]
    common += ["--model", str(FIXTURE), "--text", "a plucked string", "--no-preview"]
    out = tmp_path / "rerank"
    res = run_cli(
        "separate", str(clip), *common, "--span", "+0.4-1.4", "--candidates", "3",
        "--ranker", "activity", "--out", str(out),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    job = json.loads((out / "job.json").read_text())
    assert job["params"]["candidates"] == 3 and job["params"]["ranker"] == "activity"
    (window,) = job["rerank"]
    assert window["ranker"] == "sound_activity" and window["start_s"] == 0.0
    (scores,) = window["scores"]
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert window["chosen"] == [max(range(3), key=lambda c: (scores[c], -c))]

    out = tmp_path / "spans"
    res = run_cli("separate", str(clip), *common, "--predict-spans", "--out", str(out))
    assert res.returncode == 0, res.stderr
    job = json.loads((out / "job.json").read_text())
    assert job["params"]["predict_spans"] is True and "rerank" not in job
    assert any("span prediction did not run" in w for w in job["warnings"])
