"""Fair planning of delivery attempts (sidecar/webhooks/planner.py): `Slots.plan` reads the ready
queues round-robin across owners, a fresh owner first each time, within the global, per-owner
and per-endpoint caps. Pure bookkeeping, so pure unit tests."""

from __future__ import annotations

from collections import Counter

import pytest

from sidecar.config import Webhooks
from sidecar.webhooks.planner import PlannedRead, Slots, per_tenant_slots


def slots(**config: int) -> Slots:
    return Slots(Webhooks(**config))


def ready(*members: str) -> list[tuple[bytes, float]]:
    """Ready-set rows as the reader gets them: `owner|sub` members with their scores."""
    return [(member.encode(), float(n)) for n, member in enumerate(members)]


def owners(planned: list[PlannedRead]) -> list[str]:
    return [p.owner for p in planned]


def test_a_read_takes_the_owners_in_turn() -> None:
    s = slots(concurrency=4, per_subscription=1, per_tenant=4)
    planned = s.plan(ready("a|a1", "a|a2", "a|a3", "a|a4", "b|b1", "b|b2"))
    assert owners(planned) == ["a", "b", "a", "b"]
    assert [p.sub for p in planned] == ["a1", "b1", "a2", "b2"]  # each owner's in its order
    assert all(p.count == 1 for p in planned)
    first = planned[0]
    assert (first.member, first.score) == ("a|a1", 0.0)  # to forget it when found empty


def test_each_read_starts_with_the_next_owner() -> None:
    s = slots(concurrency=1, per_subscription=1, per_tenant=1)
    rows = ready("a|a1", "b|b1", "c|c1")
    firsts = [owners(s.plan(rows)) for _ in range(6)]
    assert firsts == [["a"], ["b"], ["c"], ["a"], ["b"], ["c"]]


def test_a_backlogged_owner_never_delays_another_for_long() -> None:
    # One free slot per read; owner a has a hundred busy queues, b one.
    s = slots(concurrency=1, per_subscription=1, per_tenant=1)
    rows = ready(*(f"a|a{n}" for n in range(100)), "b|b1")
    served = Counter(p.owner for _ in range(20) for p in s.plan(rows))
    assert served == {"a": 10, "b": 10}


def test_an_owner_takes_at_most_its_share() -> None:
    s = slots(concurrency=10, per_subscription=5, per_tenant=3)
    planned = s.plan(ready("a|a1", "a|a2", "b|b1"))
    by_owner = Counter()
    for p in planned:
        by_owner[p.owner] += p.count
    assert by_owner == {"a": 3, "b": 3}
    assert sum(p.count for p in planned) <= s.free()


def test_a_queue_is_read_for_as_many_attempts_as_may_start() -> None:
    s = slots(concurrency=3, per_subscription=4, per_tenant=8)
    [planned] = s.plan(ready("a|a1"))
    assert planned.count == 3  # the global cap is the tightest
    s = slots(concurrency=32, per_subscription=4, per_tenant=16)
    [planned] = s.plan(ready("a|a1"))
    assert planned.count == 4  # the endpoint's


def test_a_plan_never_exceeds_the_free_slots() -> None:
    s = slots(concurrency=5, per_subscription=2, per_tenant=5)
    planned = s.plan(ready("a|a1", "b|b1", "c|c1", "d|d1"))
    assert sum(p.count for p in planned) == 5
    assert [p.count for p in planned] == [2, 2, 1]


def test_attempts_in_flight_count_against_every_cap() -> None:
    s = slots(concurrency=4, per_subscription=2, per_tenant=3)
    s.take("a", "a1")
    s.take("a", "a1")
    assert (s.free(), s.sub_free("a1"), s.owner_free("a")) == (2, 0, 1)
    assert not s.can_start("a", "a1")
    assert s.can_start("a", "a2")
    planned = s.plan(ready("a|a1", "a|a2", "b|b1"))
    assert "a1" not in [p.sub for p in planned]  # no slot left for it: not read
    assert sum(p.count for p in planned if p.owner == "a") == 1  # the owner's last slot
    s.give_back("a", "a1")
    s.give_back("a", "a1")
    assert (s.free(), s.sub_free("a1"), s.owner_free("a"), s.in_flight) == (4, 2, 3, 0)


