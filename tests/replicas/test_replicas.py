"""Three replicas on one Redis, and on a Redis Cluster: real `sidecar run` processes with their
own ports and the same `key_prefix` and routes, in front of one jobs API, pushing webhooks to one
receiver.

1. Calls held on every replica at once all get their own result, each from the replica that
   holds it, though every replica reads every completion.
2. Each completion reaches each matching subscription (the operator's, and each client's own)
   exactly once, signed; every attempt is made by one replica.
3. A replica SIGKILLed while its attempts are in flight loses nothing: another takes them over
   within `claim_after` + half of it, and only those attempts reach the receiver twice.
4. A replica started later joins: what happened while two ran is all delivered, and the third
   serves synchronised calls and makes deliveries.

Waits are bounded and await the receiver's requests, the replicas' metrics, or Redis becoming
quiet (every completion dispatched, every queue empty, no retry scheduled).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import aiohttp

from ..helpers import until, until_true
from ..processes import SidecarProcess
from .support import (
    CLAIM_AFTER_S,
    CLIENT_A,
    CLIENT_B,
    DONE,
    FAILED,
    OPERATOR,
    TAKEOVER_SLACK_S,
    TIMEOUT_S,
    Answer,
    JobsApi,
    Receiver,
    RedisUnderTest,
    Replicas,
    all_delivered,
    attempt_lines,
    attempts_log,
    call,
    expected_result,
    kill,
    metric_total,
    replica_config,
    subscribe,
)

REPLICAS = 3
# Calls each replica holds at once in the first test; more by hand, e.g.
# REPLICAS_HELD_PER_REPLICA=3000 (9,000 held: this process then needs ~19,000 open files).
HELD_PER_REPLICA = int(os.environ.get("REPLICAS_HELD_PER_REPLICA", "100"))


def check_answer(answer: Answer, api: JobsApi) -> None:
    """A call answered synchronously with its own result (or its own failure)."""
    assert api.calls[answer.correlation_id] == answer.body  # the id is this call's
    if answer.body.get("fail"):
        assert answer.status == 500, answer
        assert answer.json["correlation_id"] == answer.correlation_id
    else:
        assert answer.status == 200, answer
        assert answer.json == expected_result(answer.body, answer.correlation_id)


def credential(n: int) -> dict[str, str]:
    return CLIENT_A if n % 2 == 0 else CLIENT_B


def check_exactly_once(
    receiver: Receiver, hook: str, secret: str, expected: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The hook got one 2xx delivery per expected call (by correlation id: its body), none
    missing, none twice, each signed with the subscription's secret; the payloads."""
    delivered = receiver.delivered(hook)
    ids = Counter(h.webhook_id for h in delivered)
    assert [i for i, n in ids.items() if n > 1] == [], f"{hook}: delivered twice"
    payloads = [h.payload(secret) for h in delivered]
    got = sorted(p["correlation_id"] for p in payloads)
    assert got == sorted(expected), f"{hook}: {len(got)} delivered, {len(expected)} expected"
    for p in payloads:
        body = expected[p["correlation_id"]]
        if body.get("fail"):
            assert (p["type"], p["status"]) == (FAILED, "failed")
        else:
            assert (p["type"], p["status"]) == (DONE, "succeeded")
            assert p["data"] == expected_result(body, p["correlation_id"])
        assert p["route"] == "jobs"
    return payloads


# --------------------------------------------------------------------------------------------
# 1. Synchronised calls through every replica
# --------------------------------------------------------------------------------------------


