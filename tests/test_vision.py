"""vision/: mask loading, box prompts, the tracker contract, flow propagation, prompt frames,
previews.

All frames are synthetic, made here: a textured object moving over a textured
background (OpenCV drawing + sensor noise), so the ground-truth mask of every frame is
known exactly.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from vision import MaskError, TrackerLoadError
from vision.choose import choose_tracker
from vision.masks import box_mask, load_mask, parse_box, resize_masks
from vision.preview import DEFAULT_COLOUR, draw_overlay, draw_overlay_frame
from vision.prompt import masked_video_for_model, motion_activity
from vision.propagate import copy_first, propagate
from vision.tracker import TRACKERS, Tracker

# ----------------------------------------------------------------------------- helpers


def _texture(h: int, w: int, rng: np.random.Generator, grain: int) -> np.ndarray:
    """Smooth random texture in [0, 1] with features about ``grain`` pixels wide."""
    t = rng.random((h // grain + 2, w // grain + 2)).astype(np.float32)
    return cv2.resize(t, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    bg = np.stack(
        [
            _texture(h, w, rng, 6) * 180 + 40,
            _texture(h, w, rng, 9) * 150 + 50,
            _texture(h, w, rng, 4) * 120 + 60,
        ],
        axis=-1,
    )
    for _ in range(12):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(bg, p0, p1, tuple(float(c) for c in rng.integers(0, 255, 3)), 2)
    return bg


def _object(rx: int, ry: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Texture patch and alpha shape (an ellipse) of an object with radii rx, ry."""
    ph, pw = 2 * ry + 1, 2 * rx + 1
    tex = np.stack(
        [
            _texture(ph, pw, rng, 3) * 200 + 30,
            _texture(ph, pw, rng, 3) * 100 + 20,
            _texture(ph, pw, rng, 2) * 200 + 40,
        ],
        axis=-1,
    )
    shape = np.zeros((ph, pw), np.float32)
    cv2.ellipse(shape, (rx, ry), (rx, ry), 0, 0, 360, 1.0, -1)
    return tex, shape


