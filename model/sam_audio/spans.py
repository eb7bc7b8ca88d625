"""Span prediction for ``SAMAudio.separate(..., predict_spans=True)``: perception_models'
``PEAudioFrame`` (``pe-a-frame-large``) as SAM Audio runs it.

The reference (sam-audio ``SAMAudio.predict_spans``, perception_models
``core/audio_visual_encoder/pe.py``) does, for a batch without anchors:

1. tokenise the descriptions (``PEAudioFrameTransform``: the checkpoint's tokenizer, padding
   ``longest``, truncation at 512);
2. run the frame-level audio encoder on the first 128 channels of SAM Audio's codec features
   (``audio_features[:, :, :128]``: the first copy of the duplicated DACVAE latents) with the
   frame-rate padding mask; the span model's own DAC encoder is skipped;
3. run the ModernBERT text model and pool ``hidden_states[nth_text_layer][:, 0]`` (the first
   token of an intermediate layer, not the last hidden state);
4. project both through ``ContrastiveHead`` (LayerNorm eps 1e-6 + Linear without bias), pair
   audio item i with text i: ``logits[b, t] = <audio_embeds[b, t], text_embeds[b]> * scale +
   bias``, ``probs = sigmoid(logits)``;
5. frames with ``probs > 0.3`` become runs; each run ``[start, end)`` becomes the span
   ``(start * hop / sr, end * hop / sr)`` seconds, computed on an int64 tensor, so the times are
   float32 values (``1.12`` comes out as ``1.1200000047683716``; the anchor frame of that time is
   ``ceil(28.0000001) = 29``, not 28: faithful, and covered by the fixture). Padded frames are
   not masked out of the predictions.
6. every span becomes a ``'+'`` anchor of that item.

Why this is a port and not transformers' ``PeAudioFrameLevelModel``: that model has the same
building blocks, but differs at every edge the reference uses:

* it starts from the raw waveform through its own DAC encoder (``embedder``), while the reference
  starts at ``data_proj`` from SAM Audio's codec latents;
* it pools ``hidden_states[-1]`` of the text model, the reference ``hidden_states[nth_text_layer]``
  (22 of 28 layers in ``pe-a-frame-large``);
* it scores every audio against every text ([B_audio, B_text, T]); the reference pairs item i
  with text i;
* its parameter names differ (``patch_embedder.class_embedding``, ``text_audio_head``,
  ``text_audio_logit_scale`` ...), so the released perception_models checkpoint does not load
  into it without renaming;
* its RoPE base is ``rope_theta``; the reference's is ``max(10000, 2 * max_position_embeddings)``
  whatever ``rope_theta`` says, and its first padding-mask column is ``True`` instead of a copy
  of the next one.

So the module below keeps the reference's layout and parameter names (the checkpoint loads as
released) and its data flow, and reuses transformers' numerically identical pieces inside:
``PeAudioResnetBlock1d`` (masked GroupNorm + conv), ``PeAudioEncoderLayer`` (RMSNorm, q/k-normed
attention through SDPA, SwiGLU), ``PeAudioEncoderRMSNorm``, ``PeAudioContrastiveHead``, and the
text model itself (``AutoModel.from_config(ModernBertConfig)``, exactly what the reference
builds). Equality with the reference is tested against fixtures recorded from its code
(``tests/fixtures/sam_audio_spans``).

The reference quirk about where the spans go is documented in ``SAMAudio.separate``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.sam_audio.errors import ConfigError, SAMAudioInputError, SAMAudioLoadError
from model.sam_audio.loading import find_cached_dir

logger = logging.getLogger(__name__)

SPAN_THRESHOLD = 0.3
"""The reference's probability threshold (``PEAudioFrame.forward(threshold=0.3)``)."""

SPAN_INPUT_CHANNELS = 128
"""``predict_spans`` reads ``audio_features[:, :, :128]`` (reference, a literal)."""

HF_REVISION = "perception_models"
"""The Hub revision the reference downloads (``BasePEAudio.from_config``)."""

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# state-dict keys of the span model's own DAC encoder: present in the released checkpoint,
# unused because SAM Audio hands over its codec features (``input_features``)
_UNUSED_PREFIXES = ("audio_model.dac_vae_encoder.",)


