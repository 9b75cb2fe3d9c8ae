"""References among resources: contained resources shown by the narrative (dom-3), partial versions of a
profile, RESTful fullUrls, documents whose entries hang together; and Measures and MeasureReports checked
against the definitions they name. Each rule has a resource that breaks it and one that must pass."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Issue, Validator

MEASURE_URL = "http://example.org/fhir/Measure/screening"
LIBRARY_URL = "http://example.org/fhir/Library/Screening"
POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"

ELM = """<?xml version="1.0" encoding="UTF-8"?>
<library xmlns="urn:hl7-org:elm:r1"><identifier id="Screening"/><statements>
<def name="Initial Population" context="Patient"/><def name="AgesUpToNine" context="Patient"/>
</statements></library>"""


OBLIGATIONS_URL = "http://example.org/fhir/StructureDefinition/patient-obligations"
PATIENT = "http://hl7.org/fhir/StructureDefinition/Patient"
OBLIGATION_PROFILE = "http://hl7.org/fhir/StructureDefinition/obligation-profile"
INHERIT_OBLIGATIONS = "http://hl7.org/fhir/StructureDefinition/inherit-obligations"


def obligation_profile(
    url: str, base: str, elements: list[dict[str, Any]], extensions: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "extension": [{"url": OBLIGATION_PROFILE, "valueBoolean": True}] if extensions is None else extensions,
        "url": url,
        "name": "PatientObligations",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": base,
        "derivation": "constraint",
        "differential": {"element": [{"id": "Patient", "path": "Patient"}, *elements]},
    }


def population(code: str) -> dict[str, Any]:
    return {"code": {"coding": [{"system": POPULATION, "code": code}]}}


def measure(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Measure",
        "url": MEASURE_URL,
        "name": "Screening",
        "status": "active",
        "library": [LIBRARY_URL],
        "group": [
            {
                "population": [
                    {
                        **population("initial-population"),
                        "criteria": {"language": "text/cql.identifier", "expression": "Initial Population"},
                    }
                ],
                "stratifier": [
                    {
                        "code": {"text": "ages-up-to-9"},
                        "criteria": {"language": "text/cql", "expression": "Screening.AgesUpToNine"},
                    }
                ],
            }
        ],
    }
    resource.update(changes)
    return resource


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    folder = tmp_path_factory.mktemp("measure-definitions")
    library = {
        "resourceType": "Library",
        "url": LIBRARY_URL,
        "name": "Screening",
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]},
        "content": [{"contentType": "application/elm+xml", "data": base64.b64encode(ELM.encode()).decode()}],
    }
    (folder / "library.json").write_text(json.dumps(library))
    (folder / "measure.json").write_text(json.dumps(measure()))
    (folder / "obligations.json").write_text(json.dumps(obligation_profile(OBLIGATIONS_URL, PATIENT, [])))
    return load_validator(Settings(), [folder])


def errors(issues: list[Issue]) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in issues if i.severity in ("error", "fatal")]


def messages(issues: list[Issue], words: str, severity: str = "error") -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in issues if i.severity == severity and words in i.message]


# --- dom-3: the narrative may show a contained resource ------------------------------------------------------

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def composition_with_image(src: str) -> dict[str, Any]:
    return {
        "resourceType": "Composition",
        "contained": [{"resourceType": "Binary", "id": "image", "contentType": "image/png", "data": PNG}],
        "status": "final",
        "type": {"text": "note"},
        "date": "2021-02-01",
        "author": [{"display": "someone"}],
        "title": "with an image",
        "section": [
            {
                "text": {
                    "status": "additional",
                    "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><img src="{src}" alt="an image"/></div>',
                }
            }
        ],
    }


def test_a_contained_resource_shown_by_the_narrative_is_referenced(validator: Validator) -> None:
    assert messages(validator.validate(composition_with_image("#image")), "dom-3") == []


def test_a_contained_resource_the_narrative_does_not_show_is_still_unreferenced(validator: Validator) -> None:
    found = messages(validator.validate(composition_with_image("#other")), "dom-3")
    assert [e for e, _ in found] == ["Composition.contained[0]"]


# --- a profile claimed with a partial version ----------------------------------------------------------------


def test_a_contained_resource_referred_to_by_another_contained_resource_is_referenced(validator: Validator) -> None:
    """dom-3 looks for references in all of the container, the other contained resources included."""
    listing = {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "contained": [
            {"resourceType": "Practitioner", "id": "pr"},
            {"resourceType": "PractitionerRole", "id": "role", "practitioner": {"reference": "#pr"}},
            {"resourceType": "Practitioner", "id": "alone"},
        ],
        "entry": [{"item": {"reference": "#role"}}],
    }
    assert messages(validator.validate(listing), "dom-3") == [
        (
            "List.contained[2]",
            "The contained resource 'alone' is not referenced to from elsewhere in the containing resource nor does "
            "it refer to the containing resource (dom-3)",
        )
    ]


def test_a_partial_version_names_the_latest_patch_of_that_version() -> None:
    index = DefinitionIndex()
    url = "http://example.org/fhir/StructureDefinition/p"
    for version in ("0.1.3", "0.2.0", "0.2.10", "0.2.9"):
        index.add_resource({"resourceType": "StructureDefinition", "url": url, "version": version}, version)
    assert (index.get(f"{url}|0.2") or {}).get("version") == "0.2.10"
    assert (index.get(f"{url}|0.1.3") or {}).get("version") == "0.1.3"
    assert index.get(f"{url}|0.3") is None
    assert index.get(f"{url}|0.2.1") is None  # a full version that is not there is not another one's


# --- RESTful fullUrls and documents --------------------------------------------------------------------------


def document(author_reference: str, *, composition_id: str | None = "c1", org_id: str | None = "o1") -> dict[str, Any]:
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11502-2"}]},
        "date": "2023-11-11",
        "author": [{"reference": author_reference}],
        "title": "a report",
    }
    organization: dict[str, Any] = {"resourceType": "Organization", "name": "Laboratories"}
    if composition_id:
        composition["id"] = composition_id
    if org_id:
        organization["id"] = org_id
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "http://example.org/documents", "value": "1"},
        "type": "document",
        "timestamp": "2023-11-11T12:16:44Z",
        "entry": [
            {"fullUrl": "http://example.org/fhir/Composition/c1", "resource": composition},
            {"fullUrl": "http://example.org/fhir/Organization/o1", "resource": organization},
        ],
    }


def test_a_document_whose_references_resolve_by_the_bundle_rules_is_valid(validator: Validator) -> None:
    assert errors(validator.validate(document("Organization/o1"))) == []
    assert errors(validator.validate(document("http://example.org/fhir/Organization/o1"))) == []


def test_a_restful_full_url_needs_the_resource_id(validator: Validator) -> None:
    found = messages(validator.validate(document("Organization/o1", org_id=None)), "looks like a RESTful")
    assert found == [
        (
            "Bundle.entry[0]",
            "The fullUrl 'http://example.org/fhir/Organization/o1' looks like a RESTful server URL, but the "
            "resource has no id",
        )
    ]


def test_a_composition_reference_missing_from_the_document(validator: Validator) -> None:
    issues = validator.validate(document("Organization/o2"))
    assert messages(issues, "Can't find") == [
        ("Bundle.entry[1].resource.author[1]", "Can't find 'Organization/o2' in the bundle (Composition.author)")
    ]
    assert messages(issues, "isn't reachable") == [
        (
            "Bundle.entry[2]",
            "Entry 'http://example.org/fhir/Organization/o1' isn't reachable by traversing links (forward or "
            "backward) from the Composition",
        )
    ]


def test_a_relative_reference_needs_the_base_of_a_restful_full_url(validator: Validator) -> None:
    """Without its id the Composition's fullUrl gives no base: Organization/o1 is not found, though it is there."""
    found = messages(validator.validate(document("Organization/o1", composition_id=None)), "Can't find")
    assert [e for e, _ in found] == ["Bundle.entry[1].resource.author[1]"]
    bundle = document("Organization/o1")
    for entry, uuid in zip(bundle["entry"], ("urn:uuid:0e0c8a36-0001", "urn:uuid:0e0c8a36-0002"), strict=True):
        entry["fullUrl"] = uuid
    found = messages(validator.validate(bundle), "Can't find")
    assert len(found) == 1 and "Note that there is a resource in the bundle with the same type and id" in found[0][1]


