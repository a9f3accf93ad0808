"""Long-polling for clients: a `GET` of a tracked Location sent with `Prefer: wait=N` is held
until the completion is known (or N seconds, at most the route's budget), then let through, so
clients of an API that never had long-polling get it."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..connections import REDIS_FAULTS
from ..http.context import CallContext
from ..http.prefer import parse_prefer
from ..http.upstream import upstream_url
from ..logs import Every
from ..metrics import METRICS
from ..routing import RUNTIME
from ..state import HUB, TRACKER
from ..timeline import LONG_POLL
from .journal import note
from .polling import start_poll
from .wait import HELD, Waits, wait_for_completion

logger = logging.getLogger(__name__)

_lookup_log = Every()
LOOKUP_TIMEOUT_S = 0.5  # longest the tracking lookup may delay a GET before we pass it through


async def long_poll(request: web.Request, call: CallContext) -> dict[str, str] | None:
    """Hold a long-poll until its call completes; the headers to add to the relayed answer,
    or None when the GET is not a long-poll (or its call is unknown)."""
    if request.method != "GET" or "Prefer" not in request.headers:
        return None
    prefs = parse_prefer(request.headers.getall("Prefer"))
    tracker = request.app[TRACKER]
    if prefs.wait_s is None or tracker is None:
        return None
    target = upstream_url(call.upstream, request)
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            tracked = await tracker.by_location(target)
    except REDIS_FAULTS as exc:
        if _lookup_log.ready():
            logger.warning(
                "long-poll lookup failed; passing through",
                extra={"error": repr(exc), "since_last_line": _lookup_log.take_skipped()},
            )
        return None
    compiled = request.app[RUNTIME].table.by_name.get(tracked.route) if tracked else None
    if tracked is None or compiled is None or compiled.route.wait is None:
        return None
    route, spec = compiled.route, compiled.route.wait
    headers = {"Preference-Applied": f"wait={prefs.wait_s:g}", "Vary": "Prefer"}
    if tracked.state != "pending":
        note(request, tracked.identity, LONG_POLL, result="done")
        return headers
    if not request.app[HELD].take(route.name, route.max_waiting):
        call.reason = "long_poll_shed"
        note(request, tracked.identity, LONG_POLL, result="shed")
        return headers
    loop = asyncio.get_running_loop()
    budget = min(prefs.wait_s, route.budget)
    waits = Waits(request.app[HUB])
    try:
        if spec.stream is not None:
            waits.listen(spec.stream, tracked.wait_id, cached=True)
        poll = start_poll(
            request,
            route,
            tracked.wait_id,
            target,
            loop.time() + budget,
            outlive=False,
            track=tracked,
        )
        waits.follow(poll, owned=True)
        verdict, call.wait_s = await wait_for_completion(
            waits, budget, request.app[METRICS], route.name
        )
        call.reason = "long_poll_" + ("released" if verdict else "timeout")
    finally:
        request.app[HELD].release(route.name)
        waits.close()
    waited_ms = round((call.wait_s or 0) * 1000, 1)
    result = "released" if verdict else "timeout"
    note(request, tracked.identity, LONG_POLL, result=result, waited_ms=waited_ms)
    return headers
