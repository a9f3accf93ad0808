"""The answers of a synchronised call: the result, the failure problem, or the fallback 202.

    success  → respond.success_status with the completion's data (or a GET of the Location)
    failure  → respond.failure_status, application/problem+json carrying the failure's detail
    fallback → the upstream's own 202 (headers, body), client-facing Location, Retry-After

Every one carries `Vary: Prefer`, and `Preference-Applied` when a preference was honoured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..completions.completion import Completion
from ..config import Route
from ..errors import PROBLEM_JSON, problem_body
from ..http.context import CallContext
from ..http.upstream import Replayed
from ..metrics import METRICS


@dataclass(slots=True)
class Accepted:
    """The upstream's 202, held so it can be replayed as the fallback answer."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]  # end-to-end, Location already client-facing
    body: bytes
    upstream_location: URL | None
    client_location: str | None
    upstream_text: str | None = None  # `upstream_location` as text, when known already

    @property
    def upstream_location_text(self) -> str | None:
        """`upstream_location` as text."""
        if self.upstream_text is None and self.upstream_location is not None:
            self.upstream_text = str(self.upstream_location)
        return self.upstream_text


def _headers(applied: list[str]) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    headers["Vary"] = "Prefer"
    if applied:
        headers["Preference-Applied"] = ", ".join(applied)
    return headers


def fallback(
    request: web.Request, call: CallContext, accepted: Accepted, applied: list[str], reason: str
) -> web.Response:
    """The upstream's own 202 (headers, body), client-facing Location, Retry-After."""
    route = call.route.route if call.route else None
    headers = accepted.headers.copy()
    headers.popall("Content-Length", None)
    headers.update(_headers(applied))
    if "Retry-After" not in headers and route is not None:
        headers["Retry-After"] = str(max(1, math.ceil(route.respond.retry_after)))
    call.outcome, call.reason, call.status = "fallback_async", reason, accepted.status
    if route is not None:
        request.app[METRICS].fallbacks.labels(route.name, reason).inc()
    return Replayed(
        status=accepted.status, reason=accepted.reason, body=accepted.body, headers=headers
    )


def body_of(completion: Completion) -> tuple[bytes, str | None]:
    """The result's bytes and content type: JSON as JSON, other data as text."""
    if completion.data is None:
        return b"", None
    if completion.is_json:
        # The JSON text as the backend wrote it, when it came as such: nothing re-serialised.
        body = completion.raw if completion.raw is not None else orjson.dumps(completion.data)
        return body, "application/json"
    return str(completion.data).encode(), "text/plain; charset=utf-8"


def failure_detail(data: Any) -> str:
    """A human `detail` from failure data: its detail/reason/message/error, or the text."""
    if isinstance(data, dict):
        for key in ("detail", "reason", "message", "error", "title"):
            if isinstance(data.get(key), str):
                return str(data[key])
    if isinstance(data, str):
        return data
    return "the operation failed"


def failed(
    call: CallContext, route: Route, accepted: Accepted, completion: Completion, applied: list[str]
) -> web.Response:
    """The failure answer: problem+json with the failure's detail and data."""
    headers = _headers(applied)
    if accepted.client_location:
        headers["Content-Location"] = accepted.client_location
    body = problem_body(
        route.respond.failure_status,
        "completion-failed",
        "The operation failed",
        failure_detail(completion.data),
        correlation_id=call.correlation_id,
        **({"operation_id": call.operation_id} if call.operation_id else {}),
        event_type=completion.event_type,
        data=completion.data,
    )
    call.outcome, call.status = "sync_failure", route.respond.failure_status
    return web.Response(
        status=call.status, body=orjson.dumps(body), content_type=PROBLEM_JSON, headers=headers
    )


def succeeded(
    call: CallContext,
    route: Route,
    accepted: Accepted,
    payload: bytes,
    content_type: str | None,
    applied: list[str],
) -> web.Response:
    """The success answer: the result with the route's success status."""
    headers = _headers(applied)
    if accepted.client_location:
        headers["Content-Location"] = accepted.client_location
        if route.respond.success_status == 201:
            headers["Location"] = accepted.client_location
    if content_type:
        headers["Content-Type"] = content_type
    call.outcome, call.status = "sync_success", route.respond.success_status
    return Replayed(status=call.status, body=payload, headers=headers)
