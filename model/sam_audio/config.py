"""SAM Audio configuration: one class per sub-model, and the parser for ``config.json``.

Layout: every configuration class lives in this one module, as in the reference
(``sam_audio/model/config.py`` at facebookresearch/sam-audio 68b48d4: ``DACVAEConfig``,
``T5EncoderConfig``, ``PerceptionEncoderConfig``, ``TransformerConfig``, ``SAMAudioConfig``) and
as transformers does for a composite model (``configuration_clip.py`` holds the text, vision
and top-level configs). The modeling modules (``codec``, ``text_encoder``, ``vision_encoder``,
``transformer``, ``model``) import their config from here and never the other way round, so
``REFERENCE_DEFAULTS`` is the one place the reference defaults are spelled out and this module
needs no torch.

The reference builds plain classes from keyword arguments: an unknown field is a TypeError
there, a missing one takes the class's default. The same here: no unknown field is accepted
(a typo or a checkpoint from another model family fails at load time, naming the field), and
a missing field takes the reference default, so every config the reference runs builds the
same network here. Which fields were filled in is kept in ``SAMAudioConfig.defaulted`` and
logged when a model is loaded.

Each sub-model config checks itself at two points, so that loading a checkpoint reports the
same thing at the same moment as always: ``validate()`` (types and ranges; run on every
``config.json`` by ``SAMAudioConfig.validate``) and ``check_supported()`` (what this port can
build; run when the sub-model is built, and by the sub-config's own ``from_dict``).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from model.sam_audio.errors import CodecConfigError, ConfigError, SAMAudioLoadError

if TYPE_CHECKING:
    from torchvision.transforms import InterpolationMode

__all__ = [
    "PE_CORE_VISION_ARCHS",
    "REFERENCE_DEFAULTS",
    "DACVAEConfig",
    "PEVisionArch",
    "PerceptionEncoderConfig",
    "SAMAudioConfig",
    "T5EncoderConfig",
    "TransformerConfig",
]

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


def _is_int(value: Any) -> bool:
    """An int that is not a bool (JSON ``true`` must not pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(
    value: Any, where: str, minimum: int = 1, error: type[ConfigError] = ConfigError
) -> None:
    """Raise ``error`` naming config field ``where`` unless ``value`` is an int >= minimum."""
    if not _is_int(value) or value < minimum:
        raise error(f"config field '{where}' must be an integer >= {minimum}, got {value!r}")


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


# ---------------------------------------------------------------------------------------------
# Audio codec
# ---------------------------------------------------------------------------------------------

# facebookresearch/dacvae hard-wires these in ``Decoder.__init__`` / ``DAC.__init__``; they are
# not config fields, but they decide which codec configs can be built (``check_supported``).
WM_RATES = (8, 5, 4, 2)  # ``DAC(wm_rates=None)`` default
WM_CHANNELS = 32  # ``Decoder(wm_channels=32)``
WM_HIDDEN = 512  # ``Watermarker(hidden=512)``, also the LSTM width
WM_LATENT = 128  # ``Decoder(d_wm_out=128)``
WM_NBITS = 16  # ``Decoder(nbits=16)``
WM_LSTM_LAYERS = 2
DOWNSAMPLING_FACTOR = 3  # ``DecoderBlock(downsampling_factor=3)``

_CODEC = REFERENCE_DEFAULTS["audio_codec"]


@dataclass(frozen=True)
class DACVAEConfig:
    """Codec hyper-parameters (reference ``sam_audio.model.config.DACVAEConfig``, same defaults).

    ``n_codebooks``, ``codebook_size``, ``quantizer_dropout``, ``mean`` and ``std`` do not change
    the inference network (the VAE bottleneck replaces the RVQ); they are kept so a released
    ``config.json`` section parses as-is and round-trips.
    """

    encoder_dim: int = _CODEC["encoder_dim"]
    encoder_rates: tuple[int, ...] = tuple(_CODEC["encoder_rates"])
    latent_dim: int = _CODEC["latent_dim"]
    decoder_dim: int = _CODEC["decoder_dim"]
    decoder_rates: tuple[int, ...] = tuple(_CODEC["decoder_rates"])
    n_codebooks: int = _CODEC["n_codebooks"]
    codebook_size: int = _CODEC["codebook_size"]
    codebook_dim: int = _CODEC["codebook_dim"]
    quantizer_dropout: bool | float = _CODEC["quantizer_dropout"]
    sample_rate: int = _CODEC["sample_rate"]
    mean: float = _CODEC["mean"]
    std: float = _CODEC["std"]

    def __post_init__(self) -> None:
        # The reference keeps lists; a frozen config holds tuples (``to_dict`` gives lists back).
        for name in ("encoder_rates", "decoder_rates"):
            rates = getattr(self, name)
            if isinstance(rates, list):
                object.__setattr__(self, name, tuple(rates))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, strict: bool = True) -> DACVAEConfig:
        """Parse the ``audio_codec`` section of a SAM Audio ``config.json`` on its own.

        Unknown fields are always an error (a typo must not build a different network). Missing
        fields are an error too unless ``strict=False``, which fills in the reference defaults the
        way ``DACVAEConfig(**d)`` does upstream. The result is validated and buildable.
        """
        if not isinstance(data, Mapping):
            raise CodecConfigError(
                f"config section 'audio_codec' must be an object, got {type(data).__name__}"
            )
        names = [f.name for f in fields(cls)]
        unknown = sorted(k for k in data if k not in names)
        if unknown:
            raise CodecConfigError(
                f"unknown config field(s) {['audio_codec.' + k for k in unknown]}; "
                f"known fields: {names}"
            )
        missing = [n for n in names if n not in data]
        if missing and strict:
            raise CodecConfigError(
                f"missing config field(s) {['audio_codec.' + k for k in missing]} "
                f"(pass strict=False to use the reference defaults)"
            )
        return cls(**{k: data[k] for k in names if k in data}).checked()

    @classmethod
    def coerce(cls, config: DACVAEConfig | Mapping[str, Any] | Any) -> DACVAEConfig:
        """This class, a ``config.json`` mapping, or any object with the same attributes, as a
        validated, buildable ``DACVAEConfig`` (so callers need not convert)."""
        if isinstance(config, cls):
            return config.checked()
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if not hasattr(config, n)]
        if missing:
            raise CodecConfigError(
                f"{type(config).__name__} is not a codec config: it lacks {missing}"
            )
        return cls(**{n: getattr(config, n) for n in names}).checked()

    def validate(self) -> None:
        """Field types and ranges (every ``config.json``, via ``SAMAudioConfig.validate``)."""
        for name in ("encoder_dim", "latent_dim", "decoder_dim", "codebook_dim", "sample_rate"):
            _check_int(getattr(self, name), f"audio_codec.{name}", error=CodecConfigError)
        for name in ("encoder_rates", "decoder_rates"):
            rates = getattr(self, name)
            if not isinstance(rates, list | tuple) or not rates:
                raise CodecConfigError(
                    f"config field 'audio_codec.{name}' must be a non-empty list"
                )
            for r in rates:
                _check_int(r, f"audio_codec.{name}[]", error=CodecConfigError)

    def check_supported(self) -> None:
        """What the DACVAE module can build: its watermarker has fixed strides and widths
        (``WM_*``), which constrain ``decoder_rates`` and ``decoder_dim`` (else the reference
        fails in decode). Run when the codec is built."""
        n = len(self.decoder_rates)
        if n > len(WM_RATES):
            raise CodecConfigError(
                f"config field 'audio_codec.decoder_rates' has {n} entries; the DACVAE watermarker "
                f"pairs them with its {len(WM_RATES)} fixed strides {list(WM_RATES)}, so at most "
                f"{len(WM_RATES)} are supported"
            )
        # The watermarker works on the decoder output at a fixed total stride, so the decoder's
        # upsampling must be a multiple of it (else the reference fails in decode).
        wm_stride = math.prod(WM_RATES[:n])
        if math.prod(self.decoder_rates) % wm_stride:
            raise CodecConfigError(
                f"config field 'audio_codec.decoder_rates' = {list(self.decoder_rates)} is not "
                f"supported: their product must be a multiple of {wm_stride}, the total stride of "
                f"the DACVAE watermarker ({list(WM_RATES[:n])})"
            )
        # The watermarker is built with fixed widths, which pins decoder_dim (reference Decoder).
        last = self.decoder_dim // 2**n
        if self.decoder_dim // DOWNSAMPLING_FACTOR != WM_HIDDEN or (
            last // DOWNSAMPLING_FACTOR != WM_CHANNELS
        ):
            raise CodecConfigError(
                f"config field 'audio_codec.decoder_dim' = {self.decoder_dim} is not supported: the "
                f"DACVAE watermarker hard-wires {WM_CHANNELS} channels and a {WM_HIDDEN}-wide "
                f"LSTM, which needs decoder_dim // 3 == {WM_HIDDEN} and "
                f"(decoder_dim // 2**len(decoder_rates)) // 3 == {WM_CHANNELS} (e.g. 1536 with 4 rates)"
            )

    def checked(self) -> DACVAEConfig:
        """``self`` after ``validate`` and ``check_supported``."""
        self.validate()
        self.check_supported()
        return self

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame (product of the encoder strides)."""
        return int(math.prod(self.encoder_rates))

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form (lists, not tuples)."""
        d = asdict(self)
        for name in ("encoder_rates", "decoder_rates"):
            if isinstance(d[name], tuple):
                d[name] = list(d[name])
        return d


