"""Issue 18, lean on long footage: masks stored packed in the work folder with the outputs
unchanged, ``--no-preview``, and hardware decoding that falls back to plain decoding."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from conftest import run_cli
from scene import first_mask, make_scene, write_clip

from vision import masks as vmasks
from worker import arrays, files, media
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages import STAGES, run_stage
from worker.stages import track as track_stage
from worker.stages.common import working_frames, working_masks
from worker.workspace import Workspace


def _settings(tmp_path, **over):
    return Settings(**{**Settings.from_env().__dict__, "workspace": tmp_path / "ws", **over})


def _run(ws, settings, upto):
    for name, fn in STAGES:
        run_stage(ws, name, fn, settings)
        if name == upto:
            return


def test_packed_masks_read_back_what_was_written(tmp_path):
    rng = np.random.default_rng(7)
    masks = (rng.random((9, 5, 13)) > 0.6).astype(np.uint8)  # a width not a multiple of 8
    with arrays.create_packed_masks(tmp_path / "m.npy", 9, (13, 5)) as pm:
        assert pm.shape == (9, 5, 13) and pm.dtype == np.uint8 and len(pm) == 9
        for i in (4, 0, 8):  # any order, as a tracker going backwards writes
            pm[i] = masks[i] * 255  # any non-zero is the object
        pm[1:4] = masks[1:4]
        pm.write(5, masks[5:8])
    assert (tmp_path / "m.npy").stat().st_size - 128 == 9 * 5 * 2  # 13 pixels: 2 bytes a row
    with arrays.open_packed_masks(tmp_path / "m.npy", 13) as pm:
        assert np.array_equal(pm[0:9], masks)
        assert np.array_equal(pm[-1], masks[8])
        assert np.array_equal(pm[[3, 3, 1, 7]], masks[[3, 3, 1, 7]])
        assert np.array_equal(pm[::2], masks[::2])
        assert np.array_equal(pm.read(2, 6), masks[2:6])
    with pytest.raises(ValueError):
        arrays.open_packed_masks(tmp_path / "m.npy", 17)  # 3 bytes a row: not 17 pixels
    # Deflated for the later stages: the same masks, any rows, any order.
    with arrays.open_packed_masks(tmp_path / "m.npy", 13) as pm:
        arrays.deflate_masks(pm, tmp_path / "m.z")
    with arrays.DeflatedMasks(tmp_path / "m.z") as dm:
        assert dm.shape == (9, 5, 13) and len(dm) == 9
        assert np.array_equal(dm[:], masks) and np.array_equal(dm[-1], masks[8])
        assert np.array_equal(dm[[8, 3, 3, 0]], masks[[8, 3, 3, 0]])
        assert np.array_equal(dm[::4], masks[::4]) and np.array_equal(dm.read(2, 6), masks[2:6])
        assert dm.read(4, 4).shape == (0, 5, 13)
    data = (tmp_path / "m.z").read_bytes()
    (tmp_path / "m.z").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="shorter"):
        arrays.DeflatedMasks(tmp_path / "m.z")
    (tmp_path / "m.z").write_bytes(data[:-3] + b"xyz")  # the last frame's stream garbled
    with arrays.DeflatedMasks(tmp_path / "m.z") as dm:
        assert np.array_equal(dm[0], masks[0])
        with pytest.raises(OSError, match="damaged"):
            dm[8]
    (tmp_path / "m.z").write_bytes(b"not masks")
    with pytest.raises(ValueError, match="not a deflated mask file"):
        arrays.DeflatedMasks(tmp_path / "m.z")


def test_a_long_clip_s_tracked_masks_take_little_room(tmp_path):
    """An hour at 480x270 packed is 1.5 GB; while tracked, a frame's rows without the
    object stay holes on disk; deflated, a moving blob costs bytes a frame."""
    n, w, h = 500, 480, 270
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        cv2.circle(masks[i], (40 + (i % 400), 135), 30 + i % 20, 1, -1)
    with arrays.create_packed_masks(tmp_path / "m.npy", n, (w, h)) as pm:
        for i in range(n):
            pm[i] = masks[i]
        held = (tmp_path / "m.npy").stat().st_blocks * 512
        assert held < 0.7 * n * h * w / 8, held  # the rows around the blob, not the frame
        pm[7] = masks[300]  # written again: whole, so nothing of the first blob is left
        masks[7] = masks[300]
        assert np.array_equal(pm[:], masks)
        arrays.deflate_masks(pm, tmp_path / "m.z")
    size = (tmp_path / "m.z").stat().st_size
    assert size < n * w * h / 8 / 20, size  # 20 times smaller than packed, at least
    with arrays.DeflatedMasks(tmp_path / "m.z") as dm:
        assert np.array_equal(dm[:], masks)


@pytest.fixture(scope="module")
def hd_clip(tmp_path_factory):
    """A 2 s 960x540 clip: its working frames (480x270) are scaled, as on real footage."""
    d = tmp_path_factory.mktemp("hd")
    scene = make_scene(duration=2.0, width=960, height=540, fps=25.0)
    write_clip(scene, d / "clip.mp4", stereo=True, crf=20)
    cv2.imwrite(str(d / "mask.png"), first_mask(scene, "a"))
    return d / "clip.mp4", d / "mask.png"


def test_work_masks_are_packed_and_masks_npz_is_unchanged(tmp_path, hd_clip):
    clip, mask = hd_clip
    spec = JobSpec.build(
        video=str(clip), masks=[str(mask)], separator="classical", out=str(tmp_path)
    )
    settings = _settings(tmp_path)
    ws = Workspace.create(settings.workspace, spec, "job")
    _run(ws, settings, "track")
    frames, times = working_frames(ws)
    n, h, w = frames.shape[:3]
    assert (w, h) == (480, 270)
    # On disk: a packed row per frame, not a byte per pixel.
    data = ws.file(files.MASKS_WORK).stat().st_size - 128  # .npy header (version 2: 128 bytes)
    assert data / n < h * w / 4, f"{data / n:.0f} bytes a mask frame for {w}x{h}"
    assert data / n <= h * ((w + 7) // 8)
    # The unpacked path: the same tracker into an in-memory uint8 array, each frame resized
    # to full size as the stage always did (vision.masks.resize_masks, the keyframe as drawn).
    # masks.npz must be the same, pixel for pixel.
    size = tuple(ws.read_json(files.PROBE)["display_size"])
    full, drawn = track_stage._keyframes(spec.keyframes, times, size)
    tracker = track_stage.choose_job_tracker(spec, settings)
    tracker.init(frames, size=size, out=None)
    for i in drawn:
        tracker.add_mask(i, full[i])
    result = tracker.propagate(None)
    plain = np.asarray(result.masks, dtype=np.uint8)
    assert plain.shape == (n, h, w) and plain.any()
    with working_masks(ws) as packed:
        assert np.array_equal(packed[0:n], plain)
    job = np.load(ws.file(files.MASKS))["masks"]
    assert job.dtype == np.uint8 and job.shape == (n, size[1], size[0])
    assert set(np.unique(job)) <= {0, 1}
    for i in range(n):
        want = full[i] if i in result.exact else vmasks.resize_masks(plain[i][None], size)[0]
        assert np.array_equal(job[i], want), f"frame {i}"
    # The stages after track read the packed masks (prompt measures the object's motion).
    _run(ws, settings, "prompt")
    assert ws.has(files.ACTIVITY)


def test_no_preview_leaves_no_preview(tmp_path, scene_mp4, mask_a):
    out = tmp_path / "out"
    res = run_cli(
        "separate",
        str(scene_mp4),
        "--mask",
        str(mask_a),
        "--separator",
        "classical",
        "--out",
        str(out),
        "--no-preview",
    )
    assert res.returncode == 0, res.stderr
    names = {p.name for p in out.iterdir()}
    assert "preview.mp4" not in names
    assert {"target.wav", "residual.wav", "masks.npz", "job.json"} <= names
    manifest = json.loads((out / "job.json").read_text())
    assert "preview.mp4" not in manifest["outputs"]
    assert manifest["timings"]["preview"] < 0.5  # the stage had nothing to do


def test_spec_preview_false_skips_the_stage(tmp_path, scene_mp4, mask_a):
    spec = JobSpec.build(video=str(scene_mp4), masks=[str(mask_a)], preview=False)
    assert JobSpec.model_validate_json(spec.model_dump_json()).preview is False
    assert JobSpec.build(video=str(scene_mp4), masks=[str(mask_a)]).preview is True


def test_failed_hwaccel_falls_back_to_plain_decoding(tmp_path, scene_mp4, mask_a, monkeypatch):
    monkeypatch.setenv("SONOMASK_HWACCEL", "nosuchaccel")  # ffmpeg refuses this name
    settings = Settings(**{**Settings.from_env().__dict__, "workspace": tmp_path / "ws"})
    assert settings.hwaccel == "nosuchaccel"
    spec = JobSpec.build(video=str(scene_mp4), masks=[str(mask_a)], out=str(tmp_path))
    ws = Workspace.create(settings.workspace, spec, "job")
    _run(ws, settings, "demux")
    decode = ws.manifest()["frames"]["decode"]
    assert "hardware decoding (nosuchaccel) failed, decoded plainly" in decode
    # The frames are what plain decoding gives, byte for byte.
    p = media.probe(scene_mp4)
    wsize = tuple(ws.manifest()["frames"]["working_size"])
    plain_times = media.decode_frames(p, tmp_path / "plain.raw", wsize)
    plain = np.fromfile(tmp_path / "plain.raw", np.uint8).reshape(-1, wsize[1], wsize[0], 3)
    frames, times = working_frames(ws)
    assert np.array_equal(times, plain_times)
    # The stored frames are the plain decode's, exactly (lossless H.264).
    stored = frames[:]
    assert stored.shape == plain.shape
    assert np.array_equal(stored, plain)
    frames.close()
    _, offsets = media.decode_stored_frames(p, tmp_path / "again.h264", wsize)
    assert (tmp_path / "again.h264").read_bytes() == ws.file(files.FRAMES).read_bytes()
    assert np.array_equal(offsets, frames.offsets)
    # auto: ffmpeg's own choice (no device here: its software decoder), the same frames.
    notes: list[str] = []
    media.decode_frames(p, tmp_path / "auto.raw", wsize, hwaccel="auto", threads=2, notes=notes)
    assert (tmp_path / "auto.raw").read_bytes() == (tmp_path / "plain.raw").read_bytes()


def test_hwaccel_setting_is_checked(monkeypatch):
    monkeypatch.setenv("SONOMASK_HWACCEL", "cuda -i x")
    with pytest.raises(ValueError, match="SONOMASK_HWACCEL"):
        Settings.from_env()
    monkeypatch.setenv("SONOMASK_HWACCEL", "None")
    assert Settings.from_env().hwaccel == "none"


@pytest.mark.parametrize(
    "work,size",
    [
        ((480, 270), (1920, 1080)),  # 1080p: a quarter
        ((480, 270), (1280, 720)),  # 720p: 3/8
        ((480, 270), (3840, 2160)),  # 4K: an eighth
        ((270, 480), (1080, 1920)),  # portrait
        ((480, 384), (720, 576)),  # PAL: 2/3, not a power of two: the whole frame
        ((480, 270), (1918, 1080)),  # odd ratios: the whole frame
        ((320, 180), (320, 180)),  # no scaling
    ],
)
def test_full_size_masks_equal_resize_masks(work, size):
    rng = np.random.default_rng(sum(work) + sum(size))
    up = track_stage.FullSize(work, size)
    w, h = work
    cases = [np.zeros((h, w), np.uint8), np.ones((h, w), np.uint8)]
    for _ in range(24):  # blobs anywhere, at the borders too, some a pixel thin
        m = np.zeros((h, w), np.uint8)
        for _ in range(rng.integers(1, 4)):
            cx, cy = rng.integers(-10, w + 10), rng.integers(-10, h + 10)
            rx, ry = rng.integers(0, 40), rng.integers(0, 40)
            cv2.ellipse(
                m,
                (int(cx), int(cy)),
                (int(rx), int(ry)),
                float(rng.integers(0, 180)),
                0,
                360,
                1,
                -1,
            )
        m[rng.random((h, w)) > 0.9995] = 1  # specks: single pixels
        cases.append(m)
    line = np.zeros((h, w), np.uint8)
    line[h // 2, 3:9] = 1  # thinner than a destination pixel would keep after rounding
    cases.append(line)
    for m in cases:
        assert np.array_equal(up(m), vmasks.resize_masks(m[None], size)[0])


def test_stored_frames_read_any_frame_in_any_order(tmp_path):
    """Lossless: every frame reads back exactly, in any order, across keyframe groups."""
    rng = np.random.default_rng(0)
    base = cv2.resize(rng.integers(0, 256, (18, 32, 3), dtype=np.uint8), (64, 36))
    n = 2 * arrays.FRAME_GOP + 7  # three groups, the last one short
    clip = np.stack([np.roll(base, 3 * t, axis=1) for t in range(n)])
    clip[n // 2] = rng.integers(0, 256, clip.shape[1:], dtype=np.uint8)  # a cut to noise
    writer = arrays.VideoFramesWriter(tmp_path / "f.h264", (64, 36))
    for f in clip:
        writer.add(f)
    writer.finish()
    writer.close()
    assert len(writer.offsets) == n + 1
    frames = arrays.VideoFrames(tmp_path / "f.h264", np.asarray(writer.offsets), (64, 36))
    assert frames.shape == (n, 36, 64, 3) and len(frames) == n
    assert np.array_equal(frames[:], clip)
    # Forwards, backwards (decoded ahead in a thread), jumps and index arrays agree.
    assert all(np.array_equal(frames[t], clip[t]) for t in range(n))
    assert all(np.array_equal(frames[t], clip[t]) for t in reversed(range(n)))
    assert np.array_equal(frames[[40, 5, 5, 2, n - 1, 26]], clip[[40, 5, 5, 2, n - 1, 26]])
    assert np.array_equal(frames.read(20, 30), clip[20:30])
    with pytest.raises(IndexError):
        frames[n]
    part = frames.view(23, 52)  # a range as a clip of its own, across two group seams
    assert len(part) == 29 and np.array_equal(part[:], clip[23:52])
    assert np.array_equal(part[-1], clip[51])
    import pickle

    again = pickle.loads(pickle.dumps(part))  # another process opens the same file
    assert np.array_equal(again[4], clip[27])
    again.close()
    part.close()
    frames.close()
    # A damaged file is an error, not a wrong picture.
    data = bytearray((tmp_path / "f.h264").read_bytes())
    (tmp_path / "f.h264").write_bytes(bytes(data[:-10]))
    with pytest.raises(ValueError, match="shorter"):
        arrays.VideoFrames(tmp_path / "f.h264", np.asarray(writer.offsets), (64, 36))
    data[writer.offsets[30] : writer.offsets[31]] = bytes(writer.offsets[31] - writer.offsets[30])
    (tmp_path / "f.h264").write_bytes(bytes(data))
    frames = arrays.VideoFrames(tmp_path / "f.h264", np.asarray(writer.offsets), (64, 36))
    assert np.array_equal(frames[3], clip[3])  # another group is unharmed
    with pytest.raises(OSError, match="damaged"):
        frames[30]
    frames.close()
