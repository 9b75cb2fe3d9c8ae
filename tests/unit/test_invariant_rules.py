"""The resource-level invariants of the R4 core, each checked on the inputs that satisfy and that break it.

For each hand-written (native) invariant: a table of elements or resources with the exact verdict, which the
native must give and which the FHIRPath expression of the core definition, run by the interpreter, must give
too (that is the point of a native: the same meaning without the interpreter). Then the exact issues the
validator reports (severity, code, expression, message, source), and the walk's own handling of the constraint
lists (Invariants): which constraints it checks, with which native, and what it reports when FHIRPath fails.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.structure import Constraint, StructureTree
from casebridge.validation.fhirpath import Resolver, evaluate, is_true
from casebridge.validation.invariants import (
    _CORRECTED,
    _NATIVE,
    _NATIVE_EXPRESSIONS,
    _OPEN_TYPES,
    CHECKED_IN_WALK,
    DEFINITIONAL_NATIVES,
    TIM_9_R4,
    Invariants,
    _all_elements_have,
    _at_most_one_type,
    _both_not,
    _bundle_entries_match,
    _csd_1,
    _distinct_of,
    _either_present,
    _eld_2,
    _eld_3,
    _eld_5,
    _eld_11,
    _eld_12,
    _eld_18,
    _entries,
    _first_element_untyped,
    _ids_distinct,
    _implies_present,
    _matches_or_empty,
    _opd_2,
    _sdf_1,
    _sdf_4,
    _sdf_5,
    _sdf_8,
    _sdf_8a,
    _sdf_9,
    _sdf_10,
    _sdf_11,
    _sdf_14,
    _sdf_18,
    _sdf_19,
    _sdf_20,
    _sdf_21,
    _sdf_22,
    _sdf_23,
    _type_code_is_reference_or,
    _unreferenced_contained,
    _vsd_9,
)
from casebridge.validation.issues import Run
from casebridge.validation.service import load_index
from casebridge.validation.validator import Issue, ValidationOptions, Validator

SD = "http://hl7.org/fhir/StructureDefinition/"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
TEXT = {"status": "generated", "div": f"<div {XHTML}>x</div>"}


@cache
def core_constraints() -> dict[str, tuple[str, Constraint]]:
    """key -> (element path, constraint) of the core definitions these tests read."""
    index = load_index(Settings())
    out: dict[str, tuple[str, Constraint]] = {}
    for type_name in ("Patient", "Narrative", "Reference", "Observation", "Condition", "Bundle", "Timing"):
        sd = index.core_definition(type_name)
        assert sd is not None
        for element in sd["snapshot"]["element"]:
            for c in element.get("constraint", []):
                if c["key"] not in out or element["path"] == type_name:
                    constraint = Constraint(c["key"], c["severity"], c["human"], c["expression"], c.get("source", ""))
                    out[c["key"]] = (element["path"], constraint)
    out["qty-3"] = ("Quantity", _constraint_of(index.core_definition("Quantity"), "qty-3"))
    out["att-1"] = ("Attachment", _constraint_of(index.core_definition("Attachment"), "att-1"))
    return out


def _constraint_of(sd: dict[str, Any] | None, key: str) -> Constraint:
    assert sd is not None
    [c] = [c for c in sd["snapshot"]["element"][0]["constraint"] if c["key"] == key]
    return Constraint(c["key"], c["severity"], c["human"], c["expression"], c.get("source", ""))


def native_of(key: str) -> Any:
    """The native check the walk picks for the core constraint ``key``."""
    _, constraint = core_constraints()[key]
    [(c, native)] = Invariants(True).active((constraint,))
    assert c is constraint
    return native


def fhirpath(expression: str, item: Any, base: str | None, root: dict[str, Any]) -> bool:
    """The interpreter's verdict, evaluated as the walk evaluates it (an empty result passes)."""
    resolver = Resolver(root, {})
    return is_true(evaluate(expression, item, base=base, resource=root, root=root, resolver=resolver))


def both_agree(key: str, item: Any, expected: bool, root: dict[str, Any] | None = None) -> None:
    """The native and the core FHIRPath of ``key`` both give ``expected`` on ``item``."""
    path, constraint = core_constraints()[key]
    root = item if root is None else root
    base = None if isinstance(item, dict) and "resourceType" in item else path
    assert native_of(key)(item, root) is expected, (key, item)
    assert fhirpath(constraint.expression, item, base, root) is expected, (key, item, "FHIRPath")


def patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "text": TEXT, **fields}


def contained(*resources: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return patient(contained=list(resources), **fields)


# --- dom-2, dom-4, dom-5, dom-6: on every resource -------------------------------------------------------------

BASIC = {"resourceType": "Basic", "id": "b", "code": {"text": "x"}}


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (patient(), True),
        (contained(BASIC), True),
        (contained({**BASIC, "contained": []}), True),  # an empty array is no element
        (contained({**BASIC, "contained": [BASIC]}), False),
        (contained(BASIC, {**BASIC, "id": "c", "contained": [BASIC]}), False),  # the second one
        (patient(contained="x"), True),  # not an array: nothing contained
    ],
)
def test_dom_2_a_contained_resource_contains_nothing(resource: dict[str, Any], ok: bool) -> None:
    both_agree("dom-2", resource, ok)


@pytest.mark.parametrize(
    ("meta", "ok"),
    [
        (None, True),
        ({"source": "x", "profile": ["http://x"]}, True),
        ({"versionId": "1"}, False),
        ({"lastUpdated": "2020-01-01T00:00:00Z"}, False),
        ({"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"}, False),
        ("x", True),  # not an object: no meta.versionId
    ],
)
def test_dom_4_a_contained_resource_has_no_version_nor_last_updated(meta: Any, ok: bool) -> None:
    inner = BASIC if meta is None else {**BASIC, "meta": meta}
    both_agree("dom-4", contained(BASIC, inner), ok)
    both_agree("dom-4", patient(meta={"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"}), True)


@pytest.mark.parametrize(
    ("meta", "ok"),
    [
        (None, True),
        ({"versionId": "1"}, True),
        ({"security": []}, True),
        ({"security": [{"system": "http://x", "code": "R"}]}, False),
    ],
)
def test_dom_5_a_contained_resource_has_no_security_label(meta: Any, ok: bool) -> None:
    inner = BASIC if meta is None else {**BASIC, "meta": meta}
    both_agree("dom-5", contained(BASIC, inner), ok)
    both_agree("dom-5", patient(meta={"security": [{"system": "http://x", "code": "R"}]}), True)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (TEXT, True),
        ({"status": "generated", "div": "<div/>"}, True),
        ({"status": "empty"}, False),
        ({"status": "generated", "div": None}, False),
        ({"status": "generated", "div": []}, False),
        (None, False),
        ("x", False),  # not an object: no text.div
        # Shapes the walk reports, where any value still exists for FHIRPath.
        ({"div": ""}, True),
        ({"div": False}, True),
        ({"div": {}}, True),
        ({"_div": {"id": "x"}}, True),
        ([{"div": "<div/>"}], True),
        ([{"status": "empty"}, "x"], False),
    ],
)
def test_dom_6_a_resource_has_a_narrative(text: Any, ok: bool) -> None:
    resource = {"resourceType": "Patient"} if text is None else {"resourceType": "Patient", "text": text}
    both_agree("dom-6", resource, ok)


# --- txt-2: the narrative has content (R4 writes it htmlChecks(), as txt-1: the meaning is the HL7 validator's) --


@pytest.mark.parametrize(
    ("div", "ok"),
    [
        (f"<div {XHTML}>text</div>", True),
        (f"<div {XHTML}> <p> x </p> </div>", True),
        (f"<div {XHTML}><p>\n\t </p> </div>", False),
        (f"<div {XHTML}></div>", False),
        (f"<div {XHTML}/>", False),
        (f'<div {XHTML}><img src="#a"/></div>', True),  # an image is content
        (f"<div {XHTML}>a</div>", True),
        ("x", True),  # text with no tag at all
        ("   ", False),  # blanks only, no tag
        ("", False),
        (f"<div {XHTML}></div> <", True),  # an unclosed "<" is text, as deleting the tags would leave it
        (f"<div {XHTML}></div>\n", False),  # blanks after the last tag
        (f"<div {XHTML}></div>>", True),  # a ">" outside the tags is text
        (1, True),  # not a string: the walk reports it
    ],
)
def test_txt_2_the_narrative_has_content(div: Any, ok: bool) -> None:
    assert native_of("txt-2")(div, None) is ok


def test_txt_1_is_the_interpreters_html_checks() -> None:
    txt_1 = native_of("txt-1")
    assert txt_1(f"<div {XHTML}>x</div>", None) is True
    assert txt_1(f"<div {XHTML}><script>x</script></div>", None) is False
    assert txt_1(1, None) is True


# --- ref-1: a local reference has its contained resource -------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "ok"),
    [
        ({"reference": "#b"}, True),
        ({"reference": "#c"}, False),
        ({"reference": "#B"}, False),  # ids are case-sensitive
        ({"reference": "#"}, True),  # the container itself
        ({"reference": "Basic/b"}, True),
        ({"reference": "b"}, True),
        ({"display": "x"}, True),
    ],
)
def test_ref_1_a_local_reference_has_its_contained_resource(reference: Any, ok: bool) -> None:
    root = contained(BASIC, {**BASIC, "id": "d"})
    both_agree("ref-1", reference, ok, root)
    # With nothing contained, only a reference that is not local (or "#") passes.
    alone = patient()
    expected = not isinstance(reference.get("reference"), str) or reference["reference"][:1] != "#"
    assert native_of("ref-1")(reference, alone) is (expected or reference["reference"] == "#")


def test_ref_1_is_not_checked_on_a_value_that_is_not_an_object() -> None:
    # Shapes the walk reports (the interpreter throws on the second).
    assert native_of("ref-1")("#c", patient()) is True
    assert native_of("ref-1")({"reference": 1}, patient()) is True


# --- obs-6, obs-7 ---------------------------------------------------------------------------------------------

LOINC_A = {"system": "http://loinc.org", "code": "1-1"}
LOINC_B = {"system": "http://loinc.org", "code": "2-2"}


def observation(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"coding": [LOINC_A]}, **fields}


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (observation(valueString="x"), True),
        (observation(valueString="x", component=[{"code": {"coding": [LOINC_B]}}]), True),
        (observation(valueString="x", component=[{"code": {"coding": [LOINC_A]}}]), False),
        (observation(valueString="x", component=[{"code": {"coding": [LOINC_B, LOINC_A]}}]), False),
        (
            observation(valueString="x", component=[{"code": {"coding": [LOINC_B]}}, {"code": {"coding": [LOINC_A]}}]),
            False,
        ),
        (observation(valueString="x", component=[{"code": {"coding": [{**LOINC_A, "display": "A"}]}}]), True),
        (observation(component=[{"code": {"coding": [LOINC_A]}}]), True),  # no value
        (observation(valueQuantity={"value": 1}, component=[{"code": {"coding": [LOINC_A]}}]), False),
        (observation(_valueString={"id": "v"}, component=[{"code": {"coding": [LOINC_A]}}]), False),
        (observation(valueset="x", component=[{"code": {"coding": [LOINC_A]}}]), True),  # not a value[x]
        (observation(value="x", component=[{"code": {"coding": [LOINC_A]}}]), True),
        (observation(valueString="x", component=[{"code": {"text": "x"}}]), True),
        (observation(valueString="x", component=["x", {"code": "x"}]), True),
    ],
)
def test_obs_7_a_component_with_the_observations_code_has_no_value(resource: dict[str, Any], ok: bool) -> None:
    both_agree("obs-7", resource, ok)


