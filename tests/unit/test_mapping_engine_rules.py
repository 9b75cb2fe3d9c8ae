"""The mapping engine's rules, each on a small mapping folder written for the test.

Loading: every check of bundle.yaml, of a template file and of a template gives its exact error (file, line and
message). Converting: a case gives exact resources, ids, identifiers, narratives and requests; ids are uuid5 of
the seed "<case id>/<role>[/<key>]" (or "identity/<role>/<identity>"), so the same case gives the same ids and
another case others; the vocabulary check and the failures of a template at conversion time give exact errors.
"""

from __future__ import annotations

import datetime as dt
import gc
import uuid
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel

from casebridge.domain.case import (
    Age,
    BodySite,
    CaseReport,
    ClinicalExamination,
    Concept,
    Diagnosis,
    FinalDiagnosis,
    HistoryItem,
    ImagingStep,
    LaboratoryStep,
    LabTest,
    OtherStep,
    PathologyStep,
    Patient,
    Quantity,
    TimeElement,
)
from casebridge.domain.reader import read_case
from casebridge.errors import ConversionError, MappingError, Problem
from casebridge.mapping import functions
from casebridge.mapping.codes import (
    CodeRow,
    CodeTable,
    check_citations,
    load_table,
    load_tables,
    load_terminology,
    resolve_citation,
)
from casebridge.mapping.engine import MappingSet
from casebridge.mapping.expressions import ExpressionCompiler, ListOf, OneOf, static_type
from casebridge.mapping.functions import ID_NAMESPACE, Context, registry
from casebridge.mapping.templates import BodyCompiler
from casebridge.yamlfile import compose

HEADER = "key,system,code,display,source,note\n"
CODES = {
    "concepts": HEADER + "fever,,,Fever,,\ncough,,,Cough,,\n",
    "body-sites": HEADER + "arm,,,Arm,,\n",
    "laterality": HEADER + "right,,,Right,,\n",
    "units": HEADER + "cm,,,Centimetre,,\n",
}
BUNDLE = """\
identifier_system: urn:test:res
resources:
  - resources/patient.yaml
  - resources/condition.yaml
"""
PATIENT = """\
resourceType: Patient
resources:
  - role: patient
    title: The patient
    body:
      gender: "{{ case.patient.sex }}"
"""
CONDITION = """\
resourceType: Condition
resources:
  - role: diagnosis
    for_each: case.diagnoses
    as: d
    key: d.id
    title: "{{ d.concept.text }}"
    body:
      code: "{{ concept(d.concept) }}"
      subject: "{{ ref('patient') }}"
"""
CONDITION_ALONE = CONDITION.replace("      subject: \"{{ ref('patient') }}\"\n", "")
TEMPLATES = {"patient.yaml": PATIENT, "condition.yaml": CONDITION}
RECORDED = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
# The FHIR model classes the templates here use, built once at import (a pydantic class takes up to half a second
# the first time): the tests, and each forked run of them, then start with the classes built.
FHIR_TYPES = {t: get_fhir_model_class(t) for t in ("Patient", "Condition", "Provenance", "QuestionnaireResponse")}
FHIR_TYPES |= {t: get_fhir_model_class(t) for t in ("ImagingStudy", "Procedure", "Encounter")}
# What is imported by now (casebridge, pydantic's models) lives as long as the process: frozen, the collector stops
# scanning it at the end of every pytest session, which a mutation run starts once per mutant in a forked process.
gc.freeze()


def write(
    root: Path,
    *,
    bundle: str = BUNDLE,
    templates: dict[str, str] | None = None,
    codes: dict[str, str] | None = None,
    codes_dir: str = "codes",
) -> Path:
    """A mapping folder ``root/mappings``: bundle.yaml, resources/*.yaml and codes/*.csv."""
    folder = root / "mappings"
    (folder / "resources").mkdir(parents=True)
    (folder / codes_dir).mkdir()
    (folder / "bundle.yaml").write_text(bundle)
    for name, text in (TEMPLATES if templates is None else templates).items():
        (folder / "resources" / name).write_text(text)
    for name, text in (CODES if codes is None else codes).items():
        (folder / codes_dir / f"{name}.csv").write_text(text)
    return folder


def only(template: str, name: str = "t.yaml", **bundle_keys: str) -> dict[str, Any]:
    """write() arguments for a folder with one template file (and bundle.yaml keys added)."""
    keys = {"identifier_system": "urn:test:res"} | bundle_keys
    extra = "".join(f"{k}: {v}\n" for k, v in keys.items())
    return {
        "bundle": f"{extra}resources:\n  - resources/{name}\n",
        "templates": {name: template},
    }


def load_error(folder: Path, terminology: Path | None = None) -> MappingError:
    with pytest.raises(MappingError) as info:
        MappingSet.load(folder, terminology=terminology)
    return info.value


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the one occurrence of ``needle`` in ``text``."""
    assert text.count(needle) == 1, needle
    return text[: text.index(needle)].count("\n") + 1


def case(case_id: str = "case-1", **fields: Any) -> CaseReport:
    doc: dict[str, Any] = {
        "schema_version": "2.0",
        "case_id": case_id,
        "source": {"kind": "synthetic", "citation": "Made up for a test."},
        "patient": {"sex": "female"},
        "diagnoses": [
            {"id": "d1", "concept": {"text": "Fever", "key": "fever"}},
            {"id": "d2", "concept": {"text": "Cough"}},
        ],
    }
    return CaseReport.model_validate(doc | fields)


def uid(seed: str) -> str:
    return str(uuid.uuid5(ID_NAMESPACE, seed))


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


# --- conversion: the whole Bundle ----------------------------------------------------------------------------


def test_a_case_converts_to_an_exact_bundle(tmp_path: Path) -> None:
    mappings = MappingSet.load(write(tmp_path))
    conversion = mappings.convert_detailed(case(), recorded=RECORDED, source="case.yaml")
    patient, d1, d2 = uid("case-1/patient"), uid("case-1/diagnosis/d1"), uid("case-1/diagnosis/d2")
    patient_ref = {"reference": f"urn:uuid:{patient}", "display": "The patient"}
    assert conversion.bundle == {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:test:res", "value": "case-1"},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{patient}",
                "resource": {
                    "resourceType": "Patient",
                    "id": patient,
                    "text": {
                        "status": "generated",
                        "div": f"<div {XHTML}><p><b>The patient</b> (Patient)</p><table>"
                        "<tr><th>Identifier</th><td>System: urn:test:res, Value: case-1/patient</td></tr>"
                        "<tr><th>Gender</th><td>female</td></tr></table></div>",
                    },
                    "identifier": [{"system": "urn:test:res", "value": "case-1/patient"}],
                    "gender": "female",
                },
                "request": {"method": "PUT", "url": f"Patient/{patient}"},
            },
            {
                "fullUrl": f"urn:uuid:{d1}",
                "resource": {
                    "resourceType": "Condition",
                    "id": d1,
                    "text": {
                        "status": "generated",
                        "div": f"<div {XHTML}><p><b>Fever</b> (Condition)</p><table>"
                        "<tr><th>Identifier</th><td>System: urn:test:res, Value: case-1/diagnosis/d1</td></tr>"
                        "<tr><th>Code</th><td>Fever</td></tr>"
                        "<tr><th>Subject</th><td>The patient</td></tr></table></div>",
                    },
                    "identifier": [{"system": "urn:test:res", "value": "case-1/diagnosis/d1"}],
                    "code": {"text": "Fever"},
                    "subject": patient_ref,
                },
                "request": {"method": "PUT", "url": f"Condition/{d1}"},
            },
            {
                "fullUrl": f"urn:uuid:{d2}",
                "resource": {
                    "resourceType": "Condition",
                    "id": d2,
                    "text": {
                        "status": "generated",
                        "div": f"<div {XHTML}><p><b>Cough</b> (Condition)</p><table>"
                        "<tr><th>Identifier</th><td>System: urn:test:res, Value: case-1/diagnosis/d2</td></tr>"
                        "<tr><th>Code</th><td>Cough</td></tr>"
                        "<tr><th>Subject</th><td>The patient</td></tr></table></div>",
                    },
                    "identifier": [{"system": "urn:test:res", "value": "case-1/diagnosis/d2"}],
                    "code": {"text": "Cough"},
                    "subject": patient_ref,
                },
                "request": {"method": "PUT", "url": f"Condition/{d2}"},
            },
        ],
    }
    assert conversion.titles == {
        f"urn:uuid:{patient}": "The patient",
        f"urn:uuid:{d1}": "Fever",
        f"urn:uuid:{d2}": "Cough",
    }
    # The element order: resourceType, id, (meta,) text, then the body.
    assert list(resources(conversion.bundle)[0]) == ["resourceType", "id", "text", "identifier", "gender"]
    assert mappings.convert(case(), recorded=RECORDED) == conversion.bundle


def test_ids_are_deterministic_per_case(tmp_path: Path) -> None:
    mappings = MappingSet.load(write(tmp_path))
    first = mappings.convert(case(), recorded=RECORDED)
    again = mappings.convert(case(), recorded=RECORDED)
    other = mappings.convert(case("case-2"), recorded=RECORDED)
    ids = [r["id"] for r in resources(first)]
    assert ids == [r["id"] for r in resources(again)]
    assert ids == [uid("case-1/patient"), uid("case-1/diagnosis/d1"), uid("case-1/diagnosis/d2")]
    assert ids[0] == "d407be3e-4910-5b1e-80d8-417c73d0c542"  # the same on every run and machine
    assert [r["id"] for r in resources(other)] == [
        uid("case-2/patient"),
        uid("case-2/diagnosis/d1"),
        uid("case-2/diagnosis/d2"),
    ]
    assert not set(ids) & {r["id"] for r in resources(other)}


def test_the_title_is_the_role_when_a_template_has_none(tmp_path: Path) -> None:
    template = "resourceType: Patient\nresources:\n  - role: patient\n    body:\n      gender: female\n"
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    conversion = mappings.convert_detailed(case(), recorded=RECORDED)
    (patient,) = resources(conversion.bundle)
    assert conversion.titles == {f"urn:uuid:{uid('case-1/patient')}": "patient"}
    assert patient["text"]["div"].startswith(f"<div {XHTML}><p><b>Patient</b> (Patient)</p>")


def test_an_identity_gives_a_shared_id(tmp_path: Path) -> None:
    """With an identity, the seed is identity/<role>/<identity>: the same for every case."""
    template = PATIENT.replace("    body:", "    identity: key_of(case.patient.quote)\n    body:")
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    one = mappings.convert(case(patient={"quote": "P7"}), recorded=RECORDED)
    two = mappings.convert(case("case-2", patient={"quote": "P7"}), recorded=RECORDED)
    none = mappings.convert(case(patient={}), recorded=RECORDED)
    assert resources(one)[0]["id"] == resources(two)[0]["id"] == uid("identity/patient/P7")
    assert resources(one)[0]["identifier"] == [{"system": "urn:test:res", "value": "identity/patient/P7"}]
    # An identity that evaluates to nothing falls back to the case's own seed.
    assert resources(none)[0]["id"] == uid("case-1/patient")


def test_an_identity_seed_that_meets_a_case_seed_is_refused(tmp_path: Path) -> None:
    """Case "identity", item d2 (no identity) has the seed identity/r/d2, which item d1's identity gives too."""
    template = (
        "resourceType: Condition\nresources:\n  - role: r\n    for_each: case.diagnoses\n    as: d\n"
        "    key: d.id\n    identity: d.note\n    body:\n      code: '{{ concept(d.concept) }}'\n"
    )
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    diagnoses = [
        {"id": "d1", "concept": {"text": "Fever"}, "note": "d2"},
        {"id": "d2", "concept": {"text": "Cough"}},
    ]
    with pytest.raises(ConversionError) as info:
        mappings.convert(case("identity", diagnoses=diagnoses), source="c.yaml")
    assert str(info.value) == "'identity/r/d2' and 'identity/r/d2' give the same id"
    assert info.value.source == "c.yaml"


