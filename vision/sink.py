"""What every tracker does with its output: store masks, report progress, write warnings.

Shared by the flow, copy and SAM 2 trackers so that they store masks the same way (an
array, or a file written frame by frame for a long clip), count progress the same way
and word their warnings the same way ("object lost on frames 40–55").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

ProgressCallback = Callable[[float, str], None]
"""Called with (fraction done in [0, 1], short description)."""

# A propagated mask whose area grows past this multiple of its keyframe's area has
# probably leaked into the background; shrinking below 1/this is reported as well.
AREA_DRIFT_FACTOR = 4.0


class MaskSink:
    """Where a tracker puts each frame's mask: an array, or any object taking ``out[t] = mask``
    (a file written row by row for a long clip). Each frame's area and whether it touches
    the border are kept as they are written, so the warnings need no second pass."""

    def __init__(self, n: int, h: int, w: int, out: object | None = None) -> None:
        self.masks = out if out is not None else np.zeros((n, h, w), dtype=np.uint8)
        self.areas = np.zeros(n, dtype=np.int64)
        self.border = np.zeros(n, dtype=bool)

    def put(self, t: int, mask: np.ndarray) -> None:
        """Store frame ``t``'s mask (non-zero = object) as uint8 and note its statistics."""
        mask = np.asarray(mask, dtype=np.uint8)
        self.masks[t] = mask
        self.areas[t] = int(np.count_nonzero(mask))
        self.border[t] = _touches_border(mask)


class ProgressTicker:
    """Counts a tracker's steps and calls ``progress`` about 100 times over ``total`` steps
    (not once per frame: an hour-long clip has 90 000 of them)."""

    def __init__(self, total: int, progress: ProgressCallback | None) -> None:
        self.total = total
        self.done = 0
        self.every = max(1, total // 100)
        self.progress = progress

    def tick(self, msg: str) -> None:
        """One step done."""
        self.done += 1
        if self.progress is not None and (self.done % self.every == 0 or self.done == self.total):
            self.progress(min(1.0, self.done / self.total), msg)

    def finish(self) -> None:
        """Say 1.0 at the end, also when the steps counted fell short of ``total``."""
        if self.progress is not None and self.done != self.total:
            self.progress(1.0, "tracking done")


def track_warnings(sink: MaskSink, keys: Iterable[int], ref_area: np.ndarray) -> list[str]:
    """Human-readable notes on frames where the object was lost or the mask drifted.

    ``keys``: the keyframe indices; ``ref_area``: per frame, the area of the keyframe
    mask it leans on (what its own area is compared with).
    """
    keys = list(keys)
    areas, border = sink.areas, sink.border
    n = len(areas)
    lost = [i for i in range(n) if areas[i] == 0]
    out: list[str] = []
    if lost and len(lost) == n - len(keys):
        which = ", ".join(str(k) for k in keys)
        out.append(
            f"object lost on every frame except the keyframe{'s' if len(keys) > 1 else ''} "
            f"({which}); the tracker could not follow it, add keyframes or check the mask"
        )
    elif lost:
        runs = _runs(lost)
        # A run that starts or ends next to a mask touching the frame border most likely
        # means the object went out of the picture rather than that tracking failed.
        exited = any((a > 0 and border[a - 1]) or (b < n - 1 and border[b + 1]) for a, b in runs)
        word = "frame" if len(lost) == 1 else "frames"
        hint = " (it left the frame)" if exited else ""
        out.append(f"object lost{hint} on {word} {_fmt_runs(runs)}")
    drift = [
        i
        for i in range(n)
        if areas[i] > 0
        and (
            areas[i] > AREA_DRIFT_FACTOR * ref_area[i]
            or (areas[i] * AREA_DRIFT_FACTOR < ref_area[i] and not border[i])
        )
    ]
    if drift:
        out.append(
            f"tracked mask area changed more than {AREA_DRIFT_FACTOR:g}x from its keyframe on "
            f"frames {_fmt_runs(_runs(drift))}; check the preview, add a keyframe there if wrong"
        )
    return out


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Group sorted frame indices into inclusive runs: [3,4,5,9] -> [(3,5), (9,9)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _fmt_runs(runs: list[tuple[int, int]], limit: int = 6) -> str:
    parts = [f"{a}" if a == b else f"{a}\u2013{b}" for a, b in runs[:limit]]
    if len(runs) > limit:
        parts.append(f"and {len(runs) - limit} more")
    return ", ".join(parts)


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
