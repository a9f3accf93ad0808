"""A Redis password never leaves the process: not from the userinfo of `redis_url`, nor from a
`?password=` query parameter, whether in the log lines about Redis or in the unauthenticated
`/readyz`."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from devtools.redis_server import free_port
from sidecar.connections import redacted
from sidecar.state import ADMIN_URL

from .conftest import SidecarFactory
from .helpers import until_true


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://db:6379/0?password=sekrit", "redis://db:6379/0?password=***"),
        (
            "redis://db/0?db=1&password=sekrit&socket_timeout=2",
            "redis://db/0?db=1&password=***&socket_timeout=2",
        ),
        (
            "rediss://app:sekrit@db:6380?ssl_cert_reqs=none",
            "rediss://app:***@db:6380?ssl_cert_reqs=none",
        ),
        ("unix:///run/redis.sock?password=sekrit&db=2", "unix:///run/redis.sock?password=***&db=2"),
    ],
)
def test_a_password_in_the_query_is_redacted_too(url: str, shown: str) -> None:
    assert redacted(url) == shown


async def test_readyz_and_the_log_never_show_a_query_password(
    start_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    dead = f"redis://127.0.0.1:{free_port()}/0?password=sekrit-in-the-query"
    client = await start_sidecar("http://127.0.0.1:9", redis_url=dead)
    readyz = f"{client.app[ADMIN_URL]}/readyz"
    body = ""
    async with aiohttp.ClientSession() as http:

        async def reports_redis() -> bool:
            nonlocal body
            async with http.get(readyz) as resp:
                body = await resp.text()
                return resp.status == 200 and "Redis does not answer" in body  # degraded

        await until_true(reports_redis, what=lambda: body)
    assert "password=***" in body
    assert "sekrit" not in body
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "password=***" in logged
    assert "sekrit" not in logged