def test_two_items_with_one_key_are_refused(tmp_path: Path) -> None:
    template = CONDITION_ALONE.replace("key: d.id", "key: d.concept.text")
    mappings = MappingSet.load(write(tmp_path, **only(template, name="condition.yaml")))
    diagnoses = [{"id": "d1", "concept": {"text": "Same"}}, {"id": "d2", "concept": {"text": "Same"}}]
    with pytest.raises(ConversionError) as info:
        mappings.convert(case(diagnoses=diagnoses), source="c.yaml")
    assert str(info.value) == "two diagnosis resources share the key 'Same'"
    assert info.value.source == "c.yaml"
    with pytest.raises(ConversionError) as info:
        mappings.convert_detailed(case(diagnoses=diagnoses))
    assert info.value.source == ""  # no source named
    with pytest.raises(ConversionError) as info:
        mappings.convert(case(diagnoses=diagnoses))
    assert info.value.source == ""


@pytest.mark.parametrize("key", ["d.stage", "d.stage or ''"])
def test_a_key_that_evaluates_to_nothing_is_refused(tmp_path: Path, key: str) -> None:
    """None and "" are no key."""
    template = CONDITION_ALONE.replace("key: d.id", f'key: "{key}"')
    mappings = MappingSet.load(write(tmp_path, **only(template, name="condition.yaml")))
    with pytest.raises(MappingError) as info:
        mappings.convert(case())
    assert str(info.value) == "mappings/resources/condition.yaml:3: role 'diagnosis': the key evaluated to nothing"
    assert (info.value.file, info.value.line) == ("mappings/resources/condition.yaml", 3)


def test_a_key_is_made_text(tmp_path: Path) -> None:
    """A key that is not a string (a step's order) is its text in the seed and in ref()."""
    template = (
        "resourceType: Procedure\nresources:\n  - role: step\n    for_each: case.diagnostic_steps\n"
        "    as: s\n    key: s.order\n    body:\n      status: completed\n      subject: \"{{ ref('step', 2) }}\"\n"
    )
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    steps = [{"id": "exam", "kind": "clinical_examination", "order": 2}]
    (procedure,) = resources(mappings.convert(case(diagnostic_steps=steps), recorded=RECORDED))
    assert procedure["id"] == uid("case-1/step/2")
    assert procedure["subject"] == {"reference": f"urn:uuid:{uid('case-1/step/2')}"}


def test_when_filters_resources_and_items(tmp_path: Path) -> None:
    patient = PATIENT.replace("    body:", "    when: case.patient.sex == 'male'\n    body:")
    condition = CONDITION.replace("    title:", "    when: d.concept.key\n    title:")
    mappings = MappingSet.load(write(tmp_path, templates={"patient.yaml": patient, "condition.yaml": condition}))
    # An item left out does not end the loop: the items after it are still made.
    first = {"id": "d0", "concept": {"text": "Chills"}}
    bundle = mappings.convert(case(diagnoses=[first, *case().model_dump()["diagnoses"]]), recorded=RECORDED)
    # No patient (the case's is female), and only the diagnosis with a key; ref('patient') is then absent.
    assert [(r["resourceType"], r["id"]) for r in resources(bundle)] == [("Condition", uid("case-1/diagnosis/d1"))]
    assert "subject" not in resources(bundle)[0]
    male = mappings.convert(case(patient={"sex": "male"}), recorded=RECORDED)
    assert [(r["resourceType"], r["id"]) for r in resources(male)] == [
        ("Patient", uid("case-1/patient")),
        ("Condition", uid("case-1/diagnosis/d1")),
    ]


def test_for_each_over_nothing_makes_nothing(tmp_path: Path) -> None:
    """A list setting is None (settings hold scalars): for_each over it makes no resource."""
    template = (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: settings.many\n    as: x\n    key: x\n"
        "    body:\n      gender: female\n"
    )
    mappings = MappingSet.load(write(tmp_path, **only(template, settings="{many: [a, b]}")))
    assert mappings.settings.many is None
    assert mappings.convert(case(), recorded=RECORDED)["entry"] == []


def test_settings_hold_scalars(tmp_path: Path) -> None:
    template = (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: settings.letters\n    as: x\n    key: x\n"
        "    body:\n      gender: '{{ settings.sex }}'\n"
    )
    settings = "{letters: ab, sex: other, number: 3, nested: {a: 1}}"
    mappings = MappingSet.load(write(tmp_path, **only(template, settings=settings)))
    assert vars(mappings.settings) == {"letters": "ab", "sex": "other", "number": 3, "nested": None}
    bundle = mappings.convert(case(), recorded=RECORDED)
    assert [(r["id"], r["gender"]) for r in resources(bundle)] == [
        (uid("case-1/p/a"), "other"),
        (uid("case-1/p/b"), "other"),
    ]


def test_no_settings_are_an_empty_namespace(tmp_path: Path) -> None:
    assert vars(MappingSet.load(write(tmp_path)).settings) == {}


def test_a_body_that_drops_out_leaves_the_resource_bare(tmp_path: Path) -> None:
    template = (
        "resourceType: Patient\nresources:\n  - role: patient\n    body:\n      $if: case.final_diagnosis\n"
        "      gender: female\n"
    )
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    (patient,) = resources(mappings.convert(case(), recorded=RECORDED))
    assert patient == {
        "resourceType": "Patient",
        "id": uid("case-1/patient"),
        "text": {
            "status": "generated",
            "div": f"<div {XHTML}><p><b>Patient</b> (Patient)</p><table>"
            "<tr><th>Identifier</th><td>System: urn:test:res, Value: case-1/patient</td></tr></table></div>",
        },
        "identifier": [{"system": "urn:test:res", "value": "case-1/patient"}],
    }


def test_the_identifier_comes_first_then_the_templates(tmp_path: Path) -> None:
    template = (
        "resourceType: Patient\nresources:\n  - role: patient\n    body:\n      identifier:\n"
        "        - system: urn:registry\n          value: R1\n        - system: urn:other\n          value: O1\n"
    )
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    (patient,) = resources(mappings.convert(case(), recorded=RECORDED))
    assert patient["identifier"] == [
        {"system": "urn:test:res", "value": "case-1/patient"},
        {"system": "urn:registry", "value": "R1"},
        {"system": "urn:other", "value": "O1"},
    ]


def test_a_single_identifier_is_ours(tmp_path: Path) -> None:
    """QuestionnaireResponse.identifier is 0..1: it is the seed's, and a template's own is dropped."""
    template = (
        "resourceType: QuestionnaireResponse\nresources:\n  - role: qr\n    body:\n      status: completed\n"
        "      identifier:\n        system: urn:registry\n        value: R1\n"
    )
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    (qr,) = resources(mappings.convert(case(), recorded=RECORDED))
    assert qr["identifier"] == {"system": "urn:test:res", "value": "case-1/qr"}
    assert list(qr) == ["resourceType", "id", "text", "identifier", "status"]
    assert mappings.identifier_field == {"QuestionnaireResponse": False}


def test_a_type_without_identifier_gets_none(tmp_path: Path) -> None:
    provenance = (
        "resourceType: Provenance\nresources:\n  - role: prov\n    body:\n      recorded: '{{ recorded() }}'\n"
        "      target: \"{{ all_refs(exclude=['prov', 'patient']) }}\"\n      entity:\n"
        "        - what: \"{{ refs('patient') }}\"\n"
    )
    bundle = "identifier_system: urn:x\nrequest: conditional-create\nresources:\n" + "".join(
        f"  - resources/{name}\n" for name in ("patient.yaml", "condition.yaml", "prov.yaml")
    )
    templates = TEMPLATES | {"prov.yaml": provenance}
    mappings = MappingSet.load(write(tmp_path, bundle=bundle, templates=templates))
    assert mappings.identifier_field == {"Patient": True, "Condition": True}
    entry = mappings.convert(case(), recorded=RECORDED)["entry"][-1]
    prov = entry["resource"]
    assert "identifier" not in prov
    assert prov["recorded"] == "2026-01-02T03:04:05+00:00"
    # all_refs and refs read the resources planned so far, in Bundle order, by role.
    d1, d2 = uid("case-1/diagnosis/d1"), uid("case-1/diagnosis/d2")
    assert prov["target"] == [
        {"reference": f"urn:uuid:{d1}", "display": "Fever"},
        {"reference": f"urn:uuid:{d2}", "display": "Cough"},
    ]
    assert prov["entity"] == [{"what": [{"reference": f"urn:uuid:{uid('case-1/patient')}", "display": "The patient"}]}]
    # conditional-create needs an identifier to search on: a type without one is PUT.
    assert entry["request"] == {"method": "PUT", "url": f"Provenance/{uid('case-1/prov')}"}


def test_the_case_id_seeds_derived_uids(tmp_path: Path) -> None:
    template = (
        "resourceType: ImagingStudy\nresources:\n  - role: study\n    body:\n      status: available\n"
        "      series:\n        - uid: \"{{ dicom_uid('series', 1) }}\"\n"
    )
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    (study,) = resources(mappings.convert(case(), recorded=RECORDED))
    assert study["series"] == [{"uid": f"2.25.{uuid.uuid5(ID_NAMESPACE, 'case-1/dicom/series/1').int}"}]


def test_identifier_fields_by_type(tmp_path: Path) -> None:
    folder = write(tmp_path)
    assert MappingSet.load(folder).identifier_field == {"Patient": True, "Condition": True}


def test_recorded_defaults_to_now_in_utc(tmp_path: Path) -> None:
    template = "resourceType: Provenance\nresources:\n  - role: prov\n    body:\n      recorded: '{{ recorded() }}'\n"
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    (prov,) = resources(mappings.convert(case()))
    after = dt.datetime.now(dt.UTC)
    recorded = dt.datetime.fromisoformat(prov["recorded"])
    assert prov["recorded"].endswith("+00:00")
    assert before <= recorded <= after


def test_conditional_create_posts_with_an_escaped_identifier(tmp_path: Path) -> None:
    """ifNoneExist searches the identifier: \\ | , $ in the system and value are escaped."""
    template = (
        "resourceType: Condition\nresources:\n  - role: dx\n    for_each: case.diagnoses\n    as: d\n"
        "    key: d.note\n    body:\n      code: '{{ concept(d.concept) }}'\n"
    )
    system = "'urn:a|b,c$d\\e'"
    mappings = MappingSet.load(
        write(tmp_path, **only(template, request="conditional-create", identifier_system=system))
    )
    assert mappings.request == "conditional-create"
    diagnoses = [{"id": "d1", "concept": {"text": "Fever"}, "note": "x|y,z$w\\v"}]
    (entry,) = mappings.convert(case(diagnoses=diagnoses), recorded=RECORDED)["entry"]
    assert entry["request"] == {
        "method": "POST",
        "url": "Condition",
        "ifNoneExist": "identifier=urn:a\\|b\\,c\\$d\\\\e|case-1/dx/x\\|y\\,z\\$w\\\\v",
    }
    assert entry["resource"]["identifier"] == [{"system": "urn:a|b,c$d\\e", "value": "case-1/dx/x|y,z$w\\v"}]


def test_put_is_the_default_request(tmp_path: Path) -> None:
    mappings = MappingSet.load(write(tmp_path))
    assert mappings.request == "put"
    explicit = MappingSet.load(write(tmp_path / "explicit", **only(PATIENT, request="put")))
    (entry,) = explicit.convert(case(), recorded=RECORDED)["entry"]
    assert entry["request"] == {"method": "PUT", "url": f"Patient/{uid('case-1/patient')}"}


