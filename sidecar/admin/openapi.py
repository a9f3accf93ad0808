"""The OpenAPI 3.1 document of the admin listener, generated from the endpoints as they are
mounted (`endpoints.MOUNTED`: each handler with its `@endpoint`) and from the models that
validate the requests (`bodies`) and build the answers (`views`).

The errors an endpoint can answer follow from its shape (a body can be malformed or invalid, an
id can be unknown, a write can be refused to a read-only session), so the document lists them
without a hand-kept list per endpoint. Every error is problem+json.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..config import Settings
from .endpoints import (
    ID_PATTERN,
    MOUNTED,
    PATH_PATTERNS,
    Access,
    Endpoint,
    Handler,
    endpoint,
    json_response,
    spec_of,
)
from .services import services
from .views import Problem

REF = "#/components/schemas/{model}"

_STATUS_TEXT = {
    400: "The body is not valid JSON.",
    401: "No credential, or a portal session that expired, was revoked or is unknown.",
    403: "A read-only portal session tried to change something, or the caller is not the operator.",
    404: "No such resource, or another client's.",
    409: "The subscription is disabled (or a quota is reached).",
    413: "The body is too large.",
    422: "Invalid fields or parameters; `errors` lists every problem.",
    429: "Too many test sends, or sign-ins; see Retry-After.",
    503: "Redis is not configured or does not answer.",
}


_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")


def _security(access: Access) -> list[dict[str, list[str]]]:
    if access == "public":
        return []
    if access == "operator":
        return [{"adminToken": []}]
    return [{"adminToken": []}, {"clientCredential": []}, {"portalSession": []}]


def _error_codes(op: Endpoint) -> list[int]:
    codes = set(op.errors)
    if op.access != "public":
        codes |= {401, 503}
    if op.access == "operator" or op.method != "get":
        codes.add(403)
    if op.body is not None:
        codes |= {400, 413, 422, 503}
    if op.query is not None:
        codes.add(422)
    if _PATH_PARAM.search(op.path):
        codes.add(404)
    if op.operation_id == "getOpenApi":
        codes.clear()
    return sorted(codes - op.also)


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = model.model_json_schema(ref_template=REF)
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        description = prop.pop("description", "")
        prop.pop("title", None)
        if "anyOf" in prop:  # `X | None`: a query parameter is absent, never null
            branches = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
            prop.update(branches[0] if len(branches) == 1 else {"anyOf": branches})
        if prop.get("default") is None:
            prop.pop("default", None)
        out.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": description,
                "schema": prop,
            }
        )
    return out


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": PATH_PATTERNS.get(name, ID_PATTERN)},
        }
        for name in _PATH_PARAM.findall(path)
    ]


def _content(model: type[BaseModel], media: str = "application/json") -> dict[str, Any]:
    return {media: {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _operation(op: Endpoint, schemas: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "security": _security(op.access),
    }
    params = _path_parameters(op.path)
    if op.query is not None:
        params += _query_parameters(op.query, schemas)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": _content(op.body)}
    ok: dict[str, Any] = {"description": op.summary}
    if op.answer is not None:
        ok["content"] = _content(op.answer)
    elif op.media != "application/json":
        ok["content"] = {op.media: {"schema": {"type": "string"}}}
    elif op.operation_id == "getOpenApi":
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {str(op.status): ok}
    for status in sorted(op.also):
        responses[str(status)] = ok
    for code in _error_codes(op):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    out["responses"] = responses
    return out


def openapi_document(settings: Settings, handlers: Sequence[Handler]) -> dict[str, Any]:
    """The whole document of these endpoints for this configuration (its credential header)."""
    endpoints = [spec_of(h) for h in handlers]
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = []
    for op in endpoints:
        if op.body is not None:
            models.append((op.body, "validation"))
        if op.answer is not None:
            models.append((op.answer, "serialization"))
    models.append((Problem, "serialization"))
    _, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    paths: dict[str, Any] = {}
    for op in endpoints:
        paths.setdefault(op.full_path, {})[op.method] = _operation(op, schemas)
    header = settings.tenancy.credential_header
    problem = {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sidecar admin API",
            "version": __version__,
            "description": "Webhook subscriptions, the message log, the event-type catalog, "
            "portal sessions and the timelines of operations, on the admin listener. Errors "
            "are application/problem+json (RFC 9457).",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in endpoints)],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {
                f"E{code}": {"description": text, "content": problem}
                for code, text in _STATUS_TEXT.items()
            },
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator: Authorization: Bearer <admin_token>.",
                },
                "clientCredential": {
                    "type": "apiKey",
                    "in": "header",
                    "name": header,
                    "description": f"A client: its API credential, exactly as it sends it in "
                    f"the {header} header.",
                },
                "portalSession": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "psess_<token>",
                    "description": "A portal session: Authorization: Bearer psess_... (from "
                    "POST /admin/api/sign-in or a portal link).",
                },
            },
        },
    }


@endpoint("get", "/openapi.json", "getOpenApi", "This document", "meta", access="public")
async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of the admin API (public: it holds no data)."""
    mounted: tuple[Handler, ...] = request.config_dict[MOUNTED]
    return json_response(openapi_document(services(request).settings, mounted))
