"""Broadcast WAV: the ``bext`` and ``iXML`` chunks that put a stem on the editor's clock.

``tag_wav`` rewrites a WAV (or RF64) that soundfile wrote, inserting a ``bext`` chunk
(EBU Tech 3285 version 1: description, originator, job id as the originator reference,
date, TimeReference = samples since midnight of sample 0, coding history) and an ``iXML``
chunk (project, the source file's name, the stem's label and the sonomask job id, the
timecode rate and flag, the same TimeReference) before the ``data`` chunk, where every
reader looks first. The audio bytes are copied unchanged, so soundfile reads the same
samples; the rewrite goes to a temporary file renamed over the original.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from worker.timecode import StartTimecode

ORIGINATOR = "sonomask"
_COPY_BLOCK = 1 << 20


@dataclass(frozen=True)
class StemInfo:
    """What the chunks say about one stem."""

    project: str
    source_name: str  # the source video's file name
    label: str  # the object's label, or "residual"
    stem: str  # target | residual
    job_id: str
    timecode: StartTimecode


_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """``text`` escaped for an XML text node, with characters XML cannot hold (control
    characters a file name may carry) as ``?``."""
    return escape(_NOT_XML.sub("?", text))


def _ascii(text: str, size: int) -> bytes:
    raw = text.encode("ascii", "replace")[:size]
    return raw + b"\0" * (size - len(raw))


def bext_chunk(info: StemInfo, sample_rate: int, channels: int, bits: int, float_: bool) -> bytes:
    """The ``bext`` chunk's body (version 1: UMID left empty, no loudness fields)."""
    now = datetime.now()
    ref = info.timecode.samples(sample_rate)
    what = "isolated" if info.stem == "target" else "removed"
    description = (
        f"sonomask {info.stem} ({what}) '{info.label}' of {info.source_name}; "
        f"starts {info.timecode.text} @ {float(info.timecode.rate):.3f} fps"
    )
    mode = {1: "mono", 2: "stereo"}.get(channels, f"{channels}ch")
    history = (
        f"A={'FLOAT' if float_ else 'PCM'},F={sample_rate},W={bits},M={mode},T={ORIGINATOR}\r\n"
    )
    body = b"".join(
        [
            _ascii(description, 256),
            _ascii(ORIGINATOR, 32),
            _ascii(info.job_id, 32),
            _ascii(now.strftime("%Y-%m-%d"), 10),
            _ascii(now.strftime("%H:%M:%S"), 8),
            struct.pack("<II", ref & 0xFFFFFFFF, ref >> 32),
            struct.pack("<H", 1),
            b"\0" * 64,  # UMID
            b"\0" * 190,  # version 1: reserved (version 2's loudness fields and the rest)
            history.encode("ascii", "replace"),
        ]
    )
    return body


def ixml_chunk(info: StemInfo, sample_rate: int, channels: int) -> bytes:
    """The ``iXML`` chunk's body: a UTF-8 BWFXML document."""
    tc = info.timecode
    ref = tc.samples(sample_rate)
    rate = f"{tc.rate.numerator}/{tc.rate.denominator}"
    e = xml_text
    tracks = "".join(
        f"<TRACK><CHANNEL_INDEX>{i}</CHANNEL_INDEX><INTERLEAVE_INDEX>{i}</INTERLEAVE_INDEX>"
        f"<NAME>{e(info.label)}{'' if channels == 1 else f' {i}'}</NAME></TRACK>"
        for i in range(1, channels + 1)
    )
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<BWFXML>"
        "<IXML_VERSION>2.10</IXML_VERSION>"
        f"<PROJECT>{e(info.project)}</PROJECT>"
        f"<SCENE>{e(info.label)}</SCENE>"
        f"<TAPE>{e(info.source_name)}</TAPE>"
        f"<NOTE>sonomask {e(info.stem)} of {e(info.source_name)}, job {e(info.job_id)}</NOTE>"
        "<SPEED>"
        f"<MASTER_SPEED>{rate}</MASTER_SPEED>"
        f"<CURRENT_SPEED>{rate}</CURRENT_SPEED>"
        f"<TIMECODE_RATE>{rate}</TIMECODE_RATE>"
        f"<TIMECODE_FLAG>{'DF' if tc.drop_frame else 'NDF'}</TIMECODE_FLAG>"
        f"<FILE_SAMPLE_RATE>{sample_rate}</FILE_SAMPLE_RATE>"
        f"<TIMESTAMP_SAMPLE_RATE>{sample_rate}</TIMESTAMP_SAMPLE_RATE>"
        f"<TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_HI>{ref >> 32}</TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_HI>"
        f"<TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_LO>{ref & 0xFFFFFFFF}</TIMESTAMP_SAMPLES_SINCE_MIDNIGHT_LO>"
        "</SPEED>"
        "<HISTORY>"
        f"<PARENT_FILENAME>{e(info.source_name)}</PARENT_FILENAME>"
        "</HISTORY>"
        f"<TRACK_LIST><TRACK_COUNT>{channels}</TRACK_COUNT>{tracks}</TRACK_LIST>"
        "<SONOMASK>"
        f"<JOB_ID>{e(info.job_id)}</JOB_ID>"
        f"<LABEL>{e(info.label)}</LABEL>"
        f"<STEM>{e(info.stem)}</STEM>"
        f"<SOURCE_FILE>{e(info.source_name)}</SOURCE_FILE>"
        f"<START_TIMECODE>{tc.text}</START_TIMECODE>"
        f"<TIMECODE_SOURCE>{e(tc.source)}</TIMECODE_SOURCE>"
        "</SONOMASK>"
        "</BWFXML>\n"
    )
    return doc.encode("utf-8")


