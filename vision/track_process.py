"""Objects tracked in child processes: each one a fresh Python running ``main`` here.

Why not ``multiprocessing``: a Celery prefork worker runs each task in a daemonic process,
and the standard library refuses to start children from one ("daemonic processes are not
allowed to have children"), whatever the start method; a plain fork would also leave
OpenCV's thread pool locked in the child. A child started with ``subprocess`` is an
ordinary program, so the same route serves the CLI, ``sonomask watch`` and the queue.

The protocol, on the child's stdin and stdout: length-prefixed pickles (``_send`` /
``_recv``). The parent writes one message, ``(sys.path, task)``, where ``task`` is the
pickle of ``(tracker, frames, size, keyframes, out)``; the child answers with
``("progress", fraction, message)`` any number of times, then ``("done", tracker name,
warnings, exact keyframes)`` or ``("error", exception or None, traceback text)``. The
child's own stdout goes to its stderr, so nothing a library prints can corrupt the
messages; the parent logs what the child writes to stderr.

The children live no longer than the parent:
- the parent keeps the child's stdin open for as long as it wants the child; the child
  exits at once when it reads end of file there (the parent died, however: SIGKILL from
  Celery's ``revoke(terminate=True)`` or its hard time limit, the OOM killer);
- on Linux the child also asks the kernel for SIGKILL when its parent dies
  (``PR_SET_PDEATHSIG``), which needs no Python thread to run;
- when the parent stops waiting for any reason (a child failed, the progress callback
  raised, KeyboardInterrupt), it kills and reaps every child it started before returning.
They stay in the parent's process group and session, so killing the worker's group kills
them too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<Q")  # a message's length in bytes
_PR_SET_PDEATHSIG = 1
_KILL_WAIT = 10.0  # seconds to reap a killed child
_DONE_WAIT = 30.0  # seconds for a child that sent its result to exit


class ChildFailed(RuntimeError):
    """A tracking process ended without a result (it could not start, or it was killed)."""


# --------------------------------------------------------------------------- the parent


@dataclass
class _Child:
    j: int
    proc: subprocess.Popen[bytes]
    buf: bytearray = field(default_factory=bytearray)
    err: bytearray = field(default_factory=bytearray)  # what it wrote to stderr, not yet logged
    tail: bytes = b""  # the last of its stderr, for an error message
    open_pipes: int = 2
    result: tuple[Any, ...] | None = None


def follow_in_processes(
    tasks: Sequence[bytes],
    workers: int,
    progress: Callable[[int, float, str], None],
) -> list[tuple[str, list[str], frozenset[int]]]:
    """Run each pickled task (``task_bytes``) in its own child, at most ``workers`` at once;
    returns each task's ``(tracker name, warnings, exact keyframes)`` in order.

    ``progress(j, fraction, message)`` is called here, in the calling thread, for task j.
    Raises the child's own exception when a tracker raised, ``ChildFailed`` when a child
    ended without a result, ``OSError`` when a child cannot be started. Every child started
    is dead and reaped when this returns or raises.
    """
    pending = list(range(len(tasks)))
    running: dict[int, _Child] = {}
    results: dict[int, tuple[str, list[str], frozenset[int]]] = {}
    sel = selectors.DefaultSelector()
    try:
        while pending or running:
            while pending and len(running) < workers:
                j = pending.pop(0)
                child = _start(j, tasks[j])
                running[j] = child
                assert child.proc.stdout is not None and child.proc.stderr is not None
                sel.register(child.proc.stdout, selectors.EVENT_READ, (child, "out"))
                sel.register(child.proc.stderr, selectors.EVENT_READ, (child, "err"))
            for key, _ in sel.select(timeout=1.0):
                child, which = key.data
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    child.open_pipes -= 1
                elif which == "err":
                    _log_stderr(child, chunk)
                else:
                    child.buf += chunk
                    for msg in _messages(child.buf):
                        if msg[0] == "progress":
                            progress(child.j, msg[1], msg[2])
                        else:
                            child.result = msg
            for j, child in list(running.items()):
                if child.open_pipes:  # both close when it exits
                    continue
                _finish(child)
                del running[j]
                results[j] = _outcome(child)
        return [results[j] for j in range(len(tasks))]
    finally:
        for child in running.values():
            _kill(child)
        sel.close()


def _start(j: int, task: bytes) -> _Child:
    """A child for task j, its task written to it (its stdin then stays open: its lifeline)."""
    here = str(Path(__file__).resolve().parent.parent)  # the folder holding ``vision``
    boot = (
        f"import sys; sys.path.insert(0, {here!r}); from vision.track_process import main; main()"
    )
    proc = subprocess.Popen(
        # -P: the working folder is not put first on the child's path (a ``vision`` there
        # must not stand in for this one)
        [sys.executable, "-P", "-c", boot, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
    )
    child = _Child(j, proc)
    assert proc.stdin is not None
    try:
        _send(proc.stdin, pickle.dumps((list(sys.path), task), pickle.HIGHEST_PROTOCOL))
    except BaseException:
        _kill(child)
        raise
    return child


def _messages(buf: bytearray) -> list[tuple[Any, ...]]:
    """The complete messages at the start of ``buf``, taken out of it."""
    out = []
    while len(buf) >= _HEADER.size:
        (n,) = _HEADER.unpack_from(buf)
        if len(buf) < _HEADER.size + n:
            break
        out.append(pickle.loads(bytes(buf[_HEADER.size : _HEADER.size + n])))
        del buf[: _HEADER.size + n]
    return out


def _log_stderr(child: _Child, chunk: bytes) -> None:
    child.err += chunk
    child.tail = (child.tail + chunk)[-4000:]
    *lines, rest = child.err.split(b"\n")
    child.err = bytearray(rest)
    for line in lines:
        if line.strip():
            logger.warning("tracking process %d: %s", child.proc.pid, line.decode(errors="replace"))


def _finish(child: _Child) -> None:
    """Reap a child whose pipes are closed (or that sent its result): it has exited or is
    about to; one that lingers is killed."""
    try:
        child.proc.wait(_DONE_WAIT if child.result is not None else _KILL_WAIT)
    except subprocess.TimeoutExpired:
        _kill(child)
    _log_stderr(child, b"\n")  # a last line without its newline
    _close(child)


def _outcome(child: _Child) -> tuple[str, list[str], frozenset[int]]:
    msg = child.result
    if msg is not None and msg[0] == "done":
        if child.proc.returncode:
            logger.warning(
                "tracking process %d exited with code %d after its result",
                child.proc.pid,
                child.proc.returncode,
            )
        return msg[1], msg[2], msg[3]
    tail = child.tail.decode(errors="replace").strip()
    if msg is not None and msg[0] == "error":
        exc, text = msg[1], msg[2]
        if isinstance(exc, BaseException):
            exc.add_note(f"in tracking process {child.proc.pid}:\n{text}")
            raise exc
        raise RuntimeError(f"tracking process {child.proc.pid} failed:\n{text}")
    raise ChildFailed(
        f"tracking process {child.proc.pid} ended with code {child.proc.returncode} and no "
        f"result" + (f": {tail.splitlines()[-1]}" if tail else "")
    )


def _kill(child: _Child) -> None:
    if child.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(_KILL_WAIT)
    _close(child)


def _close(child: _Child) -> None:
    for f in (child.proc.stdin, child.proc.stdout, child.proc.stderr):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


def task_bytes(tracker: Any, frames: Any, size: Any, keyframes: Any, out: Any) -> bytes:
    """One object's task for a child (raises what pickling raises)."""
    return pickle.dumps((tracker, frames, size, keyframes, out), pickle.HIGHEST_PROTOCOL)


