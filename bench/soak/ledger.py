"""The soak's ledger, in the manner of Outpost's load test: what was sent, what was answered, what
was published, and whether every delivery that should have happened did.

    deliveries expected = delivered + dropped + missing      (duplicates counted beside)

A delivery is expected for every completion the example API published for a call of ours: one to
the calling client's subscription and one to the operator's. Delivered is a (subscription, call)
pair whose webhook the receiver verified and answered 2xx; a duplicate is any further 2xx for the
same pair. Dropped is what the sidecar says it gave up on (its dead letters); missing is the rest,
split by what the receiver and Redis show (a client delivery whose operator twin arrived means
the call's tracking record was never written; a message record without a body is stuck).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .load import Call, Completions, Load
from .receiver import Receiver

OPERATOR = "operator"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
COUNTED = (
    "sidecar_webhook_attempts_total",
    "sidecar_webhook_dead_letters_total",
    "sidecar_webhook_completions_dead_lettered_total",
    "sidecar_webhook_completions_held_total",
    "sidecar_internal_errors_total",
)
GAUGES = ("sidecar_webhook_queue_depth",)


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value for the samples the ledger reads."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match.group(1).startswith(COUNTED + GAUGES):
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile (nearest rank), None when there is nothing."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log_counts(paths: list[Path]) -> dict[str, int]:
    """ERROR / WARNING lines and tracebacks in the replicas' logs, and the messages of errors."""
    counts: Counter[str] = Counter()
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if "Traceback (most recent call last)" in line or '"exc_info"' in line:
                counts["tracebacks"] += 1
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                counts["error lines"] += 1
                counts[f"error: {str(record.get('message'))[:60]}"] += 1
            elif isinstance(record, dict) and record.get("level") == "warning":
                counts["warning lines"] += 1
    return dict(counts)


def undelivered(load: Load, completions: Completions, receiver: Receiver) -> list[str]:
    """The correlation ids of our calls' completions that some subscription has not received."""
    ours = {call.cid: call.client for call in load.calls}
    return [
        cid
        for cid in completions.seen
        if cid in ours
        and not (
            (f"client-{ours[cid]}", cid) in receiver.delivered
            and (OPERATOR, cid) in receiver.delivered
        )
    ]


def deliveries(
    load: Load,
    completions: Completions,
    receiver: Receiver,
    dead_letters: int,
    lost_by_redis: set[str] | None = None,
) -> dict[str, Any]:
    """The expected/delivered/duplicates/missing balance, per kind of subscription.

    Dropped: what the sidecar dead-lettered, and completions whose stream entry Redis itself
    lost (`lost_by_redis`) before the sidecar could read them."""
    lost_by_redis = lost_by_redis or set()
    ours = {call.cid: call for call in load.calls}
    completed = [cid for cid in completions.seen if cid in ours]
    expected = delivered = duplicates = operator_only = 0
    missing_by: Counter[str] = Counter()
    missing_examples: list[str] = []
    delays_s: list[float] = []
    for cid in completed:
        client = f"client-{ours[cid].client}"
        for name in (client, OPERATOR):
            expected += 1
            got = receiver.delivered.get((name, cid))
            if got:
                delivered += 1
                delays_s.append(receiver.first_delivery[(name, cid)] - completions.seen[cid][1])
                duplicates += sum(got.values()) - 1
                continue
            if cid in lost_by_redis:
                missing_by["lost by Redis: the stream entry is gone"] += 1
            elif name == client and (OPERATOR, cid) in receiver.delivered:
                operator_only += 1
                missing_by["client: went to the operator only (call not tracked)"] += 1
            else:
                missing_by[f"{'operator' if name == OPERATOR else 'client'}: not delivered"] += 1
            if len(missing_examples) < 5:
                missing_examples.append(f"{name} {cid}")
    lost = missing_by.pop("lost by Redis: the stream entry is gone", 0)
    not_delivered = sum(missing_by.values())
    dead = min(dead_letters, not_delivered)
    dropped = dead + lost
    reasons = [
        f"{dead} dead-lettered by the sidecar" if dead else "",
        f"{lost} lost by Redis (the completion's stream entry is gone)" if lost else "",
    ]
    return {
        "completions_of_our_calls": len(completed),
        "expected": expected,
        "delivered": delivered,
        "duplicates": duplicates,
        "dropped": dropped,
        "dropped_reason": "; ".join(r for r in reasons if r),
        "missing": not_delivered - dead,
        "missing_by": dict(missing_by),
        "client_missing": sum(v for k, v in missing_by.items() if k.startswith("client")),
        "operator_missing": sum(v for k, v in missing_by.items() if k.startswith(OPERATOR)),
        "missing_examples": missing_examples,
        "delivery_p50_s": percentile(delays_s, 0.50),
        "delivery_p99_s": percentile(delays_s, 0.99),
        "delivery_max_s": max(delays_s, default=None),
    }


