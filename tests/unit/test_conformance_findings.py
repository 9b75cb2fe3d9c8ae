"""Every error our validator reports on the two HL7 conformance slices, compared with a golden file.

The score tests (test_conformance.py) fail only when agreement drops below a bound, so a wrong rule that moves
one case, or changes where or how an error is reported, could pass them. Here each step's errors (expression and
message) must be exactly those of ``tests/golden/conformance-findings.json``, and the steps where we disagree
with the Java validator are named. The test only compares; after an intended change of the validator, rewrite
the file with ``make golden`` and review ``git diff tests/golden``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex, PackageError
from casebridge.tools.conformance import load_base_index, run_conformance
from tests.conftest import pinned_packages_missing
from tests.paths import TESTS_DIR

SLICES = {
    "fhir-test-cases-r4": TESTS_DIR / "data" / "conformance" / "fhir-test-cases-r4",
    "fhir-test-cases-r4-wide": TESTS_DIR / "data" / "conformance" / "fhir-test-cases-r4-wide",
}
GOLDEN = TESTS_DIR / "golden" / "conformance-findings.json"


@pytest.fixture(scope="module")
def base() -> DefinitionIndex:
    try:
        return load_base_index(Settings())
    except PackageError as exc:
        pinned_packages_missing(f"the pinned FHIR packages are not installed: {exc}")


def findings(name: str, base: DefinitionIndex) -> dict[str, Any]:
    """A slice's steps as the golden file holds them: status, our errors, and whether we agree."""
    report = run_conformance(SLICES[name], base)
    steps: dict[str, Any] = {}
    for r in report.results:
        entry: dict[str, Any] = {"status": r.status}
        if r.ran:
            entry["errors"] = [[f.expression, f.message] for f in r.ours]
        steps[f"{r.case} [{r.step}]"] = entry
    return {
        "disagreements": [f"{d.case} [{d.step}]" for d in report.disagreements],
        "steps": steps,
    }


def render(base: DefinitionIndex) -> bytes:
    doc = {name: findings(name, base) for name in SLICES}
    return (json.dumps(doc, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode()


@pytest.mark.parametrize("name", list(SLICES))
def test_conformance_findings_match_golden(name: str, base: DefinitionIndex) -> None:
    assert GOLDEN.is_file(), f"no {GOLDEN.name}: run make golden and review it"
    expected = json.loads(GOLDEN.read_bytes())[name]
    got = findings(name, base)
    assert got["disagreements"] == expected["disagreements"]
    changed = {
        step: {"golden": expected["steps"].get(step), "now": now}
        for step, now in got["steps"].items()
        if expected["steps"].get(step) != now
    }
    missing = sorted(set(expected["steps"]) - set(got["steps"]))
    assert not changed and not missing, (
        f"{len(changed)} steps differ from {GOLDEN.name} (make golden after an intended change): "
        + json.dumps(changed, indent=1, ensure_ascii=False)[:4000]
        + (f"; steps gone: {missing}" if missing else "")
    )
