"""Errors the sidecar itself answers with, as `application/problem+json` (RFC 9457).

    SidecarError                 any answer we make up ourselves (never an upstream's)
    ├── BadRequest               400 bad-request
    ├── Unauthorized             401 unauthorized
    ├── Forbidden                403 forbidden
    ├── NotFound                 404 not-found
    ├── RequestTimeout           408 request-timeout
    ├── Conflict                 409 conflict
    ├── PayloadTooLarge          413 payload-too-large
    ├── ExpectationFailed        417 expectation-failed
    ├── Unprocessable            422 invalid-request
    ├── TooManyRequests          429 too-many-requests
    ├── InternalError            500 internal-error       (a bug of ours)
    ├── UpstreamUnreachable      502 upstream-unreachable
    ├── Unavailable              503 unavailable
    ├── Overloaded               503 overloaded           (a budget of the process is spent)
    └── UpstreamTimeout          504 upstream-timeout

Handlers raise these; the one error boundary (`sidecar.boundary`) turns them, and anything
unexpected, into problem answers. Each class names the bounded `outcome` its calls are counted
under in metrics and logs.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class SidecarError(Exception):
    """Base: carries the HTTP status, a stable `code`, a human title and the metrics outcome."""

    status = 500
    code = "internal-error"
    title = "Internal error"
    outcome = "rejected"
    closes = False  # the connection is closed after the answer (its request was not read whole)

    def __init__(
        self,
        detail: str = "",
        *,
        headers: dict[str, str] | None = None,
        kind: str = "other",
        **extra: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = headers or {}
        self.kind = kind  # for metrics only (e.g. connect, timeout), never shown
        self.extra = extra


class BadRequest(SidecarError):
    status, code, title = 400, "bad-request", "Bad request"


class Unauthorized(SidecarError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(SidecarError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(SidecarError):
    status, code, title = 404, "not-found", "Not found"


class RequestTimeout(SidecarError):
    status, code, title, closes = 408, "request-timeout", "Request timeout", True


class Conflict(SidecarError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(SidecarError):
    status, code, title, closes = 413, "payload-too-large", "Payload too large", True


class ExpectationFailed(SidecarError):
    status, code, title, closes = 417, "expectation-failed", "Expectation failed", True


class Unprocessable(SidecarError):
    status, code, title = 422, "invalid-request", "Invalid request"


class TooManyRequests(SidecarError):
    status, code, title = 429, "too-many-requests", "Too many requests"


class InternalError(SidecarError):
    status, code, title, outcome = 500, "internal-error", "Internal error", "internal_error"


class UpstreamUnreachable(SidecarError):
    status, code, title = 502, "upstream-unreachable", "Upstream unreachable"
    outcome = "upstream_error"


class Unavailable(SidecarError):
    status, code, title, outcome = 503, "unavailable", "Service unavailable", "internal_error"


class RedisFault(Unavailable):
    """Redis is away, slow, read-only or failing over: the deployment's fault, not a bug."""

    outcome = "redis_fault"


class Overloaded(SidecarError):
    """Refused because a budget of the whole process is spent (its request was not read)."""

    status, code, title, closes = 503, "overloaded", "Overloaded", True


class UpstreamTimeout(SidecarError):
    status, code, title, outcome = 504, "upstream-timeout", "Upstream timeout", "upstream_error"


def problem_body(
    status: int, code: str, title: str, detail: str = "", **extra: Any
) -> dict[str, Any]:
    """An RFC 9457 problem document."""
    body: dict[str, Any] = {"type": f"urn:sidecar:problem:{code}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str = "",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """An `application/problem+json` answer."""
    return web.Response(
        status=status,
        body=orjson.dumps(problem_body(status, code, title, detail, **extra)),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def error_response(error: SidecarError, **extra: Any) -> web.Response:
    """The answer for one of our own errors, with its headers and extra members."""
    return problem_response(
        error.status,
        error.code,
        error.title,
        error.detail,
        headers=dict(error.headers),
        **{**error.extra, **extra},
    )
