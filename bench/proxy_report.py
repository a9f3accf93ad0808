"""The proxy benchmark's report: figures per run, the table against the targets, JSON, a chart."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Run = dict[str, Any]


@dataclass(frozen=True)
class Figure:
    """One row of the targets table."""

    label: str
    must: float
    goal: float
    higher_is_better: bool
    unit: str
    value: Callable[[Run], float | None]
    digits: int = 0

    def meets(self, value: float, target: float) -> bool:
        """True when `value` reaches `target`."""
        return value >= target if self.higher_is_better else value <= target

    def fmt(self, value: float) -> str:
        """The value with its unit."""
        return f"{value:,.{self.digits}f}{self.unit}"


def _pt(run: Run, name: str) -> dict[str, Any] | None:
    row: dict[str, Any] | None = run.get("passthrough", {}).get(name)
    return row


SATURATED = 0.9  # as in proxy_bench: below this share of its core a proxy was load-bound


def _ratio(run: Run, other: str, valid_only: bool = False) -> float | None:
    """sidecar req/s / anchor req/s; with `valid_only`, None unless both kept their core busy."""
    sidecar, anchor = _pt(run, "sidecar"), _pt(run, other)
    if not sidecar or not anchor or not anchor["rps"]:
        return None
    if valid_only and not (_saturated(sidecar) and _saturated(anchor)):
        return None
    return float(sidecar["rps"] / anchor["rps"])


def front_ratio(run: Run) -> float | None:
    """nginx front req/s / nginx alone req/s, when both kept their core busy."""
    front, alone = _pt(run, "front"), _pt(run, "nginx")
    if not front or not alone or not (_saturated(front) and _saturated(alone)):
        return None
    return float(front["rps"] / alone["rps"])


def _saturated(row: dict[str, Any]) -> bool:
    return float(row.get("cpu_utilisation", 0.0)) >= SATURATED


def _cpu_ratio(run: Run, other: str) -> float | None:
    """anchor CPU per request / sidecar's: the req/s ratio both would have if CPU-bound."""
    sidecar, anchor = _pt(run, "sidecar"), _pt(run, other)
    if not sidecar or not anchor or "cpu_us_per_request" not in anchor:
        return None
    return float(anchor["cpu_us_per_request"] / sidecar["cpu_us_per_request"])


def _intake(run: Run, key: str) -> float | None:
    intake = run["sync"].get("intake")
    if not intake or not intake["reached"]:
        return None
    value = intake[key]
    return None if isinstance(value, float) and math.isnan(value) else float(value)


def _max_held(run: Run) -> float | None:
    tried = [c for c in run["capacity"] if "skipped" not in c]
    if not tried:
        return None
    return float(max((c["held"] for c in tried if c["passed"]), default=0))


def _p99_held(run: Run) -> float | None:
    lat = run["sync"].get("latency_held")
    return float(lat["p99_ms"]) if lat else None


def _capacity_latency(run: Run, level: int, key: str) -> float | None:
    for c in run["capacity"]:
        if c["held"] == level and c.get("latency"):
            return float(c["latency"][key])
    return None


def _workers(run: Run) -> float | None:
    workers = run.get("workers", {})
    return float(workers["ratio"]) if workers.get("available") else None


FIGURES = (
    Figure("pass-through req/s vs minimal aiohttp proxy", 0.9, 1.2, True, "x",
           lambda r: _ratio(r, "minimal", valid_only=True), 2),
    Figure("pass-through req/s vs nginx (1 worker)", 0.25, 0.45, True, "x",
           lambda r: _ratio(r, "nginx", valid_only=True), 3),
    Figure("pass-through CPU per request (sidecar)", 120, 80, False, " µs",
           lambda r: (_pt(r, "sidecar") or {}).get("cpu_us_per_request")),
    Figure("CPU per synchronised call, arrival → held", 250, 150, False, " µs",
           lambda r: _intake(r, "cpu_us_per_call_net")),
    Figure("new synchronised calls/s one process takes in", 3500, 6000, True, "/s",
           lambda r: _intake(r, "calls_per_s")),
    Figure("RSS per held call (9,000 held)", 16, 10, False, " KiB",
           lambda r: _intake(r, "kib_per_held"), 1),
    Figure("held calls per process, 0 errors", 15_000, 30_000, True, "", _max_held),
    Figure("event → answer p99 at 1,000/s, 9,000 held", 5, 2, False, " ms", _p99_held, 2),
    Figure("event → answer p99 at 1,000/s, 15,000 held", 10, 3, False, " ms",
           lambda r: _capacity_latency(r, 15_000, "p99_ms"), 2),
    Figure("event → answer max at 1,000/s, 15,000 held", 25, 25, False, " ms",
           lambda r: _capacity_latency(r, 15_000, "max_ms"), 1),
    Figure("`workers: 2` vs `workers: 1`, pass-through", 1.7, 1.9, True, "x", _workers, 2),
)  # fmt: skip


