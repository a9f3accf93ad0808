"""Every Redis key the webhook machinery owns; all live under `{prefix}:wh:`.

{prefix}:wh:sub:{id}             hash: one subscription (owner, url, events, secrets, ...)
{prefix}:wh:subs                 set: every subscription id (the operator's listing)
{prefix}:wh:subs:version         string: a new random token on every subscription change
{prefix}:wh:owner:{owner}        set: subscription ids of one owner (tenant hash or operator)
{prefix}:wh:msg:{message_id}     hash, TTL: one message (subscription, type, body, state)
{prefix}:wh:outbox               stream, trimmed of handled entries past outbox_maxlen: attempts
{prefix}:wh:due                  sorted set, score = due time (ms): scheduled retries
{prefix}:wh:attempts:{sub_id}    list, newest first, capped: the attempts log
{prefix}:wh:dead                 stream, MAXLEN ~: dead letters (last attempt failed)

Consumer groups: `{prefix}:webhooks` on every completion stream (the dispatcher), `delivery` on
the outbox (the delivery workers).
"""

from __future__ import annotations


def wh(prefix: str) -> str:
    """Root of every webhook key."""
    return f"{prefix}:wh"


def subscription_key(prefix: str, sub_id: str) -> str:
    """Hash of one subscription."""
    return f"{wh(prefix)}:sub:{sub_id}"


def all_subscriptions_key(prefix: str) -> str:
    """Set of every subscription id."""
    return f"{wh(prefix)}:subs"


def version_key(prefix: str) -> str:
    """A token renewed by every subscription change; readers cache the set until it moves."""
    return f"{wh(prefix)}:subs:version"


def owner_key(prefix: str, owner: str) -> str:
    """Set of one owner's subscription ids."""
    return f"{wh(prefix)}:owner:{owner}"


def message_key(prefix: str, message_id: str) -> str:
    """Hash of one message."""
    return f"{wh(prefix)}:msg:{message_id}"


def outbox_key(prefix: str) -> str:
    """Stream of attempts ready to run."""
    return f"{wh(prefix)}:outbox"


def due_key(prefix: str) -> str:
    """Sorted set of scheduled retries (score: due time in ms)."""
    return f"{wh(prefix)}:due"


def attempts_key(prefix: str, sub_id: str) -> str:
    """List of a subscription's attempts, newest first."""
    return f"{wh(prefix)}:attempts:{sub_id}"


def dead_key(prefix: str) -> str:
    """Stream of dead letters."""
    return f"{wh(prefix)}:dead"


DELIVERY_GROUP = "delivery"


def dispatch_group(prefix: str) -> str:
    """The consumer group reading the completion streams for fan-out."""
    return f"{prefix}:webhooks"
