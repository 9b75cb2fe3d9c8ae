"""``casebridge synth``: deterministic, varied synthetic cases that convert and validate; invalid ones refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.domain.reader import parse_document, read_case, validate_case
from casebridge.errors import CaseSchemaError, ConversionError, InputError
from casebridge.mapping.engine import MappingSet
from casebridge.tools.synth import PATIENT_SYSTEM, SynthCase, generate
from casebridge.validation.service import load_validator
from casebridge.validation.validator import has_errors
from tests.conftest import RECORDED
from tests.paths import PROJECT_ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", "synth", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


def walk(node: object, path: str = "") -> Iterator[tuple[str, object]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def cases() -> list[SynthCase]:
    return list(generate(200, seed=0))


# --- the generator ------------------------------------------------------------------------------------------


def test_deterministic_and_prefix() -> None:
    first = [c.doc for c in generate(10, seed=5)]
    assert first == [c.doc for c in generate(10, seed=5)]
    assert first == [c.doc for c in generate(60, seed=5)][:10]  # case i does not depend on n
    assert first != [c.doc for c in generate(10, seed=6)]
    assert [c.name for c in generate(3)] == ["synth-000000", "synth-000001", "synth-000002"]


def test_invalid_share_leaves_the_valid_cases_unchanged() -> None:
    plain = list(generate(80, seed=2))
    mixed = list(generate(80, seed=2, invalid_share=0.5))
    assert [a.doc for a, b in zip(plain, mixed, strict=True) if b.valid] == [b.doc for b in mixed if b.valid]


def test_streaming() -> None:
    cases = generate(10**9, seed=1)  # nothing is built up front
    assert next(cases).name == "synth-000000"


@pytest.mark.parametrize(
    "kwargs",
    [{"n": -1}, {"n": 1, "seed": -1}, {"n": 1, "invalid_share": 1.5}, {"n": 1, "repeat_patient_share": -0.1}],
)
def test_arguments_out_of_range(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        generate(**kwargs)


def test_variety(cases: list[SynthCase]) -> None:
    docs = [c.doc for c in cases]
    assert all(c.valid for c in cases)
    assert {d["patient"]["sex"] for d in docs} >= {"female", "male"}
    ages = [d["patient"]["age_at_presentation"] for d in docs]
    years = [a["value"] if a["unit"] == "years" else 0 for a in ages]
    assert min(years) < 16 and max(years) > 70  # children to the elderly
    assert len({d["presentation"]["body_site"]["site"]["text"] for d in docs}) >= 8
    assert len({d["presentation"]["body_site"].get("laterality") for d in docs}) >= 3
    finals = Counter(d["final_diagnosis"]["condition"]["text"] for d in docs if "final_diagnosis" in d)
    assert len(finals) >= 6, finals
    assert {"Dystrophic calcification", "Lipoma", "Metastatic calcification"} <= set(finals)
    assert {d["final_diagnosis"]["verification"] for d in docs if "final_diagnosis" in d} == {
        "confirmed",
        "provisional",
    }
    kinds = [[s["kind"] for s in d["diagnostic_steps"]] for d in docs]
    assert sum("histopathology" in k for k in kinds) > 40 and sum("histopathology" not in k for k in kinds) > 40
    assert {k for ks in kinds for k in ks} == {
        "clinical_examination",
        "xray",
        "ultrasound",
        "ct",
        "mri",
        "laboratory",
        "histopathology",
    }
    assert len({tuple(k) for k in kinds}) > 30  # steps in varied subsets and orders
    tests = [t for d in docs for s in d["diagnostic_steps"] for t in s.get("tests", [])]
    assert {t.get("interpretation") for t in tests} >= {"normal", "high", "abnormal", None}
    assert any("value" not in t and t["reported_as"] for t in tests)  # "within normal range" without a value
    assert {t["value"]["unit"] for t in tests if "value" in t} >= {"mg/dL", "mmol/L", "U/L"}
    assert any(s.get("differential") for d in docs for s in d["diagnostic_steps"])
    assert any(d.get("history") for d in docs) and any(not d.get("history") for d in docs)
    assert any("possible_cause" in d.get("final_diagnosis", {}) for d in docs)


def test_no_personal_data_and_own_patients(cases: list[SynthCase]) -> None:
    for c in cases:
        patient = c.doc["patient"]
        assert set(patient) == {"identifier", "sex", "age_at_presentation"}
        assert patient["identifier"]["system"] == PATIENT_SYSTEM
        assert c.doc["source"]["kind"] == "synthetic" and "casebridge synth" in c.doc["source"]["citation"]
        assert "doi" not in c.doc["source"] and "authors" not in c.doc["source"]
        assert not [p for p, _ in walk(c.doc) if p.rsplit(".", 1)[-1] in ("name", "birth_date", "address")]
    identifiers = [c.patient_identifier["value"] for c in cases if c.patient_identifier]
    assert len(set(identifiers)) == len(cases)  # by default every case has its own patient


def days(doc: dict[str, Any]) -> float:
    age = doc["patient"]["age_at_presentation"]
    return float(age["value"] * (365.25 if age["unit"] == "years" else 30.44))


def test_follow_up_cases_share_an_earlier_patient() -> None:
    cases = list(generate(300, seed=4, repeat_patient_share=0.2))
    first_of: dict[str, dict[str, Any]] = {}
    follow_ups = 0
    for c in cases:
        ident = c.doc["patient"]["identifier"]["value"]
        if ident in first_of:
            follow_ups += 1
            earlier = first_of[ident]
            assert c.doc["patient"]["sex"] == earlier["patient"]["sex"]
            assert days(c.doc) >= days(earlier)  # some time later (whole years may not change)
            assert c.doc["source"]["statements"] == ["A follow-up case of a patient already in the registry."]
        else:
            first_of[ident] = c.doc
    assert 30 <= follow_ups <= 90
    assert len({c.doc["case_id"] for c in cases}) == len(cases)  # each its own case, even for the same patient


# --- valid cases convert and validate ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mappings() -> MappingSet:
    settings = Settings()
    return MappingSet.load(settings.mappings_dir, terminology=settings.terminology())


def test_valid_cases_convert(cases: list[SynthCase], mappings: MappingSet) -> None:
    for c in cases:
        bundle = mappings.convert(validate_case(c.doc, source=c.name), recorded=RECORDED, source=c.name)
        assert bundle["type"] == "transaction" and bundle["entry"]


def test_converted_bundles_validate(mappings: MappingSet) -> None:
    validator = load_validator(Settings())
    sample = [c for seed in (0, 11, 12345) for c in generate(20, seed=seed, repeat_patient_share=0.1)]
    for c in sample:
        bundle = mappings.convert(validate_case(c.doc, source=c.name), recorded=RECORDED, source=c.name)
        issues = validator.validate(bundle)
        assert not has_errors(issues), (c.name, [str(i) for i in issues if i.severity in ("error", "fatal")][:5])


# --- invalid cases are refused --------------------------------------------------------------------------------


def test_invalid_cases_are_refused(mappings: MappingSet) -> None:
    cases = list(generate(400, seed=9, invalid_share=0.4))
    invalid = [c for c in cases if not c.valid]
    assert 120 <= len(invalid) <= 200
    kinds: Counter[str] = Counter()
    for c in invalid:
        assert c.defect and c.refused_at in ("schema", "conversion")
        kinds[c.defect.split(":")[0].split(" (")[0]] += 1
        if c.refused_at == "schema":
            with pytest.raises(CaseSchemaError):
                validate_case(c.doc, source=c.name)
        else:
            case = validate_case(c.doc, source=c.name)  # the model accepts it; the code tables do not
            with pytest.raises(ConversionError):
                mappings.convert(case, source=c.name)
    assert len(kinds) >= 10, kinds
    assert {c.refused_at for c in invalid} == {"schema", "conversion"}
    assert all(c.defect is None and c.refused_at is None for c in cases if c.valid)


# --- the command line -----------------------------------------------------------------------------------------


def check_manifest(manifest: dict[str, Any], n: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = manifest["cases"]
    assert [e["name"] for e in entries] == [f"synth-{i:06d}" for i in range(n)]
    assert manifest["valid"] == sum(e["valid"] for e in entries) == n - manifest["invalid"]
    assert all(e["patient"]["system"] == PATIENT_SYSTEM for e in entries)
    assert all((e["defect"] is None) == e["valid"] for e in entries)
    return entries


def test_cli_yaml(tmp_path: Path, mappings: MappingSet) -> None:
    out = tmp_path / "cases"
    result = run("30", "--out", str(out), "--seed", "3", "--invalid-share", "0.3")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    entries = check_manifest(manifest, 30)
    valid = manifest["valid"]
    assert result.stderr.strip() == f"wrote 30 cases ({valid} valid, {30 - valid} invalid) to {out}"
    assert 0 < valid < 30
    assert sorted(p.name for p in out.iterdir()) == sorted([*(e["file"] for e in entries), "manifest.json"])
    expected = {c.name: c.doc for c in generate(30, seed=3, invalid_share=0.3)}
    for e in entries:
        path = out / e["file"]
        doc = parse_document(path.read_bytes(), source=str(path))
        assert doc == expected[e["name"]]
        assert doc["patient"]["identifier"] == e["patient"]
        if e["valid"]:
            mappings.convert(read_case(path.read_bytes(), source=str(path)), source=str(path))
        else:
            with pytest.raises(InputError):
                mappings.convert(read_case(path.read_bytes(), source=str(path)), source=str(path))


def test_cli_ndjson(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "cases.ndjson"
    result = run(
        "25", "--out", str(out), "--format", "ndjson", "--invalid-share", "0.2", "--repeat-patient-share", "0.3"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "deep" / "cases.ndjson.manifest.json").read_text())
    entries = check_manifest(manifest, 25)
    assert manifest["file"] == "cases.ndjson" and manifest["repeat_patient_share"] == 0.3
    lines = out.read_bytes().splitlines()
    assert len(lines) == 25 and [e["line"] for e in entries] == list(range(1, 26))
    expected = list(generate(25, invalid_share=0.2, repeat_patient_share=0.3))
    assert [json.loads(line) for line in lines] == [c.doc for c in expected]
    assert len({e["patient"]["value"] for e in entries}) < 25  # some follow-ups
    assert sorted(p.name for p in out.parent.iterdir()) == ["cases.ndjson", "cases.ndjson.manifest.json"]


def test_cli_json_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "cases"
    assert run("3", "--out", str(out), "--format", "json").returncode == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert json.loads((out / "synth-000002.json").read_text())["case_id"] == "synth-s0-000002"
    (out / "manifest.json").unlink()
    result = run("5", "--out", str(out), "--format", "json")  # synth-000000.json is still there
    assert result.returncode == 2
    assert f"{out / 'synth-000000.json'}: already exists" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == {
        k: v for k, v in before.items() if k != "manifest.json"
    }
    ndjson = tmp_path / "one.ndjson"
    ndjson.write_text("keep\n")
    result = run("2", "--out", str(ndjson), "--format", "ndjson")
    assert result.returncode == 2 and str(ndjson) in result.stderr
    assert ndjson.read_text() == "keep\n"


def said(stderr: str) -> str:
    """Standard error as one line: click's usage errors come in a rich box wrapped to the terminal's width."""
    return " ".join(stderr.translate(str.maketrans("", "", "│╭╮╰╯─")).split())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["0", "--out", "{tmp}/x"], "Invalid value for 'n': Input should be greater than or equal to 1"),
        (
            ["3", "--out", "{tmp}/x", "--invalid-share", "1.5"],
            "Invalid value for '--invalid-share': Input should be less than or equal to 1",
        ),
        (
            ["3", "--out", "{tmp}/x", "--seed", "-1"],
            "Invalid value for '--seed': Input should be greater than or equal to 0",
        ),
        (
            ["3", "--out", "{tmp}/x", "--format", "xml"],
            "Invalid value for '--format': Value error, 'xml' is not one of 'yaml', 'json', 'ndjson'.",
        ),
        (["3"], "Missing option '--out'."),
        (
            ["3", "--out", "{tmp}", "--format", "ndjson"],
            "{tmp}: is a folder; for --format ndjson, --out names the file to write",
        ),
        (["3", "--out", "{tmp}/file.txt"], "{tmp}/file.txt: is not a folder; for --format yaml, --out names a folder"),
    ],
)
def test_cli_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    result = run(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode == 2, result.stderr
    assert message.replace("{tmp}", str(tmp_path)) in said(result.stderr), result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]  # nothing written