async def test_calls_held_on_every_replica_each_get_their_own_result(
    api: JobsApi,
    replicas: Replicas,
    http: aiohttp.ClientSession,
    redis_under_test: RedisUnderTest,
) -> None:
    api.auto = False  # the backend completes the jobs once every call is held
    sidecars = await replicas.start_many([replica_config(api) for _ in range(REPLICAS)])
    total = HELD_PER_REPLICA * REPLICAS
    calls = [
        asyncio.create_task(call(http, sidecars[n % REPLICAS], {"n": n}, credential(n)))
        for n in range(total)
    ]

    async def all_held() -> bool:
        held = [
            await metric_total(http, s, "sidecar_waiting_requests", route="jobs") for s in sidecars
        ]
        return held == [HELD_PER_REPLICA] * REPLICAS

    await until_true(all_held, timeout_s=20, every_s=0.05, what="calls held on every replica")
    assert not any(c.done() for c in calls)
    assert len(api.calls) == total
    ids = list(api.calls)
    random.shuffle(ids)
    await api.complete(ids)  # one batch, in no particular order
    answers = await asyncio.gather(*calls)

    for answer in answers:
        check_answer(answer, api)
    assert len({a.correlation_id for a in answers}) == total
    for sidecar in sidecars:
        # Each replica answered its own calls synchronously, woken by its own completions
        # only, though it read all of them.
        sync = await metric_total(
            http, sidecar, "sidecar_requests_total", route="jobs", outcome="sync_success"
        )
        assert sync == HELD_PER_REPLICA
        events = redis_under_test.stream
        matched = await metric_total(
            http, sidecar, "sidecar_stream_events_total", stream=events, result="matched"
        )
        unmatched = await metric_total(
            http, sidecar, "sidecar_stream_events_total", stream=events, result="unmatched"
        )
        assert (matched, unmatched) == (HELD_PER_REPLICA, total - HELD_PER_REPLICA)
    print(f"\n[{redis_under_test.mode}] {REPLICAS} replicas held {total} calls at once")


# --------------------------------------------------------------------------------------------
# 2. Exactly once per (completion, subscription)
# --------------------------------------------------------------------------------------------


async def test_each_completion_reaches_each_matching_subscription_exactly_once(
    api: JobsApi,
    replicas: Replicas,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    redis_under_test: RedisUnderTest,
) -> None:
    # A per-attempt timeout no busy machine reaches: a late answer would be a (documented)
    # duplicate, and this test is about replicas never making one attempt twice.
    configs = [replica_config(api, timeout="10s") for _ in range(REPLICAS)]
    sidecars = await replicas.start_many(configs)
    # Created through different replicas: every one sees every subscription.
    op = await subscribe(http, sidecars[0], OPERATOR, receiver.url("/hook/op"), ["*"])
    sub_a = await subscribe(http, sidecars[1], CLIENT_A, receiver.url("/hook/a"), [DONE])
    sub_b = await subscribe(http, sidecars[2], CLIENT_B, receiver.url("/hook/b"), [DONE, FAILED])

    count = 60  # every 5th fails; even ones are client a's, odd ones client b's
    answers = await asyncio.gather(
        *(
            call(http, sidecars[n % REPLICAS], {"n": n, "fail": n % 5 == 4}, credential(n))
            for n in range(count)
        )
    )
    for answer in answers:
        check_answer(answer, api)
    by_id = {a.correlation_id: a.body for a in answers}
    expected = {
        "op": by_id,  # the operator's gets every client's completions, failures too
        "a": {c: b for c, b in by_id.items() if b["n"] % 2 == 0 and not b["fail"]},
        "b": {c: b for c, b in by_id.items() if b["n"] % 2 == 1},
    }

    await all_delivered(receiver, expected, timeout_s=20)
    await redis_under_test.quiet()

    assert all(h.delivered for h in receiver.hits)  # nothing failed, nothing held
    for hook, sub in (("op", op), ("a", sub_a), ("b", sub_b)):
        check_exactly_once(receiver, hook, sub["secret"], expected[hook])
    messages = sum(len(e) for e in expected.values())
    assert len({h.webhook_id for h in receiver.hits}) == messages == len(receiver.hits)

    # Each message was attempted by one replica only, once. (A replica logs an attempt just
    # after writing its outcome: the last lines may still be on their way.)
    def logged() -> list[tuple[int, dict[str, Any]]]:
        return [(s.proc.pid, line) for s in sidecars for line in attempt_lines(s)]

    await until(lambda: len(logged()) >= messages, timeout_s=5, every_s=0.05)
    lines = logged()
    assert len(lines) == messages
    assert {line["result"] for _, line in lines} == {"delivered"}
    assert len({(line["sub_id"], line["message_id"]) for _, line in lines}) == messages
    by_replica = Counter(pid for pid, _ in lines)
    senders = Counter(h.sender for h in receiver.hits)
    assert senders == by_replica  # the receiver saw each replica send what it logged
    print(
        f"\n[{redis_under_test.mode}] {messages} messages from {count} completions, "
        f"made per replica: {sorted(by_replica.values())}"
    )


