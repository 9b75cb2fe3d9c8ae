"""OpenAPI request and response examples, one set per endpoint."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import yaml

from casebridge.config import DATA_DIR

SEED_CASE = DATA_DIR / "cases" / "dystrophic-calcification-right-forearm.yaml"

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "example",
    "gender": "female",
    "name": [{"text": "Example Patient"}],
    "birthDate": "1990-01-01",
}
TRANSACTION: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:7f1c3bb2-3e39-4d51-9d4a-4f3f5d3f9a01",
            "resource": {**PATIENT, "id": "7f1c3bb2-3e39-4d51-9d4a-4f3f5d3f9a01"},
            "request": {"method": "PUT", "url": "Patient/7f1c3bb2-3e39-4d51-9d4a-4f3f5d3f9a01"},
        }
    ],
}
OUTCOME_OK: dict[str, Any] = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "information", "code": "informational", "details": {"text": "No issues"}}],
}
OUTCOME_INVALID: dict[str, Any] = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "code-invalid",
            "diagnostics": "The value provided ('f') is not in the value set 'AdministrativeGender' (required)",
            "expression": ["Patient.gender"],
        }
    ],
}


def _error(code: str, text: str) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


OUTCOME_AUTH = _error("login", "unknown API key")
OUTCOME_NOT_TYPE = _error("not-supported", "'Spaceship' is not a FHIR R4 resource type")
OUTCOME_NOT_ACCEPTABLE = _error(
    "not-supported",
    "none of the Accept types is offered: application/fhir+json, application/fhir+ndjson, text/csv "
    "(or _format=json|ndjson|csv)",
)
OUTCOME_NOT_READY = _error("transient", "the FHIR server is not reachable (no answer within 3 s)")
OUTCOME_BUSY = _error("transient", "busy: too much validation waiting; try again shortly")
OUTCOME_UPSTREAM = _error(
    "transient", "the FHIR server did not answer: POST http://hapi:8080/fhir failed: ConnectError"
)


@lru_cache(maxsize=1)
def seed_case() -> dict[str, Any]:
    """The seed case as a JSON object (the example of POST /cases)."""
    try:
        doc = yaml.safe_load(SEED_CASE.read_text(encoding="utf-8"))
    except OSError:
        return {"schema_version": "2.0", "case_id": "example"}
    return doc if isinstance(doc, dict) else {}


def fhir_content(example: dict[str, Any]) -> dict[str, Any]:
    return {"application/fhir+json": {"schema": {"type": "object"}, "example": example}}


def outcome_response(description: str, example: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": fhir_content(example)}


AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: outcome_response("No or unknown API key (OperationOutcome).", OUTCOME_AUTH),
    413: outcome_response("The body is larger than the limit (OperationOutcome).", OUTCOME_INVALID),
    415: outcome_response("A Content-Type this endpoint does not take (OperationOutcome).", OUTCOME_INVALID),
    431: outcome_response(
        "The request line and headers are longer than CASEBRIDGE_MAX_HEADER_BYTES (OperationOutcome).",
        OUTCOME_INVALID,
    ),
}
UPSTREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: outcome_response("The API key lacks a scope this request needs (OperationOutcome).", OUTCOME_AUTH),
    502: outcome_response("The FHIR server failed or refused the request (OperationOutcome).", OUTCOME_UPSTREAM),
    503: outcome_response(
        "The FHIR server is unreachable or asks us to slow down (OperationOutcome).", OUTCOME_UPSTREAM
    ),
    504: outcome_response("The FHIR server did not answer in time (OperationOutcome).", OUTCOME_UPSTREAM),
}
BUSY_RESPONSE = outcome_response(
    "Too much work waiting, or a conversion process stopped: try again after Retry-After (OperationOutcome).",
    OUTCOME_BUSY,
)
