"""Webhook delivery under faults: real `sidecar run` processes, a real Redis, real receivers.

- a worker process SIGKILLed while a message waits for its retry, or while its attempt is in
  flight, then a new process on the same prefix: the message still arrives, with the same
  `webhook-id`, the same bytes and a valid signature, and only once;
- two processes on one Redis: every completion reaches every subscription exactly once;
- Redis restarted (its data lost): delivery resumes once the subscription is created again;
- a receiver that hangs does not hold back another subscription's deliveries;
- a backlog longer than the outbox bound is delivered whole.

What is asserted is what a receiver sees. Waits are bounded and await the receiver's state, the
process's log lines, or Redis becoming quiet (nothing read but unacknowledged, nothing unread,
nothing scheduled), after which no further attempt can happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from devtools.redis_server import RedisServer
from sidecar.tracking import CallTracker, TrackedCall
from sidecar.webhooks import WEBHOOKS
from sidecar.webhooks.keys import dispatch_group
from sidecar.webhooks.store import SubscriptionStore

from ..helpers import deliveries_settled, drained, until, until_true
from ..processes import SidecarProcess, StartProcess, base_config, sidecar_processes

TOKEN = "operator-token-for-fault-tests"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
HOLD_CAP_S = 20.0  # the longest a receiver holds a request nobody releases
SUCCESS, FAILURE = "user.created", "user.creation_failed"


def route(stream: str) -> dict[str, Any]:
    return {
        "name": "create-user",
        "method": "POST",
        "path": "/api/users",
        "wait": {"stream": {"key": stream, "success": ["UserCreated"], "failure": ["Nope"]}},
        "webhook_events": {"success": SUCCESS, "failure": FAILURE},
    }


# --------------------------------------------------------------------------------------------
# The receiver
# --------------------------------------------------------------------------------------------


@dataclass
class Hit:
    """One request a webhook endpoint received, and what it answered (None: not yet)."""

    name: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Receiver:
    """Webhook endpoints `/hook/{name}`, each answering by its mode: ok (200), fail (500), or
    hang (held until `release`, then 200). Also answers the sidecar's upstream `/ping`."""

    modes: dict[str, str] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    server: TestServer | None = None

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    def app(self) -> web.Application:
        async def hook(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            hit = Hit(name, dict(request.headers), await request.read())
            self.hits.append(hit)
            self.in_flight[name] += 1
            self.max_in_flight[name] = max(self.max_in_flight[name], self.in_flight[name])
            try:
                mode = self.modes.get(name, "ok")
                if mode == "hang":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.release.wait(), HOLD_CAP_S)
                hit.status = 500 if mode == "fail" else 200
                return web.Response(status=hit.status)
            finally:
                self.in_flight[name] -= 1

        async def pong(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        app = web.Application()
        app.router.add_post("/hook/{name}", hook)
        app.router.add_get("/ping", pong)
        return app

    def of(self, name: str) -> list[Hit]:
        return [h for h in self.hits if h.name == name]

    def delivered(self, name: str) -> list[Hit]:
        return [h for h in self.of(name) if h.delivered]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> AsyncIterator[Receiver]:
    fake = Receiver()
    fake.server = await aiohttp_server(fake.app())
    yield fake
    fake.release.set()  # held requests answer, so the server closes at once


# --------------------------------------------------------------------------------------------
# Sidecar processes, Redis helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def run_sidecar(
    tmp_path: Path, http: aiohttp.ClientSession, redis: aioredis.Redis
) -> AsyncIterator[StartProcess]:
    """Start `sidecar run` processes; killed at teardown, before the `redis` fixture deletes the
    test's keys (a live process would create some again)."""
    async with sidecar_processes(tmp_path, http) as start:
        yield start


def process_config(
    receiver: Receiver, redis_url: str, prefix: str, stream: str, **webhooks: Any
) -> dict[str, Any]:
    return base_config(
        receiver.url("").rstrip("/"),
        [route(stream)],
        redis_url=redis_url,
        key_prefix=prefix,
        admin_token=TOKEN,
        webhooks={"allow_private_targets": True, **webhooks},
    )


async def kill(sidecar: SidecarProcess) -> None:
    """SIGKILL: no cleanup runs, nothing is acknowledged or handed back."""
    sidecar.send(signal.SIGKILL)
    assert await sidecar.wait_exit(5.0) == -signal.SIGKILL


async def subscribe(
    http: aiohttp.ClientSession, admin_url: str, url: str, events: list[str]
) -> dict[str, Any]:
    """An operator-owned subscription through the admin API: its view, with the secret."""
    async with http.post(
        f"{admin_url}/admin/api/subscriptions",
        json={"url": url, "events": events},
        headers=OPERATOR,
    ) as resp:
        assert resp.status == 201, await resp.text()
        sub: dict[str, Any] = await resp.json()
        return sub


