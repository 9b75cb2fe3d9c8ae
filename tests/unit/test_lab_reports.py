"""Each laboratory step is a DiagnosticReport (category LAB) whose results are the step's Observations, so that a
pull of reports, which searches DiagnosticReports with their results, brings the laboratory results too."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from casebridge.definitions.packages import default_cache_dir
from casebridge.domain.reader import validate_case
from casebridge.mapping.codes import load_terminology, resolve_citation
from casebridge.mapping.engine import MappingSet
from casebridge.mapping.functions import name_uuid
from casebridge.validation.validator import Validator
from tests.conftest import CASE_FILES, CASES_V1, SEED_V1, TERMINOLOGY, pinned_packages_missing

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
PROFILE = "https://casebridge.example.org/fhir/StructureDefinition/CasebridgeLaboratoryReport"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
# A synthetic case (not a real patient) with two laboratory results and a diagnosis settled by them.
THIGH = CASES_V1 / "metastatic-calcification-left-thigh.yaml"


def doc_of(path: Any) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def convert(mappings: MappingSet, doc: dict[str, Any]) -> dict[str, Any]:
    return mappings.convert(validate_case(doc, source="case.yaml"))


def by_role(bundle: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"].get("identifier", [{}])[0].get("value", "").split("/")[1:2] == [role]
    ]


def urls(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def errors(validator: Validator, bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in validator.validate(bundle) if i.severity in ("error", "fatal")]


def test_the_seed_laboratory_step_is_a_report_of_its_result(mappings: MappingSet) -> None:
    doc = doc_of(SEED_V1)
    bundle = convert(mappings, doc)
    (report,) = by_role(bundle, "laboratory-report")
    assert report["resourceType"] == "DiagnosticReport"
    assert report["meta"]["profile"] == [PROFILE]
    # Deterministic, like every other resource: uuid5 of "<case id>/<role>/<step id>".
    assert report["id"] == name_uuid(f"{doc['case_id']}/laboratory-report/laboratory")
    assert report["status"] == "final"
    assert report["category"] == [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}]
    # The case names no panel: no code is invented, the step is named in text.
    assert report["code"] == {"text": "Laboratory tests"}
    resolved = urls(bundle)
    assert resolved[report["subject"]["reference"]]["resourceType"] == "Patient"
    # The report gives no time: the IPS-required effective[x] carries a data-absent-reason, no value.
    assert "effectiveDateTime" not in report
    assert report["_effectiveDateTime"]["extension"] == [{"url": DAR, "valueCode": "unknown"}]
    (calcium,) = by_role(bundle, "lab-result")
    assert [resolved[r["reference"]] for r in report["result"]] == [calcium]


def test_every_result_of_the_step_is_in_its_report(mappings: MappingSet) -> None:
    bundle = convert(mappings, doc_of(THIGH))
    (report,) = by_role(bundle, "laboratory-report")
    resolved = urls(bundle)
    results = [resolved[r["reference"]] for r in report["result"]]
    assert [r["code"]["text"] for r in results] == ["Serum calcium", "Serum phosphate"]
    assert results == by_role(bundle, "lab-result")


def test_a_diagnosis_settled_by_laboratory_tests_cites_their_report(mappings: MappingSet) -> None:
    bundle = convert(mappings, doc_of(THIGH))
    (report,) = by_role(bundle, "laboratory-report")
    resolved = urls(bundle)
    (diagnosis,) = by_role(bundle, "final-diagnosis")
    assert [resolved[d["reference"]] for d in diagnosis["evidence"][0]["detail"]] == [report]
    impression = next(
        i for i in by_role(bundle, "step-impression") if i["identifier"][0]["value"].endswith("/laboratory")
    )
    looked_at = [resolved[r["reference"]] for r in impression["investigation"][0]["item"]]
    assert report in looked_at


def test_two_laboratory_steps_make_two_reports_each_with_its_own_results(mappings: MappingSet) -> None:
    doc = doc_of(THIGH)
    steps = doc["diagnostic_steps"]
    index = next(i for i, s in enumerate(steps) if s["kind"] == "laboratory")
    second = copy.deepcopy(steps[index])
    second.update(id="repeat-laboratory", differential=[])
    second.pop("impression", None)
    second["tests"] = [second["tests"][0] | {"id": "repeat-calcium"}]
    second["findings"] = [{"concept": "Haemolysed sample", "present": False}]
    steps.insert(index + 1, second)
    for order, step in enumerate(steps, start=1):
        step["order"] = order
    bundle = convert(mappings, doc)
    reports = {r["identifier"][0]["value"].rsplit("/", 1)[1]: r for r in by_role(bundle, "laboratory-report")}
    assert set(reports) == {"laboratory", "repeat-laboratory"}
    resolved = urls(bundle)
    first = [resolved[r["reference"]]["identifier"][0]["value"] for r in reports["laboratory"]["result"]]
    repeat = [resolved[r["reference"]]["identifier"][0]["value"] for r in reports["repeat-laboratory"]["result"]]
    assert [v.split("/", 1)[1] for v in first] == ["lab-result/serum-calcium", "lab-result/serum-phosphate"]
    # A finding of the step is one of its Observations too.
    assert [v.split("/", 1)[1] for v in repeat] == ["lab-result/repeat-calcium", "finding/repeat-laboratory-1"]


def test_a_case_without_laboratory_steps_has_no_laboratory_report(mappings: MappingSet) -> None:
    doc = doc_of(SEED_V1)
    doc["diagnostic_steps"] = [s for s in doc["diagnostic_steps"] if s["kind"] != "laboratory"]
    bundle = convert(mappings, doc)
    assert by_role(bundle, "laboratory-report") == []


def test_a_laboratory_step_not_done_has_no_laboratory_report(mappings: MappingSet) -> None:
    doc = doc_of(SEED_V1)
    step = next(s for s in doc["diagnostic_steps"] if s["kind"] == "laboratory")
    for name in ("tests", "source_text"):
        step.pop(name, None)
    step["performed"] = False
    bundle = convert(mappings, doc)
    assert by_role(bundle, "laboratory-report") == [] and by_role(bundle, "lab-result") == []


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.stem)
def test_every_fixture_with_its_laboratory_reports_validates(
    mappings: MappingSet, validator: Validator, path: Any
) -> None:
    bundle = convert(mappings, doc_of(path))
    assert by_role(bundle, "laboratory-report")
    assert errors(validator, bundle) == []


def test_the_profile_needs_the_results(mappings: MappingSet, validator: Validator) -> None:
    (report,) = by_role(convert(mappings, doc_of(SEED_V1)), "laboratory-report")
    bare = json.loads(json.dumps(report))
    bare.pop("result")
    found = errors(validator, bare)
    assert any("DiagnosticReport.result" in message and PROFILE in message for _, message in found), found


def test_the_lab_category_is_confirmed_by_the_pinned_code_system(mappings: MappingSet) -> None:
    (row,) = [c for c in mappings.tables["diagnostic-service"].codings("laboratory") if c["system"] == V2_0074]
    assert (row["code"], row["display"]) == ("LAB", "Laboratory")
    entry, _ = resolve_citation(load_terminology(TERMINOLOGY), "fhir_code_systems.v2_0074.codes[LAB]")
    assert entry["confirmed"] is True and "hl7.terminology.r4#7.0.1" in entry["source"]
    pinned = default_cache_dir() / "hl7.terminology.r4#7.0.1" / "package" / "CodeSystem-v2-0074.json"
    if not pinned.exists():
        pinned_packages_missing(f"{pinned} is missing")
    system = json.loads(pinned.read_text())
    assert system["url"] == V2_0074
    (concept,) = [c for c in system["concept"] if c["code"] == "LAB"]
    assert concept["display"] == "Laboratory"
