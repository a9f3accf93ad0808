"""The `clients:` block's budget keys, as an operator meets them: their defaults, the sizes and
durations they take, and the rules between them, in the exact words a user reads."""

from __future__ import annotations

import pytest

from .support import problems_of, settings_of


def test_the_budget_keys_default_to_what_the_reference_file_says() -> None:
    clients = settings_of("{}").clients
    assert clients.buffer_budget == 256 * 1024 * 1024
    assert clients.pass_through_buffer == 64 * 1024
    assert (clients.min_body_rate, clients.body_rate_grace) == (240, 5.0)


def test_the_budget_keys_take_sizes_and_durations() -> None:
    clients = settings_of(
        "clients: {buffer_budget: 1GiB, pass_through_buffer: 0, min_body_rate: 1KiB,"
        " body_rate_grace: 250ms}"
    ).clients
    assert (clients.buffer_budget, clients.pass_through_buffer) == (1024**3, 0)
    assert (clients.min_body_rate, clients.body_rate_grace) == (1024, 0.25)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "clients: {max_body: 10MiB, buffer_budget: 5MiB}",
            "clients: buffer_budget must be at least max_body (one body must fit)",
        ),
        (
            "clients: {max_body: 1KiB, buffer_budget: 2KiB, pass_through_buffer: 4KiB}",
            "clients: buffer_budget must be at least pass_through_buffer",
        ),
        (
            "clients: {buffer_budget: 0}",
            "clients.buffer_budget: Input should be greater than or equal to 1",
        ),
        (
            "clients: {min_body_rate: -1}",
            "clients.min_body_rate: invalid size -1 (use 10MiB, 512KiB, 1GB or bytes)",
        ),
    ],
    ids=["under-max-body", "under-pass-through-buffer", "zero-budget", "negative-rate"],
)
def test_budget_mistakes_are_named(text: str, expected: str) -> None:
    assert problems_of(text) == [expected]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("5000", 5000), ("'7'", 7), ("1", 1)],
)
def test_max_connections_is_a_count_or_auto(value: str, expected: object) -> None:
    assert settings_of(f"clients: {{max_connections: {value}}}").clients.max_connections == expected


def test_max_connections_defaults_to_auto() -> None:
    assert settings_of("{}").clients.max_connections == "auto"


@pytest.mark.parametrize("value", ["lots", "0", "-3", "2.5", "true"])
def test_max_connections_mistakes_are_one_problem(value: str) -> None:
    shown = {"lots": "'lots'", "true": "True"}.get(value, value)
    assert problems_of(f"clients: {{max_connections: {value}}}") == [
        f"clients.max_connections: invalid count {shown} (a whole number of at least 1, or auto)"
    ]