def test_a_profile_is_claimed_in_meta(tmp_path: Path) -> None:
    template = PATIENT.replace("    title:", "    profile: https://example.org/StructureDefinition/P\n    title:")
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    (patient,) = resources(mappings.convert(case(), recorded=RECORDED))
    assert list(patient)[:4] == ["resourceType", "id", "meta", "text"]
    assert patient["meta"] == {"profile": ["https://example.org/StructureDefinition/P"]}


def test_a_template_that_fails_names_its_file_and_line(tmp_path: Path) -> None:
    template = PATIENT.replace("title: The patient", "title: '{{ capitalize(1) }}'")
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    with pytest.raises(MappingError) as info:
        mappings.convert(case())
    # The TypeError's own words differ between the compiled functions and their sources: take them from the call.
    with pytest.raises(TypeError) as cause:
        functions.capitalize(Context(tables={}), 1)  # type: ignore[arg-type]
    assert str(info.value) == f"mappings/resources/t.yaml:3: role 'patient' failed: TypeError: {cause.value}"
    assert (info.value.file, info.value.line) == ("mappings/resources/t.yaml", 3)


@pytest.mark.parametrize(
    ("lines", "line"),
    [
        ("    when: capitalize(1)\n", 3),
        ("    identity: capitalize(1)\n", 3),
        ("    for_each: capitalize(1)\n    as: x\n    key: x\n", 3),
        ("    for_each: case.diagnoses\n    as: x\n    key: capitalize(1)\n", 3),
        ("    for_each: case.diagnoses\n    as: x\n    key: x.id\n    when: capitalize(1)\n", 3),
        ("    for_each: case.diagnoses\n    as: x\n    key: x.id\n    title: '{{ capitalize(1) }}'\n", 3),
        ("    body:\n      gender: '{{ capitalize(1) }}'\n", 3),
    ],
)
def test_each_part_of_a_template_that_fails_names_it(tmp_path: Path, lines: str, line: int) -> None:
    template = "resourceType: Patient\nresources:\n  - role: patient\n" + lines
    if "body:" not in lines:
        template += "    body:\n      gender: female\n"
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    with pytest.raises(MappingError) as info:
        mappings.convert(case())
    with pytest.raises(TypeError) as cause:
        functions.capitalize(Context(tables={}), 1)  # type: ignore[arg-type]
    assert str(info.value) == f"mappings/resources/t.yaml:{line}: role 'patient' failed: TypeError: {cause.value}"


def test_a_mapping_error_of_a_template_passes_unchanged(tmp_path: Path) -> None:
    template = PATIENT.replace('gender: "{{ case.patient.sex }}"', 'gender: "{{ case.patient }}"')
    mappings = MappingSet.load(write(tmp_path, **only(template)))
    with pytest.raises(MappingError) as info:
        mappings.convert(case())
    assert str(info.value).startswith("mappings/resources/t.yaml:6: an expression gave a Patient object")


# --- conversion: the vocabulary check ------------------------------------------------------------------------


def test_unknown_vocabulary_keys_are_listed_with_their_paths(tmp_path: Path) -> None:
    mappings = MappingSet.load(write(tmp_path))
    report = case(
        diagnoses=[
            {
                "id": "d1",
                "concept": {"text": "Fever", "key": "fevr"},
                "body_site": [{"site": {"text": "leg", "key": "leg"}}, {"site": {"text": "arm", "key": "arm"}}],
            },
            {"id": "d2", "concept": {"text": "Cough", "key": "cough"}},
        ],
        presentation={"body_site": [{"site": {"text": "hand", "key": "hand"}}, {"site": {"text": "hand"}}]},
    )
    problems = [
        Problem("presentation.body_site[0].site.key", "unknown body site key 'hand'"),
        Problem("diagnoses[0].concept.key", "unknown vocabulary key 'fevr'"),
        Problem("diagnoses[0].body_site[0].site.key", "unknown body site key 'leg'"),
    ]
    assert mappings.check_vocabulary(report) == problems
    with pytest.raises(ConversionError) as info:
        mappings.convert(report, source="c.yaml")
    assert str(info.value) == "the case uses vocabulary keys the code tables do not know (see mappings/codes)"
    assert info.value.problems == problems
    assert info.value.source == "c.yaml"


def test_a_site_key_is_not_a_concept_key(tmp_path: Path) -> None:
    """A body site's key is looked up in body-sites only: "arm" is no concept, and "fever" no body site."""
    mappings = MappingSet.load(write(tmp_path))
    good = case(presentation={"body_site": [{"site": {"text": "arm", "key": "arm"}}]})
    assert mappings.check_vocabulary(good) == []
    bad = case(presentation={"body_site": [{"site": {"text": "fever", "key": "fever"}}]})
    assert mappings.check_vocabulary(bad) == [
        Problem("presentation.body_site[0].site.key", "unknown body site key 'fever'")
    ]


CASE_1_0 = b"""\
schema_version: "1.0"
case_id: c
source: {kind: synthetic, citation: Made up for a test.}
patient: {sex: female, age_at_presentation: {value: 30, unit: years}}
presentation:
  complaint: {text: Swelling, key: swollen}
  body_site: {site: {text: arm, key: arm}}
diagnostic_steps:
  - {id: exam, kind: clinical_examination, order: 1}
"""


def test_a_case_model_never_walked_before(tmp_path: Path) -> None:
    """The walk keeps each model's field names after its first visit: a class seen for the first time is read too."""

    class FreshCase(CaseReport):
        pass

    mappings = MappingSet.load(write(tmp_path))
    fresh = FreshCase.model_validate(case().model_dump() | {"presentation": {"complaint": {"text": "x", "key": "y"}}})
    assert mappings.check_vocabulary(fresh) == [Problem("presentation.complaint.key", "unknown vocabulary key 'y'")]


def test_an_upgraded_case_says_its_paths_are_the_upgraded_ones(tmp_path: Path) -> None:
    mappings = MappingSet.load(write(tmp_path))
    report = read_case(CASE_1_0, source="old.yaml")
    assert report.upgraded_from == "1.0"
    with pytest.raises(ConversionError) as info:
        mappings.convert(report, source="old.yaml")
    assert str(info.value) == (
        "the case uses vocabulary keys the code tables do not know (see mappings/codes); the paths are those of "
        "the case upgraded from schema 1.0 to 2.0 (casebridge migrate FILE shows it)"
    )
    assert info.value.problems == [Problem("presentation.complaint.key", "unknown vocabulary key 'swollen'")]
    assert info.value.source == "old.yaml"


# --- loading: bundle.yaml ------------------------------------------------------------------------------------


def test_every_bundle_key_is_accepted(tmp_path: Path) -> None:
    bundle = (
        "description: test\nrequest: conditional-create\nidentifier_system: urn:x\nsettings: {a: 1}\n"
        "codes: tables\nresources:\n  - resources/patient.yaml\n"
    )
    mappings = MappingSet.load(write(tmp_path, bundle=bundle, codes_dir="tables"))
    assert mappings.request == "conditional-create"
    assert mappings.identifier_system == "urn:x"
    assert vars(mappings.settings) == {"a": 1}
    assert sorted(mappings.tables) == ["body-sites", "concepts", "laterality", "units"]
    assert [t.role for t in mappings.templates] == ["patient"]
    assert mappings.root == (tmp_path / "mappings").resolve()


def test_a_missing_bundle_file(tmp_path: Path) -> None:
    folder = write(tmp_path)
    (folder / "bundle.yaml").unlink()
    error = load_error(folder)
    assert str(error) == "mappings/bundle.yaml: cannot read the bundle mapping: No such file or directory"
    assert (error.file, error.line) == ("mappings/bundle.yaml", None)


BUNDLE_ERRORS = [
    # (bundle.yaml, line, message)
    ("identifier_system: urn:x\nzeta: 1\nresources: [resources/patient.yaml]\nalpha: 2\n", 4, "unknown key 'alpha'"),
    ("resources: [resources/patient.yaml]\n", 1, "'identifier_system' is required"),
    ("\nidentifier_system: urn:x\n", 1, "'resources' is required"),
    (
        "identifier_system: urn:x\nrequest: post\nresources: [resources/patient.yaml]\n",
        2,
        "request must be put or conditional-create",
    ),
    ("resources: [resources/patient.yaml]\nidentifier_system: 5\n", 2, "identifier_system must be an absolute URI"),
    ("resources: [resources/patient.yaml]\nidentifier_system: res\n", 2, "identifier_system must be an absolute URI"),
    ("identifier_system: urn:x\nresources: []\n", 2, "resources must list the template files"),
    ("identifier_system: urn:x\nresources: resources/patient.yaml\n", 2, "resources must list the template files"),
    (
        "identifier_system: urn:x\nresources:\n  - resources/patient.yaml\n  - resources/nope.yaml\n",
        4,
        "template file 'resources/nope.yaml' does not exist",
    ),
    ("identifier_system: urn:x\nresources:\n  - resources\n", 3, "template file 'resources' does not exist"),
    (
        "identifier_system: urn:x\nresources: [\n",
        3,
        "malformed YAML: expected the node content, but found '<stream end>'",
    ),
    ("- identifier_system\n", 1, "expected a mapping, found a list"),
    (
        "identifier_system: urn:x\nresources: [resources/patient.yaml]\nsettings: 5\n",
        3,
        "expected a mapping, found a scalar",
    ),
    ("identifier_system: urn:x\nresources: [resources/patient.yaml]\nsettings: {a: 1, a: 2}\n", 3, "duplicate key 'a'"),
]


@pytest.mark.parametrize(("bundle", "line", "message"), BUNDLE_ERRORS)
def test_bundle_errors(tmp_path: Path, bundle: str, line: int, message: str) -> None:
    error = load_error(write(tmp_path, bundle=bundle))
    assert str(error) == f"mappings/bundle.yaml:{line}: {message}"
    assert (error.file, error.line) == ("mappings/bundle.yaml", line)


@pytest.mark.parametrize("table", ["concepts", "body-sites", "laterality", "units"])
def test_each_needed_code_table(tmp_path: Path, table: str) -> None:
    codes = {k: v for k, v in CODES.items() if k != table}
    error = load_error(write(tmp_path, codes=codes))
    assert str(error) == f"mappings/codes: the code table {table}.csv is missing"
    assert (error.file, error.line) == ("mappings/codes", None)


