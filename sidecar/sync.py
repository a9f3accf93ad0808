"""The synchronised call: forward, learn the id from the 202, wait for the completion, answer.

    register stream waiter (source: request) ─▶ forward ─▶ not 202: relay unchanged
                                                      └─▶ 202: id + Location, track in Redis
    wait for the first of: stream event · poll verdict · budget · client gone
        success ─▶ success_status + result      failure ─▶ failure_status + problem+json
        budget  ─▶ the upstream's 202 + client-facing Location + Retry-After

Any fault of our own machinery (Redis, events, polls) degrades to the 202, never to a 5xx of ours.
Polling runs as a background task owned by the app, so a completion learnt after the client was
answered (or left) is still recorded for webhooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict
from redis.exceptions import RedisError
from yarl import URL

from .completion import Completion
from .config import Route
from .errors import PROBLEM_JSON, problem_body
from .headers import end_to_end, rewrite_location, upstream_location
from .hub import Waiter
from .poll import PollAnswer, fetch, json_pointer, poll_location
from .prefer import Preferences, parse_prefer
from .proxy import CallContext, open_upstream, relay
from .state import HASHER, HTTP, HUB, METRICS, POLLERS, RUNTIME, TRACKER, WAITING
from .tracking import CallTracker, TrackedCall

logger = logging.getLogger(__name__)

MAX_ACCEPTED_BODY = 1024 * 1024  # a 202 body is held to replay it; larger ones are relayed as is
TRACKING_TIMEOUT_S = 1.0  # longest a tracking write may delay a 202 (or a poll verdict)
TRACKING_WRITE_TIMEOUT_S = 10.0  # longest a tracking write may take at all

PollResult = tuple[Completion, PollAnswer] | None


@dataclass(slots=True)
class Accepted:
    """The upstream's 202, held so it can be replayed as the fallback answer."""

    status: int
    reason: str | None
    headers: CIMultiDict[str]  # end-to-end, Location already client-facing
    body: bytes
    upstream_location: URL | None
    client_location: str | None


def _completion_id(route: Route, call: CallContext, accepted: Accepted) -> str | None:
    """The id to wait on, per `correlation.source`."""
    source = route.correlation.source
    if source == "request":
        return call.correlation_id
    if source == "location":
        if accepted.upstream_location is None:
            return None
        match = re.search(route.correlation.pattern, str(accepted.upstream_location))
        return match.group("id") if match else None
    try:
        value = json_pointer(orjson.loads(accepted.body), route.correlation.pointer)
    except (orjson.JSONDecodeError, LookupError):
        return None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def _answer_headers(
    request: web.Request, call: CallContext, applied: list[str]
) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    headers[request.app[RUNTIME].settings.correlation_header] = call.correlation_id
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
    headers.update(_answer_headers(request, call, applied))
    if "Retry-After" not in headers and route is not None:
        headers["Retry-After"] = str(max(1, math.ceil(route.respond.retry_after)))
    call.outcome, call.reason, call.status = "fallback_async", reason, accepted.status
    if route is not None:
        request.app[METRICS].fallbacks.labels(route.name, reason).inc()
    return web.Response(
        status=accepted.status, reason=accepted.reason, body=accepted.body, headers=headers
    )


def _body_of(completion: Completion) -> tuple[bytes, str | None]:
    if completion.data is None:
        return b"", None
    if completion.is_json:
        return orjson.dumps(completion.data), "application/json"
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


async def answer(
    request: web.Request,
    call: CallContext,
    route: Route,
    accepted: Accepted,
    completion: Completion,
    poll_answer: PollAnswer | None,
    applied: list[str],
) -> web.Response:
    """The synchronous answer for a known completion."""
    headers = _answer_headers(request, call, applied)
    if accepted.client_location:
        headers["Content-Location"] = accepted.client_location
    if not completion.succeeded:
        body = problem_body(
            route.respond.failure_status,
            "completion-failed",
            "The operation failed",
            failure_detail(completion.data),
            correlation_id=completion.correlation_id,
            event_type=completion.event_type,
            data=completion.data,
        )
        call.outcome, call.status = "sync_failure", route.respond.failure_status
        return web.Response(
            status=call.status, body=orjson.dumps(body), content_type=PROBLEM_JSON, headers=headers
        )
    payload, content_type = _body_of(completion)
    if route.respond.body == "location":
        if poll_answer is None:
            poll_answer = await _get_location(request, route, accepted)
            if poll_answer is None:
                return fallback(request, call, accepted, applied, "location")
        payload, content_type = poll_answer.body, poll_answer.content_type
    if route.respond.success_status == 201 and accepted.client_location:
        headers["Location"] = accepted.client_location
    if content_type:
        headers["Content-Type"] = content_type
    call.outcome, call.status = "sync_success", route.respond.success_status
    return web.Response(status=call.status, body=payload, headers=headers)


