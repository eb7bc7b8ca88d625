"""The weight-free default separator: NMF of the spectrogram, steered by the prompt.

Why this exists: the main job must run on a fresh machine with no checkpoint download.
Nothing here is learned from data. The mixture's magnitude spectrogram is factorised
into K spectral templates and their activations over time (KL-divergence NMF). Each
component is then credited to the target by how well its activation follows the
*evidence* the prompt carries:

- video: the object's visual curves (``prompt.object_features``: motion, jolts, size,
  height, brightness; ``vision.evidence``) against the components' activations.
  ``model.attribution`` credits the object with the components whose combination
  follows one of its curves on held-out time blocks, and says how far above chance that
  fit is (the confidence); ``prompt.background_activity`` (motion outside the mask)
  claims components for the rest of the picture. Members are decided per timbre
  cluster (a sound's components are credited or rejected together, by whether the
  sound helps the credited loudness follow the curve on both held-out halves). The
  credit is then shared among components that sound alike (``model.timbre``: a
  melody's notes, a ring's partials), which recovers notes the picture missed and drops
  off-screen partials it took by chance. Each component's share of the object over time scales its weight as far as
  the confidence allows.
- spans: ``+`` spans mark where the target sounds, ``-`` spans where it is silent.
  A component's span score is the contrast ``(m+ - m-) / (m+ + m-)`` of its mean
  activation inside ``+`` spans versus inside ``-`` spans (or outside ``+`` spans when
  only ``+`` spans are given, and vice versa). Inside ``-`` spans the target is also
  gated to silence, since the user said it is absent there.

Scores are summed, turned into soft weights ``w = sigmoid((score - bias) / tau)``
(components with no evidence either way lean to the residual: a sound the picture
does not explain should not be attributed to the object), and the target/residual
models ``W (w * H)`` and ``W ((1 - w) * H)`` become a power Wiener mask on the complex
STFT. ``residual = audio - target``, so the two always add back to the mixture.

The whole factorisation and scoring is done ``MEMBERS`` times from different random starts
(seeds), and the members' Wiener masks are averaged, each weighted by its own low-confidence
gain, the whole turned down by the members' mean gain in dB: NMF's local optimum, and with it which
components the picture credits, depends on the start, and an average of a few is far less
erratic than any one (see ``MEMBERS``). The members' factorisations run side by side on a
small thread pool; their scoring runs one after the other (it holds the GIL).

The factorisation runs on frequency bands (full resolution below 4 kHz, coarser above;
see ``_bands``) to keep it fast; the masks are applied per STFT bin.

Long audio stays in bounded memory: the dictionary ``W`` is learned on at most
``MAX_DICT_FRAMES`` frames sampled evenly over the whole clip, then activations are
fitted block by block with ``W`` fixed (a per-frame problem, so blocks give the same
answer as one pass), scored globally, and the masked signal is rebuilt block by block
on one global frame grid (so block seams are exact, not crossfaded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import get_window
from threadpoolctl import threadpool_limits

from model.attribution import MIN_CONFIDENCE, span_flags, span_scores, video_match
from model.errors import ModelInputError
from model.separator import (
    MODEL_SAMPLE_RATE,
    ObjectsSeparation,
    ProgressCallback,
    Prompt,
    Separation,
    Windowing,
)
from model.timbre import smooth_by_timbre, timbre_similarity

N_FFT = 2048
"""43 ms window at 48 kHz (23 Hz bins): separates the harmonics of low voices and strings."""
HOP = 512
"""10.7 ms hop: ~94 frames/s, several per video frame at 25-50 fps."""
N_COMPONENTS = 24
N_ITER_DICT = 80
"""Multiplicative-update iterations for the dictionary (W and H)."""
N_ITER_ACT = 40
"""Iterations for activations alone (W fixed), used when the dictionary saw only a sample."""
MAX_DICT_FRAMES = 2400
"""Cap on frames the dictionary is learned from (~26 s of frames); bounds time and memory."""
BLOCK_FRAMES = 1920
"""Frames per processing block (~20 s at 48 kHz); bounds the STFT held in memory."""
SEED = 0x50A0
MEMBERS = 3
"""Factorisations averaged (seeds SEED, SEED + 1, ...). NMF finds a different local optimum
from each random start, and which components the picture credits changes with it: on the
dev benchmark single seeds ranged from +7.2 to +8.3 dB mean SI-SDRi (the tuned seed was the
best), while any three averaged gave +8.8 to +9.0 and lifted the worst category from
+2.9..+4.1 to +4.8..+5.7 dB. Averaging the members' Wiener masks is a plain variance
reduction: it does not depend on how the clips were made. Member m also shifts the picture's
cross-validation blocks by m / MEMBERS of a block (``attribution.video_match``'s
``cv_phase``): which seconds are fitted and which are held out is as arbitrary as the start,
and averaging over both is repeated cross-validation (dev: +8.81 -> +9.04 dB mean)."""
SCORE_BIAS = 0.1
SCORE_TAU = 0.1
VIDEO_VOTE = 0.5
LOW_CONFIDENCE_GAIN = 0.05
FULL_CONFIDENCE = 0.35
MASK_POWER = 2
"""Wiener mask exponent: target^p / (target^p + rest^p)."""
SHARE_C0 = 0.4
SHARE_C1 = 0.8
"""The time-varying share is ignored below confidence SHARE_C0 and fully used from SHARE_C1."""
"""-26 dB: the target's level when the picture explains almost none of the sound."""
"""A component the picture credits (or not) scores +-this; spans add their contrast."""
_EPS = 1e-9
_FLOOR = np.float32(1e-15)

