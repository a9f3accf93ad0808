"""Redis faults told apart from bugs of ours (sidecar/faults.py): a fault (Redis away) is a 503,
one WARNING line without traceback and a count in `sidecar_redis_faults_total{where}`, however
many requests, background tasks or unawaited futures meet it; a Redis error our own command
caused (WRONGTYPE) is a bug: 500 problem+json with the correlation header, logged with its
traceback, counted as an internal error."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from sidecar.metrics import METRICS
from sidecar.state import POLLERS
from sidecar.webhooks.keys import all_subscriptions_key, subscriptions_by_age_key

from .admin_support import OP, PROBLEM, Admin, StartAdmin, assert_problem

DOWN = "redis://127.0.0.1:1/0"  # nothing listens there


def sample(admin: Admin, name: str, **labels: str) -> float:
    return admin.app[METRICS].registry.get_sample_value(name, labels) or 0.0


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("sidecar") and r.levelno == level]


async def test_a_redis_error_of_our_own_is_a_500_not_a_503(
    start_admin: StartAdmin,
    redis: aioredis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = await start_admin()
    # The subscriptions' indexes holding strings: every command of ours on them is a WRONGTYPE.
    await redis.set(all_subscriptions_key(key_prefix), "not a hash")
    await redis.set(subscriptions_by_age_key(key_prefix), "not a sorted set")
    answer = await admin.call("GET", "/subscriptions", {**OP, "X-Correlation-ID": "c-bug"})
    assert answer.status == 500, answer.body
    assert answer.headers["Content-Type"] == PROBLEM
    assert answer.body["type"] == "urn:sidecar:problem:internal-error"
    assert answer.headers["X-Correlation-ID"] == "c-bug"
    assert answer.body["correlation_id"] == "c-bug"
    assert "WRONGTYPE" not in str(answer.body)  # the detail of a bug stays in the log
    assert sample(admin, "sidecar_internal_errors_total", listener="admin") == 1
    assert sample(admin, "sidecar_redis_faults_total", where="request") == 0
    (error,) = [r for r in lines(caplog, logging.ERROR) if r.name == "sidecar.http.boundary"]
    assert error.exc_info is not None and "WRONGTYPE" in str(error.exc_info[1])


async def test_a_redis_outage_is_one_warning_without_traceback_and_counted(
    start_admin: StartAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await start_admin(redis_url=DOWN)
    for _ in range(3):
        answer = await admin.call("GET", "/subscriptions", OP)
        assert_problem(answer, 503)
        assert answer.body["detail"].startswith("Redis is unavailable")
    warned = [r for r in lines(caplog, logging.WARNING) if r.name == "sidecar.http.boundary"]
    assert len(warned) == 1
    assert warned[0].exc_info is None
    assert not lines(caplog, logging.ERROR)
    assert sample(admin, "sidecar_redis_faults_total", where="request") == 3
    assert sample(admin, "sidecar_internal_errors_total", listener="admin") == 0


async def test_a_background_task_ended_by_a_redis_fault_is_one_counted_warning(
    start_admin: StartAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await start_admin()

    async def cut() -> None:
        raise RedisConnectionError("Connection closed by server.")

    tasks = [admin.app[POLLERS].spawn(cut()) for _ in range(3)]
    await asyncio.wait(tasks)
    warned = [r for r in lines(caplog, logging.WARNING) if r.name == "sidecar.tasks"]
    assert len(warned) == 1 and warned[0].exc_info is None
    assert not lines(caplog, logging.ERROR)
    assert sample(admin, "sidecar_redis_faults_total", where="background") == 3


async def test_an_unawaited_redis_fault_reaching_the_loop_is_one_counted_warning(
    start_admin: StartAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    admin = await start_admin()
    loop = asyncio.get_running_loop()
    for _ in range(2):  # what a connection cut by a failover leaves behind
        loop.call_exception_handler(
            {
                "message": "Task exception was never retrieved",
                "exception": RedisConnectionError("Connection reset by peer"),
            }
        )
    warned = [r for r in lines(caplog, logging.WARNING) if r.name == "sidecar.logs"]
    assert len(warned) == 1 and warned[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert sample(admin, "sidecar_redis_faults_total", where="loop") == 2

    # Anything else is still the loop's own ERROR, traceback and all.
    loop.call_exception_handler(
        {"message": "Task exception was never retrieved", "exception": KeyError("body")}
    )
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.exc_info is not None
