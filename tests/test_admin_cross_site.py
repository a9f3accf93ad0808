"""The admin API against another site's page: a write authenticated by a credential the browser
sends by itself (a cookie, Basic auth) must come from the admin listener's own origin, as JSON;
and the portal's sign-in limit counts the address the operator's proxy saw, not one the client
wrote into X-Forwarded-For."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from .admin_support import Admin, StartAdmin

COOKIE = {"Cookie": "session=victim-session"}
HOOK = {"url": "https://attacker.example/hook", "events": ["*"]}


def form(body: dict[str, Any]) -> bytes:
    """What a cross-site `<form enctype="text/plain">` can post: JSON-looking text."""
    return orjson.dumps(body)


async def subscriptions(admin: Admin, headers: dict[str, str]) -> list[Any]:
    answer = await admin.call("GET", "/subscriptions", headers)
    assert answer.status == 200, answer.body
    return list(answer.body["subscriptions"])


@pytest.mark.parametrize(
    "extra",
    [
        {"Origin": "https://attacker.example", "Content-Type": "text/plain"},
        {"Origin": "https://attacker.example", "Content-Type": "application/json"},
        {"Origin": "null", "Content-Type": "application/json"},
        {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"},
        {"Content-Type": "text/plain"},  # a browser too old to say where it comes from
        {"Content-Type": "application/x-www-form-urlencoded"},
    ],
    ids=["text-form", "json-cross-origin", "null-origin", "sec-fetch", "no-origin", "urlencoded"],
)
async def test_a_cross_site_write_with_a_cookie_credential_is_refused(
    start_admin: StartAdmin, extra: dict[str, str]
) -> None:
    admin = await start_admin(tenancy={"credential_header": "Cookie"})
    answer = await admin.call("POST", "/subscriptions", COOKIE | extra, data=form(HOOK))
    assert answer.status == 403, answer.body
    assert "which a browser sends by itself" in answer.body["detail"]
    assert await subscriptions(admin, COOKIE) == []  # nothing made in the victim's tenancy


async def test_writes_from_the_listener_s_own_origin_or_from_programs_are_served(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin(tenancy={"credential_header": "Cookie"})
    own = {"Origin": admin.url, "Sec-Fetch-Site": "same-origin"}
    json = {"Content-Type": "application/json"}
    assert (await admin.call("POST", "/subscriptions", COOKIE | own | json, HOOK)).status == 201
    assert (await admin.call("POST", "/subscriptions", COOKIE | json, HOOK)).status == 201
    (first, _) = await subscriptions(admin, COOKIE)
    rotate = f"/subscriptions/{first['id']}/rotate-secret"
    assert (await admin.call("POST", rotate, COOKIE)).status == 200  # no body: no type
    cross = {"Origin": "https://attacker.example"}
    assert (
        await admin.call("DELETE", f"/subscriptions/{first['id']}", COOKIE | cross)
    ).status == 403


async def test_basic_credentials_are_guarded_and_bearer_ones_are_not(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()  # credential_header: Authorization
    cross = {"Origin": "https://attacker.example", "Content-Type": "text/plain"}
    basic = {"Authorization": "Basic dmljdGltOnB3"}
    assert (
        await admin.call("POST", "/subscriptions", basic | cross, data=form(HOOK))
    ).status == 403
    bearer = {"Authorization": "Bearer client-key"}  # never sent by a browser on its own
    assert (
        await admin.call("POST", "/subscriptions", bearer | cross, data=form(HOOK))
    ).status == 201


async def test_the_sign_in_limit_keys_on_the_address_the_proxy_saw(start_admin: StartAdmin) -> None:
    behind = await start_admin(
        portal={"sign_ins_per_minute": 3}, proxy={"trust_forwarded_headers": True}
    )
    body = {"credential": "Bearer guess"}
    statuses = []
    for n in range(10):  # the client invents a new first entry each time
        forged = {"X-Forwarded-For": f"198.51.100.{n}, 203.0.113.7"}
        statuses.append((await behind.call("POST", "/sign-in", forged, body)).status)
    assert statuses == [201] * 3 + [429] * 7
    direct = await start_admin(portal={"sign_ins_per_minute": 3})  # no trusted proxy
    statuses = []
    for n in range(5):
        forged = {"X-Forwarded-For": f"198.51.100.{n}"}
        statuses.append((await direct.call("POST", "/sign-in", forged, body)).status)
    assert statuses == [201] * 3 + [429] * 2  # the peer's address, whatever the header says
