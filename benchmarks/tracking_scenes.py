"""Tracking sequences with exact ground truth, made from real photographs.

Each sequence composites an irregular cut-out of a photograph (scikit-image's bundled
sample images) over another photograph that the camera pans and zooms across, renders
motion blur by averaging sub-frame positions, adds sensor noise and then goes through
lossy H.264 (real ffmpeg, as camera footage does) and back. The ground truth of a frame
is the visible part of the object (alpha after occluders > 0.5), exactly known because
we drew it.

    from benchmarks.tracking_scenes import SCENES, make_sequence
    seq = make_sequence("occlusion", size=(854, 480))
    seq.frames  # uint8 [F, H, W, 3] RGB, decoded from H.264
    seq.masks   # uint8 [F, H, W], 1 = object

Sequences are cached as the encoded MP4 plus the masks (in ``$SONOMASK_BENCH_CACHE`` or
the temp folder) so a second run only decodes.

Scenes (what each one tests): ``slow`` (slow drift, light blur), ``fast`` (up to 40
px/frame at 854x480 with motion blur and a shaking camera), ``rotate_scale`` (half a turn and
0.6x-1.3x), ``occlusion`` (another object passes in front, hiding up to ~60 %),
``deform`` (non-rigid bending and a swinging limb), ``lighting`` (the light dims to 40 %
and warms, a shadow sweeps across), ``exit_reenter`` (leaves the frame completely for 16
frames and comes back), ``distractor`` (a look-alike copy crosses right behind it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

VERSION = 3  # bump when rendering changes, so cached sequences are rebuilt
FPS = 30.0


@dataclass
class Sequence:
    """One rendered, encoded and decoded clip with its exact ground truth."""

    name: str
    frames: np.ndarray  # uint8 [F, H, W, 3] RGB as decoded from H.264
    masks: np.ndarray  # uint8 [F, H, W], 1 = visible object
    video: Path  # the H.264 file the frames were decoded from
    fps: float = FPS


# ----------------------------------------------------------------------------- photos


def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image photograph, RGB uint8."""
    import skimage.data as data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    img = getattr(data, name)()
    return img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)


# Where in each photograph the object is cut out from: (x0, y0, x1, y1) in its pixels.
_CUTS = {
    "chelsea": (110, 0, 400, 290),  # the cat's face
    "astronaut": (120, 0, 400, 300),  # head and shoulders
    "coffee": (150, 0, 550, 360),  # cup and saucer
    "motorcycle": (40, 150, 560, 460),  # the bike
    "rocket": (250, 0, 500, 427),  # launch tower and rocket
}


@dataclass
class Cutout:
    """An RGB patch and its alpha (an irregular blob over the photo), float32."""

    rgb: np.ndarray  # [ph, pw, 3] in [0, 255]
    alpha: np.ndarray  # [ph, pw] in [0, 1]


# Variant 1 (``make_sequence(..., variant=1)``) replays every scene's motion with other
# photographs and outlines: a held-out set for checking that tuning on variant 0 carried
# over. Set only while a sequence is built (see ``make_sequence``).
_VARIANT = 0
_SWAP_CUTOUT = {
    "chelsea": "astronaut",
    "astronaut": "rocket",
    "coffee": "chelsea",
    "motorcycle": "coffee",
    "rocket": "chelsea",
}
_SWAP_BACKGROUND = {"motorcycle": "coffee", "coffee": "motorcycle"}


