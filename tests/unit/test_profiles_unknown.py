"""Profiles a resource claims but nobody loaded, and profiles the specification implies.

An unknown claimed profile is reported as the HL7 validator reports it (not checked: a warning), or as an error
when the validator is set so (ValidationOptions, CASEBRIDGE_UNKNOWN_PROFILES, the forwarding policy's key for
POST /bundles). A profile the caller asks for is always an error. An Observation with a vital sign code is held to
that sign's profile (FHIR R4 observation.html#vitals)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from casebridge.config import Settings
from casebridge.errors import MappingError
from casebridge.gateway.policy import load_forwarding_policy
from casebridge.validation.implied import implied_profiles
from casebridge.validation.service import load_validator
from casebridge.validation.validator import ValidationOptions, Validator
from tests.paths import DATA_DIR

UNKNOWN = "http://example.org/fhir/StructureDefinition/not-loaded"
CLAIMS = {"resourceType": "Patient", "meta": {"profile": [UNKNOWN]}, "gender": "female"}


def by_severity(issues: list[Any], severity: str) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in issues if i.severity == severity]


def test_an_unknown_claimed_profile_is_a_warning_by_default(validator: Validator) -> None:
    issues = validator.validate(CLAIMS)
    assert by_severity(issues, "error") == []
    assert by_severity(issues, "warning")[0] == (
        "Patient.meta.profile[0]",
        f"Profile reference '{UNKNOWN}' could not be resolved, so has not been checked",
    )


def test_the_option_and_a_call_make_it_an_error(validator: Validator) -> None:
    strict = Validator(validator.definitions, options=ValidationOptions(unknown_profiles="error"))
    assert [e for e, _ in by_severity(strict.validate(CLAIMS), "error")] == ["Patient.meta.profile[0]"]
    assert [e for e, _ in by_severity(validator.validate(CLAIMS, unknown_profiles="error"), "error")] == [
        "Patient.meta.profile[0]"
    ]
    # ... and a call may relax the strict one
    assert by_severity(strict.validate(CLAIMS, unknown_profiles="warning"), "error") == []
    with pytest.raises(ValueError, match="unknown_profiles"):
        ValidationOptions(unknown_profiles="ignore")
    with pytest.raises(ValueError, match="unknown_profiles"):
        validator.validate(CLAIMS, unknown_profiles="fatal")


def test_a_profile_asked_for_is_an_error_whatever_the_setting(validator: Validator) -> None:
    issues = validator.validate({"resourceType": "Patient"}, [UNKNOWN])
    assert by_severity(issues, "error") == [
        ("Patient", f"Profile reference '{UNKNOWN}' could not be resolved, so has not been checked")
    ]


def test_a_known_claimed_profile_is_still_checked(validator: Validator) -> None:
    ips = "http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips"
    issues = validator.validate({"resourceType": "Patient", "meta": {"profile": [ips, UNKNOWN]}})
    assert any("Patient.name: minimum required" in m for _, m in by_severity(issues, "error"))
    assert [e for e, _ in by_severity(issues, "warning") if "could not be resolved" in _] == ["Patient.meta.profile[1]"]


def test_the_setting_reaches_the_validator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEBRIDGE_UNKNOWN_PROFILES", "error")
    settings = Settings()
    assert settings.unknown_profiles == "error"
    assert load_validator(settings).options.unknown_profiles == "error"
    assert Settings(unknown_profiles="warning").unknown_profiles == "warning"
    with pytest.raises(ValidationError):
        Settings(unknown_profiles="ignore")  # type: ignore[arg-type]


GOOD = "types: [Patient, Observation]\ninteractions: [create, update]\nlimits: {max_entries: 5, max_bytes: 2048}\n"


def is_type(name: str) -> bool:
    return name in ("Patient", "Observation")


def test_the_forwarding_policy_chooses_for_the_gateway(tmp_path: Path) -> None:
    shipped = load_forwarding_policy(DATA_DIR / "mappings" / "forwarding-policy.yaml", lambda n: n[0].isupper())
    assert shipped.unknown_profiles == "error"
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    assert load_forwarding_policy(path, is_type).unknown_profiles == "error"  # not written: refused
    path.write_text(GOOD + "unknown_profiles: warning\n")
    assert load_forwarding_policy(path, is_type).unknown_profiles == "warning"
    path.write_text(GOOD + "unknown_profiles: ignore\n")
    with pytest.raises(MappingError) as caught:
        load_forwarding_policy(path, is_type)
    assert caught.value.line == 4
    assert "expected warning or error" in str(caught.value)


# -- vital signs ---------------------------------------------------------------------------------------------------

BODYTEMP = "http://hl7.org/fhir/StructureDefinition/bodytemp"


def temperature(*codings: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": list(codings)},
        "subject": {"reference": "Patient/1"},
        "effectiveDateTime": "2024-01-01",
        "valueQuantity": {"value": 37.1, "unit": "C", "system": "http://unitsofmeasure.org", "code": "Cel"},
    }


LOINC_TEMP = {"system": "http://loinc.org", "code": "8310-5"}
SCT_TEMP = {"system": "http://snomed.info/sct", "code": "276885007"}


def test_a_vital_sign_coded_only_in_snomed_needs_the_loinc_code(validator: Validator) -> None:
    issues = validator.validate(temperature(SCT_TEMP))
    errors = by_severity(issues, "error")
    assert [e for e, _ in errors] == ["Observation.code"]
    assert "BodyTempCode" in errors[0][1]
    assert any("Body temperature profile" in m for _, m in by_severity(issues, "information"))


def test_a_vital_sign_held_to_its_profile_without_claiming_it(validator: Validator) -> None:
    observation = temperature(LOINC_TEMP)
    del observation["valueQuantity"]["code"]
    errors = by_severity(validator.validate(observation), "error")
    assert any(e.startswith("Observation.value.ofType(Quantity)") for e, _ in errors), errors


def test_vital_signs_profiles_do_not_fire_on_good_or_other_observations(validator: Validator) -> None:
    assert by_severity(validator.validate(temperature(LOINC_TEMP, SCT_TEMP)), "error") == []
    other = {**temperature({"system": "http://loinc.org", "code": "2339-0"}), "valueQuantity": {"value": 5}}
    assert by_severity(validator.validate(other), "error") == []
    assert implied_profiles("Observation", other) == []
    assert implied_profiles("Patient", temperature(LOINC_TEMP)) == []
    assert [u for u, _ in implied_profiles("Observation", temperature(SCT_TEMP, LOINC_TEMP))] == [BODYTEMP]


# -- unknown extensions in the domains reserved for examples -------------------------------------------------------


def test_example_extensions_pass_only_when_examples_are_allowed(validator: Validator) -> None:
    patient = {
        "resourceType": "Patient",
        "extension": [{"url": "http://example.org/fhir/StructureDefinition/simple", "valueString": "x"}],
        "modifierExtension": [{"url": "http://acme.com/fhir/StructureDefinition/mod", "valueBoolean": True}],
    }
    examples = Validator(validator.definitions, options=ValidationOptions(allow_example_extensions=True))
    issues = examples.validate(patient)
    assert by_severity(issues, "error") == []
    assert [e for e, _ in by_severity(issues, "information") if "Unknown extension" in _] == [
        "Patient.extension[0]",
        "Patient.modifierExtension[0]",
    ]
    assert [e for e, _ in by_severity(validator.validate(patient), "error")] == [
        "Patient.extension[0]",
        "Patient.modifierExtension[0]",
    ]
    # Only those domains: any other unknown extension is still an error.
    other = {"resourceType": "Patient", "extension": [{"url": "http://example.net/ext", "valueString": "x"}]}
    assert [m for _, m in by_severity(examples.validate(other), "error")] == [
        "The extension http://example.net/ext could not be found so is not allowed here"
    ]
