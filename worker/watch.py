"""The watch folder: ``sonomask watch IN_DIR --out OUT_DIR [--spec FILE] [--local]``.

A hot folder for people who do not script. Every file dropped at the top of ``IN_DIR`` is a
clip, except hidden and temporary names (``.*``, ``~$*``, ``*.part``, ``*.tmp``,
``*.crdownload`` ...), sub-folders, and the sidecars, which belong to the clip with the same
stem (``clip.mp4``):

- ``clip.mask.png``: the object drawn on frame 0 (white = object, at the video's size);
  ``clip.mask_<frame>.png``: a keyframe at that frame (several make correction keyframes);
- ``clip.json``: a job spec (the JSON of ``sonomask separate --spec``, validated like any
  other spec; mask paths in it are relative to ``IN_DIR`` and must stay inside it; its
  ``model`` / ``tracker_model`` are names from the operator's lists, as over HTTP). It
  overrides ``--spec FILE``, the operator's defaults for every clip.

**When a file is taken.** Once its size and modification time (and its sidecars') have not
changed for ``SONOMASK_WATCH_SETTLE`` seconds (5) of watching, and no process has it open
for writing: every ``/proc/<pid>/fd`` link that points at the file is looked up in
``/proc/<pid>/fdinfo`` (its access mode). That sees the writers this process may inspect:
the same user's (or all, as root) in the same PID namespace. Writers it cannot see (another
machine on a network share, the host of a container) are covered by the settle time alone;
for those, copy to a hidden or ``.part`` name and rename when done, or raise the setting. A
file that changes after it was taken is a new request and is processed again.

**What a clip becomes.** A job: run in this process with ``--local`` (the stages of
``sonomask separate``), else queued for the workers (as ``sonomask submit``; the workspace
is shared with them). The clip, its sidecars and the spec's masks are first copied into the
job's own folder (``OUT_DIR/.sonomask-watch/work/<job id>/`` locally, the job's ``inputs/``
when queued), opened without following links and checked to be regular files inside
``IN_DIR`` (a link to a file outside it is refused), then checked as ``sonomask submit``
checks a job (``worker/jobs/intake.py``). Results: the job's published outputs in
``OUT_DIR/<clip>/`` (the stem of the file's name), which appears whole (a folder renamed
into place). Failures: ``OUT_DIR/_failed/<clip>.txt`` holds the one-line reason, the
message the CLI prints for the same bad input; the watcher goes on.

**Once, across restarts.** ``OUT_DIR/.sonomask-watch/state.json`` (written to a temporary
name, synced, renamed) records each file's key (name, size and modification time of the
clip and its sidecars) with its job id and state: ``running`` (taken, in process),
``queued`` (submitted), ``done`` or ``failed``. The job id is derived from the key, the
default spec and the model settings. A restart never takes a file whose key is ``done``,
``failed`` or ``queued`` again (queued jobs are followed until they end); a ``running``
one resumes the same job (locally its work folder is resumed as ``sonomask separate``
resumes; queued, the existing job is followed rather than a second one created). Should
the state file be lost, a published ``OUT_DIR/<clip>/job.json`` with the same job id
counts as done. One watcher per ``OUT_DIR`` (a lock file). SIGTERM stops it between
steps; the job it was running resumes on the next start.

stdout: one line per clip when it is taken and when it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker import files
from worker.errors import BadInput, QueueUnavailable, SonomaskError, as_sonomask_error
from worker.settings import Settings
from worker.spec import JobSpec, read_spec_file, rebase_mask_paths

FAILED_DIR = "_failed"
HIDDEN_DIR = ".sonomask-watch"  # state.json, lock, work/<job id>/
STATE_FILE = "state.json"
MAX_SPEC_BYTES = 1 << 20  # a sidecar job spec larger than this is refused
MAX_OUT_NAME = 200  # bytes of a results folder's name
_IGNORED_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".!sync", "~")
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_MASK_SIDECAR = re.compile(r"\.mask(?:_(\d{1,9}))?\.png$")
_DRAWING = ("keyframes", "masks", "boxes", "mask_frames", "mask_times", "objects")
Say = Callable[[str], None]


# ---------------------------------------------------------------------------- the folder


@dataclass
class Clip:
    """A clip in IN_DIR and the names of its sidecars."""

    name: str
    masks: list[tuple[int, str]]  # (frame, sidecar name), in frame order
    spec: str | None  # the clip.json sidecar's name

    @property
    def stem(self) -> str:
        return Path(self.name).stem or self.name

    @property
    def names(self) -> list[str]:
        """The clip's own file and its sidecars: what its key and readiness are made of."""
        return [self.name, *(n for _, n in self.masks), *([self.spec] if self.spec else [])]


