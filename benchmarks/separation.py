"""How well the weight-free separator pulls an on-screen object's sound out of a clip.

    python benchmarks/separation.py [--half dev|heldout|all] [--scenes a,b]
                                    [--size 192x112] [--json out.json] [--no-cache]
                                    [--reseed K]

Each clip of ``benchmarks/separation_scenes.py`` (real recorded and synthesised sounds:
espeak-ng voices, fluidsynth instruments and drums, the desktop sound themes; frames in
which every on-screen object moves with its own sound) is separated once per on-screen
object: the separator gets the mixture and the visual prompt that ``prompt_for`` makes
from the frames and that object's true mask, and returns a target and a residual.

What is measured, per prompt:

- a sounding object: SI-SDRi, the scale-invariant SDR of the target against the
  object's true source minus that of the mixture itself (dB, higher is better), and
  "right source": whether the target is closer (higher SI-SDR) to the object's own source
  than to any other source of the clip, on screen or off;
- a silent object (its correct target is silence): the target's energy relative to the
  mixture's in dB (floored at -60 dB), "right" when it is at most -20 dB;
- always: max |target + residual - mix| (the two must add back to the mixture) and the
  separator's speed as a realtime factor (audio seconds per second of ``separate``).

Then per half and category: mean SI-SDRi, right-source rate and the silent objects' dB;
per half: mean SI-SDRi, right-source rate and the worst category's mean SI-SDRi.

Halves: ``dev`` and ``heldout`` use different seeds and disjoint sounds (voices,
languages, texts, GM programs, drum notes, theme files, photos; see the ``*_BY_HALF``
tables in separation_scenes.py). Tune the separator or the prompt on ``dev`` only, and
read ``heldout`` to see whether the tuning carried over; a change tuned while looking at
held-out numbers makes them meaningless. ``--reseed K`` adds K to every clip's generator
seed: the same categories and the same half's sounds, but other melodies, sentences,
motions, placements and mixes, so a held-out half that has been looked at too often can be
replaced by clips nobody has seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model.separator import Prompt  # noqa: E402


def prompt_for(frames: np.ndarray, mask: np.ndarray, times: np.ndarray) -> Prompt:
    """The visual prompt for one object: what the separator is told about it."""
    from vision.evidence import FEATURES, visual_evidence

    ev = visual_evidence(frames, mask)
    return Prompt(
        video_times=times,
        object_activity=ev.motion,
        background_activity=ev.background,
        object_features=ev.object,
        feature_names=FEATURES,
    )


from benchmarks.separation_scenes import (  # noqa: E402
    CATEGORIES,
    HALVES,
    SCENES,
    SCENES_BY_NAME,
    SceneSpec,
    make_scene,
    tools_missing,
)
from model.classical import ClassicalSeparator  # noqa: E402

SILENT_RIGHT_DB = -20.0
SILENT_FLOOR_DB = -60.0
"""Silent-object dB below this count as this (an all-zero target would be -inf)."""
_EPS = 1e-12


def si_sdr(est: np.ndarray, ref: np.ndarray) -> float:
    """Scale-invariant SDR of ``est`` against ``ref`` in dB (no mean removal)."""
    est, ref = est.astype(np.float64), ref.astype(np.float64)
    alpha = float(est @ ref) / (float(ref @ ref) + _EPS)
    target = alpha * ref
    noise = est - target
    return float(10 * np.log10((target @ target + _EPS) / (noise @ noise + _EPS)))


def energy_db(x: np.ndarray, ref: np.ndarray) -> float:
    """10 log10(sum x^2 / sum ref^2)."""
    x, ref = x.astype(np.float64), ref.astype(np.float64)
    return float(10 * np.log10((x @ x + _EPS) / (ref @ ref + _EPS)))


@dataclass
class Row:
    """One prompt's numbers."""

    scene: str
    half: str
    category: str
    object: str
    source: str | None  # None: a silent object
    si_sdri: float | None  # sounding objects
    si_sdr: float | None
    closest: str | None  # the source the target is closest to (SI-SDR)
    silent_db: float | None  # silent objects: target energy / mix energy
    right: bool
    residual_err: float  # max |target + residual - mix|
    seconds: float  # wall time of separate()
    audio_seconds: float


