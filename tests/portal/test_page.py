"""The portal in headless Chromium, driven as a person would: by roles, labels and accessible
names (the contract's labels, buttons and headings, as written), against a real sidecar with a
real receiver. Every test also fails if the page raised a JavaScript error, requested anything
from another origin, or called an API operation the OpenAPI document does not list."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import Page, expect

from sidecar.admin.app import ADMIN_ENDPOINTS
from sidecar.admin.openapi import openapi_document
from sidecar.config import Settings
from tests.admin.test_openapi import documented
from tests.admin_support import OPERATOR_TOKEN
from tests.portal.conftest import OpenPage, StartPortal

ROOT = Path(__file__).parents[2]
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SCREENSHOT = ROOT / "docs" / "portal.png"
A = "Bearer key-a"
B = "Bearer key-b"


def sign_in(page: Page, credential: str = A) -> None:
    page.get_by_label("Credential").fill(credential)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_visible()


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Portal").get_by_role("link", name=name).click()
    expect(page.get_by_role("heading", name=name, level=1)).to_be_visible()


def open_endpoint(page: Page, url: str) -> None:
    nav(page, "Endpoints")
    page.get_by_role("link", name=url).click()
    expect(page.get_by_role("heading", name=url, level=1)).to_be_visible()


def calls_are_documented(page: Page) -> None:
    doc = openapi_document(Settings(), ADMIN_ENDPOINTS)
    calls = page.watch.api_calls  # type: ignore[attr-defined]
    assert calls
    undocumented = [(m, p) for m, p in calls if not documented(doc, m, p)]
    assert not undocumented, undocumented


def attempts_table(page: Page) -> Any:
    return page.get_by_role("region", name=re.compile(r"^(Attempts|Messages)$")).get_by_role(
        "table"
    )


# --------------------------------------------------------------------------------------------
# Signing in
# --------------------------------------------------------------------------------------------


def test_sign_in_add_an_endpoint_reveal_its_secret_and_reload(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    page = open_page(portal)
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_focused()
    sign_in(page)
    expect(page.get_by_text("No endpoints yet.")).to_be_visible()
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.get_by_role("heading", name="Add endpoint", level=1)).to_be_visible()
    page.get_by_label("URL").fill(portal.receiver.url)
    page.get_by_label("Description").fill("CRM sync")
    events = page.get_by_role("group", name="Events")
    expect(events.get_by_label("All events")).to_be_checked()
    events.get_by_label("All events").uncheck()
    events.get_by_label("user.created").check()
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Endpoint created")).to_be_focused()
    secret = page.get_by_label("Signing secret").input_value()
    assert secret.startswith("whsec_")
    expect(page.get_by_role("button", name="Copy secret")).to_be_visible()

    page.get_by_role("link", name="Open the endpoint").click()
    expect(page.get_by_role("heading", name=portal.receiver.url, level=1)).to_be_focused()
    expect(page.get_by_text("CRM sync")).to_be_visible()
    page.get_by_role("button", name="Reveal secret").click()
    expect(page.get_by_label("Signing secret")).to_have_value(secret)
    # The address carries the endpoint's id: a reload (same tab) lands on it, still signed in.
    assert re.search(r"#/endpoints/sub_[0-9a-f]+$", page.url)
    page.reload()
    expect(page.get_by_role("heading", name=portal.receiver.url, level=1)).to_be_visible()
    nav(page, "Endpoints")
    row = page.get_by_role("row").filter(has_text=portal.receiver.url)
    expect(row).to_contain_text("CRM sync")
    expect(row).to_contain_text("user.created")
    expect(row).to_contain_text("Enabled")
    expect(row).to_contain_text("No attempts yet")
    calls_are_documented(page)


def test_the_operator_signs_in_with_the_admin_token_and_sees_everyone(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    portal.subscribe(A, description="a's")
    portal.subscribe(B, description="b's")
    page = open_page(portal)
    sign_in(page, OPERATOR_TOKEN)
    expect(page.get_by_text("Signed in as the operator")).to_be_visible()
    expect(page.get_by_role("row")).to_have_count(3)  # the header and both endpoints


def test_a_portal_link_signs_in_and_leaves_no_token_in_the_address_bar(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    portal.subscribe(A, description="from the link")
    url = portal.link(tenant_credential=A)
    page = open_page(portal, url)
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_visible()
    assert "session" not in page.url and page.url.endswith("/admin/#/endpoints")
    assert "psess_" not in page.evaluate("() => window.history.state + location.href")
    expect(page.get_by_text("from the link")).to_be_visible()
    page.reload()
    expect(page.get_by_text("from the link")).to_be_visible()
    # Sign out: the session is revoked, the page is back at sign-in.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    expect(page.get_by_text("You signed out.")).to_be_visible()
    token = url.partition("#session=")[2]
    status, body = portal.call("GET", "/me", {"Authorization": f"Bearer {token}"})
    assert status == 401 and body["reason"] == "revoked"


def test_expired_and_revoked_sessions_bring_the_page_back_to_sign_in(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    page = open_page(portal, portal.link(tenant_credential=A, ttl="2s"))
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_visible()
    # The next request after the expiry (the Messages view polls) finds it expired.
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Messages").click()
    expect(page.get_by_text("Your session expired. Sign in again.")).to_be_visible(timeout=8000)
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()

    link = portal.link(tenant_credential=A)
    page.goto(link)
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_visible()
    token = link.partition("#session=")[2]
    _, me = portal.call("GET", "/me", {"Authorization": f"Bearer {token}"})
    status, _ = portal.call(
        "DELETE",
        f"/portal-sessions/{me['session']['id']}",
        {"Authorization": f"Bearer {OPERATOR_TOKEN}"},
    )
    assert status == 204
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Event types").click()
    expect(page.get_by_text("Your session was revoked. Sign in again.")).to_be_visible()
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()


def test_a_read_only_session_shows_no_control_that_changes_anything(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    sub = portal.subscribe(A)
    status, sent = portal.call("POST", f"/subscriptions/{sub['id']}/test", {"Authorization": A})
    assert status == 202
    page = open_page(portal, portal.link(tenant_credential=A, read_only=True))
    expect(page.get_by_text("(read-only)")).to_be_visible()
    expect(page.get_by_role("link", name=portal.receiver.url)).to_be_visible()
    mutating = [
        "Add endpoint",
        "Edit",
        "Send test event",
        "Rotate secret",
        "Disable",
        "Enable",
        "Delete",
        "Recover",
        "Redeliver",
        "Reveal secret",
    ]
    for name in mutating:
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
    page.get_by_role("link", name=portal.receiver.url).click()
    expect(page.get_by_role("heading", name=portal.receiver.url, level=1)).to_be_visible()
    table = attempts_table(page)
    expect(table.get_by_role("link", name=sent["message_id"])).to_be_visible(timeout=8000)
    for name in mutating:
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)
    table.get_by_role("link", name=sent["message_id"]).click()
    expect(page.get_by_role("heading", name=f"Message {sent['message_id']}")).to_be_visible()
    for name in mutating:
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)


def test_another_tenants_endpoint_id_shows_not_found(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    theirs = portal.subscribe(B, description="secret plans")
    page = open_page(portal)
    sign_in(page, A)
    page.goto(f"{portal.page_url}#/endpoints/{theirs['id']}")
    expect(page.get_by_role("heading", name="Endpoint not found", level=1)).to_be_visible()
    expect(page.get_by_text("secret plans")).to_have_count(0)
    nav(page, "Messages")
    page.get_by_label("Message id").fill("msg_not_mine")
    page.get_by_role("button", name="Open message").click()
    expect(page.get_by_role("heading", name="Message not found", level=1)).to_be_visible()
    page.goto(f"{portal.page_url}#/endpoints/{theirs['id']}/edit")
    expect(page.get_by_role("heading", name="Endpoint not found", level=1)).to_be_visible()


# --------------------------------------------------------------------------------------------
# Test events, the log, redelivery
# --------------------------------------------------------------------------------------------


def test_send_a_test_event_see_its_attempt_open_it_and_redeliver(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    portal.subscribe(A, description="receiver")
    page = open_page(portal)
    sign_in(page)
    open_endpoint(page, portal.receiver.url)
    page.get_by_role("button", name="Send test event").click()
    form = page.get_by_role("form", name="Send test event")
    event_type = form.get_by_label("Event type")
    expect(event_type).to_be_focused()
    event_type.select_option("user.created")
    data = form.get_by_label("Payload data")
    assert json.loads(data.input_value()) == {"id": "u-123", "username": "ada"}  # declared
    data.fill('{"id": "u-42", "username": "grace"}')
    form.get_by_role("button", name="Send", exact=True).click()
    expect(page.get_by_text(re.compile(r"Test event queued as msg_"))).to_be_visible()
    table = attempts_table(page)
    row = table.get_by_role("row", name=re.compile("user.created"))
    expect(row).to_contain_text("200", timeout=5000)
    expect(row).to_contain_text("delivered")
    expect(row).to_contain_text("test")
    assert len(portal.receiver.got) == 1
    delivered = orjson.loads(portal.receiver.got[0][1])
    assert delivered["data"] == {"id": "u-42", "username": "grace"}

    row.get_by_role("link", name=re.compile("^msg_")).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Message msg_"), level=1)).to_be_visible()
    expect(
        page.get_by_role("region", name="Payload").or_(page.get_by_label("Payload"))
    ).to_contain_text('"grace"')
    headers = page.get_by_role("region", name="Webhook headers")
    expect(headers).to_contain_text("webhook-id")
    expect(page.get_by_role("heading", name="Attempt 1")).to_be_visible()
    expect(page.get_by_label("Response to attempt 1")).to_contain_text("thanks")
    page.get_by_role("button", name="Redeliver").click()
    expect(page.get_by_text("Redelivery queued (attempt 2).")).to_be_visible()
    expect(page.get_by_role("heading", name="Attempt 2")).to_be_visible(timeout=5000)
    assert len(portal.receiver.got) == 2
    assert portal.receiver.got[1][0]["webhook-id"] == portal.receiver.got[0][0]["webhook-id"]
    calls_are_documented(page)


def test_a_real_synchronised_calls_completion_appears_in_the_log(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    portal.subscribe(A)
    page = open_page(portal)
    sign_in(page)
    nav(page, "Messages")
    expect(page.get_by_text("No messages yet.")).to_be_visible()
    status, body = portal.through_proxy(
        "POST", "/api/users", {"Authorization": A}, {"username": "lin"}
    )
    assert status == 200, body  # the sidecar answered synchronously
    row = attempts_table(page).get_by_role("row", name=re.compile("user.created"))
    expect(row).to_contain_text("delivered", timeout=8000)
    expect(row).to_contain_text("scheduled")
    expect(row).to_contain_text(portal.receiver.url)
    delivered = orjson.loads(portal.receiver.got[0][1])
    assert delivered["data"]["username"] == "lin"
    # The catalog's user.created example is the one the config declares.
    nav(page, "Event types")
    section = page.get_by_role("region", name="user.created", exact=True)
    expect(section).to_contain_text("A user account was created.")
    expect(section.get_by_label("Example payload of user.created")).to_contain_text('"ada"')


def screenshot(page: Page) -> None:
    """The README's picture of the portal (docs/portal.png): written when missing, or with
    UPDATE_SCREENSHOTS=1 (it changes with every run's times and ports)."""
    if os.environ.get("UPDATE_SCREENSHOTS") or not SCREENSHOT.exists():
        page.screenshot(path=str(SCREENSHOT))


def test_filter_the_log_by_status_and_event_type(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    sub = portal.subscribe(A, description="Orders service")
    auth = {"Authorization": A}
    portal.call("POST", f"/subscriptions/{sub['id']}/test", auth, {"type": "user.created"})
    portal.receiver.wait_for(1)
    status, _ = portal.through_proxy("POST", "/api/users", auth, {"username": "lin"})
    assert status == 200
    portal.receiver.wait_for(2)
    portal.receiver.status = 500
    portal.call("POST", f"/subscriptions/{sub['id']}/test", auth, {"type": "webhook.test"})
    page = open_page(portal)
    sign_in(page)
    nav(page, "Messages")
    table = attempts_table(page)
    # Two delivered, and a failure with its two retries (schedule: 50ms, 100ms → 3 attempts).
    expect(table.get_by_role("row")).to_have_count(1 + 2 + 3, timeout=8000)
    expect(table.get_by_role("row").nth(1)).to_contain_text("dead")
    screenshot(page)
    page.get_by_label("Status").select_option("Failed")
    expect(table.get_by_role("row")).to_have_count(1 + 3)
    for row in table.get_by_role("row").all()[1:]:
        expect(row).to_contain_text("500")
    page.get_by_label("Status").select_option("Succeeded")
    expect(table.get_by_role("row")).to_have_count(1 + 2)
    expect(table.get_by_role("row").filter(has_text="scheduled")).to_contain_text("delivered")
    page.get_by_label("Status").select_option("All")
    page.get_by_label("Event type").select_option("webhook.test")
    expect(table.get_by_role("row")).to_have_count(1 + 3)
    page.get_by_label("From").fill("2999-01-01T00:00")
    expect(page.get_by_text("No attempts match these filters.")).to_be_visible()


def test_rotate_disable_enable_recover_and_delete(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal()
    sub = portal.subscribe(A)
    page = open_page(portal)
    sign_in(page)
    open_endpoint(page, portal.receiver.url)

    page.get_by_role("button", name="Rotate secret").click()
    dialog = page.get_by_role("dialog", name="Rotate the signing secret?")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    expect(page.get_by_role("button", name="Rotate secret")).to_be_focused()
    page.get_by_role("button", name="Rotate secret").click()
    page.get_by_role("dialog").get_by_role("button", name="Rotate secret").click()
    expect(page.get_by_text("Secret rotated.")).to_be_visible()
    rotated = page.get_by_label("New signing secret").input_value()
    assert rotated.startswith("whsec_") and rotated != sub["secret"]
    _, shown = portal.call("GET", f"/subscriptions/{sub['id']}/secret", {"Authorization": A})
    assert shown["secret"] == rotated and shown["previous_secret"] == sub["secret"]

    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("button", name="Enable")).to_be_focused()
    expect(page.get_by_text("Endpoint disabled")).to_be_visible()
    assert (
        portal.call("GET", f"/subscriptions/{sub['id']}", {"Authorization": A})[1]["enabled"]
        is False
    )
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("button", name="Disable")).to_be_visible()
    assert (
        portal.call("GET", f"/subscriptions/{sub['id']}", {"Authorization": A})[1]["enabled"]
        is True
    )

    page.get_by_role("button", name="Edit").click()
    expect(page.get_by_role("heading", name="Edit endpoint", level=1)).to_be_focused()
    expect(page.get_by_label("URL")).to_have_value(portal.receiver.url)
    page.get_by_label("Description").fill("Billing")
    events = page.get_by_role("group", name="Events")
    events.get_by_label("All events").uncheck()
    events.get_by_label("user.creation_failed").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name=portal.receiver.url, level=1)).to_be_visible()
    expect(page.get_by_text("Endpoint saved.")).to_be_visible()
    expect(page.get_by_text("Billing")).to_be_visible()
    _, edited = portal.call("GET", f"/subscriptions/{sub['id']}", {"Authorization": A})
    assert (edited["description"], edited["events"]) == ("Billing", ["user.creation_failed"])

    page.get_by_role("button", name="Recover").click()
    dialog = page.get_by_role("dialog", name="Recover failed messages")
    expect(dialog.get_by_label("Since")).to_be_focused()
    dialog.get_by_role("button", name="Recover").click()
    expect(page.get_by_text(re.compile(r"^No failed messages since"))).to_be_visible()

    page.get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete this endpoint?")
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_visible()
    expect(page.get_by_text("Endpoint deleted.")).to_be_visible()
    expect(page.get_by_text("No endpoints yet.")).to_be_visible()
    status, _ = portal.call("GET", f"/subscriptions/{sub['id']}", {"Authorization": A})
    assert status == 404


