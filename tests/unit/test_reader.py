"""Reading case files: JSON and YAML give the same case; hostile documents are refused cleanly."""

from __future__ import annotations

import json

import pytest
import yaml

from casebridge.domain.reader import MAX_DEPTH, read_case
from casebridge.errors import CaseFileError, CaseSchemaError
from tests.conftest import SEED, load_case


def test_json_and_yaml_give_the_same_case() -> None:
    doc = yaml.safe_load(SEED.read_text())
    as_json = json.dumps(doc, default=str).encode()  # dates become "YYYY-MM-DD" strings
    assert read_case(as_json, source="seed.json") == load_case(SEED)


def test_yaml_flow_style_that_is_not_json_is_read_as_yaml() -> None:
    doc = yaml.safe_load(SEED.read_text())
    flow = yaml.safe_dump(doc, default_flow_style=True).replace('"', "")  # {a: b} is YAML, not JSON
    assert flow.startswith("{")
    assert read_case(flow.encode(), source="seed.yaml") == load_case(SEED)


def test_dates_must_be_iso() -> None:
    doc = yaml.safe_load(SEED.read_text())
    doc["source"]["publication_history"]["received"] = "07/02/2026"
    with pytest.raises(CaseSchemaError) as info:
        read_case(json.dumps(doc, default=str).encode(), source="x.json")
    assert info.value.problems[0].location == "source.publication_history.received"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 100_000])
def test_deep_nesting_is_refused_without_recursion_errors(depth: int) -> None:
    for text in ('{"a":' * depth + "1" + "}" * depth, "a: " + "[" * depth + "]" * depth):
        with pytest.raises(CaseFileError, match="nest"):
            read_case(text.encode(), source="deep.json" if text.startswith("{") else "deep.yaml")


def test_size_limit() -> None:
    with pytest.raises(CaseFileError, match="limit"):
        read_case(b"{}" + b" " * 100, source="x.json", max_bytes=50)


def test_an_age_in_months_is_allowed_beyond_150() -> None:
    doc = yaml.safe_load(SEED.read_text())
    doc["patient"]["age_at_presentation"] = {"value": 300, "unit": "months"}
    case = read_case(json.dumps(doc, default=str).encode(), source="x.json")
    assert case.patient.age_at_presentation.value == 300
