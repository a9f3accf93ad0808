"""The soak's short variant, in the suite: the harness of `make soak` (bench/soak/) run for 36 s
at 20 calls/s (bursts of 5x) on 3 replicas of this checkout sharing a Redis with AOF, with one
replica SIGKILLed and restarted, one Redis restart (SIGTERM, AOF) and one replica SIGSTOPped and
resumed, against a receiver that verifies every signature and fails 3 % and hangs 1 % of
deliveries. Every delivery the clients and the operator are owed arrives, and no answer of the
sidecar's own is a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import Options, soak
from bench.soak.ledger import markdown

pytestmark = pytest.mark.timeout(150)


async def test_under_faults_nothing_is_missing_and_no_answer_of_ours_is_a_5xx(
    tmp_path: Path,
) -> None:
    ledger = await soak(
        Options(
            minutes=0.6,
            rate=20.0,
            burst_every_s=20.0,
            faults="short",
            drain_s=20.0,
            stop_for_s=10.0,
            label="test suite (short)",
            workdir=tmp_path,
        )
    )
    shown = markdown(ledger)
    faults = ledger["faults"]
    assert [f["kind"] for f in faults] == ["replica-kill", "redis-term", "replica-stop"], shown
    assert not [f for f in faults if f["note"].startswith("could not")], shown
    deliveries = ledger["deliveries"]
    assert deliveries["expected"] >= 1000, shown  # the load ran: a ledger of nothing proves nothing
    assert ledger["calls"]["ours_5xx"] == 0, shown
    assert (deliveries["missing"], deliveries["dropped"]) == (0, 0), shown