def test_an_entry_reached_backwards_is_reachable(validator: Validator) -> None:
    bundle = document("Organization/o1")
    bundle["entry"].append(
        {
            "fullUrl": "http://example.org/fhir/Provenance/p1",
            "resource": {
                "resourceType": "Provenance",
                "id": "p1",
                "target": [{"reference": "Composition/c1"}],
                "recorded": "2023-11-11T12:16:44Z",
                "agent": [{"who": {"reference": "Organization/o1"}}],
            },
        }
    )
    assert messages(validator.validate(bundle), "isn't reachable") == []


def test_a_collection_is_not_held_to_the_document_rules(validator: Validator) -> None:
    bundle = document("Organization/o2")
    bundle["type"] = "collection"
    issues = validator.validate(bundle)
    assert messages(issues, "Can't find") == [] and messages(issues, "isn't reachable") == []


# --- Measure: CQL criteria against the libraries -------------------------------------------------------------


def test_a_measure_whose_stratifier_names_a_library_definition_is_valid(validator: Validator) -> None:
    assert errors(validator.validate(measure())) == []


def test_cql_criteria_without_any_library(validator: Validator) -> None:
    found = errors(validator.validate(measure(library=[])))
    assert found == [("Measure.group[0].stratifier[0].criteria", "No CQL Libraries found on this Measure")]


