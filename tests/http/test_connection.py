"""One upstream connection (sidecar/http/connection.py) against upstreams that write their
answers in pieces: the head is found wherever the packets split it, a body delivered slowly or
past the reader's buffer is never mistaken for stray bytes, bytes past an answer's end close the
connection however they arrive, and a malformed head is logged (escaped, truncated) but never
quoted in the error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
from multidict import CIMultiDict
from yarl import URL

from sidecar.http.connection import EXCERPT, head_end
from sidecar.http.pool import PoolError, UpstreamPool


class Upstream:
    """Answers each request by writing `answer` in pieces of `piece` bytes, each flushed on its
    own (a slow upstream); counts its connections and notes those the client closed."""

    def __init__(self, answer: bytes, piece: int) -> None:
        self.answer, self.piece = answer, piece
        self.connections = 0
        self.closed = asyncio.Event()
        self.url = URL()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                for at in range(0, len(self.answer), self.piece):
                    writer.write(self.answer[at : at + self.piece])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed.set()
        finally:
            writer.close()


@pytest.fixture
async def upstreams() -> AsyncIterator[Callable[[bytes, int], asyncio.Future[Upstream]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: bytes, piece: int) -> Upstream:
        upstream = Upstream(answer, piece)
        server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        servers.append(server)
        upstream.url = URL(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x")
        return upstream

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


async def get(pool: UpstreamPool, url: URL) -> tuple[int, bytes]:
    async with await pool.request("GET", url, CIMultiDict()) as answer:
        return answer.status, await answer.content.read()


def test_the_end_of_a_head_is_found_across_packets() -> None:
    assert head_end(b"", b"HTTP/1.1 200 OK\r\n\r\nbody") == 19
    assert head_end(b"OK\r\n", b"\r\nbody") == 2  # CRLF | CRLF
    assert head_end(b"OK\r", b"\n\r\nbody") == 3
    assert head_end(b"", b"HTTP/1.1 200 OK\n\nbody") == 17  # LF only, as a lenient parser reads
    assert head_end(b"", b"HTTP/1.1 200 OK\r\nA: b\r\n") == -1


@pytest.mark.parametrize("piece", [1, 3, 7, 64])
async def test_answers_in_pieces_are_read_whole_and_the_connection_kept(
    upstreams: Callable[[bytes, int], asyncio.Future[Upstream]], piece: int
) -> None:
    body = b"0123456789" * 50
    upstream = await upstreams(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
        % (len(body), body),
        piece,
    )
    pool = UpstreamPool(limit=4, connect_timeout_s=1, read_timeout_s=5)
    for _ in range(3):
        assert await get(pool, upstream.url) == (200, body)
    assert upstream.connections == 1
    await pool.close()


async def test_a_large_body_past_the_reader_s_buffer_is_no_stray(
    upstreams: Callable[[bytes, int], asyncio.Future[Upstream]],
) -> None:
    body = b"x" * (3 * 2**20)  # the parser pauses while the reader's buffer is full
    upstream = await upstreams(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body), 2**20
    )
    pool = UpstreamPool(limit=4, connect_timeout_s=1, read_timeout_s=5)
    async with await pool.request("GET", upstream.url, CIMultiDict()) as answer:
        got = b""
        while chunk := await answer.content.read(4096):
            got += chunk
            await asyncio.sleep(0)  # a slow reader: the scenario
    assert got == body
    assert await get(pool, upstream.url) == (200, body)
    assert upstream.connections == 1
    await pool.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokSTRAY",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nSTRAY",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\nHTTP/1.1 2",
    ],
    ids=["past-the-length", "past-the-last-chunk", "a-head-begun"],
)
@pytest.mark.parametrize("piece", [1, 5, 1000])
async def test_bytes_past_an_answer_close_its_connection(
    upstreams: Callable[[bytes, int], asyncio.Future[Upstream]], answer: bytes, piece: int
) -> None:
    upstream = await upstreams(answer, piece)
    pool = UpstreamPool(limit=4, connect_timeout_s=1, read_timeout_s=5)
    assert await get(pool, upstream.url) == (200, b"ok")
    await asyncio.wait_for(upstream.closed.wait(), 5)  # the pool closed it: never reused
    assert await get(pool, upstream.url) == (200, b"ok")
    assert upstream.connections == 2
    await pool.close()


async def test_a_malformed_head_is_logged_escaped_and_truncated_never_quoted(
    upstreams: Callable[[bytes, int], asyncio.Future[Upstream]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = await upstreams(
        b"HTTP/1.1 200 OK\r\nBad SECRET\x1b[31m" + b"S" * 1000 + b"\r\n\r\n", 10_000
    )
    pool = UpstreamPool(limit=4, connect_timeout_s=1, read_timeout_s=5)
    with (
        caplog.at_level(logging.WARNING, "sidecar.http.connection"),
        pytest.raises(PoolError) as raised,
    ):
        await get(pool, upstream.url)
    assert str(raised.value) == "the upstream's answer is malformed: its head is invalid"
    assert raised.value.kind == "protocol"
    (record,) = [r for r in caplog.records if r.name == "sidecar.http.connection"]
    detail = record.__dict__["detail"]
    assert "SECRET" in detail and "\x1b" not in detail and len(detail) <= EXCERPT
    await pool.close()
