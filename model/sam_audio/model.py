"""SAM Audio: the separation network and its flow-matching sampler (reference
``sam_audio/model/model.py``).

``SAMAudio.separate(batch)`` encodes the mixture with the DACVAE codec, the description with T5
and the masked video with the Perception Encoder, integrates the flow-matching ODE from noise to
the stacked (target, residual) codec latents with the DiT as vector field, and decodes both
stems.

Two ways of evaluating the vector field are kept:

* ``naive=True``: exactly the reference's per-step computation (``forward``): every one of the
  32 evaluations re-projects the clean-audio features, re-aligns the video, re-embeds the
  anchors and re-projects the text memory; ``separate(naive=True)`` also runs the codec the
  reference's way (``DACVAECodec.encode`` / ``decode`` with ``naive=True``).
* default (optimised): everything that depends neither on the noisy latent nor on time is
  computed once per call (``prepare_conditioning``): the audio part of the input projection,
  the video and anchor terms, the text memory projection, the RoPE table, and all-valid masks
  are dropped (same result, faster attention kernels). Optional autocast and torch.compile.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from model.sam_audio.conditioning import AlignModalities, EmbedAnchors, SinusoidalEmbedding
from model.sam_audio.config import SAMAudioConfig
from model.sam_audio.errors import SAMAudioInputError, SAMAudioLoadError
from model.sam_audio.loading import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SAFETENSORS_FILE,
    load_into,
    load_state_dict_file,
    resolve_model_dir,
    resolve_text_encoder_dir,
)
from model.sam_audio.processor import Batch
from model.sam_audio.rankers import create_ranker
from model.sam_audio.ranking import Ranker
from model.sam_audio.spans import PEAudioFrameSpanPredictor
from model.sam_audio.text_encoder import T5TextEncoder
from model.sam_audio.transformer import DiT, RopeTable

logger = logging.getLogger(__name__)

DFLT_ODE_OPT: dict[str, Any] = {"method": "midpoint", "options": {"step_size": 2 / 32}}
"""The reference default: torchdiffeq midpoint with step 1/16 (32 vector-field evaluations)."""

ProgressFn = Callable[[float, str], None]


@dataclass
class SeparationResult:
    """Per batch item 1-D waveforms (length rounded up to a multiple of the hop, like the
    reference) and the ODE start noise used ([B * k, T, 2C], candidates of an item adjacent).

    With reranking (k > 1 candidates and a ranker): ``scores`` [B, k] as the ranker gave them
    and ``chosen`` [B], the kept candidate of each item; both None otherwise (the reference
    keeps candidate 0 then).

    ``spans``: with ``predict_spans``, the predicted ``('+', start_s, end_s)`` anchors per item
    (also put into ``batch.anchors``, as the reference does); ``spans_applied`` says whether
    they conditioned the separation (the reference: no, see ``SAMAudio.separate``)."""

    target: list[torch.Tensor]
    residual: list[torch.Tensor]
    noise: torch.Tensor
    scores: torch.Tensor | None = None
    chosen: torch.Tensor | None = None
    ranker: str | None = None
    spans: list[list[tuple[str, float, float]]] | None = None
    spans_applied: bool = False


@dataclass
class Rankers:
    """The rankers the config names (reference ``SAMAudio.visual_ranker`` / ``text_ranker``).

    A plain holder, not a submodule: ranker weights are not part of the separation model's
    state dict (the reference skips them on load too)."""

    visual: Ranker | None = None
    text: Ranker | None = None


@dataclass
class Conditioning:
    """Everything the vector field needs that is constant over one ODE solve."""

    cond_input: torch.Tensor  # [B, T, dim]: proj(audio features) + bias + video + anchor terms
    noisy_weight: torch.Tensor  # [dim, 2C]: the noisy-latent columns of proj.weight
    memory_base: torch.Tensor | None  # [B, L, dim]: memory_proj(text features)
    text_mask: torch.Tensor | None  # [B, L] bool, None when every token is valid
    audio_pad_mask: torch.Tensor | None  # [B, T] bool, None when every frame is valid
    rope: RopeTable | None  # None: RoPE computed the reference way at every step


# ---------------------------------------------------------------------------------------------
# Fixed-grid ODE solvers (torchdiffeq's grid and step formulas, with a per-step callback)
# ---------------------------------------------------------------------------------------------

_FIXED_GRID = ("euler", "midpoint", "rk4")


def _time_grid(step_size: float, dtype: torch.dtype, device) -> torch.Tensor:
    """torchdiffeq ``_grid_constructor_from_step_size`` over [0, 1]."""
    t = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    niters = torch.ceil((t[-1] - t[0]) / step_size + 1).item()
    grid = torch.arange(0, niters, dtype=dtype, device=device) * step_size + t[0]
    grid[-1] = t[-1]
    return grid


def odeint_final(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    ode_opt: Mapping[str, Any],
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate dy/dt = func(t, y) from t=0 to t=1 and return y(1).

    ``ode_opt`` has the reference's ``odeint`` keywords (``method``, ``options``, ``rtol``,
    ``atol``). euler / midpoint / rk4 with ``step_size`` (or the default grid [0, 1]) run here,
    matching torchdiffeq step for step; any other method is handed to torchdiffeq.
    """
    opt = dict(ode_opt or {})
    method = opt.pop("method", "dopri5")
    options = dict(opt.pop("options", None) or {})
    step_size = options.pop("step_size", None)
    options.pop("interp", None)  # only matters for intermediate output times
    perturb = options.pop("perturb", False)
    if method in _FIXED_GRID and not options and not opt and not perturb:
        dtype = y0.dtype if y0.is_floating_point() else torch.float32
        if step_size is None:
            grid = torch.tensor([0.0, 1.0], dtype=dtype, device=y0.device)
        else:
            if not float(step_size) > 0:
                raise SAMAudioInputError(f"ode_opt step_size must be > 0, got {step_size}")
            grid = _time_grid(float(step_size), dtype, y0.device)
        n = len(grid) - 1
        y = y0
        for i in range(n):
            t0, t1 = grid[i], grid[i + 1]
            dt = t1 - t0
            f0 = func(t0, y)
            if method == "euler":
                dy = dt * f0
            elif method == "midpoint":
                half_dt = 0.5 * dt
                dy = dt * func(t0 + half_dt, y + f0 * half_dt)
            else:  # torchdiffeq rk4 = rk4_alt_step_func (3/8 rule)
                third = 1 / 3
                k2 = func(t0 + dt * third, y + dt * f0 * third)
                k3 = func(t0 + dt * (2 / 3), y + dt * (k2 - f0 * third))
                k4 = func(t1, y + dt * (f0 - k2 + k3))
                dy = (f0 + 3 * (k2 + k3) + k4) * dt * 0.125
            y = y + dy
            if on_step is not None:
                on_step(i + 1, n)
        return y
    try:
        from torchdiffeq import odeint
    except ImportError as err:
        raise SAMAudioInputError(
            f"ode_opt method {method!r} with options {ode_opt!r} needs torchdiffeq "
            f"(pip install torchdiffeq); built in: {list(_FIXED_GRID)} with step_size"
        ) from err
    if step_size is not None:
        options["step_size"] = step_size
    if perturb:
        options["perturb"] = perturb
    t = torch.tensor([0.0, 1.0], device=y0.device)
    return odeint(func, y0, t, method=method, options=options or None, **opt)[-1]


