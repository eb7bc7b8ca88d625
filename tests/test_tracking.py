"""Mask tracking an editor can trust: accuracy, corrections, exports, SAM 2, clear errors.

Clips come from ``benchmarks/tracking_scenes.py``: cut-outs of real photographs moved over
other photographs, encoded with H.264 by real ffmpeg and decoded, so every frame's true
mask is known. CLI tests run the installed ``sonomask`` on files made here (odd sizes,
variable frame rate, rotation metadata) and check the outputs with ffprobe.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ffmpeg, run_cli
from tiny_trackers import tiny_sam2 as build_tiny_sam2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.tracking_scenes import encode, make_sequence  # noqa: E402
from vision import MaskError  # noqa: E402
from vision.metrics import boundary_f, region_similarity, score_sequence  # noqa: E402
from vision.propagate import copy_first, propagate  # noqa: E402

SMALL = (320, 180)


@pytest.fixture(scope="module", autouse=True)
def _bench_cache(tmp_path_factory, monkeypatch_module):
    """Rendered sequences are cached per test session, not in the user's temp folder."""
    monkeypatch_module.setenv("SONOMASK_BENCH_CACHE", str(tmp_path_factory.mktemp("bench")))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def _probe_json(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _frame_times(path: Path) -> np.ndarray:
    """Presentation times of every video frame, seconds from the first."""
    info = _probe_json(path, "-select_streams", "v:0", "-show_entries", "frame=pts_time")
    t = np.array([float(f["pts_time"]) for f in info["frames"]])
    return t - t[0]


def _decode_gray(path: Path, w: int, h: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-fps_mode", "passthrough", "-f", "rawvideo",
         "-pix_fmt", "gray", "pipe:"],
        capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w)


# ----------------------------------------------------------------------------- metrics


def test_davis_metrics():
    a = np.zeros((100, 120), np.uint8)
    a[20:60, 30:90] = 1
    assert region_similarity(a, a) == 1.0 and boundary_f(a, a) == 1.0
    empty = np.zeros_like(a)
    assert region_similarity(empty, empty) == 1.0 and boundary_f(empty, empty) == 1.0
    assert region_similarity(a, empty) == 0.0 and boundary_f(a, empty) == 0.0
    near = np.roll(a, 1, axis=1)  # within DAVIS's tolerance (ceil(0.008 * 156) = 2 px)
    far = np.roll(a, 10, axis=1)
    assert boundary_f(near, a) == 1.0 and region_similarity(near, a) > 0.95
    assert boundary_f(far, a) < 0.6
    j, f = score_sequence(np.stack([a, far]), np.stack([a, a]), skip={0})
    assert j == region_similarity(far, a) and f == boundary_f(far, a)


# ----------------------------------------------------------------------------- accuracy


def test_flow_beats_copy_on_real_photo_scenes():
    """Fast motion with blur, occlusion and leaving/re-entering the frame, H.264 decoded."""
    for name, floor in (("fast", 0.9), ("occlusion", 0.85), ("exit_reenter", 0.85)):
        seq = make_sequence(name, size=SMALL)
        key = {0: seq.masks[0]}
        masks, warnings = propagate(seq.frames, key)
        j, f = score_sequence(masks, seq.masks, skip={0})
        cj, cf = score_sequence(copy_first(seq.frames, key), seq.masks, skip={0})
        assert (j + f) / 2 >= floor, (name, j, f)
        assert (j + f) / 2 > (cj + cf) / 2 + 0.4, name
        if name == "exit_reenter":
            gone = [t for t in range(len(seq.masks)) if not seq.masks[t].any()]
            assert all(not masks[t].any() for t in gone[2:])  # reported absent, not stuck
            assert any("left the frame" in w for w in warnings), warnings
            assert region_similarity(masks[-1], seq.masks[-1]) > 0.9  # found again