def test_a_failure_keeps_an_endpoints_slots_until_its_breaker_opens() -> None:
    s = slots(concurrency=10, per_subscription=4, per_tenant=10)
    s.mark("a1", delivered=False, slow=False)  # e.g. a 404: not a failure of the endpoint
    s.mark("a1", delivered=False, slow=True)  # a 5xx: one failure does not cost its slots
    assert s.sub_cap("a1") == 4
    assert [p.count for p in s.plan(ready("a|a1"))] == [4]
    for _ in range(4):  # five failures in a row (breaker.failures) open it
        s.mark("a1", delivered=False, slow=True)
    assert s.sub_cap("a1") == 0
    assert s.plan(ready("a|a1", "b|b1")) == [PlannedRead("b|b1", "b", "b1", 1.0, 4)]


def test_a_lingering_attempt_gives_its_global_slot_back_but_not_its_owners() -> None:
    s = slots(concurrency=2, per_subscription=1, per_tenant=2)
    s.take("a", "a1")
    s.take("a", "a2")
    assert s.free() == 0
    assert s.linger("a", "a1")
    assert (s.free(), s.lingering, s.owner_free("a"), s.sub_free("a1")) == (1, 1, 0, 1)
    assert owners(s.plan(ready("a|a3", "b|b1"))) == ["b"]  # a's share is still taken
    s.give_back("a", "a1", lingered=True)
    assert (s.free(), s.lingering, s.owner_free("a")) == (1, 0, 1)


def test_lingering_is_bounded() -> None:
    s = slots(concurrency=1, per_subscription=1, per_tenant=1)
    assert s.linger_cap == 3
    for n in range(3):
        s.take(f"o{n}", f"s{n}")
        assert s.linger(f"o{n}", f"s{n}")
    s.take("o3", "s3")
    assert not s.linger("o3", "s3")  # no room: it keeps its slot
    assert s.free() == 0


def test_every_other_read_puts_an_endpoint_known_to_deliver_first() -> None:
    s = slots(concurrency=1, per_subscription=1, per_tenant=1)
    s.mark("z1", delivered=True, slow=False)
    rows = ready(*(f"t{n}|t{n}s" for n in range(50)), "z|z1")
    picks = [owners(s.plan(rows)) for _ in range(4)]
    assert picks.count(["z"]) == 2  # the proven one on every other read
    assert picks[0] != ["z"] and picks[1] == ["z"]  # the others round-robin


def test_endpoints_not_known_to_deliver_leave_a_quarter_of_the_slots_to_those_that_do() -> None:
    s = slots(concurrency=8, per_subscription=4, per_tenant=8)
    s.mark("z1", delivered=True, slow=False)
    rows = ready(*(f"t{n}|t{n}s" for n in range(10)))
    assert sum(p.count for p in s.plan(rows)) == 6  # new endpoints: 3/4 of 8
    for n in range(6):
        s.take(f"t{n}", f"t{n}s")
    assert not s.can_start("t7", "t7s") and s.can_start("z", "z1")
    assert [(p.sub, p.count) for p in s.plan([*rows, (b"z|z1", 99.0)])] == [("z1", 2)]
    assert s.linger("t0", "t0s")  # a lingering attempt holds no slot of either kind
    assert s.can_start("t7", "t7s")


def test_a_full_process_plans_nothing() -> None:
    s = slots(concurrency=1, per_subscription=1)
    s.take("a", "a1")
    assert s.plan(ready("b|b1")) == []


def test_a_member_without_a_subscription_is_skipped() -> None:
    s = slots(concurrency=4)
    assert [p.member for p in s.plan(ready("nobody", "a|a1"))] == ["a|a1"]


@pytest.mark.parametrize(
    ("config", "share"),
    [
        ({}, 16),  # half of 32
        ({"concurrency": 4, "per_subscription": 4}, 4),  # room for two endpoints, at most 4
        ({"concurrency": 10, "per_subscription": 1}, 5),
        ({"concurrency": 1}, 1),
        ({"concurrency": 32, "per_tenant": 3}, 3),  # as configured
    ],
)
def test_the_owner_share(config: dict[str, int], share: int) -> None:
    assert per_tenant_slots(Webhooks(**config)) == share  # type: ignore[arg-type]
