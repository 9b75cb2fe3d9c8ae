"""POST /bundles: for EHR integrators. Validate against base R4, the profiles each resource claims and the
configured inbound profiles, then forward to the FHIR server as one transaction."""

from __future__ import annotations

import codecs
from typing import Any

from fastapi import APIRouter, Request

from service.api import examples
from service.api.body import FHIR_TYPES, JSON_TYPES, media_type, parse_fhir, read_body
from service.api.deps import ServicesDep, WriteKey
from service.api.errors import ApiError
from service.api.outcomes import FhirResponse, error_outcome
from service.api.workers import Workbench
from service.push import push_bundle
from service.validation.inbound import uncheckable_entries, with_inbound_profiles
from service.validation.validator import Issue

router = APIRouter(tags=["bundles"])


@router.post(
    "/bundles",
    summary="Validate a transaction Bundle, then forward it to the FHIR server",
    description=(
        "Invalid (errors against base R4, the profiles its resources claim, or the configured inbound profiles in "
        "mappings/inbound-profiles.yaml), or an entry whose effect cannot be validated (PATCH, an operation, a URL "
        "for another type than its resource): 422 with the OperationOutcome, and nothing is forwarded. Valid: sent as "
        "one transaction; the answer is the FHIR server's transaction-response. Upstream failures: 502/503/504 "
        "with an OperationOutcome saying what happened upstream."
    ),
    response_class=FhirResponse,
    responses={
        200: {
            "description": "The FHIR server's transaction-response Bundle.",
            "content": examples.fhir_content(
                {
                    "resourceType": "Bundle",
                    "type": "transaction-response",
                    "entry": [{"response": {"status": "201 Created", "location": "Patient/7f1c3bb2/_history/1"}}],
                }
            ),
        },
        400: examples.outcome_response("Unreadable content (OperationOutcome).", examples.OUTCOME_INVALID),
        422: examples.outcome_response(
            "Not valid: nothing was forwarded (OperationOutcome).", examples.OUTCOME_INVALID
        ),
        **examples.AUTH_RESPONSES,
        **examples.UPSTREAM_RESPONSES,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {
                    "schema": {
                        "type": "object",
                        "required": ["resourceType", "type"],
                        "properties": {
                            "resourceType": {"const": "Bundle"},
                            "type": {"const": "transaction"},
                            "entry": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                    "example": examples.TRANSACTION,
                },
                "application/fhir+xml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def forward_bundle(request: Request, key: WriteKey, services: ServicesDep) -> FhirResponse:
    media = media_type(request, FHIR_TYPES)
    data = await read_body(request, services.settings.max_body_bytes)
    bundle, issues = await services.cpu(request, _check, data, media)
    services.refuse_invalid("bundles", issues)
    # JSON is forwarded as it came (its decimals exactly as written), less a byte-order mark (read past here, as
    # JSON allows; a server may refuse it); XML as the JSON it was read into.
    raw = data.removeprefix(codecs.BOM_UTF8) if media in JSON_TYPES else None
    result = await push_bundle(services.client, bundle, locks=services.locks, warnings=issues, raw=raw)
    return FhirResponse(result.response)


def _check(bench: Workbench, data: bytes, media: str) -> tuple[dict[str, Any], list[Issue]]:
    bundle = parse_fhir(data, media, bench.xml_reader)
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise ApiError(422, error_outcome("invalid", "only a transaction Bundle can be forwarded", "Bundle.type"))
    checked = with_inbound_profiles(bundle, bench.inbound_profiles)
    return bundle, [*bench.validator.validate(checked), *uncheckable_entries(bundle)]
