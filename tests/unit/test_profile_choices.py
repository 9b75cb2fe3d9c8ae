"""Profiles in detail: an element type listing several profiles is satisfied by any one of them; a slice keeps
the limits its profile puts on the sliced element's children; a type discriminator may resolve a Reference; a
choice type a profile rules out is reported as the HL7 validator reports it; a profile whose JSON spells a
boolean as a string still loads. Each rule has a resource that breaks it and, where it matters, one that passes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Issue, Validator

BASE = "http://example.org/fhir/StructureDefinition"
ADDRESS_1 = f"{BASE}/address-use"
ADDRESS_2 = f"{BASE}/address-type"
PATIENT = f"{BASE}/patient-address-choice"
PARAMETERS = f"{BASE}/params-no-extensions"
LIST = f"{BASE}/list-by-resolved-type"
OBSERVATION = f"{BASE}/obs-quantity-or-concept"
STRING_BOOLEAN = f"{BASE}/obs-abstract-string"


def profile(url: str, name: str, rtype: str, elements: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "version": "1.0.0",
        "name": name,
        "status": "draft",
        "fhirVersion": "4.0.1",
        "kind": "complex-type" if rtype == "Address" else "resource",
        "abstract": False,
        "type": rtype,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "derivation": "constraint",
        "differential": {"element": elements},
        **extra,
    }


DEFINITIONS = [
    profile(ADDRESS_1, "AddressUse", "Address", [{"id": "Address.use", "path": "Address.use", "min": 1}]),
    profile(ADDRESS_2, "AddressType", "Address", [{"id": "Address.type", "path": "Address.type", "min": 1}]),
    profile(
        PATIENT,
        "PatientAddressChoice",
        "Patient",
        [
            {
                "id": "Patient.address",
                "path": "Patient.address",
                "type": [{"code": "Address", "profile": [ADDRESS_1, ADDRESS_2]}],
            }
        ],
    ),
    profile(
        PARAMETERS,
        "ParamsNoExtensions",
        "Parameters",
        [
            {
                "id": "Parameters.parameter",
                "path": "Parameters.parameter",
                "slicing": {"discriminator": [{"type": "value", "path": "name"}], "rules": "closed"},
            },
            {"id": "Parameters.parameter.extension", "path": "Parameters.parameter.extension", "max": "0"},
            {"id": "Parameters.parameter:p1", "path": "Parameters.parameter", "sliceName": "p1", "min": 1, "max": "1"},
            {"id": "Parameters.parameter:p1.name", "path": "Parameters.parameter.name", "fixedString": "p1"},
        ],
    ),
    profile(
        LIST,
        "ListByResolvedType",
        "List",
        [
            {
                "id": "List.entry",
                "path": "List.entry",
                "slicing": {"discriminator": [{"type": "type", "path": "item.resolve()"}], "rules": "closed"},
            },
            {"id": "List.entry:conditions", "path": "List.entry", "sliceName": "conditions", "min": 1, "max": "1"},
            {
                "id": "List.entry:conditions.item",
                "path": "List.entry.item",
                "type": [{"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Condition"]}],
            },
            {"id": "List.entry:observations", "path": "List.entry", "sliceName": "observations", "min": 1},
            {
                "id": "List.entry:observations.item",
                "path": "List.entry.item",
                "type": [
                    {"code": "Reference", "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Observation"]}
                ],
            },
        ],
    ),
    profile(
        OBSERVATION,
        "ObsQuantityOrConcept",
        "Observation",
        [
            {
                "id": "Observation.value[x]",
                "path": "Observation.value[x]",
                "min": 1,
                "type": [{"code": "Quantity"}, {"code": "CodeableConcept"}],
            }
        ],
    ),
    {
        **profile(
            STRING_BOOLEAN,
            "ObsAbstractString",
            "Observation",
            [{"id": "Observation.subject", "path": "Observation.subject", "min": 1}],
        ),
        "abstract": "false",
    },
]


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    folder = tmp_path_factory.mktemp("profile-choices")
    for i, definition in enumerate(DEFINITIONS):
        (folder / f"sd-{i}.json").write_text(json.dumps(definition))
    return load_validator(Settings(), [folder])


def errors(issues: list[Issue]) -> list[tuple[str, str]]:
    return sorted((i.expression, i.message) for i in issues if i.severity in ("error", "fatal"))


def patient(address: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Patient", "address": [address]}


OBSERVATION_BASE: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "something measured"},
}


# --- several profiles on a type: any one of them ------------------------------------------------------------------


def test_a_value_matching_none_of_its_type_profiles_lists_each_profiles_errors(validator: Validator) -> None:
    issues = validator.validate(patient({"text": "12 Main St"}), [PATIENT])
    assert errors(issues) == sorted(
        [
            (
                "Patient.address[0]",
                f"Unable to find a match for the specified profile among choices: {ADDRESS_1}, {ADDRESS_2}",
            ),
            (
                "Patient.address[0]",
                f"Address.use: minimum required = 1, but only found 0 (from {ADDRESS_1}|1.0.0) "
                f"(validating against {ADDRESS_1}|1.0.0 [AddressUse])",
            ),
            (
                "Patient.address[0]",
                f"Address.type: minimum required = 1, but only found 0 (from {ADDRESS_2}|1.0.0) "
                f"(validating against {ADDRESS_2}|1.0.0 [AddressType])",
            ),
        ]
    )


def test_a_value_matching_one_of_its_type_profiles_is_valid(validator: Validator) -> None:
    assert errors(validator.validate(patient({"use": "home", "text": "12 Main St"}), [PATIENT])) == []
    assert errors(validator.validate(patient({"type": "postal", "text": "12 Main St"}), [PATIENT])) == []


def test_a_value_matching_several_type_profiles_is_a_warning(validator: Validator) -> None:
    issues = validator.validate(patient({"use": "home", "type": "postal"}), [PATIENT])
    assert errors(issues) == []
    warnings = [(i.expression, i.message) for i in issues if i.severity == "warning"]
    assert ("Patient.address[0]", f"Found multiple matching profiles among 2 choices: {ADDRESS_1}, {ADDRESS_2}") in (
        warnings
    )


# --- a slice keeps the profile's limits on the sliced element's children --------------------------------------------


def test_a_slice_keeps_the_max_of_the_sliced_elements_children(validator: Validator) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/parameters-fullUrl", "valueUri": "x:y"}],
                "name": "p1",
                "valueString": "a",
            }
        ],
    }
    label = f"{PARAMETERS}|1.0.0"
    assert errors(validator.validate(params, [PARAMETERS])) == [
        ("Parameters.parameter[0]", f"Parameters.parameter.extension: max allowed = 0, but found 1 (from {label})"),
        ("Parameters.parameter[0]", f"Parameters.parameter:p1.extension: max allowed = 0, but found 1 (from {label})"),
    ]


# --- type discriminators through resolve() -----------------------------------------------------------------------


def listing(*targets: str) -> dict[str, Any]:
    contained = [
        {"resourceType": rtype, "id": f"r{i}", "subject": {"reference": "Patient/example"}}
        for i, rtype in enumerate(targets)
    ]
    for c in contained:
        if c["resourceType"] == "Observation":
            c.update({"status": "final", "code": {"text": "x"}})
    return {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "contained": contained,
        "entry": [{"item": {"reference": f"#r{i}"}} for i in range(len(targets))],
    }


def test_a_type_discriminator_resolves_the_reference(validator: Validator) -> None:
    label = f"{LIST}|1.0.0"
    assert errors(validator.validate(listing("Condition", "Condition"), [LIST])) == [
        ("List", f"List.entry:conditions: max allowed = 1, but found 2 (from {label})"),
        (
            "List",
            f"Slice 'List.entry:observations': a matching slice is required, but not found (from {label}). "
            "Note that other slices are allowed in addition to this required slice",
        ),
    ]
    assert errors(validator.validate(listing("Condition", "Observation"), [LIST])) == []


def test_a_resolved_type_no_slice_names_is_outside_closed_slicing(validator: Validator) -> None:
    label = f"{LIST}|1.0.0"
    found = errors(validator.validate(listing("Condition", "Observation", "Procedure"), [LIST]))
    assert (
        "List.entry[2]",
        f"This element does not match any known slice defined in the profile {label}",
    ) in found


# --- a choice type the profile rules out ----------------------------------------------------------------------------


def test_a_choice_type_ruled_out_by_the_profile_is_one_error_at_the_parent(validator: Validator) -> None:
    obs = {**OBSERVATION_BASE, "valueString": "test"}
    assert errors(validator.validate(obs, [OBSERVATION])) == [
        (
            "Observation",
            "The type of element valueString is not known - it could not be determined from the information "
            "available. Valid types at this point are Quantity, CodeableConcept",
        )
    ]
    # Unknown to the base definition too: not a choice of this element at all.
    assert errors(validator.validate({**OBSERVATION_BASE, "valueFoo": "x"}, [OBSERVATION])) == [
        (
            "Observation",
            "Observation.value[x]: minimum required = 1, but only found 0 (from " + OBSERVATION + "|1.0.0)",
        ),
        ("Observation", "Unrecognized property 'valueFoo'"),
    ]


# --- a boolean written as a string ---------------------------------------------------------------------------------


def test_a_profile_with_abstract_as_a_string_loads(validator: Validator) -> None:
    assert errors(validator.validate(OBSERVATION_BASE, [STRING_BOOLEAN])) == [
        (
            "Observation",
            f"Observation.subject: minimum required = 1, but only found 0 (from {STRING_BOOLEAN}|1.0.0)",
        )
    ]
