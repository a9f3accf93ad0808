"""The upstream connection pool: keep-alive HTTP/1.1 connections, answers parsed by aiohttp's
own (C) parser, and nothing a reverse proxy does not need.

Where aiohttp's `ClientSession` builds a request object, resolves headers, arms timers per
request and re-arms them per chunk, this writes the request line and headers in one go and
hands the answer's body on as aiohttp's `StreamReader` (streamed, with flow control). What it
keeps of a client:

    keep-alive    idle connections are reused (newest first) and dropped after IDLE_S
    limit         at most `limit` connections; past it a request waits for one (bounded)
    timeouts      the TCP/TLS connect (`connect_timeout_s`); the longest silence of the upstream
                  while an answer is awaited or read (`read_timeout_s`), watched by one timer
                  for the whole pool, not one per request
    HEAD, 1xx     a HEAD, 204 or 304 answer has no body; interim 1xx answers are skipped
    chunked       bodies of unknown length are sent chunked; answers are decoded by the parser
    one answer    a connection that carries anything unexpected (stray bytes, a protocol
                  switch, a malformed head) is closed, never reused (`http.connection`)
    stale reuse   an idempotent request (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) with no
                  streamed body that finds its reused connection closed before any answer is
                  sent again once, on a new connection

Errors: `PoolError` and its kinds (connect, timeout, protocol); a body that fails mid-way
raises aiohttp's `ClientPayloadError` / `ServerTimeoutError` from its `StreamReader`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiohttp import ClientPayloadError, web
from aiohttp.http_parser import RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from .connection import Connection, Key, PoolError, Said, Stale

IDLE_S = 15.0  # an idle connection older than this is closed rather than reused
SWEEP_S = 0.5  # how often read timeouts and idle connections are looked at
JOIN_UP_TO = 64 * 1024  # a body up to this size goes out in one write with the head
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
DEFAULT_PORTS = {"http": 80, "https": 443}
NO_BODY = frozenset({204, 304})  # answers that never have a body, whatever their headers say

__all__ = ["POOL", "PoolError", "UpstreamPool", "UpstreamResponse"]


class UpstreamResponse:
    """An answer's status line and headers, its body as a `StreamReader`; `release()` (or
    leaving `async with`) gives the connection back when the body was read whole."""

    __slots__ = ("_conn", "_pool", "content", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: Connection,
        message: RawResponseMessage,
        payload: StreamReader,
    ) -> None:
        self._pool, self._conn = pool, conn
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload
        length = message.headers.get("Content-Length")
        # The length of the body to read: a 204 or 304 has none, whatever its headers say
        # (a 304 names the length of the answer it stands for).
        self.content_length: int | None = (
            0 if message.code in NO_BODY else int(length) if length and length.isdigit() else None
        )

    def release(self) -> None:
        """Give the connection back (or close it, when its answer was not read whole)."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            self._pool.put(conn)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def host_header(url: URL) -> str:
    """The `Host` the upstream is sent: its host, and its port unless the scheme's default
    (an exported front sends the same)."""
    host = url.raw_host or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = url.port
    return host if port is None or port == DEFAULT_PORTS.get(url.scheme) else f"{host}:{port}"


