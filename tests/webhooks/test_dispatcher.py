"""The dispatcher (sidecar/webhooks/dispatcher.py) on a real Redis, one pass (`run_once`) at a
time: completions read through one consumer group, fanned out and acknowledged in batches; an
untracked completion held for its call, then after the grace sent to the operator only; a group
Redis lost made again; malformed entries and types no route publishes acknowledged.

A fake clock stands for `time` where the grace matters; Redis is real throughout.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

import sidecar.webhooks.dispatcher as dispatcher_module
import sidecar.webhooks.handoff as handoff_module
from devtools.redis_server import RedisServer
from sidecar.config import Settings, parse_settings
from sidecar.connections import RedisConnections
from sidecar.routing import Runtime
from sidecar.tracking import CallTracker, TrackedCall
from sidecar.webhooks.attempt import create_webhook_session
from sidecar.webhooks.dispatcher import Dispatcher
from sidecar.webhooks.handoff import UNTRACKED_GRACE_S
from sidecar.webhooks.keys import dispatch_group
from sidecar.webhooks.metrics import WebhookMetrics
from sidecar.webhooks.runtime import WebhookRuntime
from sidecar.webhooks.targets import TargetPolicy

from ..helpers import drained, enqueued, keys_like, pending, until_true

DECLARED_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def dispatch_settings(redis_url: str, prefix: str, **webhooks: Any) -> Settings:
    stream = f"{prefix}:users.events"
    route = {
        "name": "create-user",
        "method": "POST",
        "path": "/api/users",
        "wait": {"stream": {"key": stream, "success": ["UserCreated"], "failure": ["Nope"]}},
        "webhook_events": {"success": "user.created", "failure": "user.failed"},
    }
    raw = {
        "redis_url": redis_url,
        "key_prefix": prefix,
        "routes": [route],
        "webhooks": {"allow_private_targets": True, **webhooks},
    }
    return parse_settings(raw, "<test>", env={})


@dataclass
class Pass:
    """A dispatcher, and what it reads from and writes to."""

    dispatcher: Dispatcher
    webhooks: WebhookRuntime
    redis: aioredis.Redis
    stream: str
    prefix: str

    @property
    def group(self) -> str:
        return dispatch_group(self.prefix)

    async def complete(self, cid: str, kind: str = "UserCreated", **fields: str) -> None:
        await self.redis.xadd(
            self.stream, {"correlation_id": cid, "type": kind, "payload": '{"n": 1}', **fields}
        )

    async def track(self, cid: str, tenant: str | None) -> None:
        await self.webhooks.tracker.record(
            TrackedCall(cid, "create-user", tenant, f"/users/{cid}", None, created_at=time.time())
        )

    async def messages(self) -> list[tuple[str, str]]:
        """(subscription, correlation id) of every message enqueued so far."""
        out = []
        for message in await enqueued(self.redis, self.prefix):
            sub = await self.webhooks.store.get(message["sub"])
            assert sub is not None
            body = message["body"]
            cid = body.split('"correlation_id":"', 1)[1].split('"', 1)[0]
            out.append((sub.description, cid))
        return sorted(out)


@contextlib.asynccontextmanager
async def dispatching(
    redis: aioredis.Redis, redis_url: str, prefix: str, **webhooks: Any
) -> AsyncIterator[Pass]:
    """A dispatcher of `prefix` (its group created, at the stream's end), not running: each
    test calls `run_once`."""
    settings = dispatch_settings(redis_url, prefix, **webhooks)
    policy = TargetPolicy.from_settings(settings.webhooks)
    session = create_webhook_session(policy, 4)
    connections = RedisConnections(settings)
    tracker = CallTracker(redis, prefix, settings.tracking_ttl)
    metrics = WebhookMetrics(CollectorRegistry())
    runtime = WebhookRuntime(settings, connections, tracker, session, policy, metrics)
    dispatcher = Dispatcher(runtime, Runtime(settings))
    await dispatcher.ensure_groups()
    await runtime.store.declare(settings.webhooks.subscriptions)
    try:
        yield Pass(dispatcher, runtime, redis, settings.stream_keys[0], prefix)
    finally:
        await session.close()
        await connections.aclose()


async def subscribe(p: Pass, owner: str, name: str) -> None:
    await p.webhooks.store.create(owner, f"http://127.0.0.1:9/{name}", ["*"], description=name)


async def xacks(redis: aioredis.Redis) -> int:
    """How many XACK commands the server has run."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_xack", {}).get("calls", 0))


