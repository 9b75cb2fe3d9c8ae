"""Extension.url and example URLs, reported as the HL7 validator reports them (extensibility.html).

- No url: the extension cannot be identified, and Extension.url's cardinality (1..1) fails too.
- An empty url: the primitive has no value (and so no value or children, ele-1).
- A versioned url: the url identifies the extension, never a version of it; the extension is still checked.
- URLs in the domains reserved for examples are an error when examples are not allowed (an option, off by
  default: the specification does not forbid them).
"""

from __future__ import annotations

from typing import Any

from casebridge.validation.validator import ELE_1, ValidationOptions, Validator

CONGREGATION = "http://hl7.org/fhir/StructureDefinition/patient-congregation"


def errors(validator: Validator, resource: dict[str, Any], **options: Any) -> list[tuple[str, str]]:
    if options:
        validator = Validator(validator.definitions, options=ValidationOptions(**options))
    return [(i.expression, i.message) for i in validator.validate(resource) if i.severity in ("error", "fatal")]


REQUIRED = "Extension.url is required in order to identify, use and validate the extension"


def test_an_extension_without_url_fails_twice(validator: Validator) -> None:
    found = errors(validator, {"resourceType": "Patient", "extension": [{"valueString": "x"}]})
    assert found == [
        ("Patient.extension[0]", REQUIRED),
        (
            "Patient.extension[0]",
            "Extension.url: minimum required = 1, but only found 0 (from "
            "http://hl7.org/fhir/StructureDefinition/Extension|4.0.1)",
        ),
    ]


def test_an_empty_url_is_also_an_empty_primitive(validator: Validator) -> None:
    found = errors(validator, {"resourceType": "Patient", "extension": [{"url": "", "valueString": "x"}]})
    assert found == [
        ("Patient.extension[0]", REQUIRED),
        ("Patient.extension[0].url", "value cannot be empty"),
        ("Patient.extension[0].url", ELE_1),
    ]


def test_an_empty_primitive_has_no_value_and_no_children(validator: Validator) -> None:
    found = errors(validator, {"resourceType": "Patient", "gender": ""})
    assert found[:2] == [("Patient.gender", "value cannot be empty"), ("Patient.gender", ELE_1)]
    # With an extension in its companion, the element has children: only the empty value is wrong.
    companion = {
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]
    }
    found = errors(validator, {"resourceType": "Patient", "birthDate": "", "_birthDate": companion})
    assert found == [("Patient.birthDate", "value cannot be empty")]


def test_a_versioned_extension_url_is_refused_and_still_checked(validator: Validator) -> None:
    url = f"{CONGREGATION}|4.0.0"
    found = errors(validator, {"resourceType": "Patient", "extension": [{"url": url, "valueString": "x"}]})
    assert (
        f"Patient.extension[0][url='{url}']",
        "The extension URL must not contain a version. The extension was validated against version 4.0.1 of the "
        "extension",
    ) in found
    # Checked against the definition: its url is fixed, without the version.
    assert any(e == "Patient.extension[0].url" and "fixed to" in m for e, m in found), found


def test_example_urls_are_an_error_only_when_examples_are_not_allowed(validator: Validator) -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "http://example.org/mrn", "value": "1"}],
        "extension": [{"url": "http://acme.com/ext", "valueString": "x"}],
    }
    assert errors(validator, patient, allow_example_extensions=True) == []
    found = errors(validator, patient, allow_example_extensions=True, allow_example_urls=False)
    assert sorted(found) == [
        ("Patient.extension[0].url", "Example URLs are not allowed in this context (http://acme.com/ext)"),
        ("Patient.identifier[0].system", "Example URLs are not allowed in this context (http://example.org/mrn)"),
    ]
