"""One keep-alive connection to the upstream and the answer it is reading: aiohttp's (C) parser
underneath, and the rule that keeps every answer with its own request: a connection that
carries anything unexpected is closed, never reused.

    head first       an answer's head is fed to the parser on its own, so the answer is known
                     before any of its body is parsed; what comes after the body can then be
                     told apart from it
    stray bytes      bytes past a complete answer (beyond its Content-Length, after its last
                     chunk, after a HEAD / 204 / 304 answer) or on an idle connection close the
                     connection; the answer itself is relayed whole, as nginx does
    close-delimited  an answer with neither a Content-Length nor chunked coding runs to the end
                     of the connection (HTTP/1.0 servers, CGI, development servers)
    1xx              interim answers (100 Continue, 103 Early Hints) are skipped
    101              a protocol switch is an error: the sidecar never forwards `Upgrade`, so an
                     upstream that switches was not asked to, and what follows is not HTTP
    malformed        a head the parser refuses fails the request with a `PoolError` whose message
                     names the fault in fixed words, never the upstream's bytes (those go to the
                     log, truncated and escaped, at most once a second)

Errors: `PoolError` (kind connect, timeout or protocol) for a request that got no answer; a body
that fails mid-way raises aiohttp's `ClientPayloadError` / `ServerTimeoutError` from its
`StreamReader`.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import ClientPayloadError, ServerTimeoutError
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import (
    BadStatusLine,
    ContentLengthError,
    InvalidHeader,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.http_parser import HttpResponseParser, RawResponseMessage
from aiohttp.streams import StreamReader

from ..logs import Every

logger = logging.getLogger(__name__)

READ_BUFFER = 2**16
EXCERPT = 200  # characters of a parser's complaint kept in the log

Key = tuple[str, str, int]  # scheme, host, port

# What a malformed answer was, in words that never quote it (most specific first).
_FAULTS: tuple[tuple[type[Exception], str], ...] = (
    (LineTooLong, "a line of its head is too long"),
    (BadStatusLine, "its status line is invalid"),
    (InvalidHeader, "a header is invalid"),
    (TransferEncodingError, "its chunked coding is broken"),
    (ContentLengthError, "its body is shorter than its Content-Length"),
)


class Said:
    """What a pool's connections have logged lately: one line a second per kind of fault."""

    def __init__(self) -> None:
        self.malformed = Every()
        self.stray = Every()


class PoolError(Exception):
    """A request that got no answer; `kind` says why (connect, timeout, protocol). The message
    never holds bytes the upstream sent."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class Stale(Exception):
    """The connection was closed before any byte of the answer arrived."""


def head_end(before: bytes, data: bytes) -> int:
    """Where in `data` the head ends (just past its blank line: CRLF CRLF, or LF LF as a lenient
    parser takes it), counting the last bytes already fed (`before`); -1 when not in `data`."""
    joined = before + data
    ends = [at + len(mark) for mark in (b"\n\r\n", b"\n\n") if (at := joined.find(mark)) >= 0]
    return min(ends) - len(before) if ends else -1


def excerpt(text: str) -> str:
    """A parser's complaint for the log: control characters escaped, at most EXCERPT long."""
    return text.encode("unicode_escape").decode("ascii")[:EXCERPT]


def fault(error: Exception) -> str:
    """What is wrong with a malformed answer, in fixed words."""
    return next(
        (words for kind, words in _FAULTS if isinstance(error, kind)), "its head is invalid"
    )