def test_obs_7_is_not_checked_on_a_value_that_is_not_an_object() -> None:
    assert native_of("obs-7")("x", None) is True


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (observation(valueString="x"), True),
        (observation(dataAbsentReason={"text": "x"}), True),
        (observation(valueString="x", dataAbsentReason={"text": "x"}), False),
        (observation(_valueString={"id": "v"}, dataAbsentReason={"text": "x"}), False),
        (observation(valueString="x", _dataAbsentReason={"id": "x"}), False),
        (observation(valueString="x", dataAbsentReason=None), True),
        (observation(valueString="x", dataAbsentReason=[]), True),
    ],
)
def test_obs_6_no_data_absent_reason_with_a_value(resource: dict[str, Any], ok: bool) -> None:
    both_agree("obs-6", resource, ok)


# --- con-2, con-3, con-4, con-5 -------------------------------------------------------------------------------


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def condition(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, **fields}


ACTIVE, RESOLVED = concept(CLIN, "active"), concept(CLIN, "resolved")
ERROR = concept(VER, "entered-in-error")
CATEGORY = [concept("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item")]


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (condition(), True),
        (condition(category=CATEGORY), False),
        (condition(category=[]), True),
        (condition(category=CATEGORY, clinicalStatus=ACTIVE), True),
        (condition(category=CATEGORY, _clinicalStatus={"id": "x"}), True),
        (condition(category=CATEGORY, clinicalStatus=None), False),
        (condition(category=CATEGORY, verificationStatus=ERROR), True),
        (condition(category=CATEGORY, verificationStatus=concept(VER, "confirmed")), False),
        (condition(category=CATEGORY, verificationStatus=concept(CLIN, "entered-in-error")), False),
        (condition(category=CATEGORY, verificationStatus={"coding": [{"code": "entered-in-error"}]}), False),
        (condition(category=CATEGORY, verificationStatus={"coding": ["x", ERROR["coding"][0]]}), True),
        (condition(category=CATEGORY, verificationStatus="x"), False),
    ],
)
def test_con_3_a_problem_list_item_has_a_clinical_status(resource: dict[str, Any], ok: bool) -> None:
    # As R4 wrote it, category.select($this='problem-list-item') compares a CodeableConcept with a string: any
    # category at all then fails the last clause.
    both_agree("con-3", resource, ok)


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (condition(clinicalStatus=ACTIVE), True),
        (condition(abatementString="x"), False),
        (condition(abatementString="x", clinicalStatus=ACTIVE), False),
        (condition(abatementString="x", clinicalStatus=RESOLVED), True),
        (condition(abatementAge={"value": 3}, clinicalStatus=concept(CLIN, "remission")), True),
        (condition(abatementDateTime="2020", clinicalStatus=concept(CLIN, "inactive")), True),
        (condition(abatementString="x", clinicalStatus=concept(CLIN, "recurrence")), False),
        (condition(abatementString="x", clinicalStatus=concept(VER, "resolved")), False),
        (condition(abatementString="x", clinicalStatus={"coding": [{"code": "resolved"}]}), False),
        (condition(_abatementString={"id": "x"}, clinicalStatus=ACTIVE), False),
        (condition(abatement="x", clinicalStatus=ACTIVE), True),  # not abatement[x]
        (condition(abatementstring="x", clinicalStatus=ACTIVE), True),
    ],
)
def test_con_4_an_abated_condition_is_resolved_in_remission_or_inactive(resource: dict[str, Any], ok: bool) -> None:
    both_agree("con-4", resource, ok)


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (condition(verificationStatus=ERROR), True),
        (condition(verificationStatus=ERROR, clinicalStatus=ACTIVE), False),
        (condition(verificationStatus=ERROR, _clinicalStatus={"id": "x"}), False),
        (condition(verificationStatus=concept(VER, "confirmed"), clinicalStatus=ACTIVE), True),
        (condition(clinicalStatus=ACTIVE), True),
    ],
)
def test_con_5_an_entered_in_error_condition_has_no_clinical_status(resource: dict[str, Any], ok: bool) -> None:
    both_agree("con-5", resource, ok)


@pytest.mark.parametrize(
    ("evidence", "ok"),
    [
        ({"code": [{"text": "x"}]}, True),
        ({"detail": [{"reference": "Observation/1"}]}, True),
        ({}, False),
        ({"code": [], "detail": []}, False),
    ],
)
def test_con_2_evidence_has_a_code_or_a_detail(evidence: dict[str, Any], ok: bool) -> None:
    both_agree("con-2", evidence, ok, condition(evidence=[evidence]))


@pytest.mark.parametrize(
    ("key", "item", "ok"),
    [
        ("qty-3", {"value": 1, "code": "mg"}, False),
        ("qty-3", {"value": 1, "code": "mg", "system": "http://unitsofmeasure.org"}, True),
        ("qty-3", {"value": 1, "unit": "mg"}, True),
        ("att-1", {"data": "AAAA"}, False),
        ("att-1", {"data": "AAAA", "contentType": "text/plain"}, True),
        ("att-1", {"url": "http://x"}, True),
    ],
)
def test_data_type_rules(key: str, item: dict[str, Any], ok: bool) -> None:
    both_agree(key, item, ok, patient())


# --- the Bundle rules ------------------------------------------------------------------------------------------


def bundle(kind: str | None, *entries: Any, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", **fields}
    if kind is not None:
        out["type"] = kind
    if entries:
        out["entry"] = list(entries)
    return out


PAT = {"resourceType": "Patient", "id": "1"}
REQ = {"method": "PUT", "url": "Patient/1"}
RESP = {"status": "200"}


@pytest.mark.parametrize(
    ("resource", "request_ok", "response_ok"),
    [
        (bundle("collection"), True, True),
        (bundle("collection", {"resource": PAT}), True, True),
        (bundle("collection", {"resource": PAT, "request": REQ}), False, True),
        (bundle("transaction", {"resource": PAT, "request": REQ}), True, True),
        (bundle("transaction", {"resource": PAT}), False, True),
        (bundle("transaction", {"resource": PAT, "request": REQ}, {"resource": PAT}), False, True),
        (bundle("batch", {"resource": PAT, "request": REQ}), True, True),
        (bundle("history", {"resource": PAT, "request": REQ, "response": RESP}), True, True),
        (bundle("history", {"resource": PAT, "request": REQ}), True, False),
        (bundle("history", {"resource": PAT, "response": RESP}), False, True),
        (bundle("transaction-response", {"response": RESP}), True, True),
        (bundle("batch-response", {"response": RESP}), True, True),
        (bundle("batch-response", {"resource": PAT}), True, False),
        (bundle("searchset", {"resource": PAT, "response": RESP}), True, False),
        (bundle("transaction", {"resource": PAT, "_request": {"id": "x"}}), True, True),
        (bundle("transaction", {"resource": PAT, "request": None}), False, True),
        (bundle("collection", "x"), True, True),  # an entry that is not an object has no request
        (bundle("transaction", "x"), False, True),
        (bundle(None), True, True),  # no type, no entry
        (bundle(None, {"resource": PAT}), False, False),  # no type: the comparison is empty, all() is false
        (bundle(None, {"resource": PAT, "request": REQ, "response": RESP}), False, False),
        (bundle(None, {"resource": PAT}, type=None), False, False),  # null is no type
        # A type with only an extension has no value: it is no batch, and no entry may have a request.
        (bundle(None, {"resource": PAT}, _type={"id": "x"}), True, True),
        (bundle(None, {"resource": PAT, "request": REQ}, _type={"id": "x"}), False, True),
    ],
)
def test_bdl_3_and_bdl_4_request_and_response_by_bundle_type(
    resource: dict[str, Any], request_ok: bool, response_ok: bool
) -> None:
    both_agree("bdl-3", resource, request_ok)
    both_agree("bdl-4", resource, response_ok)
    # The factory the table of natives was built with gives the same checks.
    assert _bundle_entries_match(("batch", "transaction", "history"), "request")(resource) is request_ok
    response = _bundle_entries_match(("batch-response", "transaction-response", "history"), "response")
    assert response(resource) is response_ok
    assert _bundle_entries_match(("batch",), "request")("x") is True


def entry(full_url: str | None, version: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = dict(PAT)
    if version is not None:
        resource["meta"] = {"versionId": version}
    out: dict[str, Any] = {"resource": resource}
    if full_url is not None:
        out["fullUrl"] = full_url
    return out


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (bundle("collection", entry("urn:uuid:1"), entry("urn:uuid:2")), True),
        (bundle("collection", entry("urn:uuid:1"), entry("urn:uuid:1")), False),
        (bundle("collection", entry("urn:uuid:1"), entry("urn:uuid:2"), entry("urn:uuid:1")), False),
        (bundle("collection", entry("urn:uuid:1", "1"), entry("urn:uuid:1", "2")), True),
        (bundle("collection", entry("urn:uuid:1", "1"), entry("urn:uuid:1", "1")), False),
        (bundle("collection", entry("urn:uuid:1", "1"), entry("urn:uuid:1")), True),
        (bundle("collection", entry(None), entry(None)), True),  # no fullUrl: not compared
        (bundle("history", entry("urn:uuid:1"), entry("urn:uuid:1")), True),
        (bundle("searchset", entry("urn:uuid:1"), entry("urn:uuid:1")), False),
        # No type: (type = 'history') is empty, and so is the whole when the full URLs repeat, which passes.
        (bundle(None, entry("urn:uuid:1"), entry("urn:uuid:1")), True),
        (bundle(None, entry("urn:uuid:1"), entry("urn:uuid:1"), type=None), True),
        (bundle(None, entry("urn:uuid:1"), entry("urn:uuid:1"), _type={"id": "x"}), False),
        # fullUrl & versionId is one string: "a" + "XX" and "aXX" + nothing are the same.
        (bundle("collection", entry("urn:a", "XX"), entry("urn:aXX")), False),
        (bundle("collection", entry("urn:a", "1"), entry("urn:a1")), False),
        (bundle("collection", "x", entry("urn:uuid:1")), True),
        # An entry that is not compared does not end the comparison.
        (bundle("collection", "x", entry("urn:uuid:1"), entry("urn:uuid:1")), False),
        (bundle("collection", entry(None), entry("urn:uuid:1"), entry("urn:uuid:1")), False),
        (bundle("collection", entry("urn:uuid:1"), {"fullUrl": "urn:uuid:1", "resource": {"meta": "x"}}), False),
    ],
)
def test_bdl_7_full_urls_are_unique_but_for_versions(resource: dict[str, Any], ok: bool) -> None:
    both_agree("bdl-7", resource, ok)


def test_bdl_7_is_not_checked_on_a_value_that_is_not_an_object() -> None:
    assert native_of("bdl-7")("x", None) is True
    assert _entries("x") == []  # the entries of anything but a Bundle object: none
    assert _entries({"entry": "x"}) == []


@pytest.mark.parametrize(
    ("entries", "ok"),
    [
        ([{"_fullUrl": {"id": "x"}}, {"_fullUrl": {"id": "y"}}], False),  # '' twice
        ([{"_fullUrl": {"id": "x"}}, entry("XX")], True),
        ([entry("XX"), {"_fullUrl": {"id": "x"}, "resource": {"meta": {"versionId": "XX"}}}], False),
    ],
)
def test_bdl_7_a_full_url_with_only_an_extension_is_the_empty_string(entries: list[Any], ok: bool) -> None:
    # FHIRPath's & takes an empty operand as '' (the interpreter throws on the extension instead).
    assert native_of("bdl-7")(bundle("collection", *entries), None) is ok