# ---------------------------------------------------------------------------------------------
# Text encoder
# ---------------------------------------------------------------------------------------------

_TEXT = REFERENCE_DEFAULTS["text_encoder"]


@dataclass(frozen=True)
class T5EncoderConfig:
    """T5 text encoder (reference ``T5EncoderConfig``).

    ``name`` is either a folder relative to the checkpoint folder or a Hugging Face Hub id.
    """

    name: str = _TEXT["name"]
    max_length: int | None = _TEXT["max_length"]
    pad_mode: str = _TEXT["pad_mode"]
    dim: int = _TEXT["dim"]

    def validate(self) -> None:
        """Field types and ranges (every ``config.json``)."""
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("config field 'text_encoder.name' must be a non-empty string")
        _check_int(self.dim, "text_encoder.dim")
        if self.max_length is not None:
            _check_int(self.max_length, "text_encoder.max_length")

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Vision encoder
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PEVisionArch:
    """One PE visual tower; field names and defaults follow ``core/vision_encoder/config.py``
    ``PEConfig`` (perception_models e72b6810) so the table below reads like the reference."""

    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float
    output_dim: int | None
    image_size: int
    ls_init_value: float | None = None
    use_abs_posemb: bool = True
    use_cls_token: bool = False
    use_rope2d: bool = True
    pool_type: str = "attn"
    attn_pooler_heads: int = 8
    use_ln_pre: bool = True
    use_ln_post: bool = True

    @property
    def mlp_width(self) -> int:
        """Hidden width of each block's MLP, computed as the reference does (``int(d*ratio)``)."""
        return int(self.width * self.mlp_ratio)

    @property
    def grid_size(self) -> int:
        """Side of the pre-training patch grid the absolute position table was learned on."""
        return self.image_size // self.patch_size

    @property
    def feature_dim(self) -> int:
        """Size of one image embedding (``output_dim`` when projected, else ``width``)."""
        return self.output_dim or self.width


