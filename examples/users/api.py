"""A legacy asynchronous users API: the kind of backend the sidecar is put in front of.

    POST /api/users {"username": "...", "age": N}
        → 202 Accepted, Location: /users/{id}, {"id": ..., "status": "pending"}
          and XADD users.commands  type=CreateUser::Requested correlation_id=<id> payload=<json>
    worker (XREADGROUP on users.commands), after a delay:
        → XADD users.events  type=CreateUser::UserCreated    correlation_id=<id> payload=<user>
                         or  type=CreateUser::UserNotCreated correlation_id=<id> payload={"reason"}
    GET /users/{id}
        → 404 {"status": "pending"} until the worker is done, then
          200 {id, username, age, created_at}, or 410 Gone {"status": "failed", "reason"}
    GET /healthz → 200 when Redis answers, else 503

The id is the request's `X-Correlation-ID` when it is a usable id (1-128 of `[A-Za-z0-9._:-]`,
the sidecar's own rule), else a new uuid4: the correlation id becomes the user id.
A second POST with an id already known enqueues nothing and answers 202 with the same Location.

Steering, for the demo: a username starting with "fail" or a negative age ends in UserNotCreated
("username rejected" / "age must be positive"); a username starting with "slow" takes
`slow_delay_s` (4 s by default, longer than the sidecar's 2 s budget); anything else takes a random
`delay_s` (50-200 ms by default). Commands are handled concurrently, so a slow one delays no other.

Redis: user records are hashes `{prefix}:user:{id}` that expire after `record_ttl_s` (so the example
does not litter a shared Redis); the two streams are named as configured, not prefixed (the
sidecar's config names `users.events` as is) and trimmed to about `stream_maxlen` entries. The
worker reads through the consumer group `{prefix}:workers`, created at startup, so commands sent
while it is busy or restarting are not lost; commands a crashed worker had in hand stay pending
(this example does not reclaim them).

Run it: `python -m examples.users.api --port 8000 --redis-url redis://127.0.0.1:6379/0`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import uuid
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger("examples.users.api")

COMMAND_REQUESTED = "CreateUser::Requested"
EVENT_CREATED = "CreateUser::UserCreated"
EVENT_NOT_CREATED = "CreateUser::UserNotCreated"

# The sidecar's rule for a client-supplied correlation id: reused as the user id when it matches.
USABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_USERNAME = 64


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """Everything the example API can be told; durations in seconds."""

    redis_url: str
    prefix: str = "users-example"
    commands_stream: str = "users.commands"
    events_stream: str = "users.events"
    delay_s: tuple[float, float] = (0.05, 0.2)  # uniform range for an ordinary command
    slow_delay_s: float = 4.0  # for usernames starting with "slow"
    record_ttl_s: int = 86400
    stream_maxlen: int = 10_000
    block_ms: int = 1000

    @property
    def group(self) -> str:
        """The worker's consumer group on the commands stream."""
        return f"{self.prefix}:workers"

    def user_key(self, user_id: str) -> str:
        """The hash holding one user's record."""
        return f"{self.prefix}:user:{user_id}"


CONFIG = web.AppKey("config", ApiConfig)
REDIS = web.AppKey("redis", aioredis.Redis)


class BadInput(ValueError):
    """The request body is not a valid user."""


def parse_user(body: object) -> tuple[str, int]:
    """(username, age) from a decoded JSON body, or raise `BadInput` saying what is wrong."""
    if not isinstance(body, dict):
        raise BadInput("the body must be a JSON object with username and age")
    username, age = body.get("username"), body.get("age")
    if not isinstance(username, str) or not username.strip():
        raise BadInput("username must be a non-empty string")
    if len(username) > MAX_USERNAME:
        raise BadInput(f"username must be at most {MAX_USERNAME} characters")
    # A negative age is accepted here on purpose: the worker refuses it later (UserNotCreated).
    if not isinstance(age, int) or isinstance(age, bool):
        raise BadInput("age must be an integer")
    return username.strip(), age


