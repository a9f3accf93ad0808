"""The sidecar as a real process: `sidecar run`, SIGHUP reloads, SIGTERM drains, bad configs.

Each test spawns `python -m sidecar.cli run -c <file>` on free ports in front of an in-test aiohttp
upstream. Readiness is a short bounded poll of `/healthz` (the one wait a subprocess allows) plus
one call through the proxy; everything else waits on events: the upstream signals when a held call
arrived and holds it until the test releases it, and the process's JSON log lines are read as they
are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from devtools.redis_server import free_port

from .conftest import Upstream

REPO = Path(__file__).resolve().parent.parent
SLOW_BODY = b"slow answer " * 10_000  # spans several chunks on the way back
READY_TIMEOUT_S = 10.0
HOLD_CAP_S = 30.0  # the longest the fake upstream holds a call nobody releases


# --------------------------------------------------------------------------------------------
# The fake upstream
# --------------------------------------------------------------------------------------------


@dataclass
class SlowUpstream:
    """An upstream whose `/slow` call is held until the test releases it (or `HOLD_CAP_S`)."""

    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        async def slow(request: web.Request) -> web.Response:
            self.arrived.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), HOLD_CAP_S)
            return web.Response(body=SLOW_BODY, content_type="text/plain")

        async def thing(request: web.Request) -> web.Response:
            return web.json_response({"id": request.match_info["id"]})

        app = web.Application()
        app.router.add_get("/slow", slow)
        app.router.add_get("/things/{id}", thing)
        app.router.add_get("/ping", pong)
        return app


async def pong(request: web.Request) -> web.Response:
    return web.Response(text="pong")


@pytest.fixture
async def upstream(start_upstream: Upstream) -> AsyncIterator[SlowUpstream]:
    """The fake upstream, started; held calls are released at teardown so it closes at once."""
    fake = SlowUpstream()
    fake.server = await start_upstream(fake.app())
    yield fake
    fake.release.set()


# --------------------------------------------------------------------------------------------
# The sidecar process
# --------------------------------------------------------------------------------------------


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


async def spawn(config_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar.cli",
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
    """Poll `/healthz`, then the proxy's `/ping`, in one bounded loop.

    The admin listener starts before the proxy site and the signal handlers; a proxied answer
    proves the process has passed both, so signals sent afterwards are handled.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    for url in (f"{sidecar.admin_url}/healthz", f"{sidecar.proxy_url}/ping"):
        while True:
            if sidecar.proc.returncode is not None:
                pytest.fail(f"sidecar exited early:\n{sidecar.stderr_text()}")
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{url} not ready after {READY_TIMEOUT_S}s:\n{sidecar.stderr_text()}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A test client session; short timeouts so a broken test fails rather than hangs."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


StartProcess = Callable[[dict[str, Any]], Awaitable[SidecarProcess]]


