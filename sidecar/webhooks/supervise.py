"""Running the webhook engine's loops forever: a Redis fault or a bug backs off and starts the
loop again; neither ends it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..connections import REDIS_FAULTS, Backoff
from ..tasks import cancelling, checkpoint

logger = logging.getLogger(__name__)

QUIET_AFTER_S = 10.0  # a loop that ran this long without a fault starts a new episode


async def supervised(
    name: str, loop: Callable[[], Awaitable[None]], on_fault: Callable[[], object] | None = None
) -> None:
    """Run `loop` forever; back off (with jitter) on Redis faults and on bugs. A run of Redis
    faults is logged once (no traceback) until the loop has run well again, each counted
    through `on_fault`; a bug is logged each time, with its traceback."""
    backoff = Backoff(0.1, 5.0)
    faulty = False
    while True:
        checkpoint()
        started = time.monotonic()
        try:
            await loop()
        except REDIS_FAULTS as exc:
            if cancelling():
                raise asyncio.CancelledError from exc
            if on_fault is not None:
                on_fault()
            if time.monotonic() - started > QUIET_AFTER_S:
                faulty = False
                backoff.reset()
            if not faulty:
                logger.warning(
                    "webhook loop: Redis fault; retrying quietly",
                    extra={"loop": name, "error": str(exc)},
                )
                faulty = True
        except Exception:
            if cancelling():
                raise asyncio.CancelledError from None
            logger.exception("webhook loop crashed", extra={"loop": name})
        await asyncio.sleep(backoff.next())
