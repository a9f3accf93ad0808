"""The upstream connection pool against real servers: keep-alive reuse, HEAD, interim 1xx
answers, chunked bodies both ways, timeouts, the connection limit, and a stale reused
connection retried only for idempotent requests."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import ClientPayloadError, web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict
from yarl import URL

from sidecar.http.pool import PoolError, UpstreamPool

from ..conftest import Upstream
from ..helpers import until


def pool(limit: int = 10, read_timeout_s: float = 5.0) -> UpstreamPool:
    return UpstreamPool(limit=limit, connect_timeout_s=1.0, read_timeout_s=read_timeout_s)


async def read_all(
    p: UpstreamPool, method: str, url: URL, body: object = None
) -> tuple[int, bytes]:
    async with await p.request(method, url, CIMultiDict(), body) as answer:  # type: ignore[arg-type]
        return answer.status, await answer.content.read()


@pytest.fixture
async def echo(start_upstream: Upstream) -> tuple[TestServer, list[str]]:
    """Answers with the request body; notes each connection's peer port."""
    peers: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(str(request.transport.get_extra_info("peername")[1]))
        body = await request.read()
        if request.path == "/chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"one ", b"two ", b"three"):
                await response.write(part)
            await response.write_eof()
            return response
        return web.Response(body=body or b"empty", headers={"X-Method": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await start_upstream(app), peers


async def test_connections_are_kept_alive_and_reused(echo: tuple[TestServer, list[str]]) -> None:
    server, peers = echo
    p = pool()
    url = server.make_url("/x")
    for _ in range(5):
        assert await read_all(p, "POST", url, b"hello") == (200, b"hello")
    assert len(set(peers)) == 1  # one connection for all five
    await p.close()


async def test_head_has_no_body_and_chunked_answers_are_decoded(
    echo: tuple[TestServer, list[str]],
) -> None:
    server, peers = echo
    p = pool()
    async with await p.request("HEAD", server.make_url("/x"), CIMultiDict()) as answer:
        assert answer.status == 200 and await answer.content.read() == b""
    assert await read_all(p, "GET", server.make_url("/chunked")) == (200, b"one two three")
    assert len(set(peers)) == 1  # still reusable after both
    await p.close()


async def test_a_streamed_body_of_unknown_length_is_sent_chunked(
    echo: tuple[TestServer, list[str]],
) -> None:
    server, _ = echo
    p = pool()

    async def parts() -> AsyncIterator[bytes]:
        for n in range(3):
            yield b"part%d " % n

    assert await read_all(p, "PUT", server.make_url("/x"), parts()) == (
        200,
        b"part0 part1 part2 ",
    )
    await p.close()


async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, URL]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    sock: socket.socket = server.sockets[0]
    return server, URL(f"http://127.0.0.1:{sock.getsockname()[1]}/r")


async def test_interim_answers_are_skipped() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server, url = await raw_server(handle)
    p = pool()
    assert await read_all(p, "POST", url, b"") == (202, b"ok")
    await p.close()
    server.close()


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
async def test_a_stale_reused_connection_is_retried_only_when_idempotent(
    method: str, retried: bool
) -> None:
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        if served == 1:  # answer the first request, keep the connection...
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")  # ...then close it on the next, unanswered
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n2")
        await writer.drain()
        writer.close()

    server, url = await raw_server(handle)
    p = pool()
    assert await read_all(p, "GET", url) == (200, b"1")
    if retried:
        assert await read_all(p, method, url) == (200, b"2")
    else:
        with pytest.raises(PoolError) as caught:
            await read_all(p, method, url)
        assert caught.value.kind == "protocol"
    await p.close()
    server.close()


async def test_read_timeout_and_connect_errors_have_their_kind() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # never answers; ends when the pool gives up and closes
        writer.close()

    server, url = await raw_server(silent)
    p = pool(read_timeout_s=0.3)
    with pytest.raises(PoolError) as caught:
        await read_all(p, "GET", url)
    assert caught.value.kind == "timeout"
    server.close()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = URL(f"http://127.0.0.1:{sock.getsockname()[1]}/")
    with pytest.raises(PoolError) as caught:
        await read_all(p, "GET", closed)
    assert caught.value.kind == "connect"
    await p.close()


async def test_a_body_cut_short_fails_its_reader() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly a part")
        await writer.drain()
        writer.close()

    server, url = await raw_server(cut)
    p = pool()
    async with await p.request("GET", url, CIMultiDict()) as answer:
        with pytest.raises(ClientPayloadError):
            await answer.content.read()
    await p.close()
    server.close()


async def test_past_the_limit_a_request_waits_for_a_free_connection(
    echo: tuple[TestServer, list[str]],
) -> None:
    server, peers = echo
    p = pool(limit=1)
    first = await p.request("GET", server.make_url("/a"), CIMultiDict())
    second = asyncio.create_task(read_all(p, "GET", server.make_url("/b")))
    await until(lambda: p._waiting == 1)  # it waits for a connection to come free
    assert not second.done()  # the one connection is taken
    assert len(peers) == 1  # and the second request has not been sent
    assert await first.content.read() == b"empty"
    first.release()
    assert await second == (200, b"empty")
    assert len(set(peers)) == 1
    await p.close()
