"""A synthetic scene with two sounding on-screen objects and exact ground truth.

Object A (a red ball, on the left) bounces while it plays a plucked harmonic tone; object B
(a blue drum, on the right) shakes while it plays noisy rattles with a ringing partial.
Their events overlap only in part, so the only way to tell the sounds apart is to watch
which object moves. Used for the bundled demo clip and by the tests (which need the
known stems and masks).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SR = 48_000

A_EVENTS = [(0.4, 1.4), (2.9, 4.1), (5.4, 6.0), (6.7, 7.5)]
B_EVENTS = [(1.1, 2.3), (3.7, 4.9), (5.9, 7.1)]


@dataclass
class Scene:
    width: int
    height: int
    fps: float
    duration: float
    sound_a: np.ndarray  # [N] mono, 48 kHz
    sound_b: np.ndarray

    def envelope(self, events: list[tuple[float, float]], t: np.ndarray) -> np.ndarray:
        env = np.zeros_like(t)
        for s, e in events:
            inside = (t >= s) & (t < e)
            rel = (t[inside] - s) / (e - s)
            env[inside] = np.sin(np.pi * rel) ** 0.5
        return env

    def positions(self, i: int) -> tuple[tuple[int, int], tuple[int, int], float]:
        """Centres of A and B and B's shake angle at frame ``i``."""
        t = i / self.fps
        w, h = self.width, self.height
        ea = float(self.envelope(A_EVENTS, np.array([t]))[0])
        eb = float(self.envelope(B_EVENTS, np.array([t]))[0])
        ax = int(0.28 * w + 0.05 * w * np.sin(2 * np.pi * 0.2 * t) * ea)
        ay = int(0.55 * h - 0.22 * h * ea * abs(np.sin(2 * np.pi * 2.5 * t)))
        bx = int(0.72 * w + 0.03 * w * eb * np.sin(2 * np.pi * 7 * t))
        by = int(0.55 * h + 0.02 * h * eb * np.cos(2 * np.pi * 5 * t))
        angle = 18.0 * eb * np.sin(2 * np.pi * 6 * t)
        return (ax, ay), (bx, by), angle

    def radius(self) -> int:
        return max(6, int(0.09 * min(self.width, self.height)))

    def background(self) -> np.ndarray:
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rng = np.random.default_rng(7)
        tex = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 3) * 60
        bg = np.stack([40 + 0.2 * xx / w * 255 + tex, 60 + tex * 0.8, 50 + 0.3 * yy / h * 255], -1)
        return np.clip(bg, 0, 255).astype(np.uint8)

    def frame(self, i: int, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """RGB frame and the exact masks of A and B at frame ``i``."""
        img = bg.copy()
        (ax, ay), (bx, by), angle = self.positions(i)
        r = self.radius()
        mask_a = np.zeros(img.shape[:2], np.uint8)
        mask_b = np.zeros(img.shape[:2], np.uint8)
        cv2.circle(mask_a, (ax, ay), r, 1, -1, lineType=cv2.LINE_8)
        box = cv2.boxPoints(((bx, by), (2.2 * r, 1.6 * r), angle)).astype(np.int32)
        cv2.fillPoly(mask_b, [box], 1)
        img[mask_b > 0] = (40, 70, 220)
        cv2.line(img, tuple(box[0]), tuple(box[2]), (230, 230, 250), 2)
        img[mask_a > 0] = (225, 40, 40)
        cv2.circle(img, (ax - r // 3, ay - r // 3), max(2, r // 4), (255, 200, 200), -1)
        return img, mask_a, mask_b


def _plucks(duration: float, events: list[tuple[float, float]], f0: float) -> np.ndarray:
    n = int(duration * SR)
    t = np.arange(n) / SR
    out = np.zeros(n)
    for s, e in events:
        for k, onset in enumerate(np.arange(s, e - 0.05, 0.3)):
            i0 = int(onset * SR)
            tt = t[i0:] - onset
            f = f0 * (1.0, 1.25, 1.5, 1.125)[k % 4]
            vib = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * tt)
            note = sum(
                (0.6 / h) * np.sin(2 * np.pi * h * f * np.cumsum(vib) / SR) for h in range(1, 7)
            )
            out[i0:] += note * np.exp(-tt * 4.0)
    return out


def _rattles(duration: float, events: list[tuple[float, float]], seed: int) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    n = int(duration * SR)
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    noise = sosfilt(
        butter(4, [2500, 9000], btype="band", fs=SR, output="sos"), rng.standard_normal(n)
    )
    env = np.zeros(n)
    for s, e in events:
        for onset in np.arange(s, e - 0.03, 0.12):
            i0 = int(onset * SR)
            env[i0:] += np.exp(-(t[i0:] - onset) * 30.0)
    ring = 0.25 * np.sin(2 * np.pi * 1700 * t) * env
    return 0.8 * noise * env + ring


def make_scene(
    duration: float = 8.0, width: int = 640, height: int = 360, fps: float = 25.0, seed: int = 3
) -> Scene:
    a = _plucks(duration, A_EVENTS, 196.0)
    b = _rattles(duration, B_EVENTS, seed)
    # Equally loud (same RMS), so neither sound wins by level alone.
    a *= 0.05 / np.sqrt(np.mean(a**2))
    b *= 0.05 / np.sqrt(np.mean(b**2))
    return Scene(width, height, fps, duration, a.astype(np.float32), b.astype(np.float32))


def write_clip(
    scene: Scene,
    path: Path,
    stereo: bool = True,
    crf: int = 26,
    vcodec: str = "libx264",
    acodec: str = "aac",
    extra: list[str] | None = None,
) -> None:
    """Encode the scene: A panned left, B right (stereo) or mixed (mono)."""
    frames = int(round(scene.duration * scene.fps))
    if stereo:
        audio = np.stack(
            [0.8 * scene.sound_a + 0.3 * scene.sound_b, 0.3 * scene.sound_a + 0.8 * scene.sound_b],
            1,
        )
    else:
        audio = (scene.sound_a + scene.sound_b)[:, None]
    wav = path.with_suffix(".src.f32")
    audio.astype(np.float32).tofile(wav)
    cmd = [
        "ffmpeg",
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-s",
        f"{scene.width}x{scene.height}",
        "-r",
        str(scene.fps),
        "-i",
        "pipe:0",
        "-f",
        "f32le",
        "-ar",
        str(SR),
        "-ac",
        str(audio.shape[1]),
        "-i",
        str(wav),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        vcodec,
        "-pix_fmt",
        "yuv420p",
    ]
    if vcodec == "libx264":
        cmd += ["-crf", str(crf), "-preset", "medium"]
    cmd += ["-c:a", acodec, *(extra or []), str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    bg = scene.background()
    assert proc.stdin is not None
    for i in range(frames):
        proc.stdin.write(scene.frame(i, bg)[0].tobytes())
    proc.stdin.close()
    rc = proc.wait()
    wav.unlink()
    if rc != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}")


def first_mask(scene: Scene, which: str = "a", margin: int = 4) -> np.ndarray:
    """The object's mask on frame 0, grown a little as a person would draw it (uint8 0/255)."""
    _, ma, mb = scene.frame(0, scene.background())
    m = ma if which == "a" else mb
    m = cv2.dilate(m, np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    return (m * 255).astype(np.uint8)