def poll_headers(request: web.Request, route: Route) -> dict[str, str]:
    """The client's headers a route allows on polls (its credentials, usually)."""
    settings = request.app[RUNTIME].settings
    allowed = list(route.wait.poll.forward_headers) if route.wait and route.wait.poll else []
    allowed += ["Authorization", "Cookie"] if not allowed else []
    allowed.append(settings.tenancy.credential_header)
    headers = {name: request.headers[name] for name in allowed if name in request.headers}
    headers[settings.correlation_header] = request.headers.get(settings.correlation_header, "")
    return {k: v for k, v in headers.items() if v}


async def _get_location(
    request: web.Request, route: Route, accepted: Accepted
) -> PollAnswer | None:
    """GET the resource at the Location (for `respond.body: location`); None on any failure."""
    if accepted.upstream_location is None:
        return None
    try:
        got = await fetch(
            request.app[HTTP],
            accepted.upstream_location,
            poll_headers(request, route),
            request.app[RUNTIME].settings.proxy.read_timeout,
        )
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        logger.warning("GET of the Location failed", extra={"error": repr(exc)})
        return None
    return got if 200 <= got.status < 300 else None


async def read_accepted(upstream: aiohttp.ClientResponse, call: CallContext) -> tuple[bytes, bool]:
    """The 202 body and whether it was read whole (bodies past MAX_ACCEPTED_BODY are not)."""
    chunks, size = [], 0
    async for chunk in upstream.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ACCEPTED_BODY:
            return b"".join(chunks), False
    return b"".join(chunks), True


async def completion_learnt(app: web.Application, route: Route, completion: Completion) -> None:
    """Record a poll-detected completion so every replica (and webhooks) learns it once."""
    tracker = app[TRACKER]
    if tracker is None:
        return
    try:
        await tracker.finish(completion.correlation_id, completion.status)
    except RedisError as exc:
        logger.warning(
            "could not record a completion",
            extra={"correlation_id": completion.correlation_id, "error": repr(exc)},
        )
    publish = app.get(PUBLISH)
    if publish is not None:
        tracked = None
        with suppress(RedisError):
            tracked = await tracker.get(completion.correlation_id)
        await publish(app, route, completion, tracked)


Publisher = Callable[[web.Application, Route, Completion, TrackedCall | None], Awaitable[None]]
PUBLISH: web.AppKey[Publisher] = web.AppKey("publish_completion")  # set by the webhooks capability


async def poll_in_background(
    app: web.Application,
    route: Route,
    correlation_id: str,
    url: URL,
    headers: dict[str, str],
    deadline: float,
    track: asyncio.Task[None] | None = None,
) -> PollResult:
    """Poll the Location until done or `deadline`; a verdict is recorded even if nobody waits
    (once the call's tracking record is written, so webhooks know whose call it was)."""
    assert route.wait is not None and route.wait.poll is not None
    result = await poll_location(
        app[HTTP],
        url,
        headers,
        route.wait.poll,
        correlation_id=correlation_id,
        deadline=deadline,
        metrics=app[METRICS],
        route=route.name,
    )
    if result is not None:
        await _settle(track)
        await completion_learnt(app, route, result[0])
    return result


