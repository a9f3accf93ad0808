"""Synchronising by polling the Location, alone or beside the stream, and long-polling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from devtools.redis_server import free_port
from sidecar.state import HUB, TRACKER

from .conftest import SidecarFactory, Upstream
from .helpers import metric, until

Reply = tuple[int, dict[str, str], bytes]


def reply(status: int, body: Any = b"", **headers: str) -> Reply:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    if not isinstance(body, bytes):
        headers.setdefault("Content-Type", "application/json")
    return status, headers, raw


@dataclass
class Script:
    """What the fake async API answers: a 202 for the command, then the status replies in order
    (the last one repeats). Every poll it receives is recorded."""

    status_replies: list[Reply] = field(default_factory=lambda: [reply(200, {"done": True})])
    location: str = "/jobs/{cid}/status"
    polls: list[web.Request] = field(default_factory=list)
    polled: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def create(request: web.Request) -> web.Response:
            cid = request.headers["X-Correlation-ID"]
            return web.json_response(
                {"id": cid}, status=202, headers={"Location": self.location.format(cid=cid)}
            )

        async def status(request: web.Request) -> web.Response:
            self.polls.append(request)
            self.polled.set()
            index = min(len(self.polls), len(self.status_replies)) - 1
            code, headers, body = self.status_replies[index]
            return web.Response(status=code, headers=headers, body=body)

        async def resource(request: web.Request) -> web.Response:
            return web.json_response({"resource": request.match_info["id"]})

        app = web.Application()
        app.router.add_post("/jobs", create)
        app.router.add_get("/jobs/{id}/status", status)
        app.router.add_get("/resources/{id}", resource)
        return app


def poll_route(**overrides: Any) -> dict[str, Any]:
    poll = {"interval": "10ms", "max_interval": "40ms", **overrides.pop("poll", {})}
    base: dict[str, Any] = {
        "name": "jobs",
        "method": "POST",
        "path": "/jobs",
        "budget": "3s",
        "wait": {"poll": poll},
    }
    base.update(overrides)
    return base


Start = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def start(start_upstream: Upstream, start_sidecar: SidecarFactory) -> Start:
    async def go(script: Script, route: dict[str, Any], **settings: Any) -> TestClient:
        upstream = await start_upstream(script.app())
        return await start_sidecar(upstream, routes=[route], **settings)

    return go


async def post_job(client: TestClient, cid: str = "job-1", **headers: str) -> Any:
    return await client.post("/jobs", json={}, headers={"X-Correlation-ID": cid, **headers})


async def test_poll_only_route_runs_without_redis_status_based(start: Start) -> None:
    script = Script([reply(404, {"status": "pending"}), reply(202), reply(200, {"id": 1})])
    client = await start(script, poll_route())
    assert client.app[HUB] is None and client.app[TRACKER] is None
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"id": 1}
    # Without Redis no client id can be claimed: the call runs under a minted one.
    cid = resp.headers["X-Correlation-ID"]
    assert cid != "job-1"
    assert resp.headers["Content-Location"] == f"/jobs/{cid}/status"
    assert len(script.polls) == 3
    assert metric(client, "sidecar_polls_total", route="jobs", result="pending") == 2
    assert metric(client, "sidecar_poll_completions_total", route="jobs", status="succeeded") == 1
    assert (
        metric(
            client,
            "sidecar_requests_total",
            route="jobs",
            outcome="sync_success",
            status_class="2xx",
        )
        == 1
    )


async def test_field_based_success_and_failure(start: Start) -> None:
    route = poll_route(
        poll={"field": "/state", "success": ["done"], "failure": ["failed"]},
        respond={"body": "location", "failure_status": 422},
    )
    script = Script([reply(200, {"state": "running"}), reply(200, {"state": "done", "n": 5})])
    client = await start(script, route)
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"state": "done", "n": 5}

    script.status_replies = [reply(200, {"state": "failed", "error": "disk full"})]
    resp = await post_job(client, "job-2")
    assert resp.status == 422
    assert resp.headers["Content-Type"] == "application/problem+json"
    problem = orjson.loads(await resp.read())
    assert problem["detail"] == "disk full"
    assert problem["data"] == {"state": "failed", "error": "disk full"}


async def test_303_is_followed_to_the_resource(start: Start) -> None:
    script = Script([reply(200, {"state": "queued"}), reply(303, Location="/resources/77")])
    # A 200 status document would itself mean "done": decide by a field of the resource.
    route = poll_route(poll={"field": "/resource", "success": ["77"]}, respond={"body": "location"})
    client = await start(script, route)
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"resource": "77"}


async def test_retry_after_is_honoured(start: Start) -> None:
    script = Script([reply(202, {"state": "pending"}, **{"Retry-After": "2"})])
    client = await start(script, poll_route(budget="600ms"))
    resp = await post_job(client)
    assert resp.status == 202  # the next poll would have come after the budget
    assert len(script.polls) == 1


async def test_client_credentials_are_carried_on_polls(start: Start) -> None:
    script = Script([reply(404), reply(200, {"ok": True})])
    client = await start(script, poll_route())
    resp = await post_job(
        client, Authorization="Bearer sekrit", Cookie="s=1", **{"X-Private": "no"}
    )
    assert resp.status == 200
    for poll in script.polls:
        assert poll.headers["Authorization"] == "Bearer sekrit"
        assert poll.headers["Cookie"] == "s=1"
        assert "X-Private" not in poll.headers


async def test_budget_spent_while_pending_answers_202(start: Start) -> None:
    script = Script([reply(404)])
    client = await start(script, poll_route(budget="150ms"))
    resp = await post_job(client)
    assert resp.status == 202
    assert resp.headers["Location"] == f"/jobs/{resp.headers['X-Correlation-ID']}/status"
    assert metric(client, "sidecar_fallbacks_total", route="jobs", reason="budget") == 1


async def test_poll_errors_are_retried_then_recover(start: Start) -> None:
    script = Script([reply(500), reply(503), reply(200, {"fine": 1})])
    client = await start(script, poll_route())
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"fine": 1}
    assert metric(client, "sidecar_polls_total", route="jobs", result="error") == 2


async def test_unreachable_poll_target_degrades_to_202(start: Start) -> None:
    script = Script(location=f"http://127.0.0.1:{free_port()}/jobs/{{cid}}/status")
    client = await start(script, poll_route(budget="200ms"))
    resp = await post_job(client, "dead")
    assert resp.status == 202
    assert resp.headers["Location"].endswith(f"/jobs/{resp.headers['X-Correlation-ID']}/status")
    assert metric(client, "sidecar_polls_total", route="jobs", result="error") >= 1
    assert metric(client, "sidecar_fallbacks_total", route="jobs", reason="budget") == 1


STREAM_OK = "Job::Done"


@dataclass
class Both:
    client: TestClient
    script: Script
    redis: aioredis.Redis
    stream: str


@pytest.fixture
async def both(start: Start, redis: aioredis.Redis, redis_url: str, key_prefix: str) -> Both:
    stream = f"{key_prefix}:jobs.events"
    script = Script([reply(404)])
    route = poll_route(
        budget="3s",
        wait={
            "stream": {"key": stream, "success": [STREAM_OK]},
            "poll": {"interval": "10ms", "max_interval": "30ms"},
        },
    )
    client = await start(
        script,
        route,
        redis_url=redis_url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
    )
    hub = client.app[HUB]
    assert hub is not None
    await asyncio.wait_for(hub.connected.wait(), 5)
    return Both(client, script, redis, stream)


async def test_stream_and_poll_stream_wins_when_poll_stays_pending(both: Both) -> None:
    hub = both.client.app[HUB]
    assert hub is not None
    task = asyncio.create_task(post_job(both.client, "sp-1"))
    await until(lambda: hub.waiting == 1 and len(both.script.polls) >= 1)
    await both.redis.xadd(
        both.stream, {"correlation_id": "sp-1", "type": STREAM_OK, "payload": '{"via":"stream"}'}
    )
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"via": "stream"}
    polls = len(both.script.polls)
    await asyncio.sleep(0.1)  # the poller was cancelled: no more polls arrive
    assert len(both.script.polls) == polls


async def test_stream_and_poll_poll_wins_when_no_event_comes(both: Both) -> None:
    both.script.status_replies = [reply(404), reply(200, {"via": "poll"})]
    resp = await post_job(both.client, "sp-2")
    assert resp.status == 200
    assert await resp.json() == {"via": "poll"}
    tracker = both.client.app[TRACKER]
    assert tracker is not None
    tracked = await tracker.get("sp-2")
    assert tracked is not None and tracked.state == "succeeded"


async def test_long_poll_holds_a_tracked_location_until_the_completion(both: Both) -> None:
    resp = await post_job(both.client, "lp-1", Prefer="respond-async")
    assert resp.status == 202
    location = resp.headers["Location"]

    # Without Prefer: wait the GET passes straight through.
    plain = await both.client.get(location)
    assert plain.status == 404
    assert "Preference-Applied" not in plain.headers

    hub = both.client.app[HUB]
    assert hub is not None
    held = asyncio.create_task(both.client.get(location, headers={"Prefer": "wait=5"}))
    await until(lambda: hub.waiting == 1)
    assert not held.done()
    both.script.status_replies = [reply(200, {"id": "lp-1", "ready": True})]
    await both.redis.xadd(both.stream, {"correlation_id": "lp-1", "type": STREAM_OK})
    resp = await held
    assert resp.status == 200
    assert await resp.json() == {"id": "lp-1", "ready": True}
    assert resp.headers["Preference-Applied"] == "wait=5"
    assert resp.headers["Vary"] == "Prefer"


async def test_long_poll_gives_up_after_n_seconds_and_forwards(both: Both) -> None:
    resp = await post_job(both.client, "lp-2", Prefer="respond-async")
    location = resp.headers["Location"]
    resp = await both.client.get(location, headers={"Prefer": "wait=0.2"})
    assert resp.status == 404  # still pending upstream: its own answer
    assert resp.headers["Preference-Applied"] == "wait=0.2"
