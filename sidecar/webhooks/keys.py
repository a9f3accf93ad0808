"""Every Redis key the webhook machinery owns; all live under `{prefix}:wh:`.

Keys of one owner (a tenant hash `t_…`, or `operator`) share the hash tag `{owner}`, so every
transaction and script of one owner's subscriptions, messages and queues touches one Redis
Cluster slot, while different owners spread across the cluster.

    {prefix}:wh:{owner}:sub:{id}         hash: one subscription (url, events, secrets, ...)
    {prefix}:wh:{owner}:subs             set: the owner's subscription ids
    {prefix}:wh:{owner}:q:{id}           stream, consumer group `delivery`: the subscription's
                                         queue of attempts to make (`m` message, `n` attempt,
                                         `t` trigger); an entry is deleted once handled
    {prefix}:wh:{owner}:msg:{mid}        hash, TTL retention.messages: one message (subscription,
                                         type, body, state, attempts, last answer)
    {prefix}:wh:{owner}:msg:{mid}:log    list, newest first, TTL retention.messages: its attempts
    {prefix}:wh:{owner}:attempts:{id}    list, newest first, the last 1000 (and none older than
                                         retention.attempts): a subscription's attempts log
    {prefix}:wh:{owner}:log              stream, MAXLEN ~ 10000, MINID retention.attempts: the
                                         owner's attempts, newest last (the portal's message log)
    {prefix}:wh:{owner}:due              sorted set, score = due time (ms): scheduled retries,
                                         as `sub|message|attempt|trigger`
    {prefix}:wh:{owner}:tests            sorted set: the owner's test sends of the last minute
    {prefix}:wh:subs                     hash: every subscription id → its owner
    {prefix}:wh:subs:by-age              sorted set, score = creation time (s): every
                                         subscription id, oldest first (the operator's pages)
    {prefix}:wh:subs:version             string: a new random token on every subscription change
    {prefix}:wh:ready                    sorted set: `owner|id` of queues holding work (score:
                                         the last enqueue, µs), what delivery workers read
    {prefix}:wh:dues                     sorted set: owner → its earliest scheduled retry (ms)
    {prefix}:wh:read                     hash: `owner|id` of queues some consumer has read
                                         from → when (µs), or 0 when the reconciler found work
                                         there; the only queues that can hold an attempt in
                                         flight (what the claimer walks); a queue found empty
                                         leaves it
    {prefix}:wh:bell                     stream, MAXLEN 1: rung on every enqueue (wakes readers)
    {prefix}:wh:dead                     stream, MAXLEN ~ outbox_maxlen: dead letters
    {prefix}:wh:dead-completions         stream, MAXLEN ~ 10000: completions set aside (stream,
                                         position, route, reason, time)
    {prefix}:wh:log                      stream, MAXLEN ~ 100000: every owner's attempts (the
                                         operator's message log), with their owner
    {prefix}:wh:owner-of:{mid}           string, the message's TTL: its owner (the operator's
                                         lookups of one message)
    {prefix}:wh:tests                    sorted set: every client's test sends of the last minute
    {prefix}:wh:test-bytes               hash, minute → bytes: every client's test data, last hour

Consumer groups: `{prefix}:webhooks` on every completion stream (the dispatcher), `delivery` on
every subscription queue (the delivery workers).
"""

from __future__ import annotations

DELIVERY_GROUP = "delivery"


def wh(prefix: str) -> str:
    """Root of every webhook key."""
    return f"{prefix}:wh"


def owned(prefix: str, owner: str) -> str:
    """Root of one owner's keys, hash-tagged by the owner."""
    return f"{prefix}:wh:{{{owner}}}"


def subscription_key(prefix: str, owner: str, sub_id: str) -> str:
    """Hash of one subscription."""
    return f"{owned(prefix, owner)}:sub:{sub_id}"


def owner_key(prefix: str, owner: str) -> str:
    """Set of one owner's subscription ids."""
    return f"{owned(prefix, owner)}:subs"


def queue_key(prefix: str, owner: str, sub_id: str) -> str:
    """Stream of one subscription's attempts to make."""
    return f"{owned(prefix, owner)}:q:{sub_id}"


def message_key(prefix: str, owner: str, message_id: str) -> str:
    """Hash of one message."""
    return f"{owned(prefix, owner)}:msg:{message_id}"


def message_log_key(prefix: str, owner: str, message_id: str) -> str:
    """List of one message's attempts, newest first."""
    return f"{owned(prefix, owner)}:msg:{message_id}:log"


def attempts_key(prefix: str, owner: str, sub_id: str) -> str:
    """List of a subscription's attempts, newest first."""
    return f"{owned(prefix, owner)}:attempts:{sub_id}"


def owner_log_key(prefix: str, owner: str) -> str:
    """Stream of an owner's attempts (oldest first)."""
    return f"{owned(prefix, owner)}:log"


def due_key(prefix: str, owner: str) -> str:
    """Sorted set of an owner's scheduled retries (score: due time in ms)."""
    return f"{owned(prefix, owner)}:due"


def test_sends_key(prefix: str, owner: str) -> str:
    """Sorted set of an owner's recent test sends (the per-minute quota)."""
    return f"{owned(prefix, owner)}:tests"


def all_test_sends_key(prefix: str) -> str:
    """Sorted set of every client's recent test sends (the total per minute)."""
    return f"{wh(prefix)}:tests"


def test_bytes_key(prefix: str) -> str:
    """Hash of every client's test data per minute of the last hour (the total per hour)."""
    return f"{wh(prefix)}:test-bytes"


def all_subscriptions_key(prefix: str) -> str:
    """Hash of every subscription id to its owner."""
    return f"{wh(prefix)}:subs"


def subscriptions_by_age_key(prefix: str) -> str:
    """Sorted set of every subscription id by creation time."""
    return f"{wh(prefix)}:subs:by-age"


def all_log_key(prefix: str) -> str:
    """Stream of every owner's attempts (oldest first), for the operator's message log."""
    return f"{wh(prefix)}:log"


def message_owner_key(prefix: str, message_id: str) -> str:
    """The owner of one message."""
    return f"{wh(prefix)}:owner-of:{message_id}"


def version_key(prefix: str) -> str:
    """A token renewed by every subscription change; readers cache the set until it moves."""
    return f"{wh(prefix)}:subs:version"


def ready_key(prefix: str) -> str:
    """Sorted set of `owner|sub` whose queue holds work."""
    return f"{wh(prefix)}:ready"


def read_index_key(prefix: str) -> str:
    """Hash of `owner|sub` queues read from (or found holding work) → when, in µs."""
    return f"{wh(prefix)}:read"


def dues_key(prefix: str) -> str:
    """Sorted set of owners by their earliest scheduled retry."""
    return f"{wh(prefix)}:dues"


def bell_key(prefix: str) -> str:
    """A one-entry stream rung on every enqueue."""
    return f"{wh(prefix)}:bell"


def dead_completions_key(prefix: str) -> str:
    """Stream of completions that could not be turned into messages."""
    return f"{wh(prefix)}:dead-completions"


def dead_key(prefix: str) -> str:
    """Stream of dead letters."""
    return f"{wh(prefix)}:dead"


def dispatch_group(prefix: str) -> str:
    """The consumer group reading the completion streams for fan-out."""
    return f"{prefix}:webhooks"