class Clock:
    """The dispatcher's `time`, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_a_batch_is_fanned_out_and_acknowledged_in_few_round_trips(
    own_redis: RedisServer, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    redis = aioredis.Redis.from_url(own_redis.url)  # a server of its own: exact command counts
    try:
        async with dispatching(redis, own_redis.url, key_prefix) as p:
            await subscribe(p, "t_a", "a")
            await subscribe(p, "operator", "op")
            for n in range(5):
                await p.track(f"c-{n}", "t_a")
                await p.complete(f"c-{n}")
            await p.complete("c-other", "SomethingElse")  # no route publishes this type
            await p.redis.xadd(p.stream, {"type": "UserCreated"})  # malformed: no id
            before = await xacks(redis)
            await p.dispatcher.run_once()
            # One XACK for the entries with nothing to dispatch, one for the dispatched ones.
            assert await xacks(redis) - before == 2
            assert await drained(redis, p.stream, p.group)
            assert await p.messages() == sorted(
                (name, f"c-{n}") for n in range(5) for name in ("a", "op")
            )
            # The malformed entry is set aside on its own: recorded, counted, said once.
            [(_id, dead)] = await redis.xrange(f"{key_prefix}:wh:dead-completions")
            assert (dead[b"reason"], dead[b"detail"]) == (
                b"malformed",
                b"no 'correlation_id' field",
            )
            counted = p.webhooks.metrics.dead_completions.labels("malformed")._value.get()
            assert counted == 1
    finally:
        await redis.aclose()
    said = [r for r in caplog.records if "completion set aside" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert said[0].detail == "no 'correlation_id' field"  # type: ignore[attr-defined]


async def test_without_subscriptions_every_completion_is_simply_acknowledged(
    redis: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    async with dispatching(redis, redis_url, key_prefix) as p:
        await p.complete("untracked")  # no call to wait for: nobody would get it anyway
        await p.dispatcher.run_once()
        assert await drained(redis, p.stream, p.group)
        assert await enqueued(redis, key_prefix) == []


async def test_an_untracked_completion_waits_for_its_call(
    redis: aioredis.Redis, redis_url: str, key_prefix: str
) -> None:
    async with dispatching(redis, redis_url, key_prefix) as p:
        await subscribe(p, "t_a", "a")
        await subscribe(p, "operator", "op")
        await p.complete("early")  # beat its call's 202
        await p.dispatcher.run_once()
        assert await pending(redis, p.stream, p.group) == 1  # read, held, not acknowledged
        assert await p.messages() == []
        await p.track("early", "t_a")
        await p.dispatcher.run_once()
        assert await p.messages() == [("a", "early"), ("op", "early")]  # its tenant's too
        assert await drained(redis, p.stream, p.group)


async def test_past_the_grace_an_untracked_completion_goes_to_the_operator_only(
    redis: aioredis.Redis, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(dispatcher_module, "time", clock)
    monkeypatch.setattr(handoff_module, "time", clock)  # where completions are held
    async with dispatching(redis, redis_url, key_prefix) as p:
        await subscribe(p, "t_a", "a")
        await subscribe(p, "operator", "op")
        await p.complete("never-tracked")
        await p.dispatcher.run_once()
        clock.now += UNTRACKED_GRACE_S - 0.5
        await p.dispatcher.run_once()
        assert await pending(redis, p.stream, p.group) == 1  # still within the grace
        clock.now += 1
        await p.dispatcher.run_once()
        assert await p.messages() == [("op", "never-tracked")]  # whose it was is unknown
        assert await drained(redis, p.stream, p.group)


async def test_a_group_redis_lost_is_made_again_and_declared_subscriptions_rewritten(
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sidecar.webhooks.dispatcher")
    declared = {"id": "ops-audit", "url": "http://127.0.0.1:9/audit", "secret": DECLARED_SECRET}
    async with dispatching(redis, redis_url, key_prefix, subscriptions=[declared]) as p:
        assert await p.webhooks.store.get("ops-audit") is not None
        # Redis loses everything (a restart without persistence): the stream, its group,
        # the subscriptions.
        await redis.delete(p.stream, *await keys_like(redis, f"{key_prefix}:wh:*"))
        await p.track("after-restart", None)
        await p.complete("after-restart")  # a new stream, without the group
        await p.dispatcher.run_once()
        said = [r.getMessage() for r in caplog.records]
        assert "dispatcher group missing (Redis restarted?); recreating" in said
        assert [g["name"].decode() for g in await redis.xinfo_groups(p.stream)] == [p.group]
        declared_again = await p.webhooks.store.get("ops-audit")
        assert declared_again is not None and declared_again.declared
        # Made at the stream's start: the completion written meanwhile is not lost.
        await p.dispatcher.run_once()
        assert await drained(redis, p.stream, p.group)
        [message] = await enqueued(redis, key_prefix)
        assert message["sub"] == "ops-audit"


async def test_a_dead_replicas_pending_completion_is_claimed(
    redis: aioredis.Redis, redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatcher_module, "CLAIM_IDLE_S", 0.2)
    async with dispatching(redis, redis_url, key_prefix) as p:
        await subscribe(p, "operator", "op")
        await p.track("orphan", None)
        await p.complete("orphan")
        # Another replica read it, and died before acknowledging it.
        await redis.xreadgroup(p.group, "dead-replica", {p.stream: ">"}, count=10)

        async def idle() -> bool:
            [entry] = await redis.xpending_range(p.stream, p.group, "-", "+", 1)
            return int(entry["time_since_delivered"]) >= 200

        await until_true(idle, timeout_s=5, every_s=0.05)
        await p.dispatcher.run_once()
        assert await p.messages() == [("op", "orphan")]
        assert await drained(redis, p.stream, p.group)
