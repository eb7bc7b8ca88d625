"""SAM Audio reranking: the ranker interface, the weight-free sound-activity ranker on
constructed signals, and ``separate(..., reranking_candidates=k)`` end to end on the tiny random
configuration of test_sam_audio_tiny (stub codec and vision encoder, tiny T5).

The end-to-end tests score every candidate separately (each one solved on its own with its
noise rows and watermark bits) and check that the kept output is that candidate's output and
the best of those scores.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from test_sam_audio_tiny import (  # noqa: F401 - stub_components is an autouse fixture
    TINY,
    needs_tokenizer,
    saved_tiny,
    stub_components,
    tiny_model,
    two_item_batch,
)

import model.backends.sam_audio as backend
from model.errors import ModelInputError, ModelLoadError
from model.sam_audio import SAMAudioInputError, SAMAudioProcessor
from model.sam_audio.errors import ConfigError
from model.sam_audio.rankers import create_ranker
from model.sam_audio.ranking import (
    EnsembleRanker,
    Ranker,
    SoundActivityRanker,
    UnavailableRanker,
    detect_nonsilent,
    merge_spans,
    span_agreement,
)
from model.separator import Prompt, Span

SR = 48_000


@pytest.fixture(scope="module", autouse=True)
def single_thread(one_torch_thread):
    """Small tensors: one torch thread (see conftest.one_torch_thread)."""


def tone(seconds: float, amp: float = 0.5, freq: float = 440.0, sr: int = SR) -> torch.Tensor:
    t = torch.arange(round(seconds * sr), dtype=torch.float64) / sr
    return (amp * torch.sin(2 * torch.pi * freq * t)).float()


def silence(seconds: float, sr: int = SR) -> torch.Tensor:
    return torch.zeros(round(seconds * sr))


# ---------------------------------------------------------------------------------------------
# Non-silent regions and span agreement
# ---------------------------------------------------------------------------------------------


def test_nonsilent_regions_of_constructed_signals():
    wav = torch.cat([silence(1.0), tone(1.0), silence(1.0)])
    assert detect_nonsilent(wav, SR) == [(1.0, 2.0)]
    # a -60 dB floor is silence under the default -40 dB (relative to the loudest window)
    floor = 0.0005 * torch.randn(wav.numel(), generator=torch.Generator().manual_seed(0))
    assert detect_nonsilent(wav + floor, SR) == [(1.0, 2.0)]
    # a -20 dB floor is not
    assert detect_nonsilent(wav + 20 * floor, SR) == [(0.0, 3.0)]
    # two bursts; a gap shorter than 250 ms does not split a region
    two = torch.cat([tone(0.5), silence(0.2), tone(0.3), silence(1.0), tone(0.5)])
    assert detect_nonsilent(two, SR) == [(0.0, 1.0), (2.0, 2.5)]
    # relative threshold: scale does not matter
    assert detect_nonsilent(1e-3 * two, SR) == detect_nonsilent(two, SR)
    # absolute threshold (dB re full scale 1.0): a -66 dB tone is silence at -40 dBFS
    assert detect_nonsilent(1e-3 * two, SR, threshold_mode="abs") == []
    assert detect_nonsilent(two, SR, threshold_mode="abs") == [(0.0, 1.0), (2.0, 2.5)]
    # shorter than one silence window: all of it; digital silence: nothing
    assert detect_nonsilent(tone(0.1), SR) == [(0.0, 0.1)]
    assert detect_nonsilent(silence(2.0), SR) == []
    with pytest.raises(ConfigError, match="threshold_mode"):
        detect_nonsilent(two, SR, threshold_mode="peak")


def test_nonsilent_regions_match_pydub():
    """Same regions as pydub's detector (what the reference calls), on 16-bit audio at 24 kHz
    (the reference's rate, so no resampling is involved)."""
    pytest.importorskip("pydub")
    import pydub
    import pydub.silence
    import pydub.utils

    sr = 24_000
    g = torch.Generator().manual_seed(3)
    for trial in range(6):
        parts = []
        for _ in range(6):
            dur = float(torch.randint(5, 120, (1,), generator=g)) / 100
            amp = [0.0, 0.002, 0.3, 0.8][int(torch.randint(0, 4, (1,), generator=g))]
            parts.append(tone(dur, amp=amp, freq=300 + 50 * trial, sr=sr))
        wav = torch.cat(parts)
        pcm = (wav.clamp(-1, 1) * 32767).round().to(torch.int16)
        seg = pydub.AudioSegment(
            data=pcm.numpy().tobytes(), sample_width=2, frame_rate=sr, channels=1
        )
        # reference get_peak_rms + detect_nonsilent (sound_activity.py), through pydub
        starts = range(0, len(seg) - 250 + 1, 100)
        peak = max([seg[i : i + 250].rms / seg.max_possible_amplitude for i in starts] + [0])
        thresh = -40 + pydub.utils.ratio_to_db(peak)
        want = [
            (round(s / 1000, 3), round(e / 1000, 3))
            for s, e in pydub.silence.detect_nonsilent(
                seg, min_silence_len=250, silence_thresh=thresh, seek_step=10
            )
        ]
        got = detect_nonsilent(pcm.float() / 32768, sr)
        assert got == want, (trial, got, want)


def test_span_agreement_and_merging():
    assert merge_spans([(2, 3), (0, 1), (0.5, 1.5), (4, 4)]) == [(0, 1.5), (2, 3)]
    r = span_agreement([(0.0, 2.0)], [(1.0, 3.0)])
    assert r == pytest.approx({"iou": 1 / 3, "recall": 0.5, "precision": 0.5})
    # overlapping reference spans are not counted twice (the reference's formula would)
    assert span_agreement([(0.0, 1.0)], [(0.0, 1.0), (0.5, 1.0)])["iou"] == 1.0
    assert span_agreement([], [(0.0, 1.0)]) == {"iou": 0.0, "recall": 0.0, "precision": 0.0}
    assert span_agreement([(0.0, 1.0)], [])["precision"] == 0.0


def test_sound_activity_ranker_scores_each_candidate():
    cands = torch.stack(
        [
            torch.cat([silence(1.0), tone(1.0), silence(1.0)]),  # exactly the span
            tone(3.0),  # everywhere
            torch.cat([silence(2.0), tone(1.0)]),  # elsewhere
        ]
    )
    ranker = SoundActivityRanker()
    spans = [[("+", 1.0, 2.0), ("-", 2.0, 3.0)], [("-", 0.0, 1.0)]]
    scores = ranker(extracted_audio=[cands, cands], spans=spans, sample_rate=SR)
    assert scores.shape == (2, 3)
    assert scores[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert scores[1].tolist() == [0.0, 0.0, 0.0]  # no '+' span: nothing to agree with
    recall = SoundActivityRanker(metric="recall")(
        extracted_audio=[cands], spans=spans[:1], sample_rate=SR
    )
    assert recall[0].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert SoundActivityRanker()(extracted_audio=[cands], spans=None).tolist() == [[0.0] * 3]
    with pytest.raises(ConfigError, match="metric"):
        SoundActivityRanker(metric="f1")


class FixedRanker(Ranker):
    """Returns given scores and records what it was called with."""

    name = "fixed"

    def __init__(self, scores: list[list[float]]) -> None:
        self.scores = torch.tensor(scores)
        self.calls: list[dict] = []

    def score(self, extracted_audio, **kwargs):
        self.calls.append({"extracted_audio": extracted_audio, **kwargs})
        return self.scores


def test_create_ranker_from_config():
    assert create_ranker(None) is None
    r = create_ranker({"kind": "sound_activity", "sil_threshold": -30, "metric": "recall"})
    assert isinstance(r, SoundActivityRanker) and r.sil_threshold == -30 and r.metric == "recall"
    with pytest.raises(ConfigError, match="unknown sound_activity"):
        create_ranker({"kind": "sound_activity", "window": 3})
    from model.sam_audio.judge import JudgeRanker

    folder = Path(__file__).parent / "fixtures" / "sam_audio_judge"
    r = create_ranker({"kind": "judge", "checkpoint_or_model_id": str(folder)})
    assert isinstance(r, JudgeRanker) and r.judge.config.sample_rate == 48_000
    with pytest.raises(ConfigError, match="unknown judge"):
        create_ranker({"kind": "judge", "checkpoint": str(folder)})
    from model.sam_audio.clap import ClapRanker

    r = create_ranker({"kind": "clap", "checkpoint": None})
    assert isinstance(r, ClapRanker)
    with pytest.raises(ConfigError, match="'checkpoint'"):
        r(extracted_audio=[torch.zeros(2, 10)], descriptions=["a"])
    r = create_ranker({"kind": "imagebind", "checkpoint": None})
    assert isinstance(r, UnavailableRanker)
    with pytest.raises(NotImplementedError, match="imagebind"):
        r(extracted_audio=[torch.zeros(2, 10)])
    ens = create_ranker(
        {
            "kind": "ensemble",
            "rankers": {
                "a": [{"kind": "sound_activity"}, 2.0],
                "b": [{"kind": "sound_activity", "metric": "recall"}, 0.5],
            },
        }
    )
    assert isinstance(ens, EnsembleRanker) and ens.weights == [2.0, 0.5]
    cands = torch.stack([torch.cat([silence(1.0), tone(1.0)]), tone(2.0)])
    s = ens(extracted_audio=[cands], spans=[[("+", 1.0, 2.0)]], sample_rate=SR)
    assert s[0].tolist() == pytest.approx([2 * 1 + 0.5 * 1, 2 * 0.5 + 0.5 * 1])
    assert create_ranker({"kind": "what"}) is None
    bad = FixedRanker([[1.0]])
    with pytest.raises(RuntimeError, match="shape"):
        bad(extracted_audio=[torch.zeros(3, 5)])


# ---------------------------------------------------------------------------------------------
# separate(..., reranking_candidates=k) on the tiny model
# ---------------------------------------------------------------------------------------------

K = 3


def _inputs(model, batch, k: int, seed: int = 7):
    g = torch.Generator().manual_seed(seed)
    B, T = batch.audios.shape[0], int(batch.sizes.max())
    noise = torch.randn(B * k, T, 2 * model.config.latent_channels, generator=g)
    message = torch.randint(0, 2, (2 * B * k, 16), generator=g, dtype=torch.float32)
    return noise, message


def _candidate(model, make_batch, noise, message, k: int, j: int):
    """Candidate j of every item, solved on its own (k = 1) from its noise rows and bits."""
    B = noise.shape[0] // k
    rows = torch.arange(B) * k + j
    bits = torch.stack([2 * rows, 2 * rows + 1], 1).reshape(-1)
    return model.separate(make_batch(), noise=noise[rows], watermark_message=message[bits])


@needs_tokenizer
def test_one_candidate_is_the_plain_separation():
    model = tiny_model()
    noise, message = _inputs(model, two_item_batch(model), 1)
    plain = model.separate(two_item_batch(model), noise=noise, watermark_message=message)
    ranker = FixedRanker([[1.0], [1.0]])
    one = model.separate(
        two_item_batch(model),
        noise=noise,
        watermark_message=message,
        reranking_candidates=1,
        ranker=ranker,
    )
    for a, b in zip(plain.target + plain.residual, one.target + one.residual, strict=True):
        assert torch.equal(a, b)
    assert one.scores is None and one.chosen is None and ranker.calls == []
    with pytest.raises(SAMAudioInputError, match="reranking_candidates"):
        model.separate(two_item_batch(model), reranking_candidates=2.0)


@needs_tokenizer
def test_reranking_keeps_the_candidate_the_ranker_scores_best():
    model = tiny_model()
    batch = two_item_batch(model)
    noise, message = _inputs(model, batch, K)
    ranker = FixedRanker([[0.1, 0.2, 0.9], [0.5, 0.7, -1.0]])
    res = model.separate(
        batch, noise=noise, watermark_message=message, reranking_candidates=K, ranker=ranker
    )
    assert res.chosen.tolist() == [2, 1] and res.ranker == "fixed"
    assert torch.equal(res.scores, ranker.scores) and torch.equal(res.noise, noise)
    # what the ranker saw: the reference's keywords (+ spans), candidates per item
    (call,) = ranker.calls
    assert [tuple(x.shape) for x in call["extracted_audio"]] == [(K, 48000), (K, 30720)]
    # the mixture as the reference slices it: the padded batch row up to the size in samples
    assert [tuple(x.shape) for x in call["input_audio"]] == [(K, 48000), (K, 30720)]
    assert call["descriptions"] == ["a dog barking", ""]
    assert call["spans"] == [[("+", 0.1, 0.4), ("-", 0.6, 0.8)], []]
    assert call["videos"] is batch.masked_video and call["sample_rate"] == SR
    # each candidate solved on its own gives the same candidates; the kept one is the best
    per = [_candidate(model, lambda: two_item_batch(model), noise, message, K, j) for j in range(K)]
    for b in range(2):
        for j in range(K):
            assert torch.allclose(call["extracted_audio"][b][j], per[j].target[b], atol=1e-6)
        best = int(res.chosen[b])
        assert torch.equal(res.target[b], call["extracted_audio"][b][best])
        assert torch.allclose(res.residual[b], per[best].residual[b], atol=1e-6)


def _activity_config() -> dict:
    cfg = copy.deepcopy(TINY)
    # -3 dB under the loudest window: the tiny model's noise-like outputs have quiet stretches
    cfg["text_ranker"] = {"kind": "sound_activity", "sil_threshold": -3.0}
    return cfg


def _activity_batch(model):
    g = torch.Generator().manual_seed(11)
    proc = SAMAudioProcessor.from_config(model.config)
    return proc(
        descriptions=["a dog barking", "a bell"],
        audios=[torch.randn(1, 3 * SR, generator=g) * 0.1] * 2,
        anchors=[[("+", 0.5, 1.5)], [("+", 1.0, 2.6), ("-", 0.0, 0.6)]],
    )


@needs_tokenizer
def test_reranking_with_the_sound_activity_ranker_end_to_end():
    """The configured text ranker (sound activity) picks, per item, the candidate whose own
    separate run scores best; scores equal those computed candidate by candidate."""
    model = tiny_model(_activity_config())
    assert isinstance(model.rankers.text, SoundActivityRanker) and model.rankers.visual is None
    batch = _activity_batch(model)
    noise, message = _inputs(model, batch, K, seed=5)
    res = model.separate(batch, noise=noise, watermark_message=message, reranking_candidates=K)
    assert res.ranker == "sound_activity"
    per = [
        _candidate(model, lambda: _activity_batch(model), noise, message, K, j) for j in range(K)
    ]
    anchors = _activity_batch(model).anchors
    separately = torch.stack(
        [
            model.rankers.text(
                extracted_audio=[p.target[b][None] for b in range(2)],
                spans=anchors,
                sample_rate=SR,
            )[:, 0]
            for p in per
        ],
        dim=1,
    )
    assert torch.allclose(res.scores, separately, atol=1e-6), (res.scores, separately)
    assert res.chosen.tolist() == separately.argmax(dim=1).tolist()
    for b in range(2):
        best = int(res.chosen[b])
        assert torch.allclose(res.target[b], per[best].target[b], atol=1e-6)
        assert torch.allclose(res.residual[b], per[best].residual[b], atol=1e-6)
    # the test means something: the candidates' scores differ and the best is not always 0
    assert all(len(set(row)) > 1 for row in res.scores.tolist()), res.scores
    assert res.chosen.tolist() != [0, 0], res.scores


@needs_tokenizer
def test_which_ranker_scores_and_unported_rankers():
    model = tiny_model()
    batch = two_item_batch(model)  # has masked videos
    visual, text = FixedRanker([[0.0, 1.0]] * 2), FixedRanker([[1.0, 0.0]] * 2)
    assert model.choose_ranker(batch, 2) is None
    model.rankers.text = text
    assert model.choose_ranker(batch, 2) is text and model.choose_ranker(batch, 1) is None
    model.rankers.visual = visual
    assert model.choose_ranker(batch, 2) is visual
    batch.masked_video = None
    assert model.choose_ranker(batch, 2) is text
    # no ranker: candidate 0, as the reference
    model.rankers.visual = model.rankers.text = None
    res = model.separate(two_item_batch(model), reranking_candidates=2)
    assert res.chosen is None and res.noise.shape[0] == 4
    noise, message = _inputs(model, two_item_batch(model), 2)
    first = _candidate(model, lambda: two_item_batch(model), noise, message, 2, 0)
    res = model.separate(
        two_item_batch(model), noise=noise, watermark_message=message, reranking_candidates=2
    )
    for a, b in zip(res.target, first.target, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    # a configured ranker this port lacks: loading works, reranking says what is missing
    cfg = copy.deepcopy(TINY)
    cfg["text_ranker"] = {"kind": "imagebind", "checkpoint": None}
    model = tiny_model(cfg)
    model.separate(two_item_batch(model))  # one candidate: never scored
    with pytest.raises(NotImplementedError, match="'imagebind' ranker"):
        model.separate(two_item_batch(model), reranking_candidates=2)
    # CLAP named without a checkpoint (the reference would download it): one line, when used
    cfg["text_ranker"] = {"kind": "clap", "checkpoint": None}
    model = tiny_model(cfg)
    with pytest.raises(ConfigError, match="needs a local checkpoint"):
        model.separate(two_item_batch(model), reranking_candidates=2)


# ---------------------------------------------------------------------------------------------
# The sonomask backend
# ---------------------------------------------------------------------------------------------


@needs_tokenizer
def test_backend_candidates(tmp_path):
    """Candidate 0 has the one-candidate noise and bits (forcing it gives the plain output);
    the activity ranker's scores per window land in rerank_log; the rest say what is missing."""
    _, folder = saved_tiny(tmp_path)
    audio = (0.1 * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32)
    prompt = Prompt(text="a dog", spans=[Span("+", 0.5, 1.5)])
    plain = backend.SamAudioSeparator(str(folder), "cpu", seed=7).separate(audio, prompt)
    forced = backend.SamAudioSeparator(str(folder), "cpu", seed=7, candidates=3)
    forced.ranker = FixedRanker([[1.0, 0.0, 0.5]])
    out = forced.separate(audio, prompt)
    # equal up to float rounding: a batch of 3 is not summed in the same order as a batch of 1
    np.testing.assert_allclose(out.target, plain.target, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.residual, plain.residual, rtol=0, atol=1e-6)
    assert forced.rerank_log[0]["chosen"] == [0] and forced.rerank_log[0]["ranker"] == "fixed"
    sep = backend.SamAudioSeparator(str(folder), "cpu", seed=7, candidates=3, ranker="activity")
    sep.separate(audio, prompt)
    (entry,) = sep.rerank_log
    assert entry["ranker"] == "sound_activity" and len(entry["scores"][0]) == 3
    assert entry["chosen"] == [int(np.argmax(entry["scores"][0]))]
    with pytest.raises(ModelLoadError, match="SONOMASK_CLAP_MODEL"):
        backend.SamAudioSeparator(str(folder), "cpu", candidates=2, ranker="clap")
    clap = Path(__file__).parent / "fixtures" / "sam_audio_clap" / "model"
    sep = backend.SamAudioSeparator(
        str(folder), "cpu", seed=7, candidates=2, ranker="clap", ranker_weights=str(clap)
    )
    sep.separate(audio, prompt)
    (entry,) = sep.rerank_log
    assert entry["ranker"] == "clap" and entry["chosen"] == [int(np.argmax(entry["scores"][0]))]
    with pytest.raises(ModelInputError, match="unknown ranker"):
        backend.SamAudioSeparator(str(folder), "cpu", candidates=2, ranker="loud")
    with pytest.raises(ModelInputError, match="candidates"):
        backend.SamAudioSeparator(str(folder), "cpu", candidates=0)
