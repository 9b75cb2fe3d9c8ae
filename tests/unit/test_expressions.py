"""The mapping expression language: what it evaluates, and what it refuses at load time."""

from __future__ import annotations

from typing import Any

import pytest

from casebridge.domain.case import CaseReport
from casebridge.errors import MappingError
from casebridge.mapping.expressions import ExpressionCompiler, Function
from tests.conftest import SEED, load_case

FUNCTIONS = {"pair": Function("pair", lambda ctx, a, b=None: [a, b], "")}


def evaluate(source: str, **env: Any) -> Any:
    fn, _ = ExpressionCompiler(FUNCTIONS, file="t.yaml", line=7).compile(source, {k: None for k in env})
    return fn({**env, "$ctx": None})


def test_attribute_access_is_none_safe() -> None:
    case = load_case(SEED)
    assert evaluate("case.patient.sex", case=case) == "female"
    assert evaluate("case.patient.identifier", case=case) is None
    assert evaluate("case.patient.identifier.upper", case=case) is None
    assert evaluate("case.final_diagnosis.possible_cause.history", case=case) == "previous-fracture"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 if x else 2", 1),
        ("x and 'a' or 'b'", "a"),
        ("not x", False),
        ("x == 3", True),
        ("x in [1, 2, 3]", True),
        ("x not in [1, 2]", True),
        ("none < 3", False),  # a missing value compares false instead of raising
        ("none in none", False),
        ("items[1]", 20),
        ("items[5]", None),
        ("pair(x, b=4)", [3, 4]),
        ("[x, 'y']", [3, "y"]),
    ],
)
def test_evaluation(source: str, expected: object) -> None:
    assert evaluate(source, x=3, none=None, items=[10, 20]) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x + 1", "BinOp is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("[i for i in x]", "ListComp is not allowed"),
        ("x.__class__", "private attribute"),
        ("x[y]", "only constant integer indexes"),
        ("open('f')", "unknown function 'open'"),
        ("x.upper()", "unknown function"),
        ("pair(*x)", "*args and **kwargs are not allowed"),
        ("pair()", "missing a required argument"),
        ("unknown", "unknown name 'unknown'"),
        ("pair", "it is a function: call it"),
        ("x ==", "cannot parse"),
    ],
)
def test_refused_at_load_time(source: str, message: str) -> None:
    with pytest.raises(MappingError) as info:
        ExpressionCompiler(FUNCTIONS, file="t.yaml", line=7).compile(source, {"x": None, "y": None})
    assert message in str(info.value)
    assert str(info.value).startswith("t.yaml:7: ")


def test_fields_are_checked_through_lists_and_unions() -> None:
    compiler = ExpressionCompiler(FUNCTIONS, file="t.yaml", line=1)
    compiler.compile(
        "case.diagnostic_steps[0].conclusion", {"case": CaseReport}
    )  # an imaging field: exists in the union
    with pytest.raises(MappingError, match="has no field 'colour'"):
        compiler.compile("case.diagnostic_steps[0].colour", {"case": CaseReport})
    with pytest.raises(MappingError, match="has no field 'nme'"):
        compiler.compile("case.open_differentials[0].concept.nme", {"case": CaseReport})
