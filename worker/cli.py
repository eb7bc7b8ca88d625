"""The ``sonomask`` command line.

Exit status: 0 success, 2 bad input (one clear line on stderr, no traceback), 1 internal
error. Progress bars go to stderr so stdout stays clean for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vision.tracker import TRACKERS
from worker.errors import BadInput, SonomaskError
from worker.settings import Settings, go_offline

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
_SPAN_ARG = re.compile(r"^-\s*[\d.]+\s*(-|:|\.\.)\s*[\d.]+$")


def _add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", help="input video file")
    p.add_argument(
        "--mask",
        action="append",
        default=[],
        metavar="PNG",
        help="mask image at the video's size, white = object (repeat for correction keyframes)",
    )
    p.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="x0,y0,x1,y1",
        help="a box around the object instead of a mask image",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--mask-frame",
        action="append",
        type=int,
        default=[],
        metavar="N",
        help="frame index of each mask/box, in order (default 0)",
    )
    where.add_argument(
        "--mask-time",
        action="append",
        type=float,
        default=[],
        metavar="S",
        help="time in seconds of each mask/box, in order",
    )
    p.add_argument(
        "--tracker",
        choices=list(TRACKERS),
        default="flow",
        help="how the mask follows the object: flow (default, optical flow, no weights), "
        "copy (no tracking), or a video model run only with its weights (--tracker-model or "
        "SONOMASK_TRACKER_MODEL): sam2 (SAM 2), sam3 (SAM 3's tracker), edgetam (EdgeTAM, "
        "fast on small GPUs)",
    )
    p.add_argument(
        "--tracker-model",
        metavar="PATH",
        default=None,
        help="weights for --tracker sam2/sam3/edgetam: a folder saved by transformers or a Hub "
        "id already in the Hugging Face cache (nothing is downloaded); default: the tracker's "
        "entry in SONOMASK_TRACKER_MODEL (sam3:PATH, edgetam:PATH, or a plain PATH for sam2)",
    )
    if p.prog.endswith(" track"):  # the matte exports of `sonomask track`
        p.add_argument(
            "--matte",
            metavar="FILE",
            help="matte video, same size, frame count, timestamps, start timecode and rate "
            "as the source; grey (white = object): .mkv FFV1 lossless, .mov ProRes 422 HQ, "
            ".mp4 H.264 lossless; prores4444: .mov (default: <out>_matte.mkv beside --out, "
            "<out>_matte.mov for prores4444)",
        )
        p.add_argument(
            "--matte-format",
            choices=["grey", "prores4444"],
            default="grey",
            help="grey: white = object (default); prores4444: the picture with the mask as "
            "its alpha channel (ProRes 4444 .mov)",
        )
        p.add_argument("--no-matte", action="store_true", help="do not write the matte video")
        p.add_argument("--png-dir", metavar="DIR", help="also write the matte as a PNG sequence")


def _add_object_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--object",
        action="append",
        default=[],
        metavar="LABEL",
        help="start an object (several on-screen sources, one stem each): the --mask, --box, "
        "--mask-frame, --mask-time, --text and --span options after it, up to the next "
        "--object, are that object's. LABEL names its folder objects/LABEL/ and its track",
    )
    p.add_argument(
        "--spec",
        metavar="FILE",
        help='a JSON job spec (e.g. {"objects": [{"label": "guitar", "masks": '
        '["guitar.png"]}]}); mask paths in it are relative to the file\'s folder',
    )
    p.add_argument(
        "--object-videos",
        action="store_true",
        help="with objects: also write objects/LABEL/isolated and removed videos (per --mode)",
    )
    p.add_argument(
        "--stems-format",
        choices=["mkv", "mov"],
        default="mkv",
        help="with objects: stems.mkv (tracks titled by label, default) or stems.mov",
    )


def _add_separation_options(p: argparse.ArgumentParser) -> None:
    _add_object_options(p)
    p.add_argument("--text", help="optional text prompt, e.g. 'dog barking' (SAM Audio)")
    p.add_argument(
        "--span",
        action="append",
        default=[],
        metavar="±START-END",
        help="+1.2-3.4: the sound is present from 1.2 s to 3.4 s; -0-1: absent",
    )
    p.add_argument(
        "--mode",
        choices=["isolate", "remove", "both"],
        default="both",
        help="isolate: keep only the object's sound; remove: take it out; both",
    )
    p.add_argument(
        "--separator",
        choices=["auto", "sam-audio", "classical"],
        default="auto",
        help="auto: SAM Audio when a model is configured, else classical",
    )
    p.add_argument("--model", help="SAM Audio checkpoint folder or Hub id (or SONOMASK_MODEL)")
    p.add_argument(
        "--predict-spans",
        action="store_true",
        help="SAM Audio: predict where the text's sound is present when no --span is given "
        "(the reference's predict_spans; needs a span predictor in the model's config)",
    )
    p.add_argument(
        "--candidates",
        type=int,
        default=1,
        metavar="K",
        help="SAM Audio: solve each window from K noise draws and keep the best (1-8; "
        "default 1, no reranking)",
    )
    p.add_argument(
        "--ranker",
        choices=["activity", "clap", "judge"],
        help="with --candidates: activity (weight-free, the candidate's sound activity "
        "against --span), clap or judge (not in the port yet); default: the model config's",
    )
    p.add_argument(
        "--audio-stream",
        type=int,
        default=0,
        metavar="N",
        help="which audio stream to process (0 = first)",
    )
    p.add_argument(
        "--reconstruct",
        choices=["masked", "generative"],
        default="masked",
        help="masked: keep every source channel, target+residual = source (default)",
    )
    p.add_argument(
        "--stem-format",
        choices=["pcm24", "float32"],
        default="pcm24",
        help="target.wav/residual.wav as 24-bit PCM (default) or 32-bit float",
    )
    p.add_argument(
        "--keep-original",
        action="store_true",
        help="also keep the original audio as an extra track in the remuxed videos",
    )
    p.add_argument(
        "--timeline",
        default="otio",
        metavar="FORMATS",
        help="timelines at the source's start timecode, comma-separated: otio "
        "(timeline.otio), fcp7xml (timeline.xml: Premiere, Resolve), fcpxml "
        "(timeline.fcpxml: Final Cut Pro), edl (timeline.edl: CMX 3600, the picture); "
        "none for no timeline (default: otio)",
    )
    p.add_argument(
        "--matte-format",
        choices=["grey", "prores4444", "none"],
        default="none",
        help="matte.mov, the timeline's track above the picture: grey (ProRes 422 HQ, white "
        "= object), prores4444 (the picture with the mask as alpha) or none (default: a "
        "full-size matte costs about 35 ms a 1080p frame)",
    )
    p.add_argument(
        "--project",
        metavar="NAME",
        help="project name in the stems' iXML and the timeline (default: the video's name)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonomask",
        description="Isolate or remove the sound of an on-screen object in a video.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sep = sub.add_parser("separate", help="track the object and separate its sound")
    _add_job_options(sep)
    _add_separation_options(sep)
    sep.add_argument("--out", help="output folder (default: <video name>-sonomask)")
    sep.add_argument("--keep-work", action="store_true", help="keep the job's work folder")
    sep.add_argument(
        "--no-preview",
        dest="preview",
        action="store_false",
        help="do not write preview.mp4 (automation: saves the preview stage's time)",
    )
    sep.add_argument("--quiet", action="store_true", help="no progress bars")

    tr = sub.add_parser("track", help="only track the mask through the clip")
    _add_job_options(tr)
    tr.add_argument("--out", required=True, help="masks file to write (.npz, key 'masks')")
    tr.add_argument("--preview", help="also write a preview video with the mask drawn")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")

    demo = sub.add_parser("demo", help="run the bundled example (two objects, one masked)")
    demo.add_argument("--out", default="sonomask-demo", help="output folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")

    sm = sub.add_parser("submit", help="queue a job for the workers; prints the job id")
    _add_job_options(sm)
    _add_separation_options(sm)
    sm.add_argument("--webhook", help="URL to POST the job document to when the job ends")

    st = sub.add_parser("status", help="show a queued job's state")
    st.add_argument("id")
    st.add_argument("--json", action="store_true", help="print the job document as JSON")

    wt = sub.add_parser("wait", help="wait for a job: exit 0 succeeded, 2 bad input, 1 otherwise")
    wt.add_argument("id")
    wt.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    wt.add_argument("--quiet", action="store_true", help="no progress bar")

    cn = sub.add_parser("cancel", help="cancel a queued or running job")
    cn.add_argument("id")

    wk = sub.add_parser("worker", help="run a Celery worker for the queued jobs")
    wk.add_argument("--queues", default="cpu,gpu", help="comma-separated queues: cpu, gpu")
    wk.add_argument("--concurrency", type=int, default=None, help="worker processes")
    wk.add_argument("--hostname", default=None, help="worker node name")
    wk.add_argument("--loglevel", default="INFO")

    su = sub.add_parser(
        "supervisor", help="requeue stages whose worker died (every worker also does this)"
    )
    su.add_argument("--interval", type=float, default=5.0, help="seconds between sweeps")

    jd = sub.add_parser(
        "judge",
        help="score a separated sound with the SAM Audio Judge: overall, recall, precision, "
        "faithfulness",
    )
    jd.add_argument("mixture", metavar="MIXTURE", help="the original sound (audio or video file)")
    jd.add_argument("separated", metavar="SEPARATED", help="the separated sound to score")
    jd.add_argument("--text", required=True, help="what the separated sound should be")
    jd.add_argument(
        "--model",
        metavar="PATH",
        help="the judge's folder or Hub id in the local Hugging Face cache (default "
        "SONOMASK_JUDGE_MODEL, else facebook/sam-audio-judge); never downloaded",
    )
    jd.add_argument("--json", action="store_true", help="print the scores as JSON")

    sv = sub.add_parser("serve", help="run the HTTP API")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)

    wa = sub.add_parser(
        "watch",
        help="a hot folder: every video dropped in IN_DIR (mask and spec from sidecar files "
        "clip.mask.png, clip.mask_<frame>.png, clip.json) becomes a job; results in "
        "OUT_DIR/clip/, failures in OUT_DIR/_failed/clip.txt",
    )
    wa.add_argument("in_dir", metavar="IN_DIR", help="the folder to watch (its top level)")
    wa.add_argument("--out", required=True, metavar="OUT_DIR", help="where results go")
    wa.add_argument("--spec", metavar="FILE", help="a JSON job spec: the defaults for every clip")
    wa.add_argument(
        "--local",
        action="store_true",
        help="run the jobs in this process, one at a time (default: queue them for workers)",
    )
    wa.add_argument(
        "--settle",
        type=float,
        default=None,
        metavar="S",
        help="seconds a file must stay unchanged before it is taken "
        "(default SONOMASK_WATCH_SETTLE, 5)",
    )
    wa.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between looks at the folder (default SONOMASK_WATCH_INTERVAL, 1)",
    )
    return parser


def _fix_span_args(argv: list[str]) -> list[str]:
    """Let ``--span -0.5-2`` through: argparse would read ``-0.5-2`` as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--span" and i + 1 < len(argv) and _SPAN_ARG.match(argv[i + 1]):
            out.append(f"--span={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


_OBJECT_OPTIONS = ("--mask", "--box", "--mask-frame", "--mask-time", "--text", "--span")


def _split_objects(argv: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The command line without its ``--object`` groups, and each group's label and options.

    After an ``--object LABEL``, the per-object options (``_OBJECT_OPTIONS``, as ``--opt V``
    or ``--opt=V``) belong to it until the next ``--object``; any other option stays the
    job's. Options before the first ``--object`` stay where they are (and are refused with
    objects, by ``_object_fields``)."""
    main: list[str] = []
    groups: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if name == "--object":
            if "=" in a:
                label, i = a.split("=", 1)[1], i + 1
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                label, i = argv[i + 1], i + 2
            else:
                raise BadInput("--object needs a LABEL, e.g. --object guitar --mask guitar.png")
            groups.append((label, []))
            continue
        if groups and name in _OBJECT_OPTIONS:
            if "=" in a:
                groups[-1][1].append(a)
                i += 1
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                groups[-1][1].append(f"{a}={argv[i + 1]}")
                i += 2
            else:
                raise BadInput(f"{a} after --object {groups[-1][0]} needs a value")
            continue
        main.append(a)
        i += 1
    return main, groups


def _object_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="--object", add_help=False, exit_on_error=False)
    p.add_argument("--mask", action="append", default=[])
    p.add_argument("--box", action="append", default=[])
    p.add_argument("--mask-frame", action="append", type=int, default=[])
    p.add_argument("--mask-time", action="append", type=float, default=[])
    p.add_argument("--text")
    p.add_argument("--span", action="append", default=[])
    return p


def _object_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The job's ``objects`` from ``--object`` groups or ``--spec``; {} for neither."""
    groups = getattr(args, "object_groups", [])
    spec_file = getattr(args, "spec", None)
    flat = [
        opt
        for opt, value in (
            ("--mask", args.mask),
            ("--box", args.box),
            ("--mask-frame", args.mask_frame),
            ("--mask-time", args.mask_time),
            ("--text", getattr(args, "text", None)),
            ("--span", getattr(args, "span", [])),
        )
        if value
    ]
    if groups and spec_file:
        raise BadInput("give the objects either as --object groups or in --spec FILE, not both")
    if (groups or spec_file) and flat:
        where = "after the --object they belong to" if groups else "inside the --spec file"
        raise BadInput(f"with several objects, give {', '.join(flat)} {where}")
    if spec_file:
        return _spec_file_fields(Path(spec_file))
    if not groups:
        return {}
    objects = []
    for label, opts in groups:
        try:
            ns = _object_parser().parse_args(opts)
        except (argparse.ArgumentError, SystemExit) as e:
            raise BadInput(f"--object {label[:40]!r}: {e}") from None
        objects.append(
            {
                "label": label,
                "masks": ns.mask,
                "boxes": ns.box,
                "mask_frames": ns.mask_frame,
                "mask_times": ns.mask_time,
                "text": ns.text,
                "spans": ns.span,
            }
        )
    return {"objects": objects}


def _spec_file_fields(path: Path) -> dict[str, Any]:
    """JobSpec fields from a JSON file (``--spec``); relative mask paths are the file's."""
    from worker.spec import read_spec_file, rebase_mask_paths

    fields, _ = read_spec_file(path, "give {key} on the command line, not in the file")
    base = path.resolve().parent

    def here(m: Any) -> Any:
        return str(base / m) if isinstance(m, str) and not Path(m).is_absolute() else m

    return rebase_mask_paths(fields, here)


def _merge(
    fields: dict[str, Any], extra: dict[str, Any], defaults: dict[str, Any]
) -> dict[str, Any]:
    """``fields`` from the command line overlaid with ``extra`` (objects or a --spec file);
    an option given on the command line (not its default) that the file also sets is an
    error rather than a silent choice."""
    out = dict(fields)
    for key, value in extra.items():
        if key in out and out[key] != value and out[key] != defaults.get(key, out[key]):
            raise BadInput(f"{key} is set both on the command line and in --spec; keep one")
        out[key] = value
    return out


def _spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    settings = getattr(args, "settings", None)
    if (
        args.command in ("separate", "track")
        and settings is not None
        and not getattr(args, "tracker_model", None)
        and not settings.offers_tracker(args.tracker)
    ):  # a video model with no weights at all: say so before decoding anything
        from worker.stages.track import missing_weights

        raise missing_weights(args.tracker)
    if not hasattr(args, "object") and getattr(args, "object_groups", []):
        raise BadInput("sonomask track follows one object; use sonomask separate for several")
    several = _object_fields(args) if hasattr(args, "object") else {}
    base = {
        "video": args.video,
        "tracker": args.tracker,
        "tracker_model": getattr(args, "tracker_model", None),
    }
    if several:
        return _merge(base, several, _DEFAULTS)
    return {
        **base,
        "masks": args.mask,
        "boxes": args.box,
        "mask_frames": args.mask_frame,
        "mask_times": args.mask_time,
    }


_DEFAULTS = {"tracker": "flow", "tracker_model": None}


def cmd_separate(args: argparse.Namespace) -> int:
    from worker.jobs.runner import resumable_job_id, run_job
    from worker.progress import StageBars
    from worker.spec import JobSpec

    out = args.out or f"{Path(args.video).stem}-sonomask"
    fields = _job_fields(args)
    if not args.preview:
        fields["preview"] = False
    spec = JobSpec.build(**fields, out=str(Path(out).resolve()))
    settings = args.settings
    job_id = resumable_job_id(spec, settings)
    try:
        with StageBars(enabled=not args.quiet) as bars:
            manifest = run_job(
                spec, bars.update, settings, keep_workspace=args.keep_work, job_id=job_id
            )
    except BadInput:
        raise
    except SonomaskError as exc:
        raise type(exc)(f"{exc}; the work done is kept, run the same command to resume") from exc
    except KeyboardInterrupt:
        print("sonomask: interrupted; run the same command to resume", file=sys.stderr)
        return 1
    for w in manifest.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    if manifest.get("confidence") is not None:
        print(
            f"confidence {manifest['confidence']:.2f}: {confidence_words(manifest['confidence'])}"
        )
    print(f"{manifest['backend']}: wrote {', '.join(manifest['outputs'])} to {out}")
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from worker.jobs.matte import default_matte_path, track_to_file
    from worker.progress import StageBars
    from worker.spec import JobSpec

    fields = _spec_fields(args)
    fields.setdefault("tracker_model", args.tracker_model)
    spec = JobSpec.build(**fields)
    out = Path(args.out)
    matte = (
        None
        if args.no_matte
        else Path(args.matte)
        if args.matte
        else default_matte_path(out, args.matte_format)
    )
    png_dir = Path(args.png_dir) if args.png_dir else None
    preview = Path(args.preview) if args.preview else None
    with StageBars(enabled=not args.quiet) as bars:
        warnings = track_to_file(
            spec,
            out,
            preview,
            progress=bars.update,
            matte=matte,
            png_dir=png_dir,
            matte_format=args.matte_format,
        )
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    written = [str(p) for p in (out, matte, png_dir, preview) if p is not None]
    print(f"wrote {', '.join(written)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    video, mask = EXAMPLES / "demo.mp4", EXAMPLES / "demo_mask.png"
    if not video.exists() or not mask.exists():
        raise BadInput(
            f"the demo clip is missing; build it with: python {EXAMPLES / 'make_demo.py'}"
        )
    ns = build_parser().parse_args(
        [
            "separate",
            str(video),
            "--mask",
            str(mask),
            "--mode",
            "both",
            "--out",
            args.out,
            "--separator",
            "auto",
        ]
        + (["--quiet"] if args.quiet else [])
    )
    ns.settings = args.settings
    return cmd_separate(ns)


def _separation_fields(args: argparse.Namespace) -> dict[str, Any]:
    from worker.timeline import parse_formats

    several = {}
    if getattr(args, "object_groups", []) or args.spec:
        several = {"object_videos": args.object_videos, "stems_format": args.stems_format}
    elif args.object_videos or args.stems_format != "mkv":
        raise BadInput("--object-videos and --stems-format need --object groups or --spec")
    return {
        **several,
        "text": args.text,
        "spans": args.span,
        "mode": args.mode,
        "separator": args.separator,
        "model": args.model,
        "predict_spans": args.predict_spans,
        "candidates": args.candidates,
        "ranker": args.ranker,
        "audio_stream": args.audio_stream,
        "reconstruct": args.reconstruct,
        "stem_format": args.stem_format,
        "keep_original": args.keep_original,
        "timeline": parse_formats(args.timeline),
        "matte_format": args.matte_format,
        "project": args.project,
    }


_SEPARATION_DEFAULTS = {
    "text": None,
    "spans": [],
    "mode": "both",
    "separator": "auto",
    "model": None,
    "predict_spans": False,
    "candidates": 1,
    "ranker": None,
    "audio_stream": 0,
    "reconstruct": "masked",
    "stem_format": "pcm24",
    "keep_original": False,
    "timeline": ["otio"],
    "matte_format": "none",
    "project": None,
    "object_videos": False,
    "stems_format": "mkv",
}


def _job_fields(args: argparse.Namespace) -> dict[str, Any]:
    """Every JobSpec field the command line gives (objects, a --spec file's fields)."""
    fields = _spec_fields(args)
    sep = _separation_fields(args)
    if "objects" in fields:  # each object carries its own text and spans
        sep.pop("text")
        sep.pop("spans")
    merged = _merge(sep, {k: v for k, v in fields.items() if k in sep}, _SEPARATION_DEFAULTS)
    return {**fields, **merged}


def cmd_submit(args: argparse.Namespace) -> int:
    """Copy the inputs into the shared workspace (workers may be other machines) and queue."""
    import shutil
    import uuid

    from worker.jobs.intake import check_inputs
    from worker.jobs.tasks import submit
    from worker.spec import JobSpec

    settings = args.settings
    spec = JobSpec.build(**_job_fields(args), webhook=args.webhook)
    check_inputs(spec, settings)
    job_id = uuid.uuid4().hex[:16]
    inputs = settings.workspace / job_id / "inputs"
    inputs.mkdir(parents=True)
    video = inputs / f"video{Path(spec.video).suffix.lower()}"
    shutil.copyfile(spec.video, video)

    def copied(keyframes: list[Any], tag: str) -> list[Any]:
        out = []
        for i, k in enumerate(keyframes):
            if k.mask:
                dst = inputs / f"mask{tag}{i}-{Path(k.mask).name}"
                shutil.copyfile(k.mask, dst)
                k = k.model_copy(update={"mask": str(dst)})
            out.append(k)
        return out

    objects = [
        o.model_copy(update={"keyframes": copied(o.keyframes, f"-{j}-")})
        for j, o in enumerate(spec.objects)
    ]
    spec = spec.model_copy(
        update={"video": str(video), "keyframes": copied(spec.keyframes, ""), "objects": objects}
    )
    print(submit(spec, settings, job_id))
    return 0


def _job(job_id: str, settings: Settings):  # noqa: ANN202
    from worker.jobs import store

    try:
        return store.job_workspace(settings.workspace, job_id)
    except KeyError:
        raise BadInput(f"no job {job_id!r} in {settings.workspace}") from None


def cmd_status(args: argparse.Namespace) -> int:
    from worker.jobs import store

    doc = store.document(_job(args.id, args.settings))
    if args.json:
        print_json(doc)
    else:
        line = f"{doc['id']}: {doc['state']}"
        if doc["state"] == "running":
            line += f" ({doc['stage']}, {100 * doc['progress']:.0f}%)"
        if doc["error"]:
            line += f": {doc['error']}"
        print(line)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    import time

    from rich.console import Console
    from rich.progress import Progress

    from worker.jobs import store

    ws = _job(args.id, args.settings)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    with Progress(
        transient=True,
        disable=args.quiet,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("queued", total=1.0)
        while True:
            doc = store.document(ws)
            bar.update(task, completed=doc["progress"], description=doc["stage"] or doc["state"])
            if doc["state"] in store.FINISHED:
                break
            if deadline and time.monotonic() > deadline:
                print(
                    f"sonomask: job {args.id} still {doc['state']} after {args.timeout:g} s",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
    if doc["state"] == "succeeded":
        print(f"{args.id}: succeeded ({', '.join(doc['outputs'])})")
        return 0
    print(
        f"sonomask: job {args.id} {doc['state']}" + (f": {doc['error']}" if doc["error"] else ""),
        file=sys.stderr,
    )
    return 2 if doc.get("bad_input") else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    from worker.jobs.tasks import cancel

    _job(args.id, args.settings)
    doc = cancel(args.id)
    print(f"{args.id}: {doc['state']}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import socket

    # Workers run what clients queued: no Hugging Face Hub downloads unless the operator
    # opts in (SONOMASK_ALLOW_DOWNLOADS=1). Set before anything imports huggingface_hub.
    go_offline(args.settings)
    from worker.jobs.queue import app

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    bad = set(queues) - {"cpu", "gpu"}
    if bad:
        raise BadInput(f"unknown queue(s) {sorted(bad)}; use cpu and/or gpu")
    name = args.hostname or f"sonomask-{'-'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        "-Q",
        ",".join(queues),
        "-n",
        name,
        "--loglevel",
        args.loglevel,
        "--prefetch-multiplier",
        "1",
        "-E",
    ]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    app.worker_main(argv)
    return 0


def cmd_supervisor(args: argparse.Namespace) -> int:
    import logging

    from worker.jobs.tasks import reaper

    if not (args.interval > 0 and args.interval < 3600):
        raise BadInput("--interval must be between 0 and 3600 seconds")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    reaper(args.interval).run()
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import signal

    from worker.watch import Watcher

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # docker stop: the running job resumes next start
    watcher = Watcher(
        Path(args.in_dir),
        Path(args.out),
        args.settings,
        default_spec=Path(args.spec) if args.spec else None,
        local=args.local,
        settle=args.settle,
        interval=args.interval,
        say=lambda line: print(line, flush=True),
    )
    try:
        watcher.run()
    except KeyboardInterrupt:
        print("stopped; a clip in progress resumes when the watch starts again", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    # Bounded everything: idle keep-alive connections close after 5 s, at most 512
    # connections/requests at once (uvicorn answers 503 beyond), 16 KiB of headers; stalled
    # bodies are cut by the app itself (SONOMASK_BODY_TIMEOUT, worker/asgi.py).
    uvicorn.run(
        "worker.http.api:app",
        host=args.host,
        port=args.port,
        log_level="info",
        timeout_keep_alive=5,
        limit_concurrency=512,
        h11_max_incomplete_event_size=16 * 1024,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return 0


JUDGE_WINDOW_SECONDS = 30.0


def cmd_judge(args: argparse.Namespace) -> int:
    """The judge's four scores for one separation. Files longer than
    ``JUDGE_WINDOW_SECONDS`` are scored window by window and averaged by length (the judge
    looks at a whole clip at once, and its memory grows with the length)."""
    import torch

    from model.backends.sam_audio import port_errors, resolve_device
    from model.errors import ModelInputError, ModelLoadError
    from model.sam_audio.judge import DEFAULT_JUDGE_ID, judge_waveforms, load_judge
    from worker import media

    text = " ".join(str(args.text).split())
    if not text:
        raise BadInput("--text is empty: say what the separated sound should be")
    if len(text) > 1000:
        raise BadInput(f"--text is {len(text)} characters; keep it under 1000")
    settings: Settings = args.settings
    try:
        with port_errors():
            judge = load_judge(
                args.model or settings.judge_model or DEFAULT_JUDGE_ID,
                device=resolve_device(settings.device),
            )
    except (ModelLoadError, ModelInputError) as err:
        raise BadInput(str(err)) from None
    rate = judge.config.sample_rate
    mix = media.read_audio(Path(args.mixture), rate)
    sep = media.read_audio(Path(args.separated), rate)
    if abs(len(mix) - len(sep)) > rate:
        raise BadInput(
            f"{Path(args.mixture).name} lasts {len(mix) / rate:.2f} s and "
            f"{Path(args.separated).name} {len(sep) / rate:.2f} s; the judge compares them "
            "moment by moment, so give the separated sound of this mixture"
        )
    n = min(len(mix), len(sep))
    step = int(JUDGE_WINDOW_SECONDS * rate)
    totals: dict[str, float] = {}
    for a in range(0, n, step):
        b = min(n, a + step)
        if b - a < judge.config.hop_length and a > 0:
            break  # a sliver at the end: too short for one codec frame
        with port_errors(), torch.inference_mode():
            scores = judge_waveforms(
                judge,
                torch.from_numpy(mix[a:b].copy()),
                torch.from_numpy(sep[a:b].copy()),
                rate,
                text,
            ).to_dict()
        for k, v in scores.items():
            totals[k] = totals.get(k, 0.0) + v * (b - a) / n
    if args.json:
        print_json({"text": text, "seconds": n / rate, **totals})
    else:
        for k, v in totals.items():
            print(f"{k:<13} {v:.4f}")
    return 0


COMMANDS = {
    "separate": cmd_separate,
    "judge": cmd_judge,
    "track": cmd_track,
    "demo": cmd_demo,
    "submit": cmd_submit,
    "status": cmd_status,
    "wait": cmd_wait,
    "cancel": cmd_cancel,
    "worker": cmd_worker,
    "supervisor": cmd_supervisor,
    "serve": cmd_serve,
    "watch": cmd_watch,
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = _fix_span_args(list(sys.argv[1:] if argv is None else argv))
    try:
        argv, groups = _split_objects(argv)
    except BadInput as e:
        print(f"sonomask: error: {e}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    args.object_groups = groups
    try:
        try:  # the one Settings of this process, passed down from here
            args.settings = Settings.from_env()
        except ValueError as e:
            raise BadInput(str(e)) from None
        return COMMANDS[args.command](args)
    except BadInput as e:
        print(f"sonomask: error: {e}", file=sys.stderr)
        return 2
    except SonomaskError as e:
        print(f"sonomask: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sonomask: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - one line for people, the trace on request
        if getattr(args, "settings", None) is not None and args.settings.debug:
            raise
        print(
            f"sonomask: internal error: {type(e).__name__}: {e} "
            "(set SONOMASK_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def confidence_words(c: float) -> str:
    """What a separation confidence means for the editor, in a few words."""
    share = f"the object's motion explains about {c * c:.0%} of how the separated sound's loudness varies"
    if c >= 0.6:
        return share
    if c >= 0.35:
        return f"{share}; listen to the result before using it"
    return f"{share}; consider marking spans where it sounds, or --separator sam-audio"


if __name__ == "__main__":
    sys.exit(main())
