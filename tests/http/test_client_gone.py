"""A client that hangs up while its answer is being relayed is no fault of the upstream's: the
call counts as `client_gone`, nothing is logged above DEBUG, and the upstream connection the
answer came on is closed (its answer was not read whole)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from ..conftest import ProxyFactory, Upstream
from ..helpers import until
from ..raw_http import Proxy

PART = b"x" * 65536


async def test_a_client_hanging_up_mid_answer_is_client_gone_and_quiet(
    start_upstream: Upstream, start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    finished = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while True:  # an answer that lasts until the sidecar stops reading it
                await response.write(PART)
        except ConnectionError:
            pass
        finally:
            finished.set()  # the sidecar closed this connection (or the handler was cancelled)
        return response

    app = web.Application()
    app.router.add_get("/download", endless)
    upstream = await start_upstream(app)
    proxy: Proxy = await start_proxy(upstream)
    caplog.set_level(logging.DEBUG)
    for _ in range(3):
        reader, writer = await proxy.raw()
        writer.write(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readexactly(len(PART))  # the answer is flowing
        writer.transport.abort()  # and the client hangs up
        await asyncio.wait_for(finished.wait(), 10)  # the upstream's connection was closed
        finished.clear()

    def counted(outcome: str) -> float:
        return proxy.metric(
            "sidecar_requests_total", route="-", outcome=outcome, status_class="2xx"
        )

    await until(lambda: counted("client_gone") == 3, what=lambda: f"{caplog.records}")
    assert counted("upstream_error") == 0
    assert proxy.metric("sidecar_upstream_errors_total", route="-", kind="protocol") == 0
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
