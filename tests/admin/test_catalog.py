"""The event-type catalog over the admin API (sidecar/admin/catalog.py): every type the routes
emit, with its description and an example payload (declared, else the caller's own last real
payload with its values elided, else generic)."""

from __future__ import annotations

import orjson

from sidecar.webhooks.runtime import WEBHOOKS

from ..admin_support import A, B, StartAdmin
from .conftest import Receiver


async def test_the_catalog_lists_every_type_with_an_example(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    admin = await start_admin()
    sub = await admin.create(A, receiver.url())
    catalog = (await admin.call("GET", "/event-types", A)).body["event_types"]
    by_type = {t["type"]: t for t in catalog}
    assert list(by_type) == ["user.created", "user.creation_failed", "webhook.test"]
    created = by_type["user.created"]
    assert created["description"] == "A user was created."
    assert created["route"] == "create-user" and created["outcome"] == "success"
    assert created["example_source"] == "declared"
    assert created["example"]["data"] == {"id": "u-1", "name": "Ada"}
    assert created["example"]["type"] == "user.created"
    failed = by_type["user.creation_failed"]
    assert failed["example_source"] == "generic" and failed["example"]["data"] == {}
    assert "POST /api/users" in failed["description"]

    # A real completion of that type (not a test): its shape becomes the example, values elided.
    runtime = admin.app[WEBHOOKS]
    body = orjson.dumps(
        {
            "type": "user.creation_failed",
            "data": {"reason": "taken", "tries": 3, "ok": False, "tags": ["a", "b"], "who": None},
        }
    )
    owner = (await runtime.store.get(sub["id"])).owner  # type: ignore[union-attr]
    await runtime.outbox.enqueue(
        "msg_realfailure01", owner, sub["id"], "user.creation_failed", body
    )
    await admin.attempts_until(A, lambda a: len(a) == 1)
    observed = {
        t["type"]: t for t in (await admin.call("GET", "/event-types", A)).body["event_types"]
    }
    failed = observed["user.creation_failed"]
    assert failed["example_source"] == "observed"
    assert failed["example"]["data"] == {
        "reason": "<string>",
        "tries": 0,
        "ok": False,
        "tags": ["<string>"],
        "who": None,
    }
    # Another client sees only the generic example: not even the shape of A's payloads.
    others = {
        t["type"]: t for t in (await admin.call("GET", "/event-types", B)).body["event_types"]
    }
    assert others["user.creation_failed"]["example_source"] == "generic"
