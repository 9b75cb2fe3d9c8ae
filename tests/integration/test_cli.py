"""The casebridge command line, run as a real process: outputs, exit codes and error messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.conftest import SEED
from tests.paths import DATA_DIR, PROJECT_ROOT

INVALID = PROJECT_ROOT / "fixtures" / "invalid"
EXPECTED = json.loads((INVALID / "expected.json").read_text()) if (INVALID / "expected.json").is_file() else {}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


def test_convert_to_stdout() -> None:
    result = run("convert", str(SEED))
    assert result.returncode == 0, result.stderr
    Bundle.model_validate(json.loads(result.stdout))


def test_convert_to_file(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "bundle.json"
    result = run("convert", str(SEED), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert len(json.loads(out.read_text())["entry"]) > 30
    assert [p.name for p in out.parent.iterdir()] == ["bundle.json"]  # no temporary file left behind


def test_demo_prints_the_resources() -> None:
    result = run("demo")
    assert result.returncode == 0, result.stderr
    for words in (
        "ijsra-2026-18-3-0536",
        "Final diagnosis: Dystrophic calcification",
        "Serum calcium",
        "Histopathology report",
        "ImagingStudy",
    ):
        assert words in result.stdout


def test_schema_is_published_and_current() -> None:
    result = run("schema")
    assert result.returncode == 0
    published = DATA_DIR / "schemas" / "case-report-2.0.schema.json"
    assert json.loads(result.stdout) == json.loads(published.read_text()), "run `make schema` and commit it"


def test_check_mappings() -> None:
    result = run("check-mappings")
    assert result.returncode == 0, result.stderr
    assert "checked against case-codes.yaml" in result.stdout


# --- bad input: exit 2, a message naming the file and the field path, nothing written -----------------------


def _assert_rejected(result: subprocess.CompletedProcess[str], name: str, out: Path) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert name in result.stderr, result.stderr
    assert result.stdout == ""
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_invalid_fixture_is_rejected(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out" / "bundle.json"
    out.parent.mkdir()
    result = run("convert", str(INVALID / name), "-o", str(out))
    _assert_rejected(result, name, out)
    for words in EXPECTED[name]:
        assert words in result.stderr, f"{words!r} not in: {result.stderr}"


def test_every_invalid_fixture_has_an_expectation() -> None:
    files = {p.name for p in INVALID.iterdir() if p.name not in ("README.md", "expected.json")}
    assert files and files == set(EXPECTED)


def test_a_20_mb_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b'{"schema_version": "1.0", "padding": "' + b"x" * (20 * 1024 * 1024) + b'"}')
    out = tmp_path / "out" / "bundle.json"
    out.parent.mkdir()
    result = run("convert", str(big), "-o", str(out))
    _assert_rejected(result, "big.json", out)
    assert "limit" in result.stderr


def test_a_missing_file(tmp_path: Path) -> None:
    result = run("convert", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_a_broken_mapping_folder_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "bundle.yaml").write_text("request: put\n")
    result = run("convert", str(SEED), env={"CASEBRIDGE_MAPPINGS_DIR": str(tmp_path)})
    assert result.returncode == 3
    assert "identifier_system" in result.stderr and "bundle.yaml" in result.stderr
    assert result.stdout == ""


def test_a_wrong_setting_fails_fast(tmp_path: Path) -> None:
    result = run("convert", str(SEED), env={"CASEBRIDGE_MAPPINGS_DIR": str(tmp_path / "missing")})
    assert result.returncode == 3
    assert "mappings_dir" in result.stderr and "Traceback" not in result.stderr


def test_a_device_is_refused_without_reading_it() -> None:
    result = run("convert", "/dev/zero")
    assert result.returncode == 2
    assert "not a regular file" in result.stderr


def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "case.yaml"
    os.mkfifo(fifo)
    result = run("convert", str(fifo))  # run() has a 60 s timeout: a hang would fail the test
    assert result.returncode == 2
    assert "not a regular file" in result.stderr


def test_a_huge_integer_is_bad_input(tmp_path: Path) -> None:
    case = tmp_path / "case.json"
    case.write_text('{"schema_version": "1.0", "x": ' + "9" * 5000 + "}")
    result = run("convert", str(case))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "case.json" in result.stderr


def test_an_unwritable_output_is_bad_input(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("convert", str(SEED), "-o", str(blocker / "bundle.json"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot write the Bundle" in result.stderr


def _broken_mappings(tmp_path: Path, old: str, new: str) -> Path:
    import shutil

    folder = tmp_path / "mappings"
    shutil.copytree(DATA_DIR / "mappings", folder)
    template = folder / "resources" / "observation.yaml"
    text = template.read_text()
    assert old in text
    template.write_text(text.replace(old, new, 1))
    return folder


def test_a_template_failing_at_run_time_names_its_file_and_line(tmp_path: Path) -> None:
    folder = _broken_mappings(
        tmp_path,
        'code: "{{ concept(case.presentation.complaint) }}"',
        'code: "{{ concept(case.presentation.suspected) }}"',
    )
    result = run("convert", str(SEED), env={"CASEBRIDGE_MAPPINGS_DIR": str(folder)})
    assert result.returncode == 3, result.stderr
    assert "mappings/resources/observation.yaml:" in result.stderr and "presenting-complaint" in result.stderr


def test_a_template_producing_invalid_fhir_writes_nothing(tmp_path: Path) -> None:
    folder = _broken_mappings(tmp_path, "valueBoolean: true", 'valueBoolean: "{{ case.presentation.course }}"')
    out = tmp_path / "out" / "bundle.json"
    result = run("convert", str(SEED), "-o", str(out), env={"CASEBRIDGE_MAPPINGS_DIR": str(folder)})
    assert result.returncode == 3, result.stderr
    assert "not valid FHIR R4" in result.stderr and "valueBoolean" in result.stderr
    assert not out.exists()
