"""`tenancy.verify`: with it, only credentials the upstream accepts own anything. A made-up string
is answered 401 and creates nothing; an upstream that cannot answer gives a 503, never a guess;
verdicts are kept a while, so the upstream is asked once per credential, not per request."""

from __future__ import annotations

import pytest
from aiohttp import web

from sidecar.metrics import METRICS

from ..admin_support import OP, PROBLEM, A, Admin
from ..conftest import FakeApiFactory, StartAdmin
from ..fakes import FakeApi

TYPO = {"Authorization": "Bearer client-a-typo"}
BROKEN = {"Authorization": "Bearer the-api-breaks"}
HOOK = "http://127.0.0.1:9/hook"


async def me(request: web.Request) -> web.Response:
    """The API's "who am I": knows client-a only; breaks for one credential."""
    credential = request.headers.get("Authorization", "")
    if credential == A["Authorization"]:
        return web.json_response({"id": "a"})
    if credential == BROKEN["Authorization"]:
        return web.Response(status=500)
    return web.Response(status=401)


@pytest.fixture
async def verified(fake_api: FakeApiFactory, start_admin: StartAdmin) -> tuple[Admin, FakeApi]:
    api = await fake_api(accept=None, routes={"GET /v1/me": me})
    admin = await start_admin(
        upstream=api.url,
        tenancy={"verify": {"path": "/v1/me", "cache_for": "1m"}},
        webhooks={"allow_private_targets": True},
    )
    return admin, api


def asked(api: FakeApi) -> list[str]:
    return [seen.headers.get("Authorization", "") for seen in api.seen if seen.path == "/v1/me"]


async def test_a_credential_the_api_accepts_is_a_client(verified: tuple[Admin, FakeApi]) -> None:
    admin, api = verified
    await admin.create(A, HOOK)
    listed = await admin.call("GET", "/subscriptions", A)
    assert (listed.status, len(listed.body["subscriptions"])) == (200, 1)
    assert asked(api) == [A["Authorization"]]  # kept: asked once for both requests
    assert metric_of(admin, "admitted") == 1


async def test_a_made_up_credential_is_refused_and_creates_nothing(
    verified: tuple[Admin, FakeApi],
) -> None:
    admin, api = verified
    created = await admin.call("POST", "/subscriptions", TYPO, {"url": HOOK, "events": ["*"]})
    assert created.status == 401
    assert created.headers["Content-Type"].startswith(PROBLEM)
    assert created.body["detail"] == "the API does not accept this credential"
    signed = await admin.call("POST", "/sign-in", None, {"credential": TYPO["Authorization"]})
    assert signed.status == 401
    everyone = await admin.call("GET", "/subscriptions", OP)
    assert everyone.body["subscriptions"] == []
    assert asked(api) == [TYPO["Authorization"]]  # the refusal is kept too
    assert metric_of(admin, "refused") == 1


async def test_an_api_that_cannot_answer_admits_nobody(verified: tuple[Admin, FakeApi]) -> None:
    admin, api = verified
    for _ in range(2):
        answer = await admin.call("GET", "/subscriptions", BROKEN)
        assert answer.status == 503
        assert "could not verify" in answer.body["detail"] or "500" in answer.body["detail"]
    assert len(asked(api)) == 2  # no verdict is kept from a failure
    assert metric_of(admin, "error") == 2


async def test_the_operator_and_portal_sessions_are_not_asked_about(
    verified: tuple[Admin, FakeApi],
) -> None:
    admin, api = verified
    assert (await admin.call("GET", "/subscriptions", OP)).status == 200
    session = await admin.sign_in(A["Authorization"])
    bearer = {"Authorization": f"Bearer {session['token']}"}
    assert (await admin.call("GET", "/me", bearer)).status == 200
    assert asked(api) == [A["Authorization"]]  # once, at sign-in


def metric_of(admin: Admin, result: str) -> float:
    registry = admin.app[METRICS].registry
    return registry.get_sample_value("sidecar_credential_checks_total", {"result": result}) or 0.0
