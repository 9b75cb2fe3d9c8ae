"""The sections schema 2.0 adds, mapped to FHIR R4: medications (MedicationStatement), family history
(FamilyMemberHistory), social history, outcomes and the patient's perspective (Observations), management (CarePlan),
the consent statement (on the source DocumentReference), procedures' intent, response, adverse events and time,
and time elements on findings and history. Each resource claims its profile and the Bundle validates; a section
left out makes no resource."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from casebridge.domain.case import CaseReport
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Validator
from tests.bundles import by_role, convert, errors, notes, one

PROFILE = "https://casebridge.example.org/fhir/StructureDefinition/"
DAR = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"

# A synthetic case (not a real patient), written for this test: one item of every new section.
CASE: dict[str, Any] = {
    "schema_version": "2.0",
    "case_id": "mapping-2-0",
    "source": {"kind": "synthetic", "citation": "Synthetic case for the schema 2.0 mappings."},
    "patient": {"sex": "female", "age_at_presentation": {"value": 34, "unit": "years"}},
    "history": [
        {"id": "asthma", "condition": {"text": "Asthma"}, "time": {"age": {"value": 12, "unit": "years"}}},
        {"id": "fracture", "condition": {"text": "Fracture of the forearm"}, "time": {"date": "2019-03"}},
        {
            "id": "appendicectomy",
            "condition": {"text": "Appendicectomy"},
            "time": {"relative": {"value": 5, "unit": "years", "relation": "before", "to": "presentation"}},
        },
    ],
    "family_history": [
        {"id": "mother", "relationship": {"text": "mother", "key": "mother"}, "condition": {"text": "Breast cancer"}},
        {
            "id": "stepfather",
            "relationship": {"text": "stepfather"},
            "condition": {"text": "Diabetes"},
            "present": False,
            "quote": "Her stepfather does not have diabetes.",
        },
    ],
    "social_history": [
        {"id": "occupation", "concept": {"text": "Occupation", "key": "occupation"}, "value": "Teacher"},
        {
            "id": "smoking",
            "concept": {"text": "Smoking", "key": "tobacco_smoking_status"},
            "value": "Never smoked",
            "time": {"date": "2020"},
        },
    ],
    "presentation": {
        "complaint": {"text": "Swelling"},
        "findings": [
            {
                "concept": {"text": "Fever"},
                "present": False,
                "time": {"relative": {"relation": "at", "to": "presentation"}, "text": "on admission"},
            }
        ],
    },
    "diagnostic_steps": [
        {
            "id": "examination",
            "kind": "clinical_examination",
            "order": 1,
            "findings": [{"concept": {"text": "Tenderness"}, "present": True, "time": {"date": "2021-04-02"}}],
            "measurements": [
                {
                    "concept": {"text": "Knee flexion"},
                    "value": {"value": 60, "unit": "deg"},
                    "interpretation": "low",
                    "reference_range": {"low": 120, "high": 150, "unit": "deg"},
                }
            ],
        },
        {
            "id": "labs",
            "kind": "laboratory",
            "order": 2,
            "tests": [
                {
                    "id": "crp",
                    "concept": {"text": "C-reactive protein"},
                    "value": {"value": 12, "unit": "mg/L"},
                    "time": {"relative": {"value": 3, "unit": "days", "relation": "after", "to": "presentation"}},
                },
                {"id": "esr", "concept": {"text": "ESR"}, "reported_as": "normal", "time": {"date": "2021-04-03"}},
            ],
        },
    ],
    "procedures": [
        {
            "id": "excision",
            "concept": {"text": "Excision of the lesion"},
            "status": "completed",
            "intent": "To remove the lesion",
            "response": "The swelling did not recur",
            "adverse_events": ["Wound infection"],
            "time": {"relative": {"value": 2, "unit": "weeks", "relation": "after", "to": "presentation"}},
        },
        {"id": "biopsy", "concept": {"text": "Biopsy"}, "status": "completed", "time": {"date": "2021-04-10"}},
        {"id": "drainage", "concept": {"text": "Drainage"}, "time": {"age": {"value": 30, "unit": "years"}}},
        {"id": "dressing", "concept": {"text": "Dressing"}},
    ],
    "medications": [
        {
            "id": "ibuprofen",
            "concept": {"text": "Ibuprofen"},
            "dose": {"value": 400, "unit": "mg"},
            "route": {"text": "oral"},
            "frequency": "three times a day",
            "duration": {"value": 2, "unit": "weeks"},
            "status": "completed",
            "intent": "To relieve pain",
            "response": "The pain resolved",
            "adverse_events": ["Dyspepsia"],
            "time": {"relative": {"relation": "after", "value": 1, "unit": "days", "to": "excision"}},
        },
        {"id": "levothyroxine", "concept": {"text": "Levothyroxine"}, "at_presentation": True},
    ],
    "management": [
        {
            "id": "physiotherapy",
            "concept": {"text": "Physiotherapy"},
            "status": "planned",
            "intent": "To regain motion",
        },
        {"id": "rest", "concept": {"text": "Rest"}, "status": "stopped", "response": "No change"},
        {"id": "advice", "concept": {"text": "Advice on activity"}},
    ],
    "outcomes": [
        {
            "id": "pain",
            "concept": {"text": "Pain"},
            "result": "No pain",
            "assessed_by": "patient",
            "time": {"relative": {"value": 6, "unit": "months", "relation": "after", "to": "excision"}},
        },
        {
            "id": "flexion",
            "concept": {"text": "Knee flexion"},
            "result": "Full range of motion",
            "assessed_by": "clinician",
            "time": {"date": "2022-01-15"},
        },
    ],
    "patient_perspective": {"text": "I am glad the swelling is gone."},
    "consent": {"statement": "Written informed consent was obtained from the patient for publication."},
}

NEW_ROLES = ("medication", "family-history", "social-history", "management", "outcome", "patient-perspective")


@pytest.fixture(scope="module")
def bundle(mappings: MappingSet) -> dict[str, Any]:
    return convert(mappings, CASE)


def patient_url(bundle: dict[str, Any]) -> str:
    (url,) = [e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    return str(url)


def test_the_bundle_validates_with_every_new_section(bundle: dict[str, Any], validator: Validator) -> None:
    assert errors(validator, bundle) == []


@pytest.mark.parametrize(
    ("role", "rtype", "profile"),
    [
        ("medication", "MedicationStatement", "CasebridgeMedicationStatement"),
        ("family-history", "FamilyMemberHistory", "CasebridgeFamilyMemberHistory"),
        ("social-history", "Observation", "CasebridgeSocialHistory"),
        ("management", "CarePlan", "CasebridgeManagement"),
        ("outcome", "Observation", "CasebridgeOutcome"),
        ("patient-perspective", "Observation", "CasebridgePatientPerspective"),
    ],
)
def test_each_role_claims_its_profile(bundle: dict[str, Any], role: str, rtype: str, profile: str) -> None:
    found = by_role(bundle, role)
    assert found
    for resource in found.values():
        assert resource["resourceType"] == rtype
        assert resource["meta"]["profile"] == [PROFILE + profile]


def test_a_medication_is_a_statement_with_its_dosage_and_the_time_in_words(bundle: dict[str, Any]) -> None:
    meds = by_role(bundle, "medication")
    ibuprofen = meds["ibuprofen"]
    assert ibuprofen["status"] == "completed"
    assert ibuprofen["medicationCodeableConcept"] == {"text": "Ibuprofen"}
    (dosage,) = ibuprofen["dosage"]
    assert dosage["doseAndRate"] == [{"doseQuantity": {"value": 400, "unit": "mg", "system": UCUM, "code": "mg"}}]
    assert dosage["route"] == {"text": "oral"}
    assert dosage["timing"] == {"code": {"text": "three times a day"}}
    assert ibuprofen["reasonCode"] == [{"text": "To relieve pain"}]
    # No date in the source: the time IPS requires is unknown, and the relative time is said in words.
    assert "effectiveDateTime" not in ibuprofen
    assert ibuprofen["_effectiveDateTime"]["extension"] == [{"url": DAR, "valueCode": "unknown"}]
    assert notes(ibuprofen) == [
        "Time: 1 day after excision of the lesion.",
        "Duration: 2 weeks.",
        "Response: The pain resolved",
        "Adverse event: Dyspepsia",
    ]
    # Status not given: unknown, never active or completed; no category (at_presentation says when, not where).
    levothyroxine = meds["levothyroxine"]
    assert levothyroxine["status"] == "unknown"
    assert "category" not in levothyroxine and "dosage" not in levothyroxine
    assert notes(levothyroxine) == ["Taken at presentation."]


def test_family_history_codes_the_relationship_only_when_confirmed(bundle: dict[str, Any]) -> None:
    family = by_role(bundle, "family-history")
    mother = family["mother"]
    assert mother["status"] == "completed"
    assert mother["relationship"] == {
        "coding": [{"system": ROLE_CODE, "code": "MTH", "display": "mother"}],
        "text": "mother",
    }
    assert mother["condition"] == [{"code": {"text": "Breast cancer"}}]
    assert mother["patient"]["reference"] == patient_url(bundle)
    # No key: the words only. A condition the relative does not have is no condition, only the note.
    stepfather = family["stepfather"]
    assert stepfather["relationship"] == {"text": "stepfather"}
    assert "condition" not in stepfather
    assert notes(stepfather) == [
        "Does not have: Diabetes (as the source states).",
        'Source: "Her stepfather does not have diabetes."',
    ]


def test_social_history_is_a_social_history_observation(bundle: dict[str, Any]) -> None:
    social = by_role(bundle, "social-history")
    category = [{"coding": [{"system": OBS_CATEGORY, "code": "social-history", "display": "Social History"}]}]
    occupation, smoking = social["occupation"], social["smoking"]
    assert occupation["category"] == smoking["category"] == category
    assert occupation["code"] == {"text": "Occupation"}
    assert occupation["valueString"] == "Teacher"
    assert "effectiveDateTime" not in occupation
    assert smoking["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "72166-2", "display": "Tobacco smoking status"}
    ]
    assert smoking["effectiveDateTime"] == "2020"
    assert smoking["valueString"] == "Never smoked"


def test_management_is_a_care_plan_with_an_honest_status(bundle: dict[str, Any]) -> None:
    plans = by_role(bundle, "management")
    statuses = {k: (p["status"], p["activity"][0]["detail"]["status"]) for k, p in plans.items()}
    assert statuses == {
        "physiotherapy": ("active", "not-started"),
        "rest": ("revoked", "stopped"),
        "advice": ("unknown", "unknown"),
    }
    physiotherapy = plans["physiotherapy"]
    assert physiotherapy["intent"] == "plan"
    assert physiotherapy["description"] == "Physiotherapy"
    assert physiotherapy["activity"][0]["detail"]["code"] == {"text": "Physiotherapy"}
    assert physiotherapy["activity"][0]["detail"]["reasonCode"] == [{"text": "To regain motion"}]
    assert notes(plans["rest"]) == ["Response: No change"]


def test_outcomes_say_who_assessed_them_and_when(bundle: dict[str, Any]) -> None:
    outcomes = by_role(bundle, "outcome")
    pain, flexion = outcomes["pain"], outcomes["flexion"]
    assert pain["code"] == {"text": "Pain"} and pain["valueString"] == "No pain"
    assert [p["reference"] for p in pain["performer"]] == [patient_url(bundle)]
    assert "effectiveDateTime" not in pain
    assert notes(pain) == ["Time: 6 months after excision of the lesion."]
    # No Practitioner is made up for a clinician the source does not name.
    assert "performer" not in flexion
    assert flexion["effectiveDateTime"] == "2022-01-15"
    assert notes(flexion) == ["Assessed by a clinician."]


def test_the_patient_perspective_is_the_patients_observation(bundle: dict[str, Any]) -> None:
    perspective = one(bundle, "patient-perspective")
    assert perspective["code"] == {"text": "Patient perspective"}
    assert perspective["valueString"] == "I am glad the swelling is gone."
    assert perspective["performer"][0]["reference"] == perspective["subject"]["reference"]


def test_the_consent_statement_is_on_the_source_document_and_no_consent_is_made(bundle: dict[str, Any]) -> None:
    source = one(bundle, "source-article")
    assert source["description"].endswith("Written informed consent was obtained from the patient for publication.")
    assert not [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent"]


def test_a_procedure_has_its_intent_response_complications_and_time(bundle: dict[str, Any]) -> None:
    procedures = by_role(bundle, "procedure")
    excision = procedures["excision"]
    assert excision["complication"] == [{"text": "Wound infection"}]
    # performed[x] as a Condition's onset: the age, a date, or the time in words; unknown only without a time.
    performed = {k: v for k, v in excision.items() if k.startswith(("performed", "_performed"))}
    assert performed == {"performedString": "2 weeks after presentation"}
    assert notes(excision) == ["Intent: To remove the lesion", "Response: The swelling did not recur"]
    biopsy = procedures["biopsy"]
    assert biopsy["performedDateTime"] == "2021-04-10"
    assert "_performedDateTime" not in biopsy and "note" not in biopsy
    assert procedures["drainage"]["performedAge"] == {"value": 30, "unit": "years", "system": UCUM, "code": "a"}
    assert procedures["dressing"]["_performedDateTime"]["extension"] == [{"url": DAR, "valueCode": "unknown"}]
    assert procedures["dressing"]["status"] == "unknown"


def test_findings_take_a_date_as_effective_time_and_other_times_as_words(bundle: dict[str, Any]) -> None:
    (tenderness,) = by_role(bundle, "finding").values()
    assert tenderness["effectiveDateTime"] == "2021-04-02"
    (fever,) = by_role(bundle, "presentation-finding").values()
    assert "effectiveDateTime" not in fever
    assert notes(fever) == ["Time: at presentation.", 'Time in the source\'s words: "on admission".']


def test_history_onset_is_an_age_a_date_or_words(bundle: dict[str, Any]) -> None:
    history = by_role(bundle, "history")
    onsets = {k: {n: v for n, v in c.items() if n.startswith("onset")} for k, c in history.items()}
    assert onsets == {
        "asthma": {"onsetAge": {"value": 12, "unit": "years", "system": UCUM, "code": "a"}},
        "fracture": {"onsetDateTime": "2019-03"},
        "appendicectomy": {"onsetString": "5 years before presentation"},
    }


@pytest.mark.parametrize(
    ("section", "role"),
    [
        ("medications", "medication"),
        ("family_history", "family-history"),
        ("social_history", "social-history"),
        ("management", "management"),
        ("outcomes", "outcome"),
        ("patient_perspective", "patient-perspective"),
    ],
)
def test_a_section_left_out_makes_no_resource(mappings: MappingSet, section: str, role: str) -> None:
    doc = copy.deepcopy(CASE)
    del doc[section]
    bundle = convert(mappings, doc)
    assert by_role(bundle, role) == {}
    others = [r for r in NEW_ROLES if r != role]
    assert all(by_role(bundle, r) for r in others)


def test_without_a_consent_statement_the_source_description_is_the_citation(mappings: MappingSet) -> None:
    doc = copy.deepcopy(CASE)
    del doc["consent"]
    source = one(convert(mappings, doc), "source-article")
    assert source["description"] == "Synthetic case for the schema 2.0 mappings."


def test_a_measured_value_is_an_observation_with_its_value(bundle: dict[str, Any]) -> None:
    # A size keeps the component pattern (role measurement); any other measured value has its own role.
    assert by_role(bundle, "measurement") == {}
    flexion = one(bundle, "measured-value")
    assert flexion["meta"]["profile"] == [PROFILE + "CasebridgeMeasuredValue"]
    assert flexion["code"] == {"text": "Knee flexion"}
    assert flexion["valueQuantity"] == {"value": 60, "unit": "deg", "system": UCUM, "code": "deg"}
    assert flexion["interpretation"][0]["coding"][0]["code"] == "L"
    assert flexion["referenceRange"] == [
        {
            "low": {"value": 120, "unit": "deg", "system": UCUM, "code": "deg"},
            "high": {"value": 150, "unit": "deg", "system": UCUM, "code": "deg"},
        }
    ]


def test_a_lab_result_is_dated_only_by_a_date(bundle: dict[str, Any]) -> None:
    results = by_role(bundle, "lab-result")
    crp, esr = results["crp"], results["esr"]
    assert "effectiveDateTime" not in crp
    assert crp["_effectiveDateTime"]["extension"] == [{"url": DAR, "valueCode": "unknown"}]
    assert "Time: 3 days after presentation." in notes(crp)
    assert esr["effectiveDateTime"] == "2021-04-03" and "_effectiveDateTime" not in esr


@pytest.mark.parametrize(
    ("role", "drop", "element"),
    [
        ("social-history", "valueString", "Observation.value[x]"),
        ("outcome", "valueString", "Observation.value[x]"),
        ("patient-perspective", "performer", "Observation.performer"),
        ("management", "description", "CarePlan.description"),
        ("measured-value", "valueQuantity", "Observation.value[x]"),
    ],
)
def test_each_profile_requires_what_its_template_always_fills(
    bundle: dict[str, Any], validator: Validator, role: str, drop: str, element: str
) -> None:
    resource = copy.deepcopy(next(iter(by_role(bundle, role).values())))
    assert errors(validator, resource) == []
    del resource[drop]
    found = errors(validator, resource)
    profile = resource["meta"]["profile"][0]
    assert any(element in message and profile in message for _, message in found), found


def test_a_medication_not_taken_is_a_statement_not_taken(mappings: MappingSet, validator: Validator) -> None:
    """ "N2O was not used": the statement's own status, not a made-up procedure."""
    doc = copy.deepcopy(CASE)
    doc["medications"] = [
        {"id": "n2o", "concept": {"text": "Nitrous oxide"}, "status": "not-taken", "quote": "N2O was not used"}
    ]
    out = convert(mappings, doc)
    (statement,) = by_role(out, "medication").values()
    assert statement["status"] == "not-taken"
    assert statement["medicationCodeableConcept"] == {"text": "Nitrous oxide"}
    assert errors(validator, out) == []


