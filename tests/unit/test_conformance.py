"""The conformance scorer: a tiny manifest folder with exact scores, the CLI, and the real HL7 folder end to end."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from casebridge.cli.conformance import conformance
from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex, PackageError
from casebridge.tools.conformance import (
    NO_MODULE,
    ConformanceError,
    Disagreement,
    Finding,
    OverlayDefinitions,
    load_base_index,
    run_conformance,
)
from tests.conftest import pinned_packages_missing
from tests.paths import TESTS_DIR

HL7_CASES = TESTS_DIR / "data" / "conformance" / "fhir-test-cases-r4"
PROFILE_URL = "http://example.org/fhir/StructureDefinition/patient-with-identifier"


@pytest.fixture(scope="module")
def base() -> DefinitionIndex:
    try:
        return load_base_index(Settings())
    except PackageError as exc:
        pinned_packages_missing(f"the pinned FHIR packages are not installed: {exc}")


def outcome(*issues: tuple[str, str, str]) -> dict[str, Any]:
    """An OperationOutcome of (severity, expression, message) issues."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": s, "code": "processing", "details": {"text": m}, "expression": [e]} for s, e, m in issues
        ],
    }


def write(folder: Path, name: str, doc: Any) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def identifier_profile(base: DefinitionIndex) -> dict[str, Any]:
    """The core Patient snapshot (from hl7.fhir.r4.examples) as a profile that requires an identifier."""
    core = base.core_definition("Patient")
    assert core is not None
    sd = copy.deepcopy(core)
    sd.update(
        url=PROFILE_URL,
        name="PatientWithIdentifier",
        derivation="constraint",
        baseDefinition="http://hl7.org/fhir/StructureDefinition/Patient",
    )
    sd.pop("differential", None)
    for element in sd["snapshot"]["element"]:
        if element["id"] == "Patient.identifier":
            element["min"] = 1
    return sd


@pytest.fixture
def cases(tmp_path: Path, base: DefinitionIndex) -> Path:
    """Five cases: valid, invalid (an unknown element), a profile step, a legacy count, an XML instance."""
    write(tmp_path, "good.json", {"resourceType": "Patient", "id": "good", "active": True})
    write(tmp_path, "unknown.json", {"resourceType": "Patient", "unknownElement": 1})
    write(tmp_path, "bad-date.json", {"resourceType": "Patient", "birthDate": "not a date"})
    # XML outside the FHIR namespace: the reader refuses it, so the step cannot run.
    write(tmp_path, "patient.xml", '<Patient><active value="true"/></Patient>')
    write(tmp_path, "profiles/patient-with-identifier.json", identifier_profile(base))
    write(tmp_path, "outcomes/java/good.json", outcome(("warning", "Patient", "no narrative")))
    write(
        tmp_path,
        "outcomes/java/unknown.json",
        outcome(("error", "Patient", "Unrecognized property 'unknownElement'"), ("information", "Patient", "fyi")),
    )
    identifier_error = "Patient.identifier: minimum required = 1, but only found 0"
    # Two errors: we find the first, not the second (which only tests recall).
    write(
        tmp_path,
        "outcomes/java/profile.json",
        outcome(("error", "Patient", identifier_error), ("fatal", "Patient.active", "something we do not check")),
    )
    manifest = {
        "test-cases": [
            {"name": "patient-good", "file": "good.json", "version": "4.0", "module": "t", "java": "java/good.json"},
            {"name": "patient-unknown", "file": "unknown.json", "java": "java/unknown.json", "firely-sdk-wip": "x"},
            {
                "name": "patient-profile",
                "file": "good.json",
                "java": {"outcome": {"resourceType": "OperationOutcome"}},
                "profile": {"source": "profiles/patient-with-identifier.json", "java": "java/profile.json"},
            },
            # Legacy: Java counted no error, we find one (the date): a disagreement.
            {"name": "legacy-count", "file": "bad-date.json", "java": {"errorCount": 0, "output": []}},
            {"name": "xml-instance", "file": "patient.xml", "java": {"errorCount": 0}},
        ]
    }
    write(tmp_path, "manifest.json", manifest)
    return tmp_path


