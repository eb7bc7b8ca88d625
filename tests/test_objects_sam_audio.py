"""SAM Audio with several objects: one batch per window (one codec encode of the mixture,
one masked video per object, the DiT batched) equals one run per object, on the fixture
network (random weights: the sound is meaningless, the arithmetic is real)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAM_AUDIO_FIXTURE

FIXTURE = SAM_AUDIO_FIXTURE
pytestmark = pytest.mark.skipif(
    not (FIXTURE / "checkpoint.pt").is_file(), reason=f"SAM Audio fixture A not found at {FIXTURE}"
)


def _prompts(seconds: float, fps: float = 25.0):
    from model.separator import Prompt, Span

    rng = np.random.default_rng(5)
    n = int(seconds * fps)
    times = np.arange(n) / fps
    base = rng.integers(0, 255, (n, 48, 64, 3), dtype=np.uint8)
    prompts = []
    for j, (text, spans) in enumerate(
        [("a plucked string", [Span("+", 0.2, 0.9)]), ("", []), ("a drum", [Span("-", 0.0, 0.5)])]
    ):
        video = base.copy()
        video[:, 8 * j : 8 * j + 16, 10 * j : 10 * j + 20] = 0  # each object's own mask
        prompts.append(
            Prompt(text=text or None, spans=spans, masked_video=video, video_times=times)
        )
    return prompts


def test_a_three_object_batch_equals_three_single_runs_and_encodes_the_mixture_once():
    from model.backends.sam_audio import SamAudioSeparator

    # Few ODE steps and short windows: the fixture is slow on a CPU, the parity is the same.
    sep = SamAudioSeparator(
        FIXTURE,
        device="cpu",
        window_seconds=0.8,
        overlap_seconds=0.16,
        ode_opt={"method": "midpoint", "options": {"step_size": 0.25}},
    )
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(1.0 * 48_000))).astype(np.float32)
    prompts = _prompts(1.0)
    codec = sep.model.audio_codec
    calls = []
    real_encode = codec.encode

    def counting(x):
        calls.append(tuple(x.shape))
        return real_encode(x)

    codec.encode = counting
    try:
        many = sep.separate_objects(audio, prompts)
        batched = list(calls)
        calls.clear()
        singles = [sep.separate(audio, p) for p in prompts]
        single_calls = list(calls)
    finally:
        del codec.encode
    windows = len(sep.windowing.plan(len(audio)))
    assert windows == 2
    # One encode of the mixture per window, of one item, for all three objects ...
    assert len(batched) == windows and all(shape[0] == 1 for shape in batched)
    # ... where one run per object encodes it once per object and window.
    assert len(single_calls) == 3 * windows
    for j, one in enumerate(singles):
        assert np.max(np.abs(many.targets[j] - one.target)) < 1e-5
    assert np.max(np.abs(audio - many.residual - np.sum(many.targets, axis=0))) < 1e-6
    # The objects were told apart: their prompts differ, so do their targets.
    assert np.max(np.abs(many.targets[0] - many.targets[1])) > 1e-3


def test_shared_audio_refuses_a_batch_of_different_mixtures():
    import torch

    from model.backends.sam_audio import SamAudioSeparator
    from model.sam_audio import SAMAudioInputError

    sep = SamAudioSeparator(FIXTURE, device="cpu")
    a = torch.zeros(1, 4800)
    batch = sep.processor(descriptions=["", ""], audios=[a, a + 0.1])
    with pytest.raises(SAMAudioInputError, match="same audio"):
        sep.model.get_forward_args(batch, shared_audio=True)