# ----------------------------------------------------------------------------- RIFF rewrite


def _chunks(f, end: int) -> list[tuple[bytes, int, int]]:  # noqa: ANN001
    """(id, body offset, body size) of each chunk after the WAVE form type."""
    out = []
    pos = 12
    while pos + 8 <= end:
        f.seek(pos)
        cid, size = struct.unpack("<4sI", f.read(8))
        out.append((cid, pos + 8, size))
        pos += 8 + size + (size & 1)
    return out


def _chunk(cid: bytes, body: bytes) -> bytes:
    """A chunk of even size: libsndfile's RF64 reader skips an odd chunk's pad byte wrongly,
    so text bodies get one trailing space (iXML) or NUL (bext's coding history) instead."""
    if len(body) & 1:
        body += b" " if cid == b"iXML" else b"\0"
    return struct.pack("<4sI", cid, len(body)) + body


def tag_wav(path: Path, info: StemInfo) -> None:
    """Insert ``bext`` and ``iXML`` (replacing any) before the ``data`` chunk of ``path``."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(12)
        form, _, kind = struct.unpack("<4sI4s", head)
        if form not in (b"RIFF", b"RF64") or kind != b"WAVE":
            raise ValueError(f"{path.name} is not a WAV file")
        size = path.stat().st_size
        chunks = _chunks(f, size)
        ids = [c[0] for c in chunks]
        if b"fmt " not in ids or b"data" not in ids:
            raise ValueError(f"{path.name} has no fmt or data chunk")
        _, fmt_at, _ = chunks[ids.index(b"fmt ")]
        f.seek(fmt_at)
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", f.read(16))
        data_size = None
        if form == b"RF64":  # ds64: riff size, data size, sample count (64-bit each)
            _, ds_at, _ = chunks[ids.index(b"ds64")]
            f.seek(ds_at)
            _, data_size, _ = struct.unpack("<QQQ", f.read(24))
            # the data chunk's 32-bit size is a placeholder: it runs to its ds64 size
            data_i = ids.index(b"data")
            cid, at, _ = chunks[data_i]
            chunks = [*chunks[:data_i], (cid, at, data_size)]
            ids = [c[0] for c in chunks]
        float_ = tag == 3 or (tag == 0xFFFE and bits == 32 and _is_float_extensible(f, fmt_at))
        new = [
            _chunk(b"bext", bext_chunk(info, rate, channels, bits, float_)),
            _chunk(b"iXML", ixml_chunk(info, rate, channels)),
        ]
        tmp = path.with_name(f".{path.name}.bwf")
        try:
            with tmp.open("wb") as out:
                out.write(head)
                for cid, at, n in chunks:
                    if cid in (b"bext", b"iXML"):
                        continue
                    if cid == b"data":
                        for chunk in new:
                            out.write(chunk)
                        new = []
                    hdr_size = 0xFFFFFFFF if (form == b"RF64" and cid == b"data") else n
                    out.write(struct.pack("<4sI", cid, hdr_size))
                    f.seek(at)
                    _copy(f, out, n + (n & 1))
                total = out.tell()
                out.seek(4)
                if form == b"RF64":
                    out.write(struct.pack("<I", 0xFFFFFFFF))
                else:
                    if total - 8 > 0xFFFFFFFF:
                        raise ValueError(f"{path.name} is too large for a WAV file")
                    out.write(struct.pack("<I", total - 8))
            if form == b"RF64":
                _fix_ds64(tmp, total)
            shutil.copymode(path, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _is_float_extensible(f, fmt_at: int) -> bool:  # noqa: ANN001
    f.seek(fmt_at + 24)
    sub = f.read(2)
    return sub == b"\x03\x00"


def _copy(src, dst, n: int) -> None:  # noqa: ANN001
    while n > 0:
        block = src.read(min(n, _COPY_BLOCK))
        if not block:
            break
        dst.write(block)
        n -= len(block)


def _fix_ds64(path: Path, total: int) -> None:
    """Set the RF64 file's 64-bit RIFF size (the ds64 chunk's first field)."""
    with path.open("r+b") as f:
        _, ds_at, _ = next(c for c in _chunks(f, 64) if c[0] == b"ds64")
        f.seek(ds_at)
        f.write(struct.pack("<Q", total - 8))
