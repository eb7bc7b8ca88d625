"""Conditioning paths of SAM Audio: modality alignment, span anchors, sinusoidal time embeddings.

Module and parameter names follow the reference (``sam_audio/model/model.py``,
``sam_audio/model/align.py``) so the released state dict loads unchanged. Each module also
exposes the *additive term* it contributes, so the optimised sampler can compute it once per
call instead of once per ODE step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ANCHOR_TOKENS: dict[str, int] = {"<null>": 0, "+": 1, "-": 2, "<pad>": 3}
"""The reference processor's anchor vocabulary (``Batch.process_anchors``)."""


def sinusoid_frequencies(dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    """``exp(-ln(theta) * arange(dim/2) / (dim/2))`` in float32, as both reference embedders."""
    half = dim // 2
    return torch.exp(
        -math.log(theta) * torch.arange(half, dtype=torch.float32, device=device) / half
    )


def sinusoid(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """``cat(cos(t f), sin(t f))`` (cos first) for 1-D ``t``: [N] -> [N, 2 * len(freqs)]."""
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Reference ``SinusoidalEmbedding``: the time sinusoid added to the projected text memory.

    No buffers (the reference's ``inv_freq`` is non-persistent), so building it on the meta
    device costs nothing.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError("SinusoidalEmbedding needs an even dim")
        self.dim = dim
        self.theta = theta

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """[N] positions/times -> [N, dim] (the reference computes ``einsum('i,j->ij')``)."""
        freqs = sinusoid_frequencies(self.dim, self.theta, device=pos.device)
        emb = torch.outer(pos.to(freqs.dtype), freqs)
        return torch.cat((emb.cos(), emb.sin()), dim=-1)


class AlignModalities(nn.Module):
    """Reference ``AlignModalities``: adds gated, layer-normed 1x1-conv video features.

    Note that without video the reference feeds zeros, so the term is
    ``tanh(gate) * LayerNorm(conv.bias)``: never a no-op.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=1)
        self.layer_norm = nn.LayerNorm(out_channels)
        self.gate = nn.Parameter(torch.zeros(1))

    def term(self, features: torch.Tensor) -> torch.Tensor:
        """[B, in_channels, T] -> the additive [B, T, out_channels] term."""
        post = self.conv(features).permute(0, 2, 1)
        return self.gate.tanh() * self.layer_norm(post)

    def forward(self, anchor: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            return anchor
        return anchor + self.term(features)


class EmbedAnchors(nn.Module):
    """Reference ``EmbedAnchors``: per-frame span token embedding, projected and gated.

    The ``<pad>`` row (``padding_idx``) is looked up, not assumed zero: trained/perturbed
    checkpoints may hold any value there.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, out_dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(num_embeddings + 1, embedding_dim, padding_idx=num_embeddings)
        self.gate = nn.Parameter(torch.zeros(1))
        self.proj = nn.Linear(embedding_dim, out_dim, bias=False)

    def term(self, anchor_ids: torch.Tensor, anchor_alignment: torch.Tensor) -> torch.Tensor:
        """ids [B, K] and per-frame positions [B, T] -> the additive [B, T, out_dim] term."""
        embs = self.embed(anchor_ids.gather(1, anchor_alignment))
        return self.gate.tanh() * self.proj(embs)

    def forward(
        self,
        x: torch.Tensor,
        anchor_ids: torch.Tensor | None = None,
        anchor_alignment: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if anchor_ids is None:
            return x
        return x + self.term(anchor_ids, anchor_alignment)
