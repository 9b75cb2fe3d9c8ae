"""Extensions where their definitions allow them, and the general rules met around them.

- Extension.url is absolute, but for a complex extension's parts; a part's relative url is one its definition
  slices (FHIR R4 extensibility.html).
- StructureDefinition.context (element, extension, fhirpath) and contextInvariant.
- min/maxValue on decimals and integers; a Bundle entry's fullUrl (Bundle.entry.fullUrl); a non-repeating element
  twice in XML, reported as a cardinality error; a profile's narrative-language-control.
"""

from __future__ import annotations

from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex
from casebridge.definitions.xml import XmlReader
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Validator

BASE = "http://example.org/fhir/StructureDefinition/"


def extension_definition(name: str, contexts: list[dict[str, str]], **more: Any) -> dict[str, Any]:
    value: dict[str, Any] = {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1}
    value["type"] = [{"code": more.pop("value_type", "boolean")}]
    value.update(more.pop("value", {}))
    sd: dict[str, Any] = {
        "resourceType": "StructureDefinition",
        "id": name,
        "url": BASE + name,
        "name": name,
        "status": "draft",
        "fhirVersion": "4.0.1",
        "kind": "complex-type",
        "abstract": False,
        "context": contexts,
        "type": "Extension",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Extension.extension", "path": "Extension.extension", "max": "0"},
                {"id": "Extension.url", "path": "Extension.url", "fixedUri": BASE + name},
                value,
            ]
        },
    }
    sd.update(more)
    return sd


COMPLEX = {
    "resourceType": "StructureDefinition",
    "id": "complex",
    "url": BASE + "complex",
    "name": "Complex",
    "status": "draft",
    "fhirVersion": "4.0.1",
    "kind": "complex-type",
    "abstract": False,
    "context": [{"type": "element", "expression": "Element"}],
    "type": "Extension",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension",
    "derivation": "constraint",
    "differential": {
        "element": [
            {
                "id": "Extension.extension",
                "path": "Extension.extension",
                "slicing": {"discriminator": [{"type": "value", "path": "url"}], "rules": "open"},
            },
            {"id": "Extension.extension:part", "path": "Extension.extension", "sliceName": "part", "max": "1"},
            {"id": "Extension.extension:part.url", "path": "Extension.extension.url", "fixedUri": "part"},
            {
                "id": "Extension.extension:part.value[x]",
                "path": "Extension.extension.value[x]",
                "type": [{"code": "string"}],
            },
            {"id": "Extension.url", "path": "Extension.url", "fixedUri": BASE + "complex"},
            {"id": "Extension.value[x]", "path": "Extension.value[x]", "max": "0"},
        ]
    },
}


def narrative_profile(name: str, control: str) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "id": name,
        "url": BASE + name,
        "name": name,
        "status": "draft",
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Patient.text",
                    "path": "Patient.text",
                    "extension": [
                        {
                            "url": "http://hl7.org/fhir/StructureDefinition/narrative-language-control",
                            "valueCode": control,
                        }
                    ],
                }
            ]
        },
    }


DEFINITIONS = [
    extension_definition(
        "on-patient",
        [
            {"type": "element", "expression": "Patient"},
            {"type": "element", "expression": "Patient.name"},
            {"type": "extension", "expression": "http://hl7.org/fhir/StructureDefinition/patient-interpreterRequired"},
            {"type": "fhirpath", "expression": "Patient.address.where(use = 'home')"},
        ],
    ),
    extension_definition(
        "on-domain",
        [
            {"type": "element", "expression": "DomainResource"},
            {"type": "element", "expression": "BackboneElement"},
        ],
    ),
    extension_definition(
        "not-active", [{"type": "element", "expression": "Patient"}], contextInvariant=["Patient.active.not()"]
    ),
    extension_definition(
        "at-most-ten",
        [{"type": "element", "expression": "Element"}],
        value_type="integer",
        value={"maxValueInteger": 10},
    ),
    extension_definition(
        "at-least-half",
        [{"type": "element", "expression": "Element"}],
        value_type="decimal",
        value={"minValueDecimal": 0.5, "maxValueDecimal": 999},
    ),
    COMPLEX,
    narrative_profile("sections-no", "_no"),
    narrative_profile("sections-yes", "_yes"),
    narrative_profile("sections-resource", "_resource"),
]


