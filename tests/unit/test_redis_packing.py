"""Commands packed by hiredis (what `sidecar run` opts into at start) are byte for byte what
redis-py itself would send."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection, Connection

from sidecar.process import pack_with_hiredis, python_pack_command

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
