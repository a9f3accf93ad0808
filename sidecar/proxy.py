"""The proxy listener: every request is either passed through (streamed) or synchronised.

`CallContext` follows one call from arrival to its access-log line; `call_middleware` owns it,
turns our own errors into problem documents, and records metrics and the log line for every call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from .errors import SidecarError, error_response
from .headers import client_origin, correlation_id, response_headers, upstream_request_headers
from .metrics import status_class
from .routing import CompiledRoute
from .state import HTTP, METRICS, RUNTIME
from .upstream import map_client_errors, relay_body

logger = logging.getLogger(__name__)
access_log = logging.getLogger("sidecar.access")

CALL = web.RequestKey("call", object)
UNMATCHED = "-"  # route label of requests no route matched


@dataclass(slots=True)
class CallContext:
    """What is known about one proxied call; filled in as it goes, logged once at the end."""

    correlation_id: str
    route: CompiledRoute | None
    upstream: URL
    origin: str
    started: float = field(default_factory=time.perf_counter)
    outcome: str = "passthrough"
    reason: str | None = None
    status: int = 0
    upstream_s: float | None = None
    wait_s: float | None = None

    @property
    def route_name(self) -> str:
        """Route label for metrics and logs."""
        return self.route.route.name if self.route else UNMATCHED


def upstream_url(base: URL, request: web.Request) -> URL:
    """The upstream URL: its origin (and base path) plus the request's raw path and query."""
    return URL(str(base).rstrip("/") + request.raw_path, encoded=True)


async def open_upstream(request: web.Request, call: CallContext) -> aiohttp.ClientResponse:
    """Send the request upstream with its body streamed; return the response (headers read)."""
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    headers = upstream_request_headers(
        request.headers,
        remote=request.remote,
        scheme=request.scheme,
        host=request.host,
        trust_forwarded=settings.proxy.trust_forwarded_headers,
        correlation_header=settings.correlation_header,
        correlation=call.correlation_id,
    )
    data = request.content if request.body_exists else None
    started = time.perf_counter()
    with map_client_errors():
        response = await request.app[HTTP].request(
            request.method,
            upstream_url(call.upstream, request),
            headers=headers,
            data=data,
            allow_redirects=False,
        )
    call.upstream_s = time.perf_counter() - started
    return response


async def relay(
    request: web.Request,
    call: CallContext,
    upstream: aiohttp.ClientResponse,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Relay an upstream answer unchanged (status, headers, body), streamed."""
    headers = response_headers(upstream.headers, upstream=call.upstream, origin=call.origin)
    headers[request.app[RUNTIME].settings.correlation_header] = call.correlation_id
    if extra_headers:
        headers.update(extra_headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    call.status = upstream.status
    await response.prepare(request)
    if request.method != "HEAD":
        await relay_body(upstream, response)
    return response


async def pass_through(
    request: web.Request, call: CallContext, extra_headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Forward the call and relay whatever the upstream answers."""
    async with await open_upstream(request, call) as upstream:
        return await relay(request, call, upstream, extra_headers)


@web.middleware
async def call_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Create the call context, answer our own errors as problem+json, log and count the call."""
    app = request.app
    settings = app[RUNTIME].settings
    compiled = app[RUNTIME].table.match(request.method, request.path)
    trusted = request.headers if settings.proxy.trust_forwarded_headers else None
    call = CallContext(
        correlation_id=correlation_id(request.headers.get(settings.correlation_header)),
        route=compiled,
        upstream=compiled.upstream if compiled else app[RUNTIME].table.default_upstream,
        origin=client_origin(
            public_url=settings.proxy.public_url,
            scheme=request.scheme,
            host=request.host,
            forwarded=trusted,
        ),
    )
    request[CALL] = call
    metrics = app[METRICS]
    metrics.in_flight.inc()
    try:
        try:
            return await handler(request)
        except SidecarError as error:
            call.outcome = "upstream_error"
            call.status = error.status
            kind = str(error.extra.get("kind", "other"))
            metrics.upstream_errors.labels(call.route_name, kind).inc()
            return error_response(
                error,
                correlation_id=call.correlation_id,
                headers={settings.correlation_header: call.correlation_id},
            )
        except (ConnectionResetError, aiohttp.ClientConnectionResetError, asyncio.CancelledError):
            # The client went away: aiohttp cancels the handler (handler_cancellation) or the
            # write fails. Nothing is answered; the call is counted as such.
            call.outcome = "client_gone"
            raise
    finally:
        metrics.in_flight.dec()
        _record(app, request, call)


def _record(app: web.Application, request: web.Request, call: CallContext) -> None:
    elapsed = time.perf_counter() - call.started
    metrics = app[METRICS]
    metrics.requests.labels(call.route_name, call.outcome, status_class(call.status)).inc()
    metrics.request_duration.labels(call.route_name, call.outcome).observe(elapsed)
    access_log.info(
        "call",
        extra={
            "route": call.route_name,
            "method": request.method,
            "path": request.path,
            "status": call.status,
            "outcome": call.outcome,
            "reason": call.reason,
            "correlation_id": call.correlation_id,
            "duration_ms": round(elapsed * 1000, 3),
            "upstream_ms": None if call.upstream_s is None else round(call.upstream_s * 1000, 3),
            "wait_ms": None if call.wait_s is None else round(call.wait_s * 1000, 3),
        },
    )
