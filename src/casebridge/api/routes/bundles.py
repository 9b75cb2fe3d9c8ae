"""POST /bundles: for EHR integrators. The forwarding policy (which types and interactions, within which limits),
the key's scopes, validation against base R4, the profiles each resource claims and the configured inbound profiles,
and for a key bound to identifier namespaces the patients written; then forwarded to the FHIR server as one
transaction. Each step refuses the whole Bundle: nothing is forwarded."""

from __future__ import annotations

import codecs
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request

from casebridge.access.keys import ApiKey
from casebridge.api import examples
from casebridge.api.body import FHIR_TYPES, JSON_TYPES, media_type, parse_fhir, read_body
from casebridge.api.deps import ReadKey, ServicesDep
from casebridge.api.errors import ApiError
from casebridge.api.outcomes import FhirResponse, error_outcome
from casebridge.api.security import namespace_guard, require_scopes
from casebridge.api.services import Services
from casebridge.api.workers import Workbench
from casebridge.gateway.hapi_checks import HapiPrecheck
from casebridge.gateway.policy import Action, check_entries
from casebridge.push import push_bundle
from casebridge.validation.inbound import with_inbound_profiles
from casebridge.validation.validator import Issue, operation_outcome

router = APIRouter(tags=["bundles"])


@router.post(
    "/bundles",
    summary="Validate a transaction Bundle, then forward it to the FHIR server",
    description=(
        "An entry the forwarding policy (mappings/forwarding-policy.yaml) refuses — a type or interaction it does not "
        "list, DELETE/GET/HEAD/PATCH, an operation, a PUT whose URL id is not the resource's, two entries writing the "
        "same URL, more entries than its limit — or a Bundle that is invalid (errors against base R4, the profiles its "
        "resources claim, or the inbound profiles of mappings/inbound-profiles.yaml): 422 with the OperationOutcome. "
        "A key without the scopes for what the Bundle writes, or bound to identifier namespaces and writing another's "
        "patient: 403. Either way nothing is forwarded. Otherwise sent as one transaction; the answer is the FHIR "
        "server's transaction-response. Upstream failures: 502/503/504 with an OperationOutcome saying what happened "
        "upstream."
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
async def forward_bundle(request: Request, key: ReadKey, services: ServicesDep) -> FhirResponse:
    # A write: audited however it ends (the middleware records it with the status answered), refusals included.
    audited = services.audit.begin(request, "transaction")
    if not key.can_write:
        raise ApiError.of(403, "forbidden", f"the API key {key.name!r} is read-only: it cannot write")
    media = media_type(request, FHIR_TYPES)
    data = await read_body(request, min(services.settings.max_body_bytes, services.bench.forwarding.max_bytes))
    bundle, actions, issues, refusal = await services.cpu(request, _check, data, media, key)
    audited.attempted(bundle.get("entry"))
    if refusal is not None:
        raise refusal
    services.refuse_invalid("bundles", issues)
    # JSON is forwarded as it came (its decimals exactly as written), less a byte-order mark (read past here, as
    # JSON allows; a server may refuse it); XML as the JSON it was read into.
    raw = data.removeprefix(codecs.BOM_UTF8) if media in JSON_TYPES else None
    result = await push_bundle(
        services.client,
        bundle,
        locks=services.locks,
        warnings=issues,
        raw=raw,
        before=_before_sending(services, bundle, actions, key),
    )
    audited.answered(result.response)
    return FhirResponse(result.response)


def _before_sending(
    services: Services, bundle: dict[str, Any], actions: list[Action], key: ApiKey
) -> Callable[[], Awaitable[None]] | None:
    """The checks that read the FHIR server, run under the patient's write lock: the key's namespaces (403), then,
    for a HAPI server, the pre-checks of what HAPI would refuse (422 naming the entry; casebridge.gateway.hapi_checks).
    Namespaces first, so a refusal for another's patient never depends on what the server holds."""
    namespaces = namespace_guard(services.client, bundle, actions, key, services.keys)
    checks = services.bench.forwarding.hapi_checks
    if services.settings.upstream != "hapi" or not checks.enabled:
        return namespaces

    async def check() -> None:
        if namespaces is not None:
            await namespaces()
        refused = await HapiPrecheck(services.client, bundle, actions, checks).run()
        if refused:
            raise ApiError(422, operation_outcome(refused, services.settings.max_outcome_issues))

    return check


def _check(
    bench: Workbench, data: bytes, media: str, key: ApiKey
) -> tuple[dict[str, Any], list[Action], list[Issue], ApiError | None]:
    """The Bundle, its actions and validation issues, or the refusal of the policy or of the key's scopes (with
    the Bundle, so what was attempted is audited). Policy and scopes come first, as they are cheap: a Bundle
    refused by either is not validated at all."""
    # XML elements the types do not define are left out of the Bundle and are errors here, so it is refused.
    problems: list[Issue] = []
    bundle = parse_fhir(data, media, bench.xml_reader, problems)
    try:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise ApiError(422, error_outcome("invalid", "only a transaction Bundle can be forwarded", "Bundle.type"))
        actions, refused = check_entries(bundle, bench.forwarding)
        if refused:
            raise ApiError(422, operation_outcome(refused, bench.settings.max_outcome_issues))
        require_scopes(key, [need for a in actions for need in a.needs], "write what this Bundle writes")
    except ApiError as refusal:
        return bundle, [], [], refusal
    checked = with_inbound_profiles(bundle, bench.inbound_profiles)
    issues = bench.validator.validate(checked, unknown_profiles=bench.forwarding.unknown_profiles)
    return bundle, actions, [*problems, *issues], None
