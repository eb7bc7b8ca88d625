"""SAM Audio configuration: a parser for the reference ``config.json``.

The reference (``sam_audio/model/config.py`` at facebookresearch/sam-audio 68b48d4) builds
plain classes from keyword arguments: an unknown field is a TypeError there, a missing one
takes the class's default. The same here: no unknown field is accepted (a typo or a
checkpoint from another model family fails at load time, naming the field), and a missing
field takes the reference default (``REFERENCE_DEFAULTS``), so every config the reference
runs builds the same network here. Which fields were filled in is kept in ``defaulted`` and
logged when a model is loaded.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from model.errors import ModelLoadError


class ConfigError(ModelLoadError):
    """config.json does not describe a SAM Audio model this port can build."""


_C = TypeVar("_C")

REFERENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    # The keyword defaults of the reference classes (sam_audio/model/config.py), by section
    # ("" = the top level). The one place sonomask spells them out.
    "": {
        "in_channels": 768,
        "audio_codec": {},
        "text_encoder": {},
        "vision_encoder": {},
        "transformer": {},
        "num_anchors": 3,
        "anchor_embedding_dim": 128,
        "visual_ranker": None,
        "text_ranker": None,
        "span_predictor": "pe-a-frame-large",
    },
    "audio_codec": {  # DACVAEConfig
        "encoder_dim": 64,
        "encoder_rates": [2, 8, 10, 12],
        "latent_dim": 1024,
        "decoder_dim": 1536,
        "decoder_rates": [12, 10, 8, 2],
        "n_codebooks": 16,
        "codebook_size": 1024,
        "codebook_dim": 128,
        "quantizer_dropout": False,
        "sample_rate": 48_000,
        "mean": 0.0,
        "std": 1.0,
    },
    "text_encoder": {"name": "t5-base", "max_length": 512, "pad_mode": "longest", "dim": 768},
    "vision_encoder": {  # PerceptionEncoderConfig
        "dim": 1024,
        "batch_size": 300,
        "name": "PE-Core-L14-336",
        "normalize_feature": True,
        "interpolation_mode": "BICUBIC",
        "image_size": 336,
    },
    "transformer": {
        "dim": 2048,
        "n_heads": 16,
        "n_layers": 16,
        "dropout": 0.1,
        "norm_eps": 1.0e-05,
        "qk_norm": True,
        "fc_bias": False,
        "ffn_exp": 4,
        "ffn_dim_multiplier": 1,
        "multiple_of": 64,
        "non_linearity": "swiglu",
        "use_rope": True,
        "max_positions": 10000,
        "frequency_embedding_dim": 256,
        "timestep_non_linearity": "swiglu",
        "t_block_non_linearity": "silu",
        "t_block_bias": True,
        "context_dim": 2048,
        "context_non_linearity": "swiglu",
        "context_embedder_dropout": 0.0,
        "context_norm": False,
        "out_channels": 256,
        "in_channels": None,
    },
}


def _complete(data: Any, where: str, names: list[str], defaulted: list[str]) -> dict[str, Any]:
    """``data`` with missing fields set to the reference defaults (noted in ``defaulted``);
    an unknown field is an error naming it, as the reference's keyword arguments make it."""
    if data is None and where:  # the reference's ``section or {}``
        data = {}
    if not isinstance(data, dict):
        what = f"config field '{where}'" if where else "config"
        raise ConfigError(f"{what} must be an object, got {type(data).__name__}")
    prefix = f"{where}." if where else ""
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown config field '{prefix}{unknown[0]}'"
            + (f" (and {len(unknown) - 1} more: {unknown[1:4]})" if len(unknown) > 1 else "")
            + f"; known fields of '{where or 'config'}': {names}"
        )
    defaults = REFERENCE_DEFAULTS[where]
    out = dict(data)
    for n in names:
        if n not in out:
            out[n] = copy.deepcopy(defaults[n])
            defaulted.append(f"{prefix}{n}")
    return out


