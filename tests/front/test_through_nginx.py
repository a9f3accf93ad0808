"""Real nginx running the exported front, in front of the real sidecar (the app, Redis and all)
and a fake API: what the sidecar synchronises, holds and answers reaches it through nginx, and
everything else reaches the API without it (the sidecar counts none of it)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.metrics import METRICS
from sidecar.routing import RUNTIME
from sidecar.state import HUB

from ..conftest import FakeApiFactory, SidecarFactory
from ..fakes import FakeApi, reply
from ..helpers import until
from .support import StartFront

DONE = "Job::Done"


@dataclass
class Stack:
    """nginx (`front`) → the sidecar (`sidecar`) → the API (`api`); `reports`: the API behind
    a named route with an upstream of its own, under a base path."""

    front: str
    sidecar: TestClient[web.Request, web.Application]
    api: FakeApi
    reports: FakeApi
    redis: aioredis.Redis
    stream: str
    http: aiohttp.ClientSession

    def calls_seen_by_sidecar(self) -> float:
        """Every call the sidecar has counted, whatever its route and outcome."""
        families = self.sidecar.app[METRICS].registry.collect()
        return sum(
            float(sample.value)
            for family in families
            if family.name == "sidecar_requests"
            for sample in family.samples
            if sample.name == "sidecar_requests_total"
        )

    async def held(self, n: int) -> None:
        hub = self.sidecar.app[HUB]
        assert hub is not None
        await until(lambda: hub.waiting == n)

    async def complete(self, cid: str, data: Any) -> None:
        fields = {"correlation_id": cid, "type": DONE, "payload": orjson.dumps(data)}
        await self.redis.xadd(self.stream, fields)  # type: ignore[arg-type]


async def moved(request: web.Request) -> web.StreamResponse:
    """An answer naming the API's own absolute URL, which a client must see as the front's."""
    own = f"http://{request.host}/elsewhere?a=1"
    return web.Response(status=303, headers={"Location": own, "Content-Location": own})


@pytest.fixture
async def stack(
    start_front: StartFront,
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> Any:
    stream = f"{key_prefix}:jobs.events"
    api = await fake_api(
        accept="POST /jobs/{kind}",
        location="/jobs/{kind}/{cid}",
        status="/jobs/{kind}/{cid}",
        replies=[reply(404)],
        routes={"GET /moved": moved},
    )
    reports = await fake_api(accept=None)
    routes = [
        # Listed first, a named pass-through route keeps its calls from the route below.
        {"name": "peek-job", "method": "POST", "path": "/jobs/peek"},
        {
            "name": "run-job",
            "method": "POST",
            "path": "/jobs/{kind}",
            "budget": "5s",
            "wait": {"stream": {"key": stream, "success": [DONE]}},
        },
        {
            "name": "get-report",
            "method": "GET",
            "path": "/reports/{id}",
            "upstream": f"{reports.url}/base",
        },
        {"name": "get-job", "method": "GET", "path": "/jobs/{kind}/{id}"},
    ]
    sidecar = await start_sidecar(
        api,
        routes=routes,
        redis_url=redis_url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
        proxy={"trust_forwarded_headers": True},  # behind the front, which sets them
    )
    hub = sidecar.app[HUB]
    assert hub is not None
    await asyncio.wait_for(hub.connected.wait(), 5)
    assert sidecar.server.port is not None
    front = await start_front(
        sidecar.app[RUNTIME].settings, sidecar=f"127.0.0.1:{sidecar.server.port}"
    )
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        yield Stack(front, sidecar, api, reports, redis, stream, http)


async def test_a_synchronised_call_is_held_by_the_sidecar_through_nginx(stack: Stack) -> None:
    call = asyncio.create_task(
        stack.http.post(
            f"{stack.front}/jobs/report", json={"n": 1}, headers={"X-Correlation-ID": "front-1"}
        )
    )
    await stack.held(1)
    await stack.complete("front-1", {"report": "ready"})
    resp = await call
    assert resp.status == 200
    assert await resp.json() == {"report": "ready"}
    assert resp.headers["X-Correlation-ID"] == "front-1"
    seen = stack.api.seen[-1]
    assert (seen.method, seen.path, seen.body) == ("POST", "/jobs/report", b'{"n": 1}')
    assert seen.headers["X-Forwarded-For"].startswith("127.0.0.1")
    assert stack.calls_seen_by_sidecar() == 1


async def test_what_the_sidecar_does_not_synchronise_goes_straight_to_the_api(
    stack: Stack,
) -> None:
    front_host = stack.front.removeprefix("http://")
    get = stack.http.get
    # A method no route of the path has.
    resp = await get(f"{stack.front}/jobs/report")
    assert (resp.status, await resp.json()) == (200, {"ok": True})
    # A path no synchronised route has; Prefer without a wait preference, or with `wait` as a
    # parameter of another one, is no long-poll.
    for prefer in (None, "respond-async", "handling=lenient; wait=3"):
        headers = {"Prefer": prefer} if prefer else {}
        resp = await get(f"{stack.front}/jobs/report/front-x", headers=headers)
        assert resp.status == 404  # the API's "still pending"
        assert "Preference-Applied" not in resp.headers
    # A named route listed before a synchronised one keeps its calls: the API's 202, as it is.
    resp = await stack.http.post(f"{stack.front}/jobs/peek", data=b"x" * 100_000)
    assert resp.status == 202
    assert stack.api.seen[-1].body == b"x" * 100_000
    # A named route with an upstream of its own: its base path, its Host, the query as sent.
    resp = await get(f"{stack.front}/reports/7?b=2&a=1")
    assert resp.status == 200
    seen = stack.reports.seen[-1]
    assert seen.path == "/base/reports/7?b=2&a=1"
    assert seen.headers["Host"] == stack.reports.url.removeprefix("http://")
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"
    assert seen.headers["X-Forwarded-Host"] == front_host
    assert seen.headers["X-Forwarded-Proto"] == "http"
    # The API's own absolute URLs are made the front's, as the sidecar makes them.
    resp = await get(f"{stack.front}/moved", allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == f"{stack.front}/elsewhere?a=1"
    assert resp.headers["Content-Location"] == f"{stack.front}/elsewhere?a=1"
    assert stack.calls_seen_by_sidecar() == 0


async def test_long_polls_and_the_status_monitor_reach_the_sidecar(stack: Stack) -> None:
    resp = await stack.http.post(
        f"{stack.front}/jobs/report",
        json={},
        headers={"X-Correlation-ID": "front-2", "Prefer": "respond-async"},
    )
    assert resp.status == 202
    location = f"{stack.front}{resp.headers['Location']}"
    counted = stack.calls_seen_by_sidecar()

    # GET with Prefer: wait=N: the sidecar holds it until the completion, then forwards it.
    poll = asyncio.create_task(
        stack.http.get(location, headers={"Prefer": "respond-async, wait=1"})
    )
    await stack.held(1)
    stack.api.replies = [reply(200, {"id": "front-2", "ready": True})]
    await stack.complete("front-2", {"ready": True})
    resp = await poll
    assert resp.status == 200
    assert await resp.json() == {"id": "front-2", "ready": True}
    assert resp.headers["Preference-Applied"] == "wait=1"
    assert stack.calls_seen_by_sidecar() == counted + 1

    # The status monitor's paths are the sidecar's: an unknown token is its 404 problem.
    resp = await stack.http.get(f"{stack.front}/.sidecar/operations/{'x' * 43}")
    assert resp.status == 404
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert stack.calls_seen_by_sidecar() == counted + 2