@pytest.fixture(scope="module")
def validator() -> Validator:
    v = load_validator(Settings())
    assert isinstance(v.definitions, DefinitionIndex)
    for sd in DEFINITIONS:
        v.definitions.add_resource(sd, "test")
    return v


def errors(validator: Validator, resource: dict[str, Any], profiles: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in validator.validate(resource, profiles) if i.severity == "error"]


def ext(name: str, value: Any = True, kind: str = "valueBoolean") -> dict[str, Any]:
    return {"url": BASE + name, kind: value}


# --- Extension.url and complex extensions ------------------------------------------------------------------------


def test_a_relative_extension_url_is_an_error(validator: Validator) -> None:
    patient = {"resourceType": "Patient", "extension": [{"url": "something", "valueBoolean": True}]}
    assert errors(validator, patient) == [("Patient.extension[0]", "Extension.url must be an absolute URL")]


def test_a_complex_extensions_parts_have_relative_urls_that_it_defines(validator: Validator) -> None:
    good = {"url": BASE + "complex", "extension": [{"url": "part", "valueString": "x"}]}
    assert errors(validator, {"resourceType": "Patient", "extension": [good]}) == []
    bad = {
        "url": BASE + "complex",
        "extension": [{"url": "part", "valueString": "x"}, {"url": "party", "valueString": "y"}],
    }
    assert errors(validator, {"resourceType": "Patient", "extension": [bad]}) == [
        (
            "Patient.extension[0].extension[1][url='party']",
            f"Sub-extension url 'party' is not defined by the Extension {BASE}complex",
        )
    ]


# --- context ------------------------------------------------------------------------------------------------------


def test_an_element_context_allows_its_resource_and_element(validator: Validator) -> None:
    assert errors(validator, {"resourceType": "Patient", "extension": [ext("on-patient")]}) == []
    assert (
        errors(validator, {"resourceType": "Patient", "name": [{"extension": [ext("on-patient")], "text": "x"}]}) == []
    )


def test_an_element_context_refuses_other_places(validator: Validator) -> None:
    allowed = (
        "e:Patient, e:Patient.name, x:http://hl7.org/fhir/StructureDefinition/patient-interpreterRequired, "
        "p:Patient.address.where(use = 'home')"
    )
    found = errors(validator, {"resourceType": "Organization", "name": "o", "extension": [ext("on-patient")]})
    assert found == [
        (
            "Organization",
            f"The extension {BASE}on-patient is not allowed to be used at this point "
            f"(this element is [Organization]; allowed for this version = {allowed})",
        )
    ]
    work = {"resourceType": "Patient", "address": [{"extension": [ext("on-patient")], "use": "work"}]}
    assert [e[0] for e in errors(validator, work)] == ["Patient.address[0]"]
    assert "(this element is [Address, Patient.address];" in errors(validator, work)[0][1]


def test_a_fhirpath_context_allows_the_elements_it_selects(validator: Validator) -> None:
    home = {"resourceType": "Patient", "address": [{"extension": [ext("on-patient")], "use": "home"}]}
    assert errors(validator, home) == []


def test_an_extension_context_allows_use_inside_that_extension(validator: Validator) -> None:
    inner = {"valueBoolean": True, "_valueBoolean": {"extension": [ext("on-patient")]}}
    outer = {"url": "http://hl7.org/fhir/StructureDefinition/patient-interpreterRequired", **inner}
    assert errors(validator, {"resourceType": "Patient", "extension": [outer]}) == []


