"""`sonomask separate --separator sam-audio` end to end on the fixture network (random weights:
the sound is meaningless, the plumbing is real)."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
JUDGE = Path(__file__).parent / "fixtures" / "sam_audio_judge"
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


def test_rankers_with_weights_come_from_the_operators_settings(tmp_path):
    """``ranker: clap`` / ``judge`` run with the weights SONOMASK_CLAP_MODEL /
    SONOMASK_JUDGE_MODEL name; without them the job is refused in one line before any work."""
    from model.sam_audio.clap import ClapRanker
    from model.sam_audio.judge import JudgeRanker
    from worker.errors import BadInput
    from worker.stages.models import check_separator_config

    clap = Path(__file__).parent / "fixtures" / "sam_audio_clap" / "model"
    base = Settings(**{**Settings.from_env().__dict__, "model": str(FIXTURE)})
    ready = Settings(**{**base.__dict__, "clap_model": str(clap), "judge_model": str(JUDGE)})
    for ranker, cls in (("clap", ClapRanker), ("judge", JudgeRanker)):
        spec = JobSpec.build(video="x.mp4", boxes=["0,0,4,4"], candidates=2, ranker=ranker)
        check_separator_config(spec, ready)
        assert isinstance(choose_separator(spec, ready).ranker, cls)
        for where in (None, str(tmp_path / "nothing")):
            missing = Settings(**{**base.__dict__, f"{ranker}_model": where})
            with pytest.raises(BadInput, match=f"SONOMASK_{ranker.upper()}_MODEL"):
                check_separator_config(spec, missing)


def test_job_windows_give_what_the_backend_gives_in_one_call(tmp_path, monkeypatch):
    """The worker cuts a job into windows itself (bounded memory, resumable) and hands the
    model two at a time; the result is the SAM Audio backend's own windowed separation of the
    whole clip, one window at a time: same windows, same frames, spans and noise per window,
    same crossfades. The stages run as a queued job's
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
    # windows two at a time (SONOMASK_WINDOW_BATCH=2): the first two as one batch, the
    # third alone; every window as alone
    settings = Settings(
        **{**Settings.from_env().__dict__, "window_seconds": 1.0, "window_batch": 2}
    )
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

    # the SAM Audio Judge as the ranker, its weights where the operator put them
    out = tmp_path / "judge"
    env = {**os.environ, "SONOMASK_JUDGE_MODEL": str(JUDGE)}
    args = ["--candidates", "2", "--ranker", "judge", "--out", str(out)]
    res = run_cli("separate", str(clip), *common, *args, env=env)
    assert res.returncode == 0, res.stderr
    (window,) = json.loads((out / "job.json").read_text())["rerank"]
    (scores,) = window["scores"]
    assert window["ranker"] == "judge" and len(scores) == 2
    assert window["chosen"] == [max(range(2), key=lambda c: (scores[c], -c))]
    # ... and without them: one line, before any work
    env["SONOMASK_JUDGE_MODEL"] = str(tmp_path / "no-judge-here")
    res = run_cli("separate", str(clip), *common, *args, env=env)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "SONOMASK_JUDGE_MODEL" in res.stderr and "does not exist" in res.stderr

    out = tmp_path / "spans"
    res = run_cli("separate", str(clip), *common, "--predict-spans", "--out", str(out))
    assert res.returncode == 0, res.stderr
    job = json.loads((out / "job.json").read_text())
    assert job["params"]["predict_spans"] is True and "rerank" not in job
    assert any("span prediction did not run" in w for w in job["warnings"])


def test_judge_command_prints_the_judges_scores(tmp_path):
    """``sonomask judge MIXTURE SEPARATED --text T``: the four scores the judge gives the
    same waveforms (a long file in 30 s windows, averaged by length); bad input is one line."""
    import numpy as np
    import torch

    from model.sam_audio.judge import judge_waveforms, load_judge

    rng = np.random.default_rng(7)
    mix = (0.1 * rng.standard_normal(48_000 * 2)).astype(np.float32)
    sep = (0.5 * mix + 0.01 * rng.standard_normal(mix.size)).astype(np.float32)
    sf.write(tmp_path / "mix.wav", mix, 48_000, subtype="FLOAT")
    sf.write(tmp_path / "sep.wav", sep, 48_000, subtype="FLOAT")
    res = run_cli(
        "judge", str(tmp_path / "mix.wav"), str(tmp_path / "sep.wav"), "--text", "a dog",
        "--model", str(JUDGE), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    judge = load_judge(JUDGE)
    with torch.inference_mode():
        want = judge_waveforms(
            judge, torch.from_numpy(mix), torch.from_numpy(sep), 48_000, "a dog"
        ).to_dict()
    assert set(want) == {"overall", "recall", "precision", "faithfulness"}
    for k, v in want.items():
        assert abs(got[k] - v) <= 1e-5, (k, got[k], v)
    # the plain form prints one line per score
    res = run_cli(
        "judge", str(tmp_path / "mix.wav"), str(tmp_path / "sep.wav"), "--text", "a dog",
        "--model", str(JUDGE),
    )  # fmt: skip
    assert [ln.split()[0] for ln in res.stdout.splitlines()] == list(want)
    # 35 s: a 30 s window and a 5 s one, averaged by length
    long_mix = np.tile(mix, 18)[: 35 * 48_000]
    long_sep = np.tile(sep, 18)[: 35 * 48_000]
    sf.write(tmp_path / "lm.wav", long_mix, 48_000, subtype="FLOAT")
    sf.write(tmp_path / "ls.wav", long_sep, 48_000, subtype="FLOAT")
    res = run_cli(
        "judge", str(tmp_path / "lm.wav"), str(tmp_path / "ls.wav"), "--text", "a dog",
        "--model", str(JUDGE), "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    parts = []
    with torch.inference_mode():
        for a, b in ((0, 30 * 48_000), (30 * 48_000, 35 * 48_000)):
            s = judge_waveforms(
                judge,
                torch.from_numpy(long_mix[a:b].copy()),
                torch.from_numpy(long_sep[a:b].copy()),
                48_000,
                "a dog",
            ).to_dict()
            parts.append((s, (b - a) / (35 * 48_000)))
    for k in want:
        assert abs(json.loads(res.stdout)[k] - sum(s[k] * w for s, w in parts)) <= 1e-4
    # bad input: one line, exit 2
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), np.zeros((8, 8, 3), np.uint8))
    short = tmp_path / "short.wav"
    sf.write(short, mix[:4800], 48_000)
    for argv, words in [
        ([str(tmp_path / "mix.wav"), str(tmp_path / "sep.wav"), "--text", " "], "--text"),
        ([str(png), str(tmp_path / "sep.wav"), "--text", "a"], "PNG"),
        ([str(tmp_path / "mix.wav"), str(short), "--text", "a"], "lasts"),
        ([str(tmp_path / "nope.wav"), str(tmp_path / "sep.wav"), "--text", "a"], "no such file"),
    ]:
        res = run_cli("judge", *argv, "--model", str(JUDGE))
        assert res.returncode == 2, (argv, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, res.stderr
    res = run_cli("judge", str(tmp_path / "mix.wav"), str(tmp_path / "sep.wav"), "--text", "a",
                  "--model", str(tmp_path / "nothing"))  # fmt: skip
    assert res.returncode == 2 and "does not exist" in res.stderr
