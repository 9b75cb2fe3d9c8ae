"""scripts/case_coverage.py: quotes checked verbatim, annotated entities counted as covered or not."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("case_coverage", ROOT / "scripts" / "case_coverage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


cov = _load()

TEXT = "A 28-year-old man had fever and cough.\nThe fever resolved after the left\n  knee was drained.\n"


def _ann(*entities: tuple[str, list[tuple[int, int]]]) -> str:
    """brat T lines for (type, ranges) over TEXT, the text field as brat writes it."""
    lines = []
    for number, (kind, ranges) in enumerate(entities, 1):
        spans = ";".join(f"{s} {e}" for s, e in ranges)
        words = " ".join(TEXT[s:e] for s, e in ranges).replace("\n", " ")
        lines.append(f"T{number}\t{kind} {spans}\t{words}")
    return "\n".join(lines) + "\n"


def _span(word: str, nth: int = 0) -> tuple[int, int]:
    start = [m.start() for m in re.finditer(re.escape(word), TEXT)][nth]
    return (start, start + len(word))


def _write(folder: Path, case: str, ann: str, pmid: str = "123", text: str = TEXT) -> Path:
    (folder / f"{pmid}.txt").write_text(text, encoding="utf-8")
    (folder / f"{pmid}.ann").write_text(ann, encoding="utf-8")
    (folder / f"{pmid}.yaml").write_text(case, encoding="utf-8")
    return folder / f"{pmid}.yaml"


def _measure(path: Path) -> tuple[Any, list[Any]]:
    errors: list[Any] = []
    return cov.measure(path, errors), errors


def test_entities_inside_a_quote_are_covered_the_others_not(tmp_path: Path) -> None:
    ann = _ann(
        ("Age", [_span("28-year-old")]),
        ("Sex", [_span("man")]),
        ("Sign_symptom", [_span("fever")]),
        ("Sign_symptom", [_span("cough")]),
    )
    case = _write(tmp_path, 'patient: {quote: "A 28-year-old man"}\npresentation: {quote: "had fever and"}\n', ann)
    report, errors = _measure(case)
    assert errors == []
    assert [e.id for e in report.uncovered] == ["T4"]
    assert (len(report.entities), report.covered, report.quotes) == (4, 3, 2)

    assert cov.main([str(tmp_path)]) == 1  # 75% < 95%
    assert cov.main([str(tmp_path), "--min", "75"]) == 0


def test_an_entity_partly_inside_a_quote_is_not_covered(tmp_path: Path) -> None:
    case = _write(tmp_path, 'a: {quote: "28-year"}\n', _ann(("Age", [_span("28-year-old")])))
    report, _ = _measure(case)
    assert report.covered == 0


def test_every_occurrence_of_a_quote_counts(tmp_path: Path) -> None:
    ann = _ann(("Sign_symptom", [_span("fever", 0)]), ("Sign_symptom", [_span("fever", 1)]))
    report, _ = _measure(_write(tmp_path, 'x: [{quote: "fever"}]\n', ann))
    assert report.covered == 2


def test_a_discontinuous_entity_needs_every_fragment_covered(tmp_path: Path) -> None:
    # "left ... drained" as one entity of two fragments; the words between them are no part of it.
    ann = _ann(("Therapeutic_procedure", [_span("left"), _span("drained")]))
    one = _write(tmp_path, 'x: {quote: "left"}\n', ann)
    assert _measure(one)[0].covered == 0
    both = _write(tmp_path, 'x: {quote: "left"}\ny: {quote: "drained"}\n', ann)
    assert _measure(both)[0].covered == 1


def test_whitespace_inside_an_entity_need_not_be_covered(tmp_path: Path) -> None:
    start, end = _span("left\n  knee")
    report, _ = _measure(
        _write(tmp_path, 'x: {quote: "left"}\ny: {quote: "knee"}\n', _ann(("Biological_structure", [(start, end)])))
    )
    assert report.covered == 1


def test_a_quote_matches_with_whitespace_runs_normalised(tmp_path: Path) -> None:
    start, end = _span("left\n  knee")
    assert cov.locate(TEXT, "left knee") == [(start, end)]
    assert cov.locate(TEXT, "the  left   knee was") == [(start - 4, end + 4)]
    assert cov.locate(TEXT, "leftknee") == []
    # The YAML folded style turns the report's line break into a space: still verbatim.
    case = "x:\n  quote: >-\n    after the left\n    knee was drained.\n"
    report, errors = _measure(_write(tmp_path, case, _ann(("Biological_structure", [(start, end)]))))
    assert errors == []
    assert report.covered == 1


def test_a_quote_not_in_the_report_fails_naming_its_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = (
        'patient: {quote: "A 28-year-old man"}\n'
        "diagnostic_steps:\n"
        '  - {id: a, quote: "fever"}\n'
        '  - id: b\n    findings:\n      - {quote: "cough"}\n      - {quote: "A 28 year old man with a fever"}\n'
    )
    _write(tmp_path, case, _ann(("Age", [_span("28-year-old")])))
    assert cov.main([str(tmp_path), "--min", "0"]) == 1
    err = capsys.readouterr().err
    assert "123.yaml: diagnostic_steps[1].findings[1].quote" in err
    assert "A 28 year old man with a fever" in err
    assert "findings[0]" not in err


@pytest.mark.parametrize(("quote", "problem"), [('""', "empty quote"), ("' '", "empty quote"), ("28", "not text")])
def test_an_empty_or_non_text_quote_is_an_error(tmp_path: Path, quote: str, problem: str) -> None:
    _, errors = _measure(_write(tmp_path, f"x: {{quote: {quote}}}\n", _ann(("Sex", [_span("man")]))))
    assert [(e.path, problem in e.problem) for e in errors] == [("x.quote", True)]


def test_quotes_of_unrepresented_facts_cover_nothing(tmp_path: Path) -> None:
    case = 'patient: {sex: male}\nunrepresented:\n  - {quote: "A 28-year-old man", why: "no field"}\n'
    report, errors = _measure(_write(tmp_path, case, _ann(("Sex", [_span("man")]))))
    assert errors == []
    assert (report.covered, report.quotes, report.unrepresented) == (0, 0, 1)


def test_an_unrepresented_quote_is_still_checked_verbatim(tmp_path: Path) -> None:
    case = 'unrepresented:\n  - {quote: "a 28-year-old man", why: "no field"}\n'
    _, errors = _measure(_write(tmp_path, case, _ann(("Sex", [_span("man")]))))
    assert [e.path for e in errors] == ["unrepresented[0].quote"]


def test_only_the_listed_entity_types_are_counted(tmp_path: Path) -> None:
    ann = _ann(
        ("Sign_symptom", [_span("cough")]),
        ("Detailed_description", [_span("left")]),
        ("Clinical_event", [_span("resolved")]),
        ("Biological_structure", [_span("knee")]),
    )
    ann += "E1\tSign_symptom:T1 \nR1\tMODIFY Arg1:T2 Arg2:T4\nA1\tPOLARITY E1 NEG\n*\tOVERLAP T1 T3\n"
    report, _ = _measure(_write(tmp_path, 'x: {quote: "cough"}\n', ann))
    assert sorted(e.type for e in report.entities) == ["Biological_structure", "Sign_symptom"]
    assert [e.type for e in report.uncovered] == ["Biological_structure"]
    assert "Outcome" in cov.ENTITY_TYPES and "Detailed_description" not in cov.ENTITY_TYPES


@pytest.mark.parametrize(
    "line",
    [
        "T1\tSign_symptom 22 27",  # no text field
        "T1\tSign_symptom 22-27\tfever",
        "T1\tSign_symptom 22 27;30\tfever",
        "T1\tSign_symptom 22 2700\tfever",  # beyond the text
        "T1\tSign_symptom 22 27\tcough",  # not the text at that span
    ],
)
def test_a_malformed_ann_line_is_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str) -> None:
    _write(tmp_path, 'x: {quote: "fever"}\n', _ann(("Sex", [_span("man")])) + line + "\n")
    assert cov.main([str(tmp_path)]) == 2
    assert f"{tmp_path / '123.ann'}:2:" in capsys.readouterr().err


def test_a_missing_report_file_is_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, 'x: {quote: "fever"}\n', _ann(("Sex", [_span("man")])))
    (tmp_path / "123.ann").unlink()
    assert cov.main([str(tmp_path)]) == 2
    assert "123.ann is missing" in capsys.readouterr().err
    assert cov.main([str(tmp_path / "nowhere")]) == 2


def test_the_table_json_and_missing_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ann = _ann(("Sex", [_span("man")]), ("Sign_symptom", [_span("cough")]), ("Sign_symptom", [_span("fever", 1)]))
    _write(tmp_path, 'x: {quote: "man"}\nunrepresented: [{quote: "fever", why: "none"}]\n', ann)
    _write(tmp_path, 'x: {quote: "fever"}\n', _ann(("Sign_symptom", [_span("fever")])), pmid="456")
    out_file = tmp_path / "figures.json"
    assert cov.main([str(tmp_path), "--show-missing", "--json", str(out_file)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^123 +3 +1 +33\.3 +1 +1  Sign_symptom 2$", out, re.M)
    assert re.search(r"^total +4 +2 +50\.0 +2 +1  Sign_symptom 2$", out, re.M)
    assert "'cough' at 32: A 28-year-old man had fever and [[cough]]." in out
    assert "[[fever]] resolved after the left knee was drained." in out
    figures = json.loads(out_file.read_text(encoding="utf-8"))
    assert figures["passed"] is False
    assert figures["total"] == {
        "entities": 4,
        "covered": 2,
        "percent": 50.0,
        "uncovered_by_type": {"Sign_symptom": 2},
        "quotes": 2,
        "unrepresented": 1,
    }
    assert [r["pmid"] for r in figures["reports"]] == ["123", "456"]
    assert figures["reports"][0]["uncovered"][0] == {
        "id": "T2",
        "type": "Sign_symptom",
        "text": "cough",
        "ranges": [[32, 37]],
    }


def test_maccrobat_fixtures_cover_95_percent(tmp_path: Path) -> None:
    """The transcribed MACCROBAT fixtures: at least 12, every quote verbatim, >= 95% of the entities covered."""
    folder = ROOT / "fixtures" / "cases"
    cases = [p for p in folder.glob("*.yaml") if p.stem.isdigit()]
    assert len(cases) >= 12, f"{len(cases)} MACCROBAT fixtures in fixtures/cases, 12 wanted"
    figures_file = tmp_path / "figures.json"
    script = ROOT / "scripts" / "case_coverage.py"
    run = subprocess.run(  # the script as transcribers run it, not only its functions
        [sys.executable, str(script), str(folder), "--min", "95", "--json", str(figures_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(figures_file.read_text(encoding="utf-8"))
    assert figures["quote_errors"] == []
    assert len(figures["reports"]) == len(cases)
    assert figures["total"]["covered"] * 100 >= 95 * figures["total"]["entities"] > 0


def test_a_quote_of_several_passages_covers_each_and_each_must_be_verbatim(tmp_path: Path) -> None:
    ann = _ann(("Sign_symptom", [_span("cough")]), ("Biological_structure", [_span("knee")]))
    case = _write(tmp_path, 'x: {quote: ["and cough.", "knee was drained"]}\n', ann)
    report, errors = _measure(case)
    assert errors == [] and report.covered == 2
    # the model's joined form reads the same
    joined = _write(tmp_path, f'x: {{quote: "and cough.{cov.QUOTE_JOIN}knee was drained"}}\n', ann)
    assert _measure(joined)[0].covered == 2
    _write(tmp_path, 'x: {quote: ["and cough.", "knee was removed"]}\n', ann)
    report, errors = _measure(case)
    assert [e.quote for e in errors] == ["knee was removed"] and report.covered == 1


def test_the_script_joins_passages_as_the_case_model_does() -> None:
    from casebridge.domain.case import QUOTE_JOIN

    assert cov.QUOTE_JOIN == QUOTE_JOIN