def test_a_type_context_holds_through_the_types_ancestors(validator: Validator) -> None:
    patient = {
        "resourceType": "Patient",
        "extension": [ext("on-domain")],
        "contact": [{"extension": [ext("on-domain")], "name": {"text": "c"}}],
    }
    assert errors(validator, patient) == []
    full_url = "http://example.org/fhir/Patient/p1"
    inside = {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": full_url, "resource": patient}]}
    patient["id"] = "p1"
    assert errors(validator, inside) == []
    patient["name"] = [{"extension": [ext("on-domain")], "text": "x"}]
    assert [e[0] for e in errors(validator, inside)] == ["Bundle.entry[0].resource/*Patient/p1*/.name[0]"]
    name = {"resourceType": "Patient", "name": [{"extension": [ext("on-domain")], "text": "x"}]}
    assert [e[0] for e in errors(validator, name)] == ["Patient.name[0]"]


def test_a_context_invariant_must_hold_where_the_extension_is(validator: Validator) -> None:
    assert errors(validator, {"resourceType": "Patient", "active": False, "extension": [ext("not-active")]}) == []
    assert errors(validator, {"resourceType": "Patient", "active": True, "extension": [ext("not-active")]}) == [
        (
            "Patient",
            f"The extension {BASE}not-active is not allowed to be used at this point "
            "(based on context invariant 'Patient.active.not()')",
        )
    ]


def test_core_examples_of_element_contexts_are_not_refused(validator: Validator) -> None:
    # Core extensions used where the specification puts them (Element context; a primitive's extension).
    patient = {
        "resourceType": "Patient",
        "birthDate": "1990-01-01",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1990-01-01T10:00:00Z",
                }
            ]
        },
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "X"}}
        ],
    }
    assert errors(validator, patient) == []


# --- min/maxValue on numbers --------------------------------------------------------------------------------------


def test_integer_and_decimal_limits(validator: Validator) -> None:
    def one(name: str, value: Any, kind: str) -> list[tuple[str, str]]:
        return errors(validator, {"resourceType": "Patient", "extension": [ext(name, value, kind)]})

    assert one("at-most-ten", 10, "valueInteger") == []
    assert one("at-most-ten", 11, "valueInteger") == [
        (
            "Patient.extension[0].value.ofType(integer)",
            "value is greater than permitted maximum value of IntegerType[10]",
        )
    ]
    assert one("at-least-half", 0.5, "valueDecimal") == []
    assert one("at-least-half", 1000, "valueDecimal") == [
        (
            "Patient.extension[0].value.ofType(decimal)",
            "decimal value is greater than permitted maximum value of DecimalType[999]",
        )
    ]
    assert one("at-least-half", 0.25, "valueDecimal") == [
        (
            "Patient.extension[0].value.ofType(decimal)",
            "decimal value is less than permitted minimum value of DecimalType[0.5]",
        )
    ]


# --- Bundle.entry.fullUrl -----------------------------------------------------------------------------------------

FULL_URL = (
    "Except for transactions and batches, each entry in a Bundle must have a fullUrl which is the identity of the "
    "resource in the entry"
)


def test_an_entry_without_a_full_url(validator: Validator) -> None:
    collection = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Patient"}}]}
    assert errors(validator, collection) == [("Bundle.entry[0]", FULL_URL)]
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}],
    }
    assert errors(validator, transaction) == []


# --- an element twice in XML --------------------------------------------------------------------------------------


def test_a_non_repeating_element_twice_in_xml_is_a_cardinality_error(validator: Validator) -> None:
    xml = b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><gender value="female"/></Patient>'
    assert isinstance(validator.definitions, DefinitionIndex)
    patient = XmlReader(validator.definitions).read(xml, "p.xml")
    assert patient["gender"] == ["male", "female"]
    assert errors(validator, patient) == [
        (
            "Patient",
            "Patient.gender: max allowed = 1, but found 2 (from http://hl7.org/fhir/StructureDefinition/Patient|4.0.1)",
        )
    ]
    # The same shape in JSON is a JSON error, as before.
    assert errors(validator, {"resourceType": "Patient", "gender": ["male", "female"]}) == [
        ("Patient.gender", "The property gender must be an Object, not an Array (at Patient)")
    ]


# --- narrative language sections ----------------------------------------------------------------------------------

XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">%s</div>'
SECTIONS = XHTML % '<div lang="en">Hello</div><div xml:lang="de" lang="de">Hallo</div>'


def patient_with(div: str, language: str | None = None) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    if language:
        patient["language"] = language
    return patient


def test_narrative_language_control(validator: Validator) -> None:
    plain = XHTML % "Text"
    profile = f"StructureDefinition[{BASE}sections-%s]"
    assert errors(validator, patient_with(plain), (BASE + "sections-no",)) == []
    assert errors(validator, patient_with(SECTIONS), (BASE + "sections-no",)) == [
        (
            "Patient.text",
            "The xhtml has some language sections (de, en), but language sections are prohibited in this context "
            f"by the profile {profile % 'no'}",
        )
    ]
    assert errors(validator, patient_with(SECTIONS), (BASE + "sections-yes",)) == []
    assert errors(validator, patient_with(plain), (BASE + "sections-yes",)) == [
        (
            "Patient.text",
            "The xhtml has no language sections, but language sections are required in this context by the "
            f"profile {profile % 'yes'}",
        )
    ]
    assert errors(validator, patient_with(SECTIONS, "de"), (BASE + "sections-resource",)) == []
    assert errors(validator, patient_with(SECTIONS, "fr"), (BASE + "sections-resource",)) == [
        (
            "Patient.text",
            f"The profile {profile % 'resource'} requires a section in the narrative for the resource language (fr), "
            "but it was not found (found de, en)",
        )
    ]
    # Without the profile, sections are no one's business.
    assert errors(validator, patient_with(SECTIONS)) == []


# --- modifier extensions ------------------------------------------------------------------------------------------


def test_a_modifier_extension_goes_in_modifier_extension_only(validator: Validator) -> None:
    do_not = {"url": "http://hl7.org/fhir/StructureDefinition/request-doNotPerform", "valueBoolean": True}
    order = {"resourceType": "NutritionOrder", "status": "active", "intent": "order", "dateTime": "2020-01-01"}
    order["patient"] = {"display": "p"}
    assert [e for e in errors(validator, {**order, "modifierExtension": [do_not]}) if "modifier" in e[1]] == []
    assert [e for e in errors(validator, {**order, "extension": [do_not]}) if "modifier" in e[1]] == [
        (
            "NutritionOrder.extension[0]",
            "Extension modifier mismatch: the extension element is not labelled as a modifier, but the underlying "
            "extension is",
        )
    ]
    place = {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "x"}}
    assert errors(validator, {"resourceType": "Patient", "modifierExtension": [place]}) == [
        (
            "Patient.modifierExtension[0]",
            "Extension modifier mismatch: the extension element is labelled as a modifier, but the underlying "
            "extension is not",
        )
    ]


def test_an_element_context_of_a_data_type_holds_wherever_the_type_is_used(validator: Validator) -> None:
    """humanname-own-prefix is for HumanName.family: on a RelatedPerson's name it is in place, on given it is not."""
    own_prefix = {"url": "http://hl7.org/fhir/StructureDefinition/humanname-own-prefix", "valueString": "van"}
    allowed = {
        "resourceType": "RelatedPerson",
        "patient": {"reference": "Patient/p"},
        "name": [{"family": "Berg", "_family": {"extension": [own_prefix]}}],
    }
    assert not [e for e in errors(validator, allowed) if "not allowed to be used" in e[1]]
    misplaced = {
        "resourceType": "RelatedPerson",
        "patient": {"reference": "Patient/p"},
        "name": [{"given": ["Ann"], "_given": [{"extension": [own_prefix]}]}],
    }
    assert [e for e in errors(validator, misplaced) if "not allowed to be used" in e[1]] == [
        (
            "RelatedPerson.name[0].given[0]",
            "The extension http://hl7.org/fhir/StructureDefinition/humanname-own-prefix v4.0.1 is not allowed to be "
            "used at this point (this element is [RelatedPerson.name.given, string]; allowed for this version = "
            "e:HumanName.family)",
        )
    ]
