"""The operations' keys as an operator writes them: `idempotency` on a route, `respond.location`
and the `operations` block; mistakes answered with the exact lines a user reads, and advice
about a route the status monitor shadows."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from sidecar.config import ConfigError, Settings, parse_settings
from sidecar.config.advice import advice

SYNC = "{name: a, method: POST, path: /a, wait: {poll: {}}"


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env={})
    return caught.value.problems


def settings_of(text: str) -> Settings:
    return parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env={})


MISTAKES: list[Any] = [
    pytest.param(
        f"routes: [{SYNC}, idempotency: {{}}}}]",
        ["routes[0].idempotency: needs redis_url"],
        id="idempotency-without-redis",
    ),
    pytest.param(
        "redis_url: redis://r\nroutes: [{name: a, path: /a, idempotency: {}}]",
        [
            "routes[0].idempotency: needs wait (only synchronised routes hold calls retries "
            "can attach to)"
        ],
        id="idempotency-without-wait",
    ),
    pytest.param(
        f"redis_url: redis://r\nroutes: [{SYNC}, idempotency: {{ttl: 0}}}}]",
        ["routes[0].idempotency.ttl: Input should be greater than 0"],
        id="idempotency-ttl-zero",
    ),
    pytest.param(
        f"redis_url: redis://r\nroutes: [{SYNC}, idempotency: {{header: 'Idempotency Key'}}}}]",
        ["routes[0].idempotency.header: invalid header name 'Idempotency Key'"],
        id="idempotency-header",
    ),
    pytest.param(
        f"redis_url: redis://r\nroutes: [{SYNC}, idempotency: {{key: x}}}}]",
        ["routes[0].idempotency.key: unknown key (check the spelling against config/sidecar.yaml)"],
        id="idempotency-unknown-key",
    ),
    pytest.param(
        f"routes: [{SYNC}, respond: {{location: sidecar}}}}]",
        ["routes[0].respond.location: sidecar needs redis_url"],
        id="sidecar-location-without-redis",
    ),
    pytest.param(
        f"redis_url: redis://r\nroutes: [{SYNC}, respond: {{location: self}}}}]",
        ["routes[0].respond.location: Input should be 'upstream' or 'sidecar' (got 'self')"],
        id="location-value",
    ),
    pytest.param(
        "operations: {path: /ops/}",
        [
            "operations.path: invalid path '/ops/' (like /.sidecar/operations: segments of "
            "letters, digits and . _ ~ -, no trailing slash)"
        ],
        id="path-trailing-slash",
    ),
    pytest.param(
        "operations: {path: 'ops'}",
        [
            "operations.path: invalid path 'ops' (like /.sidecar/operations: segments of "
            "letters, digits and . _ ~ -, no trailing slash)"
        ],
        id="path-relative",
    ),
    pytest.param(
        "operations: {retention: 0s}",
        ["operations.retention: Input should be greater than 0"],
        id="retention-zero",
    ),
    pytest.param(
        "operations: {max_result: 65MiB}",
        ["operations.max_result: at most 64MiB (67108864 bytes), not 68157440 bytes"],
        id="max-result-too-large",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MISTAKES)
def test_mistakes_name_the_key_and_the_rule(text: str, expected: list[str]) -> None:
    assert problems_of(text) == expected


def test_defaults() -> None:
    settings = settings_of(f"redis_url: redis://r\nroutes: [{SYNC}, idempotency: {{}}}}]")
    route = settings.routes[0]
    assert route.idempotency is not None
    assert (route.idempotency.header, route.idempotency.ttl) == ("Idempotency-Key", 86400.0)
    assert route.respond.location == "upstream"
    ops = settings.operations
    assert (ops.path, ops.retention, ops.max_result) == ("/.sidecar/operations", 86400.0, 2**20)
    custom = settings_of(
        "redis_url: redis://r\noperations: {path: /_ops/v1, retention: 2h, max_result: 64KiB}"
    )
    assert custom.operations.path == "/_ops/v1"
    assert (custom.operations.retention, custom.operations.max_result) == (7200.0, 65536)


def test_a_route_the_status_monitor_shadows_is_said() -> None:
    settings = settings_of("redis_url: redis://r\nroutes: [{name: all, path: '/{a}/{b}/{c}'}]")
    assert any(
        "routes[0].path: /{a}/{b}/{c} also matches the status monitor's paths" in line
        for line in advice(settings)
    )
    quiet = settings_of("routes: [{name: all, path: '/{a}/{b}/{c}'}]")  # no Redis, no monitor
    assert not any("status monitor" in line for line in advice(quiet))
