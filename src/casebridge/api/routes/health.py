"""Liveness, readiness and metrics: no API key (compose and orchestrators call them)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from casebridge.api import examples
from casebridge.api.deps import ServicesDep
from casebridge.api.errors import ApiError
from casebridge.api.outcomes import issue, outcome
from casebridge.errors import FhirError

router = APIRouter(tags=["health"])
READY_TIMEOUT = 3.0


# GET and HEAD as two routes, not one with two methods: one route gives both the same OpenAPI operationId,
# which a client generator refuses.
@router.head("/healthz", summary="The process is alive (headers only)", responses={200: {"description": "Alive."}})
@router.get(
    "/healthz",
    summary="The process is alive",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.head(
    "/readyz",
    summary="Ready (headers only): definitions loaded and the FHIR server reachable",
    responses={200: {"description": "Ready."}, 503: {"description": "Not ready."}},
)
@router.get(
    "/readyz",
    summary="Ready: definitions loaded and the FHIR server reachable",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "status": "ready",
                        "fhir": "HAPI FHIR Server 8.8.0, FHIR 4.0.1",
                        "definitions": "loaded",
                        "workers": 2,
                    }
                }
            }
        },
        503: examples.outcome_response("Not ready (OperationOutcome saying why).", examples.OUTCOME_NOT_READY),
    },
)
async def readyz(services: ServicesDep) -> dict[str, Any]:
    try:
        capabilities = await asyncio.wait_for(services.client.capabilities(), READY_TIMEOUT)
    except (FhirError, TimeoutError) as exc:
        # No key is needed here, so nothing internal goes out (no URL, no errno): only the kind of failure.
        text = "no answer within 3 s" if isinstance(exc, TimeoutError) else type(exc).__name__
        raise ApiError(
            503, outcome([issue("error", "transient", f"the FHIR server is not reachable ({text})")])
        ) from exc
    software = capabilities.get("software")
    if not isinstance(software, dict):  # absent, or not the object R4 defines: the server is still there
        software = {}
    name = " ".join(str(x) for x in (software.get("name"), software.get("version")) if x) or "FHIR server"
    workers = await services.runner.revive()  # a worker that died is replaced here, not by a user's 503
    return {
        "status": "ready",
        "fhir": f"{name}, FHIR {capabilities.get('fhirVersion', '?')}",
        "definitions": "loaded",  # the validator is built before the first request is taken
        "workers": workers,
    }


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {
                    "example": 'casebridge_http_requests_total{method="POST",route="/cases",status="200"} 12.0\n'
                }
            }
        }
    },
)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