def test_cql_criteria_naming_what_the_library_does_not_define(validator: Validator) -> None:
    resource = measure()
    resource["group"][0]["stratifier"][0]["criteria"]["expression"] = "Screening.AgesUpToTen"
    assert errors(validator.validate(resource)) == [
        (
            "Measure.group[0].stratifier[0].criteria",
            f"The function AgesUpToTen does not exist in the library {LIBRARY_URL}",
        )
    ]
    resource["group"][0]["stratifier"][0]["criteria"]["expression"] = "Other.AgesUpToNine"
    assert errors(validator.validate(resource)) == [
        ("Measure.group[0].stratifier[0].criteria", "No matching Library found for the namespace Other")
    ]


def test_a_library_that_is_not_loaded_leaves_cql_criteria_without_a_library(validator: Validator) -> None:
    # As the reference validator counts them, only the libraries that resolve: the criteria have none to name.
    issues = validator.validate(measure(library=["http://example.org/fhir/Library/unknown"]))
    assert errors(issues) == [("Measure.group[0].stratifier[0].criteria", "No CQL Libraries found on this Measure")]
    assert messages(issues, "could not be resolved", "information")


def test_a_canonical_must_be_absolute_or_a_fragment(validator: Validator) -> None:
    # datatypes.html#canonical, on every canonical element (Measure.library here).
    found = errors(validator.validate(measure(library=["Library/Screening"])))
    assert found[0] == (
        "Measure.library[0]",
        "Canonical URLs must be absolute URLs if they are not fragment references (Library/Screening)",
    )
    for url in ("urn:uuid:8f9a1ad2-2b0b-4f6e-9d0e-2c6e1c9b5b7a", "#lib"):
        assert not messages(validator.validate(measure(library=[url])), "Canonical URLs must be absolute")


# --- MeasureReport against its Measure -----------------------------------------------------------------------


def report(*codes: str) -> dict[str, Any]:
    return {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": MEASURE_URL,
        "period": {"start": "2024-01-01", "end": "2024-03-31"},
        "group": [
            {
                "population": [{**population(code), "count": 10} for code in codes],
                "stratifier": [{"code": [{"text": "ages-up-to-9"}], "stratum": [{"value": {"text": "true"}}]}],
            }
        ],
    }


def test_a_report_that_follows_its_measure_is_valid(validator: Validator) -> None:
    assert errors(validator.validate(report("initial-population"))) == []


def test_a_report_population_the_measure_does_not_define(validator: Validator) -> None:
    assert errors(validator.validate(report("initial-population", "numerator"))) == [
        (
            "MeasureReport.group[0].population[1]",
            "The code for this group population has no match in the measure definition",
        )
    ]
    assert errors(validator.validate(report("initial-population", "initial-population"))) == [
        ("MeasureReport.group[0].population[1]", "The code for this group population is duplicated")
    ]


def test_a_report_stratifier_without_a_code(validator: Validator) -> None:
    resource = report("initial-population")
    del resource["group"][0]["stratifier"][0]["code"]
    found = validator.validate(resource)
    assert errors(found) == [
        (
            "MeasureReport.group[0].stratifier[0]",
            "Group should have a code that matches the group stratifier definition in the measure",
        )
    ]
    assert messages(found, "does not include a stratifier", "warning")


def test_a_report_on_an_unknown_measure_is_not_checked_against_it(validator: Validator) -> None:
    resource = copy.deepcopy(report("numerator"))
    resource["measure"] = "http://example.org/fhir/Measure/unknown"
    issues = validator.validate(resource)
    assert errors(issues) == [] and messages(issues, "could not be resolved", "warning")


def test_the_fixture_library_is_indexed(validator: Validator) -> None:
    assert validator.definitions.get(LIBRARY_URL) is not None
    assert validator.definitions.get(MEASURE_URL) is not None


# --- StructureDefinition: a type profile must be a profile of that type ----------------------------------------


def observation_profile(code: str, profile: str, path: str = "Observation.valueQuantity") -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/fhir/StructureDefinition/observation-typed",
        "name": "ObservationTyped",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "differential": {"element": [{"id": path, "path": path, "type": [{"code": code, "profile": [profile]}]}]},
    }


def test_a_type_profile_of_another_type(validator: Validator) -> None:
    found = messages(
        validator.validate(observation_profile("Quantity", "http://hl7.org/fhir/StructureDefinition/Count")),
        "is for type",
    )
    assert found == [
        (
            "StructureDefinition.differential.element[0].type[0].profile[0]",
            "Profile http://hl7.org/fhir/StructureDefinition/Count is for type Count, but the "
            "Observation.valueQuantity element has type Quantity",
        )
    ]


