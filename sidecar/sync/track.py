"""Recording a 202'd call in Redis (route, tenant, Location) so that webhooks and long-polls on
any replica know it. Written in the background: a burst of calls must not wait for each other's
writes before waiting for their completions. A `202` answer waits for its record (`settle`),
since a client may long-poll the Location on another replica at once; so does a poll verdict
before it is published."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable

from aiohttp import web

from ..config import Route
from ..connections import REDIS_FAULTS
from ..http.context import CallContext
from ..http.headers import absolute_location
from ..logs import Every
from ..metrics import METRICS
from ..routing import RUNTIME
from ..state import HASHER, POLLERS, TRACKER
from ..timeline import Intake
from ..tracking import CallTracker, TrackedCall
from .answers import Accepted
from .backlog import BACKLOG
from .journal import Journal

logger = logging.getLogger(__name__)

SETTLE_S = 1.0  # longest a tracking write may delay a 202 (or a poll verdict)
WRITE_TIMEOUT_S = 10.0  # longest a tracking write may take at all

_untracked_log = Every()  # while Redis is down, one line a second, not one per call
_foreign_log = Every()  # an upstream that hands one operation id to many calls: once a second


@dataclasses.dataclass(slots=True)
class Track:
    """A call's tracking record, and its write in the background.

    `written` ends True when the record is this call's, False when it is not (its id belongs to
    another call: `foreign`; or Redis failed). Whatever the write did, `record` is the call's
    own: a completion the call learns itself (its own poll) is published under it, never under
    the record another call holds for the same id."""

    record: TrackedCall
    written: asyncio.Future[bool]
    foreign: bool = False


def track_later(
    request: web.Request,
    call: CallContext,
    route: Route,
    wait_id: str,
    accepted: Accepted,
    journal: Journal | None = None,
    token: str | None = None,
) -> Track | None:
    """Start writing the call's tracking record in the background (None without Redis), with
    its operation's intake from `journal` (and its status `token`, if it has one)."""
    app = request.app
    tracker = app[TRACKER]
    if tracker is None:
        return None
    credential = request.headers.get(app[RUNTIME].settings.tenancy.credential_header)
    hasher = app[HASHER]
    known = hasher.known(credential)
    created_at = time.time()

    def intake(tenant: str | None) -> Intake | None:
        if journal is None or not journal.on:
            return None
        return journal.intake(tenant, wait_id, accepted, token=token, created_at=created_at)

    tenant = hasher.tenant_now(credential) if known else None
    record = TrackedCall(
        wait_id=wait_id,
        correlation_id=call.correlation_id,
        route=route.name,
        # The keyed hash of `credential`; while its key is still to be loaded, in the task.
        tenant=tenant,
        # Absolute: a webhook receiver does not know the origin the caller used.
        location=absolute_location(call.origin, accepted.client_location)
        if accepted.client_location
        else None,
        upstream_location=accepted.upstream_location_text,
        created_at=created_at,
        traceparent=call.trace.traceparent if call.trace else "",
        intake=intake(tenant) if known else None,
    )
    if not known:  # the key is still to be loaded from Redis: a task does both
        track = Track(record, asyncio.get_running_loop().create_future())
        app[POLLERS].spawn(_write(app, tracker, track, credential, intake))
        return track
    # The common case, kept lean: the record joins the next batch; no task of its own.
    written = tracker.record_soon(record)
    track = Track(record, asyncio.get_running_loop().create_future())
    written.add_done_callback(lambda done: _settled(app, done, track))
    return track


def _settled(app: web.Application, done: asyncio.Future[bool], track: Track) -> None:
    outcome = track.written
    if outcome.done():
        return
    exc = None if done.cancelled() else done.exception()
    if done.cancelled() or isinstance(exc, REDIS_FAULTS):
        _untracked(app, track.record, exc)
        outcome.set_result(False)
    elif exc is not None:
        outcome.set_exception(exc)
    else:
        written = done.result()
        if not written:
            _foreign(app, track)
        outcome.set_result(written)


def _untracked(
    app: web.Application,
    record: TrackedCall,
    exc: BaseException | None,
    credential: str | None = None,
    intake: Callable[[str | None], Intake | None] | None = None,
) -> None:
    """A Redis fault: the record is kept to write once Redis answers (with the `credential`
    and `intake` when its tenant is still to be derived)."""
    app[METRICS].redis_faults.labels("tracking").inc()
    backlog = app[BACKLOG]
    if backlog is not None:
        backlog.keep(record, credential, intake)
    if _untracked_log.ready():
        logger.warning(
            "could not track the call in Redis; kept to write when Redis answers",
            extra={
                "route": record.route,
                "correlation_id": record.identity,
                "operation_id": record.operation_id,
                "error": repr(exc),
                "since_last_line": _untracked_log.take_skipped(),
            },
        )


def _foreign(app: web.Application, track: Track) -> None:
    """The id this call's completion carries is another live call's (an upstream that names
    one operation for several calls, or a `correlation.pattern` that matches a constant part of
    its Locations): the two cannot be told apart on a stream, so neither this call nor webhooks
    take a completion by that id for this call; only what the call learns itself (its own
    poll) is its own. Said loudly: counted and logged with the route."""
    track.foreign = True
    record = track.record
    app[METRICS].ambiguous_ids.labels(record.route).inc()
    if _foreign_log.ready():
        logger.warning(
            "several calls wait on one operation id: the upstream (or correlation.pattern) does "
            "not tell them apart; this call takes no completion by that id (only its own poll)",
            extra={
                "route": record.route,
                "correlation_id": record.identity,
                "operation_id": record.operation_id or record.wait_id,
                "since_last_line": _foreign_log.take_skipped(),
            },
        )


async def _write(
    app: web.Application,
    tracker: CallTracker,
    track: Track,
    credential: str | None,
    intake: Callable[[str | None], Intake | None],
) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            tenant = await app[HASHER].tenant(credential)
            track.record = dataclasses.replace(track.record, tenant=tenant, intake=intake(tenant))
            written = await tracker.record(track.record)
    except REDIS_FAULTS as exc:
        if track.record.tenant is None and credential is not None:
            _untracked(app, track.record, exc, credential, intake)
        else:
            _untracked(app, track.record, exc)
        track.written.set_result(False)
        return
    if not written:
        _foreign(app, track)
    track.written.set_result(written)


async def settle(track: Track | None) -> bool:
    """Give the call's tracking write up to `SETTLE_S` more to land (never raises, and never
    cancels it: a client that leaves does not stop the write). True when the record is this
    call's."""
    if track is None:
        return False
    written = track.written
    if not written.done():
        await asyncio.wait({written}, timeout=SETTLE_S)
    return (
        written.done()
        and not written.cancelled()
        and written.exception() is None
        and written.result()
    )
