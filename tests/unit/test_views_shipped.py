"""The shipped views (src/casebridge/data/views): each loads, stays in the shareable profile, and gives the rows and
values the case files say, run over the resources of every case's Bundle.

A transaction Bundle's references are its entries' fullUrls (urn:uuid:...); a server stores them as ``Type/id``. The
resources are rewritten the way a server does it before the views run, so the keys join as they do over a server's
data (tests/integration/test_views_server.py runs the same views over the embedded server).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from casebridge.domain.case import CaseReport
from casebridge.errors import InputError
from casebridge.views import ViewDefinitionError, ViewPlan, read_view, run_to_dicts
from casebridge.views.shipped import load_shipped_views, shareable_problems, shipped_view, shipped_view_names
from tests.conftest import CASE_PATHS, load_case

EXPECTED_VIEWS = (
    "condition",
    "diagnostic_report",
    "imaging_study",
    "medication",
    "observation",
    "patient",
    "procedure",
    "report_result",
    "specimen",
)
SEED = "dystrophic-calcification-right-forearm.yaml"
UCUM = "http://unitsofmeasure.org"
INTERPRETATION = {"normal": "N", "abnormal": "A", "high": "H", "low": "L", "critical high": "HH", "critical low": "LL"}
Rows = list[dict[str, Any]]


def server_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The Bundle's resources as a server stores them: every reference to an entry's fullUrl made ``Type/id``."""
    local = {e["fullUrl"]: e["request"]["url"] for e in bundle["entry"]}

    def rewrite(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (local.get(v, v) if k == "reference" else rewrite(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    return [rewrite(e["resource"]) for e in bundle["entry"]]


@pytest.fixture(scope="module")
def plans() -> dict[str, ViewPlan]:
    return load_shipped_views()


@pytest.fixture(scope="module")
def resources(all_bundles: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {name: server_resources(bundle) for name, bundle in all_bundles.items()}


@pytest.fixture(scope="module")
def rows(plans: dict[str, ViewPlan], resources: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Rows]]:
    """Each view's rows, by case file name, then by view name."""
    return {
        case: {name: list(run_to_dicts(plan, found)) for name, plan in plans.items()}
        for case, found in resources.items()
    }


def _of_type(found: list[dict[str, Any]], kind: str) -> Iterator[dict[str, Any]]:
    return (r for r in found if r["resourceType"] == kind)


def _case(name: str) -> CaseReport:
    return load_case(CASE_PATHS[name])


# --- the files ------------------------------------------------------------------------------------------------


def test_every_view_the_issue_names_is_shipped(plans: dict[str, ViewPlan]) -> None:
    assert shipped_view_names() == EXPECTED_VIEWS
    assert tuple(plans) == EXPECTED_VIEWS


@pytest.mark.parametrize("name", EXPECTED_VIEWS)
def test_shipped_view_is_shareable_and_compiled(name: str, plans: dict[str, ViewPlan]) -> None:
    view = shipped_view(name)
    assert shareable_problems(view) == []
    assert view["name"] == name
    assert view["url"].endswith(f"/ViewDefinition/{name}")
    # Every expression on the runner's fast path: none left to fhirpathpy.
    assert plans[name].fallback_paths == ()
    # Keys come from getResourceKey/getReferenceKey, never from id or reference strings.
    columns = {c["name"]: c["path"] for s in view["select"] for c in s["column"]}
    key = next(c for c in columns if c.endswith("_id"))
    assert columns[key] == "getResourceKey()"
    assert all("getReferenceKey(" in path for column, path in columns.items() if column.endswith("_ref"))


def test_shipped_view_is_a_fresh_copy() -> None:
    view = shipped_view("patient")
    view["select"].clear()
    assert shipped_view("patient")["select"]


def test_unknown_view_names_the_shipped_ones() -> None:
    with pytest.raises(InputError, match=r"no shipped view named 'labs'.*observation"):
        shipped_view("labs")
    with pytest.raises(InputError):
        shipped_view("../patient")


def test_a_copied_view_that_cannot_run_is_named_at_its_element() -> None:
    view = shipped_view("observation")
    view["select"][0]["column"][0]["name"] = "observation id"
    with pytest.raises(ViewDefinitionError) as caught:
        read_view(view)
    assert caught.value.problems[0].location == "select[0].column[0].name"


# --- the shareable profile ------------------------------------------------------------------------------------


def _broken(change: str) -> tuple[dict[str, Any], str]:
    view = copy.deepcopy(shipped_view("observation"))
    first = view["select"][0]["column"]
    if change == "url":
        del view["url"]
        return view, "url"
    if change == "relative url":
        view["url"] = "ViewDefinition/observation"
        return view, "url"
    if change == "name":
        del view["name"]
        return view, "name"
    if change == "fhirVersion":
        view["fhirVersion"] = []
        return view, "fhirVersion"
    if change == "status":
        del view["status"]
        return view, "status"
    if change == "type":
        del first[3]["type"]
        return view, "select[0].column[3].type"
    if change == "non-primitive type":
        first[3]["type"] = "CodeableConcept"
        return view, "select[0].column[3].type"
    if change == "repeat":
        view["select"].append({"repeat": ["hasMember"], "column": [{"name": "m", "path": "id", "type": "id"}]})
        return view, "select[1].repeat"
    if change == "rowIndex":
        view["select"].append(
            {"forEach": "component", "column": [{"name": "i", "path": "%rowIndex", "type": "integer"}]}
        )
        return view, "select[1].column[0].path"
    if change == "join":
        first[3]["path"] = "code.coding.code.join(',')"
        return view, "select[0].column[3].path"
    if change == "lowBoundary":
        first[3]["path"] = "effective.ofType(dateTime).lowBoundary()"
        return view, "select[0].column[3].path"
    if change == "count":
        first[3]["path"] = "code.coding.count()"
        return view, "select[0].column[3].path"
    if change == "union":
        first[3]["path"] = "code.text | code.coding.display"
        return view, "select[0].column[3].path"
    if change == "this":
        first[3]["path"] = "code.coding.where($this.code = 'x').code"
        return view, "select[0].column[3].path"
    if change == "boolean literal":
        view["where"] = [{"path": "value.ofType(boolean) = true"}]
        return view, "where[0].path"
    if change == "date literal":
        view["where"] = [{"path": "effective.ofType(dateTime) > @2020-01-01"}]
        return view, "where[0].path"
    if change == "nested forEach":
        view["select"].append(
            {
                "forEach": "component",
                "select": [{"column": [{"name": "c", "path": "code.coding.count()", "type": "integer"}]}],
            }
        )
        return view, "select[1].select[0].column[0].path"
    raise AssertionError(change)


BROKEN = (
    "url",
    "relative url",
    "name",
    "fhirVersion",
    "status",
    "type",
    "non-primitive type",
    "repeat",
    "rowIndex",
    "join",
    "lowBoundary",
    "count",
    "union",
    "this",
    "boolean literal",
    "date literal",
    "nested forEach",
)


@pytest.mark.parametrize("change", BROKEN)
def test_a_view_that_breaks_the_profile_is_refused_at_the_element(change: str) -> None:
    view, location = _broken(change)
    problems = shareable_problems(view)
    assert [p.location for p in problems] == [location], problems


def test_constants_of_the_view_are_shareable() -> None:
    view = shipped_view("observation")
    view["constant"] = [{"name": "lab", "valueCode": "laboratory"}]
    view["where"] = [{"path": "category.coding.where(code = %lab).exists() and status != 'cancelled'"}]
    assert shareable_problems(view) == []
    read_view(view)


def test_not_a_view_is_not_shareable() -> None:
    assert [p.message for p in shareable_problems([])] == ["a ViewDefinition must be a JSON object"]


# --- rows over every case -------------------------------------------------------------------------------------


VIEW_RESOURCE = {
    "patient": "Patient",
    "condition": "Condition",
    "diagnostic_report": "DiagnosticReport",
    "observation": "Observation",
    "imaging_study": "ImagingStudy",
    "specimen": "Specimen",
    "procedure": "Procedure",
    "medication": "MedicationStatement",
}


def test_one_row_per_resource_and_every_row_keyed_to_its_patient(
    rows: dict[str, dict[str, Rows]], resources: dict[str, list[dict[str, Any]]]
) -> None:
    totals: Counter[str] = Counter()
    for case, found in resources.items():
        patient = next(_of_type(found, "Patient"))["id"]
        for view, kind in VIEW_RESOURCE.items():
            expected = sorted(r["id"] for r in _of_type(found, kind))
            got = rows[case][view]
            assert sorted(row[f"{kind.lower()}_id"] for row in got) == expected, (case, view)
            if view != "patient":
                assert {row["subject_ref"] for row in got} <= {patient}, (case, view)
            totals[view] += len(got)
        links = sum(len(r.get("result", [])) for r in _of_type(found, "DiagnosticReport"))
        assert len(rows[case]["report_result"]) == links
        totals["report_result"] += links
    # The figures of the 19 cases (3 packaged, 16 transcribed): a change of the mappings shows here.
    assert totals == {
        "patient": 19,
        "condition": 69,
        "diagnostic_report": 82,
        "observation": 429,
        "imaging_study": 37,
        "specimen": 15,
        "procedure": 43,
        "medication": 43,
        "report_result": 183,
    }


def _diagnoses(view_rows: Rows) -> dict[str, str]:
    return {
        r["code_text"]: r["verification_status"]
        for r in view_rows
        if r["profile"].endswith(("FinalDiagnosis", "DifferentialDiagnosis"))
    }


def test_differential_statuses_of_the_seed(rows: dict[str, dict[str, Rows]]) -> None:
    # The seed's X-ray, ultrasound and examination held six diagnoses; the biopsy confirmed one, refuting the rest.
    assert _diagnoses(rows[SEED]["condition"]) == {
        "Dystrophic calcification": "confirmed",
        "Soft tissue tumour": "refuted",
        "Lipoma": "refuted",
        "Calcified granuloma": "refuted",
        "Calcified cyst": "refuted",
        "Post-traumatic heterotopic ossification": "refuted",
        "Myositis ossificans": "refuted",
    }


def test_differential_statuses_of_25884600(rows: dict[str, dict[str, Rows]]) -> None:
    # Leptospirosis confirmed by serology (final), myocarditis by troponin, dengue and mycoplasma excluded, three
    # complications the report states (confirmed by no step).
    assert _diagnoses(rows["25884600.yaml"]["condition"]) == {
        "Leptospirosis": "confirmed",
        "Early and severe myocarditis": "confirmed",
        "Dengue infection": "refuted",
        "Mycoplasma infection": "refuted",
        "Rapid atrial fibrillation": "confirmed",
        "Refractory shock": "confirmed",
        "Persistent ventricular tachycardia": "confirmed",
    }


def _expected_status(case: CaseReport, diagnosis_id: str) -> str:
    """How a diagnosis ends, read from the case file: the final diagnosis's verification; else the last step that
    excluded (refuted) or settled it; else the status the file gives; else still a differential (considered)."""
    if case.final_diagnosis is not None and case.final_diagnosis.diagnosis == diagnosis_id:
        return case.final_diagnosis.verification
    status: str | None = None
    for step in case.diagnostic_steps:
        if not step.performed:
            continue
        for assessment in step.assessment:
            if assessment.diagnosis == diagnosis_id and assessment.status != "considered":
                status = "refuted" if assessment.status == "excluded" else assessment.status
    diagnosis = case.diagnosis_by_id[diagnosis_id]
    return status or diagnosis.status or "differential"


@pytest.mark.parametrize("name", sorted(CASE_PATHS))
def test_every_diagnosis_of_the_case_is_a_row_with_its_status(name: str, rows: dict[str, dict[str, Rows]]) -> None:
    case = _case(name)
    by_identifier = {r["identifier_value"]: r for r in rows[name]["condition"]}
    for diagnosis in case.diagnoses:
        final = case.final_diagnosis is not None and case.final_diagnosis.diagnosis == diagnosis.id
        key = f"{case.case_id}/final-diagnosis" if final else f"{case.case_id}/differential/{diagnosis.id}"
        row = by_identifier[key]
        assert row["code_text"] == diagnosis.concept.text
        assert row["verification_status"] == _expected_status(case, diagnosis.id), (name, diagnosis.id)


def _number(value: Any) -> Decimal | None:
    # JSON numbers and the case model's numbers compared as written (11.9 is 11.9, not a binary float).
    return None if value is None else Decimal(str(value))


def _lab_tests(case: CaseReport) -> Iterator[Any]:
    for step in case.diagnostic_steps:
        if step.performed:
            yield from getattr(step, "tests", [])


@pytest.mark.parametrize("name", sorted(CASE_PATHS))
def test_lab_results_carry_value_unit_range_and_interpretation(name: str, rows: dict[str, dict[str, Rows]]) -> None:
    case = _case(name)
    by_identifier = {r["identifier_value"]: r for r in rows[name]["observation"]}
    for test in _lab_tests(case):
        row = by_identifier[f"{case.case_id}/lab-result/{test.id}"]
        assert row["category_code"] == "laboratory"
        assert row["code_text"] == test.concept.text
        if test.value is not None:
            assert _number(row["valuequantity_value"]) == _number(test.value.value)
            assert row["valuequantity_unit"] == test.value.unit
            assert row["valuequantity_system"] == UCUM
            assert row["valuequantity_code"]
        else:
            assert row["valuequantity_value"] is None
        if test.reference_range is not None:
            assert _number(row["referencerange_low_value"]) == _number(test.reference_range.low)
            assert _number(row["referencerange_high_value"]) == _number(test.reference_range.high)
            assert test.reference_range.unit in (row["referencerange_low_unit"], row["referencerange_high_unit"])
        if test.interpretation is not None:
            assert row["interpretation_code"] == INTERPRETATION[test.interpretation]


def test_troponin_of_25884600(rows: dict[str, dict[str, Rows]]) -> None:
    (row,) = (r for r in rows["25884600.yaml"]["observation"] if r["code_text"] == "Troponin I")
    assert (row["valuequantity_value"], row["valuequantity_unit"], row["valuequantity_code"]) == (
        12.77,
        "ng/mL",
        "ng/mL",
    )
    assert (row["referencerange_low_value"], row["referencerange_high_value"]) == (None, 0.4)
    assert row["valuequantity_system"] == UCUM


def test_lab_results_are_found_at_all(rows: dict[str, dict[str, Rows]]) -> None:
    # The question the issue starts from: pulled reports showed none of the laboratory results.
    labs = [r for case in rows.values() for r in case["observation"] if r["category_code"] == "laboratory"]
    assert len(labs) == 103
    assert sum(r["valuequantity_value"] is not None for r in labs) >= 40
    assert sum(r["referencerange_high_value"] is not None for r in labs) >= 10
    assert sum(r["interpretation_code"] is not None for r in labs) >= 30


def test_imaging_studies_carry_their_modality(
    rows: dict[str, dict[str, Rows]], resources: dict[str, list[dict[str, Any]]]
) -> None:
    found: Counter[str] = Counter()
    for case, found_resources in resources.items():
        studies = {r["id"]: r["modality"][0]["code"] for r in _of_type(found_resources, "ImagingStudy")}
        for row in rows[case]["imaging_study"]:
            assert row["modality_code"] == studies[row["imagingstudy_id"]]
            assert row["modality_system"] == "http://dicom.nema.org/resources/ontology/DCM"
            assert row["description"]
            found[row["modality_code"]] += 1
    assert {"MR", "CT", "US", "DX"} <= set(found)
    assert sorted(r["modality_code"] for r in rows[SEED]["imaging_study"]) == ["DX", "US"]


def test_report_result_links_each_report_to_its_results(
    rows: dict[str, dict[str, Rows]], resources: dict[str, list[dict[str, Any]]]
) -> None:
    for case, found in resources.items():
        observations = {r["observation_id"] for r in rows[case]["observation"]}
        reports = {r["id"]: r for r in _of_type(found, "DiagnosticReport")}
        links: dict[str, list[str]] = {}
        for row in rows[case]["report_result"]:
            assert row["result_ref"] in observations, case  # every link joins to an observation row
            links.setdefault(row["diagnosticreport_id"], []).append(row["result_ref"])
        for report_id, report in reports.items():
            expected = [ref["reference"].split("/")[-1] for ref in report.get("result", [])]
            assert links.get(report_id, []) == expected
        by_report = {r["diagnosticreport_id"]: r["result_ref"] for r in rows[case]["diagnostic_report"]}
        assert {k: v for k, v in by_report.items() if v} == links


def test_diagnostic_report_holds_the_columns_of_the_pulled_csv(rows: dict[str, dict[str, Rows]]) -> None:
    # pull diagnostic-reports --format csv: id, patient, category, code, date, status, conclusion, conclusion_codes,
    # results. The view holds each of them, typed and split into Cumulus-like columns.
    csv_to_view = {
        "id": "diagnosticreport_id",
        "patient": "subject_ref",
        "category": "category_code",
        "code": "code_text",
        "date": "effectivedatetime",
        "status": "status",
        "conclusion": "conclusion",
        "conclusion_codes": "conclusioncode_code",
        "results": "result_ref",
    }
    columns = [c["name"] for s in shipped_view("diagnostic_report")["select"] for c in s["column"]]
    assert set(csv_to_view.values()) <= set(columns)
    (xray,) = (r for r in rows[SEED]["diagnostic_report"] if r["code_text"] == "X-ray of the right forearm")
    assert (xray["category_code"], xray["code_code"], xray["status"]) == ("RAD", "18748-4", "final")
    assert xray["conclusion"] == "A small well-defined radiopaque calcified lesion."
    # Imaging reports are told apart by their own names, not the LOINC display they share.
    imaging = [r for case in rows.values() for r in case["diagnostic_report"] if r["category_code"] == "RAD"]
    assert len({r["code_text"] for r in imaging}) > len(imaging) // 2


def test_medication_and_procedure_rows(rows: dict[str, dict[str, Rows]]) -> None:
    meds = rows["18236639.yaml"]["medication"]
    assert len(meds) == 8
    assert all(r["medication_text"] for r in meds)
    assert {r["status"] for r in meds} <= {"active", "completed", "not-taken", "intended", "unknown"}
    (excision,) = rows[SEED]["procedure"]
    assert (excision["code_text"], excision["bodysite_text"], excision["outcome_text"]) == (
        "Surgical excision of the lesion",
        "Right forearm",
        "Successful",
    )
    (specimen,) = rows[SEED]["specimen"]
    assert (specimen["type_code"], specimen["collection_bodysite_text"]) == ("119376003", "Right forearm")


def test_views_are_json_files_an_analyst_can_copy(tmp_path: Path) -> None:
    # A copy with a column removed and a filter added still runs: the files are the whole definition.
    view = shipped_view("observation")
    view["select"][0]["column"] = [c for c in view["select"][0]["column"] if c["name"] != "bodysite_text"]
    view["where"] = [{"path": "category.coding.where(code = 'laboratory').exists()"}]
    copy_path = tmp_path / "labs.json"
    copy_path.write_text(json.dumps(view), encoding="utf-8")
    plan = read_view(json.loads(copy_path.read_text(encoding="utf-8")))
    assert "bodysite_text" not in plan.column_names
    assert shareable_problems(view) == []
