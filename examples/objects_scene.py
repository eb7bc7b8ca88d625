"""Generated scenes with several objects, exact ground truth, for several-object jobs.

``make_trio``: three sounding on-screen objects and one off-screen source. A (a red ball,
left) bounces while it plays plucks, B (a blue box, right) shakes while it rattles, C (a
green mouth, top centre) opens and closes while it hums voiced syllables; an off-screen
bell rings at other times and is in nobody's mask (it belongs in the residual). Each
object moves only while it sounds, so the picture says which sound is whose.

``make_crossing``: a red ball rolls left to right in front of a still blue box, then
clears it: one object passes in front of another (the occlusion test).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scene import A_EVENTS, B_EVENTS, SR, Scene, _plucks, _rattles

C_EVENTS = [(0.1, 0.9), (2.3, 3.1), (4.4, 5.3), (6.9, 7.8)]
OFF_EVENTS = [(0.8, 1.5), (3.3, 3.9), (5.9, 6.6)]
LABELS = ("ball", "box", "mouth")


def _voice(duration: float, events: list[tuple[float, float]], f0: float = 140.0) -> np.ndarray:
    """Voiced syllables: a harmonic buzz through two formants, 4 syllables a second."""
    n = int(duration * SR)
    t = np.arange(n) / SR
    env = np.zeros(n)
    for s, e in events:
        inside = (t >= s) & (t < e)
        env[inside] = np.sin(np.pi * (t[inside] - s) / (e - s)) ** 0.5
    syll = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2
    out = np.zeros(n)
    for h in range(1, 25):
        f = h * f0
        gain = np.exp(-(((f - 700) / 250) ** 2)) + 0.6 * np.exp(-(((f - 1200) / 300) ** 2)) + 0.05
        out += gain / h**0.5 * np.sin(2 * np.pi * f * t * (1 + 0.01 * np.sin(2 * np.pi * 3 * t)))
    return out * env * syll


def _bell(duration: float, events: list[tuple[float, float]]) -> np.ndarray:
    """An off-screen bell: inharmonic partials, struck every 0.35 s within its events."""
    n = int(duration * SR)
    t = np.arange(n) / SR
    out = np.zeros(n)
    for s, e in events:
        for onset in np.arange(s, e - 0.05, 0.35):
            i0 = int(onset * SR)
            tt = t[i0:] - onset
            note = sum(
                a * np.sin(2 * np.pi * f * tt) for f, a in ((880, 1), (2340, 0.5), (4170, 0.3))
            )
            out[i0:] += note * np.exp(-tt * 6.0)
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return (x * (0.05 / np.sqrt(np.mean(x**2)))).astype(np.float32)


@dataclass
class Trio:
    """Three on-screen sources and one off-screen, each 0.05 RMS, mono 48 kHz."""

    width: int
    height: int
    fps: float
    duration: float
    sounds: dict[str, np.ndarray]  # LABELS -> sound, plus "offscreen"

    def mixture(self) -> np.ndarray:
        return np.sum(list(self.sounds.values()), axis=0).astype(np.float32)

    def frame(self, i: int, bg: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """RGB frame and each object's visible mask at frame ``i``."""
        base = Scene(
            self.width,
            self.height,
            self.fps,
            self.duration,
            self.sounds["ball"],
            self.sounds["box"],
        )
        img, ma, mb = base.frame(i, bg)
        t = i / self.fps
        w, h = self.width, self.height
        env = float(base.envelope(C_EVENTS, np.array([t]))[0])
        opening = env * (0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t) ** 2)
        cx, cy = int(0.5 * w), int(0.25 * h)
        half_w = max(4, int(0.08 * w))
        half_h = max(2, int(0.02 * h + 0.07 * h * opening))
        mc = np.zeros(img.shape[:2], np.uint8)
        cv2.rectangle(mc, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), 1, -1)
        img[mc > 0] = (40, 200, 70)
        cv2.line(img, (cx - half_w, cy), (cx + half_w, cy), (10, 60, 20), 1)
        ma = ma & ~mc
        mb = mb & ~mc & ~ma
        return img, {"ball": ma, "box": mb, "mouth": mc}

    def first_masks(self, margin: int = 3) -> dict[str, np.ndarray]:
        """Each object's frame-0 mask, grown a little as a person would draw it (0/255)."""
        _, masks = self.frame(0, self.background())
        k = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
        return {lb: (cv2.dilate(m, k) * 255).astype(np.uint8) for lb, m in masks.items()}

    def background(self) -> np.ndarray:
        return Scene(
            self.width,
            self.height,
            self.fps,
            self.duration,
            self.sounds["ball"],
            self.sounds["box"],
        ).background()


