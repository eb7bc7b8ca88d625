"""Candidate rankers for SAM Audio's reranking (reference ``sam_audio/ranking/``).

``SAMAudio.separate(batch, reranking_candidates=k)`` solves the flow ODE from k noise draws per
batch item, decodes every candidate, asks a ranker to score them and keeps the best
(``torch.argmax`` over the candidates: the first of equal scores). A ranker is called with
keyword arguments only and returns scores ``[batch, k]``::

    ranker(extracted_audio=[Tensor[k, N_b], ...],   # the candidates' targets, one entry per item
           input_audio=[Tensor[k, N_b], ...],       # the mixture, repeated per candidate
           descriptions=[str, ...],
           videos=[Tensor[F, 3, H, W], ...] | None, # the masked videos (visual ranker)
           spans=[[(sign, start_s, end_s), ...], ...] | None,
           sample_rate=48000)

These are the reference's keyword names; a ranker takes the ones it needs and ignores the rest
(``**kwargs``), as the reference's do. ``spans`` is sonomask's: the reference never passes the
anchors to a ranker, which is one reason its sound-activity ranker could not run.

What this module has:

* ``Ranker`` and ``EnsembleRanker`` (reference ``ranking/ranker.py``: weighted sum of scores);
* ``SoundActivityRanker``: weight-free. The reference parses a ``sound_activity`` config and
  ships a module for it (``ranking/sound_activity.py``) but ``create_ranker`` never builds it,
  ``separate`` never gives it the spans, and it scores each item's candidates as one
  multi-channel signal. The version here is **sonomask's addition**: the same detector
  (pydub's ``detect_nonsilent``: 250 ms windows every 10 ms, silence at or below -40 dB under
  the loudest 250 ms window) and the same IoU / recall / precision, computed per candidate in
  torch, with the ``+`` spans as the reference regions;
* the SAM Audio Judge's and CLAP's rankers: ``model.sam_audio.judge.JudgeRanker`` and
  ``model.sam_audio.clap.ClapRanker`` (``create_ranker`` builds them for ``judge`` and ``clap``
  entries);
* ``UnavailableRanker``: stands for a configured ranker this port does not run (ImageBind: no
  maintained implementation in the package registries). Loading a config that names one works; scoring with it raises
  ``NotImplementedError`` saying which ranker is missing. It never returns scores.

``model.sam_audio.rankers.create_ranker(config_dict)`` builds a ranker from a
``visual_ranker`` / ``text_ranker`` entry of config.json.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from model.sam_audio.errors import ConfigError

Span = tuple[float, float]


class Ranker(ABC):
    """Scores candidates: ``ranker(extracted_audio=..., **context) -> Tensor[batch, k]``
    (higher is better). Reference ``Ranker`` (there an ``nn.Module``; rankers here hold no
    weights of the separation model and are kept out of its state dict)."""

    name = "ranker"

    @abstractmethod
    def score(self, extracted_audio: Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        """Scores [batch, k] for ``extracted_audio`` (per item a [k, N] tensor)."""

    def __call__(self, **kwargs: Any) -> torch.Tensor:
        extracted = kwargs.pop("extracted_audio")
        scores = self.score(extracted, **kwargs)
        k = extracted[0].shape[0] if len(extracted) else 0
        if scores.shape != (len(extracted), k):
            raise RuntimeError(
                f"ranker {self.name} returned scores of shape {tuple(scores.shape)}, expected "
                f"({len(extracted)}, {k})"
            )
        return scores


class EnsembleRanker(Ranker):
    """Weighted sum of several rankers' scores (reference ``EnsembleRanker``)."""

    name = "ensemble"

    def __init__(self, rankers: Sequence[Ranker], weights: Sequence[float]) -> None:
        if len(rankers) != len(weights):
            raise ConfigError(f"{len(rankers)} rankers but {len(weights)} weights")
        self.rankers = list(rankers)
        self.weights = [float(w) for w in weights]

    def score(self, extracted_audio: Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        total = None
        for weight, ranker in zip(self.weights, self.rankers, strict=True):
            part = weight * ranker(extracted_audio=extracted_audio, **kwargs)
            total = part if total is None else total + part
        assert total is not None
        return total


class UnavailableRanker(Ranker):
    """A ranker named by the config that this port cannot run yet; scoring raises."""

    def __init__(self, kind: str, config: Mapping[str, Any] | None = None) -> None:
        self.name = kind
        self.config = dict(config or {})

    def score(self, extracted_audio: Sequence[torch.Tensor], **kwargs: Any) -> torch.Tensor:
        raise NotImplementedError(
            f"the {self.name!r} ranker is not part of this port yet; rerank with "
            "SoundActivityRanker (ranker=... in SAMAudio.separate) or use reranking_candidates=1"
        )


# ---------------------------------------------------------------------------------------------
# Sound activity (weight-free; sonomask's addition, see the module docstring)
# ---------------------------------------------------------------------------------------------


def _window_rms(x: torch.Tensor, sr: int, starts_ms: torch.Tensor, win_ms: int, len_ms: int):
    """RMS of ``x`` [N] over the windows [s, min(s + win_ms, len_ms)) in ms, sliced as pydub
    does (sample = int(ms * sr / 1000))."""
    c = torch.zeros(x.numel() + 1, dtype=torch.float64)
    c[1:] = torch.cumsum(x.to(torch.float64) ** 2, 0)
    a = (starts_ms.to(torch.float64) * (sr / 1000.0)).long()
    ends = torch.clamp(starts_ms + win_ms, max=len_ms)
    b = (ends.to(torch.float64) * (sr / 1000.0)).long().clamp(max=x.numel())
    n = (b - a).clamp(min=1)
    return torch.sqrt((c[b] - c[a]).clamp(min=0) / n)


def peak_rms(wav: torch.Tensor, sample_rate: int, win_ms: int = 250, hop_ms: int = 100) -> float:
    """Loudest windowed RMS (reference ``get_peak_rms``; full scale 1.0); 0 for clips
    shorter than one window."""
    len_ms = round(1000 * wav.numel() / sample_rate)
    if len_ms - win_ms < 0:
        return 0.0
    starts = torch.arange(0, len_ms - win_ms + 1, hop_ms)
    return float(_window_rms(wav, sample_rate, starts, win_ms, len_ms).max())


def detect_nonsilent(
    wav: torch.Tensor,
    sample_rate: int,
    *,
    min_silence_ms: int = 250,
    silence_threshold_db: float = -40.0,
    threshold_mode: str = "rel_to_max",
    seek_ms: int = 10,
) -> list[Span]:
    """Non-silent regions of a mono waveform, in seconds (rounded to ms).

    The reference's ``detect_nonsilent`` (``ranking/sound_activity.py``, built on pydub):
    a window of ``min_silence_ms`` every ``seek_ms`` (plus one at the very end) is silent when
    its RMS is at or below the threshold; overlapping or touching silent windows form silent
    ranges and everything else is non-silent. ``rel_to_max``: the threshold is
    ``silence_threshold_db`` under the loudest 250 ms window (hop 100 ms); ``abs``: it is
    dB re full scale 1.0. The reference first converts to 16-bit and resamples to 24 kHz; this
    reads the float samples at their own rate, so a threshold crossing may move by the
    resampler's smoothing (a few ms at most on a steady signal).
    """
    if threshold_mode not in ("rel_to_max", "abs"):
        raise ConfigError(f"threshold_mode must be 'rel_to_max' or 'abs', got {threshold_mode!r}")
    wav = wav.detach().reshape(-1).to(torch.float64).cpu()
    len_ms = round(1000 * wav.numel() / sample_rate)
    if threshold_mode == "rel_to_max":
        peak = peak_rms(wav, sample_rate)
        ref = 10 ** (silence_threshold_db / 20) * peak if peak > 0 else 0.0
    else:
        ref = 10 ** (silence_threshold_db / 20)
    if len_ms < min_silence_ms:
        return [(0.0, round(len_ms / 1000, 3))]
    last = len_ms - min_silence_ms
    starts = list(range(0, last + 1, seek_ms))
    if last % seek_ms:
        starts.append(last)
    starts_t = torch.tensor(starts)
    rms = _window_rms(wav, sample_rate, starts_t, min_silence_ms, len_ms)
    silent_starts = starts_t[rms <= ref].tolist()
    if not silent_starts:
        return [(0.0, round(len_ms / 1000, 3))]
    silent: list[list[int]] = []
    begin = prev = silent_starts[0]
    for s in silent_starts[1:]:
        if s != prev + seek_ms and s > prev + min_silence_ms:
            silent.append([begin, prev + min_silence_ms])
            begin = s
        prev = s
    silent.append([begin, prev + min_silence_ms])
    if silent[0] == [0, len_ms]:
        return []
    out: list[list[int]] = []
    prev_end = 0
    for s, e in silent:
        out.append([prev_end, s])
        prev_end = e
    if silent[-1][1] != len_ms:
        out.append([prev_end, len_ms])
    if out and out[0] == [0, 0]:
        out.pop(0)
    return [(round(s / 1000, 3), round(e / 1000, 3)) for s, e in out]


def merge_spans(spans: Sequence[Span]) -> list[Span]:
    """Sorted, disjoint union of intervals (empty ones dropped)."""
    out: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in spans):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def span_agreement(hyp: Sequence[Span], ref: Sequence[Span]) -> dict[str, float]:
    """IoU, recall and precision of two sets of intervals (reference
    ``compute_iou_recall_precision``; both sides are merged first, so overlapping spans are
    not counted twice). Each is 0 when its denominator is 0."""
    hyp, ref = merge_spans(hyp), merge_spans(ref)
    inter = sum(max(0.0, min(h[1], r[1]) - max(h[0], r[0])) for h in hyp for r in ref)
    len_h = sum(e - s for s, e in hyp)
    len_r = sum(e - s for s, e in ref)
    union = len_h + len_r - inter
    return {
        "iou": inter / union if union > 0 else 0.0,
        "recall": inter / len_r if len_r > 0 else 0.0,
        "precision": inter / len_h if len_h > 0 else 0.0,
    }