def test_a_code_folder_outside_the_mappings_is_named_in_full(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    bundle = f"identifier_system: urn:x\ncodes: {outside}\nresources: [resources/patient.yaml]\n"
    error = load_error(write(tmp_path, bundle=bundle))
    assert str(error) == f"{outside}: the code table concepts.csv is missing"


def test_code_citations_are_checked_against_the_terminology(tmp_path: Path) -> None:
    codes = CODES | {"units": HEADER + "cm,http://unitsofmeasure.org,cm,,ucum.cm,\n"}
    terminology = tmp_path / "terms.yaml"
    terminology.write_text("ucum:\n  cm: {code: cm, system: 'http://unitsofmeasure.org', confirmed: false}\n")
    folder = write(tmp_path, codes=codes)
    assert MappingSet.load(folder).tables["units"].codings("cm") == [
        {"system": "http://unitsofmeasure.org", "code": "cm"}
    ]
    error = load_error(folder, terminology=terminology)
    assert str(error) == (
        "mappings/codes/units.csv:2: source 'ucum.cm' is not confirmed in terms.yaml: its code cannot be used"
    )
    terminology.write_text("ucum:\n  cm: {code: cm, system: 'http://unitsofmeasure.org', confirmed: true}\n")
    assert MappingSet.load(folder, terminology=terminology).tables["units"].codings("cm")


def test_a_template_file_outside_the_mappings_is_named_in_full(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text("resourceType: Patient\n")
    error = load_error(write(tmp_path, bundle=f"identifier_system: urn:x\nresources: [{outside}]\n"))
    assert str(error) == f"{outside}:1: a template file needs resourceType and resources"


def test_a_role_defined_twice(tmp_path: Path) -> None:
    second = PATIENT.replace("resourceType: Patient\n", "# the same role again\nresourceType: Patient\n")
    bundle = "identifier_system: urn:x\nresources: [resources/a.yaml, resources/b.yaml]\n"
    error = load_error(write(tmp_path, bundle=bundle, templates={"a.yaml": PATIENT, "b.yaml": second}))
    assert str(error) == "mappings/resources/b.yaml:4: role 'patient' is already defined in mappings/resources/a.yaml:3"
    assert (error.file, error.line) == ("mappings/resources/b.yaml", 4)


def test_roles_are_known_to_ref_across_files(tmp_path: Path) -> None:
    """ref() checks its role against every file's roles, including later files."""
    condition = CONDITION.replace("ref('patient')", "ref('patiens')")
    error = load_error(write(tmp_path, templates={"patient.yaml": PATIENT, "condition.yaml": condition}))
    assert str(error) == (
        "mappings/resources/condition.yaml:10: ref(): no resource template has role 'patiens'; "
        "roles: diagnosis, patient"
    )


# --- loading: template files and templates -------------------------------------------------------------------

TEMPLATE_ERRORS = [
    ("resourceType: Patient\nresources: [\n", 3, "malformed YAML: expected the node content, but found '<stream end>'"),
    ("- resourceType\n", 1, "expected a mapping, found a list"),
    ("resourceType: Patient\nresources:\n  - role\n", 3, "expected a mapping, found a scalar"),
    # (template file, the text on the line of the error (or a line number), message)
    ("resourceType: Patient\nzeta: 1\nresources: []\nalpha: 2\n", "alpha", "unknown key 'alpha'"),
    ("resources:\n  - role: p\n", 1, "a template file needs resourceType and resources"),
    ("\nresourceType: Patient\n", 1, "a template file needs resourceType and resources"),
    ("resources: [{role: x}]\nresourceType: Speciman\n", "Speciman", "'Speciman' is not a FHIR resource type"),
    ("resourceType: Patient\nresources: []\n", "resources", "resources must be a non-empty list"),
    ("resourceType: Patient\nresources: {role: p}\n", "resources", "resources must be a non-empty list"),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    zeta: 1\n    colour: blue\n",
        "colour",
        "unknown key 'colour' (allowed: as, body, description, for_each, identity, key, profile, role, title, when)",
    ),
    ("resourceType: Patient\nresources:\n  - title: x\n    body: {}\n", "title", "each resource needs a role"),
    (
        "resourceType: Patient\nresources:\n  - role: 5\n",
        "role",
        "role must be a name of letters, digits, - and _, not 5",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: ''\n",
        "role",
        "role must be a name of letters, digits, - and _, not ''",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: a b\n",
        "role",
        "role must be a name of letters, digits, - and _, not 'a b'",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: a.b\n",
        "role",
        "role must be a name of letters, digits, - and _, not 'a.b'",
    ),
    ("resourceType: Patient\nresources:\n  - role: p\n    title: x\n", "role", "role 'p' has no body"),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.diagnoses\n    key: d.id\n    body: {}\n",
        "for_each",
        "for_each needs 'as' (the item's name) and 'key' (what tells items apart)",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.diagnoses\n    as: d\n    body: {}\n",
        "for_each",
        "for_each needs 'as' (the item's name) and 'key' (what tells items apart)",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.diagnoses\n    as: 1d\n    key: x\n",
        "as:",
        "'as' must be a new plain name, not '1d'",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.diagnoses\n    as: case\n    key: x\n",
        "as:",
        "'as' must be a new plain name, not 'case'",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.diagnoses\n    as: settings\n    key: x\n",
        "as:",
        "'as' must be a new plain name, not 'settings'",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.patient\n    as: x\n    key: x\n",
        "for_each",
        "for_each needs a list",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.diagnoses\n    as: x\n    key: x.idd\n",
        "key:",
        "'x' has no field 'idd'; it has: body_site, concept, id, note, quote, stage, status, time",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: case.diagnoses[0].idd\n    as: x\n    key: x\n",
        "for_each",
        "'case.diagnoses[0]' has no field 'idd'; it has: body_site, concept, id, note, quote, stage, status, time",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    key: x\n    body: {}\n",
        "key",
        "'key' only goes with for_each",
    ),
    ("resourceType: Patient\nresources:\n  - role: p\n    as: x\n    body: {}\n", "as", "'as' only goes with for_each"),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    key: x\n    as: x\n    body: {}\n",
        "as",
        "'as' only goes with for_each",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    when: d.x\n    body: {}\n",
        "when",
        "unknown name 'd'; in scope here: case, settings",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    identity: d.x\n    body: {}\n",
        "identity",
        "unknown name 'd'; in scope here: case, settings",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    title: '{{ d }}'\n    body: {}\n",
        "title",
        "unknown name 'd'; in scope here: case, settings",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    body:\n      sex: x\n",
        "sex",
        "Patient has no element 'sex'",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    body:\n      _sex: {}\n",
        "_sex",
        "Patient has no element '_sex'",
    ),
    # Only a primitive has a _ companion: Condition.code is a CodeableConcept.
    (
        "resourceType: Condition\nresources:\n  - role: p\n    body:\n      _code: {}\n",
        "_code",
        "Condition has no element '_code'",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    body:\n      gender: '{{ x }}'\n",
        "gender",
        "unknown name 'x'; in scope here: case, settings",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    profile: ftp://x/P\n    body: {}\n",
        "profile",
        "profile must be the canonical URL of a profile",
    ),
    (
        "resourceType: Patient\nresources:\n  - role: p\n    profile: 5\n    body: {}\n",
        "profile",
        "profile must be the canonical URL of a profile",
    ),
]


@pytest.mark.parametrize(("text", "where", "message"), TEMPLATE_ERRORS)
def test_template_errors(tmp_path: Path, text: str, where: str | int, message: str) -> None:
    line = where if isinstance(where, int) else line_of(text, where)
    error = load_error(write(tmp_path, **only(text)))
    assert str(error) == f"mappings/resources/t.yaml:{line}: {message}"
    assert (error.file, error.line) == ("mappings/resources/t.yaml", line)


@pytest.mark.parametrize("name", ["resourceType", "id", "text", "meta"])
def test_elements_casebridge_sets(tmp_path: Path, name: str) -> None:
    text = f"resourceType: Patient\nresources:\n  - role: p\n    body:\n      gender: male\n      {name}: x\n"
    error = load_error(write(tmp_path, **only(text)))
    assert str(error) == f"mappings/resources/t.yaml:6: {name!r} is set by casebridge, not by the template"


def test_the_sorted_first_of_two_unknown_template_keys(tmp_path: Path) -> None:
    text = "resourceType: Patient\nresources:\n  - role: p\n    zeta: 1\n    body: {}\n    alpha: 2\n"
    error = load_error(write(tmp_path, **only(text)))
    assert error.line == 6 and "unknown key 'alpha'" in str(error)


def test_every_template_key_is_accepted(tmp_path: Path) -> None:
    text = """\
description: every key
resourceType: Condition
resources:
  - role: dx
    description: one per diagnosis with a key
    profile: http://example.org/P
    title: "{{ d.concept.text }}"
    for_each: case.diagnoses
    as: d
    key: d.id
    when: d.concept.key
    identity: d.note
    body:
      $if: d.concept
      _recordedDate:
        extension:
          - url: http://example.org/x
            valueCode: unknown
      code: "{{ concept(d.concept) }}"
"""
    mappings = MappingSet.load(write(tmp_path, **only(text)))
    (template,) = mappings.templates
    assert (template.role, template.resource_type, template.file, template.line) == (
        "dx",
        "Condition",
        "mappings/resources/t.yaml",
        4,
    )
    assert (template.var, template.profile) == ("d", "http://example.org/P")
    diagnoses = [
        {"id": "d1", "concept": {"text": "Fever", "key": "fever"}, "note": "N1"},
        {"id": "d2", "concept": {"text": "Cough"}},
    ]
    (entry,) = mappings.convert(case(diagnoses=diagnoses), recorded=RECORDED)["entry"]
    assert entry["resource"] == {
        "resourceType": "Condition",
        "id": uid("identity/dx/N1"),
        "meta": {"profile": ["http://example.org/P"]},
        "text": {
            "status": "generated",
            "div": f"<div {XHTML}><p><b>Fever</b> (Condition)</p><table>"
            "<tr><th>Identifier</th><td>System: urn:test:res, Value: identity/dx/N1</td></tr>"
            "<tr><th>Code</th><td>Fever</td></tr></table></div>",
        },
        "identifier": [{"system": "urn:test:res", "value": "identity/dx/N1"}],
        "_recordedDate": {"extension": [{"url": "http://example.org/x", "valueCode": "unknown"}]},
        "code": {"text": "Fever"},
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("    body: [gender]\n", "expected a mapping, found a list"),
        ("    body:\n      gender: male\n      gender: female\n", "duplicate key 'gender'"),
    ],
)
def test_a_body_is_a_mapping(tmp_path: Path, body: str, message: str) -> None:
    text = "resourceType: Patient\nresources:\n  - role: p\n" + body
    error = load_error(write(tmp_path, **only(text)))
    line = 4 if body.startswith("    body: [") else 6
    assert str(error) == f"mappings/resources/t.yaml:{line}: {message}"


def test_elements_are_named_as_in_fhir(tmp_path: Path) -> None:
    """Encounter.class is class_ in the Python model: a template writes class."""
    text = "resourceType: Encounter\nresources:\n  - role: e\n    body:\n      class: {code: AMB}\n"
    mappings = MappingSet.load(write(tmp_path, **only(text)))
    (encounter,) = resources(mappings.convert(case(), recorded=RECORDED))
    assert encounter["class"] == {"code": "AMB"}
    error = load_error(write(tmp_path / "other", **only(text.replace("class:", "class_:"))))
    assert str(error) == "mappings/resources/t.yaml:5: Encounter has no element 'class_'"


@pytest.mark.parametrize("profile", ["http://example.org/P", "https://example.org/P"])
def test_a_profile_is_an_http_url(tmp_path: Path, profile: str) -> None:
    text = f"resourceType: Patient\nresources:\n  - role: p\n    profile: {profile}\n    body: {{}}\n"
    assert MappingSet.load(write(tmp_path, **only(text))).templates[0].profile == profile


@pytest.mark.parametrize("role", ["a", "A-b_9", "x_"])
def test_a_role_of_letters_digits_dash_underscore(tmp_path: Path, role: str) -> None:
    text = f"resourceType: Patient\nresources:\n  - role: {role}\n    body: {{}}\n"
    assert [t.role for t in MappingSet.load(write(tmp_path, **only(text))).templates] == [role]


def test_a_for_each_of_unknown_type_is_not_checked(tmp_path: Path) -> None:
    """settings are not typed: for_each over a setting loads, and its item is unchecked."""
    text = (
        "resourceType: Patient\nresources:\n  - role: p\n    for_each: settings.x\n    as: i\n    key: i.anything\n"
        "    body: {}\n"
    )
    (template,) = MappingSet.load(write(tmp_path, **only(text))).templates
    assert template.var == "i"


# --- templates: how a body renders (templates.BodyCompiler) ------------------------------------------------


