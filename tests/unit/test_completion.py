"""Decoding stream entries into completions: ids, types, JSON or text data, malformed ones."""

from __future__ import annotations

import pytest

from sidecar.completion import MalformedEvent, classify, decode_for, to_completion
from sidecar.config import StreamWait

SPEC = StreamWait(key="s", success=["Done"], failure=["Failed"])


def test_json_data_is_parsed_and_classified() -> None:
    event = decode_for(
        "s", "1-0", {b"correlation_id": b"c", b"type": b"Done", b"payload": b'{"id": 1}'}, SPEC
    )
    assert (event.correlation_id, event.event_type, event.data, event.is_json) == (
        "c",
        "Done",
        {"id": 1},
        True,
    )
    assert classify(event, SPEC) == "succeeded"
    completion = to_completion(event, "succeeded")
    assert completion.succeeded and completion.data == {"id": 1}


def test_text_data_stays_text_and_absent_data_is_none() -> None:
    text = decode_for("s", "1-0", {"correlation_id": "c", "type": "Failed", "payload": "no"}, SPEC)
    assert (text.data, text.is_json, classify(text, SPEC)) == ("no", False, "failed")
    bare = decode_for("s", "1-0", {"correlation_id": "c", "type": "Done"}, SPEC)
    assert (bare.data, bare.is_json) == (None, False)


def test_other_types_are_not_a_verdict() -> None:
    event = decode_for("s", "1-0", {"correlation_id": "c", "type": "Progress"}, SPEC)
    assert classify(event, SPEC) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"type": "Done"}, "no 'correlation_id' field"),
        ({"correlation_id": "", "type": "Done"}, "no 'correlation_id' field"),
        ({"correlation_id": "c", "payload": '{"broken'}, "data is not valid JSON"),
        ({b"correlation_id": b"\xff"}, "fields are not UTF-8"),
    ],
)
def test_malformed_entries_say_why(fields: dict[object, object], reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        decode_for("s", "1-0", fields, SPEC)


def test_custom_field_names() -> None:
    spec = StreamWait(key="s", id_field="op", type_field="kind", data_field="out", success=["ok"])
    event = decode_for("s", "1-0", {"op": "o-1", "kind": "ok", "out": "[1, 2]"}, spec)
    assert (event.correlation_id, event.data, classify(event, spec)) == ("o-1", [1, 2], "succeeded")
