"""Malformed but parseable resources: structural errors, never an exception (found by review)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from casebridge.config import Settings
from casebridge.validation.invariants import _txt_2
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Validator
from tests.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def validator() -> Validator:
    return load_validator(Settings())


HOSTILE: list[dict[str, Any]] = [
    {"resourceType": "Patient", "meta": [1]},
    {"resourceType": "Patient", "meta": "x"},
    {"resourceType": "Patient", "meta": {"profile": 5}},
    {"resourceType": "Patient", "meta": {"profile": "http://x"}},
    {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Patient", "id": "x", "meta": [1]}],
        "link": [{"other": {"reference": "#x"}, "type": "seealso"}],
    },
    {"resourceType": "Bundle", "type": "collection", "entry": 5},
    {"resourceType": "Bundle", "type": "collection", "entry": True},
    {"resourceType": "Bundle", "type": "collection", "link": 5},
    {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": [1]},
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "meta": [1]}},
        ],
    },
    {"resourceType": "Patient", "_birthDate": {"extension": 5}},
    {"resourceType": "Patient", "contained": 5},
    {"resourceType": "Patient", "text": "x"},
    {"resourceType": "Patient", "text": [1]},
    {"resourceType": "Patient", "maritalStatus": {"coding": 5}},
    {"resourceType": "Patient", "maritalStatus": {"coding": [{"system": ["a"], "code": "M"}]}},
]


@pytest.mark.parametrize("resource", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_shapes_are_errors_not_exceptions(validator: Validator, resource: dict[str, Any]) -> None:
    issues = validator.validate(resource)
    assert not [i for i in issues if i.code == "exception"], issues
    assert any(i.severity in ("error", "fatal") for i in issues), issues


def test_a_profile_string_is_one_error_not_one_per_character(validator: Validator) -> None:
    issues = validator.validate({"resourceType": "Patient", "meta": {"profile": "http://x"}})
    assert not [i for i in issues if "could not be resolved" in i.message]
    assert any("must be a JSON Array" in i.message for i in issues)


def test_core_profiles_as_target_profiles_and_nested_slice_values(validator: Validator) -> None:
    """vitalsigns as a hasMember target profile; bp's component slices fixed inside coding slices."""
    import json

    from casebridge.definitions.packages import default_cache_dir

    core = default_cache_dir() / "hl7.fhir.r4.examples#4.0.1" / "package"
    panel = json.loads((core / "Observation-vitals-panel.json").read_text())
    assert not [i for i in validator.validate(panel) if i.severity == "error"]
    bp = json.loads((core / "Observation-blood-pressure.json").read_text())
    bp.setdefault("meta", {})["profile"] = ["http://hl7.org/fhir/StructureDefinition/bp"]
    assert not [i for i in validator.validate(bp) if i.severity == "error"]
    bp["component"][0]["code"]["coding"][0]["code"] = "9999-9"
    assert any("SystolicBP" in i.message for i in validator.validate(bp) if i.severity == "error")


def test_invariants_apply_to_recursive_elements(validator: Validator) -> None:
    questionnaire = {
        "resourceType": "Questionnaire",
        "status": "active",
        "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "2", "type": "group"}]}],
    }
    found = [(i.expression, i.message) for i in validator.validate(questionnaire) if i.severity == "error"]
    assert any(e == "Questionnaire.item[0].item[0]" and "que-1" in m for e, m in found), found


@pytest.mark.parametrize(
    ("resource", "words"),
    [
        ({"resourceType": "Resource", "id": "x"}, "abstract"),
        ({"resourceType": "DomainResource"}, "abstract"),
        (
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"fullUrl": "http://a/Patient/1", "resource": {"resourceType": "Patient", "id": "2"}}],
            },
            "so it must end with the correct type and id (/Patient/2)",
        ),
    ],
)
def test_abstract_types_and_mismatched_full_urls(validator: Validator, resource: dict[str, Any], words: str) -> None:
    assert any(words in i.message for i in validator.validate(resource) if i.severity == "error")


XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


