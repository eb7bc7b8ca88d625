"""A folder's size on disk while a job runs: the largest it got, and which files held it.

Two peaks: every file, and the work files alone (without the job's outputs: the stems,
masks.npz, the remuxed videos, the preview, the matte and timelines, which the CLI links
into ``--out`` and a queued job publishes; an output video is as large as the source).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path


def folder_bytes(root: Path) -> dict[str, int]:
    """Bytes allocated on disk by each file under ``root`` (allocated blocks, so sparse
    files count what they hold; files vanishing mid-walk are skipped)."""
    sizes = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                sizes[os.path.relpath(path, root)] = os.lstat(path).st_blocks * 512
            except OSError:
                pass
    return sizes


_OUTPUT_NAMES = {"target.wav", "residual.wav", "masks.npz", "preview.mp4", "matte.mov"}
_OUTPUT_STEMS = {"isolated", "removed", "stems", "timeline"}


def is_output(relpath: str) -> bool:
    """Whether a file of the job's folder is one of its outputs (or one being written:
    ``.<stem>.<random>.part<suffix>``)."""
    name = os.path.basename(relpath)
    if name.startswith(".") and ".part" in name:
        stem = name[1:].split(".")[0]
        return stem in _OUTPUT_STEMS or any(n.split(".")[0] == stem for n in _OUTPUT_NAMES)
    return name in _OUTPUT_NAMES or name.split(".")[0] in _OUTPUT_STEMS


class PeakSampler:
    """The largest size ``root`` reached while the ``with`` block ran, and what held it."""

    def __init__(self, root: Path, every: float = 0.2) -> None:
        self.root, self.every, self.peak, self.work_peak = root, every, 0, 0
        self.at_peak: dict[str, int] = {}
        self.at_work_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            sizes = folder_bytes(self.root)
            if sum(sizes.values()) > self.peak:
                self.peak, self.at_peak = sum(sizes.values()), sizes
            work = {k: v for k, v in sizes.items() if not is_output(k)}
            if sum(work.values()) > self.work_peak:
                self.work_peak, self.at_work_peak = sum(work.values()), work
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, seconds: float, top: int = 8) -> None:
        """Print both peaks, per hour of footage, and their largest files."""
        hour = 3600 / seconds
        for what, peak, files in (
            ("work folder peak", self.peak, self.at_peak),
            ("  without outputs", self.work_peak, self.at_work_peak),
        ):
            print(f"{what}: {peak / 1e6:.1f} MB = {peak / 1e9 * hour:.2f} GB per hour of footage")
            for name, size in sorted(files.items(), key=lambda kv: -kv[1])[:top]:
                if size:
                    gbh = size / 1e9 * hour
                    print(f"    {name:<48} {size / 1e6:9.1f} MB = {gbh:6.2f} GB/h")
