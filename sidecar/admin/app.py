"""The admin listener: health, readiness, metrics, the admin API (`/admin/api/`) and the portal
page (`/admin/`).

It shares the proxy's error boundary: every error is problem+json with the correlation header
(the client's `X-Correlation-ID` when well formed, else a new one). Its handlers reach what they
need through the admin app's own `SERVICES`.
"""

from __future__ import annotations

from aiohttp import web

from ..http.boundary import problem_middleware
from ..http.context import RequestContext
from ..http.headers import correlation_id
from ..metrics import METRICS
from . import health
from .api import ENDPOINTS, api_app
from .endpoints import MOUNTED, mount
from .portal import setup_portal
from .services import SERVICES, AdminServices

OWN = (health.healthz, health.readyz, health.metrics)
ADMIN_ENDPOINTS = (*OWN, *ENDPOINTS)  # every endpoint of the listener: what the document shows


class AdminListener:
    """How the admin listener begins and ends its requests."""

    def __init__(self, services: AdminServices) -> None:
        self.services = services

    @property
    def correlation_header(self) -> str:
        """The correlation header of the live config."""
        return self.services.settings.correlation_header

    def begin(self, request: web.Request) -> RequestContext:
        """A request's context: the client's correlation id if well formed, else a new one."""
        return RequestContext(correlation_id(request.headers.get(self.correlation_header)))

    def end(self, request: web.Request, context: RequestContext) -> None:
        """Count bugs of ours (the boundary logged them)."""
        if context.outcome == "internal_error":
            self.services.metrics.internal_errors.labels("admin").inc()


def create_admin_app(services: AdminServices) -> web.Application:
    """The admin application over the proxy app's `services`."""
    admin = web.Application(middlewares=[problem_middleware(AdminListener(services))])
    admin[SERVICES] = services
    admin[METRICS] = services.metrics  # the boundary counts Redis faults here too
    admin[MOUNTED] = ADMIN_ENDPOINTS
    mount(admin, OWN)
    admin.add_subapp("/admin/api", api_app())
    setup_portal(admin)  # the page at /admin/
    return admin