# ---------------------------------------------------------------------------------------------
# Config (reference PEAudioFrameConfig / AudioEncoderConfig / TransformerConfig)
# ---------------------------------------------------------------------------------------------


@dataclass
class FrameTransformerConfig:
    """Reference ``core.audio_visual_encoder.config.TransformerConfig`` (the fields it uses)."""

    hidden_size: int = 1024
    intermediate_size: int = 2752
    num_hidden_layers: int = 16
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    max_position_embeddings: int = 10_000
    rms_norm_eps: float = 1e-5
    attention_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_theta(self) -> float:
        """Reference ``Transformer.__init__``: ``max(10_000, 2 * max_position_embeddings)``;
        the config's ``rope_theta`` is not used."""
        return float(max(10_000, 2 * self.max_position_embeddings))


@dataclass
class SpanPredictorConfig:
    """What the span predictor needs from a perception_models ``PEAudioFrameConfig`` dict."""

    text_model: Any  # transformers.ModernBertConfig
    audio_transformer: FrameTransformerConfig
    codebook_dim: int  # data_proj input width
    hop_length: int  # prod(downsampling_ratios) of the span model's DAC config
    sampling_rate: int
    output_dim: int = 1024
    nth_text_layer: int | None = 22

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpanPredictorConfig:
        """Parse like ``PEAudioFrameConfig(**data)`` (unknown keys are ignored there too)."""
        from transformers import DacConfig, ModernBertConfig

        try:
            audio = dict(data.get("audio_model") or {})
            dac = audio.get("dac_vae_encoder") or _DFLT_DACVAE_CONFIG
            dac_cfg = DacConfig(**dac)
            tcfg = dict(audio.get("audio_transformer") or {})
            fields = FrameTransformerConfig.__dataclass_fields__
            transformer = FrameTransformerConfig(**{k: v for k, v in tcfg.items() if k in fields})
            if transformer.num_key_value_heads is None:
                transformer.num_key_value_heads = transformer.num_attention_heads
            text = ModernBertConfig(**(data.get("text_model") or _DFLT_TEXT_ENCODER_CONFIG))
            return cls(
                text_model=text,
                audio_transformer=transformer,
                codebook_dim=int(dac_cfg.codebook_dim),
                hop_length=int(dac_cfg.hop_length),
                sampling_rate=int(dac_cfg.sampling_rate),
                output_dim=int(data.get("output_dim", 1024)),
                nth_text_layer=data.get("nth_text_layer", 22),
            )
        except (TypeError, ValueError) as err:
            raise ConfigError(f"span predictor config cannot be parsed: {err}") from err


# reference core/audio_visual_encoder/config.py defaults
_DFLT_DACVAE_CONFIG = {
    "encoder_hidden_size": 64,
    "downsampling_ratios": [2, 8, 10, 12],
    "decoder_hidden_size": 1536,
    "n_codebooks": 16,
    "codebook_size": 1024,
    "codebook_dim": 128,
    "quantizer_dropout": 0,
    "sampling_rate": 48000,
}
_DFLT_TEXT_ENCODER_CONFIG = {
    "classifier_pooling": "mean",
    "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0,
    "hidden_size": 1024,
    "intermediate_size": 2624,
    "layer_norm_eps": 1e-5,
    "local_rope_theta": 10000.0,
    "model_type": "modernbert",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "position_embedding_type": "absolute",
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}


def _layer_config(cfg: FrameTransformerConfig):
    """A transformers ``PeAudioEncoderConfig`` carrying what ``PeAudioEncoderLayer`` reads."""
    from transformers import PeAudioEncoderConfig

    layer_cfg = PeAudioEncoderConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",  # the reference MLP is nn.SiLU whatever hidden_act says
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        attention_bias=cfg.attention_bias,
        attention_dropout=0.0,
    )
    layer_cfg._attn_implementation = "sdpa"  # the reference calls F.scaled_dot_product_attention
    return layer_cfg


# ---------------------------------------------------------------------------------------------
# Modules (reference names; transformers pieces inside)
# ---------------------------------------------------------------------------------------------


