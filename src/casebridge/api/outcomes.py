"""OperationOutcome responses: every 4xx/5xx body the API sends is one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from starlette.responses import Response

from casebridge.definitions.numbers import json_default
from casebridge.errors import Problem

FHIR_JSON = "application/fhir+json"


class FhirResponse(Response):
    """JSON with the FHIR media type, serialized by orjson."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return fhir_json(content)


def fhir_json(content: Any) -> bytes:
    try:
        return orjson.dumps(content, default=json_default)
    except TypeError:
        # Text orjson will not encode (a lone surrogate from somewhere): ASCII-escaped JSON always works.
        return json.dumps(content, ensure_ascii=True, default=str).encode()


def issue(severity: str, code: str, text: str, expression: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    if expression:
        item["expression"] = [expression]
    return item


def outcome(issues: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [dict(i) for i in issues]}


def error_outcome(code: str, text: str, expression: str | None = None, severity: str = "error") -> dict[str, Any]:
    return outcome([issue(severity, code, text, expression)])


def problems_outcome(problems: Iterable[Problem], code: str = "invalid") -> dict[str, Any]:
    return outcome(issue("error", code, f"{p.at()}{p.message}", p.location or None) for p in problems)


def outcome_response(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> FhirResponse:
    return FhirResponse(dict(body), status_code=status, headers=dict(headers or {}))
