"""Units are UCUM and coded as written; lab interpretations carry v3 ObservationInterpretation codes."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from casebridge.definitions.packages import default_cache_dir
from casebridge.domain import ucum
from casebridge.domain.case import Quantity, ReferenceRange
from casebridge.domain.reader import read_case
from casebridge.errors import CaseSchemaError
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Validator
from tests.conftest import pinned_packages_missing
from tests.paths import DATA_DIR

LAB_CASE = DATA_DIR / "cases" / "metastatic-calcification-left-thigh.yaml"
UCUM = "http://unitsofmeasure.org"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def lab_doc() -> dict[str, Any]:
    return yaml.safe_load(LAB_CASE.read_text())


def lab_tests(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return next(s for s in doc["diagnostic_steps"] if s["kind"] == "laboratory")["tests"]


def read(doc: dict[str, Any]) -> Any:
    return read_case(json.dumps(doc, default=str).encode(), source="case.json")


def lab_results(mappings: MappingSet, doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The lab-result Observations of the converted case, by lab test id."""
    bundle = mappings.convert(read(doc))
    out = {}
    for entry in bundle["entry"]:
        value = entry["resource"].get("identifier", [{}])[0].get("value", "")
        if "/lab-result/" in value:
            out[value.rsplit("/", 1)[1]] = entry["resource"]
    return out


# Valid UCUM, case-sensitive: each is its own code. "mg/dlx" (milligram per deci-lux) is valid syntax too.
VALID_UNITS = "cm mg/dL mg/dl mmol/L U/L pg/mL 10*9/L 10^9/L [IU]/L mm[Hg] % /uL {cells}/uL meq/L ug/L 1 mg/dlx".split()
VALID_UNITS.append("mL/min/{1.73_m2}")
# Common spellings that are not UCUM: the case-insensitive form, IU without brackets, mEq, µ, x10^9, spaces.
INVALID_UNITS = ["CM", "MG/DL", "mg/dlz", "IU/L", "mEq/L", "µg/L", "mcg/L", "x10^9/L", "cells/uL", "mmHg", "hr"]
INVALID_UNITS.append("mg / dL")


@pytest.mark.parametrize("unit", VALID_UNITS)
def test_valid_ucum_is_accepted(unit: str) -> None:
    assert ucum.is_ucum(unit)
    assert Quantity(value=1, unit=unit).unit == unit


@pytest.mark.parametrize("unit", INVALID_UNITS)
def test_a_unit_that_is_not_ucum_is_refused(unit: str) -> None:
    assert not ucum.is_ucum(unit)
    with pytest.raises(ValueError, match="is not a UCUM unit"):
        Quantity(value=1, unit=unit)
    with pytest.raises(ValueError, match="is not a UCUM unit"):
        ReferenceRange(low=1, unit=unit)


def test_a_case_with_a_non_ucum_unit_is_refused_with_the_path() -> None:
    doc = lab_doc()
    tests = lab_tests(doc)
    tests[0]["value"]["unit"] = "mg/dlz"
    tests[1]["reference_range"]["unit"] = "MG/DL"
    with pytest.raises(CaseSchemaError) as info:
        read(doc)
    problems = {p.location: p.message for p in info.value.problems}
    assert problems["diagnostic_steps[2].tests[0].value.unit"] == (
        "'mg/dlz' is not a UCUM unit; write it as UCUM (case-sensitive), e.g. mg/dL, U/L, 10*9/L"
    )
    assert problems["diagnostic_steps[2].tests[1].reference_range.unit"].startswith("'MG/DL' is not a UCUM unit")


@pytest.mark.parametrize("unit", ["U/L", "pg/mL", "mg/dl", "10*9/L", "[IU]/L"])
def test_any_ucum_unit_is_coded_as_written(mappings: MappingSet, unit: str) -> None:
    doc = lab_doc()
    test = lab_tests(doc)[1]
    test["value"]["unit"] = unit
    test["reference_range"]["unit"] = unit
    obs = lab_results(mappings, doc)[test["id"]]
    coded = {"system": UCUM, "code": unit, "unit": unit}
    assert obs["valueQuantity"] == {"value": test["value"]["value"], **coded}
    rr = obs["referenceRange"][0]
    assert rr["low"] == {"value": test["reference_range"]["low"], **coded}
    assert rr["high"] == {"value": test["reference_range"]["high"], **coded}


def test_the_units_table_still_overrides(mappings: MappingSet) -> None:
    obs = lab_results(mappings, lab_doc())["serum-calcium"]
    assert obs["valueQuantity"]["system"] == UCUM and obs["valueQuantity"]["code"] == "mg/dL"


INTERPRETATIONS = {
    "normal": ("N", "Normal"),
    "abnormal": ("A", "Abnormal"),
    "high": ("H", "High"),
    "low": ("L", "Low"),
    "critical high": ("HH", "Critical high"),
    "critical low": ("LL", "Critical low"),
}


@pytest.mark.parametrize("words", sorted(INTERPRETATIONS))
def test_interpretations_are_coded(mappings: MappingSet, words: str) -> None:
    doc = lab_doc()
    lab_tests(doc)[0]["interpretation"] = words
    obs = lab_results(mappings, doc)["serum-calcium"]
    code, display = INTERPRETATIONS[words]
    assert obs["interpretation"] == [{"coding": [{"system": V3_INTERPRETATION, "code": code, "display": display}]}]


def test_interpretation_codes_are_those_of_the_pinned_code_system() -> None:
    path = default_cache_dir() / "hl7.terminology.r4#7.0.1" / "package" / "CodeSystem-v3-ObservationInterpretation.json"
    if not path.is_file():
        pinned_packages_missing(f"{path} is missing")
    system = json.loads(path.read_text())
    assert system["url"] == V3_INTERPRETATION

    def walk(concepts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for c in concepts:
            out[c["code"]] = c
            out.update(walk(c.get("concept", [])))
        return out

    defined = walk(system["concept"])
    for code, display in INTERPRETATIONS.values():
        assert defined[code]["display"] == display
        assert {"code": "status", "valueCode": "active"} in defined[code]["property"]


def test_an_unknown_interpretation_is_refused() -> None:
    doc = lab_doc()
    lab_tests(doc)[0]["interpretation"] = "very high"
    with pytest.raises(CaseSchemaError) as info:
        read(doc)
    assert info.value.problems[0].location == "diagnostic_steps[2].tests[0].interpretation"


def test_coded_units_and_interpretations_validate(mappings: MappingSet, validator: Validator) -> None:
    doc = lab_doc()
    tests = lab_tests(doc)
    tests[0]["interpretation"] = "critical high"
    tests[1]["interpretation"] = "low"
    for unit_holder in (tests[1]["value"], tests[1]["reference_range"]):
        unit_holder["unit"] = "U/L"
    bundle = mappings.convert(read(copy.deepcopy(doc)))
    issues = validator.validate(bundle)
    assert [(i.expression, i.message) for i in issues if i.severity in ("error", "fatal")] == []


def test_a_unit_longer_than_any_real_one_is_refused_without_parsing() -> None:
    from casebridge.domain import ucum

    long = "m." * 40 + "m"  # valid UCUM syntax, 81 characters
    assert ucum.problem(long) is not None and "(at most 64)" in (ucum.problem(long) or "")
    assert ucum.problem("mL/min/{1.73_m2}") is None
