"""Validation against the installed FHIR packages: our own output, known-bad edits, and bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Validator, has_errors
from tests.conftest import ALL_CASE_FILES
from tests.integration.test_cli import run


@pytest.fixture(scope="module")
def validator() -> Validator:
    return load_validator(Settings())


def errors(issues: list[Any]) -> list[tuple[str, str]]:
    return [(i.expression, i.message) for i in issues if i.severity in ("error", "fatal")]


@pytest.mark.parametrize("case", [p.name for p in ALL_CASE_FILES])
def test_every_fixture_bundle_validates_without_errors(
    validator: Validator, all_bundles: dict[str, Any], case: str
) -> None:
    assert errors(validator.validate(all_bundles[case])) == []


def test_a_wrong_gender_and_a_bogus_status_are_both_caught(validator: Validator, seed_bundle: dict[str, Any]) -> None:
    bundle = copy.deepcopy(seed_bundle)
    for i, entry in enumerate(bundle["entry"]):
        r = entry["resource"]
        if r["resourceType"] == "Patient":
            r["gender"] = "f"
            patient = f"Bundle.entry[{i}].resource/*Patient/{r['id']}*/.gender"
        if r["resourceType"] == "Observation" and "dataAbsentReason" in r:
            r["status"] = "bogus"
            observation = f"Bundle.entry[{i}].resource/*Observation/{r['id']}*/.status"
    found = errors(validator.validate(bundle))
    assert (patient, next(m for e, m in found if e == patient)) in found
    assert "'f'" in dict(found)[patient] and "'bogus'" in dict(found)[observation]
    # Everything else is the consequence: references to a Patient that is no longer an IPS Patient.
    rest = [(e, m) for e, m in found if e not in (patient, observation)]
    assert rest and all(e.endswith(".subject") and "target profiles" in m for e, m in rest), rest


@pytest.mark.parametrize(
    ("resource", "expression", "words"),
    [
        ({"resourceType": "Patient", "unknownElement": 1}, "Patient", "Unrecognized property 'unknownElement'"),
        ({"resourceType": "Patient", "birthDate": "not a date"}, "Patient.birthDate", "Not a valid date"),
        ({"resourceType": "Patient", "birthDate": "2020-02-30"}, "Patient.birthDate", "Not a valid date"),
        ({"resourceType": "Patient", "id": "bad id"}, "Patient.id", "Invalid Resource id"),
        ({"resourceType": "Patient", "name": {"family": "x"}}, "Patient.name", "must be a JSON Array"),
        ({"resourceType": "Patient", "active": "true"}, "Patient.active", "must be a boolean"),
        (
            {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "1"}},
            "Observation.value.ofType(Quantity).value",
            "must be a number",
        ),
        (
            {"resourceType": "Observation", "code": {"text": "x"}},
            "Observation",
            "Observation.status: minimum required = 1",
        ),
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "valueString": "a",
                "dataAbsentReason": {"text": "y"},
            },
            "Observation",
            "obs-6",
        ),
        (
            {"resourceType": "Patient", "extension": [{"url": "http://example.org/nope", "valueString": "x"}]},
            "Patient.extension[0]",
            "could not be found",
        ),
        (
            {
                "resourceType": "Condition",
                "subject": {"reference": "Patient/1"},
                "evidence": [{"detail": [{"reference": "#missing"}]}],
            },
            "Condition.evidence[0].detail[0]",
            "ref-1",
        ),
        (
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Medication/1"},
            },
            "DiagnosticReport.subject",
            "is not a valid Target for this element",
        ),
        (
            {
                "resourceType": "Patient",
                "maritalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "ZZ"}]
                },
            },
            "Patient.maritalStatus.coding[0]",
            "Unknown code 'ZZ'",
        ),
    ],
)
def test_known_errors(validator: Validator, resource: dict[str, Any], expression: str, words: str) -> None:
    found = errors(validator.validate(resource))
    assert any(e == expression and words in m for e, m in found), found


def test_a_clean_resource_has_no_errors(validator: Validator) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "birthDate": "1990-01-01",
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
    }
    assert not has_errors(validator.validate(patient))


def test_ips_profile_applies_from_meta_profile(validator: Validator) -> None:
    patient = {
        "resourceType": "Patient",
        "meta": {"profile": ["http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips"]},
        "gender": "female",
    }
    found = errors(validator.validate(patient))
    assert any("Patient.name: minimum required = 1" in m for _, m in found), found


# --- the command line -----------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_cli_exit_codes_and_outcome(tmp_path: Path, seed_bundle: dict[str, Any]) -> None:
    good = _write(tmp_path, "good.json", json.dumps(seed_bundle))
    result = run("validate", str(good), "--format", "json")
    assert result.returncode == 0, result.stdout
    outcome = json.loads(result.stdout)
    assert outcome["resourceType"] == "OperationOutcome"
    bad = _write(tmp_path, "bad.json", json.dumps({"resourceType": "Patient", "gender": "f"}))
    result = run("validate", str(bad), "--format", "json")
    assert result.returncode == 1
    issue = json.loads(result.stdout)["issue"][0]
    assert issue["severity"] == "error" and issue["expression"] == ["Patient.gender"]


@pytest.mark.parametrize(
    ("name", "content", "args", "words"),
    [
        ("malformed.json", '{"resourceType": "Patient",', (), "malformed JSON"),
        ("list.json", "[1, 2]", (), "not a FHIR resource"),
        ("noresource.json", '{"a": 1}', (), "not a FHIR resource"),
        ("unknown.json", '{"resourceType": "Spaceship"}', (), "unknown resourceType"),
        ("big.json", '{"resourceType": "Bundle", "x": "' + "x" * (10 * 1024 * 1024) + '"}', (), "limit"),
        ("deep.json", '{"resourceType": "Patient", "extension": ' + "[" * 1000 + "]" * 1000 + "}", (), "nests deeper"),
        ("profile.json", '{"resourceType": "Patient"}', ("--profile", "http://example.org/nope"), "not loaded"),
    ],
)
def test_cli_unusable_input(tmp_path: Path, name: str, content: str, args: tuple[str, ...], words: str) -> None:
    path = _write(tmp_path, name, content)
    result = run("validate", str(path), "--format", "json", *args)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    issue = json.loads(result.stdout)["issue"][0]
    assert issue["severity"] == "fatal" and words in issue["details"]["text"]


def _nested_extensions(tmp_path: Path, levels: int) -> Path:
    nested: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(levels):
        nested = {"url": "http://example.org/x", "extension": [nested]}
    return _write(tmp_path, "nested.json", json.dumps({"resourceType": "Patient", "extension": [nested]}))


def test_cli_deeply_nested_extensions_are_refused_before_validation(tmp_path: Path) -> None:
    """300 levels of extensions (twice as many JSON levels): exit 2, the reader's depth limit named, nothing else."""
    path = _nested_extensions(tmp_path, 300)
    result = run("validate", str(path), "--format", "json")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    (issue,) = json.loads(result.stdout)["issue"]
    assert (issue["severity"], issue["code"]) == ("fatal", "structure")
    assert issue["details"]["text"] == f"{path}: the document nests deeper than 128 levels"


