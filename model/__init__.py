"""Sound separation for sonomask: SAM Audio (the real model) and the weight-free default.

Knows nothing of video files, Celery or HTTP: arrays and tensors in, target/residual out.
``separator`` is the contract, ``windows`` the long-audio windowing, ``backends/`` the adapters
that put a model behind the contract (``backends.sam_audio``), ``classical`` the weight-free
backend, and ``sam_audio/`` the SAM Audio port, which stands alone (it imports nothing else
of sonomask and raises its own errors, which the adapter turns into ``errors``' classes).
"""

from model.errors import ModelInputError, ModelLoadError
from model.separator import Prompt, Separation, Separator, Span

__all__ = ["ModelInputError", "ModelLoadError", "Prompt", "Separation", "Separator", "Span"]