# ---------------------------------------------------------------------------------------------
# Component factories (module-level so tests can substitute small stand-ins)
# ---------------------------------------------------------------------------------------------


def _naive_kwargs(method: Callable[..., Any], naive: bool) -> dict[str, bool]:
    """``{"naive": True}`` when asked for and ``method`` takes it (a stand-in codec may not)."""
    if naive and "naive" in inspect.signature(method).parameters:
        return {"naive": True}
    return {}


def _build_codec(cfg: SAMAudioConfig) -> nn.Module:
    """The DACVAE codec of ``cfg`` (raises CodecConfigError if this port cannot build it)."""
    from model.sam_audio.codec import DACVAECodec

    return DACVAECodec(cfg.audio_codec)


def _build_vision_encoder(cfg: SAMAudioConfig) -> nn.Module:
    """The PE-Core visual tower of ``cfg`` (raises ConfigError if it is not a known tower)."""
    from model.sam_audio.vision_encoder import PerceptionVisionEncoder

    return PerceptionVisionEncoder(cfg.vision_encoder)


def _consecutive_unique(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first frame of each run of identical consecutive frames, and for every
    frame the position of its run: ``video[keep][inverse]`` equals ``video``."""
    n = video.shape[0]
    new_run = [True] + [not torch.equal(video[i], video[i - 1]) for i in range(1, n)]
    flags = torch.tensor(new_run, device=video.device)
    keep = torch.nonzero(flags).flatten()
    inverse = torch.cumsum(flags.long(), 0) - 1
    return keep, inverse


def _build_cheaply(factory: Callable[[], nn.Module], meta: bool) -> nn.Module:
    """Build on the meta device (no random init, no memory) when the module has no
    non-persistent buffers that loading would leave unset; else build normally."""
    if meta:
        try:
            with torch.device("meta"):
                module = factory()
            persistent = set(module.state_dict().keys())
            transient = [n for n, _ in module.named_buffers() if n not in persistent]
            # plain tensor attributes computed in __init__ would stay on meta as well
            transient += [
                name
                for m in module.modules()
                for name, value in vars(m).items()
                if isinstance(value, torch.Tensor)
            ]
            if not transient:
                return module
        except Exception:  # noqa: BLE001 - some constructors compute values eagerly
            pass
    return factory()


class SAMAudio(nn.Module):
    """SAM Audio separation model (reference ``SAMAudio``; same submodule names).

    Build with ``SAMAudio.from_pretrained(folder_or_repo_id)``; process inputs with
    ``SAMAudioProcessor``; run ``model.separate(batch)``.
    """

    def __init__(
        self,
        config: SAMAudioConfig,
        text_encoder: T5TextEncoder | None = None,
        *,
        _meta_init: bool = False,
    ) -> None:
        super().__init__()
        self.config = config
        cfg = config
        dim = cfg.transformer.dim
        self.audio_codec = _build_cheaply(lambda: _build_codec(cfg), _meta_init)
        if text_encoder is None:
            folder = resolve_text_encoder_dir(cfg.text_encoder.name, None)
            text_encoder = T5TextEncoder.from_pretrained(folder, cfg.text_encoder)
        self.text_encoder = text_encoder
        self.vision_encoder = _build_cheaply(lambda: _build_vision_encoder(cfg), _meta_init)
        with torch.device("meta") if _meta_init else contextlib.nullcontext():
            self.transformer = DiT(cfg.transformer)
            self.proj = nn.Linear(cfg.in_channels, dim)
            self.align_masked_video = AlignModalities(cfg.vision_encoder.dim, dim)
            self.embed_anchors = EmbedAnchors(cfg.num_anchors, cfg.anchor_embedding_dim, dim)
            self.memory_proj = nn.Linear(cfg.text_encoder.dim, dim)
        self.timestep_emb = SinusoidalEmbedding(dim)
        self.rankers = Rankers(
            visual=create_ranker(cfg.visual_ranker), text=create_ranker(cfg.text_ranker)
        )
        self.dedupe_video_frames = True
        # not a submodule: its weights are not part of the separation checkpoint (see
        # use_span_predictor); loaded on first use of predict_spans
        object.__setattr__(self, "_span_predictor", None)
        self._compiled_dit: Callable[..., torch.Tensor] | None = None
        # opt-in (set_encoder_offload): encoders wait on offload_device between uses
        self.offload_encoders = False
        self.offload_device = torch.device("cpu")
        # Inference port: dropout (p = transformer.dropout) must stay off. The reference leaves
        # the model in training mode after from_pretrained; we never do.
        self.eval()

    # -- properties --------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.audio_codec.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.audio_codec.hop_length

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # -- loading / saving --------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        revision: str | None = None,
        local_files_only: bool | None = None,
        cache_dir: str | Path | None = None,
    ) -> SAMAudio:
        """Load a model folder (config.json + checkpoint.pt / model.safetensors) or a Hub repo
        id from the local HF cache. Returns the model in eval mode on ``device`` (default cpu).

        Raises SAMAudioLoadError for a missing folder/cache entry (with download instructions),
        a bad config field, or a missing / unexpected / mis-shaped weight.
        """
        folder = resolve_model_dir(
            name_or_path,
            revision=revision,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
        )
        config = SAMAudioConfig.from_json_file(folder / CONFIG_FILE)
        if config.defaulted:
            logger.warning(
                "%s leaves out %s; using the reference defaults, as the reference does",
                folder / CONFIG_FILE,
                ", ".join(config.defaulted),
            )
        if config.span_predictor is not None:
            logger.info(
                "config span_predictor is %r; loaded (local folder or HF cache) on the first "
                "separate(..., predict_spans=True)",
                config.span_predictor,
            )
        t5_dir = resolve_text_encoder_dir(
            config.text_encoder.name,
            folder,
            local_files_only=local_files_only,
            cache_dir=cache_dir,
        )
        text_encoder = T5TextEncoder.from_pretrained(t5_dir, config.text_encoder)
        state_dict = load_state_dict_file(folder)
        model = cls(config, text_encoder=text_encoder, _meta_init=True)
        load_into(model, state_dict, source=str(folder))
        del state_dict
        leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
        if leftover:
            raise SAMAudioLoadError(
                f"weights were not initialised by the checkpoint: {leftover[:5]}"
            )
        model.eval()
        if device is not None:
            model.to(device)
        return model

    def save_pretrained(
        self,
        folder: str | Path,
        *,
        safe_serialization: bool = False,
        include_text_encoder: bool = True,
    ) -> Path:
        """Write config.json + checkpoint.pt (or model.safetensors) in the reference layout.

        With ``include_text_encoder`` the T5 (weights + tokenizer) is written to a subfolder
        named after ``text_encoder.name`` (its last path component) and the saved config
        points there, so the folder is self-contained.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        if include_text_encoder:
            sub = Path(self.config.text_encoder.name).name or "t5"
            self.text_encoder.model.save_pretrained(folder / sub)
            self.text_encoder.tokenizer.save_pretrained(folder / sub)
            cfg["text_encoder"]["name"] = sub
        import json

        (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        sd = {
            k: v.detach().cpu().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("text_encoder.")
        }
        if safe_serialization:
            from safetensors.torch import save_file

            save_file(sd, str(folder / SAFETENSORS_FILE))
        else:
            torch.save(sd, folder / CHECKPOINT_FILE)
        return folder

    def compile_dit(self, **kwargs: Any) -> SAMAudio:
        """Use ``torch.compile`` for the DiT in the optimised path (kwargs go to torch.compile).

        Pays off on GPU for long jobs (all windows share one shape); on CPU the compile time
        usually exceeds the gain for a single clip.
        """
        kwargs.setdefault("dynamic", False)
        # not registered as a submodule: the state dict must keep the reference keys only
        object.__setattr__(self, "_compiled_dit", torch.compile(self.transformer, **kwargs))
        return self

    # -- encoder offloading ------------------------------------------------------------------

    def set_encoder_offload(
        self, enabled: bool = True, device: str | torch.device = "cpu"
    ) -> SAMAudio:
        """Release the accelerator's memory held by the encoders between uses (sonomask's
        option, off by default; for GPUs where the DiT, codec and encoders do not fit together).

        When enabled, the T5 text encoder, the vision encoder and the span predictor wait on
        ``device`` (cpu) and are moved to the model's device only while they encode, then
        moved back; the codec and the DiT stay. The outputs are unchanged (the same weights
        compute the same values on the same device; only where they wait changes), at the
        cost of copying their weights across per use (PE-Core-L14 about 1.2 GB, T5-base
        0.4 GB in float32). Enabling moves them to ``device`` at once; a later
        ``model.to(...)`` moves them along with the rest until their next use.
        """
        self.offload_encoders = bool(enabled)
        self.offload_device = torch.device(device)
        if self.offload_encoders:
            for module in (self.text_encoder, self.vision_encoder, self.span_predictor):
                self._move(module, self.offload_device)
        return self

    @staticmethod
    def _move(module: nn.Module | None, device: torch.device) -> None:
        if module is None:
            return
        # normal (not inference) tensors even when called inside separate's inference mode
        with torch.inference_mode(False), torch.no_grad():
            module.to(device)

    @contextlib.contextmanager
    def _encoder_on_device(self, module: nn.Module | None):
        """``module`` on the model's device for the duration (only with encoder offload)."""
        if not self.offload_encoders or module is None:
            yield module
            return
        self._move(module, self.device)
        try:
            yield module
        finally:
            self._move(module, self.offload_device)

    # -- span predictor ----------------------------------------------------------------------

    @property
    def span_predictor(self) -> PEAudioFrameSpanPredictor | None:
        """The span predictor in use (None until loaded or set)."""
        return self.__dict__.get("_span_predictor")

    def use_span_predictor(self, predictor: PEAudioFrameSpanPredictor | None) -> SAMAudio:
        """Set the span predictor (kept outside the state dict, like the rankers)."""
        object.__setattr__(self, "_span_predictor", predictor)
        return self

    def load_span_predictor(
        self, name_or_path: str | Path | None = None, *, cache_dir: str | Path | None = None
    ) -> PEAudioFrameSpanPredictor:
        """Load ``name_or_path`` (default: the config's ``span_predictor``, e.g.
        ``pe-a-frame-large`` = ``facebook/pe-a-frame-large`` at revision ``perception_models``)
        from a local folder or the local HF cache (never downloads) and use it."""
        name = name_or_path if name_or_path is not None else self.config.span_predictor
        if name is None:
            raise SAMAudioLoadError(
                "no span predictor: the config's span_predictor is null and none was given"
            )
        predictor = PEAudioFrameSpanPredictor.from_pretrained(name, cache_dir=cache_dir)
        self.use_span_predictor(predictor.to(self.device))
        return predictor

    def predict_spans(
        self, batch: Batch, audio_features: torch.Tensor, audio_pad_mask: torch.Tensor
    ) -> list[list[tuple[str, float, float]]]:
        """Reference ``predict_spans``: '+' anchors where the span predictor finds the
        description, and ``batch.process_anchors`` of them (the batch is changed in place)."""
        predictor = self.span_predictor
        if predictor is None:
            predictor = self.load_span_predictor()
        with self._encoder_on_device(predictor):
            if next(predictor.parameters()).device != audio_features.device:
                predictor.to(audio_features.device)
            anchors = predictor.predict_anchors(batch.descriptions, audio_features, audio_pad_mask)
        batch.process_anchors(anchors)
        return anchors

    # -- encoders ------------------------------------------------------------------------------

    def _get_audio_features(self, audios: torch.Tensor, naive: bool = False) -> torch.Tensor:
        """[B, 1, N] -> codec mean latents duplicated along channels [B, T, 2C] (reference).
        ``naive``: the codec computes it the reference's way (``DACVAECodec.encode``)."""
        f = self.audio_codec.encode(audios, **_naive_kwargs(self.audio_codec.encode, naive))
        f = f.transpose(1, 2)
        return torch.cat([f, f], dim=2)

    def _get_video_features(
        self, video: list[torch.Tensor] | None, audio_features: torch.Tensor
    ) -> torch.Tensor:
        B, T, _ = audio_features.shape
        if video is None:
            return audio_features.new_zeros(B, self.config.vision_encoder.dim, T)
        with self._encoder_on_device(self.vision_encoder):
            feats = self._encode_video(video)
        if feats.shape[1] != T:
            raise SAMAudioInputError(
                f"video gives {feats.shape[1]} feature frames but the audio has {T}; pass videos "
                "through SAMAudioProcessor so they are resampled to the audio frame rate"
            )
        return feats.transpose(1, 2).to(audio_features.dtype)

    def _encode_video(self, video: list[torch.Tensor]) -> torch.Tensor:
        """Vision features [B, frames, dim] of the masked videos."""
        if self.dedupe_video_frames:
            # Resampling a video to the audio frame rate (25 fps) repeats frames whenever the
            # video is slower; encode each run of identical frames once (per-frame encoding is
            # independent, so the features are the same up to float rounding).
            per_video = []
            for v in video:
                keep, inverse = _consecutive_unique(v)
                per_video.append(self.vision_encoder([v[keep]])[0][inverse])
            return pad_sequence(per_video, batch_first=True)
        return self.vision_encoder(video)

    def get_forward_args(
        self, batch: Batch, shared_audio: bool = False, naive: bool = False
    ) -> dict[str, torch.Tensor]:
        """Encode a batch: the keyword arguments of ``forward`` except the noisy latent and
        time (reference ``_get_forward_args`` with one candidate).

        ``shared_audio``: every item holds the same mixture (several prompts on one
        clip), so the codec encodes it once and the batch shares its features.
        ``naive``: the codec encodes the reference's way."""
        if shared_audio:
            if not all(torch.equal(batch.audios[0], a) for a in batch.audios[1:]):
                raise SAMAudioInputError("shared_audio needs the same audio in every batch item")
            one = self._get_audio_features(batch.audios[:1], naive)
            audio_features = one.expand(batch.audios.shape[0], -1, -1)
        else:
            audio_features = self._get_audio_features(batch.audios, naive)
        with self._encoder_on_device(self.text_encoder):
            text_features, text_mask = self.text_encoder(batch.descriptions)
        masked_video_features = self._get_video_features(batch.masked_video, audio_features)
        return {
            "audio_features": audio_features,
            "text_features": text_features,
            "text_mask": text_mask,
            "masked_video_features": masked_video_features,
            "anchor_ids": batch.anchor_ids,
            "anchor_alignment": batch.anchor_alignment,
            "audio_pad_mask": batch.audio_pad_mask,
        }

    _get_forward_args = get_forward_args

    # -- reference (naive) vector field -----------------------------------------------------

    def align_inputs(
        self,
        noisy_audio: torch.Tensor,
        audio_features: torch.Tensor,
        masked_video_features: torch.Tensor | None = None,
        anchor_ids: torch.Tensor | None = None,
        anchor_alignment: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """proj(cat[noisy, 0, audio]) + video term + anchor term (reference)."""
        x = torch.cat([noisy_audio, torch.zeros_like(audio_features), audio_features], dim=2)
        aligned = self.align_masked_video(self.proj(x), masked_video_features)
        return self.embed_anchors(aligned, anchor_ids, anchor_alignment)

    def forward(
        self,
        noisy_audio: torch.Tensor,
        audio_features: torch.Tensor,
        text_features: torch.Tensor | None,
        time: torch.Tensor,
        masked_video_features: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        anchor_ids: torch.Tensor | None = None,
        anchor_alignment: torch.Tensor | None = None,
        audio_pad_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One vector-field evaluation computed as the reference does: [B, T, 2C]."""
        aligned = self.align_inputs(
            noisy_audio, audio_features, masked_video_features, anchor_ids, anchor_alignment
        )
        memory = timestep_emb = self.timestep_emb(time).unsqueeze(1)
        if text_features is not None:
            memory = self.memory_proj(text_features) + timestep_emb
        return self.transformer(
            aligned,
            time,
            padding_mask=audio_pad_mask,
            memory=memory,
            memory_padding_mask=text_mask,
            naive=True,
        )

    # -- optimised vector field ---------------------------------------------------------------

    def prepare_conditioning(
        self,
        audio_features: torch.Tensor,
        text_features: torch.Tensor | None,
        masked_video_features: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        anchor_ids: torch.Tensor | None = None,
        anchor_alignment: torch.Tensor | None = None,
        audio_pad_mask: torch.Tensor | None = None,
        *,
        drop_full_masks: bool = True,
        rope_table: bool = True,
    ) -> Conditioning:
        """Compute once per solve what the reference recomputes at every step.

        ``drop_full_masks`` replaces masks with no padding by None (same attention, faster
        kernels); ``rope_table`` precomputes RoPE cos/sin once. Both exist as switches so the
        benchmark can show what each contributes.
        """
        c2 = audio_features.shape[-1]
        weight = self.proj.weight
        # proj(cat[noisy, zeros, audio]) = noisy @ W[:, :2C]^T + audio @ W[:, 4C:]^T + b
        cond = F.linear(audio_features, weight[:, 2 * c2 :], self.proj.bias)
        if masked_video_features is not None:
            cond = cond + self.align_masked_video.term(masked_video_features)
        if anchor_ids is not None:
            cond = cond + self.embed_anchors.term(anchor_ids, anchor_alignment)
        memory_base = self.memory_proj(text_features) if text_features is not None else None
        if drop_full_masks and text_mask is not None and bool(text_mask.all()):
            text_mask = None
        if drop_full_masks and audio_pad_mask is not None and bool(audio_pad_mask.all()):
            audio_pad_mask = None
        rope = (
            self.transformer.rope_table(audio_features.shape[1], audio_features.device)
            if rope_table
            else None
        )
        return Conditioning(
            cond_input=cond,
            noisy_weight=weight[:, :c2],
            memory_base=memory_base,
            text_mask=text_mask,
            audio_pad_mask=audio_pad_mask,
            rope=rope,
        )

    def velocity(
        self, noisy_audio: torch.Tensor, time: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """One vector-field evaluation from precomputed conditioning: [B, T, 2C]."""
        x = F.linear(noisy_audio, cond.noisy_weight) + cond.cond_input
        temb = self.timestep_emb(time).unsqueeze(1)
        memory = temb if cond.memory_base is None else cond.memory_base + temb
        dit = self._compiled_dit if self._compiled_dit is not None else self.transformer
        return dit(
            x,
            time,
            padding_mask=cond.audio_pad_mask,
            memory=memory,
            memory_padding_mask=cond.text_mask,
            rope=cond.rope,
            naive=cond.rope is None,
        )

    # -- sampling ----------------------------------------------------------------------------

    def solve(
        self,
        forward_args: Mapping[str, torch.Tensor],
        noise: torch.Tensor,
        ode_opt: Mapping[str, Any] = DFLT_ODE_OPT,
        *,
        naive: bool = False,
        autocast_dtype: torch.dtype | None = None,
        on_step: Callable[[int, int], None] | None = None,
        drop_full_masks: bool = True,
        rope_table: bool = True,
    ) -> torch.Tensor:
        """Integrate the flow from ``noise`` [B, T, 2C] at t=0 to the latents at t=1.

        ``drop_full_masks`` / ``rope_table``: see ``prepare_conditioning`` (optimised path).
        """
        B = noise.size(0)
        if naive:

            def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return self.forward(noisy_audio=y, time=t.expand(B), **forward_args)

        else:
            cond = self.prepare_conditioning(
                **forward_args, drop_full_masks=drop_full_masks, rope_table=rope_table
            )

            def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                return self.velocity(y, t.expand(B), cond)

        if autocast_dtype is None:
            return odeint_final(field, noise, ode_opt, on_step=on_step)

        def field_lp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return field(t, y).to(y.dtype)  # the ODE state stays in the noise dtype

        # One autocast region for the whole solve: autocast keeps its low-precision copies of
        # the weights for the lifetime of the region, so they are cast once, not per step.
        with torch.autocast(device_type=noise.device.type, dtype=autocast_dtype):
            return odeint_final(field_lp, noise, ode_opt, on_step=on_step)

    def decode(
        self,
        latents: torch.Tensor,
        watermark_message: torch.Tensor | None = None,
        naive: bool = False,
    ) -> torch.Tensor:
        """ODE state [B, T, 2C] -> waveforms [B, 2, T*hop] (target, residual).

        Rows are decoded as (b0 target, b0 residual, b1 target, ...) like the reference, so the
        watermark bits (drawn from torch's global RNG unless given, shape [2B, 16]) line up.
        ``naive``: the codec decodes the reference's way (``DACVAECodec.decode``).
        """
        B, T, C2 = latents.shape
        stacked = latents.transpose(1, 2).reshape(2 * B, C2 // 2, T)
        decode = self.audio_codec.decode
        wavs = decode(stacked, watermark_message=watermark_message, **_naive_kwargs(decode, naive))
        return wavs.view(B, 2, -1)

    @staticmethod
    def unbatch(wavs: torch.Tensor, sizes: torch.Tensor) -> list[torch.Tensor]:
        return [row.narrow(-1, 0, int(size)) for row, size in zip(wavs, sizes, strict=True)]

    @staticmethod
    def repeat_for_reranking(tensor: torch.Tensor | None, candidates: int) -> torch.Tensor | None:
        """[B, ...] -> [B * k, ...], each item's k copies adjacent (reference
        ``_repeat_for_reranking``)."""
        if tensor is None or candidates == 1:
            return tensor
        return tensor.repeat_interleave(candidates, dim=0)

    def choose_ranker(self, batch: Batch, candidates: int) -> Ranker | None:
        """The reference's choice: with more than one candidate, the visual ranker when the
        batch has masked videos and one is configured, else the text ranker, else none."""
        if candidates > 1 and batch.masked_video is not None and self.rankers.visual is not None:
            return self.rankers.visual
        if candidates > 1 and self.rankers.text is not None:
            return self.rankers.text
        return None

    @torch.inference_mode()
    def separate(
        self,
        batch: Batch,
        noise: torch.Tensor | None = None,
        ode_opt: Mapping[str, Any] = DFLT_ODE_OPT,
        reranking_candidates: int = 1,
        predict_spans: bool = False,
        *,
        watermark_message: torch.Tensor | None = None,
        naive: bool = False,
        autocast_dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
        shared_audio: bool = False,
        ranker: Ranker | None = None,
        apply_predicted_spans: bool = False,
    ) -> SeparationResult:
        """Separate each batch item into target and residual (reference ``separate``).

        noise: ODE start [B * k, T, 2C] (k = ``reranking_candidates``; an item's candidates are
        adjacent rows); drawn with ``generator`` (or torch's global RNG, like the reference)
        when None. ode_opt: torchdiffeq-style solver options (default midpoint, step 2/32).
        watermark_message: codec watermark bits [2 * B * k, 16]; when None the codec draws
        them from the global RNG after the noise, exactly as the reference, so
        ``torch.manual_seed`` reproduces reference runs. naive: evaluate the vector field and
        run the codec (encode and decode) the reference way. autocast_dtype: e.g. torch.bfloat16 for the DiT on CUDA.
        shared_audio: every item is the same mixture with its own prompt; it is encoded
        once (``get_forward_args``).

        reranking_candidates: solve from k noise draws per item, decode all, score the
        targets and keep each item's best (reference). The ranker is ``ranker`` when given
        (sonomask's override), else the reference's choice (``choose_ranker``); with no ranker
        candidate 0 is kept. ``scores`` / ``chosen`` of the result say what was scored.

        predict_spans: when the batch has no anchors, predict '+' spans of each description
        with the span predictor (PE-A-Frame, ``model.sam_audio.spans``; loaded from the
        config's ``span_predictor`` on first use, local files only) and put them into the
        batch (``batch.anchors`` / ``anchor_ids`` / ``anchor_alignment``, and
        ``result.spans``). With no span predictor in the config it does nothing, like the
        reference.

        Reference quirk, kept: the reference builds the forward arguments (anchor ids and
        alignment included) *before* ``predict_spans`` replaces the batch's anchor tensors,
        so the predicted spans never reach the separation: the output equals the output
        without ``predict_spans`` (the ranker and the caller do see the spans in the batch).
        ``apply_predicted_spans=True`` (sonomask's option, off by default) conditions the
        separation on them instead, i.e. the same as passing the predicted spans as anchors.
        """
        k = reranking_candidates
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SAMAudioInputError(f"reranking_candidates must be an integer >= 1, got {k!r}")
        device = self.device
        batch = batch.to(device)

        def report(frac: float, what: str) -> None:
            if progress is not None:
                progress(min(max(frac, 0.0), 1.0), what)

        report(0.0, "encoding")
        base_args = self.get_forward_args(batch, shared_audio=shared_audio, naive=naive)
        spans = None
        if predict_spans and batch.anchors is None:
            if self.span_predictor is None and self.config.span_predictor is None:
                logger.warning("predict_spans: the config names no span predictor; skipped")
            else:
                report(0.05, "predicting spans")
                spans = self.predict_spans(
                    batch, base_args["audio_features"], base_args["audio_pad_mask"]
                )
                if apply_predicted_spans:
                    base_args["anchor_ids"] = batch.anchor_ids
                    base_args["anchor_alignment"] = batch.anchor_alignment
        forward_args = {
            name: self.repeat_for_reranking(value, k) for name, value in base_args.items()
        }
        audio_features = forward_args["audio_features"]
        if noise is None:
            if generator is None:
                noise = torch.randn_like(audio_features)
            else:
                noise = torch.randn(
                    audio_features.shape, generator=generator, device=generator.device
                ).to(device=device, dtype=audio_features.dtype)
        elif noise.shape != audio_features.shape:
            raise SAMAudioInputError(
                f"noise must have shape {tuple(audio_features.shape)}, got {tuple(noise.shape)}"
            )
        noise = noise.to(device=device, dtype=audio_features.dtype)
        report(0.1, "sampling")

        def on_step(i: int, n: int) -> None:
            report(0.1 + 0.6 * i / n, f"ODE step {i}/{n}")

        latents = self.solve(
            forward_args,
            noise,
            ode_opt,
            naive=naive,
            autocast_dtype=autocast_dtype,
            on_step=on_step,
        )
        report(0.7, "decoding")
        if watermark_message is not None:
            watermark_message = watermark_message.to(device)
        wavs = self.decode(latents, watermark_message, naive=naive)  # [B * k, 2, N]
        sizes = (batch.sizes * self.hop_length).int()
        B = wavs.shape[0] // k
        targets = self.unbatch(wavs[:, 0].reshape(B, k, -1), sizes)  # per item [k, n_b]
        residuals = self.unbatch(wavs[:, 1].reshape(B, k, -1), sizes)

        chooser = ranker if (ranker is not None and k > 1) else self.choose_ranker(batch, k)
        scores = None
        if chooser is not None:
            report(0.9, f"ranking {k} candidates ({chooser.name})")
            scores = chooser(
                extracted_audio=targets,
                input_audio=[
                    audio[:, : int(size)].expand(k, -1)
                    for audio, size in zip(batch.audios, sizes, strict=True)
                ],
                descriptions=list(batch.descriptions),
                videos=batch.masked_video,
                spans=batch.anchors,
                sample_rate=self.sample_rate,
            )
            chosen = scores.argmax(dim=1).cpu()
        else:
            chosen = torch.zeros(B, dtype=torch.long)
        result = SeparationResult(
            target=[t[int(i)] for t, i in zip(targets, chosen, strict=True)],
            residual=[r[int(i)] for r, i in zip(residuals, chosen, strict=True)],
            noise=noise,
            scores=scores,
            chosen=chosen if chooser is not None else None,
            ranker=chooser.name if chooser is not None else None,
            spans=spans,
            spans_applied=spans is not None and apply_predicted_spans,
        )
        report(1.0, "done")
        return result


def feature_frames(num_samples: int, hop_length: int) -> int:
    """Codec frames for ``num_samples`` (ceil, as the processor computes sizes)."""
    return math.ceil(num_samples / hop_length)


__all__ = [
    "DFLT_ODE_OPT",
    "Conditioning",
    "Rankers",
    "SAMAudio",
    "SeparationResult",
    "odeint_final",
]
