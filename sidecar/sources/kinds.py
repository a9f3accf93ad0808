"""Which `Source` serves which kind: each broker's module, and its library, imported on first
use only (the config refused a kind whose library is missing, with the pip command to run)."""

from __future__ import annotations

from collections.abc import Sequence

from ..config import Settings
from .base import Role, Source, Stream


def open_source(
    name: str,
    settings: Settings,
    streams: Sequence[Stream],
    role: Role,
    started_at: float,
) -> Source:
    """The `Source` of `name`'s kind, for one role of one loop."""
    config = settings.sources[name]
    group = config.group_name(settings.key_prefix)
    args = (name, config, streams, role)
    if config.kind == "kafka":
        from .kafka import KafkaSource

        return KafkaSource(*args, group=group, started_at=started_at)
    if config.kind == "amqp":
        from .amqp import AmqpSource

        return AmqpSource(*args, group=group, started_at=started_at)
    from .nats import NatsSource

    return NatsSource(*args, group=group, started_at=started_at)
