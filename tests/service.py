"""Real service processes for the queue tests: Redis, `sonomask worker`, `sonomask serve`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Redis:
    """A private redis-server (append-only persistence on) that can be restarted."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _redis_ping(self.port), 10, "redis to start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None


class RabbitVhost:
    """A private virtual host on the machine's RabbitMQ (started by .ci/run), removed after."""

    def __init__(self) -> None:
        self.name = f"sonomask-test-{uuid.uuid4().hex[:8]}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def start(self) -> None:
        _rabbitmqctl("add_vhost", self.name)
        _rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")

    def stop(self) -> None:
        _rabbitmqctl("delete_vhost", self.name)


def rabbitmq_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            pass
    except OSError:
        return False
    return shutil.which("rabbitmqctl") is not None


def brokers() -> list:
    """Both brokers as pytest params; RabbitMQ is skipped only where none runs and CI (which
    sets SONOMASK_TEST_ALL_BROKERS) did not ask for it."""
    import pytest

    missing = not rabbitmq_available() and not os.environ.get("SONOMASK_TEST_ALL_BROKERS")
    rabbit = pytest.mark.skipif(missing, reason="no RabbitMQ on 127.0.0.1:5672")
    return ["redis", pytest.param("rabbitmq", marks=rabbit)]


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def _redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_for(cond, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


def service_env(
    root: Path, redis: Redis, broker: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment every service process of one test shares: its own workspace and Redis
    databases (the broker too unless ``broker`` names another, e.g. a RabbitMQ vhost), the
    media root ``root/media``, no SAM Audio model, plus ``extra`` settings."""
    env = {
        **os.environ,
        "SONOMASK_WORKSPACE": str(root / "jobs"),
        "SONOMASK_BROKER_URL": broker or f"{redis.url}/0",
        "SONOMASK_RESULT_BACKEND": f"{redis.url}/1",
        "SONOMASK_MEDIA_ROOT": str(root / "media"),
        **extra,
    }
    for name in ("SONOMASK_MODEL", "SONOMASK_VISIBILITY_TIMEOUT", "SONOMASK_LEASE_SECONDS"):
        if name not in extra:
            env.pop(name, None)  # the defaults a user gets, unless a test says otherwise
    return env


class Worker:
    """A real `sonomask worker` (Celery prefork) process group."""

    def __init__(
        self, env: dict[str, str], queues: str, name: str, log: Path, concurrency: int = 1
    ):
        self.log = log
        self.name = name
        self.proc = subprocess.Popen(
            [
                str(BIN / "sonomask"),
                "worker",
                "--queues",
                queues,
                "--hostname",
                name,
                "--concurrency",
                str(concurrency),
                "--loglevel",
                "INFO",
            ],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(
            lambda: b"ready." in self.log.read_bytes() or self._died(),
            timeout,
            f"worker {self.name}",
        )
        if self._died():
            raise RuntimeError(f"worker {self.name} exited:\n{self.log.read_text()[-3000:]}")

    def _died(self) -> bool:
        return self.proc.poll() is not None

    def pause(self) -> None:
        """SIGSTOP the whole group: a worker that is alive but makes no progress."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the whole process group: the main process and its pool children."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Server:
    """A real `sonomask serve` (uvicorn) process."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(BIN / "sonomask"), "serve", "--port", str(self.port)],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._up, 30, "the API server")

    def _up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/openapi.json", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
