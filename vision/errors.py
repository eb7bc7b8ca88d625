"""Errors the vision package raises; the worker turns them into clear one-line messages."""


class MaskError(ValueError):
    """A mask is unusable (unreadable, wrong size, empty, object lost); the message says why."""


class TrackerLoadError(RuntimeError):
    """A tracker's weights could not be found or loaded; the message says what to fix."""
