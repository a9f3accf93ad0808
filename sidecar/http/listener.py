"""The HTTP listeners' guard: what a slow, greedy or malformed client may cost.

aiohttp's protocol gets three things added (`GuardedRequestHandler`):

    header timeout   the request line and headers must arrive within `clients.header_timeout`
                     of their first byte, else 408 problem+json and the connection is closed (a
                     trickling client holds a socket for seconds, not minutes); a new
                     connection that sends nothing at all within it is closed silently
    connection cap   past `clients.max_connections` open connections (`auto`: what the
                     open-files limit holds, `process.client_connections`), a new one is closed
                     at once, counted and logged at most once a second (file descriptors are
                     never exhausted, so asyncio never spins on a failing accept()); likewise past
                     `clients.max_connections_per_address` from one client address, when set
    bad requests     a request aiohttp cannot parse is answered 400 problem+json with the
                     correlation header, logged at WARNING without a traceback, at most once a
                     second (counted always)

Keep-alive idleness is aiohttp's own `keepalive_timeout` (`clients.idle_timeout`); bodies are
bounded where they are read (`sidecar.body`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from ..config import Clients
from ..errors import PROBLEM_JSON, problem_body
from ..ids import new_id
from ..logs import Every
from ..metrics import Metrics

logger = logging.getLogger(__name__)


class ClientGuard:
    """The limits of one listener and what they caught."""

    def __init__(
        self,
        listener: str,
        limits: Clients,
        correlation_header: Callable[[], str],
        metrics: Metrics,
        max_connections: int,
    ) -> None:
        self.listener = listener
        self.limits = limits
        self.max_connections = max_connections  # `limits.max_connections`, `auto` resolved
        self.correlation_header = correlation_header
        self.refused = metrics.client_refused.labels(listener)
        self.timeouts = metrics.client_timeouts
        self.malformed = metrics.malformed_requests
        self.open = metrics.client_connections.labels(listener)
        self.address_refused = metrics.client_address_refused.labels(listener)
        self.connections = 0
        self._by_address: dict[str, int] = {}  # open connections per client address, when capped
        self._refused_log = Every()
        self._address_log = Every()
        self._timeout_log = Every()
        self._malformed_log = Every()

    def admit(self, address: str | None = None) -> bool:
        """Count a new connection (from `address`, when the per-address cap is on); False
        (refused, counted, logged) past a cap."""
        limits = self.limits
        if self.connections >= self.max_connections:
            self.refused.inc()
            return _refused(
                self._refused_log,
                "client connection refused: too many open",
                listener=self.listener,
                max_connections=self.max_connections,
            )
        if address is not None:
            held = self._by_address.get(address, 0)
            if held >= limits.max_connections_per_address:
                self.address_refused.inc()
                return _refused(
                    self._address_log,
                    "client connection refused: too many open from one address",
                    listener=self.listener,
                    remote=address,
                    max_connections_per_address=limits.max_connections_per_address,
                )
            self._by_address[address] = held + 1
        self.connections += 1
        self.open.set(self.connections)
        return True

    def left(self, address: str | None = None) -> None:
        """A connection closed (`address`: as given to `admit`)."""
        self.connections -= 1
        self.open.set(self.connections)
        if address is not None:
            held = self._by_address.pop(address, 0) - 1
            if held > 0:
                self._by_address[address] = held

    def per_address(self) -> bool:
        """True when connections are capped per client address."""
        return self.limits.max_connections_per_address > 0

    def timed_out(self, phase: str, remote: str | None) -> None:
        """Count (and now and then log) a client too slow to send its request."""
        self.timeouts.labels(self.listener, phase).inc()
        if self._timeout_log.ready():
            logger.warning(
                "client too slow; answered 408 and closed",
                extra={"listener": self.listener, "phase": phase, "remote": remote},
            )

    def bad_request(self, status: int, reason: str, remote: str | None) -> None:
        """Count (and now and then log) a request that could not be parsed."""
        self.malformed.labels(self.listener).inc()
        if self._malformed_log.ready():
            logger.warning(
                "malformed request",
                extra={
                    "listener": self.listener,
                    "status": status,
                    "reason": reason,
                    "remote": remote,
                    "since_last_line": self._malformed_log.take_skipped(),
                },
            )

    def problem(self, status: int, code: str, title: str, detail: str) -> tuple[bytes, str]:
        """A problem document and the correlation id it carries (a new one)."""
        cid = new_id()
        return orjson.dumps(problem_body(status, code, title, detail, correlation_id=cid)), cid


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol with the guard's header timeout, connection cap and bad-request
    answers."""

    def __init__(self, manager: Server, *, guard: ClientGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._admitted = False
        self._address: str | None = None  # the client's, when connections are capped per address
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False  # bytes of a request whose headers are not complete yet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._guard.per_address():
            self._address = _peer(transport) or ""
        if not self._guard.admit(self._address):
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        if self._admitted:
            self._admitted = False
            self._guard.left(self._address)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting_for_headers = not self._request_in_progress and not self._messages
        if data and waiting_for_headers:
            self._partial = True
            if self._header_timer is None:
                self._start_header_timer()  # the first bytes of the next request
        super().data_received(data)
        if self._messages or self._request_in_progress:
            self._partial = False
            self._stop_header_timer()

    def _start_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(
            self._guard.limits.header_timeout, self._headers_too_slow
        )

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        transport = self.transport
        if transport is None or self._messages or self._request_in_progress:
            return
        if not self._partial:
            # A new connection that never sent a byte: closed without a word.
            self._guard.timed_out("idle", _peer(transport))
            self.force_close()
            transport.close()
            return
        self._guard.timed_out("headers", _peer(transport))
        body, cid = self._guard.problem(
            408,
            "request-timeout",
            "Request timeout",
            f"the request line and headers must arrive within "
            f"{self._guard.limits.header_timeout:g}s",
        )
        head = (
            "HTTP/1.1 408 Request Timeout\r\n"
            f"Content-Type: {PROBLEM_JSON}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{self._guard.correlation_header()}: {cid}\r\n"
            "Connection: close\r\n\r\n"
        )
        transport.write(head.encode("latin-1") + body)
        self.force_close()
        transport.close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = message or (str(exc) if exc else "") or "bad request"
        self._guard.bad_request(status, reason, request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is closed")
        body, cid = self._guard.problem(status, "bad-request", "Bad request", reason[:500])
        response = web.Response(
            status=status,
            body=body,
            content_type=PROBLEM_JSON,
            headers={self._guard.correlation_header(): cid},
        )
        response.force_close()
        return response


def close_after_answer(request: web.BaseRequest) -> None:
    """Close the connection right after this request's answer, without first reading (and
    discarding) the rest of a body the client is still sending, as aiohttp would for up to
    its lingering time: a client refused for a slow or oversized body gets its answer and the
    end of the connection at once."""
    protocol = request.protocol
    if isinstance(protocol, RequestHandler):
        protocol._lingering_time = 0.0


def _refused(every: Every, message: str, **extra: Any) -> bool:
    """Log a refused connection (at most once a second, with how many were held back); False."""
    if every.ready():
        logger.warning(
            message,
            extra=extra | {"refused_since_last_line": every.take_skipped()},
        )
    return False


def _peer(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if peer else None


class GuardedServer(Server):
    """aiohttp's server, making `GuardedRequestHandler`s."""

    def __init__(self, *args: Any, guard: ClientGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self._guard, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """An `AppRunner` whose server guards its listener with `guard`."""

    def __init__(self, app: web.Application, *, guard: ClientGuard, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", guard.limits.idle_timeout)
        # No SO_KEEPALIVE (a system call per connection): its first probe comes after the
        # kernel's 2 hours, while an idle or a held connection lives at most `idle_timeout`
        # or its route's budget here.
        kwargs.setdefault("tcp_keepalive", False)
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> Server:
        server = await super()._make_server()
        guarded = GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            guard=self._guard,
            **server._kwargs,
        )
        return guarded
