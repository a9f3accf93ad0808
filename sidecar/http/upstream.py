"""Talking to the upstream through its one client, the keep-alive pool (`http.pool`): calls sent
on and their answers relayed, polls and GETs of a Location alike.

One timeout model: the pool's connect timeout and its read timeout (the longest silence while an
answer is awaited or read), within whatever deadline the caller holds (a poll's budget).
`upstream_errors` is the one place the pool's failures become our `UpstreamUnreachable` (502) /
`UpstreamTimeout` (504). Bodies are streamed both ways; an upstream that fails after its answer
started is cut off (the client sees a truncated answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from ..config import Proxy
from ..errors import BadRequest, RequestTimeout, SidecarError, UpstreamTimeout, UpstreamUnreachable
from ..logs import Every
from ..routing import RUNTIME
from .body import pass_through_body
from .budget import release
from .context import CallContext
from .headers import response_headers, upstream_request_headers
from .pool import POOL, PoolError, UpstreamPool, UpstreamResponse

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024  # answers up to this size (with a Content-Length) are relayed whole


UPSTREAM_ERRORS = (UpstreamUnreachable, UpstreamTimeout)


def create_pool(proxy: Proxy) -> UpstreamPool:
    """The one upstream client of an app."""
    return UpstreamPool(
        limit=proxy.max_connections,
        connect_timeout_s=proxy.connect_timeout,
        read_timeout_s=proxy.read_timeout,
    )


@contextlib.contextmanager
def upstream_errors() -> Iterator[None]:
    """Translate the upstream client's failures (no answer, a malformed one, an answer cut or
    gone silent while read) into the sidecar's own 502/504."""
    try:
        yield
    except PoolError as exc:
        error = UpstreamTimeout if exc.kind == "timeout" else UpstreamUnreachable
        raise error(str(exc), kind=exc.kind) from None
    except aiohttp.ServerTimeoutError:
        raise UpstreamTimeout("the upstream went silent mid-answer", kind="timeout") from None
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"the upstream failed mid-answer: {exc.__class__.__name__}", kind="protocol"
        ) from None


def request_target(request: web.Request) -> str:
    """The request's raw path and query, byte for byte. An absolute-form target
    (`GET http://host/path`) gives its path and query; any other form is a 400."""
    raw = request.raw_path
    if raw.startswith("/"):
        return raw
    try:
        url = URL(raw, encoded=True)
    except ValueError:
        url = URL()
    if url.scheme in ("http", "https") and url.host:
        return url.raw_path_qs or "/"
    raise BadRequest(
        f"unsupported request target {raw[:100]!r} (use a path, or an absolute http(s) URL)"
    )


def upstream_url(base: URL, request: web.Request) -> URL:
    """The upstream URL: its origin (and base path) plus the request's raw path and query."""
    return URL(str(base).rstrip("/") + request_target(request), encoded=True)


class NoInventedHeaders:
    """A response that adds no `Content-Type` and no `Server` of its own: a relayed answer
    carries exactly the upstream's. A 304 keeps the upstream's `Content-Length` (the length of
    the answer it stands for, RFC 9110 8.6), which aiohttp would drop."""

    _kept_length: str | None = None

    async def _start(self, request: web.BaseRequest) -> AbstractStreamWriter:
        if self.status == 304:  # type: ignore[attr-defined]
            self._kept_length = self._headers.get(hdrs.CONTENT_LENGTH)  # type: ignore[attr-defined]
        return await super()._start(request)  # type: ignore[misc,no-any-return]

    async def _prepare_headers(self) -> None:
        headers = self._headers  # type: ignore[attr-defined]
        had = {name for name in (hdrs.CONTENT_TYPE, hdrs.SERVER) if name in headers}
        await super()._prepare_headers()  # type: ignore[misc]
        for name in (hdrs.CONTENT_TYPE, hdrs.SERVER):
            if name not in had:
                headers.popall(name, None)
        if self._kept_length is not None:
            headers[hdrs.CONTENT_LENGTH] = self._kept_length


class Relayed(NoInventedHeaders, web.StreamResponse):
    """A streamed answer relayed from the upstream."""