class FrameEmbeddings(nn.Module):
    """Reference ``Embeddings``: prepend ``cls_token``, then a masked ResNet block.

    The padding mask gets a leading ``True`` for the class token (``F.pad(value=True)``)."""

    def __init__(self, cfg: FrameTransformerConfig) -> None:
        super().__init__()
        from transformers.models.pe_audio.modeling_pe_audio import PeAudioResnetBlock1d

        self.resnet_block = PeAudioResnetBlock1d(_layer_config(cfg))
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.hidden_size))

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)
        if padding_mask is not None:
            padding_mask = F.pad(padding_mask, (1, 0), value=True)
        return self.resnet_block(x, padding_mask=padding_mask), padding_mask


def rope_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference ``RotaryEmbedding.precompute_freqs_cis`` angles, in the (cos, sin) layout
    transformers' ``apply_rotary_pos_emb`` of PE audio takes (the two halves repeated; it reads
    the first half and rotates interleaved pairs, like the reference)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: (head_dim // 2)].float() / head_dim))
    t = torch.arange(seq_len)
    angles = torch.outer(t, freqs).float()
    emb = torch.cat([angles, angles], dim=-1)[None]
    return emb.cos().to(device), emb.sin().to(device)


class FrameTransformer(nn.Module):
    """Reference ``core.audio_visual_encoder.transformer.Transformer``: embeddings, pre-norm
    layers with RoPE, final RMSNorm and a bias-free output projection; returns the frame states
    (class token dropped) and the class-token state."""

    def __init__(self, cfg: FrameTransformerConfig) -> None:
        super().__init__()
        from transformers.models.pe_audio.modeling_pe_audio import (
            PeAudioEncoderLayer,
            PeAudioEncoderRMSNorm,
        )

        self.config = cfg
        layer_cfg = _layer_config(cfg)
        self.embeddings = FrameEmbeddings(cfg)
        self.layers = nn.ModuleList(
            [PeAudioEncoderLayer(layer_cfg, i) for i in range(cfg.num_hidden_layers)]
        )
        self.norm = PeAudioEncoderRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.output = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)

    def forward(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (last_hidden_state [B, T, H], pooler_output [B, H], embeddings [B, T+1, H])."""
        embedded, mask = self.embeddings(inputs_embeds, padding_mask=attention_mask)
        if mask is not None:
            mask = mask[:, None, None].bool()  # SDPA boolean mask: True = attend
        cos, sin = rope_cos_sin(
            embedded.size(1), self.config.head_dim, self.config.rope_theta, embedded.device
        )
        h = embedded
        for layer in self.layers:
            h = layer(
                h, attention_mask=mask, position_embeddings=(cos.to(h.dtype), sin.to(h.dtype))
            )
        h = self.output(self.norm(h))
        return h[:, 1:], h[:, 0], embedded


class FrameAudioEncoder(nn.Module):
    """Reference ``AudioEncoder`` from ``data_proj`` on (``input_features`` given): the
    waveform branch (``dac_vae_encoder``) is not built."""

    def __init__(self, cfg: SpanPredictorConfig) -> None:
        super().__init__()
        self.data_proj = nn.Linear(cfg.codebook_dim, cfg.audio_transformer.hidden_size)
        self.audio_transformer = FrameTransformer(cfg.audio_transformer)


@dataclass
class SpanPrediction:
    """Outputs of ``PEAudioFrameSpanPredictor.forward`` (batch item i scored against text i)."""

    text_embeds: torch.Tensor  # [B, D]
    audio_embeds: torch.Tensor  # [B, T, D]
    logits: torch.Tensor  # [B, T]: <audio, text> * scale + bias
    probs: torch.Tensor  # [B, T]: sigmoid(logits)
    spans: list[list[list[float]]]  # per item [[start_s, end_s], ...] where probs > threshold
    data_proj: torch.Tensor  # [B, T, H]: projected input features
    audio_last_hidden_state: torch.Tensor  # [B, T, H]
    audio_pooler_output: torch.Tensor  # [B, H]
    text_hidden: torch.Tensor  # [B, L, d_text]: hidden_states[nth_text_layer]
    text_pooled: torch.Tensor  # [B, d_text]: its first token


def spans_from_probs(
    probs: torch.Tensor, threshold: float, hop_length: int, sampling_rate: int
) -> list[list[list[float]]]:
    """Runs of ``probs > threshold`` as [[start_s, end_s], ...] per item (reference code: the
    rising and falling edges of the zero-padded predictions; times are ``frame * hop / sr`` on
    an int64 tensor, i.e. float32)."""
    preds = probs > threshold
    changes = torch.diff(F.pad(preds, (1, 1), value=False), dim=1).nonzero()
    span_tensor = torch.cat([changes[::2], changes[1::2, [1]]], dim=1)
    return [
        (span_tensor[span_tensor[:, 0] == i, 1:] * hop_length / sampling_rate).tolist()
        for i in range(probs.size(0))
    ]


def nth_layer_text(
    text_model: nn.Module,
    nth: int | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> torch.Tensor:
    """The text model's ``hidden_states[nth]`` (the last hidden state when ``nth`` is None): the
    reference's ``_get_text_output`` in PE-A-Frame and the SAM Audio Judge alike."""
    out = text_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=nth is not None,
    )
    return out.last_hidden_state if nth is None else out.hidden_states[nth]


