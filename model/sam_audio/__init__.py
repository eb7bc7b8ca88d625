"""SAM Audio (Meta's prompted sound separation) as a PyTorch port of the reference inference graph.

The API mirrors the reference ``sam_audio`` package::

    from model.sam_audio import SAMAudio, SAMAudioProcessor

    model = SAMAudio.from_pretrained("facebook/sam-audio-base")  # or a local folder
    processor = SAMAudioProcessor.from_pretrained("facebook/sam-audio-base")
    batch = processor(descriptions=["dog barking"], audios=[wav])  # wav: [channels, N] @ 48 kHz
    result = model.separate(batch)
    result.target[0], result.residual[0]  # 1-D waveforms

``SamAudioSeparator`` (``model.sam_audio.backend``) wraps it as sonomask's ``Separator``.
"""

from model.sam_audio.config import ConfigError, SAMAudioConfig
from model.sam_audio.model import DFLT_ODE_OPT, SAMAudio, SeparationResult
from model.sam_audio.processor import Batch, SAMAudioProcessor

__all__ = [
    "DFLT_ODE_OPT",
    "Batch",
    "ConfigError",
    "SAMAudio",
    "SAMAudioConfig",
    "SAMAudioProcessor",
    "SamAudioSeparator",
    "SeparationResult",
]


def __getattr__(name: str):
    # The backend pulls in numpy-side helpers and the model cache; import it on first use.
    if name == "SamAudioSeparator":
        from model.sam_audio.backend import SamAudioSeparator

        return SamAudioSeparator
    raise AttributeError(name)
