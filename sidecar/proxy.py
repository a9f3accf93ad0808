"""The proxy listener: every path belongs to the upstream, except the sidecar's own status
monitor (`operations.path`, with Redis). A request on a sync route is synchronised, a long-poll
is held, everything else passes through, streamed.

`ProxyListener` begins each call (its context: route, upstream, client-facing origin, the
correlation id) and ends it (metrics, the access log line); the shared error boundary runs
between the two.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from .http.budget import release
from .http.context import CONTEXT, CallContext, RequestContext
from .http.headers import client_origin, correlation_id
from .http.upstream import pass_through
from .metrics import METRICS
from .routing import RUNTIME
from .sync.call import synchronise
from .sync.longpoll import long_poll
from .sync.status import answer_status, monitors
from .trace import TRACEPARENT, TRACESTATE, begin, current

logger = logging.getLogger(__name__)
access_log = logging.getLogger("sidecar.access")


class ProxyListener:
    """How the proxy listener begins and ends its calls."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    @property
    def correlation_header(self) -> str:
        """The correlation header of the live config."""
        return self.app[RUNTIME].settings.correlation_header

    def begin(self, request: web.Request) -> CallContext:
        """A call's context: its route (first match), upstream and origin."""
        runtime = self.app[RUNTIME]
        settings = runtime.settings
        compiled = runtime.table.match(request.method, request.path)
        trusted = request.headers if settings.proxy.trust_forwarded_headers else None
        self.app[METRICS].in_flight.inc()
        trace = begin(request.headers.get(TRACEPARENT), request.headers.get(TRACESTATE))
        current.set(trace)  # every line logged for the call carries it
        return CallContext(
            correlation_id=correlation_id(request.headers.get(settings.correlation_header)),
            route=compiled,
            upstream=compiled.upstream if compiled else runtime.table.default_upstream,
            origin=client_origin(
                public_url=settings.proxy.public_url,
                scheme=request.scheme,
                host=request.host,
                forwarded=trusted,
            ),
            trace=trace,
        )

    def end(self, request: web.Request, context: RequestContext) -> None:
        """Count the call and write its access log line."""
        assert isinstance(context, CallContext)
        current.set(None)  # the connection's next request is another call
        release(request)  # whatever its body still held of the budget
        metrics = self.app[METRICS]
        metrics.in_flight.dec()
        elapsed = time.perf_counter() - context.started
        route = context.route_name
        counted = metrics.call_series(route, context.outcome, context.status)
        counted.requests.inc()
        counted.duration.observe(elapsed)
        if context.outcome == "upstream_error":
            metrics.upstream_errors.labels(route, context.error_kind or "other").inc()
        if context.outcome == "internal_error":
            metrics.internal_errors.labels("proxy").inc()
        if not access_log.isEnabledFor(logging.INFO):
            return
        access_log.info(
            "call",
            extra={
                "route": route,
                "method": request.method,
                "path": request.path,
                "status": context.status,
                "outcome": context.outcome,
                "reason": context.reason,
                "correlation_id": context.correlation_id,
                "operation_id": context.operation_id,
                "idempotency": context.idempotency,
                "duration_ms": round(elapsed * 1000, 3),
                "upstream_ms": _ms(context.upstream_s),
                "wait_ms": _ms(context.wait_s),
                "trace_id": context.trace.trace_id if context.trace else None,
                "span_id": context.trace.span_id if context.trace else None,
            },
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    """Every path of the proxy listener."""
    call = request[CONTEXT]
    assert isinstance(call, CallContext)
    if monitors(request):
        return await answer_status(request, call)
    if call.route is not None and call.route.route.is_sync:
        return await synchronise(request, call)
    extra = await long_poll(request, call)
    return await pass_through(request, call, extra)
