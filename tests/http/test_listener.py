"""The listeners' guard (sidecar/http/listener.py) on a real socket: header timeouts, the
connection caps, malformed requests answered 400 problem+json and logged quietly."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

from ..conftest import ProxyFactory
from ..fakes import FakeApi
from ..helpers import until
from ..raw_http import Proxy, closed, read_answer


async def test_a_trickling_client_is_answered_408_and_closed(
    start_proxy: ProxyFactory, api: FakeApi
) -> None:
    proxy = await start_proxy(api, clients={"header_timeout": "300ms"})
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
    start_proxy: ProxyFactory, api: FakeApi
) -> None:
    proxy = await start_proxy(api, clients={"header_timeout": "200ms"})
    reader, writer = await proxy.raw()
    assert await closed(reader)
    assert proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="idle") == 1
    writer.close()


async def test_keep_alive_requests_each_get_the_header_timeout_afresh(
    start_proxy: ProxyFactory, api: FakeApi
) -> None:
    proxy = await start_proxy(api, clients={"header_timeout": "300ms"})
    reader, writer = await proxy.raw()
    for _ in range(3):  # each request is quick; the connection lives longer than the timeout
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await read_answer(reader)
        assert status == 200
        await asyncio.sleep(0.15)  # idle between requests (keep-alive), not slow headers
    writer.close()
    assert proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="headers") == 0


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
    start_proxy: ProxyFactory, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(api, clients={"max_connections": 3})
    held = [await proxy.raw() for _ in range(3)]
    await refused(proxy, 5)
    assert proxy.metric("sidecar_client_connections_refused_total", listener="proxy") == 5
    assert proxy.metric("sidecar_client_connections", listener="proxy") == 3
    refusals = [r for r in caplog.records if "client connection refused" in r.getMessage()]
    assert len(refusals) == 1  # at most one line a second
    assert await served(*held[0], close=False) == 200  # the admitted ones are served
    for _, writer in held:
        writer.close()


async def test_a_connection_the_client_closed_gives_its_place_back(
    start_proxy: ProxyFactory, api: FakeApi
) -> None:
    proxy = await start_proxy(api, clients={"max_connections": 2})
    held = [await proxy.raw() for _ in range(2)]
    await refused(proxy, 1)
    _, writer = held.pop()
    writer.close()
    await writer.wait_closed()
    await until(lambda: proxy.metric("sidecar_client_connections", listener="proxy") == 1)
    again = await proxy.raw()  # admitted: the cap counts open connections
    assert await served(*again, close=False) == 200
    assert proxy.metric("sidecar_client_connections", listener="proxy") == 2
    assert proxy.metric("sidecar_client_connections_refused_total", listener="proxy") == 1
    again[1].close()
    for _, writer in held:
        writer.close()


async def test_past_max_connections_per_address_that_address_is_refused_and_others_served(
    start_proxy: ProxyFactory, api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy(api, clients={"max_connections_per_address": 2})
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
    start_proxy: ProxyFactory, api: FakeApi, caplog: pytest.LogCaptureFixture, request_bytes: bytes
) -> None:
    proxy = await start_proxy(api)
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
