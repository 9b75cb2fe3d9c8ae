"""Profiles given as differentials, read as the HL7 snapshot generator reads them, and the slicing they define.

- Without ids (or with an id that names another path), a differential element is placed by its path in the slice
  opened last above it (profiling.html#slicing: slices are followed by their constraints).
- A choice of several data types may be constrained below in what all of them share (its extensions).
- An extension slice's renamed choice (``extension:a.valueCode``) is found once the slice has its children.
- A discriminator path may step through ``extension('url')`` (profiling.html#discriminator).
"""

from __future__ import annotations

from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.snapshot import generate_snapshot
from casebridge.definitions.structure import Definitions
from casebridge.validation.service import load_validator
from casebridge.validation.validator import ValidationOptions, Validator


class Loose:
    """Definitions of a test over the loaded packages."""

    def __init__(self, base: Definitions, *sds: dict[str, Any]):
        self.base = base
        self.sds = {sd["url"]: sd for sd in sds}

    def get(self, canonical: str) -> dict[str, Any] | None:
        return self.sds.get(canonical) or self.base.get(canonical)

    def core_definition(self, type_name: str) -> dict[str, Any] | None:
        return self.base.core_definition(type_name)


@pytest.fixture(scope="module")
def packages() -> Definitions:
    return load_validator(Settings()).definitions


def profile(url: str, rtype: str, *elements: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": url.rsplit("/", 1)[-1],
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": rtype,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "derivation": "constraint",
        "differential": {"element": list(elements)},
    }


def errors(validator: Validator, resource: dict[str, Any], url: str) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in validator.validate(resource, [url]) if i.severity in ("error", "fatal")]


PAYLOADS = profile(
    "http://example.org/fhir/StructureDefinition/payloads",
    "Communication",
    {"path": "Communication"},
    {
        "path": "Communication.payload",
        "slicing": {"discriminator": [{"type": "type", "path": "content"}], "rules": "closed"},
    },
    {"path": "Communication.payload", "sliceName": "text"},
    {"path": "Communication.payload.contentString", "min": 1, "type": [{"code": "string"}]},
    {"path": "Communication.payload", "sliceName": "file", "max": "1"},
    {"path": "Communication.payload.contentAttachment", "type": [{"code": "Attachment"}]},
)


def test_elements_without_ids_belong_to_the_slice_above_them(packages: Definitions) -> None:
    snapshot = generate_snapshot(PAYLOADS, Loose(packages))["snapshot"]["element"]
    types = {e["id"]: [t["code"] for t in e.get("type", ())] for e in snapshot}
    assert types["Communication.payload:text.content[x]"] == ["string"]
    assert types["Communication.payload:file.content[x]"] == ["Attachment"]
    assert len(types["Communication.payload.content[x]"]) == 3  # the sliced element itself keeps every type

    validator = Validator(Loose(packages, PAYLOADS))
    good = {
        "resourceType": "Communication",
        "status": "completed",
        "payload": [{"contentString": "hello"}, {"contentAttachment": {"contentType": "text/plain"}}],
    }
    assert errors(validator, good, PAYLOADS["url"]) == []
    two_files = {**good, "payload": [{"contentAttachment": {"title": "a"}}, {"contentAttachment": {"title": "b"}}]}
    assert [m for _, m in errors(validator, two_files, PAYLOADS["url"])] == [
        "Communication.payload:file: max allowed = 1, but found 2 (from "
        "http://example.org/fhir/StructureDefinition/payloads)"
    ]


ABSENT = profile(
    "http://example.org/fhir/StructureDefinition/absent-effective",
    "MedicationStatement",
    {"id": "MedicationStatement.effective[x]", "path": "MedicationStatement.effective[x]", "min": 1},
    {
        # The id names a slice the path does not: the path is what the element constrains.
        "id": "MedicationStatement.effective[x]:data-absent-reason",
        "path": "MedicationStatement.effective[x].extension",
        "max": "1",
    },
)


