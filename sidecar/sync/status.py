"""The sidecar's own status monitor: `GET {operations.path}/{token}` on the proxy listener.

A fallback 202 points here when its route says `respond.location: sidecar`, or when the API's
202 had no Location at all (and Redis is configured). The token is minted by the sidecar (256
bits from the OS, never the correlation id) and stored only as its SHA-256, naming the operation
and the caller's tenant; it lives `operations.retention`. Any replica answers, from Redis:

    pending                          202 + Retry-After (held first with Prefer: wait=N)
    succeeded / failed               the answer a held call would have given
    unknown, expired, another's      404 problem+json (the same for all three)

When tenancy applies (the call carried a credential) the GET must carry the same one.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

import orjson
from aiohttp import web

from ..config import Route
from ..errors import NotFound, SidecarError, UpstreamUnreachable
from ..http.context import CallContext
from ..http.prefer import parse_prefer
from ..operations import OPERATIONS, Operations
from ..operations.records import TOKEN_LENGTH, Operation, Outcome, digest, new_token
from ..routing import RUNTIME
from ..state import HASHER, HUB, TRACKER
from ..timeline import LONG_POLL, STATUS_READ
from .answers import Accepted
from .journal import note
from .replay import answer_outcome, route_of
from .wait import HELD, Waits

TOKEN_RE = re.compile(rf"^[A-Za-z0-9_-]{{{TOKEN_LENGTH}}}$")
FIRST_CHECK_S = 0.05  # a waiting reader looks at Redis this soon, then ever less often
MAX_CHECK_S = 1.0


class NotAllowed(SidecarError):
    """405: the status monitor answers GET (and HEAD) only."""

    status, code, title = 405, "method-not-allowed", "Method not allowed"


def monitors(request: web.Request) -> bool:
    """True when the request is for the status monitor (whose paths never reach the API)."""
    settings = request.app[RUNTIME].settings
    # No Redis, no monitor: the path is the API's like any other. The raw target as sent (no
    # URL object is built for the calls that are not for it).
    return settings.redis_url is not None and request.raw_path.startswith(
        settings.operations.path + "/"
    )


def point_at_monitor(request: web.Request, route: Route, accepted: Accepted) -> str | None:
    """Give the fallback 202 the monitor's Location (a new token) when the route asks for it or
    the API gave none; the token, or None when the API's Location stays."""
    if route.respond.location != "sidecar" and accepted.client_location is not None:
        return None
    if request.app[TRACKER] is None:
        return None
    settings = request.app[RUNTIME].settings
    token = new_token()
    base = (settings.proxy.public_url or "").rstrip("/")
    location = f"{base}{settings.operations.path}/{token}"
    accepted.client_location = location
    accepted.headers["Location"] = location
    return token


def withdraw(accepted: Accepted) -> None:
    """Take the monitor's Location back (its token was not stored: nothing would answer it)."""
    accepted.client_location = None
    accepted.headers.popall("Location", None)


async def answer_status(request: web.Request, call: CallContext) -> web.StreamResponse:
    """Answer a GET of a status URL."""
    ops = request.app[OPERATIONS]
    assert ops is not None  # `monitors` said Redis is configured
    if request.method not in ("GET", "HEAD"):
        raise NotAllowed("the status monitor answers GET", headers={"Allow": "GET, HEAD"})
    call.outcome = "status_read"
    op = await _authorised(request, ops)
    if op is None:
        ops.metrics.status_reads.labels("not_found").inc()
        raise NotFound("no such operation (unknown, expired, or not yours)")
    call.correlation_id = op.correlation_id
    call.route = request.app[RUNTIME].table.by_name.get(op.route)
    route = route_of(request, op)
    prefs = parse_prefer(request.headers.getall("Prefer", ()))
    outcome, waited_s, applied = op.outcome, None, []
    if outcome is None and prefs.wait_s is not None and op.wait_id:
        applied = [f"wait={prefs.wait_s:g}"]
        started = time.monotonic()
        if request.app[HELD].take(route.name, route.max_waiting):
            try:
                outcome = await await_outcome(request, route, op, min(prefs.wait_s, route.budget))
            finally:
                request.app[HELD].release(route.name)
        waited_s = time.monotonic() - started
    response = await _answer(request, call, op, outcome, route, applied)
    result = "pending" if outcome is None else outcome.state
    ops.metrics.status_reads.labels(result).inc()
    call.reason = result
    kind = STATUS_READ if waited_s is None else LONG_POLL
    fields: dict[str, object] = {"status": response.status, "state": result}
    if waited_s is not None:
        fields["waited_ms"] = round(waited_s * 1000, 1)
    note(request, op.correlation_id, kind, via="status", **fields)
    return response