def _parse_section(cls: type[_C], data: Any, where: str, defaulted: list[str]) -> _C:
    """Build dataclass ``cls`` from ``data`` (see ``_complete``)."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**_complete(data, where, names, defaulted))


def _check_int(value: Any, where: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config field '{where}' must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class CodecConfig:
    """DACVAE codec (reference ``DACVAEConfig``)."""

    encoder_dim: int
    encoder_rates: list[int]
    latent_dim: int
    decoder_dim: int
    decoder_rates: list[int]
    n_codebooks: int
    codebook_size: int
    codebook_dim: int
    quantizer_dropout: bool | float
    sample_rate: int
    mean: float
    std: float

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame (product of the encoder strides)."""
        return int(math.prod(self.encoder_rates))

    def validate(self) -> None:
        for name in ("encoder_dim", "latent_dim", "decoder_dim", "codebook_dim", "sample_rate"):
            _check_int(getattr(self, name), f"audio_codec.{name}")
        for name in ("encoder_rates", "decoder_rates"):
            rates = getattr(self, name)
            if not isinstance(rates, list | tuple) or not rates:
                raise ConfigError(f"config field 'audio_codec.{name}' must be a non-empty list")
            for r in rates:
                _check_int(r, f"audio_codec.{name}[]")


@dataclass(frozen=True)
class TextEncoderConfig:
    """T5 text encoder (reference ``T5EncoderConfig``).

    ``name`` is either a folder relative to the checkpoint folder or a Hugging Face Hub id.
    """

    name: str
    max_length: int | None
    pad_mode: str
    dim: int

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("config field 'text_encoder.name' must be a non-empty string")
        _check_int(self.dim, "text_encoder.dim")
        if self.max_length is not None:
            _check_int(self.max_length, "text_encoder.max_length")


@dataclass(frozen=True)
class VisionEncoderConfig:
    """Perception Encoder visual tower (reference ``PerceptionEncoderConfig``)."""

    dim: int
    batch_size: int
    name: str
    normalize_feature: bool
    interpolation_mode: str
    image_size: int

    def validate(self) -> None:
        _check_int(self.dim, "vision_encoder.dim")
        _check_int(self.image_size, "vision_encoder.image_size")
        _check_int(self.batch_size, "vision_encoder.batch_size", minimum=0)