async def attempts(http: aiohttp.ClientSession, admin_url: str, sub_id: str) -> list[Any]:
    """The subscription's attempts log, newest first, as the portal shows it."""
    url = f"{admin_url}/admin/api/subscriptions/{sub_id}/attempts"
    async with http.get(url, headers=OPERATOR) as resp:
        assert resp.status == 200, await resp.text()
        log: list[Any] = (await resp.json())["attempts"]
        return log


async def dispatched(redis: aioredis.Redis, prefix: str, stream: str) -> None:
    """Every completion on `stream` has been read and acknowledged by the dispatcher."""
    await until_true(lambda: drained(redis, stream, dispatch_group(prefix)))


async def quiet(redis: aioredis.Redis, prefix: str, stream: str, timeout_s: float = 10.0) -> None:
    """Nothing left to do: every completion dispatched, every outbox attempt read and
    acknowledged, no retry scheduled. No further webhook can be sent after this."""

    async def settled() -> bool:
        return await drained(redis, stream, dispatch_group(prefix)) and await deliveries_settled(
            redis, prefix
        )

    await until_true(settled, timeout_s)


async def complete(redis: aioredis.Redis, prefix: str, stream: str, cid: str) -> None:
    """A tracked call's success event, as the upstream's worker would publish it."""
    await CallTracker(redis, prefix, 600).record(
        TrackedCall(cid, "create-user", None, f"/api/users/{cid}", None, created_at=time.time())
    )
    await redis.xadd(
        stream,
        {"correlation_id": cid, "type": "UserCreated", "payload": orjson.dumps({"id": cid})},
    )


