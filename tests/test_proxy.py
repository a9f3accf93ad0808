"""The transparent proxy listener: what reaches the upstream and what comes back."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import orjson
from aiohttp import web

from devtools.redis_server import free_port
from sidecar.state import ADMIN_URL

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


async def test_upstream_unreachable_is_502_problem(start_sidecar: SidecarFactory) -> None:
    client = await start_sidecar(f"http://127.0.0.1:{free_port()}")
    resp = await client.get("/x", headers={"X-Correlation-ID": "c-502"})
    assert resp.status == 502
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert resp.headers["X-Correlation-ID"] == "c-502"
    body = orjson.loads(await resp.read())
    assert body["status"] == 502
    assert body["type"] == "urn:sidecar:problem:upstream-unreachable"
    assert body["correlation_id"] == "c-502"
    assert "Traceback" not in str(body)


async def test_upstream_timeout_is_504_problem(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await start_upstream(app)
    client = await start_sidecar(upstream, proxy={"read_timeout": "100ms"})
    try:
        resp = await client.get("/slow")
        assert resp.status == 504
        body = orjson.loads(await resp.read())
        assert body["type"] == "urn:sidecar:problem:upstream-timeout"
    finally:
        release.set()


async def test_large_body_streams_both_ways(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    """A body larger than any buffer goes up and comes back in chunks, byte for byte."""
    size = 20 * 1024 * 1024

    async def mirror(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = request.content_length
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(65536):
            await response.write(chunk)
        return response

    app = web.Application()
    app.router.add_put("/blob", mirror)
    upstream = await start_upstream(app)
    client = await start_sidecar(upstream)
    pattern = bytes(range(256)) * 256

    async def body() -> Any:
        for _ in range(size // len(pattern)):
            yield pattern

    resp = await client.put("/blob", data=body(), headers={"Content-Length": str(size)})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(size)
    digest, received = hashlib.sha256(), 0
    async for chunk in resp.content.iter_chunked(65536):
        digest.update(chunk)
        received += len(chunk)
    assert received == size
    assert digest.digest() == hashlib.sha256(pattern * (size // len(pattern))).digest()


async def test_route_label_in_metrics_and_admin_endpoints(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    upstream = await start_upstream(echo_app())
    client = await start_sidecar(
        upstream, routes=[{"name": "things", "method": "GET", "path": "/things/{id}"}]
    )
    assert (await client.get("/things/42")).status == 200
    assert (await client.get("/other")).status == 200
    admin = client.app[ADMIN_URL]
    async with client.session.get(f"{admin}/healthz") as resp:
        assert resp.status == 200
    async with client.session.get(f"{admin}/readyz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ready"
    async with client.session.get(f"{admin}/metrics") as resp:
        text = await resp.text()
    assert (
        'sidecar_requests_total{outcome="passthrough",route="things",status_class="2xx"} 1.0'
        in text
    )
    assert 'sidecar_requests_total{outcome="passthrough",route="-",status_class="2xx"} 1.0' in text
    assert "sidecar_build_info" in text


async def test_a_call_queued_for_a_busy_pool_is_not_failed_by_the_connect_timeout(
    start_upstream: Upstream, start_sidecar: SidecarFactory
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    upstream = await start_upstream(app)
    client = await start_sidecar(
        upstream, proxy={"max_connections": 1, "connect_timeout": "100ms", "read_timeout": "5s"}
    )
    first = asyncio.ensure_future(client.get("/slow"))
    await entered.wait()  # the only pooled connection is busy
    second = asyncio.ensure_future(client.get("/slow"))
    await asyncio.sleep(0.3)  # the second call queues past the 100ms connect timeout
    release.set()
    assert [(await first).status, (await second).status] == [200, 200]