SYNC_FIGURES = tuple(f for f in FIGURES if "pass-through" not in f.label)


def others(runs: list[Run]) -> list[Run]:
    """The other checkout's side of each run that measured one (`--other`)."""
    return [r["other"] for r in runs if "other" in r]


def summarise(runs: list[Run], figures: tuple[Figure, ...] = FIGURES) -> list[dict[str, Any]]:
    """Per figure: the values of each run, median, min, max, and how many runs meet must/goal."""
    out = []
    for fig in figures:
        values = [v for v in (fig.value(r) for r in runs) if v is not None]
        row: dict[str, Any] = {
            "figure": fig.label,
            "must": fig.must,
            "goal": fig.goal,
            "values": values,
        }
        if values:
            row.update(
                median=statistics.median(values),
                min=min(values),
                max=max(values),
                meets_must=sum(fig.meets(v, fig.must) for v in values),
                meets_goal=sum(fig.meets(v, fig.goal) for v in values),
            )
        out.append(row)
    return out


def _why_missing(fig: Figure, runs: list[Run]) -> str:
    if fig.value is _workers:
        return str(runs[0].get("workers", {}).get("reason", "not measured"))
    if fig.value is _max_held:
        return "; ".join(c["skipped"] for c in runs[0]["capacity"] if "skipped" in c)
    for anchor in ("nginx", "minimal"):
        if anchor in fig.label and any(anchor in r.get("passthrough", {}) for r in runs):
            raw = _xs([_ratio(r, anchor) for r in runs])
            cpu = _xs([_cpu_ratio(r, anchor) for r in runs])
            return (
                f"no run with both proxies >= {SATURATED:.0%} of their core; measured req/s "
                f"ratio {raw} (the anchor was held back), by CPU per request {cpu}"
            )
    if "nginx" in fig.label:
        return "nginx is not installed"
    return "not measured (see the log above)"


