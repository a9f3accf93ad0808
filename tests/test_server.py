"""The sidecar as a real process (sidecar/server.py): `sidecar run`, SIGHUP reloads, SIGTERM
drains, bad configs, the open-files warning at start.

Each test spawns `python -m sidecar.cli run -c <file>` (tests/processes.py) on free ports in front
of an in-test aiohttp upstream. Everything waits on events: the upstream signals when a held call
arrived and holds it until the test releases it, and the process's JSON log lines are read as
they are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import Upstream
from .processes import (
    SidecarProcess,
    base_config,
    fetch,
    is_message,
    metric_value,
    refused,
    route_count,
    spawn,
    write_config,
)

SLOW_BODY = b"slow answer " * 10_000  # spans several chunks on the way back
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
    await refused(sidecar.proxy_url, what="the proxy still accepts connections while draining")
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
        await refused(f"http://{address}", timeout_s=0.1)
