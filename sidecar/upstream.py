"""Talking to the upstream: one pooled session, the request sent on, the answer relayed.

`map_client_errors` is the one place aiohttp's client exceptions become our
`UpstreamUnreachable` (502) / `UpstreamTimeout` (504). Bodies are streamed both ways; an
upstream that fails after its answer started is cut off (the client sees a truncated answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from .body import paced
from .config import Proxy
from .context import CallContext
from .errors import BadRequest, RequestTimeout, SidecarError, UpstreamTimeout, UpstreamUnreachable
from .headers import response_headers, upstream_request_headers
from .pool import PoolError, UpstreamResponse
from .state import HTTP, POOL, RUNTIME

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
SMALL_BODY = 64 * 1024  # answers up to this size (with a Content-Length) are relayed whole


def create_session(proxy: Proxy) -> aiohttp.ClientSession:
    """The one upstream session per app: pooled, no cookie jar, bytes untouched."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=proxy.max_connections, limit_per_host=0),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        # `sock_connect` bounds the TCP/TLS connect itself; `connect` also counts the wait for a
        # free pooled connection, which under a burst is our queue, not the upstream's fault.
        timeout=aiohttp.ClientTimeout(
            total=None,
            connect=proxy.connect_timeout + proxy.read_timeout,
            sock_connect=proxy.connect_timeout,
            sock_read=proxy.read_timeout,
        ),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
    )


@contextlib.contextmanager
def map_client_errors(what: str = "upstream") -> Iterator[None]:
    """Translate aiohttp client errors into the sidecar's own 502/504."""
    try:
        yield
    except aiohttp.ConnectionTimeoutError as exc:
        raise UpstreamUnreachable(f"cannot connect to {what} in time", kind="connect") from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise UpstreamTimeout(f"{what} did not answer in time", kind="timeout") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamUnreachable(
            f"cannot connect to {what}: {exc.os_error}", kind="connect"
        ) from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(
            f"{what} failed: {exc.__class__.__name__}", kind="protocol"
        ) from exc


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
    carries exactly the upstream's."""

    async def _prepare_headers(self) -> None:
        headers = self._headers  # type: ignore[attr-defined]
        had = {name for name in (hdrs.CONTENT_TYPE, hdrs.SERVER) if name in headers}
        await super()._prepare_headers()  # type: ignore[misc]
        for name in (hdrs.CONTENT_TYPE, hdrs.SERVER):
            if name not in had:
                headers.popall(name, None)


class Relayed(NoInventedHeaders, web.StreamResponse):
    """A streamed answer relayed from the upstream."""


class Replayed(NoInventedHeaders, web.Response):
    """An upstream answer replayed from memory (the fallback 202)."""


async def open_upstream(
    request: web.Request, call: CallContext, body: bytes | None = None
) -> aiohttp.ClientResponse | UpstreamResponse:
    """Send the request upstream, with `body` (read already) or the client's body streamed
    within `clients.body_timeout` per part; return the response (headers read)."""
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
    if body is None and request.body_exists:
        data = paced(request, call, settings.clients)
    url = upstream_url(call.upstream, request)
    started = time.perf_counter()
    response: aiohttp.ClientResponse | UpstreamResponse
    if settings.proxy.client == "pool":
        try:
            response = await request.app[POOL].request(request.method, url, headers, data)
        except PoolError as exc:
            error = UpstreamTimeout if exc.kind == "timeout" else UpstreamUnreachable
            raise error(str(exc), kind=exc.kind) from None
    else:
        try:
            with map_client_errors():
                response = await request.app[HTTP].request(
                    request.method, url, headers=headers, data=data, allow_redirects=False
                )
        except SidecarError:
            if call.client_stalled:  # the client's body stalled, not the upstream
                raise RequestTimeout(
                    f"each part of the body must arrive within {settings.clients.body_timeout:g}s"
                ) from None
            raise
    call.upstream_s = time.perf_counter() - started
    return response


async def relay(
    request: web.Request,
    call: CallContext,
    upstream: aiohttp.ClientResponse | UpstreamResponse,
    extra_headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Relay an upstream answer unchanged (status, headers, body), streamed."""
    headers = response_headers(upstream.headers, upstream=call.upstream, origin=call.origin)
    headers[request.app[RUNTIME].settings.correlation_header] = call.correlation_id
    if extra_headers:
        headers.update(extra_headers)
    length = upstream.content_length
    if request.method != "HEAD" and length is not None and length <= SMALL_BODY:
        # Small and of known length: read whole, and answered in one write (status line,
        # headers and body together), not streamed in pieces.
        try:
            body = await upstream.content.readexactly(length) if length else b""
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
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Too late for a 502: cut the answer so the client cannot take it as complete.
            logger.warning(
                "upstream failed mid-answer; connection closed",
                extra={"correlation_id": call.correlation_id, "error": exc.__class__.__name__},
            )
            call.outcome, call.error_kind = "upstream_error", "protocol"
            if request.transport is not None:
                request.transport.close()
            return response
    await response.write_eof()
    return response


async def pass_through(
    request: web.Request, call: CallContext, extra_headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Forward the call and relay whatever the upstream answers."""
    async with await open_upstream(request, call) as upstream:
        return await relay(request, call, upstream, extra_headers)