@pytest.mark.parametrize(
    ("item", "ok"),
    [
        ({"resource": PAT}, True),
        ({"request": REQ}, True),
        ({"response": RESP}, True),
        ({"fullUrl": "urn:uuid:1"}, False),
        ({"_resource": {"id": "x"}}, True),
        ({"resource": None, "request": []}, False),
    ],
)
def test_bdl_5_an_entry_has_a_resource_request_or_response(item: dict[str, Any], ok: bool) -> None:
    both_agree("bdl-5", item, ok, bundle("collection", item))


@pytest.mark.parametrize(
    ("item", "ok"),
    [
        ({"fullUrl": "http://x/Patient/1", "resource": PAT}, True),
        ({"fullUrl": "http://x/Patient/1/_history/2", "resource": PAT}, False),
        ({"fullUrl": "http://x/Patient/1/_history", "resource": PAT}, True),
        ({"resource": PAT}, True),
    ],
)
def test_bdl_8_a_full_url_is_not_version_specific(item: dict[str, Any], ok: bool) -> None:
    both_agree("bdl-8", item, ok, bundle("collection", item))


@pytest.mark.parametrize(
    ("resource", "oks"),
    [
        # (bdl-1 total, bdl-2 search, bdl-9 identifier, bdl-10 timestamp, bdl-11 Composition, bdl-12 MessageHeader)
        (bundle("searchset", {"resource": PAT, "search": {"mode": "match"}}, total=1), [True] * 6),
        (bundle("history", total=1), [True] * 6),
        (bundle("collection", total=1), [False, True, True, True, True, True]),
        (bundle("collection", {"resource": PAT, "search": {"mode": "match"}}), [True, False, True, True, True, True]),
        (bundle("collection", {"resource": PAT, "search": None}), [True] * 6),
        (bundle("document"), [True, True, False, False, True, True]),
        (
            bundle(
                "document",
                {"resource": {"resourceType": "Composition"}},
                identifier={"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
                timestamp="2020-01-01T00:00:00Z",
            ),
            [True] * 6,
        ),
        (
            bundle("document", {"resource": PAT}, identifier={"system": "urn:x"}, timestamp="2020-01-01T00:00:00Z"),
            [True, True, False, True, False, True],
        ),
        (
            bundle("document", {"fullUrl": "urn:uuid:1"}, identifier={"value": "1"}),
            [True, True, False, False, True, True],
        ),
        (bundle("message", {"resource": PAT}), [True, True, True, True, True, False]),
        (bundle("message", {"resource": {"resourceType": "MessageHeader"}}, {"resource": PAT}), [True] * 6),
        (bundle("message", {"resource": PAT}, {"resource": {"resourceType": "MessageHeader"}}), [True] * 5 + [False]),
        (bundle("message"), [True] * 6),  # no first resource: empty, which passes
        (bundle("collection", {"resource": PAT}), [True] * 6),
        # No type: each comparison with it is empty, and so is the rule, which passes.
        (bundle(None, {"resource": PAT, "search": {"mode": "match"}}, total=1), [True] * 6),
        (bundle(None, {"resource": PAT, "search": {"mode": "match"}}, total=1, type=None), [True] * 6),
        (bundle("batch", {"resource": PAT, "search": {"mode": "match"}}, total=None), [True, False] + [True] * 4),
        (
            bundle("batch", {"resource": PAT, "search": {"mode": "match"}}, _total={"id": "x"}),
            [False, False] + [True] * 4,
        ),
    ],
)
def test_the_bundle_type_rules(resource: dict[str, Any], oks: list[bool]) -> None:
    for key, ok in zip(("bdl-1", "bdl-2", "bdl-9", "bdl-10", "bdl-11", "bdl-12"), oks, strict=True):
        both_agree(key, resource, ok)


# --- tim-9: published wrong, checked as the HL7 validator corrects it ---------------------------------------------


TIM_9_MEANING = "offset.empty() or (when.exists() and when.where($this in ('C' | 'CM' | 'CD' | 'CV')).empty())"


@pytest.mark.parametrize(
    ("repeat", "ok"),
    [
        ({"frequency": 1}, True),
        ({"offset": 30}, False),
        ({"offset": 0}, False),  # zero minutes is an offset
        ({"offset": 30, "when": ["MORN"]}, True),
        ({"offset": 30, "when": ["ACM", "HS"]}, True),
        ({"offset": 30, "when": ["C"]}, False),
        ({"offset": 30, "when": ["CM"]}, False),
        ({"offset": 30, "when": ["CD"]}, False),
        ({"offset": 30, "when": ["CV"]}, False),
        ({"offset": 30, "when": ["MORN", "CV"]}, False),
        ({"offset": 30, "when": []}, False),
        ({"offset": None, "when": ["C"]}, True),
    ],
)
def test_tim_9_an_offset_needs_a_when_that_is_not_a_meal(repeat: dict[str, Any], ok: bool) -> None:
    path, constraint = core_constraints()["tim-9"]
    assert constraint.expression == TIM_9_R4
    assert native_of("tim-9")(repeat, None) is ok
    assert fhirpath(TIM_9_MEANING, repeat, path, patient()) is ok
    assert native_of("tim-9")("x", None) is True


# --- the validator reports them -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(load_index(Settings()))


@pytest.fixture(scope="module")
def not_contained() -> Validator:
    return Validator(load_index(Settings()), options=ValidationOptions(validate_contained=False))


def keyed(issues: list[Issue], *keys: str) -> list[tuple[str, str, str, str, str | None]]:
    return [
        (i.severity, i.code, i.expression, i.message, i.source)
        for i in issues
        if any(f" {k}: " in i.message or f"({k})" in i.message or f"Constraint {k} " in i.message for k in keys)
    ]


def failed(key: str, expression: str, source: str) -> tuple[str, str, str, str, str]:
    _, c = core_constraints()[key]
    return (
        "error" if c.severity == "error" else "warning",
        "invariant",
        expression,
        f"Constraint failed: {key}: '{c.human}'",
        source,
    )


def test_the_dom_rules_are_reported_on_the_container(validator: Validator) -> None:
    inner = {**BASIC, "meta": {"versionId": "1", "security": [{"code": "R"}]}, "contained": [BASIC], "text": TEXT}
    resource = contained(inner, identifier=[{"assigner": {"reference": "#b"}}])
    issues = validator.validate(resource)
    nested = dom_3("b", 0, "Basic")  # the nested one is checked in its container too
    assert keyed(issues, "dom-2", "dom-4", "dom-5", "dom-3") == [
        (*nested[:2], "Patient.contained[0]/*Basic/b*/.contained[0]", *nested[3:]),
        failed("dom-2", "Patient", SD + "Patient"),
        failed("dom-4", "Patient", SD + "Patient"),
        failed("dom-5", "Patient", SD + "Patient"),
    ]


def test_dom_6_is_a_warning_on_the_resource_and_each_contained_one(validator: Validator) -> None:
    resource = {
        "resourceType": "Patient",
        "contained": [BASIC],
        "link": [{"other": {"reference": "#b"}, "type": "seealso"}],
    }
    assert keyed(validator.validate(resource), "dom-6") == [
        failed("dom-6", "Patient.contained[0]/*Basic/b*/", SD + "Basic"),
        failed("dom-6", "Patient", SD + "Patient"),
    ]


def dom_3(cid: str, index: int, container: str = "Patient") -> tuple[str, str, str, str, str]:
    message = (
        f"The contained resource '{cid}' is not referenced to from elsewhere in the containing resource nor does it "
        "refer to the containing resource (dom-3)"
    )
    return ("error", "invariant", f"{container}.contained[{index}]", message, SD + container)


def with_text(*resources: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**r, "text": TEXT} for r in resources]


@pytest.mark.parametrize(
    ("fields", "unreferenced"),
    [
        ({"contained": with_text(BASIC)}, [("b", 0)]),
        ({"contained": with_text(BASIC), "generalPractitioner": [{"reference": "#b"}]}, []),
        ({"contained": with_text(BASIC), "generalPractitioner": [{"reference": "#c"}]}, [("b", 0)]),
        (
            {"contained": with_text(BASIC, {**BASIC, "id": "c"}), "generalPractitioner": [{"reference": "#c"}]},
            [("b", 0)],
        ),
        # One contained resource referred to by another one is used; one that refers to its container too.
        (
            {
                "contained": with_text(BASIC, {**BASIC, "id": "c", "subject": {"reference": "#b"}}),
                "generalPractitioner": [{"reference": "#c"}],
            },
            [],
        ),
        ({"contained": with_text({**BASIC, "subject": {"reference": "#b"}})}, [("b", 0)]),  # only itself
        ({"contained": with_text({**BASIC, "subject": {"reference": "#"}})}, []),
        ({"contained": with_text({**BASIC, "subject": {"reference": "#x"}})}, [("b", 0)]),
        # The narrative may show or link it.
        (
            {
                "contained": with_text(BASIC),
                "text": {"status": "generated", "div": f'<div {XHTML}><a href="#b">b</a></div>'},
            },
            [],
        ),
        (
            {
                "contained": with_text(BASIC),
                "text": {"status": "generated", "div": f"<div {XHTML}><img src = '#b'/></div>"},
            },
            [],
        ),
        (
            {
                "contained": with_text(BASIC),
                "text": {"status": "generated", "div": f'<div {XHTML}><a href="#c">b</a></div>'},
            },
            [("b", 0)],
        ),
        (
            {
                "contained": with_text(BASIC),
                "text": {"status": "generated", "div": f'<div {XHTML}><a name="#b">b</a></div>'},
            },
            [("b", 0)],
        ),
        (
            {"contained": with_text(BASIC), "text": {"status": "generated", "div": f"<div {XHTML}>see #b</div>"}},
            [("b", 0)],
        ),
        ({"contained": with_text(BASIC), "extension": [{"url": "http://x", "valueString": "#b"}]}, []),
        ({"contained": with_text(BASIC), "identifier": [{"system": "urn:x", "value": 'href="#b"'}]}, [("b", 0)]),
        ({"contained": with_text(BASIC, {**BASIC, "id": "c"})}, [("b", 0), ("c", 1)]),
    ],
)
def test_dom_3_each_unreferenced_contained_resource_is_an_error(
    validator: Validator, not_contained: Validator, fields: dict[str, Any], unreferenced: list[tuple[str, int]]
) -> None:
    resource = {"resourceType": "Patient", "text": TEXT, **fields}
    assert keyed(validator.validate(resource), "dom-3") == [dom_3(cid, i) for cid, i in unreferenced]
    # Skipped with the contained resources when the caller asks for that.
    assert keyed(not_contained.validate(resource), "dom-3") == []


def test_ref_1_in_a_contained_resource_reads_the_container(validator: Validator) -> None:
    # The reference sits in a contained resource: %rootResource is the container, where "#c" is.
    resource = contained(
        {**BASIC, "text": TEXT, "subject": {"reference": "#c"}},
        {**BASIC, "id": "c", "text": TEXT, "subject": {"reference": "#d"}},
        generalPractitioner=[{"reference": "#b"}],
    )
    assert keyed(validator.validate(resource), "ref-1") == [
        failed("ref-1", "Patient.contained[1]/*Basic/c*/.subject", SD + "Reference")
    ]


def test_the_observation_and_condition_rules_are_reported(validator: Validator) -> None:
    obs = observation(
        valueString="x", dataAbsentReason={"text": "x"}, component=[{"code": {"coding": [LOINC_A]}}], text=TEXT
    )
    assert keyed(validator.validate(obs), "obs-6", "obs-7") == [
        failed("obs-6", "Observation", SD + "Observation"),
        failed("obs-7", "Observation", SD + "Observation"),
    ]
    cond = condition(category=CATEGORY, abatementString="x", text=TEXT)
    assert keyed(validator.validate(cond), "con-3", "con-4") == [
        failed("con-3", "Condition", SD + "Condition"),
        failed("con-4", "Condition", SD + "Condition"),
    ]


