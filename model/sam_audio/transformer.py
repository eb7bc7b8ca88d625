"""The SAM Audio flow-matching DiT (reference ``sam_audio/model/transformer.py``, ``patcher.py``,
``rope.py``).

Parameter names match the reference so ``transformer.*`` keys load unchanged. Two conventions of
the reference are kept on purpose because the weights were trained with them:

* attention heads are split channel-interleaved (head h gets channels h, h+H, h+2H, ...) but
  merged back head-major;
* the ``x_embedder`` GroupNorm(1) normalises over all channels and all frames, padded frames
  included.

Module construction allocates no buffers (RoPE and sinusoid tables are computed on demand from
constants), so the whole DiT can be built on the ``meta`` device and materialised by loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from model.sam_audio.conditioning import sinusoid, sinusoid_frequencies
from model.sam_audio.config import TransformerConfig

_NONLINEARITIES: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "swiglu": None,
    "approx_gelu": partial(F.gelu, approximate="tanh"),
    "srelu": lambda x: F.relu(x) ** 2,
    "silu": F.silu,
}


def get_nonlinearity(kind: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Activation by reference name (``None`` for swiglu, which is handled by the layer)."""
    return _NONLINEARITIES[kind]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back (reference ``RMSNorm``)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight).type_as(x)


