"""SAM Audio (Meta's prompted sound separation) as a PyTorch port of the reference inference graph.

The API mirrors the reference ``sam_audio`` package::

    from model.sam_audio import SAMAudio, SAMAudioProcessor, SoundActivityRanker

    model = SAMAudio.from_pretrained("facebook/sam-audio-base")  # or a local folder
    processor = SAMAudioProcessor.from_pretrained("facebook/sam-audio-base")
    batch = processor(descriptions=["dog barking"], audios=[wav])  # wav: [channels, N] @ 48 kHz
    result = model.separate(batch)
    result.target[0], result.residual[0]  # 1-D waveforms
    # reranking: k noise draws per item, the ranker keeps the best (``ranking``)
    result = model.separate(batch, reranking_candidates=3, ranker=SoundActivityRanker())
    # span prediction (PE-A-Frame, ``spans``): the reference's behaviour, spans in result.spans
    result = model.separate(batch, predict_spans=True)

The package stands alone, like a transformers modeling package: it imports nothing else of
sonomask, reads no environment but the Hugging Face ``HF_*`` cache conventions, and raises
its own errors (``errors``). Its configuration is one class per sub-model (``config``).
sonomask's ``Separator`` adapter is ``model.backends.sam_audio.SamAudioSeparator``.
"""

from model.sam_audio.config import (
    DACVAEConfig,
    PerceptionEncoderConfig,
    SAMAudioConfig,
    T5EncoderConfig,
    TransformerConfig,
)
from model.sam_audio.errors import (
    CodecCheckpointError,
    CodecConfigError,
    ConfigError,
    SAMAudioInputError,
    SAMAudioLoadError,
)
from model.sam_audio.model import DFLT_ODE_OPT, SAMAudio, SeparationResult
from model.sam_audio.processor import Batch, SAMAudioProcessor
from model.sam_audio.rankers import create_ranker
from model.sam_audio.ranking import Ranker, SoundActivityRanker
from model.sam_audio.spans import PEAudioFrameSpanPredictor

__all__ = [
    "DFLT_ODE_OPT",
    "Batch",
    "CodecCheckpointError",
    "CodecConfigError",
    "ConfigError",
    "DACVAEConfig",
    "PEAudioFrameSpanPredictor",
    "PerceptionEncoderConfig",
    "Ranker",
    "SAMAudio",
    "SAMAudioConfig",
    "SAMAudioInputError",
    "SAMAudioLoadError",
    "SAMAudioProcessor",
    "SeparationResult",
    "SoundActivityRanker",
    "T5EncoderConfig",
    "TransformerConfig",
    "create_ranker",
]