def attempt_logged(result: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: line.get("message") == "webhook attempt" and line.get("result") == result


def verify(secret: str, hit: Hit) -> dict[str, Any]:
    """The Standard Webhooks check a receiver makes; the verified payload."""
    payload: dict[str, Any] = Webhook(secret).verify(hit.body, hit.headers)
    return payload


# --------------------------------------------------------------------------------------------
# 1. SIGKILL, then a new process on the same prefix
# --------------------------------------------------------------------------------------------


async def test_killed_while_a_retry_is_scheduled_a_new_process_delivers_it(
    receiver: Receiver,
    run_sidecar: StartProcess,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    stream = f"{key_prefix}:users.events"
    config = process_config(
        receiver, redis_url, key_prefix, stream, schedule=["500ms", "500ms", "500ms"], timeout="1s"
    )
    receiver.modes["a"] = "fail"
    first = await run_sidecar(config)
    sub = await subscribe(http, first.admin_url, receiver.url("/hook/a"), [SUCCESS])

    await complete(redis, key_prefix, stream, "c-kill-1")
    await first.wait_log(attempt_logged("retry"))
    await kill(first)  # the next attempt is ~500 ms away: it is waiting in the schedule
    failed = receiver.of("a")
    assert failed and all(h.status == 500 for h in failed)
    webhook_id = failed[0].webhook_id
    assert {h.webhook_id for h in failed} == {webhook_id}

    receiver.modes["a"] = "ok"
    second = await run_sidecar(config)  # same prefix, same Redis
    await until(lambda: bool(receiver.delivered("a")), timeout_s=10)
    await quiet(redis, key_prefix, stream)

    [ok] = receiver.delivered("a")  # once, however many attempts failed before
    assert ok.webhook_id == webhook_id
    assert ok.body == failed[0].body
    payload = verify(sub["secret"], ok)
    assert payload["type"] == SUCCESS
    assert payload["correlation_id"] == "c-kill-1"
    assert payload["data"] == {"id": "c-kill-1"}
    assert int(ok.headers["webhook-timestamp"]) >= int(failed[0].headers["webhook-timestamp"])
    log = await attempts(http, second.admin_url, sub["id"])
    assert log[0]["result"] == "delivered"
    assert log[0]["message_id"] == webhook_id
    assert log[0]["attempt"] == len(failed) + 1


async def test_killed_mid_attempt_the_abandoned_attempt_is_claimed_and_delivered(
    receiver: Receiver,
    run_sidecar: StartProcess,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    stream = f"{key_prefix}:users.events"
    # timeout 1s, claim_after 2s: an attempt read but never acknowledged is claimed after 2s.
    config = process_config(
        receiver,
        redis_url,
        key_prefix,
        stream,
        schedule=["200ms", "200ms"],
        timeout="1s",
        claim_after="2s",
    )
    receiver.modes["a"] = "hang"
    first = await run_sidecar(config)
    sub = await subscribe(http, first.admin_url, receiver.url("/hook/a"), [SUCCESS])

    await complete(redis, key_prefix, stream, "c-kill-2")
    await until(lambda: bool(receiver.of("a")))
    await kill(first)  # while the receiver still holds the request
    [held] = receiver.of("a")
    assert held.status is None

    receiver.modes["a"] = "ok"
    second = await run_sidecar(config)
    await second.wait_log(lambda line: line.get("message") == "claimed an abandoned attempt")
    await until(lambda: bool(receiver.delivered("a")), timeout_s=10)
    await quiet(redis, key_prefix, stream)

    [ok] = receiver.delivered("a")
    assert ok.webhook_id == held.webhook_id
    assert ok.body == held.body
    payload = verify(sub["secret"], ok)
    assert payload["correlation_id"] == "c-kill-2"
    assert len(receiver.of("a")) == 2  # the held attempt, then the claimed one: no duplicate
    log = await attempts(http, second.admin_url, sub["id"])
    assert [(a["message_id"], a["result"]) for a in log] == [(held.webhook_id, "delivered")]


# --------------------------------------------------------------------------------------------
# 2. Two processes on one Redis
# --------------------------------------------------------------------------------------------


async def test_two_processes_deliver_each_completion_once_to_each_subscription(
    receiver: Receiver,
    run_sidecar: StartProcess,
    http: aiohttp.ClientSession,
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
) -> None:
    stream = f"{key_prefix}:users.events"
    count = 50

    def config() -> dict[str, Any]:  # its own ports each time
        return process_config(
            receiver, redis_url, key_prefix, stream, schedule=["200ms"], timeout="2s"
        )

    one, two = await asyncio.gather(run_sidecar(config()), run_sidecar(config()))
    sub_a = await subscribe(http, one.admin_url, receiver.url("/hook/a"), [SUCCESS])
    sub_b = await subscribe(http, two.admin_url, receiver.url("/hook/b"), ["*"])

    cids = [f"c-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(count)]
    for cid in cids:
        await complete(redis, key_prefix, stream, cid)
    await until(
        lambda: len(receiver.delivered("a")) >= count and len(receiver.delivered("b")) >= count,
        timeout_s=15,
    )
    await quiet(redis, key_prefix, stream)

    assert one.proc.returncode is None and two.proc.returncode is None
    for name, sub in (("a", sub_a), ("b", sub_b)):
        hits = receiver.of(name)
        assert len(hits) == count, f"{name}: {len(hits)} requests for {count} completions"
        assert all(h.delivered for h in hits)
        assert len({h.webhook_id for h in hits}) == count
        assert sorted(verify(sub["secret"], h)["correlation_id"] for h in hits) == sorted(cids)
    ids_a = {h.webhook_id for h in receiver.of("a")}
    ids_b = {h.webhook_id for h in receiver.of("b")}
    assert not ids_a & ids_b  # one message per (completion, subscription)


# --------------------------------------------------------------------------------------------
# 3. Redis restarts (and loses everything)
# --------------------------------------------------------------------------------------------


DECLARED = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_delivery_resumes_after_a_redis_restart(
    receiver: Receiver,
    own_redis: RedisServer,
    start_sidecar: Any,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = f"{key_prefix}:users.events"
    client: TestClient[web.Request, web.Application] = await start_sidecar(
        receiver.url("").rstrip("/"),
        redis_url=own_redis.url,
        key_prefix=key_prefix,
        routes=[route(stream)],
        webhooks={
            "allow_private_targets": True,
            "schedule": ["200ms"],
            "timeout": "1s",
            "subscriptions": [
                {"id": "declared", "url": receiver.url("/hook/b"), "secret": DECLARED}
            ],
        },
    )
    store = client.app[WEBHOOKS].store
    redis: aioredis.Redis = aioredis.Redis.from_url(own_redis.url)
    try:
        before = await store.create("operator", receiver.url("/hook/a"), [SUCCESS])
        await complete(redis, key_prefix, stream, "c-before")
        await until(lambda: len(receiver.delivered("a")) == len(receiver.delivered("b")) == 1)
        assert verify(before.secret, receiver.delivered("a")[0])["correlation_id"] == "c-before"
    finally:
        await redis.aclose()

    # Redis goes away (nothing is persisted: streams, groups, subscriptions are lost) until
    # both the outbox reader and the dispatcher have failed on it, then comes back.
    await asyncio.to_thread(own_redis.stop)

    def failed(loop: str) -> bool:
        return any(
            r.getMessage().startswith("webhook loop: Redis fault")
            and getattr(r, "loop", None) == loop
            for r in caplog.records
        )

    await until(lambda: failed("delivery-read") and failed("dispatcher"), timeout_s=10)
    await asyncio.to_thread(own_redis.start)

    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        assert await store.get(before.id) is None  # lost with everything else
        after = await store.create("operator", receiver.url("/hook/a"), [SUCCESS])
        await complete(redis, key_prefix, stream, "c-after")
        await until(lambda: len(receiver.delivered("a")) == 2, timeout_s=15)
        # The YAML-declared subscription was written again once the sidecar saw Redis empty.
        await until(lambda: len(receiver.delivered("b")) == 2, timeout_s=15)
        await quiet(redis, key_prefix, stream)
    finally:
        await redis.aclose()

    assert len(receiver.of("a")) == 2
    payload = verify(after.secret, receiver.delivered("a")[1])
    assert payload["correlation_id"] == "c-after"
    assert payload["type"] == SUCCESS
    assert verify(DECLARED, receiver.delivered("b")[1])["correlation_id"] == "c-after"


# --------------------------------------------------------------------------------------------
# 4. A slow receiver does not starve another
# --------------------------------------------------------------------------------------------


async def test_a_hanging_receiver_does_not_hold_back_another_subscription(
    receiver: Receiver,
    redis: aioredis.Redis,
    redis_url: str,
    start_sidecar: Any,
    key_prefix: str,
) -> None:
    stream = f"{key_prefix}:users.events"
    per_subscription, count = 2, 8
    client: TestClient[web.Request, web.Application] = await start_sidecar(
        receiver.url("").rstrip("/"),
        redis_url=redis_url,
        key_prefix=key_prefix,
        routes=[route(stream)],
        webhooks={
            "allow_private_targets": True,
            "schedule": ["200ms"],
            "timeout": "10s",
            "concurrency": 4,
            "per_subscription": per_subscription,
        },
    )
    store = client.app[WEBHOOKS].store
    slow = await store.create("operator", receiver.url("/hook/slow"), [SUCCESS])
    fast = await store.create("operator", receiver.url("/hook/fast"), [SUCCESS])
    receiver.modes["slow"] = "hang"

    for i in range(count):
        await complete(redis, key_prefix, stream, f"c-{i}")
    await until(
        lambda: (
            len(receiver.delivered("fast")) == count
            and receiver.in_flight["slow"] == per_subscription
        ),
        timeout_s=5,
    )

    # Every fast delivery arrived while the slow receiver held its attempts, and no more of
    # them than the per-subscription bound reached it.
    assert len(receiver.of("slow")) == per_subscription
    assert receiver.in_flight["slow"] == per_subscription
    assert not receiver.delivered("slow")

    receiver.release.set()
    await until(lambda: len(receiver.delivered("slow")) == count, timeout_s=5)
    await quiet(redis, key_prefix, stream)
    assert receiver.max_in_flight["slow"] == per_subscription
    for name, sub in (("slow", slow), ("fast", fast)):
        hits = receiver.of(name)
        assert len(hits) == count
        assert sorted(verify(sub.secret, h)["correlation_id"] for h in hits) == sorted(
            f"c-{i}" for i in range(count)
        )


# --------------------------------------------------------------------------------------------
# 5. A backlog longer than the outbox bound
# --------------------------------------------------------------------------------------------


async def test_a_backlog_longer_than_the_outbox_bound_is_still_delivered(
    receiver: Receiver,
    redis: aioredis.Redis,
    redis_url: str,
    start_sidecar: Any,
    key_prefix: str,
) -> None:
    stream = f"{key_prefix}:users.events"
    count = 300
    await start_sidecar(
        receiver.url("").rstrip("/"),
        redis_url=redis_url,
        key_prefix=key_prefix,
        routes=[route(stream)],
        webhooks={
            "allow_private_targets": True,
            "schedule": ["200ms"],
            "timeout": "10s",
            "concurrency": 1,
            "per_subscription": 1,
            "outbox_maxlen": 100,
        },
    )
    # The receiver stalls while completions keep coming: the backlog outgrows the outbox bound.
    # (Trimming it with a plain MAXLEN once dropped the attempts nobody had read yet.)
    receiver.modes["a"] = "hang"
    await SubscriptionStore(redis, key_prefix).create(
        "operator", receiver.url("/hook/a"), [SUCCESS]
    )
    for i in range(count):
        await complete(redis, key_prefix, stream, f"c-{i:03d}")
    await until(lambda: receiver.in_flight["a"] == 1)
    await dispatched(redis, key_prefix, stream)

    receiver.release.set()
    await quiet(redis, key_prefix, stream, timeout_s=15)
    assert len({h.webhook_id for h in receiver.delivered("a")}) == count
