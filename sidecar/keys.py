"""Every Redis key the sidecar's call path owns (all start with the configured `key_prefix`).

The operators' completion streams (`routes[].wait.stream.key`) are theirs, never prefixed.
Webhook keys and consumer-group names live in `sidecar.webhooks.keys`.

    {prefix}:claim:{<id>}            string, TTL tracking_ttl: the correlation id of the call that
                                     owns this id (SET NX: the first call to claim it)
    {prefix}:call:{<id>}             hash, TTL tracking_ttl: one 202'd call (route, tenant,
                                     correlation_id, location, upstream_location, state,
                                     created_at), written once by the call that owns the id
    {prefix}:loc:{upstream path}     string, TTL tracking_ttl: the id of the call whose upstream
                                     Location this is (long-poll lookup)
    {prefix}:tenancy:key             string: random key of the credential hash when none is set
    {prefix}:op:{<cid>}              hash, TTL max(tracking_ttl, operations.retention, the
                                     route's idempotency.ttl): one operation by its correlation
                                     id (route, tenant, wait id, Locations, its status token's
                                     and idempotency key's digests, state and outcome)
    {prefix}:op:{<cid>}:ev           list, TTL tracking_ttl, at most 100: the operation's
                                     timeline events (JSON), oldest first
    {prefix}:optoken:{<sha256>}      string, TTL operations.retention: a status token (by its
                                     SHA-256) → "<tenant or -> <correlation id>"
    {prefix}:idem:{<sha256>}         string, TTL the route's idempotency.ttl: an Idempotency-Key
                                     (by the SHA-256 of tenant, route and key) → "<owner>
                                     <request fingerprint> <lease until, ms> <correlation id>"

`{<id>}` is a Redis Cluster hash tag: an id's claim and record share a slot (one script writes
both), while different calls spread over the cluster. Braces and `%` in an id are
percent-encoded there, so a tag is never cut short.
"""

from __future__ import annotations


def tag(value: str) -> str:
    """`value` as a hash tag: braces and `%` percent-encoded, in braces."""
    if "%" in value or "{" in value or "}" in value:  # rare: ids are checked or minted
        value = value.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return "{" + value + "}"


def claim_key(prefix: str, wait_id: str) -> str:
    """Who owns an id a call waits on (the first call to claim it)."""
    return f"{prefix}:claim:{tag(wait_id)}"


def call_key(prefix: str, wait_id: str) -> str:
    """Hash describing one tracked call, under the id its completion carries."""
    return f"{prefix}:call:{tag(wait_id)}"


def location_key(prefix: str, upstream_path: str) -> str:
    """Lookup from an upstream Location path (with query) to the id of its call."""
    return f"{prefix}:loc:{upstream_path}"


def tenancy_key(prefix: str) -> str:
    """Random per-installation key of the credential hash."""
    return f"{prefix}:tenancy:key"


def operation_key(prefix: str, correlation_id: str) -> str:
    """Hash of one operation (a synchronised call), by its correlation id."""
    return f"{prefix}:op:{tag(correlation_id)}"


def operation_events_key(prefix: str, correlation_id: str) -> str:
    """List of one operation's timeline events (same slot as its hash)."""
    return f"{prefix}:op:{tag(correlation_id)}:ev"


def status_token_key(prefix: str, token_digest: str) -> str:
    """What a status token (by its SHA-256, hex) names."""
    return f"{prefix}:optoken:{{{token_digest}}}"


def idempotency_key(prefix: str, scope_digest: str) -> str:
    """One Idempotency-Key, by the SHA-256 (hex) of its scope: tenant, route, key."""
    return f"{prefix}:idem:{{{scope_digest}}}"