@pytest.mark.parametrize(
    ("when", "fails"),
    [(["CM"], True), (["MORN", "CM"], True), (["MORN", "ACM"], False), ([], True)],
)
def test_tim_9_is_reported_on_the_repeat(validator: Validator, when: list[str], fails: bool) -> None:
    # The interpreter cannot evaluate the R4 expression on two whens (a union on the right of "in"): the native
    # decides, and the rule is never "could not be evaluated".
    repeat: dict[str, Any] = {"offset": 30, "when": when} if when else {"offset": 30}
    request = {
        "resourceType": "MedicationRequest",
        "text": TEXT,
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "x"},
        "subject": {"reference": "Patient/1"},
        "dosageInstruction": [{"timing": {"repeat": repeat}}],
    }
    expression = "MedicationRequest.dosageInstruction[0].timing.repeat"
    expected = [failed("tim-9", expression, SD + "Timing")] if fails else []
    assert keyed(validator.validate(request), "tim-9") == expected


@pytest.mark.parametrize(
    ("div", "fails"),
    [(f"<div {XHTML}> </div>", True), (f"<div {XHTML}><p>\n</p></div>", True), (f"<div {XHTML}>x</div>", False)],
)
def test_txt_2_is_reported_on_the_div(validator: Validator, div: str, fails: bool) -> None:
    # R4 writes txt-2 htmlChecks(), which the interpreter passes on blank content: the native decides.
    resource = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    expected = [failed("txt-2", "Patient.text.div", SD + "Narrative")] if fails else []
    assert keyed(validator.validate(resource), "txt-1", "txt-2") == expected


# --- the walk's handling of constraint lists (Invariants) ------------------------------------------------------


def constraint(key: str, expression: str, severity: str = "error") -> Constraint:
    return Constraint(key, severity, f"the rule {key}", expression, "http://x")


def test_active_drops_the_constraints_the_walk_checks_and_picks_each_native() -> None:
    ele_1 = constraint("ele-1", "hasValue() or (children().count() > id.count())")
    dom_2 = constraint("dom-2", "anything: matched on the key")
    bdl_5 = constraint("x-5", "resource.exists() or request.exists() or response.exists()")
    tim_9 = constraint("x-9", TIM_9_R4)
    other = constraint("x-1", "name.exists()")
    active = Invariants(True).active((ele_1, dom_2, bdl_5, tim_9, other))
    assert [(c.key, n) for c, n in active] == [
        ("dom-2", _NATIVE["dom-2"]),
        ("x-5", _NATIVE_EXPRESSIONS[bdl_5.expression]),
        ("x-9", _CORRECTED[TIM_9_R4]),
        ("x-1", None),
    ]
    assert CHECKED_IN_WALK == {"ele-1", "ext-1"}
    assert Invariants(True).active((constraint("ext-1", "x"),)) == ()


def test_active_is_prepared_once_per_list() -> None:
    invariants = Invariants(True)
    constraints = [constraint("x-1", "name.exists()")]
    first = invariants.active(constraints)
    assert invariants.active(constraints) is first
    # Another list that reuses the id of a forgotten one is prepared again.
    invariants._prepared[id(constraints)] = ([], ())
    assert invariants.active(constraints) == first


@pytest.fixture(scope="module")
def patient_tree(validator: Validator) -> StructureTree:
    tree = validator.tree(SD + "Patient")
    assert tree is not None
    return tree


def run_check(
    constraints: tuple[Constraint, ...],
    item: Any,
    base: str | None,
    res: dict[str, Any],
    tree: StructureTree,
    *,
    contained_too: bool = True,
) -> list[tuple[str, str, str, str, str | None]]:
    run = Run()
    Invariants(contained_too).check_all(constraints, item, base, "Here.there", run, res, tree)
    return [(i.severity, i.code, i.expression, i.message, i.source) for i in run.issues]


@pytest.mark.parametrize("severity", ["error", "warning"])
def test_a_failed_constraint_keeps_its_severity(patient_tree: StructureTree, severity: str) -> None:
    rule = constraint("x-1", "name.exists()", severity)
    assert run_check((rule,), patient(), None, patient(), patient_tree) == [
        (severity, "invariant", "Here.there", "Constraint failed: x-1: 'the rule x-1'", SD + "Patient")
    ]
    assert run_check((rule,), patient(name=[{"family": "x"}]), None, patient(), patient_tree) == []


@pytest.mark.parametrize(
    ("severity", "reported"), [("error", "error"), ("warning", "warning"), ("information", "warning")]
)
def test_a_constraint_that_cannot_be_evaluated_keeps_its_severity(
    patient_tree: StructureTree, severity: str, reported: str
) -> None:
    rule = constraint("x-2", "name.family.startsWith('A')", severity)
    res = patient(name=[{"family": "Ab"}, {"family": "Ac"}])
    [(got, code, expression, message, source)] = run_check((rule,), res, None, res, patient_tree)
    assert (got, code, expression, source) == (reported, "processing", "Here.there", SD + "Patient")
    assert message.startswith("Constraint x-2 could not be evaluated: ")
    # It does not go on to report a failure too, and the next constraint is still checked.
    other = constraint("x-3", "gender.exists()")
    assert [i[3] for i in run_check((rule, other), res, None, res, patient_tree)][1:] == [
        "Constraint failed: x-3: 'the rule x-3'"
    ]


def test_an_element_is_evaluated_with_its_type(patient_tree: StructureTree) -> None:
    # value resolves to valueString, and code is a CodeableConcept, only when the element's path is known.
    rules = (constraint("x-4", "value.exists()"), constraint("x-5", "code.is(CodeableConcept)"))
    component = {"code": {"text": "x"}, "valueString": "x"}
    obs = observation(component=[component], valueString="x")
    assert run_check(rules, component, "Observation.component", obs, patient_tree) == []
    failures = [i[3][:22] for i in run_check(rules, component, None, obs, patient_tree)]
    assert failures == ["Constraint failed: x-4", "Constraint failed: x-5"]


def test_a_native_reads_the_root_of_the_resource(patient_tree: StructureTree) -> None:
    ref_1 = core_constraints()["ref-1"][1]
    res = contained(BASIC)
    inner = res["contained"][0]
    failure = [("error", "invariant", "Here", f"Constraint failed: ref-1: '{ref_1.human}'", SD + "Patient")]

    def ref_1_on(reference: str, resource: dict[str, Any], root: dict[str, Any] | None) -> list[Any]:
        run = Run()
        if root is not None:
            run.roots[id(resource)] = root  # a contained resource: %rootResource is its container
        Invariants(True).check_all((ref_1,), {"reference": reference}, "Reference", "Here", run, resource, patient_tree)
        return [(i.severity, i.code, i.expression, i.message, i.source) for i in run.issues]

    assert ref_1_on("#b", inner, res) == []
    assert ref_1_on("#b", inner, None) == failure  # the contained resource itself contains nothing
    assert ref_1_on("#b", res, None) == []  # a resource with no root recorded is its own root
    assert ref_1_on("#c", res, None) == failure
    assert ref_1_on("#c", inner, res) == failure


def test_dom_3_is_checked_on_objects_only_and_as_the_option_says(patient_tree: StructureTree) -> None:
    dom_3_rule = core_constraints()["dom-3"][1]
    res = contained(BASIC, {**BASIC, "id": "c"})
    assert run_check((dom_3_rule,), res, None, res, patient_tree) == [
        ("error", "invariant", "Here.there.contained[0]", dom_3("b", 0)[3], SD + "Patient"),
        ("error", "invariant", "Here.there.contained[1]", dom_3("c", 1)[3], SD + "Patient"),
    ]
    assert run_check((dom_3_rule,), res, None, res, patient_tree, contained_too=False) == []
    assert run_check((dom_3_rule,), "x", None, res, patient_tree) == []
    assert run_check((dom_3_rule,), patient(), None, res, patient_tree) == []
    # Its FHIRPath is never evaluated: a native-less constraint after it still is.
    other = constraint("x-3", "gender.exists()")
    assert [i[3] for i in run_check((dom_3_rule, other), patient(), None, res, patient_tree)] == [
        "Constraint failed: x-3: 'the rule x-3'"
    ]


def test_an_empty_constraint_list_checks_nothing(patient_tree: StructureTree) -> None:
    assert run_check((), patient(), None, patient(), patient_tree) == []
    assert run_check((constraint("ele-1", "false"),), patient(), None, patient(), patient_tree) == []
    assert run_check((constraint("x-0", "false"),), patient(), None, patient(), patient_tree) == [
        ("error", "invariant", "Here.there", "Constraint failed: x-0: 'the rule x-0'", SD + "Patient")
    ]


def test_fhirpath_reads_the_resource_its_root_and_what_references_resolve_to(patient_tree: StructureTree) -> None:
    res = {"resourceType": "Basic", "id": "root", "subject": {"reference": "#c"}}
    res["contained"] = [{**BASIC, "subject": {"reference": "#c"}}]
    res["contained"].append({**BASIC, "id": "c", "subject": {"reference": "Patient/1"}})
    inner, other = res["contained"]
    rules = (
        constraint("x-r", "%rootResource.contained.exists()"),
        constraint("x-s", "%resource.id.exists()"),
        constraint("x-t", "subject.resolve().exists()"),
    )

    def failing(item: dict[str, Any], resource: dict[str, Any], root: dict[str, Any] | None) -> list[str]:
        run = Run(bundle_index={"Patient/1": {"resourceType": "Patient", "id": "1"}})
        if root is not None:
            run.roots[id(resource)] = root
        Invariants(True).check_all(rules, item, None, "Here", run, resource, patient_tree)
        return [i.message.split(":")[1].strip() for i in run.issues]

    assert failing(inner, inner, res) == []  # %rootResource is the container, where "#c" resolves
    assert failing(inner, inner, None) == ["x-r", "x-t"]  # on its own: nothing contained
    assert failing(other, other, res) == []  # resolved in the Bundle
    assert failing(res, res, None) == []  # its own root, where "#c" resolves
    assert failing({**BASIC, "id": None}, {"resourceType": "Basic"}, res) == ["x-s", "x-t"]


@pytest.mark.parametrize("key", ["dom-2", "dom-4", "dom-5"])
def test_the_dom_rules_pass_on_a_value_that_is_not_an_object(key: str) -> None:
    assert native_of(key)("x", None) is True
    assert native_of(key)(["x"], None) is True
    assert native_of("dom-6")("x", None) is False


@pytest.mark.parametrize(
    ("fields", "unreferenced"),
    [
        # Each contained resource is judged on its own: the first one's verdict does not end the search.
        ({"contained": [BASIC, {**BASIC, "id": "c"}], "generalPractitioner": [{"reference": "#b"}]}, [1]),
        ({"contained": [{**BASIC, "subject": {"reference": "#"}}, {**BASIC, "id": "c"}]}, [1]),
        ({"contained": [{**BASIC, "id": "c", "subject": {"reference": "#b"}}, BASIC]}, [0]),
        ({"contained": [BASIC, "x"]}, [0]),
        ({"contained": []}, []),
        ({"contained": ["x"]}, []),
        # Only the narrative's div is read for links; a list there is read as the div.
        ({"contained": [BASIC], "text": {"div": [f'<div {XHTML}><a href="#b">b</a></div>']}}, []),
        ({"contained": [BASIC], "text": {"status": 'href="#b"'}}, [0]),
        ({"contained": [BASIC], "text": {"div": "<a href=#b>b</a>"}}, [0]),  # unquoted: not a link
    ],
)
def test_dom_3_which_contained_resources_are_unreferenced(fields: dict[str, Any], unreferenced: list[int]) -> None:
    assert _unreferenced_contained({"resourceType": "Patient", **fields}) == unreferenced


