"""PE-Core visual tower used by SAM Audio (model/sam_audio/vision_encoder.py).

Numbers come from fixture A (official sam_audio + perception_models outputs, see its README);
architecture checks compare against parameter counts of the reference ``pe.VisionTransformer``
(perception_models e72b6810).  An optional test re-runs the reference code itself when a git
mirror of perception_models is available.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SAM_AUDIO_FIXTURE

from model.sam_audio.errors import SAMAudioInputError, SAMAudioLoadError
from model.sam_audio.vision_encoder import (
    PE_CORE_VISION_ARCHS,
    PerceptionEncoderConfig,
    PerceptionVisionEncoder,
    is_unused_key,
    select_vision_state_dict,
)

FIXTURE = SAM_AUDIO_FIXTURE
PE_REPO = Path(
    os.environ.get("PERCEPTION_MODELS_GIT", "/work/.mirror/facebookresearch+perception_models/repo")
)
PE_COMMIT = "e72b6810b1133e1c879f2cc965d276eb73803f1f"

# Output tolerance: the fixture README recommends 1e-5 on encoder outputs; the port is
# bit-identical to the reference code on one machine, ~1e-7 across machines/thread counts.
ATOL = 1e-5

# Parameter count and state-dict size of the reference pe.VisionTransformer (visual tower only),
# measured by building PE_VISION_CONFIG[name] from perception_models e72b6810.
REFERENCE_COUNTS = {
    "PE-Core-T16-384": (6_140_544, 163),
    "PE-Core-S16-384": (23_782_656, 163),
    "PE-Core-B16-224": (93_672_960, 163),
    "PE-Core-L14-336": (317_151_232, 307),
    "PE-Core-G14-448": (1_882_032_640, 618),
}

needs_fixture = pytest.mark.skipif(
    not (FIXTURE / "checkpoint.pt").exists(), reason=f"fixture not found at {FIXTURE}"
)


def _cfg(name: str, image_size: int | None = None, **over) -> dict:
    arch = PE_CORE_VISION_ARCHS[name]
    cfg = {
        "dim": arch.feature_dim,
        "batch_size": 300,
        "name": name,
        "normalize_feature": True,
        "interpolation_mode": "BICUBIC",
        "image_size": image_size or arch.image_size,
    }
    cfg.update(over)
    return cfg


def _perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Make every parameter matter (LayerNorm weights != 1, biases != 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = max(p.std().item() if p.numel() > 1 else 0.0, 0.2)
            p.add_(0.1 * scale * torch.randn(p.shape, generator=g))


# --------------------------------------------------------------------------- fixture A


@pytest.fixture(scope="module")
def fixture_a():
    cfg = json.loads((FIXTURE / "config.json").read_text())["vision_encoder"]
    state = torch.load(FIXTURE / "checkpoint.pt", weights_only=True)
    expected = torch.load(FIXTURE / "expected.pt", weights_only=False)["cases"]["visual"]
    enc = PerceptionVisionEncoder(cfg).eval()
    enc.load_vision_state_dict(state)
    return enc, state, expected


@pytest.fixture(scope="module")
def fixture_output(fixture_a):
    enc, _, expected = fixture_a
    with torch.inference_mode():
        return enc(expected["batch"]["masked_video"])


@needs_fixture
def test_fixture_keys_load_strict(fixture_a):
    enc, state, _ = fixture_a
    used = select_vision_state_dict(state)
    assert set(used) == set(enc.state_dict())
    assert all(k.startswith("model.visual.") for k in used)
    for key, value in enc.state_dict().items():
        assert torch.equal(value, used[key]), key


@needs_fixture
def test_fixture_resize_is_bit_exact(fixture_a):
    enc, _, expected = fixture_a
    frames = expected["batch"]["masked_video"][0][:2]
    resized = enc.resize(frames)
    assert resized.dtype == torch.uint8
    assert torch.equal(resized, expected["vision_resized_first2_uint8"])


@needs_fixture
@pytest.mark.slow
def test_fixture_encoder_output(fixture_a, fixture_output):
    _, _, expected = fixture_a
    ref = expected["vision_encoder_output"]
    out = fixture_output
    assert out.shape == ref.shape == (1, 51, 512)
    assert (out - ref).abs().max().item() <= ATOL
    # Features move only ~1e-3 between frames, so also check the per-frame deviations from
    # the clip mean: they must match closely relative to their own ~2e-3 range.
    dev, ref_dev = out - out.mean(1, keepdim=True), ref - ref.mean(1, keepdim=True)
    assert (dev - ref_dev).abs().max().item() <= ATOL / 10
    assert ref_dev.abs().max().item() > 1e-3
    # ...and frame order matters at this tolerance: a one-frame shift would be caught.
    distinct = (ref[0, 1:] - ref[0, :-1]).abs().amax(-1) > 1e-4
    shift_err = (out[0, 1:] - ref[0, :-1]).abs().amax(-1)[distinct]
    assert shift_err.min().item() > 10 * ATOL
    # masked_video_features is the same tensor, channels first.
    assert (out.transpose(1, 2) - expected["masked_video_features"]).abs().max() <= ATOL
    assert torch.allclose(out.norm(dim=-1), torch.ones(1, 51), atol=1e-5)


@needs_fixture
def test_fixture_chunking_and_padding(fixture_a):
    """batch_size chunks and pad_sequence over several videos (reference semantics)."""
    enc, state, expected = fixture_a
    video = expected["batch"]["masked_video"][0]
    a, b = video[:3], video[10:12]
    chunked = PerceptionVisionEncoder(
        dict(json.loads((FIXTURE / "config.json").read_text())["vision_encoder"], batch_size=2)
    ).eval()
    chunked.load_vision_state_dict(state)
    with torch.inference_mode():
        whole = enc([a, b])
        parts = chunked([a, b])
    assert whole.shape == parts.shape == (2, 3, 512)
    assert (whole - parts).abs().max().item() <= 1e-6
    assert torch.equal(whole[1, 2:], torch.zeros(1, 512))
    ref = expected["vision_encoder_output"][0]
    assert (whole[0] - ref[:3]).abs().max().item() <= ATOL
    assert (whole[1, :2] - ref[10:12]).abs().max().item() <= ATOL


@needs_fixture
def test_parent_strict_load_ignores_text_tower(fixture_a):
    """Released checkpoints carry PE's text tower; a strict parent load must accept them."""
    _, state, _ = fixture_a
    parent = torch.nn.Module()
    parent.vision_encoder = PerceptionVisionEncoder(
        json.loads((FIXTURE / "config.json").read_text())["vision_encoder"]
    )
    sd = {k: v for k, v in state.items() if k.startswith("vision_encoder.")}
    text_tower = {
        "vision_encoder.model.token_embedding.weight": torch.zeros(4, 2),
        "vision_encoder.model.positional_embedding": torch.zeros(3, 2),
        "vision_encoder.model.transformer.resblocks.0.ln_1.weight": torch.zeros(2),
        "vision_encoder.model.ln_final.bias": torch.zeros(2),
        "vision_encoder.model.text_projection": torch.zeros(2, 2),
        "vision_encoder.model.logit_scale": torch.zeros(()),
    }
    assert all(is_unused_key(k[len("vision_encoder.") :]) for k in text_tower)
    result = parent.load_state_dict({**sd, **text_tower}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # the helper drops them too, and still insists on every visual key
    enc = parent.vision_encoder
    enc.load_vision_state_dict({**sd, **text_tower})
    del sd["vision_encoder.model.visual.proj"]
    with pytest.raises(SAMAudioLoadError, match="missing.*visual.proj"):
        enc.load_vision_state_dict(sd)


def test_unused_key_names():
    assert is_unused_key("model.positional_embedding")
    assert is_unused_key("model.transformer.resblocks.3.mlp.c_fc.weight")
    assert not is_unused_key("model.visual.positional_embedding")
    assert not is_unused_key("model.visual.transformer.resblocks.3.mlp.c_fc.weight")


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("name", list(REFERENCE_COUNTS))
def test_arch_shapes_and_param_counts(name):
    arch = PE_CORE_VISION_ARCHS[name]
    with torch.device("meta"):  # no memory: G alone is 1.9 B parameters
        enc = PerceptionVisionEncoder(_cfg(name))
    n_params, n_keys = REFERENCE_COUNTS[name]
    assert enc.num_visual_params == n_params
    sd = enc.state_dict()
    assert len(sd) == n_keys
    w, p, grid = arch.width, arch.patch_size, arch.image_size // arch.patch_size
    cls = int(arch.use_cls_token)
    v = "model.visual."
    assert sd[v + "conv1.weight"].shape == (w, 3, p, p)
    assert sd[v + "positional_embedding"].shape == (cls + grid * grid, w)
    assert (v + "class_embedding" in sd) == arch.use_cls_token
    assert sd[v + "proj"].shape == (w, arch.output_dim)
    last = f"{v}transformer.resblocks.{arch.layers - 1}."
    assert sd[last + "attn.in_proj_weight"].shape == (3 * w, w)
    assert sd[last + "mlp.c_fc.weight"].shape == (arch.mlp_width, w)
    assert sd[v + "attn_pool.probe"].shape == (1, 1, w)
    assert sd[v + "attn_pool.mlp.c_fc.weight"].shape == (4 * w, w)
    assert not any("ls_" in k for k in sd)  # PE-Core has no layer scale


def test_arch_table_values():
    g, l14 = PE_CORE_VISION_ARCHS["PE-Core-G14-448"], PE_CORE_VISION_ARCHS["PE-Core-L14-336"]
    assert (g.width, g.layers, g.heads, g.mlp_width, g.output_dim) == (1536, 50, 16, 8960, 1280)
    assert not g.use_cls_token and l14.use_cls_token
    assert (l14.width, l14.layers, l14.heads, l14.patch_size, l14.image_size) == (
        1024,
        24,
        16,
        14,
        336,
    )


@pytest.mark.parametrize(
    "name,image_size",
    [("PE-Core-T16-384", 48), ("PE-Core-S16-384", 40), ("PE-Core-B16-224", 32)],
)
def test_small_forward_random_weights(name, image_size):
    """Non-native image sizes exercise the bilinear position-grid resampling and RoPE grids."""
    torch.manual_seed(0)
    enc = PerceptionVisionEncoder(_cfg(name, image_size=image_size, batch_size=2)).eval()
    video = torch.randint(0, 256, (3, 3, 20, 30), dtype=torch.uint8)
    with torch.inference_mode():
        out = enc([video, video[:1]])
    assert out.shape == (2, 3, PE_CORE_VISION_ARCHS[name].feature_dim)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[0].norm(dim=-1), torch.ones(3), atol=1e-5)
    assert (out[1, 0] - out[0, 0]).abs().max() <= 1e-5
    assert torch.equal(out[1, 1:], torch.zeros_like(out[1, 1:]))


