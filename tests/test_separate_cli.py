"""`sonomask separate` end to end with real ffmpeg on generated media."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
import soundfile as sf
from conftest import SR, decode_audio, ffmpeg, run_cli

from worker.media import stream_md5


def _probe(path, entries="stream=index,codec_type,codec_name,sample_rate,channels"):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _separate(video, mask, out, *extra):
    res = run_cli("separate", str(video), "--mask", str(mask), "--out", str(out), *extra)
    assert res.returncode == 0, res.stderr
    return res


@pytest.fixture(scope="module")
def mp4_run(tmp_path_factory, scene_mp4, mask_a):
    out = tmp_path_factory.mktemp("run") / "out"
    _separate(scene_mp4, mask_a, out)
    return out


def test_mp4_outputs_complete_and_exact(mp4_run, scene_mp4, scene):
    names = {p.name for p in mp4_run.iterdir()}
    assert {
        "target.wav",
        "residual.wav",
        "isolated.mp4",
        "removed.mp4",
        "masks.npz",
        "preview.mp4",
        "job.json",
    } <= names
    assert not [n for n in names if n.startswith(".")], "temporary files left behind"
    src_md5 = stream_md5(scene_mp4, "v")
    for name in ("isolated.mp4", "removed.mp4"):
        assert stream_md5(mp4_run / name, "v") == src_md5, f"{name}: picture not bit-exact"
        info = _probe(mp4_run / name)["streams"]
        audio = [s for s in info if s["codec_type"] == "audio"]
        assert len(audio) == 1 and int(audio[0]["sample_rate"]) == SR and audio[0]["channels"] == 2
    for name in ("target.wav", "residual.wav"):
        i = sf.info(str(mp4_run / name))
        assert (i.samplerate, i.channels, i.subtype) == (SR, 2, "PCM_24")
        assert abs(i.duration - scene.duration) < 0.05
    masks = np.load(mp4_run / "masks.npz")["masks"]
    assert masks.dtype == np.uint8 and masks.shape == (150, 180, 320)
    assert set(np.unique(masks)) <= {0, 1}
    job = json.loads((mp4_run / "job.json").read_text())
    assert job["state"] == "succeeded" and job["backend"] == "classical"
    assert len(job["inputs"][0]["sha256"]) == 64
    assert set(job["timings"]) >= {"probe", "demux", "track", "separate", "remux"}
    assert "versions" in job and "params" in job and "warnings" in job


def test_stems_sum_to_the_source(mp4_run, scene_mp4):
    src, sr = decode_audio(scene_mp4)
    t, _ = sf.read(str(mp4_run / "target.wav"), dtype="float32", always_2d=True)
    r, _ = sf.read(str(mp4_run / "residual.wav"), dtype="float32", always_2d=True)
    n = min(len(src), len(t))
    assert abs(len(src) - len(t)) <= 1
    # 24-bit quantisation of each stem adds at most 2 * 2**-24.
    assert np.abs(t[:n] + r[:n] - src[:n]).max() <= 1e-4


def _si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    a = np.dot(est, ref) / np.dot(ref, ref)
    e = est - a * ref
    return 10 * np.log10(np.sum((a * ref) ** 2) / np.sum(e**2))


def _grown(mask: np.ndarray, margin: int = 4) -> np.ndarray:
    """An object mask grown a little, as a person draws it (uint8 0/255)."""
    return cv2.dilate(mask, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) * 255


@pytest.mark.parametrize("which", ["a", "b"])
def test_each_mask_yields_its_own_sound(tmp_path, scene_mp4, scene, mask_a, mask_b, which):
    """Masking one object gives mostly its sound; masking the other gives the other sound."""
    out = tmp_path / "out"
    if which == "a":
        _separate(scene_mp4, mask_a, out, "--mode", "isolate")
    else:
        # The flow tracker loses the drum once it shakes (a flat box turning +-18 degrees
        # at 6 Hz; see test_vision's xfail), so the editor adds correction keyframes, as
        # the README says to; the separation is what is tested here.
        keys = []
        for i in range(0, 150, 10):
            path = tmp_path / f"drum_{i}.png"
            cv2.imwrite(str(path), _grown(scene.frame(i, scene.background())[2]))
            keys += ["--mask", str(path), "--mask-frame", str(i)]
        _separate(scene_mp4, keys[1], out, *keys[2:], "--mode", "isolate")
    target, _ = sf.read(str(out / "target.wav"), dtype="float64", always_2d=True)
    mix, _ = decode_audio(scene_mp4)
    own, other = (scene.sound_a, scene.sound_b) if which == "a" else (scene.sound_b, scene.sound_a)
    n = min(len(target), len(own), len(mix))
    # Compare mono mixdowns (the model works on the mixdown; both sounds are in both channels).
    est, mono_mix = target[:n].mean(axis=1), mix[:n].mean(axis=1)
    improvement = _si_sdr(est, own[:n]) - _si_sdr(mono_mix, own[:n])
    preference = _si_sdr(est, own[:n]) - _si_sdr(est, other[:n])
    print(
        f"object {which}: SI-SDR improvement {improvement:.2f} dB, own vs other {preference:.2f} dB"
    )
    assert improvement >= 3.0
    assert preference >= 6.0


def test_click_stays_in_sync_when_audio_starts_late(tmp_path, scene, mask_a):
    """A click at a known time is at that time (±1 ms) in the stems and in the remuxed file."""
    rng = np.random.default_rng(0)
    dur, late, click_at = 4.0, 0.5, 2.0  # the audio stream starts 0.5 s after the picture
    audio = 0.02 * rng.standard_normal(int((dur - late) * SR)).astype(np.float32)
    audio[int((click_at - late) * SR)] = 0.95
    audio.tofile(tmp_path / "a.f32")
    frames = np.stack([scene.frame(i, scene.background())[0] for i in range(int(dur * 25))])
    frames.tofile(tmp_path / "v.rgb")
    src = tmp_path / "late.mkv"
    ffmpeg(
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        "320x180",
        "-r",
        "25",
        "-i",
        str(tmp_path / "v.rgb"),
        "-itsoffset",
        str(late),
        "-f",
        "f32le",
        "-ar",
        str(SR),
        "-ac",
        "1",
        "-i",
        str(tmp_path / "a.f32"),
        "-c:v",
        "libx264",
        "-c:a",
        "flac",
        str(src),
    )
    out = tmp_path / "out"
    _separate(src, mask_a, out)
    for name in ("target.wav", "residual.wav"):
        x, _ = sf.read(str(out / name), always_2d=True)
        found = np.argmax(np.abs(x[:, 0])) / SR
        if name == "residual.wav":
            assert abs(found - click_at) <= 0.001, (name, found)
    for name in ("isolated.mkv", "removed.mkv"):
        x, sr = decode_audio(out / name)
        mix = x[:, 0]
        t_stem, _ = sf.read(str(out / ("target.wav" if "isolated" in name else "residual.wav")))
        stem_peak = np.argmax(np.abs(t_stem)) / SR
        assert abs(np.argmax(np.abs(mix)) / sr - stem_peak) <= 0.001, name
    x_src, _ = decode_audio(src)
    t, _ = sf.read(str(out / "target.wav"), always_2d=True)
    r, _ = sf.read(str(out / "residual.wav"), always_2d=True)
    both = (t + r)[:, 0]
    assert abs(np.argmax(np.abs(both)) / SR - click_at) <= 0.001
    assert abs(np.argmax(np.abs(x_src[:, 0])) / SR - click_at) <= 0.001
    n = min(len(both), len(x_src))
    assert np.abs(both[:n] - x_src[:n, 0]).max() <= 1e-4


@pytest.mark.parametrize("ext,acodec", [(".mov", "pcm_s16le"), (".mp4", "aac")])
def test_timecode_track_kept(tmp_path, scene, mask_a, ext, acodec):
    src = tmp_path / f"clip{ext}"
    from scene import write_clip

    write_clip(scene, src, stereo=True, acodec=acodec, extra=["-timecode", "01:00:00:00"])
    out = tmp_path / "out"
    _separate(src, mask_a, out, "--mode", "remove")
    info = _probe(out / f"removed{ext}", "stream=codec_type,codec_tag_string:stream_tags=timecode")
    data = [s for s in info["streams"] if s["codec_type"] == "data"]
    assert data and data[0]["codec_tag_string"] == "tmcd"
    assert data[0]["tags"]["timecode"] == "01:00:00:00"


def test_mov_with_pcm_audio(tmp_path, scene, mask_a):
    src = tmp_path / "clip.mov"
    from scene import write_clip

    write_clip(scene, src, stereo=True, acodec="pcm_s16le")
    out = tmp_path / "out"
    _separate(src, mask_a, out, "--mode", "remove")
    assert not (out / "isolated.mov").exists()
    assert stream_md5(out / "removed.mov", "v") == stream_md5(src, "v")
    a = [s for s in _probe(out / "removed.mov")["streams"] if s["codec_type"] == "audio"]
    assert a[0]["codec_name"] == "pcm_s16le" and a[0]["channels"] == 2


def test_mkv_two_audio_tracks_and_subtitles_kept(tmp_path, scene, scene_mp4, mask_a):
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,500 --> 00:00:02,000\nhello\n")
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=f=300:sample_rate=44100:duration=6",
        "-ac",
        "2",
        str(tmp_path / "commentary.wav"),
    )
    src = tmp_path / "two.mkv"
    ffmpeg(
        "-i",
        str(scene_mp4),
        "-i",
        str(tmp_path / "commentary.wav"),
        "-i",
        str(srt),
        "-map",
        "0:v",
        "-map",
        "0:a",
        "-map",
        "1:a",
        "-map",
        "2:s",
        "-c:v",
        "copy",
        "-c:a:0",
        "flac",
        "-c:a:1",
        "libvorbis",
        "-c:s",
        "srt",
        "-metadata:s:a:1",
        "language=fra",
        "-metadata",
        "title=two tracks",
        str(src),
    )
    out = tmp_path / "out"
    _separate(src, mask_a, out, "--mode", "isolate")
    res = out / "isolated.mkv"
    info = _probe(res, "stream=index,codec_type,codec_name:stream_tags=language:format_tags=title")
    kinds = [(s["codec_type"], s["codec_name"]) for s in info["streams"]]
    assert kinds == [
        ("video", "h264"),
        ("audio", "flac"),
        ("audio", "vorbis"),
        ("subtitle", "subrip"),
    ]
    assert info["streams"][2]["tags"]["language"] == "fra"
    assert info["format"]["tags"]["title"] == "two tracks"
    assert stream_md5(res, "v") == stream_md5(src, "v")
    assert stream_md5(res, "a:1") == stream_md5(src, "a:1"), "second audio track changed"
    assert stream_md5(res, "s") == stream_md5(src, "s")


def test_webm_vp9_opus(tmp_path, scene, mask_a):
    src = tmp_path / "clip.webm"
    from scene import write_clip

    write_clip(
        scene,
        src,
        stereo=True,
        vcodec="libvpx-vp9",
        acodec="libopus",
        extra=["-b:v", "300k", "-deadline", "realtime", "-cpu-used", "8"],
    )
    out = tmp_path / "out"
    _separate(src, mask_a, out, "--mode", "isolate")
    assert stream_md5(out / "isolated.webm", "v") == stream_md5(src, "v")
    a = [s for s in _probe(out / "isolated.webm")["streams"] if s["codec_type"] == "audio"]
    assert a[0]["codec_name"] == "opus" and a[0]["channels"] == 2
    i = sf.info(str(out / "target.wav"))
    assert i.samplerate == 48000 and abs(i.duration - scene.duration) < 0.05


def test_track_command_writes_masks_and_preview(tmp_path, scene_mp4, mask_a):
    res = run_cli(
        "track",
        str(scene_mp4),
        "--mask",
        str(mask_a),
        "--out",
        str(tmp_path / "m.npz"),
        "--preview",
        str(tmp_path / "p.mp4"),
    )
    assert res.returncode == 0, res.stderr
    masks = np.load(tmp_path / "m.npz")["masks"]
    assert masks.shape == (150, 180, 320)
    assert (tmp_path / "p.mp4").stat().st_size > 1000


@pytest.mark.parametrize("rate,layout,channels", [(44100, "stereo", 2), (96000, "5.1", 6)])
def test_rates_and_layouts_come_back_unchanged(tmp_path, scene_mp4, mask_a, rate, layout, channels):
    src = tmp_path / f"clip_{rate}.mov"
    ffmpeg(
        "-i",
        str(scene_mp4),
        "-filter_complex",
        f"[0:a]aresample={rate},pan={layout}|"
        + "|".join(f"c{i}=c{i % 2}" for i in range(channels))
        + "[a]",
        "-map",
        "0:v",
        "-map",
        "[a]",
        "-c:v",
        "copy",
        "-c:a",
        "pcm_s24le",
        str(src),
    )
    out = tmp_path / "out"
    _separate(src, mask_a, out, "--mode", "both", "--stem-format", "float32", "--keep-original")
    src_audio, sr = decode_audio(src)
    t, tsr = sf.read(str(out / "target.wav"), always_2d=True)
    r, _ = sf.read(str(out / "residual.wav"), always_2d=True)
    assert tsr == rate and t.shape[1] == channels
    assert sf.info(str(out / "target.wav")).subtype == "FLOAT"
    n = min(len(t), len(src_audio))
    assert abs(len(t) - len(src_audio)) <= 1
    assert np.abs(t[:n] + r[:n] - src_audio[:n]).max() <= 1e-4
    streams = _probe(
        out / "isolated.mov",
        "stream=codec_type,sample_rate,channels,channel_layout:stream_tags=title,handler_name",
    )["streams"]
    audio = [s for s in streams if s["codec_type"] == "audio"]
    assert len(audio) == 2, "new audio plus the original kept as an extra track"
    assert all(int(a["sample_rate"]) == rate and a["channels"] == channels for a in audio)
    tags = audio[1].get("tags", {})
    assert "original audio" in (tags.get("title"), tags.get("handler_name")), tags
    assert stream_md5(out / "isolated.mov", "a:1") == stream_md5(src, "a:0")
