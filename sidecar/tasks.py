"""Background tasks owned by the app: spawned through a `TaskSet`, cancelled and awaited at
cleanup. Handlers never create fire-and-forget tasks themselves."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .faults import REDIS_FAULTS

logger = logging.getLogger(__name__)

T = TypeVar("T")

RECANCEL_S = 0.25
FAULT_LINE_EVERY_S = 1.0


class TaskSet:
    """Tracks tasks; failures are logged (a bug with its traceback; a Redis fault as one
    WARNING a second, counted through `on_fault`); `close()` cancels and awaits whatever is
    left."""

    def __init__(self, name: str, on_fault: Callable[[], object] | None = None) -> None:
        self.name = name
        self.on_fault = on_fault  # called for each task ended by a Redis fault (a metric)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._said_fault = -FAULT_LINE_EVERY_S

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start `coro` as a tracked task."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, REDIS_FAULTS):  # the deployment's: one line a second, no traceback
            if self.on_fault is not None:
                self.on_fault()
            now = time.monotonic()
            if now - self._said_fault >= FAULT_LINE_EVERY_S:
                self._said_fault = now
                logger.warning(
                    "background task stopped by a Redis fault",
                    extra={"tasks": self.name, "error": f"{exc.__class__.__name__}: {exc}"},
                )
        elif exc is not None:
            logger.error("background task failed", extra={"tasks": self.name}, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, grace_s: float = 10.0) -> None:
        """Cancel every task and wait (bounded) for them to finish.

        A cancellation can be lost inside a library (redis-py on Python 3.11 sometimes swallows
        one mid-read), so tasks still running are cancelled again every `RECANCEL_S`; one that
        outlives `grace_s` is logged, not waited for forever.
        """
        pending = set(self._tasks)
        deadline = asyncio.get_running_loop().time() + grace_s
        while pending:
            for task in pending:
                task.cancel()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                for task in pending:
                    logger.error(
                        "background task ignored its cancellation", extra={"task": task.get_name()}
                    )
                return
            _done, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, left))


def cancelling() -> bool:
    """True when the current task has been asked to stop.

    A cancellation can surface as another exception (redis-py turns a cancelled read into a
    connection error on Python 3.11), so loops that catch and retry must check this first.
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def checkpoint() -> None:
    """Raise `CancelledError` when the current task has been asked to stop.

    Loops that talk to Redis call this every iteration: on Python 3.11, redis-py's connection
    check (`asyncio.timeout(0)`) can swallow a `cancel()` without raising (CPython #134471), and
    a task group cancels its children only once.
    """
    if cancelling():
        raise asyncio.CancelledError
