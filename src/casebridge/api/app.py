"""The FastAPI application: routers, error handlers, the request-context middleware, the OpenAPI document."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.responses import Response

from casebridge import __version__
from casebridge.api import errors
from casebridge.api.metrics import Metrics
from casebridge.api.middleware import RequestContext
from casebridge.api.outcomes import FhirResponse
from casebridge.api.routes import bundles, cases, health, reports, validation, views
from casebridge.api.security import ReadKey
from casebridge.api.services import Services
from casebridge.config import Settings
from casebridge.domain.case import CaseReport
from casebridge.runtime import settle_heap

DESCRIPTION = """\
Clinical case reports to FHIR R4, validated, forwarded to a FHIR server and read back.

- **Registry jobs** post cases: `POST /cases` (`?push=true` to send them).
- **EHR integrators** validate (`POST /{resourceType}/$validate`) and forward transaction Bundles (`POST /bundles`).
- **Analysts** read DiagnosticReports: `GET /diagnostic-reports` (FHIR JSON, NDJSON or CSV).

Every endpoint but `/healthz`, `/readyz` and `/metrics` needs `Authorization: Bearer <API key>`; read-only keys
cannot write. Every 4xx/5xx body is an OperationOutcome.
"""


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The app. ``services`` (validator, mappings, FHIR client...) are built at startup unless given."""
    metrics = services.metrics if services is not None else Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ready: Services = services if services is not None else await asyncio.to_thread(Services.build, settings)
        if services is None:
            settle_heap()
        ready.metrics = metrics
        metrics.watch(ready.runner)
        app.state.services = ready
        try:
            yield
        finally:
            await ready.aclose()

    docs = settings.api_docs_public
    app = FastAPI(
        # No redirect for a trailing slash: it would send the caller to its own Host header, unauthenticated.
        redirect_slashes=False,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        title="casebridge",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "cases", "description": "Case reports in (registry jobs)."},
            {"name": "validation", "description": "FHIR $validate."},
            {"name": "bundles", "description": "Transaction Bundles validated and forwarded (EHR integrators)."},
            {"name": "reports", "description": "DiagnosticReports out (analysts)."},
            {"name": "views", "description": "SQL on FHIR views run over the FHIR server (analysts)."},
            {"name": "health", "description": "Liveness, readiness, metrics (no key)."},
        ],
    )
    if services is not None:
        app.state.services = services  # usable at once (tools that skip the lifespan, e.g. API fuzzers)
    for router in (cases.router, validation.router, bundles.router, reports.router, views.router, health.router):
        app.include_router(router)
    errors.install(app)
    app.add_middleware(RequestContext, metrics=metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            case = CaseReport.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(case.pop("$defs", {}))
            components["CaseReport"] = case
            _without_fastapi_422(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    if not docs:
        # The OpenAPI document behind a key, like every endpoint but health, readiness and metrics.
        @app.get("/openapi.json", include_in_schema=False)
        async def openapi_document(key: ReadKey) -> Response:
            return FhirResponse(openapi(), media_type="application/json")

    return app


def _without_fastapi_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 'Validation Error' for every operation with parameters; ours answer an invalid
    parameter with a 400 OperationOutcome (casebridge.api.errors), which each operation documents itself."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            response = operation.get("responses", {}).get("422", {})
            media = response.get("content", {}).get("application/json", {})
            if media.get("schema", {}).get("$ref") == "#/components/schemas/HTTPValidationError":
                del operation["responses"]["422"]
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)
