"""The one error boundary (sidecar/http/boundary.py): whatever goes wrong in our code, on either
listener, the client gets problem+json with the correlation header, the call is counted under a
bounded outcome, and a bug is logged once with its traceback."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import orjson
import pytest

import sidecar.admin.health
import sidecar.http.upstream
import sidecar.sync.call
from sidecar.state import ADMIN_URL

from ..conftest import SidecarFactory
from ..fakes import FakeApi
from ..helpers import metric

SYNC_ROUTE = {
    "name": "jobs",
    "method": "POST",
    "path": "/jobs",
    "budget": "2s",
    "wait": {"poll": {"interval": "10ms"}},
}


def bug(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug of ours")


def assert_problem(status: int, body: bytes, headers: Any, cid: str | None) -> dict[str, Any]:
    """A problem answer carrying the call's id (`cid`, or whichever id the header says) in the
    header and the body alike."""
    assert headers["Content-Type"] == "application/problem+json"
    cid = cid or headers["X-Correlation-ID"]
    assert headers["X-Correlation-ID"] == cid
    problem: dict[str, Any] = orjson.loads(body)
    assert problem["status"] == status
    assert problem["correlation_id"] == cid
    assert "Traceback" not in body.decode() and "RuntimeError" not in body.decode()
    return problem


@pytest.mark.parametrize(
    ("method", "path", "target", "name"),
    [
        ("POST", "/jobs", sidecar.sync.call, "completion_id"),  # a synchronised call
        ("GET", "/plain", sidecar.http.upstream, "response_headers"),  # a pass-through
    ],
)
async def test_a_bug_on_the_proxy_is_a_problem_with_the_correlation_id(
    api: FakeApi,
    start_sidecar: SidecarFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    target: Any,
    name: str,
) -> None:
    client = await start_sidecar(api, routes=[SYNC_ROUTE])
    monkeypatch.setattr(target, name, bug)
    resp = await client.request(method, path, headers={"X-Correlation-ID": "c-bug"})
    assert resp.status == 500
    # A sync route without Redis cannot claim the client's id, so it answers with a minted one.
    problem = assert_problem(
        500, await resp.read(), resp.headers, "c-bug" if method == "GET" else None
    )
    cid = problem["correlation_id"]
    assert problem["type"] == "urn:sidecar:problem:internal-error"
    route = "jobs" if method == "POST" else "-"
    assert (
        metric(
            client,
            "sidecar_requests_total",
            route=route,
            outcome="internal_error",
            status_class="5xx",
        )
        == 1
    )
    assert metric(client, "sidecar_internal_errors_total", listener="proxy") == 1
    bugs = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(bugs) == 1 and bugs[0].exc_info is not None
    assert bugs[0].correlation_id == cid  # type: ignore[attr-defined]


async def test_a_bug_on_the_admin_listener_is_a_problem_too(
    api: FakeApi,
    start_sidecar: SidecarFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = await start_sidecar(api)
    admin = client.app[ADMIN_URL]
    monkeypatch.setattr(sidecar.admin.health, "generate_latest", bug)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{admin}/metrics", headers={"X-Correlation-ID": "a-1"}) as resp:
            assert resp.status == 500
            assert_problem(500, await resp.read(), resp.headers, "a-1")
        async with http.get(f"{admin}/nowhere") as resp:
            assert resp.status == 404
            cid = resp.headers["X-Correlation-ID"]
            problem = assert_problem(404, await resp.read(), resp.headers, cid)
            assert problem["detail"] == "no endpoint GET /nowhere"
        async with http.delete(f"{admin}/healthz") as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "GET,HEAD"
    assert metric(client, "sidecar_internal_errors_total", listener="admin") == 1
