"""Clients' bodies (sidecar/http/body.py): a synchronised call's body read whole within
`clients.body_timeout` and `clients.max_body` before an upstream connection is taken, and
`Expect: 100-continue` answered by the sidecar."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson

from ..conftest import ProxyFactory
from ..fakes import FakeApi
from ..raw_http import closed, read_answer

SYNC = {
    "name": "jobs",
    "method": "POST",
    "path": "/jobs",
    "budget": "300ms",
    "wait": {"poll": {"interval": "50ms"}},
}


async def test_a_slow_synchronised_body_is_408_and_takes_no_upstream_connection(
    start_proxy: ProxyFactory, api: FakeApi
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
    assert [s.path for s in api.seen] == ["/ok"]
    assert proxy.metric("sidecar_client_timeouts_total", listener="proxy", phase="body") == 20


async def test_a_synchronised_body_over_max_body_is_413_before_it_is_read(
    start_proxy: ProxyFactory, api: FakeApi
) -> None:
    proxy = await start_proxy(api, routes=[SYNC], clients={"max_body": "1KiB"})
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
    posted = [len(s.body) for s in api.seen if s.body]
    assert posted == [1000, 4096]


async def test_expect_100_continue_is_answered_by_the_sidecar(
    start_proxy: ProxyFactory, api: FakeApi
) -> None:
    proxy = await start_proxy(api, routes=[SYNC], clients={"max_body": "1KiB"})
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
    assert api.seen[-1].body == b"hello"
    assert "Expect" not in api.seen[-1].headers  # never forwarded
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
