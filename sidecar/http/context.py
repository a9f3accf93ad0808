"""What is known about one request while it is handled: created by its listener when it
arrives, filled in as it goes, reported once at the end (metrics, the access log line)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web
from yarl import URL

from ..routing import CompiledRoute
from ..trace import Trace

UNMATCHED = "-"  # route label of proxied requests no route matched
_NO_URL = URL()


@dataclass(slots=True)
class RequestContext:
    """Any request on either listener: its identity and how it ended."""

    correlation_id: str
    started: float = field(default_factory=time.perf_counter)
    outcome: str = "ok"
    reason: str | None = None
    status: int = 0
    error_kind: str | None = None  # what failed, for our own errors (connect, timeout, ...)
    # The answer once its headers are sent: an error after that can only end the connection.
    response: web.StreamResponse | None = None


@dataclass(slots=True)
class CallContext(RequestContext):
    """A proxied call: its route, upstream and client-facing origin, and its timings."""

    route: CompiledRoute | None = None
    upstream: URL = _NO_URL
    origin: str = ""
    outcome: str = "passthrough"
    operation_id: str | None = None  # the id the completion carries, when not the correlation id
    trace: Trace | None = None  # the sidecar's span of the call
    upstream_s: float | None = None
    wait_s: float | None = None
    client_stalled: bool = False  # the client was too slow sending its body
    idempotency: str | None = None  # what its Idempotency-Key did (new, attach, replay, ...)

    @property
    def route_name(self) -> str:
        """Route label for metrics and logs."""
        return self.route.route.name if self.route else UNMATCHED


CONTEXT = web.RequestKey("context", RequestContext)
