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
from yarl import URL

from ..config import Route
from ..connections import REDIS_FAULTS
from ..http.context import CallContext
from ..logs import Every
from ..routing import RUNTIME
from ..state import HASHER, POLLERS, TRACKER
from ..timeline import Intake
from ..tracking import CallTracker, TrackedCall
from .answers import Accepted
from .journal import Journal

logger = logging.getLogger(__name__)

SETTLE_S = 1.0  # longest a tracking write may delay a 202 (or a poll verdict)
WRITE_TIMEOUT_S = 10.0  # longest a tracking write may take at all

TrackTask = asyncio.Future[bool]
_untracked_log = Every()  # while Redis is down, one line a second, not one per call


def track_later(
    request: web.Request,
    call: CallContext,
    route: Route,
    wait_id: str,
    accepted: Accepted,
    journal: Journal | None = None,
    token: str | None = None,
) -> TrackTask | None:
    """Start writing the call's tracking record in the background (None without Redis), with
    its operation's intake from `journal` (and its status `token`, if it has one). The task's
    result says whether the record is this call's (False: its id belongs to another)."""
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
        location=str(URL(call.origin).join(URL(accepted.client_location)))
        if accepted.client_location
        else None,
        upstream_location=str(accepted.upstream_location) if accepted.upstream_location else None,
        created_at=created_at,
        traceparent=call.trace.traceparent if call.trace else "",
        intake=intake(tenant) if known else None,
    )
    if not known:  # the key is still to be loaded from Redis: a task does both
        return app[POLLERS].spawn(_write(app, tracker, record, credential, intake))
    # The common case, kept lean: the record joins the next batch; no task of its own.
    written = tracker.record_soon(record)
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    written.add_done_callback(lambda done: _settled(done, outcome, record))
    return outcome


def _settled(
    done: asyncio.Future[bool], outcome: asyncio.Future[bool], record: TrackedCall
) -> None:
    if outcome.done():
        return
    exc = None if done.cancelled() else done.exception()
    if done.cancelled() or isinstance(exc, REDIS_FAULTS):
        _untracked(record, exc)
        outcome.set_result(False)
    elif exc is not None:
        outcome.set_exception(exc)
    else:
        written = done.result()
        if not written:
            _foreign(record)
        outcome.set_result(written)


def _untracked(record: TrackedCall, exc: BaseException | None) -> None:
    if _untracked_log.ready():
        logger.warning(
            "could not track the call in Redis (its webhooks go to operator subscriptions)",
            extra={
                "route": record.route,
                "correlation_id": record.identity,
                "operation_id": record.operation_id,
                "error": repr(exc),
                "since_last_line": _untracked_log.take_skipped(),
            },
        )


def _foreign(record: TrackedCall) -> None:
    logger.warning(
        "the call's id belongs to another call; not tracked",
        extra={
            "route": record.route,
            "correlation_id": record.identity,
            "operation_id": record.operation_id,
        },
    )


async def _write(
    app: web.Application,
    tracker: CallTracker,
    record: TrackedCall,
    credential: str | None,
    intake: Callable[[str | None], Intake | None],
) -> bool:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            tenant = await app[HASHER].tenant(credential)
            written = await tracker.record(
                dataclasses.replace(record, tenant=tenant, intake=intake(tenant))
            )
    except REDIS_FAULTS as exc:
        _untracked(record, exc)
        return False
    if not written:
        _foreign(record)
    return written


async def settle(track: TrackTask | None) -> bool:
    """Give the call's tracking write up to `SETTLE_S` more to land (never raises, and never
    cancels it: a client that leaves does not stop the write). True when the record is this
    call's."""
    if track is None:
        return False
    if not track.done():
        await asyncio.wait({track}, timeout=SETTLE_S)
    return track.done() and not track.cancelled() and track.exception() is None and track.result()