def test_cli_nested_extensions_under_the_limit_are_validated_level_by_level(tmp_path: Path) -> None:
    """60 levels (under the limit): exit 1, the unknown extension an error at each of its 61 places."""
    path = _nested_extensions(tmp_path, 60)
    result = run("validate", str(path), "--format", "json")
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    errors = [i for i in json.loads(result.stdout)["issue"] if i["severity"] in ("error", "fatal")]
    assert [i["expression"] for i in errors] == [["Patient" + ".extension[0]" * k] for k in range(1, 62)]
    assert {i["details"]["text"] for i in errors} == {
        "The extension http://example.org/x could not be found so is not allowed here"
    }


PROFILE_BASE = "https://casebridge.example.org/fhir/StructureDefinition/"


def test_every_resource_claims_a_casebridge_profile_that_loads(
    validator: Validator, all_bundles: dict[str, Any]
) -> None:
    for bundle in all_bundles.values():
        for entry in bundle["entry"]:
            (profile,) = entry["resource"]["meta"]["profile"]
            assert profile.startswith(PROFILE_BASE)
            tree = validator.tree(profile)
            assert tree is not None, validator.unusable.get(profile)
            assert tree.type == entry["resource"]["resourceType"]


@pytest.mark.parametrize(
    ("resource_type", "drop", "words"),
    [
        ("ImagingStudy", "description", "ImagingStudy.description: minimum required = 1"),
        ("Patient", "_birthDate", "Patient.birthDate: minimum required = 1"),  # IPS, through our profile
        ("Patient", "name", "Patient.name: minimum required = 1"),
        ("Specimen", "type", "Specimen.type: minimum required = 1"),
    ],
)
def test_the_profiles_are_applied(
    validator: Validator, seed_bundle: dict[str, Any], resource_type: str, drop: str, words: str
) -> None:
    resource = copy.deepcopy(
        next(e["resource"] for e in seed_bundle["entry"] if e["resource"]["resourceType"] == resource_type)
    )
    resource.pop(drop)
    found = errors(validator.validate(resource))
    assert any(words in m for _, m in found), found


