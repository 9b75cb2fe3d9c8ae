"""An invariant that cannot be evaluated keeps its severity, and the R4 core invariants evaluate on R4 data.

Quantities compare as FHIRPath says: rng-2 on a reversed Range is an error (it could not be evaluated, which
was a warning, and the Range was forwarded). Every core invariant evaluates on a sample of the R4 examples
(scripts/invariant_survey.py runs them all)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex, default_cache_dir
from casebridge.validation.fhirpath import Resolver, evaluate
from casebridge.validation.service import load_index, load_validator
from casebridge.validation.validator import Issue, Validator, has_errors

PROFILE = "http://example.org/fhir/StructureDefinition/robust-patient"
UCUM = "http://unitsofmeasure.org"


def quantity(value: float, code: str = "mg") -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def observation_with(value_range: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueRange": value_range}


def patient_profile(base: DefinitionIndex, invariants: list[tuple[str, str, str]]) -> dict[str, Any]:
    """The core Patient snapshot as a profile with more invariants on Patient: (key, severity, expression)."""
    core = base.core_definition("Patient")
    assert core is not None
    sd = copy.deepcopy(core)
    sd.update(
        url=PROFILE,
        name="RobustPatient",
        derivation="constraint",
        baseDefinition="http://hl7.org/fhir/StructureDefinition/Patient",
    )
    sd.pop("differential", None)
    root = sd["snapshot"]["element"][0]
    root["constraint"] = [
        *root.get("constraint", []),
        *({"key": k, "severity": s, "human": k, "expression": e, "source": PROFILE} for k, s, e in invariants),
    ]
    return sd


def profiled_validator(folder: Path, invariants: list[tuple[str, str, str]]) -> Validator:
    (folder / "robust-patient.json").write_text(json.dumps(patient_profile(load_index(Settings()), invariants)))
    return load_validator(Settings(), [folder])


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    # startsWith() needs one string: with two names it throws.
    invariants = [
        ("tst-1", "error", "name.family.startsWith('A')"),
        ("tst-2", "warning", "name.given.startsWith('A')"),
    ]
    return profiled_validator(tmp_path_factory.mktemp("profiles"), invariants)


def by_key(issues: list[Issue], key: str) -> list[tuple[str, str]]:
    return [(i.severity, i.message) for i in issues if f" {key}" in i.message]


# --- an error that cannot be evaluated stays an error --------------------------------------------------------


def test_an_error_invariant_that_cannot_be_evaluated_is_an_error(validator: Validator) -> None:
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Ab", "given": ["Ab"]}, {"family": "Ac", "given": ["Ac"]}],
    }
    issues = validator.validate(patient, [PROFILE])
    [(severity, message)] = by_key(issues, "tst-1")
    assert severity == "error" and message.startswith("Constraint tst-1 could not be evaluated: ")
    assert has_errors(issues)
    # A warning-level one stays a warning.
    [(severity, message)] = by_key(issues, "tst-2")
    assert severity == "warning" and "could not be evaluated" in message


def test_invariants_that_evaluate_report_as_before(validator: Validator) -> None:
    ok = {"resourceType": "Patient", "name": [{"family": "Ab", "given": ["Ab"]}]}
    assert by_key(validator.validate(ok, [PROFILE]), "tst-1") == []
    bad = {"resourceType": "Patient", "name": [{"family": "Bb", "given": ["Ab"]}]}
    [(severity, message)] = by_key(validator.validate(bad, [PROFILE]), "tst-1")
    assert severity == "error" and message.startswith("Constraint failed: tst-1")


# --- rng-2: Quantities compare -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("low", "high", "fails"),
    [
        (quantity(5), quantity(1), True),  # reversed
        (quantity(1), quantity(5), False),  # ordered
        (quantity(5), quantity(5), False),  # equal
        (quantity(500, "mg"), quantity(1, "g"), False),  # comparable units, ordered
        (quantity(2, "g"), quantity(500, "mg"), True),  # comparable units, reversed
        (quantity(3, "kg"), quantity(2, "mL"), False),  # units that do not compare: empty, which passes
        (quantity(5), None, False),  # one bound
        (None, quantity(5), False),
        ({"unit": "mg", "system": UCUM, "code": "mg"}, quantity(1), False),  # a bound without a value
        ({"value": 5, "unit": "tablets"}, {"value": 1, "unit": "tablets"}, True),  # no code: the same unit text
    ],
)
def test_rng_2_compares_quantities(validator: Validator, low: Any, high: Any, fails: bool) -> None:
    value_range = {k: v for k, v in (("low", low), ("high", high)) if v is not None}
    issues = validator.validate(observation_with(value_range))
    assert not [i for i in issues if "could not be evaluated" in i.message]
    found = by_key(issues, "rng-2")
    if fails:
        assert [s for s, m in found if m.startswith("Constraint failed: rng-2")] == ["error"], found
        assert has_errors(issues)
    else:
        assert found == []


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("valueQuantity > 1 'g'", [True]),
        ("valueQuantity < 1 'g'", [False]),
        ("valueQuantity >= 1500 'mg'", [True]),
        ("valueQuantity <= 1 'm'", []),  # mass and length do not compare
        ("valueQuantity.value > 1", [True]),  # numbers still compare as numbers
    ],
)
def test_quantities_compare_with_literals(expression: str, expected: list[Any]) -> None:
    obs = {"resourceType": "Observation", "valueQuantity": quantity(1.5, "g")}
    assert evaluate(expression, obs, base=None, resource=obs, root=obs, resolver=Resolver(obs, {})) == expected


# --- the R4 examples -----------------------------------------------------------------------------------------


def r4_examples(every: int) -> list[Path]:
    folder = (Settings().fhir_package_cache or default_cache_dir()) / "hl7.fhir.r4.examples#4.0.1" / "package"
    files = sorted(p for p in folder.glob("*.json") if p.name != "package.json" and not p.name.startswith("."))
    return files[::every]


def test_every_core_invariant_evaluates_on_a_sample_of_the_r4_examples(validator: Validator) -> None:
    # Every 7th of the 5,306 examples (scripts/invariant_survey.py runs them all): Ranges among them.
    sample = r4_examples(7)
    assert len(sample) > 750
    unevaluated = [
        (path.name, i.expression, i.message)
        for path in sample
        for i in validator.validate(orjson.loads(path.read_bytes()))
        if "could not be evaluated" in i.message
    ]
    assert unevaluated == []


# --- a profile's minValue/maxValue on a Quantity -----------------------------------------------------------

LIMITED = "http://example.org/fhir/StructureDefinition/limited-observation"


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    """Observation.valueQuantity at most 300 mm[Hg] (a unit our conversions do not know) and at least 1 g."""
    core = load_index(Settings()).core_definition("Observation")
    assert core is not None
    sd = copy.deepcopy(core)
    sd.update(url=LIMITED, name="LimitedObservation", derivation="constraint")
    sd["baseDefinition"] = "http://hl7.org/fhir/StructureDefinition/Observation"
    sd.pop("differential", None)
    [value] = [e for e in sd["snapshot"]["element"] if e["id"] == "Observation.value[x]"]
    value["maxValueQuantity"] = {"value": 300, "system": UCUM, "code": "mm[Hg]"}
    folder = tmp_path_factory.mktemp("limited")
    (folder / "limited-observation.json").write_text(json.dumps(sd))
    return load_validator(Settings(), [folder])


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (quantity(200, "mm[Hg]"), None),
        (quantity(500, "mm[Hg]"), "(500 mm[Hg]) is greater than the specified maxValue (300 mm[Hg])"),
        # Units that do not convert: not checked is not within the limit.
        (quantity(5, "kg"), "The value 5 kg could not be compared with the maxValue 300 mm[Hg]"),
    ],
)
def test_a_quantity_limit_is_checked_or_is_an_error(limited: Validator, value: Any, words: str | None) -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": value}
    found = [i.message for i in limited.validate(obs, [LIMITED]) if i.severity == "error"]
    assert found == ([] if words is None else [next(m for m in found if words in m)])
