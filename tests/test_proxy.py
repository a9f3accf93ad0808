"""The transparent proxy listener: what reaches the upstream and what comes back."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .conftest import SidecarFactory, Upstream


def echo_app() -> web.Application:
    """An upstream that answers with what it received."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("latin-1"),
            }
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def header_values(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["headers"] if k.lower() == name.lower()]


async def test_method_path_query_headers_and_body_reach_upstream(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    upstream = await start_upstream(echo_app())
    client = await start_sidecar(upstream)
    raw = "/a%2Fb/c?x=1&y=%20%2B+&x=2&empty=&flag"
    resp = await client.patch(
        raw, data=b"payload \x00\xff", headers={"X-Custom": "v1", "Content-Type": "app/x"}
    )
    assert resp.status == 200
    seen = await resp.json()
    assert seen["method"] == "PATCH"
    assert seen["raw_path"] == raw
    assert seen["body"] == "payload \x00\xff"
    assert header_values(seen, "X-Custom") == ["v1"]
    assert header_values(seen, "Content-Type") == ["app/x"]


async def test_hop_by_hop_and_connection_named_headers_are_dropped(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    upstream = await start_upstream(echo_app())
    client = await start_sidecar(upstream)
    resp = await client.get(
        "/x",
        headers={
            "Connection": "keep-alive, X-Secret-Hop",
            "X-Secret-Hop": "drop me",
            "Proxy-Authorization": "Basic abc",
            "TE": "trailers",
            "Keep-Alive": "timeout=5",
            "X-End-To-End": "keep me",
        },
    )
    seen = await resp.json()
    names = {k.lower() for k, _ in seen["headers"]}
    assert "x-secret-hop" not in names
    assert "proxy-authorization" not in names
    assert "te" not in names
    assert "keep-alive" not in names
    assert header_values(seen, "X-End-To-End") == ["keep me"]


async def test_forwarded_headers_are_set_and_client_values_not_trusted_by_default(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    upstream = await start_upstream(echo_app())
    client = await start_sidecar(upstream)
    resp = await client.get(
        "/x", headers={"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil"}
    )
    seen = await resp.json()
    assert header_values(seen, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(seen, "X-Forwarded-Proto") == ["http"]
    assert header_values(seen, "X-Forwarded-Host") == [f"127.0.0.1:{client.port}"]


async def test_forwarded_headers_appended_when_trusted(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    upstream = await start_upstream(echo_app())
    client = await start_sidecar(upstream, proxy={"trust_forwarded_headers": True})
    resp = await client.get(
        "/x", headers={"X-Forwarded-For": "10.0.0.9", "X-Forwarded-Proto": "https"}
    )
    seen = await resp.json()
    assert header_values(seen, "X-Forwarded-For") == ["10.0.0.9, 127.0.0.1"]
    assert header_values(seen, "X-Forwarded-Proto") == ["https"]


async def test_correlation_id_passed_through_or_generated(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    upstream = await start_upstream(echo_app())
    client = await start_sidecar(upstream)
    resp = await client.get("/x", headers={"X-Correlation-ID": "abc-123:x.y"})
    assert resp.headers["X-Correlation-ID"] == "abc-123:x.y"
    assert header_values(await resp.json(), "X-Correlation-ID") == ["abc-123:x.y"]
    resp = await client.get("/x", headers={"X-Correlation-ID": "bad id with spaces"})
    generated = resp.headers["X-Correlation-ID"]
    assert generated != "bad id with spaces" and len(generated) == 36
    assert header_values(await resp.json(), "X-Correlation-ID") == [generated]


async def test_upstream_answer_relayed_unchanged_and_location_rewritten(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    holder: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            status=418,
            reason="I'm a teapot",
            body=b"\x1f\x8b not really gzip",
            headers={
                "Content-Encoding": "gzip",
                "Location": f"{holder['origin']}/users/1?x=%20",
                "Content-Location": "https://elsewhere.example/thing",
                "X-Upstream": "yes",
                "Set-Cookie": "a=b",
            },
        )

    app = web.Application()
    app.router.add_get("/t", handler)
    upstream = await start_upstream(app)
    holder["origin"] = str(upstream.make_url("")).rstrip("/")
    client = await start_sidecar(upstream)
    resp = await client.get("/t", auto_decompress=False)
    assert resp.status == 418
    assert resp.reason == "I'm a teapot"
    assert await resp.read() == b"\x1f\x8b not really gzip"
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Location"] == f"http://127.0.0.1:{client.port}/users/1?x=%20"
    assert resp.headers["Content-Location"] == "https://elsewhere.example/thing"
    assert resp.headers["X-Upstream"] == "yes"
    assert resp.headers["Set-Cookie"] == "a=b"


async def test_location_rewritten_to_configured_public_url(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    holder: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=202, headers={"Location": f"{holder['origin']}/jobs/7"})

    app = web.Application()
    app.router.add_post("/jobs", handler)
    upstream = await start_upstream(app)
    holder["origin"] = str(upstream.make_url("")).rstrip("/")
    client = await start_sidecar(upstream, proxy={"public_url": "https://api.example.com"})
    resp = await client.post("/jobs")
    assert resp.headers["Location"] == "https://api.example.com/jobs/7"
