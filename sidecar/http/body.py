"""Reading clients' bodies within bounds: their size, their pace, and the process's budget.

A synchronised call's body is read in full, within `clients.body_timeout` and up to
`clients.max_body`, **before** an upstream connection is taken: a slow client costs a socket,
never a pooled upstream connection. A pass-through body is read up to
`clients.pass_through_buffer` first, likewise (a small one whole, then sent with a
Content-Length), and only then streamed. Every part of any body must come within
`body_timeout` of the last one, and the body as a whole at `clients.min_body_rate` after its
grace period (`http.budget.Pace`). What is held in memory counts against the process's
`clients.buffer_budget` (`http.budget`) until it is forwarded.

A client too slow gets 408 (and the connection is closed), a synchronised body too large 413
(without reading it), a body that does not fit the budget 503 + Retry-After (likewise).

`Expect: 100-continue` is answered by the sidecar (`expect_continue`), never forwarded: a
synchronised call whose declared length is too large is refused with 413 before its body is
sent at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from ..config import Clients
from ..errors import (
    ExpectationFailed,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    SidecarError,
    error_response,
)
from ..ids import new_id
from ..metrics import METRICS, status_class
from ..routing import RUNTIME
from .budget import BUDGET, Held, Pace, TooSlow, held, over_budget
from .context import UNMATCHED, CallContext
from .listener import close_after_answer


def declared_length(request: web.Request) -> int | None:
    """The body length the client declared (Content-Length), if any."""
    return request.content_length


def too_large(limit: int, length: int) -> PayloadTooLarge:
    """The 413 for a synchronised body over `clients.max_body`."""
    return PayloadTooLarge(
        f"a synchronised call's body may have at most {limit} bytes (got {length})",
        limit=limit,
    )


def _hold(request: web.Request, call: CallContext, share: Held, size: int) -> None:
    """Hold `size` more bytes of the body; a refusal is counted for the call's route."""
    try:
        share.take(size)
    except Overloaded:
        request.app[METRICS].body_budget_refused.labels(call.route_name).inc()
        raise


async def read_whole(request: web.Request, call: CallContext, limits: Clients) -> bytes | None:
    """A synchronised call's body, read in full within the limits (None: it has none)."""
    if not request.body_exists:
        return None
    length = declared_length(request)
    if length is not None and length > limits.max_body:
        raise too_large(limits.max_body, length)
    share = held(request)
    if length is not None:
        _hold(request, call, share, length)  # before a byte is read: refused, it is never sent
    if request.content.is_eof():  # all here already (a small body): no timer needed
        body = await request.content.read()
        if len(body) > limits.max_body:
            raise too_large(limits.max_body, len(body))
        if length is None:
            _hold(request, call, share, len(body))
        return body
    chunks: list[bytes] = []
    size = 0
    pace = Pace(limits)
    try:
        async with asyncio.timeout(limits.body_timeout):
            while chunk := await pace.read(request.content):
                size += len(chunk)
                if size > limits.max_body:
                    raise too_large(limits.max_body, size)
                if length is None:
                    _hold(request, call, share, len(chunk))
                chunks.append(chunk)
    except TooSlow as slow:
        raise _too_slow(request, call, slow.phase, slow.detail) from None
    except TimeoutError:
        detail = f"the whole body must arrive within {limits.body_timeout:g}s"
        raise _too_slow(request, call, "body", detail) from None
    return b"".join(chunks)


async def pass_through_body(
    request: web.Request, call: CallContext, limits: Clients
) -> bytes | AsyncIterator[bytes] | None:
    """A pass-through body, paced: read whole when it is no larger than
    `clients.pass_through_buffer` (bytes), else its first part read and the whole of it to
    stream (an iterator); None without a body. Nothing of it is sent before this returns, so
    no upstream connection waits for a slow sender's first bytes."""
    if not request.body_exists:
        return None
    pace = Pace(limits)
    share = held(request)
    limit = limits.pass_through_buffer
    length = declared_length(request)
    if length is not None:
        _hold(request, call, share, min(length, limit))  # refused before a byte is read
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = await pace.read(request.content)
            if not chunk:
                return b"".join(chunks)  # all of it: sent with its length
            _hold(request, call, share, size + len(chunk) - share.size)
            chunks.append(chunk)
            size += len(chunk)
    except TooSlow as slow:
        raise _too_slow(request, call, slow.phase, slow.detail) from None
    if length is not None and size >= length:
        return b"".join(chunks)
    return _paced(request, call, pace, chunks, share)


async def _paced(
    request: web.Request, call: CallContext, pace: Pace, first: list[bytes], share: Held
) -> AsyncIterator[bytes]:
    """A pass-through body streamed at the client's pace: the part read already, then the
    rest as it comes. The part read is given back to the budget once it is on its way."""
    while first:
        yield first.pop(0)
    share.release()
    while True:
        try:
            chunk = await pace.read(request.content)
        except TooSlow as slow:
            raise _too_slow(request, call, slow.phase, slow.detail) from None
        if not chunk:
            return
        yield chunk


def _too_slow(request: web.Request, call: CallContext, phase: str, detail: str) -> RequestTimeout:
    request.app[METRICS].client_timeouts.labels("proxy", phase).inc()
    call.client_stalled = True
    return RequestTimeout(detail)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` ourselves: 100, or 413 for a synchronised call whose
    declared body is too large, or 503 for a body the process's budget cannot hold now (either
    way its body is then never sent), or 417 for other expectations. (aiohttp runs this before
    the middlewares, so it answers its problems itself.)"""
    expect = request.headers.get("Expect", "").strip().lower()
    if not expect or request.version < (1, 1):
        return None
    runtime = request.app[RUNTIME]
    compiled = runtime.table.match(request.method, request.path)
    route = compiled.route.name if compiled else UNMATCHED
    error: SidecarError | None = None
    if expect != "100-continue":
        error = ExpectationFailed(f"unsupported expectation {expect!r} (only 100-continue)")
    else:
        length = declared_length(request)
        limits = runtime.settings.clients
        sync = compiled is not None and compiled.route.is_sync
        if sync and length is not None and length > limits.max_body:
            error = too_large(limits.max_body, length)
        elif length is not None:
            needed = length if sync else min(length, limits.pass_through_buffer)
            if not request.app[BUDGET].fits(needed):  # refused before the body is sent
                error = over_budget()
                request.app[METRICS].body_budget_refused.labels(route).inc()
    if error is None:
        if request.transport is not None:
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None
    cid = new_id()
    request.app[METRICS].requests.labels(route, error.outcome, status_class(error.status)).inc()
    response = error_response(error, correlation_id=cid)
    response.headers[runtime.settings.correlation_header] = cid
    response.force_close()
    close_after_answer(request)
    return response