def test_posemb_resampling_keeps_cls_and_native_grid():
    torch.manual_seed(0)
    visual = PerceptionVisionEncoder(_cfg("PE-Core-T16-384", image_size=64)).model.visual
    table = visual.positional_embedding
    assert torch.equal(visual.sample_abs_posemb(24, 24)[0], table)
    small = visual.sample_abs_posemb(4, 3)
    assert small.shape == (1, 1 + 12, 192)
    assert torch.equal(small[0, 0], table[0])
    # a bilinear resample of a 24x24 grid to 12x12 (align_corners=False) averages 2x2 blocks
    grid = table[1:].reshape(24, 24, 192)
    block_mean = grid.reshape(12, 2, 12, 2, 192).mean(dim=(1, 3)).reshape(144, 192)
    assert torch.allclose(visual.sample_abs_posemb(12, 12)[0, 1:], block_mean, atol=1e-6)


def test_cache_from_inference_mode_is_usable_with_autograd():
    torch.manual_seed(0)
    enc = PerceptionVisionEncoder(_cfg("PE-Core-T16-384", image_size=32))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        enc.encode(x)
    out = enc.encode(x)
    out.sum().backward()
    assert enc.model.visual.conv1.weight.grad is not None


# --------------------------------------------------------------------------- config / inputs


