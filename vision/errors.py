"""Errors the vision package raises; the worker turns them into clear one-line messages."""


class MaskError(ValueError):
    """A mask is unusable (unreadable, wrong size, empty, object lost); the message says why."""
