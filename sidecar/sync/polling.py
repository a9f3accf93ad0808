"""Polling the Location for a call: the poll task, and what a poll-detected completion sets off.

A call's poll runs as a background task owned by the app (`app[POLLERS]`), so that on a
poll-only route a completion learnt after the client was answered (or left) still reaches
webhooks (`poll.track_for`). Its verdict is recorded once the call's tracking record is
written, then handed to the app's publisher.
"""

from __future__ import annotations

import logging
import time

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
from ..tracking import TrackedCall
from .answers import Accepted
from .track import Track, settle
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
    app: web.Application,
    route: Route,
    completion: Completion,
    own: TrackedCall | None,
    owned: bool,
    answer: PollAnswer | None = None,
) -> None:
    """Publish a completion the call learnt itself (its own poll) under its own record `own`,
    whoever else holds its id, and record its operation's outcome (with the resource the last
    poll got, for `body: location`); mark its tracked record done (once, on every replica) only
    when that record is this call's (`owned`)."""
    tracker = app[TRACKER]
    if tracker is None:
        return
    if owned:
        try:
            await tracker.finish(completion.correlation_id, completion.status)
        except REDIS_FAULTS as exc:
            logger.warning(
                "could not record a completion",
                extra={"correlation_id": completion.correlation_id, "error": repr(exc)},
            )
    ops = app[OPERATIONS]
    if ops is not None and own is not None:
        settings = app[RUNTIME].settings
        resource = None
        if route.respond.body == "location" and answer is not None and 200 <= answer.status < 300:
            resource = (answer.body, answer.content_type)
        ops.writer.later(
            completed(
                own.identity,
                completion.correlation_id,
                Outcome.of_completion(completion, time.time(), resource),
                max_result=settings.operations.max_result,
                events_ttl_ms=int(settings.tracking_ttl * 1000),
            )
        )
    await app[PUBLISHER].publish(route, completion, own)


async def _poll(
    app: web.Application,
    route: Route,
    wait_id: str,
    url: URL,
    headers: dict[str, str],
    deadline: float,
    track: Track | TrackedCall | None,
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
    if isinstance(track, Track):  # a call's own poll: its record, written by it or not
        owned = await settle(track)
        await completion_learnt(app, route, result[0], track.record, owned, result[1])
    else:  # a long-poll of a tracked call: the record found by its Location is its own
        await completion_learnt(app, route, result[0], track, track is not None, result[1])
    return Verdict(*result)


def start_poll(
    request: web.Request,
    route: Route,
    wait_id: str,
    url: URL | None,
    deadline: float,
    *,
    outlive: bool,
    track: Track | TrackedCall | None = None,
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