def make_trio(
    duration: float = 8.0, width: int = 480, height: int = 270, fps: float = 25.0
) -> Trio:
    sounds = {
        "ball": _unit(_plucks(duration, A_EVENTS, 196.0)),
        "box": _unit(_rattles(duration, B_EVENTS, 3)),
        "mouth": _unit(_voice(duration, C_EVENTS)),
        "offscreen": _unit(_bell(duration, OFF_EVENTS)),
    }
    return Trio(width, height, fps, duration, sounds)


def write_trio(trio: Trio, path: Path, crf: int = 20) -> None:
    """Encode the scene (H.264 + stereo AAC 48 kHz: the mixture on both channels)."""
    _encode(
        path,
        trio.width,
        trio.height,
        trio.fps,
        trio.duration,
        trio.mixture(),
        lambda i, bg: trio.frame(i, bg)[0],
        trio.background(),
        crf,
    )


@dataclass
class Crossing:
    width: int
    height: int
    fps: float
    duration: float

    def frame(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A ball crossing in front of a box: the frame and each visible mask."""
        w, h = self.width, self.height
        img = np.zeros((h, w, 3), np.uint8)
        img[:] = (70, 80, 60)
        yy, xx = np.mgrid[0:h, 0:w]
        img[..., 1] = (80 + 30 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint8)
        box = np.zeros((h, w), np.uint8)
        bw, bh = int(0.14 * w), int(0.3 * h)
        cv2.rectangle(box, (w // 2 - bw, h // 2 - bh), (w // 2 + bw, h // 2 + bh), 1, -1)
        img[box > 0] = (40, 70, 220)
        cv2.line(img, (w // 2 - bw, h // 2 - bh), (w // 2 + bw, h // 2 + bh), (230, 230, 250), 2)
        frames = round(self.duration * self.fps)
        x = int((0.12 + 0.76 * i / max(frames - 1, 1)) * w)
        r = int(0.1 * h)
        ball = np.zeros((h, w), np.uint8)
        cv2.circle(ball, (x, h // 2), r, 1, -1)
        img[ball > 0] = (225, 40, 40)
        cv2.circle(img, (x - r // 3, h // 2 - r // 3), max(2, r // 4), (255, 200, 200), -1)
        return img, {"ball": ball, "box": box & ~ball}


def make_crossing(
    duration: float = 4.0, width: int = 320, height: int = 180, fps: float = 25.0
) -> Crossing:
    return Crossing(width, height, fps, duration)


def write_crossing(c: Crossing, path: Path) -> None:
    n = int(c.duration * SR)
    t = np.arange(n) / SR
    audio = (0.05 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    _encode(
        path, c.width, c.height, c.fps, c.duration, audio, lambda i, bg: c.frame(i)[0], None, 18
    )


def _encode(path, width, height, fps, duration, mono, frame_fn, bg, crf) -> None:  # noqa: ANN001
    frames = int(round(duration * fps))
    wav = path.with_suffix(".src.f32")
    np.stack([mono, mono], 1).astype(np.float32).tofile(wav)
    cmd = [
        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y"),
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps)),
        *("-i", "pipe:0", "-f", "f32le", "-ar", str(SR), "-ac", "2", "-i", str(wav)),
        *("-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-pix_fmt", "yuv420p"),
        *("-crf", str(crf), "-preset", "medium", "-c:a", "aac", "-b:a", "256k", str(path)),
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for i in range(frames):
        proc.stdin.write(frame_fn(i, bg).tobytes())
    proc.stdin.close()
    rc = proc.wait()
    wav.unlink()
    if rc != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}")
