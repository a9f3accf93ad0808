"""Fixtures of the front's tests: nginx running an exported front."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .support import StartFront, fronts, need_nginx


@pytest.fixture
async def start_front(tmp_path: Path) -> AsyncIterator[StartFront]:
    """Start nginx with the front of a config (tests/front/support.py)."""
    need_nginx()
    async with fronts(tmp_path) as start:
        yield start