# --- the definitional natives: ElementDefinition (eld-*), StructureDefinition (sdf-*), CodeSystem, ValueSet ... ---
# Each answers True or False as its FHIRPath does on the shapes valid JSON has, and None (left to the interpreter)
# on any other. The factories are called here as the table of natives calls them, so that each row checks the
# check they make.


def definitional(fragment: str) -> str:
    """The one R4 expression of the table of definitional natives that contains ``fragment``."""
    [expression] = [e for e in DEFINITIONAL_NATIVES if fragment in e]
    return expression


def decides(expression: str, check: Any, base: str | None, item: Any, root: Any, expected: bool | None) -> None:
    """``check`` (and the registered native) answers ``expected``; when decided, the interpreter agrees."""
    assert check(item, root) is expected, (expression, item)
    assert DEFINITIONAL_NATIVES[expression](item, root) is expected, (expression, item)
    if expected is not None:
        resource = root if isinstance(root, dict) else None
        result = evaluate(
            expression, item, base=base, resource=resource, root=resource, resolver=Resolver(resource, {})
        )
        assert is_true(result) is expected, (expression, item, "FHIRPath")


ED = "ElementDefinition"
TYPES_2 = [{"code": "string"}, {"code": "code"}]


@pytest.mark.parametrize(
    ("element", "ok"),
    [
        ({"path": "a"}, True),
        ({"path": "a", "min": 0}, True),
        ({"path": "a", "max": "0"}, True),
        ({"path": "a", "min": 1, "max": "1"}, True),  # at the limit
        ({"path": "a", "min": 2, "max": "1"}, False),  # one over
        ({"path": "a", "min": 0, "max": "1"}, True),
        ({"path": "a", "min": 5, "max": "*"}, True),
        ({"path": "a", "min": 1, "max": "+0"}, False),
        ({"path": "a", "min": 0, "max": "-1"}, False),
        ({"path": "a", "min": None, "max": "0"}, True),
        ({"path": "a", "min": 1, "max": None}, True),
        ({"path": "a", "min": True, "max": "0"}, None),
        ({"path": "a", "min": "1", "max": "0"}, None),
        ({"path": "a", "min": 1, "max": 0}, None),
        ({"path": "a", "min": 1, "max": "abc"}, None),
        ({"path": "a", "min": 1, "max": "0", "_max": {"id": "x"}}, None),
        ("x", None),
    ],
)
def test_eld_2_min_is_not_over_max(element: Any, ok: bool | None) -> None:
    expression = definitional("iif(max != '*', min <= max.toInteger())")
    decides(expression, _eld_2, ED, element, element, ok)


@pytest.mark.parametrize(
    ("max_value", "ok"),
    [("*", True), ("0", True), ("12", True), ("+3", True), ("-1", False), ("-0", True), ("abc", None), (1, None)],
)
def test_eld_3_max_is_a_star_or_a_whole_number(max_value: Any, ok: bool | None) -> None:
    expression = definitional("($this = '*') or (toInteger() >= 0)")
    decides(expression, _eld_3, None, max_value, max_value, ok)


CR = {"path": "a.b", "contentReference": "#a.c"}


@pytest.mark.parametrize(
    ("element", "ok"),
    [
        (CR, True),
        ({"path": "a.b", "type": [{"code": "string"}]}, True),
        ({**CR, "type": [{"code": "string"}]}, False),
        ({**CR, "type": []}, True),
        ({**CR, "example": [{"label": "x", "valueString": "x"}]}, False),
        ({**CR, "maxLength": 3}, False),
        ({**CR, "binding": {"strength": "required"}}, False),
        ({**CR, "defaultValueString": "x"}, False),
        ({**CR, "fixedCode": "x"}, False),
        ({**CR, "patternCoding": {"code": "x"}}, False),
        ({**CR, "minValueInteger": 1}, False),
        ({**CR, "maxValueQuantity": {"value": 1}}, False),
        ({**CR, "fixedFoo": "x"}, True),  # not a type of fixed[x]
        ({**CR, "minValueString": "x"}, True),  # not a type of minValue[x]
        ({**CR, "fixedString": None}, True),
        ({"path": "a.b", "contentReference": None, "maxLength": 3}, True),
        ({**CR, "_contentReference": {"id": "x"}}, None),
    ],
)
def test_eld_5_a_content_reference_has_nothing_else(element: dict[str, Any], ok: bool | None) -> None:
    decides(definitional("contentReference.empty() or (type.empty()"), _eld_5, ED, element, element, ok)


@pytest.mark.parametrize(
    ("stem", "element", "ok"),
    [
        ("fixed", {"path": "a", "fixedString": "x", "type": TYPES_2}, False),
        ("fixed", {"path": "a", "fixedString": "x", "type": TYPES_2[:1]}, True),  # at the limit
        ("fixed", {"path": "a", "fixedString": "x"}, True),
        ("fixed", {"path": "a", "type": TYPES_2}, True),
        ("fixed", {"path": "a", "patternString": "x", "type": TYPES_2}, True),
        ("fixed", {"path": "a", "fixedFoo": "x", "type": TYPES_2}, True),
        ("fixed", {"path": "a", "fixedString": "x", "type": {"code": "x"}}, None),
        ("fixed", {"path": "a", "fixedString": "x", "type": [{"code": "x", "_code": {"id": "x"}}]}, None),
        ("pattern", {"path": "a", "patternCoding": {"code": "x"}, "type": TYPES_2}, False),
        ("pattern", {"path": "a", "patternCoding": {"code": "x"}, "type": TYPES_2[1:]}, True),
        ("pattern", {"path": "a", "fixedCoding": {"code": "x"}, "type": TYPES_2}, True),
        ("pattern", {"path": "a", "_patternCode": {"id": "x"}, "type": TYPES_2}, None),
    ],
)
def test_eld_6_and_eld_7_a_fixed_or_pattern_value_has_one_type(stem: str, element: Any, ok: bool | None) -> None:
    expression = definitional(f"{stem}.empty() or (type.count()")
    decides(expression, _at_most_one_type(stem), ED, element, element, ok)


@pytest.mark.parametrize(
    ("first", "second", "element", "ok"),
    [
        ("pattern", "fixed", {"path": "a", "patternString": "x", "fixedString": "x"}, False),
        ("pattern", "fixed", {"path": "a", "patternString": "x"}, True),
        ("pattern", "fixed", {"path": "a", "fixedString": "x"}, True),
        ("pattern", "fixed", {"path": "a", "patternFoo": "x", "fixedString": "x"}, True),
        ("pattern", "fixed", {"path": "a", "patternString": "x", "fixedFoo": "x"}, True),
        ("pattern", "fixed", {"path": "a", "patternString": "x", "_fixedString": {"id": "x"}}, None),
        (
            "defaultValue",
            "meaningWhenMissing",
            {"path": "a", "defaultValueBoolean": True, "meaningWhenMissing": "x"},
            False,
        ),
        ("defaultValue", "meaningWhenMissing", {"path": "a", "defaultValueBoolean": True}, True),
        ("defaultValue", "meaningWhenMissing", {"path": "a", "meaningWhenMissing": "x"}, True),
        (
            "defaultValue",
            "meaningWhenMissing",
            {"path": "a", "defaultValueBoolean": True, "meaningWhenMissing": None},
            True,
        ),
        ("defaultValue", "meaningWhenMissing", {"path": "a", "defaultValueFoo": True, "meaningWhenMissing": "x"}, True),
    ],
)
def test_eld_8_and_eld_15_two_elements_never_together(first: str, second: str, element: Any, ok: bool | None) -> None:
    expression = definitional(f"{first}.empty() or {second}.empty()")
    second_types = _OPEN_TYPES if second == "fixed" else None
    decides(expression, _both_not(first, second, _OPEN_TYPES, second_types), ED, element, element, ok)


@pytest.mark.parametrize(
    ("element", "ok"),
    [
        ({"path": "a", "defaultValueBoolean": True, "meaningWhenMissing": "x"}, False),
        ({"path": "a", "meaningWhenMissing": "x"}, True),
        ({"path": "a", "meaningWhenMissing": None, "defaultValueBoolean": True}, True),
        ({"path": "a", "meaningWhenMissing": "x", "defaultValueFoo": True}, True),
    ],
)
def test_two_elements_never_together_the_plain_one_first(element: Any, ok: bool) -> None:
    # The factory takes a plain field on either side (types None): the same rule written the other way round.
    expression = "meaningWhenMissing.empty() or defaultValue.empty()"
    check = _both_not("meaningWhenMissing", "defaultValue", None, _OPEN_TYPES)
    assert check(element, element) is ok
    assert fhirpath(expression, element, ED, {"resourceType": "StructureDefinition"}) is ok


@pytest.mark.parametrize(
    ("element", "ok"),
    [
        ({"path": "a", "binding": {"strength": "required"}, "type": [{"code": "integer"}]}, True),
        ({"path": "a", "binding": {"strength": "required"}, "type": [{"code": "code"}, {}]}, True),
        ({"path": "a", "binding": {"strength": "required"}}, True),
        ({"path": "a", "binding": {"strength": "required"}, "type": [{"code": ["integer"]}]}, None),
        ({"path": "a", "binding": {"strength": "required"}, "type": "x"}, None),
        ({"path": "a", "_binding": {"id": "x"}}, None),
    ],
)
def test_eld_11_as_r4_wrote_it_never_fails(element: Any, ok: bool | None) -> None:
    decides(definitional("binding.empty() or type.code.empty() or type.select("), _eld_11, ED, element, element, ok)


@pytest.mark.parametrize(
    ("name", "key", "base", "item", "ok"),
    [
        ("type", "code", ED, {"path": "a", "type": [{"code": "a"}, {"code": "b"}]}, True),
        ("type", "code", ED, {"path": "a", "type": [{"code": "a"}, {"code": "a"}]}, False),
        ("type", "code", ED, {"path": "a", "type": [{"code": "a"}, {}, {"code": "b"}]}, True),
        ("type", "code", ED, {"path": "a", "type": [{"code": "a"}, {"code": 1}]}, None),
        ("type", "code", ED, {"path": "a", "type": {"code": "a"}}, None),
        ("type", "code", ED, {"path": "a", "type": [{"code": "a", "_code": {"id": "x"}}]}, None),
        ("type", "code", ED, {"path": "a", "type": [{"code": "a"}], "_type": [{"id": "x"}]}, None),
        ("type", "code", ED, {"path": "a", "_path": {"id": "x"}, "type": [{"code": "a"}, {"code": "a"}]}, False),
        ("constraint", "key", ED, {"path": "a", "constraint": [{"key": "a-1"}, {"key": "a-1"}]}, False),
        ("constraint", "key", ED, {"path": "a", "constraint": [{"key": "a-1"}, {"key": "a-2"}]}, True),
        ("constraint", "key", ED, {"path": "a"}, True),
        (
            "searchParam",
            "name",
            "CapabilityStatement.rest.resource",
            {"searchParam": [{"name": "a"}, {"name": "a"}]},
            False,
        ),
        (
            "searchParam",
            "name",
            "CapabilityStatement.rest.resource",
            {"searchParam": [{"name": "a"}, {"name": "b"}]},
            True,
        ),
    ],
)
def test_eld_13_eld_14_cpb_12_distinct(name: str, key: str, base: str, item: Any, ok: bool | None) -> None:
    decides(definitional(f"{name}.select({key}).isDistinct()"), _distinct_of(name, key), base, item, item, ok)


