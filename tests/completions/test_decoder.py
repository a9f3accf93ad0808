"""The one decoder: stream entries into events (ids, types, JSON or text data, malformed ones),
and events into the route they complete."""

from __future__ import annotations

import pytest

from sidecar.completions.completion import MalformedEvent
from sidecar.completions.decoder import Decoder, decode_entry
from sidecar.config import StreamWait, parse_settings

SPEC = StreamWait(key="s", success=["Done"], failure=["Failed"])


def test_json_data_is_parsed_and_classified() -> None:
    event = decode_entry(
        "s", "1-0", {b"correlation_id": b"c", b"type": b"Done", b"payload": b'{"id": 1}'}, SPEC
    )
    assert (event.correlation_id, event.event_type, event.data, event.is_json) == (
        "c",
        "Done",
        {"id": 1},
        True,
    )
    assert event.verdict(SPEC) == "succeeded"
    completion = event.completion("succeeded")
    assert completion.succeeded and completion.data == {"id": 1}


def test_text_data_stays_text_and_absent_data_is_none() -> None:
    text = decode_entry(
        "s", "1-0", {"correlation_id": "c", "type": "Failed", "payload": "no"}, SPEC
    )
    assert (text.data, text.is_json, text.verdict(SPEC)) == ("no", False, "failed")
    bare = decode_entry("s", "1-0", {"correlation_id": "c", "type": "Done"}, SPEC)
    assert (bare.data, bare.is_json) == (None, False)


def test_other_types_are_not_a_verdict() -> None:
    event = decode_entry("s", "1-0", {"correlation_id": "c", "type": "Progress"}, SPEC)
    assert event.verdict(SPEC) is None


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
        decode_entry("s", "1-0", fields, SPEC)


def test_custom_field_names() -> None:
    spec = StreamWait(key="s", id_field="op", type_field="kind", data_field="out", success=["ok"])
    event = decode_entry("s", "1-0", {"op": "o-1", "kind": "ok", "out": "[1, 2]"}, spec)
    assert (event.correlation_id, event.data, event.verdict(spec)) == ("o-1", [1, 2], "succeeded")


def _decoder(*routes: dict[str, object]) -> Decoder:
    raw = {"redis_url": "redis://127.0.0.1:6379/0", "routes": list(routes)}
    return Decoder(parse_settings(raw, "<test>", env={}))


def _route(name: str, **stream: object) -> dict[str, object]:
    return {"name": name, "path": f"/{name}", "wait": {"stream": {"key": "s", **stream}}}


def test_the_first_route_listing_a_type_is_the_one_an_event_completes() -> None:
    decoder = _decoder(
        _route("a", success=["A.done"], failure=["Both.failed"]),
        _route("b", success=["B.done"], failure=["Both.failed"]),
    )
    found = decoder.route_for("s", "1-0", {"correlation_id": "c", "type": "B.done"})
    assert found is not None and (found[0].name, found[1]) == ("b", "succeeded")
    found = decoder.route_for("s", "1-0", {"correlation_id": "c", "type": "Both.failed"})
    assert found is not None and (found[0].name, found[1]) == ("a", "failed")
    assert decoder.route_for("s", "1-0", {"correlation_id": "c", "type": "Progress"}) is None
    assert decoder.decode("other", "1-0", {"correlation_id": "c", "type": "A.done"}) == []


def test_routes_naming_fields_differently_each_read_the_entry_their_way() -> None:
    decoder = _decoder(
        _route("a", success=["done"]),
        _route("b", id_field="op", success=["done"]),
    )
    events = decoder.decode("s", "1-0", {"correlation_id": "c", "op": "o", "type": "done"})
    assert sorted(e.correlation_id for e, _ in events) == ["c", "o"]
    # One reading cannot decode it (no `op`), the other can: not malformed.
    only = decoder.decode("s", "1-0", {"correlation_id": "c", "type": "done"})
    assert [e.correlation_id for e, _ in only] == ["c"]
    with pytest.raises(MalformedEvent):
        decoder.decode("s", "1-0", {"type": "done"})
