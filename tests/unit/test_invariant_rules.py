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
    CHECKED_IN_WALK,
    TIM_9_R4,
    Invariants,
    _bundle_entries_match,
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
        (bundle("collection", entry("urn:uuid:1"), {"fullUrl": "urn:uuid:1", "resource": {"meta": "x"}}), False),
    ],
)
def test_bdl_7_full_urls_are_unique_but_for_versions(resource: dict[str, Any], ok: bool) -> None:
    both_agree("bdl-7", resource, ok)


def test_bdl_7_is_not_checked_on_a_value_that_is_not_an_object() -> None:
    assert native_of("bdl-7")("x", None) is True


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


def test_tim_9_is_reported_on_the_repeat(validator: Validator) -> None:
    request = {
        "resourceType": "MedicationRequest",
        "text": TEXT,
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "x"},
        "subject": {"reference": "Patient/1"},
        "dosageInstruction": [{"timing": {"repeat": {"offset": 30, "when": ["CM"]}}}],
    }
    expression = "MedicationRequest.dosageInstruction[0].timing.repeat"
    assert keyed(validator.validate(request), "tim-9") == [failed("tim-9", expression, SD + "Timing")]


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


def test_an_element_is_evaluated_with_its_type_a_resource_without(patient_tree: StructureTree) -> None:
    # value resolves to valueString only when the element's path is known.
    rule = constraint("x-4", "value.exists()")
    component = {"code": {"text": "x"}, "valueString": "x"}
    obs = observation(component=[component])
    assert run_check((rule,), component, "Observation.component", obs, patient_tree) == []
    assert run_check((rule,), obs, "Observation", obs, patient_tree) != []
    assert run_check((rule,), observation(valueString="x"), "Other", observation(valueString="x"), patient_tree) == []


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