SLICE_NAME = "^[a-zA-Z0-9\\/\\-_\\[\\]\\@]+$"
SDF_0 = "[A-Z]([A-Za-z0-9_]){0,254}"


@pytest.mark.parametrize(
    ("fragment", "name", "pattern", "item", "ok"),
    [
        ("sliceName.matches(", "sliceName", SLICE_NAME, {"path": "a", "sliceName": "a/b-c_[d]@e9"}, True),
        ("sliceName.matches(", "sliceName", SLICE_NAME, {"path": "a", "sliceName": "a b"}, False),
        ("sliceName.matches(", "sliceName", SLICE_NAME, {"path": "a", "sliceName": "a.b"}, False),
        ("sliceName.matches(", "sliceName", SLICE_NAME, {"path": "a"}, True),
        ("sliceName.matches(", "sliceName", SLICE_NAME, {"path": "a", "sliceName": ["a"]}, None),
        ("sliceName.matches(", "sliceName", SLICE_NAME, {"path": "a", "_sliceName": {"id": "x"}}, None),
        ("name.matches(", "name", SDF_0, {"name": "Patient_1"}, True),
        ("name.matches(", "name", SDF_0, {"name": "patient"}, False),
        ("name.matches(", "name", SDF_0, {"name": "A" + "a" * 254}, True),  # 255 characters, the limit
        ("name.matches(", "name", SDF_0, {"name": "A" + "a" * 255}, False),
        ("name.matches(", "name", SDF_0, {"name": "A-b"}, False),
        ("name.matches(", "name", SDF_0, {"name": None}, True),
    ],
)
def test_eld_16_and_the_name_rule_match_their_pattern(
    fragment: str, name: str, pattern: str, item: Any, ok: bool | None
) -> None:
    expression = definitional(fragment)
    base = ED if name == "sliceName" else None
    decides(expression, _matches_or_empty(name, pattern), base, item, item, ok)


@pytest.mark.parametrize(
    ("path", "eld_19", "eld_20"),
    [
        ("Patient", True, True),
        ("Patient.name.given", True, True),
        ("Patient.value[x]", True, True),
        ("Patient.value[x]:valueString", True, False),
        ("Patient.A", True, False),
        ("Patient..a", False, False),
        ("Patient a", False, False),
        ("a" * 64 + ".b", True, True),  # 64 characters a part: the limit
        ("a" * 65 + ".b", False, True),
        ("Patient.a;b", False, False),
        ("1Patient", True, False),
    ],
)
def test_eld_19_and_eld_20_paths(path: str, eld_19: bool, eld_20: bool) -> None:
    element = {"path": path}
    for fragment, ok in (("{1,64}(\\\\.[^", eld_19), ("[A-Za-z][A-Za-z0-9]*(", eld_20)):
        expression = definitional(fragment)
        decides(expression, DEFINITIONAL_NATIVES[expression], ED, element, element, ok)


@pytest.mark.parametrize(
    ("element", "ok"),
    [
        ({"path": "a", "isModifier": True}, False),
        ({"path": "a", "isModifier": True, "isModifierReason": "x"}, True),
        ({"path": "a", "isModifier": False}, True),
        ({"path": "a"}, True),
        ({"path": "a", "isModifier": None}, True),
        ({"path": "a", "isModifier": "true"}, None),
        ({"path": "a", "isModifier": True, "_isModifierReason": {"id": "x"}}, None),
    ],
)
def test_eld_18_a_modifier_says_why(element: Any, ok: bool | None) -> None:
    decides(definitional("(isModifier.exists() and isModifier)"), _eld_18, ED, element, element, ok)


@pytest.mark.parametrize(
    ("first", "second", "base", "item", "ok"),
    [
        ("sliceIsConstraining", "sliceName", ED, {"path": "a", "sliceIsConstraining": True}, False),
        ("sliceIsConstraining", "sliceName", ED, {"path": "a", "sliceIsConstraining": True, "sliceName": "x"}, True),
        ("sliceIsConstraining", "sliceName", ED, {"path": "a", "sliceName": "x"}, True),
        ("sliceIsConstraining", "sliceName", ED, {"path": "a", "sliceIsConstraining": True, "sliceName": None}, False),
        ("value", "system", "ContactPoint", {"value": "1"}, False),
        ("value", "system", "ContactPoint", {"value": "1", "system": "phone"}, True),
        ("value", "system", "ContactPoint", {"system": "phone"}, True),
        ("value", "system", "ContactPoint", {"value": "1", "_system": {"id": "x"}}, None),
        ("value", "system", "ContactPoint", {"_value": {"id": "x"}}, None),
        ("value", "system", "ContactPoint", {"value": "1", "_use": {"id": "x"}}, False),  # a field it does not read
    ],
)
def test_eld_22_and_cpt_2_one_element_needs_another(
    first: str, second: str, base: str, item: Any, ok: bool | None
) -> None:
    expression = (
        definitional(f"{first}.exists() implies {second}.exists()")
        if first != "value"
        else "value.empty() or system.exists()"
    )
    decides(expression, _implies_present(first, second), base, item, item, ok)


@pytest.mark.parametrize(
    ("first", "second", "base", "item", "ok"),
    [
        ("discriminator", "description", "ElementDefinition.slicing", {"rules": "open"}, False),
        ("discriminator", "description", "ElementDefinition.slicing", {"description": "x"}, True),
        ("discriminator", "description", "ElementDefinition.slicing", {"discriminator": [{"type": "value"}]}, True),
        ("discriminator", "description", "ElementDefinition.slicing", {"discriminator": []}, False),
        ("discriminator", "description", "ElementDefinition.slicing", {"_description": {"id": "x"}}, None),
        ("discriminator", "description", "ElementDefinition.slicing", {"rules": "open", "_rules": {"id": "x"}}, False),
        ("name", "uri", "StructureDefinition.mapping", {"identity": "m", "uri": "http://x"}, True),
        ("name", "uri", "StructureDefinition.mapping", {"identity": "m"}, False),
        ("name", "uri", "StructureDefinition.mapping", {"identity": "m", "_name": {"id": "x"}}, None),
        ("code", "display", "ValueSet.expansion.contains", {"_code": {"id": "x"}}, None),
        ("code", "display", "ValueSet.expansion.contains", {"display": "x"}, True),
        ("code", "display", "ValueSet.expansion.contains", {"abstract": True}, False),
        ("type", "part", "OperationDefinition.parameter", {"name": "p", "part": [{"name": "q"}]}, True),
        ("type", "part", "OperationDefinition.parameter", {"name": "p"}, False),
        ("snapshot", "differential", None, {"resourceType": "StructureDefinition", "differential": {}}, True),
        ("snapshot", "differential", None, {"resourceType": "StructureDefinition"}, False),
    ],
)
def test_either_of_two_elements(first: str, second: str, base: str | None, item: Any, ok: bool | None) -> None:
    decides(f"{first}.exists() or {second}.exists()", _either_present(first, second), base, item, item, ok)


@pytest.mark.parametrize(
    ("other", "item", "ok"),
    [
        ("aggregation", {"code": "Reference", "aggregation": ["contained"]}, True),
        ("aggregation", {"code": "canonical", "aggregation": ["contained"]}, True),
        ("aggregation", {"code": "string", "aggregation": ["contained"]}, False),
        ("aggregation", {"code": "reference", "aggregation": ["contained"]}, False),
        ("aggregation", {"code": "string"}, True),
        ("aggregation", {"aggregation": ["contained"]}, True),  # no code: empty, which passes
        ("aggregation", {"code": ["Reference"], "aggregation": ["contained"]}, None),
        ("aggregation", {"code": "string", "_aggregation": [{"id": "x"}]}, None),
        ("targetProfile", {"code": "Reference", "targetProfile": ["http://x"]}, True),
        ("targetProfile", {"code": "uri", "targetProfile": ["http://x"]}, False),
        ("targetProfile", {"code": "uri", "targetProfile": []}, True),
    ],
)
def test_eld_4_and_eld_17_only_references_aggregate_or_target(other: str, item: Any, ok: bool | None) -> None:
    expression = definitional(
        "aggregation.empty() or (code = 'Reference')" if other == "aggregation" else "or targetProfile.empty()"
    )
    decides(expression, _type_code_is_reference_or(other), "ElementDefinition.type", item, item, ok)


@pytest.mark.parametrize(
    ("binding", "ok"),
    [
        ({"valueSet": "http://x"}, True),
        ({"valueSet": "https://x"}, True),
        ({"valueSet": "httpsx"}, True),  # startsWith('https'), as R4 wrote it
        ({"valueSet": "urn:oid:1"}, True),
        ({"valueSet": "http"}, False),
        ({"valueSet": "ftp://x"}, False),
        ({"valueSet": "urn"}, False),
        ({"strength": "example"}, True),
        ({"valueSet": 1}, None),
        ({"valueSet": "x", "_strength": {"id": "x"}}, None),
    ],
)
def test_eld_12_a_value_set_is_a_url_or_urn(binding: Any, ok: bool | None) -> None:
    decides(
        definitional("valueSet.exists() implies (valueSet.startsWith('http:')"),
        _eld_12,
        "ElementDefinition.binding",
        binding,
        binding,
        ok,
    )


@pytest.mark.parametrize(
    ("element", "ok"),
    [
        ({"path": "a", "binding": {"strength": "example"}}, False),
        ({"path": "a", "binding": {"strength": "example", "description": "x"}}, True),
        ({"path": "a", "binding": {"strength": "example", "valueSet": "http://x"}}, True),
        ({"path": "a"}, True),
        ({"path": "a", "binding": {"strength": "example", "_description": {"id": "x"}}}, None),
        ({"path": "a", "_path": {"id": "x"}}, None),
    ],
)
def test_sdf_10_a_binding_has_a_value_set_or_a_description(element: Any, ok: bool | None) -> None:
    decides(definitional("binding.empty() or binding.valueSet.exists()"), _sdf_10, ED, element, element, ok)


