"""A key named twice in one mapping of the config file is an error with both its lines, in
`sidecar check`, at start and on reload, never the later one silently winning (YAML loaders
keep the last: a second `routes:` used to replace every route above it)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sidecar.cli import main as sidecar_main
from sidecar.config import ConfigError, load_settings

WHY = "(name each key once: YAML would keep only the last)"


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "sidecar.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    return caught.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            """
            log: {level: info}
            routes:
              - {name: a, path: /a, wait: {poll: {}}}
            log: {level: debug}
            routes: []
            """,
            [
                f"log: duplicate key on lines 2 and 5 {WHY}",
                f"routes: duplicate key on lines 3 and 6 {WHY}",
            ],
        ),
        (
            """
            routes:
              - name: a
                path: /a
                path: /b
            webhooks:
              timeout: 5s
              schedule: [1s]
              timeout: 10s
            """,
            [
                f"routes[0].path: duplicate key on lines 4 and 5 {WHY}",
                f"webhooks.timeout: duplicate key on lines 7 and 9 {WHY}",
            ],
        ),
        (  # with other mistakes: every problem at once
            """
            listen: nowhere
            log: {level: info}
            log: {level: loud}
            """,
            [
                f"log: duplicate key on lines 3 and 4 {WHY}",
                "listen: invalid address 'nowhere' (use host:port, e.g. 0.0.0.0:8080)",
                "log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'loud')",
            ],
        ),
    ],
    ids=["top-level", "nested", "with-other-problems"],
)
def test_a_key_named_twice_is_an_error_with_its_lines(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    assert problems(tmp_path, text) == expected


def test_the_same_key_in_different_mappings_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text(
        "routes:\n  - {name: a, path: /a}\n  - {name: b, path: /b}\nlog: {level: info}\n"
    )
    assert [r.name for r in load_settings(path, env={}).routes] == ["a", "b"]


def test_sidecar_check_names_the_duplicate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("routes: [{name: a, path: /a}]\nroutes: []\n")
    with pytest.raises(SystemExit) as exited:
        sidecar_main(["check", "-c", str(path)])
    assert exited.value.code == 1
    assert f"  - routes: duplicate key on lines 1 and 2 {WHY}" in capsys.readouterr().err
