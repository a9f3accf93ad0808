"""No client chooses which completion it receives: the id a synchronised call waits on belongs
to that call alone, and one identity travels through the answer, the problem, the log line and
the webhook payload. Tried as a hostile client would, against the shipped example API and its
sidecar config."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from examples.users.api import create_api_app
from sidecar.app import create_app
from sidecar.config import parse_settings
from sidecar.state import HUB, TRACKER

from ..conftest import ROOT, FakeApiFactory, SidecarFactory
from ..helpers import metric, until

EXAMPLE = ROOT / "examples" / "users" / "sidecar.yaml"


@pytest.fixture
async def users(
    redis: aioredis.Redis, aiohttp_server: Any, redis_url: str, key_prefix: str
) -> TestServer:
    """The example users API (its worker creates a user after 0.2-0.3 s; "slow…" after 3 s)."""
    app = create_api_app(
        redis_url,
        prefix=key_prefix,
        commands_stream=f"{key_prefix}:users.commands",
        events_stream=f"{key_prefix}:users.events",
        delay_s=(0.2, 0.3),
        slow_delay_s=3.0,
        block_ms=50,
    )
    server: TestServer = await aiohttp_server(app)
    return server


async def example_sidecar(
    aiohttp_client: Any, sidecars: list[TestClient], users: TestServer, redis_url: str, prefix: str
) -> TestClient:
    """A sidecar from the shipped examples/users config, on this test's ports, Redis and keys."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw.update(
        listen="127.0.0.1:0",
        admin_listen="127.0.0.1:0",
        upstream=str(users.make_url("")).rstrip("/"),
        redis_url=redis_url,
        key_prefix=prefix,
        stream_reader={"block": "50ms"},
    )
    raw["routes"][0]["wait"]["stream"]["key"] = f"{prefix}:users.events"
    settings = parse_settings(raw, str(EXAMPLE), env={})
    client: TestClient = await aiohttp_client(create_app(settings, CollectorRegistry()))
    sidecars.append(client)
    hub = client.app[HUB]
    assert hub is not None
    await asyncio.wait_for(hub.connected.wait(), 5)
    return client


async def create_user(client: TestClient, name: str, cid: str | None = None) -> Any:
    headers = {"X-Correlation-ID": cid} if cid else {}
    return await client.post("/api/users", json={"username": name, "age": 30}, headers=headers)


async def test_a_client_sending_anothers_id_never_gets_its_result(
    aiohttp_client: Any,
    sidecars: list[TestClient],
    users: TestServer,
    redis_url: str,
    key_prefix: str,
) -> None:
    sidecar = await example_sidecar(aiohttp_client, sidecars, users, redis_url, key_prefix)
    hub = sidecar.app[HUB]
    assert hub is not None
    victim = asyncio.create_task(create_user(sidecar, "victim", "victim-id"))
    await until(lambda: hub.waiting == 1)
    attacker = await create_user(sidecar, "attacker", "victim-id")  # while the victim waits
    mine = await victim
    assert mine.status == 200
    assert mine.headers["X-Correlation-ID"] == "victim-id"
    assert (await mine.json())["username"] == "victim"
    # The attacker's call ran under an id of its own: its own user, its own answer.
    assert attacker.status == 200
    minted = attacker.headers["X-Correlation-ID"]
    assert minted != "victim-id"
    body = await attacker.json()
    assert (body["username"], body["id"]) == ("attacker", minted)
    # Seconds later (the victim's completion still in the recent-event cache), the same id
    # still yields nothing of the victim's.
    late = await create_user(sidecar, "late", "victim-id")
    assert late.status == 200
    assert late.headers["X-Correlation-ID"] != "victim-id"
    assert (await late.json())["username"] == "late"
    replaced = metric(
        sidecar, "sidecar_correlation_ids_replaced_total", route="create-user", reason="in_use"
    )
    assert replaced == 2
    tracker = sidecar.app[TRACKER]
    assert tracker is not None
    tracked = await tracker.get("victim-id")  # the victim's record was not overwritten
    assert tracked is not None and tracked.identity == "victim-id"


