"""A broken mapping folder fails at load, with an error that names the file and the line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from casebridge.errors import MappingError
from casebridge.mapping.engine import MappingSet
from tests.conftest import SEED, TERMINOLOGY, load_case
from tests.paths import DATA_DIR

MAPPINGS = DATA_DIR / "mappings"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    return target


def edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (which must occur once) and return the 1-based line where it was."""
    text = path.read_text()
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def load_error(folder: Path) -> MappingError:
    with pytest.raises(MappingError) as info:
        MappingSet.load(folder, terminology=TERMINOLOGY)
    return info.value


def test_the_shipped_mappings_load_and_convert() -> None:
    mappings = MappingSet.load(MAPPINGS, terminology=TERMINOLOGY)
    assert mappings.convert(load_case(SEED))["entry"]


@pytest.mark.parametrize(
    ("file", "old", "new", "message"),
    [
        # expressions are checked against the case model
        (
            "resources/patient.yaml",
            'gender: "{{ case.patient.sex }}"',
            'gender: "{{ case.patient.sexx }}"',
            "'case.patient' has no field 'sexx'; it has: age_at_presentation, identifier, quote, sex, title",
        ),
        (
            "resources/observation.yaml",
            'valueBoolean: "{{ sf.finding.present }}"',
            'valueBoolean: "{{ g.present }}"',
            "unknown name 'g'",
        ),
        (
            "resources/condition.yaml",
            "{{ when_untyped(case.final.time, case) if case.final else None }}",
            "{{ case.history.note }}",
            "'case.history' is a list",
        ),
        (
            "resources/patient.yaml",
            'gender: "{{ case.patient.sex }}"',
            'gender: "{{ upper(case.patient.sex) }}"',
            "unknown function 'upper'",
        ),
        (
            "resources/patient.yaml",
            'gender: "{{ case.patient.sex }}"',
            'gender: "{{ case.patient.sex + 1 }}"',
            "BinOp is not allowed",
        ),
        (
            "resources/patient.yaml",
            'gender: "{{ case.patient.sex }}"',
            'gender: "{{ case.patient.sex ]] }}"',
            "cannot parse expression",
        ),
        (
            "resources/patient.yaml",
            'gender: "{{ case.patient.sex }}"',
            'gender: "{{ case.__class__ }}"',
            "private attribute",
        ),
        # functions check their constant arguments
        (
            "resources/condition.yaml",
            "code('condition-clinical', h.clinical_status)",
            "code('condition-clinicl', h.clinical_status)",
            "no code table 'condition-clinicl'",
        ),
        (
            "resources/observation.yaml",
            "code('data-absent-reason', 'unknown')",
            "code('data-absent-reason', 'unknwn')",
            "table 'data-absent-reason' has no key 'unknwn'",
        ),
        (
            "resources/procedure.yaml",
            "ref('histopathology-report', step_id)",
            "ref('histopathology', step_id)",
            "no resource template has role 'histopathology'",
        ),
        (
            "resources/specimen.yaml",
            "concept(v.specimen.type)",
            "concept(v.specimen.type, 1, 2, 3)",
            "too many positional arguments",
        ),
        # the template structure
        ("resources/patient.yaml", "      gender:", "      sex:", "Patient has no element 'sex'"),
        ("resources/patient.yaml", "      gender:", "      id: x\n      gender:", "'id' is set by casebridge"),
        ("resources/specimen.yaml", "    for_each: case.specimen_views\n", "", "'as' only goes with for_each"),
        (
            "resources/specimen.yaml",
            "  - role: specimen",
            "  - role: specimen\n    colour: blue",
            "unknown key 'colour'",
        ),
        ("resources/specimen.yaml", "  - role: specimen", "  - role: patient", "role 'patient' is already defined"),
        ("resources/specimen.yaml", "resourceType: Specimen", "resourceType: Speciman", "not a FHIR resource type"),
        (
            "resources/specimen.yaml",
            "      subject:",
            "      $unless: x\n      subject:",
            "'$unless' is not a directive",
        ),
        ("resources/specimen.yaml", "      subject:", "      type: {}\n      subject:", "duplicate key 'type'"),
        ("resources/specimen.yaml", "    as: v\n", "    as: v\n   bad: [\n", "malformed YAML"),
    ],
)
def test_template_errors_name_file_and_line(folder: Path, file: str, old: str, new: str, message: str) -> None:
    line = edit(folder / file, old, new)
    error = load_error(folder)
    assert message in str(error)
    assert error.file == f"mappings/{file}"
    assert error.line is not None and abs(error.line - line) <= 2, (error.line, line)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("lipoma,,,Lipoma,,", "lipoma,http://snomed.info/sct,93163002,Lipoma,,", "cites no source"),
        (
            "lipoma,,,Lipoma,,",
            "lipoma,http://snomed.info/sct,93163002,Lipoma,snomed_ct.lipoma.disorder,",
            "is not confirmed",
        ),
        (
            "387837005,Neoplasm of soft tissue,",
            "387837006,Neoplasm of soft tissue,",
            "differs from the cited entry's code",
        ),
        ("387837005,Neoplasm of soft tissue,", "387837005,Neoplasm of bone,", "display 'Neoplasm of bone' differs"),
        ("snomed_ct.soft_tissue_neoplasm", "snomed_ct.soft_tissue_neoplasma", "no entry 'soft_tissue_neoplasma'"),
        (
            "soft_tissue_tumour,http://snomed.info/sct,",
            "soft_tissue_tumour,http://loinc.org,",
            "differs from the cited entry's system",
        ),
        ("soft_tissue_tumour,http://snomed.info/sct,", "soft_tissue_tumour,snomed,", "not an absolute URI"),
        ("lipoma,,,Lipoma,,", "lipoma,,,Lipoma", "expected 6 columns"),
        ("lipoma,,,Lipoma,,", "lipoma,,,,,", "needs a display"),
    ],
)
def test_code_table_errors_name_file_and_line(folder: Path, old: str, new: str, message: str) -> None:
    line = edit(folder / "codes" / "concepts.csv", old, new)
    error = load_error(folder)
    assert message in str(error)
    assert error.file == "mappings/codes/concepts.csv"
    assert error.line == line


