"""A diagnostic step the source says was not done, and a procedure whose status the source does not give."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from casebridge.cli.core import case_json_schema
from casebridge.domain.reader import read_case
from casebridge.errors import CaseSchemaError
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Validator
from tests.conftest import CASES_V1, RECORDED
from tests.paths import DATA_DIR

SCT = "http://snomed.info/sct"
# A synthetic teaching case (not a real patient): clinical examination, ultrasound, laboratory, histopathology.
BASE = CASES_V1 / "lipoma-left-forearm.yaml"
FOREARM = {"site": {"key": "forearm", "text": "forearm"}, "laterality": "left"}
NOT_DONE_XRAY = {
    "id": "xray",
    "kind": "xray",
    "order": 2,
    "performed": False,
    "not_done_reason": "The ultrasound appearance was typical of a lipoma.",
    "body_site": FOREARM,
    "source_text": "No X-ray was taken.",
}


def base_doc() -> dict[str, Any]:
    doc = yaml.safe_load(BASE.read_text())
    assert isinstance(doc, dict)
    return doc


def with_steps(*extra: dict[str, Any]) -> dict[str, Any]:
    """The base case with ``extra`` steps after its clinical examination, every step renumbered in order."""
    doc = base_doc()
    steps = doc["diagnostic_steps"]
    steps[1:1] = [copy.deepcopy(s) for s in extra]
    for order, step in enumerate(steps, start=1):
        step["order"] = order
    return doc


def read(doc: dict[str, Any]) -> Any:
    return read_case(json.dumps(doc).encode(), source="case.json")


def refusal(doc: dict[str, Any]) -> str:
    with pytest.raises(CaseSchemaError) as info:
        read(doc)
    return str(info.value.problems[0])


def convert(mappings: MappingSet, doc: dict[str, Any]) -> dict[str, Any]:
    bundle: dict[str, Any] = mappings.convert(read(doc), recorded=RECORDED)
    return bundle


def resources(bundle: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == type_]


def errors(validator: Validator, bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in validator.validate(bundle) if i.severity in ("error", "fatal")]


def urls_of(bundle: dict[str, Any], type_: str) -> set[str]:
    return {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == type_}


# --- the model ------------------------------------------------------------------------------------------------


def test_a_step_not_done_needs_none_of_a_performed_steps_fields() -> None:
    bare = {"id": "ct", "kind": "ct", "order": 2, "performed": False}
    lab = {"id": "bloods", "kind": "laboratory", "order": 3, "performed": False}
    histo = {"id": "biopsy", "kind": "histopathology", "order": 4, "performed": False, "not_done_reason": "Declined"}
    case = read(with_steps(bare, lab, histo))
    assert [s.id for s in case.not_done_steps] == ["ct", "bloods", "biopsy"]
    assert all(s.performed for s in case.performed_steps)
    assert case.diagnostic_steps[1].title == "CT"
    # the path of steps performed skips the steps not done
    views = {v.step.id: v for v in case.steps}
    assert set(views) == {"clinical-examination", "ultrasound", "laboratory", "histopathology"}
    assert views["ultrasound"].previous_id == "clinical-examination"


def test_old_files_still_read_as_performed() -> None:
    case = read(base_doc())
    assert all(s.performed for s in case.diagnostic_steps) and case.not_done_steps == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("conclusion", "Normal."),
        ("findings", [{"concept": "Calcification", "present": False}]),
        ("measurements", [{"concept": "Lesion size", "dimensions": [{"value": 1, "unit": "cm"}]}]),
        ("differential", ["Lipoma"]),
        ("impression", "Nothing seen."),
        ("performer", "a radiologist"),
        ("figure", {"label": "Figure 1", "caption": "An X-ray"}),
        ("findings", []),  # given at all, even empty, as the JSON Schema says
    ],
)
def test_a_step_not_done_refuses_results(field: str, value: object) -> None:
    step = NOT_DONE_XRAY | {field: value}
    problem = refusal(with_steps(step))
    assert problem.startswith(f"diagnostic_steps[1].{field}: a step that was not performed has no ")


def test_a_laboratory_or_histopathology_step_not_done_refuses_its_results() -> None:
    lab = {"id": "bloods", "kind": "laboratory", "order": 2, "performed": False, "tests": []}
    assert refusal(with_steps(lab)).startswith("diagnostic_steps[1].tests: a step that was not performed has no ")
    histo = {"id": "biopsy", "kind": "histopathology", "order": 2, "performed": False, "specimen": "excised-lesion"}
    assert refusal(with_steps(histo)).startswith("diagnostic_steps[1].specimen: a step that was not performed")


def test_a_performed_step_still_needs_its_fields() -> None:
    doc = base_doc()
    del doc["diagnostic_steps"][1]["conclusion"]
    assert refusal(doc).startswith("diagnostic_steps[1].conclusion: required field is missing for a step that was")
    doc = base_doc()
    doc["diagnostic_steps"][2]["tests"] = []
    assert refusal(doc).startswith("diagnostic_steps[2].tests: must not be empty for a step that was performed")
    doc = base_doc()
    del doc["diagnostic_steps"][3]["diagnosis"]
    assert refusal(doc).startswith("diagnostic_steps[3].diagnosis: required field is missing")


def test_a_reason_without_performed_false_is_refused() -> None:
    step = {k: v for k, v in NOT_DONE_XRAY.items() if k != "performed"} | {"conclusion": "Normal."}
    assert refusal(with_steps(step)).startswith("diagnostic_steps[1].not_done_reason: only a step that was not")


def test_a_step_not_done_settles_no_diagnosis() -> None:
    doc = with_steps(NOT_DONE_XRAY)
    doc["final_diagnosis"]["established_by"] = "xray"
    assert refusal(doc).startswith("final_diagnosis.established_by: step 'xray' was not performed")


def test_the_cli_refuses_results_on_a_step_not_done_naming_file_line_and_path(tmp_path: Path) -> None:
    path = tmp_path / "case.yaml"
    path.write_text(yaml.safe_dump(with_steps(NOT_DONE_XRAY | {"conclusion": "Normal."}), sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "casebridge", "convert", str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    out = result.stdout + result.stderr
    assert "case.yaml:" in out and "diagnostic_steps[1].conclusion: a step that was not performed" in out


def test_the_json_schema_says_the_same() -> None:
    schema = case_json_schema()
    step = schema["$defs"]["ImagingStep"]  # type: ignore[index]
    assert step["properties"]["performed"]["default"] is True
    assert "conclusion" not in step["required"] and "body_site" not in step["required"]
    assert step["if"] == {"properties": {"performed": {"const": False}}, "required": ["performed"]}
    assert step["then"]["properties"]["conclusion"] is False and step["then"]["properties"]["findings"] is False
    # 2.0 requires of a performed imaging step nothing a report may not give (1.0 required its site and conclusion)
    assert "else" not in step
    lab = schema["$defs"]["LaboratoryStep"]  # type: ignore[index]
    assert lab["else"] == {"required": ["tests"], "properties": {"tests": {"minItems": 1}}}
    published = json.loads((DATA_DIR / "schemas" / "case-report-2.0.schema.json").read_text())
    assert published == json.loads(json.dumps(schema))
    v1 = case_json_schema("1.0")
    assert v1["$defs"]["ImagingStep"]["else"]["required"] == ["body_site", "conclusion"]  # type: ignore[index]
    assert json.loads((DATA_DIR / "schemas" / "case-report-1.0.schema.json").read_text()) == json.loads(json.dumps(v1))


# --- the mapping ----------------------------------------------------------------------------------------------


def test_a_step_not_done_is_a_procedure_not_done_and_nothing_else(mappings: MappingSet, validator: Validator) -> None:
    bundle = convert(mappings, with_steps(NOT_DONE_XRAY))
    baseline = convert(mappings, base_doc())
    not_done = [p for p in resources(bundle, "Procedure") if p["status"] == "not-done"]
    assert len(not_done) == 1
    proc = not_done[0]
    assert proc["statusReason"] == {"text": "The ultrasound appearance was typical of a lipoma."}
    # the confirmed imaging procedure code of xray|forearm (codes/imaging-procedures.csv), and the words
    assert proc["code"] == {
        "coding": [{"system": SCT, "code": "783544001", "display": "Plain X-ray of forearm"}],
        "text": "X-ray of the left forearm",
    }
    patient = resources(bundle, "Patient")[0]["id"]
    assert proc["subject"]["reference"] == f"urn:uuid:{patient}"
    assert proc["bodySite"][0]["text"] == "Left forearm"
    assert proc["_performedDateTime"]["extension"][0]["valueCode"] == "not-applicable"
    # nothing else: the same studies, reports, observations and impressions as without the step
    for type_ in ("ImagingStudy", "DiagnosticReport", "Observation", "ClinicalImpression"):
        assert len(resources(bundle, type_)) == len(resources(baseline, type_)), type_
    assert "xray" not in json.dumps(resources(bundle, "ClinicalImpression"))
    assert errors(validator, bundle) == []


def test_a_step_not_done_without_a_confirmed_code_is_text(mappings: MappingSet, validator: Validator) -> None:
    steps = (
        {"id": "mri", "kind": "mri", "order": 2, "performed": False, "body_site": FOREARM},
        {"id": "bloods", "kind": "laboratory", "order": 3, "performed": False},
    )
    bundle = convert(mappings, with_steps(*steps))
    codes = [p["code"] for p in resources(bundle, "Procedure") if p["status"] == "not-done"]
    assert codes == [{"text": "MRI of the left forearm"}, {"text": "Laboratory tests"}]
    assert all("statusReason" not in p for p in resources(bundle, "Procedure") if p["status"] == "not-done")
    assert errors(validator, bundle) == []


# --- a procedure's status comes from the source -------------------------------------------------------------


def test_a_procedure_without_a_status_is_unknown_never_completed(mappings: MappingSet, validator: Validator) -> None:
    doc = base_doc()
    del doc["procedures"][0]["status"]
    case = read(doc)
    assert case.procedures[0].status is None
    bundle = convert(mappings, doc)
    assert [p["status"] for p in resources(bundle, "Procedure")] == ["unknown"]
    assert errors(validator, bundle) == []


def test_a_procedure_the_source_says_was_done_stays_completed(mappings: MappingSet) -> None:
    bundle = convert(mappings, base_doc())
    assert [p["status"] for p in resources(bundle, "Procedure")] == ["completed"]
