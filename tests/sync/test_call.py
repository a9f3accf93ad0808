"""The synchronised call (sidecar/sync/call.py): what it does with an upstream's 202 it cannot
use."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis

from ..conftest import ProxyFactory
from ..helpers import keys_like
from ..raw_http import raw_upstream

SYNC = {
    "name": "jobs",
    "method": "POST",
    "path": "/jobs",
    "budget": "300ms",
    "wait": {"poll": {"interval": "50ms"}},
}


@pytest.mark.parametrize(
    ("location", "relayed"),
    [(b"/jobs/\xff\xfe", "/jobs/%FF%FE"), (b"http://[::1/jobs/1", "http://[::1/jobs/1")],
)
async def test_a_malformed_location_on_a_202_is_relayed_and_not_tracked(
    redis: aioredis.Redis,  # first: this test's keys are deleted once the proxy has stopped
    start_proxy: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    redis_url: str,
    key_prefix: str,
    location: bytes,
    relayed: str,
) -> None:
    answer = b"HTTP/1.1 202 Accepted\r\nLocation: " + location + b"\r\nContent-Length: 2\r\n\r\n{}"
    server, url = await raw_upstream(answer)
    proxy = await start_proxy(url, routes=[SYNC], redis_url=redis_url, key_prefix=key_prefix)
    async with aiohttp.ClientSession() as http, http.post(proxy.url + "/jobs") as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == relayed
        assert "Content-Type" not in resp.headers  # the upstream sent none
        assert await resp.read() == b"{}"
    assert [r for r in caplog.records if "Location is malformed" in r.getMessage()]
    assert proxy.metric("sidecar_fallbacks_total", route="jobs", reason="bad_location") == 1
    # A tracked 202 is answered once its record is written: there is none.
    assert await keys_like(redis, f"{key_prefix}:call:*") == []
    server.close()
