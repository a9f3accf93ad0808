"""Talking to the upstream (sidecar/http/upstream.py): the request target, relayed answers
exactly as the upstream sent them, the pool's failures as 502/504 problems, bodies streamed both
ways, and an answer cut short when the upstream fails mid-way."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from devtools.redis_server import free_port
from sidecar.http.pool import POOL

from ..conftest import ProxyFactory, SidecarFactory, Upstream
from ..fakes import FakeApi
from ..helpers import metric, until
from ..raw_http import raw_upstream, read_answer


async def test_request_target_forms(start_proxy: ProxyFactory, api: FakeApi) -> None:
    proxy = await start_proxy(api)
    reader, writer = await proxy.raw()
    writer.write(b"GET http://elsewhere.example/echo?q=%20 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    assert api.seen[-1].path == "/echo?q=%20"  # absolute-form: its path and query
    writer.write(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")  # no such path here
    status, headers, body = await read_answer(reader)
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["correlation_id"] == headers["x-correlation-id"]
    writer.close()


async def test_relayed_answers_carry_no_invented_headers(start_proxy: ProxyFactory) -> None:
    server, url = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbare")
    proxy = await start_proxy(url)
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/bare") as resp:
        assert resp.status == 200 and await resp.read() == b"bare"
        assert "Content-Type" not in resp.headers
        assert "Server" not in resp.headers
    server.close()


async def test_upstream_unreachable_is_502_problem(start_sidecar: SidecarFactory) -> None:
    client = await start_sidecar(f"http://127.0.0.1:{free_port()}")
    resp = await client.get("/x", headers={"X-Correlation-ID": "c-502"})
    assert resp.status == 502
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.headers["X-Correlation-ID"] == "c-502"
    body = orjson.loads(await resp.read())
    assert body["status"] == 502
    assert body["type"] == "urn:sidecar:problem:upstream-unreachable"
    assert body["correlation_id"] == "c-502"
    assert "Traceback" not in str(body)


async def test_upstream_timeout_is_504_problem(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await start_upstream(app)
    client = await start_sidecar(upstream, proxy={"read_timeout": "100ms"})
    try:
        resp = await client.get("/slow")
        assert resp.status == 504
        body = orjson.loads(await resp.read())
        assert body["type"] == "urn:sidecar:problem:upstream-timeout"
    finally:
        release.set()


async def test_large_body_streams_both_ways(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    """A body larger than any buffer goes up and comes back in chunks, byte for byte."""
    size = 20 * 1024 * 1024

    async def mirror(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = request.content_length
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(65536):
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_put("/blob", mirror)
    upstream = await start_upstream(app)
    client = await start_sidecar(upstream)
    pattern = bytes(range(256)) * 256

    async def body() -> Any:
        for _ in range(size // len(pattern)):
            yield pattern

    resp = await client.put("/blob", data=body(), headers={"Content-Length": str(size)})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    digest, received = hashlib.sha256(), 0
    async for chunk in resp.content.iter_chunked(65536):
        digest.update(chunk)
        received += len(chunk)
    assert received == size
    assert digest.digest() == hashlib.sha256(pattern * (size // len(pattern))).digest()


async def test_a_call_queued_for_a_busy_pool_is_not_failed_by_the_connect_timeout(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await start_upstream(app)
    client = await start_sidecar(
        upstream, proxy={"max_connections": 1, "connect_timeout": "100ms", "read_timeout": "5s"}
    )
    first = asyncio.ensure_future(client.get("/slow"))
    await entered.wait()  # the only pooled connection is busy
    second = asyncio.ensure_future(client.get("/slow"))
    pool = client.app[POOL]
    await until(lambda: pool._waiting == 1)  # the second call queues for it
    # Not a wait for anything: the scenario is a call queued for longer than the 100ms
    # connect timeout.
    await asyncio.sleep(0.3)
    assert not second.done()
    release.set()
    assert [(await first).status, (await second).status] == [200, 200]


async def test_an_upstream_failing_mid_answer_cuts_the_connection(
    start_upstream: Upstream, start_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cut = asyncio.Event()

    async def half(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"first part")
        await cut.wait()  # until the client has had the first part
        assert request.transport is not None
        request.transport.abort()  # the upstream dies before the last chunk
        return response

    app = web.Application()
    app.router.add_get("/half", half)
    upstream = await start_upstream(app)
    client = await start_sidecar(upstream)
    try:
        resp = await client.get("/half")
        assert resp.status == 200
        assert await resp.content.readexactly(len(b"first part")) == b"first part"
    finally:
        cut.set()
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()  # truncated: never taken as complete
    assert (
        metric(
            client,
            "sidecar_requests_total",
            route="-",
            outcome="upstream_error",
            status_class="2xx",
        )
        == 1
    )
    assert not [r for r in caplog.records if r.exc_info is not None]