def _ignored(name: str) -> bool:
    low = name.lower()
    return (
        name.startswith((".", "~$"))
        or low.endswith(_IGNORED_SUFFIXES)
        or low in _IGNORED_NAMES
        or name in (FAILED_DIR, HIDDEN_DIR)
    )


def list_clips(in_dir: Path) -> dict[str, Clip]:
    """The clips at the top of ``in_dir`` (symlinks included, checked when taken) with their
    sidecars. Raises OSError when the folder cannot be listed."""
    names = sorted(os.listdir(in_dir))
    sidecars: dict[str, list[str]] = {}
    clips: dict[str, Clip] = {}
    for name in names:
        if _ignored(name):
            continue
        low = name.lower()
        if low.endswith((".json", ".png")):
            m = _MASK_SIDECAR.search(name)
            if name.endswith(".json"):
                sidecars.setdefault(name[:-5], []).append(name)
            elif m:
                sidecars.setdefault(name[: m.start()], []).append(name)
            continue
        try:
            if stat.S_ISDIR(os.lstat(in_dir / name).st_mode):
                continue
        except OSError:
            continue
        clips[name] = Clip(name, [], None)
    for clip in clips.values():
        for side in sidecars.get(clip.stem, []):
            if side.endswith(".json"):
                clip.spec = side
            else:
                m = _MASK_SIDECAR.search(side)
                assert m is not None
                clip.masks.append((int(m.group(1)) if m.group(1) else 0, side))
        clip.masks.sort()
    return clips


def _signature(path: Path) -> tuple[Any, ...]:
    """What changes while a file is written: its size and modification time (a link's and
    its target's). Raises FileNotFoundError when the file went away."""
    lst = os.lstat(path)
    if stat.S_ISLNK(lst.st_mode):
        try:
            st = os.stat(path)
        except OSError:
            return ("link", lst.st_mtime_ns, None, None)
        return ("link", lst.st_mtime_ns, st.st_size, st.st_mtime_ns)
    return (stat.S_IFMT(lst.st_mode), lst.st_size, lst.st_mtime_ns)


def open_for_writing(paths: set[str]) -> set[str]:
    """Which of ``paths`` (real paths) some process has open for writing, as far as
    ``/proc`` shows: each ``/proc/<pid>/fd/<n>`` link pointing at one of them, with the
    access mode read from ``/proc/<pid>/fdinfo/<n>``. Processes this one may not inspect
    (another user's, unless root; another PID namespace) are not seen."""
    found: set[str] = set()
    if not paths:
        return found
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # gone, or not ours to see
            continue
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
            except OSError:
                continue
            if target not in paths:
                continue
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                    flags = next(
                        (int(line.split()[1], 8) for line in info if line.startswith("flags:")),
                        os.O_WRONLY,
                    )
            except (OSError, ValueError, IndexError):
                flags = os.O_WRONLY  # closed meanwhile, or unreadable: assume a writer
            if flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR):
                found.add(target)
    return found


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def show(name: str) -> str:
    """A file name fit for one line: control and other unprintable characters escaped."""
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
        for c in name
    )


