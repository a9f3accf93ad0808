"""Route matching: ordered routes, method + path template, first match wins."""

from __future__ import annotations

import re
from dataclasses import dataclass

from yarl import URL

from .config import Route, Settings, compile_path_template


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    """A route with its path regex and upstream resolved."""

    route: Route
    path_re: re.Pattern[str]
    upstream: URL

    def matches(self, method: str, path: str) -> bool:
        """True when this route serves `method` on `path`."""
        return (self.route.method in ("*", method)) and self.path_re.match(path) is not None


class RouteTable:
    """The routes of one config generation; immutable, replaced whole on reload."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_upstream = URL(settings.upstream)
        self.routes = [
            CompiledRoute(
                route=r,
                path_re=compile_path_template(r.path),
                upstream=URL(r.upstream) if r.upstream else self.default_upstream,
            )
            for r in settings.routes
        ]
        self.by_name = {c.route.name: c for c in self.routes}

    def match(self, method: str, path: str) -> CompiledRoute | None:
        """The first route serving `method` on `path`, or None (pass-through)."""
        for compiled in self.routes:
            if compiled.matches(method, path):
                return compiled
        return None