def test_a_choice_of_types_is_constrained_in_what_they_share(packages: Definitions) -> None:
    snapshot = generate_snapshot(ABSENT, Loose(packages))["snapshot"]["element"]
    extension = next(e for e in snapshot if e["id"] == "MedicationStatement.effective[x].extension")
    assert extension["max"] == "1"
    validator = Validator(Loose(packages, ABSENT), options=ValidationOptions())
    statement = {
        "resourceType": "MedicationStatement",
        "status": "active",
        "medicationCodeableConcept": {"text": "x"},
        "subject": {"reference": "Patient/1"},
        "effectivePeriod": {"start": "2024-01-01"},
    }
    assert errors(validator, statement, ABSENT["url"]) == []  # a Period's own children are still known
    missing = {k: v for k, v in statement.items() if k != "effectivePeriod"}
    assert any("effective[x]: minimum required = 1" in m for _, m in errors(validator, missing, ABSENT["url"]))


ACTION_TYPE = "http://example.org/fhir/StructureDefinition/action-type"
EXTENSION = {
    "resourceType": "StructureDefinition",
    "url": ACTION_TYPE,
    "name": "ActionType",
    "status": "active",
    "kind": "complex-type",
    "abstract": False,
    "context": [{"type": "element", "expression": "PlanDefinition.action"}],
    "type": "Extension",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
    "derivation": "constraint",
    "differential": {
        "element": [
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": ACTION_TYPE},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "type": [{"code": "code"}]},
        ]
    },
}
PLAN = profile(
    "http://example.org/fhir/StructureDefinition/two-actions",
    "PlanDefinition",
    {
        "id": "PlanDefinition.action",
        "path": "PlanDefinition.action",
        "slicing": {
            "discriminator": [{"type": "value", "path": f"extension('{ACTION_TYPE}').value"}],
            "rules": "open",
        },
    },
    {
        "id": "PlanDefinition.action.extension:kind",
        "path": "PlanDefinition.action.extension",
        "sliceName": "kind",
        "type": [{"code": "Extension", "profile": [ACTION_TYPE]}],
    },
    *(
        element
        for kind in ("Single", "Group")
        for element in (
            {"id": f"PlanDefinition.action:{kind}", "path": "PlanDefinition.action", "sliceName": kind, "min": 1},
            {
                "id": f"PlanDefinition.action:{kind}.extension:kind/{kind}",
                "path": "PlanDefinition.action.extension",
                "sliceName": f"kind/{kind}",
                "min": 1,
                "type": [{"code": "Extension", "profile": [ACTION_TYPE]}],
            },
            {
                "id": f"PlanDefinition.action:{kind}.extension:kind/{kind}.valueCode",
                "path": "PlanDefinition.action.extension.valueCode",
                "fixedCode": kind,
            },
        )
    ),
)


def action(kind: str) -> dict[str, Any]:
    return {"title": kind, "extension": [{"url": ACTION_TYPE, "valueCode": kind}]}


def test_slices_told_apart_by_an_extension_value(packages: Definitions) -> None:
    validator = Validator(Loose(packages, PLAN, EXTENSION))
    plan = {"resourceType": "PlanDefinition", "status": "active", "action": [action("Single"), action("Group")]}
    assert errors(validator, plan, PLAN["url"]) == []
    only_single = {**plan, "action": [action("Single"), action("Other")]}
    assert errors(validator, only_single, PLAN["url"]) == [
        (
            "PlanDefinition",
            "Slice 'PlanDefinition.action:Group': a matching slice is required, but not found (from "
            "http://example.org/fhir/StructureDefinition/two-actions). Note that other slices are allowed in "
            "addition to this required slice",
        )
    ]


SECTIONS = profile(
    "http://example.org/fhir/StructureDefinition/sectioned",
    "Composition",
    {
        "path": "Composition.section",
        "slicing": {"discriminator": [{"type": "pattern", "path": "code"}], "rules": "open"},
    },
    {"path": "Composition.section", "sliceName": "a", "min": 1},
    {"path": "Composition.section.code", "patternCodeableConcept": {"coding": [{"system": "urn:x", "code": "a"}]}},
)