def render(text: str, **values: Any) -> Any:
    """Compile a body written in YAML with ``values`` in scope (untyped), and render it once."""
    compiler = BodyCompiler(registry(load_codes(), {"r"}), "mappings/resources/t.yaml")
    scope: dict[str, Any] = {"case": CaseReport} | dict.fromkeys(values)
    env = {"case": case(), "$ctx": Context(tables=load_codes(), case_id="case-1")} | values
    return compiler.value(compose(text, "mappings/resources/t.yaml"), scope)(env)


def body_error(text: str, **values: Any) -> str:
    with pytest.raises(MappingError) as info:
        render(text, **values)
    assert info.value.file == "mappings/resources/t.yaml"
    return f"{info.value.line}: {str(info.value).split(': ', 1)[1]}"


def load_codes() -> dict[str, CodeTable]:
    return {name: load_table_text(name, text) for name, text in CODES.items()}


def load_table_text(name: str, text: str) -> CodeTable:
    table = CodeTable(name=name, file=f"{name}.csv")
    for number, line in enumerate(text.splitlines()[1:], start=2):
        key, system, code, display, source, _ = line.split(",")
        table.rows.setdefault(key, []).append(CodeRow(key, system, code, display, source, table.file, number))
    return table


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        (2.5, 2.5),
        (True, True),
        (False, False),
        (0, 0),
        ("text", "text"),
        ([1, 2], [1, 2]),
        ({"a": 1}, {"a": 1}),
        (dt.date(2020, 1, 2), "2020-01-02"),
        (dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2020-01-02T03:04:05+00:00"),
        (None, None),
    ],
)
def test_a_whole_expression_keeps_its_type(value: Any, expected: Any) -> None:
    assert render("'{{ v }}'", v=value) == expected
    assert render("'  {{ v }} '", v=value) == expected  # spaces around it do not make it text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, "<5>"),
        (5.0, "<5>"),
        (2.5, "<2.5>"),
        (Decimal("7.0"), "<7.0>"),
        (False, "<False>"),
        (0, "<0>"),
        (dt.date(2020, 1, 2), "<2020-01-02>"),
        (dt.datetime(2020, 1, 2, 3, 4, 5), "<2020-01-02T03:04:05>"),
        (None, None),
        ("", None),
        ([], None),
        ({}, None),
    ],
)
def test_interpolated_text_formats_values_and_drops_with_an_empty_part(value: Any, expected: str | None) -> None:
    assert render("'<{{ v }}>'", v=value) == expected


def test_interpolation_of_several_parts() -> None:
    assert render("'{{ a }}{{ b }}'", a="x", b=1.0) == "x1"
    assert render("'{{ a }} and {{ b }}!'", a="x", b="y") == "x and y!"
    assert render("'{{ a }} and {{ b }}!'", a="x", b=None) is None


def test_a_model_object_is_no_fhir_value() -> None:
    assert body_error("gender: '{{ case.patient }}'") == (
        "1: an expression gave a Patient object, which is not FHIR: pick a field of it, or pass it to a function "
        "such as concept() or site()"
    )


@pytest.mark.parametrize("text", ["'a {{ b }} }}'", "'{{ b'", "'a }} {{ b }}{{'", "'a }} {{ b }}'"])
def test_unbalanced_braces(text: str) -> None:
    assert body_error(f"\n\nx: {text}", b=1) == f"3: unbalanced {{{{ }}}} in {yaml.safe_load(text)!r}"


def test_plain_scalars() -> None:
    assert render("a: 1\nb: text\nc: 2020-01-02\nd: true\ne: 2.5") == {
        "a": 1,
        "b": "text",
        "c": "2020-01-02",
        "d": True,
        "e": 2.5,
    }


def test_empty_elements_drop_out() -> None:
    body = "a: '{{ v }}'\nb: ''\nc: []\nd: {}\ne: 0\nf: false\ng:\n  h: '{{ v }}'\n"
    assert render(body, v=None) == {"e": 0, "f": False}
    assert render("a: '{{ v }}'", v=None) is None


@pytest.mark.parametrize(("value", "expected"), [(True, {"a": 1}), (1, {"a": 1}), (False, None), (None, None)])
def test_if_keeps_a_mapping_only_when_truthy(value: Any, expected: dict[str, int] | None) -> None:
    assert render("$if: v\na: 1", v=value) == expected
    assert render("x:\n  $if: v\n  a: 1\ny: 2", v=value) == ({"x": expected} if expected else {}) | {"y": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\n$if: w\na: 1", "2: unknown name 'w'; in scope here: case, v"),
        ("x:\n  a: 1\n  a: 2", "3: duplicate key 'a'"),
        ("\nx: 'a {{ w }} b'", "2: unknown name 'w'; in scope here: case, v"),
        ("\n\nx: '{{ w }}'", "3: unknown name 'w'; in scope here: case, v"),
    ],
)
def test_body_errors_name_their_line(text: str, message: str) -> None:
    assert body_error(text, v=1) == message


def test_other_directives_are_refused() -> None:
    assert body_error("a: 1\n$unless: v", v=1) == (
        "2: '$unless' is not a directive here (mappings take $if; list items take $for/$as/$value)"
    )


def test_a_list_drops_empty_items_and_splices_lists() -> None:
    text = "- '{{ a }}'\n- '{{ none }}'\n- ''\n- '{{ many }}'\n- {x: '{{ none }}'}\n- 0\n"
    assert render(text, a="A", none=None, many=["m", None, "", [], {}, 0, "n"]) == ["A", "m", 0, "n", 0]
    assert render("- '{{ none }}'\n- '{{ empty }}'", none=None, empty=[]) is None


def test_a_loop_repeats_the_rest_of_its_item() -> None:
    text = "- first\n- $for: v\n  $as: i\n  value: '{{ i }}'\n  fixed: 1\n- last\n"
    assert render(text, v=["a", None, "b"]) == [
        "first",
        {"value": "a", "fixed": 1},
        {"fixed": 1},
        {"value": "b", "fixed": 1},
        "last",
    ]
    assert render(text, v=None) == ["first", "last"]


def test_a_loop_with_a_value() -> None:
    text = "- $for: v\n  $as: i\n  $value: '{{ i }}'\n"
    assert render(text, v=["a", None, "", 0, ["x", "y"], [], "b"]) == ["a", 0, "x", "y", "b"]
    assert render(text, v=[None]) is None
    # A loop's list counts as a list even when an item renders to a list: its items are spliced.
    assert render("- $for: v\n  $as: i\n  $value: ['{{ i }}', k]\n", v=["a", "b"]) == ["a", "k", "b", "k"]


def test_a_loop_variable_is_in_scope_only_inside() -> None:
    text = "- $for: v\n  $as: i\n  $value: '{{ i }}'\n- '{{ i }}'\n"
    assert body_error(text, v=[1]) == "4: unknown name 'i'; in scope here: case, v"


def test_a_loop_over_a_typed_list_checks_its_items() -> None:
    text = "- $for: case.diagnoses\n  $as: d\n  $value: '{{ d.idd }}'\n"
    assert (
        body_error(text)
        == "3: 'd' has no field 'idd'; it has: body_site, concept, id, note, quote, stage, status, time"
    )
    assert render("- $for: case.diagnoses\n  $as: d\n  $value: '{{ d.id }}'\n") == ["d1", "d2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- $for: v\n  $value: 1\n", "1: $for needs $as: the name of the loop variable"),
        ("- $for: v\n  $as: 1i\n", "2: $as must be a plain name, not '1i'"),
        ("- $for: v\n  $as: 5\n", "2: $as must be a plain name, not 5"),
        ("- $for: v\n  $as: _i\n", "2: $as must be a plain name, not '_i'"),
        ("- $for: v\n  $as: v\n", "2: $as 'v' hides a name already in scope"),
        ("- $for: v\n  $as: case\n", "2: $as 'case' hides a name already in scope"),
        ("- $for: case.patient\n  $as: p\n", "1: $for needs a list"),
        ("- $for: v\n  $as: i\n  $value: 1\n  other: 2\n", "3: $value excludes other keys in a $for item"),
        ("- $for: v\n  $as: i\n  other: 2\n  $value: 1\n", "4: $value excludes other keys in a $for item"),
        ("- $for: w\n  $as: i\n", "1: unknown name 'w'; in scope here: case, v"),
        ("- $for: v\n  $as: i\n  $as: j\n", "3: duplicate key '$as'"),
    ],
)
def test_loop_errors(text: str, message: str) -> None:
    assert body_error(text, v=[1]) == message


def test_a_loop_over_an_untyped_value_loads() -> None:
    assert render("- $for: v\n  $as: i_1\n  $value: '{{ i_1 }}'\n", v=("a",)) == ["a"]


# --- expressions: what a template's {{ }} may say, and what it gives (expressions.ExpressionCompiler) ----------


class _Shape(BaseModel):
    """A model with a field, a property, a cached property, one whose hint cannot be resolved, and hidden names."""

    size: int = 3
    _hidden: int = 0

    @property
    def double(self) -> Concept:
        return Concept(text=str(self.size * 2))

    @cached_property
    def triple(self) -> list[Concept]:
        return [Concept(text=str(self.size * 3))]

    @property
    def vague(self) -> Undefined:  # type: ignore[name-defined]  # noqa: F821 - cannot be resolved on purpose
        return self.size

    def method(self) -> int:
        return self.size


def compile_expr(source: str, **scope: Any) -> tuple[Any, Any]:
    """Compile ``source`` with ``case`` and ``scope`` (name -> static type) in scope, at line 7 of f.yaml."""
    compiler = ExpressionCompiler(registry(load_codes(), {"r"}), file="f.yaml", line=7)
    return compiler.compile(source, {"case": CaseReport} | scope)


def evaluate(source: str, **values: Any) -> Any:
    fn, _ = compile_expr(source, **dict.fromkeys(values))
    return fn({"case": case(), "$ctx": Context(tables=load_codes(), recorded=RECORDED)} | values)


def expr_error(source: str, **scope: Any) -> str:
    with pytest.raises(MappingError) as info:
        compile_expr(source, **scope)
    assert (info.value.file, info.value.line) == ("f.yaml", 7)
    return str(info.value).removeprefix("f.yaml:7: ")


KNOWN = (
    "age, all_refs, capitalize, code, coding, concept, dicom_uid, join, key_of, laterality, quantity, recorded, ref, "
    "refs, site, site_coding, sites, step_ref, texts, when, when_untyped"
)
STEP_TYPES = OneOf((ClinicalExamination, ImagingStep, LaboratoryStep, PathologyStep, OtherStep))


@pytest.mark.parametrize(
    ("source", "static"),
    [
        ("case", CaseReport),
        ("case.patient", Patient),
        ("case.diagnoses", ListOf(Diagnosis)),
        ("case.diagnoses[0]", Diagnosis),
        ("case.diagnoses[0].body_site", ListOf(BodySite)),  # Annotated[list[BodySite], ...]
        ("case.diagnoses[0].body_site[0].site", Concept),
        ("case.final_diagnosis", FinalDiagnosis),  # FinalDiagnosis | None
        ("case.final", Diagnosis),  # a cached property
        ("case.present_history", ListOf(HistoryItem)),  # a property
        ("case.patient.sex", None),  # a Literal: not a model
        ("case.diagnostic_steps[0]", STEP_TYPES),
        ("case.diagnostic_steps[0].tests", ListOf(LabTest)),  # only LaboratoryStep has it
        ("case.diagnostic_steps[0].kind", None),  # the members' types differ
        ("case.diagnostic_steps[0].body_site", BodySite),  # the same in every member
        ("case.patient.sex[0]", None),
        ("[case, 1]", ListOf(None)),
        ("(case, 1)", ListOf(None)),
        ("case.patient if case else case.patient", Patient),
        ("case.patient if case else case.source", None),
        ("concept(case.patient.sex)", None),
        ("s.double", Concept),
        ("s.triple", ListOf(Concept)),
        ("s.vague", None),
        ("s.size", None),
        ("not case", None),
        ("case and case", None),
        ("case == case", None),
        ("1", None),
    ],
)
def test_static_types(source: str, static: Any) -> None:
    assert compile_expr(source, s=_Shape)[1] == static


