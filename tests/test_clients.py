"""Slow, greedy and malformed clients hurt nobody else: header and body timeouts, the
connection cap, body limits read before the upstream is called, `Expect: 100-continue`
answered by the sidecar, malformed input answered 4xx problem+json (never a 500), and relayed
answers that carry exactly the upstream's headers."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from sidecar.app import client_guard, create_app
from sidecar.http.listener import GuardedAppRunner
from sidecar.metrics import METRICS

from .conftest import Upstream, make_settings


@dataclass
class Proxy:
    """The sidecar's proxy listener, served as `sidecar run` serves it (guarded)."""

    app: web.Application
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def metric(self, name: str, **labels: str) -> float:
        return self.app[METRICS].registry.get_sample_value(name, labels) or 0.0

    async def raw(
        self, source: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw connection (from the loopback address `source`, e.g. 127.0.0.2)."""
        local = (source, 0) if source else None
        return await asyncio.open_connection(self.host, self.port, local_addr=local)


Start = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy() -> AsyncIterator[Start]:
    runners: list[GuardedAppRunner] = []

    async def start(upstream: str | TestServer, **overrides: Any) -> Proxy:
        if isinstance(upstream, TestServer):
            upstream = str(upstream.make_url("")).rstrip("/")
        app = create_app(make_settings(upstream, **overrides), CollectorRegistry())
        runner = GuardedAppRunner(app, guard=client_guard(app, "proxy"), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return Proxy(app, host, port)

    yield start
    for runner in runners:
        await runner.cleanup()


@dataclass
class Api:
    server: TestServer
    seen: list[dict[str, Any]]


@pytest.fixture
async def api(start_upstream: Upstream) -> Api:
    """An upstream that records each request it gets: POST /jobs → 202, anything else → 200."""
    seen: list[dict[str, Any]] = []

    async def any_path(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append({"path": request.path_qs, "headers": dict(request.headers), "body": body})
        if request.method == "POST" and request.path == "/jobs":
            return web.json_response({}, status=202, headers={"Location": "/jobs/1"})
        if request.path == "/bare":  # no Content-Type, no Server
            response = web.StreamResponse(status=200)
            response.content_length = 4
            await response.prepare(request)
            await response.write(b"bare")
            return response
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return Api(await start_upstream(app), seen)


SYNC = {
    "name": "jobs",
    "method": "POST",
    "path": "/jobs",
    "budget": "300ms",
    "wait": {"poll": {"interval": "50ms"}},
}


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer (with Content-Length) from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True once the server closed the connection (EOF, or reset)."""
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True


async def test_a_trickling_client_is_answered_408_and_closed(start_proxy: Start, api: Api) -> None:
    proxy = await start_proxy(api.server, clients={"header_timeout": "300ms"})
    reader, writer = await proxy.raw()
    started = time.monotonic()
    for part in (b"GET /slow", b" HTTP/1.1\r\n", b"Host: x\r\n"):  # never the blank line
        writer.write(part)
        await writer.drain()
    status, headers, body = await read_answer(reader)
    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["correlation_id"] == headers["x-correlation-id"]
    assert await closed(reader)
    assert time.monotonic() - started < 3
    assert proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="headers") == 1
    assert not api.seen  # the upstream never heard of it
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed_silently(
    start_proxy: Start, api: Api
) -> None:
    proxy = await start_proxy(api.server, clients={"header_timeout": "200ms"})
    reader, writer = await proxy.raw()
    assert await closed(reader)
    assert proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="idle") == 1
    writer.close()


async def test_keep_alive_requests_each_get_the_header_timeout_afresh(
    start_proxy: Start, api: Api
) -> None:
    proxy = await start_proxy(api.server, clients={"header_timeout": "300ms"})
    reader, writer = await proxy.raw()
    for _ in range(3):  # each request is quick; the connection lives longer than the timeout
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await read_answer(reader)
        assert status == 200
        await asyncio.sleep(0.15)  # idle between requests (keep-alive), not slow headers
    writer.close()
    assert proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="headers") == 0