class Connection(BaseProtocol):
    """One connection to the upstream and the answer it is reading."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: Key, said: Said | None = None) -> None:
        super().__init__(loop)
        self.key = key
        self.said = said or Said()
        self.answer: asyncio.Future[tuple[RawResponseMessage, StreamReader]] | None = None
        self.payload: StreamReader | None = None
        self.last_active = loop.time()
        self.got_bytes = False
        self.should_close = False
        self.lost = False
        self.awaiting = False  # an answer (headers or body) is expected from the upstream
        self.writer: asyncio.Task[None] | None = None  # a request body still being sent
        self._last = b""  # the last bytes fed to the parser (a head's end, a chunked body's end)
        self._exact = False  # the head was fed alone, so every later byte is body or stray
        self._remaining: int | None = None  # body bytes still due by Content-Length (exact only)
        self._chunked = False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        if self._parser is not None:
            try:
                self._parser.feed_eof()  # ends a close-delimited body
            except Exception as error:  # the answer was cut: its reader learns why
                if self.payload is not None and not self.payload.is_eof():
                    self.payload.set_exception(
                        ClientPayloadError(
                            f"the upstream closed mid-answer: {type(error).__name__}"
                        )
                    )
        if self.answer is not None and not self.answer.done():
            if self.got_bytes:
                self.answer.set_exception(PoolError("the upstream closed mid-answer", "protocol"))
            else:
                self.answer.set_exception(Stale())
        super().connection_lost(exc)

    # -- reading -------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if data:
            self.last_active = self._loop.time()
            self.got_bytes = True
        if self._parser is None:  # idle: bytes nobody asked for
            if data:
                self._stray("on an idle connection")
            return
        if self.payload is None:
            self._read_head(data)
        elif self.payload.is_eof():  # the answer is whole: nothing more may come
            if data:
                self._stray("after a complete answer")
        else:
            self._read_body(data)

    def _feed(self, data: bytes) -> list[tuple[RawResponseMessage, StreamReader]] | None:
        """The parser's messages for `data`; None when it refused them (handled here)."""
        assert self._parser is not None
        self._last = (self._last + data)[-3:]
        try:
            messages, _upgraded, _tail = self._parser.feed_data(data)
        except Exception as error:
            if self.payload is not None and self.payload.is_eof():
                self._stray("after a complete answer")
            else:
                self._malformed(error)
            return None
        return list(messages)

    def _read_head(self, data: bytes) -> None:
        while True:
            end = head_end(self._last, data)
            part, data = (data, b"") if end < 0 else (data[:end], data[end:])
            messages = self._feed(part)
            if messages is None:
                return
            for message, payload in messages:
                if 100 <= message.code < 200 and message.code != 101:
                    continue  # an interim answer (100 Continue, 103 Early Hints)
                if message.code == 101:
                    self._fail(
                        PoolError(
                            "the upstream switched protocols, which the sidecar never asks for",
                            "protocol",
                        )
                    )
                    return
                self._begin(message, payload, exact=end >= 0 and len(messages) == 1)
                if data:
                    self._read_body(data)
                return
            if not data:
                return
            self._last = b""

    def _begin(self, message: RawResponseMessage, payload: StreamReader, exact: bool) -> None:
        """The answer's head has arrived: how its body ends, and whoever waits learns of it."""
        if message.should_close:
            self.should_close = True
        self.payload = payload
        self._exact = exact
        self._chunked = bool(message.chunked)
        length = message.headers.get("Content-Length", "")
        self._remaining = int(length) if exact and length.isdigit() else None
        self._last = b""
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((message, payload))

    def _read_body(self, data: bytes) -> None:
        payload = self.payload
        assert payload is not None
        if payload.is_eof():
            if data:
                self._stray("after a complete answer")
            return
        if self._remaining is not None and data:
            self._remaining -= len(data)
            if self._remaining < 0:  # more than the Content-Length: the rest is not its body
                self._stray("past the answer's Content-Length")
        messages = self._feed(data)
        if messages is None or not payload.is_eof():
            return
        # The body ended in this data: anything after its end is stray.
        if messages or (self._chunked and not self._last.endswith((b"\n\r\n", b"\n\n"))):
            self._stray("after the answer's last chunk")

    def _stray(self, where: str) -> None:
        """Bytes that belong to no request: the connection is never used again (closed now if
        its answer is whole, else once it has been read)."""
        first = not self.should_close
        self.should_close = True
        if first and self.said.stray.ready():
            logger.warning(
                "the upstream sent bytes no request asked for; connection closed",
                extra={
                    "upstream": f"{self.key[1]}:{self.key[2]}",
                    "where": where,
                    "since_last_line": self.said.stray.take_skipped(),
                },
            )
        if self.payload is None or self.payload.is_eof():
            self.close()

    def _malformed(self, error: Exception) -> None:
        if self.said.malformed.ready():
            logger.warning(
                "the upstream's answer is malformed; connection closed",
                extra={
                    "upstream": f"{self.key[1]}:{self.key[2]}",
                    "error": type(error).__name__,
                    "detail": excerpt(str(error)),
                    "since_last_line": self.said.malformed.take_skipped(),
                },
            )
        self._fail(PoolError(f"the upstream's answer is malformed: {fault(error)}", "protocol"))

    def _fail(self, error: Exception) -> None:
        self.should_close = True
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)
        elif self.payload is not None and not self.payload.is_eof():
            self.payload.set_exception(ClientPayloadError(str(error)))
        if self.transport is not None:
            self.transport.close()

    # -- the pool's side -----------------------------------------------------------------------

    def expect(self, head_request: bool) -> None:
        """Get ready for the answer to a new request."""
        self._parser = HttpResponseParser(
            self,
            self._loop,
            READ_BUFFER,
            payload_exception=ClientPayloadError,
            response_with_body=not head_request,
            read_until_eof=True,  # an answer without a length runs to the connection's end
            auto_decompress=False,
        )
        self.answer = self._loop.create_future()
        self.payload = None
        self.writer = None
        self.got_bytes = False
        self.awaiting = True
        self.last_active = self._loop.time()
        self._last = b""
        self._exact = False
        self._remaining = None
        self._chunked = False

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
        """True when the answer was read whole, nothing unexpected came with it, and the
        connection may carry another."""
        return (
            not self.lost
            and not self.should_close
            and (self.writer is None or self.writer.done())
            and self.payload is not None
            and self.payload.is_eof()
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def usable(self) -> bool:
        """True while an idle connection may be taken for a request (not lost, nothing stray
        arrived on it)."""
        return not self.lost and not self.should_close

    def idle(self) -> None:
        """Keep nothing of the last answer while idle (a pool of 1,000 would hold 1,000 answers'
        headers); a byte that arrives now is stray."""
        self._parser = None
        self.answer = self.payload = self.writer = None
        self.last_active = self._loop.time()

    def close(self) -> None:
        """Close the connection."""
        self.should_close = True
        if self.transport is not None:
            self.transport.close()
