"""User masks in: mask images and boxes become boolean [H, W] object masks (1 = object).

Every problem with what a person handed us raises ``MaskError`` with one line naming the
file (or box) and saying what to change, so the worker can show it as-is.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from vision.errors import MaskError

Size = tuple[int, int]
"""(width, height) in pixels, the order people and ffprobe say it in."""

Box = tuple[float, float, float, float]
"""(x0, y0, x1, y1) in pixels; x grows right, y grows down; x1 > x0, y1 > y0."""

# Lossy formats leave compression noise around 0, so "any non-zero" would light up the
# whole background; for them a pixel is object when it is at least half-bright.
_LOSSY_FORMATS = {"JPEG", "MPO", "JPEG2000", "WEBP"}


def _check_size(size: Size) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise MaskError(f"frame size must be positive, got {width}x{height}")
    return width, height


def load_mask(path: str | os.PathLike[str], size: Size) -> np.ndarray:
    """Read a mask image drawn on a frame of the video; return bool [H, W], True = object.

    Any image Pillow reads works. Object pixels are the non-zero ones after converting to
    grayscale (for lossy formats such as JPEG: the ones at least half-bright). When the
    image has an alpha channel, transparent pixels are never object, and if its colour is
    uniform (a single-colour layer exported with transparency) alpha alone is the mask.
    A mask covering the whole frame is allowed (it may be meant); an empty one is not.
    """
    width, height = _check_size(size)
    p = Path(path)
    name = p.name or str(p)
    if not p.exists():
        raise MaskError(f"mask file {name} does not exist")
    if not p.is_file():
        raise MaskError(f"mask {name} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                fmt = img.format or ""
                if img.size != (width, height):
                    w, h = img.size
                    raise MaskError(
                        f"{name} is {w}x{h} but the video is {width}x{height}; "
                        "draw the mask on a frame of the video"
                    )
                img.seek(0)
                img.load()
                obj = _object_pixels(img, lossy=fmt in _LOSSY_FORMATS)
    except MaskError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise MaskError(f"{name} is not an image Pillow can read; save the mask as a PNG") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MaskError(f"{name} could not be read as an image ({exc}); save it as a PNG") from None
    if obj.shape != (height, width):  # pragma: no cover - Pillow reported one size, decoded another
        raise MaskError(f"{name} decoded to an unexpected size {obj.shape[1]}x{obj.shape[0]}")
    if not obj.any():
        raise MaskError(f"{name} has no white pixels; paint the object white")
    return obj


def _object_pixels(img: Image.Image, lossy: bool) -> np.ndarray:
    """The object pixels of a decoded image, bool [H, W] (see ``load_mask``)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode == "PA":
        img = img.convert("RGBA")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(img)
        return values > (values.max() / 2 if lossy else 0)

    alpha = None
    bands = img.getbands()
    if "A" in bands or "a" in bands:
        alpha = np.asarray(img.getchannel("A" if "A" in bands else "a"))
        if alpha.min() == alpha.max():  # fully opaque (or uniform): alpha says nothing
            alpha = None

    gray = np.asarray(img.convert("L"))
    obj = gray >= 128 if lossy else gray > 0
    if alpha is None:
        return obj
    colour = np.asarray(img.convert("RGB"))
    if (colour == colour.reshape(-1, 3)[0]).all():  # one colour everywhere: alpha is the mask
        return alpha >= 128 if lossy else alpha > 0
    return obj & (alpha > 0)


def parse_box(text: str) -> Box:
    """Parse ``"x0,y0,x1,y1"`` (pixels, spaces allowed) into a box; reject malformed ones."""
    parts = [s.strip() for s in str(text).replace(";", ",").split(",")]
    if len(parts) != 4 or any(not s for s in parts):
        raise MaskError(
            f"box {text!r} must be four numbers x0,y0,x1,y1 (pixels), e.g. 100,50,300,400"
        )
    try:
        x0, y0, x1, y1 = (float(s) for s in parts)
    except ValueError:
        raise MaskError(
            f"box {text!r} must be four numbers x0,y0,x1,y1 (pixels), e.g. 100,50,300,400"
        ) from None
    box = (x0, y0, x1, y1)
    _check_box_shape(box, text)
    return box


def _check_box_shape(box: Box, label: object) -> None:
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise MaskError(f"box {label} has a non-finite coordinate")
    if x1 <= x0 or y1 <= y0:
        raise MaskError(
            f"box {label} has no area: it needs x1 > x0 and y1 > y0 (x0,y0 = top-left, x1,y1 = bottom-right)"
        )


