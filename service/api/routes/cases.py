"""POST /cases: a case report (JSON or YAML) -> the validated transaction Bundle; ``?push=true`` also sends it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from service.api import examples
from service.api.body import CASE_TYPES, JSON_TYPES, SOURCE, media_type, read_body
from service.api.deps import ReadKey, ServicesDep
from service.api.errors import ApiError
from service.api.outcomes import FhirResponse
from service.api.services import Services
from service.domain.reader import parse_document, validate_case
from service.push import push_bundle
from service.validation.validator import Issue, has_errors, operation_outcome

router = APIRouter(tags=["cases"])


def convert_and_validate(services: Services, data: bytes, media: str) -> tuple[dict[str, Any], list[Issue]]:
    source = f"{SOURCE}.json" if media in JSON_TYPES else f"{SOURCE}.yaml"
    doc = parse_document(data, source=source, max_bytes=services.settings.max_body_bytes)
    case = validate_case(doc, source=SOURCE)
    bundle = services.mappings.convert(case, source=SOURCE)
    return bundle, services.validator.validate(bundle)


@router.post(
    "/cases",
    summary="Convert a case report into a validated FHIR transaction Bundle (and push it with ?push=true)",
    description=(
        "The body is a case report (schema: CaseReport; JSON or YAML). Answers the transaction Bundle, validated "
        "against base R4 and casebridge's profiles; with `push=true` (an rw key), also sends it to the FHIR server "
        "as one transaction and answers the server's transaction-response. A case that does not fit the model, or "
        "a Bundle with validation errors: 422 with an OperationOutcome."
    ),
    response_class=FhirResponse,
    responses={
        200: {
            "description": "The Bundle, or the transaction-response with push=true.",
            "content": examples.fhir_content(examples.TRANSACTION),
        },
        400: examples.outcome_response("Unreadable body (OperationOutcome).", examples.OUTCOME_INVALID),
        422: examples.outcome_response(
            "Not a valid case, or an invalid Bundle (OperationOutcome).", examples.OUTCOME_INVALID
        ),
        **examples.AUTH_RESPONSES,
        **examples.UPSTREAM_RESPONSES,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/CaseReport"},
                    "example": examples.seed_case(),
                },
                "application/yaml": {"schema": {"$ref": "#/components/schemas/CaseReport"}},
            },
        }
    },
)
async def post_case(
    request: Request,
    key: ReadKey,
    services: ServicesDep,
    push: Annotated[bool, Query(description="Also send the Bundle to the FHIR server (needs an rw key).")] = False,
) -> Response:
    if push and not key.can_write:
        raise ApiError.of(403, "forbidden", f"the API key {key.name!r} is read-only: push=true writes")
    media = media_type(request, CASE_TYPES)
    data = await read_body(request, services.settings.max_body_bytes)
    bundle, issues = await services.cpu(convert_and_validate, services, data, media)
    invalid = has_errors(issues)
    services.metrics.validations.labels("cases", "invalid" if invalid else "valid").inc()
    if invalid:
        raise ApiError(422, operation_outcome(issues))
    if not push:
        return FhirResponse(bundle)
    result = await push_bundle(services.client, bundle, locks=services.locks, warnings=issues)
    return FhirResponse(result.response)
