"""The ``sam-audio`` separation backend: SAM Audio behind sonomask's ``Separator`` protocol.

Long audio is cut into overlapping windows (default 30 s with 2 s overlap, ``model.windows``),
each window is separated on its own with the same noise seed, and the windows are joined with
complementary raised-cosine crossfades over the overlaps. Memory is bounded by one window.
(The worker windows a job's audio itself, at ``window_seconds``, and hands the model several
windows at once through ``separate_windows``; this windowing serves direct Python use.)

Windows batched when memory allows: windows of the same length (every window but the last)
go through the model as one batch, each item with the noise and bits of its own run, so a
window's stems are the same batched or alone (tested to 1e-5). On CUDA the first batch is
one window, its peak memory is measured, and later batches hold as many windows as fit in
80 % of the free memory (at most ``MAX_WINDOW_BATCH``); on the CPU a batch is no faster and
the default is one window (``window_batch`` overrides both). Prompts map as:

* ``prompt.text`` -> the description (None -> "", which the model treats as no text);
* ``prompt.spans`` -> span anchors, clipped to each window and shifted to its clock;
* ``prompt.masked_video`` [F, H, W, 3] uint8 (object already zeroed) with ``prompt.video_times``
  -> for each codec frame of the window (time ``start + k * hop / sr``) the nearest video frame
  among the frames whose times fall inside the window (widened by half a frame period). A
  window without any frame runs without the visual prompt (and says so in the warnings).

Reranking (``candidates=k``): each window is solved from k noise draws, scored by the ranker
(``ranker="activity"``: ``model.sam_audio.ranking.SoundActivityRanker`` against the window's
spans; None: the ranker the model's config names, as the reference) and the best is kept.
Candidate 0 always has the noise and watermark bits a one-candidate run uses, so k = 1 is the
plain separation. ``rerank_log`` holds each window's scores and chosen candidates of the last
call.

The model is loaded once per (path, device) per process and reused. The port
(``model.sam_audio``) raises its own errors; ``port_errors`` re-raises them as
``model.errors.ModelInputError`` / ``ModelLoadError`` with the same message, so what a user
reads is the port's message and the worker can map it to "bad input". Nothing here reads the
environment: the device comes from the caller.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.errors import ModelInputError, ModelLoadError
from model.sam_audio import (
    DFLT_ODE_OPT,
    SAMAudio,
    SAMAudioInputError,
    SAMAudioLoadError,
    SAMAudioProcessor,
)
from model.sam_audio.ranking import Ranker, SoundActivityRanker
from model.separator import (
    MODEL_SAMPLE_RATE,
    ObjectsSeparation,
    ProgressCallback,
    Prompt,
    Separation,
    Span,
    Windowing,
)
from model.windows import clip_spans, crossfade_gains

logger = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str], tuple[SAMAudio, SAMAudioProcessor]] = {}
_CACHE_LOCK = threading.Lock()

WINDOW_SECONDS = 30.0  # long audio is separated in windows this long ...
OVERLAP_SECONDS = 2.0  # ... joined over overlaps this long
_AUTOCAST = {None: None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_WINDOW_BATCH = 8  # windows in one batch at most (CUDA, when memory allows)
RANKERS = ("activity", "clap", "judge")
"""Names a caller may ask for (``make_ranker``)."""


def make_ranker(
    name: str | None, weights: str | None = None, device: str | None = None
) -> Ranker | None:
    """The ranker called ``name`` (None: the one the model's config names). ``weights``: the
    judge's folder or Hub id (local files only; default ``facebook/sam-audio-judge`` in the
    local Hugging Face cache) or CLAP's checkpoint (laion's ``630k-best.pt`` or its folder). Weights load here, so a
    missing checkpoint fails before any separation, in one line."""
    if name is None:
        return None
    if name == "activity":
        return SoundActivityRanker()
    if name == "judge":
        from model.sam_audio.judge import DEFAULT_JUDGE_ID, JudgeRanker, load_judge

        with port_errors():
            return JudgeRanker(load_judge(weights or DEFAULT_JUDGE_ID, device=device))
    if name == "clap":
        from model.sam_audio.clap import load_clap_ranker
        from model.sam_audio.errors import ConfigError

        if not weights:
            raise ModelLoadError(
                "the clap ranker needs laion's CLAP checkpoint (630k-best.pt with roberta-base's "
                "tokenizer files beside it): set SONOMASK_CLAP_MODEL"
            )
        try:
            return load_clap_ranker(weights, device=device)
        except ConfigError as err:
            raise ModelLoadError(str(err)) from err
    raise ModelInputError(f"unknown ranker {name!r}; choose one of {', '.join(RANKERS)}")


@contextlib.contextmanager
def port_errors() -> Iterator[None]:
    """Re-raise the port's own errors as sonomask's, message unchanged: the worker reports
    ``ModelInputError`` / ``ModelLoadError`` as one-line bad-input messages."""
    try:
        yield
    except SAMAudioInputError as err:
        raise ModelInputError(str(err)) from err
    except SAMAudioLoadError as err:
        raise ModelLoadError(str(err)) from err


def resolve_device(device: str | None = "auto") -> str:
    """The torch device for ``device``: cpu / cuda / cuda:N as given; ``"auto"`` (or None or
    "") is cuda when available, else cpu. Reads no environment: the worker passes
    ``Settings.device`` (``SONOMASK_DEVICE``)."""
    if not device or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ModelLoadError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return str(dev)


def _cache_key(model_path: str, device: str) -> tuple[str, str]:
    path = os.path.expanduser(model_path)
    return (os.path.abspath(path) if os.path.isdir(path) else model_path, device)


def load_cached(model_path: str, device: str) -> tuple[SAMAudio, SAMAudioProcessor]:
    """The model and processor for (path, device), loaded on first use in this process."""
    key = _cache_key(model_path, device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            with port_errors():
                model = SAMAudio.from_pretrained(model_path, device=device)
                processor = SAMAudioProcessor.from_config(model.config)
            _CACHE[key] = (model, processor)
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget loaded models (frees their memory once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# ---------------------------------------------------------------------------------------------
# Windows and crossfades (pure numpy, no model)
# ---------------------------------------------------------------------------------------------


def pick_frames(
    video_times: np.ndarray,
    frame_times: np.ndarray,
    start_s: float,
    end_s: float,
) -> np.ndarray | None:
    """Index of the video frame for each codec frame time, chosen among frames whose times lie
    in [start_s - p/2, end_s + p/2) (p = median frame period); None if there are none."""
    if len(video_times) > 1:
        period = float(np.median(np.diff(video_times)))
    else:
        period = 0.0
    lo, hi = start_s - period / 2, end_s + period / 2
    inside = np.nonzero((video_times >= lo) & (video_times < hi))[0]
    if len(inside) == 0:
        return None
    cand = video_times[inside]
    order = np.argsort(cand, kind="stable")
    cand, inside = cand[order], inside[order]
    pos = np.searchsorted(cand, frame_times)
    left = np.clip(pos - 1, 0, len(cand) - 1)
    right = np.clip(pos, 0, len(cand) - 1)
    use_right = np.abs(cand[right] - frame_times) < np.abs(frame_times - cand[left])
    return inside[np.where(use_right, right, left)]


@dataclass
class _PreparedPrompt:
    text: str
    spans: list[Span]
    video: np.ndarray | None  # [F, H, W, 3] uint8
    times: np.ndarray | None  # [F] seconds


@dataclass
class _WindowInputs:
    chunk: np.ndarray  # mono float32
    start: int  # its first sample on its prompts' clock
    prompts: list[_PreparedPrompt]
    anchors: list[list[tuple[str, float, float]]]  # per prompt, on the window's clock
    videos: list[torch.Tensor] | None  # per prompt [frames, 3, H, W] uint8, or None for all

    @property
    def key(self) -> tuple:
        """Windows with equal keys can share a batch."""
        return (len(self.chunk), len(self.prompts), self.videos is None, any(self.anchors))


@dataclass
class _WindowOutput:
    targets: list[np.ndarray]  # per prompt
    residuals: list[np.ndarray]
    rerank: dict | None = None  # the window's candidates' scores and the chosen ones
    spans: dict | None = None  # the window's predicted spans


class SamAudioSeparator:
    """SAM Audio as a sonomask ``Separator`` (``name = "sam-audio"``).

    model_path: a model folder (config.json + checkpoint.pt / model.safetensors) or a Hub repo
    id in the local HF cache. device: cpu / cuda / cuda:N / auto (default; None means auto:
    cuda when available); the caller chooses it (the worker: ``Settings.device``), nothing
    here reads the environment. window_seconds / overlap_seconds: long-audio windowing. seed: ODE noise and
    watermark bits (identical for every window). precision: "fp32" (default), "bf16" or
    "fp16" autocast of the DiT (CUDA). ode_opt: solver options as in ``SAMAudio.separate``.
    window_batch: windows of one length solved as one batch (None: ``window_batch_size``
    decides, 1 on the CPU); each window's result is the same as alone. ranker_weights: the
    judge's (or CLAP's) folder or Hub id for ``ranker`` (``make_ranker``).
    """

    name = "sam-audio"
    windowing: Windowing

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        device: str | None = "auto",
        *,
        window_seconds: float = WINDOW_SECONDS,
        overlap_seconds: float = OVERLAP_SECONDS,
        seed: int = 0,
        precision: str | None = None,
        ode_opt: dict | None = None,
        naive: bool = False,
        candidates: int = 1,
        ranker: str | None = None,
        predict_spans: bool = False,
        window_batch: int | None = None,
        ranker_weights: str | None = None,
    ) -> None:
        if precision not in _AUTOCAST:
            raise ModelLoadError(f"precision must be one of fp32, bf16, fp16, got {precision!r}")
        if not window_seconds > 0 or not 0 <= overlap_seconds < window_seconds:
            raise ModelInputError(
                "need window_seconds > overlap_seconds >= 0, got "
                f"{window_seconds}, {overlap_seconds}"
            )
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ModelInputError(f"candidates must be an integer >= 1, got {candidates!r}")
        self.candidates = candidates
        self.device = resolve_device(device)
        self.ranker = make_ranker(ranker, ranker_weights, self.device)
        self.rerank_log: list[dict] = []
        self.predict_spans = bool(predict_spans)
        self.span_log: list[dict] = []
        self.model_path = str(model_path)
        self.seed = int(seed)
        self.autocast_dtype = _AUTOCAST[precision]
        self.ode_opt = ode_opt or DFLT_ODE_OPT
        self.naive = naive
        if window_batch is not None and (
            isinstance(window_batch, bool) or not isinstance(window_batch, int) or window_batch < 1
        ):
            raise ModelInputError(f"window_batch must be an integer >= 1, got {window_batch!r}")
        self.window_batch = window_batch
        self._peak_per_window: int | None = None
        self.model, self.processor = load_cached(self.model_path, self.device)
        self.windowing = Windowing(
            float(window_seconds), float(overlap_seconds), self.model.hop_length
        )

    @staticmethod
    def windowing_for(model_path: str | os.PathLike[str]) -> Windowing:
        """The default windowing of the model at ``model_path``, from its config alone (no
        weights loaded): what the worker needs before the separation stage runs."""
        with port_errors():
            hop = SAMAudioProcessor.from_pretrained(model_path).audio_hop_length
        return Windowing(WINDOW_SECONDS, OVERLAP_SECONDS, int(hop))

    # -- input checks ----------------------------------------------------------------------

    @staticmethod
    def _check_audio(audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio)
        if audio.ndim == 2 and 1 in audio.shape:
            audio = audio.reshape(-1)
        if audio.ndim != 1 or audio.size == 0:
            raise ModelInputError(
                f"sam-audio expects mono audio [samples], got shape {audio.shape}"
            )
        if not np.issubdtype(audio.dtype, np.floating):
            raise ModelInputError(f"sam-audio expects float audio, got {audio.dtype}")
        audio = audio.astype(np.float32, copy=False)
        if not np.isfinite(audio).all():
            raise ModelInputError("audio contains NaN or infinite samples")
        return audio

    def _prepare_prompt(
        self, prompt: Prompt, duration: float, warnings: list[str]
    ) -> _PreparedPrompt:
        for span in prompt.spans:
            if span.sign not in ("+", "-"):
                raise ModelInputError(f"span sign must be '+' or '-', got {span.sign!r}")
            if not (0 <= span.start < span.end):
                raise ModelInputError(
                    f"span ({span.start}, {span.end}) must satisfy 0 <= start < end"
                )
        video, times = prompt.masked_video, prompt.video_times
        if video is not None:
            video = np.asarray(video)
            if video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
                raise ModelInputError(
                    f"masked_video must be uint8 [frames, H, W, 3], got shape {video.shape}"
                )
            if video.dtype != np.uint8:
                raise ModelInputError(f"masked_video must be uint8, got {video.dtype}")
            if times is None:
                times = (np.arange(len(video)) + 0.5) * (duration / len(video))
                warnings.append("no video_times given; assumed the frames span the audio evenly")
            times = np.asarray(times, dtype=np.float64).reshape(-1)
            if len(times) != len(video):
                raise ModelInputError(
                    f"video_times has {len(times)} entries for {len(video)} masked frames"
                )
            if not np.isfinite(times).all():
                raise ModelInputError("video_times contains NaN or infinite values")
        return _PreparedPrompt(
            text=prompt.text or "", spans=list(prompt.spans), video=video, times=times
        )

    # -- separation -----------------------------------------------------------------------------

    def separate(
        self,
        audio: np.ndarray,
        prompt: Prompt,
        progress: ProgressCallback | None = None,
    ) -> Separation:
        """Split mono 48 kHz float32 ``audio`` into target and residual (same length)."""
        targets, residuals, warnings = self._separate(audio, [prompt], progress)
        return Separation(
            target=targets[0],
            residual=residuals[0],
            backend=self.name,
            warnings=warnings,
            details=self._details(),
        )

    def _details(self) -> dict:
        """The last call's reranking and predicted spans (``Separation.details``)."""
        out: dict = {}
        if self.rerank_log:
            out["rerank"] = [dict(r) for r in self.rerank_log]
        if self.span_log:
            out["predicted_spans"] = [dict(r) for r in self.span_log]
        return out

    def separate_objects(
        self,
        audio: np.ndarray,
        prompts: list[Prompt],
        progress: ProgressCallback | None = None,
    ) -> ObjectsSeparation:
        """Several objects as one batch per window: the mixture is encoded by the codec
        once, each object brings its own masked video, text and spans, and the DiT solves
        them together with the same noise as a single run (so each target equals that
        object's ``separate``). The residual is the mixture less every target."""
        if not prompts:
            raise ModelInputError("separate_objects needs at least one prompt")
        targets, _, warnings = self._separate(audio, prompts, progress)
        audio = self._check_audio(audio)
        residual = audio - np.sum(targets, axis=0, dtype=np.float32)
        return ObjectsSeparation(
            targets=targets,
            residual=residual,
            backend=self.name,
            warnings=[list(warnings) for _ in prompts],
            confidences=[None for _ in prompts],
            details=self._details(),
        )

    def _separate(
        self,
        audio: np.ndarray,
        prompts: list[Prompt],
        progress: ProgressCallback | None,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
        """Targets and the model's own residuals, one per prompt, window by window (windows
        of one length batched as ``window_batch_size`` allows)."""
        audio = self._check_audio(audio)
        sr = self._sample_rate()
        n = len(audio)
        warnings: list[str] = []
        self.rerank_log = []
        self.span_log = []
        prepared = [self._prepare_prompt(p, n / sr, warnings) for p in prompts]

        windows = self.windowing.plan(n)
        targets = [np.zeros(n, dtype=np.float32) for _ in prompts]
        residuals = [np.zeros(n, dtype=np.float32) for _ in prompts]
        n_win = len(windows)
        no_video = []
        objects = f" ({len(prompts)} objects)" if len(prompts) > 1 else ""

        def step(frac: float, what: str, first: int, count: int) -> None:
            if progress is not None:
                which = f"{first + 1}" if count == 1 else f"{first + 1}-{first + count}"
                progress((first + frac * count) / n_win, f"window {which}/{n_win}{objects}: {what}")

        inputs = (self._window_inputs(audio[s:e], s, prepared) for s, e in windows)
        i = 0
        for group in self._groups(inputs):
            count = len(group)
            outs = self._run_windows(group, lambda f, m, i=i, c=count: step(f, m, i, c))
            for w, out in zip(group, outs, strict=True):
                if any(p.video is not None for p in prepared) and w.videos is None:
                    no_video.append(i + 1)
                self._log(out)
                g = crossfade_gains(windows, i)
                s, e = windows[i]
                for j in range(len(prompts)):
                    targets[j][s:e] += g * out.targets[j]
                    residuals[j][s:e] += g * out.residuals[j]
                i += 1
        if self.predict_spans and not self.span_log:
            warnings.append(
                "span prediction did not run: the model's config names no span predictor, "
                "or every window had spans given"
            )
        if no_video:
            warnings.append(
                f"no video frames fall in window(s) {no_video}; those ran without the visual prompt"
            )
        if progress is not None:
            progress(1.0, "separated")
        return targets, residuals, warnings

    def separate_windows(
        self,
        chunks: list[np.ndarray],
        prompts: list[list[Prompt]],
        progress: ProgressCallback | None = None,
    ) -> list[list[Separation]]:
        """Several windows of one clip at once, each with its own prompts (already on the
        window's clock, as ``separate`` takes them): per window, one ``Separation`` per prompt,
        each equal to ``separate(chunk, prompt)`` (the same noise and bits; batched as
        ``window_batch_size`` allows). Used by the worker, which keeps each window's result."""
        if len(chunks) != len(prompts) or not chunks:
            raise ModelInputError("separate_windows needs one list of prompts per window")
        sr = self._sample_rate()
        out: list[list[Separation]] = []
        self.rerank_log, self.span_log = [], []
        inputs = []
        notes: list[list[str]] = []
        for chunk, items in zip(chunks, prompts, strict=True):
            chunk = self._check_audio(chunk)
            warnings: list[str] = []
            prepared = [self._prepare_prompt(p, len(chunk) / sr, warnings) for p in items]
            inputs.append(self._window_inputs(chunk, 0, prepared))
            notes.append(warnings)
        done = 0
        for group in self._groups(iter(inputs)):

            def step(f: float, m: str, first: int = done, count: int = len(group)) -> None:
                if progress is not None:
                    progress((first + f * count) / len(inputs), m)

            for w, res in zip(group, self._run_windows(group, step), strict=True):
                warnings = notes[done]
                if any(p.video is not None for p in w.prompts) and w.videos is None:
                    warnings.append(
                        "no video frames fall in this window; it ran without the visual prompt"
                    )
                self._log(res)
                details: dict = {}
                if res.rerank is not None:
                    details["rerank"] = [dict(res.rerank)]
                if res.spans is not None:
                    details["predicted_spans"] = [dict(res.spans)]
                out.append(
                    [
                        Separation(t, r, self.name, warnings=list(warnings), details=details)
                        for t, r in zip(res.targets, res.residuals, strict=True)
                    ]
                )
                done += 1
        if progress is not None:
            progress(1.0, "separated")
        return out

    def window_batch_size(self, window_samples: int | None = None) -> int:
        """How many windows go through the model as one batch.

        ``window_batch`` when given; else 1 on the CPU (a batch is no faster there and holds
        more in memory) and, on CUDA, as many as fit in 80 % of the free memory by the peak
        the last batch needed per window (the first batch is one window, measured)."""
        if self.window_batch is not None:
            return self.window_batch
        if not self.device.startswith("cuda") or self._peak_per_window is None:
            return 1
        free, _ = torch.cuda.mem_get_info(torch.device(self.device))
        return max(1, min(MAX_WINDOW_BATCH, int(0.8 * free // max(1, self._peak_per_window))))

    def _log(self, out: _WindowOutput) -> None:
        if out.rerank is not None:
            self.rerank_log.append(out.rerank)
        if out.spans is not None:
            self.span_log.append(out.spans)

    def _sample_rate(self) -> int:
        sr = self.model.sample_rate
        if sr != MODEL_SAMPLE_RATE:
            raise ModelLoadError(f"model sample rate is {sr}, sonomask feeds {MODEL_SAMPLE_RATE}")
        return sr

    def _groups(self, inputs: Iterator[_WindowInputs]) -> Iterator[list[_WindowInputs]]:
        """Consecutive windows that can share a batch: the same length (no padding, so each
        is computed exactly as alone), all with or all without video and anchors."""
        group: list[_WindowInputs] = []
        for w in inputs:
            if group and (w.key != group[0].key or len(group) >= self.window_batch_size()):
                yield group
                group = []
            group.append(w)
        if group:
            yield group

    def _window_inputs(
        self, chunk: np.ndarray, start: int, prompts: list[_PreparedPrompt]
    ) -> _WindowInputs:
        """What the processor needs for one window: each prompt's anchors clipped to it and
        its masked frames picked at the codec's frame times (None for all if one has none)."""
        sr, hop = self.model.sample_rate, self.model.hop_length
        n = len(chunk)
        start_s, end_s = start / sr, (start + n) / sr
        anchors = [
            [(sp.sign, sp.start, sp.end) for sp in clip_spans(p.spans, start_s, end_s)]
            for p in prompts
        ]
        videos: list[torch.Tensor] | None = []
        for p in prompts:
            clip = None
            if p.video is not None:
                frames = math.ceil(n / hop)
                frame_times = start_s + np.arange(frames) * hop / sr
                idx = pick_frames(p.times, frame_times, start_s, end_s)
                if idx is not None:
                    clip = torch.from_numpy(np.ascontiguousarray(p.video[idx])).permute(0, 3, 1, 2)
            if clip is None:
                videos = None  # the processor takes videos for all items or none
                break
            videos.append(clip)
        return _WindowInputs(chunk, start, prompts, anchors, videos)

    def _run_windows(self, group: list[_WindowInputs], step) -> list[_WindowOutput]:
        """Every prompt of every window of ``group`` as one batch (windows x prompts items;
        one codec encode of the mixture when there is one window): per window, the targets,
        residuals and what reranking and span prediction did. Every item starts from the
        same noise and bits as a single run."""
        model, proc = self.model, self.processor
        sr = model.sample_rate
        b = len(group[0].prompts)
        n = len(group[0].chunk)
        anchors = [a for w in group for a in w.anchors]
        videos = None if group[0].videos is None else [v for w in group for v in w.videos]
        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
            base = torch.cuda.memory_allocated(torch.device(self.device))
        with port_errors():
            batch = proc(
                descriptions=[p.text for w in group for p in w.prompts],
                audios=[
                    torch.from_numpy(np.ascontiguousarray(w.chunk))[None]
                    for w in group
                    for _ in range(b)
                ],
                anchors=anchors if any(anchors) else None,
                masked_videos=videos,
            )
            gen = torch.Generator().manual_seed(self.seed)
            frames = int(batch.sizes[0])
            shape = (frames, 2 * model.config.latent_channels)
            noise = torch.randn(1, *shape, generator=gen)
            bits = int(getattr(model.audio_codec, "watermark_bits", 16))
            message = torch.randint(0, 2, (2, bits), generator=gen, dtype=torch.float32)
            k = self.candidates
            if k > 1:  # candidate 0 keeps the one-candidate draws; the others follow them
                noise = torch.cat([noise, torch.randn(k - 1, *shape, generator=gen)])
                extra = torch.randint(0, 2, (2 * (k - 1), bits), generator=gen)
                message = torch.cat([message, extra.float()])
            items = b * len(group)
            # Every item starts from the same noise and bits as its single run would.
            result = model.separate(
                batch,
                noise=noise.repeat(items, 1, 1),
                ode_opt=self.ode_opt,
                reranking_candidates=k,
                watermark_message=message.repeat(items, 1),
                naive=self.naive,
                autocast_dtype=self.autocast_dtype,
                progress=step,
                shared_audio=b > 1 and len(group) == 1,
                ranker=self.ranker,
                predict_spans=self.predict_spans,
            )
        if cuda:
            peak = torch.cuda.max_memory_allocated(torch.device(self.device)) - base
            self._peak_per_window = max(self._peak_per_window or 0, math.ceil(peak / len(group)))
        outs = []
        for wi, w in enumerate(group):
            rows = slice(wi * b, (wi + 1) * b)
            start_s, end_s = w.start / sr, (w.start + n) / sr
            out = _WindowOutput(
                [t[:n].float().cpu().numpy() for t in result.target[rows]],
                [r[:n].float().cpu().numpy() for r in result.residual[rows]],
            )
            if result.scores is not None:
                out.rerank = {
                    "start_s": start_s,
                    "end_s": end_s,
                    "ranker": result.ranker,
                    "scores": result.scores[rows].float().cpu().tolist(),
                    "chosen": result.chosen[rows].tolist(),
                }
            if result.spans is not None:
                out.spans = {
                    "start_s": start_s,
                    "end_s": end_s,
                    "applied": bool(result.spans_applied),
                    "spans": [
                        [[sign, start_s + a, start_s + e] for sign, a, e in item]
                        for item in result.spans[rows]
                    ],
                }
            outs.append(out)
        return outs
