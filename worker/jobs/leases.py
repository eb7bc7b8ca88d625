"""Leases on running stages: a heartbeat proves the worker is alive, a fencing token that it
is still the one in charge.

Why: a broker notices a dead worker late or never. Redis hands an unacknowledged message to
another worker only after the visibility timeout (6 h by default, because a shorter one
would redeliver long stages that are still running), so a SIGKILLed or OOM-killed worker
would strand its job for hours. Instead, the worker running a stage holds a lease in Redis:
a key with a short TTL (``SONOMASK_LEASE_SECONDS``, 20 s) that a heartbeat thread renews.
When the worker dies the key expires, and the reaper (in every worker, and in
``sonomask supervisor``) sends the job's pending stage to the queue again; it resumes from
the files already written (finished windows included). The visibility timeout stays as the
last line of defence.

Fencing: every acquisition takes the next value of a per-job counter (the fencing token). A
worker that was only slow (paused, partitioned from Redis) may outlive its lease while a
replacement runs the stage; before anything it writes becomes visible (every atomic rename
in the job folder, every manifest update, publishing) it checks that the lease still holds
its token, so it can never publish over its replacement. A lease whose key expired while
nobody else took the stage (Redis was briefly unreachable) is taken back by its holder.

Redis keys: ``sonomask:fence:<job>`` (counter), ``sonomask:lease:<job>`` (``token|stage|holder``
with a TTL) and the hash ``sonomask:inflight`` (job → the same value, kept without a TTL:
a stage began and has not handed on; the reaper's list of candidates).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis

from worker.errors import SonomaskError

log = logging.getLogger("sonomask.leases")

INFLIGHT = "sonomask:inflight"
REDIS_WAIT_SECONDS = 60.0  # how long a commit waits for an unreachable Redis to come back

# KEYS: fence, lease, inflight. ARGV: job, stage, holder, ttl ms, token floor.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local n = redis.call('INCR', KEYS[1])
if n <= tonumber(ARGV[5]) then n = tonumber(ARGV[5]) + 1; redis.call('SET', KEYS[1], n) end
local value = n .. '|' .. ARGV[2] .. '|' .. ARGV[3]
redis.call('SET', KEYS[2], value, 'PX', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[1], value)
return n
"""
# KEYS: fence, lease, inflight. ARGV: job, value, ttl ms, token. 1 = renewed, 0 = lost.
_RENEW = """
local cur = redis.call('GET', KEYS[2])
if cur == ARGV[2] then redis.call('PEXPIRE', KEYS[2], ARGV[3]); return 1 end
if cur then return 0 end
if redis.call('GET', KEYS[1]) ~= ARGV[4] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
return 1
"""
# KEYS: lease, inflight. ARGV: job, value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 1
"""
# KEYS: lease, inflight. ARGV: job, value seen. 1 = this caller reaps it.
_REAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


class LeaseLost(SonomaskError):
    """Another worker took over this stage: stop without writing anything."""


def _fence_key(job_id: str) -> str:
    return f"sonomask:fence:{job_id}"


def _lease_key(job_id: str) -> str:
    return f"sonomask:lease:{job_id}"


def connect(url: str) -> redis.Redis:
    """A client with short timeouts: a heartbeat must fail fast, not hang."""
    return redis.Redis.from_url(
        url, socket_timeout=3, socket_connect_timeout=3, health_check_interval=10
    )


@dataclass
class Lease:
    """One worker's claim on one stage of one job, kept alive by :meth:`heartbeat`."""

    client: redis.Redis
    job_id: str
    stage: str
    token: int
    value: str
    ttl: float
    lost: bool = False
    last_renewed: float = field(default_factory=time.monotonic)

    def _renew(self) -> bool:
        keys = (_fence_key(self.job_id), _lease_key(self.job_id), INFLIGHT)
        args = (self.job_id, self.value, int(self.ttl * 1000), self.token)
        ok = bool(self.client.eval(_RENEW, 3, *keys, *args))
        if ok:
            self.last_renewed = time.monotonic()
        else:
            self.lost = True
        return ok

    def check(self) -> None:
        """Raise LeaseLost unless this worker still holds the stage; called before each commit.

        Redis being unreachable is waited out (up to ``REDIS_WAIT_SECONDS``): without it
        nobody can decide who holds the stage, so nothing may be published meanwhile.
        """
        if self.lost:
            raise LeaseLost(f"stage {self.stage} of job {self.job_id} was taken over")
        deadline = time.monotonic() + REDIS_WAIT_SECONDS
        while True:
            try:
                if self._renew():
                    return
                raise LeaseLost(f"stage {self.stage} of job {self.job_id} was taken over")
            except redis.RedisError as e:
                if time.monotonic() > deadline:
                    self.lost = True
                    raise LeaseLost(f"the lease store is unreachable: {e}") from None
                time.sleep(1.0)

    def release(self) -> None:
        """Give the stage up (it finished, failed or was cancelled); best effort."""
        keys = (_lease_key(self.job_id), INFLIGHT)
        with contextlib.suppress(redis.RedisError):
            self.client.eval(_RELEASE, 2, *keys, self.job_id, self.value)

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[Lease]:
        """Renew the lease every quarter TTL in a thread while the stage runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.ttl / 4):
                try:
                    if not self._renew():
                        log.warning("lease on %s/%s lost", self.job_id, self.stage)
                        return
                except redis.RedisError as e:
                    log.warning("lease heartbeat for %s failed: %s", self.job_id, e)

        thread = threading.Thread(target=beat, name=f"lease-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=5)


def acquire(
    client: redis.Redis, job_id: str, stage: str, holder: str, ttl: float, floor: int = 0
) -> Lease | None:
    """Take the stage, or None when a live worker holds it (this message is a duplicate).

    ``floor`` is the last token the job's folder recorded, so tokens keep growing even if
    Redis lost its data.
    """
    keys = (_fence_key(job_id), _lease_key(job_id), INFLIGHT)
    args = (job_id, stage, holder.replace("|", "/"), int(ttl * 1000), int(floor))
    token = int(client.eval(_ACQUIRE, 3, *keys, *args))
    if token == 0:
        return None
    value = f"{token}|{stage}|{holder.replace('|', '/')}"
    return Lease(client, job_id, stage, token, value, ttl)


def held_stage(client: redis.Redis, job_id: str) -> str | None:
    """The stage whose live lease the job holds now, or None."""
    value = client.get(_lease_key(job_id))
    return value.decode().split("|")[1] if value else None


def expired(client: redis.Redis) -> list[tuple[str, str]]:
    """Claim every in-flight stage whose lease expired: ``(job id, lease value)`` pairs.

    Each is handed to exactly one caller, however many reapers run.
    """
    out = []
    for job, value in client.hgetall(INFLIGHT).items():
        job_id, val = job.decode(), value.decode()
        if client.eval(_REAP, 2, _lease_key(job_id), INFLIGHT, job_id, val):
            out.append((job_id, val))
    return out


def forget(client: redis.Redis, job_id: str) -> None:
    """Drop a finished or deleted job's keys."""
    with contextlib.suppress(redis.RedisError):
        client.delete(_fence_key(job_id), _lease_key(job_id))
        client.hdel(INFLIGHT, job_id)


class Reaper:
    """Every ``interval`` seconds, hand each expired lease's job to ``requeue``."""

    def __init__(
        self, client: redis.Redis, requeue: Callable[[str, str], None], interval: float = 5.0
    ) -> None:
        self.client, self.requeue, self.interval = client, requeue, interval
        self._stop = threading.Event()

    def run_once(self) -> list[tuple[str, str]]:
        found = expired(self.client)
        for job_id, value in found:
            stage = value.split("|")[1]
            try:
                self.requeue(job_id, stage)
            except Exception:  # noqa: BLE001 - one job's trouble must not stop the reaper
                log.exception("could not requeue job %s (stage %s); will retry", job_id, stage)
                # Put the claim back so the next round tries again: the job must not be lost.
                with contextlib.suppress(redis.RedisError):
                    self.client.hsetnx(INFLIGHT, job_id, value)
        return found

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except redis.RedisError as e:
                log.warning("reaper: lease store unreachable: %s", e)
            self._stop.wait(self.interval)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="sonomask-reaper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