def test_a_bad_header(folder: Path) -> None:
    edit(folder / "codes" / "units.csv", "key,system,code,display,source,note", "key,system,code")
    error = load_error(folder)
    assert error.file == "mappings/codes/units.csv" and error.line == 1


def test_a_missing_template_file(folder: Path) -> None:
    line = edit(folder / "bundle.yaml", "resources/specimen.yaml", "resources/specimens.yaml")
    error = load_error(folder)
    assert "resources/specimens.yaml" in str(error) and error.line == line


def test_a_changed_code_needs_no_python_change(folder: Path) -> None:
    """Integrators change codes in data: here the imaging report code becomes the radiology set code."""
    edit(
        folder / "codes" / "report-codes.csv",
        "imaging,http://loinc.org,18748-4,Diagnostic imaging study,loinc.imaging_report[18748-4],",
        "imaging,http://loinc.org,18726-0,Radiology studies (set),loinc.imaging_report[18726-0],",
    )
    bundle = MappingSet.load(folder, terminology=TERMINOLOGY).convert(load_case(SEED))
    codes = [
        e["resource"]["code"]["coding"][0]["code"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport" and "coding" in e["resource"]["code"]
    ]
    assert codes.count("18726-0") == 2


def test_a_new_field_mapping_needs_no_python_change(folder: Path) -> None:
    """Adding an element is a template edit: the patient's Observation of age gains a method text."""
    edit(
        folder / "resources" / "observation.yaml",
        '    title: "Age at presentation"\n    when: case.patient.age_at_presentation\n    body:\n',
        '    title: "Age at presentation"\n    when: case.patient.age_at_presentation\n    body:\n'
        "      method:\n        text: As stated in the source\n",
    )
    bundle = MappingSet.load(folder, terminology=TERMINOLOGY).convert(load_case(SEED))
    ages = [
        e["resource"] for e in bundle["entry"] if e["resource"].get("code", {}).get("text") == "Age at presentation"
    ]
    assert ages[0]["method"] == {"text": "As stated in the source"}