# --------------------------------------------------------------------------------------------
# 3. SIGKILL mid-delivery
# --------------------------------------------------------------------------------------------


async def test_a_replica_killed_mid_delivery_loses_nothing(
    api: JobsApi,
    replicas: Replicas,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    redis_under_test: RedisUnderTest,
) -> None:
    configs = [
        replica_config(api, timeout=f"{TIMEOUT_S}s", claim_after=f"{CLAIM_AFTER_S}s")
        for _ in range(REPLICAS)
    ]
    sidecars = await replicas.start_many(configs)
    op = await subscribe(http, sidecars[0], OPERATOR, receiver.url("/hook/op"), ["*"])
    sub_a = await subscribe(http, sidecars[1], CLIENT_A, receiver.url("/hook/a"), [DONE])

    # Calls answered 202 at once (tracked for their webhooks); then the backend completes
    # them all in one batch, so no completion is still being dispatched when the kill comes.
    api.auto = False
    count = 12
    answers = await asyncio.gather(
        *(
            call(
                http,
                sidecars[n % REPLICAS],
                {"n": n},
                {**credential(n), "Prefer": "respond-async"},
            )
            for n in range(count)
        )
    )
    assert {a.status for a in answers} == {202}
    by_id = {a.correlation_id: a.body for a in answers}
    expected = {"op": by_id, "a": {c: b for c, b in by_id.items() if b["n"] % 2 == 0}}

    # The replica that makes the first attempt is the victim: the receiver holds its requests
    # (and answers everyone else's); it is killed while they are in flight.
    receiver.hold_first_sender = True
    # Not a wait for anything: the replicas look for abandoned attempts every half of
    # claim_after, in step with their start; a random offset makes runs cover every phase.
    await asyncio.sleep(random.uniform(0, CLAIM_AFTER_S / 2))
    await api.complete(by_id)
    await receiver.wait_for(lambda: receiver.victim is not None)
    [victim] = [s for s in sidecars if s.proc.pid == receiver.victim]
    await kill(victim)
    killed_at = time.monotonic()
    # What Redis says the victim left: the attempts it had read and not finished.
    abandoned = [
        attempt
        for sub in (op, sub_a)
        for attempt in await redis_under_test.pending(sub["id"])
        if f"-{victim.proc.pid}-" in attempt.consumer
    ]

    await all_delivered(receiver, expected, timeout_s=10)
    await redis_under_test.quiet()

    # The requests the receiver never answered: the victim's, in flight when it was killed
    # (and within its per-attempt timeout, so it never gave up on one itself).
    held = [h for h in receiver.hits if h.status is None]
    assert held and {h.sender for h in held} <= {victim.proc.pid, None}
    assert killed_at - held[0].arrived < TIMEOUT_S, "killed too late: its attempt timed out"
    assert {h.webhook_id for h in held} <= {a.message_id for a in abandoned}

    # Nothing lost, nothing delivered twice; signed as ever.
    for hook, sub in (("op", op), ("a", sub_a)):
        check_exactly_once(receiver, hook, sub["secret"], expected[hook])
    # The only requests a receiver saw twice are those in flight on the killed replica.
    receipts = Counter((h.hook, h.webhook_id) for h in receiver.hits)
    twice = {key for key, n in receipts.items() if n > 1}
    assert twice == {(h.hook, h.webhook_id) for h in held}
    assert max(receipts.values()) == 2
    live = {s.proc.pid for s in sidecars if s is not victim}
    assert {h.sender for h in receiver.hits if h.delivered} <= live
    # Every attempt the victim had read was taken over by a live replica, once, and made
    # within claim_after + half of it (the claim check's period) of the kill.
    claimed = [
        (line["sub"], line["entry"])
        for s in sidecars
        if s is not victim
        for line in s.logs
        if line.get("message") == "claimed an abandoned attempt"
    ]
    assert sorted(claimed) == sorted((a.sub_id, a.entry) for a in abandoned)
    delivered = {h.webhook_id: h for h in receiver.hits if h.delivered}
    takeovers = []
    for attempt in abandoned:
        again = delivered[attempt.message_id]
        assert again.sender in live
        takeovers.append(again.arrived - killed_at)
    assert max(takeovers) <= CLAIM_AFTER_S * 1.5 + TAKEOVER_SLACK_S, takeovers
    for first in held:
        again = delivered[first.webhook_id]
        assert again.body == first.body
        # Never taken over before claim_after had passed since the attempt began: until
        # then it might still be live.
        assert again.arrived - first.arrived >= CLAIM_AFTER_S - 0.25
    # The attempts logs: one delivered attempt per message, nothing else.
    survivor = next(s for s in sidecars if s is not victim)
    for hook, sub in (("op", op), ("a", sub_a)):
        log = await attempts_log(http, survivor, sub["id"])
        assert [a["result"] for a in log] == ["delivered"] * len(expected[hook])
        assert len({a["message_id"] for a in log}) == len(log)
    print(
        f"\n[{redis_under_test.mode}] killed a replica with {len(held)} attempts in flight "
        f"({len(abandoned)} read); taken over after "
        f"{min(takeovers):.2f}-{max(takeovers):.2f}s; receipts twice: {len(twice)}"
    )


