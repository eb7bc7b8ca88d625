"""Prepared GPU check of the SAM Audio port (issue 17): on any CUDA machine, within 8 minutes.

Stages, each time-boxed (its own budget, all of them 450 s, so that with imports and CUDA
start-up the check ends within 8 minutes; a stage out of time is reported as such and the next
one starts):

1. ``parity``: fixture A (the official code's outputs from random weights, see
   tests/test_sam_audio_model.py) on the device in float32 with TF32 off: text, codec and
   vision features (tolerance 1e-5), one vector-field evaluation, the 16-step ODE and the
   stems (1e-4), as the CPU tests check them. Then the same ODE and stems with the DiT under
   bf16 autocast (the ``precision="bf16"`` path): max |deviation| from the reference's fp32
   outputs, reported (no threshold).
2. ``timing``: one 30 s window (codec encode, T5, PE vision on 750 distinct frames, 16
   midpoint steps = 32 vector-field evaluations, decode of both stems) for real-size small,
   base and large configurations with random weights (``benchmarks/sam_audio.py``'s
   builders): a cold and a warm fp32 run, a bf16-autocast run and a bf16 run with the
   encoders offloaded to the CPU (``SAMAudio.set_encoder_offload``); wall seconds, seconds
   per second of audio, peak GPU memory (``torch.cuda.max_memory_allocated``, weights
   included). PyTorch's default TF32 settings.

Exit status: 0 every stage ran and fp32 parity held; 1 a check failed or a stage failed,
ran out of time or could not run (e.g. no fixture); 2 not run because there is no CUDA device
(one line on stderr: "no CUDA device: gpu_check has not run").

    python benchmarks/gpu_check.py [--json results.json] [--fixture DIR]
    python benchmarks/gpu_check.py --device cpu --stages parity   # the CPU proxy (fixture only)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from sam_audio import config_for, random_t5_base  # noqa: E402  (benchmarks/sam_audio.py)

from model.sam_audio import SAMAudio, SAMAudioProcessor  # noqa: E402

FIXTURE_NAME = Path("fixtures") / "sam_audio_reference_a"
CASES = ["text", "span", "visual", "batch"]
ENCODER_TOL, DIT_TOL = 1e-5, 1e-4
BUDGETS = {"parity": 120, "small": 90, "base": 120, "large": 180}  # s; capped by --budget


class StageTimeout(Exception):
    pass


@contextlib.contextmanager
def time_box(seconds: float):
    """Raise StageTimeout in the main thread after ``seconds`` (checked between Python ops)."""

    def expire(_sig, _frame):
        raise StageTimeout(f"over its {seconds:.0f} s budget")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM


def peak_mib(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def maxerr(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.detach().double().cpu() - b.double()).abs().max().item()


def find_fixture(given: str | None) -> Path:
    if given:
        return Path(given)
    env = os.environ.get("SONOMASK_SAM_AUDIO_FIXTURE")
    root = HERE.parent
    for c in [env, root / "shared" / FIXTURE_NAME, root.parent / "shared" / FIXTURE_NAME]:
        if c and (Path(c) / "expected.pt").is_file():
            return Path(c)
    return Path("/work/shared") / FIXTURE_NAME


# ---------------------------------------------------------------------------------------------
# stage 1: fixture parity, fp32 and bf16 autocast
# ---------------------------------------------------------------------------------------------


def parity(dev: torch.device, fixture: Path, cases: list[str]) -> dict:
    if not (fixture / "expected.pt").is_file():
        raise FileNotFoundError(f"fixture A not found at {fixture} (pass --fixture DIR)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        model = SAMAudio.from_pretrained(fixture, device=dev)
        proc = SAMAudioProcessor.from_pretrained(fixture)
        inputs = torch.load(fixture / "inputs.pt", weights_only=False)
        expected = torch.load(fixture / "expected.pt", weights_only=False)
        out: dict = {"cases": {}, "fp32_ok": True}
        for name in cases:
            case, exp = inputs["cases"][name], expected["cases"][name]
            videos = [inputs["video_masked"]] if case["uses_video"] else None
            batch = proc(
                descriptions=case["descriptions"],
                audios=case["audios"],
                anchors=case["anchors"],
                masked_videos=videos,
            ).to(dev)
            noise = case["noise"].to(dev)
            bits = exp["wm_message"].to(dev)
            sizes = (batch.sizes * model.hop_length).int()
            errs: dict[str, float] = {}
            with torch.inference_mode():
                args = model.get_forward_args(batch)
                for key in ("text_features", "audio_features", "masked_video_features"):
                    errs[key] = maxerr(args[key], exp[key])
                t = case["forward_time"].to(dev)
                cond = model.prepare_conditioning(**args)
                errs["forward_t05"] = maxerr(model.velocity(noise, t, cond), exp["forward_t05"])
                row = {}
                for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                    y = model.solve(args, noise, autocast_dtype=dtype)
                    wavs = model.decode(y, bits)
                    e = {"ode_final_state": maxerr(y, exp["ode_final_state"])}
                    for i, stem in enumerate(("target", "residual")):
                        got = model.unbatch(wavs[:, i], sizes)
                        e[stem] = max(maxerr(g, w) for g, w in zip(got, exp[stem], strict=True))
                    row[label] = e
            errs.update(row.pop("fp32"))
            ok = all(
                v <= (ENCODER_TOL if k.endswith("features") else DIT_TOL) for k, v in errs.items()
            )
            out["fp32_ok"] &= ok
            out["cases"][name] = {"fp32": errs, "fp32_ok": ok, "bf16": row["bf16"]}
            print(
                f"  {name:6s} fp32 {'ok  ' if ok else 'FAIL'} "
                + " ".join(f"{k} {v:.1e}" for k, v in errs.items())
                + "\n         bf16 autocast vs reference fp32: "
                + " ".join(f"{k} {v:.1e}" for k, v in row["bf16"].items()),
                flush=True,
            )
        scale = {
            "ode_final_state": max(
                expected["cases"][c]["ode_final_state"].abs().max().item() for c in cases
            ),
            "target": max(
                t.abs().max().item() for c in cases for t in expected["cases"][c]["target"]
            ),
        }
        out["bf16_max"] = {
            k: max(c["bf16"][k] for c in out["cases"].values())
            for k in ("ode_final_state", "target", "residual")
        }
        out["reference_max_abs"] = scale
        print(
            "  bf16 autocast, max |deviation| from the reference's fp32 outputs over the cases: "
            + ", ".join(f"{k} {v:.2e}" for k, v in out["bf16_max"].items())
            + f" (reference max |x|: latents {scale['ode_final_state']:.2f}, "
            f"stems {scale['target']:.2f})",
            flush=True,
        )
        return out
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's defaults
        torch.backends.cudnn.allow_tf32 = True


# ---------------------------------------------------------------------------------------------
# stage 2: one window at real size, random weights
# ---------------------------------------------------------------------------------------------


def build(size: str, dev: torch.device) -> SAMAudio:
    torch.manual_seed(0)
    try:  # initialise on the device: random init of billions of weights is slow on a CPU
        with torch.device(dev):
            model = SAMAudio(config_for(size, tiny_codec=False), text_encoder=random_t5_base())
    except Exception as err:  # noqa: BLE001 - some constructor that wants the CPU
        print(f"  (building on the device failed: {err!r}; building on the CPU)", flush=True)
        model = SAMAudio(config_for(size, tiny_codec=False), text_encoder=random_t5_base())
    return model.eval().to(dev)


def timing(size: str, dev: torch.device, seconds: float, steps: int) -> dict:
    reset_peak(dev)
    t0 = time.perf_counter()
    model = build(size, dev)
    sync(dev)
    cfg = model.config
    out: dict = {
        "build_s": time.perf_counter() - t0,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "weights_mib": peak_mib(dev),
        "runs": {},
    }
    print(
        f"  {size}: {out['params_m']:.0f} M parameters, built in {out['build_s']:.1f} s, "
        f"peak {out['weights_mib']:.0f} MiB",
        flush=True,
    )
    sr, hop = cfg.audio_codec.sample_rate, cfg.audio_codec.hop_length
    n = int(seconds * sr)
    T = math.ceil(n / hop)
    gen = torch.Generator().manual_seed(0)
    wav = 0.1 * torch.randn(1, n, generator=gen)
    video = torch.randint(0, 255, (T, 3, 180, 320), dtype=torch.uint8, generator=gen)
    batch = SAMAudioProcessor.from_config(cfg)(
        descriptions=["a dog barking in the distance"], audios=[wav], masked_videos=[video]
    ).to(dev)
    noise = torch.randn(1, T, 2 * cfg.latent_channels, generator=gen).to(dev)
    bits = torch.zeros(2, 16, device=dev)
    ode_opt = {"method": "midpoint", "options": {"step_size": 1.0 / steps}}
    runs = [("fp32 cold", None, False), ("fp32", None, False), ("bf16", torch.bfloat16, False)]
    if dev.type == "cuda":
        runs.append(("bf16 + encoder offload", torch.bfloat16, True))
    for label, dtype, offload in runs:
        model.set_encoder_offload(offload)
        reset_peak(dev)
        times = {}
        with torch.inference_mode():
            sync(dev)
            t0 = time.perf_counter()
            args = model.get_forward_args(batch)
            sync(dev)
            times["encode_s"] = time.perf_counter() - t0
            latents = model.solve(args, noise, ode_opt, autocast_dtype=dtype)
            sync(dev)
            times["ode_s"] = time.perf_counter() - t0 - times["encode_s"]
            model.decode(latents, bits)
            sync(dev)
            total = time.perf_counter() - t0
        times["decode_s"] = total - times["encode_s"] - times["ode_s"]
        run = {
            **times,
            "total_s": total,
            "s_per_s_audio": total / seconds,
            "peak_mib": peak_mib(dev),
        }
        out["runs"][label] = run
        print(
            f"  {size:5s} {label:24s} {total:7.2f} s = {run['s_per_s_audio']:.3f} s/s audio "
            f"(encode {times['encode_s']:.2f}, ODE {times['ode_s']:.2f}, "
            f"decode {times['decode_s']:.2f}), peak {run['peak_mib']:.0f} MiB",
            flush=True,
        )
        del args, latents
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for the proxy run")
    ap.add_argument("--stages", default="parity,timing")
    ap.add_argument("--sizes", default="small,base,large")
    ap.add_argument("--seconds", type=float, default=30.0, help="window timed (default 30 s)")
    ap.add_argument("--steps", type=int, default=16, help="midpoint steps (reference: 16)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all stages")
    ap.add_argument(
        "--stage-budget", type=float, default=None, help="seconds per stage (default: per stage)"
    )
    ap.add_argument("--fixture", default=None, help="fixture A folder")
    ap.add_argument("--cases", default=",".join(CASES), help="fixture cases for parity")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: gpu_check has not run", file=sys.stderr)
        return 2
    deadline = time.monotonic() + args.budget
    stages = [s for s in args.stages.split(",") if s]
    results: dict = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "stages": {},
    }
    print(f"gpu_check on {results['device']} (torch {torch.__version__})", flush=True)
    jobs = []
    if "parity" in stages:
        jobs.append(
            (
                "parity",
                "parity",
                lambda: parity(dev, find_fixture(args.fixture), args.cases.split(",")),
            )
        )
    if "timing" in stages:
        for size in args.sizes.split(","):
            jobs.append(
                (size, f"timing {size}", lambda s=size: timing(s, dev, args.seconds, args.steps))
            )
    status = 0
    for key, name, fn in jobs:
        left = deadline - time.monotonic()
        budget = min(args.stage_budget or BUDGETS.get(key, 120), left)
        print(f"{name} (budget {budget:.0f} s)", flush=True)
        if budget < 10:
            results["stages"][name] = {"status": "not run: time budget spent"}
            print("  not run: time budget spent", flush=True)
            status = 1
            continue
        t0 = time.perf_counter()
        try:
            with time_box(budget):
                res = fn()
            res["status"] = "ok" if res.get("fp32_ok", True) else "parity FAILED"
            status |= 0 if res.get("fp32_ok", True) else 1
        except (StageTimeout, Exception) as err:  # noqa: BLE001 - report and go on
            oom = isinstance(err, torch.OutOfMemoryError)
            res = {"status": ("out of memory: " if oom else "") + f"{type(err).__name__}: {err}"}
            print(f"  {name}: {res['status']}", flush=True)
            status = 1
        res["wall_s"] = time.perf_counter() - t0
        results["stages"][name] = res
        reset_peak(dev)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(
        "gpu_check: "
        + (
            "INCOMPLETE or FAILED"
            if status
            else "all stages ran" + (", fp32 parity held" if "parity" in stages else "")
        )
        + f" ({sum(r['wall_s'] for r in results['stages'].values() if 'wall_s' in r):.0f} s)"
    )
    return status


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