def sd(snapshot: list[Any] | None = None, differential: list[Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A StructureDefinition of Patient with these elements."""
    out: dict[str, Any] = {"resourceType": "StructureDefinition", "kind": "resource", "type": "Patient", **fields}
    if snapshot is not None:
        out["snapshot"] = {"element": snapshot}
    if differential is not None:
        out["differential"] = {"element": differential}
    return out


ROOT = {"path": "Patient", "id": "Patient", "min": 0, "max": "*", "definition": "x", "base": {"path": "Patient"}}
NAME = {"path": "Patient.name", "id": "Patient.name", "min": 0, "max": "*", "definition": "x", "base": {"path": "x"}}
CORE = SD + "Patient"


@pytest.mark.parametrize(
    ("definition", "sdf_9", "sdf_23"),
    [
        (sd([ROOT, NAME], [ROOT]), True, True),
        (sd([ROOT], [{**ROOT, "label": "x"}]), False, True),
        (sd([{**ROOT, "code": [{"code": "x"}]}]), False, True),
        (sd([ROOT], [{**ROOT, "requirements": "x"}]), False, True),
        (sd([ROOT, {**NAME, "label": "x", "code": [{"code": "x"}], "requirements": "x"}]), True, True),
        (sd([ROOT], [{**ROOT, "sliceName": "x"}]), True, False),
        (sd([{**ROOT, "sliceName": "x"}], [ROOT]), True, False),
        (sd([ROOT, {**NAME, "sliceName": "x"}], [{**NAME, "sliceName": "x"}]), True, True),
        (sd([ROOT, {**NAME, "label": None}]), True, True),
        (sd(), True, True),
        # Another field holding an element list: children() would read it, so the interpreter decides.
        ({**sd([ROOT]), "mapping": [{"identity": "m", "element": [{"path": "x", "label": "y"}]}]}, None, True),
        ({**sd([ROOT]), "extra": {"element": [{"path": "x", "label": "y"}]}}, None, True),
        ({**sd([ROOT]), "extra": {"elements": []}, "other": [{"x": 1}, "y"]}, True, True),
        (sd([{**ROOT, "_path": {"id": "x"}}]), None, None),
        (sd([{"id": "x"}]), None, None),  # an element without a path
        ({**sd(), "differential": {"element": {"path": "Patient"}}}, None, None),
        ({**sd(), "_snapshot": {"id": "x"}}, None, None),
    ],
)
def test_sdf_9_and_sdf_23_rules_of_the_root_element(definition: Any, sdf_9: bool | None, sdf_23: bool | None) -> None:
    decides(definitional("children().element.where("), _sdf_9, None, definition, definition, sdf_9)
    decides(definitional("(snapshot | differential).element.all("), _sdf_23, None, definition, definition, sdf_23)


@pytest.mark.parametrize(
    ("definition", "ok"),
    [
        (
            sd(
                [ROOT, {**NAME, "type": [{"code": "HumanName"}]}], [{**NAME, "type": [{"code": "HumanName"}]}], url=CORE
            ),
            True,
        ),
        (sd([ROOT, {**NAME, "type": [{"code": "a.b"}]}], [NAME], url=CORE), True),  # a dot only in a snapshot
        (sd([ROOT], [{**NAME, "type": [{"code": "a.b"}]}], url=CORE), False),
        (sd([ROOT, {**NAME, "type": [{"code": "x-y"}]}], None, url=CORE), False),
        (sd([ROOT], [{**NAME, "type": [{"code": "x-y"}]}], url=CORE), False),
        (sd([{**NAME, "type": [{"code": "http://hl7.org/fhirpath/System.String"}]}], None, url=CORE), True),
        (sd(None, [{**NAME, "type": [{"code": "http://hl7.org/fhirpath/System.String"}]}], url=CORE), True),
        (sd([{**NAME, "type": [{"code": "http://hl7.org/fhirpath/system.String"}]}], None, url=CORE), False),
        (sd(None, [{**NAME, "type": [{"code": "http://hl7.org/fhirpath/System.string"}]}], url=CORE), False),
        (sd([ROOT], [{**NAME, "type": [{"code": "x-y"}]}], url="http://x/y"), True),
        (sd([ROOT], [{**NAME, "type": [{"code": "x-y"}]}]), True),
        (sd([ROOT], [{**NAME, "type": [{"code": "x-y"}]}], url=None), True),
        (sd([ROOT], [{**NAME, "type": [{"code": 1}]}], url=CORE), None),
        (sd([ROOT, {**NAME, "type": [{"code": 1}]}], [ROOT], url=CORE), None),
        (sd([ROOT], [{**NAME, "type": "x"}], url=CORE), None),
        (sd([{**ROOT, "_id": {"id": "x"}}], [ROOT], url=CORE), None),
        (sd([ROOT], [{"id": "x"}], url=CORE), None),
        (sd([ROOT], [ROOT], url=1), None),
        ({**sd([ROOT], [ROOT], url=CORE), "_url": {"id": "x"}}, None),
    ],
)
def test_sdf_19_the_type_codes_of_a_core_definition(definition: Any, ok: bool | None) -> None:
    decides(
        definitional("url.startsWith('http://hl7.org/fhir/StructureDefinition') implies (differential"),
        _sdf_19,
        None,
        definition,
        definition,
        ok,
    )


@pytest.mark.parametrize(
    ("elements", "sdf_3", "sdf_8b"),
    [
        ([ROOT, NAME], True, True),
        ([ROOT, {k: v for k, v in NAME.items() if k != "definition"}], False, True),
        ([ROOT, {k: v for k, v in NAME.items() if k != "min"}], False, True),
        ([{k: v for k, v in ROOT.items() if k != "max"}, NAME], False, True),
        ([ROOT, {k: v for k, v in NAME.items() if k != "base"}], True, False),
        ([ROOT, {**NAME, "base": None}], True, False),
        ([], True, True),
        ([ROOT, {**NAME, "_definition": {"id": "x"}}], None, None),
    ],
)
def test_sdf_3_and_sdf_8b_every_snapshot_element_is_complete(
    elements: list[Any], sdf_3: bool | None, sdf_8b: bool | None
) -> None:
    definition = sd(elements)
    snapshot = definition["snapshot"]
    base = "StructureDefinition.snapshot"
    decides(
        definitional("element.all(definition.exists()"),
        _all_elements_have("definition", "min", "max"),
        base,
        snapshot,
        definition,
        sdf_3,
    )
    decides("element.all(base.exists())", _all_elements_have("base"), base, snapshot, definition, sdf_8b)


NO_ID = {k: v for k, v in NAME.items() if k != "id"}


@pytest.mark.parametrize(
    ("definition", "sdf_14", "sdf_16", "sdf_17"),
    [
        (sd([ROOT, NAME], [ROOT, NAME]), True, True, True),
        (sd([ROOT, NO_ID], [ROOT]), False, False, True),
        (sd([ROOT], [ROOT, NO_ID]), False, True, False),
        (sd([ROOT, {**NAME, "id": None}], [ROOT]), False, False, True),
        (sd([ROOT, {**NAME, "id": "Patient"}], [ROOT]), True, False, True),
        (sd([ROOT], [ROOT, {**NAME, "id": "Patient"}]), True, True, False),
        (sd([ROOT, NAME, {**NAME, "id": "Patient.x"}], None), True, True, True),
        (sd(), True, True, True),
        (sd([ROOT, {**NAME, "id": 1}], [ROOT]), True, None, True),
        (sd([ROOT], [ROOT, {**NAME, "_id": {"id": "x"}}]), None, True, None),
    ],
)
def test_sdf_14_16_17_element_ids(
    definition: Any, sdf_14: bool | None, sdf_16: bool | None, sdf_17: bool | None
) -> None:
    decides(
        definitional("snapshot.element.all(id.exists()) and differential"),
        _sdf_14,
        None,
        definition,
        definition,
        sdf_14,
    )
    decides(
        definitional("snapshot.element.all(id.exists()) and snapshot.element.id"),
        _ids_distinct("snapshot"),
        None,
        definition,
        definition,
        sdf_16,
    )
    decides(
        definitional("differential.element.all(id.exists()) and"),
        _ids_distinct("differential"),
        None,
        definition,
        definition,
        sdf_17,
    )


@pytest.mark.parametrize(
    ("definition", "ok"),
    [
        (sd([ROOT, {**NAME, "defaultValueString": "x"}], None, url=CORE), False),
        (sd([ROOT], [{**NAME, "defaultValueBoolean": False}], url=CORE), False),
        (sd([ROOT, NAME], [NAME], url=CORE), True),
        (sd([ROOT, {**NAME, "defaultValueFoo": "x"}], None, url=CORE), True),
        (sd([ROOT, {**NAME, "defaultValueString": "x"}], None, url="http://x"), True),
        (sd([ROOT, {**NAME, "defaultValueString": "x"}], None), True),
        (sd([ROOT, {**NAME, "_defaultValueString": {"id": "x"}}], None, url=CORE), None),
        (sd([ROOT], [NAME], url=["x"]), None),
        ({**sd([ROOT, {**NAME, "defaultValueString": "x"}], None, url=CORE), "_url": {"id": "x"}}, None),
    ],
)
def test_sdf_22_a_core_definition_has_no_default_values(definition: Any, ok: bool | None) -> None:
    decides(definitional("implies (snapshot.element.defaultValue.empty()"), _sdf_22, None, definition, definition, ok)


@pytest.mark.parametrize(
    ("definition", "ok"),
    [
        (sd([ROOT, NAME, NAME], derivation="specialization"), False),
        (sd([ROOT, NAME], derivation="specialization"), True),
        (sd([ROOT, NAME, NAME], derivation="constraint"), True),
        (sd([ROOT, NAME, NAME]), True),  # no derivation: empty, which passes
        (sd(None, derivation="specialization"), True),
        (sd([ROOT, NAME, {**NAME, "_path": {"id": "x"}}], derivation="specialization"), None),
        (sd([ROOT, NAME, NAME], derivation=1), None),
        ({**sd([ROOT, NAME, NAME], derivation="specialization"), "_derivation": {"id": "x"}}, None),
    ],
)
def test_sdf_1_paths_are_distinct_but_in_a_constraint(definition: Any, ok: bool | None) -> None:
    decides(definitional("derivation = 'constraint' or snapshot"), _sdf_1, None, definition, definition, ok)


@pytest.mark.parametrize(
    ("elements", "ok"),
    [
        ([ROOT, {**NAME, "slicing": {"rules": "open"}}], True),
        ([{**ROOT, "slicing": {"rules": "open"}}, NAME], False),
        ([{**ROOT, "slicing": None}], True),
        ([{**ROOT, "_min": {"id": "x"}}], None),
    ],
)
def test_sdf_20_no_slicing_on_the_root(elements: list[Any], ok: bool | None) -> None:
    definition = sd(None, elements)
    decides(
        definitional(".slicing.empty()"),
        _sdf_20,
        "StructureDefinition.differential",
        definition["differential"],
        definition,
        ok,
    )


@pytest.mark.parametrize(
    ("definition", "ok"),
    [
        (sd([ROOT, NAME]), True),
        (sd([ROOT]), True),
        (sd([NAME, ROOT]), False),  # the first is not the type
        (sd([ROOT, {"path": "Observation.name"}]), False),
        (sd([ROOT, {"path": "Patientx"}]), False),  # not below the root
        (sd([NAME, {"path": "Patient.name.given"}], kind="logical"), True),
        (sd([NAME, ROOT], kind="logical"), False),
        (sd([ROOT, NAME], type="Observation"), False),
        (sd([]), None),
        (sd([ROOT], kind=1), None),
        ({**sd([ROOT]), "_type": {"id": "x"}}, None),
        ({**sd([ROOT, NAME]), "resourceType": "Basic"}, None),
        # %resource is read only from a definition whose kind, type and snapshot have no extension.
        ({**sd([ROOT, NAME]), "_kind": {"id": "x"}}, None),
        ({**sd([ROOT, NAME]), "_snapshot": {"id": "x"}}, None),
        (sd([ROOT, NAME], type=1), None),
        (sd([ROOT, NAME], kind=None), None),
        (sd([ROOT, NAME], type=None), None),
    ],
)
def test_sdf_8_a_snapshot_is_below_its_type(definition: Any, ok: bool | None) -> None:
    decides(
        definitional("element.first().path = %resource.type"),
        _sdf_8,
        "StructureDefinition.snapshot",
        definition["snapshot"],
        definition,
        ok,
    )
    # Only the definition's own snapshot: another object is left to the interpreter.
    assert _sdf_8(dict(definition["snapshot"]), definition) is None


@pytest.mark.parametrize(
    ("definition", "ok"),
    [
        (sd(None, [ROOT, NAME]), True),
        (sd(None, [NAME, {"path": "Patient.name.given"}]), True),
        (sd(None, [{"path": "Patientx.a"}, {"path": "Patientx.b"}]), True),  # startsWith(type), as R4 wrote it
        (sd(None, [{"path": "Observation.a"}]), False),
        (sd(None, [ROOT, {"path": "Observation.b"}]), False),
        (sd(None, [NAME, {"path": "Patient"}]), False),
        (sd(None, [{"path": "Observation.a"}], kind="logical"), True),
        (sd(None, [NAME, {"path": "Patientx"}]), False),
        (sd(None, [NAME, {"path": "Patient.name.a.b"}]), True),
        (sd(None, [NAME, {"path": "Patient.identifier"}]), True),  # below the root, not below the first
        (sd(None, [{"path": "Patient.name.given"}, {"path": "Patient.identifier"}]), True),
        (sd(None, [NAME, {"path": "Patient.name"}]), True),
        (sd(None, []), None),
        ({**sd(None, [ROOT, NAME]), "_differential": {"id": "x"}}, None),
        ({**sd(None, [ROOT, NAME]), "_type": {"id": "x"}}, None),
        (sd(None, [ROOT, NAME], kind=1), None),
    ],
)
def test_sdf_8a_a_differential_is_below_its_type(definition: Any, ok: bool | None) -> None:
    differential = definition["differential"]
    decides(
        definitional("element.first().path.startsWith(%resource.type)"),
        _sdf_8a,
        "StructureDefinition.differential",
        differential,
        definition,
        ok,
    )


@pytest.mark.parametrize(
    ("fields", "sdf_4", "sdf_5", "sdf_18", "sdf_21"),
    [
        # (abstract, base; Extension context; contextInvariant; defaultValue needs a specialization)
        ({}, True, True, True, True),
        ({"abstract": False}, False, True, True, True),
        ({"abstract": False, "baseDefinition": "http://x"}, True, True, True, True),
        ({"abstract": True}, True, True, True, True),
        ({"abstract": "false"}, None, True, True, True),
        ({"abstract": False, "_baseDefinition": {"id": "x"}}, None, True, True, True),
        ({"abstract": False, "_kind": {"id": "x"}}, False, True, True, True),
        ({"type": "Extension", "derivation": "constraint"}, True, False, True, True),
        ({"type": "Extension", "derivation": "specialization"}, True, True, True, True),
        ({"type": "Extension"}, True, True, True, True),
        ({"type": "Extension", "derivation": "constraint", "context": [{"type": "element"}]}, True, True, True, True),
        ({"type": "Extension", "derivation": "constraint", "contextInvariant": ["x"]}, True, False, True, True),
        ({"type": "Patient", "derivation": "constraint", "contextInvariant": ["x"]}, True, True, False, True),
        ({"type": None, "contextInvariant": ["x"]}, True, True, True, True),
        ({"type": 1, "derivation": "constraint"}, True, None, None, True),
        ({"type": "Extension", "derivation": "constraint", "_context": {"id": "x"}}, True, None, True, True),
        (
            {"derivation": "constraint", "differential": {"element": [{**NAME, "defaultValueString": "x"}]}},
            True,
            True,
            True,
            False,
        ),
        (
            {"derivation": "specialization", "differential": {"element": [{**NAME, "defaultValueString": "x"}]}},
            True,
            True,
            True,
            True,
        ),
        (
            {"derivation": "constraint", "differential": {"element": [{**NAME, "defaultValueFoo": "x"}]}},
            True,
            True,
            True,
            True,
        ),
        ({"differential": {"element": [{**NAME, "defaultValueString": "x"}]}}, True, True, True, True),
        (
            {"derivation": "constraint", "differential": {"element": [{**NAME, "_defaultValueString": {}}]}},
            True,
            True,
            True,
            None,
        ),
        ({"derivation": 1, "differential": {"element": [NAME]}}, True, None, True, None),
        ({"type": "Extension", "derivation": "constraint", "_type": {"id": "x"}}, True, None, None, True),
        ({"type": "Extension", "derivation": "constraint", "_derivation": {"id": "x"}}, True, None, True, None),
        ({"type": "Patient", "contextInvariant": ["x"], "_contextInvariant": [{"id": "x"}]}, True, True, None, True),
        ({"abstract": False, "_abstract": {"id": "x"}}, None, True, True, True),
        ({"derivation": "constraint", "differential": {"element": [NAME], "_id": {"id": "x"}}}, True, True, True, None),
    ],
)
def test_sdf_4_5_18_21_rules_of_the_definition(
    fields: dict[str, Any], sdf_4: bool | None, sdf_5: bool | None, sdf_18: bool | None, sdf_21: bool | None
) -> None:
    definition = {"resourceType": "StructureDefinition", "kind": "resource", **fields}
    decides("abstract = true or baseDefinition.exists()", _sdf_4, None, definition, definition, sdf_4)
    decides(definitional("type != 'Extension'"), _sdf_5, None, definition, definition, sdf_5)
    decides(definitional("contextInvariant.exists() implies"), _sdf_18, None, definition, definition, sdf_18)
    decides(
        definitional("differential.element.defaultValue.exists() implies"),
        _sdf_21,
        None,
        definition,
        definition,
        sdf_21,
    )


TYPED_ROOT = {**ROOT, "type": [{"code": "Patient"}]}


@pytest.mark.parametrize(
    ("definition", "sdf_11", "sdf_15", "sdf_15a"),
    [
        (sd([ROOT, NAME], [ROOT]), True, True, True),
        (sd([NAME, ROOT], [NAME]), False, True, True),
        (sd([NAME, ROOT], kind="logical"), True, True, True),
        (sd([ROOT], type="Observation"), False, True, True),
        (sd([ROOT], type=None), True, True, True),
        (sd(None, [ROOT]), True, True, True),
        (sd([]), True, True, True),
        (sd([TYPED_ROOT], [TYPED_ROOT]), True, False, False),
        (sd([TYPED_ROOT], [{**NAME, "type": [{"code": "HumanName"}]}]), True, False, True),  # not a root: sdf-15a holds
        (sd([ROOT], [{**ROOT, "type": []}]), True, True, True),
        (sd([TYPED_ROOT], [TYPED_ROOT], kind="logical"), True, True, True),
        (sd([TYPED_ROOT], [TYPED_ROOT], kind=None), True, True, True),
        (sd([{**ROOT, "type": "x"}], [{**ROOT, "type": "x"}]), True, None, None),
        (sd([ROOT], [ROOT], kind=1), None, None, None),
        ({**sd([NAME], [NAME]), "_kind": {"id": "x"}}, None, None, None),
        ({**sd([NAME], [NAME]), "snapshot": {"element": "x"}}, None, None, True),
        # A primitive extension on a field a rule reads leaves that rule to the interpreter.
        ({**sd([NAME], [NAME]), "_type": {"id": "x"}}, None, True, True),
        ({**sd([NAME], [NAME]), "_snapshot": {"id": "x"}}, None, None, True),
        ({**sd(None, [NAME]), "_snapshot": {"id": "x"}}, None, None, True),  # an extension and no snapshot
        (
            {**sd([NAME], [NAME], kind="logical"), "_snapshot": {"id": "x"}, "_differential": {"id": "x"}},
            None,
            None,
            None,
        ),
        ({**sd([TYPED_ROOT], [TYPED_ROOT]), "_differential": {"id": "x"}}, True, False, None),
        (sd([NAME], [NAME], type=1), None, True, True),
    ],
)
def test_sdf_11_15_15a_the_first_element(
    definition: Any, sdf_11: bool | None, sdf_15: bool | None, sdf_15a: bool | None
) -> None:
    decides(definitional("kind != 'logical' implies snapshot.empty()"), _sdf_11, None, definition, definition, sdf_11)
    decides(
        definitional("kind!='logical' implies snapshot"),
        _first_element_untyped("snapshot", False),
        None,
        definition,
        definition,
        sdf_15,
    )
    decides(
        definitional("differential.element.first().path.contains('.').not()) implies"),
        _first_element_untyped("differential", True),
        None,
        definition,
        definition,
        sdf_15a,
    )


@pytest.mark.parametrize(
    ("parameter", "ok"),
    [
        ({"name": "p", "type": "string", "searchType": "token"}, True),
        ({"name": "p", "type": "code", "searchType": "token"}, False),
        ({"name": "p", "type": "code"}, True),
        ({"name": "p", "searchType": "token"}, True),  # no type: empty, which passes
        ({"name": "p", "type": 1, "searchType": "token"}, None),
        ({"name": "p", "_type": {"id": "x"}, "searchType": "token"}, None),
        ({"name": "p", "type": "code", "_searchType": {"id": "x"}}, None),
        ({"name": "p", "type": "code", "searchType": "token", "_name": {"id": "x"}}, False),  # a field it does not read
    ],
)
def test_opd_2_a_search_type_only_on_a_string(parameter: Any, ok: bool | None) -> None:
    decides(
        "searchType.exists() implies type = 'string'", _opd_2, "OperationDefinition.parameter", parameter, parameter, ok
    )


def code_system(*concepts: Any, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "concept": list(concepts), **fields}


@pytest.mark.parametrize(
    ("resource", "ok"),
    [
        (code_system({"code": "a"}, {"code": "b", "concept": [{"code": "c"}]}), True),
        (code_system({"code": "a"}, {"code": "a"}), False),
        (code_system({"code": "a"}, {"code": "b", "concept": [{"code": "a"}]}), False),
        (code_system({"code": "b", "concept": [{"code": "c", "concept": [{"code": "c"}]}]}), False),
        (code_system({"code": "b", "concept": [{"code": "c"}, {"code": "d", "concept": [{"code": "e"}]}]}), True),
        (code_system({"code": "a", "designation": [{"value": "a"}]}, {"code": "b"}), True),
        (code_system({"code": "a"}, {"display": "x"}, {"display": "y"}), True),
        ({"resourceType": "CodeSystem"}, True),
        # Concepts anywhere below (a contained ValueSet's too) count: descendants().concept.code.
        (
            code_system(
                {"code": "a"},
                contained=[{"resourceType": "ValueSet", "compose": {"include": [{"concept": [{"code": "a"}]}]}}],
            ),
            False,
        ),
        (
            code_system(
                {"code": "a"},
                contained=[{"resourceType": "ValueSet", "compose": {"include": [{"concept": [{"code": "b"}]}]}}],
            ),
            True,
        ),
        (code_system({"code": "a", "_display": {"id": "x"}}, {"code": "b"}), None),
        (code_system({"code": ["a", "b"]}), None),
        (code_system({"code": "b", "concept": [{"code": 1}]}), None),
        (code_system({"code": "b", "concept": "x"}), None),
        ({**code_system({"code": "a"}), "_name": {"id": "x"}}, None),
        (code_system({"code": "a"}, contained=[{"resourceType": "ValueSet", "_name": {"id": "x"}}]), None),
    ],
)
def test_csd_1_codes_are_unique_in_the_code_system(resource: Any, ok: bool | None) -> None:
    decides(definitional("concept.code.combine("), _csd_1, None, resource, resource, ok)


@pytest.mark.parametrize(
    ("contains", "ok"),
    [
        ({"system": "http://x", "code": "a"}, True),
        ({"display": "A group", "abstract": True}, True),
        ({"display": "A group", "abstract": False}, False),
        ({"display": "A group"}, True),  # no abstract: empty, which passes
        ({"code": None, "abstract": False}, False),
        ({"code": [], "abstract": False}, False),
        ({"code": "a", "abstract": False}, True),
        ({"abstract": "true"}, None),
        ({"_code": {"id": "x"}, "abstract": False}, None),
    ],
)
def test_vsd_9_a_contains_without_code_is_abstract(contains: Any, ok: bool | None) -> None:
    root = {"resourceType": "ValueSet", "expansion": {"contains": [contains]}}
    decides("code.exists() or abstract = true", _vsd_9, "ValueSet.expansion.contains", contains, root, ok)
