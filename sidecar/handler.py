"""The proxy listener's one handler: pass-through, synchronised call, or long-poll."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from redis.exceptions import RedisError

from .hub import Waiter
from .poll import poll_location
from .prefer import parse_prefer
from .proxy import CALL, CallContext, pass_through, upstream_url
from .state import HTTP, HUB, METRICS, RUNTIME, TRACKER
from .sync import Wait, poll_headers, synchronise

logger = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 0.5  # longest the tracking lookup may delay a GET before we pass it through


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    """Every path of the proxy listener."""
    call: CallContext = request[CALL]  # type: ignore[assignment]
    if call.route is not None and call.route.route.is_sync:
        return await synchronise(request, call)
    extra = await long_poll(request, call)
    return await pass_through(request, call, extra)


async def long_poll(request: web.Request, call: CallContext) -> dict[str, str] | None:
    """Hold a `GET` of a tracked Location sent with `Prefer: wait=N` until the completion is
    known (or N seconds, at most the route's budget), then let it through.

    Returns the headers to add to the relayed answer, or None when the GET is not a long-poll.
    """
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
    except (RedisError, OSError, TimeoutError) as exc:
        logger.warning("long-poll lookup failed; passing through", extra={"error": repr(exc)})
        return None
    compiled = request.app[RUNTIME].table.by_name.get(tracked.route) if tracked else None
    if tracked is None or compiled is None or compiled.route.wait is None:
        return None
    route = compiled.route
    wait = route.wait
    assert wait is not None
    headers = {"Preference-Applied": f"wait={prefs.wait_s:g}", "Vary": "Prefer"}
    if tracked.state != "pending":
        return headers
    loop = asyncio.get_running_loop()
    budget = min(prefs.wait_s, route.budget)
    hub = request.app[HUB]
    waiter: Waiter | None = None
    if hub is not None and wait.stream is not None:
        waiter = hub.add(wait.stream, tracked.correlation_id)
    poll = None
    try:
        if wait.poll is not None:
            poll = asyncio.ensure_future(
                poll_location(
                    request.app[HTTP],
                    target,
                    poll_headers(request, route),
                    wait.poll,
                    correlation_id=tracked.correlation_id,
                    deadline=loop.time() + budget,
                    metrics=request.app[METRICS],
                    route=route.name,
                )
            )
        started = loop.time()
        result = await Wait(waiter, poll).first(budget)
        call.wait_s = loop.time() - started
        call.reason = "long_poll_" + ("released" if result else "timeout")
    finally:
        if poll is not None:
            poll.cancel()
        if waiter is not None and hub is not None:
            hub.discard(waiter)
    return headers
