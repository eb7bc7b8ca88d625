"""SAM 3's tracker and EdgeTAM beside SAM 2: the same contract, loaded only from local weights.

transformers' ``Sam3TrackerVideoModel`` and ``EdgeTamVideoModel`` are built here with random
weights and tiny configurations, saved with ``save_pretrained`` like real checkpoints (no
download), and run end to end on a small clip encoded and decoded by real ffmpeg: through
``choose_tracker`` from a mask keyframe and from a box keyframe, and through the
``sonomask`` command. Random weights track nothing in particular, so what is checked is
the contract (shapes, dtypes, exact keyframes, boxes segmented by the model, progress,
bounded memory) and the errors, plus which trackers a server offers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli
from tiny_trackers import BUILDERS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from scene import first_mask, make_scene, write_clip  # noqa: E402

from vision import TrackerLoadError  # noqa: E402
from vision.choose import choose_tracker  # noqa: E402
from vision.masks import box_mask, resize_masks  # noqa: E402
from vision.tracker import TRACKERS, WEIGHTED_TRACKERS  # noqa: E402

FULL = (192, 112)  # the clip's size: keyframes are drawn at it
WORK = (96, 56)  # the frames the trackers get (the worker's working size, smaller)
FRAMES = 30
BOX_FRAME = 12


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Tiny random SAM 2, SAM 3 tracker and EdgeTAM checkpoints, each in its own folder."""
    pytest.importorskip("transformers")
    return {name: build(tmp_path_factory.mktemp(name)) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 30-frame H.264 clip at FULL size with its frame-0 mask (PNG, FULL size), the frames
    decoded at WORK size, and the object's true mask on BOX_FRAME (FULL size)."""
    d = tmp_path_factory.mktemp("clip")
    scene = make_scene(duration=FRAMES / 25, width=FULL[0], height=FULL[1], fps=25.0)
    video = d / "clip.mp4"
    write_clip(scene, video, stereo=True, crf=20)
    drawn = first_mask(scene)
    mask_png = d / "mask.png"
    cv2.imwrite(str(mask_png), drawn)
    frames = _decode(video, WORK)
    _, truth, _ = scene.frame(BOX_FRAME, scene.background())
    return video, mask_png, drawn > 0, frames, truth > 0


def _decode(video: Path, size: tuple[int, int]) -> np.ndarray:
    """Every frame of ``video`` as uint8 RGB at ``size``, decoded by ffmpeg."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(video), "-vf", f"scale={size[0]}:{size[1]}",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
        capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, size[1], size[0], 3)


def _box_around(mask: np.ndarray, margin: int = 3) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        float(max(0, xs.min() - margin)),
        float(max(0, ys.min() - margin)),
        float(min(w, xs.max() + 1 + margin)),
        float(min(h, ys.max() + 1 + margin)),
    )


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("prompt", ["mask", "box"])
@pytest.mark.parametrize("name", ["sam3", "edgetam"])
def test_video_model_tracks_a_real_clip_through_the_contract(
    name, prompt, weights, clip, tmp_path, one_torch_thread
):
    _, _, drawn, frames, truth = clip
    n = len(frames)
    tracker = choose_tracker(name, weights=weights[name], device="cpu")
    assert tracker.name == name
    # Masks go to a file, as in the worker, a frame at a time.
    out = np.lib.format.open_memmap(tmp_path / "m.npy", "w+", np.uint8, (n, WORK[1], WORK[0]))
    tracker.init(frames, size=FULL, out=out)
    if prompt == "mask":
        key = 0
        tracker.add_mask(key, drawn)
    else:  # in the middle: tracked forward, then backward to frame 0
        key = BOX_FRAME
        box = _box_around(truth)
        tracker.add_box(key, box)
    seen: list[float] = []
    result = tracker.propagate(lambda f, m: seen.append(f))

    assert result.tracker == name and result.masks is out
    assert out.shape == (n, WORK[1], WORK[0]) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1}
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 10
    assert all(isinstance(w, str) for w in result.warnings)
    if prompt == "mask":  # kept exactly, at the working size the contract scales it to
        assert result.exact == {key}
        assert np.array_equal(out[key], resize_masks(drawn, WORK))
    else:  # the model's segmentation of the box, not the rectangle
        assert result.exact == frozenset()
        rectangle = resize_masks(box_mask(box, FULL), WORK)
        assert not np.array_equal(out[key], rectangle)
    # Frames where the model saw no object are said so, one warning for the lot.
    empty = [t for t in range(n) if not out[t].any()]
    assert bool(empty) == any("object lost" in w for w in result.warnings)
    # Streaming: one decoded frame at a time, outputs pruned to what the model attends to
    # (without pruning it would hold one output per frame: 30 here).
    model = tracker.model
    assert model.peak_frames_held <= 1
    assert model.keep == 5 and model.peak_outputs_held <= model.keep < n


def test_corrections_and_bad_keyframes(weights, one_torch_thread):
    """A mask and a later box on the same clip; an empty mask is refused in one line."""
    from vision import MaskError
    from vision.hf_video_tracker import load

    model = load("sam3", weights["sam3"], device="cpu")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (24, 48, 64, 3), dtype=np.uint8)
    key = np.zeros((48, 64), bool)
    key[10:30, 20:44] = True
    masks, warnings = model.propagate(frames, {5: key, 16: (4.0, 4.0, 40.0, 30.0)})
    assert masks.shape == (24, 48, 64) and masks.dtype == np.uint8
    assert np.array_equal(masks[5], key) and isinstance(warnings, list)
    with pytest.raises(MaskError, match="empty"):
        model.propagate(frames, {0: np.zeros((48, 64), bool)})


@pytest.mark.parametrize("name", ["sam2", "sam3", "edgetam"])
def test_several_objects_are_one_session_and_each_comes_out_as_alone(
    name, weights, clip, one_torch_thread
):
    """Three objects joining at different keyframes (a mask on 0; a box on 12 and a mask
    correction on 20; a mask on 25): one pass reads each frame once per direction, and each
    object's masks equal, pixel for pixel, what it gets tracked alone (each object keeps
    its own memory, as in SAM 2's video predictor); then they are made exclusive."""
    from vision.hf_video_tracker import load
    from vision.objects import ObjectKeyframes, track_objects

    _, _, drawn, frames, truth = clip
    n = len(frames)
    first = resize_masks(drawn, WORK).astype(bool)
    second = np.zeros(WORK[::-1], bool)
    second[5:25, 50:80] = True
    third = np.zeros(WORK[::-1], bool)
    third[30:50, 10:30] = True
    box = _box_around(resize_masks(truth, WORK))
    keys = [{0: first}, {12: box, 20: second}, {25: third}]
    model = load(name, weights[name], device="cpu")

    before = model.frames_read
    together = model.propagate_objects(frames, keys)
    read_together = model.frames_read - before
    alone = []
    for k in keys:
        before = model.frames_read
        alone.append((model.propagate(frames, k)[0], model.frames_read - before))
    # forward from frame 0 to the end, backward from frame 25 (the last first keyframe) to 0
    assert read_together == n + 26
    assert [c for _, c in alone] == [n, (n - 12) + 13, (n - 25) + 26]
    for (masks, warnings), (masks_alone, _) in zip(together, alone, strict=True):
        assert np.array_equal(masks, masks_alone)
        assert all(isinstance(w, str) for w in warnings)

    # Through the worker's path: the tracker is a JointTracker, so one session serves all.
    tracker = choose_tracker(name, weights=weights[name], device="cpu")
    objects = [
        ObjectKeyframes("a", masks={0: first}),
        ObjectKeyframes("b", masks={20: second}, boxes={12: box}),
        ObjectKeyframes("c", masks={25: third}),
    ]
    outs = [np.zeros((n, WORK[1], WORK[0]), np.uint8) for _ in objects]
    seen: list[float] = []
    before = model.frames_read
    results, order = track_objects(
        lambda j: tracker, frames, WORK, objects, outs, lambda f, m: seen.append(f)
    )
    assert model.frames_read - before == n + 26
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert [r.exact for r in results] == [{0}, {20}, {25}]
    assert order.shape == (n, 3)
    claimed = sum(o.astype(int) for o in outs)
    assert claimed.max() <= 1  # exclusive
    counts = sum(m.astype(int) for m, _ in alone)
    for j, (masks_alone, _) in enumerate(alone):
        mine = masks_alone.astype(bool)
        assert not (outs[j].astype(bool) & ~mine).any()  # nothing gained
        uncontested = mine & (counts == 1)
        assert np.array_equal(outs[j].astype(bool) & uncontested, uncontested)  # nor lost


def test_missing_or_wrong_weights_fail_in_one_line(weights, tmp_path):
    cases = [
        (("sam3", None), "tracker sam3 needs SAM 3 weights: a folder saved by transformers"),
        (("edgetam", None), "needs EdgeTAM weights: .*EdgeTamVideoModel.save_pretrained"),
        (("sam3", tmp_path / "nowhere"), "nowhere does not exist; give SAM 3 weights"),
        (("edgetam", tmp_path), "has no config.json; give EdgeTAM weights"),
        (("sam3", weights["edgetam"]), r"holds EdgeTAM weights \(edgetam_video\), not SAM 3"),
        (("edgetam", weights["sam3"]), r"holds SAM 3 weights \(sam3_tracker_video\), not EdgeTAM"),
        (
            ("sam3", "sonomask-tests/no-such-model"),
            "not in the Hugging Face cache either .nothing is downloaded.",
        ),
    ]
    for (name, source), words in cases:
        with pytest.raises(TrackerLoadError, match=words) as err:
            choose_tracker(name, weights=source, device="cpu")
        assert "\n" not in str(err.value)


def test_the_trackers_are_named_in_one_place():
    from vision.hf_video_tracker import FAMILIES
    from worker.spec import JobSpec

    assert set(WEIGHTED_TRACKERS) == set(FAMILIES) == {"sam2", "sam3", "edgetam"}
    assert set(WEIGHTED_TRACKERS) < set(TRACKERS)
    for name in TRACKERS:
        assert JobSpec.build(video="v.mp4", masks=["m.png"], tracker=name).tracker == name


# ----------------------------------------------------------------------------- configuration


def _settings(monkeypatch, **env: str):
    from worker.settings import Settings

    for var in ("SONOMASK_TRACKER_MODEL", "SONOMASK_TRACKER_MODELS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    return Settings.from_env()


def test_a_server_offers_a_video_model_only_with_its_weights(monkeypatch):
    none = _settings(monkeypatch)
    assert [t for t in TRACKERS if none.offers_tracker(t)] == ["flow", "copy"]
    only_sam3 = _settings(monkeypatch, SONOMASK_TRACKER_MODEL="sam3:/models/sam3")
    assert [t for t in TRACKERS if only_sam3.offers_tracker(t)] == ["flow", "copy", "sam3"]
    assert only_sam3.tracker_model is None  # no SAM 2 default (what the page read before)
    s = _settings(
        monkeypatch,
        SONOMASK_TRACKER_MODEL="/models/sam2-tiny,edgetam:/models/edgetam",
        SONOMASK_TRACKER_MODELS="tiny=/models/sam2-tiny,big=sam3:facebook/sam3,b=sam3:/m/b",
    )
    assert [t for t in TRACKERS if s.offers_tracker(t)] == list(TRACKERS)
    assert s.tracker_model == s.tracker_default("sam2") == "/models/sam2-tiny"
    assert s.tracker_default("edgetam") == "/models/edgetam"
    assert s.tracker_default("sam3") == "/m/b"  # no default given: its first name
    assert s.tracker_model_names("sam3") == ["b", "big"]
    assert s.tracker_model_names("sam2") == ["tiny"]
    assert s.tracker_models["big"] == "facebook/sam3"
    for bad, words in [
        ({"SONOMASK_TRACKER_MODEL": "sam4:/models/x"}, "TRACKER: sam2, sam3, edgetam"),
        ({"SONOMASK_TRACKER_MODEL": "sam3:"}, "is not \\[TRACKER:\\]WEIGHTS"),
        ({"SONOMASK_TRACKER_MODEL": "sam3:/a,sam3:/b"}, "two default weights for tracker sam3"),
        ({"SONOMASK_TRACKER_MODELS": "x=edgetam:"}, "SONOMASK_TRACKER_MODELS"),
    ]:
        with pytest.raises(ValueError, match=words):
            _settings(monkeypatch, **bad)


def test_a_client_names_weights_only_from_the_list_made_for_its_tracker(monkeypatch):
    from worker.errors import BadInput
    from worker.spec import JobSpec
    from worker.stages.models import (
        NotOffered,
        check_tracker_config,
        local_models,
        resolve_tracker_model,
    )

    s = _settings(
        monkeypatch,
        SONOMASK_TRACKER_MODEL="sam3:/models/sam3",
        SONOMASK_TRACKER_MODELS="tiny=/models/sam2-tiny,fast=edgetam:/models/edgetam",
    )
    assert resolve_tracker_model("sam3", None, s) == "/models/sam3"
    assert resolve_tracker_model("edgetam", "fast", s) == "/models/edgetam"
    assert resolve_tracker_model("flow", None, s) is None
    with pytest.raises(
        NotOffered, match="'tiny' is sam2 weights, not edgetam; choose one of: fast"
    ):
        resolve_tracker_model("edgetam", "tiny", s)
    with pytest.raises(
        NotOffered, match="'fast' is edgetam weights, not sam3; this server has no sam3 weights to"
    ):
        resolve_tracker_model("sam3", "fast", s)
    for hostile in ("/etc", "../models", "facebook/sam3", "someone/any-repo"):
        for tracker in TRACKERS:
            with pytest.raises(NotOffered, match="not one this server offers"):
                resolve_tracker_model(tracker, hostile, s)
    with local_models():  # the local user's own run may name a folder
        assert resolve_tracker_model("sam3", "/my/sam3", s) == "/my/sam3"

    def spec(tracker: str, model: str | None = None) -> JobSpec:
        return JobSpec.build(video="v.mp4", masks=["m.png"], tracker=tracker, tracker_model=model)

    check_tracker_config(spec("sam3"), s)
    check_tracker_config(spec("edgetam", "fast"), s)
    with pytest.raises(BadInput, match="tracker sam2 needs SAM 2 weights and this server has none"):
        check_tracker_config(spec("sam2"), _settings(monkeypatch, SONOMASK_TRACKER_MODEL="sam3:/x"))
    with pytest.raises(BadInput, match="use one of flow, copy, sam3$"):
        check_tracker_config(
            spec("edgetam"), _settings(monkeypatch, SONOMASK_TRACKER_MODEL="sam3:/x")
        )


# ----------------------------------------------------------------------------- the command


def test_separate_with_sam3_end_to_end(weights, clip, tmp_path):
    video, mask, _, _, _ = clip
    out = tmp_path / "out"
    res = run_cli(
        "separate", str(video), "--mask", str(mask), "--tracker", "sam3",
        "--tracker-model", str(weights["sam3"]), "--out", str(out), "--mode", "isolate",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    masks = np.load(out / "masks.npz")["masks"]
    assert masks.shape == (FRAMES, FULL[1], FULL[0]) and masks.dtype == np.uint8
    assert np.array_equal(masks[0], (cv2.imread(str(mask), cv2.IMREAD_GRAYSCALE) > 127))
    params = json.loads((out / "job.json").read_text())["params"]
    assert params["tracker"] == "sam3" and params["tracker_model"] == str(weights["sam3"])
    # SAM 3 ran: the masks are its own (the clip is small, so the working size is the
    # clip's), not flow's, which would keep to the ball (a 20th of the frame).
    tracker = choose_tracker("sam3", weights=weights["sam3"], device="cpu")
    tracker.init(_decode(video, FULL))
    tracker.add_mask(0, masks[0])
    ours = tracker.propagate().masks.astype(bool)
    theirs = masks.astype(bool)
    iou = [(ours[t] & theirs[t]).sum() / max(1, (ours[t] | theirs[t]).sum()) for t in range(FRAMES)]
    assert np.mean(iou) > 0.95, iou


def test_track_with_the_operators_edgetam(weights, clip, tmp_path, monkeypatch, one_torch_thread):
    """No --tracker-model: the default weights chosen by the tracker's name in
    SONOMASK_TRACKER_MODEL (in-process, like `sonomask track`, so torch loads once)."""
    from worker.jobs.matte import track_to_file
    from worker.spec import JobSpec

    video, mask, _, _, _ = clip
    settings = _settings(
        monkeypatch,
        SONOMASK_TRACKER_MODEL=f"/not/sam2,edgetam:{weights['edgetam']}",
        SONOMASK_WORKSPACE=str(tmp_path / "ws"),
    )
    spec = JobSpec.build(video=str(video), masks=[str(mask)], tracker="edgetam")
    warnings = track_to_file(spec, tmp_path / "m.npz", settings=settings)
    masks = np.load(tmp_path / "m.npz")["masks"]
    assert masks.shape == (FRAMES, FULL[1], FULL[0]) and masks[1:].any()
    assert isinstance(warnings, list)


def test_the_command_says_in_one_line_what_weights_to_give(weights, clip, tmp_path):
    video, mask, _, _, _ = clip
    env = _clean_env()
    for extra, words in [
        (["--tracker-model", str(tmp_path / "nowhere")], "nowhere does not exist; give SAM 3"),
        ([], "--tracker sam3 needs SAM 3 weights: give --tracker-model"),
        (["--tracker-model", str(weights["edgetam"])], "holds EdgeTAM weights"),
    ]:
        res = run_cli(
            "separate", str(video), "--mask", str(mask), "--tracker", "sam3", *extra,
            "--out", str(tmp_path / "x"), env=env,
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], res.stderr
        assert not (tmp_path / "x").exists()


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("SONOMASK_TRACKER_MODEL")}
