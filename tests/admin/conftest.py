"""Fixtures of the admin API's tests: the shared `start_admin` (tests/conftest.py) with this
package's defaults, and a webhook receiver.

Every admin test's sidecar has the route `create-user`, whose success event is described (a
description and an example payload, for the catalog), and webhooks that may deliver to this
host's receivers and retry once, 50 ms after a failed first attempt (a failing message is dead
after two attempts). A test that needs other settings says so: keyword arguments replace these.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from ..admin_support import StartAdmin
from ..helpers import until

ROUTE = {
    "name": "create-user",
    "method": "POST",
    "path": "/api/users",
    "wait": {"poll": {}},  # a synchronised route: only their events can fire
    "webhook_events": {
        "success": {
            "type": "user.created",
            "description": "A user was created.",
            "example": {"id": "u-1", "name": "Ada"},
        },
        "failure": "user.creation_failed",
    },
}
WEBHOOKS = {"schedule": ["50ms"], "timeout": "2s", "allow_private_targets": True}


@pytest.fixture
def start_admin(start_admin: StartAdmin) -> StartAdmin:
    """The shared `start_admin` with ROUTE and WEBHOOKS."""
    return functools.partial(start_admin, routes=[ROUTE], webhooks=WEBHOOKS)


@dataclass
class Receiver:
    """A webhook receiver: every request it got (headers, body), in order, and the status it
    answers, with `answer {status}` as its body (the last of `status`: append one to change it).
    """

    server: TestServer
    got: list[tuple[dict[str, str], bytes]]
    status: list[int]
    taken: int = 0  # how many of `got` `next` has returned

    def url(self) -> str:
        return str(self.server.make_url("/hook"))

    async def next(self, timeout_s: float = 5.0) -> tuple[dict[str, str], bytes]:
        """The first request `next` has not returned yet, once it has arrived."""
        await until(
            lambda: len(self.got) > self.taken,
            timeout_s,
            what=lambda: f"request {self.taken + 1} at the receiver (it got {len(self.got)})",
        )
        self.taken += 1
        return self.got[self.taken - 1]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    got: list[tuple[dict[str, str], bytes]] = []
    status = [204]

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=status[-1], text=f"answer {status[-1]}")

    app = web.Application()
    app.router.add_post("/hook", hook)
    return Receiver(await aiohttp_server(app), got, status)