async def test_a_slow_synchronised_body_is_408_and_takes_no_upstream_connection(
    start_proxy: Start, api: Api
) -> None:
    proxy = await start_proxy(
        api.server,
        routes=[SYNC],
        clients={"body_timeout": "300ms"},
        proxy={"max_connections": 1},  # one pooled upstream connection for everyone
    )
    slow = []
    for _ in range(20):
        reader, writer = await proxy.raw()
        writer.write(b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        slow.append((reader, writer))
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/ok") as resp:
        assert resp.status == 200  # served while twenty bodies trickle
    for reader, writer in slow:
        status, _, body = await read_answer(reader)
        assert status == 408
        assert "whole body must arrive within 0.3s" in orjson.loads(body)["detail"]
        assert await closed(reader)
        writer.close()
    assert [s["path"] for s in api.seen] == ["/ok"]
    assert proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="body") == 20


async def test_a_synchronised_body_over_max_body_is_413_before_it_is_read(
    start_proxy: Start, api: Api
) -> None:
    proxy = await start_proxy(api.server, routes=[SYNC], clients={"max_body": "1KiB"})
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url + "/jobs", data=b"x" * 2048) as resp:
            assert resp.status == 413
            problem = await resp.json(content_type="application/problem+json")
            assert "at most 1024 bytes" in problem["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
            for _ in range(4):
                yield b"y" * 512

        async with http.post(proxy.url + "/jobs", data=chunks()) as resp:
            assert resp.status == 413
        async with http.post(proxy.url + "/jobs", data=b"z" * 1000) as resp:
            assert resp.status == 200  # within the limit: forwarded whole (and completed)
        # Pass-through bodies are streamed and not limited.
        async with http.post(proxy.url + "/upload", data=b"u" * 4096) as resp:
            assert resp.status == 200
    posted = [len(s["body"]) for s in api.seen if s["body"]]
    assert posted == [1000, 4096]


async def test_expect_100_continue_is_answered_by_the_sidecar(
    start_proxy: Start, start_upstream: Upstream, api: Api
) -> None:
    proxy = await start_proxy(api.server, routes=[SYNC], clients={"max_body": "1KiB"})
    reader, writer = await proxy.raw()
    writer.write(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert (
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5) == b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    writer.write(b"hello")
    status, _, _ = await read_answer(reader)
    assert status == 200
    assert api.seen[-1]["body"] == b"hello"
    assert "Expect" not in api.seen[-1]["headers"]  # never forwarded
    writer.close()
    # A synchronised call declaring a body that is too large: 413 at once, body never sent.
    reader, writer = await proxy.raw()
    writer.write(
        b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    status, headers, body = await read_answer(reader)
    assert status == 413
    assert orjson.loads(body)["correlation_id"] == headers["x-correlation-id"]
    writer.close()
    assert len(api.seen) == 1


async def refused(proxy: Proxy, times: int) -> None:
    """Open `times` connections and see each closed at once, unanswered."""
    for _ in range(times):
        reader, writer = await proxy.raw()
        assert await closed(reader)
        writer.close()


async def served(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: bool) -> int:
    """The status of a GET on an open connection (`close`: asking the sidecar to close it)."""
    also = b"Connection: close\r\n" if close else b""
    writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n" + also + b"\r\n")
    return (await read_answer(reader))[0]


async def test_past_max_connections_new_ones_are_refused_at_once(
    start_proxy: Start, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(api.server, clients={"max_connections": 3})
    held = [await proxy.raw() for _ in range(3)]
    await refused(proxy, 5)
    assert proxy.metric("sidecar_client_connections_refused_total", listener="proxy") == 5
    assert proxy.metric("sidecar_client_connections", listener="proxy") == 3
    refusals = [r for r in caplog.records if "client connection refused" in r.getMessage()]
    assert len(refusals) == 1  # at most one line a second
    assert await served(*held[0], close=False) == 200  # the admitted ones are served
    for _, writer in held:
        writer.close()


async def test_past_max_connections_per_address_that_address_is_refused_and_others_served(
    start_proxy: Start, api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(api.server, clients={"max_connections_per_address": 2})
    held = [await proxy.raw() for _ in range(2)]
    await refused(proxy, 3)
    per_address = "sidecar_client_connections_refused_per_address_total"
    assert proxy.metric(per_address, listener="proxy") == 3
    assert proxy.metric("sidecar_client_connections_refused_total", listener="proxy") == 0
    lines = [r for r in caplog.records if "too many open from one address" in r.getMessage()]
    assert len(lines) == 1 and lines[0].__dict__["remote"] == "127.0.0.1"
    other = await proxy.raw("127.0.0.2")
    assert await served(*other, close=False) == 200  # another address is served meanwhile
    other[1].close()
    # A connection the sidecar closed gives its address's slot back: its end reaches the
    # client only after the sidecar has let the connection go.
    reader, writer = held.pop()
    assert await served(reader, writer, close=True) == 200
    assert await closed(reader)
    writer.close()
    again = await proxy.raw()
    assert await served(*again, close=False) == 200
    again[1].close()
    for _, writer in held:
        writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS sent to a plain-HTTP port
    ],
)
async def test_malformed_requests_are_400_problems_logged_quietly(
    start_proxy: Start, api: Api, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    proxy = await start_proxy(api.server)
    reader, writer = await proxy.raw()
    writer.write(request_bytes)
    status, headers, body = await read_answer(reader)
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["correlation_id"] == headers["x-correlation-id"]
    writer.close()
    assert proxy.metric("sidecar_malformed_requests_total", listener="proxy") == 1
    assert all(r.levelno <= logging.WARNING for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info]


async def test_request_target_forms(start_proxy: Start, api: Api) -> None:
    proxy = await start_proxy(api.server)
    reader, writer = await proxy.raw()
    writer.write(b"GET http://elsewhere.example/echo?q=%20 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    assert api.seen[-1]["path"] == "/echo?q=%20"  # absolute-form: its path and query
    writer.write(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")  # no such path here
    status, headers, body = await read_answer(reader)
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert orjson.loads(body)["correlation_id"] == headers["x-correlation-id"]
    writer.close()


async def raw_upstream(answer: bytes) -> tuple[asyncio.Server, str]:
    """An upstream that answers every request with exactly `answer`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    sock: socket.socket = server.sockets[0]
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize(
    ("location", "relayed"),
    [(b"/jobs/\xff\xfe", "/jobs/%FF%FE"), (b"http://[::1/jobs/1", "http://[::1/jobs/1")],
)
async def test_a_malformed_location_on_a_202_is_relayed_and_not_tracked(
    start_proxy: Start,
    caplog: pytest.LogCaptureFixture,
    redis_url: str,
    key_prefix: str,
    location: bytes,
    relayed: str,
) -> None:
    answer = b"HTTP/1.1 202 Accepted\r\nLocation: " + location + b"\r\nContent-Length: 2\r\n\r\n{}"
    server, url = await raw_upstream(answer)
    proxy = await start_proxy(url, routes=[SYNC], redis_url=redis_url, key_prefix=key_prefix)
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/jobs") as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == relayed
        assert "Content-Type" not in resp.headers  # the upstream sent none
        assert await resp.read() == b"{}"
    assert [r for r in caplog.records if "Location is malformed" in r.getMessage()]
    assert proxy.metric("sidecar_fallbacks_total", route="jobs", reason="bad_location") == 1
    server.close()


async def test_relayed_answers_carry_no_invented_headers(start_proxy: Start) -> None:
    server, url = await raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbare")
    proxy = await start_proxy(url)
    async with aiohttp.ClientSession() as http, http.get(proxy.url + "/bare") as resp:
        assert resp.status == 200 and await resp.read() == b"bare"
        assert "Content-Type" not in resp.headers
        assert "Server" not in resp.headers
    server.close()
