"""What `sidecar run` sets for the whole process at start: the open-files limit, what
`clients.max_connections: auto` comes to under it (said in one line, and in effect in a process
whose limit is lowered), the warning when an explicit number does not fit, and hiredis's command
packer (byte for byte what redis-py itself would send)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from redis.asyncio.connection import AbstractConnection, Connection

from sidecar.config import Settings
from sidecar.connections import POOL_SIZE
from sidecar.process import (
    REDIS_FILES,
    client_connections,
    derive_max_connections,
    pack_with_hiredis,
    python_pack_command,
    reserved_files,
)

from .conftest import FakeApiFactory
from .helpers import until_true
from .processes import StartProcess, base_config, metric_value

# --------------------------------------------------------------------------------------------
# clients.max_connections: auto, derived from the open-files limit
# --------------------------------------------------------------------------------------------


def settings(**raw: Any) -> Settings:
    return Settings(**{"upstream": "http://127.0.0.1:9", **raw})


REDIS = {"redis_url": "redis://127.0.0.1:6379/0"}


@pytest.mark.parametrize(
    ("raw", "reserved"),
    [
        ({}, {"the upstream pool": 1000, "the rest": 256}),
        (
            REDIS,
            {"the upstream pool": 1000, "Redis": 80, "webhook deliveries": 128, "the rest": 256},
        ),
        (
            {**REDIS, "redis_cluster": True, "webhooks": {"concurrency": 8}},
            {"the upstream pool": 1000, "Redis": 800, "webhook deliveries": 32, "the rest": 256},
        ),
        (
            {
                "proxy": {"max_connections": 50},
                "sources": {"bus": {"kind": "nats", "url": "nats://n:4222"}},
                "routes": [
                    {
                        "name": "r",
                        "path": "/r",
                        "wait": {"stream": {"source": "bus", "key": "k", "success": ["ok"]}},
                    }
                ],
            },
            {"the upstream pool": 50, "brokers": 16, "the rest": 256},
        ),
    ],
)
def test_what_a_process_keeps_besides_its_clients(raw: dict[str, Any], reserved: Any) -> None:
    assert reserved_files(settings(**raw)) == reserved


def test_the_redis_reserve_holds_the_shared_pool_and_its_readers() -> None:
    assert REDIS_FILES >= POOL_SIZE + 8


@pytest.mark.parametrize(
    ("limit", "raw", "allowed"),
    [
        (20_000, {}, 18_744),  # 20,000 - 1,000 pooled upstream connections - 256
        (20_000, REDIS, 18_536),  # and Redis (80), webhook deliveries (4 x 32)
        (20_000, {**REDIS, "workers": 4}, 18_536),  # per worker: the limit is per process
        (600, {"proxy": {"max_connections": 100}}, 244),
        (1_024, {}, 256),  # below the reserve: a quarter of the limit (and a warning at start)
        (20_000, {"clients": {"max_connections": 5_000}}, 5_000),  # a number is kept as it is
    ],
)
def test_auto_is_the_limit_less_the_reserve(limit: int, raw: dict[str, Any], allowed: int) -> None:
    assert client_connections(settings(**raw), limit) == allowed


def test_auto_holds_15000_calls_on_a_20000_file_limit_with_the_defaults() -> None:
    # What the README promises: 15,000 held calls, each a client connection, on one process.
    assert derive_max_connections(20_000, settings(**REDIS)) >= 15_000
    assert settings().clients.max_connections == "auto"


# Each case in a child process: a limit, once lowered, cannot be raised again.
CHILD = """
import json, logging, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
from sidecar.config import Settings
from sidecar.process import raise_open_files_limit

class Keep(logging.Handler):
    said = []
    def emit(self, record):
        fields = ("limit", "wanted", "max_connections", "open_files_limit", "reserved")
        kept = {k: getattr(record, k) for k in fields if hasattr(record, k)}
        self.said.append({"level": record.levelname, "message": record.getMessage(), **kept})