# The PE-Core visual towers of PE_VISION_CONFIG (perception_models e72b6810, config.py).
PE_CORE_VISION_ARCHS: dict[str, PEVisionArch] = {
    "PE-Core-G14-448": PEVisionArch(
        image_size=448,
        patch_size=14,
        width=1536,
        layers=50,
        heads=16,
        mlp_ratio=8960 / 1536,
        output_dim=1280,
        use_cls_token=False,
    ),
    "PE-Core-L14-336": PEVisionArch(
        image_size=336,
        patch_size=14,
        width=1024,
        layers=24,
        heads=16,
        mlp_ratio=4.0,
        output_dim=1024,
        use_cls_token=True,
    ),
    "PE-Core-B16-224": PEVisionArch(
        image_size=224,
        patch_size=16,
        width=768,
        layers=12,
        heads=12,
        mlp_ratio=4.0,
        output_dim=1024,
        use_cls_token=True,
    ),
    "PE-Core-S16-384": PEVisionArch(
        image_size=384,
        patch_size=16,
        width=384,
        layers=12,
        heads=6,
        mlp_ratio=4.0,
        output_dim=512,
        use_cls_token=True,
    ),
    "PE-Core-T16-384": PEVisionArch(
        image_size=384,
        patch_size=16,
        width=192,
        layers=12,
        heads=3,
        mlp_ratio=4.0,
        output_dim=512,
        use_cls_token=True,
    ),
}


_VISION = REFERENCE_DEFAULTS["vision_encoder"]


def _interpolation_names() -> tuple[str, ...]:
    """torchvision's ``InterpolationMode`` names (imported here only: configs need no torch)."""
    from torchvision.transforms import InterpolationMode

    return tuple(m.name for m in InterpolationMode)