async def _authorised(request: web.Request, ops: Operations) -> Operation | None:
    """The operation the token names, if the caller may read it."""
    path = request.raw_path.partition("?")[0]
    token = path[len(request.app[RUNTIME].settings.operations.path) + 1 :]
    if not TOKEN_RE.match(token):
        return None
    found = await ops.store.token(token)
    if found is None:
        return None
    tenant, correlation_id = found
    if tenant is not None:
        header = request.app[RUNTIME].settings.tenancy.credential_header
        if await request.app[HASHER].tenant(request.headers.get(header)) != tenant:
            return None
    op = await ops.store.get(correlation_id)
    # The operation must still be the token's (not a later call's under a reused id).
    return op if op is not None and op.token_digest == digest(token) else None


async def _answer(
    request: web.Request,
    call: CallContext,
    op: Operation,
    outcome: Outcome | None,
    route: Route,
    applied: list[str],
) -> web.StreamResponse:
    if outcome is None:
        call.status = 202
        headers = {
            "Retry-After": str(max(1, math.ceil(route.respond.retry_after))),
            "Vary": "Prefer",
        }
        if applied:
            headers["Preference-Applied"] = ", ".join(applied)
        body = {"correlation_id": op.correlation_id, "state": "pending", "route": op.route}
        if op.operation_id:
            body["operation_id"] = op.operation_id
        return web.Response(
            status=202, body=orjson.dumps(body), content_type="application/json", headers=headers
        )
    answered = await answer_outcome(request, call, op, outcome, applied)
    if answered is None:
        raise UpstreamUnreachable("the result's Location did not answer; try again")
    return answered


async def await_outcome(
    request: web.Request, route: Route, op: Operation, timeout_s: float
) -> Outcome | None:
    """The operation's outcome within `timeout_s` (None: none yet, or the operation is gone):
    from its completion event at once on a stream route (every replica reads every event), else
    as soon as whoever learns it records it (looked up in Redis, ever less often)."""
    ops = request.app[OPERATIONS]
    assert ops is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waits = Waits(request.app[HUB])
    if route.wait is not None and route.wait.stream is not None and op.wait_id:
        # The id is this operation's (the caller proved it may read it): a cached event counts.
        waits.listen(route.wait.stream, op.wait_id, cached=True)
    check_s = FIRST_CHECK_S
    try:
        while (remaining := deadline - loop.time()) > 0:
            if waits.waiter is not None:
                future = waits.waiter.future
                await asyncio.wait({future}, timeout=min(check_s, remaining))
                if future.done() and future.result() is not None:
                    completion = future.result()
                    assert completion is not None
                    return Outcome.of_completion(completion, time.time())
            else:
                # Polling Redis, where another replica's poller records the outcome.
                await asyncio.sleep(min(check_s, remaining))
            done = await ops.store.done(op.correlation_id)
            if done is None:
                return None
            if done:
                fresh = await ops.store.get(op.correlation_id)
                return fresh.outcome if fresh is not None else None
            check_s = min(check_s * 1.5, MAX_CHECK_S)
        return None
    finally:
        waits.close()