def make_cutout(photo: str, seed: int, side: int = 240, limb: bool = False) -> Cutout:
    """An irregular cut-out ``side`` px tall of the named photograph.

    The outline is a random smooth radial curve (lobes up to ~25 % of the radius) with an
    optional thin limb, drawn at 4x and averaged down so the edge is anti-aliased like a
    real object's.
    """
    if _VARIANT:
        photo, seed = _SWAP_CUTOUT[photo], seed + 100 * _VARIANT
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = _CUTS[photo]
    crop = _photo(photo)[y0:y1, x0:x1]
    pw = round(side * (x1 - x0) / (y1 - y0))
    rgb = cv2.resize(crop, (pw, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    up = 4
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 7):
        r += rng.uniform(0.03, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    r = r / r.max() * 0.47
    cx, cy = pw / 2, side / 2
    pts = np.stack([cx + r * pw * np.cos(theta), cy + r * side * np.sin(theta)], axis=1)
    big = np.zeros((side * up, pw * up), np.uint8)
    cv2.fillPoly(big, [np.round(pts * up).astype(np.int32)], 255, cv2.LINE_AA)
    if limb:  # a thin arm reaching out to the right edge of the patch
        a = (round((cx + 0.3 * pw) * up), round(cy * up))
        b = (round((pw - 3) * up), round((cy - 0.25 * side) * up))
        cv2.line(big, a, b, 255, max(1, round(0.05 * side * up)), cv2.LINE_AA)
    alpha = cv2.resize(big, (pw, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
    return Cutout(rgb, alpha)


# ----------------------------------------------------------------------------- motion


@dataclass
class Pose:
    """Where a cut-out is at time t: centre (fraction of frame width/height), degrees, scale."""

    cx: float
    cy: float
    angle: float = 0.0
    scale: float = 1.0
    bend: float = 0.0  # non-rigid bending amplitude, fraction of the patch size
    phase: float = 0.0  # phase of the bending wave


PoseFn = Callable[[float], Pose]


@dataclass
class Actor:
    cut: Cutout
    pose: PoseFn
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class Scene:
    """A recipe: background photo and camera path, the tracked object, other actors."""

    background: str
    camera: Callable[[float], tuple[float, float, float]]  # (dx, dy, zoom) at time t
    target: Actor
    occluders: list[Actor]  # drawn in front of the target
    behind: list[Actor]  # drawn between the background and the target
    frames: int = 72
    blur: float = 0.5  # exposure as a fraction of the frame interval
    light: Callable[[float], tuple[float, float, float]] | None = None  # RGB gain
    shadow: Callable[[float], float] | None = None  # x (fraction of width) of a shadow edge


def _bend(cut: Cutout, amount: float, phase: float) -> tuple[np.ndarray, np.ndarray]:
    """The cut-out bent by a travelling sine wave (amount: fraction of its size)."""
    if amount == 0:
        return cut.rgb, cut.alpha
    ph, pw = cut.alpha.shape
    gy, gx = np.mgrid[0:ph, 0:pw].astype(np.float32)
    # Displacement grows from the top down (a bending neck or a waving flag).
    dx = amount * pw * np.sin(2 * np.pi * gy / ph + phase) * (gy / ph)
    dy = 0.5 * amount * ph * np.sin(2 * np.pi * gx / pw + 1.3 * phase) * (gx / pw)
    mx, my = gx - dx, gy - dy
    border = {"borderMode": cv2.BORDER_CONSTANT, "borderValue": 0}
    rgb = cv2.remap(cut.rgb, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.remap(cut.alpha, mx, my, cv2.INTER_LINEAR, **border)
    return rgb, alpha


def _place(actor: Actor, t: float, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGB and alpha of an actor at time t, in frame pixels."""
    p = actor.pose(t)
    rgb, alpha = _bend(actor.cut, p.bend, p.phase)
    ph, pw = alpha.shape
    s = p.scale * h / 480.0
    m = cv2.getRotationMatrix2D((pw / 2, ph / 2), p.angle, s)
    m[0, 2] += p.cx * w - pw / 2
    m[1, 2] += p.cy * h - ph / 2
    pre = rgb * alpha[..., None] * np.asarray(actor.tint, np.float32)
    flags = cv2.INTER_LINEAR
    out_rgb = cv2.warpAffine(pre, m, (w, h), flags=flags, borderValue=0)
    out_a = cv2.warpAffine(alpha, m, (w, h), flags=flags, borderValue=0)
    return out_rgb, out_a


def _speed(actor: Actor, t: float, w: int, h: int) -> float:
    """Rough speed in px/frame of the actor's centre, for the number of blur samples."""
    a, b = actor.pose(t - 0.5), actor.pose(t + 0.5)
    return math.hypot((b.cx - a.cx) * w, (b.cy - a.cy) * h) + abs(b.angle - a.angle) * 2


def _render_actor(
    actor: Actor, t: float, w: int, h: int, blur: float
) -> tuple[np.ndarray, np.ndarray]:
    """Premultiplied RGB and alpha, averaged over the exposure (motion blur)."""
    samples = 1 if blur <= 0 else int(np.clip(math.ceil(_speed(actor, t, w, h) * blur / 2), 1, 9))
    if samples == 1:
        return _place(actor, t, w, h)
    rgb = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    for k in range(samples):
        r, a = _place(actor, t + blur * (k / (samples - 1) - 0.5), w, h)
        rgb += r
        alpha += a
    return rgb / samples, alpha / samples


def _background(name: str, w: int, h: int) -> np.ndarray:
    """The background photo scaled to cover 1.5x the frame (room for the camera to move)."""
    if _VARIANT:
        name = _SWAP_BACKGROUND.get(name, name)
    img = _photo(name).astype(np.float32)
    s = max(1.5 * w / img.shape[1], 1.5 * h / img.shape[0])
    size = (math.ceil(img.shape[1] * s), math.ceil(img.shape[0] * s))
    return cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)


def render(scene: Scene, size: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [F, H, W, 3] (before encoding) and ground truth uint8 [F, H, W]."""
    w, h = size
    rng = np.random.default_rng(seed)
    bg = _background(scene.background, w, h)
    bh, bw = bg.shape[:2]
    n = scene.frames
    frames = np.empty((n, h, w, 3), np.uint8)
    masks = np.empty((n, h, w), np.uint8)
    for i in range(n):
        t = float(i)
        dx, dy, zoom = scene.camera(t)
        cam = np.array(
            [
                [1 / zoom, 0, bw / 2 - w / (2 * zoom) + dx * w],
                [0, 1 / zoom, bh / 2 - h / (2 * zoom) + dy * h],
            ],
            np.float32,
        )
        img = cv2.warpAffine(
            bg,
            cam,
            (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
        for actor in scene.behind:
            r, a = _render_actor(actor, t, w, h, scene.blur)
            img = img * (1 - a[..., None]) + r
        r, a = _render_actor(scene.target, t, w, h, scene.blur)
        img = img * (1 - a[..., None]) + r
        visible = a
        for actor in scene.occluders:
            r, oa = _render_actor(actor, t, w, h, scene.blur)
            img = img * (1 - oa[..., None]) + r
            visible = visible * (1 - oa)
        if scene.shadow is not None:
            edge = scene.shadow(t) * w
            ramp = np.clip((np.arange(w, dtype=np.float32) - edge) / (0.08 * w), 0, 1)
            img = img * (0.45 + 0.55 * ramp)[None, :, None]
        if scene.light is not None:
            img = img * np.asarray(scene.light(t), np.float32)
        img = img + rng.normal(0, 2.0, img.shape).astype(np.float32)
        frames[i] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
        masks[i] = visible > 0.5
    return frames, masks


# ----------------------------------------------------------------------------- scenes


def _smooth(a: float, b: float, t: float, t0: float, t1: float) -> float:
    """From a to b between t0 and t1 with an ease-in-out."""
    u = float(np.clip((t - t0) / (t1 - t0), 0, 1))
    return a + (b - a) * (3 * u * u - 2 * u * u * u)


def _scene_slow() -> Scene:
    cut = make_cutout("chelsea", 1)
    return Scene(
        "motorcycle",
        lambda t: (0.002 * t, 0.0005 * t, 1.0),
        Actor(cut, lambda t: Pose(0.35 + 0.0025 * t, 0.5 + 0.03 * math.sin(t / 12), 0.1 * t)),
        [],
        [],
    )


def _scene_fast() -> Scene:
    cut = make_cutout("astronaut", 2)
    return Scene(
        "coffee",
        lambda t: (0.004 * math.sin(t * 1.7), 0.004 * math.cos(t * 2.3), 1.0),
        Actor(
            cut,
            lambda t: Pose(
                0.5 + 0.33 * math.sin(t / 7.0), 0.5 + 0.12 * math.sin(t / 4.0), 0.0, 0.85
            ),
        ),
        [],
        [],
        blur=0.6,
    )


def _scene_rotate_scale() -> Scene:
    cut = make_cutout("coffee", 3)
    return Scene(
        "motorcycle",
        lambda t: (-0.002 * t, 0.0, 1.0 + 0.002 * t),
        Actor(cut, lambda t: Pose(0.45 + 0.002 * t, 0.5, 2.5 * t, 0.6 + 0.7 * t / 71)),
        [],
        [],
    )


def _scene_occlusion() -> Scene:
    cut = make_cutout("chelsea", 4)
    occ = make_cutout("motorcycle", 5, side=200)
    return Scene(
        "coffee",
        lambda t: (0.001 * t, 0.0, 1.0),
        Actor(cut, lambda t: Pose(0.3 + 0.004 * t, 0.5, 0.0, 0.9)),
        [Actor(occ, lambda t: Pose(1.0 - 0.011 * t, 0.55 - 0.1 * math.sin(t / 25), 0.0, 1.0))],
        [],
    )


def _scene_deform() -> Scene:
    cut = make_cutout("astronaut", 6, limb=True)
    return Scene(
        "motorcycle",
        lambda t: (0.0015 * t, 0.0, 1.0),
        Actor(
            cut,
            lambda t: Pose(
                0.45 + 0.1 * math.sin(t / 15),
                0.5,
                8 * math.sin(t / 9),
                1.0,
                bend=0.07 * math.sin(t / 8),
                phase=t / 6,
            ),
        ),
        [],
        [],
    )


def _scene_lighting() -> Scene:
    cut = make_cutout("coffee", 7)
    return Scene(
        "motorcycle",
        lambda t: (0.0015 * t, 0.0, 1.0),
        Actor(cut, lambda t: Pose(0.4 + 0.003 * t, 0.5 + 0.05 * math.sin(t / 10), -0.3 * t, 0.9)),
        [],
        [],
        light=lambda t: (
            _smooth(1.0, 0.55, t, 10, 40) * _smooth(1.0, 1.5, t, 45, 65),
            _smooth(1.0, 0.45, t, 10, 40) * _smooth(1.0, 1.6, t, 45, 65),
            _smooth(1.0, 0.35, t, 10, 40) * _smooth(1.0, 1.8, t, 45, 65),
        ),
        shadow=lambda t: 1.1 - 0.018 * t,
    )


def _scene_exit_reenter() -> Scene:
    cut = make_cutout("chelsea", 8)

    def pose(t: float) -> Pose:
        if t < 30:
            cx = _smooth(0.55, 1.35, t, 0, 30)
        elif t < 46:
            cx = 1.35
        else:
            cx = _smooth(1.35, 0.6, t, 46, 80)
        return Pose(cx, 0.5 + 0.05 * math.sin(t / 8), 0.0, 0.9)

    return Scene("coffee", lambda t: (0.001 * t, 0.0, 1.0), Actor(cut, pose), [], [], frames=84)


def _scene_distractor() -> Scene:
    cut = make_cutout("chelsea", 9)
    twin = Cutout(cut.rgb.copy(), cut.alpha.copy())
    return Scene(
        "motorcycle",
        lambda t: (0.001 * t, 0.0, 1.0),
        Actor(cut, lambda t: Pose(0.3 + 0.004 * t, 0.45, 0.0, 0.8)),
        [],
        [
            Actor(
                twin,
                lambda t: Pose(0.85 - 0.009 * t, 0.58, 0.0, 0.8),
                tint=(1.06, 0.97, 0.95),
            )
        ],
    )


def _scene_morph() -> Scene:
    """A soft-textured object whose shape keeps changing one way (a sleeve being pulled):
    nothing to re-anchor to, so a single keyframe drifts; used to show corrections."""
    cut = make_cutout("coffee", 10, limb=True)
    cut = Cutout(cv2.GaussianBlur(cut.rgb, (0, 0), 6), cut.alpha)
    return Scene(
        "motorcycle",
        lambda t: (0.001 * t, 0.0, 1.0),
        Actor(
            cut,
            lambda t: Pose(0.45 + 0.002 * t, 0.5, 0.0, 1.0, bend=0.22 * t / 59, phase=1.2),
        ),
        [],
        [],
        frames=60,
    )


EXTRA_SCENES: dict[str, Callable[[], Scene]] = {"morph": _scene_morph}
"""Scenes outside the benchmark's mean, for tests (``make_sequence`` knows them too)."""

SCENES: dict[str, Callable[[], Scene]] = {
    "slow": _scene_slow,
    "fast": _scene_fast,
    "rotate_scale": _scene_rotate_scale,
    "occlusion": _scene_occlusion,
    "deform": _scene_deform,
    "lighting": _scene_lighting,
    "exit_reenter": _scene_exit_reenter,
    "distractor": _scene_distractor,
}


# ----------------------------------------------------------------------------- encoding


def encode(
    frames: np.ndarray, path: Path, fps: float = FPS, crf: int = 23, pix_fmt: str | None = None
) -> None:
    """Write RGB frames as H.264 (libx264, yuv420p; yuv444p for odd sizes) with real ffmpeg."""
    n, h, w, _ = frames.shape
    pix_fmt = pix_fmt or ("yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p")
    args = [
        "ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "pipe:0",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", pix_fmt,
        "-g", "48", str(path),
    ]  # fmt: skip
    subprocess.run(args, input=np.ascontiguousarray(frames).tobytes(), check=True)


def decode(path: Path) -> np.ndarray:
    """Every frame of a video as RGB uint8 [F, H, W, 3] (ffmpeg, display rotation applied)."""
    probe = subprocess.run(
        [
            "ffprobe", "-v", "error", "-select_streams", "v:0",
            "-show_entries", "stream=width,height", "-of", "json", str(path),
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    s = json.loads(probe.stdout)["streams"][0]
    w, h = int(s["width"]), int(s["height"])
    raw = subprocess.run(
        [
            "ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-fps_mode", "passthrough", "pipe:1",
        ],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


def _cache_dir() -> Path:
    root = os.environ.get("SONOMASK_BENCH_CACHE") or Path(tempfile.gettempdir()) / "sonomask-bench"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_sequence(
    name: str,
    size: tuple[int, int] = (854, 480),
    crf: int = 23,
    cache: bool = True,
    variant: int = 0,
) -> Sequence:
    """Render, encode (H.264 crf ``crf``) and decode one scene; cached by its parameters.

    ``variant`` 1 is the held-out set: the same motions with other photographs.
    """
    global _VARIANT
    recipes = {**SCENES, **EXTRA_SCENES}
    if name not in recipes:
        raise KeyError(f"unknown scene {name!r}; one of {', '.join(recipes)}")
    w, h = size
    key = hashlib.sha1(f"{VERSION}-{name}-{w}x{h}-{crf}-{variant}".encode()).hexdigest()[:12]
    folder = _cache_dir() if cache else Path(tempfile.mkdtemp(prefix="sonomask-bench-"))
    video = folder / f"{name}{'-v' + str(variant) if variant else ''}-{w}x{h}-{key}.mp4"
    truth = video.with_suffix(".npz")
    if not (cache and video.exists() and truth.exists()):
        _VARIANT = variant
        try:
            frames, masks = render(recipes[name](), size, seed=sum(map(ord, name)) + variant)
        finally:
            _VARIANT = 0
        part = video.with_suffix(".part.mp4")
        encode(frames, part, crf=crf)
        np.savez_compressed(truth, masks=masks)
        os.replace(part, video)
    masks = np.load(truth)["masks"]
    frames = decode(video)
    if len(frames) != len(masks):
        raise RuntimeError(f"{video}: decoded {len(frames)} frames, expected {len(masks)}")
    return Sequence(name, frames, masks, video)
