"""Benchmark the SAM Audio port: seconds of compute per second of audio, naive vs optimised.

Random weights, no download: the DiT comes in the released sizes (base 2048 wide x 16 heads x
16 layers, large 2816 x 22 x 22, small 1536 x 12 x 12 - small is unconfirmed), the DACVAE codec
with the released codec config, PE-Core-L14-336 as the vision encoder and a randomly
initialised T5-base (with a hashing tokenizer: token ids do not matter for speed).

What is measured (the ODE part runs ``--steps`` midpoint steps, i.e. 2 x steps vector-field
evaluations, and is also extrapolated to the reference's 16 steps / 32 evaluations):

* naive: every evaluation recomputes what the reference recomputes (``naive=True``);
* +cache: audio part of the input projection, video/anchor terms and text-memory projection
  once per call (RoPE still the reference way, masks kept);
* +rope table: RoPE cos/sin once per call;
* +drop masks: all-valid padding masks dropped (= the default optimised path);
* +bf16 autocast (``--bf16``), +torch.compile (``--compile``): optional extras.

Plus the encoders (codec encode, T5, PE) and the codec decode, unless skipped; the codec's
encode and decode are timed both ways too (naive = ``naive=True``, the reference's computation:
weight norm on every call, channels-first convolutions, allocating Snake, the watermark head
twice; optimised = the default). Peak resident memory is reset before each stage
(``/proc/self/clear_refs``), so every row shows its own peak.

``--fixture DIR`` instead times the whole ``separate()`` on a reference fixture (fixture A:
random weights with the reference's outputs, e.g. /work/shared/fixtures/sam_audio_reference_a),
naive (``separate(naive=True)``: DiT and codec the reference's way) against optimised (the
default), round-robin, with the codec decode and encode of the same case, each with its peak
RSS and the max |difference| (between the two paths and against the reference's waveforms).

    python benchmarks/sam_audio.py                       # small DiT, 5 s, 2 steps, CPU
    python benchmarks/sam_audio.py --size base --seconds 10 --steps 16 --device cuda --bf16
    python benchmarks/sam_audio.py --skip-codec --skip-vision  # DiT only
    python benchmarks/sam_audio.py --size base --save-random /tmp/sam-audio-base-random
        # a random model folder for `sonomask separate --model` (released layout)
    python benchmarks/sam_audio.py --fixture /work/shared/fixtures/sam_audio_reference_a \
        --case text --repeats 2     # whole separate(), naive vs optimised, on fixture A
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.sam_audio import SAMAudio, SAMAudioConfig  # noqa: E402
from model.sam_audio import model as sam_model  # noqa: E402
from model.sam_audio.config import REFERENCE_DEFAULTS  # noqa: E402
from model.sam_audio.text_encoder import T5TextEncoder  # noqa: E402

SIZES = {
    "small": (1536, 12, 12),  # unconfirmed
    "base": (2048, 16, 16),
    "large": (2816, 22, 22),
}


def config_for(size: str, tiny_codec: bool) -> SAMAudioConfig:
    """A released size: the reference defaults with that size's DiT width and depth."""
    dim, heads, layers = SIZES[size]
    data = copy.deepcopy(REFERENCE_DEFAULTS[""])
    for section in ("audio_codec", "text_encoder", "vision_encoder", "transformer"):
        data[section] = copy.deepcopy(REFERENCE_DEFAULTS[section])
    if tiny_codec:  # for --skip-codec runs: nothing of the codec is timed, keep it cheap to build
        data["audio_codec"].update(encoder_dim=8, latent_dim=32)
    c = data["audio_codec"]["codebook_dim"]
    data["in_channels"] = 6 * c
    data["span_predictor"] = None
    data["transformer"].update(
        dim=dim, n_heads=heads, n_layers=layers, context_dim=dim, out_channels=2 * c
    )
    return SAMAudioConfig.from_dict(data)