def test_a_type_profile_of_the_type_or_of_a_type_derived_from_an_abstract_code(validator: Validator) -> None:
    simple = observation_profile("Quantity", "http://hl7.org/fhir/StructureDefinition/SimpleQuantity")
    assert messages(validator.validate(simple), "is for type") == []
    contained = observation_profile(
        "Resource", "http://hl7.org/fhir/StructureDefinition/vitalsigns", "Observation.contained"
    )
    assert messages(validator.validate(contained), "is for type") == []


def audit_event_profile(discriminator: str) -> dict[str, Any]:
    extension = "AuditEvent.agent.extension"
    return {
        **observation_profile("Quantity", "http://hl7.org/fhir/StructureDefinition/SimpleQuantity"),
        "type": "AuditEvent",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "differential": {
            "element": [
                {
                    "id": f"{extension}:other",
                    "path": extension,
                    "sliceName": "other",
                    "slicing": {"discriminator": [{"type": "value", "path": discriminator}], "rules": "open"},
                    "type": [{"code": "Extension"}],
                }
            ]
        },
    }


def test_a_discriminator_path_the_sliced_element_does_not_have(validator: Validator) -> None:
    # profiling.html#discriminator: the path selects an element of the type being sliced (here an Extension).
    assert messages(validator.validate(audit_event_profile("type")), "discriminator path") == [
        (
            "StructureDefinition.differential.element[0].slicing.discriminator[0]",
            "The discriminator path 'type' does not appear to be valid for the element that is being sliced "
            "'AuditEvent.agent.extension'",
        )
    ]
    for path in ("url", "value", "valueIdentifier.type", "extension('http://example.org/x').value", "$this"):
        assert messages(validator.validate(audit_event_profile(path)), "discriminator path") == [], path


def test_an_obligation_profile_only_adds_obligations(validator: Validator) -> None:
    # obligations.html: obligation extensions, mustSupport and cardinality are allowed; other properties are not,
    # and a binding keeps the base's strength, adding additional bindings only.
    obligation = {"url": "http://hl7.org/fhir/tools/StructureDefinition/obligation", "extension": []}
    elements = [
        {"id": "Patient.birthDate", "path": "Patient.birthDate", "extension": [obligation], "mustSupport": True},
        {
            "id": "Patient.deceased[x]",
            "path": "Patient.deceased[x]",
            "extension": [{"url": "http://example.org/x", "valueString": "x"}],
            "short": "Dead?",
        },
        {
            "id": "Patient.maritalStatus",
            "path": "Patient.maritalStatus",
            "binding": {"strength": "example", "description": "x"},
        },
    ]
    found = messages(validator.validate(obligation_profile("http://example.org/p", PATIENT, elements)), "Obligation")
    allowed = "which is not allowed in Obligation profiles"
    assert found == [
        (
            "StructureDefinition.differential.element[2].extension[0]",
            f"The element 'Patient.deceased[x]' has a property 'extension#http://example.org/x' {allowed}",
        ),
        (
            "StructureDefinition.differential.element[2].short[0]",
            f"The element 'Patient.deceased[x]' has a property 'short' {allowed}",
        ),
        (
            "StructureDefinition.differential.element[3].binding[0].strength[0]",
            f"The element 'Patient.maritalStatus' has a different binding strength ('example') from the base "
            f"('extensible') {allowed}",
        ),
        (
            "StructureDefinition.differential.element[3].binding[0].description[0]",
            f"The element 'Patient.maritalStatus' has a binding property 'description' {allowed}",
        ),
    ]


def test_inherited_obligations_come_from_an_obligation_profile_on_the_same_base(validator: Validator) -> None:
    vitals = "http://hl7.org/fhir/StructureDefinition/vitalsigns"
    inherits = [
        {"url": INHERIT_OBLIGATIONS, "valueCanonical": vitals},
        {"url": INHERIT_OBLIGATIONS, "valueCanonical": OBLIGATIONS_URL},
    ]
    resource = obligation_profile("http://example.org/p", OBLIGATIONS_URL, [], inherits)
    assert errors(validator.validate(resource)) == [
        ("StructureDefinition.extension[0]", f"The profile '{vitals}' is not marked as an obligation profile"),
        (
            "StructureDefinition.extension[1]",
            f"The profile '{OBLIGATIONS_URL}' has a different base '{PATIENT}' from that expected '{OBLIGATIONS_URL}'",
        ),
    ]
    same_base = obligation_profile("http://example.org/p", PATIENT, [], inherits[1:])
    assert errors(validator.validate(same_base)) == []
