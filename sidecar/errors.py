"""Errors the sidecar itself answers with, as `application/problem+json` (RFC 9457).

    SidecarError                 any answer we make up ourselves (never an upstream's)
    ├── BadRequest               400 bad-request
    ├── Unauthorized             401 unauthorized
    ├── NotFound                 404 not-found
    ├── Conflict                 409 conflict
    ├── PayloadTooLarge          413 payload-too-large
    ├── Unprocessable            422 invalid-request
    ├── UpstreamUnreachable      502 upstream-unreachable
    ├── Unavailable              503 unavailable
    └── UpstreamTimeout          504 upstream-timeout

Handlers raise these; the `problem_middleware` turns them into answers. Nothing else becomes a
problem document except an unexpected bug, which is logged with its traceback and answered 500.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

PROBLEM_JSON = "application/problem+json"


class SidecarError(Exception):
    """Base: carries the HTTP status, a stable `code` and a human title."""

    status = 500
    code = "internal-error"
    title = "Internal error"

    def __init__(self, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.extra = extra


class BadRequest(SidecarError):
    status, code, title = 400, "bad-request", "Bad request"


class Unauthorized(SidecarError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class NotFound(SidecarError):
    status, code, title = 404, "not-found", "Not found"


class Conflict(SidecarError):
    status, code, title = 409, "conflict", "Conflict"


class PayloadTooLarge(SidecarError):
    status, code, title = 413, "payload-too-large", "Payload too large"


class Unprocessable(SidecarError):
    status, code, title = 422, "invalid-request", "Invalid request"


class UpstreamUnreachable(SidecarError):
    status, code, title = 502, "upstream-unreachable", "Upstream unreachable"


class Unavailable(SidecarError):
    status, code, title = 503, "unavailable", "Service unavailable"


class UpstreamTimeout(SidecarError):
    status, code, title = 504, "upstream-timeout", "Upstream timeout"


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


def error_response(
    error: SidecarError, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    """The answer for one of our own errors (its `kind` stays internal, for metrics)."""
    fields = {k: v for k, v in {**error.extra, **extra}.items() if k != "kind"}
    return problem_response(
        error.status, error.code, error.title, error.detail, headers=headers, **fields
    )