class PEAudioFrameSpanPredictor(nn.Module):
    """Reference ``PEAudioFrame`` on the ``input_features`` path (same parameter names, so the
    released ``model.safetensors`` loads; the DAC encoder's keys are skipped), plus its
    tokenizer. See the module docstring for why this is not transformers'
    ``PeAudioFrameLevelModel``."""

    def __init__(self, config: SpanPredictorConfig, tokenizer: Any = None) -> None:
        super().__init__()
        from transformers import AutoModel
        from transformers.models.pe_audio.modeling_pe_audio import PeAudioContrastiveHead

        self.config = config
        self.tokenizer = tokenizer
        self.text_model = AutoModel.from_config(config.text_model)
        self.audio_model = FrameAudioEncoder(config)
        self.text_head = PeAudioContrastiveHead(config.text_model.hidden_size, config.output_dim)
        self.audio_head = PeAudioContrastiveHead(
            config.audio_transformer.hidden_size, config.output_dim
        )
        self.logit_scale = nn.Parameter(torch.tensor([0.0]))
        self.logit_bias = nn.Parameter(torch.tensor([0.0]))
        self.eval()

    # -- loading -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], *, cache_dir: str | None = None
    ) -> PEAudioFrameSpanPredictor:
        """Load a perception_models PE-A-Frame folder (config.json, model.safetensors,
        tokenizer) or ``facebook/<name>`` (revision ``perception_models``, as the reference)
        from the local Hugging Face cache. Never downloads; a miss is one SAMAudioLoadError."""
        folder = resolve_span_predictor_dir(name_or_path, cache_dir=cache_dir)
        try:
            data = json.loads((folder / CONFIG_FILE).read_text())
        except (OSError, ValueError) as err:
            raise SAMAudioLoadError(f"span predictor config {folder / CONFIG_FILE}: {err}") from err
        config = SpanPredictorConfig.from_dict(data)
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except Exception as err:  # noqa: BLE001 - any tokenizer load failure
            raise SAMAudioLoadError(f"span predictor tokenizer in {folder}: {err}") from err
        model = cls(config, tokenizer)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise SAMAudioLoadError(f"span predictor folder {folder} has no {WEIGHTS_FILE}")
        from safetensors.torch import load_file

        state = {
            k: v for k, v in load_file(str(weights)).items() if not k.startswith(_UNUSED_PREFIXES)
        }
        model.load_reference_state_dict(state, source=str(weights))
        return model

    def load_reference_state_dict(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Strict load: any missing, unexpected or mis-shaped key is an error naming it."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [
            f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing or unexpected or shapes:
            raise SAMAudioLoadError(
                f"span predictor weights {source} do not match the config: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}, mis-shaped {shapes[:5]}"
            )
        self.load_state_dict(dict(state), strict=True)

    # -- forward -------------------------------------------------------------------------------

    def tokenize(self, descriptions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Reference ``PEAudioFrameTransform(text=...)``."""
        if self.tokenizer is None:
            raise SAMAudioInputError("the span predictor has no tokenizer; pass input_ids")
        enc = self.tokenizer(
            list(descriptions),
            return_tensors="pt",
            padding="longest",
            truncation=True,
            max_length=512,
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def text_output(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Reference ``_get_text_output``: hidden_states[nth_text_layer] (or the last)."""
        return nth_layer_text(
            self.text_model, self.config.nth_text_layer, input_ids, attention_mask
        )

    def forward(
        self,
        input_features: torch.Tensor,
        padding_mask: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        threshold: float = SPAN_THRESHOLD,
    ) -> SpanPrediction:
        """input_features [B, T, codebook_dim] (SAM Audio's ``audio_features[:, :, :128]``),
        padding_mask [B, T] (True = valid frame), token ids [B, L] -> SpanPrediction."""
        projected = self.audio_model.data_proj(input_features)
        last, pooled, _ = self.audio_model.audio_transformer(projected, attention_mask=padding_mask)
        text_hidden = self.text_output(input_ids, attention_mask)
        text_pooled = text_hidden[:, 0]
        text_embeds = self.text_head(text_pooled)
        audio_embeds = self.audio_head(last)
        unscaled = audio_embeds @ text_embeds.unsqueeze(1).transpose(-1, -2)
        logits = unscaled.squeeze(-1) * self.logit_scale + self.logit_bias
        probs = logits.sigmoid()
        spans = spans_from_probs(
            probs, threshold, self.config.hop_length, self.config.sampling_rate
        )
        return SpanPrediction(
            text_embeds=text_embeds,
            audio_embeds=audio_embeds,
            logits=logits,
            probs=probs,
            spans=spans,
            data_proj=projected,
            audio_last_hidden_state=last,
            audio_pooler_output=pooled,
            text_hidden=text_hidden,
            text_pooled=text_pooled,
        )

    @torch.inference_mode()
    def predict_anchors(
        self,
        descriptions: Sequence[str],
        audio_features: torch.Tensor,
        audio_pad_mask: torch.Tensor,
        threshold: float = SPAN_THRESHOLD,
    ) -> list[list[tuple[str, float, float]]]:
        """Reference ``SAMAudio.predict_spans`` up to ``batch.process_anchors``: SAM Audio's
        ``audio_features`` [B, T, 2C] -> per item a list of ``('+', start_s, end_s)``."""
        width = self.config.codebook_dim
        feats = audio_features[:, :, :SPAN_INPUT_CHANNELS]
        if feats.shape[-1] != width:
            raise SAMAudioInputError(
                f"the span predictor takes {width} feature channels but SAM Audio's "
                f"audio_features[:, :, :{SPAN_INPUT_CHANNELS}] has {feats.shape[-1]}"
            )
        device = next(self.parameters()).device
        tokens = {k: v.to(device) for k, v in self.tokenize(descriptions).items()}
        out = self(
            input_features=feats.to(device=device, dtype=self.logit_scale.dtype),
            padding_mask=audio_pad_mask.to(device),
            threshold=threshold,
            **tokens,
        )
        return [[("+", *span) for span in item] for item in out.spans]


# ---------------------------------------------------------------------------------------------
# Finding the weights (local folder or local HF cache only)
# ---------------------------------------------------------------------------------------------


def resolve_span_predictor_dir(
    name_or_path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A folder with the span model's config.json: a path, or ``facebook/<name>`` (or a full
    repo id) at revision ``perception_models`` in the local HF cache. Never downloads."""
    return find_cached_dir(
        name_or_path,
        what="span predictor",
        revision=HF_REVISION,
        cache_dir=cache_dir,
        not_found=lambda repo_id: (
            f" ({repo_id}, revision {HF_REVISION}); run `huggingface-cli download {repo_id} "
            f"--revision {HF_REVISION}` or pass a local folder"
        ),
    )


__all__ = [
    "SPAN_THRESHOLD",
    "FrameTransformerConfig",
    "PEAudioFrameSpanPredictor",
    "SpanPrediction",
    "SpanPredictorConfig",
    "resolve_span_predictor_dir",
    "spans_from_probs",
]
