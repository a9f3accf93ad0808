"""The Redis clients of the process (sidecar/connections.py) against a real Redis: the backoff of
reconnecting loops, keys grouped by cluster slot, URLs without passwords in logs, batches of
scripts on a Redis that lost its scripts, cluster detection, the health probe, and commands
packed by hiredis byte for byte as redis-py would send them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.crc import key_slot
from redis.exceptions import ResponseError

from devtools.redis_server import RedisServer, free_port
from sidecar.config import Settings, parse_settings
from sidecar.connections import (
    BLOCKING_MARGIN_S,
    Backoff,
    PrimaryCheck,
    RedisConnections,
    RedisHealth,
    connection_kwargs,
    detect_cluster,
    redacted,
    register,
    run_scripts,
)
from sidecar.metrics import Metrics


def settings(url: str, **raw: Any) -> Settings:
    return parse_settings({"redis_url": url, **raw}, "<test>", env={})


# --------------------------------------------------------------------------------------------
# Backoff
# --------------------------------------------------------------------------------------------


def test_backoff_doubles_within_20_percent_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.1, 1.0)
    expected = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for base in expected:
        delay = backoff.next()
        assert base * 0.8 <= delay <= base * 1.2
    backoff.reset()
    assert 0.08 <= backoff.next() <= 0.12


def test_backoff_delays_are_spread() -> None:
    delays = {round(Backoff(1.0, 1.0).next(), 6) for _ in range(50)}
    assert len(delays) > 10  # jittered: processes coming back do not retry in step


# --------------------------------------------------------------------------------------------
# Keys by slot, URLs in logs, client options
# --------------------------------------------------------------------------------------------


def test_on_one_server_every_key_goes_in_one_command(redis_url: str) -> None:
    connections = RedisConnections(settings(redis_url))
    assert connections.slot_groups(["a", "b", "{c}x"]) == [["a", "b", "{c}x"]]
    assert connections.slot_groups([]) == []


def test_on_a_cluster_keys_are_grouped_by_slot(redis_url: str) -> None:
    connections = RedisConnections(settings(redis_url))
    connections.mode = "cluster"  # as `open()` decides on a Redis Cluster
    keys = ["{jobs}.events", "orders.events", "{jobs}.other", "users.events"]
    groups = connections.slot_groups(keys)
    assert sorted(key for group in groups for key in group) == sorted(keys)  # each once
    for group in groups:
        assert len({key_slot(k.encode()) for k in group}) == 1
    assert len(groups) == len({key_slot(k.encode()) for k in keys})
    assert ["{jobs}.events", "{jobs}.other"] in groups  # one hash tag: one command, in order


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:sekrit@db:6379/0", "redis://***@db:6379/0"),
        ("rediss://app:sekrit@db:6380", "rediss://app:***@db:6380"),
        ("redis://app:p@ss:w@rd@db/1", "redis://app:***@db/1"),
        ("redis://db:6379/0", "redis://db:6379/0"),
    ],
)
def test_urls_are_logged_without_their_password(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert "sekrit" not in redacted(url)


def test_every_client_shares_the_auth_and_tls_options(tmp_path: Any) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    plain = connection_kwargs(settings("redis://db:6379/0"))
    assert plain == {"socket_connect_timeout": 2.0}
    secured = connection_kwargs(
        settings(
            "rediss://db:6380/0",
            redis_username="app",
            redis_password="sekrit",
            redis_tls={"ca_file": str(ca)},
        )
    )
    assert (secured["username"], secured["password"]) == ("app", "sekrit")
    assert secured["ssl_ca_certs"] == str(ca)
    assert secured["ssl_check_hostname"] is True


async def test_a_reader_is_a_named_connection_of_its_own(
    redis: aioredis.Redis, redis_url: str
) -> None:
    connections = RedisConnections(settings(redis_url))
    await connections.open()
    reader = connections.reader(2.0, "sidecar-test-reader")
    try:
        assert reader is not connections.shared
        await reader.ping()
        names = [c.get("name") for c in await redis.client_list()]
        assert "sidecar-test-reader" in names
        kwargs = reader.connection_pool.connection_kwargs  # type: ignore[union-attr]
        assert kwargs["socket_timeout"] == 2.0 + BLOCKING_MARGIN_S  # above the block time
    finally:
        await reader.aclose()
        await connections.aclose()


# --------------------------------------------------------------------------------------------
# What Redis is, and whether it answers
# --------------------------------------------------------------------------------------------


async def test_cluster_detection(redis_url: str) -> None:
    assert await detect_cluster(redis_url, {}) is False
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    assert await detect_cluster(nobody, {"socket_connect_timeout": 0.5}) is None


async def test_a_plain_server_is_used_as_one(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sidecar.connections")
    connections = RedisConnections(settings(redis_url))
    try:
        await connections.open()
        assert connections.mode == "plain" and not connections.is_cluster
        assert await connections.shared.ping()
        await PrimaryCheck(connections).ensure()  # no Sentinel: nothing to check
    finally:
        await connections.aclose()
    assert [r.mode for r in caplog.records if r.getMessage() == "Redis"] == ["plain"]  # type: ignore[attr-defined]


async def test_a_redis_down_at_start_is_used_as_one_server_and_said_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nobody = f"redis://:pw@127.0.0.1:{free_port()}/0"
    connections = RedisConnections(settings(nobody))
    try:
        await connections.open()  # the sidecar starts while Redis is down
        assert connections.mode == "plain"
    finally:
        await connections.aclose()
    said = [r for r in caplog.records if r.getMessage().startswith("could not ask Redis")]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    assert "pw" not in said[0].url  # type: ignore[attr-defined]


async def test_the_health_probe_says_each_change_once(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sidecar.connections")
    connections = RedisConnections(settings(own_redis.url))
    metrics = Metrics(CollectorRegistry())
    health = RedisHealth(connections, metrics)

    def up() -> float | None:
        return metrics.registry.get_sample_value("sidecar_redis_up")

    try:
        await connections.open()
        assert health.up is None and not health.checked.is_set()
        assert await health.probe() and await health.probe()
        assert (health.up, up(), health.checked.is_set()) == (True, 1, True)
        own_redis.stop()
        assert not await health.probe()
        assert not await health.probe()
        assert (health.up, up()) == (False, 0)
        assert list(health.down) == [own_redis.url]
        own_redis.start()
        assert await health.probe()
        assert (health.up, up(), health.down) == (True, 1, {})
    finally:
        await connections.aclose()
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Redis ")]
    assert said == ["Redis answers", "Redis does not answer", "Redis answers"]


# --------------------------------------------------------------------------------------------
# Batches of scripts
# --------------------------------------------------------------------------------------------

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL = "return redis.error_reply('refused: ' .. ARGV[1])"


async def test_a_batch_of_scripts_runs_again_after_redis_lost_them(
    own_redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    script = register(client, ECHO)
    calls = [([f"k{n}"], [f"v{n}"]) for n in range(5)]
    try:
        assert await run_scripts(client, script, []) == []
        first = await run_scripts(client, script, calls)
        assert first == [[f"k{n}".encode(), f"v{n}".encode()] for n in range(5)]
        await client.script_flush()  # as after a restart: NOSCRIPT for every call
        assert await run_scripts(client, script, calls) == first
        assert await client.script_exists(script.sha) == [True]  # loaded again, once
    finally:
        await client.aclose()


async def test_a_script_error_in_a_batch_is_raised(redis: aioredis.Redis) -> None:
    script = register(redis, FAIL)
    with pytest.raises(ResponseError, match="refused: a"):  # the first failure
        await run_scripts(redis, script, [([], ["a"]), ([], ["b"])])


# --------------------------------------------------------------------------------------------
# Commands packed by hiredis
# --------------------------------------------------------------------------------------------