def test_the_tiny_folder_scores_exactly(cases: Path, base: DefinitionIndex) -> None:
    report = run_conformance(cases, base)
    assert report.cases == 5
    assert [(r.case, r.step, r.status) for r in report.results] == [
        ("patient-good", "base", "ran"),
        ("patient-unknown", "base", "ran"),
        ("patient-profile", "base", "ran"),
        ("patient-profile", "profile", "ran"),
        ("legacy-count", "base", "ran"),
        ("xml-instance", "base", "unsupported"),
    ]
    profile_step = report.results[3]
    assert [f.expression for f in profile_step.ours] == ["Patient"]
    assert "Patient.identifier: minimum required = 1" in profile_step.ours[0].message

    b = report.scores("base")
    assert (b.steps, b.ran, b.unsupported, b.crashed, b.agree) == (5, 4, 1, 0, 3)
    assert (b.valid_valid, b.valid_invalid, b.invalid_valid, b.invalid_invalid) == (2, 1, 0, 1)
    assert (b.agreement_all, b.agreement_ran, b.same_count_rate) == (60.0, 75.0, 75.0)
    # The legacy case lists no issues: expressions are scored over the other three.
    assert (b.scored, b.ours_errors, b.their_errors, b.matched) == (3, 1, 1, 1)
    assert (b.precision, b.recall) == (100.0, 100.0)

    p = report.scores("profile")
    assert (p.steps, p.ran, p.agree, p.invalid_invalid) == (1, 1, 1, 1)
    assert (p.agreement_all, p.agreement_ran, p.same_count_rate) == (100.0, 100.0, 0.0)
    assert (p.ours_errors, p.their_errors, p.matched, p.precision, p.recall) == (1, 2, 1, 100.0, 50.0)

    a = report.scores()
    assert (a.steps, a.ran, a.agree, a.agreement_all, a.agreement_ran, a.same_count_rate) == (6, 5, 4, 66.7, 80.0, 60.0)
    assert (a.precision, a.recall) == (100.0, 66.7)

    assert report.disagreements == [
        Disagreement(
            "legacy-count",
            "base",
            expected_valid=True,
            ours_valid=False,
            expected_error_count=0,
            expected=None,
            ours=(Finding("Patient.birthDate", report.results[4].ours[0].message),),
        )
    ]
    assert [(r.case, r.step) for r in report.not_run] == [("xml-instance", "base")]
    assert "FHIR namespace" in report.not_run[0].reason

    # Only patient-good names a module: the other steps fall under NO_MODULE, listed last.
    modules = report.modules()
    assert list(modules) == ["t", NO_MODULE]
    assert (modules["t"].steps, modules["t"].agree) == (1, 1)
    assert (modules[NO_MODULE].steps, modules[NO_MODULE].agree, modules[NO_MODULE].unsupported) == (5, 3, 1)

    doc = json.loads(report.to_json())
    assert doc["scores"]["all"]["recall"] == 66.7
    assert doc["modules"]["t"]["verdictAgreementAll"] == 100.0
    assert doc["results"][0]["module"] == "t" and doc["results"][1]["module"] == NO_MODULE
    assert doc["notRun"][0]["status"] == "unsupported"
    assert len(doc["results"]) == 6


def test_each_step_sees_only_its_own_definitions(tmp_path: Path, base: DefinitionIndex) -> None:
    """A profile loaded by one case (or by a profile step) must not be known to the next case."""
    claims = {"resourceType": "Patient", "meta": {"profile": [PROFILE_URL]}}
    write(tmp_path, "claims.json", claims)
    write(tmp_path, "sd.json", identifier_profile(base))
    write(tmp_path, "outcomes/none.json", outcome())
    write(
        tmp_path,
        "manifest.json",
        {
            "test-cases": [
                {"name": "loads", "file": "claims.json", "supporting": ["sd.json"], "java": "none.json"},
                {"name": "does-not", "file": "claims.json", "java": "none.json"},
            ]
        },
    )
    loads, does_not = run_conformance(tmp_path, base).results
    assert ["minimum required = 1" in f.message for f in loads.ours] == [True]
    assert does_not.ours == ()  # an unknown claimed profile is a warning (not checked), as the HL7 validator says