def test_the_ips_examples_validate_without_errors(validator: Validator) -> None:
    from casebridge.definitions.packages import default_cache_dir

    folder = default_cache_dir() / "hl7.fhir.uv.ips#2.0.0" / "package" / "example"
    examples = sorted(folder.glob("*.json"))
    assert len(examples) == 44
    failing = {p.name: errors(validator.validate(json.loads(p.read_text()))) for p in examples}
    assert {k: v for k, v in failing.items() if v} == {}


def test_cli_validates_fhir_xml(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.xml", '<Patient xmlns="http://hl7.org/fhir"><gender value="f"/></Patient>')
    result = run("validate", str(path), "--format", "json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["issue"][0]["expression"] == ["Patient.gender"]
    bad = _write(tmp_path, "bad.xml", "<Patient")
    result = run("validate", str(bad), "--format", "json")
    assert result.returncode == 2 and "not well-formed" in json.loads(result.stdout)["issue"][0]["details"]["text"]
    # A UTF-8 byte-order mark (as Windows tools write) was read as JSON ('malformed JSON at line 1'); an empty .xml
    # file too.
    marked = tmp_path / "marked.xml"
    marked.write_bytes(b'\xef\xbb\xbf<?xml version="1.0"?>\n' + path.read_bytes())
    result = run("validate", str(marked), "--format", "json")
    assert result.returncode == 1 and json.loads(result.stdout)["issue"][0]["expression"] == ["Patient.gender"]
    empty = _write(tmp_path, "empty.xml", "")
    result = run("validate", str(empty), "--format", "json")
    assert result.returncode == 2 and "XML" in json.loads(result.stdout)["issue"][0]["details"]["text"], result.stdout


def test_a_resolved_target_must_conform_to_the_target_profile(
    validator: Validator, seed_bundle: dict[str, Any]
) -> None:
    """Our lab result (IPS-derived) requires its subject to be an IPS Patient: a Patient without the
    data-absent name is no longer one, and the reference says so."""
    bundle = copy.deepcopy(seed_bundle)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Patient":
            resource.pop("name")
            resource.pop("meta")  # so that only the referring resources notice
    found = errors(validator.validate(bundle))
    assert any(e.endswith(".subject") and "does not conform to any of the target profiles" in m for e, m in found), (
        found
    )


def test_a_bare_code_outside_its_required_value_set_is_two_errors(validator: Validator) -> None:
    """As the reference validator: no system can be inferred for the code, and the code is not in the value set."""
    vs = "http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1"
    found = errors(validator.validate({"resourceType": "Patient", "gender": "x"}))
    assert found == [
        ("Patient.gender", f"The System URI could not be determined for the code 'x' in the ValueSet '{vs}'"),
        (
            "Patient.gender",
            f"The value provided ('x') was not found in the value set 'AdministrativeGender' ({vs}), and a code is "
            f"required from this value set  (error message = The System URI could not be determined for the code "
            f"'x' in the ValueSet '{vs}'; The provided code '#x' was not found in the value set '{vs}')",
        ),
    ]


def test_a_coding_outside_a_required_binding_on_a_codeable_concept_is_an_error(validator: Validator) -> None:
    """A required binding on a CodeableConcept is an error, not a warning, as on a code: a verification-status code
    in Condition.clinicalStatus (a code of another system, each valid in its own) does not validate."""
    status = {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}
    condition = {"resourceType": "Condition", "subject": {"reference": "Patient/p"}}
    condition["clinicalStatus"] = {"coding": [status]}
    issues = validator.validate(condition)
    assert has_errors(issues)
    assert errors(issues) == [
        (
            "Condition.clinicalStatus",
            "None of the codings provided are in the value set 'Condition Clinical Status Codes' "
            "(http://hl7.org/fhir/ValueSet/condition-clinical|4.0.1), and a coding must come from this value set",
        )
    ]
    active = {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
    assert errors(validator.validate({**condition, "clinicalStatus": {"coding": [active]}})) == []


V2_0131 = "http://terminology.hl7.org/CodeSystem/v2-0131"


def contact(display: str) -> dict[str, Any]:
    coding = {"system": V2_0131, "code": "C", "display": display}
    return {"resourceType": "Patient", "contact": [{"relationship": [{"coding": [coding]}], "name": {"text": "x"}}]}


def test_a_wrong_display_is_an_error_at_the_display(validator: Validator) -> None:
    found = errors(validator.validate(contact("alt-display")))
    where = "Patient.contact[0].relationship[0].coding[0].display"
    assert [e for e, _ in found] == [where]
    assert found[0][1].startswith(f"Wrong Display Name 'alt-display' for {V2_0131}#C. Valid display is one of ")
    assert "'Emergency Contact'" in found[0][1] and "'Ansprechpartner in Notfällen' (de)" in found[0][1]


@pytest.mark.parametrize("display", ["Emergency Contact", "emergency contact", "Ansprechpartner in Notfällen"])
def test_the_display_or_a_designation_is_valid_in_any_case(validator: Validator, display: str) -> None:
    assert errors(validator.validate(contact(display))) == []


def test_a_profile_s_contained_value_set_may_name_a_code_in_its_own_words(tmp_path: Path) -> None:
    """A binding to "#id" names the profile's contained value set; its expansion's display and designations of a
    code are valid displays of that code (as the reference validator accepts them)."""
    from casebridge.definitions.packages import DefinitionIndex
    from casebridge.validation.validator import Validator as Walker

    base = load_validator(Settings()).definitions
    index = DefinitionIndex()
    vs = {
        "resourceType": "ValueSet",
        "id": "rel",
        "url": "http://example.org/ValueSet/rel",
        "status": "draft",
        "expansion": {
            "timestamp": "2020-01-01",
            "contains": [
                {"system": V2_0131, "code": "C", "display": "alt-display"},
                {"system": V2_0131, "code": "N", "designation": [{"value": "alt-designation"}]},
            ],
        },
    }
    profile = {
        "resourceType": "StructureDefinition",
        "contained": [vs],
        "url": "http://example.org/StructureDefinition/translated",
        "name": "Translated",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Patient.contact.relationship",
                    "path": "Patient.contact.relationship",
                    "binding": {"strength": "required", "valueSet": "#rel"},
                }
            ]
        },
    }
    index.add_resource(profile, "profile.json")
    assert index.get("http://example.org/ValueSet/rel") == vs

    class Both:  # the profile over the packages
        def get(self, canonical: str) -> Any:
            return index.get(canonical) or base.get(canonical)

        def core_definition(self, type_name: str) -> Any:
            return base.core_definition(type_name)

    walker = Walker(Both())  # type: ignore[arg-type]
    patient = contact("alt-display")
    patient["contact"][0]["relationship"].append(
        {"coding": [{"system": V2_0131, "code": "N", "display": "alt-designation"}]}
    )
    assert errors(walker.validate(patient, [profile["url"]])) == []
    # Without the profile, both displays are wrong.
    assert len(errors(walker.validate(patient))) == 2


