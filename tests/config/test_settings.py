"""Settings (sidecar/config/settings.py and the blocks and routes it is made of), as an operator
meets them: every mistake reported at once, with its key path and the rule, in the exact words a
user reads; and what a valid file means."""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import ConfigError, parse_settings

from .support import MISSING, UNKNOWN, problems_of, settings_of

# --------------------------------------------------------------------------------------------
# One table of mistakes and the exact lines they produce
# --------------------------------------------------------------------------------------------

MISTAKES: list[Any] = [
    # durations
    pytest.param(
        """
        routes:
          - {name: a, path: /a}
          - {name: b, path: /b, wait: {poll: {interval: soon}}}
        """,
        ["routes[1].wait.poll.interval: invalid duration 'soon' (use 250ms, 10s, 2m or seconds)"],
        id="duration-word",
    ),
    pytest.param(
        "webhooks: {timeout: 10 minutes, schedule: [5s, 1d]}",
        [
            "webhooks.schedule[1]: invalid duration '1d' (use 250ms, 10s, 2m or seconds)",
            "webhooks.timeout: invalid duration '10 minutes' (use 250ms, 10s, 2m or seconds)",
        ],
        id="duration-units",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, budget: -1}]",
        ["routes[0].budget: invalid duration -1 (must not be negative)"],
        id="duration-negative",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, budget: true}]",
        ["routes[0].budget: invalid duration True (use 250ms, 10s, 2m or seconds)"],
        id="duration-bool",
    ),
    # unknown keys (typos)
    pytest.param("upstrem: http://api:8000", [f"upstrem: {UNKNOWN}"], id="typo-top-level"),
    pytest.param(
        """
        proxy: {conect_timeout: 1s}
        webhooks: {timeuot: 5s}
        """,
        [f"proxy.conect_timeout: {UNKNOWN}", f"webhooks.timeuot: {UNKNOWN}"],
        id="typo-nested-block",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, wait: {poll: {intervall: 1s}}}]",
        [f"routes[0].wait.poll.intervall: {UNKNOWN}"],
        id="typo-deep-in-route",
    ),
    # missing required keys
    pytest.param(
        "routes: [{path: /a}, {name: b}]",
        [f"routes[0].name: {MISSING}", f"routes[1].path: {MISSING}"],
        id="route-name-and-path-missing",
    ),
    pytest.param(
        """
        redis_url: redis://127.0.0.1:6379/0
        routes: [{name: a, path: /a, wait: {stream: {id_field: cid}}}]
        """,
        [f"routes[0].wait.stream.key: {MISSING}", f"routes[0].wait.stream.success: {MISSING}"],
        id="stream-key-and-success-missing",
    ),
    # path templates
    pytest.param(
        """
        routes:
          - {name: a, path: '/users/{id'}
          - {name: b, path: '/users/}x'}
          - {name: c, path: 'users/{id}'}
          - {name: d, path: '/users/{1st}'}
          - {name: e, path: '/users/{id}/{id}'}
        """,
        [
            "routes[0].path: invalid path '/users/{id' (unbalanced braces)",
            "routes[1].path: invalid path '/users/}x' (unbalanced braces)",
            "routes[2].path: invalid path 'users/{id}' (must start with '/')",
            "routes[3].path: invalid path '/users/{1st}' (placeholder {1st} is not a name)",
            "routes[4].path: invalid path '/users/{id}/{id}' (placeholder {id} twice)",
        ],
        id="path-templates",
    ),
    # correlation
    pytest.param(
        "routes: [{name: a, path: /a, correlation: {source: location, pattern: '/u/([^/]+)'}}]",
        ["routes[0].correlation.pattern: regex '/u/([^/]+)' has no (?P<id>...) group"],
        id="pattern-without-id-group",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, correlation: {pattern: '/u/(?P<id>[^/]+'}}]",
        [
            "routes[0].correlation.pattern: invalid regex '/u/(?P<id>[^/]+' "
            "(missing ), unterminated subpattern at position 3)"
        ],
        id="pattern-invalid-regex",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, correlation: {source: header}}]",
        [
            "routes[0].correlation.source: Input should be 'request', 'location' or 'body' "
            "(got 'header')"
        ],
        id="correlation-source",
    ),
    # JSON pointers
    pytest.param(
        """
        routes:
          - {name: a, path: /a, correlation: {pointer: id}}
          - {name: b, path: /b, correlation: {pointer: /a~2b}}
          - {name: c, path: /c, wait: {poll: {field: status, success: [done]}}}
        """,
        [
            "routes[0].correlation.pointer: invalid JSON pointer 'id' "
            "(must be empty or start with '/')",
            "routes[1].correlation.pointer: invalid JSON pointer '/a~2b' "
            "('~' must be followed by 0 or 1)",
            "routes[2].wait.poll.field: invalid JSON pointer 'status' "
            "(must be empty or start with '/')",
        ],
        id="json-pointers",
    ),
    # route-level rules
    pytest.param(
        """
        routes:
          - {name: users, path: /a}
          - {name: other, path: /b}
          - {name: users, path: /c}
        """,
        ["routes[2].name: duplicate route name 'users' (first used by routes[0])"],
        id="duplicate-route-names",
    ),
    pytest.param(
        "routes: [{name: 'create user', path: /a}]",
        ["routes[0].name: String should match pattern '^[A-Za-z0-9_.-]{1,64}$'"],
        id="route-name-characters",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, wait: {}}]",
        ["routes[0].wait: a sync route needs wait.stream and/or wait.poll"],
        id="sync-route-with-empty-wait",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, wait: {stream: {key: users.events, success: [Done]}}}]",
        ["routes[0].wait.stream: a stream wait needs redis_url"],
        id="stream-wait-without-redis",
    ),
    pytest.param(
        """
        redis_url: redis://127.0.0.1:6379/0
        routes:
          - {name: a, path: /a, wait: {stream: {key: k, success: [Done], failure: [Done]}}}
        """,
        ["routes[0].wait.stream: event types ['Done'] are listed in both success and failure"],
        id="stream-types-overlap",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, method: FETCH}]",
        ["routes[0].method: unknown HTTP method 'FETCH'"],
        id="bad-method",
    ),
    pytest.param(
        """
        routes:
          - name: a
            path: /a
            respond: {success_status: 99, failure_status: 600}
            wait: {poll: {done_status: [200, 700]}}
        """,
        [
            "routes[0].wait.poll.done_status[1]: invalid HTTP status 700 (must be 100-599)",
            "routes[0].respond.success_status: invalid HTTP status 99 (must be 100-599)",
            "routes[0].respond.failure_status: invalid HTTP status 600 (must be 100-599)",
        ],
        id="status-codes-out-of-range",
    ),
    # poll rules
    pytest.param(
        "routes: [{name: a, path: /a, wait: {poll: {interval: 2s, max_interval: 500ms}}}]",
        ["routes[0].wait.poll: max_interval must not be shorter than interval"],
        id="poll-max-interval-below-interval",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, wait: {poll: {field: /status}}}]",
        ["routes[0].wait.poll: field needs at least one success value"],
        id="poll-field-without-success",
    ),
    pytest.param(
        "routes: [{name: a, path: /a, wait: {poll: {success: [done]}}}]",
        ["routes[0].wait.poll: success/failure values need a field (JSON pointer)"],
        id="poll-values-without-field",
    ),
    # webhooks
    pytest.param(
        """
        webhooks:
          subscriptions:
            - id: audit
              url: https://audit.example
              secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
        """,
        ["webhooks.subscriptions: webhooks need redis_url"],
        id="subscriptions-without-redis",
    ),
    pytest.param(
        """
        redis_url: redis://127.0.0.1:6379/0
        webhooks:
          subscriptions: [{id: audit, url: 'https://audit.example', secret: hunter2}]
        """,
        ["webhooks.subscriptions[0].secret: secret must start with whsec_"],
        id="subscription-secret",
    ),
    pytest.param(
        """
        redis_url: redis://127.0.0.1:6379/0
        webhooks:
          subscriptions:
            - {id: a, url: 'https://a.example/', secret: whsec_a}
            - {id: b, url: 'https://b.example/', secret: whsec_c2VjcmV0}
            - {id: c, url: 'ftp://c.example/', secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}
        """,
        [
            "webhooks.subscriptions[0].secret: secret must be whsec_ followed by base64",
            "webhooks.subscriptions[1].secret: secret must decode to 24-64 bytes, not 6",
            "webhooks.subscriptions[2].url: invalid URL 'ftp://c.example/' "
            "(use http://host/path or https://host/path)",
        ],
        id="subscription-secret-and-url",
    ),
    pytest.param(
        "webhooks: {allowed_networks: [10.0.0.0/8, 10.0.0.0/33, intranet]}",
        [
            "webhooks.allowed_networks[1]: invalid network '10.0.0.0/33' "
            "(use CIDR, e.g. 10.0.0.0/8)",
            "webhooks.allowed_networks[2]: invalid network 'intranet' (use CIDR, e.g. 10.0.0.0/8)",
        ],
        id="invalid-cidr",
    ),
    # addresses and URLs
    pytest.param(
        """
        listen: 8080
        admin_listen: localhost
        """,
        [
            "listen: invalid address '8080' (use host:port, e.g. 0.0.0.0:8080)",
            "admin_listen: invalid address 'localhost' (use host:port, e.g. 0.0.0.0:8080)",
        ],
        id="invalid-listen-address",
    ),
    pytest.param(
        "listen: ':99999'",
        ["listen: invalid address ':99999' (use host:port, e.g. 0.0.0.0:8080)"],
        id="listen-without-host",
    ),
    pytest.param(
        """
        upstream: localhost:8000
        routes: [{name: a, path: /a, upstream: 'ftp://files'}]
        """,
        [
            "upstream: invalid URL 'localhost:8000' (use http://host:port or https://host)",
            "routes[0].upstream: invalid URL 'ftp://files' (use http://host:port or https://host)",
        ],
        id="invalid-upstream-url",
    ),
    pytest.param(
        "redis_url: http://127.0.0.1:6379",
        ["redis_url: invalid Redis URL 'http://127.0.0.1:6379' (use redis://host:port/db)"],
        id="invalid-redis-url",
    ),
    pytest.param(
        "correlation_header: X Correlation",
        ["correlation_header: invalid header name 'X Correlation'"],
        id="invalid-header-name",
    ),
    pytest.param(
        "log: {level: verbose}",
        ["log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'verbose')"],
        id="log-level",
    ),
    pytest.param(
        "routes: {name: a, path: /a}",
        ["routes: Input should be a valid list (got {'name': 'a', 'path': '/a'})"],
        id="routes-not-a-list",
    ),
    pytest.param(
        "- listen: 0.0.0.0:8080",
        ["<root>: the file must be a mapping of keys to values"],
        id="file-not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MISTAKES)
def test_mistake_is_reported_with_key_path_and_rule(text: str, expected: list[str]) -> None:
    assert problems_of(text) == expected


def test_every_problem_is_reported_at_once() -> None:
    text = """
        listen: nope
        redis_url: redis://127.0.0.1:6379/0
        routes:
          - {name: a, path: /a, wait: {stream: {key: k, success: [Done]}}}
          - {name: b, path: /b, wait: {poll: {interval: soon}}}
        webhooks: {timout: 5s}
        """
    assert problems_of(text) == [
        "listen: invalid address 'nope' (use host:port, e.g. 0.0.0.0:8080)",
        "routes[1].wait.poll.interval: invalid duration 'soon' (use 250ms, 10s, 2m or seconds)",
        f"webhooks.timout: {UNKNOWN}",
    ]


def test_cross_checks_add_to_field_errors_instead_of_hiding_behind_them() -> None:
    text = """
        routes:
          - {name: a, path: /a, method: FETCH}
          - {name: a, path: /b, wait: {stream: {key: k, success: [Done]}}}
        """
    assert problems_of(text) == [
        "routes[0].method: unknown HTTP method 'FETCH'",
        "routes[1].name: duplicate route name 'a' (first used by routes[0])",
        "routes[1].wait.stream: a stream wait needs redis_url",
    ]


def test_config_error_message_names_the_source_and_counts() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings({"listen": "nope", "upstrem": "x"}, "ops.yaml", env={})
    assert caught.value.source == "ops.yaml"
    assert str(caught.value) == (
        "ops.yaml: 2 problem(s)\n"
        "listen: invalid address 'nope' (use host:port, e.g. 0.0.0.0:8080)\n"
        f"upstrem: {UNKNOWN}"
    )


# --------------------------------------------------------------------------------------------
# Valid shapes
# --------------------------------------------------------------------------------------------


def test_empty_file_means_all_defaults() -> None:
    settings = parse_settings(None, "empty.yaml", env={})
    assert settings.listen == "0.0.0.0:8080"
    assert settings.admin_listen == "127.0.0.1:9000"
    assert settings.upstream == "http://127.0.0.1:8000"
    assert settings.redis_url is None
    assert settings.routes == []
    assert settings.webhooks.schedule == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]


def test_route_defaults_and_normalisation() -> None:
    settings = settings_of(
        """
        upstream: http://api:8000/
        routes:
          - {name: a, method: post, path: '/users/{id}/activate', wait: {poll: {}}}
          - {name: b, path: /b}
        """
    )
    sync, passthrough = settings.routes
    assert settings.upstream == "http://api:8000"  # trailing slash dropped
    assert (sync.method, sync.is_sync, sync.budget) == ("POST", True, 10.0)
    assert sync.success_event == "a.succeeded"
    assert sync.failure_event == "a.failed"
    assert (passthrough.method, passthrough.is_sync) == ("*", False)
