"""What the front is written from (sidecar/front/plan.py) and how it is written for nginx
(sidecar/front/nginx.py): the route table's order kept, named routes' own upstreams, the
sidecar's own paths with Redis only, a read timeout above the longest hold; and every variant
of the file is one nginx loads."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import nginx
from sidecar.config import Settings, load_settings
from sidecar.front import FrontOptions, plan_front, render_nginx
from sidecar.front.nginx import pcre_literal, quoted, rule_regex

from ..conftest import ROOT, make_settings
from .support import need_nginx

POLL: dict[str, Any] = {"poll": {}}


def settings(**raw: Any) -> Settings:
    return make_settings(raw.pop("upstream", "http://127.0.0.1:8000"), **raw)


def test_the_reference_config() -> None:
    plan = plan_front(load_settings(ROOT / "config" / "sidecar.yaml", env={}))
    assert [(r.route, r.method, r.template, r.target) for r in plan.rules] == [
        ("create-user", "POST", "/api/users", "sidecar"),
        ("create-report", "POST", "/api/reports", "sidecar"),
    ]
    assert plan.left_out == ("get-user",)  # the default upstream takes it without a rule
    assert [(u.name, str(u.url), u.host) for u in plan.upstreams] == [
        ("api", "http://127.0.0.1:8000", "127.0.0.1:8000")
    ]
    assert plan.long_polls
    assert plan.monitor == "/.sidecar/operations/"
    # 2 x (connect 5s + read 60s) + the longest budget (create-report's 30s) + 5s.
    assert plan.sidecar_silence_s == 165


def test_rules_keep_the_route_tables_order_and_named_routes_their_upstreams() -> None:
    plan = plan_front(
        settings(
            routes=[
                {"name": "first", "method": "GET", "path": "/a/b"},  # shadows "sync" on GET
                {"name": "own", "path": "/own/{x}", "upstream": "https://own.example:8443/v1/"},
                {"name": "sync", "path": "/a/{x}", "wait": POLL},
                {"name": "later", "path": "/later"},
                {"name": "own-later", "path": "/o2", "upstream": "https://own.example:8443/v1"},
                {"name": "same", "path": "/s", "upstream": "http://127.0.0.1:8000"},
            ]
        )
    )
    assert [(r.route, r.target) for r in plan.rules] == [
        ("first", "api"),
        ("own", "api_2"),
        ("sync", "sidecar"),
        ("own-later", "api_2"),
    ]
    assert plan.left_out == ("later", "same")
    own = plan.upstreams[1]
    assert (own.name, own.host, own.base_path, own.routes) == (
        "api_2",
        "own.example:8443",
        "/v1",
        ("own", "own-later"),
    )
    assert not plan.long_polls and plan.monitor is None  # no Redis: no long-polls, no monitor


@pytest.mark.parametrize(
    ("method", "template", "regex"),
    [
        ("POST", "/api/users", "~^POST /api/users$"),
        ("*", "/users/{id}/activate", "~^[^ ]+ /users/[^/]+/activate$"),
        ("GET", "/v1.0/(x)/{a}.{b}", r"~^GET /v1\.0/\(x\)/[^/]+\.[^/]+$"),
        ("PUT", "/café/a b+c$", r"~^PUT /caf\xc3\xa9/a\x20b\+c\$$"),
    ],
)
def test_a_route_becomes_a_regex_on_method_and_path(method: str, template: str, regex: str) -> None:
    route = {"name": "r", "method": method, "path": template, "wait": POLL}
    plan = plan_front(settings(routes=[route]))
    assert rule_regex(plan.rules[0]) == regex


def test_nginx_strings_keep_regexes_readable() -> None:
    assert quoted(r"~^/a\.b$") == r'"~^/a\.b$"'  # nginx reads `\.` back as `\.`
    assert quoted('a"b') == r'"a\"b"'
    assert quoted("\\" + "\\") == '"' + "\\" * 4 + '"'  # before a backslash: doubled
    assert quoted("\\t\\") == '"' + "\\\\t\\\\" + '"'  # before t, and at the end: doubled
    assert pcre_literal('a"\\') == 'a"\\\\'


def render(raw: dict[str, Any], **options: Any) -> str:
    return render_nginx(plan_front(settings(**raw)), FrontOptions(**options))


def test_what_the_sidecar_answers_itself_goes_to_it_only_with_redis() -> None:
    with_redis = render({"redis_url": "redis://r:6379/0"})
    assert 'map "$request_method $http_prefer"' in with_redis
    assert '"~^/\\.sidecar/operations/"  sidecar;' in with_redis
    without = render({})
    assert "$http_prefer" not in without
    assert "operations" not in without
    assert "default $sidecar_front_by_route;" in without


def test_forwarded_headers_are_replaced_unless_the_front_is_told_to_trust_them() -> None:
    edge = render({})
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in edge
    assert 'proxy_set_header Forwarded "";' in edge
    behind = render({}, trust_forwarded=True)
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in behind
    assert 'Forwarded ""' not in behind


VARIANTS: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {}),
    ({"redis_url": "redis://r:6379/0", "routes": [{"name": "s", "path": "/s", "wait": POLL}]}, {}),
    (
        {
            "redis_url": "redis://r:6379/0",
            "proxy": {"public_url": "https://api.example.com/base"},
            "routes": [
                {"name": "tls", "path": "/t/{x}", "upstream": "https://127.0.0.1:8443/v1"},
                {"name": "s", "method": "*", "path": "/s/{x}.json", "wait": POLL},
            ],
        },
        {"trust_forwarded": True, "server_name": "api.example.com", "listen": "[::1]:8081"},
    ),
    ({"upstream": "http://[::1]:8000"}, {"sidecar": "[::1]:8080"}),
    # A template that would end a comment and a directive, were it written as it is.
    ({"routes": [{"name": "odd", "path": '/a\n}"; b\\{x}', "wait": POLL}]}, {}),
]


@pytest.mark.parametrize(("raw", "options"), VARIANTS)
def test_nginx_loads_every_variant(
    raw: dict[str, Any], options: dict[str, Any], tmp_path: Path
) -> None:
    need_nginx()
    config = nginx.write_front(tmp_path, render(raw, **options), nofile=1024)
    done = subprocess.run(
        [*nginx.command(config), "-t", "-q"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
