"""Fixed values and references in profiles: a complex fixed value is compared element by element (what it leaves
out must be absent), a value discriminator may take its value from a slice's complex fixed value, a reference's
target type is checked from its text only when REST references are taken as valid, an unresolvable target
profile is reported, and an additional required binding is worded as the HL7 validator words it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.validation.references import java_set_order
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Issue, ValidationOptions, Validator
from tests.profiles import profile

BASE = "http://example.org/fhir/StructureDefinition"
PRACTITIONER = f"{BASE}/practitioner-home-phone"
PATIENT = f"{BASE}/patient-fixed-identifier"
OBSERVATION = f"{BASE}/obs-subject-patient-or-location"
ORGANIZATION = f"{BASE}/org-endpoint-profile"
ADDITIONAL = f"{BASE}/obs-additional-binding"
ENCOUNTER = f"{BASE}/encounter-class-required"
VALUE_SET = "http://example.org/fhir/ValueSet/allowed-codes"
MISSING_PROFILE = "http://example.org/fhir/StructureDefinition/nowhere-endpoint"
CORE = "http://hl7.org/fhir/StructureDefinition"
BUNDLED_ONLY = f"{BASE}/org-endpoint-bundled"


def reference_to(element: str, *targets: str) -> dict[str, Any]:
    return {"id": element, "path": element, "type": [{"code": "Reference", "targetProfile": list(targets)}]}


DEFINITIONS = [
    profile(
        BUNDLED_ONLY,
        "Organization",
        [
            {
                "id": "Organization.endpoint",
                "path": "Organization.endpoint",
                "type": [{"code": "Reference", "targetProfile": [f"{CORE}/Endpoint"], "aggregation": ["bundled"]}],
            }
        ],
    ),
    profile(
        PRACTITIONER,
        "Practitioner",
        [
            {
                "id": "Practitioner.telecom",
                "path": "Practitioner.telecom",
                "slicing": {"discriminator": [{"type": "value", "path": "use"}], "rules": "open"},
            },
            {
                "id": "Practitioner.telecom:home",
                "path": "Practitioner.telecom",
                "sliceName": "home",
                "min": 1,
                "max": "1",
                "fixedContactPoint": {"use": "home"},
            },
        ],
    ),
    profile(
        PATIENT,
        "Patient",
        [
            {
                "id": "Patient.identifier",
                "path": "Patient.identifier",
                "fixedIdentifier": {"use": "usual", "system": "urn:ietf:rfc:3986"},
            }
        ],
    ),
    profile(OBSERVATION, "Observation", [reference_to("Observation.subject", f"{CORE}/Patient", f"{CORE}/Location")]),
    profile(ORGANIZATION, "Organization", [reference_to("Organization.endpoint", MISSING_PROFILE)]),
    profile(
        ADDITIONAL,
        "Observation",
        [
            {
                "id": "Observation.code",
                "path": "Observation.code",
                "binding": {
                    "strength": "example",
                    "valueSet": "http://hl7.org/fhir/ValueSet/observation-codes",
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.binding.additional",
                            "extension": [
                                {"url": "purpose", "valueCode": "required"},
                                {"url": "valueSet", "valueCanonical": VALUE_SET},
                            ],
                        }
                    ],
                },
            }
        ],
    ),
    profile(
        ENCOUNTER,
        "Encounter",
        [
            {
                "id": "Encounter.class",
                "path": "Encounter.class",
                "binding": {"strength": "required", "valueSet": VALUE_SET},
            }
        ],
    ),
    {
        "resourceType": "ValueSet",
        "url": VALUE_SET,
        "version": "2.0.0",
        "name": "AllowedCodes",
        "title": "Allowed Codes",
        "status": "active",
        "compose": {"include": [{"system": "http://example.org/codes", "concept": [{"code": "a"}]}]},
    },
]


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    folder = tmp_path_factory.mktemp("profile-fixed")
    for i, definition in enumerate(DEFINITIONS):
        (folder / f"def-{i}.json").write_text(json.dumps(definition))
    return load_validator(Settings(), [folder])


def errors(issues: list[Issue]) -> list[tuple[str, str]]:
    return sorted((i.expression, i.message) for i in issues if i.severity in ("error", "fatal"))


def not_allowed(name: str) -> str:
    return (
        f"The element {name} is present in the instance but not allowed in the applicable fixed value specified in "
        "profile"
    )


OBSERVATION_BASE: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


# --- complex fixed values, and a discriminator's value taken from one ----------------------------------------------


def test_a_slice_discriminated_by_a_property_of_its_complex_fixed_value(validator: Validator) -> None:
    phone = {"system": "phone", "value": "555-101-0987", "use": "home"}
    practitioner = {"resourceType": "Practitioner", "telecom": [phone]}
    assert errors(validator.validate(practitioner, [PRACTITIONER])) == [
        ("Practitioner.telecom[0].system", not_allowed("system")),
        ("Practitioner.telecom[0].value", not_allowed("value")),
    ]
    exact = {"resourceType": "Practitioner", "telecom": [{"use": "home"}]}
    assert errors(validator.validate(exact, [PRACTITIONER])) == []


def test_a_complex_fixed_value_compared_element_by_element(validator: Validator) -> None:
    identifier = {
        "use": "official",
        "value": "12",
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}],
    }
    patient = {"resourceType": "Patient", "identifier": [identifier]}
    assert errors(validator.validate(patient, [PATIENT])) == [
        (
            "Patient.identifier[0]",
            "No extensions allowed, as the specified fixed value doesn't contain any extensions",
        ),
        (
            "Patient.identifier[0].system",
            f"Missing element 'system' - required by fixed value assigned in profile {PATIENT}|1.0.0",
        ),
        (
            "Patient.identifier[0].use",
            f"Value is 'official' but is fixed to 'usual' in the profile {PATIENT}|1.0.0#Patient.identifier",
        ),
        ("Patient.identifier[0].value", not_allowed("value")),
    ]
    good = {"resourceType": "Patient", "identifier": [{"use": "usual", "system": "urn:ietf:rfc:3986"}]}
    assert errors(validator.validate(good, [PATIENT])) == []


# --- reference targets --------------------------------------------------------------------------------------------


def test_an_unresolved_reference_is_type_checked_only_when_rest_references_are_taken_as_valid(
    validator: Validator,
) -> None:
    observation = {**OBSERVATION_BASE, "subject": {"reference": "Group/12345"}}
    message = (
        "The type 'Group' implied by the reference URL Group/12345 is not a valid Target for this element "
        "(must be one of [Patient, Location])"
    )
    assert errors(validator.validate(observation, [OBSERVATION])) == [("Observation.subject", message)]
    unchecked = Validator(validator.definitions, options=ValidationOptions(assume_valid_rest_references=False))
    assert errors(unchecked.validate(observation, [OBSERVATION])) == []


def test_a_resolved_target_of_the_wrong_type_lists_the_types_as_java_prints_a_set(validator: Validator) -> None:
    observation = {
        **OBSERVATION_BASE,
        "contained": [{"resourceType": "Group", "id": "g", "type": "person", "actual": True}],
        "subject": {"reference": "#g"},
    }
    unchecked = Validator(validator.definitions, options=ValidationOptions(assume_valid_rest_references=False))
    message = "Invalid Resource target type. Found Group, but expected one of ([Patient, Location])"
    assert ("Observation.subject", message) in errors(unchecked.validate(observation, [OBSERVATION]))


def test_an_unresolvable_target_profile_is_reported_and_allows_no_type(validator: Validator) -> None:
    organization = {
        "resourceType": "Organization",
        "name": "O",
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": "e",
                "status": "active",
                "connectionType": {"code": "hl7-fhir-rest"},
                "payloadType": [{"text": "x"}],
                "address": "https://example.org/fhir",
            }
        ],
        "endpoint": [{"reference": "#e"}],
    }
    assert errors(validator.validate(organization, [ORGANIZATION])) == [
        ("Organization.endpoint[0]", "Invalid Resource target type. Found Endpoint, but expected one of ([])"),
        ("Organization.endpoint[0]", f"Unable to resolve the profile reference '{MISSING_PROFILE}'"),
    ]


def test_java_set_order() -> None:
    assert java_set_order(("Location", "Patient")) == ["Patient", "Location"]
    assert java_set_order(("Patient", "Basic", "Patient")) == ["Basic", "Patient"]


# --- additional bindings --------------------------------------------------------------------------------------------


def test_a_required_additional_binding_is_worded_as_the_hl7_validator_words_it(validator: Validator) -> None:
    observation = {**OBSERVATION_BASE, "code": {"coding": [{"system": "http://loinc.org", "code": "100066-0"}]}}
    message = (
        f"None of the codings provided are in the value set 'Allowed Codes' ({VALUE_SET}|2.0.0) specified in an "
        "additional binding, and a coding from this value set is required) (codes = http://loinc.org#100066-0)"
    )
    assert ("Observation.code", message) in errors(validator.validate(observation, [ADDITIONAL]))


def test_a_coding_outside_a_required_binding_on_a_coding_element_is_an_error(validator: Validator) -> None:
    """A required binding on a Coding-typed element (Encounter.class, bound by a profile) is an error, not a
    warning; the code of the value set passes."""
    encounter = {"resourceType": "Encounter", "status": "finished"}
    wrong = {**encounter, "class": {"system": "http://example.org/codes", "code": "b"}}
    message = (
        f"None of the codings provided are in the value set 'Allowed Codes' ({VALUE_SET}), and a coding must come "
        "from this value set"
    )
    assert errors(validator.validate(wrong, [ENCOUNTER])) == [("Encounter.class", message)]
    right = {**encounter, "class": {"system": "http://example.org/codes", "code": "a"}}
    assert errors(validator.validate(right, [ENCOUNTER])) == []


def test_a_reference_whose_aggregation_excludes_referenced_must_be_in_the_bundle(validator: Validator) -> None:
    """elementdefinition.html#ElementDefinition.type.aggregation: "bundled" only, the target must be an entry."""
    endpoint = {
        "resourceType": "Endpoint",
        "id": "ep",
        "status": "active",
        "connectionType": {
            "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
            "code": "hl7-fhir-rest",
        },
        "payloadType": [{"text": "any"}],
        "address": "https://ep.example.com/fhir",
    }

    def bundle(reference: str, *more: dict[str, Any]) -> dict[str, Any]:
        org = {"resourceType": "Organization", "id": "o", "meta": {"profile": [BUNDLED_ONLY]}, "name": "x"}
        org["endpoint"] = [{"reference": reference}]
        entries = [org, *more]
        return {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": f"https://ep.example.com/fhir/{r['resourceType']}/{r['id']}", "resource": r}
                for r in entries
            ],
        }

    where = "Bundle.entry[0].resource/*Organization/o*/.endpoint[0]"
    message = "Bundled or contained reference not found within the bundle/resource Endpoint/elsewhere"
    assert (where, message) in errors(validator.validate(bundle("Endpoint/elsewhere")))
    assert not [m for _, m in errors(validator.validate(bundle("Endpoint/ep", endpoint))) if "not found within" in m]
    # Without the profile (no aggregation), a reference to a server's Endpoint is fine.
    plain = bundle("Endpoint/elsewhere")
    del plain["entry"][0]["resource"]["meta"]
    assert not [m for _, m in errors(validator.validate(plain)) if "not found within" in m]
