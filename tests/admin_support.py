"""A client of one sidecar's admin listener, for the tests that drive its JSON API
(`/admin/api`) over HTTP: `start_admin` (tests/conftest.py) starts the real sidecar and returns
an `Admin` talking to it.

The credentials: `OPERATOR_TOKEN` is the sidecar's admin token (`OP` its header); `A` and `B`
are two clients' credentials (each a tenant of its own); `bearer(session)` is the header of a
portal session. `assert_problem` checks an answer is the problem+json of a status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDictProxy

from .helpers import until_true

OPERATOR_TOKEN = "op-token-0123456789"
OP = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
A = {"Authorization": "Bearer client-a"}
B = {"Authorization": "Bearer client-b"}
PROBLEM = "application/problem+json"


def bearer(session: dict[str, Any]) -> dict[str, str]:
    """The header a portal session (`Admin.sign_in`, `Admin.link`) is used with."""
    return {"Authorization": f"Bearer {session['token']}"}


@dataclass
class Answer:
    """One admin API answer: its status, headers and JSON body (None when empty)."""

    status: int
    headers: CIMultiDictProxy[str]
    body: Any


@dataclass
class Admin:
    """A client of one sidecar's admin listener (`url`), and the sidecar app itself."""

    url: str
    http: aiohttp.ClientSession
    app: web.Application

    async def call(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        json: Any = None,
        data: bytes | None = None,
    ) -> Answer:
        """`method` on `/admin/api{path}`, with `json` (serialised) or raw `data` as body."""
        body = orjson.dumps(json) if json is not None else data
        async with self.http.request(
            method, self.url + "/admin/api" + path, headers=headers, data=body
        ) as response:
            raw = await response.read()
            return Answer(response.status, response.headers, orjson.loads(raw) if raw else None)

    async def create(self, headers: dict[str, str], url: str, **fields: Any) -> dict[str, Any]:
        """A subscription of the caller `headers` name (every event unless `events` says);
        its view, secret included."""
        answer = await self.call(
            "POST", "/subscriptions", headers, {"url": url, "events": ["*"], **fields}
        )
        assert answer.status == 201, answer.body
        return dict(answer.body)

    async def sign_in(self, credential: str, **fields: Any) -> dict[str, Any]:
        """A portal session made from `credential` (a client's, or the admin token)."""
        answer = await self.call("POST", "/sign-in", None, {"credential": credential, **fields})
        assert answer.status == 201, answer.body
        return dict(answer.body)

    async def link(self, **body: Any) -> dict[str, Any]:
        """A portal link the operator makes for a client."""
        answer = await self.call("POST", "/portal-sessions", OP, body)
        assert answer.status == 201, answer.body
        return dict(answer.body)

    async def attempts_until(
        self, headers: dict[str, str], done: Callable[[list[Any]], bool], **query: str
    ) -> list[Any]:
        """The message log (`GET /messages?{query}`) once `done(attempts)` holds."""
        path = "/messages?" + "&".join(f"{k}={v}" for k, v in query.items())
        return await self._until(path, "attempts", headers, done)

    async def subscription_attempts_until(
        self, headers: dict[str, str], sub_id: str, done: Callable[[list[Any]], bool]
    ) -> list[Any]:
        """A subscription's attempts log once `done(log)` holds (it is written just after the
        receiver answers)."""
        return await self._until(f"/subscriptions/{sub_id}/attempts", "attempts", headers, done)

    async def _until(
        self,
        path: str,
        key: str,
        headers: dict[str, str],
        done: Callable[[list[Any]], bool],
    ) -> list[Any]:
        found: list[Any] = []

        async def check() -> bool:
            nonlocal found
            answer = await self.call("GET", path, headers)
            assert answer.status == 200, answer.body
            found = list(answer.body[key])
            return done(found)

        await until_true(check, timeout_s=5, every_s=0.01, what=lambda: f"GET {path}: {found}")
        return found


def assert_problem(answer: Answer, status: int) -> None:
    """`answer` is a problem+json document of `status`, with a detail."""
    assert answer.status == status, answer.body
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.body["status"] == status
    assert answer.body["detail"]


StartAdmin = Callable[..., Awaitable[Admin]]