class SoundActivityRanker(Ranker):
    """Scores a candidate by how its non-silent regions agree with the item's ``+`` spans
    (``metric``: iou, recall or precision; default iou as the reference config).

    sonomask's addition (the reference never builds its ``SoundActivityRanker``; see the module
    docstring). Differences from the reference module, each deliberate: every candidate is
    scored on its own (the reference passes the [k, N] candidates as one k-channel signal and
    returns one score per item); only ``+`` spans are reference regions (a ``-`` span says the
    target is absent there, so sound in it lowers IoU and precision; the reference would take
    every anchor's times); no pydub / torchcodec round trip. An item without ``+`` spans scores
    0 for every candidate, so the first candidate is kept.
    """

    name = "sound_activity"

    def __init__(
        self,
        threshold_mode: str = "rel_to_max",
        sil_threshold: float = -40.0,
        metric: str = "iou",
        min_silence_ms: int = 250,
        seek_ms: int = 10,
    ) -> None:
        if threshold_mode not in ("rel_to_max", "abs"):
            raise ConfigError(
                f"threshold_mode must be 'rel_to_max' or 'abs', got {threshold_mode!r}"
            )
        if metric not in ("iou", "recall", "precision"):
            raise ConfigError(f"metric must be iou, recall or precision, got {metric!r}")
        if not (isinstance(min_silence_ms, int) and min_silence_ms > 0):
            raise ConfigError(f"min_silence_ms must be a positive integer, got {min_silence_ms!r}")
        if not (isinstance(seek_ms, int) and seek_ms > 0):
            raise ConfigError(f"seek_ms must be a positive integer, got {seek_ms!r}")
        if not math.isfinite(float(sil_threshold)):
            raise ConfigError(f"sil_threshold must be finite, got {sil_threshold!r}")
        self.threshold_mode = threshold_mode
        self.sil_threshold = float(sil_threshold)
        self.metric = metric
        self.min_silence_ms = min_silence_ms
        self.seek_ms = seek_ms

    def regions(self, wav: torch.Tensor, sample_rate: int) -> list[Span]:
        """Non-silent regions of one candidate (seconds)."""
        return detect_nonsilent(
            wav,
            sample_rate,
            min_silence_ms=self.min_silence_ms,
            silence_threshold_db=self.sil_threshold,
            threshold_mode=self.threshold_mode,
            seek_ms=self.seek_ms,
        )

    def score(
        self,
        extracted_audio: Sequence[torch.Tensor],
        spans: Sequence[Sequence[tuple[str, float, float]]] | None = None,
        sample_rate: int = 48_000,
        **kwargs: Any,
    ) -> torch.Tensor:
        if spans is None:
            spans = [[] for _ in extracted_audio]
        if len(spans) != len(extracted_audio):
            raise ValueError(f"{len(spans)} span lists for {len(extracted_audio)} items")
        rows = []
        for candidates, item_spans in zip(extracted_audio, spans, strict=True):
            ref = [(float(s), float(e)) for sign, s, e in item_spans if sign == "+"]
            row = []
            for wav in candidates:
                hyp = self.regions(wav, sample_rate)
                row.append(span_agreement(hyp, ref)[self.metric] if ref else 0.0)
            rows.append(row)
        device = extracted_audio[0].device if len(extracted_audio) else None
        return torch.tensor(rows, dtype=torch.float32, device=device).reshape(
            len(extracted_audio), -1
        )


__all__ = [
    "EnsembleRanker",
    "Ranker",
    "SoundActivityRanker",
    "UnavailableRanker",
    "detect_nonsilent",
    "merge_spans",
    "peak_rms",
    "span_agreement",
]
