"""Polling a Location (sidecar/completions/poll.py): judging one answer (done or failed by status
code or by a JSON field; JSON pointers), and polling a real status URL through the upstream pool:
redirects followed, every poll counted, the deadline kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from sidecar.completions.poll import (
    MAX_REDIRECTS,
    PollAnswer,
    TooManyRedirects,
    decode_body,
    fetch,
    json_pointer,
    judge,
    poll_location,
)
from sidecar.config import PollWait
from sidecar.http.pool import UpstreamPool
from sidecar.metrics import Metrics

from ..conftest import FakeApiFactory
from ..fakes import FakeApi, reply


def answer(status: int, body: object = b"") -> PollAnswer:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return PollAnswer(status, raw, "application/json", None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "succeeded"), (202, None), (404, None), (500, None), (410, "failed")],
)
def test_by_status(status: int, expected: str | None) -> None:
    spec = PollWait(done_status=[200], failed_status=[410])
    assert judge(spec, answer(status)) == expected


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"state": {"phase": "done"}}, 200, "succeeded"),
        ({"state": {"phase": "error"}}, 200, "failed"),
        ({"state": {"phase": "running"}}, 200, None),
        ({"state": {}}, 200, None),
        ({"state": {"phase": "done"}}, 404, None),  # a field is judged on 2xx answers only
        (b"not json", 200, None),
    ],
)
def test_by_json_field(body: object, status: int, expected: str | None) -> None:
    spec = PollWait(field="/state/phase", success=["done"], failure=["error", "cancelled"])
    assert judge(spec, answer(status, body)) == expected


def test_failed_status_wins_over_a_field() -> None:
    spec = PollWait(field="/s", success=["done"], failed_status=[410])
    assert judge(spec, answer(410, {"s": "done"})) == "failed"


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [("", {"a/b": [1, {"~x": 2}]}), ("/a~1b", [1, {"~x": 2}]), ("/a~1b/1/~0x", 2)],
)
def test_json_pointer(pointer: str, expected: object) -> None:
    assert json_pointer({"a/b": [1, {"~x": 2}]}, pointer) == expected


@pytest.mark.parametrize("pointer", ["/missing", "/a~1b/9", "/a~1b/x", "/a~1b/0/deeper"])
def test_json_pointer_leading_nowhere(pointer: str) -> None:
    with pytest.raises(LookupError):
        json_pointer({"a/b": [1, {"~x": 2}]}, pointer)


def test_decode_body_json_else_text() -> None:
    assert decode_body(b'{"a": 1}', None) == ({"a": 1}, True)
    assert decode_body(b"plain \xff", None) == ("plain \ufffd", False)
    assert decode_body(b"", None) == (None, False)


# --------------------------------------------------------------------------------------------
# Polling a real status URL
# --------------------------------------------------------------------------------------------


@pytest.fixture
async def status_api(fake_api: FakeApiFactory) -> FakeApi:
    """GET /jobs/{cid}/status answers `replies` in turn; /loop/{n} redirects to /loop/{n+1}."""

    async def loop(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        raise web.HTTPSeeOther(f"/loop/{n + 1}")

    async def resource(request: web.Request) -> web.Response:
        return web.json_response({"resource": request.match_info["id"]})

    return await fake_api(
        accept=None,
        status="/jobs/{cid}/status",
        routes={"GET /loop/{n}": loop, "GET /resources/{id}": resource},
    )


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    upstream = UpstreamPool(limit=4, connect_timeout_s=1.0, read_timeout_s=2.0)
    yield upstream
    await upstream.close()


def polls(metrics: Metrics, result: str) -> float:
    labels = {"route": "jobs", "result": result}
    return metrics.registry.get_sample_value("sidecar_polls_total", labels) or 0.0


async def test_fetch_follows_a_303_to_the_resource(status_api: FakeApi, pool: UpstreamPool) -> None:
    status_api.replies = [reply(303, Location="/resources/7")]
    got = await fetch(pool, status_api.make_url("/jobs/j-1/status"), {"X-Call": "1"}, 2.0)
    assert (got.status, orjson.loads(got.body)) == (200, {"resource": "7"})
    assert [s.path for s in status_api.seen] == ["/jobs/j-1/status", "/resources/7"]
    assert all(s.headers["X-Call"] == "1" for s in status_api.seen)  # on every hop


async def test_fetch_gives_up_on_a_redirect_loop(status_api: FakeApi, pool: UpstreamPool) -> None:
    with pytest.raises(TooManyRedirects):
        await fetch(pool, status_api.make_url("/loop/0"), {}, 2.0)
    assert len(status_api.seen) == MAX_REDIRECTS + 1


async def test_polling_ends_with_the_verdict_and_counts_every_poll(
    status_api: FakeApi, pool: UpstreamPool
) -> None:
    status_api.replies = [reply(404), reply(503), reply(200, {"id": 1})]
    metrics = Metrics(CollectorRegistry())
    loop = asyncio.get_running_loop()
    found = await poll_location(
        pool,
        status_api.make_url("/jobs/j-2/status"),
        {},
        PollWait(interval=0.01, max_interval=0.02),
        correlation_id="j-2",
        deadline=loop.time() + 5,
        metrics=metrics,
        route="jobs",
    )
    assert found is not None
    completion, answer = found
    assert (completion.correlation_id, completion.status, completion.data) == (
        "j-2",
        "succeeded",
        {"id": 1},
    )
    assert completion.source == "poll" and answer.status == 200
    assert [polls(metrics, r) for r in ("pending", "error", "done")] == [1, 1, 1]


async def test_polling_stops_at_its_deadline(status_api: FakeApi, pool: UpstreamPool) -> None:
    status_api.replies = [reply(202, {"state": "pending"}, **{"Retry-After": "1"})]
    metrics = Metrics(CollectorRegistry())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.3
    found = await poll_location(
        pool,
        status_api.make_url("/jobs/j-3/status"),
        {},
        PollWait(interval=0.01),
        correlation_id="j-3",
        deadline=deadline,
        metrics=metrics,
        route="jobs",
    )
    assert found is None
    assert loop.time() >= deadline
    assert len(status_api.polls) == 1  # the next one was due after the deadline (Retry-After)
    assert polls(metrics, "pending") == 1
