"""Reading the Bundles the tests convert: resources by type or role, their notes, the validator's errors."""

from __future__ import annotations

import copy
from typing import Any

from casebridge.domain.reader import validate_case
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Validator
from tests.conftest import RECORDED


def convert(mappings: MappingSet, doc: dict[str, Any]) -> dict[str, Any]:
    """A case document (2.0 or 1.0) as its Bundle, converted at the tests' fixed time."""
    return mappings.convert(validate_case(copy.deepcopy(doc), source="case.yaml"), recorded=RECORDED)


def resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def by_role(bundle: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    """The resources of a role by key (the identifier is "<case>/<role>/<key>"; "" for a role of one)."""
    out = {}
    for e in bundle["entry"]:
        _, found, *key = e["resource"].get("identifier", [{}])[0].get("value", "//").split("/", 2)
        if found == role:
            out[key[0] if key else ""] = e["resource"]
    return out


def one(bundle: dict[str, Any], role: str) -> dict[str, Any]:
    (resource,) = by_role(bundle, role).values()
    return resource


def notes(resource: dict[str, Any]) -> list[str]:
    return [n["text"] for n in resource.get("note", [])]


def errors(validator: Validator, bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in validator.validate(bundle) if i.severity in ("error", "fatal")]
