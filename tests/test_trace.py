"""W3C trace context: one trace joins the call, the upstream's request, its polls, its log lines
and each webhook delivery of its result."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from sidecar.trace import TraceFields
from sidecar.webhooks import WEBHOOKS

from .conftest import FakeApiFactory
from .fakes import reply
from .helpers import until
from .processes import StartProcess, base_config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
PARENT_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parts(value: str | None) -> tuple[str, str, str]:
    """(trace id, span id, flags) of a valid traceparent; fails the test otherwise."""
    assert value is not None, "no traceparent"
    match = PARENT_RE.match(value)
    assert match, value
    trace_id, span_id, flags = match.groups()
    return trace_id, span_id, flags


def stream_route(stream: str) -> dict[str, Any]:
    return {
        "name": "create-user",
        "method": "POST",
        "path": "/api/users",
        "wait": {"stream": {"key": stream, "success": ["UserCreated"]}},
        "budget": "5s",
        "webhook_events": {"success": "user.created"},
    }


async def test_the_clients_trace_reaches_the_upstream_and_every_delivery(
    redis: aioredis.Redis,
    redis_url: str,
    key_prefix: str,
    start_sidecar: Any,
    fake_api: FakeApiFactory,
    aiohttp_server: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.addFilter(TraceFields())  # as the sidecar's own handler has it
    caplog.set_level(logging.INFO, "sidecar.webhooks")
    stream = f"{key_prefix}:users.events"

    async def publish(cid: str, request: web.Request) -> None:  # faster than its own 202
        await redis.xadd(stream, {"correlation_id": cid, "type": "UserCreated", "payload": "{}"})

    api = await fake_api(
        accept="POST /api/users",
        location="/api/users/7/status",
        accepted={},
        before_accept=publish,
    )

    delivered: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    attempts = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal attempts
        attempts += 1
        await delivered.put(dict(request.headers))
        return web.Response(status=500 if attempts == 1 else 200)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    hooks = await aiohttp_server(receiver)
    client = await start_sidecar(
        api,
        redis_url=redis_url,
        key_prefix=key_prefix,
        routes=[stream_route(stream)],
        webhooks={"allow_private_targets": True, "schedule": ["10ms"], "timeout": "2s"},
    )
    await client.app[WEBHOOKS].store.create("operator", str(hooks.make_url("/hook")), ["*"])

    resp = await client.post(
        "/api/users",
        json={},
        headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01", "tracestate": "congo=t61rcWkgMzE"},
    )
    assert resp.status == 200
    seen = api.seen[0].headers
    trace_id, call_span, flags = parts(seen.get("traceparent"))
    # The sidecar is a span of the client's trace: same trace and flags, its own span id.
    assert (trace_id, flags) == (TRACE, "01")
    assert call_span != CLIENT_SPAN
    assert seen.get("tracestate") == "congo=t61rcWkgMzE"

    # The first delivery fails and is retried: each attempt is a new span of the same trace.
    first = await asyncio.wait_for(delivered.get(), 10)
    second = await asyncio.wait_for(delivered.get(), 10)
    spans = set()
    for headers in (first, second):
        trace_id, span, flags = parts(headers.get("traceparent"))
        assert (trace_id, flags) == (TRACE, "01")
        spans.add(span)
    assert len(spans | {call_span, CLIENT_SPAN}) == 4
    # The attempts' log lines are in the trace too, each with its attempt's span.
    await until(lambda: len(attempt_lines(caplog)) >= 2, timeout_s=5, every_s=0.01)
    logged = attempt_lines(caplog)
    assert {(r.trace_id, r.span_id) for r in logged} == {(TRACE, span) for span in spans}


def attempt_lines(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if r.getMessage() == "webhook attempt"]


async def test_without_a_valid_traceparent_the_sidecar_starts_a_trace(
    fake_api: FakeApiFactory, start_sidecar: Any
) -> None:
    api = await fake_api(accept=None)  # answers every GET at once
    client = await start_sidecar(api)
    invalid = [
        None,
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{CLIENT_SPAN}-01",  # upper case
        f"ff-{TRACE}-{CLIENT_SPAN}-01",  # the forbidden version
        f"00-{TRACE}-{CLIENT_SPAN}-01-extra",  # version 00 has four fields
        "garbage",
    ]
    for value in invalid:
        headers = {"traceparent": value, "tracestate": "a=b"} if value else {}
        resp = await client.get("/x", headers=headers)
        assert resp.status == 200
    seen = [s.headers.get("traceparent") for s in api.seen]
    traces = set()
    for value in seen:
        trace_id, _, flags = parts(value)
        assert trace_id != TRACE and flags == "01"
        traces.add(trace_id)
    assert len(traces) == len(invalid)  # a new trace for each

    # A later version is read by its first four fields; unknown flags are not passed on.
    resp = await client.get("/y", headers={"traceparent": f"cc-{TRACE}-{CLIENT_SPAN}-ff-what"})
    assert resp.status == 200
    assert parts(api.seen[-1].headers.get("traceparent"))[::2] == (TRACE, "01")
    resp = await client.get("/y", headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-00"})
    # Not sampled stays not sampled.
    assert parts(api.seen[-1].headers.get("traceparent"))[::2] == (TRACE, "00")


async def test_polls_of_the_location_carry_the_calls_trace(
    fake_api: FakeApiFactory, start_sidecar: Any
) -> None:
    api = await fake_api(
        location="/jobs/1",
        accepted={},
        status="/jobs/1",
        replies=[reply(202, {"done": False}), reply(200, {"done": True})],
    )
    route = {
        "name": "jobs",
        "method": "POST",
        "path": "/jobs",
        "wait": {"poll": {"interval": "10ms", "done_status": [200]}},
        "budget": "5s",
    }
    client = await start_sidecar(api, routes=[route])
    resp = await client.post("/jobs", headers={"traceparent": f"00-{TRACE}-{CLIENT_SPAN}-01"})
    assert resp.status == 200
    polled = [s.headers.get("traceparent") for s in api.polls]
    created = [api.seen[0].headers.get("traceparent")]
    assert len(polled) == 2
    assert set(polled) == set(created)  # the polls are made within the call's span
    assert parts(created[0])[0] == TRACE


async def test_every_log_line_of_a_call_carries_its_trace(
    fake_api: FakeApiFactory,
    run_sidecar: StartProcess,
    http: aiohttp.ClientSession,
    redis_url: str,
    key_prefix: str,
) -> None:
    upstream = await fake_api(location="/jobs/1", accepted={})  # GET /ping: the ready check
    route = {
        "name": "jobs",
        "method": "POST",
        "path": "/jobs",
        "wait": {"stream": {"key": f"{key_prefix}:events", "success": ["Done"]}},
        "budget": "50ms",
    }
    sidecar = await run_sidecar(
        base_config(
            upstream.url,
            [route],
            redis_url=redis_url,
            key_prefix=key_prefix,
        )
    )
    url = f"{sidecar.proxy_url}/jobs"
    async with http.post(url, headers={"X-Correlation-Id": "job-1"}) as resp:
        assert resp.status == 202  # the id is now this call's
    # The same id again is refused (logged within the call), and the call falls back to 202.
    traceparent = f"00-{TRACE}-{CLIENT_SPAN}-01"
    async with http.post(
        url, headers={"X-Correlation-Id": "job-1", "traceparent": traceparent}
    ) as resp:
        assert resp.status == 202
        minted = resp.headers["X-Correlation-Id"]
    assert minted != "job-1"
    await sidecar.wait_log(
        lambda x: x.get("logger") == "sidecar.access" and x.get("correlation_id") == minted
    )
    lines = [line for line in sidecar.logs if line.get("correlation_id") == minted]
    said = {line["message"] for line in lines}
    assert said == {"client correlation id not used; minted one", "call"}, said
    assert {line.get("trace_id") for line in lines} == {TRACE}
    assert len({line.get("span_id") for line in lines}) == 1
    # The first call's lines are of another trace, the sidecar's own.
    first = [line for line in sidecar.logs if line.get("correlation_id") == "job-1"]
    assert first and all(line.get("trace_id") not in (None, TRACE) for line in first)
    sidecar.send(signal.SIGTERM)
    assert await sidecar.wait_exit(15) == 0
