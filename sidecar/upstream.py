"""Talking to the upstream: one pooled session, errors translated at the boundary, bodies streamed.

`map_client_errors` is the one place aiohttp's client exceptions become our `UpstreamUnreachable`
(502) / `UpstreamTimeout` (504).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import aiohttp
from aiohttp import web

from .config import Proxy
from .errors import UpstreamTimeout, UpstreamUnreachable

CHUNK = 64 * 1024


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


async def relay_body(upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
    """Stream the upstream body to the prepared client response, chunk by chunk."""
    async for chunk in upstream.content.iter_chunked(CHUNK):
        await response.write(chunk)
    await response.write_eof()
