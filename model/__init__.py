"""Sound separation for sonomask: SAM Audio (the real model) and the weight-free default.

Knows nothing of video files, Celery or HTTP: arrays and tensors in, target/residual out.
"""

from model.errors import ModelInputError, ModelLoadError
from model.separator import Prompt, Separation, Separator, Span

__all__ = ["ModelInputError", "ModelLoadError", "Prompt", "Separation", "Separator", "Span"]
