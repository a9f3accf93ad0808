"""Whose id is it: a synchronised call waits under an id that belongs to it alone.

A client's `X-Correlation-ID` (well formed: 1-128 of `[A-Za-z0-9._:-]`) is used on a sync route
only once this call has claimed it in Redis (SET NX with the tracking TTL, so the claim holds on
every replica and for as long as the call is remembered). When the claim fails (the id is in
use, or was used recently), when Redis does not answer in time, or when there is no Redis at
all, the sidecar mints a fresh UUID, forwards that one upstream and answers with it. A minted id
is claimed by the call's tracking record. Nobody can thus wait on, or receive, another call's
completion by sending its id.
"""

from __future__ import annotations

import logging

from aiohttp import web

from ..connections import REDIS_FAULTS
from ..http.context import CallContext
from ..ids import new_id
from ..logs import Every
from ..metrics import METRICS
from ..routing import RUNTIME
from ..state import TRACKER

logger = logging.getLogger(__name__)

_replaced_log = Every()  # one line a second at most (the metric counts every one)
CLAIM_TIMEOUT_S = 2.0  # longest a claim may delay a call before the sidecar mints an id


async def own_correlation_id(request: web.Request, call: CallContext) -> None:
    """Keep the client's correlation id only if this call can claim it; else mint one."""
    supplied = supplied_id(request, call)
    if supplied is None:
        return  # minted already (none sent, or malformed): unguessable, claimed when tracked
    tracker = request.app[TRACKER]
    claimed: bool | None = False
    if tracker is not None:
        try:  # the claim's batch is bounded by the tracker (CLAIM_TIMEOUT_S): no timer here
            claimed = await tracker.claim(supplied, supplied)
        except REDIS_FAULTS:
            claimed = None
    keep_or_mint(request, call, claimed)


def supplied_id(request: web.Request, call: CallContext) -> str | None:
    """The client's own correlation id, when the call would use it (valid), else None."""
    supplied = request.headers.get(request.app[RUNTIME].settings.correlation_header)
    return supplied if supplied == call.correlation_id else None


def keep_or_mint(request: web.Request, call: CallContext, claimed: bool | None) -> None:
    """After the claim of the client's id: keep it (`claimed`), or mint one because it is in
    use (False) or Redis did not answer (None)."""
    if claimed:
        return
    app = request.app
    supplied = call.correlation_id
    reason = "no_redis" if app[TRACKER] is None else "redis" if claimed is None else "in_use"
    call.correlation_id = new_id()
    app[METRICS].correlation_replaced.labels(call.route_name, reason).inc()
    if _replaced_log.ready():
        logger.info(
            "client correlation id not used; minted one",
            extra={
                "route": call.route_name,
                "supplied": supplied,
                "correlation_id": call.correlation_id,
                "reason": reason,
                "since_last_line": _replaced_log.take_skipped(),
            },
        )
