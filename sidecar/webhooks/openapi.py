"""The OpenAPI 3.1 document of the admin listener, generated from the models that validate the
requests (`bodies`, `portal_bodies`) and build or describe the answers (`views`).

Each operation is one row of `OPERATIONS`: method, path, who may call it, its body and query
models, its success answer. The errors an operation can answer follow from the row (a body can be
malformed or invalid, an id can be unknown, a write can be refused to a read-only session), so the
document lists them without a hand-kept list per endpoint. Every error is problem+json.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from ..config import Settings
from .bodies import MessageForTest, SubscriptionCreate, SubscriptionPatch
from .portal_bodies import (
    ID_PATTERN,
    AttemptsQuery,
    MessagesQuery,
    PortalSessionCreate,
    Recover,
    SignIn,
)
from .views import (
    AttemptsLog,
    AttemptsPage,
    EventTypeList,
    Me,
    MessageDetail,
    MessageQueued,
    Problem,
    Recovered,
    Redelivered,
    SecretRotated,
    SecretView,
    SessionCreated,
    SubscriptionCreated,
    SubscriptionList,
    SubscriptionStats,
    SubscriptionView,
)

Access = Literal["tenant", "operator", "public"]
API = "/admin/api"
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


@dataclass(frozen=True)
class Operation:
    """One endpoint as the document describes it."""

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
    errors: frozenset[int] = field(default_factory=frozenset)  # beyond those the row implies


SUB = API + "/subscriptions/{id}"
OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        API + "/sign-in",
        "signIn",
        "Exchange a credential for a portal session",
        "sessions",
        access="public",
        body=SignIn,
        status=201,
        answer=SessionCreated,
        errors=frozenset({429}),
    ),
    Operation(
        "post",
        API + "/portal-sessions",
        "createPortalSession",
        "Mint a portal link for a client (operator only)",
        "sessions",
        access="operator",
        body=PortalSessionCreate,
        status=201,
        answer=SessionCreated,
    ),
    Operation(
        "delete",
        API + "/portal-sessions/{id}",
        "revokePortalSession",
        "Revoke a portal session (a session may revoke itself)",
        "sessions",
        status=204,
    ),
    Operation("get", API + "/me", "getMe", "Who the caller is", "sessions", answer=Me),
    Operation(
        "get",
        API + "/subscriptions",
        "listSubscriptions",
        "The caller's subscriptions",
        "subscriptions",
        answer=SubscriptionList,
    ),
    Operation(
        "post",
        API + "/subscriptions",
        "createSubscription",
        "Create a subscription",
        "subscriptions",
        body=SubscriptionCreate,
        status=201,
        answer=SubscriptionCreated,
        errors=frozenset({409}),
    ),
    Operation(
        "get", SUB, "getSubscription", "One subscription", "subscriptions", answer=SubscriptionView
    ),
    Operation(
        "patch",
        SUB,
        "updateSubscription",
        "Change url, events, description, enabled",
        "subscriptions",
        body=SubscriptionPatch,
        answer=SubscriptionView,
    ),
    Operation(
        "delete",
        SUB,
        "deleteSubscription",
        "Delete a subscription and its log",
        "subscriptions",
        status=204,
    ),
    Operation(
        "post",
        SUB + "/rotate-secret",
        "rotateSecret",
        "A new secret; the old one signs 24 h more",
        "subscriptions",
        answer=SecretRotated,
    ),
    Operation(
        "get",
        SUB + "/secret",
        "revealSecret",
        "The signing secret",
        "subscriptions",
        answer=SecretView,
        errors=frozenset({403}),
    ),
    Operation(
        "get",
        SUB + "/stats",
        "getSubscriptionStats",
        "Recent success rate",
        "subscriptions",
        answer=SubscriptionStats,
    ),
    Operation(
        "post",
        SUB + "/test",
        "sendTest",
        "Queue a test message",
        "subscriptions",
        body=MessageForTest,
        body_required=False,
        status=202,
        answer=MessageQueued,
        errors=frozenset({409, 429}),
    ),
    Operation(
        "get",
        SUB + "/attempts",
        "listAttempts",
        "The subscription's attempts log",
        "messages",
        query=AttemptsQuery,
        answer=AttemptsLog,
    ),
    Operation(
        "post",
        SUB + "/messages/{message_id}/redeliver",
        "redeliverMessage",
        "Queue one more attempt of a message",
        "messages",
        status=202,
        answer=Redelivered,
        errors=frozenset({409}),
    ),
    Operation(
        "post",
        SUB + "/recover",
        "recoverFailed",
        "Redeliver every failed message since a time",
        "messages",
        body=Recover,
        status=202,
        answer=Recovered,
        errors=frozenset({409}),
    ),
    Operation(
        "get",
        API + "/messages",
        "listMessages",
        "The message log, newest first",
        "messages",
        query=MessagesQuery,
        answer=AttemptsPage,
        errors=frozenset({404}),  # an unknown (or another's) subscription filter
    ),
    Operation(
        "get",
        API + "/messages/{message_id}",
        "getMessage",
        "One message with every attempt",
        "messages",
        answer=MessageDetail,
    ),
    Operation(
        "get",
        API + "/event-types",
        "listEventTypes",
        "Every event type, with an example payload",
        "catalog",
        answer=EventTypeList,
    ),
    Operation("get", API + "/openapi.json", "getOpenApi", "This document", "meta", access="public"),
)

_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")


def _security(access: Access) -> list[dict[str, list[str]]]:
    if access == "public":
        return []
    if access == "operator":
        return [{"adminToken": []}]
    return [{"adminToken": []}, {"clientCredential": []}, {"portalSession": []}]


def _error_codes(op: Operation) -> list[int]:
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
    return sorted(codes)


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
            "schema": {"type": "string", "pattern": ID_PATTERN},
        }
        for name in _PATH_PARAM.findall(path)
    ]


def _content(model: type[BaseModel], media: str = "application/json") -> dict[str, Any]:
    return {media: {"schema": {"$ref": REF.format(model=model.__name__)}}}


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
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
    elif op.operation_id == "getOpenApi":
        ok["content"] = {"application/json": {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {str(op.status): ok}
    for code in _error_codes(op):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    out["responses"] = responses
    return out


def _health_paths() -> dict[str, Any]:
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    ready = {
        "type": "object",
        "properties": {
            "status": {"type": "string"},
            "reasons": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "up",
                        "content": {"application/json": {"schema": status}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Ready to serve",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "ready",
                        "content": {"application/json": {"schema": ready}},
                    },
                    "503": {
                        "description": "not ready (the reasons say why)",
                        "content": {"application/json": {"schema": ready}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "tags": ["health"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The whole document for this configuration (its credential header and event types)."""
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = []
    for op in OPERATIONS:
        if op.body is not None:
            models.append((op.body, "validation"))
        if op.answer is not None:
            models.append((op.answer, "serialization"))
    models.append((Problem, "serialization"))
    _, defs = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    schemas: dict[str, Any] = defs.get("$defs", {})
    paths: dict[str, Any] = _health_paths()
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    header = settings.tenancy.credential_header
    problem = {"application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sidecar admin API",
            "version": __version__,
            "description": "Webhook subscriptions, the message log, the event-type catalog and "
            "portal sessions, on the admin listener. Errors are application/problem+json "
            "(RFC 9457).",
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPERATIONS)]
        + [{"name": "health"}],
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