logging.getLogger("sidecar.server").addHandler(Keep())
logging.getLogger("sidecar.server").setLevel(logging.INFO)
allowed = raise_open_files_limit(Settings(**json.loads(sys.argv[2])))
print(json.dumps({"allowed": allowed, "said": Keep.said}))
"""


def start_with(limit: int, raw: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), json.dumps({"upstream": "http://h:9", **raw})],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def test_auto_is_said_in_one_line_at_start() -> None:
    started = start_with(20_000, {"redis_url": "redis://r:6379/0"})
    assert started["allowed"] == 18_536
    assert started["said"] == [
        {
            "level": "INFO",
            "message": "clients.max_connections: auto, 18536 per listener: the open-files limit "
            "20000 less 1464 kept for the upstream pool 1000, Redis 80, webhook deliveries 128, "
            "the rest 256",
            "max_connections": 18_536,
            "open_files_limit": 20_000,
            "reserved": {
                "the upstream pool": 1000,
                "Redis": 80,
                "webhook deliveries": 128,
                "the rest": 256,
            },
        }
    ]


def test_auto_under_a_limit_below_the_reserve_is_warned_about() -> None:
    started = start_with(1_024, {})
    assert started["allowed"] == 256
    assert [s["level"] for s in started["said"]] == ["INFO", "WARNING"]
    assert started["said"][1] == {
        "level": "WARNING",
        "message": "the open-files limit is below what clients.max_connections needs; lower "
        "proxy.max_connections or raise the limit (ulimit -n)",
        "limit": 1_024,
        "wanted": 256 + 1_256,
        "max_connections": 256,
    }


@pytest.mark.parametrize(
    ("limit", "max_connections", "warned"),
    [
        (20_000, 10_000, False),  # a number the limit holds: nothing said at start
        (4_096, 10_000, True),  # 10,000 clients + 1,000 pooled upstream connections do not
        (4_096, 2_000, False),
    ],
)
def test_the_open_files_warning(limit: int, max_connections: int, warned: bool) -> None:
    started = start_with(limit, {"clients": {"max_connections": max_connections}})
    assert started["allowed"] == max_connections
    if warned:
        assert [(s["wanted"], s["limit"]) for s in started["said"]] == [
            (max_connections + 1000 + 256, limit)
        ]
    else:
        assert started["said"] == []


async def test_auto_caps_client_connections_in_a_process_with_a_lowered_limit(
    run_sidecar: StartProcess, http: aiohttp.ClientSession, fake_api: FakeApiFactory
) -> None:
    # 600 files, 100 pooled upstream connections, 256 for the rest: 244 clients per listener.
    api = await fake_api()
    config = base_config(api.url, [], proxy={"max_connections": 100})
    sidecar = await run_sidecar(config, open_files=600)
    said = await sidecar.wait_log(lambda line: line.get("open_files_limit") == 600)
    assert said["max_connections"] == 244
    gauge = 'sidecar_client_connections{listener="proxy"}'
    refused = 'sidecar_client_connections_refused_total{listener="proxy"}'
    already = await metric_value(http, sidecar.admin_url, gauge) or 0  # the readiness check's
    opened: list[asyncio.StreamWriter] = []
    host, _, port = config["listen"].rpartition(":")
    try:
        for _ in range(260):
            _, writer = await asyncio.open_connection(host, int(port))
            opened.append(writer)

        async def all_seen() -> bool:
            held = await metric_value(http, sidecar.admin_url, gauge) or 0
            closed = await metric_value(http, sidecar.admin_url, refused) or 0
            return held + closed >= already + 260

        await until_true(all_seen, 10, what="the sidecar took every connection")
        assert await metric_value(http, sidecar.admin_url, gauge) == 244
        assert await metric_value(http, sidecar.admin_url, refused) == already + 260 - 244
    finally:
        for writer in opened:
            writer.close()


# --------------------------------------------------------------------------------------------
# hiredis's packer
# --------------------------------------------------------------------------------------------

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "key", b"bytes", 7, 2.5, "unicode é", 12345678901234567890),
    ("EVALSHA", "0123abcd", 2, "{p}:claim:x", "{p}:call:x", "field", "", 0.1, 1e20),
    ("XINFO CONSUMERS", "stream", "group"),  # a command name of two words
    (b"CLIENT SETNAME", b"sidecar"),
    ("XADD", "s", "*", "payload", b"\x00\xff" * 1000),
    ("SET", "big", "x" * 200_000),  # past redis-py's chunking cutoff
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_hiredis_packing_is_what_redis_py_sends(
    command: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packer is replaced for the whole process: put redis-py's back after the test.
    monkeypatch.setattr(AbstractConnection, "pack_command", python_pack_command)
    assert pack_with_hiredis()
    connection = Connection()
    ours = b"".join(AbstractConnection.pack_command(connection, *command))
    theirs = b"".join(python_pack_command(connection, *command))
    assert ours == theirs
