"""The sidecar on a Redis Cluster, on a Sentinel-guarded primary, and over TLS with an ACL user:
synchronised calls complete, webhooks are delivered, faults are ridden out."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio.cluster import RedisCluster

from devtools.redis_server import RedisClusterServers, SentinelSetup
from sidecar.state import ADMIN_URL, HUB, REDIS
from sidecar.webhooks import WEBHOOKS

from ..conftest import FakeApiFactory, SidecarFactory
from ..fakes import FakeApi
from ..helpers import metric, until, until_true
from .conftest import TlsRedis

OK = "Done"


def redis_py_tasks() -> list[asyncio.Task[Any]]:
    """The tasks redis-py started and does not keep (closing old nodes' connections) that
    have not finished yet."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and "/redis/" in getattr(getattr(task.get_coro(), "cr_code", None), "co_filename", "")
    ]


async def jobs_api(fake_api: FakeApiFactory) -> FakeApi:
    """POST /jobs → 202 + Location /jobs/{cid}."""
    return await fake_api(accept="POST /jobs", location="/jobs/{cid}", accepted={})


def route(stream: str, budget: str = "10s") -> dict[str, Any]:
    return {
        "name": "jobs",
        "method": "POST",
        "path": "/jobs",
        "budget": budget,
        "wait": {"stream": {"key": stream, "success": [OK]}},
        "webhook_events": {"success": "job.done"},
    }


async def started(
    start_sidecar: SidecarFactory, upstream: FakeApi, stream: str, **settings: Any
) -> TestClient:
    client = await start_sidecar(
        upstream,
        key_prefix=f"t{uuid.uuid4().hex[:8]}",
        stream_reader={"block": "100ms"},
        routes=[route(stream, settings.pop("budget", "10s"))],
        admin_token="op-token-0123456789",
        webhooks={"allow_private_targets": True, "timeout": "2s", "schedule": ["100ms"] * 5},
        **settings,
    )
    hub = client.app[HUB]
    assert hub is not None
    await asyncio.wait_for(hub.connected.wait(), 10)
    return client


async def held_then_completed(
    client: TestClient, publish: Any, stream: str, cid: str, credential: str = "Bearer c-1"
) -> Any:
    """A call held until its completion is published."""
    hub = client.app[HUB]
    assert hub is not None
    before = hub.waiting
    task = asyncio.create_task(
        client.post("/jobs", headers={"X-Correlation-ID": cid, "Authorization": credential})
    )
    await until(lambda: hub.waiting > before, timeout_s=10)
    await publish(stream, {"correlation_id": cid, "type": OK, "payload": orjson.dumps({"c": cid})})
    return await task


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[TestServer, asyncio.Queue[bytes]]:
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await got.put(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    return await aiohttp_server(app), got


async def test_on_a_redis_cluster_calls_and_webhooks_work_and_keys_spread(
    cluster: RedisClusterServers,
    fake_api: FakeApiFactory,
    start_sidecar: SidecarFactory,
    receiver: tuple[TestServer, asyncio.Queue[bytes]],
) -> None:
    stream = f"jobs-{uuid.uuid4().hex[:6]}.events"
    client = await started(start_sidecar, await jobs_api(fake_api), stream, redis_url=cluster.url)
    connections = client.app[REDIS]
    assert connections is not None and connections.is_cluster  # detected from any node
    events = RedisCluster.from_url(cluster.url)
    try:
        # Webhooks: subscriptions of several clients, created through the admin API.
        hooks, got = receiver
        admin = client.app[ADMIN_URL]
        for n in range(6):
            async with client.session.post(
                f"{admin}/admin/api/subscriptions",
                headers={"Authorization": f"Bearer c-{n}"},
                json={"url": str(hooks.make_url("/hook")), "events": ["*"]},
            ) as resp:
                assert resp.status == 201, await resp.text()
        for n in range(6):
            resp = await held_then_completed(
                client, events.xadd, stream, f"job-{n}", credential=f"Bearer c-{n}"
            )
            assert resp.status == 200
            assert await resp.json() == {"c": f"job-{n}"}
        bodies = [orjson.loads(await asyncio.wait_for(got.get(), 10)) for _ in range(6)]
        assert sorted(b["correlation_id"] for b in bodies) == [f"job-{n}" for n in range(6)]
        # Each client's keys in its own slot, the clients spread over the nodes.
        prefix = client.app[WEBHOOKS].prefix
        holders = set()
        for node in cluster.nodes:
            plain = aioredis.Redis(port=node.port)
            if [k async for k in plain.scan_iter(match=f"{prefix}:wh:*:sub:*")]:
                holders.add(node.port)
            await plain.aclose()
        assert len(holders) >= 2
        async with client.session.get(f"{admin}/readyz") as ready:
            assert ready.status == 200
            assert (await ready.json())["status"] == "ready"
        assert metric(client, "sidecar_redis_up") == 1
    finally:
        await events.aclose()


# After a node restart redis-py's cluster client swaps its node objects and closes the old
# ones' connections in tasks it does not keep: what is collected before those ran warns (from
# __del__), in this test or a later one. Those are redis-py's, collected here, ignored here.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_cluster_node_restart_is_ridden_out(
    cluster: RedisClusterServers, fake_api: FakeApiFactory, start_sidecar: SidecarFactory
) -> None:
    stream = f"jobs-{uuid.uuid4().hex[:6]}.events"
    client = await started(
        start_sidecar, await jobs_api(fake_api), stream, redis_url=cluster.url, budget="20s"
    )
    hub = client.app[HUB]
    assert hub is not None
    events = RedisCluster.from_url(cluster.url)
    try:
        call = asyncio.create_task(client.post("/jobs", headers={"X-Correlation-ID": "held-1"}))
        await until(lambda: hub.waiting == 1, timeout_s=10)
        node = cluster.owner_of(stream)
        await asyncio.to_thread(node.kill)  # the node holding the stream crashes
        await until(lambda: not hub.connected.is_set(), timeout_s=10)
        admin = client.app[ADMIN_URL]
        async with client.session.get(f"{admin}/readyz") as ready:
            assert ready.status == 200  # still serving, degraded: calls fall back to 202
            assert (await ready.json())["status"] == "ready (degraded)"
        await asyncio.to_thread(node.start)  # and comes back with its data (AOF)
        restarted = time.monotonic()
        await asyncio.to_thread(cluster.wait_ok)
        await asyncio.wait_for(hub.connected.wait(), 15)
        print(f"\nreader back {time.monotonic() - restarted:.2f}s after the node restarted")
        await events.xadd(stream, {"correlation_id": "held-1", "type": OK, "payload": "{}"})
        resp = await call  # the held call rode it out within its budget
        assert resp.status == 200

        async def ready_again() -> bool:  # once the next health probe (every second) answers
            async with client.session.get(f"{admin}/readyz") as ready:
                return ready.status == 200 and (await ready.json())["status"] == "ready"

        await until_true(ready_again, timeout_s=5)
    finally:
        await events.aclose()
        await client.close()
        await until(lambda: not redis_py_tasks())  # redis-py's own closing tasks have run
        gc.collect()


