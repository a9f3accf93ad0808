"""The completion hub (sidecar/completions/hub.py): waiters woken by the events handed to it, the
recent-event cache bounded by count, bytes and age, and the watch that suspects a route waiting
on other ids than its events carry. The first tests drive a hub directly (a fake clock where
time matters); the last ones the hub of a running sidecar, fed by its stream reader."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

import sidecar.completions.hub as hub_module
from sidecar.completions.hub import (
    EVENTS_PER_ID,
    SUSPECT_UNMATCHED,
    SUSPECT_WINDOW_S,
    CompletionHub,
    StreamWatch,
)
from sidecar.config import Settings, parse_settings
from sidecar.metrics import Metrics

from ..helpers import metric, until
from ..streams import OK, StreamEnvFactory, post_user

STREAM = "orders.events"


def settings(*routes: dict[str, Any], **stream_reader: Any) -> Settings:
    raw = {
        "redis_url": "redis://127.0.0.1:6379/0",
        "stream_reader": stream_reader,
        "routes": list(routes)
        or [route("orders", success=["Done"], failure=["Failed"], stream=STREAM)],
    }
    return parse_settings(raw, "<test>", env={})


def route(name: str, stream: str = STREAM, **wait: Any) -> dict[str, Any]:
    return {"name": name, "path": f"/{name}", "wait": {"stream": {"key": stream, **wait}}}


def make_hub(*routes: dict[str, Any], **stream_reader: Any) -> CompletionHub:
    return CompletionHub(settings(*routes, **stream_reader), Metrics(CollectorRegistry()))


def spec(hub: CompletionHub, name: str = "orders") -> Any:
    """The stream wait of the route `name`, as a call of it registers."""
    for reading in hub.decoder.readings[STREAM]:
        for r in reading.routes:
            if r.name == name:
                assert r.wait is not None
                return r.wait.stream
    raise LookupError(name)


def deliver(hub: CompletionHub, cid: str, kind: str = "Done", data: bytes = b"{}") -> str:
    """Hand the hub one entry of STREAM, as the reader would; its result. (Every entry has the
    same id here, so that events of the same data have the same size.)"""
    fields = {b"correlation_id": cid.encode(), b"type": kind.encode(), b"payload": data}
    return hub.dispatch(STREAM, "1-0", fields)


def cache_bytes(hub: CompletionHub) -> float:
    return hub.metrics.registry.get_sample_value("sidecar_stream_cache_bytes") or 0.0


class Clock:
    """The hub's `time`, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(hub_module, "time", fake)
    return fake


# --------------------------------------------------------------------------------------------
# Waiters
# --------------------------------------------------------------------------------------------


async def test_an_event_wakes_every_waiter_of_its_id_and_no_other() -> None:
    hub = make_hub()
    first, second = hub.add(spec(hub), "c-1"), hub.add(spec(hub), "c-1")
    other = hub.add(spec(hub), "c-2")
    assert hub.waiting == 3
    assert deliver(hub, "c-1", "Done", b'{"n": 1}') == "matched"
    for waiter in (first, second):
        completion = waiter.future.result()
        assert completion is not None
        assert (completion.correlation_id, completion.status, completion.data) == (
            "c-1",
            "succeeded",
            {"n": 1},
        )
    assert not other.future.done()
    assert deliver(hub, "c-2", "Failed") == "matched"
    failed = other.future.result()
    assert failed is not None and failed.status == "failed"


async def test_only_a_type_of_the_waiters_route_resolves_it() -> None:
    hub = make_hub(
        route("orders", success=["Done"], failure=["Failed"]),
        route("progress", success=["Progress"]),
    )
    waiter = hub.add(spec(hub, "orders"), "c-1")
    assert deliver(hub, "c-1", "Progress") == "unmatched"  # another route's type
    assert not waiter.future.done()
    assert deliver(hub, "c-1", "Done", b'{"first": true}') == "matched"
    assert deliver(hub, "c-1", "Done", b'{"second": true}') == "unmatched"  # resolved once
    completion = waiter.future.result()
    assert completion is not None and completion.data == {"first": True}


async def test_entry_results_are_matched_unmatched_ignored_or_malformed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = make_hub()
    hub.add(spec(hub), "held")
    assert deliver(hub, "held") == "matched"
    assert deliver(hub, "nobody") == "unmatched"
    assert deliver(hub, "held", "Progress") == "ignored"  # no route knows the type
    assert hub.dispatch(STREAM, "9-0", {b"type": b"Done"}) == "malformed"  # no id
    assert deliver(hub, "held", "Done", b'{"broken') == "malformed"
    said = [r for r in caplog.records if r.getMessage() == "malformed completion event"]
    assert [r.reason for r in said] == [  # type: ignore[attr-defined]
        "no 'correlation_id' field",
        "data is not valid JSON",
    ]
    assert all(r.levelno == logging.WARNING for r in said)