def one_line(text: str, limit: int = 2000) -> str:
    line = " ".join(show(part) for part in str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def out_name(clip: Clip) -> str:
    """The results folder's name: the clip's stem, unprintable characters as ``_``, at
    most ``MAX_OUT_NAME`` bytes; ``_failed`` and hidden names are refused."""
    name = "".join(c if c.isprintable() and c != "/" else "_" for c in clip.stem).strip()
    raw = name.encode("utf-8", "replace")[:MAX_OUT_NAME]
    name = raw.decode("utf-8", "ignore")
    if not name or name.lower() == FAILED_DIR or name.startswith("."):
        raise BadInput(
            f"{show(clip.name)}: its results would go to {show(name) or '(no name)'}/, a "
            "name that is reserved; rename the file"
        )
    return name


# ---------------------------------------------------------------------------- durable state


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path``: a temporary file, synced, renamed over it, the folder synced."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _published_id(folder: Path) -> str | None:
    """The job id in ``folder/job.json`` (published outputs), or None."""
    try:
        return json.loads((folder / files.MANIFEST).read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------- the watcher


class Watcher:
    """Watch ``in_dir``; one job per clip; results and failures in ``out_dir``."""

    def __init__(
        self,
        in_dir: Path,
        out_dir: Path,
        settings: Settings,
        default_spec: Path | None = None,
        local: bool = False,
        settle: float | None = None,
        interval: float | None = None,
        say: Say = print,
    ) -> None:
        if not in_dir.is_dir():
            raise BadInput(f"the watch folder {in_dir} is not a folder")
        self.in_dir = Path(os.path.abspath(in_dir))
        self.in_real = os.path.realpath(in_dir)
        self.out_dir = Path(os.path.abspath(out_dir))
        out_dir = self.out_dir
        self.settings = settings
        self.local = local
        self.settle = settings.watch_settle if settle is None else settle
        self.interval = settings.watch_interval if interval is None else interval
        if not (0 <= self.settle < 86400 and 0 < self.interval < 3600):
            raise BadInput("--settle must be 0-86400 s and --interval 0-3600 s")
        self.say = say
        self.defaults, self.trusted, spec_text = _default_fields(default_spec)
        self.spec_hash = hashlib.sha256(spec_text.encode()).hexdigest()
        self.hidden = out_dir / HIDDEN_DIR
        self.work = self.hidden / "work"
        self.state: dict[str, dict[str, Any]] = {}
        self.seen: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._lock_fd: int | None = None

    # -- the loop

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Watch until ``stop()`` or an interrupt (SIGTERM is made one by the CLI)."""
        self.open()
        mode = "in this process" if self.local else "through the queue"
        self.say(
            f"watching {self.in_dir} (jobs {mode}; results in {self.out_dir}; a file is taken "
            f"{self.settle:g} s after it stopped changing and no writer has it open)"
        )
        try:
            while not stop():
                if not self.step():
                    time.sleep(self.interval)
        finally:
            self.close()

    def open(self) -> None:
        for d in (self.out_dir, self.hidden, self.work, self.out_dir / FAILED_DIR):
            d.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.hidden / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInput(f"another sonomask watch is using {self.out_dir}") from None
        self._lock_fd = fd
        self.state = self._load()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def step(self) -> bool:
        """One look at the folder: follow queued jobs, take what is ready (locally: one);
        whether a local job ran (then look again at once)."""
        if not self.local:
            self._follow_queued()
        try:
            clips = list_clips(self.in_dir)
        except OSError as e:
            self.say(f"cannot list {self.in_dir}: {e.strerror or e}; trying again")
            return False
        self._prune(clips)
        now = time.monotonic()
        ready: list[tuple[Clip, str, tuple[Any, ...]]] = []
        for clip in clips.values():
            try:
                sig = tuple((n, _signature(self.in_dir / n)) for n in clip.names)
            except OSError:  # went away while we looked
                self.seen.pop(clip.name, None)
                continue
            key = hashlib.sha256(repr(sig).encode("utf-8", "surrogateescape")).hexdigest()
            entry = self.state.get(clip.name)
            if entry and entry["key"] == key:
                if entry["state"] != "running":
                    self.seen.pop(clip.name, None)
                    continue
                ready.append((clip, key, sig))  # taken before a restart: resume now
                continue
            first = self.seen.get(clip.name)
            if first is None or first[0] != sig:
                self.seen[clip.name] = (sig, now)
                continue
            if now - first[1] >= self.settle:
                ready.append((clip, key, sig))
        if not ready:
            return False
        real = {n: os.path.realpath(self.in_dir / n) for c, _, _ in ready for n in c.names}
        busy = open_for_writing(set(real.values()))
        for clip, key, _ in ready:
            if any(real[n] in busy for n in clip.names):
                continue  # still being written: wait for the writer to close it
            self.seen.pop(clip.name, None)
            self.take(clip, key)
            if self.local:
                return True  # a local job took a while: look at the others afresh
        return False

    # -- one clip

    def job_id(self, key: str) -> str:
        h = hashlib.sha256(key.encode())
        s = self.settings
        h.update(f"|{self.spec_hash}|{s.model}|{s.window_seconds}|{files.WORK_FORMAT}".encode())
        return f"watch-{h.hexdigest()[:16]}"

    def take(self, clip: Clip, key: str) -> None:
        name = clip.name
        job_id = self.job_id(key)
        try:
            folder = out_name(clip)
        except BadInput as e:
            self._failed(name, key, job_id, f"{name}", str(e))
            return
        owner = self._owner(folder, name)
        if owner is not None:
            msg = f"its results folder {folder}/ belongs to {show(owner)}; rename one of them"
            self._failed(name, key, job_id, name, f"{show(name)}: {msg}")
            return
        dest = self.out_dir / folder
        if _published_id(dest) == job_id:  # done before the state file said so
            self._record(name, key=key, job=job_id, state="done", out=folder)
            self.say(f"{show(name)}: already done -> {dest}/")
            return
        entry = self.state.get(name) or {}
        again = entry.get("job") == job_id and entry.get("state") == "running"
        if entry.get("state") == "running" and not again and self.local:
            # Changed while its job ran (before a restart): that job's work is of no use.
            shutil.rmtree(self.work / entry["job"], ignore_errors=True)
            shutil.rmtree(self.settings.workspace / entry["job"], ignore_errors=True)
        self._record(name, key=key, job=job_id, state="running", out=folder)
        where = "in this process" if self.local else "through the queue"
        self.say(f"{show(name)}: {'resuming' if again else 'taken'}, job {job_id} ({where})")
        started = time.monotonic()
        try:
            spec = self._spec(clip)
            if self.local:
                self._run_local(name, folder, job_id, spec)
                took = time.monotonic() - started
                self._done(name, folder, f"({took:.1f} s)")
            else:
                self._submit(job_id, spec)
                self._record(name, state="queued")
                self.say(f"{show(name)}: queued, job {job_id}")
        except QueueUnavailable as e:
            self.state.pop(name, None)
            self._save()
            self.say(f"{show(name)}: not queued: {e}")
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is the clip's, one line
            err = as_sonomask_error(exc)
            if self.local:  # a new copy of the file is a new job: this one's work is done
                shutil.rmtree(self.work / job_id, ignore_errors=True)
                shutil.rmtree(self.settings.workspace / job_id, ignore_errors=True)
            else:
                self._discard_unqueued(job_id)
            self._failed(name, key, job_id, folder, str(err))

    def _owner(self, folder: str, name: str) -> str | None:
        """Another file present or in flight whose results already go to ``folder``."""
        for other, e in self.state.items():
            if other != name and e.get("out") == folder and e.get("state") != "failed":
                if e.get("state") in ("running", "queued") or (self.in_dir / other).exists():
                    return other
        return None

    def _done(self, name: str, folder: str, note: str = "") -> None:
        (self.out_dir / FAILED_DIR / f"{folder}.txt").unlink(missing_ok=True)
        self._record(name, state="done")
        self.say(f"{show(name)}: done -> {self.out_dir / folder}/ {note}".rstrip())

    def _failed(self, name: str, key: str, job_id: str, folder: str, reason: str) -> None:
        reason = one_line(reason)
        failed = self.out_dir / FAILED_DIR
        failed.mkdir(parents=True, exist_ok=True)
        stem = show(folder).encode("utf-8", "replace")[:MAX_OUT_NAME].decode("utf-8", "ignore")
        target = failed / f"{stem}.txt"
        write_atomic(target, reason + "\n")
        self._record(name, key=key, job=job_id, state="failed", out=folder, reason=reason)
        self.say(f"{show(name)}: failed: {reason}")

    # -- the spec

    def _spec(self, clip: Clip) -> JobSpec:
        """The clip's JobSpec from the defaults, its clip.json and its mask sidecars (paths
        still in IN_DIR: ``_stage`` copies them)."""
        fields = dict(self.defaults)
        own: dict[str, Any] = {}
        if clip.spec:
            own = self._read_sidecar_spec(clip.spec)
        if any(k in own for k in _DRAWING):
            for k in _DRAWING:
                fields.pop(k, None)
            if "objects" in own:
                fields.pop("text", None)
                fields.pop("spans", None)
        fields.update(own)
        if clip.masks:
            given = [k for k in _DRAWING if k in own]
            if given:
                raise BadInput(
                    f"{show(clip.spec or '')} gives {', '.join(given)} and "
                    f"{show(clip.masks[0][1])} is a mask sidecar too; keep one of them"
                )
            if "objects" in fields:
                raise BadInput(
                    f"{show(clip.masks[0][1])}: the default spec has several objects; give "
                    f"each its masks in {show(clip.stem)}.json instead"
                )
            frames = [f for f, _ in clip.masks]
            if len(set(frames)) < len(frames):
                raise BadInput(
                    f"{show(clip.stem)}.mask.png and {show(clip.stem)}.mask_0.png are both "
                    "frame 0; keep one"
                )
            for k in _DRAWING:
                fields.pop(k, None)
            fields["masks"] = [str(self.in_dir / n) for _, n in clip.masks]
            fields["mask_frames"] = frames
        if not any(fields.get(k) for k in _DRAWING):
            raise BadInput(
                f"no mask for {show(clip.name)}: drop {show(clip.stem)}.mask.png beside it "
                "(white = object, drawn on frame 0 at the video's size; "
                f"{show(clip.stem)}.mask_<frame>.png for more keyframes), or give masks or "
                f"boxes in {show(clip.stem)}.json"
            )
        return JobSpec.build(**fields, video=str(self.in_dir / clip.name))

    def _read_sidecar_spec(self, name: str) -> dict[str, Any]:
        raw = _read_confined(self.in_dir / name, self.in_real, show(name), MAX_SPEC_BYTES)
        try:
            fields = json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise BadInput(f"{show(name)} is not JSON: {e}") from None
        if not isinstance(fields, dict):
            raise BadInput(f"{show(name)} must hold a JSON object of job fields")
        for key in ("video", "out"):
            if key in fields:
                raise BadInput(f"{show(name)}: {key!r} is the watch folder's to set; remove it")

        def here(m: Any) -> Any:
            if not isinstance(m, str):
                return m
            if Path(m).is_absolute() or ".." in Path(m).parts:
                raise BadInput(
                    f"{show(name)}: mask {one_line(m, 100)!r} must be a path inside the watch "
                    "folder, relative to it"
                )
            return str(self.in_dir / m)

        return rebase_mask_paths(fields, here)

    # -- inputs into the job's own folder

    def _stage(self, spec: JobSpec, inputs: Path) -> JobSpec:
        """Copy the video and every mask into ``inputs``; the spec naming the copies."""
        shutil.rmtree(inputs, ignore_errors=True)
        inputs.mkdir(parents=True)
        video_src = Path(spec.video)
        video = inputs / "video" / video_src.name
        self._copy(video_src, video, confined=True)

        def copied(keyframes: list[Any], tag: str) -> list[Any]:
            out = []
            for i, k in enumerate(keyframes):
                if k.mask:
                    src = Path(k.mask)
                    dst = inputs / f"mask{tag}{i}" / src.name
                    # The operator's --spec masks may lie anywhere; all else stays in IN_DIR.
                    mine = str(src) in self.trusted
                    confined = not mine or _inside(os.path.realpath(src.parent), self.in_real)
                    self._copy(src, dst, confined=confined)
                    k = k.model_copy(update={"mask": str(dst)})
                out.append(k)
            return out

        objects = [
            o.model_copy(update={"keyframes": copied(o.keyframes, f"-{j}-")})
            for j, o in enumerate(spec.objects)
        ]
        return spec.model_copy(
            update={
                "video": str(video),
                "keyframes": copied(spec.keyframes, ""),
                "objects": objects,
            }
        )

    def _copy(self, src: Path, dst: Path, confined: bool) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with _open_confined(src, self.in_real if confined else None, show(src.name)) as f:
            with open(dst, "wb") as out:
                shutil.copyfileobj(f, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())

    # -- in this process

    def _run_local(self, name: str, folder: str, job_id: str, spec: JobSpec) -> None:
        from worker.jobs.intake import check_inputs
        from worker.jobs.runner import run_job

        work = self.work / job_id
        spec = self._stage(spec, work / "inputs")
        check_inputs(spec, self.settings)  # models by name only, masks, the clip, webhook
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)  # a publish cut short: done again
        spec = spec.model_copy(update={"out": str(out)})
        try:
            manifest = run_job(spec, None, self.settings, job_id=job_id)
        except SonomaskError as e:
            self._notify(spec, name, job_id, {"state": "failed", "error": str(e)})
            raise
        self._install(out, self.out_dir / folder)
        shutil.rmtree(work, ignore_errors=True)
        self._notify(spec, name, job_id, manifest)

    def _notify(self, spec: JobSpec, name: str, job_id: str, m: dict[str, Any]) -> None:
        """A local job's end, signed, to its webhook (queued jobs' workers send their own)."""
        if not spec.webhook:
            return
        from worker.jobs import webhooks

        keys = ("state", "stage", "error", "outputs", "created", "finished", "backend")
        doc = {"id": job_id, **{k: m.get(k) for k in keys}, "name": name}
        body = json.dumps(doc).encode()
        s = self.settings
        webhooks.deliver_later(spec.webhook, body, s.webhook_allow, s.webhook_secret)

    def _install(self, src: Path, dest: Path) -> None:
        """Rename the finished folder ``src`` to ``dest``, replacing an older one."""
        old = src.parent / "replaced"
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists() or dest.is_symlink():
            os.replace(dest, old)
        os.replace(src, dest)
        _fsync_dir(dest.parent)
        shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            old.unlink()

    # -- through the queue

    def _submit(self, job_id: str, spec: JobSpec) -> None:
        from worker.jobs import store, tasks
        from worker.jobs.intake import check_inputs

        try:
            ws = store.job_workspace(self.settings.workspace, job_id)
        except KeyError:
            spec = self._stage(spec, self.settings.workspace / job_id / "inputs")
            check_inputs(spec, self.settings)
            tasks.submit(spec, self.settings, job_id)
            return
        # Submitted before a restart: follow that job; if its first stage may never have
        # been sent, send it again (a duplicate message is dropped by the stage's lease).
        m = ws.manifest()
        if not m.get("attempts") and m.get("next_stage", tasks.ORDER[0]) == tasks.ORDER[0]:
            tasks.send(job_id, tasks.ORDER[0])

    def _discard_unqueued(self, job_id: str) -> None:
        """Inputs copied for a job that was refused before it was queued."""
        folder = self.settings.workspace / job_id
        if not (folder / files.SPEC).exists():
            shutil.rmtree(folder, ignore_errors=True)

    def _follow_queued(self) -> None:
        from worker.jobs import store

        for name, e in list(self.state.items()):
            if e.get("state") != "queued":
                continue
            try:
                ws = store.job_workspace(self.settings.workspace, e["job"])
                doc = store.document(ws)
            except KeyError:
                reason = f"job {e['job']} is no longer in the workspace (expired or deleted)"
                self._failed(name, e["key"], e["job"], e["out"], reason)
                continue
            except (OSError, ValueError):
                continue  # being written: next time
            if doc["state"] == "succeeded":
                try:
                    self._collect(ws.path / files.OUTPUTS_DIR, e["job"], e["out"])
                except OSError as err:
                    self.say(f"{show(name)}: cannot copy the results yet: {err}")
                    continue
                self._done(name, e["out"], f"(job {e['job']})")
            elif doc["state"] in ("failed", "cancelled"):
                reason = doc.get("error") or f"the job was {doc['state']}"
                self._failed(name, e["key"], e["job"], e["out"], reason)

    def _collect(self, outputs: Path, job_id: str, folder: str) -> None:
        """A queued job's published outputs copied into ``OUT_DIR/<folder>/`` whole."""
        work = self.work / job_id
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        shutil.copytree(outputs, work / "out")
        self._install(work / "out", self.out_dir / folder)
        shutil.rmtree(work, ignore_errors=True)

    # -- the state file

    def _load(self) -> dict[str, dict[str, Any]]:
        path = self.hidden / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8", errors="surrogateescape"))
            clips = data["clips"]
            if not isinstance(clips, dict):
                raise ValueError("clips")
            return clips
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError):
            aside = path.with_name(f"{STATE_FILE}.unreadable-{int(time.time())}")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            self.say(f"{path} was unreadable (kept as {aside.name}); starting from the outputs")
            return {}

    def _save(self) -> None:
        text = json.dumps({"version": 1, "clips": self.state}, indent=1, sort_keys=True)
        write_atomic(self.hidden / STATE_FILE, text)

    def _record(self, name: str, **fields: Any) -> None:
        self.state.setdefault(name, {}).update(fields)
        self._save()

    def _prune(self, clips: dict[str, Clip]) -> None:
        """Forget files that are gone: finished ones (a published job.json still says done)
        and, locally, one whose job a restart would have resumed (its work is removed).
        Queued jobs are followed to their end whether their file is there or not."""
        for n in [n for n in self.seen if n not in clips]:
            del self.seen[n]
        ended = ("done", "failed", "running") if self.local else ("done", "failed")
        gone = [n for n, e in self.state.items() if n not in clips and e["state"] in ended]
        for n in gone:
            e = self.state.pop(n)
            if e["state"] == "running":
                shutil.rmtree(self.work / e["job"], ignore_errors=True)
                shutil.rmtree(self.settings.workspace / e["job"], ignore_errors=True)
        if gone:
            self._save()


