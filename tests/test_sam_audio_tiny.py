"""SAM Audio port on tiny random configs: config parsing, save/load, loading errors, HF cache
resolution, the ODE solver, optimised == naive sampling, and the sonomask backend (windows,
crossfades, frame picking, prompts, caching).

The codec and vision encoder are replaced by small stand-ins (the real DACVAE decoder alone is
69 M parameters whatever the config), so everything here runs in seconds. The tokenizer comes
from fixture A's tiny T5 folder.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAM_AUDIO_FIXTURE
from torch import nn
from torch.nn.utils.rnn import pad_sequence

import model.backends.sam_audio as backend
import model.sam_audio.model as sam_model
import model.windows as windows
from model.errors import ModelInputError, ModelLoadError
from model.sam_audio import (
    ConfigError,
    SAMAudio,
    SAMAudioConfig,
    SAMAudioInputError,
    SAMAudioLoadError,
    SAMAudioProcessor,
)
from model.sam_audio.model import odeint_final
from model.sam_audio.text_encoder import T5TextEncoder
from model.separator import Prompt, Span, plan_windows

FIXTURE = SAM_AUDIO_FIXTURE
needs_tokenizer = pytest.mark.skipif(
    not (FIXTURE / "t5" / "tokenizer.json").is_file(), reason="fixture A's T5 tokenizer not found"
)


@pytest.fixture(scope="module", autouse=True)
def single_thread(one_torch_thread):
    """These tensors are small: one torch thread (see conftest.one_torch_thread)."""


C = 4  # codec latent channels
TINY = {
    "in_channels": 6 * C,
    "audio_codec": {
        "encoder_dim": 8,
        "encoder_rates": [2, 8, 10, 12],
        "latent_dim": 16,
        "decoder_dim": 1536,
        "decoder_rates": [12, 10, 8, 2],
        "n_codebooks": 16,
        "codebook_size": 1024,
        "codebook_dim": C,
        "quantizer_dropout": False,
        "sample_rate": 48000,
        "mean": 0.0,
        "std": 1.0,
    },
    "text_encoder": {"name": "t5", "max_length": 512, "pad_mode": "longest", "dim": 16},
    "vision_encoder": {
        "dim": 8,
        "batch_size": 300,
        "name": "PE-Core-T16-384",
        "normalize_feature": True,
        "interpolation_mode": "BICUBIC",
        "image_size": 384,
    },
    "transformer": {
        "dim": 32,
        "n_heads": 4,
        "n_layers": 2,
        "dropout": 0.1,
        "norm_eps": 1e-05,
        "qk_norm": True,
        "fc_bias": False,
        "ffn_exp": 4,
        "ffn_dim_multiplier": 1,
        "multiple_of": 16,
        "non_linearity": "swiglu",
        "use_rope": True,
        "max_positions": 10000,
        "frequency_embedding_dim": 32,
        "timestep_non_linearity": "swiglu",
        "t_block_non_linearity": "silu",
        "t_block_bias": True,
        "context_dim": 32,
        "context_non_linearity": "swiglu",
        "context_embedder_dropout": 0.0,
        "context_norm": True,
        "out_channels": 2 * C,
        "in_channels": None,
    },
    "num_anchors": 3,
    "anchor_embedding_dim": 8,
    "visual_ranker": None,
    "text_ranker": None,
    "span_predictor": None,
}


class StubCodec(nn.Module):
    """Frame-wise linear 'codec' with the DACVAECodec interface (hop 1920 at 48 kHz)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.hop_length = int(np.prod(cfg["encoder_rates"]))
        self.sample_rate = cfg["sample_rate"]
        self.watermark_bits = 16
        self.enc = nn.Linear(self.hop_length, cfg["codebook_dim"])
        self.dec = nn.Linear(cfg["codebook_dim"], self.hop_length)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        B, _, N = wav.shape
        T = -(-N // self.hop_length)
        wav = torch.nn.functional.pad(wav, (0, T * self.hop_length - N))
        return self.enc(wav.view(B, T, self.hop_length)).transpose(1, 2)

    def decode(self, latent: torch.Tensor, watermark_message=None) -> torch.Tensor:
        if watermark_message is None:
            watermark_message = torch.randint(0, 2, (latent.shape[0], 16), dtype=torch.float32)
        out = self.dec(latent.transpose(1, 2)) * 0.01
        out = out + 1e-3 * watermark_message[:, :1, None]
        return out.reshape(latent.shape[0], 1, -1)


class StubVision(nn.Module):
    """Mean colour per frame -> linear features, padded over time like the real encoder."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.dim = cfg["dim"]
        self.lin = nn.Linear(3, self.dim)

    def forward(self, videos):
        feats = [self.lin(v.float().mean(dim=(2, 3)) / 255) for v in videos]
        return pad_sequence(feats, batch_first=True)


@pytest.fixture(autouse=True)
def stub_components(monkeypatch):
    monkeypatch.setattr(
        sam_model, "_build_codec", lambda cfg: StubCodec(cfg.to_dict()["audio_codec"])
    )
    monkeypatch.setattr(
        sam_model, "_build_vision_encoder", lambda cfg: StubVision(cfg.to_dict()["vision_encoder"])
    )
    backend.clear_model_cache()
    yield
    backend.clear_model_cache()


def tiny_text_encoder(dim: int = 16) -> T5TextEncoder:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=1000,
        d_model=dim,
        d_kv=4,
        num_heads=4,
        num_layers=1,
        d_ff=32,
        feed_forward_proj="relu",
        relative_attention_num_buckets=8,
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(FIXTURE / "t5"))
    return T5TextEncoder(transformers.T5EncoderModel(cfg).eval(), tokenizer)


def tiny_model(config: dict | None = None, seed: int = 0) -> SAMAudio:
    cfg = SAMAudioConfig.from_dict(copy.deepcopy(config or TINY))
    model = SAMAudio(cfg, text_encoder=tiny_text_encoder(cfg.text_encoder.dim))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # make every path (gates, pad rows, biases) matter
            p.add_(0.1 * torch.randn_like(p))
        model.align_masked_video.gate.fill_(0.5)
        model.embed_anchors.gate.fill_(-0.6)
    return model.eval()


def saved_tiny(tmp_path: Path, **kwargs) -> tuple[SAMAudio, Path]:
    model = tiny_model()
    folder = model.save_pretrained(tmp_path / "tiny", **kwargs)
    return model, folder


def two_item_batch(model: SAMAudio):
    proc = SAMAudioProcessor.from_config(model.config)
    g = torch.Generator().manual_seed(1)
    a1 = torch.randn(2, 48000, generator=g) * 0.1  # stereo: mixed down
    a2 = torch.randn(1, 30000, generator=g) * 0.1
    video = torch.randint(0, 255, (12, 3, 8, 8), dtype=torch.uint8, generator=g)
    return proc(
        descriptions=["a dog barking", ""],
        audios=[a1, a2],
        anchors=[[("+", 0.1, 0.4), ("-", 0.6, 0.8)], []],
        masked_videos=[video, video[:5]],
    )


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_config_round_trip_and_fixture_config():
    cfg = SAMAudioConfig.from_dict(copy.deepcopy(TINY))
    assert cfg.to_dict() == TINY
    assert cfg.audio_codec.hop_length == 1920 and cfg.latent_channels == C
    if (FIXTURE / "config.json").is_file():
        fixture = SAMAudioConfig.from_json_file(FIXTURE / "config.json")
        assert fixture.to_dict() == json.loads((FIXTURE / "config.json").read_text())


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.update(bogus=1), "bogus"),
        (lambda d: d["transformer"].update(n_head=4), "transformer.n_head"),
        (lambda d: d["audio_codec"].update(extra=True), "audio_codec.extra"),
        (lambda d: d["transformer"].update(dim=30), "transformer.dim"),
        (lambda d: d.update(in_channels=7), "in_channels"),
    ],
)
def test_config_errors_name_the_field(mutate, field):
    """Unknown fields and impossible values fail, naming the field."""
    data = copy.deepcopy(TINY)
    mutate(data)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        SAMAudioConfig.from_dict(data)


def test_missing_config_fields_take_the_reference_defaults():
    """As in the reference (keyword defaults), a field config.json leaves out takes the
    reference class's default, and the config says which ones were filled in."""
    data = copy.deepcopy(TINY)
    data.pop("num_anchors")
    data["text_encoder"].pop("pad_mode")
    data["vision_encoder"].pop("image_size")
    data["transformer"].pop("max_positions")
    cfg = SAMAudioConfig.from_dict(data)
    assert cfg.num_anchors == 3 and cfg.text_encoder.pad_mode == "longest"
    assert cfg.vision_encoder.image_size == 336 and cfg.transformer.max_positions == 10000
    assert set(cfg.defaulted) == {
        "num_anchors",
        "text_encoder.pad_mode",
        "vision_encoder.image_size",
        "transformer.max_positions",
    }
    assert SAMAudioConfig.from_dict(copy.deepcopy(TINY)).defaulted == ()
    # A section left out entirely is the reference's ``section or {}``: all defaults.
    empty = copy.deepcopy(TINY)
    empty["vision_encoder"] = None
    assert SAMAudioConfig.from_dict(empty).vision_encoder.name == "PE-Core-L14-336"


# ---------------------------------------------------------------------------------------------
# Saving, loading and loading errors
# ---------------------------------------------------------------------------------------------


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@needs_tokenizer
@pytest.mark.parametrize("safe", [False, True])
def test_save_load_round_trip(tmp_path, safe):
    model, folder = saved_tiny(tmp_path, safe_serialization=safe)
    assert (folder / ("model.safetensors" if safe else "checkpoint.pt")).is_file()
    assert (folder / "t5" / "config.json").is_file()
    loaded = SAMAudio.from_pretrained(folder)
    assert not loaded.training
    _assert_same_weights(model, loaded)
    batch = two_item_batch(model)
    noise = torch.randn(
        2, int(batch.sizes.max()), 2 * C, generator=torch.Generator().manual_seed(3)
    )
    msg = torch.ones(4, 16)
    r1 = model.separate(batch, noise=noise, watermark_message=msg)
    r2 = loaded.separate(two_item_batch(model), noise=noise, watermark_message=msg)
    for x, y in zip(r1.target + r1.residual, r2.target + r2.residual, strict=True):
        assert torch.equal(x, y)


def _rewrite_checkpoint(folder: Path, edit) -> None:
    sd = torch.load(folder / "checkpoint.pt", weights_only=True)
    edit(sd)
    torch.save(sd, folder / "checkpoint.pt")


@needs_tokenizer
def test_missing_key_is_an_error_listing_it(tmp_path):
    _, folder = saved_tiny(tmp_path)
    _rewrite_checkpoint(folder, lambda sd: sd.pop("transformer.layers.1.attention.wq.weight"))
    with pytest.raises(
        SAMAudioLoadError, match=r"missing 1 weights: transformer\.layers\.1\.attention\.wq\.weight"
    ):
        SAMAudio.from_pretrained(folder)


@needs_tokenizer
def test_misshaped_key_is_an_error_listing_it(tmp_path):
    _, folder = saved_tiny(tmp_path)
    _rewrite_checkpoint(folder, lambda sd: sd.update({"proj.weight": torch.zeros(32, 23)}))
    with pytest.raises(
        SAMAudioLoadError, match=r"mis-shaped.*proj\.weight \(32, 23\) \(model expects \(32, 24\)\)"
    ):
        SAMAudio.from_pretrained(folder)


@needs_tokenizer
def test_unexpected_key_is_an_error(tmp_path):
    _, folder = saved_tiny(tmp_path)
    _rewrite_checkpoint(folder, lambda sd: sd.update({"transformer.extra.weight": torch.zeros(2)}))
    with pytest.raises(SAMAudioLoadError, match=r"transformer\.extra\.weight"):
        SAMAudio.from_pretrained(folder)


@needs_tokenizer
def test_unused_keys_are_ignored(tmp_path):
    model, folder = saved_tiny(tmp_path)

    def add_unused(sd):
        sd["vision_encoder.model.token_embedding.weight"] = torch.zeros(3, 2)
        sd["vision_encoder.model.transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(3)
        sd["vision_encoder.model.logit_scale"] = torch.zeros(())
        sd["text_encoder.model.shared.weight"] = torch.zeros(5, 2)
        sd["span_predictor.head.weight"] = torch.zeros(2)
        sd["visual_ranker.model.weight"] = torch.zeros(2)
        sd["text_ranker.model.weight"] = torch.zeros(2)

    _rewrite_checkpoint(folder, add_unused)
    _assert_same_weights(model, SAMAudio.from_pretrained(folder))


@needs_tokenizer
def test_unknown_config_field_is_an_error_on_load(tmp_path):
    _, folder = saved_tiny(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["transformer"]["n_kv_heads"] = 2
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"unknown config field 'transformer\.n_kv_heads'"):
        SAMAudio.from_pretrained(folder)
    with pytest.raises(ConfigError, match=r"transformer\.n_kv_heads"):
        SAMAudioProcessor.from_pretrained(folder)


def test_missing_folder_or_cache_entry_says_how_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SAMAudioLoadError, match="huggingface-cli download facebook/sam-audio-base"):
        SAMAudio.from_pretrained("facebook/sam-audio-base", cache_dir=tmp_path / "hub")
    with pytest.raises(SAMAudioLoadError, match="huggingface-cli download"):
        SAMAudio.from_pretrained(str(tmp_path / "no" / "such" / "folder"))
    with pytest.raises(SAMAudioLoadError, match="huggingface-cli download"):
        SAMAudioProcessor.from_pretrained("facebook/sam-audio-base", cache_dir=tmp_path / "hub")


@needs_tokenizer
def test_repo_id_resolves_from_hf_cache(tmp_path, monkeypatch):
    """A Hub id is looked up in the local cache (snapshot layout), offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, folder = saved_tiny(tmp_path)
    cache = tmp_path / "hub"
    commit = "0" * 40
    repo = cache / "models--acme--tiny-sam-audio"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots").mkdir()
    import shutil

    shutil.copytree(folder, repo / "snapshots" / commit)
    loaded = SAMAudio.from_pretrained("acme/tiny-sam-audio", cache_dir=cache)
    _assert_same_weights(model, loaded)
    proc = SAMAudioProcessor.from_pretrained("acme/tiny-sam-audio", cache_dir=cache)
    assert proc.audio_hop_length == 1920


@needs_tokenizer
def test_text_encoder_name_missing_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, folder = saved_tiny(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_encoder"]["name"] = "no-such-t5"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SAMAudioLoadError, match="no-such-t5"):
        SAMAudio.from_pretrained(folder, cache_dir=tmp_path / "hub")


# ---------------------------------------------------------------------------------------------
# ODE and sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
def test_fixed_grid_solver_matches_torchdiffeq(method):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    y0 = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))

    def f(t, y):
        return torch.sin(3 * y) * (1 + t) - 0.5 * y

    opt = {"method": method, "options": {"step_size": 2 / 32}}
    ours = odeint_final(f, y0, opt)
    ref = torchdiffeq.odeint(f, y0, torch.tensor([0.0, 1.0]), **opt)[-1]
    assert torch.equal(ours, ref)
    odd = {"method": method, "options": {"step_size": 0.3}}
    assert torch.equal(
        odeint_final(f, y0, odd), torchdiffeq.odeint(f, y0, torch.tensor([0.0, 1.0]), **odd)[-1]
    )


@needs_tokenizer
def test_optimised_sampling_equals_naive():
    """Per-call caching (projections, video/anchor terms, text memory, RoPE table, dropped
    all-valid masks) gives the reference per-step computation's result."""
    model = tiny_model()
    batch = two_item_batch(model)
    with torch.inference_mode():
        args = model.get_forward_args(batch)
        noise = torch.randn(
            args["audio_features"].shape, generator=torch.Generator().manual_seed(2)
        )
        t = torch.full((2,), 0.3)
        v_naive = model(noisy_audio=noise, time=t, **args)
        v_fast = model.velocity(noise, t, model.prepare_conditioning(**args))
        assert (v_naive - v_fast).abs().max() <= 1e-5
        y_naive = model.solve(args, noise, naive=True)
        y_fast = model.solve(args, noise)
    assert (y_naive - y_fast).abs().max() <= 1e-5
    # single unpadded item: the masks are dropped on the fast path
    one = SAMAudioProcessor.from_config(model.config)(
        descriptions=["x"], audios=[torch.randn(1, 20000) * 0.1], anchors=[[("+", 0.0, 0.2)]]
    )
    with torch.inference_mode():
        args = model.get_forward_args(one)
        cond = model.prepare_conditioning(**args)
        assert cond.audio_pad_mask is None and cond.text_mask is None
        noise = torch.randn(args["audio_features"].shape)
        assert (model.solve(args, noise, naive=True) - model.solve(args, noise)).abs().max() <= 1e-5


@needs_tokenizer
def test_separate_api_and_seeding():
    model = tiny_model()
    batch = two_item_batch(model)
    torch.manual_seed(5)
    r1 = model.separate(batch)
    torch.manual_seed(5)
    r2 = model.separate(two_item_batch(model))
    assert [x.shape[0] for x in r1.target] == [48000, 30720]  # rounded up to the hop
    for x, y in zip(r1.target + r1.residual, r2.target + r2.residual, strict=True):
        assert x.ndim == 1 and torch.equal(x, y)
    assert torch.equal(r1.noise, r2.noise)
    # anchors given (and no span predictor configured): predict_spans changes nothing
    r_spans = model.separate(batch, noise=r1.noise, predict_spans=True)
    assert r_spans.spans is None  # span prediction: test_sam_audio_spans.py
    with pytest.raises(SAMAudioInputError, match="reranking_candidates"):
        model.separate(batch, reranking_candidates=0)  # reranking: test_sam_audio_rerank.py
    with pytest.raises(SAMAudioInputError, match="noise must have shape"):
        model.separate(batch, noise=torch.zeros(1, 3, 8))
    # other solvers through ode_opt
    r3 = model.separate(
        batch, noise=r1.noise, ode_opt={"method": "euler", "options": {"step_size": 0.25}}
    )
    assert all(torch.isfinite(x).all() for x in r3.target)


@needs_tokenizer
def test_bf16_autocast_runs_close_to_fp32():
    model = tiny_model()
    batch = two_item_batch(model)
    with torch.inference_mode():
        args = model.get_forward_args(batch)
        noise = torch.randn(args["audio_features"].shape)
        y32 = model.solve(args, noise)
        y16 = model.solve(args, noise, autocast_dtype=torch.bfloat16)
    assert y16.dtype == torch.float32
    assert (y32 - y16).abs().max() < 0.1 * y32.abs().max()


def test_processor_input_errors():
    proc = SAMAudioProcessor(1920, 48000)
    with pytest.raises(SAMAudioInputError, match="descriptions"):
        proc(descriptions=["a", "b"], audios=[torch.zeros(1, 100)])
    with pytest.raises(SAMAudioInputError, match=r"\[frames, 3, H, W\]"):
        proc(
            descriptions=["a"],
            audios=[torch.zeros(1, 100)],
            masked_videos=[torch.zeros(4, 8, 8, 3)],
        )
    with pytest.raises(SAMAudioInputError, match="anchor token"):
        proc(descriptions=["a"], audios=[torch.zeros(1, 100)], anchors=[[("*", 0.0, 0.1)]])
    batch = proc(descriptions=["a"], audios=[np.zeros(5000, dtype=np.float32)])
    assert batch.audios.shape == (1, 1, 5000) and int(batch.sizes[0]) == 3


# ---------------------------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------------------------


def test_plan_windows_and_gains():
    assert plan_windows(1000, 2000, 200) == [(0, 1000)]
    w = plan_windows(10_000, 3000, 1000)
    assert w[0] == (0, 3000) and w[-1] == (7000, 10_000)
    assert all(e - s == 3000 for s, e in w)
    assert all(w[i + 1][0] < w[i][1] for i in range(len(w) - 1))  # overlapping, no gaps
    total = np.zeros(10_000)
    for i, (s, e) in enumerate(w):
        total[s:e] += windows.crossfade_gains(w, i).astype(np.float64)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # the mixture comes back unchanged
    with pytest.raises(ModelInputError):
        plan_windows(100, 10, 10)


def test_pick_frames_and_window_anchors():
    times = np.arange(50) / 25.0  # 2 s at 25 fps
    idx = backend.pick_frames(times, np.array([0.0, 0.05, 0.49, 0.99]), 0.0, 1.0)
    assert idx.tolist() == [0, 1, 12, 25]  # 0.99 s -> frame 25 (1.0 s, inside the widened window)
    # frames are only taken from inside the window (widened by half a period)
    idx = backend.pick_frames(times, np.array([1.51, 1.61]), 1.5, 3.0)
    assert idx.tolist() == [38, 40]
    assert backend.pick_frames(times, np.array([5.0]), 5.0, 6.0) is None
    spans = [Span("+", 0.5, 1.5), Span("-", 3.0, 4.0)]
    assert windows.clip_spans(spans, 1.0, 2.0) == [Span("+", 0.0, 0.5)]
    assert windows.clip_spans(spans, 2.0, 3.0) == []


@needs_tokenizer
def test_backend_windows_prompts_progress_and_cache(tmp_path, monkeypatch):
    _, folder = saved_tiny(tmp_path)
    monkeypatch.delenv("SONOMASK_DEVICE", raising=False)
    sep = backend.SamAudioSeparator(str(folder), window_seconds=1.0, overlap_seconds=0.2)
    assert sep.name == "sam-audio" and sep.device == "cpu"
    assert backend.SamAudioSeparator(str(folder)).model is sep.model  # loaded once per process
    sr = 48000
    audio = (0.1 * np.random.default_rng(0).standard_normal(int(2.5 * sr))).astype(np.float32)
    video = np.random.default_rng(1).integers(0, 255, (25, 6, 6, 3), dtype=np.uint8)
    times = np.arange(25) / 12.5  # frames cover only the first 2 s
    seen = []
    out = sep.separate(
        audio,
        Prompt(text=None, spans=[Span("+", 0.2, 0.9)], masked_video=video, video_times=times),
        progress=lambda f, what: seen.append((f, what)),
    )
    assert out.target.shape == out.residual.shape == audio.shape
    assert out.target.dtype == np.float32 and np.isfinite(out.target).all()
    assert out.backend == "sam-audio"
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0 and any("ODE step" in w for _, w in seen)
    assert sum("window 3/3" in w for _, w in seen) > 0  # 2.5 s -> 3 windows of 1 s
    again = sep.separate(
        audio, Prompt(text=None, spans=[Span("+", 0.2, 0.9)], masked_video=video, video_times=times)
    )
    np.testing.assert_array_equal(out.target, again.target)  # seeded: deterministic
    # the last window (1.5-2.5 s) still has frames up to 1.92 s; a video ending at 0.4 s leaves
    # later windows without frames, which is reported
    short = sep.separate(audio, Prompt(masked_video=video[:5], video_times=times[:5]))
    assert any("no video frames" in w for w in short.warnings)
    with pytest.raises(ModelInputError):
        sep.separate(np.zeros((2, 100), np.float32), Prompt())
    with pytest.raises(ModelInputError):
        sep.separate(audio, Prompt(masked_video=video, video_times=times[:3]))
    with pytest.raises(ModelInputError):
        sep.separate(audio, Prompt(spans=[Span("+", 1.0, 0.5)]))


@needs_tokenizer
def test_backend_single_window_equals_model_separate(tmp_path):
    """One window: the backend is exactly model.separate with its seeded noise and bits."""
    model, folder = saved_tiny(tmp_path)
    sep = backend.SamAudioSeparator(str(folder), "cpu", seed=7)
    audio = (0.1 * np.random.default_rng(0).standard_normal(40000)).astype(np.float32)
    out = sep.separate(audio, Prompt(text="a dog", spans=[Span("-", 0.1, 0.3)]))
    batch = SAMAudioProcessor.from_config(model.config)(
        descriptions=["a dog"], audios=[torch.from_numpy(audio)[None]], anchors=[[("-", 0.1, 0.3)]]
    )
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 21, 2 * C, generator=g)
    bits = torch.randint(0, 2, (2, 16), generator=g, dtype=torch.float32)
    ref = sep.model.separate(batch, noise=noise, watermark_message=bits)
    np.testing.assert_allclose(out.target, ref.target[0][:40000].numpy(), atol=1e-6)
    np.testing.assert_allclose(out.residual, ref.residual[0][:40000].numpy(), atol=1e-6)


