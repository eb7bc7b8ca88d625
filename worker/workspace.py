"""One folder per job: inputs' description, intermediate artifacts, outputs, manifest.

Stages communicate only through files here, so the same stage functions run in-process
and as separate Celery tasks on other machines sharing the workspace root. Every file is
written to a temporary name and renamed into place, so a file that exists is complete and
a stage whose outputs exist can be skipped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from worker import files
from worker.errors import BadInput
from worker.spec import JobSpec

_UMASK = os.umask(0)
os.umask(_UMASK)


class Workspace:
    """A job's folder. ``root / job_id`` holds everything the stages read and write."""

    def __init__(self, path: Path):
        self.path = Path(path)
        # Called before any file becomes visible; a queued stage sets it to its lease check,
        # so a worker that lost its stage to another can never publish over it.
        self.guard: Callable[[], None] | None = None

    @classmethod
    def create(cls, root: Path, spec: JobSpec, job_id: str | None = None) -> Workspace:
        job_id = job_id or uuid.uuid4().hex[:12]
        ws = cls(Path(root) / job_id)
        ws.path.mkdir(parents=True, exist_ok=True)
        if not ws.file(files.SPEC).exists():
            ws.write_text(files.SPEC, spec.model_dump_json(indent=2))
        return ws

    @property
    def job_id(self) -> str:
        return self.path.name

    @property
    def spec(self) -> JobSpec:
        return JobSpec.model_validate_json(self.file(files.SPEC).read_text())

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, *names: str) -> bool:
        """Whether every file exists, or was made and then released (``release``): a stage
        whose outputs were all made is done, even once later stages no longer need them."""
        missing = [n for n in names if not self.file(n).exists()]
        if not missing:
            return True
        released = set(self.manifest().get("released", []))
        return all(n in released for n in missing)

    def release(self, *names: str) -> None:
        """Delete work files that no later stage reads (a long job's disk peak), recording
        in the manifest that they were made."""
        present = [n for n in names if self.file(n).exists()]
        if not present:
            return
        released = set(self.manifest().get("released", [])) | set(present)
        self.update_manifest(released=sorted(released))
        for n in present:
            self.file(n).unlink(missing_ok=True)

    # ------------------------------------------------------------------ atomic writes

    @contextlib.contextmanager
    def atomic(self, name: str) -> Iterator[Path]:
        """Yield a temporary path next to ``name``; rename it into place only on success."""
        final = self.file(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        suffix = "".join(final.suffixes[-1:])
        fd, tmp = tempfile.mkstemp(
            prefix=f".{final.stem}.", suffix=f".part{suffix}", dir=final.parent
        )
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
            if self.guard is not None:
                self.guard()
            os.replace(tmp_path, final)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()

    def write_text(self, name: str, text: str) -> None:
        with self.atomic(name) as tmp:
            tmp.write_text(text)

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(data, indent=2, default=str))

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())

    def write_npz(self, name: str, **arrays: np.ndarray) -> None:
        with self.atomic(name) as tmp, tmp.open("wb") as f:
            np.savez_compressed(f, **arrays)

    def write_npy(self, name: str, array: np.ndarray) -> None:
        with self.atomic(name) as tmp, tmp.open("wb") as f:
            np.save(f, array)

    def write_wav(self, name: str, audio: np.ndarray, rate: int, subtype: str = "PCM_24") -> None:
        with self.atomic(name) as tmp:
            sf.write(tmp, audio, rate, subtype=subtype, format="RF64" if _big(audio) else "WAV")

    # ------------------------------------------------------------------ manifest

    def manifest(self) -> dict[str, Any]:
        if self.file(files.MANIFEST).exists():
            return self.read_json(files.MANIFEST)
        return {}

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        data = self.manifest()
        data.update(fields)
        self.write_json(files.MANIFEST, data)
        return data

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the job for this process: two runs of the same job must not share its files."""
        fd = os.open(self.file(".lock"), os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(
                f"the same job is already running (work folder {self.path}); wait for it to finish"
            ) from None
        try:
            yield
        finally:
            os.close(fd)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _big(audio: np.ndarray) -> bool:
    return audio.size * 3 > 3_500_000_000