def test_keyframe_corrections_improve_a_drifting_track():
    seq = make_sequence("morph", size=SMALL)  # shape keeps changing one way: one key drifts
    n = len(seq.frames)
    scores: dict[tuple[bool, tuple[int, ...]], float] = {}
    for refine in (False, True):
        for keys in ((0,), (0, n - 1), (0, n // 2, n - 1)):
            progress: list[float] = []
            masks, _ = propagate(
                seq.frames, {k: seq.masks[k] for k in keys}, _collect(progress), refine=refine
            )
            assert progress == sorted(progress) and progress[-1] == 1.0
            for k in keys:
                assert np.array_equal(masks[k], seq.masks[k])
            j, f = score_sequence(masks, seq.masks, skip=set(keys))
            scores[refine, keys] = (j + f) / 2
    one, two, three, r_one, r_two, r_three = scores.values()
    assert one < 0.9, scores  # the carried keyframe alone drifts ...
    assert two > one + 0.05 and three > two, scores  # ... and each correction helps
    # The refinement follows the changing outline (issue 14) and corrections still help.
    assert r_one > one + 0.01 and r_three > r_two > r_one, scores


def _collect(into: list[float]):  # noqa: ANN202 - a progress callback
    return lambda fraction, message: into.append(fraction)


# ----------------------------------------------------------------------------- sonomask track


@pytest.fixture(scope="module")
def odd_clip(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """317x179 H.264 (4:4:4, odd size), 72 frames at 30 fps, and its frame-0 mask."""
    d = tmp_path_factory.mktemp("odd")
    seq = make_sequence("slow", size=(317, 179))
    clip = d / "odd.mp4"
    clip.write_bytes(seq.video.read_bytes())
    mask = d / "mask.png"
    cv2.imwrite(str(mask), seq.masks[0] * 255)
    return clip, mask, seq.masks


def test_track_odd_size_writes_npz_matte_pngs_and_preview(tmp_path, odd_clip):
    clip, mask, truth = odd_clip
    out = tmp_path / "out" / "shot.npz"
    res = run_cli(
        "track", str(clip), "--mask", str(mask), "--out", str(out),
        "--png-dir", str(tmp_path / "out" / "png"), "--preview", str(tmp_path / "out" / "p.mp4"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    masks = np.load(out)["masks"]
    assert masks.shape == (72, 179, 317) and masks.dtype == np.uint8 and masks.max() == 1
    j, f = score_sequence(masks, truth, skip={0})
    assert (j + f) / 2 > 0.9
    matte = out.with_name("shot_matte.mkv")  # the default, beside --out
    info = _probe_json(matte, "-show_streams")["streams"][0]
    assert (info["codec_name"], info["pix_fmt"]) == ("ffv1", "gray")
    assert (info["width"], info["height"]) == (317, 179)
    assert np.array_equal(_decode_gray(matte, 317, 179), masks * 255)  # lossless
    assert np.allclose(_frame_times(matte), _frame_times(clip), atol=1.5e-3)
    pngs = sorted((tmp_path / "out" / "png").glob("shot_*.png"))
    assert len(pngs) == 72
    assert np.array_equal(cv2.imread(str(pngs[40]), cv2.IMREAD_UNCHANGED), masks[40] * 255)
    assert (tmp_path / "out" / "p.mp4").stat().st_size > 1000
    assert not list((tmp_path / "out").glob(".*")), "no partial files left behind"


def test_track_vfr_keeps_frame_count_and_timestamps(tmp_path):
    """30 frames at 30 fps then 18 at 12 fps in one file: a variable frame rate."""
    seq = make_sequence("fast", size=(256, 144))
    cfr = tmp_path / "cfr.mp4"
    encode(seq.frames[:48], cfr, crf=12)
    vfr = tmp_path / "vfr.mp4"
    retime = "settb=1/90000,setpts='if(lt(N,30),N/30,1+(N-30)/12)/TB'"
    ffmpeg(
        "-i", str(cfr), "-vf", retime, "-fps_mode", "passthrough", "-enc_time_base", "1/90000",
        "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(vfr),
    )  # fmt: skip
    src_times = _frame_times(vfr)
    assert len(src_times) == 48 and np.ptp(np.diff(src_times)) > 0.04  # really variable
    cv2.imwrite(str(tmp_path / "m.png"), seq.masks[0] * 255)
    matte = tmp_path / "vfr_matte.mov"
    res = run_cli(
        "track", str(vfr), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "m.npz"),
        "--matte", str(matte),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    masks = np.load(tmp_path / "m.npz")["masks"]
    assert masks.shape == (48, 144, 256)
    j, f = score_sequence(masks, seq.masks[:48], skip={0})
    assert (j + f) / 2 > 0.85
    info = _probe_json(matte, "-show_streams")["streams"][0]
    assert info["codec_name"] == "prores" and (info["width"], info["height"]) == (256, 144)
    assert np.allclose(_frame_times(matte), src_times, atol=1e-3)
    assert np.array_equal(_decode_gray(matte, 256, 144) > 127, masks > 0)


def test_track_rotated_source_gives_masks_at_displayed_size(tmp_path, odd_clip):
    clip, _, truth = odd_clip
    rotated = tmp_path / "rotated.mp4"  # stored 317x179, shown 179x317
    ffmpeg("-i", str(clip), "-c", "copy", "-metadata:s:v", "rotate=90", str(rotated))
    shown = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(rotated), "-frames:v", "1", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "pipe:"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    first = np.frombuffer(shown, np.uint8).reshape(317, 179, 3)
    # The mask is drawn on the frame as shown: turned the way ffmpeg turns the picture.
    raw0 = make_sequence("slow", size=(317, 179)).frames[0]
    k = 1 if _close(first, np.rot90(raw0, 1)) else -1
    assert _close(first, np.rot90(raw0, k))
    turned = np.ascontiguousarray(np.rot90(truth[0], k))
    cv2.imwrite(str(tmp_path / "m.png"), turned * 255)
    res = run_cli(
        "track", str(rotated), "--mask", str(tmp_path / "m.png"), "--out", str(tmp_path / "m.npz"),
        "--matte", str(tmp_path / "m.mp4"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    masks = np.load(tmp_path / "m.npz")["masks"]
    assert masks.shape == (72, 317, 179)
    info = _probe_json(tmp_path / "m.mp4", "-show_streams")["streams"][0]
    assert (info["width"], info["height"]) == (179, 317) and info["codec_name"] == "h264"
    assert int(info["nb_frames"]) == 72


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(int) - b).mean()) < 20


# ----------------------------------------------------------------------------- bad input


def test_bad_masks_give_clear_errors(tmp_path, odd_clip):
    clip, _, _ = odd_clip
    empty = tmp_path / "empty.png"
    cv2.imwrite(str(empty), np.zeros((179, 317), np.uint8))
    wrong = tmp_path / "wrong.png"
    cv2.imwrite(str(wrong), np.full((100, 100), 255, np.uint8))
    cases = [
        (["--mask", str(empty)], "no white pixels"),
        (["--mask", str(wrong)], "is 100x100 but the video is 317x179"),
        (["--box", "10,10,400,50"], "outside the 317x179 frame"),
        (["--mask", str(wrong), "--matte", str(tmp_path / "m.avi")], ".mkv"),
        (["--box", "10,10,50,50", "--mask-frame", "500"], "frame 500 does not exist"),
    ]
    for extra, message in cases:
        res = run_cli("track", str(clip), *extra, "--out", str(tmp_path / "m.npz"))
        assert res.returncode == 2, (extra, res.stderr)
        assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(MaskError, match="empty"):
        propagate(np.zeros((3, 20, 30, 3), np.uint8), {0: np.zeros((20, 30), bool)})


def test_object_lost_on_every_frame_is_an_error(tmp_path, odd_clip, monkeypatch):
    """Lost for part of the clip is a warning; lost for all of it fails with one line."""
    import vision.propagate
    from worker.errors import BadInput
    from worker.jobs.matte import track_to_file
    from worker.spec import JobSpec

    clip, mask, _ = odd_clip
    monkeypatch.setenv("SONOMASK_WORKSPACE", str(tmp_path / "ws"))

    def lost(frames, keys, progress=None, out=None):
        for t in range(frames.shape[0]):  # a tracker that finds nothing but the keyframe
            out[t] = keys[t] if t in keys else np.zeros(frames.shape[1:3], np.uint8)
        return out, []

    monkeypatch.setattr(vision.propagate, "propagate", lost)
    spec = JobSpec.build(video=str(clip), masks=[str(mask)])
    with pytest.raises(BadInput, match="lost on every frame"):
        track_to_file(spec, tmp_path / "m.npz", matte=tmp_path / "m.mkv")
    assert not (tmp_path / "m.npz").exists() and not (tmp_path / "m.mkv").exists()


# ----------------------------------------------------------------------------- SAM 2


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return build_tiny_sam2(tmp_path_factory.mktemp("sam2"))


def test_sam2_tracker_streams_with_bounded_memory(tiny_sam2):
    from vision.hf_video_tracker import load

    tracker = load("sam2", tiny_sam2, device="cpu")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (40, 72, 96, 3), dtype=np.uint8)
    key = np.zeros((72, 96), bool)
    key[20:50, 30:70] = True
    progress: list[float] = []
    masks, warnings = tracker.propagate(
        frames, {10: key, 30: (5.0, 5.0, 60.0, 40.0)}, lambda f, m: progress.append(f)
    )
    assert masks.shape == (40, 72, 96) and masks.dtype == np.uint8
    assert np.array_equal(masks[10], key)  # a mask keyframe is kept exactly
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 20
    assert isinstance(warnings, list)
    # Streaming: one decoded frame at a time, outputs pruned to what SAM 2 attends to.
    assert tracker.peak_frames_held <= 1
    assert tracker.peak_outputs_held <= tracker.keep
    with pytest.raises(MaskError, match="empty"):
        tracker.propagate(frames, {0: np.zeros((72, 96), bool)})


def test_sam2_track_cli_end_to_end(tmp_path, tiny_sam2, odd_clip):
    clip, mask, _ = odd_clip
    res = run_cli(
        "track", str(clip), "--mask", str(mask), "--tracker", "sam2",
        "--tracker-model", str(tiny_sam2), "--out", str(tmp_path / "m.npz"), "--no-matte",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    masks = np.load(tmp_path / "m.npz")["masks"]
    assert masks.shape == (72, 179, 317)
    assert not (tmp_path / "m_matte.mkv").exists()
    res = run_cli(
        "track", str(clip), "--mask", str(mask), "--tracker", "sam2",
        "--tracker-model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.npz"),
    )  # fmt: skip
    assert res.returncode == 2 and "SAM 2" in res.stderr, res.stderr
