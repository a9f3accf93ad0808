"""What `sidecar run` sets for the whole process at start: the open-files limit and its warning,
and hiredis's command packer (byte for byte what redis-py itself would send)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection, Connection

from sidecar.process import pack_with_hiredis, python_pack_command

# --------------------------------------------------------------------------------------------
# The open-files warning at start: said when the limit cannot hold what the config admits, not
# on a machine whose limit can (each case in a child process: limits only go down)
# --------------------------------------------------------------------------------------------

CHILD = """
import json, logging, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[1])))
from sidecar.config import Settings
from sidecar.process import raise_open_files_limit

class Keep(logging.Handler):
    said = []
    def emit(self, record):
        self.said.append({"wanted": record.wanted, "limit": record.limit})

logging.getLogger("sidecar.server").addHandler(Keep())
raw = {"upstream": "http://127.0.0.1:9", "clients": {"max_connections": int(sys.argv[2])}}
raise_open_files_limit(Settings(**raw))
print(json.dumps(Keep.said))
"""


def warnings_with(limit: int, max_connections: int) -> list[dict[str, int]]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), str(max_connections)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: list[dict[str, int]] = json.loads(out)
    return result


@pytest.mark.parametrize(
    ("limit", "max_connections", "warned"),
    [
        (20_000, 10_000, False),  # the defaults fit a common limit: no warning at every start
        (4_096, 10_000, True),  # 10,000 clients + 1,000 pooled upstream connections do not
        (4_096, 2_000, False),
    ],
)
def test_the_open_files_warning(limit: int, max_connections: int, warned: bool) -> None:
    said = warnings_with(limit, max_connections)
    if warned:
        assert said == [{"wanted": max_connections + 1000 + 256, "limit": limit}]
    else:
        assert said == []


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
