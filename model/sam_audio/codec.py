"""DACVAE, the audio codec inside SAM Audio, re-implemented for fast exact CPU inference.

References (behaviour matched, code written from scratch):

* facebookresearch/dacvae @ 414c2078 - ``dacvae/model/dacvae.py`` (``DACVAE``, ``Encoder``,
  ``Decoder``, ``DecoderBlock``, ``ResidualUnit``, ``Watermarker`` and its blocks),
  ``dacvae/nn/layers.py`` (``Snake1d``, ``NormConv1d``, ``NormConvTranspose1d``, ``MsgProcessor``),
  ``dacvae/nn/bottleneck.py`` (``VAEBottleneck``).
* facebookresearch/sam-audio @ 68b48d48 - ``sam_audio/model/codec.py`` (the ``DACVAE`` wrapper:
  encode = reflect pad + encoder + mean half of ``quantizer.in_proj``; decode =
  ``quantizer.out_proj`` + decoder with its audio watermarker).

The module tree and parameter names equal the reference's, so the ``audio_codec.*`` entries of a
SAM Audio state dict load with strict key and shape checking (old-style weight norm:
``weight_g`` / ``weight_v``).

Two inference paths. ``encode`` / ``decode(..., naive=True)`` compute what the reference computes
the way it computes it (``forward_reference`` methods: weight norm recomputed by every
convolution, channels-first convolutions, the scripted allocating ``snake``, the watermark head
evaluated twice, the LSTMs on torch's thread count): the baseline for benchmarks and parity
checks. The default path gives the same numbers up to float32 rounding (max |difference| to the
naive path ~9e-7 on fixture A; test bound 1e-5), about 2x (1 thread) to 3x (2 threads) faster
for the decoder on a shared 2-core AVX-512 CPU:

* the decoder runs time-major (``[B, T, C]``, i.e. channels-last ``[B, C, 1, T]``) from its
  first convolution to the watermark head, so oneDNN uses its ``nwc`` kernels without
  reordering activations to and from its blocked layout on every call;
* the upsampling transposed convolutions (kernel ``2 * stride``) are one GEMM with the weight as
  stored plus an overlap-add of two taps per sample, instead of oneDNN's per-call reorder of the
  weight (113 MB for the first one); the wide (>= 384 channels) k-tap convolutions are one GEMM
  per tap for the same reason;
* fresh multi-megabyte tensors are expensive on CPU (every page faults in; ~50 ms per 75 MB
  tensor here), so the decoder's Snake residual units recycle two buffers per stage: only the
  k-tap convolution allocates, Snake runs in place (same operations in the same order as the
  reference's scripted ``snake``, so bit-identical) and the second Snake, bias, skip and
  pointwise GEMM run block by block in L2 (one intra-op thread; with more, whole tensors);
* weight-norm weights ``g * v / ||v||`` are folded into plain weights once, in the layout the
  path uses, and cached (keyed on the parameters' storage and version counters, so
  ``load_state_dict`` or any in-place update invalidates it; with autograd recording it is
  bypassed);
* the watermarker after its head (small convolutions, ~300-step LSTMs) runs on one intra-op
  thread: its many small ops each ended in an OpenMP barrier, which on a shared CPU cost seconds;
* the watermarker's ``tanh(conv(snake(x)))`` head, which the reference evaluates twice, is
  evaluated once, and ELU / ``tanh`` overwrite tensors that are dead anyway.

``torch.compile`` is not used: the remaining time is in oneDNN / MKL kernels and the LSTMs.

The decoder's watermark message is drawn exactly like the reference
(``torch.randint(0, 2, (B, 16), dtype=torch.float32)`` from the global generator, after the
watermark encoder and before the message is embedded) when the caller passes none.

The codec's configuration is ``config.DACVAEConfig`` (with the watermarker's fixed sizes).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.sam_audio.config import (
    DOWNSAMPLING_FACTOR,
    WM_CHANNELS,
    WM_HIDDEN,
    WM_LATENT,
    WM_LSTM_LAYERS,
    WM_NBITS,
    WM_RATES,
    DACVAEConfig,
)
from model.sam_audio.errors import CodecCheckpointError, CodecConfigError, SAMAudioInputError

# The config class and the codec's errors are defined in ``config`` / ``errors`` (one place
# for every sub-model); they are re-exported because this module's API has always named them.
__all__ = [
    "CodecCheckpointError",
    "CodecConfigError",
    "DACVAECodec",
    "DACVAEConfig",
]

# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------


class _Conv(nn.Module):
    """``NormConv1d`` / ``NormConvTranspose1d`` of the reference (``dacvae/nn/layers.py``).

    ``pad_mode="none"`` uses the reference's fixed symmetric padding; ``pad_mode="auto"`` pads the
    input (conv) or trims the output (transposed conv) exactly like its ``pad`` / ``unpad``.
    With ``weight_norm`` the parameters are ``bias, weight_g, weight_v`` (that registration order,
    as ``torch.nn.utils.weight_norm`` leaves them), otherwise ``weight, bias``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        *,
        transpose: bool = False,
        weight_norm: bool = True,
        causal: bool = False,
        pad_mode: str = "none",
    ) -> None:
        super().__init__()
        if pad_mode not in ("none", "auto"):
            raise ValueError(f"pad_mode must be 'none' or 'auto', got {pad_mode!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.dilation = dilation
        self.transpose = transpose
        self.causal = causal
        self.pad_mode = pad_mode
        self.use_weight_norm = weight_norm
        if transpose:
            shape = (in_channels, out_channels, kernel_size)
            self.padding = (stride + 1) // 2 if pad_mode == "none" else 0
            self.output_padding = (stride % 2) if pad_mode == "none" else 0
        else:
            shape = (out_channels, in_channels, kernel_size)
            self.padding = (kernel_size - stride) * dilation // 2 if pad_mode == "none" else 0
            self.output_padding = 0
        if weight_norm:
            self.bias = nn.Parameter(torch.zeros(out_channels))
            self.weight_g = nn.Parameter(torch.ones(shape[0], 1, 1))
            self.weight_v = nn.Parameter(torch.empty(shape))
        else:
            self.weight = nn.Parameter(torch.empty(shape))
            self.bias = nn.Parameter(torch.zeros(out_channels))
        self._wn_cache: dict[str, tuple[tuple[tuple[int, int], ...], Tensor]] = {}
        self.cache_weight = True  # DACVAECodec.set_weight_cache toggles it
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small random init so a freshly built codec runs (real weights come from a checkpoint)."""
        with torch.no_grad():
            w = self.weight_v if self.use_weight_norm else self.weight
            nn.init.trunc_normal_(w, std=0.02)
            self.bias.zero_()
            if self.use_weight_norm:
                self.weight_g.copy_(torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True))
        self._wn_cache = {}

    def reference_weight(self) -> Tensor:
        """The weight as the reference computes it on every call (``weight_norm`` hook:
        ``torch._weight_norm(v, g, 0)``), never cached."""
        if not self.use_weight_norm:
            return self.weight
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def _cached(self, layout: str) -> Tensor:
        """The weight in ``layout`` ("ncw": ``[O, I, K]`` as stored; "nwc": 4-D channels-last,
        ``[O, I, 1, K]`` (transposed conv: ``[I, O, 1, K]``) for :meth:`forward_nwc`).

        Weight norm is folded into a plain tensor once and kept while the parameters' storage
        and version counters are unchanged (``load_state_dict`` or any in-place update
        invalidates it). Bypassed while autograd records through the parameters, for inference
        parameters (no version counter) and with caching off.
        """
        params = (self.weight_v, self.weight_g) if self.use_weight_norm else (self.weight,)
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._layout(self.reference_weight(), layout)
        if not self.cache_weight or any(p.is_inference() for p in params):
            return self._layout(self.reference_weight(), layout)
        if layout == "ncw" and not self.use_weight_norm:
            return self.weight
        key = tuple((p.data_ptr(), p._version) for p in params)
        hit = self._wn_cache.get(layout)
        if hit is None or hit[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                w = self._layout(self.reference_weight().detach(), layout)
            self._wn_cache[layout] = hit = (key, w)
        return hit[1]

    def _layout(self, w: Tensor, layout: str) -> Tensor:
        if layout == "ncw":
            return w
        if self._gemm_transpose():  # [C_in, C_out, K] -> [C_in, K * C_out] (k-major columns)
            return w.permute(0, 2, 1).reshape(w.shape[0], -1).contiguous()
        if self._gemm_taps():  # [C_out, C_in, K] -> [K, C_in, C_out]
            return w.permute(2, 1, 0).contiguous()
        w = w.unsqueeze(2)
        if self.kernel_size == 1:  # [., ., 1, 1]: contiguous is already channels-last
            return w
        return w.contiguous(memory_format=torch.channels_last)

    def effective_weight(self) -> Tensor:
        """The convolution weight; for weight norm ``g * v / ||v||`` (norm over all dims but 0).

        Computed with ``torch._weight_norm`` like the reference's ``weight_norm`` hook, hence
        bit-identical. Cached (see :meth:`_cached`).
        """
        return self._cached("ncw")

    def _gemm_transpose(self) -> bool:
        """Whether :meth:`forward_nwc` runs this transposed convolution as GEMM + overlap-add
        (the decoder's upsamplers: kernel ``2 * stride``, the reference's fixed padding)."""
        return (
            self.transpose
            and self.dilation == 1
            and self.kernel_size == 2 * self.stride
            and (
                (
                    self.pad_mode == "none"
                    and self.padding == (self.stride + 1) // 2
                    and self.output_padding == self.stride % 2
                )
                or (self.pad_mode == "auto" and self.causal)  # trims K - s on the right: p = 0
            )
        )

    def _gemm_taps(self) -> bool:
        """Whether :meth:`forward_nwc` runs this convolution as one GEMM per tap: the wide
        (>= 384 channels) k-tap convolutions of the decoder's first stages, where oneDNN's
        per-call weight reorder costs more than its kernel saves (~15-40 % measured)."""
        return (
            not self.transpose
            and self.pad_mode == "none"
            and self.stride == 1
            and self.kernel_size > 1
            and self.kernel_size % 2 == 1
            and self.padding == (self.kernel_size - 1) * self.dilation // 2
            and self.in_channels >= _GEMM_TAPS_MIN_CHANNELS
        )

    def packed_weight(self) -> Tensor:
        """The weight for :meth:`forward_nwc` (4-D channels-last), cached like
        :meth:`effective_weight`. For ``kernel_size == 1`` it is a view of that weight."""
        if self.kernel_size == 1:
            return self.effective_weight().unsqueeze(2)
        return self._cached("nwc")

    def clear_cache(self) -> None:
        """Drop the cached weights (they are rebuilt on the next call)."""
        self._wn_cache = {}

    def _auto_pad(self, x: Tensor) -> Tensor:
        left, right = self._auto_pad_amounts(x.shape[-1])
        if left == 0 and right == 0:
            return x
        return F.pad(x, (left, right))

    def _auto_pad_amounts(self, length: int) -> tuple[int, int]:
        # Reference NormConv1d.pad, including its use of kernel_size (not the dilated size) in
        # ``ideal_length``.
        k, d, s = self.kernel_size, self.dilation, self.stride
        effective = (k - 1) * d + 1
        total = effective - s
        n_frames = (length - effective + total) / s + 1
        ideal = (math.ceil(n_frames) - 1) * s + (k - total)
        extra = ideal - length
        if self.causal:
            return total, extra
        right = extra // 2
        return total - right, right + extra

    def forward(self, x: Tensor) -> Tensor:
        return self.apply_weight(x, self.effective_weight())

    def forward_reference(self, x: Tensor) -> Tensor:
        """The reference's computation: weight norm recomputed, then the convolution."""
        return self.apply_weight(x, self.reference_weight())

    def apply_weight(self, x: Tensor, w: Tensor) -> Tensor:
        """``[B, C, T]`` convolution with weight ``w`` (reference ``forward``: pad, conv, unpad)."""
        if not self.transpose:
            if self.pad_mode == "auto":
                x = self._auto_pad(x)
            return F.conv1d(x, w, self.bias, self.stride, self.padding, self.dilation)
        y = F.conv_transpose1d(
            x, w, self.bias, self.stride, self.padding, self.output_padding, 1, self.dilation
        )
        return self._unpad(y)

    def _unpad(self, y: Tensor) -> Tensor:
        if self.pad_mode == "none":
            return y
        # Reference NormConvTranspose1d.unpad.
        total = self.kernel_size - self.stride
        if self.causal:
            left, end = 0, y.shape[-1] - total
        else:
            right = total // 2
            left, end = total - right, y.shape[-1] - right
        return y[..., left:end]

    def forward_nwc(self, x: Tensor) -> Tensor:
        """The same convolution on time-major activations: ``[B, T, C_in]`` -> ``[B, T', C_out]``.

        The tensors are the channels-last (``NHWC`` with ``H = 1``) view of the ``[B, C, 1, T]``
        the reference convolves, so oneDNN runs its ``nwc`` kernels without reordering the
        activations to and from its blocked layout on every call (about 1.7x faster for the
        decoder's wide dilated convolutions on a 2-core AVX-512 CPU); same sums, up to float32
        rounding of the accumulation order. ``pad_mode="auto"`` is handled by padding in time.
        """
        w = self.packed_weight()
        if self._gemm_transpose():
            p = 0 if self.pad_mode == "auto" else self.padding
            return _conv_transpose_gemm(x, w, self.bias, self.stride, p)
        if self._gemm_taps():
            return _conv_gemm_taps(x, w, self.bias, self.dilation)
        if self.pad_mode == "auto" and not self.transpose:
            left, right = self._auto_pad_amounts(x.shape[1])
            if left or right:
                x = F.pad(x, (0, 0, left, right))
        x4 = x.transpose(1, 2).unsqueeze(2)
        if not x4.is_contiguous(memory_format=torch.channels_last):
            x4 = x4.contiguous(memory_format=torch.channels_last)
        if not self.transpose:
            y = F.conv2d(x4, w, self.bias, (1, self.stride), (0, self.padding), (1, self.dilation))
        else:
            y = F.conv_transpose2d(
                x4, w, self.bias, (1, self.stride), (0, self.padding),
                (0, self.output_padding), 1, (1, self.dilation),
            )  # fmt: skip
        y = y.squeeze(2)
        if self.transpose:
            y = self._unpad(y)
        y = y.transpose(1, 2)
        return y if y.is_contiguous() else y.contiguous()


_GEMM_TAPS_MIN_CHANNELS = 384
_SNAKE_BLOCK = 1 << 17  # elements per block of the time-major Snake (512 KB of float32)


def _conv_gemm_taps(x: Tensor, w: Tensor, bias: Tensor, dilation: int) -> Tensor:
    """Same-length ``conv1d`` (odd kernel, symmetric zero padding) on time-major
    ``x [B, T, C_in]`` with ``w`` as ``[K, C_in, C_out]``: one GEMM per tap, each over the rows
    its shifted input covers (the zero padding contributes nothing), no padded copy."""
    B, T, _ = x.shape
    K = w.shape[0]
    mid = K // 2
    y = torch.empty(B, T, w.shape[2], dtype=x.dtype, device=x.device)
    for b in range(B):
        xb, yb = x[b], y[b]
        torch.addmm(bias, xb, w[mid], out=yb)
        for k in range(K):
            o = (k - mid) * dilation  # y[t] += x[t + o] @ w[k]
            if k == mid or abs(o) >= T:
                continue
            if o > 0:
                yb[: T - o].addmm_(xb[o:], w[k])
            else:
                yb[-o:].addmm_(xb[: T + o], w[k])
    return y


def _conv_transpose_gemm(x: Tensor, w: Tensor, bias: Tensor, stride: int, p: int) -> Tensor:
    """``conv_transpose1d(kernel=2s, stride=s)`` on time-major ``x [B, T, C_in]`` ->
    ``[B, T * s, C_out]``: output samples ``p ... p + T * s - 1`` of the full ``(T + 1) * s``
    (``p = (s+1)//2`` for the reference's fixed padding with ``output_padding = s % 2``,
    ``p = 0`` for its causal ``unpad``), with ``w`` the weight as ``[C_in, 2s * C_out]``
    (tap-major).

    Each input frame ``t`` contributes ``z[t, k] = x[t] @ W[:, k]`` to output sample
    ``t * s + k - p``, so with ``K = 2s`` every output sample is the sum of exactly two GEMM
    outputs (taps ``k`` and ``k + s`` of consecutive frames) plus the bias. One GEMM with the
    weight as stored replaces oneDNN's per-call reorder of the (up to 113 MB) weight and its
    blocked-layout copies of the activations. Computed in chunks of frames (one frame of
    overlap) so the GEMM output stays small.
    """
    B, T, c_in = x.shape
    s = stride
    C = w.shape[1] // (2 * s)
    y = torch.empty(B, T * s, C, dtype=x.dtype, device=x.device)
    y4 = y.view(B, T, s, C)
    n = max(1, (1 << 22) // (2 * s * C * B))  # frames per chunk: ~16 MB of GEMM output
    for a in range(0, T, n):
        e = min(T, a + n)
        a0 = max(a - 1, 0)
        m = e - a0
        z = torch.mm(x[:, a0:e].reshape(B * m, c_in), w).view(B, m, 2, s, C)
        # output frame g, phase q < s - p: z[g, 0, q + p] + z[g - 1, 1, q + p]
        first = y4[:, a:e, : s - p]
        torch.add(z[:, a - a0 :, 0, p:], bias, out=first)
        if a0 < a:
            first.add_(z[:, :-1, 1, p:])
        else:
            first[:, 1:].add_(z[:, :-1, 1, p:])
        # output frame g, phase q >= s - p: z[g, 1, q + p - s] + z[g + 1, 0, q + p - s]
        if p == 0:
            continue
        if m > 1:
            second = y4[:, a0 : e - 1, s - p :]
            torch.add(z[:, :-1, 1, :p], bias, out=second)
            second.add_(z[:, 1:, 0, :p])
        if e == T:
            torch.add(z[:, -1, 1, :p], bias, out=y4[:, T - 1, s - p :])
    return y


class _Snake1d(nn.Module):
    """Snake activation ``x + 1/(alpha + 1e-9) * sin(alpha * x)^2`` (reference ``Snake1d``).

    Same operations in the same order as the reference's scripted ``snake`` (so bit-identical),
    but evaluated in place in one buffer (``out`` if given, else a new one): the reference
    allocates five full-size tensors, which at 48 kHz x 96..192 channels cost more than the
    arithmetic (fresh pages fault in at ~50 ms per 75 MB tensor on the 2-core CPU).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        alpha = self.alpha
        if torch.is_grad_enabled() and (alpha.requires_grad or x.requires_grad):
            return x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
        inv = (alpha + 1e-9).reciprocal()
        t = torch.mul(alpha, x, out=out) if out is not None else torch.mul(alpha, x)
        t.sin_()
        t.mul_(t)  # == pow(2) on CPU (computed as base * base)
        t.mul_(inv)
        return t.add_(x)

    def forward_nwc(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """:meth:`forward` (no autograd) on time-major ``[B, T, C]`` activations: the same
        element-wise operations, so the same bits, run on blocks of ~512 KB so that the five
        passes stay in the core's L2 cache instead of streaming the tensor five times."""
        c = x.shape[-1]
        alpha = self.alpha.view(1, -1)
        inv = (alpha + 1e-9).reciprocal()
        if out is None:
            out = torch.empty_like(x)
        xs, ts = x.view(-1, c), out.view(-1, c)
        rows = _block_rows(c)
        for a in range(0, xs.shape[0], rows):
            _snake_into(xs[a : a + rows], alpha, inv, ts[a : a + rows])
        return out

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """``alpha`` and ``1 / (alpha + 1e-9)`` as ``[1, C]`` rows (for time-major blocks)."""
        alpha = self.alpha.view(1, -1)
        return alpha, (alpha + 1e-9).reciprocal()

    def forward_reference(self, x: Tensor) -> Tensor:
        """The reference's scripted ``snake`` (``dacvae/nn/layers.py``), allocations and all."""
        return _reference_snake()(x, self.alpha)


def _block_rows(channels: int) -> int:
    """Rows of a time-major block for the element-wise passes (~512 KB, so a block's five
    Snake passes and its pointwise GEMM stay in one core's L2). With several intra-op threads
    the whole tensor is one block: every op is a parallel region ending in a barrier, and on a
    shared CPU where a thread can be descheduled, per-block barriers cost more than L2 saves
    (measured: 25x slower with 2 threads under load)."""
    if torch.get_num_threads() > 1:
        return 1 << 62
    return max(1, _SNAKE_BLOCK // channels)


def _snake_into(x: Tensor, alpha: Tensor, inv: Tensor, out: Tensor) -> Tensor:
    """``out = x + inv * sin(alpha * x) ** 2`` in the reference's order of operations."""
    t = torch.mul(alpha, x, out=out)
    t.sin_()
    t.mul_(t)  # == pow(2) on CPU (computed as base * base)
    t.mul_(inv)
    return t.add_(x)


@functools.cache
def _reference_snake() -> Any:
    """``dacvae.nn.layers.snake``, scripted like the reference (on first use, not at import)."""

    def snake(x: Tensor, alpha: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(shape[0], shape[1], -1)
        x = x + (alpha + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)
        x = x.reshape(shape)
        return x

    with warnings.catch_warnings():  # torch >= 2.10 calls torch.jit.script deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(snake)


def _act_reference(module: nn.Module, x: Tensor) -> Tensor:
    """An activation as the reference module computes it (new tensors, nothing in place)."""
    if isinstance(module, _Snake1d):
        return module.forward_reference(x)
    return module(x)


def _act(module: nn.Module, x: Tensor, inplace: bool) -> Tensor:
    """Apply one of the reference's activations, overwriting ``x`` when the caller allows it."""
    if isinstance(module, _Snake1d):
        return module(x)
    inplace = inplace and not (torch.is_grad_enabled() and x.requires_grad)
    if isinstance(module, nn.ELU):
        return F.elu(x, module.alpha, inplace=inplace)
    if isinstance(module, nn.Tanh):
        return x.tanh_() if inplace else torch.tanh(x)
    return module(x)


def _make_act(act: str, channels: int) -> nn.Module:
    if act == "Snake":
        return _Snake1d(channels)
    if act == "ELU":
        return nn.ELU(alpha=1.0)
    if act == "Tanh":
        return nn.Tanh()
    raise ValueError(f"unsupported activation {act!r}")


class _ResidualUnit(nn.Module):
    """Reference ``ResidualUnit``: act, conv(k, dilation), act, conv(1), plus a skip."""

    def __init__(
        self,
        dim: int,
        kernel: int = 7,
        dilation: int = 1,
        act: str = "Snake",
        compress: int = 1,
        causal: bool = False,
        pad_mode: str = "none",
        weight_norm: bool = True,
        true_skip: bool = False,
    ) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.Sequential(
            _make_act(act, dim),
            _Conv(
                dim,
                hidden,
                kernel,
                1,
                dilation,
                weight_norm=weight_norm,
                causal=causal,
                pad_mode=pad_mode,
            ),
            _make_act(act, hidden),
            _Conv(hidden, dim, 1, 1, 1, weight_norm=weight_norm, causal=causal, pad_mode=pad_mode),
        )
        self.true_skip = true_skip

    def forward_reuse(self, x: Tensor, spare: Tensor) -> tuple[Tensor, Tensor]:
        """Inference path of a Snake unit that recycles buffers; returns ``(output, spare)``.

        ``spare`` is a free tensor shaped like ``x``. Only the k-tap convolution allocates; the
        pointwise convolution is a GEMM written into the freed convolution output, with the bias
        and the skip pre-added (``x + b + W @ y``, the reference's ``(W @ y + b) + x`` up to
        rounding). ``x`` is consumed (the caller must not use it afterwards).
        """
        b = self.block
        pw = b[3]
        b[0](x, out=spare)
        y = b[1](spare)  # the only allocation
        act = b[2](y, out=spare)  # y is free from here on
        w = pw.effective_weight()[:, :, 0]
        torch.add(x, pw.bias[:, None], out=y)
        for i in range(y.shape[0]):
            y[i].addmm_(w, act[i])
        return y, x

    def forward_reuse_nwc(self, x: Tensor, spare: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward_reuse` on time-major ``[B, T, C]`` activations; returns
        ``(output, spare)`` and consumes ``x``. The pointwise convolution is one GEMM over all
        ``B * T`` rows, written into the dead k-tap output with the bias and skip pre-added."""
        b = self.block
        pw = b[3]
        b[0].forward_nwc(x, out=spare)
        y = b[1].forward_nwc(spare)  # the only allocation
        # Second Snake, bias, skip and pointwise GEMM block by block (the block stays in L2):
        # act = snake(y); y = x + bias + act @ W^T (y is dead once its Snake is taken).
        alpha, inv = b[2].coefficients()
        w_t = pw.effective_weight()[:, :, 0].t()
        c = y.shape[-1]
        xs, ys, ts = x.view(-1, c), y.view(-1, c), spare.view(-1, c)
        rows = _block_rows(c)
        for a in range(0, ys.shape[0], rows):
            yb = ys[a : a + rows]
            act = _snake_into(yb, alpha, inv, ts[a : a + rows])
            torch.add(xs[a : a + rows], pw.bias, out=yb)
            yb.addmm_(act, w_t)
        return y, x

    def forward_elu_nwc(self, x: Tensor) -> Tensor:
        """The watermarker's ELU units (true skip, causal) on time-major ``[B, T, C]``:
        ``x + conv1(elu(conv_k(elu(x))))`` with the pointwise convolution as one GEMM."""
        b = self.block
        h = b[1].forward_nwc(F.elu(x, b[0].alpha))
        F.elu(h, b[2].alpha, inplace=True)
        pw = b[3]
        c = h.shape[-1]
        y = torch.addmm(pw.bias, h.view(-1, c), pw.effective_weight()[:, :, 0].t())
        return y.view(*x.shape[:-1], -1).add_(x)

    def forward_reference(self, x: Tensor) -> Tensor:
        """Reference ``ResidualUnit.forward``: ``y = block(x)``, then ``y + shortcut(x, y)``."""
        y = x
        for layer in self.block:
            y = layer.forward_reference(y) if isinstance(layer, _Conv) else _act_reference(layer, y)
        if not self.true_skip:
            pad = (x.shape[-1] - y.shape[-1]) // 2
            if pad > 0:
                x = x[..., pad:-pad]
        return y + x

    def can_reuse(self, x: Tensor) -> bool:
        """Whether :meth:`forward_reuse` applies (Snake unit, same length, no autograd)."""
        b = self.block
        return (
            isinstance(b[0], _Snake1d)
            and not self.true_skip
            and b[1].pad_mode == "none"
            and b[1].stride == 1
            and b[1].kernel_size % 2 == 1
            and b[3].kernel_size == 1
            and b[3].pad_mode == "none"
            and b[1].in_channels == b[1].out_channels == b[3].in_channels == b[3].out_channels
            and x.dim() == 3
            and x.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or b[1].bias.requires_grad))
        )

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        y = _act(b[0], x, inplace=False)  # x is still needed for the skip
        y = b[1](y)
        y = _act(b[2], y, inplace=True)
        y = b[3](y)
        skip = x
        if not self.true_skip:
            pad = (x.shape[-1] - y.shape[-1]) // 2
            if pad > 0:
                skip = x[..., pad:-pad]
        if y.requires_grad and torch.is_grad_enabled():
            return y + skip
        return y.add_(skip)  # y + skip, same bits; y is a fresh conv output


class _EncoderBlock(nn.Module):
    """Reference ``EncoderBlock``: three dilated residual units, Snake, strided conv."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            _ResidualUnit(half, kernel=7, dilation=1),
            _ResidualUnit(half, kernel=7, dilation=3),
            _ResidualUnit(half, kernel=7, dilation=9),
            _Snake1d(half),
            _Conv(half, dim, 2 * stride, stride),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)

    def forward_reuse(self, x: Tensor) -> Tensor:
        """:meth:`forward` for inference, recycling buffers; ``x`` is consumed."""
        b = self.block
        units = (b[0], b[1], b[2])
        if not all(u.can_reuse(x) for u in units):
            return b(x)
        spare = torch.empty_like(x)
        for u in units:
            x, spare = u.forward_reuse(x, spare)
        return b[4](b[3](x, out=spare))

    def forward_reference(self, x: Tensor) -> Tensor:
        """Reference ``EncoderBlock.forward`` (its ``nn.Sequential``)."""
        b = self.block
        for u in (b[0], b[1], b[2]):
            x = u.forward_reference(x)
        return b[4].forward_reference(b[3].forward_reference(x))


class _Encoder(nn.Module):
    """Reference ``Encoder``: conv, strided blocks doubling the width, Snake, conv to the latent."""

    def __init__(self, d_model: int, strides: tuple[int, ...], d_latent: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [_Conv(1, d_model, 7)]
        for stride in strides:
            d_model *= 2
            layers.append(_EncoderBlock(d_model, stride))
        layers += [_Snake1d(d_model), _Conv(d_model, d_latent, 3)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        x = b[0](x)
        for blk in b[1:-2]:
            x = blk.forward_reuse(x)  # x is always a tensor created here
        return b[-1](b[-2](x))

    def forward_reference(self, x: Tensor) -> Tensor:
        """Reference ``Encoder.forward`` (its ``nn.Sequential``)."""
        b = self.block
        x = b[0].forward_reference(x)
        for blk in b[1:-2]:
            x = blk.forward_reference(x)
        return b[-1].forward_reference(b[-2].forward_reference(x))


class _Bottleneck(nn.Module):
    """Reference ``VAEBottleneck`` (only the projections; inference uses the mean)."""

    def __init__(self, input_dim: int, codebook_dim: int) -> None:
        super().__init__()
        self.in_proj = _Conv(input_dim, 2 * codebook_dim, 1)
        self.out_proj = _Conv(codebook_dim, input_dim, 1)


class _DecoderBlock(nn.Module):
    """Reference ``DecoderBlock`` (12 layers in one ``ModuleList``, indices kept).

    The reference splits ``block`` into chunks of two and routes them three ways; spelled out:

    * main path (``forward``): 0 Snake, 1 ConvTranspose (weight norm), 4/5/8 Snake residual
      units (dilation 1, 3, 9), 9 Identity;
    * watermark "upsample group" (runs on the watermark encoder side, downsamples in time):
      7 ELU residual unit, 10 ELU, 11 causal strided conv;
    * watermark "downsample group" (decoder side, upsamples in time): 2 ELU,
      3 causal ConvTranspose, 6 ELU residual unit.
    """

    def __init__(self, input_dim: int, output_dim: int, stride: int, stride_wm: int) -> None:
        super().__init__()
        f = DOWNSAMPLING_FACTOR
        wm_in, wm_out = input_dim // f, output_dim // f
        self.block = nn.ModuleList(
            [
                _Snake1d(input_dim),
                _Conv(input_dim, output_dim, 2 * stride, stride, transpose=True),
                nn.ELU(alpha=1.0),
                _Conv(
                    wm_in, wm_out, 2 * stride_wm, stride_wm,
                    transpose=True, weight_norm=False, causal=True, pad_mode="auto",
                ),
                _ResidualUnit(output_dim, dilation=1),
                _ResidualUnit(output_dim, dilation=3),
                _ResidualUnit(
                    output_dim // f, kernel=3, act="ELU", compress=2, causal=True,
                    pad_mode="auto", weight_norm=False, true_skip=True,
                ),
                _ResidualUnit(
                    output_dim // f, kernel=3, act="ELU", compress=2, causal=True,
                    pad_mode="auto", weight_norm=False, true_skip=True,
                ),
                _ResidualUnit(output_dim, dilation=9),
                nn.Identity(),
                nn.ELU(alpha=1.0),
                _Conv(
                    wm_out, wm_in, 2 * stride_wm, stride_wm,
                    weight_norm=False, causal=True, pad_mode="auto",
                ),
            ]
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        b = self.block
        x = b[1](b[0](x))
        x = b[4](x)
        x = b[5](x)
        return b[8](x)

    def forward_reuse(self, x: Tensor, spare: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward` for inference, recycling buffers; returns ``(output, spare)``.

        ``x`` is consumed; ``spare`` (free, shaped like ``x``, or None) receives its Snake.
        """
        b = self.block
        units = (b[4], b[5], b[8])
        if spare is None or spare.shape != x.shape:
            spare = None
        t = b[0](x, out=spare)
        del x, spare
        x = b[1](t)
        if not all(u.can_reuse(x) for u in units):
            for u in units:
                x = u(x)
            return x, None
        spare = t if t.shape == x.shape else torch.empty_like(x)
        del t
        for u in units:
            x, spare = u.forward_reuse(x, spare)
        return x, spare

    def forward_nwc(self, x: Tensor, spare: Tensor | None) -> tuple[Tensor, Tensor]:
        """:meth:`forward_reuse` on time-major ``[B, T, C]`` activations (see
        :meth:`_Conv.forward_nwc`); returns ``(output, spare)`` and consumes ``x``."""
        b = self.block
        units = (b[4], b[5], b[8])
        if spare is not None and spare.numel() != x.numel():
            spare = None
        t = b[0].forward_nwc(x, out=None if spare is None else spare.view(x.shape))
        del x, spare
        x = b[1].forward_nwc(t)
        spare = t.view(x.shape) if t.numel() == x.numel() else torch.empty_like(x)
        del t
        for u in units:
            x, spare = u.forward_reuse_nwc(x, spare)
        return x, spare

    def forward_reference(self, x: Tensor) -> Tensor:
        """Reference ``DecoderBlock.forward``: layers 0, 1, 4, 5, 8, 9 in sequence."""
        b = self.block
        x = b[1].forward_reference(b[0].forward_reference(x))
        for u in (b[4], b[5], b[8]):
            x = u.forward_reference(x)
        return x  # 9 is nn.Identity

    def wm_downsample_time_reference(self, h: Tensor) -> Tensor:
        """Reference ``upsample_group()(h)``: layers 7, 10, 11."""
        b = self.block
        return b[11].forward_reference(b[10](b[7].forward_reference(h)))

    def wm_upsample_time_reference(self, h: Tensor) -> Tensor:
        """Reference ``downsample_group()(h)``: layers 2, 3, 6."""
        b = self.block
        return b[6].forward_reference(b[3].forward_reference(b[2](h)))

    def wm_downsample_time_nwc(self, h: Tensor) -> Tensor:
        """:meth:`wm_downsample_time` on time-major ``[B, T, C]``."""
        b = self.block
        h = b[7].forward_elu_nwc(h)
        return b[11].forward_nwc(F.elu(h, b[10].alpha, inplace=True))

    def wm_upsample_time_nwc(self, h: Tensor) -> Tensor:
        """:meth:`wm_upsample_time` on time-major ``[B, T, C]``."""
        b = self.block
        h = b[3].forward_nwc(F.elu(h, b[2].alpha, inplace=True))
        return b[6].forward_elu_nwc(h)

    def wm_downsample_time(self, h: Tensor) -> Tensor:
        """Reference ``upsample_group`` (7, 10, 11): more channels, fewer frames."""
        b = self.block
        h = b[7](h)
        h = _act(b[10], h, inplace=True)  # the residual unit's output is a fresh tensor
        return b[11](h)

    def wm_upsample_time(self, h: Tensor) -> Tensor:
        """Reference ``downsample_group`` (2, 3, 6): fewer channels, more frames."""
        b = self.block
        h = _act(b[2], h, inplace=True)  # h is a fresh LSTM / residual-unit output
        h = b[3](h)
        return b[6](h)


class _LSTMBlock(nn.Module):
    """Reference ``LSTMBlock``: time-major LSTM over ``[B, C, T]`` with a skip."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, layers)

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(2, 0, 1)
        with _one_thread():
            y, _ = self.lstm(x)
        y = y + x
        return y.permute(1, 2, 0)

    def forward_nwc(self, x: Tensor) -> Tensor:
        """:meth:`forward` on time-major ``[B, T, C]`` (one intra-op thread)."""
        x = x.transpose(0, 1)
        with _one_thread():
            y, _ = self.lstm(x)
        return y.add_(x).transpose(0, 1).contiguous()

    def forward_reference(self, x: Tensor) -> Tensor:
        """Reference ``LSTMBlock.forward`` (torch's thread count as it is)."""
        x = x.permute(2, 0, 1)
        y, _ = self.lstm(x)
        y = y + x
        return y.permute(1, 2, 0)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, then restore the count.

    The watermark LSTMs step ~300 times through tiny GEMMs; with two OpenMP threads every step
    ends in a barrier, which on a shared 2-core CPU made one LSTM take 0.3-3 s instead of
    ~0.09 s single-threaded (same result: the per-step work is below the split threshold).
    """
    n = torch.get_num_threads()
    if n <= 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _MsgProcessor(nn.Module):
    """Reference ``MsgProcessor``: add the sum of one embedding per (bit index, bit value)."""

    def __init__(self, nbits: int, hidden_size: int) -> None:
        super().__init__()
        self.nbits = nbits
        self.hidden_size = hidden_size
        self.msg_processor = nn.Embedding(2 * nbits, hidden_size)

    def forward_reference(self, hidden: Tensor, msg: Tensor) -> Tensor:
        """Reference ``MsgProcessor.forward`` (the sum repeated along time, then added)."""
        indices = 2 * torch.arange(msg.shape[-1]).to(hidden.device)
        indices = indices.repeat(msg.shape[0], 1)
        indices = (indices + msg).long()
        aux = self.msg_processor(indices).sum(dim=-2)
        aux = aux.unsqueeze(-1).repeat(1, 1, hidden.shape[2])
        return hidden + aux

    def forward(self, hidden: Tensor, msg: Tensor) -> Tensor:
        indices = 2 * torch.arange(msg.shape[-1], device=hidden.device)
        indices = (indices.repeat(msg.shape[0], 1) + msg).long()
        aux = self.msg_processor(indices).sum(dim=-2)  # [B, hidden]
        return hidden + aux.unsqueeze(-1)


class _WatermarkEncoderBlock(nn.Module):
    """Reference ``WatermarkEncoderBlock`` with its default acts/norms (Snake/Tanh)."""

    def __init__(self, in_dim: int, out_dim: int, wm_channels: int, hidden: int, lstm_layers: int):
        super().__init__()
        self.pre = nn.Sequential(
            _Snake1d(in_dim),
            _Conv(in_dim, 1, 7),
            nn.Tanh(),
            _Conv(1, wm_channels, 7, weight_norm=False, causal=True, pad_mode="auto"),
        )
        self.post = nn.Sequential(
            _LSTMBlock(hidden, lstm_layers),
            nn.ELU(alpha=1.0),
            _Conv(hidden, out_dim, 7, weight_norm=False, causal=True, pad_mode="auto"),
        )

    def head(self, x: Tensor, spare: Tensor | None = None) -> Tensor:
        """``tanh(conv(snake(x)))``: both the watermark encoder's input and the carrier signal."""
        y = self.pre[1](self.pre[0](x, out=spare))
        return _act(self.pre[2], y, inplace=True)

    def post_process(self, h: Tensor) -> Tensor:
        h = self.post[0](h)
        h = _act(self.post[1], h, inplace=True)  # fresh LSTM-block output
        return self.post[2](h)


class _WatermarkDecoderBlock(nn.Module):
    """Reference ``WatermarkDecoderBlock``."""

    def __init__(self, in_dim: int, out_dim: int, channels: int, hidden: int, lstm_layers: int):
        super().__init__()
        self.pre = nn.Sequential(
            _Conv(in_dim, hidden, 7, weight_norm=False, causal=True, pad_mode="auto"),
            _LSTMBlock(hidden, lstm_layers),
        )
        self.post = nn.Sequential(
            nn.ELU(alpha=1.0),
            _Conv(channels, out_dim, 7, weight_norm=False, causal=True, pad_mode="auto"),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.pre(x)

    def post_process(self, h: Tensor) -> Tensor:
        h = _act(self.post[0], h, inplace=True)
        return self.post[1](h)


class _Watermarker(nn.Module):
    """Reference ``Watermarker`` (container; the data flow lives in ``_Decoder.watermark``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.encoder_block = _WatermarkEncoderBlock(
            dim, WM_LATENT, WM_CHANNELS, WM_HIDDEN, WM_LSTM_LAYERS
        )
        self.msg_processor = _MsgProcessor(WM_NBITS, WM_LATENT)
        self.decoder_block = _WatermarkDecoderBlock(
            WM_LATENT, 1, WM_CHANNELS, WM_HIDDEN, WM_LSTM_LAYERS
        )

    @property
    def nbits(self) -> int:
        return self.msg_processor.nbits

    def random_message(self, batch: int) -> Tensor:
        """Reference ``Watermarker.random_message``: global-RNG bits as float32 on the CPU."""
        return torch.randint(0, 2, (batch, self.nbits), dtype=torch.float32)


class _Decoder(nn.Module):
    """Reference ``Decoder`` (``blending="linear"``) with the watermarker."""

    def __init__(self, input_channel: int, channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [_Conv(input_channel, channels, 7)]
        output_dim = channels
        for i, (stride, wm_stride) in enumerate(zip(rates, WM_RATES, strict=False)):
            input_dim = channels // 2**i
            output_dim = channels // 2 ** (i + 1)
            layers.append(_DecoderBlock(input_dim, output_dim, stride, wm_stride))
        self.model = nn.ModuleList(layers)
        self.wm_model = _Watermarker(output_dim)
        self.alpha = WM_CHANNELS / WM_LATENT

    def forward(self, x: Tensor, message: Tensor | None = None) -> Tensor:
        recording = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if recording:
            for layer in self.model:
                x = layer(x)
            return self.watermark(x, message)
        # Inference: time-major activations from the first convolution to the watermark head
        # (see _Conv.forward_nwc), buffers recycled (see _ResidualUnit.forward_reuse).
        x = self.model[0].forward_nwc(x.transpose(1, 2).contiguous())
        spare: Tensor | None = None
        for layer in self.model[1:]:
            x, spare = layer.forward_nwc(x, spare)
        head = self.wm_model.encoder_block
        if spare is not None and spare.numel() != x.numel():
            spare = None
        s = head.pre[0].forward_nwc(x, out=None if spare is None else spare.view(x.shape))
        del x, spare
        carrier = head.pre[1].forward_nwc(s).transpose(1, 2)  # [B, T, 1] -> [B, 1, T], a view
        del s
        carrier = _act(head.pre[2], carrier, inplace=True)
        with _one_thread():
            return self._watermark_tail_nwc(carrier, message)

    def forward_reference(self, x: Tensor, message: Tensor | None = None) -> Tensor:
        """Reference ``Decoder.forward`` then ``Decoder.watermark``, computed the reference's
        way: weight norm recomputed by every convolution, Snake allocating its temporaries,
        ``tanh(conv(snake(x)))`` evaluated twice, the LSTMs on torch's thread count."""
        for layer in self.model:
            x = layer.forward_reference(x)
        wm = self.wm_model
        enc = wm.encoder_block
        blocks = list(self.model[1:])
        h = enc.pre[0].forward_reference(x)  # encoder_block(x) = pre(x)
        h = enc.pre[1].forward_reference(h)
        h = enc.pre[2](h)
        h = enc.pre[3].forward_reference(h)
        for blk in reversed(blocks):
            h = blk.wm_downsample_time_reference(h)
        h = enc.post[0].forward_reference(h)  # post_process
        h = enc.post[1](h)
        h = enc.post[2].forward_reference(h)
        if message is None:
            message = wm.random_message(x.shape[0])
        message = message.to(x.device)
        h = wm.msg_processor.forward_reference(h, message)
        dec = wm.decoder_block
        h = dec.pre[1].forward_reference(dec.pre[0].forward_reference(h))
        for blk in blocks:
            h = blk.wm_upsample_time_reference(h)
        h = dec.post[1].forward_reference(dec.post[0](h))
        carrier = enc.pre[2](enc.pre[1].forward_reference(enc.pre[0].forward_reference(x)))
        return carrier + self.alpha * h

    def watermark(
        self, x: Tensor, message: Tensor | None = None, spare: Tensor | None = None
    ) -> Tensor:
        """Reference ``Decoder.watermark``: ``tanh(conv(snake(x))) + alpha * wm(x, message)``.

        ``spare`` (optional, free, shaped like ``x``) holds the Snake of ``x``.
        """
        if spare is not None and spare.shape != x.shape:
            spare = None
        carrier = self.wm_model.encoder_block.head(x, spare)  # the reference computes it twice
        del x, spare
        return self._watermark_tail(carrier, message)

    def _watermark_tail_nwc(self, carrier: Tensor, message: Tensor | None) -> Tensor:
        """:meth:`_watermark_tail` with time-major activations (``[B, 1, T]`` is also
        ``[B, T, 1]``), the strided and transposed convolutions as in the main path."""
        wm = self.wm_model
        blocks = list(self.model[1:])
        batch, device = carrier.shape[0], carrier.device
        enc, dec = wm.encoder_block, wm.decoder_block
        h = enc.pre[3].forward_nwc(carrier.view(batch, -1, 1))
        for blk in reversed(blocks):
            h = blk.wm_downsample_time_nwc(h)
        h = enc.post[0].forward_nwc(h)
        h = enc.post[2].forward_nwc(F.elu(h, enc.post[1].alpha, inplace=True))
        if message is None:  # drawn here, like the reference, so seeded runs reproduce it
            message = wm.random_message(batch)
        h = wm.msg_processor(h.transpose(1, 2), message.to(device)).transpose(1, 2)
        h = dec.pre[1].forward_nwc(dec.pre[0].forward_nwc(h.contiguous()))
        for blk in blocks:
            h = blk.wm_upsample_time_nwc(h)
        h = dec.post[1].forward_nwc(F.elu(h, dec.post[0].alpha, inplace=True))
        return carrier + self.alpha * h.view(batch, 1, -1)

    def _watermark_tail(self, carrier: Tensor, message: Tensor | None) -> Tensor:
        """``carrier + alpha * wm(carrier, message)``, ``carrier = tanh(conv(snake(x)))``."""
        wm = self.wm_model
        blocks = list(self.model[1:])
        batch, device = carrier.shape[0], carrier.device
        h = wm.encoder_block.pre[3](carrier)
        for blk in reversed(blocks):
            h = blk.wm_downsample_time(h)
        h = wm.encoder_block.post_process(h)
        if message is None:  # drawn here, like the reference, so seeded runs reproduce it
            message = wm.random_message(batch)
        h = wm.msg_processor(h, message.to(device))
        h = wm.decoder_block(h)
        for blk in blocks:
            h = blk.wm_upsample_time(h)
        h = wm.decoder_block.post_process(h)
        return carrier + self.alpha * h


# --------------------------------------------------------------------------------------------
# Public module
# --------------------------------------------------------------------------------------------


class DACVAECodec(nn.Module):
    """The DACVAE codec as SAM Audio uses it: waveform <-> ``codebook_dim``-channel latent.

    ``state_dict()`` keys equal the reference's ``audio_codec.*`` keys without the prefix.
    ``encode``/``decode`` run under ``torch.inference_mode`` and return inference tensors.
    """

    def __init__(self, config: DACVAEConfig | Mapping[str, Any] | Any) -> None:
        super().__init__()
        cfg = DACVAEConfig.coerce(config)
        self.config = cfg
        latent = cfg.latent_dim
        self.encoder = _Encoder(cfg.encoder_dim, cfg.encoder_rates, latent)
        self.quantizer = _Bottleneck(latent, cfg.codebook_dim)
        self.decoder = _Decoder(latent, cfg.decoder_dim, cfg.decoder_rates)
        self.eval()

    # -- properties ---------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Waveform sample rate in Hz."""
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return self.config.hop_length

    @property
    def latent_dim(self) -> int:
        """Channels of ``encode``'s output / ``decode``'s input (``codebook_dim``)."""
        return self.config.codebook_dim

    @property
    def watermark_bits(self) -> int:
        """Length of the decoder's watermark message."""
        return self.decoder.wm_model.nbits

    def num_frames(self, num_samples: int) -> int:
        """Latent frames ``encode`` yields for ``num_samples`` samples (ceil to the hop)."""
        return -(-int(num_samples) // self.hop_length)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_state_dict(
        cls,
        config: DACVAEConfig | Mapping[str, Any] | Any,
        state_dict: Mapping[str, Tensor],
        prefix: str = "audio_codec.",
    ) -> DACVAECodec:
        """Build a codec and strictly load the ``prefix``-ed entries of ``state_dict``."""
        codec = cls(config)
        codec.load_codec_state_dict(state_dict, prefix=prefix)
        return codec

    def load_codec_state_dict(self, state_dict: Mapping[str, Tensor], prefix: str = "") -> None:
        """Strictly load the entries of ``state_dict`` that start with ``prefix``.

        Other entries are ignored (so a whole SAM Audio checkpoint can be passed with
        ``prefix="audio_codec."``). Any missing, unexpected or mis-shaped codec key raises
        :class:`CodecCheckpointError` listing them, before anything is copied.
        """
        sub = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in sub]
        unexpected = [k for k in sub if k not in own]
        mismatched = [
            f"{prefix}{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in sub.items()
            if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or mismatched:
            parts = []
            if not sub:
                parts.append(f"no key starts with {prefix!r}")
            if missing:
                parts.append(f"{len(missing)} missing: {_preview([prefix + k for k in missing])}")
            if unexpected:
                parts.append(
                    f"{len(unexpected)} unexpected: {_preview([prefix + k for k in unexpected])}"
                )
            if mismatched:
                parts.append(f"{len(mismatched)} with wrong shape: {_preview(mismatched)}")
            raise CodecCheckpointError(
                "codec checkpoint does not match the config: " + "; ".join(parts)
            )
        self.load_state_dict(sub, strict=True)
        self.clear_weight_cache()

    # -- speed helpers ------------------------------------------------------------------------

    def fuse_weight_norm(self) -> DACVAECodec:
        """Precompute every weight-norm weight now (otherwise done lazily on first use).

        Parameters are left untouched, so the module still loads / saves the reference layout;
        the cache is rebuilt automatically if a parameter changes. It holds one extra copy of
        the weight-normed weights (~210 MB for fixture A's 1536-wide decoder) and saves their
        recomputation (~40 ms) on every call; :meth:`set_weight_cache` turns it off.
        """
        self.set_weight_cache(True)
        for m in self.modules():
            if isinstance(m, _Conv):
                m.effective_weight()
        for m in self._nwc_convs():  # the layout the inference decoder convolves with
            if m.kernel_size > 1:
                m._wn_cache.pop("ncw", None)  # (one copy per conv, as before)
            m.packed_weight()
        return self

    def _nwc_convs(self) -> list[_Conv]:
        """The convolutions the inference decoder runs time-major (``_Conv.forward_nwc``)."""
        dec = self.decoder
        convs: list[_Conv] = [dec.model[0], dec.wm_model.encoder_block.pre[1]]
        for blk in dec.model[1:]:
            b = blk.block
            convs.append(b[1])
            for u in (b[4], b[5], b[8]):
                convs += [u.block[1], u.block[3]]
        return convs

    def set_weight_cache(self, enabled: bool) -> None:
        """Enable (default) or disable and free the weight-norm cache."""
        for m in self.modules():
            if isinstance(m, _Conv):
                m.cache_weight = enabled
                m.clear_cache()

    def clear_weight_cache(self) -> None:
        """Drop all cached weight-norm weights (rebuilt on next use while caching is on)."""
        for m in self.modules():
            if isinstance(m, _Conv):
                m.clear_cache()

    # -- inference ----------------------------------------------------------------------------

    def _pad(self, wav: Tensor) -> Tensor:
        n = wav.shape[-1]
        rem = n % self.hop_length
        if not rem:
            return wav
        pad = self.hop_length - rem
        if pad >= n:  # reflect padding needs more samples than it adds (the reference crashes)
            raise SAMAudioInputError(
                f"codec.encode got {n} samples; reflect-padding to a multiple of the hop "
                f"({self.hop_length}) needs more than {pad}"
            )
        return F.pad(wav, (0, pad), mode="reflect")

    @torch.inference_mode()
    def encode(self, wav: Tensor, *, naive: bool = False) -> Tensor:
        """``[B, 1, N]`` waveform -> ``[B, C, ceil(N / hop)]`` latent (VAE mean, no sampling).

        Reference ``DACVAEEncoder.forward``: reflect-pad on the right to a multiple of the hop,
        encoder, ``quantizer.in_proj``, first half of the channels. ``naive=True`` computes it
        the reference's way (weight norm on every call, allocating Snake), for benchmarks and
        parity checks.
        """
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise SAMAudioInputError(
                f"codec.encode expects a [B, 1, N] waveform, got {tuple(wav.shape)}"
            )
        if naive:
            z = self.encoder.forward_reference(self._pad(wav))
            mean, _ = self.quantizer.in_proj.forward_reference(z).chunk(2, dim=1)
            return mean
        z = self.encoder(self._pad(wav))
        mean, _ = self.quantizer.in_proj(z).chunk(2, dim=1)
        return mean

    @torch.inference_mode()
    def decode(
        self, latent: Tensor, watermark_message: Tensor | None = None, *, naive: bool = False
    ) -> Tensor:
        """``[B, C, T]`` latent -> ``[B, 1, T * prod(decoder_rates)]`` watermarked waveform.

        Reference ``DACVAE.decode``: ``quantizer.out_proj`` then the decoder, whose watermarker
        embeds ``watermark_message`` (``[B, 16]`` bits as 0/1 floats). With ``None`` the bits are
        drawn from torch's global generator exactly like the reference, so
        ``torch.manual_seed(s)`` beforehand reproduces its output.

        ``naive=True`` computes it the reference's way (``_Decoder.forward_reference``: weight
        norm on every call, channels-first convolutions, allocating Snake, the watermark head
        twice, the LSTMs on all threads), for benchmarks and parity checks; the default path
        gives the same waveform up to float32 rounding (~1e-6).
        """
        if latent.dim() != 3 or latent.shape[1] != self.latent_dim:
            raise SAMAudioInputError(
                f"codec.decode expects a [B, {self.latent_dim}, T] latent, got {tuple(latent.shape)}"
            )
        if watermark_message is not None and tuple(watermark_message.shape) != (
            latent.shape[0],
            self.watermark_bits,
        ):
            raise SAMAudioInputError(
                f"watermark_message must be [{latent.shape[0]}, {self.watermark_bits}], "
                f"got {tuple(watermark_message.shape)}"
            )
        if naive:
            emb = self.quantizer.out_proj.forward_reference(latent)
            return self.decoder.forward_reference(emb, watermark_message)
        emb = self.quantizer.out_proj(latent)
        return self.decoder(emb, watermark_message)

    def forward(self, wav: Tensor) -> Tensor:
        """Same as :meth:`encode` (the reference wrapper's ``forward``)."""
        return self.encode(wav)


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