@pytest.mark.parametrize(
    ("div", "ok"),
    [
        (f"<div {XHTML}><p>a <b>b</b></p><table><tr><td>x</td></tr></table></div>", True),
        (f'<div {XHTML}><a href="http://x/">x</a><img src="#pic" alt="p"/></div>', True),
        ("<div><p>a</p></div>", False),  # no XHTML namespace
        ('<div xmlns="http://example.org">x</div>', False),
        (f"<p {XHTML}>x</p>", False),  # the root must be a div
        ("just text", False),
        (f"<div {XHTML}><p>a</div>", False),  # not well-formed
        (f"<div {XHTML}><script>alert(1)</script></div>", False),
        (f'<div {XHTML}><p onclick="x()">a</p></div>', False),
        (f'<div {XHTML}><p foo="1">a</p></div>', False),
        (f'<div {XHTML} data-fhir="generated"><p data-x="1">a</p></div>', True),  # HTML5 data attributes are inert
        (f'<div {XHTML} xmlns:d="http://example.org" d:data-x="1">a</div>', False),  # not in another namespace
        (f'<div {XHTML}><a href="java&#9;script:alert(1)">x</a></div>', False),
        (f'<div {XHTML}><a href="data:text/html;base64,PHNjcmlwdD4=">x</a></div>', False),
        # An inline image, as the core definitions' narratives carry; a script as an image source is still refused.
        (f'<div {XHTML}><img src="data:image/png;base64,iVBORw0KGgo=" alt="icon"/></div>', True),
        (f'<div {XHTML}><img src=" javascript:alert(1)" alt="x"/></div>', False),
        (f"<div {XHTML}><P>x</P></div>", False),
        (f"<!DOCTYPE html><div {XHTML}>x</div>", False),
        (f'<div {XHTML} xml:lang="en"><p lang="en">x</p></div>', True),
        (f'<div {XHTML} xmlns:x="http://example.org" x:href="1">x</div>', False),  # an attribute in another namespace
        (f"<div {XHTML}>a &amp; b&#160;&lt;</div>", True),
        (f"<div {XHTML}>&nbsp;</div>", False),  # an HTML entity is not XML
        (f'<!DOCTYPE d [<!ENTITY e SYSTEM "file:///etc/passwd">]><div {XHTML}>&e;</div>', False),
        (f"<div {XHTML}>a</div><div {XHTML}>b</div>", False),  # two roots
        ("", False),
        (f"<div {XHTML}> <p>\n</p> </div>", False),  # txt-2: only whitespace
        (f'<div {XHTML}><img src="#pic" alt=""/></div>', True),  # an image is content
        (f"<div {XHTML}><p><b></b>x</p></div>", True),
    ],
)
def test_narrative_xhtml(validator: Validator, div: str, ok: bool) -> None:
    patient = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    errors = [i for i in validator.validate(patient) if i.severity == "error" and i.expression == "Patient.text.div"]
    assert (not errors) == ok, errors


@given(st.text(alphabet='<> \t\nab/img\u00a0"='))
def test_txt_2_reads_as_the_deletion_of_tags(div: str) -> None:
    # The invariant is searched for; it must say what deleting the tags and stripping the rest would.
    assert _txt_2(div) == (bool(re.sub(r"<[^>]*>", "", div).strip()) or "<img" in div)


_DEFECT = """
import logging, sys
logging.basicConfig(stream=sys.stderr, format="%(message)s")
from casebridge.config import Settings
from casebridge.validation.service import load_validator


class Hostile(str):  # breaks the validator itself, with patient words in its exception
    def __hash__(self):
        raise RuntimeError("Jane Doe")

    def __eq__(self, other):
        raise RuntimeError("Jane Doe")


issues = load_validator(Settings()).validate({"resourceType": "Patient", "gender": Hostile("female")})
print([i.message for i in issues if i.severity == "fatal"])
"""


def test_a_validator_defect_is_reported_without_the_exception_text() -> None:
    # Interpreted: the compiled validator compares and hashes str subclasses as plain strings (no defect to show).
    result = subprocess.run(
        [sys.executable, "-c", _DEFECT],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "CASEBRIDGE_PURE_PYTHON": "1"},
        timeout=120,
        check=True,
    )
    assert "(RuntimeError)" in result.stdout and "Jane" not in result.stdout, result.stdout
    assert "unforeseen input: RuntimeError" in result.stderr and "Jane" not in result.stderr, result.stderr


def test_what_input_names_does_not_grow_the_caches(validator: Validator) -> None:
    """A long-running service meets unknown code systems, target types and XML names without end: the caches
    remember only what the definitions know (a coding's system, a Reference(Any)'s target type and an XML root
    name were each remembered once per distinct value)."""
    from casebridge.definitions.xml import FhirXmlError, XmlReader

    reader = XmlReader(validator.definitions)

    def rounds(start: int) -> None:
        for n in range(start, start + 50):
            observation = {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": f"http://example.org/cs/{n}", "code": "x"}]},
            }
            provenance = {
                "resourceType": "Provenance",
                "contained": [{"resourceType": f"Spaceship{n}", "id": "t"}],
                "target": [{"reference": "#t"}],
                "recorded": "2026-01-01T00:00:00Z",
                "agent": [{"who": {"display": "x"}}],
            }
            assert validator.validate(observation) is not None and validator.validate(provenance)
            with pytest.raises(FhirXmlError):
                reader.read(f'<Spaceship{n} xmlns="http://hl7.org/fhir"/>'.encode(), "x.xml")

    def sizes() -> tuple[int, ...]:
        terminology = validator.terminology
        return (
            len(terminology._systems),
            len(terminology._expansions),
            len(validator._target_profile_cache),
            len(validator._trees),
            len(reader._trees),
        )

    rounds(0)
    before = sizes()
    rounds(1000)
    assert sizes() == before
