"""Fixtures of the HTTP edge's tests."""

from __future__ import annotations

import pytest

from ..conftest import FakeApiFactory
from ..fakes import FakeApi


@pytest.fixture
async def api(fake_api: FakeApiFactory) -> FakeApi:
    """An upstream that records each request it gets (`api.seen`): POST /jobs → 202 (Location
    /jobs/1), anything else → 200."""
    return await fake_api(accept="POST /jobs", location="/jobs/1", accepted={})
