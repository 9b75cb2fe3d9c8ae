"""The official SQL on FHIR v2 test suite (tests/data/sql-on-fhir-v2, MIT, see its SOURCE.txt), every test run
against casebridge.views, and the suite's test_report.json written as implementers publish it.

As the suite's reference runner compares them: rows in any order (both sides sorted), each row with the same
columns and equal values; a number equals the same number written as a decimal (5 and 5.0), never a boolean.
A test with expectError passes when reading or running the view raises casebridge's InputError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from casebridge.errors import InputError
from casebridge.views import read_view, run_to_dicts

SUITE = Path(__file__).resolve().parents[1] / "data" / "sql-on-fhir-v2"
FILES = sorted((SUITE / "tests").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


CASES = [(path.name, test["title"]) for path in FILES for test in _load(path)["tests"]]


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def _sorted_rows(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(_canonical(row), sort_keys=True) for row in rows)


def run_case(group: dict[str, Any], test: dict[str, Any]) -> tuple[bool, str]:
    """(passed, why not) for one test of the suite."""
    try:
        plan = read_view(test["view"])
        rows = run_to_dicts(plan, group["resources"])
    except InputError as exc:
        if test.get("expectError"):
            return True, ""
        return False, f"unexpected error: {exc.report()}"
    if test.get("expectError"):
        return False, f"no error; rows: {rows}"
    if "expectColumns" in test and list(plan.column_names) != test["expectColumns"]:
        return False, f"columns {list(plan.column_names)}, expected {test['expectColumns']}"
    if "expectCount" in test and len(rows) != test["expectCount"]:
        return False, f"{len(rows)} rows, expected {test['expectCount']}"
    if "expect" in test and _sorted_rows(rows) != _sorted_rows(test["expect"]):
        return False, f"rows {rows}, expected {test['expect']}"
    return True, ""


def _test(file: str, title: str) -> tuple[dict[str, Any], dict[str, Any]]:
    group = _load(SUITE / "tests" / file)
    return group, next(t for t in group["tests"] if t["title"] == title)


@pytest.mark.parametrize(("file", "title"), CASES, ids=[f"{f}:{t}" for f, t in CASES])
def test_suite_case(file: str, title: str) -> None:
    group, test = _test(file, title)
    passed, reason = run_case(group, test)
    assert passed, reason


def test_the_whole_suite_is_here() -> None:
    # The vendored copy is the one its SOURCE.txt names: 22 files, 134 tests.
    assert len(FILES) == 22
    assert len(CASES) == 134
    assert len(set(CASES)) == len(CASES), "titles are unique within a file"


def write_report(directory: Path) -> Path:
    """The suite's test_report.json: {file: {"tests": [{"name": title, "result": {"passed": bool, "reason"?}}]}}."""
    report: dict[str, Any] = {}
    for path in FILES:
        group = _load(path)
        entries = []
        for test in group["tests"]:
            passed, reason = run_case(group, test)
            result: dict[str, Any] = {"passed": passed}
            if not passed:
                result["reason"] = reason
            entries.append({"name": test["title"], "result": result})
        report[path.name] = {"tests": entries}
    target = directory / "test_report.json"
    target.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return target


def test_report_has_the_shape_the_suite_documents(tmp_path: Path) -> None:
    report = json.loads(write_report(tmp_path).read_text(encoding="utf-8"))
    assert isinstance(report, dict)
    assert sorted(report) == [p.name for p in FILES]
    names: list[tuple[str, str]] = []
    for file, entry in report.items():
        assert set(entry) == {"tests"}
        assert isinstance(entry["tests"], list) and entry["tests"]
        for test in entry["tests"]:
            assert set(test) == {"name", "result"}
            assert isinstance(test["name"], str)
            assert set(test["result"]) <= {"passed", "reason"}
            assert isinstance(test["result"]["passed"], bool)
            if "reason" in test["result"]:
                assert isinstance(test["result"]["reason"], str)
            names.append((file, test["name"]))
    assert names == CASES
    failed = [(f, t["name"], t["result"].get("reason")) for f, e in report.items() for t in e["tests"]]
    assert [x for x in failed if x[2] is not None] == []
