"""What the admin handlers work with, on the admin app itself (`request.config_dict[SERVICES]`):
the live config, the metrics, the tenant hasher, Redis, the completion hub, the brokers' health
and the webhook engine. The admin app is built once these exist (see `sidecar.app.admin_ctx`)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from ..completions.hub import CompletionHub
from ..config import Settings
from ..connections import RedisConnections
from ..errors import Unavailable
from ..metrics import Metrics
from ..operations import Operations
from ..routing import Runtime
from ..sources.health import SourceHealth
from ..tenancy import TenantHasher
from ..webhooks.runtime import WebhookRuntime
from .verify import CredentialVerifier


@dataclass(frozen=True, slots=True)
class AdminServices:
    """The proxy app's resources the admin listener reads."""

    runtime: Runtime
    metrics: Metrics
    hasher: TenantHasher
    redis: RedisConnections | None
    hub: CompletionHub | None
    webhooks: WebhookRuntime | None  # None: webhooks do not run (no Redis configured)
    verifier: CredentialVerifier  # asks the upstream about client credentials (tenancy.verify)
    sources: SourceHealth | None = None  # the brokers' reads (None: no source declared)
    operations: Operations | None = None  # None: no Redis configured

    @property
    def settings(self) -> Settings:
        """The live config."""
        return self.runtime.settings


SERVICES = web.AppKey("admin_services", AdminServices)


def services(request: web.Request) -> AdminServices:
    """The admin services (from the admin app, whichever of its sub-apps answers)."""
    return request.config_dict[SERVICES]


def operations_of(request: web.Request) -> Operations:
    """The operations services; 503 without Redis."""
    operations = services(request).operations
    if operations is None:
        raise Unavailable("operations need redis_url")
    return operations


def webhooks_of(request: web.Request) -> WebhookRuntime:
    """The webhook engine; 503 when webhooks do not run (no Redis configured)."""
    runtime = services(request).webhooks
    if runtime is None:
        raise Unavailable("webhooks need redis_url")
    return runtime
