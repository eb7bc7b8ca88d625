"""The errors a person sees: one line that says what to fix.

Every bad-input failure becomes a ``BadInput``; the CLI exits 2 on it and the API answers
4xx. Anything else is an internal error (exit 1) and is reported with its type and message.
"""

from __future__ import annotations

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


class JobCancelled(SonomaskError):
    """The job was cancelled while it ran."""

    exit_code = 1


def as_sonomask_error(exc: BaseException) -> SonomaskError:
    """Map errors raised by vision/ and model/ to the worker's classes, keeping the message."""
    if isinstance(exc, SonomaskError):
        return exc
    if isinstance(exc, MaskError | ModelInputError | ModelLoadError):
        return BadInput(str(exc))
    return SonomaskError(f"internal error: {type(exc).__name__}: {exc}")
