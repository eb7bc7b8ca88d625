"""The object's visual evidence: each curve must show what it names, and a camera pan
must not look like the object moving."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vision.errors import MaskError
from vision.evidence import FEATURES, visual_evidence

H, W, N = 90, 160, 40


def _texture(seed: int, h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _scene(pan: float = 0.0, jaw: np.ndarray | None = None, light: np.ndarray | None = None):
    """A textured ellipse on a textured background, the camera panning ``pan`` px/frame."""
    bg = _texture(1, H, W + 200)
    obj = _texture(2, H, W)
    frames = np.empty((N, H, W, 3), np.uint8)
    masks = np.zeros((N, H, W), bool)
    for t in range(N):
        x0 = int(round(t * pan))
        frame = bg[:, x0 : x0 + W].copy()
        m = np.zeros((H, W), np.uint8)
        half_h = 20 + (0 if jaw is None else int(jaw[t]))
        cx = 110 - x0  # the object stands still in the world: the camera pans past it
        cv2.ellipse(m, (cx, 45), (22, half_h), 0, 0, 360, 1, -1)
        tex = np.roll(obj, cx - 110, axis=1).astype(np.float32)
        tex *= 1.0 if light is None else light[t]
        frame[m != 0] = np.clip(tex, 0, 255).astype(np.uint8)[m != 0]
        frames[t], masks[t] = frame, m != 0
    return frames, masks


def col(ev, name: str) -> np.ndarray:
    return ev.object[:, FEATURES.index(name)]


def test_a_camera_pan_is_not_object_motion():
    still = visual_evidence(*_scene(pan=0.0))
    panned = visual_evidence(*_scene(pan=2.0))
    # Everything slides 2 px a frame: the pan is measured and removed, so neither the
    # object nor the rest of the picture seems to move (unregistered, both would).
    assert np.allclose(col(still, "motion"), 0, atol=1e-6)
    assert col(panned, "shift").max() < 0.05
    assert panned.background.mean() < 0.01
    assert col(panned, "motion").mean() < 0.02


def test_jaw_opening_shows_as_height():
    jaw = (6 * (np.sin(np.arange(N) / 2.0) > 0)).astype(float)
    ev = visual_evidence(*_scene(jaw=jaw))
    height = col(ev, "height")
    assert np.corrcoef(height, jaw)[0, 1] > 0.95
    assert np.ptp(height) > 0.2 and np.ptp(col(ev, "width")) < 0.05


def test_brightness_pulses_show_as_brightness():
    light = 1.0 + 0.4 * (np.arange(N) % 8 < 3)
    ev = visual_evidence(*_scene(light=light))
    assert np.corrcoef(col(ev, "brightness"), light)[0, 1] > 0.95


def test_absent_object_and_bad_shapes():
    frames, masks = _scene()
    masks[10:20] = False
    ev = visual_evidence(frames, masks)
    assert np.all(np.isfinite(ev.object))
    assert np.all(col(ev, "motion")[11:20] == 0)
    with pytest.raises(MaskError):
        visual_evidence(frames, masks[:, :10])
