"""`sonomask separate --separator sam-audio` end to end on the fixture network (random weights:
the sound is meaningless, the plumbing is real)."""

from __future__ import annotations

import json

import cv2
import pytest
import soundfile as sf
from conftest import SAM_AUDIO_FIXTURE, ffmpeg, run_cli
from scene import first_mask, make_scene, write_clip

from worker.config import Settings
from worker.media import stream_md5
from worker.pipeline import choose_separator
from worker.spec import JobSpec

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