@pytest.mark.parametrize(
    ("annotation", "static"),
    [
        (list[int], ListOf(None)),
        (list, ListOf(None)),
        (tuple, ListOf(None)),
        (tuple[Patient, ...], ListOf(Patient)),
        (int | str, None),
        (Patient | None, Patient),
        (Patient | Concept, OneOf((Patient, Concept))),
        (Patient | Concept | None, OneOf((Patient, Concept))),
        (Patient | int, None),
        (int, None),
        (None, None),
    ],
)
def test_static_type_of_annotations(annotation: Any, static: Any) -> None:
    assert static_type(annotation) == static


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("a +", "cannot parse expression 'a +': invalid syntax"),
        ("  a +  ", "cannot parse expression 'a +': invalid syntax"),
        ("case + 1", "BinOp is not allowed in a mapping expression ('case + 1')"),
        ("{'a': 1}", "Dict is not allowed in a mapping expression (\"{'a': 1}\")"),
        ("x", "unknown name 'x'; in scope here: case, s"),
        ("concept", "unknown name 'concept' (it is a function: call it); in scope here: case, s"),
        ("case._upgraded_from", "private attribute '_upgraded_from' is not allowed"),
        ("case.__class__", "private attribute '__class__' is not allowed"),
        ("case.diagnoses.id", "'case.diagnoses' is a list: loop over it with $for, or index it"),
        (
            "case.patient.sexx",
            "'case.patient' has no field 'sexx'; it has: age_at_presentation, identifier, quote, sex, title",
        ),
        (
            "case.diagnostic_steps[0].nothing",
            "'case.diagnostic_steps[0]' has no field 'nothing'; it has: assessment, body_site, concept, conclusion, "
            "diagnosis, figure, findings, held, id, impression, kind, label, measurements, microscopic, "
            "not_done_reason, order, panel, performed, performer, quote, specimen, tests, time, title",
        ),
        ("case.diagnoses[s]", "only constant integer indexes are allowed, e.g. items[0]"),
        ("case.diagnoses['a']", "only constant integer indexes are allowed, e.g. items[0]"),
        ("case.diagnoses[-1]", "only constant integer indexes are allowed, e.g. items[0]"),
        ("upper(case)", "unknown function 'upper'; known: " + KNOWN),
        ("s.method()", "unknown function 's.method'; known: " + KNOWN),
        ("join(*s)", "*args and **kwargs are not allowed"),
        ("join(**s)", "*args and **kwargs are not allowed"),
        ("code('nope', 'x')", "code(): no code table 'nope'; tables: body-sites, concepts, laterality, units"),
        ("code(s, 'x')", "code(): the table name must be a constant string"),
        ("code('concepts', 'nokey')", "code(): table 'concepts' has no key 'nokey'"),
        ("code('concepts', key='nokey')", "code(): table 'concepts' has no key 'nokey'"),
        ("coding(table='concepts', key='nokey')", "coding(): table 'concepts' has no key 'nokey'"),
        (
            "concept(s, table='nope')",
            "concept(): no code table 'nope'; tables: body-sites, concepts, laterality, units",
        ),
        ("ref('q')", "ref(): no resource template has role 'q'; roles: r"),
        ("ref(s)", "ref(): the role must be a constant string"),
        ("-1", "only 'not' is allowed as a unary operator"),
        ("join(x)", "unknown name 'x'; in scope here: case, s"),
        ("join(s, sep=x)", "unknown name 'x'; in scope here: case, s"),
        ("[x]", "unknown name 'x'; in scope here: case, s"),
        ("not x", "unknown name 'x'; in scope here: case, s"),
        ("s and x", "unknown name 'x'; in scope here: case, s"),
        ("s < x", "unknown name 'x'; in scope here: case, s"),
        ("x if s else s", "unknown name 'x'; in scope here: case, s"),
        ("s if x else s", "unknown name 'x'; in scope here: case, s"),
        ("s if s else x", "unknown name 'x'; in scope here: case, s"),
        ("x[0]", "unknown name 'x'; in scope here: case, s"),
        ("x.y", "unknown name 'x'; in scope here: case, s"),
    ],
)
def test_expression_errors(source: str, message: str) -> None:
    assert expr_error(source, s=None) == message


class _Site(BaseModel):
    place: BodySite


class _Thing(BaseModel):
    place: Concept


def test_a_field_of_members_with_different_types_is_untyped() -> None:
    assert compile_expr("s.place", s=OneOf((_Site, _Thing)))[1] is None
    assert compile_expr("s.place", s=OneOf((_Site, _Site)))[1] is BodySite


def test_a_model_offers_its_fields_and_properties() -> None:
    """Not private names, not pydantic's model_ names, not methods."""
    assert expr_error("s.nothing", s=_Shape) == "'s' has no field 'nothing'; it has: double, size, triple, vague"


def test_a_call_that_does_not_fit_the_signature() -> None:
    signature = registry({}, set())["capitalize"].signature()
    assert expr_error("capitalize(1, 2)") == f"capitalize{signature}: too many positional arguments"
    assert str(signature).startswith("(text")  # the context is not part of what a template passes


def test_nothing_in_scope() -> None:
    with pytest.raises(MappingError) as info:
        ExpressionCompiler({}, file="f.yaml", line=1).compile("x", {})
    assert str(info.value) == "f.yaml:1: unknown name 'x'; in scope here: nothing"


@pytest.mark.parametrize(
    ("source", "values", "expected"),
    [
        ("1", {}, 1),
        ("'a'", {}, "a"),
        ("v", {"v": 5}, 5),
        ("v.x", {"v": None}, None),
        ("v.missing", {"v": SimpleNamespace()}, None),
        ("v.x", {"v": SimpleNamespace(x=4)}, 4),
        ("v.x.y", {"v": SimpleNamespace(x=None)}, None),
        ("case.patient.sex", {}, "female"),
        ("case.diagnoses[1].id", {}, "d2"),
        ("v[1]", {"v": [1, 2]}, 2),
        ("v[0]", {"v": [1, 2]}, 1),
        ("v[2]", {"v": [1, 2]}, None),
        ("v[0]", {"v": None}, None),
        ("v[0]", {"v": 5}, None),
        ("join(v)", {"v": ["a", None, "", "b"]}, "a; b"),
        ("join(v, '-')", {"v": ["a", "b"]}, "a-b"),
        ("join(v, sep=w)", {"v": ["a", "b"], "w": "+"}, "a+b"),
        ("recorded()", {}, "2026-01-02T03:04:05+00:00"),
        ("code('concepts', 'fever')", {}, {"text": "Fever"}),
        ("v and w", {"v": 1, "w": 2}, 2),
        ("v and w", {"v": 0, "w": 2}, 0),
        ("v and w", {"v": [], "w": 2}, []),
        ("v and w and 3", {"v": 1, "w": 2}, 3),
        ("v and w and 3", {"v": 1, "w": ""}, ""),
        ("v or w", {"v": None, "w": "x"}, "x"),
        ("v or w", {"v": 0, "w": ""}, ""),
        ("v or w", {"v": 1, "w": 2}, 1),
        ("v or w or 3", {"v": None, "w": 0}, 3),
        ("v or w or 3", {"v": None, "w": 2}, 2),
        ("not v", {"v": 0}, True),
        ("not v", {"v": "a"}, False),
        ("v == 1", {"v": 1}, True),
        ("v == 1", {"v": 2}, False),
        ("v != 1", {"v": 2}, True),
        ("v != 1", {"v": 1}, False),
        ("v < 1", {"v": 0}, True),
        ("v < 1", {"v": 1}, False),
        ("v <= 1", {"v": 1}, True),
        ("v <= 1", {"v": 2}, False),
        ("v > 1", {"v": 2}, True),
        ("v > 1", {"v": 1}, False),
        ("v >= 1", {"v": 1}, True),
        ("v >= 1", {"v": 0}, False),
        ("v < 1", {"v": None}, False),  # a missing value compares false
        ("v > 1", {"v": "a"}, False),
        ("not v < 1", {"v": None}, True),
        ("0 < v < 3", {"v": 2}, True),
        ("0 < v < 3", {"v": 3}, False),
        ("0 < v < 3", {"v": 0}, False),
        ("v < w < 3", {"v": None, "w": 1}, False),
        ("1 < v < w", {"v": 2, "w": None}, False),
        ("'a' in v", {"v": ["a"]}, True),
        ("'a' in v", {"v": ["b"]}, False),
        ("'a' in v", {"v": None}, False),
        ("'a' not in v", {"v": ["a"]}, False),
        ("'a' not in v", {"v": ["b"]}, True),
        ("'a' not in v", {"v": None}, True),
        ("v is None", {"v": None}, True),
        ("v is None", {"v": 0}, False),
        ("v is not None", {"v": 0}, True),
        ("v is not None", {"v": None}, False),
        ("'y' if v else 'n'", {"v": 1}, "y"),
        ("'y' if v else 'n'", {"v": 0}, "n"),
        ("v if w else u", {"v": "y", "w": 1, "u": "n"}, "y"),
        ("v if w else u", {"v": "y", "w": 0, "u": "n"}, "n"),
        ("[v, 1]", {"v": None}, [None, 1]),
        ("(v, 1)", {"v": 2}, [2, 1]),
        ("[]", {}, []),
    ],
)
def test_expression_values(source: str, values: dict[str, Any], expected: Any) -> None:
    result = evaluate(source, **values)
    assert result == expected
    assert type(result) is type(expected)


def test_properties_are_read() -> None:
    fn, _ = compile_expr("s.double.text", s=_Shape)
    assert fn({"s": _Shape(size=4)}) == "8"
    fn, _ = compile_expr("s.triple[0].text", s=_Shape)
    assert fn({"s": _Shape(size=4)}) == "12"


# --- functions: what the template functions give (functions.py) ----------------------------------------------

SCT = "http://snomed.info/sct"
FUNCTION_CODES = {
    "concepts": HEADER
    + f"fever,{SCT},1,Fever,s.fever,\nfever,http://hl7.org/fhir/sid/icd-10,R50,Fever (ICD),s.r50,\n"
    + f"fever@arm|right,{SCT},2,Fever of right arm,s.x,\nfever@arm,{SCT},3,Fever of arm,s.y,\ncough,,,Cough,,\n",
    "body-sites": HEADER + f"arm,{SCT},10,Arm,s.arm,\narm|right,{SCT},11,Right arm,s.rarm,\nleg,,,Leg,,\n",
    "laterality": HEADER + f"right,{SCT},20,Right,s.right,\nleft,,,Left,,\n",
    "units": HEADER + "mg,urn:units,MG,Milligram,s.mg,\nbox,,,Box,,\n",
}
FEVER = {"system": SCT, "code": "1", "display": "Fever"}
FEVER_ICD = {"system": "http://hl7.org/fhir/sid/icd-10", "code": "R50", "display": "Fever (ICD)"}


def ctx(**fields: Any) -> Context:
    tables = {name: load_table_text(name, text) for name, text in FUNCTION_CODES.items()}
    return Context(tables=tables, case_id="case-1", **fields)


def arm(side: str | None = None, key: str | None = "arm", text: str = "arm") -> BodySite:
    return BodySite(site=Concept(text=text, key=key), laterality=side)


