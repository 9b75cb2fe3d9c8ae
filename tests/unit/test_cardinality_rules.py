"""The cardinality and JSON shape rules of the walk (profiled.py: Validator._lookup, _complex, _property), each
with the exact issues it gives (severity, code, expression, message, source).

An element's values are counted per parent, whichever way the walk reads them (a plain primitive, a single object,
an array, a primitive's ``_`` companion alone, XML's repeated element), and reported on the parent naming the
element by its id: too few (``minimum required``, at the limit and one under), too many (``max allowed``, at the limit
and one over, ``max 0``), a required slice of an absent element. An element that repeats must be a JSON array, one
that does not an object or a value; a property the definition does not have is reported (``resourceType`` only at
a resource's root, a ``_`` companion only of a primitive). The companions of repeated primitives go with their
values by position."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex
from casebridge.definitions.xml import RepeatedElement
from casebridge.validation.issues import Issue, Run
from casebridge.validation.service import load_index
from casebridge.validation.validator import MAX_DEPTH, ValidationOptions, Validator
from tests.profiles import element, profile

BASE = "http://example.org/fhir/StructureDefinition"
CORE = "http://hl7.org/fhir/StructureDefinition"
PATIENT = f"{BASE}/patient-counted"
OBSERVATION = f"{BASE}/observation-counted"
FROM_PATIENT = f"(from {PATIENT}|1.0.0)"
FROM_CORE_PATIENT = f"(from {CORE}/Patient|4.0.1)"
FROM_CORE_OBSERVATION = f"(from {CORE}/Observation|4.0.1)"
ABSENT = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}


DEFINITIONS = [
    profile(
        PATIENT,
        "Patient",
        [
            element("Patient.active", min=1),  # a plain primitive (no binding): the walk's fast path
            element("Patient.gender", min=1),  # a bound code: through _property
            element("Patient.birthDate", max="0"),
            element("Patient.maritalStatus", min=1),  # a single object: the walk's other fast path
            element("Patient.name", min=1),  # repeats
            element("Patient.address", min=2),
            element("Patient.telecom", max="2"),
            element(
                "Patient.identifier", slicing={"discriminator": [{"type": "value", "path": "system"}], "rules": "open"}
            ),
            {
                "id": "Patient.identifier:mrn",
                "path": "Patient.identifier",
                "sliceName": "mrn",
                "min": 1,
                "max": "1",
            },
            {
                "id": "Patient.identifier:mrn.system",
                "path": "Patient.identifier.system",
                "min": 1,
                "fixedUri": "urn:mrn",
            },
            # An optional slice: its absence is no error.
            {
                "id": "Patient.identifier:other",
                "path": "Patient.identifier",
                "sliceName": "other",
                "min": 0,
                "max": "*",
            },
            {"id": "Patient.identifier:other.system", "path": "Patient.identifier.system", "fixedUri": "urn:other"},
            element("Patient.contact.name", min=1),
        ],
    ),
    profile(
        OBSERVATION,
        "Observation",
        [element("Observation.value[x]", min=1, type=[{"code": "Quantity"}]), element("Observation.note", max="1")],
    ),
]


def _index() -> DefinitionIndex:
    """The pinned packages and the profiles above, these read now (their folder is then removed)."""
    with tempfile.TemporaryDirectory() as folder:
        for i, definition in enumerate(DEFINITIONS):
            (Path(folder) / f"def-{i}.json").write_text(json.dumps(definition), encoding="utf-8")
        index = load_index(Settings(), [Path(folder)])
        assert all(index.get(d["url"]) is not None for d in DEFINITIONS)
    return index


# Read at import: a mutation run forks each mutant's test run from a process that imported this module, so the
# definitions are read once; each run gets a validator of its own (its caches hold what the code under test made).
INDEX = _index()


@pytest.fixture(scope="module")
def profiled() -> Validator:
    return Validator(INDEX, options=ValidationOptions(unknown_profiles=Settings().unknown_profiles))


def found(issues: list[Issue]) -> list[tuple[str, str, str, str, str | None]]:
    """The issues, without dom-6 (the narrative warning every bare resource gets)."""
    return [
        (i.severity, i.code, i.expression, i.message, i.source)
        for i in issues
        if not i.message.startswith("Constraint failed: dom-6")
    ]


def too_few(at: str, element_id: str, minimum: int, count: int, source: str = PATIENT) -> tuple[str, ...]:
    label = f"(from {source}|{'1.0.0' if source.startswith(BASE) else '4.0.1'})"
    message = f"{element_id}: minimum required = {minimum}, but only found {count} {label}"
    return ("error", "required", at, message, source)


def too_many(at: str, element_id: str, maximum: int, count: int, source: str = PATIENT) -> tuple[str, ...]:
    label = f"(from {source}|{'1.0.0' if source.startswith(BASE) else '4.0.1'})"
    message = f"{element_id}: max allowed = {maximum}, but found {count} {label}"
    return ("error", "structure", at, message, source)


ELE_1 = (
    "Constraint failed: ele-1: 'All FHIR elements must have a @value or children' "
    "(defined in http://hl7.org/fhir/StructureDefinition/Element)"
)

MRN_MISSING = (
    "error",
    "structure",
    "Patient",
    f"Slice 'Patient.identifier:mrn': a matching slice is required, but not found {FROM_PATIENT}. Note that other "
    "slices are allowed in addition to this required slice",
    PATIENT,
)

# A Patient that meets every rule of the profile: each case changes one element.
VALID: dict[str, Any] = {
    "resourceType": "Patient",
    "active": True,
    "gender": "male",
    "maritalStatus": {"text": "married"},
    "name": [{"family": "Chalmers"}],
    "address": [{"city": "A"}, {"city": "B"}],
    "identifier": [{"system": "urn:mrn", "value": "1"}],
}


def patient(**changes: Any) -> dict[str, Any]:
    out = {**VALID, **changes}
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (patient(), []),
        # min 1, whichever way the walk reads the element; one value is enough.
        (patient(active=None), [too_few("Patient", "Patient.active", 1, 0)]),
        (patient(gender=None), [too_few("Patient", "Patient.gender", 1, 0)]),
        (patient(maritalStatus=None), [too_few("Patient", "Patient.maritalStatus", 1, 0)]),
        (patient(name=None), [too_few("Patient", "Patient.name", 1, 0)]),
        (patient(name=[{"family": "A"}, {"family": "B"}, {"family": "C"}]), []),
        # min 2: one under, and at the limit (above).
        (patient(address=[{"city": "A"}]), [too_few("Patient", "Patient.address", 2, 1)]),
        (patient(address=None), [too_few("Patient", "Patient.address", 2, 0)]),
        (patient(address=[{"city": "A"}, {"city": "B"}, {"city": "C"}]), []),
        # max 2: at the limit, one over.
        (patient(telecom=[{"system": "phone", "value": "1"}, {"system": "phone", "value": "2"}]), []),
        (
            patient(telecom=[{"system": "phone", "value": str(i)} for i in range(3)]),
            [too_many("Patient", "Patient.telecom", 2, 3)],
        ),
        # max 0, a plain primitive.
        (patient(birthDate="2000-01-01"), [too_many("Patient", "Patient.birthDate", 0, 1)]),
        # A required slice of an absent element; present, its slicing counts it.
        (patient(identifier=None), [MRN_MISSING]),
        (patient(identifier=[{"system": "urn:mrn", "value": "1"}, {"system": "urn:other", "value": "2"}]), []),
        # Several at once, in the order of the definition.
        (
            {"resourceType": "Patient", "gender": "male", "birthDate": "2000"},
            [
                MRN_MISSING,
                too_few("Patient", "Patient.active", 1, 0),
                too_few("Patient", "Patient.name", 1, 0),
                too_many("Patient", "Patient.birthDate", 0, 1),
                too_few("Patient", "Patient.address", 2, 0),
                too_few("Patient", "Patient.maritalStatus", 1, 0),
            ],
        ),
        # Counted per parent: each contact reports its own name, on itself.
        (
            patient(
                contact=[
                    {"name": {"family": "A"}},
                    {"address": {"city": "C"}},
                    {"gender": "female", "name": {"text": "B"}},
                ]
            ),
            [too_few("Patient.contact[1]", "Patient.contact.name", 1, 0)],
        ),
        # A primitive's _ companion alone is the element: counted.
        (patient(active=None, _active={"extension": [ABSENT]}), []),
        (patient(gender=None, _gender={"extension": [ABSENT]}), []),
        # ...and with its value, counted once (active is at most 1).
        (patient(_active={"extension": [ABSENT]}), []),
        (patient(birthDate=None, _birthDate={"extension": [ABSENT]}), [too_many("Patient", "Patient.birthDate", 0, 1)]),
    ],
)
def test_cardinality_in_a_profile(
    profiled: Validator, resource: dict[str, Any], expected: list[tuple[str, ...]]
) -> None:
    assert found(profiled.validate(resource, [PATIENT])) == expected


def unknown_type(name: str) -> tuple[str, ...]:
    message = (
        f"The type of element {name} is not known - it could not be determined from the information available. Valid "
        "types at this point are Quantity"
    )
    return ("error", "structure", "Observation", message, None)


OBSERVATION_BASE: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({**OBSERVATION_BASE, "valueQuantity": {"value": 1}}, []),
        ({**OBSERVATION_BASE}, [too_few("Observation", "Observation.value[x]", 1, 0, OBSERVATION)]),
        # A type the base allows but the profile rules out: there (its cardinality met), of an unknown type.
        ({**OBSERVATION_BASE, "valueString": "a"}, [unknown_type("valueString")]),
        ({**OBSERVATION_BASE, "_valueString": {"extension": [ABSENT]}}, [unknown_type("valueString")]),
        (
            {**OBSERVATION_BASE, "valueString": "a", "_valueString": {"extension": [ABSENT]}},
            [unknown_type("valueString")],
        ),
        # Before the others: the walk goes on to them.
        (
            {
                "resourceType": "Observation",
                "_valueString": {"extension": [ABSENT]},
                "status": "final",
                "code": {"text": "x"},
            },
            [unknown_type("valueString")],
        ),
        # A profile's max 1 on an element that repeats in the base: still an array, counted.
        ({**OBSERVATION_BASE, "valueQuantity": {"value": 1}, "note": [{"text": "a"}]}, []),
        (
            {**OBSERVATION_BASE, "valueQuantity": {"value": 1}, "note": [{"text": "a"}, {"text": "b"}]},
            [too_many("Observation", "Observation.note", 1, 2, OBSERVATION)],
        ),
    ],
)
def test_cardinality_of_a_choice_and_of_a_profiled_array(
    profiled: Validator, resource: dict[str, Any], expected: list[tuple[str, ...]]
) -> None:
    assert found(profiled.validate(resource, [OBSERVATION])) == expected


def array_expected(key: str, at: str, parent: str) -> tuple[str, ...]:
    return ("error", "structure", at, f"The property {key} must be a JSON Array, not an Object (at {parent})", None)


def object_expected(key: str, at: str, parent: str) -> tuple[str, ...]:
    return ("error", "structure", at, f"The property {key} must be an Object, not an Array (at {parent})", None)


def unrecognized(at: str, key: str) -> tuple[str, ...]:
    return ("error", "structure", at, f"Unrecognized property '{key}'", None)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        # Base R4: the required elements, on the resource.
        (
            {"resourceType": "Observation"},
            [
                too_few("Observation", "Observation.status", 1, 0, f"{CORE}/Observation"),
                too_few("Observation", "Observation.code", 1, 0, f"{CORE}/Observation"),
            ],
        ),
        (OBSERVATION_BASE, []),
        # An element that repeats must be an array; the value is still checked (and counted) as one.
        ({"resourceType": "Patient", "name": {"family": "x"}}, [array_expected("name", "Patient.name", "Patient")]),
        (
            {"resourceType": "Patient", "name": {"family": "x", "bogus": 1}},
            [array_expected("name", "Patient.name", "Patient"), unrecognized("Patient.name[0]", "bogus")],
        ),
        (
            {"resourceType": "Patient", "name": [{"given": "A", "_given": {"bogus": 1}}]},
            [
                array_expected("given", "Patient.name[0].given", "Patient.name[0]"),
                unrecognized("Patient.name[0].given[0]", "bogus"),
            ],
        ),
        (
            {"resourceType": "Patient", "name": [{"_given": {"bogus": 1}}]},
            [
                array_expected("given", "Patient.name[0].given", "Patient.name[0]"),
                unrecognized("Patient.name[0].given[0]", "bogus"),
            ],
        ),
        # A companion (_given) has its value's shape: an array beside an array, one object beside one value.
        (
            {"resourceType": "Patient", "name": [{"given": ["A", "B"], "_given": {"id": "x"}}]},
            [array_expected("_given", "Patient.name[0].given", "Patient.name[0]")],
        ),
        ({"resourceType": "Patient", "name": [{"given": ["A", "B"], "_given": [None, {"id": "x"}]}]}, []),
        (
            {"resourceType": "Patient", "gender": "male", "_gender": [{"id": "x"}]},
            [object_expected("_gender", "Patient.gender", "Patient")],
        ),
        ({"resourceType": "Patient", "gender": "male", "_gender": {"id": "x"}}, []),
        # One that does not must not be: not counted then (a required one is also missing).
        (
            {**OBSERVATION_BASE, "status": ["final"]},
            [
                object_expected("status", "Observation.status", "Observation"),
                too_few("Observation", "Observation.status", 1, 0, f"{CORE}/Observation"),
            ],
        ),
        (
            {**OBSERVATION_BASE, "valueQuantity": [{"value": 1}]},
            [object_expected("valueQuantity", "Observation.value", "Observation")],
        ),
        (
            {**OBSERVATION_BASE, "code": [{"text": "x"}]},
            [
                object_expected("code", "Observation.code", "Observation"),
                too_few("Observation", "Observation.code", 1, 0, f"{CORE}/Observation"),
            ],
        ),
        # A choice given as two types is one element twice, however each is read (a plain value, an object, a
        # value with its companion).
        (
            {**OBSERVATION_BASE, "valueQuantity": {"value": 1}, "valueString": "a"},
            [too_many("Observation", "Observation.value[x]", 1, 2, f"{CORE}/Observation")],
        ),
        (
            {**OBSERVATION_BASE, "valueQuantity": {"value": 1}, "valueString": "a", "_valueString": {"id": "s"}},
            [too_many("Observation", "Observation.value[x]", 1, 2, f"{CORE}/Observation")],
        ),
        (
            {
                **OBSERVATION_BASE,
                "valueString": "a",
                "_valueString": {"id": "s"},
                "valueBoolean": True,
                "_valueBoolean": {},
            },
            [too_many("Observation", "Observation.value[x]", 1, 2, f"{CORE}/Observation")],
        ),
        (
            {**OBSERVATION_BASE, "valueCodeableConcept": {"text": "a"}, "valueQuantity": {"value": 1}},
            [too_many("Observation", "Observation.value[x]", 1, 2, f"{CORE}/Observation")],
        ),
        (
            {**OBSERVATION_BASE, "valueString": "a", "valueQuantity": {"value": 1}},
            [too_many("Observation", "Observation.value[x]", 1, 2, f"{CORE}/Observation")],
        ),
        # An empty plain value, without a companion: no value and no children either.
        (
            {"resourceType": "Patient", "birthDate": ""},
            [
                ("error", "invalid", "Patient.birthDate", "value cannot be empty", None),
                ("error", "invariant", "Patient.birthDate", ELE_1, None),
            ],
        ),
        # XML's repeated element: counted, so that the maximum reports it.
        (
            {"resourceType": "Patient", "gender": RepeatedElement(["male", "female"])},
            [too_many("Patient", "Patient.gender", 1, 2, f"{CORE}/Patient")],
        ),
        ({"resourceType": "Patient", "gender": RepeatedElement(["male"])}, []),
        # Twice, once as a value and once as a companion: one element (max 1 met).
        ({"resourceType": "Patient", "gender": "male", "_gender": {"extension": [ABSENT]}}, []),
        # Properties the definition does not have.
        ({"resourceType": "Patient", "bogus": 1}, [unrecognized("Patient", "bogus")]),
        (
            {"resourceType": "Patient", "_bogus": {}, "bogus": 1, "name": {"family": "x"}},
            [
                unrecognized("Patient", "_bogus"),
                unrecognized("Patient", "bogus"),
                array_expected("name", "Patient.name", "Patient"),
            ],
        ),
        ({"resourceType": "Patient", "active": [True]}, [object_expected("active", "Patient.active", "Patient")]),
        ({"resourceType": "Patient", "_bogus": {}}, [unrecognized("Patient", "_bogus")]),
        ({"resourceType": "Patient", "_name": [{}]}, [unrecognized("Patient", "_name")]),  # not a primitive
        (
            {"resourceType": "Patient", "name": [{"resourceType": "HumanName"}]},
            [unrecognized("Patient.name[0]", "resourceType")],
        ),
        (
            {"resourceType": "Patient", "contact": [{"resourceType": "Patient", "address": {"city": "C"}}]},
            [unrecognized("Patient.contact[0]", "resourceType")],
        ),
    ],
)
def test_shape_and_required_elements_of_base_resources(
    profiled: Validator, resource: dict[str, Any], expected: list[tuple[str, ...]]
) -> None:
    assert found(profiled.validate(resource)) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # Each companion goes with the value at its position; missing ones are none.
        ({"given": ["a", "b"], "_given": [None, {"bogus": 1}]}, [unrecognized("Patient.name[0].given[1]", "bogus")]),
        ({"given": ["a", "b"], "_given": [{"bogus": 1}]}, [unrecognized("Patient.name[0].given[0]", "bogus")]),
        ({"given": ["a"], "_given": [None, {"bogus": 1}]}, []),
        # Companions without values: each one the element, the value absent.
        (
            {"_given": [None, {"bogus": 1}]},
            [
                ("error", "invariant", "Patient.name[0].given[0]", ELE_1, None),
                unrecognized("Patient.name[0].given[1]", "bogus"),
            ],
        ),
    ],
)
def test_the_companions_of_repeated_primitives(
    profiled: Validator, name: dict[str, Any], expected: list[tuple[str, ...]]
) -> None:
    assert found(profiled.validate({"resourceType": "Patient", "name": [name]})) == expected


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        # A choice's companion: the value is named by its type.
        (
            {**OBSERVATION_BASE, "valueString": "a", "_valueString": {"bogus": 1}},
            [unrecognized("Observation.value.ofType(string)", "bogus")],
        ),
        (
            {**OBSERVATION_BASE, "_valueString": {"bogus": 1}},
            [unrecognized("Observation.value.ofType(string)", "bogus")],
        ),
        # Not a choice: the element's name.
        (
            {"resourceType": "Patient", "gender": "male", "_gender": {"bogus": 1}},
            [unrecognized("Patient.gender", "bogus")],
        ),
        ({"resourceType": "Patient", "_gender": {"bogus": 1}}, [unrecognized("Patient.gender", "bogus")]),
        (
            {"resourceType": "Patient", "_gender": {"bogus": 1}, "name": {"family": "x"}},
            [unrecognized("Patient.gender", "bogus"), array_expected("name", "Patient.name", "Patient")],
        ),
        # A companion alone is checked within its resource: a local reference in its extension finds the contained
        # resource.
        (
            {
                "resourceType": "Patient",
                "contained": [{"resourceType": "Organization", "id": "o1", "name": "x"}],
                "managingOrganization": {"reference": "#o1"},
                "_gender": {"extension": [{"url": "http://example.org/ext", "valueReference": {"reference": "#o1"}}]},
            },
            [
                (
                    "error",
                    "structure",
                    "Patient.gender.extension[0]",
                    "The extension http://example.org/ext could not be found so is not allowed here",
                    None,
                )
            ],
        ),
        # A plain value's companion is checked too.
        (
            {"resourceType": "Patient", "active": True, "_active": {"bogus": 1}},
            [unrecognized("Patient.active", "bogus")],
        ),
    ],
)
def test_the_companion_of_a_single_primitive(
    profiled: Validator, resource: dict[str, Any], expected: list[tuple[str, ...]]
) -> None:
    assert found(profiled.validate(resource)) == expected


def test_nesting_is_bounded(profiled: Validator) -> None:
    tree = profiled.type_tree("HumanName")
    assert tree is not None
    run = Run()
    # At the bound the value is walked; one deeper, the walk stops (validate reports it as fatal).
    profiled._complex({"family": "x", "bogus": 1}, tree.root, tree, "N", run, {}, MAX_DEPTH)
    assert [(i.expression, i.message) for i in run.issues] == [("N", "Unrecognized property 'bogus'")]
    with pytest.raises(RecursionError):
        profiled._complex({"family": "x"}, tree.root, tree, "N", Run(), {}, MAX_DEPTH + 1)


def test_the_elements_checked_per_parent_are_the_bounded_ones(profiled: Validator) -> None:
    # Those with a minimum, a maximum or a required slice: in Observation, only status and code have a minimum,
    # and every element that does not repeat has a maximum of one.
    tree = profiled.type_tree("Observation")
    assert tree is not None
    _, bounded = profiled._lookup(tree.root, tree)
    assert {n.id for n in bounded if n.min > 0} == {"Observation.status", "Observation.code"}
    assert all(n.min > 0 or n.max is not None for n in bounded)
    unbounded = {n.id for n in tree.root.children.values()} - {n.id for n in bounded}
    assert "Observation.note" in unbounded and "Observation.identifier" in unbounded
    assert "Observation.subject" not in unbounded
