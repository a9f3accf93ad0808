"""Small test helpers: awaiting a condition, reading a metric."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from sidecar.state import METRICS


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for `condition()` to hold (checked every few ms), or fail after `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.002)


def registry(client: TestClient) -> CollectorRegistry:
    """The sidecar app's own metrics registry."""
    return client.app[METRICS].registry


def metric(client: TestClient, name: str, **labels: str) -> float:
    """Current value of a sample (0.0 when it was never set)."""
    return registry(client).get_sample_value(name, labels) or 0.0
