"""The durable outbox (sidecar/webhooks/outbox.py) on a real Redis: messages enqueued once, the
ready index and the bell, attempts requeued only for a message that still exists, due retries
moved back to their queues, and a queue found empty forgotten only when nothing came since."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from sidecar.webhooks.keys import (
    DELIVERY_GROUP,
    bell_key,
    due_key,
    dues_key,
    message_key,
    queue_key,
    ready_key,
)
from sidecar.webhooks.outbox import (
    MESSAGE_TTL_S,
    Message,
    Outbox,
    create_group,
    group_lost,
    message_id_for,
    ready_member,
)


async def queued(redis: aioredis.Redis, prefix: str, owner: str, sub: str) -> list[dict[str, str]]:
    """The attempts waiting in a subscription's queue, oldest first."""
    entries = await redis.xrange(queue_key(prefix, owner, sub))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]


async def ready_members(redis: aioredis.Redis, prefix: str) -> dict[str, float]:
    return {m.decode(): s for m, s in await redis.zrange(ready_key(prefix), 0, -1, withscores=True)}


async def test_a_message_is_enqueued_once(redis: aioredis.Redis, key_prefix: str) -> None:
    outbox = Outbox(redis, key_prefix)
    assert await outbox.enqueue("msg_1", "t_a", "sub_1", "user.created", b'{"id": 1}', 1234)
    assert not await outbox.enqueue("msg_1", "t_a", "sub_1", "user.created", b"{}", 5678)
    assert await queued(redis, key_prefix, "t_a", "sub_1") == [
        {"m": "msg_1", "n": "1", "t": "scheduled"}
    ]
    message = await redis.hgetall(message_key(key_prefix, "t_a", "msg_1"))  # type: ignore[misc]
    assert message == {
        b"sub": b"sub_1",
        b"type": b"user.created",
        b"body": b'{"id": 1}',  # the first enqueue's: never overwritten
        b"created_ms": b"1234",
        b"trigger": b"scheduled",
        b"state": b"queued",
        b"attempts": b"0",
        b"trace": b"",
        b"ttl": str(MESSAGE_TTL_S).encode(),  # kept this long after its last attempt
    }
    ttl = await redis.ttl(message_key(key_prefix, "t_a", "msg_1"))
    assert MESSAGE_TTL_S - 60 < ttl <= MESSAGE_TTL_S
    groups = await redis.xinfo_groups(queue_key(key_prefix, "t_a", "sub_1"))
    assert [g["name"].decode() for g in groups] == [DELIVERY_GROUP]  # made with the queue
    assert list(await ready_members(redis, key_prefix)) == [ready_member("t_a", "sub_1")]
    assert await redis.xlen(bell_key(key_prefix)) == 1  # rung (a one-entry stream)


