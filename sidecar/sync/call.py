"""The synchronised call: forward, learn the id from the 202, wait for the completion, answer.

    claim the correlation id (and an Idempotency-Key: a retry is answered from its first call)
    register stream waiter (source: request) ─▶ forward ─▶ not 202: relay unchanged
                                                      └─▶ 202: id + Location, track in Redis
    wait for the first of: stream event · poll verdict · budget · client gone
        success ─▶ success_status + result      failure ─▶ failure_status + problem+json
        budget  ─▶ the upstream's 202 + client-facing Location (or the sidecar's status URL)
                   + Retry-After

Any fault of our own machinery (Redis, events, polls) degrades to the 202, never to a 5xx of ours.
Every step is journaled on the call's operation timeline (`sync.journal`), at no round trip of
its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re

import orjson
from aiohttp import web

from ..completions.hub import CompletionHub
from ..completions.poll import json_pointer
from ..config import Route, StreamWait
from ..http.body import read_whole
from ..http.context import CallContext
from ..http.headers import (
    end_to_end,
    resolve_location,
    response_headers,
    rewrite_location,
    usable_location,
)
from ..http.pool import UpstreamResponse
from ..http.prefer import Preferences, parse_prefer
from ..http.upstream import Replayed, open_upstream, relay
from ..logs import Every
from ..metrics import METRICS
from ..routing import RUNTIME
from ..sources.health import SOURCE_HEALTH
from ..state import HUB
from .answers import Accepted, body_of, failed, fallback, succeeded
from .idempotency import keep_going, own_call, relay_kept
from .journal import Journal
from .polling import get_location, poll_outlives, start_poll
from .status import point_at_monitor, withdraw
from .track import Track, settle, track_later
from .wait import HELD, Verdict, Waits, wait_for_completion

logger = logging.getLogger(__name__)

MAX_ACCEPTED_BODY = 1024 * 1024  # a 202 body is held to replay it; larger ones are relayed as is


def completion_id(route: Route, call: CallContext, accepted: Accepted) -> str | None:
    """The id the completion will carry, per `correlation.source`."""
    source = route.correlation.source
    if source == "request":
        return call.correlation_id
    if source == "location":
        if accepted.upstream_location is None:
            return None
        match = re.search(route.correlation.pattern, accepted.upstream_location_text or "")
        return match.group("id") if match else None
    try:
        value = json_pointer(orjson.loads(accepted.body), route.correlation.pointer)
    except (orjson.JSONDecodeError, LookupError):
        return None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def preferences(route: Route, prefs: Preferences) -> tuple[float, list[str]]:
    """The budget `Prefer` leaves, and the preferences applied."""
    if prefs.respond_async:
        return 0.0, ["respond-async"]
    if prefs.wait_s is not None:
        return min(prefs.wait_s, route.budget), [f"wait={prefs.wait_s:g}"]
    return route.budget, []


async def read_accepted(upstream: UpstreamResponse) -> tuple[bytes, bool]:
    """The 202 body and whether it was read whole (bodies past MAX_ACCEPTED_BODY are not)."""
    chunks, size = [], 0
    async for chunk in upstream.content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_ACCEPTED_BODY:
            return b"".join(chunks), False
    return b"".join(chunks), True


async def forward_command(
    request: web.Request, call: CallContext, body: bytes | None, keep: int | None = None
) -> Accepted | web.StreamResponse:
    """Forward the call; a non-202 answer is relayed (and returned), a 202 is held as `Accepted`.
    With `keep` (a call holding an Idempotency-Key), a relayed body up to `keep` bytes is kept
    on the answer for replays.

    The upstream response object is released here, so a waiting call keeps only what it needs.
    """
    async with await open_upstream(request, call, body) as upstream:
        if upstream.status != 202:
            if keep is None:
                return await relay(request, call, upstream)
            relayed, _kept = await relay_kept(request, call, upstream, keep)
            return relayed
        body, whole = await read_accepted(upstream)
        if not whole:  # a 202 body over 1 MiB is not something to hold: relayed, whole
            logger.warning("202 body too large to hold; relayed", extra={"route": call.route_name})
            return await relay(request, call, upstream, already=body)
        location = upstream.headers.get("Location")
        if location is not None and not usable_location(location):
            logger.warning(
                "the 202's Location is malformed; relayed as is, not tracked",
                extra={"route": call.route_name, "correlation_id": call.correlation_id},
            )
            headers = response_headers(upstream.headers, upstream=call.upstream, origin=call.origin)
            call.outcome, call.reason, call.status = "fallback_async", "bad_location", 202
            request.app[METRICS].fallbacks.labels(call.route_name, "bad_location").inc()
            return Replayed(status=202, reason=upstream.reason, body=body, headers=headers)
        headers = end_to_end(upstream.headers)
        reason = upstream.reason
    if not location:
        return Accepted(202, reason, headers, body, None, None)
    upstream_loc, upstream_text = resolve_location(location, call.upstream)
    client_loc = rewrite_location(location, call.upstream, call.origin)
    headers["Location"] = client_loc
    return Accepted(202, reason, headers, body, upstream_loc, client_loc, upstream_text)


async def synchronise(request: web.Request, call: CallContext) -> web.StreamResponse:
    """Handle a call on a sync route, journaling what happens to it (`sync.journal`)."""
    journal = Journal(request, call)
    error: BaseException | None = None
    try:
        return await _synchronise(request, call, journal)
    except BaseException as exc:
        error = exc
        raise
    finally:
        journal.close(error)


async def _synchronise(
    request: web.Request, call: CallContext, journal: Journal
) -> web.StreamResponse:
    assert call.route is not None and call.route.route.wait is not None
    app, route = request.app, call.route.route
    spec = route.wait
    assert spec is not None
    loop = asyncio.get_running_loop()
    prefs = parse_prefer(request.headers.getall("Prefer", ()))
    budget, applied = preferences(route, prefs)
    deadline = loop.time() + budget
    hub = app[HUB]
    # Read whole before anything else: a slow client costs a socket, not a held slot, an id
    # claim or a pooled upstream connection.
    body = await read_whole(request, call, app[RUNTIME].settings.clients)
    journal.start(route)
    # The slot is taken before forwarding, so a burst cannot overshoot max_waiting.
    holding = not prefs.respond_async and app[HELD].take(route.name, route.max_waiting)
    shed = not prefs.respond_async and not holding
    waits = Waits(hub)
    track: Track | None = None
    token: str | None = None

    async def give_up(accepted: Accepted, reason: str) -> web.Response:
        # A 202 waits for its record (a client may come back on another replica at once);
        # a status URL whose token did not reach Redis is taken back.
        if not await settle(track) and token is not None:
            withdraw(accepted)
        return fallback(request, call, accepted, applied, reason)

    try:
        claim = await own_call(request, call, route, body, journal, deadline, applied, holding)
        if isinstance(claim, web.StreamResponse):
            return claim  # a retry, answered from the call that holds its Idempotency-Key
        if holding and spec.stream and route.correlation.source == "request":
            # Registered before forwarding: a fast backend's event cannot slip past us, and an
            # event seen before (cached) cannot be this call's.
            waits.listen(spec.stream, call.correlation_id, cached=False)
        journal.forwarded()
        if claim is None:
            accepted = await forward_command(request, call, body)
        else:  # its client leaving does not stop it: a retry will want what it led to
            limit = app[RUNTIME].settings.operations.max_result
            finish = functools.partial(finish_abandoned, request, call, route, journal)
            accepted = await keep_going(
                request, journal, forward_command(request, call, body, limit), finish
            )
        body = None  # forwarded: a held call keeps no copy of it (nor its share of the budget)
        if not isinstance(accepted, Accepted):
            journal.relayed(accepted, kept_body(accepted) if claim else None)
            return accepted
        accept(route, accepted, journal)
        wait_id = completion_id(route, call, accepted)
        if wait_id is None:
            logger.warning(
                "no correlation id in the 202; answering it as is",
                extra={"route": route.name, "source": route.correlation.source},
            )
            return fallback(request, call, accepted, applied, "no_id")
        if wait_id != call.correlation_id:
            call.operation_id = wait_id
        # Only a call that will be tracked gets a status URL: nothing else would answer it.
        token = point_at_monitor(request, route, accepted)
        journal.holding(holding, shed, budget)
        track = track_later(request, call, route, wait_id, accepted, journal, token)
        journal.tracked(track.written if track is not None else None)
        outlive = poll_outlives(app, route)
        location = accepted.upstream_location
        if not holding:
            if outlive:
                start_poll(request, route, wait_id, location, deadline, outlive=True, track=track)
            return await give_up(accepted, "shed" if shed else "prefer")
        if spec.stream is not None and waits.waiter is None:
            # An id learnt from the 202: its event may have come first (the hub caches recent
            # ones), but only a call that owns the id may take a cached event; and one whose id
            # another live call holds takes no event by it at all (it cannot be told apart).
            owned = await settle(track)
            if track is None or not track.foreign:
                waits.listen(spec.stream, wait_id, cached=owned)
        poll = start_poll(request, route, wait_id, location, deadline, outlive=outlive, track=track)
        waits.follow(poll, owned=not outlive)
        if waits.empty:
            reason = "ambiguous_id" if track is not None and track.foreign else "redis"
            return await give_up(accepted, reason)
        verdict, call.wait_s = await wait_for_completion(
            waits, deadline - loop.time(), app[METRICS], route.name
        )
    finally:
        if holding:
            app[HELD].release(route.name)
        waits.close()
    if verdict is None:
        reason = fallback_reason(app, hub, spec.stream)
        if reason == "budget" and hub is not None and spec.stream is not None:
            diagnose(app, route, hub.said(route.name), hub.suspect(spec.stream.stream_id))
        return await give_up(accepted, reason)
    return await answer(request, call, route, accepted, verdict, applied, journal)


def accept(route: Route, accepted: Accepted, journal: Journal) -> None:
    """The upstream answered 202: journaled, with its Location only when clients are meant to
    use it (with `respond.location: sidecar` it may be internal)."""
    shown = accepted.client_location if route.respond.location == "upstream" else None
    journal.upstream_answered(accepted.status, shown)


def kept_body(response: web.StreamResponse) -> bytes | None:
    """The body a relayed answer kept in memory (None: it was streamed)."""
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        return response.body
    return None


async def finish_abandoned(
    request: web.Request,
    call: CallContext,
    route: Route,
    journal: Journal,
    forwarding: asyncio.Task[Accepted | web.StreamResponse],
) -> None:
    """The client of a call holding an Idempotency-Key left while it was forwarded: once the
    upstream answers, record it as the call would have (its tracking and polling for a 202, its
    outcome otherwise), so that a retry attaches to it instead of running it again."""
    try:
        accepted = await forwarding
    except Exception as exc:  # a 502/504: the key is let go
        journal.resume()
        journal.close(exc, gone=True)
        return
    journal.resume()
    if isinstance(accepted, Accepted):
        accept(route, accepted, journal)
        wait_id = completion_id(route, call, accepted)
        if wait_id is not None:
            token = point_at_monitor(request, route, accepted)
            track = track_later(request, call, route, wait_id, accepted, journal, token)
            journal.tracked(track.written if track is not None else None)
            if poll_outlives(request.app, route):
                deadline = asyncio.get_running_loop().time()
                location = accepted.upstream_location
                start_poll(request, route, wait_id, location, deadline, outlive=True, track=track)
    else:
        journal.relayed(accepted, kept_body(accepted))
    journal.close(gone=True)


def fallback_reason(
    app: web.Application, hub: CompletionHub | None, stream: StreamWait | None
) -> str:
    """Why a held call ran out of budget: its source was not read (`redis`, or `source` for a
    broker), or just the budget."""
    if stream is not None and stream.source is not None:
        health = app.get(SOURCE_HEALTH)
        return "source" if health is not None and not health.is_up(stream.source) else "budget"
    return "redis" if hub is not None and not hub.connected.is_set() else "budget"


def diagnose(app: web.Application, route: Route, every: Every, example: str | None) -> None:
    """A call that timed out while its stream carries events for ids nobody waits on: say so
    (at most once a minute per route), since that is usually a misconfiguration."""
    if example is None or route.wait is None or route.wait.stream is None:
        return
    app[METRICS].misconfigured.labels(route.name).inc()
    if every.ready():
        spec = route.wait.stream
        logger.warning(
            "calls of this route time out while its stream carries completion events for ids "
            "no call waits on: check correlation.source and wait.stream.id_field",
            extra={
                "route": route.name,
                "stream": spec.stream_id,
                "id_field": spec.id_field,
                "correlation_source": route.correlation.source,
                "example_id": example,
                "since_last_line": every.take_skipped(),
            },
        )


async def answer(
    request: web.Request,
    call: CallContext,
    route: Route,
    accepted: Accepted,
    verdict: Verdict,
    applied: list[str],
    journal: Journal,
) -> web.Response:
    """The synchronous answer for a known completion."""
    completion = verdict.completion
    if not completion.succeeded:
        journal.learnt(verdict)
        return failed(call, route, accepted, completion, applied)
    payload, content_type = body_of(completion)
    if route.respond.body == "location":
        got = verdict.answer or await get_location(request, route, accepted)
        journal.learnt(verdict, (got.body, got.content_type) if got else None)
        if got is None:
            return fallback(request, call, accepted, applied, "location")
        payload, content_type = got.body, got.content_type
    else:
        journal.learnt(verdict)
    return succeeded(call, route, accepted, payload, content_type, applied)
