"""Replicas on a broker source: real `sidecar run` processes sharing one Redis, one broker and
one webhook receiver (the same parts as tests/replicas/, with the completions on a broker).

1. Two replicas: every call is answered by the replica that holds it, and each completion
   reaches the operator's subscription exactly once (the broker's shared read gives each
   completion to one replica).
2. A replica SIGKILLed while it holds completions it read but had not handed to the outbox
   (they wait for their calls' records, which never come: nobody made these calls) loses none:
   the broker gives them to the other replica (AMQP: requeued at once; NATS: after ack_wait;
   Kafka: the group rebalances after the session timeout), which delivers each once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from ..processes import SidecarProcess, StartProcess, base_config
from ..replicas.support import Receiver, kill, metric_total
from .support import OK, SECRET, SOURCE, Broker, audit_subscription, orders_api, route

TOKEN = "operator-token-for-source-replicas"
READY_TIMEOUT_S = 30.0


def replica_config(
    broker: Broker, api_url: str, redis_url: str, prefix: str, receiver: Receiver
) -> dict[str, Any]:
    return base_config(
        api_url,
        [route(broker, budget="15s")],
        redis_url=redis_url,
        key_prefix=prefix,
        admin_token=TOKEN,
        sources={SOURCE: broker.source()},
        webhooks={"allow_private_targets": True, "subscriptions": [audit_subscription(receiver)]},
    )


async def ready(http: aiohttp.ClientSession, sidecar: SidecarProcess) -> None:
    """`/readyz` answers "ready" (not degraded): Redis answers and every read of the source is
    connected (for Kafka, the group has placed this replica)."""
    async with asyncio.timeout(READY_TIMEOUT_S):
        while True:
            async with http.get(f"{sidecar.admin_url}/readyz") as resp:
                if resp.status == 200 and (await resp.json())["status"] == "ready":
                    return
            await asyncio.sleep(0.05)


async def start_replicas(
    start: StartProcess, http: aiohttp.ClientSession, config: Callable[[], dict[str, Any]]
) -> list[SidecarProcess]:
    """Start two replicas (each config on ports of its own), one after the other: each is
    ready (for Kafka, placed in the group) before the next starts."""
    started = []
    for _ in range(2):
        sidecar = await start(config())
        await ready(http, sidecar)
        started.append(sidecar)
    return started


def check_once(receiver: Receiver, expected: dict[str, Any]) -> None:
    """One delivery per expected correlation id, none twice, each with its own data."""
    delivered = receiver.delivered("audit")
    twice = [i for i, n in Counter(h.webhook_id for h in delivered).items() if n > 1]
    assert twice == []
    payloads = {h.payload(SECRET)["correlation_id"]: h.payload(SECRET) for h in delivered}
    assert sorted(payloads) == sorted(expected)
    for cid, data in expected.items():
        assert payloads[cid]["data"] == data


async def two_replicas_one_webhook_per_completion(
    broker: Broker,
    start: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    api_url: str,
    redis_url: str,
    prefix: str,
) -> None:
    sidecars = await start_replicas(
        start, http, lambda: replica_config(broker, api_url, redis_url, prefix, receiver)
    )
    calls = 12

    async def order(n: int) -> tuple[str, int, Any]:
        sidecar = sidecars[n % 2]
        cid = f"o-{n}-{uuid.uuid4().hex[:6]}"
        async with http.post(
            f"{sidecar.proxy_url}/orders", json={"n": n}, headers={"X-Correlation-ID": cid}
        ) as resp:
            return cid, resp.status, orjson.loads(await resp.read())

    answers = await asyncio.gather(*(order(n) for n in range(calls)))
    for cid, status, body in answers:
        assert status == 200, body
        assert body == {"order": cid}
    expected = {cid: {"order": cid} for cid, _, _ in answers}
    await receiver.wait_for(lambda: len(receiver.delivered("audit")) >= calls, timeout_s=30.0)
    check_once(receiver, expected)


async def replica_killed_loses_no_webhook(
    broker: Broker,
    start: StartProcess,
    http: aiohttp.ClientSession,
    receiver: Receiver,
    api_url: str,
    redis_url: str,
    prefix: str,
) -> None:
    sidecars = await start_replicas(
        start, http, lambda: replica_config(broker, api_url, redis_url, prefix, receiver)
    )
    count = 12
    expected = {f"untracked-{n}-{uuid.uuid4().hex[:6]}": {"n": n} for n in range(count)}
    for cid, data in expected.items():
        await broker.publish(cid, OK, data)

    async def held() -> list[float]:
        return [
            await metric_total(http, s, "sidecar_webhook_completions_held", source=SOURCE)
            for s in sidecars
        ]

    async with asyncio.timeout(20.0):
        # Every completion read by one replica or the other, each holding some of them.
        while sum(counts := await held()) < count or min(counts) == 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    victim = sidecars[0]
    await kill(victim)
    await receiver.wait_for(lambda: len(receiver.delivered("audit")) >= count, timeout_s=40.0)
    check_once(receiver, expected)


def api_app(broker: Broker) -> Any:
    """The orders API whose backend publishes each completion before its 202 leaves."""
    hooks: dict[str, Any] = {}

    async def publish_first(cid: str) -> None:
        await broker.publish(cid, OK, {"order": cid})

    hooks["before_202"] = publish_first
    return orders_api(hooks)
