"""Real footage for the tracking benchmark: the clips, their objects and the true masks.

The clips are the videos Debian ships in ``opencv-doc`` (``apt-get install opencv-doc``),
filmed or rendered by others: people walking past a fixed camera (``vtest.avi``), a hand
holding a cup and a box that turn and come closer (``cup.mp4.gz``, ``box.mp4.gz``), a hand
reaching into the frame in front of a tree (``tree.avi``) and an animated film's shots
(``Megamind.avi``). ``objects.json`` beside this file says which object is followed over
which frames, which half it belongs to (``dev``, tuned on; ``heldout``, not) and what it
tests; ``truth.npz`` holds its true masks on the annotated frames, made by ``annotate.py``
from the hints in ``objects.json`` and checked by eye on overlays.

Everything is at the *working size* the worker tracks at (``worker.media.working_size``:
longest side 480, even), decoded by ffmpeg with area scaling as the worker's demux stage
does; frame numbers count decoded frames of the whole clip from 0.

    from benchmarks.real_clips.clips import load_objects, sequence
    for obj in load_objects():
        seq = sequence(obj)      # frames [F, h, w, 3], truth {frame in seq: mask}
        rough = seq.rough        # the editor's loose first-frame mask
        key = seq.correction     # the frame of the one correction keyframe

Decoded clips are cached as .npy files in ``$SONOMASK_BENCH_CACHE`` (default
``<tmp>/sonomask-bench``), so a second run reads them from disk.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from worker.media import working_size  # noqa: E402

OBJECTS_FILE = HERE / "objects.json"
TRUTH_FILE = HERE / "truth.npz"
DOC = Path("/usr/share/doc/opencv-doc")
# Where each clip is in opencv-doc (Debian 12 and 13), and its size as shipped.
SOURCES: dict[str, tuple[Path, tuple[int, int]]] = {
    "vtest": (DOC / "examples/data/vtest.avi", (768, 576)),
    "tree": (DOC / "examples/data/tree.avi", (320, 240)),
    "megamind": (DOC / "examples/data/Megamind.avi", (720, 528)),
    "box": (DOC / "opencv4/html/box.mp4.gz", (640, 480)),
    "cup": (DOC / "opencv4/html/cup.mp4.gz", (640, 480)),
}
MISSING_HINT = "the real clips need Debian's opencv-doc: apt-get install opencv-doc"


class ClipsMissing(RuntimeError):
    """A clip's file is not installed (opencv-doc is missing)."""


@dataclass(frozen=True)
class TrackObject:
    """One object followed over a range of one clip (an entry of ``objects.json``)."""

    name: str
    clip: str
    first: int  # first frame of the sequence (annotated; where the rough mask is drawn)
    last: int  # last frame of the sequence (inclusive)
    half: str  # "dev" (tuned on) or "heldout" (never tuned on)
    tests: tuple[str, ...]  # what it tests: enter, emerge, turn, scale, deform, occlusion
    note: str
    hints: dict[int, dict] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class RealSequence:
    """An object's frames, true masks and keyframes, indices relative to ``obj.first``."""

    obj: TrackObject
    frames: np.ndarray  # uint8 [F, h, w, 3] RGB at the working size
    truth: dict[int, np.ndarray]  # frame (in the sequence) -> uint8 [h, w] 1 = object
    rough: np.ndarray  # uint8 [h, w]: the editor's loose mask on frame 0
    correction: int  # frame (in the sequence) of the one correction keyframe

    def scored(self) -> list[int]:
        """The annotated frames that are scored: all but the two keyframes, so the rough
        and the corrected run are scored on the same frames."""
        return [t for t in sorted(self.truth) if t not in (0, self.correction)]


def available() -> bool:
    """Whether every clip's file is installed."""
    return all(path.exists() for path, _ in SOURCES.values())


def cache_dir() -> Path:
    """Where decoded clips are kept between runs."""
    root = os.environ.get("SONOMASK_BENCH_CACHE") or Path(tempfile.gettempdir()) / "sonomask-bench"
    path = Path(root) / "real"
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_size(clip: str) -> tuple[int, int]:
    """(w, h) the clip is tracked and annotated at: the worker's working size."""
    return working_size(SOURCES[clip][1])


