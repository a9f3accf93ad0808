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
    HEAD, 1xx     a HEAD answer has no body; interim 1xx answers are skipped
    chunked       bodies of unknown length are sent chunked; answers are decoded by the parser
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

from aiohttp import ClientPayloadError, ServerTimeoutError, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpResponseParser, RawResponseMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

IDLE_S = 15.0  # an idle connection older than this is closed rather than reused
SWEEP_S = 0.5  # how often read timeouts and idle connections are looked at
READ_BUFFER = 2**16
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
DEFAULT_PORTS = {"http": 80, "https": 443}

Key = tuple[str, str, int]  # scheme, host, port


class PoolError(Exception):
    """A request that got no answer; `kind` says why (connect, timeout, protocol)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Stale(Exception):
    """The connection was closed before any byte of the answer arrived."""


class _Connection(BaseProtocol):
    """One connection to the upstream and the answer it is reading."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Key) -> None:
        super().__init__(loop)
        self.key = key
        self.answer: asyncio.Future[tuple[RawResponseMessage, StreamReader]] | None = None
        self.payload: StreamReader | None = None
        self.last_active = loop.time()
        self.got_bytes = False
        self.should_close = False
        self.lost = False
        self.awaiting = False  # an answer (headers or body) is expected from the upstream
        self.writer: asyncio.Task[None] | None = None  # a request body still being sent

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        if self._parser is not None:
            try:
                self._parser.feed_eof()
            except Exception as error:  # the answer was cut: its reader learns why
                if self.payload is not None and not self.payload.is_eof():
                    self.payload.set_exception(
                        ClientPayloadError(f"the upstream closed mid-answer: {error!r}")
                    )
        if self.answer is not None and not self.answer.done():
            if self.got_bytes:
                self.answer.set_exception(PoolError("the upstream closed mid-answer", "protocol"))
            else:
                self.answer.set_exception(_Stale())
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data:
            self.last_active = self._loop.time()
            self.got_bytes = True
        if self._parser is None:  # bytes nobody asked for: the connection is not reusable
            if data:
                self.should_close = True
            return
        try:
            messages, _upgraded, _tail = self._parser.feed_data(data)
        except Exception as exc:
            self._fail(PoolError(f"the upstream's answer is malformed: {exc}", "protocol"))
            return
        for message, payload in messages:
            if 100 <= message.code < 200 and message.code != 101:
                continue  # an interim answer (100 Continue, 103 Early Hints)
            if message.should_close:
                self.should_close = True
            self.payload = payload
            if self.answer is not None and not self.answer.done():
                self.answer.set_result((message, payload))

    def _fail(self, error: Exception) -> None:
        self.should_close = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        elif self.payload is not None and not self.payload.is_eof():
            self.payload.set_exception(ClientPayloadError(str(error)))
        if self.transport is not None:
            self.transport.close()

    def expect(self, head_request: bool) -> None:
        """Get ready for the answer to a new request."""
        self._parser = HttpResponseParser(
            self,
            self._loop,
            READ_BUFFER,
            payload_exception=ClientPayloadError,
            response_with_body=not head_request,
            auto_decompress=False,
        )
        self.answer = self._loop.create_future()
        self.payload = None
        self.writer = None
        self.got_bytes = False
        self.awaiting = True
        self.last_active = self._loop.time()

    def timed_out(self, now: float, limit_s: float) -> bool:
        """True when the upstream owes us bytes and has been silent longer than `limit_s` (a
        body we stopped reading, for a slow client, does not count; nor one received whole)."""
        if not self.awaiting:
            return False
        if self.payload is not None and self.payload.is_eof():
            self.awaiting = False
            return False
        return not self._reading_paused and now - self.last_active > limit_s

    def expire(self) -> None:
        """End an answer the upstream went silent on."""
        error = ServerTimeoutError("the upstream did not answer in time")
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(PoolError("the upstream did not answer in time", "timeout"))
        elif self.payload is not None and not self.payload.is_eof():
            self.payload.set_exception(error)
        self.should_close = True
        if self.transport is not None:
            self.transport.abort()

    def reusable(self) -> bool:
        """True when the answer was read whole and the connection may carry another."""
        return (
            not self.lost
            and not self.should_close
            and (self.writer is None or self.writer.done())
            and self.payload is not None
            and self.payload.is_eof()
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        """Close the connection."""
        self.should_close = True
        if self.transport is not None:
            self.transport.close()


class UpstreamResponse:
    """An answer's status line and headers, its body as a `StreamReader`; `release()` (or
    leaving `async with`) gives the connection back when the body was read whole."""

    __slots__ = ("_conn", "_pool", "content", "content_length", "headers", "reason", "status")

    def __init__(
        self,
        pool: UpstreamPool,
        conn: _Connection,
        message: RawResponseMessage,
        payload: StreamReader,
    ) -> None:
        self._pool, self._conn = pool, conn
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload
        length = message.headers.get("Content-Length")
        self.content_length = int(length) if length and length.isdigit() else None

    def release(self) -> None:
        """Give the connection back (or close it, when its answer was not read whole)."""
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is not None:
            self._pool.put(conn)

    async def __aenter__(self) -> UpstreamResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _host_header(url: URL) -> str:
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
        self._idle: dict[Key, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._open = 0
        self._waiting = 0
        self._freed = asyncio.Condition()
        self._sweeper: asyncio.TimerHandle | None = None
        self._notifying: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- connections ---------------------------------------------------------------------------

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._busy):
            if conn.timed_out(now, self.read_timeout_s):
                conn.expire()
        for conns in self._idle.values():
            for conn in [c for c in conns if now - c.last_active > IDLE_S or c.lost]:
                conns.remove(conn)
                self._gone(conn)
                conn.close()
        self._sweeper = loop.call_later(SWEEP_S, self._sweep) if not self._closed else None

    def _gone(self, conn: _Connection) -> None:
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

    async def _acquire(self, key: Key) -> tuple[_Connection, bool]:
        """A connection to `key`: an idle one (True) or a new one (False)."""
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        loop = asyncio.get_running_loop()
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.lost and loop.time() - conn.last_active <= IDLE_S:
                self._busy.add(conn)
                return conn, True
            self._gone(conn)
            conn.close()
        if self._open >= self.limit:
            await self._wait_for_room(key)
            idle = self._idle.get(key)
            if idle:
                conn = idle.pop()
                if not conn.lost:
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

    async def _connect(self, key: Key) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        secure = scheme == "https"
        context = (self.ssl_context or ssl.create_default_context()) if secure else None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _transport, conn = await loop.create_connection(
                    lambda: _Connection(loop, key),
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

    def put(self, conn: _Connection) -> None:
        """Take a connection back after an answer."""
        self._busy.discard(conn)
        if conn.writer is not None and not conn.writer.done():
            conn.writer.cancel()  # the answer is over; the rest of the body is not wanted
        if conn.writer is not None and conn.writer.done() and not conn.writer.cancelled():
            conn.writer.exception()  # seen
        conn.awaiting = False
        if conn.reusable() and not self._closed:
            # An idle connection keeps nothing of its last answer (a pool of 1,000 would hold
            # 1,000 answers' headers).
            conn._parser = None
            conn.answer = conn.payload = conn.writer = None
            conn.last_active = asyncio.get_running_loop().time()
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
            except _Stale:
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

    async def _answer(self, conn: _Connection) -> tuple[RawResponseMessage, StreamReader]:
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
        lines = [f"{method} {url.raw_path_qs or '/'} HTTP/1.1", f"Host: {_host_header(url)}"]
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
        self, conn: _Connection, head: bytes, body: bytes | AsyncIterator[bytes] | None
    ) -> None:
        transport = conn.transport
        if transport is None or conn.lost:
            raise _Stale()
        if isinstance(body, bytes) or body is None:
            transport.write(head + body if body else head)
            return
        # A streamed body goes on in the background: the upstream may answer (and stream its
        # answer back) before it has read the whole request.
        transport.write(head)
        chunked = b"Transfer-Encoding: chunked" in head
        conn.writer = asyncio.get_running_loop().create_task(self._stream(conn, body, chunked))

    async def _stream(self, conn: _Connection, body: AsyncIterator[bytes], chunked: bool) -> None:
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
