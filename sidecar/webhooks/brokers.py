"""The brokers' dispatchers: each source's shared, acknowledged read turned into outbox messages.

One `SourceLoop` per source reads the webhooks' way (a Kafka consumer group, one durable AMQP
queue, one durable NATS consumer: each completion goes to one replica), and hands every batch
here. Each message is decoded by the one decoder and held in the `Handoff`, like a Redis
entry; it is acknowledged only once the outbox holds its messages (a message with nothing to
dispatch, malformed or of a type no route lists, at once). While Redis cannot take them, the
batch waits here with its acknowledgements, so the read stops and the broker keeps the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..completions.completion import MalformedEvent
from ..completions.decoder import Decoder
from ..connections import REDIS_FAULTS, Backoff
from ..operations import Operations
from ..routing import Runtime
from ..sources.base import Received, Source
from ..sources.health import SourceHealth
from ..sources.loop import SourceLoop
from .handoff import Handoff, Held
from .runtime import WebhookRuntime

logger = logging.getLogger(__name__)

BLOCK_S = 1.0  # a read waits this long for a message
PENDING_BLOCK_S = 0.1  # ...and this long while completions wait for their calls' records


class BrokerDispatcher:
    """Dispatches the completions of one source, read by its webhooks' `SourceLoop`."""

    def __init__(
        self,
        name: str,
        webhooks: WebhookRuntime,
        runtime: Runtime,
        health: SourceHealth,
        operations: Operations | None = None,
    ) -> None:
        self.name, self.runtime = name, runtime
        self.handoff = Handoff(webhooks, name, runtime, operations)
        self._decoder = Decoder(runtime.settings)
        self._decoder_of = runtime.settings
        self.loop = SourceLoop(name, "webhooks", runtime, health, self.handle, block_s=BLOCK_S)

    @property
    def decoder(self) -> Decoder:
        """The one decoder of the live config (made again after a reload)."""
        if self._decoder_of is not self.runtime.settings:
            self._decoder = Decoder(self.runtime.settings)
            self._decoder_of = self.runtime.settings
        return self._decoder

    async def run(self) -> None:
        """Read and dispatch until cancelled."""
        await self.loop.run()

    async def handle(self, source: Source, batch: list[Received]) -> None:
        """Hold each completion of a batch, hand what is ready to the outbox, acknowledge."""
        done: list[Received] = []
        for received in batch:
            held = self._hold(received)
            if held is None:
                done.append(received)
            else:
                self.handoff.hold(held)
        handed = await self._flush()
        await source.ack([*done, *(item.token for item in handed)])
        self.loop.block_s = PENDING_BLOCK_S if self.handoff.pending else BLOCK_S

    def _hold(self, received: Received) -> Held | None:
        message = received.message
        try:
            found = self.decoder.route_for_message(received.stream, message)
        except MalformedEvent as exc:
            self.handoff.set_aside(received.stream, message.position, "malformed", str(exc))
            return None
        if found is None:
            return None  # no route uses this event type
        route, status, event = found
        return Held(
            # Positions can repeat (AMQP's delivery tags restart on a new channel): the
            # message read is the key.
            (received.stream, message.position, id(received)),
            route,
            status,
            event,
            message.timestamp_s or time.time(),
            f"{received.stream}/{message.position}",
            received,
        )

    async def _flush(self) -> list[Held]:
        """The outbox write, retried (with backoff) while Redis faults: the batch is not
        acknowledged meanwhile, and the read waits."""
        backoff = Backoff(0.1, 5.0)
        said = False
        while True:
            try:
                return await self.handoff.flush()
            except REDIS_FAULTS as exc:
                if not said:
                    logger.warning(
                        "completions not handed to the outbox (Redis fault); retrying quietly",
                        extra={"source": self.name, "error": str(exc)},
                    )
                    said = True
                await asyncio.sleep(backoff.next())
