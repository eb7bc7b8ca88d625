"""Masks in, masks across frames out, visual prompt frames. Knows nothing of audio or HTTP."""

from vision.errors import MaskError, TrackerLoadError

__all__ = ["MaskError", "TrackerLoadError"]
