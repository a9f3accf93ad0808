"""What a new user of the portal tripped on, driven in headless Chromium by roles, labels and
accessible names: a portal link never replaces a live session without asking; sign-in names the
configured credential header and says when a credential names an empty account; Recover says
what it does about scheduled retries and a message shows when its next one is due; only events
that can fire are offered; a message's payload is offered exactly as sent; and the Messages
table shows its message ids at 1280 px."""

from __future__ import annotations

import re
from typing import Any

import orjson
from playwright.sync_api import Page, expect

from tests.portal.conftest import OpenPage, StartPortal

A = "Bearer key-a"
B = "Bearer key-b"
SYNC_AND_PLAIN = [
    {"name": "orders", "method": "POST", "path": "/orders", "wait": {"poll": {}}},
    {"name": "plain", "path": "/plain"},  # a named pass-through: nothing completes there
]


def sign_in(page: Page, credential: str = A) -> None:
    page.get_by_label("Credential").fill(credential)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_visible()


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Portal").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()


def tenant_of(portal: Any, credential: str) -> str:
    status, me = portal.call("GET", "/me", {"Authorization": credential})
    assert status == 200, me
    return str(me["tenant"])


def test_a_portal_link_never_replaces_a_live_session_without_asking(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    page = open_page(portal)
    sign_in(page, A)
    mine = f"Signed in as client {tenant_of(portal, A)[:10]}…"
    expect(page.get_by_text(mine)).to_be_visible()

    page.goto(portal.link(tenant_credential=B))  # a link someone sent, in this tab
    dialog = page.get_by_role("dialog", name="Open the portal link?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text(f"signed in as client {tenant_of(portal, A)[:10]}…")
    assert "session=" not in page.url  # out of the address bar before anything else
    dialog.get_by_role("button", name="Keep my session").click()
    expect(page.get_by_text("You kept your session; the portal link was not used.")).to_be_visible()
    expect(page.get_by_text(mine)).to_be_visible()

    page.goto(portal.link(tenant_credential=B))
    page.get_by_role("dialog").get_by_role("button", name="Switch to the link's session").click()
    expect(page.get_by_text(f"Signed in as client {tenant_of(portal, B)[:10]}…")).to_be_visible()


def test_a_link_opened_in_a_tab_without_a_session_signs_in_at_once(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    page = open_page(portal, portal.link(tenant_credential=B))
    expect(page.get_by_text(f"Signed in as client {tenant_of(portal, B)[:10]}…")).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)


def test_sign_in_names_the_credential_header_and_says_when_an_account_is_empty(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal(tenancy={"credential_header": "X-Api-Key"})
    status, made = portal.call(
        "POST",
        "/subscriptions",
        {"X-Api-Key": "key-real"},
        {"url": portal.receiver.url, "events": ["*"]},
    )
    assert status == 201, made
    page = open_page(portal)
    hint = page.get_by_text("The value your application sends in its X-Api-Key header")
    expect(hint).to_be_visible()
    expect(page.get_by_text("Bearer")).to_have_count(0)

    sign_in(page, "key-reel")  # a typo names an account of its own, with nothing in it
    empty = page.get_by_text(
        "No endpoints or messages under this credential yet. If you expected some, check the "
        "credential: it must be exactly what your application sends in its X-Api-Key header."
    )
    expect(empty).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, "key-real")
    expect(page.get_by_role("link", name=portal.receiver.url)).to_be_visible()
    expect(page.get_by_text("No endpoints or messages under this credential")).to_have_count(0)


def test_recover_tells_of_scheduled_retries_and_a_message_shows_when_its_next_is_due(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal(
        webhooks={"allow_private_targets": True, "schedule": ["2h", "5h"], "timeout": "2s"}
    )
    sub = portal.subscribe(A)
    portal.receiver.status = 503  # the first attempt fails; the next is due in 2 h
    status, sent = portal.call("POST", f"/subscriptions/{sub['id']}/test", {"Authorization": A})
    assert status == 202, sent
    portal.receiver.wait_for(1)
    page = open_page(portal)
    sign_in(page)
    page.goto(f"{portal.page_url}#/messages/{sent['message_id']}")
    details = page.get_by_role("definition").filter(has=page.locator("time"))
    expect(page.get_by_text("scheduled", exact=True)).to_be_visible(timeout=5000)
    next_due = page.get_by_role("term").filter(has_text="Next attempt")
    expect(next_due).to_be_visible()
    expect(details.filter(has_text=re.compile(r"\(in [12] h \d+ min;"))).to_be_visible()

    page.get_by_role("link", name=portal.receiver.url).click()
    page.get_by_role("button", name="Recover").click()
    dialog = page.get_by_role("dialog", name="Recover failed messages")
    expect(dialog).to_contain_text(
        "Messages still waiting for a scheduled retry are left alone: they keep their schedule"
    )
    dialog.get_by_role("button", name="Recover").click()
    expect(
        page.get_by_text("No failed messages since").filter(
            has_text="Messages waiting for a retry keep their schedule."
        )
    ).to_be_visible()
    assert len(portal.receiver.got) == 1  # the scheduled retry was not sent early


def test_only_events_that_can_fire_are_offered(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal(routes=SYNC_AND_PLAIN)
    portal.subscribe(A)
    page = open_page(portal)
    sign_in(page)
    nav(page, "Event types")
    for fires in ("orders.succeeded", "orders.failed", "webhook.test"):
        expect(page.get_by_role("heading", name=fires, level=2)).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile("^plain\\."))).to_have_count(0)
    nav(page, "Messages")
    options = page.get_by_label("Event type").locator("option").all_inner_texts()
    assert options == ["All event types", "orders.succeeded", "orders.failed", "webhook.test"]
    nav(page, "Endpoints")
    page.get_by_role("link", name=portal.receiver.url).click()
    page.get_by_role("button", name="Send test event").click()
    form = page.get_by_role("form", name="Send test event")
    offered = form.get_by_label("Event type").locator("option").all_inner_texts()
    assert not [t for t in offered if t.startswith("plain.")], offered


def test_the_payload_is_offered_exactly_as_sent_and_verifies(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    sub = portal.subscribe(A)
    data = {"name": "Zoë", "n": 1.5, "nested": {"list": [1, 2, 3]}}
    status, sent = portal.call(
        "POST", f"/subscriptions/{sub['id']}/test", {"Authorization": A}, {"data": data}
    )
    assert status == 202, sent
    portal.receiver.wait_for(1)
    headers, body = portal.receiver.got[0]
    page = open_page(portal)
    sign_in(page)
    page.goto(f"{portal.page_url}#/messages/{sent['message_id']}")
    exact = page.get_by_role("region", name="Payload as sent")
    expect(exact).to_be_visible()
    shown = exact.inner_text()
    assert shown.encode() == body  # byte for byte what the receiver got
    assert orjson.loads(shown)["data"] == data

    nav(page, "Verify a signature")  # pasted as the message view shows it: valid
    values = {
        "Payload": shown,
        "webhook-id": headers["webhook-id"],
        "webhook-timestamp": headers["webhook-timestamp"],
        "webhook-signature": headers["webhook-signature"],
        "Secret": sub["secret"],
    }
    for label, value in values.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_role("button", name="Verify").click()
    verdict = page.get_by_role("status").filter(has_text="signature")
    expect(verdict).to_contain_text("Valid signature")


def test_the_messages_table_shows_its_message_ids_at_1280_px(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    long_url = portal.receiver.url + "?tenant=acme-corporation-europe&stage=production-eu-west-1"
    sub = portal.subscribe(A, url=long_url)
    status, sent = portal.call(  # the longest event type of the route
        "POST",
        f"/subscriptions/{sub['id']}/test",
        {"Authorization": A},
        {"type": "user.creation_failed"},
    )
    assert status == 202, sent
    portal.receiver.wait_for(1)
    page = open_page(portal, width=1280)
    sign_in(page)
    nav(page, "Messages")
    # The table's own scroll region (inside the section of the same name).
    region = page.get_by_role("region", name="Messages", exact=True).last
    link = region.get_by_role("link", name=sent["message_id"])
    expect(link).to_be_visible(timeout=5000)
    box, frame = link.bounding_box(), region.bounding_box()
    assert box is not None and frame is not None
    assert box["x"] + box["width"] <= frame["x"] + frame["width"], (box, frame)
    overflow = region.evaluate("el => el.scrollWidth - el.clientWidth")
    assert overflow <= 0, f"the table is {overflow}px wider than its region at 1280 px"
    expect(region.get_by_role("link", name=long_url)).to_be_visible()  # whole, as its name