NO_PROMPT_MESSAGE = (
    "the classical separator needs a visual prompt (a tracked mask) or span prompts; "
    "text alone needs --separator sam-audio"
)


# --------------------------------------------------------------------------- STFT on a global grid
# Frames are centred at t * hop for t = t_min .. t_max, chosen so every sample of [0, N) is
# covered by exactly n / hop frames. With a periodic Hann window and hop = n / 4 the
# squared-window overlap-add is constant, so block-wise analysis/synthesis on this grid is
# identical to a whole-signal pass, with no edge corrections.


def frame_range(a: int, b: int, n: int, hop: int) -> tuple[int, int]:
    """Indices (first, last inclusive) of the frames touching samples [a, b)."""
    half = n // 2
    return (a - half) // hop + 1, (b - 1 + half) // hop


def block_stft(x: np.ndarray, a: int, b: int, n: int, hop: int, win: np.ndarray) -> np.ndarray:
    """Complex STFT [T, C, n//2+1] of ``x`` [N, C] for the frames touching samples [a, b).

    Samples outside [0, N) read as zeros, so blocks at the edges need no special case.
    """
    t_lo, t_hi = frame_range(a, b, n, hop)
    start = t_lo * hop - n // 2
    length = (t_hi - t_lo) * hop + n
    seg = np.zeros((length, x.shape[1]), dtype=np.float32)
    lo, hi = max(start, 0), min(start + length, x.shape[0])
    if hi > lo:
        seg[lo - start : hi - start] = x[lo:hi]
    frames = np.lib.stride_tricks.sliding_window_view(seg, n, axis=0)[::hop]  # [T, C, n]
    return np.fft.rfft(frames * win, axis=-1).astype(np.complex64)


def block_istft(spec: np.ndarray, a: int, b: int, n: int, hop: int, win: np.ndarray) -> np.ndarray:
    """Samples [a, b) [b-a, C] rebuilt from ``spec`` as returned by ``block_stft(x, a, b)``.

    Least-squares overlap-add (window, sum, divide by the summed squared window), so an
    unmodified spectrogram gives back the input exactly.
    """
    r = n // hop
    t_lo, _ = frame_range(a, b, n, hop)
    n_frames, n_ch, _ = spec.shape
    y = (np.fft.irfft(spec, n=n, axis=-1).astype(np.float32) * win).reshape(n_frames, n_ch, r, hop)
    out = np.zeros((n_frames + r - 1, n_ch, hop), dtype=np.float32)
    for j in range(r):
        out[j : j + n_frames] += y[:, :, j, :]
    wsum = (win.astype(np.float64) ** 2).reshape(r, hop).sum(axis=0).astype(np.float32)
    out /= wsum[None, None, :]
    seg = out.transpose(0, 2, 1).reshape(-1, n_ch)
    start = t_lo * hop - n // 2
    return seg[a - start : b - start]


