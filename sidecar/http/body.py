"""Reading clients' bodies within bounds.

A synchronised call's body is read in full, within `clients.body_timeout` and up to
`clients.max_body`, **before** an upstream connection is taken: a slow client costs a socket,
never a pooled upstream connection. A pass-through body is streamed; there `body_timeout` is
the longest pause between two of its parts. Either way a client too slow gets 408 (and the
connection is closed), a synchronised body too large 413 (without reading it).

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
    PayloadTooLarge,
    RequestTimeout,
    SidecarError,
    error_response,
)
from ..ids import new_id
from ..metrics import METRICS, status_class
from ..routing import RUNTIME
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


async def read_whole(request: web.Request, call: CallContext, limits: Clients) -> bytes | None:
    """A synchronised call's body, read in full within the limits (None: it has none)."""
    if not request.body_exists:
        return None
    length = declared_length(request)
    if length is not None and length > limits.max_body:
        raise too_large(limits.max_body, length)
    if request.content.is_eof():  # all here already (a small body): no timer needed
        body = await request.content.read()
        if len(body) > limits.max_body:
            raise too_large(limits.max_body, len(body))
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout):
            while chunk := await request.content.readany():
                size += len(chunk)
                if size > limits.max_body:
                    raise too_large(limits.max_body, size)
                chunks.append(chunk)
    except TimeoutError:
        raise _too_slow(request, call, limits, "the whole body") from None
    return b"".join(chunks)


async def paced(request: web.Request, call: CallContext, limits: Clients) -> AsyncIterator[bytes]:
    """A pass-through body, streamed; a pause longer than `body_timeout` ends it (408)."""
    content = request.content
    while True:
        try:
            async with asyncio.timeout(limits.body_timeout):
                chunk = await content.readany()
        except TimeoutError:
            call.client_stalled = True
            raise _too_slow(request, call, limits, "each part of the body") from None
        if not chunk:
            return
        yield chunk


def _too_slow(
    request: web.Request, call: CallContext, limits: Clients, what: str
) -> RequestTimeout:
    request.app[METRICS].client_timeouts.labels("proxy", "body").inc()
    call.client_stalled = True
    return RequestTimeout(f"{what} must arrive within {limits.body_timeout:g}s")


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue` ourselves: 100, or 413 for a synchronised call whose
    declared body is too large (its body is then never sent), or 417 for other expectations.
    (aiohttp runs this before the middlewares, so it answers its problems itself.)"""
    expect = request.headers.get("Expect", "").strip().lower()
    if not expect or request.version < (1, 1):
        return None
    runtime = request.app[RUNTIME]
    compiled = runtime.table.match(request.method, request.path)
    error: SidecarError | None = None
    if expect != "100-continue":
        error = ExpectationFailed(f"unsupported expectation {expect!r} (only 100-continue)")
    else:
        length = declared_length(request)
        limit = runtime.settings.clients.max_body
        sync = compiled is not None and compiled.route.is_sync
        if sync and length is not None and length > limit:
            error = too_large(limit, length)
    if error is None:
        if request.transport is not None:
            request.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None
    cid = new_id()
    route = compiled.route.name if compiled else UNMATCHED
    request.app[METRICS].requests.labels(route, error.outcome, status_class(error.status)).inc()
    response = error_response(error, correlation_id=cid)
    response.headers[runtime.settings.correlation_header] = cid
    response.force_close()
    close_after_answer(request)
    return response
