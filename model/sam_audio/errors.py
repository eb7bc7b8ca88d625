"""The errors SAM Audio raises, its own so the port stands alone (like a transformers
modeling package, it imports nothing of the application around it).

Two roots, by whose fault it is: ``SAMAudioInputError`` (a ``ValueError``: the caller passed
something the model cannot take) and ``SAMAudioLoadError`` (a ``RuntimeError``: a checkpoint
or config cannot be loaded). Every message says what to fix; an application translates the
two roots into its own errors, keeping the message (sonomask: ``model.backends.sam_audio``).
"""

from __future__ import annotations

__all__ = [
    "CodecCheckpointError",
    "CodecConfigError",
    "ConfigError",
    "SAMAudioInputError",
    "SAMAudioLoadError",
]


class SAMAudioInputError(ValueError):
    """An input the model cannot use (wrong shape or dtype, bad prompt, bad solver option)."""


class SAMAudioLoadError(RuntimeError):
    """A checkpoint, config or text encoder could not be loaded; the message says what to fix."""


class ConfigError(SAMAudioLoadError):
    """config.json does not describe a SAM Audio model this port can build."""


class CodecConfigError(ConfigError):
    """The ``audio_codec`` config cannot describe a DACVAE this port can build."""


class CodecCheckpointError(SAMAudioLoadError):
    """A codec state dict does not match the module (missing, unexpected or mis-shaped keys)."""