def test_recover_redelivers_what_failed(start_portal: StartPortal, open_page: OpenPage) -> None:
    portal = start_portal()
    sub = portal.subscribe(A)
    portal.receiver.status = 503
    portal.call("POST", f"/subscriptions/{sub['id']}/test", {"Authorization": A})
    page = open_page(portal)
    sign_in(page)
    open_endpoint(page, portal.receiver.url)
    expect(attempts_table(page).get_by_text("dead")).to_be_visible(timeout=8000)
    portal.receiver.status = 200
    page.get_by_role("button", name="Recover").click()
    page.get_by_role("dialog").get_by_role("button", name="Recover").click()
    expect(page.get_by_text("1 failed message queued for redelivery.")).to_be_visible()
    row = attempts_table(page).get_by_role("row", name=re.compile("recover"))
    expect(row).to_contain_text("delivered", timeout=5000)


# --------------------------------------------------------------------------------------------
# Event types, verifying
# --------------------------------------------------------------------------------------------


def test_verify_a_signature_in_the_page(start_portal: StartPortal, open_page: OpenPage) -> None:
    portal = start_portal()
    sub = portal.subscribe(A)
    portal.call("POST", f"/subscriptions/{sub['id']}/test", {"Authorization": A})
    portal.receiver.wait_for(1)
    headers, body = portal.receiver.got[0]
    page = open_page(portal)
    sign_in(page)
    nav(page, "Verify a signature")
    requests_before = len(page.watch.api_calls)  # type: ignore[attr-defined]

    def verify(**fields: str) -> None:
        values = {
            "Payload": body.decode(),
            "webhook-id": headers["webhook-id"],
            "webhook-timestamp": headers["webhook-timestamp"],
            "webhook-signature": headers["webhook-signature"],
            "Secret": sub["secret"],
            **fields,
        }
        for label, value in values.items():
            page.get_by_label(label, exact=True).fill(value)
        page.get_by_role("button", name="Verify").click()

    verify()
    verdict = page.get_by_role("status").filter(has_text="signature")
    expect(verdict).to_contain_text("Valid signature")
    verify(Secret="not-a-secret!")
    expect(verdict).to_contain_text("Invalid signature")
    expect(verdict).to_contain_text("Bad secret format")
    verify(Payload=body.decode().replace("test", "tset"))
    expect(verdict).to_contain_text("Signature mismatch")
    verify(**{"webhook-timestamp": str(int(time.time()) - 3600)})
    expect(verdict).to_contain_text("Timestamp too old")
    # Nothing was sent to the server, least of all the secret.
    assert len(page.watch.api_calls) == requests_before  # type: ignore[attr-defined]
    for language in ("Python", "JavaScript", "Go"):
        expect(page.get_by_role("heading", name=language, level=3)).to_be_visible()
    expect(page.get_by_label("Python receiver")).to_contain_text("standardwebhooks")