def decide(username: str, age: int, config: ApiConfig) -> tuple[str | None, float]:
    """(failure reason or None, processing delay in seconds) for one command."""
    name = username.lower()
    delay = config.slow_delay_s if name.startswith("slow") else random.uniform(*config.delay_s)
    if name.startswith("fail"):
        return "username rejected", delay
    if age < 0:
        return "age must be positive", delay
    return None, delay


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return web.Response(
        status=status, text=json.dumps(body), content_type="application/problem+json"
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------------------------
# HTTP handlers
# --------------------------------------------------------------------------------------------


async def create_user(request: web.Request) -> web.Response:
    """Accept a user creation: record it as pending, enqueue the command, answer 202."""
    config, redis = request.app[CONFIG], request.app[REDIS]
    try:
        body = json.loads(await request.read())
        username, age = parse_user(body)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and BadInput included
        detail = str(exc) if isinstance(exc, BadInput) else "the body is not valid JSON"
        return _problem(400, "Bad request", detail)
    offered = request.headers.get("X-Correlation-ID", "")
    user_id = offered if USABLE_ID.match(offered) else str(uuid.uuid4())
    key = config.user_key(user_id)
    headers = {"Location": f"/users/{user_id}"}
    try:
        if not await redis.hsetnx(key, "state", "pending"):  # type: ignore[misc]
            # Seen before (a retried request): idempotent, nothing is enqueued twice.
            state = _text(await redis.hget(key, "state") or b"pending")  # type: ignore[misc]
            return web.json_response({"id": user_id, "status": state}, status=202, headers=headers)
        payload = json.dumps({"id": user_id, "username": username, "age": age})
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"requested_at": _now_iso(), "request": payload})
            pipe.expire(key, config.record_ttl_s)
            pipe.xadd(
                config.commands_stream,
                {"type": COMMAND_REQUESTED, "correlation_id": user_id, "payload": payload},
                maxlen=config.stream_maxlen,
                approximate=True,
            )
            await pipe.execute()
    except RedisError as exc:
        logger.warning("cannot enqueue the command: %s", exc)
        return _problem(503, "Service unavailable", "the command queue is unreachable")
    logger.info("user %s requested (%s)", user_id, username)
    return web.json_response({"id": user_id, "status": "pending"}, status=202, headers=headers)


async def get_user(request: web.Request) -> web.Response:
    """The user once created; 404 pending before, 410 Gone with the reason if refused."""
    config, redis = request.app[CONFIG], request.app[REDIS]
    user_id = request.match_info["id"]
    try:
        raw: Mapping[bytes, bytes] = await redis.hgetall(config.user_key(user_id))  # type: ignore[misc]
    except RedisError:
        return _problem(503, "Service unavailable", "the user store is unreachable")
    record = {_text(k): _text(v) for k, v in raw.items()}
    state = record.get("state")
    if state == "created":
        return web.json_response(json.loads(record["user"]))
    if state == "failed":
        body = {"id": user_id, "status": "failed", "reason": record.get("reason", "")}
        return web.json_response(body, status=410)
    if state == "pending":
        body = {"id": user_id, "status": "pending"}
        return web.json_response(body, status=404, headers={"Retry-After": "1"})
    return web.json_response({"id": user_id, "status": "not_found"}, status=404)


async def healthz(request: web.Request) -> web.Response:
    """200 when Redis answers, else 503."""
    try:
        await request.app[REDIS].ping()
    except RedisError as exc:
        return web.json_response({"status": "unavailable", "reason": str(exc)}, status=503)
    return web.json_response({"status": "ok"})


# --------------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------------