def calls_summary(calls: list[Call]) -> dict[str, Any]:
    """Sent, answered by status, ours among the 5xx, errors, latency."""
    by_status: Counter[str] = Counter()
    for call in calls:
        by_status[str(call.status) if call.status is not None else f"no answer: {call.error}"] += 1
    answered = [c.elapsed_s * 1000 for c in calls if c.status is not None]
    return {
        "sent": len(calls),
        "by_status": dict(sorted(by_status.items())),
        "ours_5xx": sum(1 for c in calls if c.ours),
        "correlation_id_replaced": sum(1 for c in calls if c.sent_cid),
        "upstream_5xx": sum(1 for c in calls if c.status and c.status >= 500 and not c.ours),
        "p50_ms": percentile(answered, 0.50),
        "p99_ms": percentile(answered, 0.99),
    }


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(ledger: dict[str, Any]) -> str:
    """The ledger as the markdown docs/soak.md quotes."""
    cfg, calls, dl = ledger["configuration"], ledger["calls"], ledger["deliveries"]
    out = [f"### Soak ledger: {cfg['label']}", ""]
    out += ["| configuration | |", "|---|---|"]
    out += [f"| {k} | {fmt(v)} |" for k, v in cfg.items() if k != "label"]
    out += ["", "| calls | |", "|---|---|", f"| sent | {fmt(calls['sent'])} |"]
    out += [f"| answered {k} | {fmt(v)} |" for k, v in calls["by_status"].items()]
    out += [
        f"| 5xx of ours (sidecar problem documents) | {fmt(calls['ours_5xx'])} |",
        f"| 5xx of the upstream, passed through | {fmt(calls['upstream_5xx'])} |",
        "| answered with another correlation id than sent | "
        f"{fmt(calls['correlation_id_replaced'])} |",
        f"| p50 / p99 latency (ms) | {fmt(calls['p50_ms'])} / {fmt(calls['p99_ms'])} |",
    ]
    out += [f"| load balancer: {k} | {fmt(v)} |" for k, v in ledger["load_balancer"].items()]
    out += [
        f"| seconds with no replica ready | {fmt(ledger['readiness']['none_ready_s'])} |",
        "",
        "| deliveries | |",
        "|---|---|",
        f"| completions published (all) | {fmt(ledger['completions']['published'])} |",
        f"| completions of our calls | {fmt(dl['completions_of_our_calls'])} |",
        f"| **expected** (client + operator) | **{fmt(dl['expected'])}** |",
        f"| delivered | {fmt(dl['delivered'])} |",
        f"| dropped | {fmt(dl['dropped'])} {dl['dropped_reason']} |",
        f"| **missing** | **{fmt(dl['missing'])}** |",
    ]
    out += [f"| missing: {k} | {fmt(v)} |" for k, v in dl["missing_by"].items()]
    out += [f"| duplicates (same webhook-id) | {fmt(dl['duplicates'])} |"]
    out += [
        "| published to first delivery p50 / p99 / max (s) | "
        f"{fmt(dl.get('delivery_p50_s'))} / {fmt(dl.get('delivery_p99_s'))} / "
        f"{fmt(dl.get('delivery_max_s'))} |"
    ]
    out += [f"| receiver: {k} | {fmt(v)} |" for k, v in ledger["receiver"].items()]
    out += ["", "| sidecar and Redis at the end | |", "|---|---|"]
    out += [f"| {k} | {fmt(v)} |" for k, v in ledger["end_state"].items()]
    out += [f"| logs: {k} | {fmt(v)} |" for k, v in ledger["logs"].items()]
    out += ["", "| t (s) | " + " | ".join(ledger["memory"]["columns"]) + " |"]
    out += ["|---" * (len(ledger["memory"]["columns"]) + 1) + "|"]
    out += [
        f"| {row[0]:.0f} | " + " | ".join(fmt(v) for v in row[1:]) + " |"
        for row in ledger["memory"]["rows"]
    ]
    out += ["", "| fault at (s) | kind | target | took (s) | note |", "|---|---|---|---|---|"]
    out += [
        f"| {f['at_s']} | {f['kind']} | {f['target']} | {f['took_s']} | {f['note']} |"
        for f in ledger["faults"]
    ]
    return "\n".join(out) + "\n"