class HashTokenizer:
    """Stand-in for the T5 tokenizer (same call signature): one id per word + ``</s>``."""

    def __call__(
        self, texts, truncation=True, max_length=512, padding="longest", return_tensors="pt"
    ):
        rows = [[(hash(w) % 31000) + 100 for w in t.split()][: max_length - 1] + [1] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), n, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def random_t5_base() -> T5TextEncoder:
    import transformers

    cfg = transformers.T5Config(  # t5-base
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_heads=12,
        feed_forward_proj="relu",
    )
    return T5TextEncoder(transformers.T5EncoderModel(cfg).eval(), HashTokenizer())


def word_level_tokenizer():
    """A stand-in T5 tokenizer that ``save_pretrained`` can write and ``AutoTokenizer`` reads
    back (every word is ``<unk>``, then ``</s>``): for a saved random model, where token ids do
    not matter for speed."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def save_random(size: str, folder: Path) -> None:
    """Write a random-weight model of ``size`` in the released layout (config.json,
    checkpoint.pt, the T5 in a subfolder) for runs through ``sonomask separate --model``."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    t5 = random_t5_base()
    t5.tokenizer = word_level_tokenizer()
    model = SAMAudio(config_for(size, tiny_codec=False), text_encoder=t5).eval()
    model.save_pretrained(folder)
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    print(
        f"random SAM Audio {size} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M "
        f"parameters) saved to {folder}: {total / 2**30:.2f} GiB in "
        f"{time.perf_counter() - t0:.0f} s"
    )


class _Stub(torch.nn.Module):
    """Placeholder for a skipped component (never called)."""

    def __init__(self, *_args) -> None:
        super().__init__()


# ---------------------------------------------------------------------------------------------
# measurement helpers
# ---------------------------------------------------------------------------------------------


def _rss_mib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device: torch.device) -> None:
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux >= 4.0)
    except OSError:
        pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


_MAX_PEAK = [0.0]