@pytest.mark.parametrize(
    ("repeat", "ok"),
    [
        ({"offset": 30, "when": ["ACM"]}, True),
        ({"offset": 30, "when": ["ACM", "PCV"]}, True),
        ({"when": ["C"]}, True),
        ({"offset": 30}, False),  # an offset needs a when
        ({"offset": 30, "when": ["CM"]}, False),  # and not a meal
    ],
)
def test_tim_9_reads_in_as_membership(validator: Validator, repeat: dict[str, Any], ok: bool) -> None:
    request = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"display": "x"},
        "occurrenceTiming": {"repeat": repeat},
    }
    found = errors(validator.validate(request))
    assert all("could not be evaluated" not in m for _, m in found), found
    assert (found == []) == ok, found
    if not ok:
        assert found == [("ServiceRequest.occurrence.ofType(Timing).repeat", found[0][1])]
        assert found[0][1].startswith("Constraint failed: tim-9:")


def test_a_single_canonical_value_is_checked_like_a_repeating_one(validator: Validator) -> None:
    """datatypes.html#canonical, on a canonical the walk checks in place (one value, nothing else to check) as on
    one it checks in full (Measure.library repeats)."""
    message = "Canonical URLs must be absolute URLs if they are not fragment references (ValueSet/x)"
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "draft",
        "item": [{"linkId": "1", "text": "Which?", "type": "choice", "answerValueSet": "ValueSet/x"}],
    }
    assert ("Questionnaire.item[0].answerValueSet", message) in errors(validator.validate(questionnaire))
    measure = {"resourceType": "Measure", "status": "draft", "library": ["ValueSet/x"]}
    assert ("Measure.library[0]", message) in errors(validator.validate(measure))
    questionnaire["item"][0]["answerValueSet"] = "http://hl7.org/fhir/ValueSet/yesnodontknow"
    assert not [m for _, m in errors(validator.validate(questionnaire)) if m.startswith("Canonical URLs")]
