"""The admin API as a whole (sidecar/admin/api.py): unknown paths and methods are problems,
answers are never cached or sniffed, and without Redis, or while it fails, every endpoint
answers 503."""

from __future__ import annotations

import pytest

from ..admin_support import PROBLEM, A, StartAdmin, assert_problem


async def test_unknown_paths_and_methods_are_problems(start_admin: StartAdmin) -> None:
    admin = await start_admin()
    assert_problem(await admin.call("GET", "/nothing-here", A), 404)
    answer = await admin.call("PUT", "/subscriptions", A)
    assert answer.status == 405
    assert answer.headers["Content-Type"] == PROBLEM
    assert "POST" in answer.headers["Allow"]


async def test_the_admin_api_answers_are_never_cached_and_never_sniffed(
    start_admin: StartAdmin,
) -> None:
    admin = await start_admin()
    answer = await admin.call("GET", "/subscriptions", A)
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "no-referrer"


# --------------------------------------------------------------------------------------------
# Without Redis
# --------------------------------------------------------------------------------------------


async def test_without_redis_url_every_endpoint_answers_503(start_admin: StartAdmin) -> None:
    admin = await start_admin(redis_url=None)
    for method, path in [
        ("GET", "/subscriptions"),
        ("POST", "/subscriptions"),
        ("GET", "/subscriptions/sub_x"),
        ("DELETE", "/subscriptions/sub_x"),
        ("GET", "/subscriptions/sub_x/attempts"),
    ]:
        answer = await admin.call(method, path, A)
        assert_problem(answer, 503)
        assert answer.body["detail"] == "webhooks need redis_url"


async def test_sessions_need_redis(start_admin: StartAdmin) -> None:
    admin = await start_admin(redis_url=None, key_prefix="unused", webhooks={})
    answer = await admin.call("POST", "/sign-in", None, {"credential": "Bearer client-a"})
    assert_problem(answer, 503)


async def test_redis_down_answers_503_without_a_traceback(
    start_admin: StartAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await start_admin(redis_url="redis://127.0.0.1:1/0")
    for method, path, body in [
        ("GET", "/subscriptions", None),
        ("POST", "/subscriptions", {"url": "https://a.example.com/", "events": ["*"]}),
    ]:
        answer = await admin.call(method, path, A, body)
        assert_problem(answer, 503)
        assert answer.body["detail"].startswith("Redis is unavailable")
    faults = [r for r in caplog.records if r.name == "sidecar.http.boundary"]
    assert faults
    assert all(r.exc_info is None for r in faults)