def box_mask(box: Box, size: Size) -> np.ndarray:
    """Rasterise a box into a bool [H, W] mask; every pixel the box overlaps is object.

    The box must lie inside the frame (0 <= x0 < x1 <= width, same for y) so a box drawn
    for a different resolution is caught instead of silently clipped.
    """
    width, height = _check_size(size)
    if len(box) != 4:
        raise MaskError(f"box {box} must have four numbers x0,y0,x1,y1")
    b = tuple(float(v) for v in box)
    label = ",".join(f"{v:g}" for v in b)
    _check_box_shape(b, label)  # type: ignore[arg-type]
    x0, y0, x1, y1 = b
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise MaskError(
            f"box {label} is outside the {width}x{height} frame; "
            f"use pixel coordinates with 0 <= x <= {width} and 0 <= y <= {height}"
        )
    c0, c1 = int(math.floor(x0)), max(int(math.ceil(x1)), int(math.floor(x0)) + 1)
    r0, r1 = int(math.floor(y0)), max(int(math.ceil(y1)), int(math.floor(y0)) + 1)
    mask = np.zeros((height, width), dtype=bool)
    mask[r0 : min(r1, height), c0 : min(c1, width)] = True
    return mask


def resize_masks(masks: np.ndarray, size: Size) -> np.ndarray:
    """Resize masks [F, h, w] (or one [h, w]) to ``size``; uint8 0/1 out, same rank as in.

    Works one frame at a time so only the output is held at full size. Upscaling
    interpolates linearly and thresholds at 0.5 (smooth edges, no blocky staircase);
    downscaling averages areas and keeps pixels at least half covered. A non-empty mask
    never comes out empty: if the object is thinner than a pixel of the target size, every
    target pixel it touches is kept instead.
    """
    width, height = _check_size(size)
    arr = np.asarray(masks)
    single = arr.ndim == 2
    if single:
        arr = arr[None]
    if arr.ndim != 3:
        raise MaskError(f"masks must be [F, H, W] (or [H, W]), got shape {arr.shape}")
    n, h, w = arr.shape
    out = np.empty((n, height, width), dtype=np.uint8)
    if (h, w) == (height, width):
        np.not_equal(arr, 0, out=out, casting="unsafe")
        return out[0] if single else out
    shrinking = width <= w and height <= h
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    for i in range(n):
        src = (arr[i] != 0).astype(np.float32)
        small = cv2.resize(src, (width, height), interpolation=interp)
        frame = small > 0.5
        if not frame.any() and src.any():
            frame = cv2.resize(src, (width, height), interpolation=cv2.INTER_AREA) > 0
            if not frame.any():
                frame = cv2.resize(src, (width, height), interpolation=cv2.INTER_NEAREST) > 0
        out[i] = frame
    return out[0] if single else out


def check_clip(frames: np.ndarray, keyframes: object) -> tuple[int, int, int]:
    """The (frames, height, width) of a clip a tracker can run on, or a MaskError saying why:
    ``check_frames``, and at least one keyframe."""
    n, h, w = check_frames(frames)
    if not keyframes:
        raise MaskError("no keyframe mask given; draw the object on at least one frame")
    return n, h, w


def check_frames(frames: np.ndarray) -> tuple[int, int, int]:
    """The (frames, height, width) of uint8 RGB frames [F, H, W, 3], or a MaskError saying why.

    Any frame source with an ndarray's ``shape``, ``dtype`` and ``frames[t]`` will do (a
    file read frame by frame for a long clip)."""
    shape = getattr(frames, "shape", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3 or not hasattr(frames, "__getitem__"):
        raise MaskError(f"frames must be a uint8 array [F, H, W, 3], got shape {shape}")
    if getattr(frames, "dtype", None) != np.uint8:
        raise MaskError(f"frames must be uint8, got {frames.dtype}")
    n, h, w, _ = frames.shape
    if n == 0:
        raise MaskError("the clip has no frames to track the mask through")
    return n, h, w


def check_keyframe_index(key: object, n: int) -> int:
    """A keyframe's frame index as an int, or a MaskError if it is not a frame of the clip."""
    idx = int(key)  # type: ignore[call-overload]
    if idx != key or not 0 <= idx < n:
        raise MaskError(f"keyframe {key} is outside the clip (frames 0..{n - 1})")
    return idx


def check_keyframe_mask(
    idx: int,
    mask: object,
    size: Size,
    against: str = "the frames are",
    fix: str = "resize the mask to the working resolution first",
) -> np.ndarray:
    """A keyframe's mask as bool [H, W] (non-zero = object), or a MaskError if it is not
    ``size`` (W, H) or is empty, so a tracker never runs on a mask it would misread."""
    width, height = size
    m = np.asarray(mask)
    if m.shape != (height, width):
        raise MaskError(
            f"keyframe {idx} mask is {m.shape[1] if m.ndim == 2 else '?'}x"
            f"{m.shape[0] if m.ndim >= 1 else '?'} but {against} {width}x{height}; {fix}"
        )
    m = m != 0
    if not m.any():
        raise MaskError(f"keyframe {idx} mask is empty; paint the object white")
    return m