# --------------------------------------------------------------------------------------------
# Accessibility, phone width, the README's screenshot
# --------------------------------------------------------------------------------------------


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Evaluated by the browser's debugger protocol: the page's CSP does not apply to it.
        page.evaluate(AXE.read_text() + "\n;undefined")
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


@pytest.mark.parametrize("width", [1280, 390], ids=["desktop", "phone"])
def test_every_view_has_no_serious_accessibility_violation(
    start_portal: StartPortal, open_page: OpenPage, width: int
) -> None:
    portal = start_portal()
    sub = portal.subscribe(A, description="Orders service")
    _, sent = portal.call("POST", f"/subscriptions/{sub['id']}/test", {"Authorization": A})
    page = open_page(portal, width=width, height=860)
    found: dict[str, list[dict[str, Any]]] = {}

    def check(view: str) -> None:
        found[view] = axe_violations(page)
        assert page.locator("h1").count() == 1, f"{view}: one h1 per view"
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{view}: the page is {overflow}px wider than the window"

    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    check("Sign in")
    sign_in(page)
    check("Endpoints")
    page.get_by_role("button", name="Add endpoint").click()
    expect(page.get_by_role("heading", name="Add endpoint")).to_be_visible()
    check("Add endpoint")
    open_endpoint(page, portal.receiver.url)
    expect(attempts_table(page).get_by_role("link", name=sent["message_id"])).to_be_visible(
        timeout=8000
    )
    page.get_by_role("button", name="Send test event").click()
    page.get_by_role("button", name="Reveal secret").click()
    expect(page.get_by_label("Signing secret")).to_be_visible()
    check("Endpoint")
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    check("Delete dialog")
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    page.get_by_role("button", name="Edit").click()
    expect(page.get_by_role("heading", name="Edit endpoint")).to_be_visible()
    check("Edit endpoint")
    nav(page, "Messages")
    expect(attempts_table(page).get_by_role("link", name=sent["message_id"])).to_be_visible()
    check("Messages")
    attempts_table(page).get_by_role("link", name=sent["message_id"]).click()
    expect(page.get_by_role("heading", name=f"Message {sent['message_id']}")).to_be_visible()
    check("Message")
    nav(page, "Event types")
    check("Event types")
    nav(page, "Verify a signature")
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_text("Invalid signature")).to_be_visible()
    check("Verify a signature")
    assert {view: v for view, v in found.items() if v} == {}
    calls_are_documented(page)


def test_the_page_is_usable_by_keyboard(start_portal: StartPortal, open_page: OpenPage) -> None:
    portal = start_portal()
    page = open_page(portal)
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Credential")).to_be_focused()
    page.keyboard.type(A)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Endpoints", level=1)).to_be_focused()
    page.get_by_role("button", name="Add endpoint").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Add endpoint", level=1)).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_label("URL")).to_be_focused()
    page.keyboard.type(portal.receiver.url)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Endpoint created")).to_be_focused()


def test_api_problems_are_shown_as_title_and_detail(
    start_portal: StartPortal, open_page: OpenPage
) -> None:
    portal = start_portal(webhooks={"allow_private_targets": False})
    page = open_page(portal)
    sign_in(page)
    page.get_by_role("button", name="Add endpoint").click()
    page.get_by_label("URL").fill("http://127.0.0.1:1/hook")
    page.get_by_role("button", name="Create").click()
    problem = page.get_by_role("alert")
    expect(problem).to_contain_text("Invalid request")
    expect(problem).to_contain_text("127.0.0.1 is a loopback or private address")
    expect(page.get_by_text("Traceback")).to_have_count(0)