# ---------------------------------------------------------------------------- helpers


def _default_fields(path: Path | None) -> tuple[dict[str, Any], set[str], str]:
    """The operator's ``--spec FILE``: its fields (mask paths made absolute from the file's
    folder), those mask paths (trusted: they may lie outside IN_DIR) and its text."""
    if path is None:
        return {}, set(), ""
    fields, text = read_spec_file(path, "{key} is the watch folder's to set; remove it")
    base = path.resolve().parent
    trusted: set[str] = set()

    def here(m: Any) -> Any:
        if not isinstance(m, str):
            return m
        p = str(base / m) if not Path(m).is_absolute() else m
        trusted.add(p)
        return p

    fields = rebase_mask_paths(fields, here)
    probe = dict(fields)
    if not any(probe.get(k) for k in _DRAWING):
        probe["boxes"] = ["0,0,1,1"]  # the clips bring the drawing; check the rest now
    JobSpec.build(**probe, video="clip.mp4")
    return fields, trusted, text


@contextlib.contextmanager
def _open_confined(path: Path, folder: str | None, what: str) -> Iterator[Any]:
    """``path`` opened for reading: a regular file, and inside ``folder`` (its real path)
    unless that is None. Links are resolved first and the file opened without following
    one; the opened file's own path is checked again (so a swap in between is caught)."""
    real = os.path.realpath(path)
    if folder is not None and not _inside(real, folder):
        raise BadInput(f"{what} is a link to a file outside the watch folder; it is not read")
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):
            raise BadInput(f"{what} is not a regular file")
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        gone = " (a link to nothing)" if path.is_symlink() else ""
        raise BadInput(f"{what} does not exist{gone}") from None
    except OSError as e:
        raise BadInput(f"cannot read {what}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadInput(f"{what} is not a regular file")
        if folder is not None:
            with contextlib.suppress(OSError):
                opened = os.readlink(f"/proc/self/fd/{fd}")
                if not _inside(opened, folder):
                    raise BadInput(f"{what} is a link to a file outside the watch folder")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            yield f
    finally:
        os.close(fd)


def _read_confined(path: Path, folder: str, what: str, limit: int) -> bytes:
    with _open_confined(path, folder, what) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BadInput(f"{what} is over {limit // 1024} KiB; a job spec is much smaller")
    return data