def test_unusable_steps_are_listed_not_dropped(tmp_path: Path, base: DefinitionIndex) -> None:
    write(tmp_path, "p.json", {"resourceType": "Patient"})
    write(
        tmp_path,
        "manifest.json",
        {
            "test-cases": [
                {"name": "no-outcome-file", "file": "p.json", "java": "java/missing.json"},
                {"name": "missing-support", "file": "p.json", "supporting": ["nope.json"], "java": {"errorCount": 0}},
                {"name": "escapes", "file": "../p.json", "java": {"errorCount": 0}},
                {
                    "name": "xml-profile",
                    "file": "p.json",
                    "java": {"errorCount": 0},
                    "profile": {"source": "x.xml", "java": {"errorCount": 0}},
                },
                {"name": "xml-profile", "file": "p.json", "java": {"errorCount": 0}},
            ]
        },
    )
    report = run_conformance(tmp_path, base)
    assert [(r.case, r.step, r.status) for r in report.results] == [
        ("no-outcome-file", "base", "unsupported"),
        ("missing-support", "base", "unsupported"),
        ("escapes", "base", "unsupported"),
        ("xml-profile", "base", "ran"),
        ("xml-profile", "profile", "unsupported"),
        ("xml-profile#2", "base", "ran"),  # a repeated name is made unique
    ]
    assert "does not exist" in report.results[0].reason
    assert "nope.json does not exist" in report.results[1].reason
    assert "outside" in report.results[2].reason
    assert report.scores().agreement_all == 33.3  # two of six agree: the unsupported count against us


def test_a_folder_without_a_manifest_is_refused(tmp_path: Path, base: DefinitionIndex) -> None:
    with pytest.raises(ConformanceError, match=r"no manifest\.json"):
        run_conformance(tmp_path, base)
    (tmp_path / "manifest.json").write_text('{"cases": []}')
    with pytest.raises(ConformanceError, match="'test-cases'"):
        run_conformance(tmp_path, base)


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("conformance")(conformance)

    @app.callback()
    def _root() -> None:  # a group, so that the command is called by name as under casebridge
        pass

    return app


def test_cli_prints_the_summary_and_writes_json(cases: Path, tmp_path: Path) -> None:
    out = tmp_path / "report" / "conformance.json"
    result = CliRunner().invoke(cli(), ["conformance", str(cases), "--json-out", str(out), "--show", "5"])
    assert result.exit_code == 0, result.output
    assert "5 cases, 6 steps (5 base, 1 profile)" in result.output
    assert "xml-instance [base] unsupported" in result.output
    assert "legacy-count [base]: expected valid, ours invalid (1 error)" in result.output
    assert re.search(r"^t +1 +1 +0 +0 +100\.0%", result.output, re.MULTILINE), result.output
    assert json.loads(out.read_text())["cases"] == 5


def test_cli_case_filter(cases: Path) -> None:
    result = CliRunner().invoke(cli(), ["conformance", str(cases), "--case", "patient-"])
    assert result.exit_code == 0, result.output
    assert "3 cases, 4 steps (3 base, 1 profile)" in result.output
    assert "No verdict disagreements." in result.output


def test_cli_without_a_manifest_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli(), ["conformance", str(tmp_path)])
    assert result.exit_code == 2
    assert f"no manifest.json in {tmp_path}" in result.output
    assert "Traceback" not in result.output


def test_the_real_hl7_folder_runs_end_to_end(base: DefinitionIndex) -> None:
    started = time.perf_counter()
    report = run_conformance(HL7_CASES)  # builds its own package index, as the CLI does
    seconds = time.perf_counter() - started
    entries = json.loads((HL7_CASES / "manifest.json").read_text())["test-cases"]
    assert report.cases == len(entries) == 82
    profile_steps = sum(1 for e in entries if "profile" in e)
    assert len(report.results) == 82 + profile_steps
    assert sum(1 for r in report.results if r.step == "base") == 82
    assert {r.status for r in report.results} <= {"ran", "unsupported", "crashed"}
    assert len({(r.case, r.step) for r in report.results}) == len(report.results)
    assert seconds < 120
    # The target: the same verdict as the HL7 Java validator on at least 95% of all steps (a step that
    # cannot run counts as a disagreement), and nothing crashes.
    assert report.scores().agreement_all >= 97.0, report.scores()
    assert (report.scores().precision or 0) >= 95.0 and (report.scores().recall or 0) >= 85.0, report.scores()
    assert not [r for r in report.results if r.status == "crashed"]


