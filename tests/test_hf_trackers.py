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


def _tiny_sam3(folder: Path) -> Path:
    """SAM 3's tracker with random weights, a 112 px input and a 2-layer ViT."""
    import torch
    from transformers import (
        Sam2VideoVideoProcessor,
        Sam3ImageProcessor,
        Sam3TrackerVideoConfig,
        Sam3TrackerVideoModel,
        Sam3TrackerVideoProcessor,
    )
    from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig, Sam3ViTConfig

    s, patch, hidden = 112, 14, 128
    grid = s // patch
    vit = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=s,
        patch_size=patch,
        window_size=4,
        global_attn_indexes=[1],
        pretrain_image_size=s,
    )
    vision = Sam3VisionConfig(
        backbone_config=vit,
        fpn_hidden_size=hidden,
        backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
    )
    config = Sam3TrackerVideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": s, "patch_size": patch},
        mask_decoder_config=_MASK_DECODER,
        image_size=s,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        **_MEMORY,
    )
    torch.manual_seed(0)
    _sees_the_object(Sam3TrackerVideoModel(config)).save_pretrained(folder)
    size = {"height": s, "width": s}
    Sam3TrackerVideoProcessor(
        image_processor=Sam3ImageProcessor(
            size=size, mask_size={"height": s // 4, "width": s // 4}
        ),
        video_processor=Sam2VideoVideoProcessor(size=size),
    ).save_pretrained(folder)
    return folder


def _tiny_edgetam(folder: Path) -> Path:
    """EdgeTAM with random weights, a 128 px input, a small Hiera and a small perceiver."""
    import torch
    from transformers import (
        EdgeTamVideoConfig,
        EdgeTamVideoModel,
        Sam2ImageProcessor,
        Sam2VideoProcessor,
        Sam2VideoVideoProcessor,
    )
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    s, hidden = 128, 128
    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=[s, s],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        fpn_hidden_size=hidden,
    )
    config = EdgeTamVideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": s, "patch_size": 16},
        mask_decoder_config=_MASK_DECODER,
        image_size=s,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_mlp_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_attention_rope_k_sizes=[4, 4],
        perceiver_resampler_num_latents=16,
        perceiver_resampler_num_latents_2d=16,
        perceiver_resampler_hidden_size=64,
        perceiver_resampler_mlp_intermediate_size=64,
        perceiver_resampler_attention_head_dim=64,  # one head as wide as the resampler
        perceiver_resampler_num_layers=1,
        **_MEMORY,
    )
    torch.manual_seed(0)
    _sees_the_object(EdgeTamVideoModel(config)).save_pretrained(folder)
    size = {"height": s, "width": s}
    Sam2VideoProcessor(  # EdgeTAM's checkpoints name SAM 2's processor
        image_processor=Sam2ImageProcessor(size=size),
        video_processor=Sam2VideoVideoProcessor(size=size),
    ).save_pretrained(folder)
    return folder


def _sees_the_object(model):  # noqa: ANN001, ANN202
    """Bias the object-score head to "present": a random head may say "no object" on every
    frame, and the worker rightly refuses a track lost everywhere but the keyframe."""
    import torch

    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(8.0)
    return model.eval()


_MASK_DECODER = {
    "hidden_size": 128,
    "mlp_dim": 64,
    "num_attention_heads": 2,
    "iou_head_hidden_dim": 32,
}
_MEMORY = {
    "memory_encoder_hidden_size": 128,
    "memory_encoder_output_channels": 64,  # narrower than the features, as in the checkpoints
    "mask_downsampler_embed_dim": 128,
    "memory_fuser_embed_dim": 128,
    "memory_fuser_intermediate_dim": 64,
}
BUILDERS = {"sam3": _tiny_sam3, "edgetam": _tiny_edgetam}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Tiny random SAM 3 tracker and EdgeTAM checkpoints, each in its own folder."""
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