async def test_a_batch_says_how_many_were_new_and_marks_only_their_queues(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    outbox = Outbox(redis, key_prefix)
    assert await outbox.enqueue("msg_old", "t_a", "sub_old", "x", b"{}")
    await redis.delete(ready_key(key_prefix))
    batch = [
        Message("msg_old", "t_a", "sub_old", "x", b"{}", 1),
        Message("msg_a", "t_a", "sub_1", "x", b"{}", 1, traceparent="00-" + "1" * 32 + "-x"),
        Message("msg_b", "t_b", "sub_2", "x", b"{}", 1, trigger="test"),
    ]
    assert await outbox.enqueue_many(batch) == 2
    assert await outbox.enqueue_many([]) == 0
    assert set(await ready_members(redis, key_prefix)) == {"t_a|sub_1", "t_b|sub_2"}
    assert await queued(redis, key_prefix, "t_b", "sub_2") == [
        {"m": "msg_b", "n": "1", "t": "test"}
    ]
    trace = await redis.hget(message_key(key_prefix, "t_a", "msg_a"), "trace")  # type: ignore[misc]
    assert trace == b"00-" + b"1" * 32 + b"-x"


def test_message_ids_are_stable_per_completion_call_and_subscription() -> None:
    one = message_id_for("c-1", "caller-1", "sub_1")
    assert one == message_id_for("c-1", "caller-1", "sub_1")
    assert one.startswith("msg_") and len(one) == 4 + 26
    others = {
        message_id_for("c-2", "caller-1", "sub_1"),
        message_id_for("c-1", "caller-2", "sub_1"),
        message_id_for("c-1", "caller-1", "sub_2"),
    }
    assert one not in others and len(others) == 3


async def test_a_requeue_of_a_gone_message_queues_nothing(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    outbox = Outbox(redis, key_prefix)
    assert not await outbox.requeue("t_a", "sub_1", "msg_gone", 2, "manual")
    assert not await redis.exists(queue_key(key_prefix, "t_a", "sub_1"))
    assert await ready_members(redis, key_prefix) == {}


async def test_a_requeue_adds_one_attempt_of_an_existing_message(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    outbox = Outbox(redis, key_prefix)
    await outbox.enqueue("msg_1", "t_a", "sub_1", "x", b"{}")
    await redis.hset(message_key(key_prefix, "t_a", "msg_1"), "state", "failed")  # type: ignore[misc]
    await redis.delete(ready_key(key_prefix))
    assert await outbox.requeue("t_a", "sub_1", "msg_1", 4, "recover")
    assert await queued(redis, key_prefix, "t_a", "sub_1") == [
        {"m": "msg_1", "n": "1", "t": "scheduled"},
        {"m": "msg_1", "n": "4", "t": "recover"},
    ]
    state = await redis.hget(message_key(key_prefix, "t_a", "msg_1"), "state")  # type: ignore[misc]
    assert state == b"queued"
    assert list(await ready_members(redis, key_prefix)) == ["t_a|sub_1"]


async def test_due_retries_are_moved_back_to_their_queues(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    outbox = Outbox(redis, key_prefix)
    now = int(time.time() * 1000)
    await redis.zadd(
        due_key(key_prefix, "t_a"),
        {
            "sub_1|msg_1|2|scheduled": now - 10,
            "sub_2|msg_2|3|manual": now - 5,
            "sub_1|msg_3|2|scheduled": now + 60_000,  # not yet
        },
    )
    await outbox.scheduled("t_a", now + 60_000)
    await outbox.scheduled("t_a", now - 10)  # the earliest wins
    assert await redis.zscore(dues_key(key_prefix), "t_a") == now - 10
    assert await outbox.move_due(now) == 2
    assert await queued(redis, key_prefix, "t_a", "sub_1") == [
        {"m": "msg_1", "n": "2", "t": "scheduled"}
    ]
    assert await queued(redis, key_prefix, "t_a", "sub_2") == [
        {"m": "msg_2", "n": "3", "t": "manual"}
    ]
    assert await redis.zrange(due_key(key_prefix, "t_a"), 0, -1) == [b"sub_1|msg_3|2|scheduled"]
    assert await redis.zscore(dues_key(key_prefix), "t_a") == now + 60_000  # the next one
    assert set(await ready_members(redis, key_prefix)) == {"t_a|sub_1", "t_a|sub_2"}
    assert await outbox.move_due(now) == 0  # nothing else is due
    assert await outbox.move_due(now + 60_000) == 1
    assert await redis.zscore(dues_key(key_prefix), "t_a") is None  # none left for it


async def test_a_queue_found_empty_is_forgotten_unless_work_came_since(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    outbox = Outbox(redis, key_prefix)
    member = ready_member("t_a", "sub_1")
    await outbox.enqueue("msg_1", "t_a", "sub_1", "x", b"{}")
    seen = (await ready_members(redis, key_prefix))[member]
    # A reader found the queue empty at `seen`; meanwhile another message was enqueued.
    await outbox.enqueue("msg_2", "t_a", "sub_1", "x", b"{}")
    later = (await ready_members(redis, key_prefix))[member]
    assert later > seen
    await outbox.unready(member, seen)
    assert member in await ready_members(redis, key_prefix)  # not forgotten: work is there
    await outbox.unready(member, later)
    assert member not in await ready_members(redis, key_prefix)


async def test_a_group_is_created_once_and_a_lost_one_is_recognised(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    stream = f"{key_prefix}:s"
    await create_group(redis, stream, "g", "0")
    await create_group(redis, stream, "g", "$")  # exists: no error, not moved
    [group] = await redis.xinfo_groups(stream)
    assert group["last-delivered-id"] == b"0-0"
    await redis.delete(stream)
    with pytest.raises(ResponseError) as lost:
        await redis.xreadgroup("g", "c", {stream: ">"}, count=1)
    assert group_lost(lost.value)
    assert not group_lost(ResponseError("WRONGTYPE Operation against a key"))