def score(
    spec: SceneSpec, size: tuple[int, int], separator: ClassicalSeparator, cache: bool = True
) -> list[Row]:
    """Separate every prompted object of one clip and score it."""
    scene = make_scene(spec, size, cache=cache)
    mix = scene.mix
    rows = []
    for obj, src in scene.prompts:
        prompt = prompt_for(scene.frames, scene.masks[obj], scene.times)
        t0 = time.perf_counter()
        sep = separator.separate(mix, prompt)
        seconds = time.perf_counter() - t0
        target, residual = sep.target, sep.residual
        err = float(np.max(np.abs(target.astype(np.float64) + residual - mix)))
        if src is None:
            db = max(energy_db(target, mix), SILENT_FLOOR_DB)
            row = Row(
                spec.name,
                spec.half,
                spec.category,
                obj,
                None,
                None,
                None,
                None,
                db,
                db <= SILENT_RIGHT_DB,
                err,
                seconds,
                len(mix) / scene.sr,
            )
        else:
            ref = scene.sources[src]
            est = si_sdr(target, ref)
            sdri = est - si_sdr(mix, ref)
            against = {name: si_sdr(target, x) for name, x in scene.sources.items()}
            closest = max(against, key=lambda k: against[k])
            row = Row(
                spec.name,
                spec.half,
                spec.category,
                obj,
                src,
                sdri,
                est,
                closest,
                None,
                closest == src,
                err,
                seconds,
                len(mix) / scene.sr,
            )
        rows.append(row)
        print(_row_line(row), file=sys.stderr, flush=True)
    return rows


def _fmt(v: float | None, spec: str = "+6.1f") -> str:
    return "-" if v is None or not np.isfinite(v) else format(v, spec)


def _row_line(r: Row) -> str:
    what = r.source if r.source is not None else "(silent)"
    val = f"SI-SDRi {_fmt(r.si_sdri)} dB" if r.source else f"target {_fmt(r.silent_db)} dB"
    return (
        f"  {r.scene:<34} {r.object:<13} {what:<20} {val}  "
        f"{'right' if r.right else 'WRONG'}  {r.audio_seconds / max(r.seconds, 1e-9):5.1f}x"
    )


def _mean(vals: list[float]) -> float | None:
    return float(np.mean(vals)) if vals else None


def summarise(rows: list[Row]) -> dict:
    """Per half x category, per half, and overall numbers."""
    out: dict = {"halves": {}}
    for half in HALVES:
        hr = [r for r in rows if r.half == half]
        if not hr:
            continue
        cats = {}
        for cat in CATEGORIES:
            cr = [r for r in hr if r.category == cat]
            if not cr:
                continue
            sounding = [r for r in cr if r.source is not None]
            silent = [r for r in cr if r.source is None]
            cats[cat] = {
                "prompts": len(cr),
                "mean_si_sdri": _mean([r.si_sdri for r in sounding]),
                "right_source_rate": _mean([float(r.right) for r in sounding]),
                "silent_db": _mean([r.silent_db for r in silent]),
                "silent_right_rate": _mean([float(r.right) for r in silent]),
            }
        sounding = [r for r in hr if r.source is not None]
        means = {c: v["mean_si_sdri"] for c, v in cats.items() if v["mean_si_sdri"] is not None}
        worst = min(means, key=lambda c: means[c]) if means else None
        out["halves"][half] = {
            "categories": cats,
            "mean_si_sdri": _mean([r.si_sdri for r in sounding]),
            "right_source_rate": _mean([float(r.right) for r in sounding]),
            "silent_right_rate": _mean([float(r.right) for r in hr if r.source is None]),
            "worst_category": worst,
            "worst_category_si_sdri": means.get(worst) if worst else None,
        }
    audio = sum(r.audio_seconds for r in rows)
    wall = sum(r.seconds for r in rows)
    out["realtime_factor"] = audio / wall if wall > 0 else None
    out["max_residual_err"] = max((r.residual_err for r in rows), default=None)
    return out


