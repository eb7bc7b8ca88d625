"""The errors a person sees: one line that says what to fix.

Every bad-input failure becomes a ``BadInput``; the CLI exits 2 on it and the API answers
4xx. Anything else is an internal error (exit 1) and is reported with its type and message.
"""

from __future__ import annotations

import errno

from pydantic import ValidationError

from model.errors import ModelInputError, ModelLoadError
from vision.errors import MaskError


class SonomaskError(Exception):
    """Base of every error sonomask reports to a person."""

    exit_code = 1


class BadInput(SonomaskError):
    """The job cannot run on what it was given; the message says what to change."""

    exit_code = 2


class TransientError(SonomaskError):
    """A fault worth retrying (a shared filesystem or broker hiccup), never bad input."""

    exit_code = 1


class QueueUnavailable(SonomaskError):
    """The broker cannot be reached: nothing was queued; the API answers 503."""

    exit_code = 1


class JobCancelled(SonomaskError):
    """The job was cancelled while it ran."""

    exit_code = 1


def as_sonomask_error(exc: BaseException) -> SonomaskError:
    """Map errors raised by vision/ and model/ to the worker's classes, keeping the message."""
    if isinstance(exc, SonomaskError):
        return exc
    if isinstance(exc, MaskError | ModelInputError | ModelLoadError):
        return BadInput(str(exc))
    if isinstance(exc, ValidationError):  # a job description that no longer validates
        err = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in err.get("loc", ()))
        return BadInput(f"the job's spec is invalid: {loc}: {err.get('msg', 'invalid value')}")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f" ({exc.filename})" if exc.filename else ""
        return SonomaskError(f"no space left on device{where}: free space in the work folder")
    return SonomaskError(f"internal error: {type(exc).__name__}: {exc}")