class Worker:
    """Consumes CreateUser::Requested commands and emits the outcome event after a delay."""

    def __init__(self, config: ApiConfig, redis: aioredis.Redis, reader: aioredis.Redis) -> None:
        self.config = config
        self.redis = redis  # shared pool: records, events, acks
        self.reader = reader  # dedicated connection for the blocking XREADGROUP
        self.consumer = f"worker-{uuid.uuid4().hex[:8]}"
        self._tasks: set[asyncio.Task[None]] = set()

    async def ensure_group(self, start_id: str = "$") -> None:
        """Create the consumer group (and the stream) unless it exists."""
        try:
            await self.reader.xgroup_create(
                self.config.commands_stream, self.config.group, id=start_id, mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self) -> None:
        """Read commands until cancelled; ride out Redis outages with a growing pause."""
        pause_s, regroup = 0.1, False
        while True:
            try:
                if regroup:
                    # The group or the stream is gone (deleted, or Redis restarted without
                    # persistence): whatever the stream holds now was sent since, so read it all.
                    await self.ensure_group("0")
                    regroup = False
                batches = await self.reader.xreadgroup(
                    self.config.group,
                    self.consumer,
                    {self.config.commands_stream: ">"},
                    count=100,
                    block=self.config.block_ms,
                )
                pause_s = 0.1
            except ResponseError as exc:
                if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                logger.warning("consumer group lost (%s); recreating it", exc)
                regroup = True
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                logger.warning("Redis unreachable (%s); retrying in %.1fs", exc, pause_s)
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, 5.0)
                continue
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    self._spawn(self.handle(_text(entry_id), fields))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def handle(self, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        """Process one command: wait, decide, store the outcome and publish its event."""
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        try:
            if decoded.get("type") != COMMAND_REQUESTED:
                raise ValueError(f"unknown command type {decoded.get('type')!r}")
            request = json.loads(decoded["payload"])
            user_id = str(request["id"])
            username, age = parse_user(request)
        except (KeyError, ValueError) as exc:
            logger.warning("dropping malformed command %s: %s", entry_id, exc)
            await self._ack(entry_id)
            return
        reason, delay_s = decide(username, age, self.config)
        await asyncio.sleep(delay_s)
        key = self.config.user_key(user_id)
        if reason is None:
            user = {"id": user_id, "username": username, "age": age, "created_at": _now_iso()}
            event_type, payload = EVENT_CREATED, json.dumps(user)
            record = {"state": "created", "user": payload}
        else:
            event_type, payload = EVENT_NOT_CREATED, json.dumps({"reason": reason})
            record = {"state": "failed", "reason": reason}
        try:
            # Store first, then publish, in one transaction: whoever reacts to the event (the
            # sidecar, a client following Location) finds the user already there.
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=record)
                pipe.expire(key, self.config.record_ttl_s)
                pipe.xadd(
                    self.config.events_stream,
                    {"correlation_id": user_id, "type": event_type, "payload": payload},
                    maxlen=self.config.stream_maxlen,
                    approximate=True,
                )
                pipe.xack(self.config.commands_stream, self.config.group, entry_id)
                await pipe.execute()
        except RedisError as exc:
            logger.error("cannot publish %s for %s: %s (left pending)", event_type, user_id, exc)
            return
        logger.info("%s %s after %.0f ms", event_type, user_id, delay_s * 1000)

    async def _ack(self, entry_id: str) -> None:
        with contextlib.suppress(RedisError):
            await self.redis.xack(self.config.commands_stream, self.config.group, entry_id)

    async def close(self) -> None:
        """Cancel the commands in hand and wait for them to stop."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# Wiring
# --------------------------------------------------------------------------------------------


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    """The shared Redis pool."""
    app[REDIS] = aioredis.Redis.from_url(app[CONFIG].redis_url, socket_connect_timeout=2.0)
    yield
    await app[REDIS].aclose()


STOP_WAIT_S = 2.0  # how long the command worker's blocking read may take to end when stopped


async def worker_ctx(app: web.Application) -> AsyncIterator[None]:
    """The command worker: its group exists before the first request is accepted."""
    config = app[CONFIG]
    # The blocking read gets its own connection, with a socket timeout above the block time.
    reader = aioredis.Redis.from_url(
        config.redis_url,
        socket_connect_timeout=2.0,
        socket_timeout=config.block_ms / 1000 + 5.0,
    )
    worker = Worker(config, app[REDIS], reader)
    try:
        await worker.ensure_group()
    except RedisError:
        await reader.aclose()
        raise
    loop_task = asyncio.create_task(worker.run(), name="users-example-worker")
    yield
    loop_task.cancel()
    _, pending = await asyncio.wait({loop_task}, timeout=STOP_WAIT_S)
    if pending:  # a blocking read that did not end when cancelled: cut its connection
        await reader.connection_pool.disconnect()
        loop_task.cancel()
        await asyncio.wait({loop_task}, timeout=STOP_WAIT_S)
    await worker.close()
    await reader.aclose()


def create_api_app(
    redis_url: str,
    *,
    prefix: str = "users-example",
    commands_stream: str = "users.commands",
    events_stream: str = "users.events",
    delay_s: tuple[float, float] = (0.05, 0.2),
    slow_delay_s: float = 4.0,
    record_ttl_s: int = 86400,
    block_ms: int = 1000,
) -> web.Application:
    """The example API with its worker; no I/O until the app starts."""
    app = web.Application()
    app[CONFIG] = ApiConfig(
        redis_url=redis_url,
        prefix=prefix,
        commands_stream=commands_stream,
        events_stream=events_stream,
        delay_s=delay_s,
        slow_delay_s=slow_delay_s,
        record_ttl_s=record_ttl_s,
        block_ms=block_ms,
    )
    app.router.add_post("/api/users", create_user)
    app.router.add_get("/users/{id}", get_user)
    app.router.add_get("/healthz", healthz)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(worker_ctx)
    return app


def main(argv: list[str] | None = None) -> None:
    """`python -m examples.users.api`: serve the example API until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.users.api", description="The legacy async users API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--prefix", default="users-example", help="prefix of the record keys")
    parser.add_argument("--commands-stream", default="users.commands")
    parser.add_argument("--events-stream", default="users.events")
    parser.add_argument("--min-delay", type=float, default=0.05, help="seconds (default 0.05)")
    parser.add_argument("--max-delay", type=float, default=0.2, help="seconds (default 0.2)")
    parser.add_argument("--slow-delay", type=float, default=4.0, help="seconds (default 4)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app = create_api_app(
        args.redis_url,
        prefix=args.prefix,
        commands_stream=args.commands_stream,
        events_stream=args.events_stream,
        delay_s=(args.min_delay, max(args.min_delay, args.max_delay)),
        slow_delay_s=args.slow_delay,
    )
    web.run_app(app, host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