@pytest.mark.parametrize(
    ("c", "kwargs", "expected"),
    [
        (None, {}, None),
        (Concept(text="hot"), {}, {"text": "hot"}),
        (Concept(text="hot", key="fever"), {}, {"coding": [FEVER, FEVER_ICD], "text": "hot"}),
        (Concept(text="hack", key="cough"), {}, {"text": "hack"}),
        (
            Concept(text="hot", key="fever"),
            {"site": arm("right")},
            {
                "coding": [FEVER, FEVER_ICD, {"system": SCT, "code": "2", "display": "Fever of right arm"}],
                "text": "hot",
            },
        ),
        (
            Concept(text="hot", key="fever"),
            {"site": arm()},
            {
                "coding": [FEVER, FEVER_ICD, {"system": SCT, "code": "3", "display": "Fever of arm"}],
                "text": "hot",
            },
        ),
        (
            Concept(text="hot", key="fever"),
            {"site": [arm()]},
            {
                "coding": [FEVER, FEVER_ICD, {"system": SCT, "code": "3", "display": "Fever of arm"}],
                "text": "hot",
            },
        ),
        (Concept(text="hot", key="fever"), {"site": [arm(), arm()]}, {"coding": [FEVER, FEVER_ICD], "text": "hot"}),
        (Concept(text="hot", key="fever"), {"site": arm("left")}, {"coding": [FEVER, FEVER_ICD], "text": "hot"}),
        (Concept(text="hot", key="fever"), {"site": arm(key=None)}, {"coding": [FEVER, FEVER_ICD], "text": "hot"}),
        (
            Concept(text="Arm!", key="arm"),
            {"table": "body-sites"},
            {
                "coding": [{"system": SCT, "code": "10", "display": "Arm"}],
                "text": "Arm!",
            },
        ),
        ("fever", {}, {"coding": [FEVER, FEVER_ICD]}),
        ("cough", {}, {"text": "Cough"}),
        ("right", {"table": "laterality"}, {"coding": [{"system": SCT, "code": "20", "display": "Right"}]}),
        ("nokey", {}, None),
    ],
)
def test_concept(c: Any, kwargs: dict[str, Any], expected: Any) -> None:
    assert functions.concept(ctx(), c, **kwargs) == expected


@pytest.mark.parametrize(
    ("table", "key", "code", "coding"),
    [
        ("concepts", None, None, None),
        ("concepts", "nokey", None, None),
        ("concepts", "fever", {"coding": [FEVER, FEVER_ICD]}, FEVER),
        ("concepts", "cough", {"text": "Cough"}, None),
        ("units", "mg", {"coding": [{"system": "urn:units", "code": "MG", "display": "Milligram"}]}, None),
    ],
)
def test_code_and_coding(table: str, key: str | None, code: Any, coding: Any) -> None:
    assert functions.code(ctx(), table, key) == code
    if table == "concepts":
        assert functions.coding(ctx(), table, key) == coding


@pytest.mark.parametrize(
    ("bs", "expected"),
    [
        (None, None),
        ([], None),
        (arm(), {"coding": [{"system": SCT, "code": "10", "display": "Arm"}], "text": "Arm"}),
        ([arm()], {"coding": [{"system": SCT, "code": "10", "display": "Arm"}], "text": "Arm"}),
        (arm("right"), {"coding": [{"system": SCT, "code": "11", "display": "Right arm"}], "text": "Right arm"}),
        (arm("left"), {"text": "Left arm"}),  # no lateralised code: the words only, not the code of "arm"
        (arm(key="leg", text="leg"), {"text": "Leg"}),
        (arm(key=None, text="elbow"), {"text": "Elbow"}),
        ([arm("right"), arm(key="leg", text="leg")], {"text": "Right arm and leg"}),
    ],
)
def test_site(bs: Any, expected: Any) -> None:
    assert functions.site(ctx(), bs) == expected


def test_sites_site_coding_and_laterality() -> None:
    assert functions.sites(ctx(), None) == []
    assert functions.sites(ctx(), arm()) == [functions.site(ctx(), arm())]
    assert functions.sites(ctx(), [arm("right"), arm(key=None, text="elbow")]) == [
        {"coding": [{"system": SCT, "code": "11", "display": "Right arm"}], "text": "Right arm"},
        {"text": "Elbow"},
    ]
    assert functions.site_coding(ctx(), None) is None
    assert functions.site_coding(ctx(), arm(key=None)) is None
    assert functions.site_coding(ctx(), arm("right")) == {"system": SCT, "code": "10", "display": "Arm"}
    assert functions.laterality(ctx(), None) is None
    assert functions.laterality(ctx(), arm()) is None
    assert functions.laterality(ctx(), arm("right")) == {"system": SCT, "code": "20", "display": "Right"}
    assert functions.laterality(ctx(), arm("left")) is None


def test_quantity() -> None:
    assert functions.quantity(ctx(), None) is None
    mg = Quantity(value=Decimal("2.5"), unit="mg")
    assert functions.quantity(ctx(), mg) == {"value": Decimal("2.5"), "unit": "mg", "system": "urn:units", "code": "MG"}
    cm = Quantity(value=Decimal("3"), unit="cm")
    assert functions.quantity(ctx(), cm) == {
        "value": Decimal("3"),
        "unit": "cm",
        "system": "http://unitsofmeasure.org",
        "code": "cm",
    }
    bad = Quantity.model_construct(value=Decimal("1"), unit="not a unit")
    assert functions.quantity(ctx(), bad) == {"value": Decimal("1"), "unit": "not a unit"}


def test_references() -> None:
    c = ctx()
    one = functions.Planned("a", "", "Patient", "id-a", "case-1/a", "A")
    two = functions.Planned("b", "1", "Condition", "id-b1", "case-1/b/1", None)
    three = functions.Planned("b", "2", "Condition", "id-b2", "case-1/b/2", "B2")
    c.planned = {("a", ""): one, ("b", "1"): two, ("b", "2"): three}
    c.by_role = {"a": [one], "b": [two, three]}
    assert functions.ref(c, "a") == {"reference": "urn:uuid:id-a", "display": "A"}
    assert functions.ref(c, "b", 1) == {"reference": "urn:uuid:id-b1"}
    assert functions.ref(c, "b", "2") == {"reference": "urn:uuid:id-b2", "display": "B2"}
    assert functions.ref(c, "b") is None
    assert functions.ref(c, "c") is None
    assert functions.refs(c, "b") == [{"reference": "urn:uuid:id-b1"}, {"reference": "urn:uuid:id-b2", "display": "B2"}]
    assert functions.refs(c, "c") == []
    assert functions.all_refs(c) == [
        {"reference": "urn:uuid:id-a", "display": "A"},
        {"reference": "urn:uuid:id-b1"},
        {"reference": "urn:uuid:id-b2", "display": "B2"},
    ]
    assert functions.all_refs(c, exclude=["b"]) == [{"reference": "urn:uuid:id-a", "display": "A"}]
    assert one.full_url == "urn:uuid:id-a"


def test_step_ref_prefers_the_most_specific_product() -> None:
    c = ctx()
    roles = ["step-impression", "laboratory-report", "imaging-report", "histopathology-report"]
    assert functions.step_ref(c, None) is None
    assert functions.step_ref(c, "s") is None
    for n, role in enumerate(roles):
        c.planned[(role, "s")] = functions.Planned(role, "s", "X", f"id-{n}", "seed", None)
        assert functions.step_ref(c, "s") == {"reference": f"urn:uuid:id-{n}"}


@pytest.mark.parametrize("name", ["", "case-1/patient", "case-1/diagnosis/d1", "identity/patient/P7", "é/ü"])
def test_name_uuid_is_uuid5(name: str) -> None:
    assert functions.name_uuid(name) == str(uuid.uuid5(ID_NAMESPACE, name))
    assert functions.name_uuid_bytes(name) == uuid.uuid5(ID_NAMESPACE, name).bytes


def test_dicom_uid() -> None:
    assert functions.dicom_uid(ctx(), "series", "x") == f"2.25.{uuid.uuid5(ID_NAMESPACE, 'case-1/dicom/series/x').int}"


@pytest.mark.parametrize(
    ("unit", "code"), [("years", "a"), ("months", "mo"), ("weeks", "wk"), ("days", "d"), ("hours", "h")]
)
def test_age(unit: str, code: str) -> None:
    assert functions.age(ctx(), None) is None
    # model_construct: the case model's ages have no hours (other time units do).
    assert functions.age(ctx(), Age.model_construct(value=3, unit=unit)) == {
        "value": 3,
        "unit": unit,
        "system": "http://unitsofmeasure.org",
        "code": code,
    }


def test_times_in_words() -> None:
    report = case()
    before = TimeElement(relative={"relation": "before", "to": "d1", "value": 2, "unit": "weeks"})
    assert functions.when(ctx(), None, report) is None
    assert functions.when(ctx(), before, report) == "2 weeks before fever"
    assert functions.when_untyped(ctx(), None, report) is None
    assert functions.when_untyped(ctx(), before, report) == "2 weeks before fever".capitalize()
    after = TimeElement(relative={"relation": "after", "to": "presentation"})
    assert functions.when_untyped(ctx(), after, report) == "After presentation"
    assert functions.when_untyped(ctx(), TimeElement(date="2020-01"), report) is None
    assert functions.when_untyped(ctx(), TimeElement(age={"value": 3}), report) is None


def test_recorded() -> None:
    assert functions.recorded(ctx()) is None
    assert functions.recorded(ctx(recorded=RECORDED.replace(microsecond=123))) == "2026-01-02T03:04:05+00:00"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((None,), None),
        (([],), None),
        (([None, ""],), None),
        ((["a", None, "", "b", 0],), "a; b; 0"),
        ((["a", "b"], "/"), "a/b"),
    ],
)
def test_join(args: tuple[Any, ...], expected: str | None) -> None:
    assert functions.join(ctx(), *args) == expected


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("xray",), "xray"),
        (("xray", "arm"), "xray|arm"),
        (("xray", "arm", "right"), "xray|arm|right"),
        (("xray", None, "right"), None),
        ((None, "arm"), None),
        (("xray", "arm", None), "xray|arm"),
        ((1, 2), "1|2"),
    ],
)
def test_key_of(args: tuple[Any, ...], expected: str | None) -> None:
    assert functions.key_of(ctx(), *args) == expected


def test_capitalize_and_texts() -> None:
    assert functions.capitalize(ctx(), None) is None
    assert functions.capitalize(ctx(), "") == ""
    assert functions.capitalize(ctx(), "abc def") == "Abc def"
    assert functions.texts(ctx(), None) == []
    assert functions.texts(ctx(), [Concept(text="a"), Concept(text="b", key="k")]) == ["a", "b"]


def test_the_default_table_must_exist() -> None:
    with pytest.raises(MappingError) as info:
        ExpressionCompiler(registry({}, set()), file="f.yaml", line=2).compile("concept(v)", {"v": None})
    assert str(info.value) == "f.yaml:2: concept(): no code table 'concepts'; tables: "


def test_the_registry_names_and_documents_each_function() -> None:
    known = registry({}, set())
    assert ", ".join(sorted(known)) == KNOWN
    for name, fn in known.items():
        assert fn.name == name
        assert fn.impl is getattr(functions, name)
        assert fn.doc == (fn.impl.__doc__ or "").strip()
    assert known["join"].doc == ""
    if functions.ref.__doc__:  # the compiled build (mypyc) keeps no docstring; the sources do
        assert (
            known["ref"].doc
            == "A Reference to the resource of ``role`` (and ``key`` for a role with many), or None if absent."
        )
    checked = {name for name, fn in known.items() if fn.check is not None}
    assert checked == {"concept", "code", "coding", "ref", "refs"}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("concept(v, 'nope')", "concept(): no code table 'nope'; tables: body-sites, concepts, laterality, units"),
        ("concept(v, table=v)", "concept(): the table name must be a constant string"),
        (
            "code(table='nope', key='x')",
            "code(): no code table 'nope'; tables: body-sites, concepts, laterality, units",
        ),
        ("coding('concepts', 'nokey')", "coding(): table 'concepts' has no key 'nokey'"),
        (
            "coding(table='nope', key='x')",
            "coding(): no code table 'nope'; tables: body-sites, concepts, laterality, units",
        ),
        ("refs('q')", "refs(): no resource template has role 'q'; roles: r"),
        ("ref(role='q')", "ref(): no resource template has role 'q'; roles: r"),
        ("refs(v)", "refs(): the role must be a constant string"),
    ],
)
def test_constant_arguments_are_checked(source: str, message: str) -> None:
    assert expr_error(source, v=None) == message


