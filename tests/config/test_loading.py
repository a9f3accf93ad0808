"""Loading the config (sidecar/config/loading.py): SIDECAR_* overrides and ${VAR} interpolation
from an explicit environment, YAML files and their syntax errors; the shipped files load, and the
reference file and the JSON Schema stay in step with the models."""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from sidecar.config import ConfigError, Settings, json_schema, load_settings, parse_settings

from .support import REFERENCE, ROOT, SCHEMA, problems_of, settings_of

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