class ProjectionLayer(nn.Module):
    """Two-layer MLP ``w2(act(w1 x))`` or swiglu ``w2(silu(w1 x) * w3 x)`` (reference)."""

    def __init__(
        self, in_dim: int, out_dim: int, non_linearity: str, dropout: float, fc_bias: bool = False
    ) -> None:
        super().__init__()
        self.swiglu = non_linearity == "swiglu"
        self.dropout = dropout
        self.w1 = nn.Linear(in_dim, out_dim, bias=fc_bias)
        self.w2 = nn.Linear(out_dim, out_dim, bias=fc_bias)
        if self.swiglu:
            self.w3 = nn.Linear(in_dim, out_dim, bias=fc_bias)
        self.non_linearity = get_nonlinearity(non_linearity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w1(x)
        h = F.silu(h) * self.w3(x) if self.swiglu else self.non_linearity(h)
        h = F.dropout(h, p=self.dropout, training=self.training)
        return self.w2(h)


class FeedForward(nn.Module):
    """Reference ``FeedForward`` including its hidden-size rounding rules."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        ffn_dim_multiplier: float,
        multiple_of: int,
        dropout: float,
        non_linearity: str = "swiglu",
        fc_bias: bool = False,
    ) -> None:
        super().__init__()
        self.dropout = dropout
        self.swiglu = non_linearity == "swiglu"
        if self.swiglu:
            hidden_dim = int(2 * hidden_dim / 3)
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
        hidden_dim = multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)
        self.w1 = nn.Linear(dim, hidden_dim, bias=fc_bias)
        self.w2 = nn.Linear(hidden_dim, dim, bias=fc_bias)
        if self.swiglu:
            self.w3 = nn.Linear(dim, hidden_dim, bias=fc_bias)
        self.non_linearity = get_nonlinearity(non_linearity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w1(x)
        h = F.silu(h) * self.w3(x) if self.swiglu else self.non_linearity(h)
        h = F.dropout(h, p=self.dropout, training=self.training)
        return self.w2(h)


# ---------------------------------------------------------------------------------------------
# Rotary position embedding
# ---------------------------------------------------------------------------------------------


def rope_angles(head_dim: int, seqlen: int, theta: float, device=None) -> torch.Tensor:
    """[seqlen, head_dim/2] angles ``pos * theta^(-2i/d)`` exactly as reference
    ``RotaryEmbedding.precompute_freqs_cis`` computes them (float32)."""
    freqs = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=device)[: head_dim // 2].float() / head_dim)
    )
    t = torch.arange(seqlen, device=device)
    return torch.outer(t, freqs).float()


@dataclass
class RopeTable:
    """cos/sin of the RoPE angles for one sequence length, shaped to broadcast over
    ``[B, H, T, D/2]``; computed once per sampling call."""

    cos: torch.Tensor
    sin: torch.Tensor

    @classmethod
    def build(
        cls, head_dim: int, seqlen: int, theta: float, device, dtype=torch.float32
    ) -> RopeTable:
        ang = rope_angles(head_dim, seqlen, theta, device=device)
        return cls(cos=ang.cos().to(dtype), sin=ang.sin().to(dtype))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate interleaved pairs (2i, 2i+1) of ``x`` [B, H, T, D]."""
        x_ = x.float().unflatten(-1, (-1, 2))
        x0, x1 = x_[..., 0], x_[..., 1]
        cos, sin = self.cos, self.sin
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.flatten(-2).type_as(x)


def rope_reference(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as the reference computes it (2x2 rotation matrices multiplied and summed);
    kept for the naive path so the test of optimised == naive also covers ``RopeTable``."""
    B, H, T, D = x.shape
    ang = rope_angles(D, T, theta, device=x.device)
    cos, sin = ang.cos(), ang.sin()
    freqs_cis = torch.stack((cos, -sin, sin, cos), dim=-1).view(1, T, 1, D // 2, 2, 2)
    xt = x.transpose(1, 2)  # B L H E
    x_ = xt.reshape(*xt.shape[:-1], -1, 1, 2)
    out = (x_ * freqs_cis).sum(5).flatten(3)
    return out.transpose(1, 2).type_as(x)


# ---------------------------------------------------------------------------------------------
# Attention and blocks
# ---------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with the reference's channel-interleaved head split."""

    def __init__(
        self,
        dim: int,
        head_dim: int,
        n_heads: int,
        norm_eps: float = 1e-5,
        use_qk_norm: bool = False,
        fc_bias: bool = False,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.n_heads = n_heads
        self.use_qk_norm = use_qk_norm
        self.wq = nn.Linear(dim, n_heads * head_dim, bias=fc_bias)
        self.wk = nn.Linear(dim, n_heads * head_dim, bias=fc_bias)
        self.wv = nn.Linear(dim, n_heads * head_dim, bias=fc_bias)
        self.wo = nn.Linear(n_heads * head_dim, dim, bias=fc_bias)
        if use_qk_norm:
            self.q_norm = RMSNorm(head_dim, eps=norm_eps)
            self.k_norm = RMSNorm(head_dim, eps=norm_eps)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H*D] -> [B, H, T, D] with head h = channels h, h+H, ... (reference
        ``reshape_heads``)."""
        B, T, C = x.shape
        return x.reshape(B, T, C // self.n_heads, self.n_heads).permute(0, 3, 1, 2)

    def project_kv(self, cross_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values (k-normed) from ``cross_x``: [B, H, L, D] each."""
        k = self.split_heads(self.wk(cross_x))
        v = self.split_heads(self.wv(cross_x))
        if self.use_qk_norm:
            k = self.k_norm(k)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        cross_x: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        rope: RopeTable | float | None = None,
    ) -> torch.Tensor:
        """``attn_mask`` is a bool key mask broadcastable to [B, H, T, L] (True = attend).
        ``rope`` is a RopeTable (optimised) or the reference theta (naive) or None."""
        q = self.split_heads(self.wq(x))
        k, v = self.project_kv(x if cross_x is None else cross_x)
        if self.use_qk_norm:
            q = self.q_norm(q)
        if isinstance(rope, RopeTable):
            q, k = rope.apply(q), rope.apply(k)
        elif rope is not None:
            q, k = rope_reference(q, rope), rope_reference(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        B, H, T, D = out.shape
        return self.wo(out.transpose(1, 2).reshape(B, T, H * D))


class DiTBlock(nn.Module):
    """Self-attention (modulated, gated, RoPE) + cross-attention to text (plain residual) +
    modulated, gated FFN (reference ``DiTBlock``)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        dim, n_heads = cfg.dim, cfg.n_heads
        self.dim = dim
        self.head_dim = dim // n_heads
        self.attention = Attention(
            dim, self.head_dim, n_heads, cfg.norm_eps, cfg.qk_norm, cfg.fc_bias
        )
        self.feed_forward = FeedForward(
            dim=dim,
            hidden_dim=int(cfg.ffn_exp * dim),
            ffn_dim_multiplier=cfg.ffn_dim_multiplier,
            multiple_of=cfg.multiple_of,
            dropout=cfg.dropout,
            non_linearity=cfg.non_linearity,
            fc_bias=cfg.fc_bias,
        )
        self.attention_norm = RMSNorm(dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(dim, cfg.norm_eps)
        self.cross_attention = Attention(
            dim, self.head_dim, n_heads, cfg.norm_eps, cfg.qk_norm, cfg.fc_bias
        )
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        t0: torch.Tensor,
        attn_mask: torch.Tensor | None,
        memory_mask: torch.Tensor | None,
        rope: RopeTable | float | None,
    ) -> torch.Tensor:
        biases = self.scale_shift_table[None] + t0.reshape(t0.size(0), 6, -1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = biases.chunk(6, dim=1)
        h_attn = self.attention(
            modulate(self.attention_norm(x), shift_msa, scale_msa), attn_mask=attn_mask, rope=rope
        )
        h = x + h_attn * gate_msa
        h = h + self.cross_attention(h, cross_x=y, attn_mask=memory_mask)
        h_ff = self.feed_forward(modulate(self.ffn_norm(h), shift_mlp, scale_mlp))
        return h + h_ff * gate_mlp


class ConvBlock1d(nn.Module):
    """GroupNorm -> SiLU -> Conv1d(k=3, zero 'same' padding) (reference ``ConvBlock1d`` with
    kernel 3, stride 1, whose asymmetric-padding arithmetic reduces to padding 1 per side)."""

    def __init__(self, channels: int, num_groups: int = 1) -> None:
        super().__init__()
        self.groupnorm = nn.GroupNorm(num_groups=num_groups, num_channels=channels)
        self.project = nn.Conv1d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(F.silu(self.groupnorm(x)))


class ResnetBlock1d(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = ConvBlock1d(channels)
        self.block2 = ConvBlock1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block2(self.block1(x)) + x


class Patcher(nn.Module):
    """Reference ``Patcher`` with patch_size 1 and in == out channels (the only use in SAM
    Audio): a residual conv block over time, [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = ResnetBlock1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ContextEmbedder(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.context_norm = cfg.context_norm
        if cfg.context_norm:
            self.norm = RMSNorm(cfg.context_dim, cfg.norm_eps)
        self.projection = ProjectionLayer(
            cfg.context_dim,
            cfg.dim,
            cfg.context_non_linearity,
            cfg.context_embedder_dropout,
            cfg.fc_bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.context_norm:
            x = self.norm(x)
        return self.projection(x)


class TimestepEmbedder(nn.Module):
    """Cos-first sinusoid over ``frequency_embedding_dim`` then a ProjectionLayer."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.frequency_embedding_size = cfg.frequency_embedding_dim
        self.projection = ProjectionLayer(
            cfg.frequency_embedding_dim,
            cfg.dim,
            cfg.timestep_non_linearity,
            cfg.dropout,
            cfg.fc_bias,
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        dim = self.frequency_embedding_size
        emb = sinusoid(t, sinusoid_frequencies(dim - dim % 2, 10000.0, device=t.device))
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return self.projection(emb.to(t.dtype))


class DiT(nn.Module):
    """Reference ``DiT``: x_embedder -> N DiT blocks (cross-attending to ``y_embedder(memory)``,
    modulated by the timestep) -> RMSNorm, final modulation, output projection."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.dropout = cfg.dropout
        if cfg.in_channels is not None:
            self.data_proj = nn.Linear(cfg.in_channels, cfg.dim)
        self.rope_theta: float | None = (
            float(max(10000, 2 * cfg.max_positions)) if cfg.use_rope else None
        )
        self.head_dim = cfg.dim // cfg.n_heads
        self.layers = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.out_channels, bias=cfg.fc_bias)
        self.x_embedder = Patcher(cfg.dim)
        self.y_embedder = ContextEmbedder(cfg)
        self.t_embedder = TimestepEmbedder(cfg)
        self.t_block_non_linearity = get_nonlinearity(cfg.t_block_non_linearity)
        self.t_block = nn.Linear(cfg.dim, cfg.dim * 6, bias=cfg.t_block_bias)
        self.final_layer_scale_shift_table = nn.Parameter(torch.randn(2, cfg.dim) / cfg.dim**0.5)

    def rope_table(self, seqlen: int, device, dtype=torch.float32) -> RopeTable | None:
        """RoPE cos/sin for ``seqlen`` frames, to be reused by every step of one call."""
        if self.rope_theta is None:
            return None
        return RopeTable.build(self.head_dim, seqlen, self.rope_theta, device, dtype)

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        *,
        padding_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_padding_mask: torch.Tensor | None = None,
        rope: RopeTable | None = None,
        naive: bool = False,
    ) -> torch.Tensor:
        """x [B, T, dim], time [B], padding_mask [B, T] / memory_padding_mask [B, L] (bool,
        True = valid), memory [B, L, context_dim] -> [B, T, out_channels].

        ``naive=True`` computes RoPE the reference way; otherwise ``rope`` (or a table built
        here) is used. Masks are handed to SDPA as given: callers may pass ``None`` when every
        key is valid (identical result, faster kernels).
        """
        # (the reference builds ``data_proj`` when ``in_channels`` is set but never applies it)
        h = self.x_embedder(x.transpose(1, 2)).transpose(1, 2)
        h = F.dropout(h, p=self.dropout, training=self.training)

        t = self.t_embedder(time)
        t0 = self.t_block(self.t_block_non_linearity(t))
        y = self.y_embedder(memory)

        if naive:
            rope_arg: RopeTable | float | None = self.rope_theta
        else:
            rope_arg = rope
            if rope_arg is None and self.rope_theta is not None:
                rope_arg = self.rope_table(h.shape[1], h.device)
        attn_mask = None if padding_mask is None else padding_mask[:, None, None, :]
        memory_mask = None if memory_padding_mask is None else memory_padding_mask[:, None, None, :]

        for layer in self.layers:
            h = layer(h, y, t0, attn_mask, memory_mask, rope_arg)

        shift, scale = (self.final_layer_scale_shift_table[None] + t[:, None]).chunk(2, dim=1)
        h = modulate(self.norm(h), shift, scale)
        h = F.dropout(h, p=self.dropout, training=self.training)
        return self.output(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["DiT", "RopeTable", "count_parameters"]
