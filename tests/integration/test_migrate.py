"""``casebridge migrate``, run as a real process: a schema 1.0 case rewritten as 2.0 (to stdout, -o, --in-place)
converts to the same Bundle as the 1.0 file; a 2.0 file is left as it is; a broken file writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from casebridge.mapping.engine import MappingSet
from tests.conftest import CASES_V1, RECORDED, SEED, load_case
from tests.integration.test_cli import run

HEADER = "# Upgraded from case schema 1.0 by casebridge migrate"
LIPOMA_V1 = CASES_V1 / "lipoma-left-forearm.yaml"
METASTATIC_V1 = CASES_V1 / "metastatic-calcification-left-thigh.yaml"
SEED_V1 = CASES_V1 / SEED.name


def assert_same_bundle(mappings: MappingSet, migrated: Path, original: Path) -> None:
    text = migrated.read_text()
    assert text.startswith(HEADER)
    assert yaml.safe_load(text)["schema_version"] == "2.0"
    # The 1.0 file is upgraded in memory when read: the rewritten file must say exactly what that reading said.
    assert mappings.convert(load_case(migrated), recorded=RECORDED) == mappings.convert(
        load_case(original), recorded=RECORDED
    )


def test_migrate_to_stdout_to_a_file_and_in_place(mappings: MappingSet, tmp_path: Path) -> None:
    result = run("migrate", str(SEED_V1))
    assert result.returncode == 0, result.stderr
    assert "wrote" not in result.stderr
    (tmp_path / "seed.yaml").write_text(result.stdout)
    assert_same_bundle(mappings, tmp_path / "seed.yaml", SEED_V1)

    out = tmp_path / "out" / "lipoma.yaml"
    out.parent.mkdir()
    result = run("migrate", str(LIPOMA_V1), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "(schema 2.0)" in result.stderr
    assert [p.name for p in out.parent.iterdir()] == ["lipoma.yaml"]  # no temporary file left behind
    assert_same_bundle(mappings, out, LIPOMA_V1)

    # --in-place over a 1.0 file and a 2.0 file: the first is rewritten, the second left as it is.
    inplace, current = tmp_path / "metastatic.yaml", tmp_path / "current.yaml"
    shutil.copy(METASTATIC_V1, inplace)
    shutil.copy(SEED, current)
    result = run("migrate", "--in-place", str(inplace), str(current))
    assert result.returncode == 0, result.stderr
    assert_same_bundle(mappings, inplace, METASTATIC_V1)
    assert current.read_bytes() == SEED.read_bytes()
    assert "current.yaml: already schema 2.0; left as it is" in result.stderr


def test_a_broken_1_0_file_exits_2_naming_file_and_path_and_is_not_rewritten(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(LIPOMA_V1.read_text().replace("sex: female", "sex: f", 1))
    before = broken.read_bytes()
    assert before != LIPOMA_V1.read_bytes()
    result = run("migrate", "--in-place", str(broken))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "broken.yaml" in result.stderr and "patient.sex" in result.stderr
    assert "1.0 case model" in result.stderr
    assert broken.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["broken.yaml"]
    assert result.stdout == ""


def test_o_takes_one_file(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    result = run("migrate", str(LIPOMA_V1), str(METASTATIC_V1), "-o", str(out))
    assert result.returncode == 2
    assert "-o takes one case file" in result.stderr
    assert not out.exists()
