"""The users example API alone (examples/users/api.py): what the sidecar is put in front of; and
`make demo` (examples/users/demo.py) run for its webhook section.

Real Redis; every test has its own key prefix and its own two streams, and tiny worker delays. The
demo runs as `make demo` does, as processes, on the same Redis (under the demo's own key prefix).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from examples.users.api import create_api_app

Client = TestClient[web.Request, web.Application]
ApiFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def streams(key_prefix: str) -> tuple[str, str]:
    """(commands, events) stream names of this test; under its prefix, so cleaned up after."""
    return f"{key_prefix}:users.commands", f"{key_prefix}:users.events"


@pytest.fixture
async def start_api(
    redis: aioredis.Redis,  # set up first, so that its key cleanup runs after the app stops
    aiohttp_client: Any,
    redis_url: str,
    key_prefix: str,
    streams: tuple[str, str],
) -> ApiFactory:
    """Start the example API (worker included) with fast defaults; overrides go to the factory."""

    async def start(**overrides: Any) -> Client:
        options: dict[str, Any] = {
            "prefix": key_prefix,
            "commands_stream": streams[0],
            "events_stream": streams[1],
            "delay_s": (0.01, 0.02),
            "slow_delay_s": 0.3,
            "block_ms": 50,
        }
        options.update(overrides)
        client: Client = await aiohttp_client(create_api_app(redis_url, **options))
        return client

    return start


async def next_event(
    redis: aioredis.Redis, stream: str, correlation_id: str, timeout_s: float = 5.0
) -> dict[str, str]:
    """The first event on `stream` for `correlation_id`, awaited with XREAD BLOCK."""
    last_id = "0-0"
    async with asyncio.timeout(timeout_s):
        while True:
            batches = await redis.xread({stream: last_id}, block=100)
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last_id = entry_id
                    event = {k.decode(): v.decode() for k, v in fields.items()}
                    if event.get("correlation_id") == correlation_id:
                        return event


async def test_post_answers_202_with_location_and_enqueues_the_command(
    start_api: ApiFactory, redis: aioredis.Redis, streams: tuple[str, str]
) -> None:
    api = await start_api()
    resp = await api.post("/api/users", json={"username": "Felipe", "age": 100})
    assert resp.status == 202
    body = await resp.json()
    assert body["status"] == "pending"
    user_id = body["id"]
    assert str(uuid.UUID(user_id)) == user_id  # no X-Correlation-ID: a new uuid4
    assert resp.headers["Location"] == f"/users/{user_id}"
    commands = await redis.xrange(streams[0])
    fields = {k.decode(): v.decode() for k, v in commands[0][1].items()}
    assert fields["type"] == "CreateUser::Requested"
    assert fields["correlation_id"] == user_id
    assert json.loads(fields["payload"]) == {"id": user_id, "username": "Felipe", "age": 100}


async def test_correlation_header_is_the_user_id_and_the_event_carries_it(
    start_api: ApiFactory, redis: aioredis.Redis, streams: tuple[str, str]
) -> None:
    api = await start_api()
    correlation_id = f"cid-{uuid.uuid4().hex}"
    resp = await api.post(
        "/api/users",
        json={"username": "Felipe", "age": 100},
        headers={"X-Correlation-ID": correlation_id},
    )
    assert resp.status == 202
    assert resp.headers["Location"] == f"/users/{correlation_id}"
    event = await next_event(redis, streams[1], correlation_id)
    assert event["type"] == "CreateUser::UserCreated"
    user = json.loads(event["payload"])
    assert user["id"] == correlation_id
    assert (user["username"], user["age"]) == ("Felipe", 100)
    assert user["created_at"].endswith("Z")


async def test_an_unusable_correlation_header_is_replaced_by_a_uuid(start_api: ApiFactory) -> None:
    api = await start_api()
    resp = await api.post(
        "/api/users", json={"username": "a", "age": 1}, headers={"X-Correlation-ID": "a/b c"}
    )
    user_id = (await resp.json())["id"]
    assert str(uuid.UUID(user_id)) == user_id


@pytest.mark.parametrize(
    ("username", "age", "reason"),
    [("failing-felipe", 30, "username rejected"), ("felipe", -1, "age must be positive")],
)
async def test_refused_users_emit_user_not_created_and_answer_410(
    start_api: ApiFactory,
    redis: aioredis.Redis,
    streams: tuple[str, str],
    username: str,
    age: int,
    reason: str,
) -> None:
    api = await start_api()
    resp = await api.post("/api/users", json={"username": username, "age": age})
    user_id = (await resp.json())["id"]
    event = await next_event(redis, streams[1], user_id)
    assert event["type"] == "CreateUser::UserNotCreated"
    assert json.loads(event["payload"]) == {"reason": reason}
    resp = await api.get(f"/users/{user_id}")
    assert resp.status == 410
    assert await resp.json() == {"id": user_id, "status": "failed", "reason": reason}


async def test_get_is_404_pending_until_created_then_200(
    start_api: ApiFactory, redis: aioredis.Redis, streams: tuple[str, str]
) -> None:
    api = await start_api(delay_s=(0.3, 0.3))
    resp = await api.post("/api/users", json={"username": "Felipe", "age": 100})
    location = resp.headers["Location"]
    user_id = (await resp.json())["id"]
    resp = await api.get(location)
    assert resp.status == 404
    assert await resp.json() == {"id": user_id, "status": "pending"}
    event = await next_event(redis, streams[1], user_id)
    resp = await api.get(location)
    assert resp.status == 200
    assert await resp.json() == json.loads(event["payload"])


async def test_unknown_user_is_404_not_found(start_api: ApiFactory) -> None:
    api = await start_api()
    resp = await api.get(f"/users/{uuid.uuid4()}")
    assert resp.status == 404
    assert (await resp.json())["status"] == "not_found"


async def test_a_slow_user_delays_no_other(
    start_api: ApiFactory, redis: aioredis.Redis, streams: tuple[str, str]
) -> None:
    api = await start_api(slow_delay_s=1.0)
    slow = await api.post("/api/users", json={"username": "slowpoke", "age": 3})
    fast = await api.post("/api/users", json={"username": "quick", "age": 3})
    slow_id, fast_id = (await slow.json())["id"], (await fast.json())["id"]
    await next_event(redis, streams[1], fast_id, timeout_s=0.8)
    assert (await api.get(f"/users/{slow_id}")).status == 404  # still being created
    event = await next_event(redis, streams[1], slow_id)
    assert event["type"] == "CreateUser::UserCreated"


async def test_the_same_id_twice_is_enqueued_once(
    start_api: ApiFactory, redis: aioredis.Redis, streams: tuple[str, str]
) -> None:
    api = await start_api()
    headers = {"X-Correlation-ID": "same-id"}
    for _ in range(2):
        resp = await api.post("/api/users", json={"username": "a", "age": 1}, headers=headers)
        assert resp.status == 202
        assert resp.headers["Location"] == "/users/same-id"
    assert await redis.xlen(streams[0]) == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "the body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object with username and age"),
        (b'{"age": 3}', "username must be a non-empty string"),
        (b'{"username": "a", "age": "3"}', "age must be an integer"),
        (b'{"username": "a", "age": true}', "age must be an integer"),
    ],
)
async def test_bad_input_is_400_and_enqueues_nothing(
    start_api: ApiFactory,
    redis: aioredis.Redis,
    streams: tuple[str, str],
    body: bytes,
    detail: str,
) -> None:
    api = await start_api()
    resp = await api.post("/api/users", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    assert (await resp.json(content_type=None))["detail"] == detail
    assert await redis.xlen(streams[0]) == 0


async def test_healthz(start_api: ApiFactory) -> None:
    api = await start_api()
    resp = await api.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


REPO = Path(__file__).resolve().parents[1]
DEMO_TIMEOUT_S = 45.0  # section f alone takes a few seconds; pytest's own timeout is 60s
RECEIVED = re.compile(
    r"^   receiver \| (?P<message_id>msg_\S+) user\.created status=succeeded route=create-user "
    r"correlation_id=(?P<correlation_id>demo-[0-9a-f]{12}) location=\S+ data=(?P<data>\{.*\})$",
    re.MULTILINE,
)


def test_the_demo_shows_a_signed_webhook_arriving(redis_url: str) -> None:
    """`python -m examples.users.demo --sections f`: subscribe, call with respond-async, and the
    receiver prints the verified event; the attempts log shows it delivered."""
    proc = subprocess.run(
        [sys.executable, "-m", "examples.users.demo", "--sections", "f"],
        cwd=REPO,
        env={**os.environ, "REDIS_URL": redis_url},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
    )
    out = proc.stdout
    logs = re.search(r"the logs are in (\S+)", out)
    if logs and proc.returncode == 0:
        shutil.rmtree(logs.group(1), ignore_errors=True)
    assert proc.returncode == 0, f"demo failed:\n{out}\n{proc.stderr}"
    # It ran under a prefix of its own and left nothing behind in the shared Redis.
    prefix = re.search(r"Redis keys   (\S+):\*", out)
    assert prefix, out
    leftover = redis_lib.Redis.from_url(redis_url).keys(f"{prefix.group(1)}:*")
    assert leftover == []
    assert "== (f) webhooks" in out
    assert "-> 201 Created" in out  # the subscription
    assert "Preference-Applied: respond-async" in out  # the call was answered 202 at once

    received = RECEIVED.search(out)
    assert received, f"no webhook line from the receiver in:\n{out}"
    correlation_id = received["correlation_id"]
    assert f"X-Correlation-ID: {correlation_id}" in out
    user = json.loads(received["data"])
    assert (user["id"], user["username"], user["age"]) == (correlation_id, "webhook-wendy", 28)
    assert "OK: the signed webhook arrived and verified" in out

    attempts = [
        json.loads(line) for line in out.splitlines() if line.startswith('     {"message_id": ')
    ]
    assert [(a["message_id"], a["type"], a["result"], a["response_status"]) for a in attempts] == [
        (received["message_id"], "user.created", "delivered", 204)
    ]
    assert "DELETE -> 204" in out  # the demo cleans its subscription up
    assert 'sidecar_webhook_attempts_total{event_type="user.created",result="delivered"}' in out
