"""CLAP ranker for SAM Audio's reranking: a port of the reference ``ClapRanker``.

Reference: ``sam_audio/ranking/clap.py`` of facebookresearch/sam-audio at commit
68b48d48fff1ad776d3afefbe634eb5f5d60ba7b, which runs laion_clap's
``CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny")`` with the ``630k-best.pt`` checkpoint
(the reference pins a fork of LAION-AI/CLAP that only relaxes the numpy pin; the fixture was
recorded with laion_clap 1.1.7 from PyPI). Per candidate it resamples to 48 kHz, quantises to
int16 and back, takes a random 10 s crop of longer audio (``rand_trunc``) or repeats shorter
audio and zero-pads it to 10 s (``repeatpad``), embeds it with HTSAT; it embeds each item's
description with the RoBERTa text tower; a candidate's score is the dot product of the two
L2-normalised embeddings: ``scores[b, j] = audio_embed[b, j] . text_embed[b]``.

Where this uses transformers and where it had to differ:

* The two towers and projections are transformers' ``ClapModel`` (``ClapAudioModel`` is
  laion's HTSAT Swin transformer, ``ClapTextModel`` is RoBERTa with its pooler). Its config is
  derived from laion's: ``laion_clap_config`` gives HTSAT-tiny + roberta-base (the released
  model) and reads a ``laion_model_config.json`` beside the checkpoint for other sizes. The text
  layer-norm epsilon is roberta-base's 1e-5, not ``ClapTextConfig``'s default 1e-12 (which
  transformers' own conversion script keeps, so its converted model differs slightly).
* The checkpoint is read in laion's layout (``{"state_dict": ...}``, optional ``module.``
  prefix) and its keys are converted at load time (``convert_laion_state_dict``): laion's fused
  ``qkv`` is split into query / key / value, ``norm1``/``norm2``/``mlp``/``proj``/``bn0`` are
  renamed, the projections' ``nn.Sequential`` indices become ``linear1``/``linear2``. Keys that
  are not on the embedding path are dropped by name (the tagging head ``tscam_conv``/``head``,
  the training-only ``audio_transform``/``text_transform`` MLPs, the precomputed Swin
  ``attn_mask`` buffers, which ClapAudioLayer recomputes); any other key that is missing,
  unexpected or mis-shaped is an error naming it.
* The log-mel front end is NOT transformers' ``ClapFeatureExtractor`` (numpy, its own mel
  filters and padding): laion's HTSAT computes the log-mel inside the model with torchlibrosa,
  an STFT as two ``conv1d`` with a periodic-Hann-windowed DFT basis (reflect padding, centred),
  power, a Slaney mel matrix, ``10 * log10(max(x, 1e-10))``. ``LogMelFrontEnd`` does the same
  operations in torch, with the kernels the checkpoint carries (laion's ``strict`` load puts the
  released kernels into the model, so they are what the reference multiplies by), or kernels
  computed here as torchlibrosa / librosa compute them when a checkpoint lacks them.
  Measured on the fixture: this conv with the checkpoint's kernels gives the reference's
  log-mel bit for bit (max difference 0); with the kernels computed here (they differ from
  torchlibrosa's by at most 6e-8, the mel matrix is equal) 3.8e-6 dB; ``torch.stft`` (periodic
  Hann, same padding) 3.8e-5 dB, as accurate against a float64 reference as the conv but not
  the same rounding. The conv is kept because it is the reference's arithmetic; ``torch.stft``
  would be faster on CPU.
* ``rand_trunc`` draws its crop start with ``numpy.random.randint(0, overflow + 1)`` from
  numpy's global legacy RNG, once per candidate longer than 10 s, items first then candidates.
  ``ClapRanker`` does the same by default (``rng=None``: ``numpy.random``), so seeding
  ``numpy.random.seed`` identically gives the reference's crops; pass
  ``rng=numpy.random.RandomState(seed)`` for crops that do not depend on global state.
* Resampling (only when ``sample_rate != 48000``; SAM Audio always gives 48 kHz) is
  torchaudio's default ``resample`` (windowed sinc, Hann, 6 zero crossings, rolloff 0.99),
  written out here in torch so that torchaudio is not a dependency.
* The ranker always computes in float32 with autocast off (the reference's ``ClapRanker`` is a
  float32 module; sonomask's rankers sit outside the separation model's dtype handling).

Weights are read only from a local file or folder; nothing is downloaded (the reference
downloads ``lukewys/laion_clap/630k-best.pt`` when its config has no checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.sam_audio.errors import ConfigError, SAMAudioInputError, SAMAudioLoadError
from model.sam_audio.ranking import Ranker

if TYPE_CHECKING:
    from transformers import ClapConfig

__all__ = [
    "ClapParts",
    "ClapRanker",
    "LogMelFrontEnd",
    "convert_laion_state_dict",
    "crop_or_repeatpad",
    "laion_clap_config",
    "load_clap_parts",
    "load_clap_ranker",
    "quantize_int16",
    "resample_sinc",
    "slaney_mel_filterbank",
    "stft_kernels",
]

MODEL_SAMPLE_RATE = 48_000
TOKEN_MAX_LENGTH = 77
CONFIG_SIDECAR = "laion_model_config.json"

# laion's model_configs/HTSAT-tiny.json audio_cfg (the front end and clip length)
_AUDIO_CFG = {
    "sample_rate": 48000,
    "window_size": 1024,
    "hop_size": 480,
    "mel_bins": 64,
    "fmin": 50,
    "fmax": 14000,
    "clip_samples": 480000,
    "class_num": 527,
}
# create_htsat_model(model_name="tiny") arguments
_HTSAT = {"embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [4, 8, 16, 32]}
# roberta-base's config (laion: RobertaModel.from_pretrained("roberta-base"))
_ROBERTA = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
}


class _RandInt(Protocol):
    def randint(self, low: int, high: int) -> int: ...


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def _laion_parts(laion: Mapping[str, Any] | None) -> tuple[dict, dict, dict, int, int]:
    """(audio_cfg, HTSAT sizes, RobertaConfig fields, embed_dim, joint width): the released
    model's values, overridden by a sidecar's."""
    laion = dict(laion or {})
    unknown = set(laion) - {"embed_dim", "joint_embed_shape", "audio_cfg", "text_cfg"}
    unknown -= {"htsat", "roberta"}  # sonomask's: what laion hard-codes in its code
    if unknown:
        raise ConfigError(f"unknown field(s) in the CLAP model config: {sorted(unknown)}")
    audio = {**_AUDIO_CFG, **(laion.get("audio_cfg") or {})}
    htsat = {**_HTSAT, **(laion.get("htsat") or {})}
    roberta = {**_ROBERTA, **(laion.get("roberta") or {})}
    if audio.get("model_type", "HTSAT") != "HTSAT":
        raise ConfigError(f"only HTSAT CLAP models are ported, got {audio['model_type']!r}")
    embed_dim = int(laion.get("embed_dim", 768))
    joint = int(laion.get("joint_embed_shape", 512))
    return audio, htsat, roberta, embed_dim, joint


def laion_clap_config(laion: Mapping[str, Any] | None = None) -> ClapConfig:
    """transformers ``ClapConfig`` for a laion CLAP model: HTSAT-tiny + roberta-base (the
    released 630k model) unless ``laion`` (the sidecar's dict: laion's model-config fields
    ``embed_dim``, ``joint_embed_shape``, ``audio_cfg``, plus ``htsat`` = HTSAT_Swin_Transformer
    sizes and ``roberta`` = RobertaConfig fields) says otherwise."""
    from transformers import ClapConfig

    audio, htsat, roberta, embed_dim, joint = _laion_parts(laion)
    depths = list(htsat["depths"])
    width = int(htsat["embed_dim"]) * 2 ** (len(depths) - 1)
    if width != embed_dim:
        raise ConfigError(
            f"CLAP config: embed_dim {embed_dim} is not HTSAT's output width {width} "
            f"(embed_dim {htsat['embed_dim']} x 2^{len(depths) - 1})"
        )
    audio_config = {
        "patch_embeds_hidden_size": int(htsat["embed_dim"]),
        "depths": depths,
        "num_attention_heads": list(htsat["num_heads"]),
        "hidden_size": embed_dim,
        "window_size": 8,
        "spec_size": 256,
        "patch_size": 4,
        "patch_stride": [4, 4],
        "num_mel_bins": int(audio["mel_bins"]),
        "num_classes": int(audio["class_num"]),
        "enable_fusion": False,
        "mlp_ratio": 4.0,
        "qkv_bias": True,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
        "drop_path_rate": 0.0,
    }
    return ClapConfig(
        text_config=dict(roberta),
        audio_config=audio_config,
        projection_dim=joint,
        projection_hidden_act="relu",
    )


# ---------------------------------------------------------------------------------------------
# Front end (torchlibrosa's Spectrogram + LogmelFilterBank as HTSAT builds them)
# ---------------------------------------------------------------------------------------------


def stft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary conv1d kernels [n_fft // 2 + 1, 1, n_fft] of a centred STFT with a
    periodic Hann window: ``window[n] * cos(-2 pi k n / n_fft)`` and ``... sin(...)``
    (torchlibrosa's DFT basis; computed in float64, stored float32)."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    phase = -2 * np.pi * ((k[:, None] * n[None, :]) % n_fft) / n_fft
    real = torch.from_numpy((np.cos(phase) * window).astype(np.float32))[:, None, :]
    imag = torch.from_numpy((np.sin(phase) * window).astype(np.float32))[:, None, :]
    return real, imag


def _hz_to_mel_slaney(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    step = 200.0 / 3
    mel = f / step
    log_step = np.log(6.4) / 27.0
    high = f >= 1000.0
    mel[high] = 1000.0 / step + np.log(f[high] / 1000.0) / log_step
    return mel


def _mel_to_hz_slaney(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    step = 200.0 / 3
    f = m * step
    log_step = np.log(6.4) / 27.0
    high = m >= 1000.0 / step
    f[high] = 1000.0 * np.exp(log_step * (m[high] - 1000.0 / step))
    return f


def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float
) -> torch.Tensor:
    """[n_fft // 2 + 1, n_mels] mel matrix as ``librosa.filters.mel(htk=False,
    norm="slaney").T`` (Slaney's mel scale, triangles normalised to unit area; rows computed in
    float64 and stored float32 as librosa does)."""
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz_slaney(
        np.linspace(
            _hz_to_mel_slaney(np.array([fmin]))[0],
            _hz_to_mel_slaney(np.array([fmax]))[0],
            n_mels + 2,
        )
    )
    widths = np.diff(edges)
    weights = np.zeros((n_mels, len(freqs)), dtype=np.float32)
    for i in range(n_mels):
        rising = (freqs - edges[i]) / widths[i]
        falling = (edges[i + 2] - freqs) / widths[i + 1]
        weights[i] = np.maximum(0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None]
    return torch.from_numpy(weights.T.copy())


class LogMelFrontEnd(nn.Module):
    """Waveforms [N, samples] -> log-mel [N, 1, frames, mel_bins] in dB, HTSAT's input.

    torchlibrosa's operations in their order: reflect-pad n_fft // 2 each side, real and
    imaginary ``conv1d`` (stride hop), ``real**2 + imag**2``, ``@ mel``, ``10 * log10(
    clamp(x, min=1e-10))`` (ref 1.0, no top_db). The kernels are buffers: ``load_laion``
    replaces the computed ones with a checkpoint's."""

    def __init__(
        self,
        sample_rate: int = 48000,
        n_fft: int = 1024,
        hop_length: int = 480,
        n_mels: int = 64,
        fmin: float = 50,
        fmax: float = 14000,
    ) -> None:
        super().__init__()
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        real, imag = stft_kernels(self.n_fft)
        self.register_buffer("stft_real", real)
        self.register_buffer("stft_imag", imag)
        self.register_buffer(
            "mel", slaney_mel_filterbank(sample_rate, self.n_fft, n_mels, fmin, fmax)
        )

    def load_laion(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Take the kernels of a laion checkpoint (``stft.conv_real.weight``,
        ``stft.conv_imag.weight``, ``melW``), checking their shapes."""
        for name, key in (
            ("stft_real", "conv_real.weight"),
            ("stft_imag", "conv_imag.weight"),
            ("mel", "melW"),
        ):
            value = tensors.get(key)
            if value is None:
                continue
            own = getattr(self, name)
            if tuple(value.shape) != tuple(own.shape):
                raise SAMAudioLoadError(
                    f"CLAP checkpoint front end: {key} has shape {tuple(value.shape)}, the "
                    f"config gives {tuple(own.shape)}"
                )
            own.copy_(value.to(own.dtype))

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        pad = self.n_fft // 2
        x = F.pad(waveforms[:, None, :], (pad, pad), mode="reflect")
        real = F.conv1d(x, self.stft_real, stride=self.hop_length)
        imag = F.conv1d(x, self.stft_imag, stride=self.hop_length)
        power = (real[:, None].transpose(2, 3)) ** 2 + (imag[:, None].transpose(2, 3)) ** 2
        mel = torch.matmul(power, self.mel)
        return 10.0 * torch.log10(torch.clamp(mel, min=1e-10))


# ---------------------------------------------------------------------------------------------
# Waveform preparation (reference _prepare_audio + laion's get_audio_features)
# ---------------------------------------------------------------------------------------------


def resample_sinc(
    waveform: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """``torchaudio.functional.resample(waveform, orig_freq, new_freq)`` with its defaults
    (Hann-windowed sinc), last axis; the kernel is built in the waveform's dtype as torchaudio
    builds it."""
    if orig_freq == new_freq:
        return waveform
    if int(orig_freq) != orig_freq or int(new_freq) != new_freq or orig_freq <= 0 or new_freq <= 0:
        raise SAMAudioInputError(
            f"sample rates must be positive integers, got {orig_freq} -> {new_freq}"
        )
    g = math.gcd(int(orig_freq), int(new_freq))
    up, down = int(new_freq) // g, int(orig_freq) // g
    cutoff = min(up, down) * rolloff
    width = math.ceil(lowpass_filter_width * down / cutoff)
    dtype, device = waveform.dtype, waveform.device
    taps = torch.arange(-width, width + down, dtype=dtype, device=device)[None, None] / down
    t = torch.arange(0, -up, -1, dtype=dtype, device=device)[:, None, None] / up + taps
    t = (t * cutoff).clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype, device=device), t.sin() / t)
    kernel = sinc * (window * (cutoff / down))  # torchaudio: kernels *= window * scale
    shape = waveform.shape
    x = waveform.reshape(-1, shape[-1])
    n = x.shape[-1]
    x = F.pad(x, (width, width + down))
    y = F.conv1d(x[:, None], kernel, stride=down).transpose(1, 2).reshape(x.shape[0], -1)
    y = y[..., : math.ceil(up * n / down)]
    return y.reshape(*shape[:-1], y.shape[-1])


def quantize_int16(x: torch.Tensor) -> torch.Tensor:
    """laion's ``int16_to_float32_torch(float32_to_int16_torch(x))``: clip to [-1, 1], scale by
    32767, truncate toward zero to int16, divide by 32767 (float32)."""
    pcm = (torch.clamp(x, min=-1.0, max=1.0) * 32767.0).to(torch.int16)
    return pcm.to(torch.float32) / 32767.0


def crop_or_repeatpad(wave: torch.Tensor, clip_samples: int, rng: _RandInt | None = None):
    """laion's ``get_audio_features(..., data_truncating="rand_trunc", data_filling=
    "repeatpad")`` for one mono waveform: longer than ``clip_samples``: a crop starting at
    ``rng.randint(0, overflow + 1)`` (numpy's global RNG when ``rng`` is None, as laion);
    shorter: repeated ``int(clip / len)`` times, then zero-padded to ``clip_samples``."""
    n = wave.shape[-1]
    if n > clip_samples:
        start = int((rng or np.random).randint(0, n - clip_samples + 1))
        return wave[start : start + clip_samples]
    if n < clip_samples:
        if n == 0:
            raise SAMAudioInputError("the CLAP ranker got an empty candidate")
        wave = wave.repeat(int(clip_samples / n))
        wave = F.pad(wave, (0, clip_samples - wave.shape[-1]))
    return wave


# ---------------------------------------------------------------------------------------------
# Checkpoint conversion (laion layout -> transformers ClapModel names)
# ---------------------------------------------------------------------------------------------

_DROPPED = re.compile(
    r"^(audio_transform\.|text_transform\.|audio_branch\.(tscam_conv|head)\.|"
    r"audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask$|text_branch\.embeddings\.position_ids$)"
)
_FRONT = re.compile(
    r"^audio_branch\.(?:spectrogram_extractor\.stft\.(conv_real\.weight|conv_imag\.weight)"
    r"|logmel_extractor\.(melW))$"
)
# HTSAT block parameters: laion's name after "layers.i.blocks.j." -> ClapAudioLayer's
_BLOCK_RENAMES = {
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "attn.proj.weight": "attention.output.dense.weight",
    "attn.proj.bias": "attention.output.dense.bias",
    "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
    "attn.relative_position_index": "attention.self.relative_position_index",
    "mlp.fc1.weight": "intermediate.dense.weight",
    "mlp.fc1.bias": "intermediate.dense.bias",
    "mlp.fc2.weight": "output.dense.weight",
    "mlp.fc2.bias": "output.dense.bias",
}
# HTSAT parameters outside the blocks that keep their names
_AUDIO_SAME = re.compile(
    r"^(patch_embed\.(proj|norm)|norm|layers\.\d+\.downsample\.(reduction|norm))\.(weight|bias)$"
)
_ENCODER = "audio_model.audio_encoder."


def _strip_prefix(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's clean-up: strip a DataParallel ``module.`` prefix (when the first key
    has it) and drop the position ids older transformers saved."""
    state = dict(state)
    if state and next(iter(state)).startswith("module"):
        state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    state.pop("text_branch.embeddings.position_ids", None)
    return state


def convert_laion_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """laion CLAP state dict -> (ClapModel state dict, front-end kernels, dropped keys).

    The rules are the layout's, not a copy of transformers' conversion script: text tower and
    logit scales keep their names under ``text_model``; ``*_projection.{0,2}`` become
    ``linear{1,2}``; HTSAT goes under ``audio_model.audio_encoder`` with ``bn0`` ->
    ``batch_norm`` and per block the renames in ``_BLOCK_RENAMES`` and ``attn.qkv`` split in
    three equal row blocks (query, key, value). Keys off the embedding path are dropped and
    returned; a key no rule knows raises ``SAMAudioLoadError``."""
    out: dict[str, torch.Tensor] = {}
    front: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in _strip_prefix(state).items():
        if _DROPPED.match(key):
            dropped.append(key)
            continue
        m = _FRONT.match(key)
        if m:
            front[m.group(1) or m.group(2)] = value
            continue
        if key in ("logit_scale_a", "logit_scale_t"):
            out[key] = value
        elif key.startswith("text_branch."):
            out["text_model." + key[len("text_branch.") :]] = value
        elif m := re.match(r"^(audio|text)_projection\.([02])\.(weight|bias)$", key):
            layer = "linear1" if m.group(2) == "0" else "linear2"
            out[f"{m.group(1)}_projection.{layer}.{m.group(3)}"] = value
        elif key.startswith("audio_branch."):
            converted = _convert_audio_key(key[len("audio_branch.") :], value)
            if converted is None:
                unknown.append(key)
            else:
                out.update(converted)
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        raise SAMAudioLoadError(
            f"CLAP checkpoint: {len(unknown)} key(s) this port does not know: {shown}"
        )
    return out, front, dropped


def _convert_audio_key(rest: str, value: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """One HTSAT parameter (name after ``audio_branch.``) in ClapAudioModel's names, or None
    when no rule knows it."""
    if rest.startswith("bn0."):
        return {_ENCODER + "batch_norm." + rest[len("bn0.") :]: value}
    if _AUDIO_SAME.match(rest):
        return {_ENCODER + rest: value}
    m = re.match(r"^(layers\.\d+\.blocks\.\d+)\.(.+)$", rest)
    if not m:
        return None
    prefix, tail = _ENCODER + m.group(1) + ".", m.group(2)
    if tail in ("attn.qkv.weight", "attn.qkv.bias"):
        kind = tail.rsplit(".", 1)[1]
        q, k, v = value.chunk(3, dim=0)
        return {
            f"{prefix}attention.self.{part}.{kind}": t.contiguous()
            for part, t in (("query", q), ("key", k), ("value", v))
        }
    if tail in _BLOCK_RENAMES:
        return {prefix + _BLOCK_RENAMES[tail]: value}
    return None


def _read_laion_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same load error
        raise SAMAudioLoadError(f"cannot read the CLAP checkpoint {path}: {err}") from err
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise SAMAudioLoadError(
            f"{path} is not a laion CLAP checkpoint (expected a dict with 'state_dict')"
        )
    return dict(state)


def _build_model(config: ClapConfig, converted: dict[str, torch.Tensor]) -> Any:
    """ClapModel with exactly the converted weights: missing, unexpected or mis-shaped keys
    are errors (the text embeddings' constant position / token-type id buffers excepted)."""
    from transformers import ClapModel

    model = ClapModel(config)
    own = model.state_dict()
    derived = {"text_model.embeddings.position_ids", "text_model.embeddings.token_type_ids"}
    missing = sorted(set(own) - set(converted) - derived)
    unexpected = sorted(set(converted) - set(own))
    shapes = [
        f"{k} {tuple(converted[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(converted)
        if tuple(own[k].shape) != tuple(converted[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(missing[:6])}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:6])}")
    if shapes:
        problems.append(f"mis-shaped {len(shapes)}: {', '.join(sorted(shapes)[:6])}")
    if problems:
        raise SAMAudioLoadError(
            "CLAP checkpoint does not match its config (a laion_model_config.json beside it "
            "gives other sizes): " + "; ".join(problems)
        )
    model.load_state_dict(converted, strict=False)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# The ranker
# ---------------------------------------------------------------------------------------------


@dataclass
class ClapParts:
    """A loaded CLAP: transformers ``ClapModel``, its RoBERTa tokenizer, the log-mel front end
    and the clip length in samples (laion's ``clip_samples``, 10 s at 48 kHz)."""

    model: Any
    tokenizer: Any
    front_end: LogMelFrontEnd
    clip_samples: int = 480_000


_NO_CHECKPOINT = (
    "the clap ranker needs a local checkpoint: set its 'checkpoint' to laion's 630k-best.pt "
    "(roberta-base's tokenizer files beside it); this port downloads nothing"
)


class ClapRanker(Ranker):
    """Scores [batch, k]: each candidate's CLAP audio embedding against its item's text
    embedding (reference ``ClapRanker.forward``).

    ``source``: loaded ``ClapParts`` (``load_clap_ranker(path)`` builds those), or a checkpoint
    path loaded on first use (``ClapRanker.from_config`` does this, so that a SAM Audio config
    naming the ranker loads without its weights, like the judge ranker), or None: a configured
    ranker with no checkpoint, which raises ``ConfigError`` when used. ``rng``: the crop RNG
    of ``rand_trunc`` (None: numpy's global RNG, as the reference)."""

    name = "clap"

    def __init__(
        self,
        source: ClapParts | str | os.PathLike[str] | None,
        *,
        device: torch.device | str | None = None,
        rng: _RandInt | None = None,
    ) -> None:
        self._parts = source if isinstance(source, ClapParts) else None
        self.source = None if self._parts is not None else source
        self._device = device
        self.rng = rng
        if self._parts is not None:
            self._place(self._parts)

    def _place(self, parts: ClapParts) -> None:
        parts.model.eval()
        parts.front_end.eval()
        if self._device is not None:
            parts.model.to(self._device)
            parts.front_end.to(self._device)

    @property
    def parts(self) -> ClapParts:
        """The loaded CLAP (loading it from ``source`` the first time)."""
        if self._parts is None:
            if self.source is None or str(self.source) == "":
                raise ConfigError(_NO_CHECKPOINT)
            parts = load_clap_parts(self.source)
            self._place(parts)
            self._parts = parts
        return self._parts

    def load(self) -> ClapRanker:
        """Load now (errors surface here rather than at the first score)."""
        _ = self.parts
        return self

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], base_dir: str | Path | None = None
    ) -> ClapRanker:
        """From a config.json ranker entry (reference ``ClapRankerConfig``: ``{"kind":
        "clap", "checkpoint": path}``); the weights load on first use. A relative path is taken
        from ``base_dir`` when given. ``checkpoint`` null means "download 630k-best.pt" in the
        reference; here the ranker then raises ``ConfigError`` saying what to set when used."""
        config = dict(config)
        kind = config.pop("kind", "clap")
        if kind != "clap":
            raise ConfigError(f"not a clap ranker entry: kind {kind!r}")
        unknown = set(config) - {"checkpoint"}
        if unknown:
            raise ConfigError(f"unknown clap ranker field(s): {sorted(unknown)}")
        checkpoint = config.get("checkpoint")
        if not checkpoint:
            return cls(None)
        path = Path(checkpoint).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return cls(path)

    def to(self, device: torch.device | str) -> ClapRanker:
        """Move the model and front end (the ranker computes where its weights are)."""
        self._device = device
        if self._parts is not None:
            self._place(self._parts)
        return self

    @property
    def model(self) -> Any:
        return self.parts.model

    @property
    def tokenizer(self) -> Any:
        return self.parts.tokenizer

    @property
    def front_end(self) -> LogMelFrontEnd:
        return self.parts.front_end

    @property
    def clip_samples(self) -> int:
        return self.parts.clip_samples

    @property
    def device(self) -> torch.device:
        return self.front_end.mel.device

    # -- the three stages, public so that each can be compared with the reference --

    def prepare_waveforms(
        self, extracted_audio: Sequence[torch.Tensor], sample_rate: int = MODEL_SAMPLE_RATE
    ) -> torch.Tensor:
        """[sum of k, clip_samples]: per item, per candidate, resampled to 48 kHz, int16
        quantised, cropped (drawing from the RNG) or repeat-padded."""
        rows = []
        for candidates in extracted_audio:
            if candidates.dim() != 2:
                raise SAMAudioInputError(
                    f"the CLAP ranker takes [k, samples] per item, got {tuple(candidates.shape)}"
                )
            x = candidates.detach().to(self.device, torch.float32)
            if sample_rate != MODEL_SAMPLE_RATE:
                x = resample_sinc(x, int(sample_rate), MODEL_SAMPLE_RATE)
            x = quantize_int16(x)
            rows.extend(crop_or_repeatpad(w, self.clip_samples, self.rng) for w in x)
        return torch.stack(rows)

    def audio_features(
        self, extracted_audio: Sequence[torch.Tensor], sample_rate: int = MODEL_SAMPLE_RATE
    ) -> torch.Tensor:
        """Log-mel [sum of k, 1, frames, 64] (HTSAT's ``logmel_extractor`` output)."""
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            return self.front_end(self.prepare_waveforms(extracted_audio, sample_rate))

    def audio_embeddings(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised audio embeddings [N, D], HTSAT's pooled output [N, E]) from log-mel
        features (laion's ``get_audio_embedding``)."""
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            pooled = self.model.audio_model(input_features=features).pooler_output
            return F.normalize(self.model.audio_projection(pooled), dim=-1), pooled

    def tokenize(self, descriptions: Sequence[str]) -> dict[str, torch.Tensor]:
        """RoBERTa tokens as laion makes them: padded to 77, truncated."""
        enc = self.tokenizer(
            list(descriptions),
            padding="max_length",
            truncation=True,
            max_length=TOKEN_MAX_LENGTH,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def text_embeddings(self, descriptions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(L2-normalised text embeddings [B, D], the text tower's pooled output [B, H])."""
        tokens = {k: v.to(self.device) for k, v in self.tokenize(descriptions).items()}
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            pooled = self.model.text_model(**tokens).pooler_output
            return F.normalize(self.model.text_projection(pooled), dim=-1), pooled

    def score(
        self,
        extracted_audio: Sequence[torch.Tensor],
        descriptions: Sequence[str] | None = None,
        sample_rate: int = MODEL_SAMPLE_RATE,
        **kwargs: Any,
    ) -> torch.Tensor:
        if descriptions is None or len(descriptions) != len(extracted_audio):
            n = None if descriptions is None else len(descriptions)
            raise SAMAudioInputError(
                f"the CLAP ranker needs one description per item: {n} for "
                f"{len(extracted_audio)} items"
            )
        ks = {int(c.shape[0]) for c in extracted_audio}
        if len(ks) != 1:
            raise SAMAudioInputError(f"every item needs the same number of candidates: {ks}")
        out_device = extracted_audio[0].device
        audio, _ = self.audio_embeddings(self.audio_features(extracted_audio, sample_rate))
        text, _ = self.text_embeddings(descriptions)
        bsz = len(extracted_audio)
        scores = audio.reshape(bsz, -1, audio.shape[-1]) @ text.reshape(bsz, -1, 1)
        return scores.squeeze(-1).to(out_device)


def _find_checkpoint(path: Path) -> Path:
    if path.is_file():
        return path
    if path.is_dir():
        found = sorted(path.glob("*.pt")) + sorted(path.glob("*.ckpt"))
        if len(found) == 1:
            return found[0]
        raise ConfigError(
            f"CLAP checkpoint folder {path} must hold exactly one .pt file, found "
            f"{len(found)}: name the file instead"
        )
    raise ConfigError(f"CLAP checkpoint not found: {path} (laion's 630k-best.pt, a local file)")


def load_clap_ranker(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    rng: _RandInt | None = None,
) -> ClapRanker:
    """A loaded ``ClapRanker`` (errors at once) from a laion checkpoint or a folder holding
    one; see ``load_clap_parts``."""
    return ClapRanker(load_clap_parts(path), device=device, rng=rng)


def load_clap_parts(path: str | os.PathLike[str]) -> ClapParts:
    """transformers ``ClapModel`` + tokenizer + front end from a laion checkpoint
    (``630k-best.pt`` layout) or a folder holding one ``.pt``. The checkpoint's folder must
    also hold the RoBERTa tokenizer files (read with ``AutoTokenizer.from_pretrained(folder,
    local_files_only=True)``) and may hold ``laion_model_config.json`` for sizes other than
    HTSAT-tiny + roberta-base."""
    ckpt = _find_checkpoint(Path(path).expanduser())
    folder = ckpt.parent
    laion = None
    sidecar = folder / CONFIG_SIDECAR
    if sidecar.is_file():
        try:
            laion = json.loads(sidecar.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {sidecar}: {err}") from err
    config = laion_clap_config(laion)
    audio_cfg, *_ = _laion_parts(laion)
    if int(audio_cfg["sample_rate"]) != MODEL_SAMPLE_RATE:
        raise ConfigError(
            f"the CLAP ranker runs at 48 kHz (reference), its config says "
            f"{audio_cfg['sample_rate']}"
        )
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"no RoBERTa tokenizer in {folder}: put roberta-base's tokenizer files (vocab.json "
            f"+ merges.txt, or tokenizer.json) beside the CLAP checkpoint"
        ) from err
    converted, front_tensors, _ = convert_laion_state_dict(_read_laion_checkpoint(ckpt))
    model = _build_model(config, converted)
    front = LogMelFrontEnd(
        sample_rate=int(audio_cfg["sample_rate"]),
        n_fft=int(audio_cfg["window_size"]),
        hop_length=int(audio_cfg["hop_size"]),
        n_mels=int(audio_cfg["mel_bins"]),
        fmin=float(audio_cfg["fmin"]),
        fmax=float(audio_cfg["fmax"]),
    )
    front.load_laion(front_tensors)
    return ClapParts(model, tokenizer, front, clip_samples=int(audio_cfg["clip_samples"]))