def test_history_the_patient_does_not_have_is_an_absent_finding_not_a_condition(
    mappings: MappingSet, validator: Validator
) -> None:
    doc = copy.deepcopy(CASE)
    doc["history"] = [
        {
            "id": "none",
            "condition": {"text": "Significant past medical history"},
            "present": False,
            "quote": "There was no significant past medical history.",
        }
    ]
    out = convert(mappings, doc)
    assert by_role(out, "history") == {}
    (absent,) = by_role(out, "history-absent").values()
    assert absent["valueBoolean"] is False
    assert absent["code"] == {"text": "Significant past medical history"}
    assert errors(validator, out) == []
    doc["history"][0]["clinical_status"] = "resolved"
    with pytest.raises(ValidationError, match="a condition the patient does not have has no status"):
        CaseReport.model_validate(doc)


def test_a_procedure_duration_a_step_time_and_a_quote_of_two_passages_reach_the_bundle(
    mappings: MappingSet, validator: Validator
) -> None:
    doc = copy.deepcopy(CASE)
    doc["procedures"][0] |= {
        "duration": {"value": 100, "unit": "minutes"},
        "quote": ["underwent an excision", "The operation lasted 100 minutes."],
    }
    doc["diagnostic_steps"][0]["time"] = {"relative": {"relation": "after", "to": "presentation"}}
    out = convert(mappings, doc)
    procedure = by_role(out, "procedure")["excision"]
    assert "Duration: 100 minutes." in notes(procedure)
    assert 'Source: "underwent an excision … The operation lasted 100 minutes."' in notes(procedure)
    step_id = doc["diagnostic_steps"][0]["id"]
    impression = by_role(out, "step-impression")[step_id]
    assert "Time: after presentation." in notes(impression)
    assert errors(validator, out) == []