class Wait:
    """The waits of one call: a stream waiter and/or a poll task; the first verdict wins."""

    def __init__(self, waiter: Waiter | None, poll: asyncio.Task[PollResult] | None) -> None:
        self.waiter = waiter
        self.poll = poll

    async def first(self, timeout_s: float) -> tuple[Completion, PollAnswer | None] | None:
        """The first definitive completion within `timeout_s`, else None."""
        if self.poll is None and self.waiter is not None:
            # The common case, kept lean: no extra task or set per waiting call.
            try:
                async with asyncio.timeout(timeout_s):
                    return await self.waiter.future, None
            except TimeoutError:
                return None
        pending: set[asyncio.Future[Any]] = set()
        if self.waiter is not None:
            pending.add(self.waiter.future)
        if self.poll is not None:
            pending.add(self.poll)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while pending:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            done, pending = await asyncio.wait(
                pending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                return None
            if self.waiter is not None and self.waiter.future in done:
                return self.waiter.future.result(), None
            poll = self.poll
            if poll is not None and poll in done and not poll.cancelled() and not poll.exception():
                result = poll.result()
                if result is not None:
                    return result
        # Nothing left to wait on (a poll gave up): hold until the budget, as promised.
        await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        return None


def _start_poll(
    request: web.Request,
    route: Route,
    cid: str,
    accepted: Accepted,
    budget_deadline: float,
    track: asyncio.Task[None] | None,
) -> asyncio.Task[PollResult] | None:
    if route.wait is None or route.wait.poll is None or accepted.upstream_location is None:
        return None
    deadline = budget_deadline
    if request.app[TRACKER] is not None and route.wait.stream is None:
        # Keep polling after the client's answer so the completion still reaches webhooks.
        deadline += route.wait.poll.track_for
    return request.app[POLLERS].spawn(
        poll_in_background(
            request.app,
            route,
            cid,
            accepted.upstream_location,
            poll_headers(request, route),
            deadline,
            track,
        )
    )


def _track_later(
    request: web.Request, call: CallContext, route: Route, cid: str, accepted: Accepted
) -> asyncio.Task[None] | None:
    """Start writing the call's tracking record in the background (None without Redis).

    Not awaited before holding: a burst of calls must not wait for each other's writes before
    waiting for their completions. A `202` waits for it (`_settle`): a client may long-poll the
    Location on another replica at once; so does a poll verdict before it is published.
    """
    app = request.app
    tracker = app[TRACKER]
    if tracker is None:
        return None
    credential = request.headers.get(app[RUNTIME].settings.tenancy.credential_header)
    record = TrackedCall(
        correlation_id=cid,
        route=route.name,
        tenant=None,  # the keyed hash of `credential`, computed in the task
        # Absolute: a webhook receiver does not know the origin the caller used.
        location=str(URL(call.origin).join(URL(accepted.client_location)))
        if accepted.client_location
        else None,
        upstream_location=str(accepted.upstream_location) if accepted.upstream_location else None,
        created_at=time.time(),
    )
    return app[POLLERS].spawn(_write_tracking(app, tracker, record, credential))


async def _write_tracking(
    app: web.Application, tracker: CallTracker, record: TrackedCall, credential: str | None
) -> None:
    try:
        async with asyncio.timeout(TRACKING_WRITE_TIMEOUT_S):
            tenant = await app[HASHER].tenant(credential)
            await tracker.record(dataclasses.replace(record, tenant=tenant))
    except (RedisError, OSError, TimeoutError) as exc:
        logger.warning(
            "could not track the call in Redis",
            extra={
                "route": record.route,
                "correlation_id": record.correlation_id,
                "error": repr(exc),
            },
        )


async def _settle(track: asyncio.Task[None] | None) -> None:
    """Give the call's tracking write up to `TRACKING_TIMEOUT_S` more to land (never raises, and
    never cancels it: a client that leaves does not stop the write)."""
    if track is not None and not track.done():
        await asyncio.wait({track}, timeout=TRACKING_TIMEOUT_S)


def _preferences(route: Route, prefs: Preferences) -> tuple[float, list[str]]:
    if prefs.respond_async:
        return 0.0, ["respond-async"]
    if prefs.wait_s is not None:
        budget = min(prefs.wait_s, route.budget)
        return budget, [f"wait={prefs.wait_s:g}"]
    return route.budget, []


async def forward_command(request: web.Request, call: CallContext) -> Accepted | web.StreamResponse:
    """Forward the call; a non-202 answer is relayed (and returned), a 202 is held as `Accepted`.

    The upstream response object is released here, so a waiting call keeps only what it needs.
    """
    async with await open_upstream(request, call) as upstream:
        if upstream.status != 202:
            return await relay(request, call, upstream)
        body, whole = await read_accepted(upstream, call)
        if not whole:  # pragma: no cover - a 202 body over 1 MiB is not something to hold
            logger.warning("202 body too large to hold; relayed", extra={"route": call.route_name})
            return await relay(request, call, upstream)
        location = upstream.headers.get("Location")
        headers = end_to_end(upstream.headers)
        reason = upstream.reason
    upstream_loc = upstream_location(location, call.upstream) if location else None
    client_loc = rewrite_location(location, call.upstream, call.origin) if location else None
    if client_loc is not None:
        headers["Location"] = client_loc
    return Accepted(202, reason, headers, body, upstream_loc, client_loc)


async def synchronise(request: web.Request, call: CallContext) -> web.StreamResponse:
    """Handle a call on a sync route."""
    assert call.route is not None and call.route.route.wait is not None
    app, route = request.app, call.route.route
    wait_spec = call.route.route.wait
    loop = asyncio.get_running_loop()
    prefs = parse_prefer(request.headers.getall("Prefer", ()))
    budget, applied = _preferences(route, prefs)
    deadline = loop.time() + budget
    hub = app[HUB]
    waiting = app[WAITING]
    shed = not prefs.respond_async and waiting.get(route.name, 0) >= route.max_waiting
    holding = not prefs.respond_async and not shed
    if holding:
        # The slot is taken before forwarding, so a burst cannot overshoot max_waiting.
        waiting[route.name] = waiting.get(route.name, 0) + 1
    waiter: Waiter | None = None
    poll_task: asyncio.Task[PollResult] | None = None
    try:
        if (
            holding
            and hub is not None
            and wait_spec.stream
            and route.correlation.source == "request"
        ):
            # Registered before forwarding: a fast backend's event cannot slip past us.
            waiter = hub.add(wait_spec.stream, call.correlation_id)
        accepted = await forward_command(request, call)
        if not isinstance(accepted, Accepted):
            return accepted
        cid = _completion_id(route, call, accepted)
        if cid is None:
            logger.warning(
                "no correlation id in the 202; answering it as is",
                extra={"route": route.name, "source": route.correlation.source},
            )
            return fallback(request, call, accepted, applied, "no_id")
        track = _track_later(request, call, route, cid, accepted)
        if not holding:
            if poll_task_outlives(app, route):
                _start_poll(request, route, cid, accepted, deadline, track)
            await _settle(track)
            return fallback(request, call, accepted, applied, "shed" if shed else "prefer")
        if waiter is None and hub is not None and wait_spec.stream is not None:
            waiter = hub.add(wait_spec.stream, cid)
        poll_task = _start_poll(request, route, cid, accepted, deadline, track)
        if waiter is None and poll_task is None:
            return fallback(request, call, accepted, applied, "redis")
        result = await _hold(app, route, call, Wait(waiter, poll_task), deadline)
    finally:
        if holding:
            waiting[route.name] -= 1
        if waiter is not None and hub is not None:
            hub.discard(waiter)
        if poll_task is not None and not poll_task_outlives(app, route):
            poll_task.cancel()  # nobody needs its verdict any more
    if result is None:
        reason = "redis" if hub is not None and not hub.connected.is_set() else "budget"
        await _settle(track)
        return fallback(request, call, accepted, applied, reason)
    completion, poll_answer = result
    if poll_task is not None and not poll_task.done():
        poll_task.cancel()  # the stream answered first
    return await answer(request, call, route, accepted, completion, poll_answer, applied)


async def _hold(
    app: web.Application, route: Route, call: CallContext, wait: Wait, deadline: float
) -> tuple[Completion, PollAnswer | None] | None:
    """Wait within the budget, counting the call as waiting meanwhile."""
    loop = asyncio.get_running_loop()
    gauge = app[METRICS].waiting.labels(route.name)
    gauge.inc()
    started = loop.time()
    outcome = "client_gone"
    try:
        result = await wait.first(deadline - started)
        outcome = "completed" if result else "budget"
        return result
    finally:
        gauge.dec()
        call.wait_s = loop.time() - started
        app[METRICS].wait_duration.labels(route.name, outcome).observe(call.wait_s)


def poll_task_outlives(app: web.Application, route: Route) -> bool:
    """True when polling should go on after the client's answer (webhooks need the verdict)."""
    return (
        app[TRACKER] is not None
        and route.wait is not None
        and route.wait.stream is None
        and route.wait.poll is not None
        and route.wait.poll.track_for > 0
    )
