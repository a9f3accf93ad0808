"""Route matching: ordered routes, method and path template, first match wins."""

from __future__ import annotations

import pytest
from yarl import URL

from sidecar.config import compile_path_template, parse_settings
from sidecar.routing import RouteTable


def table() -> RouteTable:
    settings = parse_settings(
        {
            "upstream": "http://default:8000",
            "routes": [
                {"name": "activate", "method": "POST", "path": "/api/users/{id}/activate"},
                {"name": "users", "method": "POST", "path": "/api/users", "upstream": "http://u:1"},
                {"name": "any-user", "path": "/api/users/{id}"},
                {"name": "shadowed", "method": "GET", "path": "/api/users/{id}"},
            ],
        },
        env={},
    )
    return RouteTable(settings)


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/users/7/activate", "activate"),
        ("GET", "/api/users/7/activate", None),
        ("POST", "/api/users", "users"),
        ("POST", "/api/users/", None),
        ("GET", "/api/users/7", "any-user"),  # first match wins over the later GET route
        ("DELETE", "/api/users/7", "any-user"),
        ("GET", "/api/users/7/x", None),
        ("GET", "/elsewhere", None),
    ],
)
def test_first_matching_route_wins(method: str, path: str, expected: str | None) -> None:
    found = table().match(method, path)
    assert (found.route.name if found else None) == expected


def test_route_upstream_overrides_the_default() -> None:
    routes = table()
    assert routes.by_name["users"].upstream == URL("http://u:1")
    assert routes.by_name["activate"].upstream == URL("http://default:8000")


def test_a_placeholder_matches_exactly_one_segment() -> None:
    regex = compile_path_template("/a/{x}/b.{ext}")
    match = regex.match("/a/1/b.json")
    assert match is not None and match.groupdict() == {"x": "1", "ext": "json"}
    assert regex.match("/a/1/2/b.json") is None
    assert compile_path_template("/v1.0/(x)").match("/v1.0/(x)")
    assert not compile_path_template("/v1.0/(x)").match("/v1x0/(x)")
