"""Checks a job passes before it is queued: what would otherwise fail only on a worker.

Shared by ``POST /v1/jobs`` and ``sonomask submit``, with the stages' own messages.
"""

from __future__ import annotations

from pathlib import Path

from worker import media
from worker.errors import BadInput, as_sonomask_error
from worker.jobs import webhooks
from worker.settings import Settings
from worker.spec import JobSpec
from worker.stages.common import load_keyframe_mask
from worker.stages.models import check_separator_config, check_tracker_config

SPAN_SLACK = 0.05  # seconds a span may run past the clip's end (rounding on the page)


def check_inputs(spec: JobSpec, settings: Settings) -> None:
    """Refuse now, with the pipeline's own messages, what would only fail after queueing:
    models the server does not offer, webhooks it may not call, bad media and masks,
    times and frames outside the clip."""
    check_separator_config(spec, settings)
    check_tracker_config(spec, settings)
    if spec.webhook:
        webhooks.check(spec.webhook, settings.webhook_allow)
    try:
        p = media.probe(Path(spec.video))
        p.audio(spec.audio_stream)
        check_clip(spec, p, settings)
        for k in spec.all_keyframes():
            load_keyframe_mask(k, p.display_size)
    except Exception as exc:  # vision/model errors become BadInput with their message
        raise as_sonomask_error(exc) from exc


def check_clip(spec: JobSpec, p: media.Probe, settings: Settings) -> None:
    """Length, spans, keyframe times and frames against the probed clip."""
    dur = p.duration
    if dur > settings.max_video_seconds:
        raise BadInput(
            f"{p.path.name} is {dur:.0f} s long; this server takes at most "
            f"{settings.max_video_seconds:.0f} s (SONOMASK_MAX_VIDEO_SECONDS)"
        )
    objs = spec.targets()
    where = [f"objects[{j}]." if spec.several else "" for j in range(len(objs))]
    if dur > 0:
        for o, at in zip(objs, where, strict=True):
            for i, s in enumerate(o.spans):
                if s.start >= dur or s.end > dur + SPAN_SLACK:
                    raise BadInput(
                        f"{at}spans[{i}] {s} is outside the clip; spans must lie within "
                        f"0-{dur:.2f} s"
                    )
            for i, k in enumerate(o.keyframes):
                if k.time is not None and k.time > dur:
                    raise BadInput(
                        f"{at}keyframes[{i}].time (mask_times) {k.time:g} s is after the end "
                        f"of the clip ({dur:.2f} s)"
                    )
    if any(k.frame for k in spec.all_keyframes()):
        count = media.frame_count(p)
        for o, at in zip(objs, where, strict=True):
            for i, k in enumerate(o.keyframes):
                if k.frame is not None and k.frame >= count:
                    raise BadInput(
                        f"{at}keyframes[{i}].frame (mask_frames) {k.frame} does not exist; the "
                        f"video has {count} frames (0-{count - 1})"
                    )
