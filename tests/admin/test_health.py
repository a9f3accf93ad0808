"""The admin listener's own endpoints (sidecar/admin/health.py): liveness, readiness (with and
without Redis required) and the Prometheus metrics, on a sidecar that served calls."""

from __future__ import annotations

import asyncio
from typing import Any

from devtools.redis_server import RedisServer
from sidecar.state import ADMIN_URL

from ..conftest import FakeApiFactory, SidecarFactory
from ..helpers import metric, until, until_true
from ..streams import StreamEnv, StreamEnvFactory


async def test_route_label_in_metrics_and_admin_endpoints(
    fake_api: FakeApiFactory, start_sidecar: SidecarFactory
) -> None:
    upstream = await fake_api()  # answers these GETs 200
    client = await start_sidecar(
        upstream, routes=[{"name": "things", "method": "GET", "path": "/things/{id}"}]
    )
    assert (await client.get("/things/42")).status == 200
    assert (await client.get("/other")).status == 200
    admin = client.app[ADMIN_URL]
    async with client.session.get(f"{admin}/healthz") as resp:
        assert resp.status == 200
    async with client.session.get(f"{admin}/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ready"
    async with client.session.get(f"{admin}/metrics") as resp:
        text = await resp.text()
    assert (
        'sidecar_requests_total{outcome="passthrough",route="things",status_class="2xx"} 1.0'
        in text
    )
    assert 'sidecar_requests_total{outcome="passthrough",route="-",status_class="2xx"} 1.0' in text
    assert "sidecar_build_info" in text


async def test_readiness_can_leave_redis_out(
    stream_env: StreamEnvFactory, own_redis: RedisServer
) -> None:
    env = await stream_env(url=own_redis.url, readiness={"require_redis": False})
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 0)
    admin = env.client.app[ADMIN_URL]
    async with env.client.session.get(f"{admin}/readyz") as ready:
        assert ready.status == 200  # calls still go through, falling back to 202
        body = await ready.json()
    assert body["status"] == "ready (degraded)"
    assert any(k.startswith("redis ") for k in body["reasons"])


async def readyz(env: StreamEnv) -> tuple[int, dict[str, Any]]:
    async with env.client.session.get(f"{env.client.app[ADMIN_URL]}/readyz") as resp:
        return resp.status, await resp.json()


OUTAGE_S = 4.0  # long enough for reconnect attempts to have backed off past a second


async def test_by_default_a_redis_outage_leaves_the_replica_ready_degraded_and_ready_again_at_once(
    stream_env: StreamEnvFactory, own_redis: RedisServer
) -> None:
    env = await stream_env(url=own_redis.url)  # readiness as configured by default
    assert await readyz(env) == (200, {"status": "ready", "reasons": {}})
    assert metric(env.client, "sidecar_readiness", state="ready") == 1

    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 0)
    status, body = await readyz(env)
    assert status == 200  # still serving: pass-through, synchronised calls falling back to 202
    assert body["status"] == "ready (degraded)"
    assert any(k.startswith("redis ") for k in body["reasons"])
    assert "stream_reader" in body["reasons"]
    assert metric(env.client, "sidecar_readiness", state="degraded") == 1
    assert metric(env.client, "sidecar_readiness", state="ready") == 0
    resp = await env.client.post("/api/users", json={}, headers={"Prefer": "respond-async"})
    assert resp.status == 202

    await asyncio.sleep(OUTAGE_S)  # the outage itself, not a wait for the code under test
    await asyncio.to_thread(own_redis.start)

    async def ready() -> bool:
        return (await readyz(env))[1]["status"] == "ready"

    await until_true(ready, timeout_s=1.0, what="ready within a second of Redis answering")
    assert metric(env.client, "sidecar_readiness", state="ready") == 1


async def test_readiness_can_require_redis(
    stream_env: StreamEnvFactory, own_redis: RedisServer
) -> None:
    env = await stream_env(url=own_redis.url, readiness={"require_redis": True})
    await asyncio.to_thread(own_redis.stop)
    await until(lambda: metric(env.client, "sidecar_redis_up") == 0)
    status, body = await readyz(env)
    assert status == 503
    assert body["status"] == "not ready"
    assert metric(env.client, "sidecar_readiness", state="not_ready") == 1