async def test_discard_unregisters_once() -> None:
    hub = make_hub()
    waiter = hub.add(spec(hub), "c-1")
    hub.add(spec(hub), "c-1")
    hub.discard(waiter)
    hub.discard(waiter)  # idempotent
    assert hub.waiting == 1
    assert deliver(hub, "c-1") == "matched"
    assert not waiter.future.done()  # discarded: not woken


async def test_an_update_follows_the_new_routes_streams() -> None:
    hub = make_hub()
    assert hub.streams == [STREAM]
    hub.update(settings(route("other", stream="other.events", success=["Done"])))
    assert hub.streams == ["other.events"]
    assert hub.changed.is_set()  # the reader regroups its streams


# --------------------------------------------------------------------------------------------
# The recent-event cache
# --------------------------------------------------------------------------------------------


async def test_a_late_waiter_is_resolved_from_the_cache_unless_told_not_to() -> None:
    hub = make_hub()
    assert deliver(hub, "early", "Done", b'{"early": true}') == "unmatched"
    late = hub.add(spec(hub), "early")
    assert late.future.done()
    completion = late.future.result()
    assert completion is not None and completion.data == {"early": True}
    uncached = hub.add(spec(hub), "early", cached=False)
    assert not uncached.future.done()


async def test_the_cache_keeps_the_newest_ids_up_to_recent_size() -> None:
    hub = make_hub(recent_size=2)
    for cid in ("a", "b", "c"):
        deliver(hub, cid)
    assert not hub.add(spec(hub), "a").future.done()  # the oldest went first
    assert hub.add(spec(hub), "b").future.done()
    assert hub.add(spec(hub), "c").future.done()
    deliver(hub, "b")  # written again: now the newest
    deliver(hub, "d")
    assert not hub.add(spec(hub), "c").future.done()
    assert hub.add(spec(hub), "b").future.done()


async def test_a_recent_size_of_0_caches_nothing() -> None:
    hub = make_hub(recent_size=0)
    deliver(hub, "a")
    assert not hub.add(spec(hub), "a").future.done()
    assert hub.recent_held == 0


async def test_the_cache_is_bounded_in_bytes_oldest_first() -> None:
    hub = make_hub(recent_bytes="4KiB")
    blob = b'"' + b"x" * 1500 + b'"'
    for cid in ("a", "b", "c", "d"):
        deliver(hub, cid, "Done", blob)
    assert hub.recent_held <= 4 * 1024
    assert cache_bytes(hub) == hub.recent_held
    assert not hub.add(spec(hub), "a").future.done()
    assert hub.add(spec(hub), "d").future.done()
    # An event larger than the whole cache is not cached at all (nothing else is evicted).
    held = hub.recent_held
    deliver(hub, "huge", "Done", b'"' + b"y" * 5000 + b'"')
    assert hub.recent_held == held
    assert not hub.add(spec(hub), "huge").future.done()
    assert hub.add(spec(hub), "d").future.done()


async def test_each_id_keeps_its_last_events_and_the_bytes_add_up() -> None:
    hub = make_hub(
        route("orders", success=["Done"], failure=["Failed"]),
        route("progress", success=["Progress"]),
    )
    deliver(hub, "c-1", "Failed", b'{"why": 9}')  # as long as each Progress
    one = hub.recent_held
    assert one > 0
    for n in range(EVENTS_PER_ID):
        deliver(hub, "c-1", "Progress", b'{"pct": %d}' % n)
    # Only the last EVENTS_PER_ID events of an id stay: the failure was pushed out.
    assert not hub.add(spec(hub, "orders"), "c-1").future.done()
    assert hub.add(spec(hub, "progress"), "c-1").future.done()
    assert hub.recent_held == EVENTS_PER_ID * one  # same sizes: what left was given back
    assert cache_bytes(hub) == hub.recent_held


async def test_cached_events_expire_after_recent_ttl(clock: Clock) -> None:
    hub = make_hub(recent_ttl="60s")
    deliver(hub, "old")
    clock.now += 59
    assert hub.add(spec(hub), "old").future.done()
    clock.now += 2
    assert not hub.add(spec(hub), "old").future.done()  # expired, though still held
    assert hub.recent_held > 0
    hub.quiet()  # a read that brought nothing lets it go
    assert hub.recent_held == 0
    assert cache_bytes(hub) == 0


async def test_new_events_evict_the_expired_ones(clock: Clock) -> None:
    hub = make_hub(recent_ttl="10s")
    deliver(hub, "old")
    one = hub.recent_held
    clock.now += 11
    deliver(hub, "new")
    assert hub.recent_held == one  # the new one's bytes only
    assert hub.add(spec(hub), "new").future.done()


# --------------------------------------------------------------------------------------------
# The misconfiguration watch
# --------------------------------------------------------------------------------------------


