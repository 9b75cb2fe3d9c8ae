"""The flat registry CSV layout (mappings/registry-csv.yaml): checked when loaded, rows become cases, and a
CSV job goes through `casebridge ingest`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casebridge.domain.reader import validate_case
from casebridge.errors import InputError, MappingError
from casebridge.ingest.registry_csv import RegistryLayout
from casebridge.mapping.engine import MappingSet
from tests.paths import DATA_DIR, PROJECT_ROOT

LAYOUT = DATA_DIR / "mappings" / "registry-csv.yaml"
EXAMPLE = PROJECT_ROOT / "fixtures" / "registry" / "registry-example.csv"


def test_the_example_rows_become_cases_that_convert(mappings: MappingSet) -> None:
    layout = RegistryLayout.load(LAYOUT, root=PROJECT_ROOT)
    rows = list(layout.rows(EXAMPLE))
    assert [line for line, _ in rows] == [2, 3, 4, 5]
    first = rows[0][1]
    assert isinstance(first, dict)
    assert first["patient"] == {
        "identifier": {"system": "urn:example:registry", "value": "P-1001"},
        "sex": "female",
        "age_at_presentation": {"value": 34, "unit": "years"},
    }
    assert [s["kind"] for s in first["diagnostic_steps"]] == ["xray", "ultrasound", "laboratory", "histopathology"]
    assert first["diagnostic_steps"][2]["tests"][0]["value"] == {"value": 2.31, "unit": "mmol/L"}
    second = rows[1][1]
    assert isinstance(second, dict)
    assert "key" not in second["presentation"]["body_site"]["site"]  # an empty column leaves its element out
    assert "laterality" in second["presentation"]["body_site"]
    assert [s["kind"] for s in second["diagnostic_steps"]] == ["ultrasound", "histopathology"]
    third = rows[2][1]
    assert isinstance(third, dict) and "procedures" not in third and "specimens" not in third
    for _, doc in rows[:3]:
        assert isinstance(doc, dict)
        mappings.convert(validate_case(doc, source="row"))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("columns: {a: {required: true}}\ncase:\n  case_id: $b\n", 3, "$b: not a documented column"),
        ('columns: {a: {}}\ncase:\n  x: "$a:date"\n', 3, "a placeholder is"),
        ("columns: {A: {}}\ncase: {}\n", 1, "lowercase"),
        ("case: {}\n", 1, "no 'columns' section"),
        ("columns: {a: {}}\ncase: [\n", 3, "malformed YAML"),
    ],
)
def test_a_broken_layout_names_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "registry-csv.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as info:
        RegistryLayout.load(path, root=tmp_path)
    assert message in str(info.value)
    assert info.value.file == "registry-csv.yaml" and info.value.line == line


def test_a_csv_without_required_columns_is_refused(tmp_path: Path) -> None:
    csv_file = tmp_path / "r.csv"
    csv_file.write_text("case_id,sex\nx,female\n")
    with pytest.raises(InputError) as info:
        list(RegistryLayout.load(LAYOUT).rows(csv_file))
    assert "registry" in str(info.value) and "patient_id" in str(info.value)


def test_a_row_with_a_non_number_is_that_row_s_error(tmp_path: Path) -> None:
    lines = EXAMPLE.read_text().splitlines()
    csv_file = tmp_path / "r.csv"
    csv_file.write_text("\n".join([lines[0], lines[1].replace(",34,", ",thirty-four,"), lines[2]]) + "\n")
    rows = list(RegistryLayout.load(LAYOUT).rows(csv_file))
    assert isinstance(rows[0][1], InputError) and "age_years" in str(rows[0][1])
    assert isinstance(rows[1][1], dict)


def test_ingest_a_registry_csv(fhir_server: str, tmp_path: Path) -> None:
    state = tmp_path / "job.sqlite"
    result = subprocess.run(
        [sys.executable, "-m", "casebridge", "ingest", str(EXAMPLE), "--server", fhir_server, "--state", str(state)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
        check=False,
        env={**os.environ, "CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks")},
    )
    assert result.returncode == 1, result.stderr  # one invalid row, reported, not sent
    report = json.loads(state.with_name("job.report.json").read_text())
    assert report["counts"]["pushed"] == 3 and report["counts"]["invalid"] == 1
    assert report["invalid"][0]["key"] == "case:reg-0004"  # keyed by the case's own id, not by its line
    assert report["invalid"][0]["location"].endswith("registry-example.csv:5")
    assert "patient.sex" in report["invalid"][0]["reason"]