class Replayed(NoInventedHeaders, web.Response):
    """An upstream answer replayed from memory (the fallback 202)."""


async def open_upstream(
    request: web.Request, call: CallContext, body: bytes | None = None
) -> UpstreamResponse:
    """Send the request upstream, with `body` (read already) or the client's body (its start
    read first, the rest streamed at the client's pace); return the response (headers read).
    Whatever the body held of the process's budget is given back once it has been sent."""
    settings = request.app[RUNTIME].settings
    headers = upstream_request_headers(
        request.headers,
        remote=request.remote,
        scheme=request.scheme,
        host=request.host,
        trust_forwarded=settings.proxy.trust_forwarded_headers,
        correlation_header=settings.correlation_header,
        correlation=call.correlation_id,
        trace=call.trace.headers() if call.trace else None,
    )
    data: bytes | AsyncIterator[bytes] | None = body
    if body is None:
        data = await pass_through_body(request, call, settings.clients)
    url = upstream_url(call.upstream, request)
    started = time.perf_counter()
    try:
        with upstream_errors():
            response = await request.app[POOL].request(request.method, url, headers, data)
    except RequestTimeout:
        raise  # the client's body was too slow
    except SidecarError:
        if call.client_stalled:  # the client's body stalled, not the upstream
            raise RequestTimeout(
                "the body came too slowly (clients.body_timeout, clients.min_body_rate)"
            ) from None
        raise
    finally:
        release(request)
    call.upstream_s = time.perf_counter() - started
    return response


async def relay(
    request: web.Request,
    call: CallContext,
    upstream: UpstreamResponse,
    extra_headers: dict[str, str] | None = None,
    already: bytes = b"",
) -> web.StreamResponse:
    """Relay an upstream answer unchanged (status, headers, body), streamed; `already` is the
    start of its body when the caller has read that much of it."""
    headers = response_headers(upstream.headers, upstream=call.upstream, origin=call.origin)
    headers[request.app[RUNTIME].settings.correlation_header] = call.correlation_id
    if extra_headers:
        headers.update(extra_headers)
    length = upstream.content_length
    if request.method != "HEAD" and length is not None and length <= SMALL_BODY:
        # Small and of known length: read whole, and answered in one write (status line,
        # headers and body together), not streamed in pieces.
        try:
            rest = length - len(already)
            body = already + (await upstream.content.readexactly(rest) if rest > 0 else b"")
        except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise UpstreamUnreachable(
                f"upstream failed mid-answer: {exc.__class__.__name__}", kind="protocol"
            ) from exc
        call.status = upstream.status
        return Replayed(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
    response = Relayed(status=upstream.status, reason=upstream.reason, headers=headers)
    call.status = upstream.status
    await response.prepare(request)
    call.response = response
    if request.method != "HEAD":
        chunks = upstream.content.iter_chunked(CHUNK)
        chunk: bytes | None = already
        while chunk is not None:
            try:
                if chunk:
                    await response.write(chunk)
            except ConnectionError:
                # The client hung up mid-answer: nobody to relay to, and no fault of the
                # upstream's (the connection to it is closed on release: its answer was cut).
                call.outcome = "client_gone"
                return response
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                chunk = None
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Too late for a 502: cut the answer so the client cannot take it as complete.
                _mid_answer(call, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
    await response.write_eof()
    return response


_said_mid_answer = Every()


def _mid_answer(call: CallContext, error: BaseException) -> None:
    """An upstream that failed after its answer started: counted always, logged at most once a
    second (with how many were held back)."""
    call.outcome, call.error_kind = "upstream_error", "protocol"
    if _said_mid_answer.ready():
        logger.warning(
            "upstream failed mid-answer; connection closed",
            extra={
                "correlation_id": call.correlation_id,
                "error": error.__class__.__name__,
                "since_last_line": _said_mid_answer.take_skipped(),
            },
        )


async def pass_through(
    request: web.Request, call: CallContext, extra_headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Forward the call and relay whatever the upstream answers."""
    async with await open_upstream(request, call) as upstream:
        return await relay(request, call, upstream, extra_headers)
