"""Synchronising by polling the Location, alone or beside the stream, end to end. (Polling
itself is tested in tests/completions/test_poll.py, long-polls in tests/sync/test_longpoll.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from devtools.redis_server import free_port
from sidecar.state import HUB, POLLERS, TRACKER

from .conftest import FakeApiFactory, SidecarFactory
from .fakes import FakeApi, Reply, reply
from .helpers import metric, until


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


Start = Callable[..., Awaitable[tuple[TestClient, FakeApi]]]


@pytest.fixture
def start(fake_api: FakeApiFactory, start_sidecar: SidecarFactory) -> Start:
    """The sidecar with `route` in front of a fake async API: POST /jobs → 202 + `location`
    (/jobs/{cid}/status), whose GETs answer `replies` in order (the last one repeats);
    GET /resources/{id} → {"resource": id}."""

    async def go(
        route: dict[str, Any],
        replies: list[Reply] | None = None,
        location: str = "/jobs/{cid}/status",
        **settings: Any,
    ) -> tuple[TestClient, FakeApi]:
        async def resource(request: web.Request) -> web.Response:
            return web.json_response({"resource": request.match_info["id"]})

        api = await fake_api(
            location=location,
            accepted=None,
            status="/jobs/{cid}/status",
            replies=replies or [reply(200, {"done": True})],
            routes={"GET /resources/{id}": resource},
        )
        return await start_sidecar(api, routes=[route], **settings), api

    return go


async def post_job(client: TestClient, cid: str = "job-1", **headers: str) -> Any:
    return await client.post("/jobs", json={}, headers={"X-Correlation-ID": cid, **headers})


async def test_poll_only_route_runs_without_redis_status_based(start: Start) -> None:
    client, api = await start(
        poll_route(), [reply(404, {"status": "pending"}), reply(202), reply(200, {"id": 1})]
    )
    assert client.app[HUB] is None and client.app[TRACKER] is None
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"id": 1}
    # Without Redis no client id can be claimed: the call runs under a minted one.
    cid = resp.headers["X-Correlation-ID"]
    assert cid != "job-1"
    assert resp.headers["Content-Location"] == f"/jobs/{cid}/status"
    assert len(api.polls) == 3
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
    client, api = await start(
        route, [reply(200, {"state": "running"}), reply(200, {"state": "done", "n": 5})]
    )
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"state": "done", "n": 5}

    api.replies = [reply(200, {"state": "failed", "error": "disk full"})]
    resp = await post_job(client, "job-2")
    assert resp.status == 422
    assert resp.headers["Content-Type"] == "application/problem+json"
    problem = orjson.loads(await resp.read())
    assert problem["detail"] == "disk full"
    assert problem["data"] == {"state": "failed", "error": "disk full"}


async def test_303_is_followed_to_the_resource(start: Start) -> None:
    # A 200 status document would itself mean "done": decide by a field of the resource.
    route = poll_route(poll={"field": "/resource", "success": ["77"]}, respond={"body": "location"})
    client, _ = await start(
        route, [reply(200, {"state": "queued"}), reply(303, Location="/resources/77")]
    )
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"resource": "77"}


async def test_retry_after_is_honoured(start: Start) -> None:
    client, api = await start(
        poll_route(budget="600ms"), [reply(202, {"state": "pending"}, **{"Retry-After": "2"})]
    )
    resp = await post_job(client)
    assert resp.status == 202  # the next poll would have come after the budget
    assert len(api.polls) == 1


async def test_client_credentials_are_carried_on_polls(start: Start) -> None:
    client, api = await start(poll_route(), [reply(404), reply(200, {"ok": True})])
    resp = await post_job(
        client, Authorization="Bearer sekrit", Cookie="s=1", **{"X-Private": "no"}
    )
    assert resp.status == 200
    for poll in api.polls:
        assert poll.headers["Authorization"] == "Bearer sekrit"
        assert poll.headers["Cookie"] == "s=1"
        assert "X-Private" not in poll.headers


async def test_budget_spent_while_pending_answers_202(start: Start) -> None:
    client, _ = await start(poll_route(budget="150ms"), [reply(404)])
    resp = await post_job(client)
    assert resp.status == 202
    assert resp.headers["Location"] == f"/jobs/{resp.headers['X-Correlation-ID']}/status"
    assert metric(client, "sidecar_fallbacks_total", route="jobs", reason="budget") == 1


async def test_poll_errors_are_retried_then_recover(start: Start) -> None:
    client, _ = await start(poll_route(), [reply(500), reply(503), reply(200, {"fine": 1})])
    resp = await post_job(client)
    assert resp.status == 200
    assert await resp.json() == {"fine": 1}
    assert metric(client, "sidecar_polls_total", route="jobs", result="error") == 2


async def test_unreachable_poll_target_degrades_to_202(start: Start) -> None:
    dead = f"http://127.0.0.1:{free_port()}/jobs/{{cid}}/status"
    client, _ = await start(poll_route(budget="200ms"), location=dead)
    resp = await post_job(client, "dead")
    assert resp.status == 202
    assert resp.headers["Location"].endswith(f"/jobs/{resp.headers['X-Correlation-ID']}/status")
    assert metric(client, "sidecar_polls_total", route="jobs", result="error") >= 1
    assert metric(client, "sidecar_fallbacks_total", route="jobs", reason="budget") == 1


STREAM_OK = "Job::Done"


@dataclass
class Both:
    client: TestClient
    api: FakeApi
    redis: aioredis.Redis
    stream: str


@pytest.fixture
async def both(start: Start, redis: aioredis.Redis, redis_url: str, key_prefix: str) -> Both:
    stream = f"{key_prefix}:jobs.events"
    route = poll_route(
        budget="3s",
        wait={
            "stream": {"key": stream, "success": [STREAM_OK]},
            "poll": {"interval": "10ms", "max_interval": "30ms"},
        },
    )
    client, api = await start(
        route,
        [reply(404)],
        redis_url=redis_url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
    )
    hub = client.app[HUB]
    assert hub is not None
    await asyncio.wait_for(hub.connected.wait(), 5)
    return Both(client, api, redis, stream)


async def test_stream_and_poll_stream_wins_when_poll_stays_pending(both: Both) -> None:
    hub = both.client.app[HUB]
    assert hub is not None
    task = asyncio.create_task(post_job(both.client, "sp-1"))
    await until(lambda: hub.waiting == 1 and len(both.api.polls) >= 1)
    await both.redis.xadd(
        both.stream, {"correlation_id": "sp-1", "type": STREAM_OK, "payload": '{"via":"stream"}'}
    )
    resp = await task
    assert resp.status == 200
    assert await resp.json() == {"via": "stream"}
    polls = len(both.api.polls)
    pollers = both.client.app[POLLERS]  # the call's poll task (and its tracking write)
    await until(lambda: len(pollers) == 0)  # the poller was cancelled, and has ended
    assert len(both.api.polls) == polls  # no more polls arrived


async def test_stream_and_poll_poll_wins_when_no_event_comes(both: Both) -> None:
    both.api.replies = [reply(404), reply(200, {"via": "poll"})]
    resp = await post_job(both.client, "sp-2")
    assert resp.status == 200
    assert await resp.json() == {"via": "poll"}
    tracker = both.client.app[TRACKER]
    assert tracker is not None
    tracked = await tracker.get("sp-2")
    assert tracked is not None and tracked.state == "succeeded"
