"""Every fact of the seed case report is findable in its Bundle (issue A's list, fact by fact)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


class Seed:
    def __init__(self, bundle: dict[str, Any]):
        self.bundle = bundle
        self.by_url = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
        self.by_role: dict[str, list[dict[str, Any]]] = {}
        for e in bundle["entry"]:
            seed = e["resource"].get("identifier", [{}])[0].get("value", "")
            role = seed.split("/")[1] if "/" in seed else e["resource"]["resourceType"]
            self.by_role.setdefault(role, []).append(e["resource"])

    def one(self, role: str) -> dict[str, Any]:  # by identifier role, or by type when it has none
        found = self.by_role[role]
        assert len(found) == 1, role
        return found[0]

    def all(self, role: str) -> list[dict[str, Any]]:
        return self.by_role.get(role, [])

    def resolve(self, ref: dict[str, str]) -> dict[str, Any]:
        return self.by_url[ref["reference"]]


def codes(cc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in cc.get("coding", [])}


@pytest.fixture(scope="module")
def seed(seed_bundle: dict[str, Any]) -> Seed:
    return Seed(seed_bundle)


def test_bundle_is_a_transaction(seed: Seed) -> None:
    assert seed.bundle["type"] == "transaction"
    assert seed.bundle["identifier"]["value"] == "ijsra-2026-18-3-0536"


def test_patient_has_gender_and_nothing_invented(seed: Seed) -> None:
    patient = seed.one("patient")
    assert patient["gender"] == "female"
    # IPS requires a name and a birth date: both are there only as "unknown" (data-absent-reason).
    assert "birthDate" not in patient and patient["_birthDate"]["extension"][0]["valueCode"] == "unknown"
    assert [set(n) for n in patient["name"]] == [{"_text"}]
    age = seed.one("age-at-presentation")
    assert age["valueQuantity"] == {"value": 26, "unit": "years"}
    assert seed.resolve(age["subject"]) is patient


def test_final_diagnosis(seed: Seed) -> None:
    dx = seed.one("final-diagnosis")
    assert codes(dx["verificationStatus"]) == {
        ("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed")
    }
    assert dx["code"] == {"text": "Dystrophic calcification"}  # no confirmed code says what the report says
    assert (SNOMED, "64262003") in codes(dx["bodySite"][0])  # right forearm
    assert dx["onsetString"] == "7 years before presentation"
    evidence = seed.resolve(dx["evidence"][0]["detail"][0])
    assert evidence is seed.one("histopathology-report")
    assert any("previous fracture" in n["text"] for n in dx["note"])


def test_every_differential_of_table_1_is_refuted(seed: Seed) -> None:
    differentials = {c["code"]["text"]: c for c in seed.all("differential")}
    assert set(differentials) == {
        "Soft tissue tumour",
        "Lipoma",
        "Calcified granuloma",
        "Calcified cyst",
        "Myositis ossificans",
        "Post-traumatic heterotopic ossification",
    }
    for c in differentials.values():
        assert codes(c["verificationStatus"]) == {
            ("http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted")
        }
        assert seed.resolve(c["evidence"][0]["detail"][0]) is seed.one("histopathology-report")
    assert (SNOMED, "387837005") in codes(differentials["Soft tissue tumour"]["code"])
    granuloma_notes = " ".join(n["text"] for n in differentials["Calcified granuloma"]["note"])
    assert "X-ray, Ultrasound" in granuloma_notes


def test_table_1_is_a_chain_of_clinical_impressions(seed: Seed) -> None:
    impressions = seed.all("step-impression")
    assert [i["description"] for i in impressions] == [
        "After Clinical examination",
        "After X-ray",
        "After Ultrasound",
        "After Laboratory tests",
        "After Histopathology",
    ]
    by_step = {i["description"]: i for i in impressions}
    problems = {d: sorted(seed.resolve(p)["code"]["text"] for p in i.get("problem", [])) for d, i in by_step.items()}
    assert problems["After Clinical examination"] == ["Lipoma", "Soft tissue tumour"]
    assert problems["After X-ray"] == ["Calcified cyst", "Calcified granuloma"]
    assert problems["After Ultrasound"] == [
        "Calcified granuloma",
        "Myositis ossificans",
        "Post-traumatic heterotopic ossification",
    ]
    assert by_step["After X-ray"]["summary"] == "The swelling might be a calcified granuloma or calcified cyst."
    final = by_step["After Histopathology"]
    assert seed.resolve(final["finding"][0]["itemReference"]) is seed.one("final-diagnosis")
    for previous, current in itertools.pairwise(impressions):
        assert seed.resolve(current["previous"]) is previous


def test_previous_fracture_is_resolved_history(seed: Seed) -> None:
    fracture = seed.one("history")
    assert codes(fracture["clinicalStatus"]) == {
        ("http://terminology.hl7.org/CodeSystem/condition-clinical", "resolved")
    }
    assert (SNOMED, "20511007") in codes(fracture["code"])
    assert fracture["bodySite"][0]["text"] == "Right hand"


def test_serum_calcium_has_no_invented_value(seed: Seed) -> None:
    ca = seed.one("lab-result")
    assert (LOINC, "17861-6") in codes(ca["code"])
    assert ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory") in codes(ca["category"][0])
    assert codes(ca["interpretation"][0]) == {
        ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "N")
    }
    assert not any(k.startswith("value") for k in ca)
    assert codes(ca["dataAbsentReason"]) == {("http://terminology.hl7.org/CodeSystem/data-absent-reason", "unknown")}
    assert any("Within normal range" in n["text"] for n in ca["note"])
    assert not any("Specimen" in n["text"] for n in ca["note"])  # the report names no specimen


def test_lesion_size_in_ucum(seed: Seed) -> None:
    size = seed.one("measurement")
    assert (LOINC, "21889-1") in codes(size["code"])
    dims = [(codes(c["code"]), c["valueQuantity"]) for c in size["component"]]
    ucum = "http://unitsofmeasure.org"
    assert dims == [
        ({(LOINC, "33728-7")}, {"value": 0.57, "unit": "cm", "system": ucum, "code": "cm"}),
        ({(LOINC, "33729-5")}, {"value": 0.44, "unit": "cm", "system": ucum, "code": "cm"}),
    ]
    assert seed.resolve(size["derivedFrom"][0])["description"] == "Ultrasound of the right forearm"


def test_examination_findings(seed: Seed) -> None:
    findings = {o["code"]["text"]: o["valueBoolean"] for o in seed.all("presentation-finding") + seed.all("finding")}
    assert findings == {
        "Movable mass at the affected site": True,
        "Pain in the swelling": False,
        "Redness or colour change": False,
        "Increase in size of the swelling": False,
        "Other swellings in the body": False,
        "Other discomfort": False,
        "Aesthetic concern about the swelling": True,
    }
    complaint = seed.one("presenting-complaint")
    assert (SNOMED, "64262003") in codes(complaint["bodySite"])
    components = {c["code"]["text"]: c for c in complaint["component"]}
    assert components["Duration before presentation"]["valueString"] == "7 years"
    assert components["Suspected at presentation"]["valueCodeableConcept"]["text"] == "Soft tissue tumour"


def test_imaging_studies_and_reports(seed: Seed) -> None:
    studies = {s["description"]: s for s in seed.all("imaging-study")}
    assert set(studies) == {"X-ray of the right forearm", "Ultrasound of the right forearm"}
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    for name, modality, procedure in (
        ("X-ray of the right forearm", "DX", "783544001"),
        ("Ultrasound of the right forearm", "US", "426019005"),
    ):
        study = studies[name]
        series = study["series"][0]
        assert (series["modality"]["system"], series["modality"]["code"]) == (dcm, modality)
        assert series["bodySite"]["code"] == "14975008"
        assert series["laterality"]["code"] == "419465000"
        assert series["uid"].startswith("2.25.")
        assert (SNOMED, procedure) in codes(study["procedureCode"][0])
        assert study["status"] == "unknown"
    reports = {seed.resolve(r["imagingStudy"][0])["description"]: r for r in seed.all("imaging-report")}
    assert reports["X-ray of the right forearm"]["conclusion"] == "A small well-defined radiopaque calcified lesion."
    assert "heteroechoic" in reports["Ultrasound of the right forearm"]["conclusion"]
    assert seed.resolve(reports["Ultrasound of the right forearm"]["result"][0]) is seed.one("measurement")


def test_excision_specimen_and_histopathology(seed: Seed) -> None:
    procedure = seed.one("procedure")
    assert procedure["status"] == "completed"
    assert (SNOMED, "64262003") in codes(procedure["bodySite"][0])
    assert procedure["outcome"]["text"] == "Successful"
    specimen = seed.one("specimen")
    assert (SNOMED, "119376003") in codes(specimen["type"])
    report = seed.one("histopathology-report")
    assert seed.resolve(procedure["report"][0]) is report
    assert report["status"] == "final"
    assert ("http://terminology.hl7.org/CodeSystem/v2-0074", "SP") in codes(report["category"][0])
    assert seed.resolve(report["specimen"][0]) is specimen
    for words in ("Dystrophic calcification", "calcium salts", "no atypical cells", "malignancy"):
        assert words in report["conclusion"]
    results = [seed.resolve(r) for r in report["result"]]
    assert [codes(r["code"]) for r in results] == [{(LOINC, "22635-7")}, {(LOINC, "22637-3")}]
    components = {c["code"]["text"]: c["valueBoolean"] for c in results[0]["component"]}
    assert components == {"Deposition of calcium salts": True, "Atypical cells": False, "Signs of malignancy": False}


def test_provenance_points_at_the_article(seed: Seed) -> None:
    provenance = seed.one("Provenance")
    article = seed.resolve(provenance["entity"][0]["what"])
    assert {"system": "https://doi.org", "value": "10.30574/ijrsra.2026.18.3.0536"} in article["identifier"]
    assert article["content"][0]["attachment"]["url"] == "https://doi.org/10.30574/ijrsra.2026.18.3.0536"
    assert "Accepted 2026-03-17" in article["description"]
    assert "Informed consent was obtained" in article["description"]
    assert provenance["entity"][0]["agent"][0]["who"]["display"] == "Madhurima Mahanti"
    assert provenance["agent"][0]["who"]["display"] == "casebridge"
    for words in ("University of Calcutta", "Keywords: Dystrophic", "Corresponding author: Madhurima Mahanti"):
        assert words in article["description"]
    titles = [c["attachment"]["title"] for c in article["content"]]
    assert "Table 1: The whole procedure to come in conclusion as Dystrophic calcification" in titles
    assert "Figure 1: Clinical swelling on the right forearm" in titles
    assert len(provenance["target"]) == len(seed.bundle["entry"]) - 2
