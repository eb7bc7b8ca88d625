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
from worker.stages.common import StageProgress, model_stems, noop
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

    Two passes, so the disk never holds the model's stems and every stem at once: the
    targets first; then the model's stems are released and the residual is the source less
    the targets as written (so target + residual is the source to the residual's own
    quantisation). The generative method's residual is the model's own (``model.remix``),
    written in the first pass.
    """
    targets = _target_names(ws)
    if ws.has(*(object_outputs(ws) if ws.spec.several else [files.TARGET, files.RESIDUAL])):
        return
    if not ws.has(*targets):
        _restore_targets(ws, targets, report)
    ws.release(*model_stems(ws))  # no later stage reads them
    if not ws.has(files.RESIDUAL):
        _write_residual(ws, targets, report)
    if ws.spec.several and len(targets) == 1:  # the one object's target at the top as well,
        with ws.atomic(files.TARGET) as tmp:  # as plugins expect it
            shutil.copyfile(ws.file(targets[0]), tmp)
    report("restore", 1.0, "stems written")


def _target_names(ws: Workspace) -> list[str]:
    """Each object's target stem (the single-object form: ``target.wav``)."""
    if not ws.spec.several:
        return [files.TARGET]
    return [files.object_file(o.label, files.TARGET) for o in ws.spec.targets()]


def _subtype_and_format(ws: Workspace, n: int, channels: int) -> tuple[str, str]:
    subtype = "FLOAT" if ws.spec.stem_format == "float32" else "PCM_24"
    return subtype, "RF64" if n * channels * 4 > 3_500_000_000 else "WAV"


def _restore_targets(ws: Workspace, names: list[str], report: StageProgress) -> None:
    """Each target at the source's rate and channels (``model.remix.restore``): one object
    against the model's residual, each of several against the mixture less itself."""
    from model.remix import restore

    spec = ws.spec
    labels = [o.label for o in spec.targets()] if spec.several else [DEFAULT_LABEL]
    *model_names, residual_name = model_stems(ws)
    stems48 = [arrays.open_npy(ws.file(name)) for name in model_names]
    residual48 = arrays.open_npy(ws.file(residual_name))
    # The generative residual is the model's, not the source less the target.
    own_residual = not spec.several and spec.reconstruct == "generative"
    with sf.SoundFile(str(ws.file(files.AUDIO_SOURCE))) as src, contextlib.ExitStack() as stack:
        sr, n, channels = src.samplerate, src.frames, src.channels
        block, margin, unit, unit48 = _blocks(sr, n)
        subtype, fmt = _subtype_and_format(ws, n, channels)
        names = [*names, files.RESIDUAL] if own_residual else names
        labels = [*labels, "residual"] if own_residual else labels
        tmps = [stack.enter_context(ws.atomic(name)) for name in names]
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
            others = residual48.read(m_lo, m_hi)
            mix = others + np.sum(model, axis=0) if spec.several else None
            keep = slice(a - lo, a - lo + min(block, n - a))
            for j, target in enumerate(model):
                other = mix - target if mix is not None else others
                tgt, res = restore(chunk, target, other, sr, method=spec.reconstruct)
                outs[j].write(tgt[keep])
                if own_residual:
                    outs[-1].write(res[keep])
            report("restore", 0.9 * min(1.0, (a + block) / n), "restoring the stems")
        for out in outs:
            out.close()
        kinds = ["target"] * len(model) + ["residual"] * own_residual
        for tmp, label, kind in zip(tmps, labels, kinds, strict=True):
            broadcast(ws, tmp, label, kind)
    for s in [*stems48, residual48]:
        s.close()


def _write_residual(ws: Workspace, targets: list[str], report: StageProgress) -> None:
    """``residual.wav``: the source less the targets as written."""
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(sf.SoundFile(str(ws.file(files.AUDIO_SOURCE))))
        sr, n, channels = src.samplerate, src.frames, src.channels
        subtype, fmt = _subtype_and_format(ws, n, channels)
        ins = [stack.enter_context(sf.SoundFile(str(ws.file(t)))) for t in targets]
        tmp = stack.enter_context(ws.atomic(files.RESIDUAL))
        with sf.SoundFile(str(tmp), "w", sr, channels, subtype, format=fmt) as out:
            block = max(1, int(RESTORE_BLOCK_SECONDS * sr))
            for a in range(0, n, block):
                rest = src.read(block, dtype="float64", always_2d=True)
                for t in ins:
                    rest -= t.read(len(rest), dtype="float64", always_2d=True)
                out.write(rest.astype(np.float32))
                report("restore", 0.9 + 0.1 * min(1.0, (a + block) / n), "the residual")
        broadcast(ws, tmp, "residual", "residual")


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