def make_clip(
    n: int = 61,
    size: tuple[int, int] = (256, 144),
    tracks: list[tuple[tuple[float, float], list[tuple[float, float]]]] | None = None,
    radii: tuple[int, int] = (22, 16),
    noise: float = 3.0,
    seed: int = 0,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames uint8 [n, h, w, 3] and one ground-truth mask stack [n, h, w] per object.

    Each track is (start centre, per-frame velocities); objects move rigidly with their
    texture, at sub-pixel positions.
    """
    w, h = size
    rng = np.random.default_rng(seed)
    if tracks is None:
        tracks = [((30.0, 70.0), [(3.0, 0.5)] * n)]
    bg = _background(h, w, rng)
    objs = [_object(*radii, rng) for _ in tracks]
    frames = np.empty((n, h, w, 3), np.uint8)
    gts = [np.zeros((n, h, w), np.uint8) for _ in tracks]
    pos = [list(start) for start, _ in tracks]
    for t in range(n):
        img = bg.copy()
        for k, ((tex, shape), (_, vel)) in enumerate(zip(objs, tracks, strict=True)):
            if t > 0:
                pos[k][0] += vel[t - 1][0]
                pos[k][1] += vel[t - 1][1]
            m = np.float32([[1, 0, pos[k][0] - radii[0]], [0, 1, pos[k][1] - radii[1]]])
            o = cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR)
            a = cv2.warpAffine(shape, m, (w, h), flags=cv2.INTER_LINEAR)
            img = img * (1 - a[..., None]) + o * a[..., None]
            gts[k][t] = a > 0.5
        img += rng.normal(0, noise, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames, gts


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a != 0, b != 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def save(path, array: np.ndarray, **kw) -> str:
    Image.fromarray(array).save(path, **kw)
    return str(path)


# ------------------------------------------------------------------------- load_mask


def test_load_mask_white_on_black(tmp_path):
    img = np.zeros((48, 64), np.uint8)
    img[10:20, 30:40] = 255
    mask = load_mask(save(tmp_path / "mask.png", img), (64, 48))
    assert mask.dtype == bool and mask.shape == (48, 64)
    assert mask.sum() == 100 and mask[10:20, 30:40].all()


def test_load_mask_any_nonzero_label_and_rgb(tmp_path):
    label = np.zeros((20, 30), np.uint8)
    label[5:8, 5:9] = 1  # a 0/1 label map counts
    assert load_mask(save(tmp_path / "label.png", label), (30, 20)).sum() == 12
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[2:4, 2:4] = (200, 30, 30)
    assert load_mask(save(tmp_path / "rgb.png", rgb), (30, 20)).sum() == 4


def test_load_mask_alpha_aware(tmp_path):
    # One colour everywhere, shape only in alpha (a layer exported with transparency).
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[3:9, 4:10, 3] = 255
    assert load_mask(save(tmp_path / "alpha.png", rgba), (30, 20)).sum() == 36
    # White paint on a transparent layer whose hidden colour is also white.
    rgba2 = np.zeros((20, 30, 4), np.uint8)
    rgba2[..., :3] = 255
    rgba2[:, :15, :3] = 0
    rgba2[0:5, 0:30, 3] = 255  # opaque top band: black on the left, white on the right
    m = load_mask(save(tmp_path / "layer.png", rgba2), (30, 20))
    assert m.sum() == 5 * 15 and m[0:5, 15:].all()


def test_load_mask_jpeg_noise_is_not_object(tmp_path):
    img = np.zeros((64, 64), np.uint8)
    img[16:48, 16:48] = 255
    m = load_mask(save(tmp_path / "mask.jpg", img, quality=60), (64, 64))
    expected = np.zeros((64, 64), bool)
    expected[16:48, 16:48] = True
    assert iou(m, expected) > 0.95


def test_load_mask_16bit_and_palette(tmp_path):
    deep = np.zeros((10, 12), np.uint16)
    deep[2:4, 2:4] = 65535
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert load_mask(tmp_path / "deep.png", (12, 10)).sum() == 4
    pal = Image.fromarray(np.where(deep > 0, 255, 0).astype(np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    assert load_mask(tmp_path / "pal.png", (12, 10)).sum() == 4


def test_load_mask_whole_frame_is_allowed(tmp_path):
    assert load_mask(save(tmp_path / "all.png", np.full((8, 8), 255, np.uint8)), (8, 8)).all()


def test_load_mask_wrong_size(tmp_path):
    path = save(tmp_path / "mask.png", np.full((480, 640), 255, np.uint8))
    with pytest.raises(MaskError) as err:
        load_mask(path, (1280, 720))
    msg = str(err.value)
    assert "mask.png is 640x480 but the video is 1280x720" in msg
    assert "draw the mask on a frame of the video" in msg and "\n" not in msg


def test_load_mask_empty(tmp_path):
    path = save(tmp_path / "mask.png", np.zeros((20, 30), np.uint8))
    with pytest.raises(MaskError, match="mask.png has no white pixels; paint the object white"):
        load_mask(path, (30, 20))


@pytest.mark.parametrize(
    "name,content",
    [
        ("garbage.png", bytes(range(256)) * 8),
        ("notes.txt", b"this is a text file, not a mask\n"),
        ("truncated.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00"),
    ],
)
def test_load_mask_unreadable(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MaskError) as err:
        load_mask(path, (30, 20))
    assert name in str(err.value) and "\n" not in str(err.value)


def test_load_mask_missing_file_and_directory(tmp_path):
    with pytest.raises(MaskError, match="nope.png does not exist"):
        load_mask(tmp_path / "nope.png", (30, 20))
    with pytest.raises(MaskError, match="not a file"):
        load_mask(tmp_path, (30, 20))


# ------------------------------------------------------------------------------ boxes


def test_parse_box_and_box_mask():
    assert parse_box("10,20,30,40") == (10.0, 20.0, 30.0, 40.0)
    assert parse_box(" 1.5, 2 ,3.5 , 4 ") == (1.5, 2.0, 3.5, 4.0)
    m = box_mask((10, 20, 30, 40), (64, 48))
    assert m.dtype == bool and m.shape == (48, 64)
    assert m.sum() == 20 * 20 and m[20:40, 10:30].all()
    # Fractional boxes cover every pixel they touch.
    assert box_mask((1.5, 1.5, 2.5, 2.5), (8, 8)).sum() == 4
    assert box_mask((0, 0, 64, 48), (64, 48)).all()


@pytest.mark.parametrize(
    "text", ["10,20,30", "10,20,30,40,50", "a,b,c,d", "", "10,,30,40", "1,2,3,nan"]
)
def test_parse_box_malformed(text):
    with pytest.raises(MaskError, match="box"):
        parse_box(text)


@pytest.mark.parametrize("text", ["30,20,10,40", "10,40,30,40"])
def test_parse_box_no_area(text):
    with pytest.raises(MaskError, match="no area"):
        parse_box(text)


@pytest.mark.parametrize("box", [(-1, 0, 10, 10), (0, 0, 65, 10), (0, 0, 10, 49)])
def test_box_mask_outside_frame(box):
    with pytest.raises(MaskError, match="outside the 64x48 frame"):
        box_mask(box, (64, 48))


# ------------------------------------------------------------------------ resize_masks


def test_resize_masks_up_down_and_thin():
    masks = np.zeros((3, 40, 60), np.uint8)
    masks[:, 10:30, 20:40] = 1
    up = resize_masks(masks, (120, 80))
    assert up.dtype == np.uint8 and up.shape == (3, 80, 120) and set(np.unique(up)) == {0, 1}
    assert iou(up[0], np.kron(masks[0], np.ones((2, 2), np.uint8))) > 0.97
    down = resize_masks(masks, (30, 20))
    assert down.shape == (3, 20, 30) and down[0, 5:15, 10:20].all() and down[0].sum() == 100
    same = resize_masks(masks.astype(bool), (60, 40))
    assert same.dtype == np.uint8 and np.array_equal(same, masks)
    # A one-pixel line survives a 4x downscale instead of vanishing.
    thin = np.zeros((1, 64, 64), bool)
    thin[0, 31, 5:60] = True
    assert resize_masks(thin, (16, 16))[0].any()
    single = resize_masks(masks[0], (30, 20))
    assert single.shape == (20, 30)


# ------------------------------------------------------------------------- propagate


def test_propagate_follows_object_forward_and_backward():
    frames, (gt,) = make_clip()  # 61 frames, object moves (3, 0.5) px per frame
    masks, warnings = propagate(frames, {30: gt[30]})
    assert masks.dtype == np.uint8 and masks.shape == gt.shape
    assert np.array_equal(masks[30], gt[30])
    assert warnings == []
    assert iou(masks[60], gt[60]) >= 0.8  # 30 frames forward
    assert iou(masks[0], gt[0]) >= 0.8  # 30 frames backward
    assert min(iou(masks[t], gt[t]) for t in range(61)) >= 0.8
    # Sanity: without tracking the object is long gone from its keyframe position.
    copied = copy_first(frames, {30: gt[30]})
    assert iou(copied[0], gt[0]) == 0.0 and iou(copied[60], gt[60]) == 0.0


def test_propagate_two_keyframes_follow_and_keep_keyframes():
    frames, (gt,) = make_clip(n=41)
    progress: list[tuple[float, str]] = []
    masks, warnings = propagate(
        frames, {0: gt[0], 40: gt[40]}, lambda f, m: progress.append((f, m))
    )
    assert np.array_equal(masks[0], gt[0]) and np.array_equal(masks[40], gt[40])
    assert min(iou(masks[t], gt[t]) for t in range(41)) >= 0.85
    assert warnings == []
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in progress)


def test_propagate_two_keyframes_blend_by_distance():
    # A still scene: each keyframe's mask stays put, so the blend is all that changes.
    frames, _ = make_clip(n=11, tracks=[((120.0, 70.0), [(0.0, 0.0)] * 11)])
    a = np.zeros(frames.shape[1:3], bool)
    b = np.zeros_like(a)
    a[40:100, 60:140] = True
    b[40:100, 100:180] = True
    masks, _ = propagate(frames, {0: a, 10: b})
    for t in range(1, 5):  # nearer keyframe 0
        assert iou(masks[t], a) > 0.95, t
    for t in range(6, 10):  # nearer keyframe 10
        assert iou(masks[t], b) > 0.95, t
    assert iou(masks[5], a & b) > 0.9  # equal weights: only where both agree


def test_propagate_rotating_growing_object_on_panning_background():
    # Camera pans (background moves 1, 0.3 px/frame) while the object turns 2 deg/frame
    # and grows 1 %/frame; keyframe in the middle, 30 frames each way.
    n, (w, h), r = 61, (320, 180), 60
    rng = np.random.default_rng(5)
    bg = _background(h + 100, w + 200, rng)
    tex, _ = _object(r, r, rng)
    shape = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    cv2.ellipse(shape, (r, r), (30, 18), 0, 0, 360, 1.0, -1)
    cv2.rectangle(shape, (r + 20, r - 5), (r + 50, r + 5), 1.0, -1)  # a handle
    frames = np.empty((n, h, w, 3), np.uint8)
    gt = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        back = bg[int(0.3 * t) : int(0.3 * t) + h, t : t + w]
        m = cv2.getRotationMatrix2D((r, r), 2.0 * (t - 30), 1 + 0.01 * (t - 30))
        m[0, 2] += w / 2 - r + 1.5 * (t - 30)
        m[1, 2] += h / 2 - r
        o, a = cv2.warpAffine(tex, m, (w, h)), cv2.warpAffine(shape, m, (w, h))
        img = back * (1 - a[..., None]) + o * a[..., None] + rng.normal(0, 3, (h, w, 3))
        frames[t] = np.clip(img, 0, 255)
        gt[t] = a > 0.5
    masks, warnings = propagate(frames, {30: gt[30]})
    assert warnings == []
    assert iou(masks[0], gt[0]) >= 0.8 and iou(masks[60], gt[60]) >= 0.8
    assert np.mean([iou(masks[t], gt[t]) for t in range(n)]) >= 0.9


def test_propagate_flat_coloured_object_jumping_far():
    # A flat red disk (no texture for flow inside) bouncing up to ~20 px per frame, 1.5x
    # its radius, like the bundled demo's ball.
    n, (w, h), r = 40, (240, 160), 14
    rng = np.random.default_rng(6)
    bg = _background(h, w, rng)
    frames = np.empty((n, h, w, 3), np.uint8)
    gt = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        cx, cy = 60 + 3 * t, 110 - 35 * abs(np.sin(2 * np.pi * t / 10))
        m = np.zeros((h, w), np.uint8)
        cv2.circle(m, (int(cx), int(cy)), r, 1, -1)
        img = bg.copy()
        img[m > 0] = (220, 40, 40)
        frames[t] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255)
        gt[t] = m
    masks, _ = propagate(frames, {0: gt[0]})
    ious = [iou(masks[t], gt[t]) for t in range(n)]
    assert min(ious) >= 0.8, np.round(ious, 2)
    copied = copy_first(frames, {0: gt[0]})
    assert np.mean([iou(copied[t], gt[t]) for t in range(n)]) < 0.3


def test_propagate_keeps_the_demo_ball_through_its_bounces():
    """The bundled demo's ball, at the working size: it falls about one radius a frame and
    goes up as fast in the next. The search window must reach behind the last motion too
    (before, the mask was left on the floor at the first bounce, frame 16)."""
    from scene import make_scene  # examples/scene.py (on the path via conftest)

    scene = make_scene(duration=2.0, width=480, height=270, fps=25.0)
    bg = scene.background()
    frames, gt = zip(*[scene.frame(i, bg)[:2] for i in range(40)], strict=True)
    frames, gt = np.stack(frames), np.stack(gt)
    masks, _ = propagate(frames, {0: gt[0]})
    ious = [iou(masks[t], gt[t]) for t in range(len(gt))]
    assert min(ious) >= 0.8, np.round(ious, 2)


@pytest.mark.xfail(
    reason="known limitation (issue 14): the flow tracker loses a flat-coloured box that "
    "shakes +-18 degrees at 6 Hz (the house scene's drum) from frame ~28 on; neither the "
    "flow nor the translation-only template re-anchoring follows the rotation",
    strict=True,
)
def test_propagate_keeps_the_shaking_drum():
    from scene import make_scene

    scene = make_scene(duration=3.0, width=320, height=180, fps=25.0)
    bg = scene.background()
    frames, gt = zip(*[(f, b) for f, _, b in (scene.frame(i, bg) for i in range(75))], strict=True)
    frames, gt = np.stack(frames), np.stack(gt)
    masks, _ = propagate(frames, {0: gt[0]})
    assert min(iou(masks[t], gt[t]) for t in range(len(gt))) >= 0.7


def _emerging_clip(n: int = 41) -> tuple[np.ndarray, np.ndarray]:
    """An object rising from behind a desk (a flat band across the bottom): a quarter of
    it shows on frame 0, all of it by the end. Truth: its visible part."""
    (w, h), rx, ry, desk = (256, 160), 30, 40, 110
    rng = np.random.default_rng(11)
    bg = _background(h, w, rng)
    tex, shape = _object(rx, ry, rng)
    frames = np.empty((n, h, w, 3), np.uint8)
    gt = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        cy = 130.0 - 1.6 * t
        m = np.float32([[1, 0, 128 - rx], [0, 1, cy - ry]])
        o, a = cv2.warpAffine(tex, m, (w, h)), cv2.warpAffine(shape, m, (w, h))
        a[desk:] = 0
        img = bg * (1 - a[..., None]) + o * a[..., None]
        img[desk:] = (90, 70, 60)
        frames[t] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255)
        gt[t] = a > 0.5
    return frames, gt


def test_refinement_grows_the_mask_over_an_emerging_object():
    """Issue 14: a mask drawn on the part that shows must grow with the object as more
    of it comes out (the chain alone keeps the keyframe's quarter), and not into the desk."""
    frames, gt = _emerging_clip()
    assert gt[-1].sum() > 3 * gt[0].sum()
    masks, _ = propagate(frames, {0: gt[0]}, refine=True)
    plain, _ = propagate(frames, {0: gt[0]}, refine=False)
    assert iou(plain[-1], gt[-1]) < 0.5  # without refinement it stays small
    ious = [iou(masks[t], gt[t]) for t in range(len(gt))]
    assert ious[-1] >= 0.8 and np.mean(ious) >= 0.8, np.round(ious, 2)
    assert not masks[:, 112:].any()  # never into the desk


def test_refinement_does_not_spill_into_a_look_alike_background():
    """A static patch of the object's own texture touches the object's lower edge while the
    object slides along it: the mask must not spread into the patch."""
    n, (w, h), rx, ry = 40, (256, 144), 24, 18
    rng = np.random.default_rng(12)
    bg = _background(h, w, rng)
    tex, shape = _object(rx, ry, rng)
    patch, _ = _object(100, 20, np.random.default_rng(12))  # same colours, other pattern
    bg[70 + ry : 70 + ry + 41, 20:221] = patch
    frames = np.empty((n, h, w, 3), np.uint8)
    gt = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        m = np.float32([[1, 0, 60 + 2.0 * t - rx], [0, 1, 70 - ry + 0.5]])
        o, a = cv2.warpAffine(tex, m, (w, h)), cv2.warpAffine(shape, m, (w, h))
        img = bg * (1 - a[..., None]) + o * a[..., None]
        frames[t] = np.clip(img + rng.normal(0, 2, img.shape), 0, 255)
        gt[t] = a > 0.5
    masks, _ = propagate(frames, {0: gt[0]}, refine=True)
    ious = [iou(masks[t], gt[t]) for t in range(n)]
    grown = [masks[t].sum() / gt[t].sum() for t in range(n)]
    assert min(ious) >= 0.85, np.round(ious, 2)
    assert max(grown) <= 1.15, np.round(grown, 2)


def test_propagate_still_scene_keeps_thin_and_whole_masks():
    frames, _ = make_clip(n=8, tracks=[((120.0, 70.0), [(0.0, 0.0)] * 8)])
    line = np.zeros(frames.shape[1:3], bool)
    line[30, 20:200] = True  # one pixel thin
    line[30:100, 220] = True
    masks, _ = propagate(frames, {0: line})
    assert all(iou(m, line) >= 0.95 for m in masks)
    whole = np.ones(frames.shape[1:3], bool)
    masks, _ = propagate(frames, {7: whole})
    assert all(m.mean() >= 0.99 for m in masks)


def test_propagate_object_leaving_frame_is_reported():
    frames, (gt,) = make_clip(n=40, size=(160, 120), tracks=[((60.0, 60.0), [(5.0, 0.0)] * 40)])
    masks, warnings = propagate(frames, {0: gt[0]})
    gone = [t for t in range(40) if not gt[t].any()]
    assert gone and all(not masks[t].any() for t in gone[2:])
    assert any("object lost" in w and "left the frame" in w for w in warnings), warnings


def test_propagate_odd_sizes_and_edges():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 255, (7, 61, 97, 3), dtype=np.uint8)
    key = np.zeros((61, 97), np.uint8)
    key[20:35, 40:60] = 1
    for keys in ({6: key}, {0: key, 3: key, 6: key}, {2: key}):
        masks, warnings = propagate(frames, keys)
        assert masks.shape == (7, 61, 97) and masks.dtype == np.uint8
        assert isinstance(warnings, list)
        for k in keys:
            assert np.array_equal(masks[k], key)
    one, warnings = propagate(frames[:1], {0: key})
    assert one.shape == (1, 61, 97) and np.array_equal(one[0], key) and warnings == []
    tiny = rng.integers(0, 255, (3, 9, 11, 3), dtype=np.uint8)
    small_key = np.zeros((9, 11), bool)
    small_key[3:6, 3:6] = True
    masks, _ = propagate(tiny, {1: small_key})
    assert masks.shape == (3, 9, 11)
    copied = copy_first(frames, {0: key, 6: key})
    assert copied.shape == (7, 61, 97) and copied.dtype == np.uint8
    assert np.array_equal(copied[3], key) and np.array_equal(copied[5], key)


def test_propagate_bad_inputs():
    frames = np.zeros((5, 20, 30, 3), np.uint8)
    key = np.zeros((20, 30), bool)
    key[5:10, 5:10] = True
    with pytest.raises(MaskError, match="outside the clip"):
        propagate(frames, {5: key})
    with pytest.raises(MaskError, match="empty"):
        propagate(frames, {0: np.zeros((20, 30), bool)})
    with pytest.raises(MaskError, match="30x20"):
        propagate(frames, {0: np.ones((10, 10), bool)})
    with pytest.raises(MaskError, match="no keyframe"):
        propagate(frames, {})
    with pytest.raises(MaskError, match="uint8"):
        propagate(frames.astype(np.float32), {0: key})


# ------------------------------------------------------------------------- tracker


def _track(tracker: Tracker, frames, size=None, masks=None, boxes=None, progress=None):
    tracker.init(frames, size=size)
    for k, m in (masks or {}).items():
        tracker.add_mask(k, m)
    for k, b in (boxes or {}).items():
        tracker.add_box(k, b)
    return tracker.propagate(progress)


def test_tracker_contract_is_propagate_and_copy_first():
    frames, (gt,) = make_clip(n=21)
    keys = {0: gt[0], 20: gt[20]}
    seen: list[float] = []
    flow = _track(choose_tracker("flow"), frames, masks=keys, progress=lambda f, m: seen.append(f))
    masks, warnings = propagate(frames, keys)
    assert flow.tracker == "flow" and np.array_equal(flow.masks, masks)
    assert flow.warnings == warnings and flow.exact == {0, 20}
    assert seen == sorted(seen) and seen[-1] == 1.0
    copy = _track(choose_tracker("copy"), frames, masks=keys)
    assert np.array_equal(copy.masks, copy_first(frames, keys)) and copy.warnings == []
    assert set(TRACKERS) == {"flow", "copy", "sam2", "sam3", "edgetam"}


def test_tracker_scales_full_size_keyframes_to_the_working_size():
    """Keyframes drawn at the video's size on frames at the working size, as the worker
    gives them: masks resized like resize_masks, a box tracked as its pixels."""
    full, (gt,) = make_clip(n=9, size=(256, 144))
    frames = np.stack([cv2.resize(f, (128, 72), interpolation=cv2.INTER_AREA) for f in full])
    box = (20.5, 50.0, 61.0, 90.25)
    work_key = resize_masks(gt[0], (128, 72)).astype(bool)
    work_box = resize_masks(box_mask(box, (256, 144)), (128, 72)).astype(bool)
    out = np.zeros((9, 72, 128), np.uint8)
    tracker = choose_tracker("flow")
    tracker.init(frames, size=(256, 144), out=out)
    tracker.add_mask(0, gt[0])
    tracker.add_box(8, box)
    result = tracker.propagate()
    assert result.masks is out and result.exact == {0, 8}
    expected, _ = propagate(frames, {0: work_key, 8: work_box})
    assert np.array_equal(out, expected)
    assert np.array_equal(out[8], work_box)
    # A later keyframe on the same frame replaces the earlier one.
    tracker.init(frames, size=(256, 144))
    tracker.add_box(0, box)
    tracker.add_mask(0, gt[0])
    assert np.array_equal(tracker.propagate().masks[0], work_key)


def test_tracker_bad_inputs():
    frames = np.zeros((5, 20, 30, 3), np.uint8)
    key = np.zeros((40, 60), bool)
    key[5:10, 5:10] = True
    tracker = choose_tracker("flow")
    with pytest.raises(RuntimeError, match="init"):
        tracker.propagate()
    tracker.init(frames, size=(60, 40))
    with pytest.raises(MaskError, match="outside the clip"):
        tracker.add_mask(5, key)
    with pytest.raises(MaskError, match="empty"):
        tracker.add_mask(0, np.zeros((40, 60), bool))
    with pytest.raises(MaskError, match="30x20 but the keyframes are drawn at 60x40"):
        tracker.add_mask(0, key[:20, :30])
    with pytest.raises(MaskError, match="outside the 60x40 frame"):
        tracker.add_box(0, (10.0, 10.0, 70.0, 20.0))
    with pytest.raises(MaskError, match="no keyframe"):
        tracker.propagate()
    with pytest.raises(MaskError, match="uint8"):
        tracker.init(frames.astype(np.float32))
    with pytest.raises(ValueError, match="unknown tracker"):
        choose_tracker("optical")
    with pytest.raises(TrackerLoadError, match="needs SAM 2 weights"):
        choose_tracker("sam2")


# --------------------------------------------------------------------------- prompt


def test_masked_video_for_model_zeroes_exactly_the_object():
    rng = np.random.default_rng(1)
    frames = rng.integers(1, 256, (4, 61, 97, 3), dtype=np.uint8)  # no zero pixels
    masks = np.zeros((4, 61, 97), np.uint8)
    masks[:, 10:30, 20:50] = 1
    masks[2] = 0  # a frame without the object
    out = masked_video_for_model(frames, masks)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    obj = masks.astype(bool)
    assert (out[obj] == 0).all()
    assert np.array_equal(out[~obj], frames[~obj])
    # Bit-for-bit the reference processor's mask_videos: video * mask.eq(0).
    assert np.array_equal(out, frames * (masks == 0)[..., None])
    assert not np.shares_memory(out, frames)


def test_masked_video_for_model_resizes_masks():
    frames = np.full((2, 80, 120, 3), 200, np.uint8)
    small = np.zeros((2, 40, 60), bool)
    small[:, 10:20, 15:30] = True
    out = masked_video_for_model(frames, small)
    assert (out[:, 20:40, 30:60] == 0).all()
    assert (out[:, :20] == 200).all() and (out[:, 40:] == 200).all()
    assert (out == 0).all(axis=-1).sum() == 2 * 20 * 30
    with pytest.raises(MaskError, match="3 masks for 2 frames"):
        masked_video_for_model(frames, np.zeros((3, 80, 120), bool))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_motion_activity_separates_objects_moving_at_different_times():
    n = 60
    # Object A moves during frames 0-19 and 40-49; B during 20-39 and 50-59.
    moves_a = np.array([t < 20 or 40 <= t < 50 for t in range(n)])
    moves_b = np.array([20 <= t < 40 or t >= 50 for t in range(n)])
    vel_a = [(2.0, 0.0) if moves_a[t + 1] else (0.0, 0.0) for t in range(n - 1)]
    vel_b = [(0.0, 1.5) if moves_b[t + 1] else (0.0, 0.0) for t in range(n - 1)]
    frames, (gt_a, gt_b) = make_clip(
        n=n, size=(256, 160), tracks=[((50.0, 50.0), vel_a), ((190.0, 40.0), vel_b)], seed=4
    )
    obj_a, bg_a = motion_activity(frames, gt_a)
    obj_b, bg_b = motion_activity(frames, gt_b)
    for arr in (obj_a, bg_a, obj_b, bg_b):
        assert arr.shape == (n,) and arr.dtype == np.float32 and (arr >= 0).all()
    assert obj_a[0] == obj_a[1] and bg_a[0] == bg_a[1]
    assert _corr(obj_a, moves_a) > 0.9
    assert _corr(obj_b, moves_b) > 0.9
    assert _corr(obj_a, obj_b) < -0.5
    # What A's mask calls background is where B's motion shows up, and vice versa.
    assert _corr(bg_a, moves_b) > 0.8
    assert _corr(bg_b, moves_a) > 0.8
    # Moving clearly exceeds still (sensor noise only).
    assert obj_a[moves_a].min() > 2 * obj_a[~moves_a].max()


def test_motion_activity_edge_cases():
    frames = np.zeros((1, 20, 30, 3), np.uint8)
    obj, bg = motion_activity(frames, np.zeros((1, 20, 30), np.uint8))
    assert obj.tolist() == [0.0] and bg.tolist() == [0.0]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (5, 61, 97, 3), dtype=np.uint8)
    masks = np.zeros((5, 31, 49), np.uint8)  # other resolution, object absent
    obj, bg = motion_activity(frames, masks)
    assert (obj == 0).all() and (bg > 0).all()
    obj, bg = motion_activity(frames, np.ones((5, 61, 97), np.uint8))  # object everywhere
    assert (obj > 0).all() and (bg == 0).all()