def test_a_required_slice_of_an_absent_element_is_missing(packages: Definitions) -> None:
    validator = Validator(Loose(packages, SECTIONS))
    composition = {
        "resourceType": "Composition",
        "status": "final",
        "type": {"text": "note"},
        "date": "2024-01-01",
        "author": [{"display": "A"}],
        "title": "T",
    }
    assert errors(validator, composition, SECTIONS["url"]) == [
        (
            "Composition",
            "Slice 'Composition.section:a': a matching slice is required, but not found (from "
            "http://example.org/fhir/StructureDefinition/sectioned). Note that other slices are allowed in addition to "
            "this required slice",
        )
    ]
    section = {
        "title": "A",
        "code": {"coding": [{"system": "urn:x", "code": "a"}]},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">a</div>'},
    }
    assert errors(validator, {**composition, "section": [section]}, SECTIONS["url"]) == []


MUST_HAVE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.mustHaveValue"
ALTERNATIVES = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.valueAlternatives"
ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
NULL_FLAVOR = "http://hl7.org/fhir/StructureDefinition/iso21090-nullFlavor"
VALUE_PRESENT = profile(
    "http://example.org/fhir/StructureDefinition/value-present",
    "Patient",
    {"path": "Patient.active", "extension": [{"url": MUST_HAVE, "valueBoolean": True}]},
)
VALUE_ALTERNATIVE = profile(
    "http://example.org/fhir/StructureDefinition/value-alternative",
    "Patient",
    {"path": "Patient.active", "extension": [{"url": ALTERNATIVES, "valueCanonical": ABSENT_REASON}]},
)


def active(value: bool | None, extension: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Patient",
        "_active": {"extension": [{"url": extension, "valueCode": "unknown" if extension == ABSENT_REASON else "MSK"}]},
    }
    if value is not None:
        out["active"] = value
    return out


def test_a_value_required_by_the_profile(packages: Definitions) -> None:
    validator = Validator(Loose(packages, VALUE_PRESENT))
    assert errors(validator, active(None, ABSENT_REASON), VALUE_PRESENT["url"]) == [
        (
            "Patient.active",
            "The element definition ``Patient.active`` in the profile "
            "'http://example.org/fhir/StructureDefinition/value-present' requires that a value be present in this "
            "element",
        )
    ]
    assert errors(validator, active(True, ABSENT_REASON), VALUE_PRESENT["url"]) == []
    assert errors(validator, active(None, ABSENT_REASON), "http://hl7.org/fhir/StructureDefinition/Patient") == []


def test_a_missing_value_only_with_the_allowed_extensions(packages: Definitions) -> None:
    validator = Validator(Loose(packages, VALUE_ALTERNATIVE))
    found = errors(validator, active(None, NULL_FLAVOR), VALUE_ALTERNATIVE["url"])
    assert [e for e, _ in found] == ["Patient.active"]
    assert f"the extension '{ABSENT_REASON}' must be present" in found[0][1]
    assert errors(validator, active(None, ABSENT_REASON), VALUE_ALTERNATIVE["url"]) == []
    assert errors(validator, active(False, NULL_FLAVOR), VALUE_ALTERNATIVE["url"]) == []


ANY_OF = profile(
    "http://example.org/fhir/StructureDefinition/people",
    "Parameters",
    {
        "id": "Parameters.parameter.resource",
        "path": "Parameters.parameter.resource",
        "type": [{"code": "Patient"}, {"code": "Practitioner"}],
    },
)


def test_an_element_of_several_resource_types_takes_the_resource_s_own(packages: Definitions) -> None:
    validator = Validator(Loose(packages, ANY_OF))

    def parameters(resource: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Parameters", "parameter": [{"name": "who", "resource": resource}]}

    assert errors(validator, parameters({"resourceType": "Practitioner", "active": True}), ANY_OF["url"]) == []
    # checked as the Patient it is: its own errors are found (a bare code outside its value set is two errors; a
    # resource inside another is named /*Type/id*/, /*Type/null*/ without an id, as the HL7 validator names it)
    assert [e for e, _ in errors(validator, parameters({"resourceType": "Patient", "gender": "f"}), ANY_OF["url"])] == [
        "Parameters.parameter[0].resource/*Patient/null*/.gender"
    ] * 2
    assert errors(
        validator, parameters({"resourceType": "Group", "type": "person", "actual": True}), ANY_OF["url"]
    ) == [
        (
            "Parameters.parameter[0].resource",
            "The type 'Group' is not valid here: it must be one of Patient, Practitioner",
        )
    ]
