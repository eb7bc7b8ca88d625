"""Errors the model package raises; the worker turns them into clear one-line messages."""


class ModelInputError(ValueError):
    """The caller gave the separator something it cannot use (bad prompt, wrong audio shape)."""


class ModelLoadError(RuntimeError):
    """A checkpoint or config could not be loaded; the message says what to fix."""