@contextlib.asynccontextmanager
async def sidecar_processes(
    tmp_path: Path, http: aiohttp.ClientSession
) -> AsyncIterator[StartProcess]:
    """Start `sidecar run` processes, each with its own config file; any still running is
    killed on exit."""
    started: list[SidecarProcess] = []

    async def start(config: dict[str, Any]) -> SidecarProcess:
        path = tmp_path / f"sidecar-{uuid.uuid4().hex[:8]}.yaml"  # several may start at once
        write_config(path, config)
        sidecar = SidecarProcess(
            proc=await spawn(path),
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


@pytest.fixture
async def run_sidecar(tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[StartProcess]:
    """Start `sidecar run` with a config; killed at teardown if a test left it running."""
    async with sidecar_processes(tmp_path, http) as start:
        yield start


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


async def refused(url: str, timeout_s: float = 3.0) -> bool:
    """True once a new TCP connection to `url`'s port is refused (bounded retries)."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
        except ConnectionRefusedError:
            return True
        except ConnectionResetError:
            # Caught in the listener's backlog as it closed: the next attempt tells.
            await asyncio.sleep(0.01)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        await asyncio.sleep(0.01)
    return False


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """GET `url`: status and whole body."""
    async with http.get(url) as resp:
        return resp.status, await resp.read()


def is_message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("message") == text


OLD_ROUTES = [{"name": "old-name", "method": "GET", "path": "/things/{id}"}]
NEW_ROUTES = [{"name": "new-name", "method": "GET", "path": "/things/{id}"}]


# --------------------------------------------------------------------------------------------
# SIGHUP
# --------------------------------------------------------------------------------------------


async def test_sighup_with_a_valid_file_replaces_routes_and_keeps_in_flight_calls(
    upstream: SlowUpstream, run_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    config = base_config(upstream.url, OLD_ROUTES)
    sidecar: SidecarProcess = await run_sidecar(config)
    async with http.get(f"{sidecar.proxy_url}/things/1") as resp:
        assert resp.status == 200
    assert await route_count(http, sidecar.admin_url, "old-name") == 1

    slow = asyncio.create_task(fetch(http, f"{sidecar.proxy_url}/slow"))
    await upstream.arrived.wait()

    write_config(sidecar.config_path, {**config, "routes": NEW_ROUTES})
    sidecar.send(signal.SIGHUP)
    await sidecar.wait_log(is_message("config reloaded"))
    ok = 'sidecar_config_reloads_total{result="ok"}'
    assert await metric_value(http, sidecar.admin_url, ok) == 1.0

    async with http.get(f"{sidecar.proxy_url}/things/2") as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": "2"}
    assert await route_count(http, sidecar.admin_url, "new-name") == 1
    assert await route_count(http, sidecar.admin_url, "old-name") == 1

    assert not slow.done()
    upstream.release.set()
    assert await slow == (200, SLOW_BODY)
    assert sidecar.proc.returncode is None


async def test_sighup_with_an_invalid_file_keeps_the_running_config(
    upstream: SlowUpstream, run_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    config = base_config(upstream.url, OLD_ROUTES)
    sidecar: SidecarProcess = await run_sidecar(config)

    bad = {**config, "routes": [{**NEW_ROUTES[0], "budget": "soon"}]}
    write_config(sidecar.config_path, bad)
    sidecar.send(signal.SIGHUP)
    line = await sidecar.wait_log(is_message("config reload refused; keeping the running config"))
    assert line["level"] == "error"
    assert line["config"] == str(sidecar.config_path)
    assert any(p.startswith("routes[0].budget: invalid duration 'soon'") for p in line["problems"])

    failed = 'sidecar_config_reloads_total{result="failed"}'
    assert await metric_value(http, sidecar.admin_url, failed) == 1.0
    ok = 'sidecar_config_reloads_total{result="ok"}'
    assert await metric_value(http, sidecar.admin_url, ok) in (None, 0.0)

    async with http.get(f"{sidecar.proxy_url}/things/3") as resp:
        assert resp.status == 200
        assert await resp.json() == {"id": "3"}
    assert await route_count(http, sidecar.admin_url, "old-name") == 1
    assert await route_count(http, sidecar.admin_url, "new-name") == 0
    assert sidecar.proc.returncode is None


async def test_sighup_says_which_keys_wait_for_a_restart_and_applies_log_at_once(
    upstream: SlowUpstream, run_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    config = base_config(upstream.url, OLD_ROUTES)
    sidecar: SidecarProcess = await run_sidecar(config)
    changed = {
        **config,
        "routes": NEW_ROUTES,
        "log": {"level": "warning", "format": "json"},  # reloadable
        "clients": {"max_body": "1KiB"},  # restart only
        "webhooks": {"timeout": "3s"},  # restart only
    }
    write_config(sidecar.config_path, changed)
    sidecar.send(signal.SIGHUP)
    line = await sidecar.wait_log(
        lambda line: str(line.get("message", "")).startswith("config reloaded, but")
    )
    assert line["level"] == "warning"
    assert line["keys"] == ["clients", "webhooks"]
    # The new log level holds at once: an info line (a call's access line) is no longer written.
    before = len(sidecar.logs)
    async with http.get(f"{sidecar.proxy_url}/things/4") as resp:
        assert resp.status == 200
    assert await route_count(http, sidecar.admin_url, "new-name") == 1
    assert not [x for x in sidecar.logs[before:] if x.get("logger") == "sidecar.access"]


async def test_start_warns_about_a_config_that_is_likely_wrong(
    upstream: SlowUpstream, run_sidecar: Any
) -> None:
    sync = [{"name": "jobs", "method": "POST", "path": "/jobs", "wait": {"poll": {}}}]
    sidecar: SidecarProcess = await run_sidecar(base_config(upstream.url, sync))
    said = [x["message"] for x in sidecar.logs if x.get("level") == "warning"]
    assert any(m.startswith("redis_url is unset: long-polling") for m in said), said
    assert any(m.startswith("admin_token is unset") for m in said), said


# --------------------------------------------------------------------------------------------
# SIGTERM
# --------------------------------------------------------------------------------------------


async def test_sigterm_drains_the_in_flight_call_and_refuses_new_connections(
    upstream: SlowUpstream, run_sidecar: Any, http: aiohttp.ClientSession
) -> None:
    grace_s = 10.0
    sidecar: SidecarProcess = await run_sidecar(
        base_config(upstream.url, OLD_ROUTES, shutdown_grace=grace_s)
    )
    slow = asyncio.create_task(fetch(http, f"{sidecar.proxy_url}/slow"))
    await upstream.arrived.wait()

    signalled = time.monotonic()
    sidecar.send(signal.SIGTERM)
    await sidecar.wait_log(is_message("draining"))
    assert await refused(sidecar.proxy_url), "the proxy still accepts connections while draining"
    assert not slow.done()
    assert sidecar.proc.returncode is None

    upstream.release.set()
    assert await slow == (200, SLOW_BODY)
    assert await sidecar.wait_exit(grace_s) == 0
    assert time.monotonic() - signalled < grace_s
    await sidecar.wait_log(is_message("stopped"), timeout_s=1.0)


# A grace of 0 once meant "wait forever": aiohttp reads a shutdown_timeout of 0 as no limit.
@pytest.mark.parametrize("grace_s", [0.5, 0.0])
async def test_a_call_in_flight_past_the_grace_does_not_hold_the_exit(
    upstream: SlowUpstream, run_sidecar: Any, http: aiohttp.ClientSession, grace_s: float
) -> None:
    sidecar: SidecarProcess = await run_sidecar(
        base_config(upstream.url, OLD_ROUTES, shutdown_grace=grace_s)
    )
    slow = asyncio.create_task(fetch(http, f"{sidecar.proxy_url}/slow"))
    await upstream.arrived.wait()

    signalled = time.monotonic()
    sidecar.send(signal.SIGTERM)
    # aiohttp waits up to the grace for the handler, then cancels it and waits up to the grace
    # again; allow for that and the interpreter's exit, far below the upstream's 30 s hold.
    assert await sidecar.wait_exit(5.0) == 0
    elapsed = time.monotonic() - signalled
    assert grace_s <= elapsed < 5.0
    with pytest.raises(aiohttp.ClientError):
        await slow
    assert not upstream.release.is_set()


# --------------------------------------------------------------------------------------------
# An invalid config at start
# --------------------------------------------------------------------------------------------


async def test_run_with_an_invalid_config_exits_1_with_the_problems_and_never_listens(
    tmp_path: Path,
) -> None:
    config = base_config(
        "http://127.0.0.1:1",
        [{"name": "a", "path": "/a", "budget": "soon"}, {"name": "a", "path": "/b"}],
        listn="typo",
    )
    path = tmp_path / "bad.yaml"
    write_config(path, config)
    proc = await spawn(path)
    async with asyncio.timeout(10):
        _, stderr = await proc.communicate()
    assert proc.returncode == 1
    text = stderr.decode()
    assert f"{path}: invalid configuration (3 problem(s)):" in text
    assert "  - routes[0].budget: invalid duration 'soon'" in text
    assert "  - routes[1].name: duplicate route name 'a' (first used by routes[0])" in text
    assert "  - listn: unknown key" in text
    assert "Traceback" not in text
    for address in (config["listen"], config["admin_listen"]):
        assert await refused(f"http://{address}", timeout_s=0.1)
