"""The one place a tracker is chosen by name (``flow``, ``copy``, ``sam2``).

Apart from ``vision.tracker`` (the contract the trackers implement), so the contract
imports no tracker and the trackers import only the contract.
"""

from __future__ import annotations

import os

from vision.errors import TrackerLoadError
from vision.propagate import CopyTracker, FlowTracker
from vision.tracker import TRACKERS, Tracker


def choose_tracker(
    name: str, weights: str | os.PathLike[str] | None = None, device: str = "auto"
) -> Tracker:
    """The tracker called ``name``, ready for ``init``.

    ``flow``: weight-free optical flow (``vision.propagate``), any machine. ``copy``: no
    tracking, each frame gets its nearest keyframe's mask (a baseline; right for a still
    object). ``sam2``: SAM 2 from ``weights`` (a folder saved by transformers, or a Hub id
    already in the local Hugging Face cache; nothing is downloaded) on ``device``
    ("auto": CUDA when available, "cpu", "cuda[:N]"); it is loaded here, once per process,
    so missing weights fail (``TrackerLoadError``) before any frame is read.
    """
    if name == "flow":
        return FlowTracker()
    if name == "copy":
        return CopyTracker()
    if name == "sam2":
        if not weights:
            raise TrackerLoadError(
                "tracker sam2 needs SAM 2 weights: a folder saved by transformers "
                "(Sam2VideoModel.save_pretrained) or a Hub id such as "
                "facebook/sam2.1-hiera-tiny in the Hugging Face cache"
            )
        from vision.sam2_tracker import Sam2VideoTracker, load

        return Sam2VideoTracker(load(weights, device))
    raise ValueError(f"unknown tracker {name!r}; choose one of {', '.join(TRACKERS)}")
