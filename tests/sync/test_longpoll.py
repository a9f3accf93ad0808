"""Long-polling (sidecar/sync/longpoll.py): a GET of a tracked Location sent with
`Prefer: wait=N` is held until the completion is known (or N seconds), then let through; without
the preference it passes straight through."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from sidecar.state import HUB

from ..conftest import FakeApiFactory, SidecarFactory
from ..fakes import FakeApi, reply
from ..helpers import until

STREAM_OK = "Job::Done"


@dataclass
class Jobs:
    """The sidecar in front of a jobs API whose status URL says 404 until told otherwise;
    the route waits on a stream (and polls)."""

    client: TestClient
    api: FakeApi
    redis: aioredis.Redis
    stream: str


@pytest.fixture
async def jobs(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> Jobs:
    stream = f"{key_prefix}:jobs.events"
    api = await fake_api(location="/jobs/{cid}/status", status="/jobs/{cid}/status")
    api.replies = [reply(404)]
    route = {
        "name": "jobs",
        "method": "POST",
        "path": "/jobs",
        "budget": "3s",
        "wait": {
            "stream": {"key": stream, "success": [STREAM_OK]},
            "poll": {"interval": "10ms", "max_interval": "30ms"},
        },
    }
    client = await start_sidecar(
        api,
        routes=[route],
        redis_url=redis_url,
        key_prefix=key_prefix,
        stream_reader={"block": "50ms"},
    )
    hub = client.app[HUB]
    assert hub is not None
    await asyncio.wait_for(hub.connected.wait(), 5)
    return Jobs(client, api, redis, stream)


async def post_job(client: TestClient, cid: str, **headers: str) -> Any:
    return await client.post("/jobs", json={}, headers={"X-Correlation-ID": cid, **headers})


async def test_long_poll_holds_a_tracked_location_until_the_completion(jobs: Jobs) -> None:
    resp = await post_job(jobs.client, "lp-1", Prefer="respond-async")
    assert resp.status == 202
    location = resp.headers["Location"]

    # Without Prefer: wait the GET passes straight through.
    plain = await jobs.client.get(location)
    assert plain.status == 404
    assert "Preference-Applied" not in plain.headers

    hub = jobs.client.app[HUB]
    assert hub is not None
    held = asyncio.create_task(jobs.client.get(location, headers={"Prefer": "wait=5"}))
    await until(lambda: hub.waiting == 1)
    assert not held.done()
    jobs.api.replies = [reply(200, {"id": "lp-1", "ready": True})]
    await jobs.redis.xadd(jobs.stream, {"correlation_id": "lp-1", "type": STREAM_OK})
    resp = await held
    assert resp.status == 200
    assert await resp.json() == {"id": "lp-1", "ready": True}
    assert resp.headers["Preference-Applied"] == "wait=5"
    assert resp.headers["Vary"] == "Prefer"


async def test_long_poll_gives_up_after_n_seconds_and_forwards(jobs: Jobs) -> None:
    resp = await post_job(jobs.client, "lp-2", Prefer="respond-async")
    location = resp.headers["Location"]
    resp = await jobs.client.get(location, headers={"Prefer": "wait=0.2"})
    assert resp.status == 404  # still pending upstream: its own answer
    assert resp.headers["Preference-Applied"] == "wait=0.2"