def _source_file(clip: str) -> Path:
    """The clip's video file; a gzipped one is unpacked into the cache once."""
    path, _ = SOURCES[clip]
    if not path.exists():
        raise ClipsMissing(f"{path} is missing; {MISSING_HINT}")
    if path.suffix != ".gz":
        return path
    plain = cache_dir() / path.with_suffix("").name
    if not plain.exists():
        tmp = plain.with_name(f"{plain.name}.{os.getpid()}.part")
        with gzip.open(path, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(plain)
    return plain


def decode(clip: str, stop: int | None = None) -> np.ndarray:
    """The frames of ``clip`` at the working size, uint8 RGB [F, h, w, 3].

    ffmpeg decodes every frame in order (no drops or duplicates) and scales with area
    averaging, as the worker's demux stage does. Without ``stop`` the whole clip is
    decoded once, kept in the cache and memory-mapped; with it, only frames before
    ``stop`` are decoded (a quick look at the start of a long clip), unless the whole
    clip is already cached."""
    w, h = work_size(clip)
    cached = cache_dir() / f"{clip}-{w}x{h}.npy"
    if cached.exists():
        return np.load(cached, mmap_mode="r")[:stop]
    src = _source_file(clip)
    limit = [] if stop is None else ["-frames:v", str(stop)]
    raw = subprocess.run(
        ["ffmpeg", "-v", "quiet", "-nostdin", "-i", str(src), "-vf",
         f"scale={w}:{h}:flags=area", "-fps_mode", "passthrough", *limit, "-f", "rawvideo",
         "-pix_fmt", "rgb24", "pipe:"],
        capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    frames = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    if stop is not None:
        return frames
    tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.part.npy")
    np.save(tmp, frames)
    tmp.replace(cached)
    return np.load(cached, mmap_mode="r")


def load_objects(path: Path = OBJECTS_FILE) -> list[TrackObject]:
    """Every object of ``objects.json``, in file order."""
    data = json.loads(path.read_text())
    out = []
    for name, spec in data["objects"].items():
        hints = {int(k): v for k, v in spec.get("frames", {}).items()}
        out.append(
            TrackObject(
                name=name,
                clip=spec["clip"],
                first=int(spec["first"]),
                last=int(spec["last"]),
                half=spec["half"],
                tests=tuple(spec["tests"]),
                note=spec.get("note", ""),
                hints=hints,
            )
        )
    return out


def load_truth(obj: TrackObject, path: Path = TRUTH_FILE) -> dict[int, np.ndarray]:
    """The object's true masks: clip frame -> uint8 [h, w] (1 = object)."""
    w, h = work_size(obj.clip)
    with np.load(path) as data:
        frames = data[f"{obj.name}/frames"]
        bits = data[f"{obj.name}/bits"]
    masks = np.unpackbits(bits, axis=-1, count=w).reshape(len(frames), h, w)
    return {int(t): m for t, m in zip(frames, masks, strict=True)}


def save_truth(masks: dict[str, dict[int, np.ndarray]], path: Path = TRUTH_FILE) -> None:
    """Write every object's true masks compactly: per object its frame numbers and the
    masks' rows packed to bits (``load_truth`` reads them back)."""
    arrays: dict[str, np.ndarray] = {}
    for name, per_frame in masks.items():
        order = sorted(per_frame)
        stack = np.stack([per_frame[t].astype(np.uint8) for t in order])
        arrays[f"{name}/frames"] = np.array(order, dtype=np.int32)
        arrays[f"{name}/bits"] = np.packbits(stack, axis=-1)
    tmp = path.with_suffix(".part.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.rename(path)


def rough_mask(truth: np.ndarray) -> np.ndarray:
    """A loose outline as an editor draws it quickly: the true mask grown by 8 % of the
    object's size (the square root of its area), then traced as a polygon whose corners
    cut in by at most half that, so it covers the object with a loose margin.

    Deterministic, so every tracker and every run starts from the same drawing."""
    m = (np.asarray(truth) != 0).astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        raise ValueError("the true mask is empty")
    grow = max(2, round(0.08 * np.sqrt(area)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    big = cv2.dilate(m, disk)
    contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros_like(m)
    for c in contours:
        eps = max(1.0, 0.04 * np.sqrt(area))
        poly = cv2.approxPolyDP(c, eps, True)
        cv2.fillPoly(out, [poly], 1)
    return out


def correction_frame(annotated: list[int], length: int) -> int:
    """The rule for the one correction keyframe: the annotated frame nearest the middle
    of the sequence (the later one on a tie), never the first frame. ``annotated`` is
    relative to the sequence's first frame; ``length`` is its number of frames."""
    later = sorted(t for t in annotated if t > 0)
    if not later:
        raise ValueError("an object needs an annotated frame after its first")
    mid = (length - 1) / 2
    return min(later, key=lambda t: (abs(t - mid), -t))


def sequence(obj: TrackObject, truth_path: Path = TRUTH_FILE, cache: bool = True) -> RealSequence:
    """The object's frames (working size), truth, rough first mask and correction frame.

    ``cache=False`` decodes only up to the object's last frame and keeps nothing (tests)."""
    clip = decode(obj.clip) if cache else decode(obj.clip, obj.last + 1)
    frames = np.ascontiguousarray(clip[obj.first : obj.last + 1])
    truth = {t - obj.first: m for t, m in load_truth(obj, truth_path).items()}
    if 0 not in truth:
        raise ValueError(f"{obj.name}: its first frame {obj.first} is not annotated")
    key = correction_frame(list(truth), len(frames))
    return RealSequence(obj, frames, truth, rough_mask(truth[0]), key)
