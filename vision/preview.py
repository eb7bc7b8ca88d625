"""Preview frames: the tracked mask drawn over the video so a person can check the tracking.

The worker encodes these into the preview video; nothing here touches files.
"""

from __future__ import annotations

import cv2
import numpy as np

from vision.errors import MaskError

Colour = tuple[int, int, int]

DEFAULT_COLOUR: Colour = (255, 48, 160)
"""RGB magenta-pink: rare in natural footage, so the tint reads on skin, sky and foliage."""


def draw_overlay_frame(
    frame: np.ndarray,
    mask: np.ndarray,
    colour: Colour = DEFAULT_COLOUR,
    alpha: float = 0.4,
) -> np.ndarray:
    """One preview frame: uint8 [h, w, 3] RGB with a translucent tint inside the mask and
    its outline (outer contours and holes) drawn in the same colour.

    The mask may be at any resolution (resized nearest). For streaming encoders that want
    one frame at a time instead of the whole clip.
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise MaskError(f"preview: frame must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
    h, w = frame.shape[:2]
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskError(f"preview: mask must be [H, W], got shape {m.shape}")
    m = (m != 0).astype(np.uint8)
    if m.shape != (h, w):
        m = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST)
    out = frame.copy()
    if not m.any():
        return out
    sel = m.astype(bool)
    tint = np.asarray(colour, dtype=np.float32)
    out[sel] = np.clip(out[sel] * (1.0 - alpha) + tint * alpha + 0.5, 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(min(h, w) / 240))
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), thickness, cv2.LINE_8)
    return out


def draw_overlay(
    frames: np.ndarray,
    masks: np.ndarray,
    colour: Colour = DEFAULT_COLOUR,
    alpha: float = 0.4,
) -> np.ndarray:
    """Preview clip: uint8 [F, h, w, 3] frames with each frame's mask tinted and outlined.

    frames: uint8 [F, h, w, 3] RGB; masks: [F, h', w'] (non-zero = object, any resolution).
    The input frames are not modified.
    """
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        raise MaskError(
            f"preview: frames must be uint8 [F, H, W, 3], got {getattr(frames, 'shape', None)}"
        )
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[0] != frames.shape[0]:
        raise MaskError(
            f"preview: need one [H, W] mask per frame; got masks {m.shape} for {frames.shape[0]} frames"
        )
    out = np.empty_like(frames)
    for i in range(frames.shape[0]):
        out[i] = draw_overlay_frame(frames[i], m[i], colour, alpha)
    return out
