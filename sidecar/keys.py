"""Every Redis key the sidecar owns (all start with the configured `key_prefix`).

The operators' completion streams (`routes[].wait.stream.key`) are theirs, never prefixed.
Webhook keys live in `sidecar.webhooks.keys`.

    {prefix}:call:{correlation_id}   hash, TTL tracking_ttl: one 202'd call (route, tenant,
                                     location, upstream_location, state, created_at)
    {prefix}:loc:{upstream path}     string, TTL tracking_ttl: correlation id of the call whose
                                     upstream Location this is (long-poll lookup)
    {prefix}:tenancy:key             string: random key of the credential hash when none is set
"""

from __future__ import annotations


def call_key(prefix: str, correlation_id: str) -> str:
    """Hash describing one tracked call."""
    return f"{prefix}:call:{correlation_id}"


def location_key(prefix: str, upstream_path: str) -> str:
    """Lookup from an upstream Location path (with query) to a correlation id."""
    return f"{prefix}:loc:{upstream_path}"


def tenancy_key(prefix: str) -> str:
    """Random per-installation key of the credential hash."""
    return f"{prefix}:tenancy:key"
