"""POST /{resourceType}/$validate: FHIR's validate operation. The content is a resource, or a Parameters
with ``resource`` (and ``profile``); the answer is 200 with an OperationOutcome whether or not the content is
valid (as the operation defines it); 4xx only when it cannot be validated at all."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from casebridge.api import examples
from casebridge.api.body import FHIR_TYPES, media_type, parse_fhir, read_body
from casebridge.api.deps import ReadKey, ServicesDep
from casebridge.api.errors import ApiError
from casebridge.api.outcomes import FhirResponse
from casebridge.api.workers import Workbench
from casebridge.validation.validator import Issue, operation_outcome

router = APIRouter(tags=["validation"])
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
MAX_PROFILES = 10


def _from_parameters(doc: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    resource: dict[str, Any] | None = None
    profiles: list[str] = []
    parameters = doc.get("parameter")
    if parameters is not None and not isinstance(parameters, list):
        raise ApiError.of(400, "structure", "Parameters.parameter must be a JSON array", "Parameters.parameter")
    for parameter in parameters or []:
        if not isinstance(parameter, dict):
            continue
        if parameter.get("name") == "resource" and isinstance(parameter.get("resource"), dict):
            resource = parameter["resource"]
        elif parameter.get("name") == "profile":
            url = parameter.get("valueUri") or parameter.get("valueCanonical")
            if isinstance(url, str):
                profiles.append(url)
    if resource is None:
        raise ApiError.of(400, "required", "a Parameters body needs a 'resource' parameter", "Parameters.parameter")
    return resource, profiles


@router.post(
    "/{resource_type}/$validate",
    summary="Validate a resource (FHIR $validate): an OperationOutcome back",
    response_class=FhirResponse,
    responses={
        200: {
            "description": "The OperationOutcome: errors, warnings, information (or 'No issues').",
            "content": examples.fhir_content(examples.OUTCOME_INVALID),
        },
        400: examples.outcome_response(
            "Unreadable content, content of another type than the path's, an unknown profile, an invalid "
            "parameter (OperationOutcome).",
            examples.OUTCOME_INVALID,
        ),
        404: examples.outcome_response("Not a FHIR R4 resource type (OperationOutcome).", examples.OUTCOME_NOT_TYPE),
        **examples.AUTH_RESPONSES,
        503: examples.BUSY_RESPONSE,
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {
                    "schema": {
                        "type": "object",
                        "required": ["resourceType"],
                        "properties": {"resourceType": {"type": "string"}},
                    },
                    "example": examples.PATIENT,
                },
                "application/fhir+xml": {"schema": {"type": "string"}},
            },
        }
    },
)
async def validate(
    request: Request,
    key: ReadKey,
    services: ServicesDep,
    resource_type: Annotated[str, Path(description="The resource type, e.g. Bundle or Patient.")],
    profile: Annotated[
        list[str] | None, Query(description="Also validate against this profile (canonical URL).")
    ] = None,
) -> FhirResponse:
    profiles = list(profile or [])
    if len(profiles) > MAX_PROFILES:
        raise ApiError.of(400, "too-costly", f"at most {MAX_PROFILES} profile parameters")
    media = media_type(request, FHIR_TYPES)
    data = await read_body(request, services.settings.max_body_bytes)
    issues = await services.cpu(request, _validate, resource_type, data, media, profiles)
    services.count_validation("validate", issues)
    return FhirResponse(operation_outcome(issues, services.settings.max_outcome_issues))


def _validate(bench: Workbench, resource_type: str, data: bytes, media: str, profiles: list[str]) -> list[Issue]:
    """Where the CPU work runs: the type check, reading, unwrapping and validation all touch the validator's
    caches."""
    definition = bench.validator.definitions.core_definition(resource_type) if _TYPE.fullmatch(resource_type) else None
    if definition is None or definition.get("kind") != "resource" or definition.get("abstract"):
        raise ApiError.of(404, "not-supported", f"{resource_type[:64]!r} is not a FHIR R4 resource type")
    problems: list[Issue] = []  # XML elements the types do not define: errors, before the validation's
    doc = parse_fhir(data, media, bench.xml_reader, problems)
    if doc["resourceType"] == "Parameters" and resource_type != "Parameters":
        doc, more = _from_parameters(doc)
        profiles = profiles + more[:MAX_PROFILES]
    if doc.get("resourceType") != resource_type:
        found = str(doc.get("resourceType"))[:64]
        raise ApiError.of(400, "invalid", f"the content is a {found}, not a {resource_type}", "resourceType")
    unknown = [p for p in profiles if bench.validator.tree(p) is None]
    if unknown:
        raise ApiError.of(400, "not-found", f"profile {unknown[0][:200]} is not loaded")
    return [*problems, *bench.validator.validate(doc, profiles)]