def test_config_parses_fixture_style_dict():
    cfg = PerceptionEncoderConfig.from_dict(_cfg("PE-Core-T16-384"))
    assert cfg.arch is PE_CORE_VISION_ARCHS["PE-Core-T16-384"]
    assert cfg.interpolation.name == "BICUBIC"
    defaults = PerceptionEncoderConfig.from_dict({"dim": 1024}, use_reference_defaults=True)
    assert (defaults.name, defaults.image_size) == ("PE-Core-L14-336", 336)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"dimm": 512}, "unknown field.*'dimm'"),
        ({"image_size": None}, "'image_size' must be an int"),
        ({"name": "PE-Core-X99"}, "'name' = 'PE-Core-X99'.*PE-Core-T16-384"),
        ({"dim": 1024}, "'dim' = 1024.*512"),
        ({"interpolation_mode": "lanczos9"}, "'interpolation_mode'"),
        ({"normalize_feature": 1}, "'normalize_feature' must be a bool"),
        ({"batch_size": True}, "'batch_size' must be an int"),
        ({"image_size": 8}, "'image_size' = 8"),
    ],
)
def test_bad_config_field_is_named(change, match):
    cfg = _cfg("PE-Core-T16-384")
    cfg.update(change)
    with pytest.raises(SAMAudioLoadError, match=match):
        PerceptionVisionEncoder(cfg)