async def test_a_sentinel_failover_is_followed_without_a_restart(
    sentinel: SentinelSetup, fake_api: FakeApiFactory, start_sidecar: SidecarFactory
) -> None:
    stream = f"jobs-{uuid.uuid4().hex[:6]}.events"
    client = await started(
        start_sidecar,
        await jobs_api(fake_api),
        stream,
        redis_url="redis://primary/0",
        redis_sentinel={"master": SentinelSetup.MASTER, "nodes": sentinel.nodes},
    )

    async def publish(key: str, fields: dict[str, Any]) -> None:
        primary = aioredis.Redis(port=sentinel.primary_port())
        await primary.xadd(key, fields)
        await primary.aclose()

    resp = await held_then_completed(client, publish, stream, "before")
    assert resp.status == 200
    new_primary = await asyncio.to_thread(sentinel.failover)
    assert new_primary == sentinel.replica.port
    failed_over = time.monotonic()
    # The old primary answers as a primary until the sentinels demote it (~10 s): the sidecar
    # must not wait for that. A call made at once is answered from the new primary.
    resp = await held_then_completed(client, publish, stream, "after")
    assert resp.status == 200
    assert (await resp.json()) == {"c": "after"}
    # Reported (pytest -s), not asserted: the ride-through figure of the docs.
    print(f"\nfirst synchronised answer {time.monotonic() - failed_over:.2f}s after the failover")
    await until(lambda: metric(client, "sidecar_redis_up") == 1, timeout_s=10)


async def test_tls_with_a_client_certificate_and_an_acl_user(
    tls_redis: TlsRedis, fake_api: FakeApiFactory, start_sidecar: SidecarFactory
) -> None:
    stream = f"jobs-{uuid.uuid4().hex[:6]}.events"
    client = await started(
        start_sidecar,
        await jobs_api(fake_api),
        stream,
        redis_url=tls_redis.url,
        redis_username=tls_redis.user,
        redis_password_file=str(tls_redis.password_file),
        redis_tls={
            "ca_file": str(tls_redis.ca),
            "cert_file": str(tls_redis.cert),
            "key_file": str(tls_redis.key),
        },
    )
    password = tls_redis.password_file.read_text().strip()
    events = aioredis.Redis.from_url(
        tls_redis.url,
        username=tls_redis.user,
        password=password,
        ssl_ca_certs=str(tls_redis.ca),
        ssl_certfile=str(tls_redis.cert),
        ssl_keyfile=str(tls_redis.key),
    )
    try:
        resp = await held_then_completed(client, events.xadd, stream, "tls-1")
        assert resp.status == 200
        assert metric(client, "sidecar_redis_up") == 1
    finally:
        await events.aclose()
