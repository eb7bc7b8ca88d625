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
per frame, so trackers write frames in any order and readers read any rows.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import cv2
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

    def __enter__(self) -> _RowView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class PackedMasks(_RowView):
    """Masks uint8 [n, h, w] (1 = object) stored packed: ``np.packbits`` of each row, so a
    frame costs ``h * ceil(w / 8)`` bytes on disk instead of ``h * w``.

    Reads give uint8 0/1 (any non-zero written counts as 1), as ``RowFile`` gave them.
    ``rows`` is the ``RowFile`` of packed rows, shape ``[n, h, ceil(w / 8)]``.
    """

    def __init__(self, rows: RowFile, width: int) -> None:
        n, h, wb = rows.shape
        if wb != (int(width) + 7) // 8:
            rows.close()
            raise ValueError(f"{rows.path.name}: {wb} bytes a row cannot hold {width} pixels")
        self.rows, self.path = rows, rows.path
        self.shape = (n, h, int(width))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as the same file (``RowFile.__reduce__``)."""
        return (PackedMasks, (self.rows, self.shape[2]))

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo`` to ``hi`` (exclusive), unpacked."""
        return np.unpackbits(self.rows.read(lo, hi), axis=-1, count=self.shape[2])

    def write(self, lo: int, masks: np.ndarray) -> None:
        """Store ``masks`` (shape ``[k, h, w]``) at rows ``lo`` to ``lo + k``."""
        m = np.asarray(masks)
        if m.shape[1:] != self.shape[1:]:
            raise ValueError(f"cannot write masks {m.shape} into {self.shape}")
        self.rows.write(lo, np.packbits(m != 0, axis=-1))

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
    return PackedMasks(create_npy(path, (n, h, mask_row_bytes(w)), np.uint8), w)


def open_packed_masks(path: Path | str, width: int, writable: bool = False) -> PackedMasks:
    """An existing packed mask file; ``width`` is the masks' width in pixels."""
    return PackedMasks(open_npy(path, writable=writable), width)


# ---------------------------------------------------------------------------- working frames

JPEG_QUALITY = 100  # the working frames' JPEG quality, chroma kept at full resolution (4:4:4)
_JPEG_PARAMS = [
    cv2.IMWRITE_JPEG_QUALITY,
    JPEG_QUALITY,
    cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
    cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
]
_AHEAD = 2  # frames decoded ahead of a reader walking the clip forwards or backwards


class JpegFramesWriter:
    """Appends RGB frames to a file of back-to-back JPEGs; ``offsets`` says where each is.

    Why JPEG: raw working frames cost 35 GB an hour of footage at 480x270. At quality 100,
    4:4:4, they cost 2.4-5 times less (8.5 GB an hour of the benchmark's generated 1080p,
    about 19 GB of grainy real footage such as opencv-doc's vtest.avi), stay within 4 grey
    levels of the decoded pixels (mean 0.45), and decode in about 2 ms, so a stage can still
    read any frame in any order. Quality 95 would be 6-13 times smaller, but changed what
    the classical separator keeps in ``tests/test_longform_sync.py``; lossless zstd
    compressed these frames only 1.2-2.4 times.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._f = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        self.offsets = [0]

    def add(self, rgb: np.ndarray) -> None:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), _JPEG_PARAMS)
        if not ok:
            raise ValueError("a frame could not be encoded as JPEG")
        self._f.write(buf.tobytes())
        self.offsets.append(self.offsets[-1] + len(buf))

    def close(self) -> None:
        self._f.close()


class JpegFrames(_RowView):
    """The working frames uint8 [n, h, w, 3] (RGB), read from a ``JpegFramesWriter`` file.

    Indexing decodes only the frames asked for, like ``RowFile`` reads only its rows. A
    reader that walks the clip one frame at a time (the trackers, forwards or backwards)
    finds the next frames already decoded by a helper thread (OpenCV releases the GIL), so
    the decoding runs beside the tracking on another core.
    """

    def __init__(self, path: Path | str, offsets: np.ndarray, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        w, h = size
        self.shape = (len(self.offsets) - 1, int(h), int(w), 3)
        self._fd = os.open(self.path, os.O_RDONLY)
        if os.fstat(self._fd).st_size < int(self.offsets[-1]):
            os.close(self._fd)
            raise ValueError(f"{self.path.name} is shorter than its frame index says")
        self._pool: Any = None
        self._ahead: dict[int, Any] = {}
        self._last = -2

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as the same file (``vision.objects`` tracks objects in processes)."""
        return (JpegFrames, (self.path, self.offsets, (self.shape[2], self.shape[1])))

    def _decode(self, i: int) -> np.ndarray:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        buf = os.pread(self._fd, hi - lo, lo)
        if len(buf) != hi - lo:
            raise OSError(f"{self.path.name}: unexpected end of file")
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR_RGB)
        if img is None or img.shape != self.shape[1:]:
            raise OSError(f"{self.path.name}: frame {i} is damaged")
        return img

    def _executor(self) -> Any:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="frames")
        return self._pool

    def _frame(self, i: int) -> np.ndarray:
        """Frame ``i``; when it follows the last one read, the next ones start decoding."""
        step = i - self._last
        self._last = i
        fut = self._ahead.pop(i, None)
        frame = fut.result() if fut is not None else self._decode(i)
        if step in (1, -1):
            want = [i + step * k for k in range(1, _AHEAD + 1)]
            want = [j for j in want if 0 <= j < self.shape[0]]
            for j in list(self._ahead):
                if j not in want:
                    self._ahead.pop(j).cancel()
            for j in want:
                if j not in self._ahead:
                    self._ahead[j] = self._executor().submit(self._decode, j)
        return frame

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Frames ``lo`` to ``hi`` (exclusive) as a new array."""
        lo, hi = max(0, lo), min(self.shape[0], hi)
        if hi - lo == 1:
            return self._frame(lo)[None]
        return self._rows(np.arange(lo, hi))

    def _rows(self, key: Any) -> np.ndarray:
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        idx = idx.astype(np.int64).reshape(-1)
        out = np.empty((len(idx), *self.shape[1:]), dtype=np.uint8)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= self.shape[0]:
            raise IndexError(f"rows outside 0..{self.shape[0] - 1}")
        first: dict[int, int] = {}  # each distinct frame decoded once, into its first row
        for row, j in enumerate(idx.tolist()):
            first.setdefault(j, row)

        def put(j: int) -> None:
            out[first[j]] = self._decode(j)

        list(self._executor().map(put, first))
        for row, j in enumerate(idx.tolist()):
            if first[j] != row:
                out[row] = out[first[j]]
        return out

    def close(self) -> None:
        for fut in self._ahead.values():
            fut.cancel()
        self._ahead.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