@dataclass(frozen=True)
class TransformerConfig:
    """Flow-matching DiT (reference ``TransformerConfig``)."""

    dim: int
    n_heads: int
    n_layers: int
    dropout: float
    norm_eps: float
    qk_norm: bool
    fc_bias: bool
    ffn_exp: int | float
    ffn_dim_multiplier: int | float
    multiple_of: int
    non_linearity: str
    use_rope: bool
    max_positions: int
    frequency_embedding_dim: int
    timestep_non_linearity: str
    t_block_non_linearity: str
    t_block_bias: bool
    context_dim: int
    context_non_linearity: str
    context_embedder_dropout: float
    context_norm: bool
    out_channels: int
    in_channels: int | None

    def validate(self) -> None:
        for name in ("dim", "n_heads", "n_layers", "multiple_of", "out_channels", "context_dim"):
            _check_int(getattr(self, name), f"transformer.{name}")
        _check_int(self.frequency_embedding_dim, "transformer.frequency_embedding_dim")
        if self.dim % self.n_heads:
            raise ConfigError(
                f"config field 'transformer.dim' ({self.dim}) must be divisible by "
                f"'transformer.n_heads' ({self.n_heads})"
            )
        if (self.dim // self.n_heads) % 2 and self.use_rope:
            raise ConfigError("transformer head dim (dim / n_heads) must be even for RoPE")
        if self.context_dim != self.dim:
            # The reference adds the (dim-wide) timestep sinusoid to the projected text memory
            # before y_embedder(context_dim -> dim), so the two widths must agree.
            raise ConfigError(
                f"config field 'transformer.context_dim' ({self.context_dim}) must equal "
                f"'transformer.dim' ({self.dim})"
            )
        known = {"relu", "gelu", "swiglu", "approx_gelu", "srelu", "silu"}
        for name in (
            "non_linearity",
            "timestep_non_linearity",
            "t_block_non_linearity",
            "context_non_linearity",
        ):
            if getattr(self, name) not in known:
                raise ConfigError(
                    f"config field 'transformer.{name}' = {getattr(self, name)!r} is not one of "
                    f"{sorted(known)}"
                )
        if self.t_block_non_linearity == "swiglu":
            raise ConfigError("config field 'transformer.t_block_non_linearity' cannot be swiglu")


_TOP_LEVEL = (
    "in_channels",
    "audio_codec",
    "text_encoder",
    "vision_encoder",
    "transformer",
    "num_anchors",
    "anchor_embedding_dim",
    "visual_ranker",
    "text_ranker",
    "span_predictor",
)


@dataclass(frozen=True)
class SAMAudioConfig:
    """The whole model (reference ``SAMAudioConfig``).

    Rankers and the span predictor are kept as given (dict / str / None): this port does not
    run them, but keeps them so a saved config round-trips unchanged.
    """

    in_channels: int
    audio_codec: CodecConfig
    text_encoder: TextEncoderConfig
    vision_encoder: VisionEncoderConfig
    transformer: TransformerConfig
    num_anchors: int
    anchor_embedding_dim: int
    visual_ranker: dict[str, Any] | None
    text_ranker: dict[str, Any] | None
    span_predictor: str | None
    defaulted: tuple[str, ...] = field(default=(), compare=False)
    """Fields config.json left out, filled with the reference defaults."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAMAudioConfig:
        """Parse the reference config dict (unknown fields raise ConfigError, missing ones take
        the reference defaults and are listed in ``defaulted``)."""
        defaulted: list[str] = []
        data = _complete(data, "", list(_TOP_LEVEL), defaulted)
        for name in ("visual_ranker", "text_ranker"):
            ranker = data[name]
            if ranker is not None and (not isinstance(ranker, dict) or "kind" not in ranker):
                raise ConfigError(f"config field '{name}' must be null or an object with 'kind'")
        if data["span_predictor"] is not None and not isinstance(data["span_predictor"], str):
            raise ConfigError("config field 'span_predictor' must be null or a string")
        cfg = cls(
            in_channels=data["in_channels"],
            audio_codec=_parse_section(CodecConfig, data["audio_codec"], "audio_codec", defaulted),
            text_encoder=_parse_section(
                TextEncoderConfig, data["text_encoder"], "text_encoder", defaulted
            ),
            vision_encoder=_parse_section(
                VisionEncoderConfig, data["vision_encoder"], "vision_encoder", defaulted
            ),
            transformer=_parse_section(
                TransformerConfig, data["transformer"], "transformer", defaulted
            ),
            num_anchors=data["num_anchors"],
            anchor_embedding_dim=data["anchor_embedding_dim"],
            visual_ranker=data["visual_ranker"],
            text_ranker=data["text_ranker"],
            span_predictor=data["span_predictor"],
            defaulted=tuple(defaulted),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        _check_int(self.in_channels, "in_channels")
        _check_int(self.num_anchors, "num_anchors")
        _check_int(self.anchor_embedding_dim, "anchor_embedding_dim")
        self.audio_codec.validate()
        self.text_encoder.validate()
        self.vision_encoder.validate()
        self.transformer.validate()
        if self.in_channels != 6 * self.audio_codec.codebook_dim:
            # x = cat([noisy (2C), zeros (2C), audio features (2C)]) feeds proj(in_channels).
            raise ConfigError(
                f"config field 'in_channels' ({self.in_channels}) must be 6 x "
                f"'audio_codec.codebook_dim' ({self.audio_codec.codebook_dim})"
            )
        if self.transformer.out_channels != 2 * self.audio_codec.codebook_dim:
            raise ConfigError(
                f"config field 'transformer.out_channels' ({self.transformer.out_channels}) must "
                f"be 2 x 'audio_codec.codebook_dim' ({self.audio_codec.codebook_dim})"
            )

    @property
    def latent_channels(self) -> int:
        """C: codec latent channels per stem (the ODE state has 2C: target and residual)."""
        return self.audio_codec.codebook_dim

    def to_dict(self) -> dict[str, Any]:
        """The reference config.json layout (JSON-serialisable)."""
        return {
            "in_channels": self.in_channels,
            "audio_codec": asdict(self.audio_codec),
            "text_encoder": asdict(self.text_encoder),
            "vision_encoder": asdict(self.vision_encoder),
            "transformer": asdict(self.transformer),
            "num_anchors": self.num_anchors,
            "anchor_embedding_dim": self.anchor_embedding_dim,
            "visual_ranker": self.visual_ranker,
            "text_ranker": self.text_ranker,
            "span_predictor": self.span_predictor,
        }

    @classmethod
    def from_json_file(cls, path: str | Path) -> SAMAudioConfig:
        """Read and strictly parse a config.json file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise ModelLoadError(f"no config.json at {path}") from err
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read {path}: {err}") from err
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