def test_device_resolution(monkeypatch):
    # The device is the caller's (the worker passes Settings.device, read from
    # SONOMASK_DEVICE there); the adapter itself reads no environment.
    monkeypatch.setenv("SONOMASK_DEVICE", "tpu9")
    assert backend.resolve_device("cpu") == "cpu"
    assert backend.resolve_device(None) == backend.resolve_device("auto")
    monkeypatch.delenv("SONOMASK_DEVICE")
    assert backend.resolve_device("auto") in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA"):
            backend.resolve_device("cuda")
    with pytest.raises(ModelLoadError):
        backend.resolve_device("tpu9")


def test_backend_reports_port_errors_as_model_errors(tmp_path, monkeypatch):
    """The port raises its own errors; the adapter re-raises them as model.errors' (which the
    worker turns into one-line bad-input messages) with the message unchanged."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="huggingface-cli download") as info:
        backend.SamAudioSeparator(str(tmp_path / "no" / "such" / "folder"), "cpu")
    assert isinstance(info.value.__cause__, SAMAudioLoadError)
    assert str(info.value) == str(info.value.__cause__)
    with pytest.raises(ModelInputError, match=r"^bad prompt$"):
        with backend.port_errors():
            raise SAMAudioInputError("bad prompt")
    with pytest.raises(ModelLoadError, match=r"^bad config$"):
        with backend.port_errors():
            raise ConfigError("bad config")


def test_consecutive_unique_frames():
    v = torch.tensor([1, 1, 2, 2, 2, 1, 3], dtype=torch.uint8)[:, None, None, None].expand(
        7, 3, 2, 2
    )
    keep, inverse = sam_model._consecutive_unique(v)
    assert keep.tolist() == [0, 2, 5, 6]
    assert torch.equal(v[keep][inverse], v)


@needs_tokenizer
def test_video_frame_dedupe_gives_same_features():
    model = tiny_model()
    batch = two_item_batch(model)  # 12 and 5 frames resampled to 25 and 16 feature frames
    with torch.inference_mode():
        audio_features = model._get_audio_features(batch.audios)
        deduped = model._get_video_features(batch.masked_video, audio_features)
        model.dedupe_video_frames = False
        plain = model._get_video_features(batch.masked_video, audio_features)
    assert deduped.shape == plain.shape == (2, 8, 25)
    assert (deduped - plain).abs().max() <= 1e-6


@needs_tokenizer
def test_compile_dit_keeps_reference_state_dict_keys():
    model = tiny_model()
    keys = set(model.state_dict())
    model.compile_dit()  # lazy: nothing is compiled until the first call
    assert set(model.state_dict()) == keys
    assert model._compiled_dit is not None


@needs_tokenizer
def test_encoder_offload_is_a_no_op_for_outputs(monkeypatch):
    """set_encoder_offload: the T5 and vision encoders are moved to the model's device for
    each use and back to the offload device after it; the stems are exactly the same."""
    model = tiny_model()
    batch = two_item_batch(model)
    noise_gen = torch.Generator().manual_seed(3)
    bits = torch.randint(0, 2, (4, 16), dtype=torch.float32, generator=noise_gen)
    plain = model.separate(
        batch, generator=torch.Generator().manual_seed(4), watermark_message=bits
    )

    moves: list[tuple[str, str]] = []
    for name in ("text_encoder", "vision_encoder"):
        module = getattr(model, name)
        original = module.to

        def spy(device, *args, _name=name, _original=original, **kwargs):
            moves.append((_name, str(device)))
            return _original(device, *args, **kwargs)

        monkeypatch.setattr(module, "to", spy)
    model.set_encoder_offload(True, device="cpu")
    assert moves == [("text_encoder", "cpu"), ("vision_encoder", "cpu")]
    moves.clear()
    offloaded = model.separate(
        two_item_batch(model), generator=torch.Generator().manual_seed(4), watermark_message=bits
    )
    # each encoder: to the model's device for its use, then back to the offload device
    assert moves == [("text_encoder", "cpu")] * 2 + [("vision_encoder", "cpu")] * 2
    assert not any(p.is_inference() for p in model.text_encoder.parameters())
    for a, b in zip(
        plain.target + plain.residual, offloaded.target + offloaded.residual, strict=True
    ):
        assert torch.equal(a, b)
    model.set_encoder_offload(False)
    moves.clear()
    model.separate(batch, generator=torch.Generator().manual_seed(4), watermark_message=bits)
    assert moves == []