# --------------------------------------------------------------------------- both sides


def _send(f: IO[bytes], data: bytes) -> None:
    f.write(_HEADER.pack(len(data)) + data)
    f.flush()


def _recv(fd: int) -> bytes:
    """One message from the raw ``fd`` (unbuffered: nothing past it is taken)."""
    head = _read_exactly(fd, _HEADER.size)
    (n,) = _HEADER.unpack(head)
    return _read_exactly(fd, n)


def _read_exactly(fd: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("the parent closed the pipe")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


# --------------------------------------------------------------------------- the child


def _die_with(parent: int) -> None:
    """Linux: the kernel sends SIGKILL when the parent dies; and if it already has, go."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _lifeline(fd: int) -> None:
    """Exit as soon as the parent closes our stdin (or dies: the same end of file). Raw
    reads: a daemon thread blocked in a buffered read would abort interpreter shutdown."""
    with contextlib.suppress(OSError):
        while os.read(fd, 1 << 16):
            pass
    os._exit(1)


def main() -> None:
    _die_with(int(sys.argv[1]))
    messages = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the messages
    stdin = sys.stdin.fileno()
    path, task = pickle.loads(_recv(stdin))
    sys.path[:] = [*path, *(p for p in sys.path if p not in path)]
    threading.Thread(target=_lifeline, args=(stdin,), daemon=True).start()

    import cv2

    cv2.setNumThreads(1)  # the processes share the cores
    try:
        tracker, frames, size, keyframes, out = pickle.loads(task)

        def sub(f: float, m: str) -> None:
            _send(messages, pickle.dumps(("progress", f, m)))

        tracker.init(frames, size=size, out=out)
        for i, m in keyframes.masks.items():
            tracker.add_mask(i, m)
        for i, b in keyframes.boxes.items():
            tracker.add_box(i, b)
        r = tracker.propagate(sub)
        close = getattr(out, "close", None)
        if close is not None:
            close()
        reply = ("done", r.tracker, list(r.warnings), frozenset(r.exact))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        text = traceback.format_exc()
        try:
            data = pickle.dumps(("error", exc, text))
            pickle.loads(data)  # an exception that cannot come back goes as text
        except Exception:  # noqa: BLE001
            data = pickle.dumps(("error", None, text))
        _send(messages, data)
        messages.close()
        return
    _send(messages, pickle.dumps(reply))
    messages.close()


if __name__ == "__main__":
    main()
