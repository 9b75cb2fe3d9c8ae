"""Every imaging kind carries its DICOM modality, and its report says which kind of imaging it was."""

from __future__ import annotations

import copy
from typing import Any, get_args

import pytest
import yaml

from casebridge.domain.case import STEP_LABELS, ImagingKind
from casebridge.domain.reader import validate_case
from casebridge.errors import CaseSchemaError
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Validator
from tests.conftest import CASES_V1

DCM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
# DICOM PS3.16 CID 29 (Acquisition Modality), as the pinned R4 packages list it.
MODALITY = {
    "xray": "DX",
    "ultrasound": "US",
    "ct": "CT",
    "mri": "MR",
    "pet": "PT",
    "nuclear_medicine": "NM",
    "mammography": "MG",
    "fluoroscopy": "RF",
    "angiography": "XA",
}
GENERIC_REPORT = "18748-4"  # Diagnostic imaging study
REPORT_CODE = {"ct": "25045-6", "mri": "25056-3"}  # CT / MR Unspecified body region
# A synthetic case (not a real patient): the left-thigh fixture, whose one imaging step is re-kinded below.
BASE = CASES_V1 / "metastatic-calcification-left-thigh.yaml"


def base_doc() -> dict[str, Any]:
    doc = yaml.safe_load(BASE.read_text())
    assert isinstance(doc, dict)
    return doc


def with_kinds(*kinds: str) -> dict[str, Any]:
    """The base case with its X-ray step as the first kind, and one more imaging step per further kind."""
    doc = base_doc()
    steps = doc["diagnostic_steps"]
    xray = next(s for s in steps if s["kind"] == "xray")
    xray["kind"] = kinds[0]
    for i, kind in enumerate(kinds[1:], start=1):
        extra = copy.deepcopy(xray)
        extra.update(id=f"{kind}-step", kind=kind, measurements=[], differential=[])
        extra.pop("figure", None)
        steps.append(extra)
    for order, step in enumerate(steps, start=1):
        step["order"] = order
    return doc


def resources(bundle: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == type_]


def errors(validator: Validator, bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in validator.validate(bundle) if i.severity in ("error", "fatal")]


def test_every_imaging_kind_has_a_label_and_a_confirmed_modality(mappings: MappingSet) -> None:
    kinds = set(get_args(ImagingKind))
    assert kinds == set(MODALITY)
    table = mappings.tables["modality"]
    for kind in kinds:
        assert kind in STEP_LABELS
        assert table.codings(kind) == [{"system": DCM, "code": MODALITY[kind], "display": table.text(kind)}]


def test_a_case_with_ct_and_mri_steps(mappings: MappingSet, validator: Validator) -> None:
    bundle = mappings.convert(validate_case(with_kinds("ct", "mri"), source="ct-and-mri"))
    assert errors(validator, bundle) == []
    studies = {s["description"]: s for s in resources(bundle, "ImagingStudy")}
    assert set(studies) == {"CT of the left thigh", "MRI of the left thigh"}
    for name, modality in (("CT of the left thigh", "CT"), ("MRI of the left thigh", "MR")):
        study = studies[name]
        assert [(c["system"], c["code"]) for c in study["modality"]] == [(DCM, modality)]
        series = study["series"][0]
        assert (series["modality"]["system"], series["modality"]["code"]) == (DCM, modality)
        assert series["uid"].startswith("2.25.")
    reports = {r["code"]["text"]: r for r in resources(bundle, "DiagnosticReport") if "imagingStudy" in r}
    assert set(reports) == {"CT of the left thigh", "MRI of the left thigh"}
    assert reports["CT of the left thigh"]["code"]["coding"] == [
        {"system": LOINC, "code": "25045-6", "display": "CT Unspecified body region"}
    ]
    assert reports["MRI of the left thigh"]["code"]["coding"] == [
        {"system": LOINC, "code": "25056-3", "display": "MR Unspecified body region"}
    ]


@pytest.mark.parametrize("kind", sorted(MODALITY))
def test_each_kind_converts_and_validates(mappings: MappingSet, validator: Validator, kind: str) -> None:
    bundle = mappings.convert(validate_case(with_kinds(kind), source=kind))
    assert errors(validator, bundle) == []
    (study,) = resources(bundle, "ImagingStudy")
    assert [c["code"] for c in study["modality"]] == [MODALITY[kind]]
    assert study["series"][0]["modality"]["code"] == MODALITY[kind]
    (report,) = [r for r in resources(bundle, "DiagnosticReport") if "imagingStudy" in r]
    # The report names its kind even where only the generic imaging code is confirmed.
    assert report["code"]["text"] == f"{STEP_LABELS[kind]} of the left thigh"
    assert [c["code"] for c in report["code"]["coding"]] == [REPORT_CODE.get(kind, GENERIC_REPORT)]


def test_imaging_reports_of_different_kinds_read_differently(mappings: MappingSet) -> None:
    bundle = mappings.convert(validate_case(with_kinds(*MODALITY), source="all-kinds"))
    texts = [r["code"]["text"] for r in resources(bundle, "DiagnosticReport") if "imagingStudy" in r]
    assert len(texts) == len(set(texts)) == len(MODALITY)
    assert "Diagnostic imaging study" not in texts


def test_an_unknown_imaging_kind_is_refused_with_its_path() -> None:
    doc = with_kinds("xray")
    index = next(i for i, s in enumerate(doc["diagnostic_steps"]) if s["id"] == "xray")
    doc["diagnostic_steps"][index]["kind"] = "spect"
    with pytest.raises(CaseSchemaError) as info:
        validate_case(doc, source="bad.yaml")
    assert info.value.source == "bad.yaml"
    problem = info.value.problems[0]
    assert problem.location == f"diagnostic_steps[{index}]"
    assert "spect" in problem.message
    assert all(kind in problem.message for kind in MODALITY)


def test_an_error_in_a_new_kind_of_step_names_the_field_path() -> None:
    doc = with_kinds("pet")
    index = next(i for i, s in enumerate(doc["diagnostic_steps"]) if s["kind"] == "pet")
    del doc["diagnostic_steps"][index]["conclusion"]
    with pytest.raises(CaseSchemaError) as info:
        validate_case(doc, source="bad.yaml")
    # The union tag ("pet") is not a field: it stays out of the path.
    (problem,) = info.value.problems
    assert problem.location == f"diagnostic_steps[{index}].conclusion"
    assert "missing" in problem.message
