"""casebridge.views beyond the official suite: the compiled FHIRPath subset agrees with fhirpathpy, invalid views
name the element that is wrong, a resource a view cannot read is named, and rows are streamed."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from casebridge.errors import InputError
from casebridge.views import ViewDefinitionError, ViewEvaluationError, read_view, run_to_dicts, run_view
from casebridge.views._fhirpath import Constant, Env, compile_path

PATIENTS: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "p1",
        "active": True,
        "gender": "female",
        "birthDate": "1970-06",
        "deceasedBoolean": False,
        "name": [
            {"use": "official", "family": "Smith", "given": ["Ann", "B"]},
            {"use": "usual", "family": "Jones", "given": ["Annie"]},
        ],
        "managingOrganization": {"reference": "Organization/o1"},
        "extension": [{"url": "http://example.org/x", "valueCode": "F"}],
        "contact": [{"name": {"family": "C1"}, "telecom": [{"system": "phone", "value": "1"}]}],
    },
    {"resourceType": "Patient", "id": "p2", "active": False, "name": [{"family": "Brown"}]},
    {"resourceType": "Patient", "id": "p3"},
]

OBSERVATIONS: list[dict[str, Any]] = [
    {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "valueQuantity": {"value": 72.5, "unit": "/min"},
        "component": [{"code": {"text": "a"}, "valueInteger": 3}, {"code": {"text": "b"}, "valueString": "x"}],
    },
    {"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "t"}, "valueString": "hi"},
]

SAMPLE = [
    ("Patient", "id"),
    ("Patient", "name.family"),
    ("Patient", "name.given"),
    ("Patient", "name.first().given.first()"),
    ("Patient", "name[1].family"),
    ("Patient", "name.where(use = 'official').family"),
    ("Patient", "name.where(use = %use).given.join(', ')"),
    ("Patient", "name.given.join()"),
    ("Patient", "name.exists()"),
    ("Patient", "name.given.exists() and active = true"),
    ("Patient", "active or gender = 'male'"),
    ("Patient", "(gender = 'female').not()"),
    ("Patient", "name.empty()"),
    ("Patient", "deceased.ofType(boolean)"),
    ("Patient", "gender != 'male'"),
    ("Patient", "name.count() > 1"),
    ("Patient", "extension('http://example.org/x').value.ofType(code)"),
    ("Patient", "managingOrganization.getReferenceKey(Organization)"),
    ("Patient", "managingOrganization.getReferenceKey(Patient)"),
    ("Patient", "getResourceKey()"),
    ("Patient", "contact.telecom.where(system = 'phone').value"),
    ("Patient", "Patient.name.family.first()"),
    ("Observation", "value.ofType(Quantity).value"),
    ("Observation", "value.ofType(Quantity).value * 2"),
    ("Observation", "value.ofType(Quantity).value / 4"),
    ("Observation", "value.ofType(string)"),
    ("Observation", "code.coding.where(system = 'http://loinc.org').code.first()"),
    ("Observation", "component.value.ofType(integer)"),
    ("Observation", "component.where(code.text = 'b').value.ofType(string)"),
    ("Observation", "subject.getReferenceKey()"),
    ("Observation", "value.ofType(Quantity).value.lowBoundary()"),
]


@pytest.mark.parametrize(("resource_type", "text"), SAMPLE)
def test_compiled_and_fhirpathpy_agree(resource_type: str, text: str) -> None:
    constants = {"use": Constant("use", "official", "string")}
    compiled = compile_path(text, resource_type, constants, resource_type, engine="compiled")
    reference = compile_path(text, resource_type, constants, resource_type, engine="fhirpathpy")
    assert compiled.compiled and not reference.compiled
    for resource in [*PATIENTS, *OBSERVATIONS]:
        if resource["resourceType"] != resource_type:
            continue
        env = Env(resource, 0)
        assert compiled.evaluate([resource], env) == reference.evaluate([resource], env), (text, resource["id"])


def test_what_the_subset_leaves_to_fhirpathpy() -> None:
    for text in ("birthDate = @1970-06", "name.select(family)", "name.family | name.given", "id.length()"):
        path = compile_path(text, "Patient", {}, "Patient")
        assert not path.compiled, text
        path.evaluate([PATIENTS[0]], Env(PATIENTS[0], 0))


def test_boundaries() -> None:
    def bounds(text: str, value: Any, fhir_type: str) -> list[Any]:
        from casebridge.views._fhirpath import boundary

        return [boundary(value, fhir_type, False), boundary(value, fhir_type, True)]

    assert bounds("", 1.587, "decimal") == [1.5865, 1.5875]
    assert bounds("", 2, "integer") == [1.5, 2.5]
    assert bounds("", "2024-02", "date") == ["2024-02-01", "2024-02-29"]
    assert bounds("", "2024", "date") == ["2024-01-01", "2024-12-31"]
    assert bounds("", "2010-10-10T10:30", "dateTime") == [
        "2010-10-10T10:30:00.000+14:00",
        "2010-10-10T10:30:59.999-12:00",
    ]
    assert bounds("", "2010-10-10T10:30:00Z", "instant") == ["2010-10-10T10:30:00.000Z", "2010-10-10T10:30:00.999Z"]
    assert bounds("", "12:34", "time") == ["12:34:00.000", "12:34:59.999"]


def _problems(view: dict[str, Any]) -> list[str]:
    with pytest.raises(ViewDefinitionError) as caught:
        read_view(view)
    return [p.location for p in caught.value.problems]


def _view(**changes: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "resourceType": "ViewDefinition",
        "resource": "Patient",
        "status": "active",
        "select": [{"column": [{"name": "id", "path": "id"}, {"name": "family", "path": "name.family.first()"}]}],
    }
    view.update(changes)
    return view


def test_invalid_views_name_the_element() -> None:
    assert _problems(_view(resource="Patien")) == ["resource"]
    bad_name = _view(select=[{"column": [{"name": "id", "path": "id"}, {"name": "2x", "path": "id"}]}])
    assert _problems(bad_name) == ["select[0].column[1].name"]
    nested = _view(select=[{"select": [{"column": [{"name": "a", "path": "id"}, {"name": "b", "path": "name..x"}]}]}])
    assert _problems(nested) == ["select[0].select[0].column[1].path"]
    twice = _view(select=[{"column": [{"name": "id", "path": "id"}]}, {"column": [{"name": "id", "path": "gender"}]}])
    assert _problems(twice) == ["select[1].column[0].name"]
    both = _view(select=[{"forEach": "name", "forEachOrNull": "name", "column": [{"name": "f", "path": "family"}]}])
    assert _problems(both) == ["select[0]"]
    assert _problems(_view(constant=[{"name": "c", "valueString": "a", "valueInteger": 1}])) == ["constant[0]"]
    unknown = _view(where=[{"path": "name.where(use = %nope).exists()"}])
    assert _problems(unknown) == ["where[0].path"]
    assert _problems(_view(where=[{"path": "name.given"}])) == ["where[0].path"]
    union = _view(
        select=[
            {
                "unionAll": [
                    {"column": [{"name": "a", "path": "id"}]},
                    {"column": [{"name": "b", "path": "id"}]},
                ]
            }
        ]
    )
    assert _problems(union) == ["select[0].unionAll[1]"]


def test_the_outcome_names_the_element() -> None:
    with pytest.raises(ViewDefinitionError) as caught:
        read_view(_view(select=[{"column": [{"name": "bad name", "path": "id"}]}]))
    outcome = caught.value.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["select[0].column[0].name"]
    assert outcome["issue"][0]["severity"] == "error"
    assert isinstance(caught.value, InputError)  # the CLI exits 2 on it


def test_a_resource_the_view_cannot_read_is_named_and_gives_no_row() -> None:
    plan = read_view(_view(select=[{"column": [{"name": "id", "path": "id"}, {"name": "g", "path": "name.given"}]}]))
    rows = run_view(plan, PATIENTS)
    with pytest.raises(ViewEvaluationError) as caught:
        next(rows)  # p1 has three given names, in a column that is not a collection
    assert "Patient/p1" in str(caught.value)
    assert caught.value.problems[0].location == "select[0].column[1].path"
    nested = read_view(
        _view(select=[{"forEach": "name", "column": [{"name": "f", "path": "family"}, {"name": "g", "path": "given"}]}])
    )
    received: list[tuple[Any, ...]] = []
    with pytest.raises(ViewEvaluationError):
        received.extend(run_view(nested, PATIENTS))
    assert received == []  # p1's first name would have given a row: none of p1's rows came out


def test_rows_are_streamed() -> None:
    def endless() -> Iterator[dict[str, Any]]:
        for n in itertools.count():
            yield {"resourceType": "Patient", "id": f"p{n}", "name": [{"family": f"F{n}"}]}

    plan = read_view(_view())
    assert list(itertools.islice(run_view(plan, endless()), 3)) == [("p0", "F0"), ("p1", "F1"), ("p2", "F2")]


def test_columns_and_rows() -> None:
    plan = read_view(
        _view(
            select=[
                {"column": [{"name": "id", "path": "id", "type": "id"}]},
                {"forEachOrNull": "contact", "column": [{"name": "contact", "path": "name.family", "type": "string"}]},
                {"column": [{"name": "given", "path": "name.given", "collection": True}]},
            ],
            where=[{"path": "id != 'p2'"}],
        )
    )
    assert [(c.name, c.type, c.collection) for c in plan.columns] == [
        ("id", "id", False),
        ("contact", "string", False),
        ("given", None, True),
    ]
    assert run_to_dicts(plan, [*PATIENTS, *OBSERVATIONS]) == [
        {"id": "p1", "contact": "C1", "given": ["Ann", "B", "Annie"]},
        {"id": "p3", "contact": None, "given": []},
    ]
    assert plan.fallback_paths == ()


EDGE_OBSERVATIONS: list[dict[str, Any]] = [
    {
        "resourceType": "Observation",
        "id": "e1",
        "code": {"coding": [{"system": "x", "code": "a"}, {"system": "http://loinc.org", "code": "b"}]},
        "subject": {"reference": "https://example.org/fhir/Patient/9/_history/2"},
    },
    {
        "resourceType": "Observation",
        "id": "e2",
        "code": {"coding": [{"system": ["http://loinc.org"], "code": "b"}, {"system": "http://loinc.org"}]},
        "subject": {"reference": "Patient/"},
    },
    {
        "resourceType": "Observation",
        "id": "e3",
        "code": {"coding": [{"system": "http://loinc.org", "code": "c"}, {"system": "http://loinc.org", "code": "d"}]},
        "subject": {"reference": "Patient/a/b"},
        "status": ["final"],
    },
    {
        "resourceType": "Observation",
        "id": "e4",
        "code": {"coding": [{"system": ["http://loinc.org", "http://example.org"], "code": "f"}]},
        "subject": {"reference": "#c1"},
    },
    {"resourceType": "Observation", "id": "e5", "code": {"coding": []}},
]


@pytest.mark.parametrize(
    "text",
    [
        "status",
        "subject.getReferenceKey(Patient)",
        "code.coding.where(system = 'http://loinc.org').code.first()",
        "code.coding.where('http://loinc.org' = system).code",
        "code.coding.code[1]",
        "value.ofType(Quantity).value",
    ],
)
def test_one_value_chains_agree_with_fhirpathpy(text: str) -> None:
    """The generated one-value function (the runner's fast path) gives what the full evaluation gives: the value,
    None for nothing, and an error for several."""
    compiled = compile_path(text, "Observation", {}, "Observation", engine="compiled")
    reference = compile_path(text, "Observation", {}, "Observation", engine="fhirpathpy")
    assert compiled.one is not None
    for resource in [*OBSERVATIONS, *EDGE_OBSERVATIONS]:
        env = Env(resource, 0)
        expected = reference.evaluate([resource], env)
        if len(expected) > 1:
            with pytest.raises(ValueError):
                compiled.scalar(resource, env)
        else:
            assert compiled.scalar(resource, env) == (expected[0] if expected else None), (text, resource["id"])
