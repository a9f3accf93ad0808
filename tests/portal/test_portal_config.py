"""The portal's config keys: `portal.*` and the described form of `webhook_events`."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import ConfigError, parse_settings


def settings(**raw: Any) -> Any:
    return parse_settings(raw, "<test>", env={})


def problems(**raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(raw, "<test>", env={})
    return caught.value.problems


def test_webhook_events_take_a_name_or_a_described_type() -> None:
    route = {
        "name": "create-user",
        "path": "/api/users",
        "webhook_events": {
            "success": {"type": "user.created", "description": "made", "example": {"id": 1}},
            "failure": "user.creation_failed",
        },
    }
    parsed = settings(routes=[route]).routes[0]
    assert parsed.success_event == "user.created"
    assert parsed.failure_event == "user.creation_failed"
    spec = parsed.webhook_events.spec("success")
    assert spec is not None and spec.description == "made" and spec.example == {"id": 1}
    assert settings(routes=[{"name": "r", "path": "/x"}]).routes[0].success_event == "r.succeeded"


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        (
            {"success": {"description": "no type"}},
            "routes[0].webhook_events.success.type: required key is missing",
        ),
        (
            {"success": {"type": "a b"}},
            "routes[0].webhook_events.success.type: String should match pattern",
        ),
        (
            {"failure": {"type": "x", "colour": 1}},
            "routes[0].webhook_events.failure.colour: unknown key",
        ),
    ],
)
def test_bad_webhook_events_name_the_key(events: dict[str, Any], expected: str) -> None:
    found = problems(routes=[{"name": "r", "path": "/x", "webhook_events": events}])
    assert any(p.startswith(expected) for p in found), found


def test_portal_defaults() -> None:
    portal = settings().portal
    assert portal.public_url is None
    assert portal.frame_ancestors == []


def test_portal_frame_ancestors_and_public_url() -> None:
    portal = settings(
        portal={
            "public_url": "https://hooks.example.com/",
            "frame_ancestors": ["self", "https://app.example.com", "https://*.example.org:8443"],
        }
    ).portal
    assert portal.public_url == "https://hooks.example.com"
    assert portal.frame_ancestors == [
        "'self'",
        "https://app.example.com",
        "https://*.example.org:8443",
    ]


@pytest.mark.parametrize(
    "value",
    ["ftp://x.example.com", "https://x.example.com/path", "https://x;script-src *", "*", "'none'"],
)
def test_bad_frame_ancestors_are_refused(value: str) -> None:
    found = problems(portal={"frame_ancestors": [value]})
    assert found == [
        f"portal.frame_ancestors[0]: invalid frame ancestor {value!r} (use 'self' or an origin, "
        "e.g. https://app.example.com)"
    ]