def print_table(report: dict[str, Any]) -> None:
    """The targets table with the measured values, then the side-by-side figures."""
    runs = report["runs"]
    n = len(runs)
    figures = FIGURES if any("passthrough" in r for r in runs) else SYNC_FIGURES
    print(f"\n## Figures against the targets ({n} run(s); median, range min to max)\n")
    print("| figure | must | goal | measured (median) | range | runs meeting must / goal |")
    print("|---|---|---|---|---|---|")
    for fig, row in zip(figures, summarise(runs, figures), strict=True):
        must, goal = fig.fmt(fig.must), fig.fmt(fig.goal)
        cmp = "≥" if fig.higher_is_better else "≤"
        if not row["values"]:
            print(
                f"| {fig.label} | {cmp} {must} | {cmp} {goal} | n/a | {_why_missing(fig, runs)} | |"
            )
            continue
        k = len(row["values"])
        valid = f" ({k} of {n} runs valid)" if k < n else ""
        mark = "goal ✓" if row["meets_goal"] == n else "must ✓" if row["meets_must"] == n else "✗"
        print(
            f"| {fig.label} | {cmp} {must} | {cmp} {goal} | **{fig.fmt(row['median'])}** {mark} "
            f"| {fig.fmt(row['min'])} to {fig.fmt(row['max'])}{valid} | {row['meets_must']}/{n} / "
            f"{row['meets_goal']}/{n} |"
        )
    before = others(runs)
    if before:
        print_beside(runs, before)
    if figures is SYNC_FIGURES:
        print_sync_runs(runs)
        return
    print(
        f"\nThe req/s ratios count only runs where both proxies kept their core >= "
        f"{SATURATED:.0%} busy (else the load side set the pace). CPU-per-request ratios "
        f"(anchor µs / sidecar µs: the req/s ratio if both were CPU-bound): vs minimal "
        f"{_xs([_cpu_ratio(r, 'minimal') for r in runs])}, vs nginx "
        f"{_xs([_cpu_ratio(r, 'nginx') for r in runs])}."
    )
    print("\n## Pass-through side by side (per run)\n")
    print("| run | upstream alone | sidecar | minimal proxy | nginx | sidecar / minimal | "
          "sidecar / nginx |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for i, run in enumerate(runs, 1):
        pt = run["passthrough"]
        cells = [_cell(pt.get(k)) for k in ("upstream", "sidecar", "minimal", "nginx")]
        ratios = []
        for anchor in ("minimal", "nginx"):
            both_busy = _ratio(run, anchor, valid_only=True) is not None
            ratios.append(_x(_ratio(run, anchor)) + ("" if both_busy else " (not saturated)"))
        print(f"| {i} | " + " | ".join(cells) + f" | {ratios[0]} | {ratios[1]} |")
    fronts = [r for r in runs if "front" in r["passthrough"]]
    if fronts:
        print("\n## Pass-through through the nginx front (`sidecar export nginx`), per run\n")
        print("| run | nginx alone | nginx front | front / nginx, req/s | nginx µs / front µs | "
              "the sidecar meanwhile |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for i, run in enumerate(fronts, 1):
            pt = run["passthrough"]
            front, alone = pt["front"], pt.get("nginx")
            rps = front_ratio(run)
            busy = "" if rps is not None else " (not saturated)"
            raw = front["rps"] / alone["rps"] if alone else None
            cpu = alone["cpu_us_per_request"] / front["cpu_us_per_request"] if alone else None
            print(
                f"| {i} | {_cell(alone)} | {_cell(front)} | {_x(raw)}{busy} | {_x(cpu)} | "
                f"{front['sidecar_calls']:.0f} calls, {front['sidecar_cpu_s'] * 1000:.0f} ms CPU |"
            )
    print_sync_runs(runs)


def print_beside(runs: list[Run], before: list[Run]) -> None:
    """This checkout's synchronised figures beside the other's, from the same runs."""
    tree = before[0].get("tree", "the other checkout")
    print(f"\n## This checkout beside {tree} (same runs, in turns; median, range)\n")
    print("| figure | must | this checkout | other | this ÷ other (medians) |")
    print("|---|---|---|---|---|")
    mine, theirs = summarise(runs, SYNC_FIGURES), summarise(before, SYNC_FIGURES)
    for fig, a, b in zip(SYNC_FIGURES, mine, theirs, strict=True):
        cmp = "≥" if fig.higher_is_better else "≤"

        def cell(row: dict[str, Any], fig: Figure = fig) -> str:
            if not row["values"]:
                return "n/a"
            return f"{fig.fmt(row['median'])} ({fig.fmt(row['min'])} to {fig.fmt(row['max'])})"

        ratio = (
            f"{a['median'] / b['median']:.2f}"
            if a["values"] and b["values"] and b["median"]
            else "n/a"
        )
        print(f"| {fig.label} | {cmp} {fig.fmt(fig.must)} | {cell(a)} | {cell(b)} | {ratio} |")
    print("\n### The other checkout, per run\n")
    print_sync_runs(before)


def print_sync_runs(runs: list[Run]) -> None:
    """The synchronised calls of each run."""
    print("\n## Synchronised calls (per run)\n")
    print("| run | intake | event→answer, 1,000 held | event→answer, N held | capacity |")
    print("|---|---|---|---|---|")
    for i, run in enumerate(runs, 1):
        sync = run["sync"]
        intake = sync.get("intake", {})
        cap = "; ".join(_cap(c) for c in run["capacity"])
        print(
            f"| {i} | {_intake_cell(intake)} | {_lat_cell(sync.get('latency_low'))} | "
            f"{_lat_cell(sync.get('latency_held'))} | {cap} |"
        )


def _xs(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    return " / ".join(f"{v:.3f}x" for v in got) if got else "n/a"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "n/a"
    text = f"{row['rps']:,.0f} req/s"
    if "cpu_us_per_request" in row:
        text += f", {row['cpu_us_per_request']:.0f} µs/req, {row['cpu_utilisation']:.0%} core"
        if row.get("attempts", 1) > 1:
            text += f" (best of {row['attempts']} loads)"
    text += f", p99 {row['p99_ms']:.1f} ms"
    return text + (f", **{row['errors']} errors**" if row["errors"] else "")


def _intake_cell(i: dict[str, Any]) -> str:
    if not i:
        return "n/a"
    return (
        f"{i['held']:.0f}/{i['calls']} held in {i['seconds']:.1f} s, {i['calls_per_s']:,.0f}/s, "
        f"{i['cpu_us_per_call_net']:.0f} µs/call ({i['cpu_utilisation']:.0%} core), "
        f"{i['kib_per_held']:.1f} KiB/call"
    )


def _lat_cell(p: dict[str, Any] | None) -> str:
    if not p:
        return "n/a"
    return (
        f"p50 {p['p50_ms']:.2f} / p99 {p['p99_ms']:.2f} / max {p['max_ms']:.1f} ms "
        f"({p['held_at_start']:.0f} held)"
    )


def _cap(c: dict[str, Any]) -> str:
    if "skipped" in c:
        return f"{c['held']:,}: not tried (fd limit)"
    verdict = "0 errors" if c["passed"] else f"{c['errors']} errors"
    return f"{c['held']:,}: {verdict}"


def write_json(report: dict[str, Any], path: Path) -> Path:
    """The whole report, with the summary, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**report, "summary": summarise(report["runs"])}
    if others(report["runs"]):
        data["summary_other"] = summarise(others(report["runs"]), SYNC_FIGURES)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return path


def _latency_lines(ax: Any, side: str, runs: list[Run], dashed: bool) -> None:
    """p50/p90/p99 of event → answer against the calls held, median and range over `runs`."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        for key in ("latency_low", "latency_held"):
            if r["sync"].get(key):
                groups.setdefault(key, []).append(r["sync"][key])
        for c in r["capacity"]:
            if c.get("latency"):
                groups.setdefault(f"capacity-{c['held']}", []).append(c["latency"])
    points = [
        (statistics.median(p["held_at_start"] for p in group), group) for group in groups.values()
    ]
    points.sort(key=lambda point: point[0])
    for q, style in (("p50_ms", "o"), ("p90_ms", "s"), ("p99_ms", "^")):
        xs = [x for x, _ in points]
        meds = [statistics.median(p[q] for p in g) for _, g in points]
        err = [
            [m - min(p[q] for p in g) for m, (_, g) in zip(meds, points, strict=True)],
            [max(p[q] for p in g) - m for m, (_, g) in zip(meds, points, strict=True)],
        ]
        fmt = style + ("--" if dashed else "-")
        ax.errorbar(xs, meds, yerr=err, fmt=fmt, capsize=4, label=side + q[:3], alpha=0.85)


def write_chart(report: dict[str, Any], path: Path) -> Path | None:
    """Throughput against the anchors, and event→answer percentiles against held calls."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no chart")
        return None
    runs = report["runs"]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(17, 5.2))
    if not any("passthrough" in r for r in runs):  # --sync-only: the intake, beside --other's
        _intake_bars(ax1, runs, "cpu_us_per_call_net", "µs CPU per call, arrival → held", 250)
        _intake_bars(ax2, runs, "calls_per_s", "new calls/s one process takes in", 3500)
    else:
        _passthrough_panels(ax1, ax2, runs)
    for side, side_runs, dashed in (("", runs, False), ("other: ", others(runs), True)):
        _latency_lines(ax3, side, side_runs, dashed)
    ax3.set_yscale("log")
    ax3.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax3.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax3.tick_params(axis="y", which="minor", labelsize=7)
    ax3.axhline(5, color="#e15759", linestyle="--", linewidth=1, label="p99 must")
    ax3.axhline(2, color="#59a14f", linestyle="--", linewidth=1, label="p99 goal")
    ax3.set_xlabel("calls held when the completions start")
    ax3.set_ylabel("event → answer, ms, log scale (median; bars: min to max)")
    ax3.set_title("event → answer at 1,000 completions/s")
    ax3.legend(fontsize=8)
    m = report["machine"]
    fig.suptitle(
        f"sidecar proxy benchmark: {len(runs)} run(s), {m['cores']} cores, Python "
        f"{m['python']}, aiohttp {m['aiohttp']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _intake_bars(ax: Any, runs: list[Run], key: str, title: str, must: float) -> None:
    """One intake figure of this checkout and of `--other`'s, median and range over runs."""
    sides = [("this checkout", runs, "#f28e2b"), ("other", others(runs), "#4e79a7")]
    for i, (label, side_runs, colour) in enumerate(sides):
        values = [v for v in (_intake(r, key) for r in side_runs) if v is not None]
        if not values:
            continue
        med = statistics.median(values)
        err = [[med - min(values)], [max(values) - med]]
        ax.bar([i], [med], yerr=err, capsize=5, color=colour, label=label)
        ax.annotate(f"{med:,.0f}", (i, med), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")  # fmt: skip
    ax.axhline(must, color="#e15759", linestyle="--", linewidth=1, label="must")
    ax.set_xticks([0, 1], ["this checkout", "other"])
    ax.set_title(title + " (median; bars: min to max)")
    ax.legend(fontsize=8)


def _passthrough_panels(ax1: Any, ax2: Any, runs: list[Run]) -> None:
    """Pass-through req/s of each proxy, and the sidecar's ratios to the anchors."""
    names = [("upstream", "upstream alone"), ("nginx", "nginx 1 worker"),
             ("front", "nginx front"), ("minimal", "minimal aiohttp"),
             ("sidecar", "sidecar")]  # fmt: skip
    labels, medians, lows, highs, cpus = [], [], [], [], []
    for key, label in names:
        values = [r["passthrough"][key]["rps"] for r in runs if key in r.get("passthrough", {})]
        if not values:
            continue
        labels.append(label)
        med = statistics.median(values)
        medians.append(med)
        lows.append(med - min(values))
        highs.append(max(values) - med)
        cpu = [
            r["passthrough"][key]["cpu_us_per_request"]
            for r in runs
            if "cpu_us_per_request" in r.get("passthrough", {}).get(key, {})
        ]
        cpus.append(statistics.median(cpu) if cpu else None)
    palette = {"upstream alone": "#bbbbbb", "nginx 1 worker": "#59a14f",
               "nginx front": "#76b7b2", "minimal aiohttp": "#4e79a7",
               "sidecar": "#f28e2b"}  # fmt: skip
    colours = [palette[label] for label in labels]
    bars = ax1.bar(labels, medians, yerr=[lows, highs], capsize=5, color=colours)
    for bar, med, cpu_us in zip(bars, medians, cpus, strict=True):
        note = f"{med:,.0f}/s" + (f"\n{cpu_us:.0f} µs CPU/req" if cpu_us else "")
        x = bar.get_x() + bar.get_width() / 2
        ax1.annotate(
            note,
            (x, med),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )
    ax1.set_yscale("log")
    ax1.set_ylabel("req/s, log scale (median; bars: min to max over runs)")
    ax1.set_title("pass-through, one process each, wrk -c50")
    ax1.tick_params(axis="x", labelsize=8)

    ratios = {"vs minimal": [_ratio(r, "minimal") for r in runs],
              "vs nginx": [_ratio(r, "nginx") for r in runs]}  # fmt: skip
    targets = {"vs minimal": (0.9, 1.2), "vs nginx": (0.25, 0.45)}
    for i, (name, vals) in enumerate(ratios.items()):
        got = [v for v in vals if v is not None]
        if got:
            ax2.scatter([i] * len(got), got, color="#f28e2b", zorder=3)
        must, goal = targets[name]
        ax2.hlines(must, i - 0.3, i + 0.3, colors="#e15759", linestyles="--")
        ax2.hlines(goal, i - 0.3, i + 0.3, colors="#59a14f", linestyles="--")
    ax2.set_xticks(range(len(ratios)), list(ratios))
    ax2.set_xlim(-0.6, len(ratios) - 0.4)
    ax2.set_ylabel("sidecar req/s ÷ anchor req/s (each run)")
    ax2.set_title("ratios (red: must, green: goal)")
