"""Case-model rules the fixtures do not exercise: identity of concepts and patients, plausibility."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml

from casebridge.domain.reader import read_case
from casebridge.errors import CaseSchemaError
from casebridge.mapping.engine import MappingSet
from tests.conftest import SEED_V1


def seed_doc() -> dict[str, Any]:
    return yaml.safe_load(SEED_V1.read_text())


def convert(mappings: MappingSet, doc: dict[str, Any]) -> dict[str, Any]:
    return mappings.convert(read_case(json.dumps(doc, default=str).encode(), source="case.json"))


def by_role(bundle: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for e in bundle["entry"]
        if f"/{role}" in e["resource"].get("identifier", [{}])[0].get("value", "")
    ]


def test_control_characters_are_refused() -> None:
    doc = seed_doc()
    doc["presentation"]["course"] = "bad \x01 text"
    with pytest.raises(CaseSchemaError) as info:
        read_case(json.dumps(doc, default=str).encode(), source="case.json")
    assert info.value.problems[0].location == "presentation.course"


def test_text_only_concepts_never_collide(mappings: MappingSet) -> None:
    doc = seed_doc()
    doc["diagnostic_steps"][1]["differential"] = ["钙化肉芽肿", "钙化囊肿", "x" * 70 + "a", "x" * 70 + "b"]
    doc["final_diagnosis"]["condition"] = "营养不良性钙化"
    bundle = convert(mappings, doc)
    texts = sorted(c["code"]["text"] for c in by_role(bundle, "differential"))
    assert "钙化肉芽肿" in texts and "钙化囊肿" in texts
    assert "x" * 70 + "a" in texts and "x" * 70 + "b" in texts
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(ids) == len(set(ids))


def test_the_same_words_are_one_concept(mappings: MappingSet) -> None:
    doc = seed_doc()
    doc["diagnostic_steps"][1]["differential"] = ["Organised haematoma"]
    doc["diagnostic_steps"][2]["differential"] = ["organised haematoma"]
    bundle = convert(mappings, doc)
    haematoma = [c for c in by_role(bundle, "differential") if c["code"]["text"].lower() == "organised haematoma"]
    assert len(haematoma) == 1


def test_identity_seeds_cannot_collide_with_case_seeds(mappings: MappingSet) -> None:
    doc = seed_doc()
    doc["case_id"] = "identity"
    doc["patient"]["identifier"] = {"system": "urn:registry:a", "value": "final-diagnosis"}
    ids = [e["resource"]["id"] for e in convert(mappings, doc)["entry"]]
    assert len(ids) == len(set(ids))


def test_a_registry_patient_is_shared_by_its_cases_and_only_by_them(mappings: MappingSet) -> None:
    first, second, other_registry = seed_doc(), seed_doc(), seed_doc()
    second["case_id"] = "another-case"
    for doc in (first, second):
        doc["patient"]["identifier"] = {"system": "urn:registry:a", "value": "P1"}
    other_registry["patient"]["identifier"] = {"system": "urn:registry:b", "value": "P1"}
    patients = [by_role(convert(mappings, d), "patient")[0] for d in (first, second, other_registry)]
    assert patients[0]["id"] == patients[1]["id"] != patients[2]["id"]
    assert {"system": "urn:registry:a", "value": "P1"} in patients[0]["identifier"]


def test_duration_longer_than_age_is_refused() -> None:
    doc = seed_doc()
    doc["presentation"]["duration"] = {"value": 30, "unit": "years"}
    with pytest.raises(CaseSchemaError) as info:
        read_case(json.dumps(doc, default=str).encode(), source="case.json")
    assert "presentation.duration: longer than the patient's age" in info.value.report()


def test_the_same_presentation_finding_twice_is_refused() -> None:
    doc = seed_doc()
    doc["presentation"]["findings"].append(copy.deepcopy(doc["presentation"]["findings"][0]))
    with pytest.raises(CaseSchemaError) as info:
        read_case(json.dumps(doc, default=str).encode(), source="case.json")
    assert "presentation.findings (by concept)" in info.value.report() and "used twice" in info.value.report()


def test_a_histopathology_step_without_microscopy_makes_no_empty_observation(mappings: MappingSet) -> None:
    doc = seed_doc()
    histology = doc["diagnostic_steps"][4]
    histology.pop("microscopic")
    histology.pop("findings")
    bundle = convert(mappings, doc)
    assert by_role(bundle, "pathology-microscopic") == []
    report = by_role(bundle, "histopathology-report")[0]
    assert len(report["result"]) == 1  # the diagnosis only


def test_laboratory_findings_get_no_imaging_category(mappings: MappingSet) -> None:
    doc = seed_doc()
    doc["diagnostic_steps"][3]["findings"] = [{"concept": "Haemolysed sample", "present": False}]
    findings = [o for o in by_role(convert(mappings, doc), "finding") if o["code"]["text"] == "Haemolysed sample"]
    assert len(findings) == 1 and "category" not in findings[0]


def test_a_presentation_without_duration_or_course_makes_no_empty_component(mappings: MappingSet) -> None:
    doc = seed_doc()
    doc["presentation"].pop("duration")
    doc["presentation"].pop("course", None)
    complaint = [o for o in by_role(convert(mappings, doc), "presenting-complaint")]
    components = [c for o in complaint for c in o.get("component", [])]
    assert components and all(any(k.startswith("value") for k in c) for c in components), components
    assert not [c for c in components if c["code"].get("text") in ("Duration before presentation", "Course")]
