"""The case model's refusals read as plain words, with an example of a right value and the line and column."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from casebridge.api.errors import input_error
from casebridge.domain import case as model
from casebridge.domain import case_v1
from casebridge.domain.case_errors import _PATTERNS, EXAMPLES, message, walk
from casebridge.domain.reader import read_case
from casebridge.errors import CaseFileError, CaseSchemaError, Problem
from tests.conftest import SEED, SEED_V1

SEED_DOC: dict[str, Any] = yaml.safe_load(SEED.read_text())
SEED_V1_DOC: dict[str, Any] = yaml.safe_load(SEED_V1.read_text())
_TYPES = {
    "missing", "extra_forbidden", "model_type", "model_attributes_type", "list_type", "string_type", "int_type",
    "float_type", "bool_type", "literal_error", "union_tag_invalid", "union_tag_not_found", "string_too_short",
    "string_too_long", "string_pattern_mismatch", "greater_than_equal", "greater_than", "less_than_equal",
    "date_from_datetime_parsing", "value_error",
}  # fmt: skip
# What pydantic's own messages say; none of it may reach a person.
JARGON = re.compile(r"should|Input tag|Unable to extract|Field required|Extra inputs|instance of|dictionary")


def _paths(node: object, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if path:
        yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*path, i))


def _with(doc: dict[str, Any], path: tuple[Any, ...], value: object) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for part in path[:-1]:
        node = node[part]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
WRONG = [{"x": 1}, [1], "zz z", "", 5, -3, 2.5, True, None, 10**6, "x" * 11_000, {}, [], "a\x0cb", "2026-02-30"]


def _schema_error(text: str, source: str) -> CaseSchemaError:
    with pytest.raises(CaseSchemaError) as info:
        read_case(text.encode(), source=source)
    return info.value


@pytest.mark.parametrize(
    ("root", "doc", "types_met"),
    [(case_v1.CaseReport, SEED_V1_DOC, _TYPES | {"too_short"}), (model.CaseReport, SEED_DOC, _TYPES)],
    ids=["1.0", "2.0"],
)
def test_every_error_a_case_can_produce_is_in_plain_words(
    root: type[BaseModel], doc: dict[str, Any], types_met: set[str]
) -> None:
    """Every field of the seed given every kind of wrong value (and, for an object's member, taken away):
    every pydantic error type met gets words of its own, never pydantic's."""
    types: set[str] = set()
    for path in _paths(doc):
        for value in [*WRONG, _DELETE] if isinstance(path[-1], str) else WRONG:
            try:
                root.model_validate(_with(doc, path, value))
            except ValidationError as exc:
                for err in exc.errors(include_url=False):
                    types.add(err["type"])
                    words = message(err, walk(err["loc"], root))
                    assert not JARGON.search(words), (path, value, err["type"], words)
    # the types this sweep must meet: if pydantic renames one, the words above no longer apply
    assert types >= types_met


def test_type_errors_give_an_example_of_a_right_value() -> None:
    error = _schema_error(SEED.read_text().replace("{value: 26, unit: years}", "twenty-six"), "x.yaml")
    assert error.problems[0].location == "patient.age_at_presentation"
    assert error.problems[0].message == ("expected an age such as {value: 26, unit: years}; got the text 'twenty-six'")
    doc = _with(SEED_DOC, ("source", "year"), "2026")
    error = _schema_error(json.dumps(doc, default=str), "x.json")
    assert error.problems[0].message == (
        "expected a whole number such as 26; got the text '2026'; write the number without quotes"
    )


def test_choices_are_listed() -> None:
    error = _schema_error(json.dumps(_with(SEED_DOC, ("patient", "sex"), "f"), default=str), "x.json")
    assert str(error.problems[0]) == "patient.sex: expected one of female, male, other, unknown; got the text 'f'"
    steps = _with(SEED_DOC, ("diagnostic_steps", 1, "kind"), "x-ray")
    error = _schema_error(json.dumps(steps, default=str), "x.json")
    assert error.problems[0].location == "diagnostic_steps[1]"
    text = json.dumps(steps, default=str, indent=1)
    assert _schema_error(text, "x.json").problems[0].line == _line_column(text, '"x-ray"')[0]  # the kind's line
    assert error.problems[0].message.startswith("unknown kind: the text 'x-ray'; the kind of a diagnostic step is one")
    assert "xray, ultrasound" in error.problems[0].message


def test_an_unknown_field_lists_the_fields_of_its_object() -> None:
    doc = _with(SEED_DOC, ("patient", "gender"), "female")
    error = _schema_error(json.dumps(doc, default=str), "x.json")
    assert error.problems[0].location == "patient.gender"
    assert error.problems[0].message == (
        "unknown field 'gender'; a patient has the fields identifier, sex, age_at_presentation, quote"
    )
    doc = _with(SEED_DOC, ("presentation", "body_site", "lateral"), "right")
    error = _schema_error(json.dumps(doc, default=str), "x.json")
    assert "(did you mean 'laterality'?); a body site has the fields site, laterality" in error.problems[0].message


def test_a_missing_field_says_what_it_takes() -> None:
    # 1.0 required the age; 2.0 requires nothing a report may not give, but a diagnosis is named.
    error = _schema_error(
        json.dumps(_with(SEED_V1_DOC, ("patient", "age_at_presentation"), _DELETE), default=str), "x.json"
    )
    assert str(error.problems[0]) == (
        "patient.age_at_presentation: required field is missing; expected an age such as {value: 26, unit: years}"
    )
    error = _schema_error(json.dumps(_with(SEED_DOC, ("diagnoses", 0, "concept"), _DELETE), default=str), "x.json")
    assert str(error.problems[0]).startswith("diagnoses[0].concept: required field is missing; expected a concept")


def test_every_example_is_a_right_value() -> None:
    for name, example in EXAMPLES.items():
        cls = getattr(model, name)
        cls.model_validate(yaml.safe_load(example.split(" (or ", 1)[0]))


def _models() -> set[type[BaseModel]]:
    found: set[type[BaseModel]] = set()
    todo: list[Any] = [model.CaseReport, case_v1.CaseReport]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if tp in found:
                continue
            found.add(tp)
            todo += [f.annotation for f in tp.model_fields.values()]
        else:
            todo += list(getattr(tp, "__args__", ()))
    return found


def test_every_pattern_of_the_model_has_words() -> None:
    patterns = set()
    for cls in _models():
        for field in cls.model_fields.values():
            metas = [*field.metadata]
            for arg in getattr(field.annotation, "__args__", ()):  # a pattern of an optional field (Key | None)
                metas += getattr(arg, "__metadata__", ())
            patterns |= {getattr(m, "pattern", None) for meta in metas for m in [meta, *getattr(meta, "metadata", [])]}
    patterns.discard(None)
    assert patterns and patterns <= set(_PATTERNS)


def test_duplicate_and_misordered_steps_are_named() -> None:
    doc = _with(SEED_DOC, ("diagnostic_steps", 2, "order"), 2)
    error = _schema_error(json.dumps(doc, default=str), "x.json")
    assert str(error.problems[0]) == (
        "diagnostic_steps[2].order: steps 'xray' and 'ultrasound' both have order 2; "
        "give each step its own order number"
    )
    doc = _with(SEED_DOC, ("diagnostic_steps", 1, "order"), 9)
    error = _schema_error(json.dumps(doc, default=str), "x.json")
    assert str(error.problems[0]) == (
        "diagnostic_steps[2].order: step 'ultrasound' (order 3) is listed after step 'xray' (order 9); "
        "list the steps in their order"
    )


def test_a_number_is_not_a_date() -> None:
    doc = _with(SEED_DOC, ("source", "publication_history", "received"), 0)  # was read as 1970-01-01
    error = _schema_error(json.dumps(doc, default=str), "x.json")
    assert str(error.problems[0]) == "source.publication_history.received: dates are written YYYY-MM-DD"


def _line_column(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    at = [m.start() for m in re.finditer(re.escape(needle), text)][nth]
    return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1


@pytest.mark.parametrize("syntax", ["yaml", "json"])
def test_every_problem_has_its_line_and_column(syntax: str) -> None:
    doc = _with(SEED_DOC, ("patient", "sex"), "f")
    doc = _with(doc, ("patient", "nickname"), "Mimi")
    doc = _with(doc, ("diagnostic_steps", 2, "measurements", 0, "dimensions", 1, "value"), -0.5)
    doc = _with(doc, ("presentation", "body_site", "site"), 3)
    doc = _with(doc, ("source", "citation"), _DELETE)
    text = json.dumps(doc, default=str, indent=2) if syntax == "json" else yaml.safe_dump(doc, sort_keys=False)
    error = _schema_error(text, f"case.{syntax}")
    where = {p.location: (p.line, p.column) for p in error.problems}
    q = '"' if syntax == "json" else ""
    sex_line, _ = _line_column(text, f"{q}sex{q}:")
    assert where["patient.sex"][0] == sex_line
    assert where["patient.nickname"] == _line_column(text, f"{q}nickname{q}")
    assert where["diagnostic_steps[2].measurements[0].dimensions[1].value"] == _line_column(text, "-0.5")
    # one site written as a mapping: the path has no list index, as the document has none
    assert where["presentation.body_site.site"][0] == _line_column(text, f"{q}site{q}: 3")[0]
    assert where["source.citation"] == _line_column(text, f"{q}source{q}:")  # the object that lacks it
    report = error.report()
    assert f"  - case.{syntax}:{sex_line}:" in report


def test_positions_for_every_field_in_both_syntaxes() -> None:
    """A wrong value at every 7th path of the seed, as YAML and as JSON: every problem has a line and column."""
    for path in list(_paths(SEED_DOC))[::7]:
        doc = _with(SEED_DOC, path, {"x": 1})
        for syntax in ("yaml", "json"):
            text = json.dumps(doc, default=str) if syntax == "json" else yaml.safe_dump(doc)
            try:
                read_case(text.encode(), source=f"case.{syntax}")
            except CaseSchemaError as exc:
                assert all(p.line is not None and p.column is not None for p in exc.problems), (path, exc.problems)


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("a:\n\tb: 1\n", 2, 1, "a tab character indents line 2; YAML indents with spaces only"),
        ("a:\n  b: 1\n\tc: 2\n", 3, 1, "a tab character indents line 3"),
        ("a:\n  b:\n  \tc: 1\n", 3, 3, "a tab character indents line 3"),
    ],
)
def test_a_tab_indent_is_named(text: str, line: int, column: int, words: str) -> None:
    with pytest.raises(CaseFileError) as info:
        read_case(text.encode(), source="case.yaml")
    assert words in str(info.value)
    assert (info.value.problems[0].line, info.value.problems[0].column) == (line, column)
    assert info.value.report().startswith(f"case.yaml:{line}:{column}: malformed YAML: a tab character")


def test_malformed_json_says_file_line_and_column() -> None:
    with pytest.raises(CaseFileError) as info:
        read_case(b'{"a": 1,\n  "b": }', source="case.json")
    assert info.value.report() == "case.json:2:8: malformed JSON: Expecting value"


def test_the_api_answer_keeps_422_and_carries_the_position() -> None:
    error = _schema_error(json.dumps(_with(SEED_DOC, ("patient", "sex"), "f"), default=str, indent=1), "x.json")
    answer = input_error(error)
    assert answer.status == 422
    issue = answer.body["issue"][1]
    assert issue["expression"] == ["patient.sex"]
    assert re.fullmatch(r"line \d+, column \d+: expected one of female, male, other, unknown; got the text 'f'",
                        issue["diagnostics"])  # fmt: skip


def test_a_problem_without_a_position_reads_as_before() -> None:
    assert Problem("a.b", "text").at("x.yaml") == "x.yaml: "
    assert Problem("a.b", "text", 3, 4).at("x.yaml") == "x.yaml:3:4: "
    assert CaseSchemaError("bad", source="x", problems=[Problem("a", "m")]).report() == "x: bad\n  - a: m"
