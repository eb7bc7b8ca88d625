"""Folders an API process fills while a request is in flight, and the sweep of orphans.

An upload is written into ``<workspace>/.upload-<id>`` (``POST /v1/jobs``) or
``<workspace>/.uploads/.tmp-<id>`` (``POST /v1/uploads``) before it becomes part of a job
or an upload session. Each such folder holds a lock file that its process keeps
``flock``-ed; the kernel drops the lock when the process dies however it dies. At start-up
``sweep`` removes every staging folder whose lock it can take, i.e. that no live process
owns, so an API killed mid-upload leaves nothing behind once it is back, while the uploads
of other API processes sharing the workspace are left alone.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from pathlib import Path

LOCK = ".owner.lock"
PATTERNS = (".upload-*", ".uploads/.tmp-*", ".deleted-*")
UNLOCKED_GRACE = 60.0  # seconds a folder may exist before its lock file does


class Staging:
    """A staging folder owned by this process until ``release`` or ``remove``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def create(self) -> Path:
        """Make the folder and take its lock."""
        self.path.mkdir(parents=True)
        fd = os.open(self.path / LOCK, os.O_CREAT | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return self.path

    @property
    def created(self) -> bool:
        return self._fd is not None

    def release(self, moved_to: Path | None = None) -> None:
        """Give up ownership; the contents were moved to ``moved_to`` (lock file included)."""
        if moved_to is not None:
            (moved_to / LOCK).unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Delete the folder (a refused or failed request), then drop the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.release()


def _orphan(folder: Path) -> bool:
    """Whether no live process owns ``folder``."""
    try:
        fd = os.open(folder / LOCK, os.O_RDONLY)
    except FileNotFoundError:
        try:  # a folder made a moment ago whose owner has yet to lock it
            return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE
        except OSError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: a live upload
    finally:
        os.close(fd)
    return True


def sweep(workspace: Path) -> list[Path]:
    """Remove the staging folders of dead processes; returns what was removed."""
    removed = []
    for pattern in PATTERNS:
        for folder in Path(workspace).glob(pattern):
            if folder.is_dir() and not folder.is_symlink() and _orphan(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed
