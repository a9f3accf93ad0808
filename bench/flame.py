"""Profiles for the proxy benchmark: py-spy's collapsed stacks → an SVG flame graph and tables.

py-spy (`record --format raw --function`) writes one line per distinct stack,
`frame;frame;…;leaf count`, each frame `function (file:first line)`. From that:

- `render_svg()`: a self-contained flame graph (root at the bottom, width ∝ samples, a tooltip
  with the function, its file and its share of the samples);
- `top_tables()`: the functions by self and by cumulative share, and self time by package.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """[(frames root→leaf, samples)] from collapsed-stack text."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def short(frame: str) -> str:
    """`package/module.py:function` for a py-spy frame (paths cut at site-packages/stdlib)."""
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/wt-bench/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m['func']}"


def package(frame: str) -> str:
    """The top-level package of a frame's file (`sidecar`, `aiohttp`, `asyncio`, …)."""
    name = short(frame).split(":", 1)[0]
    head = name.split("/", 1)[0]
    return head.removesuffix(".py") if head else name


def top_tables(stacks: list[tuple[list[str], int]], limit: int = 25) -> str:
    """Markdown tables: functions by self and cumulative share; self share by package."""
    total = sum(n for _, n in stacks) or 1
    self_c: Counter[str] = Counter()
    cum_c: Counter[str] = Counter()
    pkg_c: Counter[str] = Counter()
    for frames, n in stacks:
        leaf = short(frames[-1])
        self_c[leaf] += n
        pkg_c[package(frames[-1])] += n
        for name in {short(f) for f in frames}:
            cum_c[name] += n
    out = [f"{total} samples (on-CPU only: py-spy leaves out idle samples)\n"]
    out.append("| self % | function |\n|---:|---|")
    out += [f"| {n / total:5.1%} | `{name}` |" for name, n in self_c.most_common(limit)]
    out.append("\n| cumulative % | function |\n|---:|---|")
    out += [f"| {n / total:5.1%} | `{name}` |" for name, n in cum_c.most_common(limit * 2)]
    out.append("\n| self % | package |\n|---:|---|")
    out += [f"| {n / total:5.1%} | {name} |" for name, n in pkg_c.most_common(limit)]
    return "\n".join(out) + "\n"


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


_COLOURS = {
    "sidecar": "#f28e2b",
    "aiohttp": "#4e79a7",
    "asyncio": "#59a14f",
    "redis": "#e15759",
    "prometheus_client": "#b07aa1",
    "logging": "#edc948",
    "multidict": "#76b7b2",
    "yarl": "#76b7b2",
}


def render_svg(stacks: list[tuple[list[str], int]], title: str, width: int = 1600) -> str:
    """A flame graph of `stacks` as one SVG document (no script; tooltips via <title>)."""
    root = _Node("all")
    for frames, n in stacks:
        root.count += n
        node = root
        for frame in frames:
            node = node.children.setdefault(frame, _Node(frame))
            node.count += n
    row = 16
    depth = _depth(root)
    height = (depth + 2) * row + 30
    total = root.count or 1
    rects: list[str] = []

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count / total * width
        if w < 0.3:
            return
        y = height - (level + 1) * row - 4
        label = "all" if node is root else short(node.name)
        colour = "#bbbbbb" if node is root else _COLOURS.get(package(node.name), "#9c9c9c")
        tip = html.escape(f"{label} ({node.name}): {node.count} samples, {node.count / total:.2%}")
        text = html.escape(label[: int(w / 6.5)]) if w > 30 else ""
        rects.append(
            f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}"'
            f' fill="{colour}" rx="1"/><text x="{x + 2:.1f}" y="{y + row - 4}">{text}</text></g>'
        )
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, cx, level + 1)
            cx += child.count / total * width

    draw(root, 0.0, 0)
    legend = " · ".join(f"{k}" for k in _COLOURS)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="11">'
        f'<rect width="100%" height="100%" fill="white"/>'
        f'<text x="4" y="16" font-size="14">{html.escape(title)} — {total} on-CPU samples; '
        f"colours: {legend}; hover for names</text>" + "".join(rects) + "</svg>\n"
    )


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def write_profile(collapsed: Path, out_dir: Path, name: str, title: str) -> str:
    """`name.svg`, `name-top.md` and the stacks themselves (`name.collapsed.txt`) in `out_dir`
    from a collapsed-stack file; returns the tables."""
    text = collapsed.read_text()
    stacks = parse_collapsed(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.collapsed.txt").write_text(text)
    (out_dir / f"{name}.svg").write_text(render_svg(stacks, title))
    tables = top_tables(stacks)
    (out_dir / f"{name}-top.md").write_text(f"# {title}\n\n{tables}")
    return tables