def _clean(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise PoolError("a header value holds a line break", "protocol")
    return value


class UpstreamPool:
    """Keep-alive connections to the upstreams, at most `limit` at once."""

    def __init__(
        self,
        *,
        limit: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.limit = limit
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.ssl_context = ssl_context
        self._idle: dict[Key, list[Connection]] = {}
        self._busy: set[Connection] = set()
        self._open = 0
        self._waiting = 0
        self._freed = asyncio.Condition()
        self._sweeper: asyncio.TimerHandle | None = None
        self._notifying: set[asyncio.Task[None]] = set()
        self._closed = False
        self._said = Said()

    # -- connections ---------------------------------------------------------------------------

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._busy):
            if conn.timed_out(now, self.read_timeout_s):
                conn.expire()
        for conns in self._idle.values():
            for conn in [c for c in conns if now - c.last_active > IDLE_S or not c.usable()]:
                conns.remove(conn)
                self._gone(conn)
                conn.close()
        self._sweeper = loop.call_later(SWEEP_S, self._sweep) if not self._closed else None

    def _gone(self, conn: Connection) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self._freed:
                self._freed.notify()

        if self._waiting:  # only when someone waits for a connection
            task = asyncio.get_running_loop().create_task(notify())
            self._notifying.add(task)
            task.add_done_callback(self._notifying.discard)

    async def _acquire(self, key: Key) -> tuple[Connection, bool]:
        """A connection to `key`: an idle one (True) or a new one (False)."""
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        loop = asyncio.get_running_loop()
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable() and loop.time() - conn.last_active <= IDLE_S:
                self._busy.add(conn)
                return conn, True
            self._gone(conn)
            conn.close()
        if self._open >= self.limit:
            await self._wait_for_room(key)
            idle = self._idle.get(key)
            if idle:
                conn = idle.pop()
                if conn.usable():
                    self._busy.add(conn)
                    return conn, True
                self._gone(conn)
        self._open += 1
        try:
            conn = await self._connect(key)
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        self._busy.add(conn)
        return conn, False

    async def _wait_for_room(self, key: Key) -> None:
        budget = self.connect_timeout_s + self.read_timeout_s
        self._waiting += 1
        try:
            async with asyncio.timeout(budget), self._freed:
                await self._freed.wait_for(
                    lambda: self._open < self.limit or bool(self._idle.get(key))
                )
        except TimeoutError:
            raise PoolError("no upstream connection came free in time", "connect") from None
        finally:
            self._waiting -= 1

    async def _connect(self, key: Key) -> Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        secure = scheme == "https"
        context = (self.ssl_context or ssl.create_default_context()) if secure else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _transport, conn = await loop.create_connection(
                    lambda: Connection(loop, key, self._said),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if secure else None,
                )
        except TimeoutError:
            raise PoolError(f"cannot connect to {host}:{port} in time", "connect") from None
        except OSError as exc:
            raise PoolError(f"cannot connect to {host}:{port}: {exc}", "connect") from exc
        return conn

    def put(self, conn: Connection) -> None:
        """Take a connection back after an answer."""
        self._busy.discard(conn)
        if conn.writer is not None and not conn.writer.done():
            conn.writer.cancel()  # the answer is over; the rest of the body is not wanted
        if conn.writer is not None and conn.writer.done() and not conn.writer.cancelled():
            conn.writer.exception()  # seen
        conn.awaiting = False
        if conn.reusable() and not self._closed:
            conn.idle()
            self._idle.setdefault(conn.key, []).append(conn)
            self._wake()
            return
        self._gone(conn)
        conn.close()

    # -- requests ------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | AsyncIterator[bytes] | None = None,
    ) -> UpstreamResponse:
        """Send one request; the answer with its headers read (the body still to read)."""
        key: Key = (url.scheme, url.host or "", url.port or DEFAULT_PORTS.get(url.scheme, 80))
        head = self._head(method, url, headers, body)
        replayable = method in IDEMPOTENT and not isinstance(body, AsyncIterator)
        for attempt in (1, 2):
            conn, reused = await self._acquire(key)
            try:
                conn.expect(method == "HEAD")
                await self._send(conn, head, body)
                assert conn.answer is not None
                message, payload = await self._answer(conn)
            except Stale:
                self._busy.discard(conn)
                self._gone(conn)
                if attempt == 1 and reused and replayable:
                    continue
                raise PoolError(
                    "the upstream closed the connection without answering", "protocol"
                ) from None
            except BaseException:
                self._busy.discard(conn)
                self._gone(conn)
                conn.close()
                raise
            return UpstreamResponse(self, conn, message, payload)
        raise AssertionError("unreachable")

    async def _answer(self, conn: Connection) -> tuple[RawResponseMessage, StreamReader]:
        """The answer's headers; while a streamed body is still being sent, whichever comes
        first: the answer, or the body's failure (a client too slow, an upstream gone)."""
        answer, writer = conn.answer, conn.writer
        assert answer is not None
        if writer is not None and not writer.done():
            pending: set[asyncio.Future[Any]] = {answer, writer}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if writer.done() and not writer.cancelled():
                failure = writer.exception()
                if failure is not None:
                    raise failure
        return await answer

    def _head(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> bytes:
        lines = [f"{method} {url.raw_path_qs or '/'} HTTP/1.1", f"Host: {host_header(url)}"]
        has_length = False
        for name, value in headers.items():
            lower = name.lower()
            if lower in ("host", "transfer-encoding"):
                continue
            if lower == "content-length":
                if isinstance(body, bytes):
                    continue  # ours is the true one
                has_length = True
            lines.append(f"{name}: {_clean(value)}")
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif body is not None and not has_length:
            lines.append("Transfer-Encoding: chunked")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "surrogateescape")

    async def _send(
        self, conn: Connection, head: bytes, body: bytes | AsyncIterator[bytes] | None
    ) -> None:
        transport = conn.transport
        if transport is None or conn.lost:
            raise Stale()
        if isinstance(body, bytes) or body is None:
            if body and len(body) > JOIN_UP_TO:
                transport.write(head)  # no copy of a large body: the transport keeps it as is
                transport.write(body)
            else:
                transport.write(head + body if body else head)  # one segment, one send
            return
        # A streamed body goes on in the background: the upstream may answer (and stream its
        # answer back) before it has read the whole request.
        transport.write(head)
        chunked = b"Transfer-Encoding: chunked" in head
        conn.writer = asyncio.get_running_loop().create_task(self._stream(conn, body, chunked))

    async def _stream(self, conn: Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
        transport = conn.transport
        assert transport is not None
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if conn.lost:
                    raise PoolError("the upstream closed while the body was sent", "protocol")
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                conn.last_active = asyncio.get_running_loop().time()
                await conn._drain_helper()
            if chunked:
                transport.write(b"0\r\n\r\n")
        except BaseException as exc:
            # The request cannot be completed: neither can its answer.
            if conn.payload is not None and not conn.payload.is_eof():
                conn.payload.set_exception(ClientPayloadError(f"the request body failed: {exc!r}"))
            conn.close()
            raise

    async def close(self) -> None:
        """Close every connection."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        await asyncio.sleep(0)


POOL = web.AppKey("pool", UpstreamPool)
