"""What a valid configuration may still get wrong: said at start (and by `sidecar check`),
never fatal."""

from __future__ import annotations

from .routes import compile_path_template
from .settings import Settings


def advice(settings: Settings) -> list[str]:
    """Warnings about a valid configuration, each naming the key and what follows from it."""
    said: list[str] = []
    sync_routes = [r.name for r in settings.routes if r.is_sync]
    if settings.redis_url is None and sync_routes:
        said.append(
            "redis_url is unset: long-polling (GET of a Location with Prefer: wait) is off, "
            "no call is tracked for webhooks, and clients' correlation ids are replaced by "
            "minted ones on synchronised routes"
        )
    if settings.admin_token is None:
        said.append(
            "admin_token is unset: the admin API has no operator (only clients, each with its "
            "own subscriptions)"
        )
    if settings.redis_url is not None and settings.tenancy.hash_key is None:
        origin = "admin_token" if settings.admin_token is not None else "a random key in Redis"
        said.append(
            f"tenancy.hash_key is unset: credential hashes derive from {origin}; set it, or "
            "clients lose their subscriptions when that changes"
        )
    on_brokers = sorted(set(settings.sources_used))
    if settings.redis_url is None and on_brokers:
        said.append(
            f"redis_url is unset: completions of routes on {', '.join(on_brokers)} wake held "
            "calls, but reach no webhook (Redis is the sidecar's own store: tracking, "
            "subscriptions, the outbox)"
        )
    unused = sorted(set(settings.sources) - set(on_brokers))
    if unused:
        said.append(f"sources {', '.join(unused)}: no route waits on them (nothing is read)")
    if settings.proxy.client == "session":
        said.append(
            "proxy.client: session is ignored: calls, polls and GETs of a Location all go "
            "through the one upstream client, the keep-alive pool (remove the key)"
        )
    said += _shadowed_by_operations(settings)
    return said


def _shadowed_by_operations(settings: Settings) -> list[str]:
    """Routes whose paths the status monitor answers instead of the upstream."""
    if settings.redis_url is None:
        return []  # no status monitor without Redis: those paths reach the upstream
    probe = settings.operations.path + "/" + "x" * 43
    return [
        f"routes[{index}].path: {route.path} also matches the status monitor's paths "
        f"(operations.path {settings.operations.path}): the sidecar answers those itself"
        for index, route in enumerate(settings.routes)
        if compile_path_template(route.path).match(probe)
    ]
