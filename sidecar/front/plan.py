"""What a front sends where, read from the sidecar's own route table (`routing.RouteTable`), so
the front and the sidecar cannot disagree about a call:

    to the sidecar   a method + path whose first matching route waits (a synchronised route;
                     a named pass-through route listed before it keeps its calls, as in the
                     sidecar); with Redis, a GET whose `Prefer` asks to wait (a long-poll: held
                     when its Location is tracked, else passed through by the sidecar) and the
                     status monitor's paths (`operations.path`); and any path with a dot
                     segment (`/./`, `/../`: a front resolves them before matching, the sidecar
                     matches the path as sent, so the sidecar decides)
    to an upstream   everything else: a named route's own upstream when it has one, else the
                     default

The rules keep the route table's order; named routes after the last synchronised one that go
to the default upstream are left out (the default takes them anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

from yarl import URL

from ..config import Settings, path_template_parts
from ..http.pool import host_header
from ..routing import RouteTable

SIDECAR = "sidecar"  # the target of what the sidecar answers
SILENCE_MARGIN_S = 5.0  # past the sidecar's longest silence, before a front gives up on it


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the front sends pass-through calls: an upstream of the route table."""

    name: str  # the front's name for it: "api", "api_2", ...
    url: URL  # its origin and base path, as the sidecar forwards to it
    routes: tuple[str, ...]  # the named routes sent there

    @property
    def host(self) -> str:
        """The `Host` it is sent (the sidecar's pool sends the same)."""
        return host_header(self.url)

    @property
    def base_path(self) -> str:
        """The path the request's own is appended to ('' for an origin)."""
        return self.url.raw_path.rstrip("/")


@dataclass(frozen=True, slots=True)
class Rule:
    """One route of the table, in its order: its match and where its calls go."""

    route: str
    method: str  # an HTTP method, or "*" for any
    template: str  # the route's path template
    parts: tuple[tuple[str, bool], ...]  # the template read once (`path_template_parts`)
    target: str  # SIDECAR, or an `Upstream.name`


@dataclass(frozen=True, slots=True)
class FrontPlan:
    """Everything a front's configuration is written from."""

    rules: tuple[Rule, ...]
    left_out: tuple[str, ...]  # named routes the default upstream takes without a rule
    upstreams: tuple[Upstream, ...]  # the default first
    long_polls: bool  # GETs with `Prefer: wait=` go to the sidecar (with Redis)
    monitor: str | None  # the status monitor's path prefix, with its slash (with Redis)
    sidecar_silence_s: float  # how long the sidecar may send nothing on a call, and a margin
    connect_timeout_s: float  # proxy.connect_timeout
    header_timeout_s: float  # clients.header_timeout
    body_timeout_s: float  # clients.body_timeout
    idle_timeout_s: float  # clients.idle_timeout
    public_url: str | None  # proxy.public_url
    sidecar_trusts_forwarded: bool  # proxy.trust_forwarded_headers

    @property
    def default(self) -> Upstream:
        """The default upstream (the top-level `upstream`)."""
        return self.upstreams[0]

    @property
    def synchronised(self) -> list[Rule]:
        """The rules that send calls to the sidecar."""
        return [rule for rule in self.rules if rule.target == SIDECAR]


def plan_front(settings: Settings) -> FrontPlan:
    """The plan of a front for `settings`, from the route table the sidecar itself builds."""
    table = RouteTable(settings)
    default = Upstream("api", table.default_upstream, ())
    upstreams: dict[str, Upstream] = {str(default.url): default}
    last_sync = max((i for i, c in enumerate(table.routes) if c.route.is_sync), default=-1)
    rules: list[Rule] = []
    left_out: list[str] = []
    for index, compiled in enumerate(table.routes):
        route = compiled.route
        target = SIDECAR
        if not route.is_sync:
            key = str(compiled.upstream)
            known = upstreams.get(key)
            if known is None:
                known = Upstream(f"api_{len(upstreams) + 1}", compiled.upstream, ())
            upstreams[key] = Upstream(known.name, known.url, (*known.routes, route.name))
            target = known.name
            if index > last_sync and known.name == default.name:
                left_out.append(route.name)
                continue
        parts = tuple(path_template_parts(route.path))
        rules.append(Rule(route.name, route.method, route.path, parts, target))
    with_redis = settings.redis_url is not None
    budgets = [r.budget for r in settings.routes if r.is_sync]
    proxy, clients = settings.proxy, settings.clients
    # A held call: the command's answer (a pooled connection waited for, then read), the hold,
    # then perhaps a GET of the Location, each with the same bounds.
    silence_s = 2 * (proxy.connect_timeout + proxy.read_timeout) + max(budgets, default=0.0)
    return FrontPlan(
        rules=tuple(rules),
        left_out=tuple(left_out),
        upstreams=tuple(upstreams.values()),
        long_polls=with_redis,
        monitor=settings.operations.path + "/" if with_redis else None,
        sidecar_silence_s=silence_s + SILENCE_MARGIN_S,
        connect_timeout_s=proxy.connect_timeout,
        header_timeout_s=clients.header_timeout,
        body_timeout_s=clients.body_timeout,
        idle_timeout_s=clients.idle_timeout,
        public_url=proxy.public_url,
        sidecar_trusts_forwarded=proxy.trust_forwarded_headers,
    )