def table(rows: list[Row], summary: dict, size: tuple[int, int]) -> str:
    """Markdown: one row per prompt, then per half x category, then per half."""
    lines = [
        f"separation (classical) at {size[0]}x{size[1]}",
        "",
        "| scene | object | source | SI-SDRi dB | closest source | silent dB | right | x realtime |",
        "|---|---|---|---:|---|---:|:---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scene} | {r.object} | {r.source or '(silent)'} | {_fmt(r.si_sdri, '.1f')} | "
            f"{r.closest or '-'} | {_fmt(r.silent_db, '.1f')} | {'yes' if r.right else 'no'} | "
            f"{r.audio_seconds / max(r.seconds, 1e-9):.1f} |"
        )
    lines += [
        "",
        "| half | category | prompts | mean SI-SDRi dB | right source | silent-object dB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for half, hs in summary["halves"].items():
        for cat, c in hs["categories"].items():
            rate = (
                _fmt(c["right_source_rate"], ".0%") if c["right_source_rate"] is not None else "-"
            )
            lines.append(
                f"| {half} | {cat} | {c['prompts']} | {_fmt(c['mean_si_sdri'], '.2f')} | {rate} | "
                f"{_fmt(c['silent_db'], '.1f')} |"
            )
    lines += [
        "",
        "| half | mean SI-SDRi dB | right source | silent right | worst category (SI-SDRi dB) |",
        "|---|---:|---:|---:|---|",
    ]
    for half, hs in summary["halves"].items():
        rate = hs["right_source_rate"]
        srate = hs["silent_right_rate"]
        lines.append(
            f"| {half} | {_fmt(hs['mean_si_sdri'], '.2f')} | "
            f"{'-' if rate is None else format(rate, '.0%')} | "
            f"{'-' if srate is None else format(srate, '.0%')} | "
            f"{hs['worst_category']} ({_fmt(hs['worst_category_si_sdri'], '.2f')}) |"
        )
    rt = summary["realtime_factor"]
    lines += [
        "",
        f"separator speed: {_fmt(rt, '.1f')}x realtime (audio seconds / separate() wall seconds); "
        f"max |target + residual - mix| = {summary['max_residual_err']:.2e}",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", default="dev", choices=["dev", "heldout", "all"])
    ap.add_argument("--scenes", default="", help="comma list of scene names (overrides --half)")
    ap.add_argument("--size", default="192x112", help="frame size WxH (default 192x112)")
    ap.add_argument("--json", default="", help="write every number here")
    ap.add_argument("--no-cache", action="store_true", help="render every clip anew")
    ap.add_argument(
        "--reseed", type=int, default=0, help="add this to every clip's seed (unseen clips)"
    )
    args = ap.parse_args()
    if args.reseed < 0:
        ap.error("--reseed must be 0 or more (a seed offset)")
    missing = tools_missing()
    if missing:
        raise SystemExit(f"separation benchmark needs: {', '.join(missing)}")
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.scenes:
        names = [s for s in args.scenes.split(",") if s]
        unknown = [s for s in names if s not in SCENES_BY_NAME]
        if unknown:
            raise SystemExit(f"unknown scene(s) {unknown}; see separation_scenes.SCENES")
        specs = [SCENES_BY_NAME[s] for s in names]
    else:
        specs = [s for s in SCENES if args.half in ("all", s.half)]
    if args.reseed:
        specs = [
            replace(s, name=f"{s.name}+{args.reseed}", seed=s.seed + args.reseed) for s in specs
        ]
    separator = ClassicalSeparator()
    rows: list[Row] = []
    t0 = time.perf_counter()
    for spec in specs:
        rows += score(spec, (w, h), separator, cache=not args.no_cache)
    summary = summarise(rows)
    summary["wall_seconds"] = time.perf_counter() - t0
    print(table(rows, summary, (w, h)))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"size": [w, h], "rows": [asdict(r) for r in rows], "summary": summary}, indent=1
            )
        )


if __name__ == "__main__":
    main()