def test_a_profile_source_may_be_a_canonical_and_a_crash_is_reported(
    tmp_path: Path, base: DefinitionIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "p.json", {"resourceType": "Patient"})
    write(tmp_path, "sd.json", identifier_profile(base))
    write(
        tmp_path,
        "manifest.json",
        {
            "test-cases": [
                {
                    "name": "by-url",
                    "file": "p.json",
                    "supporting": ["sd.json"],
                    "java": {"errorCount": 0},
                    "profile": {"source": PROFILE_URL, "java": {"errorCount": 1}},
                }
            ]
        },
    )
    base_step, profile_step = run_conformance(tmp_path, base).results
    assert (base_step.agrees, profile_step.agrees) == (True, True)
    assert "minimum required = 1" in profile_step.ours[0].message

    def boom(*args: object) -> None:
        raise KeyError("snapshot")

    monkeypatch.setattr("casebridge.tools.conformance.Validator.validate", boom)
    report = run_conformance(tmp_path, base)
    assert [r.status for r in report.results] == ["crashed", "crashed"]
    assert report.results[0].reason.startswith("KeyError: 'snapshot' at test_conformance.py:")
    assert report.scores().crashed == 2


WIDE_CASES = TESTS_DIR / "data" / "conformance" / "fhir-test-cases-r4-wide"


def test_the_wide_hl7_slice_holds_its_score(base: DefinitionIndex) -> None:
    """The wider official slice (218 cases, JSON and XML, every module): issue H's target is 97% of all steps, and
    no step may crash or go unrun; the figures below are close to today's (99.6%, precision 98.6%, recall 96.0%),
    so a rule that breaks agreement fails here."""
    report = run_conformance(WIDE_CASES)
    scores = report.scores()
    assert report.cases == 218 and len(report.results) == 274
    assert not [r for r in report.results if r.status != "ran"], [r.case for r in report.results if r.status != "ran"]
    assert scores.agreement_all >= 99.0, scores
    # Error expressions as the Java validator places them (issue H: precision >= 90%, recall >= 85%).
    assert scores.precision is not None and scores.precision >= 97.0, scores
    assert scores.recall is not None and scores.recall >= 94.0, scores
    # Every module the manifest names at >= 90% (the one case naming none has an outcome that belongs to
    # another resource: the manifest repeats its name for the real one).
    modules = {name: s.agreement_all for name, s in report.modules().items() if name != NO_MODULE}
    assert modules and all(a is not None and a >= 90.0 for a in modules.values()), modules


def test_a_case_specialisation_of_a_core_type_does_not_hide_the_core_definition(
    tmp_path: Path, base: DefinitionIndex
) -> None:
    """A profile mislabelled as a specialisation of Practitioner is a profile, not Practitioner's definition."""
    mislabelled = {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/PractitionerProfile",
        "name": "PractitionerProfile",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Practitioner",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Practitioner",
        "derivation": "specialization",
        "differential": {"element": [{"id": "Practitioner.telecom", "path": "Practitioner.telecom", "min": 1}]},
    }
    write(tmp_path, "profile.json", mislabelled)
    overlay = OverlayDefinitions(base)
    assert overlay.add_path(tmp_path / "profile.json") == 1
    core = overlay.core_definition("Practitioner")
    assert core is not None and core["url"] == "http://hl7.org/fhir/StructureDefinition/Practitioner"
    # A loose type of its own (a logical model) is still found by its type name.
    model = {**mislabelled, "url": "http://example.org/StructureDefinition/Model", "type": "Model", "kind": "logical"}
    write(tmp_path, "model.json", model)
    overlay.add_path(tmp_path / "model.json")
    assert (overlay.core_definition("Model") or {}).get("url") == model["url"]