@dataclass(frozen=True)
class PerceptionEncoderConfig:
    """SAM Audio's ``vision_encoder`` config block (reference ``PerceptionEncoderConfig``).

    ``dim`` must equal the tower's output size; ``batch_size`` <= 0 encodes a video in one go;
    ``image_size`` is the square side frames are resized to (may differ from the native size).
    """

    dim: int = _VISION["dim"]
    batch_size: int = _VISION["batch_size"]
    name: str = _VISION["name"]
    normalize_feature: bool = _VISION["normalize_feature"]
    interpolation_mode: str = _VISION["interpolation_mode"]
    image_size: int = _VISION["image_size"]

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, use_reference_defaults: bool = False
    ) -> PerceptionEncoderConfig:
        """Parse ``config.json["vision_encoder"]`` on its own; unknown, missing or ill-typed
        fields raise ``ConfigError`` naming the field (a typo must not silently select another
        model). The result is buildable (``check_supported``).

        ``use_reference_defaults=True`` fills missing fields with SAM Audio's defaults instead.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"vision_encoder config must be a mapping, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(
                f"vision_encoder config: unknown field(s) {', '.join(map(repr, unknown))}; "
                f"expected {', '.join(names)}"
            )
        # SAM Audio's PerceptionEncoderConfig defaults; only when a caller asks for them, so
        # that a config missing a field fails loudly by default.
        values = dict(REFERENCE_DEFAULTS["vision_encoder"]) if use_reference_defaults else {}
        values.update(data)
        missing = [f for f in names if f not in values]
        if missing:
            raise ConfigError(
                f"vision_encoder config: missing field(s) {', '.join(map(repr, missing))}"
            )
        cfg = cls(**values)
        cfg.check_supported()
        return cfg

    def validate(self) -> None:
        """Field types and ranges (every ``config.json``, via ``SAMAudioConfig.validate``)."""
        _check_int(self.dim, "vision_encoder.dim")
        _check_int(self.image_size, "vision_encoder.image_size")
        _check_int(self.batch_size, "vision_encoder.batch_size", minimum=0)

    def check_supported(self) -> None:
        """What the PE-Core port can build: a known tower (``PE_CORE_VISION_ARCHS``) whose
        output size is ``dim``, a torchvision resize mode, frames no smaller than a patch.
        Run when the encoder is built, and by ``from_dict``."""
        for name in ("dim", "batch_size", "image_size"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ConfigError(
                    f"vision_encoder config: field {name!r} must be an int, got {value!r}"
                )
        if not isinstance(self.normalize_feature, bool):
            raise ConfigError(
                "vision_encoder config: field 'normalize_feature' must be a bool, "
                f"got {self.normalize_feature!r}"
            )
        if not isinstance(self.name, str) or self.name not in PE_CORE_VISION_ARCHS:
            raise ConfigError(
                f"vision_encoder config: field 'name' = {self.name!r} is not a known PE-Core "
                f"model; known: {', '.join(PE_CORE_VISION_ARCHS)}"
            )
        modes = _interpolation_names()
        if not isinstance(self.interpolation_mode, str) or self.interpolation_mode.upper() not in (
            modes
        ):
            raise ConfigError(
                f"vision_encoder config: field 'interpolation_mode' = "
                f"{self.interpolation_mode!r} is not one of {', '.join(modes)}"
            )
        arch = PE_CORE_VISION_ARCHS[self.name]
        if self.image_size < arch.patch_size:
            raise ConfigError(
                f"vision_encoder config: field 'image_size' = {self.image_size} is smaller "
                f"than the patch size {arch.patch_size} of {self.name}"
            )
        if self.dim != arch.feature_dim:
            raise ConfigError(
                f"vision_encoder config: field 'dim' = {self.dim} does not match the "
                f"{arch.feature_dim}-d output of {self.name}"
            )

    @property
    def arch(self) -> PEVisionArch:
        """The visual tower this config names."""
        return PE_CORE_VISION_ARCHS[self.name]

    @property
    def interpolation(self) -> InterpolationMode:
        """torchvision ``InterpolationMode`` for the frame resize (looked up upper-cased, as
        the reference)."""
        from torchvision.transforms import InterpolationMode

        return InterpolationMode[self.interpolation_mode.upper()]

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Flow-matching transformer
# ---------------------------------------------------------------------------------------------

_DIT = REFERENCE_DEFAULTS["transformer"]


@dataclass(frozen=True)
class TransformerConfig:
    """Flow-matching DiT (reference ``TransformerConfig``)."""

    dim: int = _DIT["dim"]
    n_heads: int = _DIT["n_heads"]
    n_layers: int = _DIT["n_layers"]
    dropout: float = _DIT["dropout"]
    norm_eps: float = _DIT["norm_eps"]
    qk_norm: bool = _DIT["qk_norm"]
    fc_bias: bool = _DIT["fc_bias"]
    ffn_exp: int | float = _DIT["ffn_exp"]
    ffn_dim_multiplier: int | float = _DIT["ffn_dim_multiplier"]
    multiple_of: int = _DIT["multiple_of"]
    non_linearity: str = _DIT["non_linearity"]
    use_rope: bool = _DIT["use_rope"]
    max_positions: int = _DIT["max_positions"]
    frequency_embedding_dim: int = _DIT["frequency_embedding_dim"]
    timestep_non_linearity: str = _DIT["timestep_non_linearity"]
    t_block_non_linearity: str = _DIT["t_block_non_linearity"]
    t_block_bias: bool = _DIT["t_block_bias"]
    context_dim: int = _DIT["context_dim"]
    context_non_linearity: str = _DIT["context_non_linearity"]
    context_embedder_dropout: float = _DIT["context_embedder_dropout"]
    context_norm: bool = _DIT["context_norm"]
    out_channels: int = _DIT["out_channels"]
    in_channels: int | None = _DIT["in_channels"]

    def validate(self) -> None:
        """Field types and ranges, and what the DiT needs of them (every ``config.json``)."""
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

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# The whole model
# ---------------------------------------------------------------------------------------------


_TOP = REFERENCE_DEFAULTS[""]


@dataclass(frozen=True)
class SAMAudioConfig:
    """The whole model (reference ``SAMAudioConfig``), composed of the sub-model configs.

    ``SAMAudioConfig()`` is the reference default (sam-audio-base sizes); a checkpoint's config
    comes from ``from_json_file`` / ``from_dict``, which validate it. Rankers and the span
    predictor are kept as given (dict / str / None) so a saved config round-trips unchanged;
    ``rankers.create_ranker`` builds the rankers (sound_activity, CLAP, the Judge; ImageBind is
    not ported and raises when asked to score); ``span_predictor`` names the PE-A-Frame
    model that ``separate(..., predict_spans=True)`` loads on first use (``spans``).
    """

    in_channels: int = _TOP["in_channels"]
    audio_codec: DACVAEConfig = field(default_factory=DACVAEConfig)
    text_encoder: T5EncoderConfig = field(default_factory=T5EncoderConfig)
    vision_encoder: PerceptionEncoderConfig = field(default_factory=PerceptionEncoderConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    num_anchors: int = _TOP["num_anchors"]
    anchor_embedding_dim: int = _TOP["anchor_embedding_dim"]
    visual_ranker: dict[str, Any] | None = _TOP["visual_ranker"]
    text_ranker: dict[str, Any] | None = _TOP["text_ranker"]
    span_predictor: str | None = _TOP["span_predictor"]
    defaulted: tuple[str, ...] = field(default=(), compare=False)
    """Fields config.json left out, filled with the reference defaults."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAMAudioConfig:
        """Parse the reference config dict (unknown fields raise ConfigError, missing ones take
        the reference defaults and are listed in ``defaulted``)."""
        defaulted: list[str] = []
        data = _complete(data, "", list(_TOP), defaulted)
        for name in ("visual_ranker", "text_ranker"):
            ranker = data[name]
            if ranker is not None and (not isinstance(ranker, dict) or "kind" not in ranker):
                raise ConfigError(f"config field '{name}' must be null or an object with 'kind'")
        if data["span_predictor"] is not None and not isinstance(data["span_predictor"], str):
            raise ConfigError("config field 'span_predictor' must be null or a string")
        cfg = cls(
            in_channels=data["in_channels"],
            audio_codec=_parse_section(DACVAEConfig, data["audio_codec"], "audio_codec", defaulted),
            text_encoder=_parse_section(
                T5EncoderConfig, data["text_encoder"], "text_encoder", defaulted
            ),
            vision_encoder=_parse_section(
                PerceptionEncoderConfig, data["vision_encoder"], "vision_encoder", defaulted
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
        """Every field and how the sub-models fit together (run on every ``config.json``)."""
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
            "audio_codec": self.audio_codec.to_dict(),
            "text_encoder": self.text_encoder.to_dict(),
            "vision_encoder": self.vision_encoder.to_dict(),
            "transformer": self.transformer.to_dict(),
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
            raise SAMAudioLoadError(f"no config.json at {path}") from err
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"cannot read {path}: {err}") from err
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    def to_json_file(self, path: str | Path) -> None:
        """Write the reference config.json layout."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
