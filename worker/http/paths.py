"""Every path a client names is checked here, and only here.

Clients of the HTTP API name files only relative to ``SONOMASK_MEDIA_ROOT`` (the JSON form
of ``POST /v1/jobs``: ``video_path``, ``mask_paths``, ``keyframes[].mask``; ``POST
/v1/uploads {"path"}``); uploads land in the job's own folder under names the server
picks. A name is refused before the filesystem is touched when it holds a NUL byte, is
not valid UTF-8 or is longer than a path may be (so no ``ENAMETOOLONG`` surfaces as a
500); otherwise it is resolved with every symlink followed and must end at a readable
regular file inside the media root. Every other outcome (missing, a directory,
``/etc/shadow``, ``..``, a symlink out of the root, no permission) gets one and the same
answer, so a client cannot learn which files exist on the server.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from worker.errors import BadInput

MAX_NAME_BYTES = 255  # one path component (NAME_MAX on Linux)
MAX_PATH_BYTES = 4096  # the whole path (PATH_MAX on Linux)


class PathRefused(BadInput):
    """A client-named file that is not a readable file under the media root (HTTP 403)."""


class PathInvalid(BadInput):
    """A client-named path that no filesystem could hold, or no media root (HTTP 400)."""


def check_name(name: Any, field: str) -> str:
    """``name`` as a string fit to hand to the filesystem, or ``PathInvalid``."""
    if not isinstance(name, str):
        raise PathInvalid(f"{field} must be a string: a file path relative to the media root")
    if "\x00" in name:
        raise PathInvalid(f"{field} contains a NUL byte; file names cannot hold one")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise PathInvalid(f"{field} is not valid UTF-8 text") from None
    if len(raw) > MAX_PATH_BYTES:
        raise PathInvalid(f"{field} is longer than {MAX_PATH_BYTES} bytes")
    if any(len(part) > MAX_NAME_BYTES for part in raw.split(b"/")):
        raise PathInvalid(f"{field} has a name part longer than {MAX_NAME_BYTES} bytes")
    return name


def refusal(field: str) -> PathRefused:
    """The one answer for every name that does not lead to a readable media file."""
    return PathRefused(
        f"{field} is missing, not a regular file, or outside the media root; "
        "name a readable file relative to SONOMASK_MEDIA_ROOT"
    )


def inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (symlinks resolved) is ``root`` or lies under it."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return False
    return real.is_relative_to(root)


def media_file(name: Any, root: Path | None, field: str) -> Path:
    """The real path of the file ``name`` (relative to the media ``root``), or a refusal.

    ``root`` must already be resolved. The returned path has every symlink resolved, so
    what the job reads later is exactly what was checked now.
    """
    name = check_name(name, field)
    if root is None:
        raise PathInvalid(
            "this server has no SONOMASK_MEDIA_ROOT; upload the files as "
            "multipart/form-data instead"
        )
    try:
        real = Path(os.path.realpath(root / name))
        if not real.is_relative_to(root):
            raise refusal(field)
        st = os.stat(real)
    except (OSError, ValueError, RuntimeError):
        raise refusal(field) from None
    if not stat.S_ISREG(st.st_mode) or not os.access(real, os.R_OK):
        raise refusal(field)
    return real


def upload_suffix(filename: str | None, default: str = ".bin") -> str:
    """A safe extension for an uploaded file's name in the job folder (``.mp4``, ...)."""
    suffix = os.path.splitext(filename or "")[1].lower()[:8]
    if len(suffix) < 2 or not all(c.isascii() and c.isalnum() for c in suffix[1:]):
        return default
    return suffix