def test_a_stream_is_suspect_after_several_unmatched_events_and_no_match() -> None:
    watch = StreamWatch()
    now = 5000.0
    for n in range(SUSPECT_UNMATCHED - 1):
        watch.saw("unmatched", f"theirs-{n}", now + n)
        assert watch.suspect(now + n) is None
    watch.saw("unmatched", "theirs-last", now + 3)
    assert watch.suspect(now + 3) == "theirs-last"  # an example of the ids nobody waits on
    watch.saw("ignored", "x", now + 4)  # other results change nothing
    assert watch.suspect(now + 4) == "theirs-last"


def test_a_recent_match_means_calls_do_complete() -> None:
    watch = StreamWatch()
    now = 5000.0
    watch.saw("matched", "ours", now)
    for n in range(SUSPECT_UNMATCHED + 2):
        watch.saw("unmatched", f"another-replicas-{n}", now + 1 + n)
    assert watch.suspect(now + 10) is None
    # A minute without any match, and the unmatched ones go on: suspect again.
    later = now + SUSPECT_WINDOW_S + 5
    for n in range(SUSPECT_UNMATCHED):
        watch.saw("unmatched", f"theirs-{n}", later + n)
    assert watch.suspect(later + SUSPECT_UNMATCHED) == f"theirs-{SUSPECT_UNMATCHED - 1}"


def test_unmatched_events_are_counted_within_the_window_only() -> None:
    watch = StreamWatch()
    now = 5000.0
    for n in range(SUSPECT_UNMATCHED):
        watch.saw("unmatched", f"theirs-{n}", now + n)
    assert watch.suspect(now + SUSPECT_UNMATCHED) is not None
    assert watch.suspect(now + SUSPECT_WINDOW_S + 1) is None  # nothing recent any more
    watch.saw("unmatched", "one-more", now + SUSPECT_WINDOW_S + 2)  # a new window: one
    assert watch.suspect(now + SUSPECT_WINDOW_S + 2) is None


async def test_the_hub_names_a_suspect_stream_and_says_so_once_a_minute() -> None:
    hub = make_hub()
    assert hub.suspect(STREAM) is None
    assert hub.suspect("never-read") is None
    for n in range(SUSPECT_UNMATCHED):
        assert deliver(hub, f"backend-{n}") == "unmatched"
    assert hub.suspect(STREAM) == f"backend-{SUSPECT_UNMATCHED - 1}"
    hub.add(spec(hub), "ours")
    deliver(hub, "ours")
    assert hub.suspect(STREAM) is None  # an event woke a call
    said = hub.said("orders")
    assert said is hub.said("orders") and said is not hub.said("other")
    assert said.ready() and not said.ready()


# --------------------------------------------------------------------------------------------
# The cache of a running sidecar, fed by its reader
# --------------------------------------------------------------------------------------------


async def test_the_recent_event_cache_is_bounded_in_bytes(stream_env: StreamEnvFactory) -> None:
    env = await stream_env(
        correlation={"source": "location", "pattern": "/users/(?P<id>[^/]+)"},
    )
    hub = env.hub
    hub.recent_bytes = 3 * 1024 * 1024  # as stream_reader.recent_bytes: 3MiB would say
    big = "x" * (1024 * 1024)
    for n in range(10):  # 10 MB of completions nobody waits for yet
        await env.publish(f"late-{n}", OK, {"blob": big, "n": n})
    await until(
        lambda: (
            metric(env.client, "sidecar_stream_events_total", stream=env.stream, result="unmatched")
            == 10
        )
    )
    assert hub.recent_held <= 3 * 1024 * 1024
    assert metric(env.client, "sidecar_stream_cache_bytes") == hub.recent_held
    # The newest are still there for a waiter that learns its id from the 202 just now.
    env.api.respond = lambda request: _accepted_as("late-9")
    resp = await post_user(env, "ignored")
    assert resp.status == 200
    assert (await resp.json())["n"] == 9


async def test_expired_cached_events_leave_while_the_stream_is_quiet(
    stream_env: StreamEnvFactory,
) -> None:
    env = await stream_env(
        correlation={"source": "location", "pattern": "/users/(?P<id>[^/]+)"},
    )
    hub = env.hub
    hub.recent_ttl_s = 0.2  # as stream_reader.recent_ttl: 200ms would say
    await env.publish("nobody-waits", OK, {"blob": "x" * 100_000})
    await until(lambda: metric(env.client, "sidecar_stream_cache_bytes") > 100_000)
    # No event comes after it: the next empty reads (every 50 ms here) let it go.
    await until(lambda: metric(env.client, "sidecar_stream_cache_bytes") == 0, timeout_s=3)
    assert hub.recent_held == 0


async def _accepted_as(op: str) -> web.Response:
    return web.json_response({}, status=202, headers={"Location": f"/users/{op}"})
