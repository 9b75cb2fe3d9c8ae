"""Every error our validator reports on the two HL7 conformance slices, compared with a golden file.

The score tests (test_conformance.py) fail only when agreement drops below a bound, so a wrong rule that moves
one case, or changes where or how an error is reported, could pass them. Here each case's steps must give exactly
the errors (expression and message) of ``tests/golden/conformance-findings.json``, and agree or disagree with the
Java validator as recorded there. One test per case, so that a mutation run (scripts/mutation.py) runs only the
cases that reach a mutated function. The test only compares; after an intended change of the validator, rewrite
the file with ``make golden`` and review ``git diff tests/golden``.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex, PackageError
from casebridge.tools.conformance import (
    ConformanceReport,
    _named_cases,
    load_base_index,
    read_manifest,
    run_conformance,
)
from tests.conftest import pinned_packages_missing
from tests.paths import TESTS_DIR

SLICES = {
    "fhir-test-cases-r4": TESTS_DIR / "data" / "conformance" / "fhir-test-cases-r4",
    "fhir-test-cases-r4-wide": TESTS_DIR / "data" / "conformance" / "fhir-test-cases-r4-wide",
}
GOLDEN = TESTS_DIR / "golden" / "conformance-findings.json"


@cache
def base_index() -> DefinitionIndex:
    try:
        return load_base_index(Settings())
    except PackageError as exc:
        pinned_packages_missing(f"the pinned FHIR packages are not installed: {exc}")


def steps_of(report: ConformanceReport) -> dict[str, Any]:
    """The steps of a report as the golden file holds them: status, our errors, agreement with Java."""
    disagree = {(d.case, d.step) for d in report.disagreements}
    steps: dict[str, Any] = {}
    for r in report.results:
        entry: dict[str, Any] = {"status": r.status}
        if r.ran:
            entry["errors"] = [[f.expression, f.message] for f in r.ours]
            entry["agrees"] = (r.case, r.step) not in disagree
        steps[f"{r.case} [{r.step}]"] = entry
    return steps


def render(base: DefinitionIndex) -> bytes:
    doc = {name: steps_of(run_conformance(folder, base)) for name, folder in SLICES.items()}
    return (json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode()


def case_names(folder: Path) -> list[str]:
    """The manifest's case names, made unique as the runner makes them (a repeated name gets #2, #3...)."""
    return [case.name for case in _named_cases(read_manifest(folder))]


CASES = [(slice_name, case) for slice_name, folder in SLICES.items() for case in case_names(folder)]


@cache
def golden() -> dict[str, Any]:
    assert GOLDEN.is_file(), f"no {GOLDEN.name}: run make golden and review it"
    doc: dict[str, Any] = json.loads(GOLDEN.read_bytes())
    return doc


def test_the_golden_file_covers_every_case() -> None:
    for slice_name, folder in SLICES.items():
        recorded = {key.rsplit(" [", 1)[0] for key in golden()[slice_name]}
        assert recorded == set(case_names(folder)), slice_name


@pytest.mark.parametrize(("slice_name", "case"), CASES, ids=[f"{s.split('-')[-1]}:{c}" for s, c in CASES])
def test_case_findings_match_golden(slice_name: str, case: str) -> None:
    report = run_conformance(SLICES[slice_name], base_index(), case_names={case})
    got = steps_of(report)
    expected = {k: v for k, v in golden()[slice_name].items() if k.rsplit(" [", 1)[0] == case}
    assert got == expected, f"differs from {GOLDEN.name} (make golden after an intended change)"
