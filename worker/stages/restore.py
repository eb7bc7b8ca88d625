"""Stage 6, restore: the stems back at the source rate and channel layout.

Several objects: each object's target is restored against everything else in the mix
(the mixture less that target), and the residual is the source less every target, so the
stems and the residual add back to the source (to float rounding and the WAVs'
quantisation: far below 1e-4).

Every stem is a Broadcast WAV (``worker/bwf.py``): a ``bext`` chunk whose TimeReference
is the source's start timecode in samples (probe.json's ``timecode``) and an ``iXML``
chunk naming the project, the source file, the stem's label and the job."""

from __future__ import annotations

import contextlib
import math
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from model.separator import MODEL_SAMPLE_RATE
from worker import arrays, bwf, files
from worker.settings import Settings
from worker.spec import DEFAULT_LABEL
from worker.stages.common import StageProgress, noop
from worker.timecode import StartTimecode
from worker.workspace import Workspace

RESTORE_BLOCK_SECONDS = 30.0


RESTORE_MARGIN_SECONDS = 0.5


READS = (files.AUDIO_SOURCE, *files.STEMS_MODEL)
WRITES = (files.TARGET, files.RESIDUAL)


def run(ws: Workspace, settings: Settings, report: StageProgress = noop) -> None:
    """Stems back at the source rate and channel layout, streamed block by block.

    Each block is restored with a margin on both sides (longer than the STFT and the
    resampling filters) and only its centre is kept, so the result matches one pass over
    the whole clip while memory stays bounded by the block. Block edges fall on samples
    where the source and model clocks coincide exactly and on the STFT's frame grid.
    """
    spec = ws.spec
    if spec.several:
        _run_objects(ws, report)
        return
    if ws.has(files.TARGET, files.RESIDUAL):
        return
    from model.remix import restore, stft_size

    target48 = arrays.open_npy(ws.file(files.STEMS_MODEL[0]))
    residual48 = arrays.open_npy(ws.file(files.STEMS_MODEL[1]))
    subtype = "FLOAT" if spec.stem_format == "float32" else "PCM_24"
    with sf.SoundFile(str(ws.file(files.AUDIO_SOURCE))) as src:
        sr, n, channels = src.samplerate, src.frames, src.channels
        g = math.gcd(sr, MODEL_SAMPLE_RATE)
        # Block edges on samples where both clocks and the STFT frame grid coincide.
        unit = math.lcm(sr // g, stft_size(sr) // 4)
        unit48 = unit * MODEL_SAMPLE_RATE // sr
        block = max(1, round(RESTORE_BLOCK_SECONDS * sr / unit)) * unit
        margin = math.ceil(RESTORE_MARGIN_SECONDS * sr / unit) * unit
        fmt = "RF64" if n * channels * 4 > 3_500_000_000 else "WAV"
        with ws.atomic(files.TARGET) as t_tmp, ws.atomic(files.RESIDUAL) as r_tmp:
            with (
                sf.SoundFile(str(t_tmp), "w", sr, channels, subtype, format=fmt) as t_out,
                sf.SoundFile(str(r_tmp), "w", sr, channels, subtype, format=fmt) as r_out,
            ):
                for a in range(0, n, block):
                    lo, hi = max(0, a - margin), min(n, a + block + margin)
                    src.seek(lo)
                    chunk = src.read(hi - lo, dtype="float32", always_2d=True)
                    m_lo, m_hi = lo // unit * unit48, -(-hi // unit) * unit48
                    tgt, res = restore(
                        chunk,
                        target48.read(m_lo, m_hi),
                        residual48.read(m_lo, m_hi),
                        sr,
                        method=spec.reconstruct,
                    )
                    keep = slice(a - lo, a - lo + min(block, n - a))
                    t_out.write(tgt[keep])
                    r_out.write(res[keep])
                    report("restore", min(1.0, (a + block) / n), "restoring the stems")
            broadcast(ws, t_tmp, DEFAULT_LABEL, "target")
            broadcast(ws, r_tmp, "residual", "residual")
    report("restore", 1.0, "stems written")


def broadcast(ws: Workspace, path: Path, label: str, stem: str) -> None:
    """Make the WAV at ``path`` a Broadcast WAV on the source's clock: its ``bext`` and
    ``iXML`` chunks (start timecode in samples, project, source file, label, job id)."""
    spec = ws.spec
    probe = ws.read_json(files.PROBE) if ws.has(files.PROBE) else {}
    tc = StartTimecode.from_json(probe.get("timecode"))  # none recorded: 00:00:00:00
    info = bwf.StemInfo(spec.project_name, Path(spec.video).name, label, stem, ws.job_id, tc)
    bwf.tag_wav(path, info)


def object_outputs(ws: Workspace) -> list[str]:
    """The stems the several-object form writes: each object's, the residual, and for one
    object its target at the top too (``target.wav``, as plugins expect)."""
    objs = ws.spec.targets()
    names = [files.object_file(o.label, files.TARGET) for o in objs] + [files.RESIDUAL]
    return names + ([files.TARGET] if len(objs) == 1 else [])


def _blocks(sr: int, n: int) -> tuple[int, int, int, int]:
    """Block, margin and the source/model grid units (see ``run``)."""
    from model.remix import stft_size

    g = math.gcd(sr, MODEL_SAMPLE_RATE)
    unit = math.lcm(sr // g, stft_size(sr) // 4)
    unit48 = unit * MODEL_SAMPLE_RATE // sr
    block = max(1, round(RESTORE_BLOCK_SECONDS * sr / unit)) * unit
    margin = math.ceil(RESTORE_MARGIN_SECONDS * sr / unit) * unit
    return block, margin, unit, unit48


def _run_objects(ws: Workspace, report: StageProgress) -> None:
    """Each object's stem and the residual at the source's rate and channels, by blocks."""
    names = object_outputs(ws)
    if ws.has(*names):
        return
    from model.remix import restore

    spec = ws.spec
    objs = spec.targets()
    stems48 = [
        arrays.open_npy(ws.file(files.object_file(o.label, files.STEMS_TARGET))) for o in objs
    ]
    residual48 = arrays.open_npy(ws.file(files.STEMS_MODEL[1]))
    subtype = "FLOAT" if spec.stem_format == "float32" else "PCM_24"
    with sf.SoundFile(str(ws.file(files.AUDIO_SOURCE))) as src, contextlib.ExitStack() as stack:
        sr, n, channels = src.samplerate, src.frames, src.channels
        block, margin, unit, unit48 = _blocks(sr, n)
        fmt = "RF64" if n * channels * 4 > 3_500_000_000 else "WAV"
        written = names[: len(objs) + 1]  # the objects' targets, then the residual
        tmps = [stack.enter_context(ws.atomic(name)) for name in written]
        outs = [
            stack.enter_context(sf.SoundFile(str(t), "w", sr, channels, subtype, format=fmt))
            for t in tmps
        ]
        for a in range(0, n, block):
            lo, hi = max(0, a - margin), min(n, a + block + margin)
            src.seek(lo)
            chunk = src.read(hi - lo, dtype="float32", always_2d=True)
            m_lo, m_hi = lo // unit * unit48, -(-hi // unit) * unit48
            model = [s.read(m_lo, m_hi) for s in stems48]
            mix = residual48.read(m_lo, m_hi) + np.sum(model, axis=0)
            keep = slice(a - lo, a - lo + min(block, n - a))
            rest = chunk[keep].astype(np.float64)
            for j, target in enumerate(model):
                tgt, _ = restore(chunk, target, mix - target, sr, method=spec.reconstruct)
                tgt = tgt[keep]
                outs[j].write(tgt)
                rest -= tgt
            outs[-1].write(rest.astype(np.float32))
            report("restore", min(1.0, (a + block) / n), f"restoring {len(objs)} object(s)")
        for out in outs:
            out.close()
        for j, tmp in enumerate(tmps):  # the objects' targets, then the residual
            if j < len(objs):
                broadcast(ws, tmp, objs[j].label, "target")
            else:
                broadcast(ws, tmp, "residual", "residual")
    if len(objs) == 1:  # the one object's target at the top as well, as plugins expect it
        with ws.atomic(files.TARGET) as tmp:
            shutil.copyfile(ws.file(names[0]), tmp)
    report("restore", 1.0, "stems written")