@pytest.mark.parametrize(
    "source",
    [
        "concept(v)",
        "concept(v, 'laterality')",
        "code('concepts', v)",
        "coding('concepts', 'fever')",
        "ref('r', 1)",
        "code('concepts', key='fever')",  # the key by keyword is looked up too
        "coding(table='concepts', key='fever')",
    ],
)
def test_good_constant_arguments(source: str) -> None:
    compile_expr(source, v=None)


# --- codes: code tables and their citations (codes.py) ---------------------------------------------------------


def table_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(MappingError) as info:
        load_table(path, label="codes/t.csv")
    assert info.value.file == "codes/t.csv"
    return str(info.value).removeprefix("codes/t.csv")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", ":1: the code table is empty; its first line must be the header"),
        ("key,system,code\n", ":1: the header must be key,system,code,display,source,note (got key,system,code)"),
        (
            "key,system,code,display,source,note,extra\n",
            ":1: the header must be key,system,code,display,source,note "
            "(got key,system,code,display,source,note,extra)",
        ),
        (HEADER + "a,,,A,,\nb,,,B\n", ":3: expected 6 columns (key,system,code,display,source,note), found 4"),
        (HEADER + "a,,,A,,\nb,,,B,,,\n", ":3: expected 6 columns (key,system,code,display,source,note), found 7"),
        (HEADER + " ,,,A,,\n", ":2: the key is empty"),
        (HEADER + "a,,1,A,s.a,\n", ":2: code '1' has no system"),
        (HEADER + "a,snomed,1,A,s.a,\n", ":2: system 'snomed' is not an absolute URI"),
        (HEADER + "a,http://x y,1,A,s.a,\n", ":2: system 'http://x y' is not an absolute URI"),
        (HEADER + "a,ftp://x,1,A,s.a,\n", ":2: system 'ftp://x' is not an absolute URI"),
        (
            HEADER + "a,http://x,1,A,,\n",
            ":2: code '1' cites no source: every code must come from a confirmed entry of "
            "the terminology file (give its path in the source column)",
        ),
        (HEADER + "a,,,,,\n", ":2: an uncoded row needs a display (the text to carry)"),
        (HEADER + "a,http://x,1,A,s.a,\na,http://x,1,A2,s.b,\n", ":3: 'a' lists http://x|1 twice"),
        (
            HEADER + "a,http://x,1,A,s.a,\na,,,A,,\n",
            ":3: 'a': an uncoded row cannot be combined with other rows of the same key",
        ),
        (
            HEADER + "a,,,A,,\na,http://x,1,A,s.a,\n",
            ":3: 'a': an uncoded row cannot be combined with other rows of the same key",
        ),
        (HEADER + '"a\nb",,,A,,\nc,,,,,\n', ":4: an uncoded row needs a display (the text to carry)"),
    ],
)
def test_code_table_errors(tmp_path: Path, text: str, error: str) -> None:
    assert table_error(tmp_path, text) == error


def test_a_code_table_that_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(MappingError) as info:
        load_table(path)
    assert str(info.value).startswith("t.csv: cannot read code table: 'utf-8' codec can't decode byte 0xff")
    with pytest.raises(MappingError) as info:
        load_table(tmp_path / "none.csv", label="x/none.csv")
    assert str(info.value).startswith("x/none.csv: cannot read code table: [Errno 2] No such file or directory")


def test_a_code_table(tmp_path: Path) -> None:
    text = (
        " key , system , code , display , source , note \n# a comment\n  # another\n,,,,,\n\n"
        "a,http://x,1,A,s.a,n\na,urn:y,2,,s.b,\nb,,,Bee,,\n c , , , Sea , , \n"
    )
    path = tmp_path / "things.csv"
    path.write_text(text)
    table = load_table(path)
    assert (table.name, table.file) == ("things", "things.csv")
    assert table.rows["a"] == [
        CodeRow("a", "http://x", "1", "A", "s.a", "things.csv", 6),
        CodeRow("a", "urn:y", "2", "", "s.b", "things.csv", 7),
    ]
    assert sorted(table.rows) == ["a", "b", "c"]
    assert "a" in table and "z" not in table
    assert table.codings("a") == [{"system": "http://x", "code": "1", "display": "A"}, {"system": "urn:y", "code": "2"}]
    assert table.codings("b") == []
    assert table.codings("z") == []
    assert (table.text("a"), table.text("b"), table.text("c"), table.text("z")) == ("A", "Bee", "Sea", None)
    assert table.rows["b"][0].coded is False and table.rows["a"][0].coded is True


def test_codings_that_share_a_system_or_a_code(tmp_path: Path) -> None:
    """Only the same system and code twice is a repeat."""
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "a,http://x,1,A,s.a,\na,http://x,2,B,s.b,\na,urn:z,1,C,s.c,\n")
    assert [(c["system"], c["code"]) for c in load_table(path).codings("a")] == [
        ("http://x", "1"),
        ("http://x", "2"),
        ("urn:z", "1"),
    ]


def test_code_tables_of_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "codes"
    folder.mkdir(parents=True)
    (folder / "b.csv").write_text(HEADER + "x,,,X,,\n")
    (folder / "a.csv").write_text(HEADER + "y,,,Y,,\n")
    (folder / "notes.txt").write_text("not a table")
    tables = load_tables(folder, root=tmp_path)
    assert list(tables) == ["a", "b"]
    assert tables["a"].file == "m/codes/a.csv"
    assert load_tables(folder)["b"].file == str(folder / "b.csv")
    assert load_tables(folder, root=tmp_path / "elsewhere")["b"].file == str(folder / "b.csv")
    with pytest.raises(MappingError) as info:
        load_tables(tmp_path / "m" / "nope", root=tmp_path)
    assert str(info.value) == "m/nope: the code table folder does not exist"


TERMS = {
    "sct": {
        "system": "http://snomed.info/sct",
        "confirmed": True,
        "arm": {"code": 10, "display": "Arm (body structure)"},
        "leg": {"code": "11", "display": "Leg", "confirmed": False},
        "codes": [{"code": "A", "display": "Ay"}, {"code": "B"}, {"code": "B"}],
        "odd": {"code": "12", "system": {"not": "a value"}},
    },
    "loinc": {"system": "http://loinc.org", "lab": {"code": "1-1", "confirmed": True, "modality_system": "urn:m"}},
}


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("sct.arm", TERMS["sct"]["arm"]),
        ("sct.codes[A]", {"code": "A", "display": "Ay"}),
        ("loinc.lab", TERMS["loinc"]["lab"]),
        ("sct", TERMS["sct"]),
    ],
)
def test_resolve_citation(source: str, found: dict[str, Any]) -> None:
    entry, ancestors = resolve_citation(TERMS, source)
    assert entry == found
    assert ancestors[0] is TERMS


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("sct.nope", "no entry 'nope'"),
        ("nope", "no entry 'nope'"),
        ("sct.arm.code.x", "'x' is not a path here"),
        ("sct..arm", "'.arm' is not a path here"),
        ("sct.arm[10]", "'arm' is not a list, so [10] selects nothing"),
        ("sct.codes[C]", "'codes' has 0 items with code 'C'"),
        ("sct.codes[B]", "'codes' has 2 items with code 'B'"),
        ("sct.system", "the path does not end at an entry"),
        ("sct.codes", "the path does not end at an entry"),
    ],
)
def test_resolve_citation_errors(source: str, reason: str) -> None:
    with pytest.raises(KeyError) as info:
        resolve_citation(TERMS, source)
    assert info.value.args[0] == reason


def citation_error(rows: str) -> str:
    """The error of the last row of ``rows`` (the rows before it being good or uncoded)."""
    table = load_table_text("t", HEADER + rows)
    line = rows.count("\n") + 2
    with pytest.raises(MappingError) as info:
        check_citations({"t": table}, TERMS, file="terms.yaml")
    assert (info.value.file, info.value.line) == ("t.csv", line)
    return str(info.value).removeprefix(f"t.csv:{line}: ")


@pytest.mark.parametrize(
    ("row", "error"),
    [
        (
            "a,http://snomed.info/sct,10,Arm,sct.nope,",
            "source 'sct.nope' is not an entry of terms.yaml: no entry 'nope'",
        ),
        (
            "a,http://snomed.info/sct,11,Leg,sct.leg,",
            "source 'sct.leg' is not confirmed in terms.yaml: its code cannot be used",
        ),
        ("a,http://snomed.info/sct,9,Arm,sct.arm,", "code '9' differs from the cited entry's code 10"),
        (
            "a,http://loinc.org,10,Arm,sct.arm,",
            "system 'http://loinc.org' differs from the cited entry's system 'http://snomed.info/sct'",
        ),
        (
            "a,http://loinc.org,1-1,Lab,loinc.lab,",
            "system 'http://loinc.org' differs from the cited entry's system 'urn:m'",
        ),
        (
            "a,http://snomed.info/sct,10,Leg,sct.arm,",
            "display 'Leg' differs from the cited entry's display 'Arm (body structure)'",
        ),
        (
            "a,http://snomed.info/sct,10,Arm (body),sct.arm,",
            "display 'Arm (body)' differs from the cited entry's display 'Arm (body structure)'",
        ),
    ],
)
def test_citation_errors(row: str, error: str) -> None:
    assert citation_error(row) == error
    # After an uncoded row (which cites nothing) and a good one.
    assert citation_error("u,,,Uncoded,,\nb,http://snomed.info/sct,10,Arm,sct.arm,\n" + row) == error


@pytest.mark.parametrize(
    "row",
    [
        "a,http://snomed.info/sct,10,Arm,sct.arm,",  # the semantic tag may be dropped
        "a,http://snomed.info/sct,10,Arm (body structure),sct.arm,",
        "a,http://snomed.info/sct,10,,sct.arm,",  # no display: nothing to compare
        "a,http://snomed.info/sct,A,Ay,sct.codes[A],",  # confirmed by an ancestor
        "a,urn:m,1-1,Lab,loinc.lab,",  # modality_system stands for system
        "a,http://snomed.info/sct,12,Odd,sct.odd,",  # a mapping is no system: the ancestor's is used
        "u,,,Uncoded,nowhere,",  # an uncoded row cites nothing
    ],
)
def test_good_citations(row: str) -> None:
    check_citations({"t": load_table_text("t", HEADER + row)}, TERMS, file="terms.yaml")


def test_load_terminology(tmp_path: Path) -> None:
    path = tmp_path / "terms.yaml"
    path.write_text("a: {b: 1}\n")
    assert load_terminology(path) == {"a": {"b": 1}}
    path.write_text("- a\n")
    with pytest.raises(MappingError) as info:
        load_terminology(path)
    assert str(info.value) == f"{path}: the terminology file is not a YAML mapping"
    path.write_text("a: [\n")
    with pytest.raises(MappingError) as info:
        load_terminology(path)
    assert str(info.value).startswith(f"{path}: cannot read the terminology file: while parsing a flow node")
    with pytest.raises(MappingError) as info:
        load_terminology(tmp_path / "none.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'none.yaml'}: cannot read the terminology file: [Errno 2]")
