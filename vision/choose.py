"""The one place a tracker is chosen by name (``flow``, ``copy``, ``sam2``, ``sam3``, ``edgetam``).

Apart from ``vision.tracker`` (the contract the trackers implement), so the contract
imports no tracker and the trackers import only the contract.
"""

from __future__ import annotations

import os

from vision.hf_video_tracker import FAMILIES, VideoModelTracker, load
from vision.propagate import CopyTracker, FlowTracker
from vision.tracker import TRACKERS, Tracker


def choose_tracker(
    name: str, weights: str | os.PathLike[str] | None = None, device: str = "auto"
) -> Tracker:
    """The tracker called ``name``, ready for ``init``.

    ``flow``: weight-free optical flow (``vision.propagate``), any machine. ``copy``: no
    tracking, each frame gets its nearest keyframe's mask (a baseline; right for a still
    object). ``sam2``, ``sam3``, ``edgetam``: the video models of transformers
    (``Sam2VideoModel``, ``Sam3TrackerVideoModel``, ``EdgeTamVideoModel``;
    ``vision.hf_video_tracker``) from ``weights`` (a folder saved by transformers, or a Hub
    id already in the local Hugging Face cache; nothing is downloaded) on ``device``
    ("auto": CUDA when available, "cpu", "cuda[:N]"); the model is loaded here, once per
    process, so missing weights fail (``TrackerLoadError``) before any frame is read.
    """
    if name == "flow":
        return FlowTracker()
    if name == "copy":
        return CopyTracker()
    if name in FAMILIES:
        return VideoModelTracker(load(name, weights, device))
    raise ValueError(f"unknown tracker {name!r}; choose one of {', '.join(TRACKERS)}")


def model_title(name: str) -> str | None:
    """The name of the model tracker ``name`` runs ("SAM 3"), or None for a weight-free one."""
    family = FAMILIES.get(name)
    return None if family is None else family.title


def weights_hint(name: str) -> str | None:
    """What tracker ``name`` takes as weights, in words, or None when it needs none."""
    family = FAMILIES.get(name)
    return None if family is None else family.weights_hint
