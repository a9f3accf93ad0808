"""The one decoder on broker messages: where each field is found (a header, a member of the
JSON body, a JSON pointer, a property of the message, the whole body), what is malformed, and
the route an event completes."""

from __future__ import annotations

import orjson
import pytest

from sidecar.completions.completion import MalformedEvent, Message
from sidecar.completions.decoder import Body, Decoder, decode_message
from sidecar.config import StreamWait, parse_settings


def spec(**fields: str) -> StreamWait:
    return StreamWait(source="bus", key="t", success=["Done"], failure=["Failed"], **fields)


def decode(message: Message, **fields: str):  # type: ignore[no-untyped-def]
    return decode_message("bus/t", message, spec(**fields), Body(message.body))


BODY = orjson.dumps({"type": "Done", "id": 7, "result": {"total": 3}, "payload": "text"})


def test_a_header_first_then_a_member_of_the_body() -> None:
    message = Message("0:1", BODY, {"X-Correlation-ID": b"c-1"})
    event = decode(message, id_field="x-correlation-id", type_field="type", data_field="result")
    assert (event.correlation_id, event.event_type, event.data) == ("c-1", "Done", {"total": 3})
    assert (event.stream, event.entry_id, event.is_json) == ("bus/t", "0:1", True)
    member = decode(Message("0:2", BODY), id_field="id")
    assert member.correlation_id == "7"  # a number is an id too
    assert member.data == "text"  # payload: a JSON string stays a string
    assert member.is_json


def test_pointers_properties_and_the_whole_body() -> None:
    body = orjson.dumps({"meta": {"op": "o-9", "kind": "Failed"}, "out": [1, 2]})
    message = Message("5", body, {}, {"@key": b"k-1", "@subject": b"orders.done"}, 1700000000.5)
    event = decode(message, id_field="/meta/op", type_field="/meta/kind", data_field="")
    assert (event.correlation_id, event.event_type) == ("o-9", "Failed")
    assert event.data == {"meta": {"op": "o-9", "kind": "Failed"}, "out": [1, 2]}
    assert event.timestamp_s == 1700000000.5
    keyed = decode(message, id_field="@key", type_field="@subject", data_field="/out/1")
    assert (keyed.correlation_id, keyed.event_type, keyed.data) == ("k-1", "orders.done", 2)


def test_a_text_body_is_data_and_a_traceparent_header_is_kept() -> None:
    trace = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    message = Message("1", b"plain words", {"cid": b"c", "kind": b"Done", "traceparent": trace})
    event = decode(message, id_field="cid", type_field="kind", data_field="")
    assert (event.data, event.is_json) == ("plain words", False)
    assert event.traceparent == trace.decode()


@pytest.mark.parametrize(
    ("message", "fields", "reason"),
    [
        (
            Message("1", b"not json", {"cid": b"c"}),
            {"id_field": "cid", "type_field": "/type"},
            "body is not JSON",
        ),
        (Message("1", BODY), {"id_field": "missing"}, "no 'missing' in the message"),
        (Message("1", BODY), {"id_field": "/result"}, "the id is not text"),
        (Message("1", BODY, {"cid": b"\xff"}), {"id_field": "cid"}, "the id is not UTF-8"),
        (
            Message("1", b'{"broken', {"cid": b"c"}),
            {"id_field": "cid", "data_field": ""},
            "data is not valid JSON",
        ),
    ],
)
def test_malformed_messages_say_why(message: Message, fields: dict[str, str], reason: str) -> None:
    with pytest.raises(MalformedEvent, match=reason):
        decode(message, **fields)


def test_routes_of_one_topic_read_it_once_per_field_triple() -> None:
    settings = parse_settings(
        {
            "sources": {"bus": {"kind": "kafka", "url": "kafka://k:9092"}},
            "routes": [
                {
                    "name": name,
                    "path": f"/{name}",
                    "wait": {"stream": {"source": "bus", "key": "t", "success": [ok], **fields}},
                }
                for name, ok, fields in (
                    ("a", "A", {"id_field": "/id", "type_field": "/type"}),
                    ("b", "B", {"id_field": "/id", "type_field": "/type"}),
                    ("c", "C", {"id_field": "@key", "type_field": "/type"}),
                )
            ],
        },
        "<test>",
        env={},
    )
    decoder = Decoder(settings)
    assert decoder.streams == []  # no Redis stream to XREAD
    assert len(decoder.readings["bus/t"]) == 2
    message = Message("0:0", b'{"id": "x", "type": "B"}', {}, {"@key": b"y"})
    found = decoder.route_for_message("bus/t", message)
    assert found is not None
    route, status, event = found
    assert (route.name, status, event.correlation_id) == ("b", "succeeded", "x")
    keyed = Message("0:1", b'{"id": "x", "type": "C"}', {}, {"@key": b"y"})
    found = decoder.route_for_message("bus/t", keyed)
    assert found is not None and (found[0].name, found[2].correlation_id) == ("c", "y")
    nobody = Message("0:2", b'{"id": "x", "type": "Z"}', {}, {"@key": b"y"})
    assert decoder.route_for_message("bus/t", nobody) is None
