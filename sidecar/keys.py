"""Every Redis key the sidecar's call path owns (all start with the configured `key_prefix`).

The operators' completion streams (`routes[].wait.stream.key`) are theirs, never prefixed.
Webhook keys and consumer-group names live in `sidecar.webhooks.keys`.

    {prefix}:claim:{id}              string, TTL tracking_ttl: the correlation id of the call that
                                     owns this id (SET NX: the first call to claim it)
    {prefix}:call:{id}               hash, TTL tracking_ttl: one 202'd call (route, tenant,
                                     correlation_id, location, upstream_location, state,
                                     created_at), written once by the call that owns the id
    {prefix}:loc:{upstream path}     string, TTL tracking_ttl: the id of the call whose upstream
                                     Location this is (long-poll lookup)
    {prefix}:tenancy:key             string: random key of the credential hash when none is set
"""

from __future__ import annotations


def claim_key(prefix: str, wait_id: str) -> str:
    """Who owns an id a call waits on (the first call to claim it)."""
    return f"{prefix}:claim:{wait_id}"


def call_key(prefix: str, wait_id: str) -> str:
    """Hash describing one tracked call, under the id its completion carries."""
    return f"{prefix}:call:{wait_id}"


def location_key(prefix: str, upstream_path: str) -> str:
    """Lookup from an upstream Location path (with query) to the id of its call."""
    return f"{prefix}:loc:{upstream_path}"


def tenancy_key(prefix: str) -> str:
    """Random per-installation key of the credential hash."""
    return f"{prefix}:tenancy:key"
