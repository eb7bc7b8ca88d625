"""Arrays on disk read and written by rows, so a long clip never sits whole in memory.

A one-hour clip's working frames, masks and stems are gigabytes. Memory maps would
keep every page a stage touched resident and counted against the process (RSS), so
these files are accessed with positioned reads and writes (``os.pread`` /
``os.pwrite``) of just the rows asked for: memory is bounded by the rows in hand,
and the kernel's page cache, not the process, holds what was read recently.

``RowFile`` works on any headerless row-major file (raw frames from ffmpeg) and on
``.npy`` files (``open_npy`` / ``create_npy``), which stay readable by ``numpy.load``.

``PackedMasks`` keeps the working masks from costing a byte a pixel: 0/1 masks are
stored eight pixels a byte (``np.packbits`` along each row), still one fixed-size record
per frame, so trackers write frames in any order and readers read any rows. Once tracked,
``deflate_masks`` stores each frame's packed rows deflated (``DeflatedMasks``): an object
is a few runs a row, so an hour of one 60 px blob at 480x270 takes 35 MB instead of 1.5 GB.

``VideoFrames`` holds the working frames bit-exact as lossless H.264 (``VideoFramesWriter``)
and decodes the keyframe groups asked for.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np

_CHUNK_BYTES = 64 << 20  # a single pread/pwrite moves at most this much


class RowFile:
    """An array of ``shape`` (rows first) stored at ``offset`` in ``path``.

    Indexing reads rows: ``f[i]``, ``f[a:b]`` (step 1), ``f[index_array]``; assigning
    writes them (``writable=True``). It quacks enough like an ndarray (``shape``,
    ``dtype``, ``ndim``, ``len``) for the trackers and prompt builders to take it.
    """

    def __init__(
        self,
        path: Path | str,
        shape: tuple[int, ...],
        dtype: Any,
        offset: int = 0,
        writable: bool = False,
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.offset = int(offset)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.writable = bool(writable)
        self._fd = os.open(self.path, os.O_RDWR if writable else os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if size < self.offset + self.shape[0] * self.row_bytes:
            os.close(self._fd)
            raise ValueError(
                f"{self.path.name} holds {size} bytes, fewer than {self.shape} {self.dtype} needs"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as the same file, opened again: another process reads and writes the same
        rows (``vision.objects`` tracks objects in processes this way)."""
        return (RowFile, (self.path, self.shape, self.dtype.str, self.offset, self.writable))

    # ------------------------------------------------------------------ rows

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo`` to ``hi`` (exclusive) as a new array."""
        lo, hi = max(0, lo), min(self.shape[0], hi)
        out = np.empty((max(0, hi - lo), *self.row_shape), dtype=self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, done = self.offset + lo * self.row_bytes, 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done : done + _CHUNK_BYTES]], pos + done)
            if got <= 0:
                raise OSError(f"{self.path.name}: unexpected end of file")
            done += got
        return out

    def write(self, lo: int, rows: np.ndarray) -> None:
        """Store ``rows`` (shape ``[k, *row_shape]``) at rows ``lo`` to ``lo + k``."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape or not 0 <= lo <= self.shape[0] - len(rows):
            raise ValueError(f"cannot write rows {rows.shape} at {lo} into {self.shape}")
        data = memoryview(rows.reshape(-1).view(np.uint8))
        pos, done = self.offset + lo * self.row_bytes, 0
        while done < len(data):
            done += os.pwrite(self._fd, data[done : done + _CHUNK_BYTES], pos + done)

    def write_within(self, i: int, start: int, data: np.ndarray) -> None:
        """Store the bytes of ``data`` inside row ``i``, ``start`` bytes into it."""
        raw = memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8))
        if not (0 <= i < self.shape[0] and 0 <= start and start + len(raw) <= self.row_bytes):
            raise ValueError(f"cannot write {len(raw)} bytes at {start} into row {i}")
        pos, done = self.offset + i * self.row_bytes + start, 0
        while done < len(raw):
            done += os.pwrite(self._fd, raw[done : done + _CHUNK_BYTES], pos + done)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"row {key} outside 0..{self.shape[0] - 1}")
            return self.read(i, i + 1)[0]
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.shape[0])
            if step != 1:
                return self[np.arange(lo, hi, step)]
            return self.read(lo, hi)
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = idx.astype(np.int64).reshape(-1)
        out = np.empty((len(idx), *self.row_shape), dtype=self.dtype)
        if len(idx) == 0:
            return out
        # Read each run of consecutive rows with one call (prompt indices repeat and ascend).
        uniq, inverse = np.unique(idx, return_inverse=True)
        rows = np.empty((len(uniq), *self.row_shape), dtype=self.dtype)
        breaks = np.nonzero(np.diff(uniq) != 1)[0] + 1
        at = 0
        for run in np.split(uniq, breaks):
            rows[at : at + len(run)] = self.read(int(run[0]), int(run[-1]) + 1)
            at += len(run)
        out[:] = rows[inverse.reshape(-1)]
        return out

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            self.write(i, np.asarray(value, dtype=self.dtype)[None])
            return
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.shape[0])
            if step == 1:
                self.write(lo, np.broadcast_to(value, (hi - lo, *self.row_shape)))
                return
        raise TypeError("RowFile rows are written one index or one step-1 slice at a time")

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def read_npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy stream ``f``, left at the first data byte."""
    version = np.lib.format.read_magic(f)
    read_header = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(f)
    return tuple(int(v) for v in shape), bool(fortran), dtype


def open_npy(path: Path | str, writable: bool = False) -> RowFile:
    """Row access to an existing ``.npy`` file (C order)."""
    with open(path, "rb") as f:
        shape, fortran, dtype = read_npy_header(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{Path(path).name} is in Fortran order; rows cannot be read directly")
    return RowFile(path, shape, dtype, offset, writable=writable)


def create_npy(path: Path | str, shape: tuple[int, ...], dtype: Any) -> RowFile:
    """A new ``.npy`` file of ``shape`` (zero-filled, sparse on disk), open for writing."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return RowFile(path, shape, dtype, offset, writable=True)


