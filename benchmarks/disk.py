"""A folder's size on disk while a job runs: the largest it got, and which files held it."""

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


class PeakSampler:
    """The largest size ``root`` reached while the ``with`` block ran, and what held it."""

    def __init__(self, root: Path, every: float = 0.2) -> None:
        self.root, self.every, self.peak = root, every, 0
        self.at_peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            sizes = folder_bytes(self.root)
            if sum(sizes.values()) > self.peak:
                self.peak, self.at_peak = sum(sizes.values()), sizes
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def report(self, seconds: float, top: int = 8) -> None:
        """Print the peak, per hour of footage, and its largest files."""
        hour = 3600 / seconds
        print(
            f"work folder peak: {self.peak / 1e6:.1f} MB "
            f"= {self.peak / 1e9 * hour:.2f} GB per hour of footage"
        )
        for name, size in sorted(self.at_peak.items(), key=lambda kv: -kv[1])[:top]:
            if size:
                print(
                    f"  at the peak: {name:<44} {size / 1e6:9.1f} MB = {size / 1e9 * hour:6.2f} GB/h"
                )
