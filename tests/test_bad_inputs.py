"""Bad input: exit 2, one clear line on stderr, no traceback, nothing written."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import ffmpeg, run_cli


def _check_refused(tmp_path, video, mask, expect: str, *extra: str) -> None:
    out = tmp_path / "out"
    res = run_cli("separate", str(video), "--mask", str(mask), "--out", str(out), *extra)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert expect in lines[0].lower(), lines[0]
    assert not out.exists() or not any(out.iterdir()), "outputs left behind"


def test_png_image_is_not_a_video(tmp_path, mask_a):
    img = tmp_path / "still.mp4"
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((180, 320, 3), np.uint8))
    img.write_bytes((tmp_path / "x.png").read_bytes())
    _check_refused(tmp_path, img, mask_a, "image")


def test_text_file_named_mp4(tmp_path, mask_a):
    f = tmp_path / "notes.mp4"
    f.write_text("this is not a video\n" * 20)
    _check_refused(tmp_path, f, mask_a, "text file")


def test_random_bytes(tmp_path, mask_a):
    f = tmp_path / "noise.mp4"
    f.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    _check_refused(tmp_path, f, mask_a, "not")


def test_zero_byte_file(tmp_path, mask_a):
    f = tmp_path / "empty.mp4"
    f.write_bytes(b"")
    _check_refused(tmp_path, f, mask_a, "empty")


def test_missing_file(tmp_path, mask_a):
    _check_refused(tmp_path, tmp_path / "nope.mp4", mask_a, "no such file")


def test_truncated_mp4(tmp_path, scene_mp4, mask_a):
    data = scene_mp4.read_bytes()
    f = tmp_path / "cut.mp4"
    f.write_bytes(data[: len(data) // 2])
    _check_refused(tmp_path, f, mask_a, "truncated")


def test_truncated_faststart_mp4(tmp_path, scene_mp4, mask_a):
    fast = tmp_path / "fast.mp4"
    ffmpeg("-i", str(scene_mp4), "-c", "copy", "-movflags", "+faststart", str(fast))
    data = fast.read_bytes()
    f = tmp_path / "cut_fast.mp4"
    f.write_bytes(data[: len(data) // 3])
    _check_refused(tmp_path, f, mask_a, "truncated")


def test_m3u8_pointing_at_local_file(tmp_path, scene_mp4, mask_a):
    f = tmp_path / "list.m3u8"
    f.write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6,\nfile:{scene_mp4}\n#EXT-X-ENDLIST\n"
    )
    _check_refused(tmp_path, f, mask_a, "playlist")


def test_ffconcat_pointing_at_local_file(tmp_path, scene_mp4, mask_a):
    f = tmp_path / "list.mp4"
    f.write_text(f"ffconcat version 1.0\nfile '{scene_mp4}'\n")
    _check_refused(tmp_path, f, mask_a, "concat")


def test_video_without_audio(tmp_path, scene_mp4, mask_a):
    f = tmp_path / "silent.mp4"
    ffmpeg("-i", str(scene_mp4), "-an", "-c", "copy", str(f))
    _check_refused(tmp_path, f, mask_a, "no audio")


def test_mask_of_wrong_size(tmp_path, scene_mp4):
    m = tmp_path / "small.png"
    cv2.imwrite(str(m), np.full((100, 100), 255, np.uint8))
    _check_refused(tmp_path, scene_mp4, m, "100x100")


def test_empty_mask(tmp_path, scene_mp4):
    m = tmp_path / "black.png"
    cv2.imwrite(str(m), np.zeros((180, 320), np.uint8))
    _check_refused(tmp_path, scene_mp4, m, "mask")


def test_mask_that_is_not_an_image(tmp_path, scene_mp4):
    m = tmp_path / "mask.png"
    m.write_text("hello")
    _check_refused(tmp_path, scene_mp4, m, "mask.png")


@pytest.mark.parametrize(
    "args,expect",
    [
        (["--span", "+3-1"], "ends before"),
        (["--span", "around 2s"], "span"),
        (["--mask-frame", "9999"], "frame 9999"),
        (["--separator", "sam-audio"], "--model"),
    ],
)
def test_bad_options(tmp_path, scene_mp4, mask_a, args, expect):
    _check_refused(tmp_path, scene_mp4, mask_a, expect.lower(), *args)


def test_video_longer_than_the_limit(tmp_path, scene_mp4, mask_a):
    import os

    env = {**os.environ, "SONOMASK_MAX_VIDEO_SECONDS": "2"}
    out = tmp_path / "out"
    res = run_cli("separate", str(scene_mp4), "--mask", str(mask_a), "--out", str(out), env=env)
    assert res.returncode == 2 and "SONOMASK_MAX_VIDEO_SECONDS" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
