"""Route matching: ordered routes, method + path template, first match wins; and the live config
generation (`Runtime`, `app[RUNTIME]`), replaced whole on reload."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
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


class Runtime:
    """The live config generation. `reload()` swaps it whole; in-flight calls keep theirs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = RouteTable(settings)
        self.on_reload: list[Callable[[Settings], None]] = []

    def reload(self, settings: Settings) -> None:
        """Replace routes (and route-level settings) with a newly validated generation."""
        self.settings = settings
        self.table = RouteTable(settings)
        for listener in self.on_reload:
            listener(settings)


RUNTIME = web.AppKey("runtime", Runtime)
