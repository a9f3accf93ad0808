"""`Prefer` (RFC 7240): respond-async and wait=N, first occurrence wins, unknown ones ignored."""

from __future__ import annotations

import pytest

from sidecar.http.prefer import Preferences, parse_prefer


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], Preferences()),
        (["respond-async"], Preferences(respond_async=True)),
        (["wait=5"], Preferences(wait_s=5.0)),
        (["wait=0.5"], Preferences(wait_s=0.5)),
        (['wait="3"'], Preferences(wait_s=3.0)),
        (["respond-async, wait=10"], Preferences(True, 10.0)),
        (["wait=1", "wait=9"], Preferences(wait_s=1.0)),  # the first wins
        (["WAIT=2; foo=bar"], Preferences(wait_s=2.0)),
        (["wait=-1"], Preferences()),
        (["wait=soon"], Preferences()),
        (["handling=strict, return=minimal"], Preferences()),
        ([",,, respond-async ,"], Preferences(respond_async=True)),
    ],
)
def test_parse_prefer(values: list[str], expected: Preferences) -> None:
    assert parse_prefer(values) == expected