# --------------------------------------------------------------------------------------------
# 4. A replica started later
# --------------------------------------------------------------------------------------------


async def test_a_replica_started_later_catches_up_and_takes_part(
    api: JobsApi,
    replicas: Replicas,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    redis_under_test: RedisUnderTest,
) -> None:
    def config() -> dict[str, Any]:  # its own ports each time
        return replica_config(api, timeout="5s", schedule=["250ms"] * 40)

    two = await replicas.start_many([config(), config()])
    op = await subscribe(http, two[0], OPERATOR, receiver.url("/hook/op"), ["*"])
    sub_a = await subscribe(http, two[1], CLIENT_A, receiver.url("/hook/a"), [DONE])
    expected: dict[str, dict[str, Any]] = {"op": {}, "a": {}}

    async def calls(through: list[SidecarProcess], start: int, count: int) -> None:
        answers = await asyncio.gather(
            *(
                call(http, through[n % len(through)], {"n": n}, credential(n))
                for n in range(start, start + count)
            )
        )
        for answer in answers:
            check_answer(answer, api)
            expected["op"][answer.correlation_id] = answer.body
            if answer.body["n"] % 2 == 0:
                expected["a"][answer.correlation_id] = answer.body

    # While two replicas run, client a's receiver is down: its messages wait for a retry.
    receiver.modes["a"] = "fail"
    await calls(two, 0, 10)
    await receiver.wait_for(
        lambda: (
            len(receiver.delivered("op")) == 10
            and len({h.webhook_id for h in receiver.of("a")}) == 5
        )
    )
    assert not receiver.delivered("a")

    third = await replicas.start(config())
    receiver.modes["a"] = "ok"  # back: the backlog drains
    await calls([third], 10, 6)  # the third serves synchronised calls
    everyone = [*two, third]
    n = 16
    made = {"result": "delivered"}  # attempts of the third that delivered
    for _ in range(10):  # more traffic until the third has made deliveries too
        if await metric_total(http, third, "sidecar_webhook_attempts_total", **made) > 0:
            break
        await calls(everyone, n, 9)
        n += 9
        await receiver.wait_for(lambda: len(receiver.delivered("op")) == len(expected["op"]))
    assert await metric_total(http, third, "sidecar_webhook_attempts_total", **made) > 0

    await all_delivered(receiver, expected, timeout_s=15)
    await redis_under_test.quiet()

    for hook, sub in (("op", op), ("a", sub_a)):
        check_exactly_once(receiver, hook, sub["secret"], expected[hook])
    assert all(h.status == 500 for h in receiver.of("a") if not h.delivered)
    made_by_third = [h for h in receiver.hits if h.sender == third.proc.pid and h.delivered]

    def logged_by_third() -> list[dict[str, Any]]:
        return [x for x in attempt_lines(third) if x["result"] == "delivered"]

    # A line is written just after the outcome.
    await until(lambda: len(logged_by_third()) >= len(made_by_third), timeout_s=5, every_s=0.05)
    assert made_by_third and len(made_by_third) == len(logged_by_third())
    print(
        f"\n[{redis_under_test.mode}] the late replica delivered {len(made_by_third)} of "
        f"{sum(len(e) for e in expected.values())} messages"
    )
