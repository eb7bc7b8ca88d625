"""Long audio in windows: where they fall, how they are joined, what prompt each one sees.

Any backend separates a long clip window by window (memory bounded by one window); the
worker runs the windows one at a time and keeps each result on disk, so a crash costs
at most one window. Windows overlap and are joined with complementary raised-cosine
crossfades (``sin²`` in, ``cos²`` out): the gains of two neighbours sum to exactly 1
at every sample, so the mixture (which both windows see identically) and therefore
``target + residual`` come back unchanged through the joins. Equal-power (``sin``/``cos``)
fades would be right only for unrelated signals; here both sides carry the same sound
and would swell by up to 3 dB mid-overlap.
"""

from __future__ import annotations

import numpy as np

from model.separator import Prompt, Span


def crossfade_gains(windows: list[tuple[int, int]], index: int) -> np.ndarray:
    """Gain curve (float32, one per sample) of window ``index`` of ``windows``.

    ``sin²`` fade-in over the overlap with the previous window, ``cos²`` fade-out over the
    overlap with the next, 1 elsewhere; summed over all windows the gains are 1 at every
    sample (module docstring).
    """
    s, e = windows[index]
    g = np.ones(e - s, dtype=np.float64)
    if index > 0:
        ov = windows[index - 1][1] - s
        if ov > 0:
            g[:ov] *= np.sin(0.5 * np.pi * (np.arange(ov) + 0.5) / ov) ** 2
    if index + 1 < len(windows):
        ov = e - windows[index + 1][0]
        if ov > 0:
            g[e - s - ov :] *= np.cos(0.5 * np.pi * (np.arange(ov) + 0.5) / ov) ** 2
    return g.astype(np.float32)


def clip_spans(spans: list[Span], start_s: float, end_s: float) -> list[Span]:
    """Spans cut to [start_s, end_s) and moved onto the window's clock (0 = its start)."""
    out = []
    for span in spans:
        s, e = max(span.start, start_s), min(span.end, end_s)
        if e > s:
            out.append(Span(span.sign, s - start_s, e - start_s))
    return out


def frames_in_window(video_times: np.ndarray, start_s: float, end_s: float) -> tuple[int, int]:
    """[a, b) indices of the (ascending) frame times inside the window, widened by half a
    frame period on each side so the frame showing the window's first sound is included."""
    times = np.asarray(video_times, dtype=np.float64)
    period = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    a = int(np.searchsorted(times, start_s - period / 2, side="left"))
    b = int(np.searchsorted(times, end_s + period / 2, side="left"))
    return a, max(a, b)


def window_prompt(prompt: Prompt, start_s: float, end_s: float) -> Prompt:
    """The part of ``prompt`` a window [start_s, end_s) sees, on the window's clock.

    Spans are clipped; per-frame arrays (masked_video, activities, video_times) are
    sliced to the frames inside the window (``frames_in_window``). ``masked_video`` may
    be anything that returns an array for a slice (frames built on demand for a long
    clip), so only the window's frames are ever materialised. A window without any
    frame gets no video fields.
    """
    out = Prompt(text=prompt.text, spans=clip_spans(prompt.spans, start_s, end_s))
    if prompt.video_times is None:
        return out
    times = np.asarray(prompt.video_times, dtype=np.float64)
    a, b = frames_in_window(times, start_s, end_s)
    if b <= a:
        return out
    out.video_times = times[a:b] - start_s
    if prompt.masked_video is not None:
        out.masked_video = np.asarray(prompt.masked_video[a:b])
    if prompt.object_activity is not None:
        out.object_activity = np.asarray(prompt.object_activity[a:b])
    if prompt.background_activity is not None:
        out.background_activity = np.asarray(prompt.background_activity[a:b])
    if prompt.object_features is not None:
        out.object_features = np.asarray(prompt.object_features[a:b])
        out.feature_names = prompt.feature_names
    return out
