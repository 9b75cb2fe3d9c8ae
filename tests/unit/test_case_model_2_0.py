"""Case model 2.0, one test per reason the issue gives for it ("Why"): what a 1.0 case could not say, or said
wrongly, and where each fact now lands in the Bundle. Each test builds a small synthetic case (no real patient)
and asserts the outcome: the Bundle's resources, or the words of the error."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from casebridge.domain import reader
from casebridge.domain.reader import read_case, validate_case
from casebridge.errors import CaseFileError, CaseSchemaError
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Validator
from tests.bundles import by_role, convert, errors, notes, resources
from tests.conftest import SEED_V1

UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

BASE: dict[str, Any] = {
    "schema_version": "2.0",
    "case_id": "why-2-0",
    "source": {"kind": "synthetic", "citation": "Synthetic case for the reasons of schema 2.0."},
    "patient": {"sex": "female"},
}


def case(**sections: Any) -> dict[str, Any]:
    return copy.deepcopy(BASE) | copy.deepcopy(sections)


def url_of(bundle: dict[str, Any], resource: dict[str, Any]) -> str:
    return str(next(e["fullUrl"] for e in bundle["entry"] if e["resource"] is resource))


def verification(condition: dict[str, Any]) -> str:
    return str(condition["verificationStatus"]["coding"][0]["code"])


def schema_error(doc: dict[str, Any]) -> CaseSchemaError:
    with pytest.raises(CaseSchemaError) as info:
        validate_case(doc, source="case.yaml")
    return info.value


# --- nothing required that a source may not give ---------------------------------------------------------------


def test_a_case_without_age_site_or_order_converts_validates_and_invents_nothing(
    mappings: MappingSet, validator: Validator
) -> None:
    # 1.0 required the patient's age, an imaging step's body site and every step's order number.
    doc = case(
        diagnostic_steps=[
            {"id": "ct", "kind": "ct", "findings": [{"concept": {"text": "Calcified mass"}, "present": True}]},
            {"id": "exam", "kind": "clinical_examination"},
        ],
    )
    bundle = convert(mappings, doc)
    assert errors(validator, bundle) == []
    (patient,) = resources(bundle, "Patient")
    assert "birthDate" not in patient and by_role(bundle, "age-at-presentation") == {}
    for resource in (e["resource"] for e in bundle["entry"]):
        assert "bodySite" not in resource, resource["resourceType"]
    (study,) = resources(bundle, "ImagingStudy")
    assert "laterality" not in study["series"][0] and "bodySite" not in study["series"][0]
    assert by_role(bundle, "imaging-report")["ct"]["code"]["text"] == "CT"  # the kind alone, no site made up
    # Without order numbers the steps follow in the listed order.
    impressions = by_role(bundle, "step-impression")
    assert impressions["exam"]["previous"]["reference"] == url_of(bundle, impressions["ct"])


def test_a_case_without_sex_has_no_gender_and_validates(mappings: MappingSet, validator: Validator) -> None:
    doc = case()
    del doc["patient"]
    bundle = convert(mappings, doc)
    (patient,) = resources(bundle, "Patient")
    assert "gender" not in patient  # never a made-up value, the code "unknown" included
    assert patient["_gender"]["extension"][0]["valueCode"] == "unknown"  # a data-absent-reason
    assert errors(validator, bundle) == []


def test_conservative_management_is_completed_only_when_the_case_says_so(
    mappings: MappingSet, validator: Validator
) -> None:
    doc = case(
        management=[
            {"id": "conservative", "concept": {"text": "Conservative management with rest and physiotherapy"}},
            {"id": "splint", "concept": {"text": "Splinting"}, "status": "completed"},
        ]
    )
    bundle = convert(mappings, doc)
    assert errors(validator, bundle) == []
    plans = by_role(bundle, "management")
    conservative = plans["conservative"]
    assert conservative["resourceType"] == "CarePlan"
    assert conservative["status"] == "unknown"
    assert conservative["activity"][0]["detail"]["status"] == "unknown"
    assert plans["splint"]["activity"][0]["detail"]["status"] == "completed"


# --- timing, occupation, measured values, history, cause have a place ------------------------------------------


def week(n: int) -> dict[str, Any]:
    return {"relative": {"value": n, "unit": "weeks", "relation": "after", "to": "presentation"}, "text": f"week {n}"}


def test_each_fact_1_0_had_no_place_for_is_where_a_reader_looks(mappings: MappingSet, validator: Validator) -> None:
    doc = case(
        history=[
            {"id": "haemodialysis", "condition": {"text": "Haemodialysis"}, "clinical_status": "active"},
            {"id": "fall", "condition": {"text": "Fall onto the left thigh"}},
        ],
        social_history=[{"id": "occupation", "concept": {"text": "Occupation"}, "value": "Professional footballer"}],
        diagnoses=[{"id": "mo", "concept": {"text": "Myositis ossificans"}}],
        diagnostic_steps=[
            {
                "id": "exam",
                "kind": "clinical_examination",
                "measurements": [{"concept": {"text": "Knee flexion"}, "value": {"value": 60, "unit": "deg"}}],
            }
        ],
        final_diagnosis={
            "diagnosis": "mo",
            "verification": "provisional",
            "possible_cause": {"history": "fall", "note": "Traumatic: after the fall onto the left thigh"},
        },
        management=[{"id": "physiotherapy", "concept": {"text": "Physiotherapy"}, "time": week(4)}],
        outcomes=[{"id": "flexion", "concept": {"text": "Knee flexion"}, "result": "Full flexion", "time": week(6)}],
    )
    bundle = convert(mappings, doc)
    assert errors(validator, bundle) == []
    assert notes(by_role(bundle, "management")["physiotherapy"]) == [
        "Time: 4 weeks after presentation.",
        'Time in the source\'s words: "week 4".',
    ]
    assert notes(by_role(bundle, "outcome")["flexion"]) == [
        "Time: 6 weeks after presentation.",
        'Time in the source\'s words: "week 6".',
    ]
    occupation = by_role(bundle, "social-history")["occupation"]
    assert occupation["code"] == {"text": "Occupation"} and occupation["valueString"] == "Professional footballer"
    assert occupation["category"][0]["coding"][0]["code"] == "social-history"
    flexion = by_role(bundle, "measured-value")["exam-1"]
    assert flexion["code"] == {"text": "Knee flexion"}
    assert flexion["valueQuantity"] == {"value": 60, "unit": "deg", "system": UCUM, "code": "deg"}
    haemodialysis = by_role(bundle, "history")["haemodialysis"]
    assert haemodialysis["resourceType"] == "Condition" and haemodialysis["code"] == {"text": "Haemodialysis"}
    assert haemodialysis["clinicalStatus"]["coding"][0]["code"] == "active"
    final = by_role(bundle, "final-diagnosis")[""]
    assert "Traumatic: after the fall onto the left thigh" in notes(final)


# --- not done; several sites --------------------------------------------------------------------------------


def test_a_step_not_done_is_a_procedure_not_done_with_its_reason(mappings: MappingSet, validator: Validator) -> None:
    doc = case(
        diagnostic_steps=[
            {"id": "us", "kind": "ultrasound", "performed": False, "not_done_reason": "Not available at the clinic"}
        ]
    )
    bundle = convert(mappings, doc)
    assert errors(validator, bundle) == []
    (procedure,) = resources(bundle, "Procedure")
    assert procedure["status"] == "not-done"
    assert procedure["code"] == {"text": "Ultrasound"}
    assert procedure["statusReason"] == {"text": "Not available at the clinic"}
    # A step not done produced nothing: no study, no report.
    assert resources(bundle, "ImagingStudy") == [] and resources(bundle, "DiagnosticReport") == []


def test_a_diagnosis_at_several_sites_has_each_site_with_its_side(mappings: MappingSet, validator: Validator) -> None:
    sites = [
        {"site": {"text": "shoulder", "key": "shoulder"}, "laterality": "left"},
        {"site": {"text": "hand", "key": "hand"}, "laterality": "bilateral"},
    ]
    doc = case(
        diagnoses=[{"id": "calcinosis", "concept": {"text": "Calcinosis"}, "body_site": sites}],
        final_diagnosis={"diagnosis": "calcinosis", "verification": "confirmed"},
    )
    bundle = convert(mappings, doc)
    assert errors(validator, bundle) == []
    final = by_role(bundle, "final-diagnosis")[""]
    # No confirmed code for either site (body-sites.csv): the words, each with its side.
    assert final["bodySite"] == [{"text": "Left shoulder"}, {"text": "Bilateral hand"}]


# --- imaging kinds ------------------------------------------------------------------------------------------


def test_mri_and_ct_carry_their_dicom_modality_and_their_reports_name_kind_and_site(mappings: MappingSet) -> None:
    doc = case(
        diagnostic_steps=[
            {"id": "ct", "kind": "ct", "body_site": {"site": {"text": "chest"}}},
            {"id": "mri", "kind": "mri", "body_site": {"site": {"text": "thigh"}, "laterality": "left"}},
        ]
    )
    bundle = convert(mappings, doc)
    studies = by_role(bundle, "imaging-study")
    for key, code in (("ct", "CT"), ("mri", "MR")):
        assert [(c["system"], c["code"]) for c in studies[key]["modality"]] == [(DCM, code)]
        assert studies[key]["series"][0]["modality"]["code"] == code
    reports = by_role(bundle, "imaging-report")
    assert reports["ct"]["code"]["text"] == "CT of the chest"
    assert reports["mri"]["code"]["text"] == "MRI of the left thigh"


# --- laboratory results --------------------------------------------------------------------------------------


def lab_case(*tests: dict[str, Any]) -> dict[str, Any]:
    return case(diagnostic_steps=[{"id": "labs", "kind": "laboratory", "tests": list(tests)}])


def test_lab_results_are_in_a_lab_report_coded_in_ucum_as_written(mappings: MappingSet, validator: Validator) -> None:
    ck = {"id": "ck", "concept": {"text": "Creatine kinase"}, "value": {"value": 450, "unit": "U/L"}}
    doc = lab_case(
        ck | {"interpretation": "high"},
        {"id": "pth", "concept": {"text": "Parathyroid hormone"}, "value": {"value": 80, "unit": "pg/mL"}},
        # UCUM is case-sensitive, and both l and L are the litre: mg/dl is valid and kept as written.
        {"id": "calcium", "concept": {"text": "Calcium"}, "value": {"value": 9.1, "unit": "mg/dl"}},
    )
    bundle = convert(mappings, doc)
    assert errors(validator, bundle) == []
    (report,) = by_role(bundle, "laboratory-report").values()
    # What a pull of the patient's LAB reports matches (category=LAB, _include=DiagnosticReport:result); the pull
    # from a server is tested in tests/integration/test_push_pull.py.
    assert report["category"][0]["coding"][0] == {"system": V2_0074, "code": "LAB", "display": "Laboratory"}
    (patient,) = resources(bundle, "Patient")
    assert report["subject"]["reference"] == url_of(bundle, patient)
    results = by_role(bundle, "lab-result")
    assert [r["reference"] for r in report["result"]] == [url_of(bundle, results[k]) for k in ("ck", "pth", "calcium")]
    assert results["ck"]["interpretation"][0]["coding"][0]["system"] == V3_INTERPRETATION
    assert results["ck"]["interpretation"][0]["coding"][0]["code"] == "H"
    units = {k: (r["valueQuantity"]["system"], r["valueQuantity"]["code"]) for k, r in results.items()}
    assert units == {"ck": (UCUM, "U/L"), "pth": (UCUM, "pg/mL"), "calcium": (UCUM, "mg/dl")}


def test_a_unit_that_is_not_ucum_is_refused_with_its_field_path() -> None:
    doc = lab_case({"id": "ca", "concept": {"text": "Calcium"}, "value": {"value": 9.1, "unit": "MG/DL"}})
    (problem,) = schema_error(doc).problems
    assert problem.location == "diagnostic_steps[0].tests[0].value.unit"
    assert problem.message.startswith("'MG/DL' is not a UCUM unit")


# --- diagnoses by id, never by wording ------------------------------------------------------------------------

DIAGNOSES = [
    {"id": "moc", "concept": {"text": "Myositis ossificans circumscripta"}},
    {"id": "mo", "concept": {"text": "Myositis ossificans"}},
    {"id": "sarcoma", "concept": {"text": "Soft-tissue sarcoma"}},
]


def diagnosis_case(biopsy_assessment: list[dict[str, str]]) -> dict[str, Any]:
    return case(
        diagnoses=DIAGNOSES,
        presentation={"suspected": ["sarcoma"]},
        diagnostic_steps=[
            {
                "id": "mri",
                "kind": "mri",
                "assessment": [
                    {"diagnosis": "moc", "status": "considered"},
                    {"diagnosis": "mo", "status": "considered"},
                ],
            },
            {"id": "biopsy", "kind": "histopathology", "assessment": biopsy_assessment},
        ],
        final_diagnosis={"diagnosis": "moc", "verification": "confirmed", "established_by": "biopsy"},
    )


def test_a_differential_in_other_words_is_refuted_only_by_a_step_that_excludes_it(
    mappings: MappingSet, validator: Validator
) -> None:
    # 1.0 matched by wording: "Myositis ossificans" was not the final "Myositis ossificans circumscripta", so
    # it, and every other differential, read as refuted by the biopsy. Nothing said so.
    bundle = convert(mappings, diagnosis_case([{"diagnosis": "moc", "status": "confirmed"}]))
    assert errors(validator, bundle) == []
    final = by_role(bundle, "final-diagnosis")[""]
    assert final["code"] == {"text": "Myositis ossificans circumscripta"} and verification(final) == "confirmed"
    differentials = by_role(bundle, "differential")
    assert {k: verification(c) for k, c in differentials.items()} == {"mo": "differential", "sarcoma": "differential"}
    # The MRI's consideration is linked to the final diagnosis's own Condition by the id, not by its words.
    mri = by_role(bundle, "step-impression")["mri"]
    held = {p["reference"] for p in mri["problem"]}
    assert held == {url_of(bundle, final), url_of(bundle, differentials["mo"])}

    excluded = [{"diagnosis": "moc", "status": "confirmed"}, {"diagnosis": "sarcoma", "status": "excluded"}]
    differentials = by_role(convert(mappings, diagnosis_case(excluded)), "differential")
    assert {k: verification(c) for k, c in differentials.items()} == {"mo": "differential", "sarcoma": "refuted"}


def test_migrate_notes_a_final_diagnosis_worded_near_a_differential() -> None:
    doc = yaml.safe_load(SEED_V1.read_text())
    doc["final_diagnosis"]["condition"] = {"text": "Myositis ossificans circumscripta"}
    text, found = reader.migrate(json.dumps(doc, default=str).encode(), source="case.json")
    assert text is not None
    (note,) = found
    assert note.startswith(
        "final_diagnosis: 'Myositis ossificans circumscripta' and the differential 'myositis ossificans' are "
        "different diagnoses in 1.0"
    )
    assert "give it one id" in note
    # The seed's own final diagnosis is worded like none of its differentials: no note.
    assert reader.migrate(SEED_V1.read_bytes(), source=str(SEED_V1))[1] == []


# --- the presenting complaint ----------------------------------------------------------------------------------


def test_a_complaint_without_duration_has_no_empty_component(mappings: MappingSet) -> None:
    bundle = convert(mappings, case(presentation={"complaint": {"text": "Knee pain"}}))
    complaint = by_role(bundle, "presenting-complaint")[""]
    assert complaint["code"] == {"text": "Knee pain"}
    assert "component" not in complaint
    with_duration = case(presentation={"complaint": {"text": "Knee pain"}, "duration": {"value": 3, "unit": "weeks"}})
    complaint = by_role(convert(mappings, with_duration), "presenting-complaint")[""]
    assert complaint["component"] == [{"code": {"text": "Duration before presentation"}, "valueString": "3 weeks"}]


# --- error messages ------------------------------------------------------------------------------------------


def test_a_tab_in_yaml_is_named_with_its_line_and_column() -> None:
    with pytest.raises(CaseFileError) as info:
        read_case(b"schema_version: '2.0'\npatient:\n\tsex: female\n", source="case.yaml")
    assert info.value.report() == (
        "case.yaml:3:1: malformed YAML: a tab character indents line 3; YAML indents with spaces only"
    )


def test_a_duplicate_step_order_names_both_steps() -> None:
    steps = [{"id": "xray", "kind": "xray", "order": 1}, {"id": "ct", "kind": "ct", "order": 1}]
    (problem,) = schema_error(case(diagnostic_steps=steps)).problems
    assert str(problem) == (
        "diagnostic_steps[1].order: steps 'xray' and 'ct' both have order 1; give each step its own order number"
    )


def test_an_unknown_field_lists_the_allowed_ones() -> None:
    (problem,) = schema_error(case(patient={"gender": "female"})).problems
    assert problem.location == "patient.gender"
    assert (
        problem.message
        == "unknown field 'gender'; a patient has the fields identifier, sex, age_at_presentation, quote"
    )


@pytest.mark.parametrize("syntax", ["yaml", "json"])
def test_a_model_error_carries_file_line_and_column(syntax: str) -> None:
    doc = case(patient={"sex": "f"})
    text = json.dumps(doc, indent=2) if syntax == "json" else yaml.safe_dump(doc, sort_keys=False)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "sex" in t)
    with pytest.raises(CaseSchemaError) as info:
        read_case(text.encode(), source=f"case.{syntax}")
    (problem,) = info.value.problems
    # The position of the wrong value itself, after "sex: ".
    assert (problem.line, problem.column) == (line, text.splitlines()[line - 1].index(": ") + 3)
    assert f"case.{syntax}:{line}:{problem.column}: patient.sex: expected one of female" in info.value.report()
