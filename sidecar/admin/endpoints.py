"""The admin API's endpoints, declared where they are written: each handler carries what the
OpenAPI document says of it (`@endpoint(...)`), and the API is mounted from the same list the
document is generated from (`MOUNTED`, on the admin app), so the two cannot drift.

An endpoint names who may call it (`access`), its body and query models, its success status and
answer model, and the errors it can answer beyond those its shape implies (see `openapi`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import orjson
from aiohttp import web
from pydantic import BaseModel

Access = Literal["tenant", "operator", "public"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,128}$"
ID_RE = re.compile(ID_PATTERN)  # any other id is unknown, without asking Redis
CORRELATION_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"  # a correlation id (the proxy's rule)
CORRELATION_RE = re.compile(CORRELATION_PATTERN)
PATH_PATTERNS = {"correlation_id": CORRELATION_PATTERN}  # path parameters that are not ids


@dataclass(frozen=True)
class Endpoint:
    """One endpoint as it is mounted and documented. `path` is relative to its mount point
    (`prefix`): `/admin/api` for the API, `` for the listener's own (health, metrics)."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    access: Access = "tenant"
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    status: int = 200
    answer: type[BaseModel] | None = None
    errors: frozenset[int] = field(default_factory=frozenset)  # beyond those the shape implies
    also: frozenset[int] = field(default_factory=frozenset)  # statuses with the same answer model
    media: str = "application/json"  # of the success answer
    prefix: str = "/admin/api"

    @property
    def full_path(self) -> str:
        """The path on the admin listener."""
        return self.prefix + self.path


SPEC = "__endpoint__"


def endpoint(
    method: str, path: str, operation_id: str, summary: str, tag: str, **more: object
) -> Callable[[Handler], Handler]:
    """Declare a handler's endpoint (see `Endpoint` for the rest of its fields)."""
    spec = Endpoint(method, path, operation_id, summary, tag, **more)  # type: ignore[arg-type]

    def declare(handler: Handler) -> Handler:
        setattr(handler, SPEC, spec)
        return handler

    return declare


def spec_of(handler: Handler) -> Endpoint:
    """The endpoint a handler declared."""
    spec: Endpoint = getattr(handler, SPEC)
    return spec


# Every endpoint of the admin listener, as mounted (what the OpenAPI document describes).
MOUNTED: web.AppKey[tuple[Handler, ...]] = web.AppKey("mounted_endpoints")


def mount(app: web.Application, handlers: Iterable[Handler]) -> None:
    """Add each handler's route to `app`, at its path relative to the app's mount point."""
    for handler in handlers:
        spec = spec_of(handler)
        if spec.method == "get":
            app.router.add_get(spec.path, handler)  # and HEAD
        else:
            app.router.add_route(spec.method.upper(), spec.path, handler)


def json_response(data: object, status: int = 200) -> web.Response:
    """A JSON answer (orjson)."""
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def answer(model: BaseModel, status: int = 200, *, exclude_none: bool = False) -> web.Response:
    """A JSON answer built through its answer model."""
    return json_response(model.model_dump(mode="json", exclude_none=exclude_none), status)
