"""Perception Encoder (PE-Core) visual tower, as SAM Audio uses it for visual prompts.

SAM Audio (``sam_audio/model/vision_encoder.py``, ``PerceptionEncoder``) builds
``core.vision_encoder.pe.CLIP.from_config(name)`` from Meta's perception_models repo
(commit e72b6810, branch unpin-deps) and only ever calls ``encode_image``, i.e. the visual
tower ``pe.VisionTransformer`` plus an optional L2 normalisation.  This module is our own port
of that visual tower, with the same parameter names, so the checkpoint keys
``vision_encoder.model.visual.*`` load as-is (strip the ``vision_encoder.`` prefix).

Why our own port and not ``timm.models.eva`` (``vit_pe_core_*``), decided by measurement:
timm's port (weights mapped with its ``checkpoint_filter_fn``) matches fixture
``sam_audio_reference_a`` (PE-Core-T16-384 at 384 px) to 8.9e-8, like this port, but only at
the native grid.  With ``dynamic_img_size`` at 336 / 448 / 224 px it differs from the reference
by 6.6e-3 / 6.9e-3 / 1.6e-2 (outputs of size ~1.6), because

* timm's 2-D RoPE rescales coordinates to ``ref_feat_shape`` when the grid differs from the
  pre-training grid, and resamples the absolute position grid bicubically (antialiased); the
  reference keeps integer RoPE coordinates and resamples bilinearly (``align_corners=False``).
  SAM Audio runs PE at the config's ``image_size``, which need not be the native size;
* timm also renames every key (``blocks.*``, ``attn_pool.q/kv``, ``head``), so the state dict
  would need a two-way key mapping, and timm is not a declared dependency of this project.

This port is bit-identical (fp32, CPU) to the reference ``pe.VisionTransformer`` for T/S/B/L at
native and non-native sizes, and to the official SAM Audio encoder on the fixture.  It keeps
the reference's op order where rounding depends on it (RoPE on interleaved pairs, ``x``
frequencies before ``y``, the CLS token first with a zero rotation, grid coordinates starting at
1, ``nn.MultiheadAttention``'s sequence-first key/value projection in the attention pooling) and
uses ``F.scaled_dot_product_attention`` throughout.

What is ignored: ``pe.CLIP`` subclasses ``TextTransformer``, so released SAM Audio checkpoints
also hold PE's *text* tower under ``vision_encoder.model.{token_embedding, positional_embedding,
transformer, ln_final, text_projection, logit_scale}``.  ``encode_image`` never uses them; see
``UNUSED_KEY_NAMES`` / ``is_unused_key``.  A load-state-dict pre-hook drops them so a strict load
of a whole SAM Audio state dict into a parent module works.

The tower table (``PE_CORE_VISION_ARCHS``, perception_models' ``PE_VISION_CONFIG``) and
``PerceptionEncoderConfig`` are configuration, so they live in ``config`` with the other
sub-model configs; they are re-exported here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from model.sam_audio.config import PE_CORE_VISION_ARCHS, PerceptionEncoderConfig, PEVisionArch
from model.sam_audio.errors import SAMAudioInputError, SAMAudioLoadError

__all__ = [
    "PE_CORE_VISION_ARCHS",
    "UNUSED_KEY_NAMES",
    "PEVisionArch",
    "PEVisionTransformer",
    "PerceptionEncoderConfig",
    "PerceptionVisionEncoder",
    "is_unused_key",
    "select_vision_state_dict",
]


# --------------------------------------------------------------------------- building blocks


def _rope_2d_cos_sin(
    head_dim: int, grid_h: int, grid_w: int, use_cls_token: bool, device: torch.device
) -> tuple[Tensor, Tensor]:
    """cos and sign-folded sin tables ``[1, 1, seq, head_dim]`` (fp32) of the reference ``Rope2D``.

    Matches ``rope.RotaryEmbedding(head_dim // 2)`` ("lang" freqs, theta 10000, each frequency
    repeated for an interleaved pair) and ``Rope2D.update_grid``: coordinates start at 1 when a
    CLS token exists (which gets a zero angle), and the x-angles come before the y-angles.
    The sin table carries the sign of ``rotate_half`` (``-sin`` on even slots), see
    ``_apply_rope``.
    """
    dim = head_dim // 2
    theta = 10000.0
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device)[: dim // 2].float() / dim))
    offset = 1 if use_cls_token else 0
    ys = (torch.arange(grid_h, device=device) + offset).float()
    xs = (torch.arange(grid_w, device=device) + offset).float()
    freqs_y = (ys[:, None] * inv_freq).repeat_interleave(2, dim=-1)
    freqs_x = (xs[:, None] * inv_freq).repeat_interleave(2, dim=-1)
    freq = torch.cat(
        [
            freqs_x[None, :].expand(grid_h, grid_w, -1),
            freqs_y[:, None].expand(grid_h, grid_w, -1),
        ],
        dim=-1,
    ).reshape(grid_h * grid_w, -1)
    if use_cls_token:
        freq = torch.cat([freq.new_zeros(1, freq.shape[-1]), freq], dim=0)
    sin = freq.sin()
    sin[:, 0::2] = -sin[:, 0::2]
    return freq.cos()[None, None], sin[None, None]


def _apply_rope(t: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    """``rope.apply_rotary_emb`` over the full head dim, pairs (2i, 2i+1) rotating together.

    The reference computes ``t*cos + rotate_half(t)*sin`` with ``rotate_half`` = (-x2, x1) per
    pair; swapping each pair and multiplying by the sign-folded sin gives bit-identical values
    (negation is exact) with one copy instead of neg + stack.
    """
    swapped = t.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return (t * cos + swapped * signed_sin).to(t.dtype)


class LayerScale(nn.Module):
    """Per-channel residual scale (``pe.LayerScale``); absent from PE-Core, kept for generality."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional 2-D RoPE (``pe.SelfAttention``).

    Parameters are named like ``nn.MultiheadAttention`` (packed ``in_proj_*``, ``out_proj``),
    as in the reference; attention runs through ``F.scaled_dot_product_attention``.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by {num_heads} heads")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        batch, seq, _ = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = _apply_rope(qkv[:2], *rope)  # q and k in one pass
            v = qkv[2]
        else:
            q, k, v = qkv
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, seq, self.embed_dim)
        return self.out_proj(out)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block (``pe.ResidualAttentionBlock``), GELU (erf) MLP."""

    def __init__(self, width: int, heads: int, mlp_width: int, ls_init_value: float | None):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_1 = nn.LayerNorm(width, eps=1e-5)
        self.ln_2 = nn.LayerNorm(width, eps=1e-5)
        self.mlp = _mlp(width, mlp_width)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), rope))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


def _mlp(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [
                ("c_fc", nn.Linear(width, hidden)),
                ("gelu", nn.GELU()),
                ("c_proj", nn.Linear(hidden, width)),
            ]
        )
    )


class Transformer(nn.Module):
    """Stack of blocks under ``resblocks`` (``pe.Transformer``)."""

    def __init__(self, arch: PEVisionArch) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(arch.width, arch.heads, arch.mlp_width, arch.ls_init_value)
            for _ in range(arch.layers)
        )

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, rope)
        return x


class _PoolAttention(nn.Module):
    """Cross-attention with ``nn.MultiheadAttention`` parameter names, computed as its
    batch-first ``key is value`` path does (separate q and packed kv projections)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"width {embed_dim} is not divisible by {num_heads} pooling heads")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, x: Tensor) -> Tensor:
        e, h = self.embed_dim, self.num_heads
        batch, n_q, _ = query.shape
        w_q, w_kv = self.in_proj_weight.split([e, 2 * e])
        b_q, b_kv = self.in_proj_bias.split([e, 2 * e])
        q = F.linear(query, w_q, b_q).view(batch, n_q, h, e // h).transpose(1, 2)
        # Project keys/values from the sequence-first view, as nn.MultiheadAttention does for
        # batch_first inputs: the GEMM then sees the same row layout and rounds identically.
        kv = F.linear(x.transpose(0, 1), w_kv, b_kv)
        k, v = kv.view(x.shape[1], batch, 2, h, e // h).permute(2, 1, 3, 0, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(batch, n_q, e)
        return self.out_proj(out)


class AttentionPooling(nn.Module):
    """One learned probe attends over all tokens, then a residual MLP (``pe.AttentionPooling``;
    its MLP ratio is fixed at 4, independent of the tower's)."""

    def __init__(self, embed_dim: int, num_heads: int, num_probe: int = 1) -> None:
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, num_probe, embed_dim))
        self.attn = _PoolAttention(embed_dim, num_heads)
        self.layernorm = nn.LayerNorm(embed_dim, eps=1e-5)
        self.mlp = _mlp(embed_dim, int(embed_dim * 4))

    def forward(self, x: Tensor) -> Tensor:
        query = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)
        x = self.attn(query, x)
        return x + self.mlp(self.layernorm(x))


