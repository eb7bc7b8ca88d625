"""Stage 1, probe: check the video and the keyframe masks before any decoding work is spent."""

from __future__ import annotations

from pathlib import Path

from worker import files, media
from worker.errors import BadInput
from worker.settings import Settings
from worker.stages.common import StageProgress, load_keyframe_mask, noop
from worker.stages.models import check_separator_config, check_tracker_config
from worker.timecode import read_start_timecode
from worker.workspace import Workspace

READS = (files.SPEC,)
WRITES = (files.PROBE,)


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """Check the video and the keyframe masks before any decoding work is spent."""
    if ws.has(files.PROBE):
        return
    spec = ws.spec
    p = media.probe(Path(spec.video))
    info = media.audio_info(p, spec.audio_stream)
    if info.sample_rate <= 0 or info.channels <= 0:
        raise BadInput(f"{p.path.name}: the audio stream has no sample rate or channel count")
    size = p.display_size
    limit = settings.max_video_seconds
    if p.duration > limit:
        raise BadInput(
            f"{p.path.name} is {p.duration:.0f} s long; this service accepts up to {limit:.0f} s "
            "(SONOMASK_MAX_VIDEO_SECONDS)"
        )
    warnings = []
    if info.offset_seconds < -0.001:
        warnings.append(
            f"the audio starts {-info.offset_seconds:.3f} s before the first frame; "
            "that part is not in the stems"
        )
    for k in spec.all_keyframes():  # validate masks now: a bad mask should not cost a decode
        load_keyframe_mask(k, size)
    check_separator_config(spec, settings)
    check_tracker_config(spec, settings)
    plan = media.plan_remux(p, spec.audio_stream)
    # where frame 0 sits on the editor's clock: the stems' BWF, the matte, the timeline
    timecode, tc_warnings = read_start_timecode(p, media.picture_start(p))
    warnings += tc_warnings
    ws.write_json(
        files.PROBE,
        {
            "format": p.format_name,
            "duration": p.duration,
            "display_size": list(size),
            "rotation": p.rotation,
            "frame_rate": p.frame_rate,
            "picture_start": media.picture_start(p),
            "timecode": timecode.to_json(),
            "audio": info.__dict__,
            "remux": plan.__dict__,
            "warnings": warnings + plan.warnings,
            "streams": [s.raw for s in p.streams],
        },
    )
    report("probe", 1.0, "probed")
