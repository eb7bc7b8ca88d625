"""Stage 2, demux: the audio at its own rate and channels, the model's mono 48 kHz copy, and every
frame at the working size."""

from __future__ import annotations

from pathlib import Path

import soundfile as sf

from model.separator import MODEL_SAMPLE_RATE
from worker import files, media
from worker.errors import BadInput
from worker.settings import Settings
from worker.stages.common import StageProgress, decode_working_frames, noop, stage_progress
from worker.workspace import Workspace

MIN_AUDIO_FRACTION = 0.9  # below this share of the declared duration the file is truncated.


READS = (files.SPEC, files.PROBE)
WRITES = (
    files.AUDIO_SOURCE,
    files.AUDIO_MODEL,
    files.FRAMES,
    files.FRAME_OFFSETS,
    files.FRAME_TIMES,
)


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """Audio at its own rate and channels, the model's mono 48 kHz copy, downscaled frames."""
    outputs = (
        files.AUDIO_SOURCE,
        files.AUDIO_MODEL,
        files.FRAMES,
        files.FRAME_OFFSETS,
        files.FRAME_TIMES,
    )
    if ws.has(*outputs):
        return
    spec = ws.spec
    pj = ws.read_json(files.PROBE)
    p = media.probe(Path(spec.video))
    prog = stage_progress(report, "demux")
    with ws.atomic(files.AUDIO_SOURCE) as tmp:
        media.demux_audio(p, spec.audio_stream, tmp, lambda f, m: prog(0.4 * f, m))
        frames_audio = sf.info(str(tmp)).frames
        sr = pj["audio"]["sample_rate"]
        declared = (p.audio(spec.audio_stream).duration or p.duration) - max(
            0.0, -pj["audio"]["offset_seconds"]
        )
        if declared > 0.5 and frames_audio / sr < MIN_AUDIO_FRACTION * declared:
            raise BadInput(
                f"{p.path.name} is truncated or damaged: {declared:.1f} s of audio declared, "
                f"only {frames_audio / sr:.1f} s could be decoded"
            )
        if frames_audio == 0:
            raise BadInput(f"{p.path.name}: the audio stream holds no samples")
    with ws.atomic(files.AUDIO_MODEL) as tmp:
        media.mixdown_for_model(ws.file(files.AUDIO_SOURCE), tmp, MODEL_SAMPLE_RATE)
    prog(0.5, "decode frames")
    decode_working_frames(
        ws,
        p,
        tuple(pj["display_size"]),
        lambda f, m: prog(0.5 + 0.5 * f, m),
        settings.hwaccel,
        settings.decode_threads,
    )
    report("demux", 1.0, "demuxed")