def stft_window(n: int) -> np.ndarray:
    """Periodic Hann: its squared overlap-add is flat at hop = n/4."""
    return get_window("hann", n, fftbins=True).astype(np.float32)


def _bands(n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and width of the NMF's frequency bands: full resolution below 4 kHz, then
    bands 2, 4 and 8 bins wide per octave (at most ~190 Hz at 48 kHz).

    Why: the factorisation's cost is linear in the number of bins, and above 4 kHz the
    spectral detail that tells sources apart survives this pooling; it cuts run time ~2.7x.
    """
    bin_hz = MODEL_SAMPLE_RATE / N_FFT
    starts: list[int] = []
    i = 0
    while i < n_bins:
        starts.append(i)
        f = i * bin_hz
        i += 1 if f < 4000 else 2 if f < 8000 else 4 if f < 16000 else 8
    st = np.asarray(starts)
    return st, np.diff(np.append(st, n_bins))


def _blocks(n_samples: int, block: int) -> list[tuple[int, int]]:
    return [(a, min(a + block, n_samples)) for a in range(0, n_samples, block)]


# --------------------------------------------------------------------------- NMF (KL divergence)


def _nmf_kl(
    v: np.ndarray,
    k: int,
    n_iter: int,
    rng: np.random.Generator,
    tick: Callable[[float], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Learn W [F, K] (columns sum to 1) and H [K, T] with V ~ W H under KL divergence."""
    n_freq, n_frames = v.shape
    w = rng.uniform(0.5, 1.5, (n_freq, k)).astype(np.float32)
    w /= w.sum(axis=0, keepdims=True)
    h = rng.uniform(0.5, 1.5, (k, n_frames)).astype(np.float32)
    h *= np.float32(v.sum(axis=0).mean() / k + _EPS)
    ratio = np.empty_like(v)  # V / (W H), computed in place: the updates are memory-bound
    for i in range(n_iter):
        # H update; W's columns sum to one so the denominator W^T 1 is 1.
        h *= w.T @ _ratio(v, w, h, ratio)
        w *= (_ratio(v, w, h, ratio) @ h.T) / (h.sum(axis=1)[None, :] + _EPS)
        norm = w.sum(axis=0) + _EPS
        w /= norm[None, :]
        h *= norm[:, None]
        # Keep values out of the subnormal range: tiny entries would stall the CPU ~10x.
        np.maximum(w, _FLOOR, out=w)
        np.maximum(h, _FLOOR, out=h)
        tick((i + 1) / n_iter)
    return w, h


def _activations(v: np.ndarray, w: np.ndarray, n_iter: int) -> np.ndarray:
    """Fit H with W fixed; each frame is independent, so blocks give the same answer."""
    k = w.shape[1]
    h = np.repeat(v.sum(axis=0, keepdims=True) / k + _EPS, k, axis=0).astype(np.float32)
    ratio = np.empty_like(v)
    for _ in range(n_iter):
        h *= w.T @ _ratio(v, w, h, ratio)
        np.maximum(h, _FLOOR, out=h)
    return h


def _ratio(v: np.ndarray, w: np.ndarray, h: np.ndarray, out: np.ndarray) -> np.ndarray:
    """V / (W H + eps) into ``out``."""
    np.matmul(w, h, out=out)
    out += _EPS
    return np.divide(v, out, out=out)


# --------------------------------------------------------------------------- the backend


def _validate(audio: np.ndarray, prompt: Prompt) -> tuple[np.ndarray, bool, bool]:
    if audio.ndim != 1:
        raise ModelInputError(f"audio must be mono [N] at 48 kHz, got shape {audio.shape}")
    audio = np.ascontiguousarray(audio, dtype=np.float32)
    if not np.all(np.isfinite(audio)):
        raise ModelInputError("audio contains NaN or infinite samples")
    has_video = prompt.object_activity is not None
    if has_video:
        if prompt.video_times is None:
            raise ModelInputError("object_activity was given without video_times")
        times = np.asarray(prompt.video_times)
        obj = np.asarray(prompt.object_activity)
        if times.ndim != 1 or obj.shape != times.shape or times.size < 2:
            raise ModelInputError(
                f"video_times {times.shape} and object_activity {obj.shape} must be "
                "matching 1-D arrays of at least 2 frames"
            )
        if prompt.background_activity is not None:
            if np.asarray(prompt.background_activity).shape != times.shape:
                raise ModelInputError("background_activity must have one value per video frame")
        if np.any(np.diff(times) <= 0):
            raise ModelInputError("video_times must be strictly increasing")
        if prompt.object_features is not None:
            feats = np.asarray(prompt.object_features)
            if feats.ndim != 2 or feats.shape[0] != times.size:
                raise ModelInputError(
                    f"object_features must be [frames, features] with {times.size} frames, "
                    f"got shape {feats.shape}"
                )
            if not np.all(np.isfinite(feats)):
                raise ModelInputError("object_features contains NaN or infinite values")
            names = prompt.feature_names
            if names is not None and len(names) != feats.shape[1]:
                raise ModelInputError(
                    f"feature_names names {len(names)} features, object_features has "
                    f"{feats.shape[1]}"
                )
    for s in prompt.spans:
        if s.sign not in ("+", "-") or not s.end > s.start:
            raise ModelInputError(f"bad span {s}: sign must be + or - and end > start")
    has_spans = bool(prompt.spans)
    if not has_video and not has_spans:
        if prompt.masked_video is not None:
            raise ModelInputError(
                "the classical separator reads the motion inside/outside the tracked mask "
                "(object_activity, background_activity), not masked_video; build the prompt "
                "with the activities or use --separator sam-audio"
            )
        raise ModelInputError(NO_PROMPT_MESSAGE)
    return audio, has_video, has_spans


class ClassicalSeparator:
    """Weight-free separation by prompt-steered NMF (see the module docstring)."""

    name = "classical"
    windowing = Windowing(seconds=60.0, overlap_seconds=2.0, hop=1920)
    """A long job is separated in minute-long windows (the worker cuts them; the 1920-sample
    grid keeps them on the same 25 Hz frame clock as SAM Audio's)."""

    def __init__(
        self, n_components: int = N_COMPONENTS, seed: int = SEED, members: int = MEMBERS
    ) -> None:
        if members < 1:
            raise ValueError("members must be at least 1")
        self.n_components = n_components
        self.seed = seed
        self.members = members

    def separate(
        self,
        audio: np.ndarray,
        prompt: Prompt,
        progress: ProgressCallback | None = None,
    ) -> Separation:
        """Split mono 48 kHz float32 ``audio`` [N] into the prompted sound and the rest."""
        # The factorised matrices are thin: a second BLAS thread only adds contention.
        with threadpool_limits(limits=1, user_api="blas"):
            many = self._separate(audio, [prompt], progress)
        return Separation(
            target=many.targets[0],
            residual=many.residual,
            backend=self.name,
            warnings=many.warnings[0],
            confidence=many.confidences[0],
        )

    def separate_objects(
        self,
        audio: np.ndarray,
        prompts: list[Prompt],
        progress: ProgressCallback | None = None,
    ) -> ObjectsSeparation:
        """Several objects from one factorisation of the mixture: each object scores every
        component from its own prompt, and where several claim a component it is shared in
        proportion to their credit (what is left goes to the residual). Each object's mask is
        the one it would get alone, so an object's stem depends on the others only where they
        claim the same sound. One object gives exactly what ``separate`` gives."""
        if not prompts:
            raise ModelInputError("separate_objects needs at least one prompt")
        with threadpool_limits(limits=1, user_api="blas"):
            return self._separate(audio, prompts, progress)

    # ~100 lines on purpose: the steps share the block spectrogram ``mag`` and its one-block
    # cache; cut apart they would pass half a dozen arrays back and forth.
    def _separate(
        self,
        audio: np.ndarray,
        prompts: list[Prompt],
        progress: ProgressCallback | None = None,
    ) -> ObjectsSeparation:
        checked = [_validate(np.asarray(audio), p) for p in prompts]
        audio = checked[0][0]
        report = progress or (lambda f, t: None)
        warnings: list[list[str]] = [[] for _ in prompts]
        for p, w in zip(prompts, warnings, strict=True):
            if p.text:
                w.append(
                    "the text prompt was ignored: the classical separator only uses the "
                    "visual and span prompts (use --separator sam-audio for text)"
                )
        n = audio.shape[0]
        if n == 0 or float(np.max(np.abs(audio))) < 1e-8:
            report(1.0, "silent input")
            return ObjectsSeparation(
                targets=[np.zeros(n, np.float32) for _ in prompts],
                residual=audio.copy(),
                backend=self.name,
                warnings=warnings,
                confidences=[None for _ in prompts],
            )

        x = audio[:, None]
        win = stft_window(N_FFT)
        t_min, t_max = frame_range(0, n, N_FFT, HOP)
        n_frames = t_max - t_min + 1
        frame_times = np.arange(t_min, t_max + 1) * (HOP / MODEL_SAMPLE_RATE)
        blocks = _blocks(n, BLOCK_FRAMES * HOP)
        scale = np.float32(1.0 / (np.mean(np.abs(audio)) + 1e-12))
        band_starts, band_widths = _bands(N_FFT // 2 + 1)

        def mag(a: int, b: int) -> tuple[np.ndarray, np.ndarray, int]:
            spec = block_stft(x, a, b, N_FFT, HOP, win)[:, 0, :]  # [T, F]
            t_lo, _ = frame_range(a, b, N_FFT, HOP)
            pooled = np.add.reduceat(np.abs(spec), band_starts, axis=1)  # [T, bands]
            return spec, np.ascontiguousarray(pooled.T) * scale, t_lo - t_min

        # 1. Dictionary from frames sampled evenly over the whole clip.
        stride = math.ceil(n_frames / MAX_DICT_FRAMES)
        report(0.0, "spectrogram")
        cached = None
        if len(blocks) == 1:
            cached = mag(0, n)
            v_dict = cached[1]
        else:
            picked = []
            for a, b in blocks:
                _, v, off = mag(a, b)
                idx = np.arange(v.shape[1]) + off
                keep = (idx % stride == 0) & (idx >= _first_owned(a, t_min))
                keep &= idx <= _last_owned(b, n, t_min)
                picked.append(v[:, keep])
            v_dict = np.concatenate(picked, axis=1)
        k = self.n_components

        def tick(f: float) -> None:
            if round(f * N_ITER_DICT) % 10 == 0:
                report(0.05 + 0.55 * f, "NMF dictionary")

        def learn(m: int) -> tuple[np.ndarray, np.ndarray]:
            rng = np.random.default_rng(self.seed + m)
            return _nmf_kl(v_dict, k, N_ITER_DICT, rng, tick if m == 0 else lambda f: None)

        # The members are independent factorisations; numpy releases the GIL in their
        # matrix products, so they run side by side on a small pool.
        with ThreadPoolExecutor(max_workers=_pool_size(self.members)) as pool:
            learned = list(pool.map(learn, range(self.members)))
            ws = [w for w, _ in learned]

            # 2. Activations for every frame (W fixed), block by block.
            if stride == 1:
                hs = [h for _, h in learned]
            else:
                hs = [np.zeros((k, n_frames), dtype=np.float32) for _ in ws]
                for i, (a, b) in enumerate(blocks):
                    _, v, off = mag(a, b)
                    fitted = pool.map(_activations, [v] * len(ws), ws, [N_ITER_ACT] * len(ws))
                    for h, hb in zip(hs, fitted, strict=True):
                        h[:, off : off + v.shape[1]] = hb
                    report(0.6 + 0.2 * (i + 1) / len(blocks), "NMF activations")

        # 3. Score components against each object's prompt, globally, per member;
        # objects that claim the same component share it in proportion to their credit.
        centres_hz = (band_starts + band_widths / 2) * (MODEL_SAMPLE_RATE / N_FFT)

        def score(m: int) -> list[_Scored]:
            similarity = timbre_similarity(ws[m], centres_hz, band_widths)
            return [
                _prompt_weights(hs[m], frame_times, n, p, hv, hsp, similarity, m / self.members)
                for p, (_, hv, hsp) in zip(prompts, checked, strict=True)
            ]

        # Scoring is mostly small numpy calls that hold the GIL: threads would only contend.
        scored = [score(m) for m in range(self.members)]  # [member][object]
        weights = [_compete([o.weights for o in member], n_frames) for member in scored]
        gates = [o.gate for o in scored[0]]  # from the spans alone: the same in every member
        # A member whose factorisation the picture explains poorly is turned down on its own
        # (so the members are in effect weighted by their confidence).
        gains = [[_low_confidence_gain(o) for o in member] for member in scored]
        confidences, levels = [], []
        for j in range(len(prompts)):
            for member in scored:
                warnings[j] += [note for note in member[j].notes if note not in warnings[j]]
            confs = [member[j].confidence for member in scored]
            confidences.append(None if confs[0] is None else float(np.mean(confs)))
            # The members' masks are mixed in proportion to their gains, and the whole is
            # turned down by their mean gain in dB: where one member of three finds a
            # chance fit for a silent object, the target drops ~17 dB rather than the ~9 an
            # arithmetic mean would give (unseen clips: a silent toy at -17.5 dB became -22.8).
            g = np.array([gm[j] for gm in gains], dtype=np.float64)
            gain = float(np.exp(np.log(g).mean()))
            levels.append(np.float32(gain / g.sum()))
            if gain < 0.5:
                # Not silenced outright: a faint best guess keeps a real but weakly moving
                # source recoverable, while a silent object's target stays far below the mix.
                warnings[j].append(
                    f"the object's motion explains little of the sound (confidence "
                    f"{confidences[j]:.2f}), so its target was turned down "
                    f"{-20 * np.log10(gain):.0f} dB; if the object does sound, "
                    "give a span where it does or use --separator sam-audio"
                )

        # 4. Wiener masks (each object's as it would be alone, shared where they add up to
        # more than one), averaged over the members, and resynthesis on the global frame
        # grid.
        targets = [np.empty(n, dtype=np.float32) for _ in prompts]
        for i, (a, b) in enumerate(blocks):
            spec, _, off = cached if cached is not None else mag(a, b)
            span = slice(off, off + spec.shape[0])
            masks = [np.zeros((len(band_widths), spec.shape[0]), np.float32) for _ in prompts]
            for w, h, member, weight in zip(ws, hs, weights, gains, strict=True):
                hb = h[:, span]
                # Each object's Wiener mask as it would be alone (its components against all
                # the rest), so an object's stem does not depend on which other objects the
                # job has; where the objects' masks add up to more than the bin, they share
                # it in proportion.
                alone = []
                for wt in member:
                    wb = wt[:, span]
                    pt = (w @ (wb * hb)) ** MASK_POWER
                    rest = (w @ (np.maximum(1.0 - wb, 0.0) * hb)) ** MASK_POWER
                    alone.append(pt / (pt + rest + _EPS))
                over = np.maximum(np.sum(alone, axis=0), 1.0)
                for j, m in enumerate(alone):
                    masks[j] += m * (weight[j] / over)
            for j, m in enumerate(masks):
                gate = gates[j][span] * levels[j]
                mask = np.repeat(m * gate[None, :], band_widths, axis=0)  # bands to STFT bins
                targets[j][a:b] = block_istft((spec * mask.T)[:, None, :], a, b, N_FFT, HOP, win)[
                    :, 0
                ]
            report(0.8 + 0.2 * (i + 1) / len(blocks), "masking")
        residual = audio - np.sum(targets, axis=0, dtype=np.float32)
        return ObjectsSeparation(
            targets=targets,
            residual=residual,
            backend=self.name,
            warnings=warnings,
            confidences=confidences,
        )


def _pool_size(members: int) -> int:
    """Threads for the members: no more than the cores this process may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(members, cores or 1))


def _compete(weights: list[np.ndarray], n_frames: int) -> list[np.ndarray]:
    """Each object's weight [K, T] per component and frame; where the objects' weights
    add up to more than one, each is scaled down in proportion so together they take the
    whole component and nothing more (one object: its weights unchanged)."""
    full = [wt if wt.ndim == 2 else np.repeat(wt[:, None], n_frames, axis=1) for wt in weights]
    if len(full) == 1:
        return full
    total = np.sum(full, axis=0)
    over = np.maximum(total, 1.0).astype(np.float32)
    return [(wt / over).astype(np.float32) for wt in full]


@dataclass
class _Scored:
    """One object's evidence in one member's factorisation."""

    weights: np.ndarray
    """[K] or [K, T]: how much each component is the target."""
    gate: np.ndarray
    """[T]: 0 where a ``-`` span says the target is absent."""
    confidence: float | None
    """The picture's confidence (None: no picture)."""
    spans_used: bool
    notes: list[str]


def _prompt_weights(
    h: np.ndarray,
    frame_times: np.ndarray,
    n: int,
    prompt: Prompt,
    has_video: bool,
    has_spans: bool,
    similarity: np.ndarray | None = None,
    cv_phase: float = 0.0,
) -> _Scored:
    """How much each component is the target, a per-frame gate that silences the target
    where a ``-`` span says it is absent, and the picture's confidence (None: no picture);
    the low-confidence gain is the caller's (``_low_confidence_gain``, combined over the
    members).

    ``similarity`` [K, K] (``model.timbre``): the picture's credit is shared among
    components that sound alike."""
    k, n_frames = h.shape
    warnings: list[str] = []
    score = np.zeros(k)
    confidence = None
    video = (
        video_match(h, frame_times, prompt, warnings, similarity, cv_phase) if has_video else None
    )
    spans = (
        span_scores(h, frame_times, n / MODEL_SAMPLE_RATE, prompt.spans, warnings)
        if has_spans
        else None
    )
    if video is not None:
        confidence = video.confidence
        credit = video.weights.astype(np.float64)
        if similarity is not None:
            credit = smooth_by_timbre(credit, similarity, h.sum(axis=1))
        score += VIDEO_VOTE * (2.0 * credit - 1.0)
    if spans is not None:
        score += spans
    if video is None and spans is None:
        warnings.append(
            "no usable evidence in the prompt: every component counts as neither target "
            "nor background, and the target is a weak, even share of the mixture"
        )
    weights = (1.0 / (1.0 + np.exp(-(score - SCORE_BIAS) / SCORE_TAU))).astype(np.float32)
    if video is not None:
        # The object's share of each component over time, trusted as far as the picture is.
        share = np.stack([np.interp(frame_times, video.times, row) for row in video.share])
        trust = np.clip((video.confidence - SHARE_C0) / (SHARE_C1 - SHARE_C0), 0.0, 1.0)
        weights = (weights[:, None] * np.clip(share, 0.0, 1.0) ** trust).astype(np.float32)
    gate = np.ones(n_frames, dtype=np.float32)
    if any(s.sign == "-" for s in prompt.spans):
        absent = span_flags(prompt.spans, frame_times, "-") & ~span_flags(
            prompt.spans, frame_times, "+"
        )
        gate = 1.0 - uniform_filter1d(absent.astype(np.float32), size=5, mode="nearest")
    return _Scored(weights, gate, confidence, spans is not None, warnings)


def _low_confidence_gain(scored: _Scored) -> np.float32:
    """The member's target gain: turned down when the picture explains little and no span
    says where the object sounds."""
    if scored.confidence is None or scored.spans_used:
        return np.float32(1.0)
    gain = _confidence_gain(scored.confidence)
    return np.float32(gain if gain < 0.5 else 1.0)


def _confidence_gain(confidence: float) -> float:
    """The target's gain for a confidence: LOW_CONFIDENCE_GAIN at or below
    MIN_CONFIDENCE, rising (in dB) to 1 at FULL_CONFIDENCE."""
    x = np.clip((confidence - MIN_CONFIDENCE) / (FULL_CONFIDENCE - MIN_CONFIDENCE), 0.0, 1.0)
    return float(LOW_CONFIDENCE_GAIN ** (1.0 - x))


def _first_owned(a: int, t_min: int) -> int:
    """First global frame index (0-based) a block starting at sample a is the owner of."""
    return (a + HOP - 1) // HOP - t_min if a > 0 else 0


def _last_owned(b: int, n: int, t_min: int) -> int:
    """Last global frame index a block ending at sample b owns (the next block owns the rest)."""
    if b >= n:
        return 1 << 62
    return (b + HOP - 1) // HOP - 1 - t_min