def test_missing_config_field_is_named():
    cfg = _cfg("PE-Core-T16-384")
    del cfg["interpolation_mode"]
    with pytest.raises(SAMAudioLoadError, match="missing field.*'interpolation_mode'"):
        PerceptionEncoderConfig.from_dict(cfg)


def test_bad_video_inputs():
    with torch.device("meta"):
        enc = PerceptionVisionEncoder(_cfg("PE-Core-T16-384"))
    with pytest.raises(SAMAudioInputError, match="uint8"):
        enc([torch.zeros(2, 3, 8, 8)])
    with pytest.raises(SAMAudioInputError, match=r"\[T, 3, H, W\]"):
        enc([torch.zeros(3, 8, 8, dtype=torch.uint8)])
    with pytest.raises(SAMAudioInputError, match="list"):
        enc(torch.zeros(1, 2, 3, 8, 8, dtype=torch.uint8))


# --------------------------------------------------------------------------- optional: reference code


@pytest.fixture
def reference_pe(tmp_path):
    """The reference ``core.vision_encoder.pe`` module; its ``core`` package is unloaded after."""
    for dep in ("einops", "timm", "huggingface_hub"):
        pytest.importorskip(dep)
    try:
        yield _import_reference(tmp_path)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"cannot read commit {PE_COMMIT} from {PE_REPO}")
    finally:
        for mod in [m for m in sys.modules if m == "core" or m.startswith("core.")]:
            del sys.modules[mod]


def _import_reference(tmp: Path):
    """Extract perception_models' pe.py/rope.py/config.py at the pinned commit and import them."""
    pkg = tmp / "core" / "vision_encoder"
    pkg.mkdir(parents=True)
    (tmp / "core" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    for name in ("pe.py", "rope.py", "config.py"):
        blob = subprocess.run(
            ["git", "-C", str(PE_REPO), "show", f"{PE_COMMIT}:core/vision_encoder/{name}"],
            check=True,
            capture_output=True,
        ).stdout
        (pkg / name).write_bytes(blob)
    for mod in [m for m in sys.modules if m == "core" or m.startswith("core.")]:
        del sys.modules[mod]
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module("core.vision_encoder.pe")
    finally:
        sys.path.remove(str(tmp))


@pytest.mark.skipif(not PE_REPO.exists(), reason="perception_models git mirror not available")
@pytest.mark.parametrize(
    "name,sizes",
    [("PE-Core-T16-384", (64, 40)), ("PE-Core-S16-384", (48,))],
)
def test_matches_reference_code(reference_pe, name, sizes):
    """Same weights through the reference pe.VisionTransformer and the port: bit-identical on
    CPU fp32 at non-native sizes (position-grid resampling, RoPE grid; 384 is fixture A)."""
    from dataclasses import asdict

    from core.vision_encoder.config import PE_VISION_CONFIG

    torch.manual_seed(0)
    ref = reference_pe.VisionTransformer(**asdict(PE_VISION_CONFIG[name])).eval()
    _perturb(ref)
    enc = PerceptionVisionEncoder(_cfg(name)).eval()
    enc.model.visual.load_state_dict(ref.state_dict(), strict=True)
    for size in sizes:
        x = torch.randn(2, 3, size, size)
        with torch.inference_mode():
            expected = ref(x)
            got = enc.model.visual(x)
        assert (got - expected).abs().max().item() <= 1e-6, size
