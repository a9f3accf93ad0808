"""The sidecar as a real process, for the tests that need one (signals, workers, faults,
replicas): `sidecar run -c <file>` on free ports, its JSON log lines read as they are written.

Readiness is a short bounded poll of `/healthz` (the one wait a subprocess allows) plus one call
through the proxy; everything else waits on what the process says (its log lines, its
`/metrics`) or on what its peers see. The `run_sidecar` and `http` fixtures (tests/conftest.py)
start processes with `sidecar_processes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import yaml

from devtools.redis_server import free_port

from .helpers import until_true

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 10.0


def write_config(path: Path, data: dict[str, Any] | str) -> None:
    """Write the YAML file atomically, so a SIGHUP never reads half of it."""
    text = data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def base_config(upstream: str, routes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A config on free ports, JSON logs, no Redis."""
    return {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "upstream": upstream,
        "log": {"level": "info", "format": "json"},
        "shutdown_grace": "10s",
        "routes": routes,
        **extra,
    }


def child_env() -> dict[str, str]:
    """This environment minus `SIDECAR_*`, so only the test's file configures the child."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("SIDECAR_")}


@dataclass
class SidecarProcess:
    """A running `sidecar run` child, its ports, and the log lines it has written so far."""

    proc: asyncio.subprocess.Process
    config_path: Path
    proxy_url: str
    admin_url: str
    logs: list[dict[str, Any]] = field(default_factory=list)
    raw_stderr: list[str] = field(default_factory=list)
    new_line: asyncio.Condition = field(default_factory=asyncio.Condition)
    reader: asyncio.Task[None] | None = None

    async def read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.raw_stderr.append(line)
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    self.logs.append(parsed)
            async with self.new_line:
                self.new_line.notify_all()

    async def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0
    ) -> dict[str, Any]:
        """The first log line matching `predicate`, waiting for it to be written if need be."""

        def found() -> dict[str, Any] | None:
            return next((line for line in self.logs if predicate(line)), None)

        async with asyncio.timeout(timeout_s), self.new_line:
            await self.new_line.wait_for(lambda: found() is not None)
        line = found()
        assert line is not None
        return line

    def send(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout_s: float) -> int:
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    def stderr_text(self) -> str:
        return "\n".join(self.raw_stderr)


# `sidecar run` under an open-files limit of its own (soft and hard, so it cannot raise it).
LIMITED = (
    "import resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
    "from sidecar.cli import main; sys.exit(main(sys.argv[2:]))"
)


async def spawn(config_path: Path, open_files: int | None = None) -> asyncio.subprocess.Process:
    limited = ("-c", LIMITED, str(open_files)) if open_files else ("-m", "sidecar.cli")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *limited,
        "run",
        "-c",
        str(config_path),
        cwd=REPO,
        env=child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_ready(sidecar: SidecarProcess, http: aiohttp.ClientSession) -> None:
    """Poll `/healthz`, then the proxy's `/ping`, within one bound.

    The admin listener starts before the proxy site and the signal handlers; a proxied answer
    proves the process has passed both, so signals sent afterwards are handled.
    """
    waiting = [f"{sidecar.admin_url}/healthz", f"{sidecar.proxy_url}/ping"]

    async def ready() -> bool:
        if sidecar.proc.returncode is not None:
            pytest.fail(f"sidecar exited early:\n{sidecar.stderr_text()}")
        while waiting:
            try:
                async with http.get(waiting[0]) as resp:
                    if resp.status != 200:
                        return False
            except aiohttp.ClientConnectionError:
                return False
            waiting.pop(0)
        return True

    await until_true(
        ready,
        READY_TIMEOUT_S,
        every_s=0.05,
        what=lambda: f"{waiting[0]} not ready:\n{sidecar.stderr_text()}",
    )


class StartProcess(Protocol):
    """Start `sidecar run` with `config` (under an open-files limit of `open_files`, when
    given) and wait until it serves."""

    def __call__(
        self, config: dict[str, Any], *, open_files: int | None = None
    ) -> Awaitable[SidecarProcess]: ...


@contextlib.asynccontextmanager
async def sidecar_processes(
    tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[StartProcess]:
    """Start `sidecar run` processes, each with its own config file; any still running is
    killed on exit."""
    started: list[SidecarProcess] = []

    async def start(config: dict[str, Any], *, open_files: int | None = None) -> SidecarProcess:
        path = tmp_path / f"sidecar-{uuid.uuid4().hex[:8]}.yaml"  # several may start at once
        write_config(path, config)
        sidecar = SidecarProcess(
            proc=await spawn(path, open_files),
            config_path=path,
            proxy_url=f"http://{config['listen']}",
            admin_url=f"http://{config['admin_listen']}",
        )
        sidecar.reader = asyncio.create_task(sidecar.read_stderr())
        started.append(sidecar)
        await wait_ready(sidecar, http)
        return sidecar

    try:
        yield start
    finally:
        for sidecar in started:
            if sidecar.proc.returncode is None:
                sidecar.proc.kill()
            await sidecar.proc.wait()
            if sidecar.reader is not None:
                await sidecar.reader  # ends at EOF, once the child is gone


async def metric_value(http: aiohttp.ClientSession, admin_url: str, sample: str) -> float | None:
    """The value of one exposition line, e.g. `sidecar_config_reloads_total{result="ok"}`."""
    async with http.get(f"{admin_url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == sample:
            return float(value)
    return None


async def route_count(http: aiohttp.ClientSession, admin_url: str, route: str) -> float:
    """Total `sidecar_requests_total` over every outcome of `route`."""
    async with http.get(f"{admin_url}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("sidecar_requests_total{") and f'route="{route}"' in line:
            total += float(line.rpartition(" ")[2])
    return total


async def refuses(url: str) -> bool:
    """True when a new TCP connection to `url`'s port is refused now."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False  # caught in the listener's backlog as it closed: the next attempt tells
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def refused(url: str, timeout_s: float = 3.0, what: str | None = None) -> None:
    """Wait until new TCP connections to `url`'s port are refused; fail after `timeout_s`."""
    await until_true(
        lambda: refuses(url), timeout_s, every_s=0.01, what=what or f"{url} still accepts"
    )


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """GET `url`: status and whole body."""
    async with http.get(url) as resp:
        return resp.status, await resp.read()


def is_message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("message") == text
