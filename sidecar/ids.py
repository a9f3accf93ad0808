"""New ids: random (version 4) UUIDs drawn from a pool of OS randomness.

A minted correlation id must be unguessable (a call's id is only safe because nobody can send
it first), so it comes from `os.urandom`, as `uuid.uuid4()` does, but 256 ids at a time: one
system call per 256 calls instead of one each.
"""

from __future__ import annotations

import os

_POOL_IDS = 256
_pool = b""
_at = 0


def new_id() -> str:
    """A random UUID (version 4, RFC 9562), as text."""
    global _pool, _at
    if _at >= len(_pool):
        _pool, _at = os.urandom(16 * _POOL_IDS), 0
    raw = bytearray(_pool[_at : _at + 16])
    _at += 16
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
