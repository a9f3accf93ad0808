"""The one error boundary, shared by the proxy and the admin listener.

Each listener says how a request begins (`begin`: its context, with the correlation id) and
ends (`end`: metrics, the access log). Between the two, whatever the handler does:

    answers                              → passed on, with the correlation header
    SidecarError                         → its problem+json answer, outcome of its class
    aiohttp HTTPException ≥ 400          → problem+json (404, 405, 413 of the framework), rejected
    Redis fault that reached us          → 503 problem+json, redis_fault, counted in
                                           sidecar_redis_faults_total,
                                           one WARNING a second (no traceback)
    the client went away                 → nothing to answer, client_gone
    anything else (a bug of ours, a       → 500 problem+json, internal_error, logged with traceback
    Redis error such as WRONGTYPE too)

Every answer carries the correlation header and every problem its `correlation_id` (and the
`operation_id` when a call has one). An error after an answer's headers were sent cannot become
a problem any more: the connection is closed, so the client sees a truncated answer, never a
complete-looking wrong one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..connections import REDIS_FAULTS
from ..errors import InternalError, RedisFault, SidecarError, error_response
from ..logs import Every
from ..metrics import METRICS
from .context import CONTEXT, CallContext, RequestContext
from .listener import close_after_answer

logger = logging.getLogger(__name__)
_fault_log = Every()

CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError, asyncio.CancelledError)
_FRAMEWORK_CODES = {
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    413: "payload-too-large",
    431: "headers-too-large",
}


class Listener(Protocol):
    """How one listener begins and ends its requests."""

    @property
    def correlation_header(self) -> str:
        """The header carrying the correlation id (live config)."""
        ...

    def begin(self, request: web.Request) -> RequestContext:
        """The new request's context."""
        ...

    def end(self, request: web.Request, context: RequestContext) -> None:
        """Record the finished request (called once, whatever happened)."""
        ...


def framework_error(exc: web.HTTPException, request: web.Request) -> SidecarError:
    """aiohttp's own 4xx/5xx (no such path, method not allowed, body too large) as ours."""
    allow = exc.headers.get("Allow")
    detail = f"no endpoint {request.method} {request.path}" if exc.status in (404, 405) else ""
    if allow:
        detail += f" (this path allows {allow})"
    error = SidecarError(detail or exc.text or "", headers={"Allow": allow} if allow else None)
    error.status, error.title = exc.status, exc.reason
    error.code = _FRAMEWORK_CODES.get(exc.status, f"http-{exc.status}")
    error.outcome = "rejected" if exc.status < 500 else "internal_error"
    return error


def problem_middleware(listener: Listener) -> Middleware:
    """The boundary middleware of one listener (outermost)."""

    @web.middleware
    async def boundary(request: web.Request, handler: Handler) -> web.StreamResponse:
        context = listener.begin(request)
        request[CONTEXT] = context
        try:
            try:
                response = await handler(request)
            except CLIENT_GONE:
                context.outcome = "client_gone"
                raise
            except Exception as exc:
                error = _as_error(exc, request, context)
                if context.response is not None and context.response.prepared:
                    return _abort(request, context)
                response = answer_error(context, error, request)
            if not response.prepared:
                response.headers[listener.correlation_header] = context.correlation_id
            context.status = response.status
            return response
        finally:
            listener.end(request, context)

    return boundary


def _as_error(exc: Exception, request: web.Request, context: RequestContext) -> SidecarError:
    """Our error for whatever a handler raised; unexpected ones are logged here."""
    if isinstance(exc, SidecarError):
        return exc
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        return framework_error(exc, request)
    if isinstance(exc, REDIS_FAULTS):
        metrics = request.config_dict.get(METRICS)
        if metrics is not None:
            metrics.redis_faults.labels("request").inc()
        if _fault_log.ready():  # one line a second while Redis is away, not one per request
            logger.warning(
                "Redis fault while answering",
                extra={
                    **_fields(request, context),
                    "error": f"{exc.__class__.__name__}: {exc}",
                    "since_last_line": _fault_log.take_skipped(),
                },
            )
        return RedisFault(f"Redis is unavailable ({exc.__class__.__name__})")
    if isinstance(exc, web.HTTPException):  # a redirect raised on purpose
        raise exc
    logger.exception("unexpected error", extra=_fields(request, context))
    return InternalError()


def answer_error(
    context: RequestContext, error: SidecarError, request: web.Request | None = None
) -> web.StreamResponse:
    """The problem answer for `error`, recorded on the context. A response already started
    cannot be replaced: it is cut instead (see `_abort`)."""
    context.outcome = error.outcome
    context.error_kind = error.kind
    extra: dict[str, str] = {"correlation_id": context.correlation_id}
    if isinstance(context, CallContext) and context.operation_id:
        extra["operation_id"] = context.operation_id
    response = error_response(error, **extra)
    if error.closes:
        response.force_close()
        if request is not None:
            close_after_answer(request)
    return response


def _abort(request: web.Request, context: RequestContext) -> web.StreamResponse:
    """End a started answer by closing the connection (the client sees it truncated)."""
    assert context.response is not None
    context.outcome = "internal_error"
    if request.transport is not None:
        request.transport.close()
    return context.response


def _fields(request: web.Request, context: RequestContext) -> dict[str, object]:
    return {
        "method": request.method,
        "path": request.path,
        "correlation_id": context.correlation_id,
    }
