"""Header rules: hop-by-hop, X-Forwarded-*, Location rewriting, correlation ids, Retry-After."""

from __future__ import annotations

import email.utils
import uuid

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sidecar.http.headers import (
    absolute_location,
    client_origin,
    correlation_id,
    end_to_end,
    parse_retry_after,
    plain_path,
    resolve_location,
    response_headers,
    rewrite_location,
    upstream_location,
    upstream_request_headers,
    usable_location,
)
from sidecar.tracking import location_lookup_path

UPSTREAM = URL("http://api.internal:8000")


def proxy(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize("supplied", ["abc", "A.b_c:d-9", "x" * 128])
def test_well_formed_correlation_ids_are_kept(supplied: str) -> None:
    assert correlation_id(supplied) == supplied


@pytest.mark.parametrize("supplied", [None, "", "x" * 129, "a b", "a/b", "é", "a\r\nb"])
def test_other_correlation_ids_are_replaced_by_a_uuid(supplied: str | None) -> None:
    minted = correlation_id(supplied)
    assert minted != supplied
    assert uuid.UUID(minted).version == 4


def test_end_to_end_drops_hop_by_hop_and_connection_named_headers() -> None:
    headers = proxy(
        [
            ("Connection", "keep-alive, X-Secret"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("X-Secret", "1"),
            ("X-Kept", "a"),
            ("X-Kept", "b"),
        ]
    )
    kept = end_to_end(headers)
    assert list(kept.items()) == [("X-Kept", "a"), ("X-Kept", "b")]


def test_upstream_headers_replace_untrusted_forwarded_ones_and_carry_the_id() -> None:
    client = proxy(
        [("Host", "public.example"), ("X-Forwarded-For", "6.6.6.6"), ("Forwarded", "for=x")]
    )
    out = upstream_request_headers(
        client,
        remote="10.0.0.7",
        scheme="https",
        host="public.example",
        trust_forwarded=False,
        correlation_header="X-Correlation-ID",
        correlation="c-1",
    )
    assert "Host" not in out and "Forwarded" not in out
    assert out["X-Forwarded-For"] == "10.0.0.7"
    assert out["X-Forwarded-Proto"] == "https"
    assert out["X-Forwarded-Host"] == "public.example"
    assert out["X-Correlation-ID"] == "c-1"


def test_trusted_forwarded_headers_are_extended() -> None:
    client = proxy([("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https")])
    out = upstream_request_headers(
        client,
        remote="10.0.0.7",
        scheme="http",
        host="h",
        trust_forwarded=True,
        correlation_header="X-Correlation-ID",
        correlation="c",
    )
    assert out["X-Forwarded-For"] == "1.2.3.4, 10.0.0.7"
    assert out["X-Forwarded-Proto"] == "https"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://api.internal:8000/users/1?x=1#f", "https://pub.example/users/1?x=1#f"),
        ("http://api.internal:8000", "https://pub.example/"),
        ("/users/1", "/users/1"),  # relative: left alone
        ("http://elsewhere.example/users/1", "http://elsewhere.example/users/1"),
        ("http://api.internal:9999/users/1", "http://api.internal:9999/users/1"),
    ],
)
def test_rewrite_location_only_touches_the_upstreams_own_urls(value: str, expected: str) -> None:
    assert rewrite_location(value, UPSTREAM, "https://pub.example") == expected


def test_upstream_location_resolves_relative_references() -> None:
    assert upstream_location("/users/1", UPSTREAM) == URL("http://api.internal:8000/users/1")
    assert upstream_location("http://x.example/a", UPSTREAM) == URL("http://x.example/a")


# Locations on both sides of the string-only resolution of plain paths: what it resolves must be
# exactly what yarl resolves, and what it leaves to yarl must still be resolved by yarl.
LOCATIONS = [
    ("/jobs/42", True),
    ("/v1/jobs/42?wait=1&x=a/b", True),
    ("/a;b=1/~c:d@e!$&'()*+,=", True),
    ("/", True),
    ("/jobs/../admin", False),  # dot segments are removed by resolution
    ("/jobs/./42", False),
    ("/.well-known/x", False),
    ("//other.example/jobs/1", False),  # a network-path reference names another host
    ("/jobs/42?", False),  # an empty query is dropped
    ("/jobs/4%2F2", False),  # percent escapes
    ("/jobs/42#frag", False),
    ("/jobs/ä", False),
    ("jobs/42", False),  # relative to the upstream's path
    ("http://api.internal:8000/jobs/42", False),
]
BASES = [
    URL("http://api.internal:8000"),
    URL("http://api.internal:8000/v1/"),
    URL("http://user:pw@api.internal:80/x"),
    URL("https://[::1]:8443"),
]


@pytest.mark.parametrize(("value", "plain"), LOCATIONS)
def test_plain_path_locations_resolve_as_yarl_resolves_them(value: str, plain: bool) -> None:
    assert plain_path(value) is plain
    for base in BASES:
        url, text = resolve_location(value, base)
        parsed = URL(value, encoded=True)
        expected = parsed if parsed.is_absolute() else base.join(parsed)
        assert str(url) == str(expected)
        assert (url.host, url.port, url.raw_path_qs) == (
            expected.host,
            expected.port,
            expected.raw_path_qs,
        )
        assert text == (str(expected) if plain else None)
        assert location_lookup_path(str(url)) == expected.raw_path_qs
        origin = str(base.origin())
        assert absolute_location(origin, value) == str(URL(origin).join(URL(value)))
    if plain:
        assert usable_location(value)
        assert rewrite_location(value, UPSTREAM, "https://pub.example") == value


def test_response_headers_rewrite_location_and_content_location() -> None:
    upstream = proxy(
        [
            ("Location", "http://api.internal:8000/a"),
            ("Content-Location", "http://api.internal:8000/b"),
            ("Connection", "close"),
        ]
    )
    out = response_headers(upstream, upstream=UPSTREAM, origin="http://pub")
    assert out["Location"] == "http://pub/a"
    assert out["Content-Location"] == "http://pub/b"
    assert "Connection" not in out


def test_client_origin_prefers_config_then_trusted_forwarded_then_host() -> None:
    fwd = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "lb.example"}
    assert client_origin(public_url="https://p/", scheme="http", host="h", forwarded=fwd) == (
        "https://p"
    )
    assert (
        client_origin(public_url=None, scheme="http", host="h", forwarded=fwd)
        == "https://lb.example"
    )
    assert client_origin(public_url=None, scheme="http", host="h", forwarded=None) == "http://h"
    assert client_origin(public_url=None, scheme="http", host=None, forwarded=None) == (
        "http://localhost"
    )


def test_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    date = email.utils.formatdate(1_000_030, usegmt=True)
    assert parse_retry_after(date, now=1_000_000) == 30.0
    assert parse_retry_after(email.utils.formatdate(10, usegmt=True), now=1_000) == 0.0
    for bad in (None, "", "soon", "-5", "1.5"):
        assert parse_retry_after(bad) is None