class PEVisionTransformer(nn.Module):
    """PE visual tower (``pe.VisionTransformer``): patch conv, CLS token, absolute position grid
    (bilinearly resampled for other grids), ln_pre, RoPE-2D blocks, ln_post, pooling, ``proj``."""

    def __init__(self, arch: PEVisionArch) -> None:
        super().__init__()
        if arch.pool_type not in ("attn", "tok", "avg", "none"):
            raise ValueError(f"unknown pool_type {arch.pool_type!r}")
        self.arch = arch
        self.patch_size = arch.patch_size
        self.width = arch.width
        self.head_dim = arch.width // arch.heads
        self.conv1 = nn.Conv2d(3, arch.width, arch.patch_size, stride=arch.patch_size, bias=False)
        scale = arch.width**-0.5
        if arch.use_cls_token:
            self.class_embedding = nn.Parameter(scale * torch.randn(arch.width))
        if arch.use_abs_posemb:
            n_pos = int(arch.use_cls_token) + arch.grid_size**2
            self.positional_embedding = nn.Parameter(scale * torch.randn(n_pos, arch.width))
        self.ln_pre = nn.LayerNorm(arch.width, eps=1e-5) if arch.use_ln_pre else nn.Identity()
        self.transformer = Transformer(arch)
        self.ln_post = nn.LayerNorm(arch.width, eps=1e-5) if arch.use_ln_post else nn.Identity()
        self.attn_pool = (
            AttentionPooling(arch.width, arch.attn_pooler_heads)
            if arch.pool_type == "attn"
            else None
        )
        if arch.output_dim is not None:
            self.proj = nn.Parameter(scale * torch.randn(arch.width, arch.output_dim))
        else:
            self.proj = None
        self._rope_cache: dict[tuple[int, int, torch.device], tuple[Tensor, Tensor]] = {}

    def _rope(self, grid_h: int, grid_w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (grid_h, grid_w, device)
        if key not in self._rope_cache:
            # Normal (non-inference) tensors, so a cache filled under inference_mode stays
            # usable in autograd later.
            with torch.inference_mode(False), torch.no_grad():
                self._rope_cache[key] = _rope_2d_cos_sin(
                    self.head_dim, grid_h, grid_w, self.arch.use_cls_token, device
                )
        return self._rope_cache[key]

    def sample_abs_posemb(self, grid_h: int, grid_w: int) -> Tensor:
        """``[1, seq, width]`` position table for a grid (``_sample_abs_posemb``: bilinear,
        ``align_corners=False``, CLS row untouched)."""
        n = self.arch.grid_size
        pos = self.positional_embedding
        if grid_h == n and grid_w == n:
            return pos[None]
        cls_pos = None
        if self.arch.use_cls_token:
            cls_pos, pos = pos[:1], pos[1:]
        pos = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
        pos = F.interpolate(pos, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        pos = pos.permute(0, 2, 3, 1).reshape(-1, self.width)
        if cls_pos is not None:
            pos = torch.cat([cls_pos, pos], dim=0)
        return pos[None]

    def forward_features(self, x: Tensor) -> Tensor:
        """Token features after ln_post, ``[B, seq, width]`` (CLS first when present)."""
        batch, _, h, w = x.shape
        grid_h, grid_w = h // self.patch_size, w // self.patch_size
        x = self.conv1(x).permute(0, 2, 3, 1).reshape(batch, -1, self.width)
        if self.arch.use_cls_token:
            x = torch.cat([self.class_embedding.view(1, 1, -1).expand(batch, -1, -1), x], dim=1)
        if self.arch.use_abs_posemb:
            x = x + self.sample_abs_posemb(grid_h, grid_w)
        rope = self._rope(grid_h, grid_w, x.device) if self.arch.use_rope2d else None
        x = self.ln_pre(x)
        x = self.transformer(x, rope)
        return self.ln_post(x)

    def forward(self, x: Tensor) -> Tensor:
        """Image embeddings ``[B, feature_dim]`` (pooled, then projected)."""
        x = self.forward_features(x)
        pool = self.arch.pool_type
        if pool == "attn":
            x = self.attn_pool(x).squeeze(1)
        elif pool == "tok":
            x = x[:, 0]
        elif pool == "avg":
            x = x.mean(dim=1)
        if self.proj is not None:
            x = x @ self.proj
        return x


class PEImageTower(nn.Module):
    """Stands in for ``pe.CLIP`` with only its ``visual`` child, so keys read ``visual.*``."""

    def __init__(self, arch: PEVisionArch) -> None:
        super().__init__()
        self.visual = PEVisionTransformer(arch)

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:
        """``pe.CLIP.encode_image``: visual tower, optionally L2-normalised."""
        x = self.visual(image)
        return F.normalize(x, dim=-1) if normalize else x


# --------------------------------------------------------------------------- state-dict helpers

# PE text-tower entries of ``pe.CLIP`` (relative to the ``vision_encoder.`` prefix); never used
# by ``encode_image``, present in real SAM Audio checkpoints, absent from the fixture.
UNUSED_KEY_NAMES: tuple[str, ...] = (
    "model.token_embedding",
    "model.positional_embedding",
    "model.transformer",
    "model.ln_final",
    "model.text_projection",
    "model.logit_scale",
    "model.attn_mask",
)


def is_unused_key(key: str) -> bool:
    """True for a ``vision_encoder.``-relative key of PE's text tower (safe to ignore)."""
    return any(key == name or key.startswith(name + ".") for name in UNUSED_KEY_NAMES)


def select_vision_state_dict(
    state_dict: Mapping[str, Tensor], prefix: str = "vision_encoder."
) -> dict[str, Tensor]:
    """Keys under ``prefix`` with the prefix stripped and the text-tower keys dropped."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            rel = key[len(prefix) :]
            if not is_unused_key(rel):
                out[rel] = value
    return out


def _drop_unused_keys(state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
    # load_state_dict pre-hook: a parent's strict load must not trip over the text tower.
    for key in [k for k in state_dict if k.startswith(prefix)]:
        if is_unused_key(key[len(prefix) :]):
            del state_dict[key]


# --------------------------------------------------------------------------- the SAM Audio encoder


class PerceptionVisionEncoder(nn.Module):
    """SAM Audio's ``PerceptionEncoder``: uint8 frames -> per-frame PE-Core embeddings.

    ``forward(videos)`` takes a list of ``[T, 3, H, W]`` uint8 tensors and returns
    ``[B, T_max, dim]`` float features, zero-padded along time like ``pad_sequence``.
    """

    def __init__(self, cfg: PerceptionEncoderConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(cfg, PerceptionEncoderConfig):
            cfg = PerceptionEncoderConfig.from_dict(cfg)
        cfg.check_supported()  # a known tower of output size ``dim`` (a mapping: checked twice)
        self.cfg = cfg
        self.batch_size = cfg.batch_size
        self.dim = cfg.dim
        self.image_size = cfg.image_size
        self.normalize_feature = cfg.normalize_feature
        self.interpolation = cfg.interpolation
        self.model = PEImageTower(cfg.arch)
        self._register_load_state_dict_pre_hook(_drop_unused_keys)

    def load_vision_state_dict(
        self, state_dict: Mapping[str, Tensor], prefix: str = "vision_encoder."
    ) -> None:
        """Load the tower from a (whole SAM Audio) state dict; strict on the used keys, with a
        ``SAMAudioLoadError`` that lists missing / unexpected / mis-shaped keys."""
        sd = select_vision_state_dict(state_dict, prefix)
        own = self.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        shapes = [
            f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in sd and sd[k].shape != own[k].shape
        ]
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"missing {_short_list(missing, prefix)}")
            if unexpected:
                parts.append(f"unexpected {_short_list(unexpected, prefix)}")
            if shapes:
                parts.append(f"wrong shape {'; '.join(shapes[:5])}")
            raise SAMAudioLoadError(
                f"vision encoder ({self.cfg.name}) checkpoint does not fit: " + ", ".join(parts)
            )
        self.load_state_dict(sd, strict=True)

    def preprocess(self, frames: Tensor) -> Tensor:
        """Reference transform: ``Resize((S, S), interp)`` on the uint8 frames (antialiased,
        rounded back to uint8 by torchvision), then ``/255`` and ``Normalize(0.5, 0.5)``."""
        x = self.resize(frames)
        return x.float().div(255.0).sub_(0.5).div_(0.5)

    def resize(self, frames: Tensor) -> Tensor:
        """The uint8 resize step alone (exposed so it can be checked bit-exactly)."""
        return TF.resize(
            frames,
            [self.image_size, self.image_size],
            interpolation=self.interpolation,
            antialias=True,
        )

    def encode(self, images: Tensor) -> Tensor:
        """``[N, 3, S, S]`` normalised images -> ``[N, dim]`` (``encode_image``)."""
        return self.model.encode_image(images, normalize=self.normalize_feature)

    def encode_video(self, video: Tensor) -> Tensor:
        """One ``[T, 3, H, W]`` uint8 video -> ``[T, dim]``, in chunks of ``batch_size`` frames.

        Resizing per chunk instead of for the whole video (as the reference does) gives the
        same numbers (the resize is per frame) with a bounded float copy.
        """
        if video.ndim != 4 or video.shape[1] != 3:
            raise SAMAudioInputError(
                f"video must be a [T, 3, H, W] tensor, got shape {tuple(video.shape)}"
            )
        if video.dtype != torch.uint8:
            raise SAMAudioInputError(f"video must be uint8 frames, got {video.dtype}")
        weight = self.model.visual.conv1.weight
        n = video.shape[0]
        if n == 0:
            return weight.new_zeros(0, self.dim)
        step = self.batch_size if 0 < self.batch_size < n else n
        out = []
        for start in range(0, n, step):
            frames = video[start : start + step].to(weight.device)
            out.append(self.encode(self.preprocess(frames).to(weight.dtype)))
        return out[0] if len(out) == 1 else torch.cat(out, dim=0)

    @torch.no_grad()
    def forward(self, videos: Sequence[Tensor]) -> Tensor:
        """Encode each video; pad along time with zeros to ``[B, T_max, dim]``."""
        if isinstance(videos, Tensor):
            raise SAMAudioInputError(
                "videos must be a list of [T, 3, H, W] tensors, got one tensor"
            )
        if len(videos) == 0:
            raise SAMAudioInputError("videos is empty")
        return pad_sequence([self.encode_video(v) for v in videos], batch_first=True)

    @property
    def num_visual_params(self) -> int:
        """Parameter count of the visual tower (compare with the reference's)."""
        return sum(p.numel() for p in self.model.parameters())


def _short_list(keys: list[str], prefix: str, limit: int = 8) -> str:
    shown = ", ".join(prefix + k for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)})"
