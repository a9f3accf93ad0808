"""Judging one poll answer: done/failed by status code or by a JSON field; JSON pointers."""

from __future__ import annotations

import orjson
import pytest

from sidecar.completions.poll import PollAnswer, decode_body, json_pointer, judge
from sidecar.config import PollWait


def answer(status: int, body: object = b"") -> PollAnswer:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return PollAnswer(status, raw, "application/json", None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "succeeded"), (202, None), (404, None), (500, None), (410, "failed")],
)
def test_by_status(status: int, expected: str | None) -> None:
    spec = PollWait(done_status=[200], failed_status=[410])
    assert judge(spec, answer(status)) == expected


@pytest.mark.parametrize(
    ("body", "status", "expected"),
    [
        ({"state": {"phase": "done"}}, 200, "succeeded"),
        ({"state": {"phase": "error"}}, 200, "failed"),
        ({"state": {"phase": "running"}}, 200, None),
        ({"state": {}}, 200, None),
        ({"state": {"phase": "done"}}, 404, None),  # a field is judged on 2xx answers only
        (b"not json", 200, None),
    ],
)
def test_by_json_field(body: object, status: int, expected: str | None) -> None:
    spec = PollWait(field="/state/phase", success=["done"], failure=["error", "cancelled"])
    assert judge(spec, answer(status, body)) == expected


def test_failed_status_wins_over_a_field() -> None:
    spec = PollWait(field="/s", success=["done"], failed_status=[410])
    assert judge(spec, answer(410, {"s": "done"})) == "failed"


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [("", {"a/b": [1, {"~x": 2}]}), ("/a~1b", [1, {"~x": 2}]), ("/a~1b/1/~0x", 2)],
)
def test_json_pointer(pointer: str, expected: object) -> None:
    assert json_pointer({"a/b": [1, {"~x": 2}]}, pointer) == expected


@pytest.mark.parametrize("pointer", ["/missing", "/a~1b/9", "/a~1b/x", "/a~1b/0/deeper"])
def test_json_pointer_leading_nowhere(pointer: str) -> None:
    with pytest.raises(LookupError):
        json_pointer({"a/b": [1, {"~x": 2}]}, pointer)


def test_decode_body_json_else_text() -> None:
    assert decode_body(b'{"a": 1}', None) == ({"a": 1}, True)
    assert decode_body(b"plain \xff", None) == ("plain \ufffd", False)
    assert decode_body(b"", None) == (None, False)
