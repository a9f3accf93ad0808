"""The admin API's OpenAPI 3.1 document: it validates, names every admin endpoint and only
those, is generated from the models that validate requests, lists every operation the portal
page calls, and a schema-driven fuzz run (schemathesis) against a live sidecar finds no 5xx and
no answer that breaks the schema. (The page's own calls, made in a browser, are checked against
the document in tests/portal/test_page.py.)"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from sidecar.admin.app import ADMIN_ENDPOINTS, create_admin_app
from sidecar.admin.bodies import PortalSessionCreate, SubscriptionCreate
from sidecar.admin.openapi import REF, openapi_document
from sidecar.admin.services import AdminServices
from sidecar.admin.verify import CredentialVerifier
from sidecar.config import Settings
from sidecar.http.upstream import create_pool
from sidecar.metrics import Metrics
from sidecar.routing import Runtime
from sidecar.tenancy import TenantHasher

from ..admin_support import OP, StartAdmin
from ..conftest import make_settings
from .conftest import Receiver

STATIC = Path(__file__).parents[2] / "sidecar" / "admin" / "portal" / "static"
OPERATIONS = re.compile(r'call\("(GET|POST|PATCH|PUT|DELETE)", "([^"]+)"')
# The cases the fuzz run draws, the same in every run: a fixed Hypothesis seed, so the cases do
# not change when the test function's text does (a derandomized test otherwise seeds from it).
FUZZ_SEED = int(
    "24932192648036711305709506850643137928857664038388192497436515214798969838991611"
    "395193056920823091683826284705800675"
)


def document(**overrides: Any) -> dict[str, Any]:
    return openapi_document(make_settings("http://127.0.0.1:9", **overrides), ADMIN_ENDPOINTS)


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    schemes = doc["components"]["securitySchemes"]
    assert schemes["portalSession"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "psess_<token>",
        "description": schemes["portalSession"]["description"],
    }
    assert schemes["adminToken"]["scheme"] == "bearer"
    assert schemes["clientCredential"] == {
        "type": "apiKey",
        "in": "header",
        "name": "Authorization",
        "description": schemes["clientCredential"]["description"],
    }
    custom = document(tenancy={"credential_header": "X-Api-Key"})
    assert custom["components"]["securitySchemes"]["clientCredential"]["name"] == "X-Api-Key"


def _routes(app: web.Application) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for resource in app.router.resources():
        info = resource.get_info()
        if "app" in info:  # a sub-app: its resources already carry the prefix
            found |= _routes(info["app"])
            continue
        path = info.get("path") or info.get("formatter") or ""
        for route in resource:
            if route.method != "HEAD":
                found.add((route.method.lower(), path))
    return found


def test_every_admin_endpoint_is_in_the_document_and_nothing_else() -> None:
    settings_ = make_settings("http://127.0.0.1:9")
    runtime = Runtime(settings_)
    metrics = Metrics(CollectorRegistry())
    services = AdminServices(
        runtime=runtime,
        metrics=metrics,
        hasher=TenantHasher(settings_, None),
        redis=None,
        hub=None,
        webhooks=None,
        verifier=CredentialVerifier(create_pool(settings_.proxy), runtime, metrics),
    )
    routes = _routes(create_admin_app(services))
    page = {(m, p) for m, p in routes if p == "/admin" or not p.startswith("/admin/api")}
    page -= {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics")}
    assert page == {("get", "/admin"), ("get", "/admin/"), ("get", "/admin/static/{path}")}
    documented = {
        (method, path)
        for path, item in openapi_document(settings_, ADMIN_ENDPOINTS)["paths"].items()
        for method in item
    }
    assert documented == routes - page


def test_request_bodies_are_the_validating_models() -> None:
    doc = document()
    schemas = doc["components"]["schemas"]
    for model in (SubscriptionCreate, PortalSessionCreate):
        expected = model.model_json_schema(ref_template=REF)
        expected.pop("$defs", None)
        assert schemas[model.__name__] == expected
    create = doc["paths"]["/admin/api/subscriptions"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SubscriptionCreate"
    }
    assert set(create["responses"]) >= {"201", "400", "401", "403", "422", "503"}
    problem = doc["components"]["responses"]["E422"]["content"]
    assert problem == {
        "application/problem+json": {"schema": {"$ref": REF.format(model="Problem")}}
    }


def page_operations() -> set[tuple[str, str]]:
    """Every `call(METHOD, "/path")` of the page's one API module."""
    source = (STATIC / "js" / "api.js").read_text()
    return {(method.lower(), "/admin/api" + path) for method, path in OPERATIONS.findall(source)}


def test_the_page_calls_only_documented_operations() -> None:
    calls = page_operations()
    assert len(calls) >= 15
    doc = document()
    missing = {(m, p) for m, p in calls if m not in doc["paths"].get(p, {})}
    assert not missing, f"the page calls operations the document lacks: {missing}"
    # And no other module of the page calls fetch itself.
    for path in STATIC.rglob("*.js"):
        if path.name != "api.js":
            assert "fetch(" not in path.read_text(), path


def path_pattern(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(template)) + "$")


def documented(doc: dict[str, Any], method: str, path: str) -> bool:
    """True when `method path` (a concrete path) is an operation of the document."""
    return any(
        method.lower() in item and path_pattern(template).match(path)
        for template, item in doc["paths"].items()
    )


# --------------------------------------------------------------------------------------------
# Fuzz
# --------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_schema_driven_fuzz_run_finds_no_5xx_and_no_answer_breaking_the_schema(
    start_admin: StartAdmin, receiver: Receiver
) -> None:
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    admin = await start_admin()
    client = {"Authorization": "Bearer fuzz-client"}
    sub = await admin.create(client, receiver.url())
    answer = await admin.call("GET", "/openapi.json")
    assert answer.status == 200
    doc = answer.body
    validate(doc)
    schema = schemathesis.openapi.from_dict(doc)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    callers = [OP, client]
    ran = 0

    def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
        @seed(FUZZ_SEED)
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=4,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            nonlocal ran
            if "id" in (case.path_parameters or {}) and ran % 3 == 0:
                case.path_parameters["id"] = sub["id"]  # reach a real one, sometimes
            case.call_and_validate(base_url=admin.url, headers=headers, checks=checks, timeout=10)
            ran += 1

        try:
            run()
        except Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): positive cases only.
            assert mode == GenerationMode.NEGATIVE, operation.label

    def fuzz_all() -> None:
        for result in schema.get_all_operations():
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                for headers in callers:
                    fuzz(result.ok(), mode, headers)

    # schemathesis calls synchronously: from a thread, while this loop serves the sidecar.
    await asyncio.to_thread(fuzz_all)
    assert ran > 100


def test_the_document_lists_every_request_the_fuzz_helper_matches() -> None:
    doc = document()
    assert documented(doc, "GET", "/admin/api/subscriptions/sub_1/stats")
    assert documented(doc, "POST", "/admin/api/subscriptions/sub_1/messages/msg_2/redeliver")
    assert not documented(doc, "PUT", "/admin/api/subscriptions/sub_1")
    assert not documented(doc, "GET", "/admin/api/nothing")


def test_settings_defaults_make_a_document() -> None:
    validate(openapi_document(Settings(), ADMIN_ENDPOINTS))
