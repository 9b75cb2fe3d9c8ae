"""Documents and Bundles as the HL7 validator reports them: the Composition's references at ``entry[1]`` with
repeats counted from 1, unreachable entries at ``entry[n+1]``, fullUrl rules at ``entry[0]``, references resolved
by fullUrl (two entries at one fullUrl are ambiguous), and ``/*Type/null*/`` for a bundled resource without id."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Issue, Validator

BASE = "http://example.org/fhir"


@pytest.fixture(scope="module")
def validator() -> Validator:
    return load_validator(Settings())


def errors(issues: list[Issue], words: str) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in issues if i.severity == "error" and words in i.message]


def observation(version: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": version},
        "status": "final",
        "code": {"text": "weight"},
    }


def document(*section_entries: str) -> dict[str, Any]:
    composition = {
        "resourceType": "Composition",
        "id": "c1",
        "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11502-2"}]},
        "date": "2023-11-11",
        "author": [{"display": "someone"}],
        "title": "a report",
        "section": [{"title": "results", "entry": [{"reference": r} for r in section_entries]}],
    }
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "http://example.org/documents", "value": "1"},
        "type": "document",
        "timestamp": "2023-11-11T12:16:44Z",
        "entry": [
            {"fullUrl": f"{BASE}/Composition/c1", "resource": composition},
            {"fullUrl": f"{BASE}/Observation/o1", "resource": observation("1")},
            {"fullUrl": f"{BASE}/Observation/o1", "resource": observation("2")},
        ],
    }


def test_section_entries_are_reported_below_entry_1_counting_from_1(validator: Validator) -> None:
    issues = validator.validate(document("Observation/o1/_history/1", "Observation/o1/_history/3"))
    assert errors(issues, "Can't find") == [
        (
            "Bundle.entry[1].resource.section[1].entry[2]",
            "Can't find 'Observation/o1/_history/3' in the bundle (Section Entry). Note that there are 2 resources "
            "in the bundle with the same type and id, but they do not match because of the fullUrl based rules "
            f"around matching relative references (must be '{BASE}/Observation/o1/_history/3', but found these: "
            f"{BASE}/Observation/o1)",
        )
    ]


def test_two_entries_at_one_full_url_are_ambiguous(validator: Validator) -> None:
    issues = validator.validate(document("Observation/o1/_history/1", "Observation/o1"))
    assert errors(issues, "matches") == [
        (
            "Bundle.entry[0].resource/*Composition/c1*/.section[0].entry[1]",
            "Multiple matches in bundle for reference Observation/o1",
        ),
        (
            "Bundle.entry[1].resource.section[1].entry[2]",
            "Found 2 matches for 'Observation/o1' in the bundle (Section Entry)",
        ),
    ]
    # Each version named: no ambiguity, and both entries are reached.
    assert errors(validator.validate(document("Observation/o1/_history/1", "Observation/o1/_history/2")), "") == []


def test_unreachable_entries_count_from_1(validator: Validator) -> None:
    bundle = document("Observation/o1/_history/1")
    bundle["entry"][2]["fullUrl"] = "urn:uuid:5d6c1f0e-0000-4000-8000-000000000002"
    bundle["entry"][2]["resource"]["id"] = "o2"
    assert errors(validator.validate(bundle), "reachable") == [
        (
            "Bundle.entry[3]",
            "Entry 'urn:uuid:5d6c1f0e-0000-4000-8000-000000000002' isn't reachable by traversing links (forward or "
            "backward) from the Composition",
        )
    ]


def test_full_url_rules_are_reported_at_the_first_entry(validator: Validator) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{BASE}/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1"}},
            {"fullUrl": "Patient/p2", "resource": {"resourceType": "Patient", "id": "p2"}},
            {"fullUrl": f"{BASE}/Patient/p3", "resource": {"resourceType": "Patient", "id": "p4"}},
            {"fullUrl": f"{BASE}/Patient/p5", "resource": {"resourceType": "Patient"}},
        ],
    }
    assert errors(validator.validate(bundle), "fullUrl") == [
        ("Bundle.entry[0]", "The fullUrl must be an absolute URL (not 'Patient/p2')"),
        (
            "Bundle.entry[0]",
            f"The fullUrl '{BASE}/Patient/p3' looks like a RESTful server URL, so it must end with the correct type "
            "and id (/Patient/p4)",
        ),
        (
            "Bundle.entry[0]",
            f"The fullUrl '{BASE}/Patient/p5' looks like a RESTful server URL, but the resource has no id",
        ),
    ]


def test_a_bundled_resource_without_id_is_named_type_null(validator: Validator) -> None:
    bundle = document("Observation/o1/_history/1")
    composition = copy.deepcopy(bundle["entry"][0]["resource"])
    del composition["id"]
    del composition["status"]
    bundle["entry"][0] = {"fullUrl": "urn:uuid:5d6c1f0e-0000-4000-8000-000000000001", "resource": composition}
    assert errors(validator.validate(bundle), "Composition.status") == [
        (
            "Bundle.entry[0].resource/*Composition/null*/",
            "Composition.status: minimum required = 1, but only found 0 (from "
            "http://hl7.org/fhir/StructureDefinition/Composition|4.0.1)",
        )
    ]
