"""Loading the config: YAML, `${VAR}` / `${VAR:-default}` interpolation, `SIDECAR_*` overrides,
every problem at once.

`load_settings(path, env=...)` reads the YAML file (a key named twice in a mapping is an error
with both its lines, not the later one silently winning); `parse_settings(raw, source, env=...)`
validates a parsed mapping. Both take the environment explicitly (the command line passes
`os.environ`; tests pass their own): it fills `${VAR}` and its `SIDECAR_*` variables override
the file (env wins; nested keys with `__`, e.g. `SIDECAR_WEBHOOKS__TIMEOUT=5s`). A bad file
raises `ConfigError` whose `problems` name every key path and rule, e.g.

    routes[1].wait.poll.interval: invalid duration 'soon' (use 250ms, 10s, 2m or seconds)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..validation import describe
from .settings import Settings, cross_check, overrides_from

DEFAULT_CONFIG_PATH = "config/sidecar.yaml"


class ConfigError(Exception):
    """The configuration is invalid; `problems` lists every one, each with its key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(node, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set "
                f"(use ${{{name}:-default}} for a default)"
            )
            return ""

        return _INTERPOLATION.sub(replace, node)
    if isinstance(node, dict):
        return {
            k: _interpolate(v, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, problems) for i, v in enumerate(node)]
    return node


_WORDING = {
    "extra_forbidden": "unknown key (check the spelling against config/sidecar.yaml)",
    "missing": "required key is missing",
}


def format_validation_error(error: ValidationError) -> list[str]:
    """One `key.path: reason` line per problem, in the order pydantic found them."""
    return describe(error, _WORDING)


def parse_settings(
    raw: Mapping[str, Any] | None, source: str = "<config>", *, env: Mapping[str, str]
) -> Settings:
    """Validate a parsed YAML mapping: `${VAR}` filled from `env`, then `env`'s `SIDECAR_*`
    variables override it."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(source, ["<root>: the file must be a mapping of keys to values"])
    data = _interpolate(dict(raw), "", env, problems)
    try:
        with overrides_from(env):
            settings = Settings(**data)
    except ValidationError as exc:
        unset = {problem.partition(": ")[0] for problem in problems}
        found = [p for p in format_validation_error(exc) if p.partition(": ")[0] not in unset]
        env_redis = next(
            (v for k, v in env.items() if k.upper() == "SIDECAR_REDIS_URL" and v), None
        )
        checked = {**data, "redis_url": env_redis} if env_redis else data
        problems += found + [p for p in cross_check(checked) if p not in found]
    if problems:
        raise ConfigError(source, problems)
    return settings


def config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """The file to read: `path`, else `$SIDECAR_CONFIG`, else `config/sidecar.yaml`."""
    return Path(path or env.get("SIDECAR_CONFIG") or DEFAULT_CONFIG_PATH)


def load_settings(path: str | os.PathLike[str] | None, *, env: Mapping[str, str]) -> Settings:
    """Read, interpolate and validate the YAML file at `path` (see `config_path`)."""
    path = config_path(path, env)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read the file: {exc.strerror}"]) from None
    try:
        raw, duplicates = read_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(str(path), [f"{where}invalid YAML ({reason})"]) from None
    if not duplicates:
        return parse_settings(raw, str(path), env=env)
    try:  # every problem at once: the duplicates, and whatever else is wrong
        parse_settings(raw, str(path), env=env)
    except ConfigError as error:
        raise ConfigError(str(path), duplicates + error.problems) from None
    raise ConfigError(str(path), duplicates)


def read_yaml(text: str) -> tuple[Any, list[str]]:
    """The YAML document in `text`, and a problem for every key a mapping names twice (a
    second `routes:` or `log:` would silently replace the first: YAML loaders keep the last)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        duplicates = [p for _, p in sorted(duplicate_keys(node, ""))] if node is not None else []
        return (loader.construct_document(node) if node is not None else None), duplicates
    finally:
        loader.dispose()


def duplicate_keys(node: yaml.Node, path: str) -> list[tuple[int, str]]:
    """For every key named twice in a mapping of `node`: the second one's line, and the
    problem (`key.path: ...`, with both lines)."""
    problems: list[tuple[int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            where = f"{path}.{key}" if path else str(key)
            if key is not None and key in seen:
                problems.append(
                    (
                        line,
                        f"{where}: duplicate key on lines {seen[key]} and {line} (name each "
                        "key once: YAML would keep only the last)",
                    )
                )
            elif key is not None:
                seen[key] = line
            problems += duplicate_keys(value_node, where)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{index}]")
    return problems


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors (`sidecar schema`)."""
    schema = Settings.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Synchronising sidecar configuration"
    return schema
