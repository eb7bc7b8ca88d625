"""SAM Audio with windows batched: the same stems as one window at a time, on the fixture
network (random weights: the sound is meaningless, the arithmetic is real)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SAM_AUDIO_FIXTURE

FIXTURE = SAM_AUDIO_FIXTURE
pytestmark = pytest.mark.skipif(
    not (FIXTURE / "checkpoint.pt").is_file(), reason=f"SAM Audio fixture A not found at {FIXTURE}"
)
FAST = {"method": "midpoint", "options": {"step_size": 0.5}}


def _separator(**kw):
    from model.backends.sam_audio import SamAudioSeparator

    return SamAudioSeparator(
        FIXTURE, device="cpu", window_seconds=0.4, overlap_seconds=0.08, ode_opt=FAST, **kw
    )


def _prompt(seconds: float, spans=()):
    from model.separator import Prompt

    rng = np.random.default_rng(3)
    n = int(seconds * 25)
    video = rng.integers(0, 255, (n, 48, 64, 3), dtype=np.uint8)
    video[:, 10:30, 20:40] = 0
    return Prompt(
        text="a plucked string",
        spans=list(spans),
        masked_video=video,
        video_times=np.arange(n) / 25,
    )


def test_batched_windows_equal_one_window_at_a_time():
    from model.separator import Span

    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal(int(1.2 * 48_000))).astype(np.float32)
    prompt = _prompt(1.2, [Span("+", 0.1, 0.3)])  # anchors in some windows, not in others
    one = _separator(window_batch=1, candidates=2, ranker="activity")
    calls = []
    real = one.model.separate

    def counting(batch, **kw):
        calls.append(len(batch.sizes))
        return real(batch, **kw)

    one.model.separate = counting
    try:
        alone = one.separate(audio, prompt)
        n_alone = list(calls)
        calls.clear()
        many = _separator(window_batch=3, candidates=2, ranker="activity").separate(audio, prompt)
        n_many = list(calls)
    finally:
        one.model.separate = real
    # 4 windows of one length (the last ends at the clip's end); only the first has
    # anchors, so it is a batch of its own and the other three are one batch
    assert n_alone == [1, 1, 1, 1]
    assert n_many == [1, 3]
    assert np.abs(many.target - alone.target).max() <= 1e-5
    assert np.abs(many.residual - alone.residual).max() <= 1e-5
    assert many.details["rerank"] == alone.details["rerank"]  # same scores, same choices


def test_separate_windows_equals_separate_per_window():
    sep = _separator(window_batch=4)
    rng = np.random.default_rng(2)
    chunks = [(0.1 * rng.standard_normal(19_200)).astype(np.float32) for _ in range(2)]
    prompts = [[_prompt(0.4)] for _ in chunks]
    batched = sep.separate_windows(chunks, prompts)
    for chunk, items, got in zip(chunks, prompts, batched, strict=True):
        want = sep.separate(chunk, items[0])
        assert np.abs(got[0].target - want.target).max() <= 1e-5
        assert np.abs(got[0].residual - want.residual).max() <= 1e-5


def test_the_cpu_default_is_one_window_and_bad_values_are_refused():
    from model.errors import ModelInputError

    assert _separator().window_batch_size() == 1
    for bad in (0, -2, 1.5, True, "3"):
        with pytest.raises(ModelInputError, match="window_batch"):
            _separator(window_batch=bad)
