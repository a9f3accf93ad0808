"""Answering from what an operation kept: the answer a held call would have given, built by the
same code (`answers`) from its stored outcome, for the status monitor and idempotent retries.

    a completion  → respond.success_status with its data (or the resource, body: location), or
                    respond.failure_status with the failure problem
    a response    → the upstream's own answer as it was (status, kept headers, body)
    not kept      → 303 to the API's own Location when the client was given it, else 410
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..config import Route
from ..errors import SidecarError
from ..http.context import CallContext
from ..http.upstream import Replayed
from ..operations.records import Operation, Outcome
from ..routing import RUNTIME
from .answers import Accepted, body_of, failed, succeeded
from .polling import get_location


class ResultNotKept(SidecarError):
    """410: the result was larger than `operations.max_result`, so it was not kept."""

    status, code, title = 410, "result-not-kept", "Result not kept"


def accepted_of(op: Operation) -> Accepted:
    """The 202 the operation's call was answered, as a held call holds it."""
    headers: CIMultiDict[str] = CIMultiDict(op.accepted.headers if op.accepted else {})
    if op.location and "Location" not in headers:
        headers["Location"] = op.location
    upstream = URL(op.upstream_location, encoded=True) if op.upstream_location else None
    body = op.accepted.body if op.accepted else b""
    return Accepted(202, None, headers, body, upstream, op.location)


def route_of(request: web.Request, op: Operation) -> Route:
    """The operation's route as configured now (a route since removed answers with the
    defaults: 200 and 500)."""
    compiled = request.app[RUNTIME].table.by_name.get(op.route)
    return compiled.route if compiled is not None else Route(name=op.route or "gone", path="/")


async def answer_outcome(
    request: web.Request,
    call: CallContext,
    op: Operation,
    outcome: Outcome,
    applied: list[str],
) -> web.StreamResponse | None:
    """The answer an operation's outcome makes; None when it needs the resource at the
    Location and that GET failed."""
    route = route_of(request, op)
    accepted = accepted_of(op)
    call.operation_id = op.operation_id
    if not outcome.kept:
        return not_kept(call, op)
    if outcome.kind == "response":
        headers: CIMultiDict[str] = CIMultiDict(outcome.headers or {})
        call.status = outcome.status
        return Replayed(status=outcome.status, body=outcome.body or b"", headers=headers)
    completion = outcome.completion(op.wait_id or op.correlation_id)
    if not completion.succeeded:
        return failed(call, route, accepted, completion, applied)
    payload, content_type = body_of(completion)
    if route.respond.body == "location":
        if outcome.body is not None:
            payload, content_type = outcome.body, outcome.content_type
        else:
            got = await get_location(request, route, accepted)
            if got is None:
                return None
            payload, content_type = got.body, got.content_type
    return succeeded(call, route, accepted, payload, content_type, applied)


def not_kept(call: CallContext, op: Operation) -> web.StreamResponse:
    """An outcome too large to keep: 303 to the API's own Location if the client was given
    it (not the sidecar's), else 410."""
    if op.location and op.token_digest is None:
        call.status = 303
        return web.Response(status=303, headers={"Location": op.location})
    raise ResultNotKept(
        "the result was larger than operations.max_result and was not kept; its webhooks carried it"
    )