def peak(device: torch.device) -> str:
    rss = _rss_mib("VmHWM")
    _MAX_PEAK[0] = max(_MAX_PEAK[0], rss)
    out = f"{rss:8.0f} MiB RSS"
    if device.type == "cuda":
        out += f", {torch.cuda.max_memory_allocated(device) / 2**20:8.0f} MiB CUDA"
    return out


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def round_robin(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, tuple[float, str, object]]:
    """Best seconds, last peak and last result of each function, run in turns so that load
    from other processes hits every one alike."""
    out: dict[str, tuple[float, str, object]] = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            reset_peak(device)
            sec, res = timed(fn, device, 1)
            best = min(sec, out[name][0]) if name in out else sec
            out[name] = (best, peak(device), res)
    return out


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def fixture_main(args: argparse.Namespace) -> None:
    """``--fixture``: whole ``separate()`` and the codec, naive vs optimised, on a fixture."""
    from model.sam_audio import SAMAudioProcessor

    folder = Path(args.fixture)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    model = SAMAudio.from_pretrained(folder).eval()
    processor = SAMAudioProcessor.from_pretrained(folder)
    inputs = torch.load(folder / "inputs.pt", weights_only=False)
    expected = torch.load(folder / "expected.pt", weights_only=False)
    case, exp = inputs["cases"][args.case], expected["cases"][args.case]
    batch = processor(
        descriptions=case["descriptions"],
        audios=case["audios"],
        anchors=case["anchors"],
        masked_videos=[inputs["video_masked"]] if case["uses_video"] else None,
    )
    msg = exp["wm_message"]
    seconds = float(batch.sizes.sum()) * model.hop_length / model.sample_rate
    print(
        f"fixture {folder.name}, case {args.case}: {seconds:.2f} s of audio, "
        f"{tuple(exp['decode_latents'].shape)} latents; loaded in {time.perf_counter() - t0:.1f} s; "
        f"threads {torch.get_num_threads()}, repeats {args.repeats} (best of, round-robin)"
    )

    def separate(naive: bool) -> Callable[[], object]:
        def run():
            return model.separate(batch, noise=case["noise"], watermark_message=msg, naive=naive)

        return run

    codec = model.audio_codec
    latents = exp["decode_latents"]
    with torch.inference_mode():
        codec.decode(latents[..., :2], msg)  # warm-up: weight cache, oneDNN primitives
        codec.decode(latents[..., :2], msg, naive=True)
        codec_runs = round_robin(
            {
                "codec decode naive": lambda: codec.decode(latents, msg, naive=True),
                "codec decode optimised": lambda: codec.decode(latents, msg),
                "codec encode naive": lambda: codec.encode(batch.audios, naive=True),
                "codec encode optimised": lambda: codec.encode(batch.audios),
            },
            device,
            args.repeats,
        )
    sep_runs = round_robin(
        {"separate() naive": separate(True), "separate() optimised": separate(False)},
        device,
        args.repeats,
    )
    print()
    print(f"{'stage':28s} {'seconds':>9s} {'speedup':>8s} {'max|opt-naive|':>15s}   peak")
    pairs = [
        ("codec decode", codec_runs),
        ("codec encode", codec_runs),
        ("separate()", sep_runs),
    ]
    for stem, runs in pairs:
        naive_s, naive_pk, naive_out = runs[f"{stem} naive"]
        opt_s, opt_pk, opt_out = runs[f"{stem} optimised"]
        if stem == "separate()":
            err = max(
                _diff(a, b)
                for xs, ys in ((naive_out.target, opt_out.target),
                               (naive_out.residual, opt_out.residual))
                for a, b in zip(xs, ys, strict=True)
            )  # fmt: skip
        else:
            err = _diff(naive_out, opt_out)
        print(f"{stem + ' naive':28s} {naive_s:9.2f} {'1.00x':>8s} {'':>15s}   {naive_pk}")
        print(
            f"{stem + ' optimised':28s} {opt_s:9.2f} {naive_s / opt_s:7.2f}x {err:15.2e}   {opt_pk}"
        )
    ref_err = {
        name: max(
            _diff(a, b)
            for a, b in zip(
                runs[2].target + runs[2].residual, exp["target"] + exp["residual"], strict=True
            )
        )
        for name, runs in sep_runs.items()
    }
    print()
    for name, err in ref_err.items():
        print(f"{name}: max |difference| to the reference's target/residual {err:.2e}")
    print(f"highest peak RSS of any stage: {_MAX_PEAK[0]:.0f} MiB")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--seconds", type=float, default=5.0, help="audio length (one window)")
    ap.add_argument("--steps", type=int, default=2, help="midpoint steps timed (reference: 16)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=1, help="best of N for each ODE variant")
    ap.add_argument("--skip-codec", action="store_true", help="random latents, no encode/decode")
    ap.add_argument("--skip-vision", action="store_true", help="no video prompt")
    ap.add_argument("--vision-frames", type=int, default=4, help="PE frames timed (then scaled)")
    ap.add_argument("--skip-naive", action="store_true", help="do not time the naive path")
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast of the DiT")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the DiT")
    ap.add_argument(
        "--fixture",
        metavar="DIR",
        default=None,
        help="time the whole separate() (and the codec) naive vs optimised on a reference fixture",
    )
    ap.add_argument("--case", default="text", help="the --fixture case (text, span, visual, batch)")
    ap.add_argument(
        "--save-random",
        metavar="DIR",
        default=None,
        help="only write a random --size model folder (released layout) to DIR and exit",
    )
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.save_random:
        save_random(args.size, Path(args.save_random))
        return
    if args.fixture:
        fixture_main(args)
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = config_for(args.size, tiny_codec=args.skip_codec)
    if args.skip_codec:
        sam_model._build_codec = _Stub
    if args.skip_vision:
        sam_model._build_vision_encoder = _Stub

    reset_peak(device)
    t0 = time.perf_counter()
    model = SAMAudio(cfg, text_encoder=random_t5_base()).eval().to(device)
    dit_params = sum(p.numel() for p in model.transformer.parameters())
    all_params = sum(p.numel() for p in model.parameters())
    print(
        f"SAM Audio {args.size}: DiT {dit_params / 1e6:.0f} M params, total {all_params / 1e6:.0f} M; "
        f"built in {time.perf_counter() - t0:.1f} s; peak {peak(device)}"
    )
    print(
        f"device {device}, threads {torch.get_num_threads()}, audio {args.seconds:g} s, "
        f"{args.steps} midpoint steps ({2 * args.steps} NFE) timed, extrapolated to 16 steps"
    )

    sr, hop = cfg.audio_codec.sample_rate, cfg.audio_codec.hop_length
    n = int(args.seconds * sr)
    T = -(-n // hop)
    C2 = 2 * cfg.latent_channels
    gen = torch.Generator().manual_seed(0)
    wav = (0.1 * torch.randn(1, 1, n, generator=gen)).to(device)
    video = torch.randint(
        0, 255, (min(T, args.vision_frames), 3, 180, 320), dtype=torch.uint8, generator=gen
    )
    video = video.to(device)
    rows: list[tuple[str, float, str]] = []  # name, seconds per second of audio, peak

    with torch.inference_mode():
        # -- encoders --------------------------------------------------------------------
        if args.skip_codec:
            feats = torch.randn(1, T, C2 // 2, generator=gen).to(device)
            audio_features = torch.cat([feats, feats], dim=2)
        else:
            # warm-up on two frames (weight caches, oneDNN primitives), both paths
            model._get_audio_features(wav[..., : 2 * hop])
            model._get_audio_features(wav[..., : 2 * hop], naive=True)
            reset_peak(device)
            sec, audio_features = timed(lambda: model._get_audio_features(wav), device, 1)
            rows.append(("codec encode", sec / args.seconds, peak(device)))
            if not args.skip_naive:
                reset_peak(device)
                sec, naive_features = timed(
                    lambda: model._get_audio_features(wav, naive=True), device, 1
                )
                err = _diff(naive_features, audio_features)
                rows.append(
                    (f"codec encode naive (max|diff| {err:.1e})", sec / args.seconds, peak(device))
                )
        reset_peak(device)
        sec, (text_features, text_mask) = timed(
            lambda: model.text_encoder(["a dog barking in the distance"]), device, 1
        )
        rows.append(("T5 encoder", sec / args.seconds, peak(device)))
        video_features = 0.05 * torch.randn(1, cfg.vision_encoder.dim, T, generator=gen).to(device)
        if not args.skip_vision:
            # PE encodes frames independently: time a few and scale to one frame per codec frame
            # (the worst case: a 25 fps video; slower videos repeat frames, encoded once).
            k = max(1, min(T, args.vision_frames))
            reset_peak(device)
            sec, _ = timed(lambda: model.vision_encoder([video[:k]]), device, 1)
            rows.append(
                (
                    f"PE vision ({k} of {T} frames timed, scaled)",
                    sec * T / k / args.seconds,
                    peak(device),
                )
            )
        fargs = {
            "audio_features": audio_features,
            "text_features": text_features,
            "text_mask": text_mask,
            "masked_video_features": video_features,
            "anchor_ids": torch.tensor([[0, 3, 1]], device=device),
            "anchor_alignment": torch.zeros(1, T, dtype=torch.long, device=device),
            "audio_pad_mask": torch.ones(1, T, dtype=torch.bool, device=device),
        }
        noise = torch.randn(1, T, C2, generator=gen).to(device)
        ode_opt = {"method": "midpoint", "options": {"step_size": 1.0 / args.steps}}
        scale = 16 / args.steps  # to the reference's 16 steps

        def solve_with(**kwargs) -> Callable[[], torch.Tensor]:
            return lambda: model.solve(fargs, noise, ode_opt, **kwargs)

        variants: list[tuple[str, Callable[[], torch.Tensor]]] = []
        if not args.skip_naive:
            variants.append(("ODE naive (reference per-step)", solve_with(naive=True)))
        variants += [
            ("ODE +cache conditioning", solve_with(drop_full_masks=False, rope_table=False)),
            ("ODE +RoPE table", solve_with(drop_full_masks=False)),
            ("ODE +drop all-valid masks (default)", solve_with()),
        ]
        if args.bf16:
            variants.append(
                ("ODE default + bf16 autocast", solve_with(autocast_dtype=torch.bfloat16))
            )
        # Round-robin over the variants (best of --repeats) so that load from other processes
        # on a shared machine hits every variant alike.
        best = [float("inf")] * len(variants)
        peaks = [""] * len(variants)
        outs: list[torch.Tensor | None] = [None] * len(variants)
        for _ in range(args.repeats):
            for i, (_name, fn) in enumerate(variants):
                reset_peak(device)
                sec, outs[i] = timed(fn, device, 1)
                best[i] = min(best[i], sec)
                peaks[i] = peak(device)
        reference_out = outs[0]
        ode_rows = [
            (name, best[i], peaks[i], (outs[i].float() - reference_out.float()).abs().max().item())
            for i, (name, _fn) in enumerate(variants)
        ]
        if args.compile:
            model.compile_dit()
            fn = solve_with()
            t0 = time.perf_counter()
            fn()  # compile + first run
            compile_s = time.perf_counter() - t0
            reset_peak(device)
            sec, out = timed(fn, device, args.repeats)
            err = (out.float() - reference_out.float()).abs().max().item()
            ode_rows.append(
                (f"ODE default + torch.compile (compile {compile_s:.0f} s)", sec, peak(device), err)
            )
            model._compiled_dit = None

        latents = reference_out
        if not args.skip_codec:
            bits = torch.zeros(2, 16, device=device)
            model.decode(latents[:, :2], bits)  # warm-up, both paths
            model.decode(latents[:, :2], bits, naive=True)
            reset_peak(device)
            sec, wavs = timed(lambda: model.decode(latents, bits), device, 1)
            rows.append(("codec decode (2 stems)", sec / args.seconds, peak(device)))
            if not args.skip_naive:
                reset_peak(device)
                sec, naive_wavs = timed(lambda: model.decode(latents, bits, naive=True), device, 1)
                err = _diff(naive_wavs, wavs)
                rows.append(
                    (
                        f"codec decode naive (2 stems, max|diff| {err:.1e})",
                        sec / args.seconds,
                        peak(device),
                    )
                )

    print()
    print(f"{'stage':48s} {'s / s audio':>12s}   peak")
    for name, sps, pk in rows:
        print(f"{name:48s} {sps:12.3f}   {pk}")
    print()
    base = ode_rows[0][1]
    print(
        f"{'ODE variant':48s} {'s/NFE':>8s} {'s/s audio (32 NFE)':>19s} {'speedup':>8s} "
        f"{'max|diff|':>10s}   peak"
    )
    for name, sec, pk, err in ode_rows:
        per_nfe = sec / (2 * args.steps)
        print(
            f"{name:48s} {per_nfe:8.3f} {sec * scale / args.seconds:19.3f} {base / sec:7.2f}x "
            f"{err:10.2e}   {pk}"
        )
    enc = sum(sps for name, sps, _ in rows if "decode" not in name and "naive" not in name)
    dec = sum(sps for name, sps, _ in rows if "decode" in name and "naive" not in name)
    enc_naive = sum(sps for name, sps, _ in rows if "decode" not in name and name != "codec encode")
    dec_naive = sum(sps for name, sps, _ in rows if "decode naive" in name) or dec
    naive_s = ode_rows[0][1] * scale / args.seconds
    default_s = next(r for r in ode_rows if "(default)" in r[0])[1] * scale / args.seconds
    print()
    print(
        f"total s per s of audio (encoders + 16-step ODE + decode): "
        f"{'naive ' + format(enc_naive + naive_s + dec_naive, '.3f') + ', ' if not args.skip_naive else ''}"
        f"optimised {enc + default_s + dec:.3f}"
        + ("  [codec skipped]" if args.skip_codec else "")
        + ("  [vision skipped]" if args.skip_vision else "")
    )
    print(f"highest peak RSS of any stage: {_MAX_PEAK[0]:.0f} MiB")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