async def test_an_id_in_use_on_another_replica_is_not_reused(
    aiohttp_client: Any,
    sidecars: list[TestClient],
    users: TestServer,
    redis_url: str,
    key_prefix: str,
) -> None:
    one = await example_sidecar(aiohttp_client, sidecars, users, redis_url, key_prefix)
    two = await example_sidecar(aiohttp_client, sidecars, users, redis_url, key_prefix)
    hub = one.app[HUB]
    assert hub is not None
    victim = asyncio.create_task(create_user(one, "slow-victim", "shared-7"))
    await until(lambda: hub.waiting == 1)
    other = await create_user(two, "other", "shared-7")
    assert other.status == 200
    assert other.headers["X-Correlation-ID"] != "shared-7"
    assert (await other.json())["username"] == "other"
    victim.cancel()


async def test_without_redis_a_sync_route_always_mints(
    fake_api: FakeApiFactory, start_sidecar: SidecarFactory
) -> None:
    api = await fake_api(location="/jobs/1", accepted={}, status="/jobs/1")
    route = {
        "name": "jobs",
        "method": "POST",
        "path": "/jobs",
        "wait": {"poll": {"interval": 0.01}},
    }
    client = await start_sidecar(api, routes=[route])
    resp = await client.post("/jobs", headers={"X-Correlation-ID": "mine"})
    assert resp.status == 200
    assert resp.headers["X-Correlation-ID"] == api.seen[0].headers["X-Correlation-ID"] != "mine"
    replaced = metric(
        client, "sidecar_correlation_ids_replaced_total", route="jobs", reason="no_redis"
    )
    assert replaced == 1
    # A pass-through keeps the client's id: nothing is awaited under it.
    passed = await client.get("/jobs/1", headers={"X-Correlation-ID": "mine"})
    assert passed.headers["X-Correlation-ID"] == "mine"


@pytest.mark.parametrize("outcome", ["failure", "success"])
async def test_one_identity_when_the_completion_carries_an_operation_id(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    outcome: str,
) -> None:
    stream = f"{key_prefix}:reports.events"
    route = {
        "name": "report",
        "method": "POST",
        "path": "/reports",
        "budget": "5s",
        "correlation": {"source": "location", "pattern": r"/ops/(?P<id>op-\d+)"},
        "wait": {"stream": {"key": stream, "success": ["Done"], "failure": ["Failed"]}},
    }
    # 202 with the operation in the Location (`/ops/op-<n>`); the body names nothing.
    api = await fake_api(accept="POST /reports", location="/ops/op-{n}", accepted={})
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
    caplog.set_level(logging.INFO, logger="sidecar.access")
    task = asyncio.create_task(client.post("/reports", headers={"X-Correlation-ID": "req-9"}))
    await until(lambda: hub.waiting == 1)
    kind = "Failed" if outcome == "failure" else "Done"
    await redis.xadd(
        stream, {"correlation_id": "op-1", "type": kind, "payload": '{"reason": "no"}'}
    )
    resp = await task
    assert resp.headers["X-Correlation-ID"] == "req-9"
    if outcome == "failure":
        assert resp.status == 500
        problem = orjson.loads(await resp.read())
        assert (problem["correlation_id"], problem["operation_id"]) == ("req-9", "op-1")
    else:
        assert resp.status == 200
    line = next(r for r in caplog.records if r.name == "sidecar.access")
    assert (line.correlation_id, line.operation_id) == ("req-9", "op-1")  # type: ignore[attr-defined]
    tracker = client.app[TRACKER]
    assert tracker is not None
    tracked = await tracker.get("op-1")
    assert tracked is not None and (tracked.identity, tracked.operation_id) == ("req-9", "op-1")


async def test_a_cached_event_serves_only_the_call_that_owns_the_operation(
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    """An upstream that hands the same operation to a second caller (an idempotent replay):
    the first caller owns it; the second is not served the first one's cached completion."""
    stream = f"{key_prefix}:reports.events"

    api = await fake_api(accept="POST /reports", location="/ops/op-same", accepted={})
    route = {
        "name": "report",
        "method": "POST",
        "path": "/reports",
        "budget": "600ms",
        "correlation": {"source": "location"},
        "wait": {"stream": {"key": stream, "success": ["Done"]}},
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
    first = asyncio.create_task(client.post("/reports"))
    await until(lambda: hub.waiting == 1)
    await redis.xadd(stream, {"correlation_id": "op-same", "type": "Done", "payload": "{}"})
    assert (await first).status == 200
    second = await client.post("/reports")  # the event is still in the recent-event cache
    assert second.status == 202