# --------------------------------------------------------------------------- preview


def test_draw_overlay():
    frames = np.full((3, 61, 97, 3), 100, np.uint8)
    masks = np.zeros((3, 61, 97), np.uint8)
    masks[:, 20:40, 30:70] = 1
    masks[2] = 0
    before = frames.copy()
    out = draw_overlay(frames, masks)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert np.array_equal(frames, before)  # input untouched
    inside = out[0, 30, 50].astype(int)
    assert (inside != 100).any()
    # Tinted toward the overlay colour.
    assert np.sign(inside - 100).tolist() == np.sign(np.array(DEFAULT_COLOUR) - 100).tolist()
    assert (out[0, :10] == 100).all() and (out[0, 50:] == 100).all()  # far outside unchanged
    assert (out[0, 20, 30:70] == DEFAULT_COLOUR).all(axis=-1).sum() > 30  # contour drawn
    assert np.array_equal(out[2], frames[2])  # empty mask: frame as is
    # Masks at another resolution; one frame at a time.
    half = masks[:, ::2, ::2]
    assert draw_overlay(frames, half).shape == frames.shape
    assert draw_overlay_frame(frames[0], masks[0]).shape == (61, 97, 3)
    with pytest.raises(MaskError):
        draw_overlay(frames, masks[:2])