class _RowView:
    """Indexing by rows over ``read`` (``f[i]``, ``f[a:b]``, ``f[index_array]``)."""

    shape: tuple[int, ...]
    dtype = np.dtype(np.uint8)

    def read(self, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def _index(self, key: Any) -> int:
        i = int(key) + (self.shape[0] if key < 0 else 0)
        if not 0 <= i < self.shape[0]:
            raise IndexError(f"row {key} outside 0..{self.shape[0] - 1}")
        return i

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = self._index(key)
            return self.read(i, i + 1)[0]
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.shape[0])
            if step == 1:
                return self.read(lo, hi)
            key = np.arange(lo, hi, step)
        return self._rows(key)

    def _rows(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    def _indices(self, key: Any) -> np.ndarray:
        """``key`` (row numbers or a boolean mask) as int64 row numbers, range-checked."""
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = idx.astype(np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"rows outside 0..{self.shape[0] - 1}")
        return idx

    def __enter__(self) -> _RowView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:  # a view dropped without close() still frees its file
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown, half-built objects
            pass


class PackedMasks(_RowView):
    """Masks uint8 [n, h, w] (1 = object) stored packed: ``np.packbits`` of each row, so a
    frame costs ``h * ceil(w / 8)`` bytes on disk instead of ``h * w``.

    Reads give uint8 0/1 (any non-zero written counts as 1), as ``RowFile`` gave them.
    ``rows`` is the ``RowFile`` of packed rows, shape ``[n, h, ceil(w / 8)]``.

    A new file (``create_packed_masks``) is all holes; the first write of a frame stores
    only its rows from the first to the last that hold the object, so the rest of the
    frame stays a hole on disk (a 60 px object at 480x270 takes a block or two of a
    frame's four). ``fresh`` says which frames were never written; a frame written again
    is written whole.
    """

    def __init__(self, rows: RowFile, width: int, fresh: np.ndarray | None = None) -> None:
        n, h, wb = rows.shape
        if wb != (int(width) + 7) // 8:
            rows.close()
            raise ValueError(f"{rows.path.name}: {wb} bytes a row cannot hold {width} pixels")
        self.rows, self.path = rows, rows.path
        self.shape = (n, h, int(width))
        self._fresh = fresh

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as the same file (``RowFile.__reduce__``). The copy, the only writer from
        then on, takes over which frames are fresh: this object writes whole frames."""
        fresh, self._fresh = self._fresh, None
        return (PackedMasks, (self.rows, self.shape[2], fresh))

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo`` to ``hi`` (exclusive), unpacked."""
        return np.unpackbits(self.rows.read(lo, hi), axis=-1, count=self.shape[2])

    def write(self, lo: int, masks: np.ndarray) -> None:
        """Store ``masks`` (shape ``[k, h, w]``) at rows ``lo`` to ``lo + k``."""
        m = np.asarray(masks)
        if m.shape[1:] != self.shape[1:]:
            raise ValueError(f"cannot write masks {m.shape} into {self.shape}")
        packed = np.packbits(m != 0, axis=-1)
        fresh = self._fresh
        if (
            fresh is None
            or not 0 <= lo <= len(fresh) - len(packed)
            or not fresh[lo : lo + len(packed)].any()
        ):
            self.rows.write(lo, packed)
            return
        for i, frame in enumerate(packed, start=lo):
            if not fresh[i]:
                self.rows.write(i, frame[None])
                continue
            fresh[i] = False
            used = np.nonzero(frame.any(axis=1))[0]  # the rows that hold the object
            if len(used):
                start = int(used[0]) * self.rows.row_shape[-1]
                self.rows.write_within(i, start, frame[used[0] : used[-1] + 1])

    def _rows(self, key: Any) -> np.ndarray:
        return np.unpackbits(self.rows[key], axis=-1, count=self.shape[2])

    def __setitem__(self, key: Any, value: np.ndarray) -> None:
        if isinstance(key, (int, np.integer)):
            self.write(self._index(key), np.asarray(value)[None])
            return
        if isinstance(key, slice):
            lo, hi, step = key.indices(self.shape[0])
            if step == 1:
                self.write(lo, np.broadcast_to(value, (hi - lo, *self.shape[1:])))
                return
        raise TypeError("mask rows are written one index or one step-1 slice at a time")

    def close(self) -> None:
        self.rows.close()


def mask_row_bytes(width: int) -> int:
    """Bytes one packed mask row of ``width`` pixels takes."""
    return (int(width) + 7) // 8


def create_packed_masks(path: Path | str, n: int, size: tuple[int, int]) -> PackedMasks:
    """A new packed mask file (a ``.npy`` of packed rows, all zero) for ``n`` frames of
    ``size`` (w, h), open for writing."""
    w, h = size
    return PackedMasks(create_npy(path, (n, h, mask_row_bytes(w)), np.uint8), w, np.ones(n, bool))


def open_packed_masks(path: Path | str, width: int, writable: bool = False) -> PackedMasks:
    """An existing packed mask file; ``width`` is the masks' width in pixels."""
    return PackedMasks(open_npy(path, writable=writable), width)


_DEFLATED_MAGIC = b"SMDMASK1"
_DEFLATE_CHUNK = 256  # frames read, compressed and written at a time


def deflate_masks(masks: PackedMasks, path: Path | str) -> None:
    """Store ``masks`` at ``path`` with each frame's packed rows deflated on their own
    (``DeflatedMasks`` reads them): a tracked object is a few runs a row, so a frame's
    16 KB of packed bits at 480x270 shrink to a few hundred bytes.

    Layout: ``SMDMASK1``, then n, h, w and the n + 1 byte offsets of the frames (int64
    little-endian, offsets from the end of that table), then the deflated frames back to
    back."""
    n, h, w = masks.shape
    head = _DEFLATED_MAGIC + np.asarray([n, h, w], "<i8").tobytes()
    offsets = np.zeros(n + 1, "<i8")
    with open(path, "wb") as f:
        f.write(head)
        f.seek(len(head) + offsets.nbytes)
        for a in range(0, n, _DEFLATE_CHUNK):
            rows = masks.rows.read(a, min(n, a + _DEFLATE_CHUNK))
            for i, frame in enumerate(rows, start=a):
                data = zlib.compress(frame.tobytes(), 1)
                f.write(data)
                offsets[i + 1] = offsets[i] + len(data)
        f.seek(len(head))
        f.write(offsets.tobytes())


class DeflatedMasks(_RowView):
    """Masks uint8 [n, h, w] (1 = object) read from a ``deflate_masks`` file: any frames,
    any order, each inflated on its own."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            head = f.read(len(_DEFLATED_MAGIC) + 24)
            if len(head) != len(_DEFLATED_MAGIC) + 24 or not head.startswith(_DEFLATED_MAGIC):
                raise ValueError(f"{self.path.name} is not a deflated mask file")
            n, h, w = (int(v) for v in np.frombuffer(head[len(_DEFLATED_MAGIC) :], "<i8"))
            table = f.read(8 * (n + 1))
        if len(table) != 8 * (n + 1):
            raise ValueError(f"{self.path.name} is shorter than its frame index says")
        self.shape = (n, h, w)
        self._offsets = np.frombuffer(table, "<i8").astype(np.int64)
        self._base = len(head) + len(table)
        self._fd = os.open(self.path, os.O_RDONLY)
        if os.fstat(self._fd).st_size < self._base + int(self._offsets[-1]):
            os.close(self._fd)
            raise ValueError(f"{self.path.name} is shorter than its frame index says")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as the same file."""
        return (DeflatedMasks, (self.path,))

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo`` to ``hi`` (exclusive), unpacked."""
        lo, hi = max(0, lo), min(self.shape[0], hi)
        return self._rows(np.arange(lo, max(lo, hi)))

    def _rows(self, key: Any) -> np.ndarray:
        idx = self._indices(key)
        n, h, w = self.shape
        packed = np.empty((len(idx), h, mask_row_bytes(w)), dtype=np.uint8)
        lo = int(idx.min()) if len(idx) else 0
        hi = int(idx.max()) + 1 if len(idx) else 0
        span = None  # one read for rows close together (a range), else a read a row
        if len(idx) and hi - lo <= 4 * len(idx):
            span = self._pread(int(self._offsets[lo]), int(self._offsets[hi]))
        for row, i in enumerate(idx.tolist()):
            a, b = int(self._offsets[i]), int(self._offsets[i + 1])
            data = span[a - int(self._offsets[lo]) : b - int(self._offsets[lo])] if span else None
            try:
                frame = zlib.decompress(data if data is not None else self._pread(a, b))
            except zlib.error as exc:
                raise OSError(f"{self.path.name}: frame {i} is damaged") from exc
            if len(frame) != packed[row].nbytes:
                raise OSError(f"{self.path.name}: frame {i} is damaged")
            packed[row] = np.frombuffer(frame, np.uint8).reshape(packed.shape[1:])
        return np.unpackbits(packed, axis=-1, count=w)

    def _pread(self, a: int, b: int) -> bytes:
        data = os.pread(self._fd, b - a, self._base + a)
        if len(data) != b - a:
            raise OSError(f"{self.path.name}: unexpected end of file")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# ---------------------------------------------------------------------------- working frames

FRAME_GOP = 25
"""A keyframe every this many working frames: reading any one frame decodes at most this many."""
_X264 = {  # lossless (qp 0) RGB H.264 with a keyframe exactly every FRAME_GOP frames
    "qp": "0",
    "preset": "ultrafast",
    "g": str(FRAME_GOP),
    "keyint_min": str(FRAME_GOP),
    "sc_threshold": "0",
    "bframes": "0",
}
_CACHED_GOPS = 3  # decoded groups kept: a reader going back and forth over a seam decodes once


def _decorrelate(rgb: np.ndarray) -> np.ndarray:
    """(R - G, G, B - G) modulo 256: exactly reversible (``_recorrelate``), and the two
    differences are near zero wherever the picture is near grey, which x264's RGB coder
    (it codes the three planes apart) then stores in less: 44% less on the longform
    benchmark's test pattern, 5-13% on opencv-doc's real clips."""
    out = np.empty_like(rgb)
    g = rgb[..., 1]
    np.subtract(rgb[..., 0], g, out=out[..., 0])  # uint8 arithmetic wraps: modulo 256
    out[..., 1] = g
    np.subtract(rgb[..., 2], g, out=out[..., 2])
    return out


def _recorrelate(coded: np.ndarray) -> np.ndarray:
    """The RGB frame ``_decorrelate`` was given."""
    g = coded[..., 1]
    np.add(coded[..., 0], g, out=coded[..., 0])
    np.add(coded[..., 2], g, out=coded[..., 2])
    return coded


class VideoFramesWriter:
    """Appends RGB frames to a lossless H.264 stream, one packet per frame back to back;
    ``offsets`` says where each frame's packet starts (and the end).

    Why lossless H.264 (x264's RGB encoder at qp 0): the working frames are revisited by
    the trackers, the prompt stage and SAM Audio's masked video, so they must be kept, and
    raw RGB costs 35 GB an hour of footage at 480x270. Coding each frame against the
    previous ones keeps them bit-exact (what ffmpeg decoded, as raw storage did) at a
    fraction of that: 0.6 GB an hour of ``benchmarks/pipeline.py``'s generated 1080p, 1.6 GB of
    ``benchmarks/longform.py``'s test pattern, about 8 GB of grainy real footage at 480x360
    (opencv-doc's vtest.avi; JPEG at quality 100, which is not exact, took 19). The colours
    are decorrelated first (``_decorrelate``). Encoding costs 0.5-1.6 ms a frame, decoding
    0.8-2.6 ms.
    ``FRAME_GOP`` bounds the cost of reading a frame out of order. The stream is a plain
    H.264 elementary stream: ``ffplay frames.h264`` plays it.
    """

    def __init__(self, path: Path | str, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.offsets = [0]
        self._n = 0
        cc = av.CodecContext.create("libx264rgb", "w")
        cc.width, cc.height = self.size
        cc.pix_fmt = "rgb24"
        cc.time_base = Fraction(1, FRAME_GOP)  # a frame counter, not a clock (frame_times.npy is)
        cc.options = dict(_X264)
        cc.thread_count = 1  # the demux stage runs it beside ffmpeg's decoder
        self._cc = cc
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed by close()

    def add(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(_decorrelate(np.asarray(rgb, dtype=np.uint8)), "rgb24")
        frame.pts = self._n
        self._n += 1
        self._store(self._cc.encode(frame))

    def _store(self, packets: list[Any]) -> None:
        for packet in packets:
            i = len(self.offsets) - 1
            if packet.pts != i or bool(packet.is_keyframe) != (i % FRAME_GOP == 0):
                raise ValueError(f"the frame encoder returned frame {packet.pts} out of order")
            data = bytes(packet)
            self._f.write(data)
            self.offsets.append(self.offsets[-1] + len(data))

    def finish(self) -> None:
        """Write the frames the encoder still holds; ``offsets`` is then complete."""
        self._store(self._cc.encode(None))
        if len(self.offsets) - 1 != self._n:
            raise ValueError(f"{self._n} frames went in, {len(self.offsets) - 1} came out")

    def close(self) -> None:
        self._f.close()


class VideoFrames(_RowView):
    """The working frames uint8 [n, h, w, 3] (RGB), read from a ``VideoFramesWriter`` file.

    Indexing decodes only the keyframe groups (``FRAME_GOP`` frames) that hold the frames
    asked for, each with a fresh decoder, and keeps the last few groups decoded. A reader
    walking the clip (the trackers forwards or backwards, the prompt stage chunk by chunk)
    finds the next group decoding ahead on a thread. ``view`` gives a range of frames as a
    clip of its own.
    """

    def __init__(
        self,
        path: Path | str,
        offsets: np.ndarray,
        size: tuple[int, int],
        start: int = 0,
        count: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        total = len(self.offsets) - 1
        self.start = int(start)
        count = total - self.start if count is None else int(count)
        if not (0 <= self.start and 0 <= count and self.start + count <= total):
            raise ValueError(f"frames {start}..{self.start + count} are not all in {total}")
        w, h = size
        self.shape = (count, int(h), int(w), 3)
        self._fd = os.open(self.path, os.O_RDONLY)
        if os.fstat(self._fd).st_size < int(self.offsets[-1]):
            os.close(self._fd)
            raise ValueError(f"{self.path.name} is shorter than its frame index says")
        self._pool: ThreadPoolExecutor | None = None
        self._gops: OrderedDict[int, Any] = OrderedDict()  # group -> frames, or their Future
        self._last_gop = -2
        self._lock = threading.Lock()  # one reader at a time may use the cache

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as the same file (``vision.objects`` tracks objects in processes)."""
        size = (self.shape[2], self.shape[1])
        return (VideoFrames, (self.path, self.offsets, size, self.start, self.shape[0]))

    def view(self, lo: int, hi: int) -> VideoFrames:
        """Frames ``lo`` to ``hi`` (exclusive) as a clip of their own (nothing is read)."""
        lo, hi = max(0, lo), min(self.shape[0], hi)
        size = (self.shape[2], self.shape[1])
        return VideoFrames(self.path, self.offsets, size, self.start + lo, max(0, hi - lo))

    def _decode(self, g: int) -> np.ndarray:
        """Keyframe group ``g`` of the whole file, decoded: [k, h, w, 3]."""
        a = g * FRAME_GOP
        b = min(len(self.offsets) - 1, a + FRAME_GOP)
        base = int(self.offsets[a])
        data = os.pread(self._fd, int(self.offsets[b]) - base, base)
        if len(data) != int(self.offsets[b]) - base:
            raise OSError(f"{self.path.name}: unexpected end of file")
        out = np.empty((b - a, *self.shape[1:]), dtype=np.uint8)
        decoder = av.CodecContext.create("h264", "r")
        k = 0
        try:
            for i in range(a, b + 1):
                packet = (
                    av.Packet(data[int(self.offsets[i]) - base : int(self.offsets[i + 1]) - base])
                    if i < b
                    else None
                )
                for frame in decoder.decode(packet):
                    img = _recorrelate(frame.to_ndarray(format="rgb24"))
                    if k >= len(out) or img.shape != out.shape[1:]:
                        raise ValueError("a frame of the wrong size or one too many")
                    out[k] = img
                    k += 1
        except (ValueError, av.FFmpegError) as exc:
            raise OSError(f"{self.path.name}: frames {a}..{b - 1} are damaged ({exc})") from exc
        if k != len(out):
            raise OSError(f"{self.path.name}: frames {a + k}..{b - 1} are damaged")
        return out

    def _gop(self, g: int) -> np.ndarray:
        """Group ``g`` decoded (kept among the last few); a walk to the next group in the
        same direction starts decoding the one after on a thread."""
        step, self._last_gop = g - self._last_gop, g
        got = self._gops.pop(g, None)
        if got is None:
            frames = self._decode(g)
        elif isinstance(got, np.ndarray):
            frames = got
        else:  # decoding ahead on the thread
            frames = got.result()
        self._gops[g] = frames
        if step in (1, -1) and 0 <= g + step <= (len(self.offsets) - 2) // FRAME_GOP:
            if g + step not in self._gops:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(1, thread_name_prefix="frames")
                self._gops[g + step] = self._pool.submit(self._decode, g + step)
        while len(self._gops) > _CACHED_GOPS:
            old = self._gops.pop(next(iter(self._gops)))
            if not isinstance(old, np.ndarray):
                old.cancel()
        return frames

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Frames ``lo`` to ``hi`` (exclusive) as a new array."""
        lo, hi = max(0, lo), min(self.shape[0], hi)
        return self._rows(np.arange(lo, max(lo, hi)))

    def _rows(self, key: Any) -> np.ndarray:
        idx = self._indices(key)
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        if len(idx) == 0:
            return out
        stored = idx + self.start
        gops = stored // FRAME_GOP
        # Groups in the order first asked for (a backward walk asks for the later one first).
        with self._lock:
            for g in dict.fromkeys(gops.tolist()):
                rows = np.nonzero(gops == g)[0]
                out[rows] = self._gop(int(g))[stored[rows] - g * FRAME_GOP]
        return out

    def close(self) -> None:
        for got in self._gops.values():
            if not isinstance(got, np.ndarray):
                got.cancel()
        self._gops.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
