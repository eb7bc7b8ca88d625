"""Several objects tracked over the same frames, made exclusive where they overlap.

Why: a job with several on-screen sources (``JobSpec.objects``) decodes its frames once and
tracks every object from those same working frames through the ``Tracker`` contract
(``vision.tracker``). A video model (SAM 2, SAM 3, EdgeTAM: a ``JointTracker``) tracks them
all as one multi-object session, each frame read and encoded once; any other tracker runs
once per object: in child processes when the caller allows it (``processes``; the track
stage gives two per core, in the CLI and in a Celery worker alike: the objects are
independent, so each object's masks are the same either way; ``vision.track_process``),
else one after the other.

Exclusivity: a pixel belongs to at most one object. Where two tracked masks overlap on a
frame, the *nearer* object is the one whose appearance the contested pixels show: the
object in front is the one the camera sees there. Each object's appearance is a colour
histogram of its keyframe pixels (``Appearance``); the contested pixels' mean
log-likelihood under each object's histogram decides, and a decision only flips when the
other side wins by ``FLIP_MARGIN`` nats (so a near-tie does not flicker frame to frame).
With more than two objects the frame's depth order sorts objects by their pairwise wins;
then the front object keeps its pixels and each object behind loses what any object in
front of it holds (``exclusive``).

Each object's mask is written back in place (``out`` of its tracker), and the depth order
of every frame is returned so the caller can make the full-size masks exclusive the same
way (``exclusive`` on the full-size masks with that frame's order).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from vision import track_process
from vision.masks import Box, Size
from vision.sink import ProgressCallback
from vision.tracker import JointTracker, Tracker, Tracking

logger = logging.getLogger(__name__)

BINS = 8  # histogram bins per RGB channel
FLIP_MARGIN = 0.25  # nats per pixel the other object must win by to reverse a pair's order
MIN_CONTESTED = 4  # pixels; fewer contested pixels keep the previous order
CHUNK = 64  # frames read and written back at a time

PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 48, 160),  # pink (the single object's colour)
    (40, 200, 255),  # sky blue
    (255, 200, 0),  # amber
    (80, 230, 80),  # green
    (170, 90, 255),  # violet
    (255, 110, 40),  # orange
    (0, 230, 200),  # teal
    (230, 230, 230),  # white
)


@dataclass
class ObjectKeyframes:
    """One object as its tracker gets it: keyframe masks (full size) or boxes, by frame."""

    label: str
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    boxes: dict[int, Box] = field(default_factory=dict)


@dataclass
class Appearance:
    """A normalised RGB histogram of an object's keyframe pixels (log-probabilities)."""

    log_p: np.ndarray  # [BINS**3]

    @classmethod
    def of(cls, frames: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Appearance:
        """From working-size frames and the object's masks on them."""
        hist = np.ones(BINS**3, np.float64)  # add-one: a colour never seen is unlikely, not -inf
        for frame, mask in zip(frames, masks, strict=True):
            sel = np.asarray(mask) != 0
            if sel.any():
                hist += np.bincount(_bin(frame[sel]), minlength=BINS**3)
        return cls(np.log(hist / hist.sum()))

    def score(self, pixels: np.ndarray) -> float:
        """Mean log-likelihood of RGB ``pixels`` [n, 3]."""
        return float(self.log_p[_bin(pixels)].mean())


def _bin(pixels: np.ndarray) -> np.ndarray:
    q = (np.asarray(pixels, np.uint16) * BINS) >> 8
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def track_objects(
    tracker_for: Callable[[int], Tracker],
    frames: np.ndarray,
    size: Size,
    objects: Sequence[ObjectKeyframes],
    outs: Sequence[object],
    progress: ProgressCallback | None = None,
    processes: int = 1,
    stats: dict[str, Any] | None = None,
) -> tuple[list[Tracking], np.ndarray]:
    """Track every object of ``objects`` over the same ``frames`` into ``outs`` (one each,
    ``out[t] = mask`` at the working size), then make them exclusive.

    ``tracker_for(j)`` gives object j's tracker (one instance may serve them all). Returns
    each object's ``Tracking`` and the depth order of every frame, int16 [F, N]: object
    indices front to back.

    ``processes`` > 1: trackers that are not one joint session run in up to that many child
    processes, one object each (``vision.track_process``: each child a fresh Python started
    with ``subprocess``, so this works in a Celery prefork worker too, whose daemonic
    processes ``multiprocessing`` refuses to give children; the children die with the
    caller). Only for ``frames``, ``outs`` and trackers that pickle as the same files (the
    worker's row files do): an in-memory ``out`` would be filled in the other process. Each
    object's masks are the same either way. Where the children cannot run (the task does
    not pickle, a child cannot start or ends without a result), the objects run here one
    after the other; an error a tracker raises in a child is raised here. ``stats``, when
    given, gets ``processes``: how many processes tracked objects at once (1: all here).
    """
    report = progress or (lambda f, m: None)
    n_obj = len(objects)
    trackers = [tracker_for(j) for j in range(n_obj)]
    done = [0.0] * n_obj
    used = 1

    def follow(j: int) -> Tracking:
        obj, tracker = objects[j], trackers[j]
        tracker.init(frames, size=size, out=outs[j])
        for i, m in obj.masks.items():
            tracker.add_mask(i, m)
        for i, b in obj.boxes.items():
            tracker.add_box(i, b)

        def sub(f: float, m: str) -> None:
            done[j] = f
            report(0.9 * sum(done) / n_obj, f"object {obj.label!r} ({j + 1}/{n_obj}): {m}")

        return tracker.propagate(sub)

    if (
        n_obj > 1
        and all(t is trackers[0] for t in trackers)
        and isinstance(trackers[0], JointTracker)
    ):
        results = _follow_together(trackers[0], frames, size, objects, outs, report)
    elif processes > 1 and n_obj > 1:
        used = min(processes, n_obj)
        found = _follow_in_processes(trackers, frames, size, objects, outs, used, report)
        if found is None:
            used = 1
            found = [follow(j) for j in range(n_obj)]
        results = found
    else:
        # One after the other: the flow tracker's insides are not safe to run in threads
        # side by side (two objects tracked at once came out different from each alone).
        results = [follow(j) for j in range(n_obj)]
    if stats is not None:
        stats["processes"] = used
    report(0.9, "making the objects exclusive")
    looks = [_appearance(frames, r.masks, obj) for r, obj in zip(results, objects, strict=True)]
    order = resolve_overlaps(frames, outs, looks)
    report(1.0, f"tracked {n_obj} object(s)")
    return results, order


def _follow_in_processes(
    trackers: Sequence[Tracker],
    frames: Any,
    size: Size,
    objects: Sequence[ObjectKeyframes],
    outs: Sequence[object],
    workers: int,
    report: ProgressCallback,
) -> list[Tracking] | None:
    """Every object in its own child process, ``workers`` at a time
    (``vision.track_process``); None if they cannot run (the caller then tracks here)."""
    n_obj = len(objects)
    try:
        tasks = [
            track_process.task_bytes(trackers[j], frames, size, objects[j], outs[j])
            for j in range(n_obj)
        ]
    except (pickle.PicklingError, TypeError, AttributeError) as err:
        logger.info("tracking the objects one after the other: %s", err)
        return None
    done = [0.0] * n_obj

    def relay(j: int, f: float, m: str) -> None:
        done[j] = f
        report(0.9 * sum(done) / n_obj, f"object {objects[j].label!r} ({j + 1}/{n_obj}): {m}")

    try:
        parts = track_process.follow_in_processes(tasks, workers, relay)
    except (OSError, track_process.ChildFailed) as err:
        logger.warning("tracking the objects one after the other: %s", err)
        return None
    return [
        Tracking(outs[j], name, warnings, exact)  # type: ignore[arg-type]
        for j, (name, warnings, exact) in enumerate(parts)
    ]


def _follow_together(
    tracker: JointTracker,
    frames: np.ndarray,
    size: Size,
    objects: Sequence[ObjectKeyframes],
    outs: Sequence[object],
    report: ProgressCallback,
) -> list[Tracking]:
    """Every object in one multi-object session: one clip of keyframes each, one pass."""
    clips = []
    for obj, out in zip(objects, outs, strict=True):
        tracker.init(frames, size=size, out=out)
        for i, m in obj.masks.items():
            tracker.add_mask(i, m)
        for i, b in obj.boxes.items():
            tracker.add_box(i, b)
        clips.append(tracker.clip())
    labels = ", ".join(repr(o.label) for o in objects)

    def sub(f: float, m: str) -> None:
        report(0.9 * f, f"objects {labels} together: {m}")

    return tracker.propagate_clips(clips, sub)


def _appearance(frames: np.ndarray, masks: np.ndarray, obj: ObjectKeyframes) -> Appearance:
    """The object's colours on its keyframes (as tracked there, at the working size)."""
    keys = sorted(set(obj.masks) | set(obj.boxes))
    return Appearance.of([frames[i] for i in keys], [np.asarray(masks[i]) for i in keys])


def resolve_overlaps(
    frames: np.ndarray, outs: Sequence[object], looks: Sequence[Appearance]
) -> np.ndarray:
    """Make the masks in ``outs`` exclusive in place, frame by frame (module doc); returns
    the depth order int16 [F, N] of every frame."""
    n_obj = len(outs)
    n = len(frames)
    order = np.tile(np.arange(n_obj, dtype=np.int16), (n, 1))
    if n_obj < 2:
        return order
    front: dict[tuple[int, int], bool] = {}  # (a, b) with a < b -> a is in front of b
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        chunk = [np.asarray(o[lo:hi]).copy() for o in outs]  # type: ignore[index]
        for t in range(hi - lo):
            masks = [c[t] != 0 for c in chunk]
            frame = np.asarray(frames[lo + t])
            order[lo + t] = _depth_order(frame, masks, looks, front)
            kept = exclusive(masks, order[lo + t])
            for j in range(n_obj):
                chunk[j][t] = kept[j]
        for j, o in enumerate(outs):
            o[lo:hi] = chunk[j]  # type: ignore[index]
    return order


def _depth_order(
    frame: np.ndarray,
    masks: Sequence[np.ndarray],
    looks: Sequence[Appearance],
    front: dict[tuple[int, int], bool],
) -> np.ndarray:
    """Objects front to back on this frame, from the pairs that overlap here (and the
    pairs' earlier decisions)."""
    n_obj = len(masks)
    for a in range(n_obj):
        for b in range(a + 1, n_obj):
            both = masks[a] & masks[b]
            if np.count_nonzero(both) < MIN_CONTESTED:
                continue
            px = frame[both]
            margin = looks[a].score(px) - looks[b].score(px)  # > 0: the pixels look like a
            before = front.get((a, b))
            if before is None:
                front[(a, b)] = margin >= 0
            elif before and margin < -FLIP_MARGIN:
                front[(a, b)] = False
            elif not before and margin > FLIP_MARGIN:
                front[(a, b)] = True
    wins = np.zeros(n_obj)
    for (a, b), a_front in front.items():
        wins[a if a_front else b] += 1
    return np.argsort(-wins, kind="stable").astype(np.int16)


def exclusive(masks: Sequence[np.ndarray], order: Sequence[int]) -> list[np.ndarray]:
    """Masks with each pixel kept only by the frontmost object of ``order`` that claims it."""
    taken = np.zeros(np.asarray(masks[0]).shape, bool)
    out: list[np.ndarray] = [np.zeros(0)] * len(masks)
    for j in order:
        m = (np.asarray(masks[j]) != 0) & ~taken
        taken |= m
        out[int(j)] = m.astype(np.uint8)
    return out


def colour(j: int) -> tuple[int, int, int]:
    """Object j's colour in previews (the palette, repeated)."""
    return PALETTE[j % len(PALETTE)]


def draw_objects(
    frame: np.ndarray, masks: Sequence[np.ndarray], labels: Sequence[str], alpha: float = 0.4
) -> np.ndarray:
    """One preview frame: each object tinted and outlined in its own colour, its label
    written at the top of its mask. ``frame`` uint8 [h, w, 3] RGB, masks at its size."""
    out = frame.copy()
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 240))
    scale = max(0.35, min(h, w) / 600)
    for j, (mask, label) in enumerate(zip(masks, labels, strict=True)):
        m = (np.asarray(mask) != 0).astype(np.uint8)
        if not m.any():
            continue
        c = colour(j)
        sel = m.astype(bool)
        tint = np.asarray(c, np.float32)
        out[sel] = np.clip(out[sel] * (1.0 - alpha) + tint * alpha + 0.5, 0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, c, thickness, cv2.LINE_8)
        ys, xs = np.nonzero(m)
        x, y = int(xs.min()), max(int(ys.min()) - 3, int(12 * scale) + 2)
        cv2.putText(out, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, c, 1, cv2.LINE_AA)
    return out
