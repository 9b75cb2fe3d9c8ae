"""Every native invariant means what its FHIRPath says: both agree on passing and failing samples."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casebridge.validation.fhirpath import Resolver, evaluate, is_true
from casebridge.validation.invariants import _NATIVE, _NATIVE_EXPRESSIONS

VER = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}]}
RESOLVED = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "resolved"}]}
ACTIVE = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
CODE = {"coding": [{"system": "http://loinc.org", "code": "1-1"}]}
SAMPLES: list[tuple[str | None, dict[str, Any]]] = [
    (None, {"resource": {"resourceType": "Patient"}}),
    (None, {"request": {"method": "PUT", "url": "Patient/1"}}),
    (None, {"fullUrl": "urn:uuid:1"}),
    (None, {"fullUrl": "http://x/Patient/1/_history/2", "resource": {"resourceType": "Patient"}}),
    ("Observation", {"resourceType": "Observation", "valueString": "x"}),
    ("Observation", {"resourceType": "Observation", "valueString": "x", "dataAbsentReason": {"text": "y"}}),
    ("Observation", {"resourceType": "Observation", "dataAbsentReason": {"text": "y"}}),
    ("Observation", {"resourceType": "Observation", "code": CODE, "valueString": "x", "component": [{"code": CODE}]}),
    (
        "Observation",
        {
            "resourceType": "Observation",
            "code": CODE,
            "valueString": "x",
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "2-2"}]}}],
        },
    ),
    ("Observation", {"resourceType": "Observation", "code": CODE, "component": [{"code": CODE}]}),
    ("Condition", {"resourceType": "Condition"}),
    ("Condition", {"resourceType": "Condition", "category": [{"text": "x"}]}),
    ("Condition", {"resourceType": "Condition", "category": [{"text": "x"}], "clinicalStatus": ACTIVE}),
    ("Condition", {"resourceType": "Condition", "verificationStatus": VER, "clinicalStatus": ACTIVE}),
    ("Condition", {"resourceType": "Condition", "verificationStatus": VER, "category": [{"text": "x"}]}),
    ("Condition", {"resourceType": "Condition", "abatementString": "x", "clinicalStatus": ACTIVE}),
    ("Condition", {"resourceType": "Condition", "abatementString": "x", "clinicalStatus": RESOLVED}),
    (None, {"code": [{"text": "x"}]}),
    (None, {"detail": [{"reference": "Observation/1"}]}),
    (None, {}),
    (None, {"data": "AAAA"}),
    (None, {"data": "AAAA", "contentType": "text/plain"}),
    (None, {"code": "cm"}),
    (None, {"code": "cm", "system": "http://unitsofmeasure.org"}),
    (None, {"value": 1}),
    ("Bundle", {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "GET"}}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "transaction", "entry": [{"fullUrl": "urn:uuid:1"}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "collection", "entry": [{"request": {"method": "GET"}}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:1"}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "200"}}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "history", "entry": [{"request": {}, "response": {}}]}),
    ("Bundle", {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1"}]}),
    ("Bundle", {"resourceType": "Bundle"}),
    ("Bundle", {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "a"}, {"fullUrl": "a"}]}),
    (
        "Bundle",
        {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"fullUrl": "a", "resource": {"resourceType": "Patient", "meta": {"versionId": "1"}}},
                {"fullUrl": "a", "resource": {"resourceType": "Patient", "meta": {"versionId": "2"}}},
            ],
        },
    ),
    ("Bundle", {"resourceType": "Bundle", "type": "history", "entry": [{"fullUrl": "a"}, {"fullUrl": "a"}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "transaction", "total": 1}),
    ("Bundle", {"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [{"search": {"mode": "match"}}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "collection", "entry": [{"search": {"mode": "match"}}]}),
    ("Bundle", {"resourceType": "Bundle", "type": "document"}),
    ("Bundle", {"resourceType": "Bundle", "type": "document", "entry": [{}]}),
    (
        "Bundle",
        {
            "resourceType": "Bundle",
            "type": "document",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"},
            "timestamp": "2020-01-01T00:00:00Z",
            "entry": [{"resource": {"resourceType": "Composition"}}],
        },
    ),
    (
        "Bundle",
        {
            "resourceType": "Bundle",
            "type": "document",
            "identifier": {"system": "urn:ietf:rfc:3986"},
            "_timestamp": {"extension": [{"url": "http://x", "valueString": "x"}]},
            "entry": [{"resource": {"resourceType": "Patient"}}],
        },
    ),
    ("Bundle", {"resourceType": "Bundle", "type": "message", "entry": [{"resource": {"resourceType": "Patient"}}]}),
    (
        "Bundle",
        {"resourceType": "Bundle", "type": "message", "entry": [{"resource": {"resourceType": "MessageHeader"}}]},
    ),
    (None, {"family": "Doe"}),
    (None, {"given": ["Jo"]}),
    (None, {"text": "Jo Doe"}),
    (None, {"use": "official"}),
    (None, {"use": "official", "given": []}),
    ("Observation", {"resourceType": "Observation", "status": "final"}),
    ("Observation", {"resourceType": "Observation", "hasMember": [{"reference": "Observation/1"}]}),
    ("Observation", {"resourceType": "Observation", "component": [{"code": CODE, "valueString": "x"}, {"code": CODE}]}),
    ("Observation", {"resourceType": "Observation", "component": [{"code": CODE, "dataAbsentReason": {"text": "x"}}]}),
    (
        "Bundle",
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Basic"}}] * 2},
    ),
]


@pytest.mark.parametrize("expression", sorted(_NATIVE_EXPRESSIONS))
def test_native_agrees_with_fhirpath(expression: str) -> None:
    native = _NATIVE_EXPRESSIONS[expression]
    outcomes = set()
    for base, item in SAMPLES:
        expected = is_true(evaluate(expression, item, base=base, resource=item, root=item, resolver=Resolver(item, {})))
        assert native(item, item) == expected, (expression, item)
        outcomes.add(expected)
    assert outcomes == {True, False}, "the samples must make this invariant both pass and fail"


# Element names the native invariants read, and JSON of any shape under them: the walk reports a wrong shape as a
# structure error; an invariant must answer, not raise (one that raised stopped the whole validation).
_NAMES = st.sampled_from(
    "resourceType id meta text div contained extension modifierExtension url component code coding system valueString "
    "valueQuantity value dataAbsentReason entry resource request response fullUrl type total search mode method "
    "identifier timestamp clinicalStatus verificationStatus category abatementString family given use detail "
    "data contentType hasMember status".split()
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.sampled_from(["#", "#x", "urn:uuid:1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(item=st.dictionaries(_NAMES, _JSON, max_size=6), root=_JSON)
def test_native_invariants_answer_whatever_the_shape(item: dict[str, Any], root: Any) -> None:
    for check in [*_NATIVE.values(), *_NATIVE_EXPRESSIONS.values()]:
        assert check(item, root) in (True, False)
