"""`sources:` and the routes on them: every mistake reported at once with its key path and the
exact line a user reads; what `sidecar check` says about a valid config."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from sidecar.config import ConfigError, Settings, parse_settings
from sidecar.config.advice import advice
from sidecar.config.sources import LIBRARIES


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env={})
    return caught.value.problems


def settings_of(text: str) -> Settings:
    return parse_settings(yaml.safe_load(textwrap.dedent(text)), "test.yaml", env={})


ROUTE = "{name: r, path: /r, wait: {stream: {source: bus, key: t, success: [Done]}}}"


def test_every_mistake_at_once_with_its_key_path() -> None:
    assert problems_of(
        """
        sources:
          bus: {kind: kafka, url: 'kafka://k1:9092,k2', ack_wait: 1s}
          rabbit: {kind: amqp, url: 'amqp://guest:guest@rabbit/', look_back: 5s}
          mq: {kind: mqtt, url: 'mqtt://x'}
          nats: {kind: nats, url: 'nats://n1:4222', sasl_mechanism: PLAIN}
          nope: {kind: kafka}
        routes:
          - {name: a, path: /a, wait: {stream: {source: ghost, key: t, success: [Done]}}}
          - {name: b, path: /b, wait: {stream: {source: bus, key: t, binding: 'x.#',
              id_field: '@routing_key', success: [Done]}}}
          - {name: c, path: /c, wait: {stream: {key: t, id_field: /id, data_field: '',
              success: [Done]}}}
          - {name: d, path: /d, wait: {stream: {source: rabbit, key: t, type_field: '@nope',
              success: [Done]}}}
        """
    ) == [
        "sources.bus.url: invalid Kafka URL 'kafka://k1:9092,k2': 'k2' is not host:port "
        "(use kafka://host:port[,host:port...])",
        "sources.mq.kind: Input should be 'kafka', 'amqp' or 'nats' (got 'mqtt')",
        "sources.nope.url: required key is missing",
        "sources.bus.ack_wait: for nats sources only (this one is kafka)",
        "sources.rabbit.look_back: for kafka and nats sources only (AMQP cannot look back)",
        "sources.nats.sasl_mechanism: for kafka sources only (this one is nats)",
        "routes[0].wait.stream.source: no source 'ghost' in sources (bus, mq, nats, nope, rabbit)",
        "routes[1].wait.stream.binding: binding is for AMQP sources only (source 'bus' is kafka)",
        "routes[1].wait.stream.id_field: @routing_key is a property of amqp messages only",
        "routes[2].wait.stream: a stream wait needs redis_url",
        "routes[2].wait.stream.id_field: '/id' needs a broker source (a Redis stream entry has "
        "named fields only)",
        "routes[2].wait.stream.data_field: '' needs a broker source (a Redis stream entry has "
        "named fields only)",
        "routes[3].wait.stream.type_field: unknown message property '@nope' (@key (kafka), "
        "@routing_key (amqp), @correlation_id (amqp), @message_id (amqp), @type (amqp), "
        "@subject (nats))",
    ]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{kind: amqp, url: 'http://rabbit'}", "invalid AMQP URL 'http://rabbit'"),
        ("{kind: nats, url: 'nats://'}", "invalid NATS URL 'nats://': 'nats://' is not a"),
        ("{kind: kafka, url: 'k1:9092'}", "invalid Kafka URL 'k1:9092' (use kafka://"),
        (
            "{kind: kafka, url: 'kafka://k:9092', session_timeout: 1s, heartbeat_interval: 2s}",
            "heartbeat_interval must be shorter than session_timeout",
        ),
        ("{kind: nats, url: 'nats://n:4222', group: 'a.b'}", "String should match pattern"),
    ],
)
def test_a_bad_source_says_why(source: str, expected: str) -> None:
    [problem] = problems_of(f"sources: {{bus: {source}}}")
    assert problem.startswith("sources.bus")
    assert expected in problem


def test_a_kind_whose_library_is_missing_is_refused_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(LIBRARIES, "kafka", ("no_such_kafka_library", "sidecar[kafka]"))
    assert problems_of("sources: {bus: {kind: kafka, url: 'kafka://k:9092'}}") == [
        "sources.bus.kind: kind kafka needs the no_such_kafka_library library: "
        "pip install 'sidecar[kafka]'"
    ]


def test_a_broker_route_needs_no_redis_but_check_says_what_it_misses() -> None:
    settings = settings_of(
        f"""
        sources:
          bus: {{kind: nats, url: 'nats://n1:4222,n2:4222'}}
          spare: {{kind: amqp, url: 'amqps://u:p@rabbit/vh'}}
        routes: [{ROUTE}]
        """
    )
    route = settings.routes[0]
    assert route.wait is not None and route.wait.stream is not None
    assert route.wait.stream.stream_id == "bus/t"
    assert settings.stream_keys == []  # no Redis stream
    assert settings.sources_used == ["bus"]
    said = advice(settings)
    assert (
        "redis_url is unset: completions of routes on bus wake held calls, but reach no "
        "webhook (Redis is the sidecar's own store: tracking, subscriptions, the outbox)"
    ) in said
    assert "sources spare: no route waits on them (nothing is read)" in said


def test_source_defaults_and_the_shared_read_name() -> None:
    settings = settings_of(
        f"""
        key_prefix: 'acme:prod'
        sources: {{bus: {{kind: kafka, url: 'kafka://k:9092'}}}}
        routes: [{ROUTE}]
        redis_url: redis://127.0.0.1:6379/0
        """
    )
    bus = settings.sources["bus"]
    assert (bus.look_back, bus.batch, bus.session_timeout, bus.heartbeat_interval) == (
        10.0,
        500,
        10.0,
        3.0,
    )
    assert bus.group_name(settings.key_prefix) == "acme-prod-webhooks"


def test_the_password_comes_from_a_file(tmp_path: pytest.TempPathFactory) -> None:
    secret = tmp_path / "pw"  # type: ignore[operator]
    secret.write_text("s3cret\n")
    settings = settings_of(
        f"sources: {{bus: {{kind: amqp, url: 'amqp://rabbit/', username: u, "
        f"password_file: '{secret}'}}}}"
    )
    password = settings.sources["bus"].password
    assert password is not None and password.get_secret_value() == "s3cret"
