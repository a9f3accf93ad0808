"""What the soak runs: a Redis with AOF (one server, or a Sentinel set behind a primary-following
TCP forwarder), the users example API, and N `sidecar run` replicas of a checkout.

The example API keeps its records and commands in a Redis of its own (the backend's, never
faulted), so it keeps accepting work while the shared Redis is away, as a real backend would; the
harness relays its completions to the shared Redis's stream (`load.Completions`).

Every child is started in a session of its own (Ctrl-C reaches the harness only, which stops them
in order) and with a parent-death signal, so none outlives a harness that is itself killed.
`Stack.close()` stops everything it started, whatever state the run left it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import redis
import yaml

from devtools.redis_server import RedisServer, SentinelSetup, free_port

ROOT = Path(__file__).resolve().parents[2]
PR_SET_PDEATHSIG = 1
EVENT_SUCCESS, EVENT_FAILURE = "user.created", "user.creation_failed"
ROUTE = "create-user"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the harness (the spawning thread) goes away."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a child in its own session, its output appended to `log_path`. Call it from the
    main thread only: the parent-death signal fires when the spawning thread ends."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def child_env(pycache: Path) -> dict[str, str]:
    """This environment minus `SIDECAR_*` (only the soak's file configures a replica)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


def reap(proc: subprocess.Popen[bytes] | None, timeout_s: float = 5.0) -> None:
    """SIGCONT (a stopped child cannot exit), SIGTERM, then SIGKILL; always waited for."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------
# Redis: one server with AOF, or a Sentinel set (primary, replica, 3 sentinels) with AOF
# --------------------------------------------------------------------------------------------


class PrimaryForwarder:
    """A TCP forwarder on a fixed port to whichever server the sentinels name primary, closing
    every connection when that changes (what HAProxy's `tcp-check` on `role:master` does), for
    the clients that know no Sentinel: the harness's relay of the API's completions, and its
    readers of memory and end state."""

    def __init__(self, sentinels: SentinelSetup) -> None:
        self.sentinels = sentinels
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.primary = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.primary = await asyncio.to_thread(self.sentinels.primary_port)
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self._watch = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                now = await asyncio.to_thread(self.sentinels.primary_port)
            except (redis.RedisError, OSError):
                continue
            if now != self.primary:
                self.primary = now
                for writer in list(self._links):
                    writer.close()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.primary)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        finally:
            self._links.difference_update((writer, up_writer))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for writer in list(self._links):
            writer.close()
        if self._server is not None:
            self._server.close()


@dataclass
class Redis:
    """The Redis the replicas share: `url` for plain clients; `sentinel` for the replicas' config
    in the Sentinel variant."""

    fsync: str
    with_sentinel: bool
    server: RedisServer | None = None
    sentinels: SentinelSetup | None = None
    forwarder: PrimaryForwarder | None = None

    async def start(self) -> None:
        extra = ["--appendfsync", self.fsync]
        if not self.with_sentinel:
            self.server = RedisServer(persist=True, extra=extra)
            await asyncio.to_thread(self.server.start)
            return
        self.sentinels = SentinelSetup()
        for node in (self.sentinels.primary, self.sentinels.replica):
            node.persist, node.extra = True, [*node.extra, *extra]
        await asyncio.to_thread(self.sentinels.start)
        self.forwarder = PrimaryForwarder(self.sentinels)
        await self.forwarder.start()

    @property
    def url(self) -> str:
        if self.forwarder is not None:
            return self.forwarder.url
        assert self.server is not None
        return self.server.url

    def primary(self) -> RedisServer:
        """The server that is primary now."""
        if self.server is not None:
            return self.server
        assert self.sentinels is not None
        port = self.sentinels.primary_port()
        nodes = (self.sentinels.primary, self.sentinels.replica)
        return next(node for node in nodes if node.port == port)

    def pid(self) -> int | None:
        """The pid of the primary's process, when it runs."""
        with contextlib.suppress(redis.RedisError, OSError, StopIteration):
            proc = self.primary()._proc
            return proc.pid if proc is not None and proc.poll() is None else None
        return None

    def sidecar_keys(self) -> dict[str, Any]:
        """The replicas' config keys that name this Redis."""
        if self.sentinels is None:
            return {"redis_url": self.url}
        return {
            "redis_url": "redis://127.0.0.1/0",
            "redis_sentinel": {"master": SentinelSetup.MASTER, "nodes": self.sentinels.nodes},
        }

    async def close(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.close()
        if self.sentinels is not None:
            await asyncio.to_thread(self.sentinels.close)
        if self.server is not None:
            await asyncio.to_thread(self.server.close)


# --------------------------------------------------------------------------------------------
# The replicas and the example API
# --------------------------------------------------------------------------------------------


@dataclass
class Checkout:
    """The checkout whose `sidecar` the replicas run: PATH/.venv/bin/sidecar."""

    root: Path
    webhook_keys: set[str] = field(default_factory=set)
    commit: str = ""

    @property
    def sidecar(self) -> Path:
        return self.root / ".venv" / "bin" / "sidecar"

    def inspect(self) -> None:
        """Its commit and the webhook keys its config knows (others are left out of its file)."""
        if not self.sidecar.exists():
            raise SystemExit(f"{self.sidecar} is missing: create that checkout's .venv first")
        schema = json.loads(
            subprocess.run(
                [str(self.sidecar), "schema"], capture_output=True, check=True, timeout=60
            ).stdout
        )
        self.webhook_keys = set(schema.get("$defs", {}).get("Webhooks", {}).get("properties", {}))
        self.commit = subprocess.run(
            ["git", "-C", str(self.root), "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()[:100]


@dataclass
class Replica:
    """One `sidecar run` process slot: its ports, its config, and each incarnation's log."""

    index: int
    config_path: Path
    proxy_url: str
    admin_url: str
    proc: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    stopped: bool = False  # SIGSTOPped now
    log_paths: list[Path] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_bytes(self) -> int | None:
        if not self.alive():
            return None
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.proc.pid).memory_info().rss)
        return None


class Stack:
    """Redis, the example API and the replicas of one soak run, on 127.0.0.1 and free ports."""

    def __init__(
        self,
        checkout: Checkout,
        *,
        replicas: int,
        with_sentinel: bool,
        fsync: str,
        webhooks: dict[str, Any],
        workdir: Path | None = None,
    ) -> None:
        self.checkout = checkout
        self.tmp = workdir or Path(tempfile.mkdtemp(prefix="sidecar-soak-"))
        self.redis = Redis(fsync, with_sentinel)
        self.prefix = f"soak-{secrets.token_hex(4)}"
        self.events_stream = f"{self.prefix}.events"
        self.admin_token = "op-" + secrets.token_hex(12)
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.api: subprocess.Popen[bytes] | None = None
        self.api_redis = RedisServer()  # the backend's own: never faulted
        self.webhooks = webhooks
        self.left_out: dict[str, Any] = {}
        self.replicas = [
            Replica(
                n,
                self.tmp / f"replica-{n}.yaml",
                f"http://127.0.0.1:{free_port()}",
                f"http://127.0.0.1:{free_port()}",
            )
            for n in range(replicas)
        ]
        self.env = child_env(self.tmp / "pycache")

    def replica_config(self, replica: Replica) -> dict[str, Any]:
        """The file of one replica: the users example's route, on this run's stream and prefix."""
        known = {k: v for k, v in self.webhooks.items() if k in self.checkout.webhook_keys}
        self.left_out = {k: v for k, v in self.webhooks.items() if k not in known}
        return {
            "listen": replica.proxy_url.removeprefix("http://"),
            "admin_listen": replica.admin_url.removeprefix("http://"),
            "upstream": self.api_url,
            **self.redis.sidecar_keys(),
            "key_prefix": self.prefix,
            "admin_token": self.admin_token,
            "correlation_header": "X-Correlation-ID",
            "shutdown_grace": "2s",
            "log": {"level": "warning", "format": "json"},
            "routes": [
                {
                    "name": ROUTE,
                    "method": "POST",
                    "path": "/api/users",
                    "budget": "2s",
                    "correlation": {"source": "request"},
                    "wait": {
                        "stream": {
                            "key": self.events_stream,
                            "id_field": "correlation_id",
                            "type_field": "type",
                            "data_field": "payload",
                            "success": ["CreateUser::UserCreated"],
                            "failure": ["CreateUser::UserNotCreated"],
                        },
                        "poll": {
                            "interval": "250ms",
                            "max_interval": "1s",
                            "done_status": [200],
                            "failed_status": [410],
                        },
                    },
                    "respond": {"success_status": 200, "failure_status": 500, "body": "event"},
                    "webhook_events": {"success": EVENT_SUCCESS, "failure": EVENT_FAILURE},
                }
            ],
            "webhooks": {"allow_private_targets": True, **known},
        }

    async def start(self) -> None:
        """Redis, then the API, then every replica at once; each step ready before the next."""
        await self.redis.start()
        await asyncio.to_thread(self.api_redis.start)
        self.start_api()
        await wait_http(f"{self.api_url}/healthz", lambda: self.api and self.api.poll() is None)
        for replica in self.replicas:
            replica.config_path.write_text(yaml.safe_dump(self.replica_config(replica)))
        await asyncio.gather(*(self.start_replica(replica) for replica in self.replicas))

    def start_api(self) -> None:
        self.api = spawn(
            [
                sys.executable,
                "-m",
                "examples.users.api",
                "--port",
                str(self.api_port),
                "--redis-url",
                self.api_redis.url,
                "--prefix",
                f"{self.prefix}-api",
                "--commands-stream",
                f"{self.prefix}.commands",
                "--events-stream",
                self.events_stream,
                "--log-level",
                "warning",
            ],
            self.tmp / "api.log",
            self.env,
        )

    async def start_replica(self, replica: Replica, wait: bool = True) -> None:
        """A new incarnation of `replica` (its log in a file of its own); waits for `/healthz`."""
        replica.incarnation += 1
        log = self.tmp / f"replica-{replica.index}.{replica.incarnation}.log"
        replica.log_paths.append(log)
        replica.proc = spawn(
            [str(self.checkout.sidecar), "run", "-c", str(replica.config_path)], log, self.env
        )
        replica.stopped = False
        if wait:
            await wait_http(f"{replica.admin_url}/healthz", replica.alive)

    async def close(self) -> None:
        """Stop every replica, the API and Redis (in that order); the directory stays for logs."""
        for replica in self.replicas:
            reap(replica.proc)
        reap(self.api)
        await asyncio.to_thread(self.api_redis.close)
        await self.redis.close()


async def wait_http(url: str, alive: Any, timeout_s: float = 30.0) -> None:
    """Poll `url` until it answers 200 (bounded); fail at once if `alive()` turns false."""
    deadline = time.monotonic() + timeout_s
    timeout = aiohttp.ClientTimeout(total=1.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the process behind {url} exited while starting")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout_s:.0f}s")
