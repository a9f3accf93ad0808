"""The Operations view in headless Chromium, used as a person would: a message links to its
operation's timeline, the search box finds one by correlation id, a client sees only its own,
the operator sees everyone's and expunges one. Every view passes axe-core at desktop and phone
widths, and calls only operations the OpenAPI document lists."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from playwright.sync_api import Page, expect

from tests.portal.conftest import OPERATOR_TOKEN, OpenPage, Portal, StartPortal
from tests.portal.test_page import (
    A,
    B,
    attempts_table,
    axe_violations,
    calls_are_documented,
    nav,
    sign_in,
)

STEPS = [
    "Received POST /api/users",
    "Forwarded to the API",
    "The API answered 202",
    "Answered with the 202: the client asked for it (Prefer: respond-async)",
    "The client got 202",
    "Completed: succeeded (CreateUser::UserCreated), learnt from the completion stream",
    "Webhook attempt 1",
    "Webhook attempt 2",
]


def call_async(portal: Portal, credential: str) -> str:
    """A call through the proxy answered 202 at once (Prefer: respond-async); its correlation
    id. The test API completes it shortly after."""

    async def go() -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                portal.proxy_url + "/api/users",
                json={"username": "ana"},
                headers={"Authorization": credential, "Prefer": "respond-async"},
            ) as resp,
        ):
            assert resp.status == 202
            return str(resp.headers["X-Correlation-ID"])

    return portal.loop.run(go())


def steps(page: Page) -> Any:
    return page.get_by_role("main").get_by_role("list").get_by_role("listitem")


def find(page: Page, correlation_id: str) -> None:
    nav(page, "Operations")
    page.get_by_label("Correlation id").fill(correlation_id)
    page.get_by_role("button", name="Find operation").click()


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_a_messages_operation_shows_every_step_in_order(
    start_portal: StartPortal, open_page: OpenPage, width: int
) -> None:
    # Deliveries fail once, then succeed: a second attempt a second later.
    portal = start_portal(
        webhooks={"allow_private_targets": True, "schedule": ["1s"], "timeout": "2s"}
    )
    portal.receiver.status = 500
    portal.subscribe(A)
    cid = call_async(portal, A)
    portal.receiver.wait_for(1)
    portal.receiver.status = 200
    portal.receiver.wait_for(2)

    page = open_page(portal, width=width, height=860)
    sign_in(page)
    nav(page, "Messages")
    row = attempts_table(page).get_by_role("row", name=re.compile("delivered"))
    row.get_by_role("link", name=re.compile("^msg_")).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Message msg_"), level=1)).to_be_visible()
    page.get_by_role("link", name=cid).click()
    expect(page.get_by_role("heading", name=f"Operation {cid}", level=1)).to_be_focused()
    expect(page.get_by_text("succeeded", exact=True)).to_be_visible()
    expect(steps(page)).to_have_count(len(STEPS), timeout=8000)
    for n, text in enumerate(STEPS):
        expect(steps(page).nth(n)).to_contain_text(text)
    expect(steps(page).nth(6)).to_contain_text("500, retry")
    expect(steps(page).nth(7)).to_contain_text("200, delivered")
    # A step links to the message of the attempt.
    steps(page).nth(7).get_by_role("link", name=re.compile("^msg_")).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Message msg_"), level=1)).to_be_visible()
    page.go_back()
    expect(page.get_by_role("heading", name=f"Operation {cid}", level=1)).to_be_visible()
    assert axe_violations(page) == []
    assert page.locator("h1").count() == 1
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    expect(page.get_by_role("button", name="Expunge")).to_have_count(0)  # a client's view
    nav(page, "Operations")
    assert axe_violations(page) == []
    calls_are_documented(page)


def test_the_search_box_finds_the_callers_own_operations_and_only_those(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    mine = call_async(portal, A)
    theirs = call_async(portal, B)
    page = open_page(portal)
    sign_in(page, A)
    find(page, mine)
    expect(page.get_by_role("heading", name=f"Operation {mine}", level=1)).to_be_visible()
    expect(steps(page).first).to_contain_text("Received POST /api/users")
    find(page, theirs)
    expect(page.get_by_role("heading", name="Operation not found", level=1)).to_be_visible()
    assert axe_violations(page) == []
    # The not-found view offers the search again.
    page.get_by_label("Correlation id").fill(mine)
    page.get_by_role("button", name="Find operation").click()
    expect(page.get_by_role("heading", name=f"Operation {mine}", level=1)).to_be_visible()

    operator = open_page(portal)
    sign_in(operator, OPERATOR_TOKEN)
    find(operator, theirs)
    expect(operator.get_by_role("heading", name=f"Operation {theirs}", level=1)).to_be_visible()
    expect(operator.get_by_text(re.compile(r"^t_[0-9a-f]+$"))).to_be_visible()  # whose it is


def test_the_operator_expunges_an_operation(start_portal: StartPortal, open_page: OpenPage) -> None:
    portal = start_portal()
    cid = call_async(portal, A)
    page = open_page(portal)
    sign_in(page, OPERATOR_TOKEN)
    find(page, cid)
    expect(page.get_by_role("heading", name=f"Operation {cid}", level=1)).to_be_visible()
    page.get_by_role("button", name="Expunge").click()
    dialog = page.get_by_role("dialog", name="Expunge this operation?")
    expect(dialog).to_be_visible()
    assert axe_violations(page) == []
    dialog.get_by_role("button", name="Expunge").click()
    expect(page.get_by_text(f"Operation {cid} expunged.")).to_be_visible()
    expect(page.get_by_role("heading", name="Operations", level=1)).to_be_visible()
    find(page, cid)
    expect(page.get_by_role("heading", name="Operation not found", level=1)).to_be_visible()
    status, _ = portal.call(
        "GET", f"/operations/{cid}", {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    )
    assert status == 404
