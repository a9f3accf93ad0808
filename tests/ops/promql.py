"""What the shipped dashboard and alert rules query: their PromQL, and the metric names in it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "examples" / "observability"
DASHBOARD = OBSERVABILITY / "sidecar-dashboard.json"
RULES = OBSERVABILITY / "rules.yml"

# PromQL words that are neither functions (always followed by "(") nor metric names.
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][\w:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),)?\s*\w+\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and labels left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if word in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def variable_query_names(query: str) -> set[str]:
    """The metric names of a Grafana Prometheus variable query (`label_values(selector, label)`,
    or plain PromQL)."""
    found = _LABEL_VALUES.match(query)
    if found:
        return metric_names(found.group(1) or "")
    return metric_names(query)


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Prometheus runs it once Grafana has filled in its variables
    (every template variable set to "All", i.e. `.*`)."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
    expr = expr.replace("$__interval", "15s")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def load_dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included; rows themselves too."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every panel target."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable name, query) for every query variable of the dashboard."""
    out = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append((variable["name"], query["query"] if isinstance(query, dict) else query))
    return out


def load_rules(path: Path = RULES) -> dict[str, Any]:
    """The rules file."""
    rules: dict[str, Any] = yaml.safe_load(path.read_text())
    return rules


def rules(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rule of every group."""
    return [rule for group in document["groups"] for rule in group["rules"]]
