"""Which NMF components sound alike: the timbre grouping of the weight-free separator.

Why: the picture credits components one by one, and some are missed or taken wrongly. A
melody's notes are separate components active at different times (so they do not
co-activate with each other), but they share the instrument's spectral envelope; an
off-screen ring's components share the ring's. Computational auditory scene analysis
groups partials by such common timbre; here each component's template is summarised by
its mel-cepstrum (the shape of its spectral envelope, independent of level and of the
exact pitch), and a component's credit is pulled towards the credit of the components
that sound like it (``smooth_by_timbre``). ``timbre_clusters`` groups the components
into sounds, so that ``model.attribution`` can credit or reject a sound's components
together.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.fft import dct
from scipy.spatial.distance import squareform

N_MELS = 40
N_CEPS = 12
"""Cepstral coefficients 1..N_CEPS: the envelope's shape without its level (c0)."""
MEL_LO_HZ, MEL_HI_HZ = 60.0, 16000.0
TIMBRE_PULL = 0.5
"""How far a component's credit moves towards that of the components that sound like it."""
CLUSTER_DISTANCE = 0.6
"""Components closer than this in average cepstral distance (1 - similarity, average
linkage) are one sound. A sound's own components are typically +0.4..+0.9 alike and two
different sounds' around -0.4..+0.2, so 0.6 sits in the gap (on the dev benchmark 0.5 and
0.7 gave a mean SI-SDRi within 0.1 dB of 0.6's)."""
_EPS = 1e-9


def _mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def mel_filterbank(centres_hz: np.ndarray) -> np.ndarray:
    """Triangular mel filters [N_MELS, bins] over bins at ``centres_hz``."""
    mel = _mel(np.asarray(centres_hz, dtype=np.float64))
    edges = np.linspace(_mel(np.array(MEL_LO_HZ)), _mel(np.array(MEL_HI_HZ)), N_MELS + 2)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise = (mel[None, :] - lo) / (mid - lo)
    fall = (hi - mel[None, :]) / (hi - mid)
    return np.clip(np.minimum(rise, fall), 0.0, None)


def timbre_similarity(
    templates: np.ndarray, centres_hz: np.ndarray, widths: np.ndarray
) -> np.ndarray:
    """Cosine similarity [K, K] of the components' mel-cepstra (mean over components removed).

    ``templates`` [bins, K] are NMF spectral templates over (possibly pooled) frequency bins
    with centre frequencies ``centres_hz`` and widths ``widths`` (in STFT bins).
    """
    density = templates.astype(np.float64) / np.asarray(widths, dtype=np.float64)[:, None]
    log_mel = np.log(mel_filterbank(centres_hz) @ density + _EPS)  # [N_MELS, K]
    ceps = dct(log_mel, axis=0, norm="ortho")[1 : N_CEPS + 1].T  # [K, N_CEPS]
    ceps -= ceps.mean(axis=0, keepdims=True)
    ceps /= np.linalg.norm(ceps, axis=1, keepdims=True) + _EPS
    return ceps @ ceps.T


def smooth_by_timbre(
    credit: np.ndarray, similarity: np.ndarray, energy: np.ndarray, pull: float = TIMBRE_PULL
) -> np.ndarray:
    """Each component's credit moved ``pull`` of the way to the loudness-weighted credit of
    the components that sound like it (similarity squared, negative similarity ignored).

    A component that sounds like no other keeps its credit.
    """
    affinity = np.clip(similarity, 0.0, None) ** 2
    np.fill_diagonal(affinity, 0.0)
    affinity *= np.asarray(energy, dtype=np.float64)[None, :]
    total = affinity.sum(axis=1)
    neighbours = (affinity @ credit) / np.maximum(total, _EPS)
    return np.where(total > _EPS, (1.0 - pull) * credit + pull * neighbours, credit)


def timbre_clusters(similarity: np.ndarray, distance: float = CLUSTER_DISTANCE) -> np.ndarray:
    """A cluster label per component: average-linkage groups of components that sound
    alike (``similarity`` [K, K] from ``timbre_similarity``)."""
    k = similarity.shape[0]
    if k < 2:
        return np.zeros(k, dtype=int)
    dist = np.clip(1.0 - (similarity + similarity.T) / 2.0, 0.0, None)
    np.fill_diagonal(dist, 0.0)
    return fcluster(linkage(squareform(dist, checks=False), "average"), distance, "distance")
