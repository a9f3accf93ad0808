"""Pydantic validation errors as `key.path: reason` lines, one per problem, in one wording.

The config file and the admin API's request bodies both report every problem at once; they
differ only in how they name a key (config keys vs body fields), so each passes its wording.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError


def key_path(loc: tuple[int | str, ...]) -> str:
    """`routes[1].wait.poll` from pydantic's location tuple."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def describe(
    error: ValidationError,
    wording: Mapping[str, str],
    shown: Callable[[Any], str] = repr,
    root: str = "",
) -> list[str]:
    """One `path: reason` line per problem; `wording` replaces pydantic's message per error
    type; type and literal errors show the value given (through `shown`)."""
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(
            p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-"))
        )
        message = wording.get(item["type"]) or item["msg"]
        message = message.removeprefix("Value error, ")
        if item["type"] == "literal_error" or item["type"].endswith("_type"):
            message = f"{message} (got {shown(item['input'])})"
        path = key_path(loc) or root
        for line in message.split("\n"):
            problems.append(line if not path or line.startswith(path + ":") else f"{path}: {line}")
    return problems
