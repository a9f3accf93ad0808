"""Polling the Location for a call: the poll task, and what a poll-detected completion sets off.

A call's poll runs as a background task owned by the app (`app[POLLERS]`), so that on a
poll-only route a completion learnt after the client was answered (or left) still reaches
webhooks (`poll.track_for`). Its verdict is recorded once the call's tracking record is
written, then handed to the app's publisher.
"""

from __future__ import annotations

import logging
import time
from contextlib import suppress

from aiohttp import web
from yarl import URL

from ..completions.completion import Completion
from ..completions.poll import PollAnswer, fetch, poll_location
from ..completions.publish import PUBLISHER
from ..config import Route
from ..connections import REDIS_FAULTS
from ..http.context import CONTEXT, CallContext
from ..http.pool import POOL
from ..http.upstream import UPSTREAM_ERRORS
from ..metrics import METRICS
from ..operations import OPERATIONS
from ..operations.records import Outcome
from ..operations.writer import completed
from ..routing import RUNTIME
from ..state import POLLERS, TRACKER
from .answers import Accepted
from .track import TrackTask, settle
from .wait import PollTask, Verdict

logger = logging.getLogger(__name__)


def poll_headers(request: web.Request, route: Route) -> dict[str, str]:
    """The client's headers a route allows on polls (its credentials, usually)."""
    settings = request.app[RUNTIME].settings
    allowed = list(route.wait.poll.forward_headers) if route.wait and route.wait.poll else []
    allowed += ["Authorization", "Cookie"] if not allowed else []
    allowed.append(settings.tenancy.credential_header)
    headers = {name: request.headers[name] for name in allowed if name in request.headers}
    headers[settings.correlation_header] = request.headers.get(settings.correlation_header, "")
    call = request.get(CONTEXT)
    if isinstance(call, CallContext) and call.trace is not None:
        headers.update(call.trace.headers())  # a poll is part of the call
    return {k: v for k, v in headers.items() if v}


def poll_outlives(app: web.Application, route: Route) -> bool:
    """True when polling goes on after the client's answer (webhooks need the verdict)."""
    return (
        app[TRACKER] is not None
        and route.wait is not None
        and route.wait.stream is None
        and route.wait.poll is not None
        and route.wait.poll.track_for > 0
    )


async def get_location(request: web.Request, route: Route, accepted: Accepted) -> PollAnswer | None:
    """GET the resource at the Location (for `respond.body: location`); None on any failure."""
    if accepted.upstream_location is None:
        return None
    try:
        got = await fetch(
            request.app[POOL],
            accepted.upstream_location,
            poll_headers(request, route),
            request.app[RUNTIME].settings.proxy.read_timeout,
        )
    except (*UPSTREAM_ERRORS, TimeoutError, ValueError) as exc:
        logger.warning("GET of the Location failed", extra={"error": repr(exc)})
        return None
    return got if 200 <= got.status < 300 else None


async def completion_learnt(
    app: web.Application, route: Route, completion: Completion, answer: PollAnswer | None = None
) -> None:
    """Record a poll-detected completion so every replica (and webhooks) learns it once, and
    its operation's outcome (with the resource the last poll got, for `body: location`)."""
    tracker = app[TRACKER]
    if tracker is None:
        return
    try:
        await tracker.finish(completion.correlation_id, completion.status)
    except REDIS_FAULTS as exc:
        logger.warning(
            "could not record a completion",
            extra={"correlation_id": completion.correlation_id, "error": repr(exc)},
        )
    tracked = None
    with suppress(*REDIS_FAULTS):
        tracked = await tracker.get(completion.correlation_id)
    ops = app[OPERATIONS]
    if ops is not None and tracked is not None:
        settings = app[RUNTIME].settings
        resource = None
        if route.respond.body == "location" and answer is not None and 200 <= answer.status < 300:
            resource = (answer.body, answer.content_type)
        ops.writer.later(
            completed(
                tracked.identity,
                completion.correlation_id,
                Outcome.of_completion(completion, time.time(), resource),
                max_result=settings.operations.max_result,
                events_ttl_ms=int(settings.tracking_ttl * 1000),
            )
        )
    await app[PUBLISHER].publish(route, completion, tracked)


async def _poll(
    app: web.Application,
    route: Route,
    wait_id: str,
    url: URL,
    headers: dict[str, str],
    deadline: float,
    track: TrackTask | None,
) -> Verdict | None:
    assert route.wait is not None and route.wait.poll is not None
    result = await poll_location(
        app[POOL],
        url,
        headers,
        route.wait.poll,
        correlation_id=wait_id,
        deadline=deadline,
        metrics=app[METRICS],
        route=route.name,
    )
    if result is None:
        return None
    await settle(track)
    await completion_learnt(app, route, result[0], result[1])
    return Verdict(*result)


def start_poll(
    request: web.Request,
    route: Route,
    wait_id: str,
    url: URL | None,
    deadline: float,
    *,
    outlive: bool,
    track: TrackTask | None = None,
) -> PollTask | None:
    """Poll `url` for the call until `deadline`, plus `track_for` when the poll is to `outlive`
    the client's answer; None when the route does not poll or there is no Location."""
    if route.wait is None or route.wait.poll is None or url is None:
        return None
    if outlive:
        deadline += route.wait.poll.track_for
    return request.app[POLLERS].spawn(
        _poll(request.app, route, wait_id, url, poll_headers(request, route), deadline, track)
    )
