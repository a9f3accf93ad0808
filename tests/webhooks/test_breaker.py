"""Each endpoint's circuit breaker (sidecar/webhooks/breaker.py): a receiver that fails and
hangs now and then keeps its throughput, one that is down waits without burning its messages'
attempts and gets them all once it recovers, and the breaker's changes are counted and logged."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.config import Webhooks
from sidecar.metrics import METRICS
from sidecar.webhooks import WEBHOOKS
from sidecar.webhooks.breaker import Breakers
from sidecar.webhooks.outbox import Message

from ..admin_support import OP, StartAdmin
from ..conftest import FakeApiFactory, SidecarFactory
from ..helpers import until


@dataclass
class Receivers:
    """`/flaky/*` answers by its request count: every 10th hangs until released, every 5th
    answers 500, the others 204; `/down/*` answers 500 until `up` is set, then 204; `/fast/*`
    answers 204 at once. Every message id a 2xx answered is kept, per receiver."""

    server: TestServer
    up: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, set[str]] = field(default_factory=dict)
    hanging: int = 0

    def url(self, kind: str, name: str) -> str:
        return str(self.server.make_url(f"/{kind}/{name}"))

    def got(self, name: str) -> int:
        return len(self.delivered.get(name, ()))


@pytest.fixture
async def receivers(aiohttp_server: Any) -> AsyncIterator[Receivers]:
    box: list[Receivers] = []

    async def hook(request: web.Request) -> web.Response:
        rec = box[0]
        kind, name = request.match_info["kind"], request.match_info["name"]
        await request.read()
        n = rec.requests[name] = rec.requests.get(name, 0) + 1
        if kind == "flaky" and n % 10 == 0:
            rec.hanging += 1
            try:
                await rec.release.wait()
            finally:
                rec.hanging -= 1
        elif (kind == "flaky" and n % 5 == 0) or (kind == "down" and not rec.up.is_set()):
            return web.Response(status=500)
        rec.delivered.setdefault(name, set()).add(request.headers["webhook-id"])
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{kind}/{name}", hook)
    box.append(Receivers(await aiohttp_server(app)))
    yield box[0]
    box[0].release.set()


Start = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def start(
    fake_api: FakeApiFactory, start_sidecar: SidecarFactory, redis_url: str, key_prefix: str
) -> Start:
    async def go(**webhooks: Any) -> TestClient:
        return await start_sidecar(
            await fake_api(accept="POST /jobs", location="/jobs/{cid}", accepted={}),
            redis_url=redis_url,
            key_prefix=key_prefix,
            webhooks={"allow_private_targets": True, **webhooks},
        )

    return go


async def send(client: TestClient, owner: str, sub_id: str, tag: str, count: int) -> set[str]:
    """`count` messages for the subscription, enqueued as fan-out would; their ids."""
    now = int(time.time() * 1000)
    messages = [
        Message(f"msg_{tag}{n:05d}", owner, sub_id, "job.done", b"{}", now) for n in range(count)
    ]
    await client.app[WEBHOOKS].outbox.enqueue_many(messages)
    return {m.message_id for m in messages}


async def test_a_receiver_that_fails_and_hangs_now_and_then_keeps_its_throughput(
    start: Start, receivers: Receivers
) -> None:
    # The attempt timeout is far away: a hang holds its attempt until the receiver is released.
    client = await start(timeout="60s", schedule=["100ms"] * 5, concurrency=8)
    store = client.app[WEBHOOKS].store
    flaky = await store.create("t_a", receivers.url("flaky", "flaky"), ["*"])
    same_tenant = await store.create("t_a", receivers.url("fast", "same"), ["*"])
    other_tenant = await store.create("t_b", receivers.url("fast", "other"), ["*"])
    count = 40
    flaky_ids = await send(client, "t_a", flaky.id, "f", count)
    await send(client, "t_a", same_tenant.id, "s", count)
    await send(client, "t_b", other_tenant.id, "o", count)
    # Every message the flaky receiver did not leave hanging arrives while its hangs still
    # hold their attempts (its 500s are retried); the healthy receivers get all of theirs.
    await until(
        lambda: receivers.got("same") == count and receivers.got("other") == count,
        timeout_s=10,
        what=lambda: f"healthy receivers got {receivers.delivered.keys()}",
    )
    await until(
        lambda: receivers.got("flaky") + receivers.hanging == count and receivers.hanging > 0,
        timeout_s=10,
        what=lambda: f"flaky got {receivers.got('flaky')}, {receivers.hanging} hanging",
    )
    receivers.release.set()
    await until(lambda: receivers.got("flaky") == count, timeout_s=10)
    assert receivers.delivered["flaky"] == flaky_ids  # nothing lost


async def test_a_receiver_that_is_down_gets_every_message_once_it_recovers(
    start_admin: StartAdmin, receivers: Receivers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sidecar.webhooks.breaker")
    # Five retries 50 ms apart: without a breaker every message would be dead within a second.
    admin = await start_admin(
        webhooks={
            "allow_private_targets": True,
            "schedule": ["50ms"] * 5,
            "breaker": {"failures": 3, "open_for": ["300ms", "600ms"]},
        }
    )
    registry = admin.app[METRICS].registry

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    def opened() -> float:
        return sample("sidecar_webhook_breaker_transitions_total", to="open")

    runtime = admin.app[WEBHOOKS]
    down = await runtime.store.create("t_a", receivers.url("down", "down"), ["*"])
    now = int(time.time() * 1000)
    ids = {f"msg_d{n:05d}" for n in range(20)}
    await runtime.outbox.enqueue_many(
        [Message(mid, "t_a", down.id, "job.done", b"{}", now) for mid in sorted(ids)]
    )
    await until(lambda: sample("sidecar_webhook_breakers_open") == 1, timeout_s=5)
    assert opened() == 1
    stats = await admin.call("GET", f"/subscriptions/{down.id}/stats", OP)
    assert stats.body["breaker"] in ("open", "half_open")
    # Open, then one probe per half-open: its messages wait; few attempts were made. (Without
    # the breaker, every message had made its six attempts and was dead in about 1.5 s.)
    await until(lambda: opened() >= 4, timeout_s=5)
    made = receivers.requests["down"]
    assert made <= 3 + 4 + 3, made  # the failures that opened it, those in flight, the probes
    assert sample("sidecar_webhook_dead_letters_total") == 0
    receivers.up.set()
    await until(lambda: receivers.got("down") == 20, timeout_s=10)
    assert receivers.delivered["down"] == ids
    assert sample("sidecar_webhook_breakers_open") == 0
    assert sample("sidecar_webhook_breaker_transitions_total", to="closed") == 1
    stats = await admin.call("GET", f"/subscriptions/{down.id}/stats", OP)
    assert stats.body["breaker"] == "closed"
    lines = [r for r in caplog.records if r.name == "sidecar.webhooks.breaker"]
    assert [r.getMessage() for r in lines][:3] == [
        "webhook endpoint breaker open",
        "webhook endpoint breaker half-open",
        "webhook endpoint breaker open",
    ]
    assert lines[-1].getMessage() == "webhook endpoint breaker closed"
    assert all(getattr(r, "sub", None) == down.id for r in lines)


# --- the state machine alone -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breakers(clock: Clock, **breaker: Any) -> Breakers:
    config = Webhooks(per_subscription=4, breaker={"failures": 3, "window": "10s", **breaker})
    return Breakers(config, clock=clock)


def test_failures_in_a_row_open_it_and_a_delivered_probe_closes_it() -> None:
    clock = Clock()
    b = breakers(clock, open_for=["5s", "30s"])
    b.record("s", "o", delivered=False, failed=True)
    b.record("s", "o", delivered=False, failed=False)  # a 4xx: neither
    b.record("s", "o", delivered=False, failed=True)
    assert (b.state("s"), b.cap("s")) == ("closed", 4)
    b.hung("s", "o")  # a hang is a failure
    assert (b.state("s"), b.cap("s"), b.open_until("s")) == ("open", 0, 5.0)
    clock.now += 5
    assert (b.state("s"), b.cap("s")) == ("half_open", 1)
    b.record("s", "o", delivered=False, failed=True)  # the probe failed: the next delay
    assert (b.state("s"), b.open_until("s")) == ("open", 30.0)
    clock.now += 30
    b.record("s", "o", delivered=True, failed=False)
    assert (b.state("s"), b.cap("s"), b.proven("s")) == ("closed", 4, True)


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    b = breakers(clock)
    for _ in range(2):
        b.record("s", "o", delivered=False, failed=True)
    clock.now += 11
    b.record("s", "o", delivered=False, failed=True)
    assert b.state("s") == "closed"
    b.record("s", "o", delivered=True, failed=False)  # a delivery ends the streak
    for _ in range(2):
        b.record("s", "o", delivered=False, failed=True)
    assert b.state("s") == "closed"


def test_a_disabled_breaker_never_opens() -> None:
    b = breakers(Clock(), enabled=False)
    for _ in range(10):
        b.record("s", "o", delivered=False, failed=True)
    assert b.cap("s") == 4
