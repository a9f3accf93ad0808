"""The operators' contract: every mistake is reported at once, with its key path and the rule, in
the exact words a user reads; env overrides, interpolation, durations; the reference file and the
JSON Schema stay in step with the models."""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from sidecar.config import (
    ConfigError,
    Settings,
    json_schema,
    load_settings,
    parse_duration,
    parse_settings,
)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "config" / "sidecar.yaml"
SCHEMA = ROOT / "config" / "sidecar.schema.json"

UNKNOWN = "unknown key (check the spelling against config/sidecar.yaml)"
MISSING = "required key is missing"


@pytest.fixture(autouse=True)
def _no_sidecar_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's own SIDECAR_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("SIDECAR_"):
            monkeypatch.delenv(name)
    yield


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    """The problem lines a user reads for this YAML text (which must be invalid)."""
    with pytest.raises(ConfigError) as caught:
        parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env=env or {})
    return caught.value.problems


def settings_of(text: str, env: dict[str, str] | None = None) -> Settings:
    """Settings from this YAML text (which must be valid)."""
    return parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env=env or {})


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


# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5", 1.5),
        (" 1.5s ", 1.5),
        (1.5, 1.5),
        (3, 3.0),
        ("3", 3.0),
        (0, 0.0),
    ],
)
def test_duration_parses(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds
    assert settings_of(f"shutdown_grace: {value!r}").shutdown_grace == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("soon", "invalid duration 'soon' (use 250ms, 10s, 2m or seconds)"),
        ("1d", "invalid duration '1d' (use 250ms, 10s, 2m or seconds)"),
        ("-1s", "invalid duration '-1s' (use 250ms, 10s, 2m or seconds)"),
        ("", "invalid duration '' (use 250ms, 10s, 2m or seconds)"),
        (-2, "invalid duration -2 (must not be negative)"),
        (None, "invalid duration None (use 250ms, 10s, 2m or seconds)"),
        (False, "invalid duration False (use 250ms, 10s, 2m or seconds)"),
    ],
)
def test_duration_refuses(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(value)


# --------------------------------------------------------------------------------------------
# Environment: SIDECAR_* overrides and ${VAR} interpolation
# --------------------------------------------------------------------------------------------

FILE_WITH_WEBHOOKS = """
    upstream: http://from-file:8000
    webhooks: {timeout: 15s, schedule: [1s, 2s]}
    """


def test_env_overrides_the_file() -> None:
    env = {"SIDECAR_UPSTREAM": "http://from-env:9000", "SIDECAR_WEBHOOKS__TIMEOUT": "5s"}
    settings = settings_of(FILE_WITH_WEBHOOKS, env=env)
    assert settings.upstream == "http://from-env:9000"
    assert settings.webhooks.timeout == 5.0
    assert settings.webhooks.schedule == [1.0, 2.0]  # the rest of the block still from the file


def test_without_env_the_file_stands() -> None:
    settings = settings_of(FILE_WITH_WEBHOOKS)
    assert settings.upstream == "http://from-file:8000"
    assert settings.webhooks.timeout == 15.0


def test_invalid_env_override_is_reported_with_its_key_path() -> None:
    assert problems_of(FILE_WITH_WEBHOOKS, env={"SIDECAR_WEBHOOKS__TIMEOUT": "soon"}) == [
        "webhooks.timeout: invalid duration 'soon' (use 250ms, 10s, 2m or seconds)"
    ]


def test_redis_url_from_env_satisfies_stream_waits() -> None:
    env = {"SIDECAR_REDIS_URL": "redis://127.0.0.1:6379/0"}
    text = """
        routes: [{name: a, path: /a, wait: {stream: {key: k, success: [Done]}}}]
        """
    assert settings_of(text, env=env).redis_url == "redis://127.0.0.1:6379/0"
    # ... also when another mistake sends validation down the error path
    assert problems_of("listen: nope\n" + textwrap.dedent(text), env=env) == [
        "listen: invalid address 'nope' (use host:port, e.g. 0.0.0.0:8080)"
    ]


def test_interpolation_from_env() -> None:
    settings = settings_of(
        """
        upstream: http://${API_HOST}:${API_PORT:-8000}
        admin_token: ${TOKEN}
        routes: [{name: a, path: '${PREFIX:-/api}/users'}]
        """,
        env={"API_HOST": "api.internal", "TOKEN": "s3cret"},
    )
    assert settings.upstream == "http://api.internal:8000"
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "s3cret"
    assert settings.routes[0].path == "/api/users"


def test_only_the_env_given_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process environment fills nothing and overrides nothing unless it is the mapping
    the caller passed (the command line passes os.environ)."""
    monkeypatch.setenv("SIDECAR_UPSTREAM", "http://from-environ:1234")
    monkeypatch.setenv("TEST_UPSTREAM", "http://from-environ:1234")
    raw = {"upstream": "${TEST_UPSTREAM:-http://default:1}"}
    assert parse_settings(raw, "test.yaml", env={}).upstream == "http://default:1"
    given = {"TEST_UPSTREAM": "http://given:2"}
    assert parse_settings(raw, "test.yaml", env=given).upstream == "http://given:2"
    assert parse_settings({}, "test.yaml", env={}).upstream == "http://127.0.0.1:8000"
    assert parse_settings({}, "test.yaml", env=os.environ).upstream == "http://from-environ:1234"


def test_interpolation_default_applies_only_when_unset() -> None:
    text = "upstream: ${UPSTREAM:-http://fallback:8000}"
    assert settings_of(text).upstream == "http://fallback:8000"
    assert settings_of(text, env={"UPSTREAM": "http://set:1"}).upstream == "http://set:1"


def test_empty_default_means_not_set() -> None:
    settings = settings_of(
        """
        admin_token: ${SIDECAR_ADMIN_TOKEN:-}
        redis_url: ${REDIS_URL:-}
        tenancy: {hash_key: '${HASH_KEY:-}'}
        proxy: {public_url: '${PUBLIC_URL:-}'}
        """
    )
    assert settings.admin_token is None
    assert settings.redis_url is None
    assert settings.tenancy.hash_key is None
    assert settings.proxy.public_url is None


def test_unset_variable_is_one_problem_per_place() -> None:
    text = """
        upstream: ${API_URL}
        routes: [{name: a, path: /a, correlation: {pointer: '${ID_POINTER}'}}]
        """
    assert problems_of(text) == [
        "upstream: environment variable API_URL is not set (use ${API_URL:-default} for a default)",
        "routes[0].correlation.pointer: environment variable ID_POINTER is not set "
        "(use ${ID_POINTER:-default} for a default)",
    ]


def test_unset_variable_is_reported_even_when_the_rest_is_valid() -> None:
    assert problems_of("admin_token: ${TOKEN}") == [
        "admin_token: environment variable TOKEN is not set (use ${TOKEN:-default} for a default)"
    ]


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "listen: 0.0.0.0:8080\nroutes:\n  - name: a\n    path: [/a\n",
            "line 5, column 1: invalid YAML (expected ',' or ']', but got '<stream end>')",
            id="unclosed-bracket",
        ),
        pytest.param(
            "routes:\n  - name: a\n   path: /a\n",
            "line 3, column 4: invalid YAML "
            "(expected <block end>, but found '<block mapping start>')",
            id="bad-indentation",
        ),
        pytest.param(
            "listen: 0.0.0.0:8080\n\tupstream: http://x\n",
            "line 2, column 1: invalid YAML (found character '\\t' that cannot start any token)",
            id="tab",
        ),
    ],
)
def test_yaml_syntax_error_names_line_and_column(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.source == str(path)
    assert caught.value.problems == [expected]
    assert caught.value.__suppress_context__  # no chained yaml traceback


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.source == str(path)
    assert caught.value.problems == ["cannot read the file: No such file or directory"]


def test_load_settings_defaults_to_sidecar_config_env(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("upstream: http://mine:1\n")
    assert load_settings(None, env={"SIDECAR_CONFIG": str(path)}).upstream == "http://mine:1"


def _shipped_configs() -> list[Path]:
    # As `make check`: other YAML under examples/ is Kubernetes, compose or Prometheus.
    return [REFERENCE, *sorted(ROOT.glob("examples/*/sidecar.yaml"))]


@pytest.mark.parametrize("path", _shipped_configs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_config_loads(path: Path) -> None:
    load_settings(path, env={})


def test_reference_config_shows_the_design_example() -> None:
    settings = load_settings(REFERENCE, env={})
    assert settings.admin_token is None  # ${SIDECAR_ADMIN_TOKEN:-} with the variable unset
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    by_name = {route.name: route for route in settings.routes}
    users = by_name["create-user"]
    assert (users.method, users.path) == ("POST", "/api/users")
    assert users.wait is not None and users.wait.stream is not None
    assert users.wait.stream.key == "users.events"
    assert users.wait.stream.success == ["CreateUser::UserCreated"]
    assert users.wait.stream.failure == ["CreateUser::UserNotCreated"]
    reports = by_name["create-report"]
    assert reports.wait is not None and reports.wait.stream is None
    assert reports.wait.poll is not None and reports.wait.poll.field == "/status"
    assert not by_name["get-user"].is_sync


def _fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> Iterator[str]:
    """Every field name of `model` and of the models it nests."""
    if model in seen:
        return
    seen.add(model)
    for name, field in model.model_fields.items():
        yield name
        for nested in _nested_models(field.annotation):
            yield from _fields(nested, seen)


def _nested_models(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _nested_models(arg)


def test_reference_config_documents_every_key() -> None:
    """Each key appears (possibly commented out) in config/sidecar.yaml, so it cannot drift."""
    text = REFERENCE.read_text()
    names = sorted(set(_fields(Settings, set())))
    assert len(names) > 50  # the walk reached the nested blocks
    undocumented = [
        name for name in names if not re.search(rf"^\s*(#\s*)?(-\s+)?{name}:", text, re.MULTILINE)
    ]
    assert undocumented == []


def test_schema_file_is_current() -> None:
    expected = json.dumps(json_schema(), indent=2) + "\n"
    assert SCHEMA.read_text() == expected, (
        "config/sidecar.schema.json is stale: run `sidecar schema > config/sidecar.schema.json`"
    )


def test_reference_config_points_editors_at_the_schema() -> None:
    first_line = REFERENCE.read_text().splitlines()[0]
    assert first_line == "# yaml-language-server: $schema=./sidecar.schema.json"
