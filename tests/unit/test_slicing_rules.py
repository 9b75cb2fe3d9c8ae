"""Slicing rules (src/casebridge/validation/slicing.py), each with the cases at its edges.

- The pure helpers, by tables: a discriminator path's steps (split_path), an ``extension('url')`` step's URL, a
  value's expression, the type a choice property names, the Reference before ``resolve()``, what a Reference
  resolves to inside the input, the values (and their types) at a discriminator path.
- Slice definitions read along a discriminator path (hand-built element trees): the element(s) at a path, an
  extension's slices by URL, the value a slice fixes (on the element, in a slice on the way, inside a complex fixed
  or pattern value), and whether a value belongs to a slice for each discriminator type (value, pattern, exists,
  type, type through ``resolve()``, profile).
- Whole validations against small profiles: each value matched to its slice and checked as it, each slice's
  minimum and maximum (at the limit, one under, one over), closed slicing with a value that matches no slice.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex
from casebridge.definitions.structure import Discriminator, ElementNode, TypeRef
from casebridge.validation import slicing
from casebridge.validation.issues import Run
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Issue, Validator
from tests.profiles import profile

MISSING = slicing._MISSING
CORE = "http://hl7.org/fhir/StructureDefinition"
BASE = "http://example.org/fhir/StructureDefinition"


def el(
    name: str,
    *children: ElementNode,
    min: int = 0,
    max: int | None = None,
    types: tuple[TypeRef, ...] = (),
    fixed: Any = None,
    pattern: Any = None,
    slices: tuple[ElementNode, ...] = (),
    slice_name: str | None = None,
    base_max: str = "*",
) -> ElementNode:
    """A hand-built element: its children by name, its slices by slice name."""
    return ElementNode(
        id=name if slice_name is None else f"{name}:{slice_name}",
        path=name,
        name=name,
        min=min,
        max=max,
        types=types,
        fixed=fixed,
        pattern=pattern,
        slice_name=slice_name,
        children={c.name: c for c in children},
        slices={s.slice_name or "": s for s in slices},
        base_max=base_max,
    )


def ext_slice(name: str, *, url: str | None = None, profiles: tuple[str, ...] = ()) -> ElementNode:
    """An extension slice: its URL fixed on its ``url`` child, or named by its type's profile."""
    children = (el("url", fixed=url),) if url is not None else ()
    return el("extension", *children, types=(TypeRef("Extension", profiles),), slice_name=name)


# --- discriminator paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts", "balanced"),
    [
        ("", [""], True),
        ("system", ["system"], True),
        ("code.coding.system", ["code", "coding", "system"], True),
        ("ab.cd", ["ab", "cd"], True),
        ("a..b", ["a", "", "b"], True),
        ("extension('http://x.org/a.b').value", ["extension('http://x.org/a.b')", "value"], True),
        ('extension("http://x.org/a.b").value', ['extension("http://x.org/a.b")', "value"], True),
        ("where(x.y = 'a.b').z", ["where(x.y = 'a.b')", "z"], True),
        ("f(g(a.b).c).d", ["f(g(a.b).c)", "d"], True),
        ("a('(').b", ["a('(')", "b"], True),
        ("a(')').b", ["a(')')", "b"], True),
        ("'a\"b.c'.d", ["'a\"b.c'", "d"], True),
        ("item.resolve()", ["item", "resolve()"], True),
        ("extension('x", ["extension('x"], False),
        ("'a.b", ["'a.b"], False),
        ("f(a.b", ["f(a.b"], False),
        ("a).b", ["a).b"], False),
        ("f(a)).b", ["f(a)).b"], False),
    ],
)
def test_split_path(path: str, parts: list[str], balanced: bool) -> None:
    assert slicing.split_path(path) == (parts, balanced)
    assert slicing._split_path(path) == parts


@pytest.mark.parametrize(
    ("step", "url"),
    [
        ("extension('http://a.org/b')", "http://a.org/b"),
        ('extension("http://a.org/b")', "http://a.org/b"),
        ("extension( 'u' )", "u"),
        ("extension('')", ""),
        ("extension('u\")", None),
        ("extension(u)", None),
        ("extension('u').value", None),
        ("xextension('u')", None),
        ("extension", None),
        ("value", None),
    ],
)
def test_extension_url(step: str, url: str | None) -> None:
    assert slicing._extension_url(step) == url


@pytest.mark.parametrize(
    ("node", "type_code", "index", "expression"),
    [
        (el("identifier"), None, 2, "Patient.identifier[2]"),
        (el("identifier"), "Identifier", 0, "Patient.identifier[0]"),
        (el("value[x]"), "Quantity", 3, "Patient.value[3]"),
        (el("value[x]", base_max="1"), "Quantity", 0, "Patient.value.ofType(Quantity)"),
        (el("value[x]", base_max="1"), None, 0, "Patient.value"),
        (el("gender", base_max="1"), "code", 0, "Patient.gender"),
        (el("gender", base_max="0"), None, 1, "Patient.gender"),
    ],
)
def test_item_expression(node: ElementNode, type_code: str | None, index: int, expression: str) -> None:
    assert slicing._item_expression("Patient", node, type_code, index) == expression


@pytest.mark.parametrize(
    ("key", "type_code"),
    [
        ("valueQuantity", "Quantity"),
        ("valueCodeableConcept", "CodeableConcept"),
        ("valueString", "string"),
        ("valueDateTime", "dateTime"),
        ("valueUri", "uri"),
        ("valueId", "id"),
        ("valueHumanName", "HumanName"),
        ("value", ""),
    ],
)
def test_type_of_key(key: str, type_code: str) -> None:
    assert slicing._type_of_key(key, "value") == type_code


@pytest.mark.parametrize(
    ("path", "reference"),
    [
        ("resolve()", "$this"),
        ("item.resolve()", "item"),
        ("entry.item.resolve()", "entry.item"),
        ("itemresolve()", None),
        ("item", None),
        ("resolve().item", None),
        ("", None),
    ],
)
def test_before_resolve(path: str, reference: str | None) -> None:
    assert slicing._before_resolve(path) == reference


# --- what a Reference resolves to --------------------------------------------------------------------------------

PATIENT_1 = {"resourceType": "Patient", "id": "1"}
PATIENT_1_AGAIN = {"resourceType": "Patient", "id": "1", "active": True}
GROUP_2 = {"resourceType": "Group", "id": "2"}
CONTAINED = {"resourceType": "List", "contained": [{"resourceType": "Condition", "id": "c"}, GROUP_2]}


def bundle_run() -> Run:
    run = Run()
    run.bundle_index = {"urn:uuid:abc": PATIENT_1, "Group/2": GROUP_2}
    run.by_type_id = {"Patient/1": [PATIENT_1], "Group/2": [GROUP_2], "Patient/9": [PATIENT_1, PATIENT_1_AGAIN]}
    return run


@pytest.mark.parametrize(
    ("reference", "root", "with_run", "expected"),
    [
        ("not an object", CONTAINED, True, None),
        ({"reference": 5}, CONTAINED, True, None),
        ({"display": "x"}, CONTAINED, True, None),
        ({"reference": "#c"}, CONTAINED, True, {"resourceType": "Condition", "id": "c"}),
        ({"reference": "#c"}, CONTAINED, False, {"resourceType": "Condition", "id": "c"}),
        ({"reference": "#2"}, CONTAINED, False, GROUP_2),
        ({"reference": "#c"}, None, True, None),
        ({"reference": "#nowhere"}, CONTAINED, True, None),
        ({"reference": "c"}, CONTAINED, True, None),
        ({"reference": "urn:uuid:abc"}, None, True, PATIENT_1),
        ({"reference": "urn:uuid:abc"}, None, False, None),
        ({"reference": "Patient/1"}, None, True, PATIENT_1),
        ({"reference": "Patient/1"}, None, False, None),
        ({"reference": "Group/2"}, None, True, GROUP_2),
        ({"reference": "http://x.org/fhir/Patient/1"}, None, True, PATIENT_1),
        ({"reference": "http://x.org/fhir/Patient/1/_history/3"}, None, True, PATIENT_1),
        ({"reference": "Patient/1/_history/3"}, None, True, PATIENT_1),
        ({"reference": "xPatient/1"}, None, True, None),
        ({"reference": "patient/1"}, None, True, None),
        ({"reference": "Patient/1/extra"}, None, True, None),
        ({"reference": "Patient/" + "1" * 65}, None, True, None),
        ({"reference": "Patient/9"}, None, True, None),  # two entries are Patient/9: which one is unknown
        ({"reference": "Patient/5"}, None, True, None),
    ],
)
def test_resolve(reference: Any, root: dict[str, Any] | None, with_run: bool, expected: Any) -> None:
    assert slicing._resolve(reference, root, bundle_run() if with_run else None) == expected


def test_resolve_finds_a_bundle_entry_by_full_url_before_type_and_id() -> None:
    run = bundle_run()
    run.bundle_index["Patient/9"] = GROUP_2
    assert slicing._resolve({"reference": "Patient/9"}, None, run) is GROUP_2
    long_id = "Patient/" + "1" * 64
    run.by_type_id[long_id] = [PATIENT_1_AGAIN]
    assert slicing._resolve({"reference": long_id}, None, run) is PATIENT_1_AGAIN


# --- the values at a discriminator path --------------------------------------------------------------------------

QUANTITY = {"value": 5, "unit": "mg"}
CODING_A = {"system": "s", "code": "a"}
CODING_B = {"system": "s", "code": "b"}
EXTENSION_U = {"url": "http://u", "valueString": "x"}
EXTENSION_V = {"url": "http://v", "valueCode": "y"}


@pytest.mark.parametrize(
    ("item", "path", "type_code", "values"),
    [
        (PATIENT_1, "$this", "Resource", [(PATIENT_1, "Patient")]),
        (PATIENT_1, "", None, [(PATIENT_1, "Patient")]),
        (CODING_A, "$this", "Coding", [(CODING_A, "Coding")]),
        ("text", "$this", "string", [("text", "string")]),
        (CODING_A, "system", "Coding", [("s", None)]),
        (CODING_A, "version", "Coding", []),
        ("text", "system", "string", []),
        ({"coding": [CODING_A, CODING_B]}, "coding", None, [(CODING_A, None), (CODING_B, None)]),
        ({"coding": [CODING_A, CODING_B]}, "coding.code", None, [("a", None), ("b", None)]),
        ({"coding": [CODING_A, "x", CODING_B]}, "coding.code", None, [("a", None), ("b", None)]),
        ({"valueQuantity": QUANTITY}, "value", None, [(QUANTITY, "Quantity")]),
        ({"valueString": "s"}, "value", None, [("s", "string")]),
        ({"valueQuantity": QUANTITY}, "value.unit", None, [("mg", None)]),
        ({"values": 1, "valuex": 2}, "value", None, []),
        ({"value": 1, "valueString": "s"}, "value", None, [(1, None)]),
        ({"resource": PATIENT_1}, "resource", None, [(PATIENT_1, "Patient")]),
        ({"resource": [PATIENT_1, GROUP_2]}, "resource", None, [(PATIENT_1, "Patient"), (GROUP_2, "Group")]),
        ({"valueReference": {"resourceType": "Basic"}}, "value", None, [({"resourceType": "Basic"}, "Basic")]),
        ({"value": {"resourceType": "Basic"}}, "value", None, [({"resourceType": "Basic"}, "Basic")]),
        (
            {"extension": [EXTENSION_U, EXTENSION_V, "x", EXTENSION_U]},
            "extension('http://u')",
            None,
            [(EXTENSION_U, "Extension"), (EXTENSION_U, "Extension")],
        ),
        ({"extension": [EXTENSION_U, EXTENSION_V]}, "extension('http://v').value", None, [("y", "code")]),
        ({"extension": EXTENSION_U}, "extension('http://u')", None, []),
        ({"url": "http://u"}, "extension('http://u')", None, []),
        ({"extension": [EXTENSION_U]}, "extension('http://w')", None, []),
        ({"extension": [EXTENSION_U]}, "extension", None, [(EXTENSION_U, None)]),
        # ofType(T) keeps the values of type T, and those whose type the JSON does not tell.
        ({"valueQuantity": QUANTITY}, "value.ofType(Quantity)", None, [(QUANTITY, "Quantity")]),
        ({"valueQuantity": QUANTITY}, "value.ofType(Quantity).unit", None, [("mg", None)]),
        ({"valueString": "s"}, "value.ofType(Quantity)", None, []),
        ({"valueString": "s"}, "value.ofType(string)", None, [("s", "string")]),
        ({"code": CODING_A}, "code.ofType(Coding)", None, [(CODING_A, None)]),
        ({"resource": [PATIENT_1, GROUP_2]}, "resource.ofType(Group)", None, [(GROUP_2, "Group")]),
    ],
)
def test_typed_values_at(item: Any, path: str, type_code: str | None, values: list[tuple[Any, Any]]) -> None:
    assert list(slicing._typed_values_at(item, path, type_code)) == values


@pytest.mark.parametrize(
    ("item", "path", "values"),
    [
        ({"item": {"reference": "#c"}}, "item.resolve()", [({"resourceType": "Condition", "id": "c"}, "Condition")]),
        (
            {"item": [{"reference": "#c"}, {"reference": "#2"}]},
            "item.resolve()",
            [
                ({"resourceType": "Condition", "id": "c"}, "Condition"),
                (GROUP_2, "Group"),
            ],
        ),
        ({"item": {"reference": "#2"}}, "item.resolve().id", [("2", None)]),
        ({"item": {"reference": "Patient/1"}}, "item.resolve()", [(PATIENT_1, "Patient")]),
        ({"item": {"reference": "#nowhere"}}, "item.resolve()", []),
        ({"item": {"reference": "#untyped"}}, "item.resolve()", []),
        ({"item": {"reference": "#numbered"}}, "item.resolve()", []),
        ({"reference": "#c"}, "resolve()", [({"resourceType": "Condition", "id": "c"}, "Condition")]),
        (
            {"contentReference": {"reference": "#c"}},
            "content.ofType(Reference).resolve()",
            [({"resourceType": "Condition", "id": "c"}, "Condition")],
        ),
        ({"contentString": "#c"}, "content.ofType(Reference).resolve()", []),
    ],
)
def test_typed_values_through_resolve(item: Any, path: str, values: list[tuple[Any, Any]]) -> None:
    root = {
        "resourceType": "List",
        "contained": [
            {"resourceType": "Condition", "id": "c"},
            GROUP_2,
            {"id": "untyped"},
            {"resourceType": 7, "id": "numbered"},
        ],
    }
    assert list(slicing._typed_values_at(item, path, None, root, bundle_run())) == values


# --- slice definitions along a path ------------------------------------------------------------------------------

U_BY_URL = ext_slice("u", url="http://u")
U_BY_PROFILE = ext_slice("u2", profiles=("http://u",))
V_BY_URL = ext_slice("v", url="http://v")
NO_URL = ext_slice("none")
SBP_CODE = el("coding", el("code", fixed="8480-6"), slice_name="SBPCode")
CODE = el("code", el("coding", el("code", pattern="any"), slices=(SBP_CODE,)))
VALUE = el("value[x]", el("unit", fixed="mg"), types=(TypeRef("Quantity"),))
EXTENSION = el("extension", slices=(V_BY_URL, NO_URL, U_BY_URL, U_BY_PROFILE))
COMPONENT = el("component", CODE, VALUE, EXTENSION, el("text", pattern="t"))


@pytest.mark.parametrize(
    ("step", "type_code"),
    [
        ("ofType(Quantity)", "Quantity"),
        ("ofType( string )", "string"),
        ("ofType(Reference)", "Reference"),
        ("ofType()", None),
        ("oftype(Quantity)", None),
        ("xofType(Quantity)", None),
        ("ofType(Quantity", None),
        ("ofType(Quantity)x", None),
        ("value", None),
    ],
)
def test_of_type(step: str, type_code: str | None) -> None:
    assert slicing._of_type(step) == type_code


def test_a_complex_value_is_read_only_below_this() -> None:
    # $this (or an empty path) is the slice itself: its own fixed or pattern value, never a property of it.
    odd = el("c", fixed={"$this": "x", "": "y"})
    assert slicing._inside_complex_value(odd, "$this") is MISSING
    assert slicing._inside_complex_value(odd, "") is MISSING
    assert slicing._expected_at(odd, "$this") == {"$this": "x", "": "y"}


def test_nodes_at_follows_an_extension_step_from_every_element_on_the_way() -> None:
    # coding and its slice both define the extension: the step finds the extension's slices under each.
    coding = el("coding", el("extension", slices=(U_BY_URL,)), slices=(el("coding", EXTENSION, slice_name="s"),))
    node = el("code", coding)
    assert [id(n) for n in slicing._nodes_at(node, "coding.extension('http://u')")] == [
        id(U_BY_URL),
        id(U_BY_URL),
        id(U_BY_PROFILE),
    ]


def test_extension_slices_by_fixed_url_or_profile() -> None:
    assert slicing._extension_slices(EXTENSION, "http://u") == [U_BY_URL, U_BY_PROFILE]
    assert slicing._extension_slices(EXTENSION, "http://v") == [V_BY_URL]
    assert slicing._extension_slices(EXTENSION, "http://w") == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$this", COMPONENT),
        ("", COMPONENT),
        ("code", CODE),
        ("code.coding", CODE.children["coding"]),
        ("code.coding.code", CODE.children["coding"].children["code"]),
        ("value", VALUE),
        ("value[x]", VALUE),
        ("value.unit", VALUE.children["unit"]),
        ("value.ofType(Quantity)", VALUE),
        ("value.ofType(Quantity).unit", VALUE.children["unit"]),
        ("extension('http://u')", U_BY_URL),
        ("extension('http://v').url", V_BY_URL.children["url"]),
        ("extension('http://w')", None),
        ("extension('http://w').url", None),
        ("code.extension('http://u')", None),
        ("nothing", None),
        ("nothing.code", None),
        ("code.nothing.code", None),
    ],
)
def test_node_at(path: str, expected: ElementNode | None) -> None:
    assert slicing._node_at(COMPONENT, path) is expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$this", [COMPONENT]),
        ("", [COMPONENT]),
        ("code", [CODE]),
        ("code.coding", [CODE.children["coding"], SBP_CODE]),
        ("code.coding.code", [CODE.children["coding"].children["code"], SBP_CODE.children["code"]]),
        ("value", [VALUE]),
        ("value.unit", [VALUE.children["unit"]]),
        ("value.ofType(Quantity)", [VALUE]),
        ("value.ofType(Quantity).unit", [VALUE.children["unit"]]),
        ("extension('http://u')", [U_BY_URL, U_BY_PROFILE]),
        ("extension('http://v').url", [V_BY_URL.children["url"]]),
        ("code.extension('http://u')", []),
        ("nothing", []),
        ("nothing.code", []),
    ],
)
def test_nodes_at(path: str, expected: list[ElementNode]) -> None:
    found = list(slicing._nodes_at(COMPONENT, path))
    assert [id(n) for n in found] == [id(n) for n in expected]


# The value a slice fixes at a path: an Extension slice's URL, the fixed or pattern value of the element at the path
# (or of a slice on the way), a property of a complex fixed or pattern value on the path; else missing.
@pytest.mark.parametrize(
    ("slice_node", "path", "expected"),
    [
        (ext_slice("a", url="http://a", profiles=("http://p",)), "url", "http://a"),
        (ext_slice("a", profiles=("http://p", "http://q")), "url", "http://p"),
        (el("extension", el("url"), types=(TypeRef("Extension", ("http://p",)),)), "url", "http://p"),
        (el("extension", el("url"), types=(TypeRef("Extension"),)), "url", MISSING),
        (el("extension", types=(TypeRef("Extension"),)), "url", MISSING),
        (el("x", el("url"), types=(TypeRef("Reference", ("http://p",)),)), "url", MISSING),
        (el("x", el("url", fixed="http://f"), types=(TypeRef("uri"),)), "url", "http://f"),
        (el("x", el("url", fixed="http://f")), "url", "http://f"),
        (ext_slice("a", profiles=("http://p",)), "value", MISSING),
        (COMPONENT, "text", "t"),
        (COMPONENT, "code.coding.code", "any"),
        (el("c", el("code", el("coding", slices=(SBP_CODE,)))), "code.coding.code", "8480-6"),
        (el("c", el("code", fixed="f", pattern="p")), "code", "f"),
        (el("c", el("code", pattern="p")), "code", "p"),
        (el("c", el("code", fixed=False)), "code", False),
        (el("c", el("code", pattern=0)), "code", 0),
        (el("c", fixed="whole"), "$this", "whole"),
        (el("c", pattern={"use": "home"}), "", {"use": "home"}),
        (el("c", el("use")), "$this", MISSING),
        (el("c", fixed={"use": "home", "rank": 1}), "use", "home"),
        (el("c", el("use"), pattern={"use": "home"}), "use", "home"),
        (el("c", pattern={"use": "home"}), "system", MISSING),
        (el("c", fixed={"use": False}), "use", False),
        (el("c", fixed={"use": None}), "use", None),
        (el("c", fixed={"period": {"start": "2020"}}), "period.start", "2020"),
        (el("c", fixed={"period": "2020"}), "period.start", MISSING),
        (el("c", el("code", pattern={"text": "t", "coding": [CODING_A]})), "code.text", "t"),
        (el("c", el("code", pattern={"coding": [CODING_A]})), "code.coding", MISSING),
        (el("c", el("code", pattern={"coding": [CODING_A]})), "code.coding.code", MISSING),
        (el("c", el("value[x]", pattern={"unit": "mg"})), "value.unit", "mg"),
        (el("c", el("value[x]", pattern={"unit": "mg"})), "value.ofType(Quantity).unit", "mg"),
        (COMPONENT, "value.ofType(Quantity).unit", "mg"),
        (el("c", el("code", el("coding", pattern={"code": "x"}))), "code.coding.code", "x"),
        (el("c", fixed={"code": {"coding": "x"}}, pattern={"code": {"text": "t"}}), "code.text", "t"),
        (el("c", el("code"), fixed={"code": {"text": "t"}}), "code.text", "t"),
        (el("c", fixed={"item": {"reference": "r"}}), "item.reference", "r"),
        (el("c", fixed={"item": {"resolve()": "r"}}), "item.resolve()", MISSING),
        (el("c", fixed={"extension('http://u')": "r"}), "extension('http://u')", MISSING),
        (el("c", el("x", el("y", fixed={"z": "deep"}))), "x.y.z", "deep"),
        (el("c", el("x")), "x.y.z", MISSING),
        (el("c"), "x.y", MISSING),
    ],
)
def test_expected_at(slice_node: ElementNode, path: str, expected: Any) -> None:
    found = slicing._expected_at(slice_node, path)
    assert found is expected if expected is MISSING else (found == expected and found is not MISSING)


# --- whole validations against small profiles ---------------------------------------------------------------

IDENTIFIERS = f"{BASE}/patient-identifiers"
CATEGORY = f"{BASE}/obs-vital-category"
COMPONENTS = f"{BASE}/obs-components-by-value"
BIRTH_PLACE = f"{BASE}/patient-birth-place"
BY_TYPE = f"{BASE}/bundle-by-type"
BY_PROFILE = f"{BASE}/bundle-by-profile"
BY_TARGET = f"{BASE}/list-by-target"
VITAL = "http://terminology.hl7.org/CodeSystem/observation-category"


def sliced(path: str, rules: str, *discriminators: tuple[str, str], ordered: bool = False) -> dict[str, Any]:
    found = [{"type": t, "path": p} for t, p in discriminators]
    return {"id": path, "path": path, "slicing": {"discriminator": found, "rules": rules, "ordered": ordered}}


def slice_(path: str, name: str, min_: int, max_: str, **more: Any) -> dict[str, Any]:
    return {"id": f"{path}:{name}", "path": path, "sliceName": name, "min": min_, "max": max_, **more}


def at(path: str, slice_name: str, child: str, **more: Any) -> dict[str, Any]:
    return {"id": f"{path}:{slice_name}.{child}", "path": f"{path}.{child}", **more}


DEFINITIONS = [
    profile(
        IDENTIFIERS,
        "Patient",
        [
            sliced("Patient.identifier", "closed", ("value", "system")),
            slice_("Patient.identifier", "mrn", 1, "1"),
            at("Patient.identifier", "mrn", "system", fixedUri="urn:mrn"),
            at("Patient.identifier", "mrn", "value", min=1),
            slice_("Patient.identifier", "ssn", 0, "2"),
            at("Patient.identifier", "ssn", "system", patternUri="urn:ssn"),
        ],
    ),
    profile(
        CATEGORY,
        "Observation",
        [
            sliced("Observation.category", "open", ("pattern", "$this")),
            slice_(
                "Observation.category",
                "vital",
                1,
                "1",
                patternCodeableConcept={"coding": [{"system": VITAL, "code": "vital-signs"}]},
            ),
        ],
    ),
    profile(
        COMPONENTS,
        "Observation",
        [
            sliced("Observation.component", "closed", ("exists", "value")),
            slice_("Observation.component", "measured", 0, "1"),
            at("Observation.component", "measured", "value[x]", min=1, type=[{"code": "Quantity"}]),
            slice_("Observation.component", "absent", 0, "*"),
            at("Observation.component", "absent", "value[x]", max="0"),
            at("Observation.component", "absent", "dataAbsentReason", min=1),
        ],
    ),
    profile(
        BIRTH_PLACE,
        "Patient",
        [
            sliced("Patient.extension", "open", ("value", "url")),
            slice_(
                "Patient.extension",
                "birthPlace",
                1,
                "1",
                type=[{"code": "Extension", "profile": [f"{CORE}/patient-birthPlace"]}],
            ),
        ],
    ),
    profile(
        BY_TYPE,
        "Bundle",
        [
            sliced("Bundle.entry", "closed", ("type", "resource")),
            slice_("Bundle.entry", "patient", 1, "1"),
            at("Bundle.entry", "patient", "resource", type=[{"code": "Patient"}]),
            slice_("Bundle.entry", "observation", 0, "2"),
            at("Bundle.entry", "observation", "resource", type=[{"code": "Observation"}]),
        ],
    ),
    profile(
        BY_PROFILE,
        "Bundle",
        [
            sliced("Bundle.entry", "open", ("profile", "resource")),
            slice_("Bundle.entry", "identified", 1, "1"),
            at("Bundle.entry", "identified", "resource", type=[{"code": "Patient", "profile": [IDENTIFIERS]}]),
        ],
    ),
    profile(
        BY_TARGET,
        "List",
        [
            sliced("List.entry", "closed", ("type", "item.resolve()")),
            slice_("List.entry", "conditions", 1, "1"),
            at(
                "List.entry", "conditions", "item", type=[{"code": "Reference", "targetProfile": [f"{CORE}/Condition"]}]
            ),
            slice_("List.entry", "vitals", 0, "*"),
            at("List.entry", "vitals", "item", type=[{"code": "Reference", "targetProfile": [CATEGORY]}]),
        ],
    ),
]


GIVEN = f"{BASE}/patient-given"
DEFINITIONS.append(
    profile(
        GIVEN,
        "Patient",
        [
            sliced("Patient.name.given", "closed", ("value", "$this")),
            slice_("Patient.name.given", "first", 1, "1", fixedString="A"),
        ],
    )
)


CODED = f"{BASE}/condition-coded"
HOLDER = f"{BASE}/composition-contained"
DEFINITIONS += [
    profile(CODED, "Condition", [{"id": "Condition.code", "path": "Condition.code", "min": 1}]),
    profile(
        HOLDER,
        "Composition",
        [
            sliced("Composition.contained", "open", ("type", "$this")),
            slice_("Composition.contained", "condition", 0, "1", type=[{"code": "Condition", "profile": [CODED]}]),
        ],
    ),
]


PAYLOAD = f"{BASE}/communication-payload"
DEFINITIONS.append(
    profile(
        PAYLOAD,
        "Communication",
        [
            sliced("Communication.payload", "closed", ("type", "content.ofType(Reference).resolve()")),
            slice_("Communication.payload", "document", 1, "1"),
            at(
                "Communication.payload",
                "document",
                "content[x]",
                type=[{"code": "Reference", "targetProfile": [f"{CORE}/DocumentReference"]}],
            ),
            slice_("Communication.payload", "task", 0, "1"),
            at(
                "Communication.payload",
                "task",
                "content[x]",
                type=[{"code": "Reference", "targetProfile": [f"{CORE}/Task"]}],
            ),
        ],
    )
)


VALUE_TYPE = f"{BASE}/obs-value-type"
DEFINITIONS.append(
    profile(
        VALUE_TYPE,
        "Observation",
        [
            sliced("Observation.value[x]", "closed", ("type", "$this")),
            slice_("Observation.value[x]", "valueQuantity", 0, "1", type=[{"code": "Quantity"}]),
            at("Observation.value[x]", "valueQuantity", "unit", min=1),
        ],
    )
)


ORDERED = f"{BASE}/patient-ordered-identifiers"
DEFINITIONS.append(
    profile(
        ORDERED,
        "Patient",
        [
            sliced("Patient.identifier", "open", ("value", "system"), ordered=True),
            slice_("Patient.identifier", "mrn", 0, "*"),
            at("Patient.identifier", "mrn", "system", fixedUri="urn:mrn"),
            slice_("Patient.identifier", "ssn", 0, "*"),
            at("Patient.identifier", "ssn", "system", fixedUri="urn:ssn"),
        ],
    )
)


TYPED = f"{BASE}/patient-given-typed"
DEFINITIONS.append(
    profile(
        TYPED,
        "Patient",
        [
            sliced("Patient.name.given", "closed", ("type", "$this")),
            slice_("Patient.name.given", "text", 0, "*"),
        ],
    )
)


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    folder = tmp_path_factory.mktemp("slicing-rules")
    for i, definition in enumerate(DEFINITIONS):
        (folder / f"sd-{i}.json").write_text(json.dumps(definition))
    return load_validator(Settings(), [folder])


def errors(issues: list[Issue]) -> list[tuple[str, str, str, str]]:
    """(severity, code, expression, message) of the errors, in the order found."""
    return [(i.severity, i.code, i.expression, i.message) for i in issues if i.severity in ("error", "fatal")]


def label(url: str) -> str:
    return f"{url}|1.0.0"


def no_match(expression: str, url: str) -> tuple[str, str, str, str]:
    message = f"This element does not match any known slice defined in the profile {label(url)}"
    return ("error", "structure", expression, message)


def required(expression: str, slice_id: str, url: str) -> tuple[str, str, str, str]:
    message = (
        f"Slice '{slice_id}': a matching slice is required, but not found (from {label(url)}). Note that other "
        "slices are allowed in addition to this required slice"
    )
    return ("error", "structure", expression, message)


def too_many(expression: str, slice_id: str, most: int, found: int, url: str) -> tuple[str, str, str, str]:
    message = f"{slice_id}: max allowed = {most}, but found {found} (from {label(url)})"
    return ("error", "structure", expression, message)


TEXT = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
MRN = {"system": "urn:mrn", "value": "1"}
SSN = {"system": "urn:ssn", "value": "2"}
OTHER_ID = {"system": "urn:other", "value": "3"}


def patient(**more: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p", "text": TEXT, **more}


def observation(**more: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": "o", "text": TEXT, "status": "final", "code": {"text": "x"}, **more}


MRN_SLICE = "Patient.identifier:mrn"
SSN_SLICE = "Patient.identifier:ssn"


# Closed slicing by a value discriminator: mrn 1..1 (system fixed), ssn 0..2 (system by pattern).
@pytest.mark.parametrize(
    ("identifiers", "expected"),
    [
        ([MRN], []),
        ([SSN, MRN, SSN], []),  # ssn at its maximum, mrn at its minimum and maximum, in any order
        ([], [required("Patient", MRN_SLICE, IDENTIFIERS)]),
        ([SSN], [required("Patient", MRN_SLICE, IDENTIFIERS)]),
        ([MRN, MRN], [too_many("Patient", MRN_SLICE, 1, 2, IDENTIFIERS)]),
        ([MRN, SSN, SSN, SSN], [too_many("Patient", SSN_SLICE, 2, 3, IDENTIFIERS)]),
        ([MRN, OTHER_ID], [no_match("Patient.identifier[1]", IDENTIFIERS)]),
        ([{"value": "1"}, MRN], [no_match("Patient.identifier[0]", IDENTIFIERS)]),
        (
            [OTHER_ID, MRN, MRN, MRN, SSN, SSN, SSN, OTHER_ID],
            [
                no_match("Patient.identifier[0]", IDENTIFIERS),
                no_match("Patient.identifier[7]", IDENTIFIERS),
                too_many("Patient", MRN_SLICE, 1, 3, IDENTIFIERS),
                too_many("Patient", SSN_SLICE, 2, 3, IDENTIFIERS),
            ],
        ),
    ],
)
def test_closed_slicing_by_value(
    validator: Validator, identifiers: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    resource = patient(identifier=identifiers) if identifiers else patient()
    assert errors(validator.validate(resource, [IDENTIFIERS])) == expected


def test_a_slice_cardinality_issue_names_the_profile_as_its_source(validator: Validator) -> None:
    issues = validator.validate(patient(identifier=[SSN, SSN, SSN]), [IDENTIFIERS])
    assert [(i.message[:30], i.source) for i in issues if i.severity == "error"] == [
        ("Slice 'Patient.identifier:mrn'", IDENTIFIERS),
        ("Patient.identifier:ssn: max al", IDENTIFIERS),
    ]
    unmatched = validator.validate(patient(identifier=[MRN, OTHER_ID]), [IDENTIFIERS])
    assert [i.source for i in unmatched if i.severity == "error"] == [None]


def test_a_value_in_a_slice_is_checked_as_that_slice(validator: Validator) -> None:
    # The mrn slice requires a value; an ssn identifier without one is fine.
    resource = patient(identifier=[{"system": "urn:ssn"}, {"system": "urn:mrn"}])
    message = f"Patient.identifier:mrn.value: minimum required = 1, but only found 0 (from {label(IDENTIFIERS)})"
    assert errors(validator.validate(resource, [IDENTIFIERS])) == [
        ("error", "required", "Patient.identifier[1]", message)
    ]


VITAL_SIGNS = {"coding": [{"system": VITAL, "code": "vital-signs"}]}
VITAL_SLICE = "Observation.category:vital"


# Open slicing by a pattern on $this: a category that matches no slice is allowed.
@pytest.mark.parametrize(
    ("categories", "expected"),
    [
        ([{"text": "other"}, VITAL_SIGNS], []),
        ([{"coding": [{"system": "x", "code": "y"}, *VITAL_SIGNS["coding"]], "text": "more"}], []),
        ([{"text": "other"}], [required("Observation", VITAL_SLICE, CATEGORY)]),
        ([{"coding": [{"system": VITAL, "code": "laboratory"}]}], [required("Observation", VITAL_SLICE, CATEGORY)]),
        ([VITAL_SIGNS, {"text": "x"}, VITAL_SIGNS], [too_many("Observation", VITAL_SLICE, 1, 2, CATEGORY)]),
    ],
)
def test_open_slicing_by_pattern(
    validator: Validator, categories: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(observation(category=categories), [CATEGORY])) == expected


MEASURED = {"code": {"text": "a"}, "valueQuantity": {"value": 1}}
ABSENT = {"code": {"text": "b"}, "dataAbsentReason": {"text": "gone"}}


# Closed slicing by an exists discriminator: measured has a value (0..1), absent has none (0..*).
@pytest.mark.parametrize(
    ("components", "expected"),
    [
        ([MEASURED, ABSENT, ABSENT], []),
        ([ABSENT], []),
        ([MEASURED, MEASURED], [too_many("Observation", "Observation.component:measured", 1, 2, COMPONENTS)]),
        (
            [{"code": {"text": "b"}}],
            [
                (
                    "error",
                    "required",
                    "Observation.component[0]",
                    "Observation.component:absent.dataAbsentReason: minimum required = 1, but only found 0 (from "
                    f"{label(COMPONENTS)})",
                )
            ],
        ),
        (
            [{"code": {"text": "a"}, "valueString": "s"}],
            [
                (
                    "error",
                    "structure",
                    "Observation.component[0]",
                    "The type of element valueString is not known - it could not be determined from the information "
                    "available. Valid types at this point are Quantity",
                )
            ],
        ),
    ],
)
def test_closed_slicing_by_exists(
    validator: Validator, components: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(observation(component=components), [COMPONENTS])) == expected


BIRTH_PLACE_EXTENSION = {"url": f"{CORE}/patient-birthPlace", "valueAddress": {"city": "X"}}
BIRTH_PLACE_SLICE = "Patient.extension:birthPlace"


# Extensions sliced by url: the slice names its extension by profile.
@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        ([BIRTH_PLACE_EXTENSION], []),
        (
            [{"url": "http://x", "valueString": "s"}],
            [
                (
                    "error",
                    "structure",
                    "Patient.extension[0]",
                    "The extension http://x could not be found so is not allowed here",
                ),
                required("Patient", BIRTH_PLACE_SLICE, BIRTH_PLACE),
            ],
        ),
        ([BIRTH_PLACE_EXTENSION, BIRTH_PLACE_EXTENSION], [too_many("Patient", BIRTH_PLACE_SLICE, 1, 2, BIRTH_PLACE)]),
        (
            [{"url": f"{CORE}/patient-birthPlace", "valueString": "X"}],
            [
                ("error", "structure", "Patient.extension[0]", "Unrecognized property 'valueString'"),
                (
                    "error",
                    "required",
                    "Patient.extension[0]",
                    "Extension.value[x]: minimum required = 1, but only found 0 "
                    f"(from {CORE}/patient-birthPlace|4.0.1)",
                ),
            ],
        ),
    ],
)
def test_extension_slices_by_url(
    validator: Validator, extensions: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(patient(extension=extensions), [BIRTH_PLACE])) == expected


GROUP = {"resourceType": "Group", "id": "g", "text": TEXT, "type": "person", "actual": True}
PATIENT_WITH_MRN = patient(identifier=[MRN])


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    entries = [
        {"fullUrl": f"urn:uuid:{i:08d}-0000-0000-0000-000000000000", "resource": r} for i, r in enumerate(resources)
    ]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


# Bundle entries sliced by the type of their resource (closed): patient 1..1, observation 0..2.
@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ([patient(), observation(), observation()], []),
        ([observation(), patient()], []),
        ([patient(), patient()], [too_many("Bundle", "Bundle.entry:patient", 1, 2, BY_TYPE)]),
        (
            [observation(), observation(), observation(), GROUP],
            [
                no_match("Bundle.entry[3]", BY_TYPE),
                required("Bundle", "Bundle.entry:patient", BY_TYPE),
                too_many("Bundle", "Bundle.entry:observation", 2, 3, BY_TYPE),
            ],
        ),
    ],
)
def test_closed_slicing_by_type(
    validator: Validator, resources: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(bundle(*resources), [BY_TYPE])) == expected


# Bundle entries sliced by profile (open): the identified slice holds a Patient that conforms to IDENTIFIERS.
@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ([PATIENT_WITH_MRN, observation()], []),
        ([observation(), PATIENT_WITH_MRN, GROUP], []),
        ([patient(), observation()], [required("Bundle", "Bundle.entry:identified", BY_PROFILE)]),
        (
            [PATIENT_WITH_MRN, PATIENT_WITH_MRN],
            [too_many("Bundle", "Bundle.entry:identified", 1, 2, BY_PROFILE)],
        ),
    ],
)
def test_open_slicing_by_profile(
    validator: Validator, resources: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(bundle(*resources), [BY_PROFILE])) == expected


VITAL_OBSERVATION = observation(id="v", category=[VITAL_SIGNS])
CONDITION = {"resourceType": "Condition", "id": "c", "text": TEXT, "subject": {"reference": "Patient/p"}}


def listing(*references: str) -> dict[str, Any]:
    contained = [CONDITION, VITAL_OBSERVATION, observation(), GROUP]
    return {
        "resourceType": "List",
        "text": TEXT,
        "status": "current",
        "mode": "working",
        "contained": [c for c in contained if f"#{c['id']}" in references],
        "entry": [{"item": {"reference": r}} for r in references],
    }


# List entries sliced by the type of what their item resolves to (closed): conditions 1..1 (target Condition),
# vitals 0..* (target CATEGORY, a profile on Observation).
@pytest.mark.parametrize(
    ("references", "expected"),
    [
        (["#c", "#v"], []),
        (["#v", "#c", "#v"], []),
        (["#v"], [required("List", "List.entry:conditions", BY_TARGET)]),
        (["#c", "#c"], [too_many("List", "List.entry:conditions", 1, 2, BY_TARGET)]),
        (["#c", "#g"], [no_match("List.entry[1]", BY_TARGET)]),
        (
            ["#c", "#o"],
            [
                (
                    "error",
                    "structure",
                    "List.entry[1].item",
                    f"The resource Observation referred to does not conform to any of the target profiles ({CATEGORY})",
                )
            ],
        ),
    ],
)
def test_closed_slicing_by_resolved_type(
    validator: Validator, references: list[str], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(listing(*references), [BY_TARGET])) == expected


# --- whether a value is in a slice, discriminator by discriminator ------------------------------------------------


def in_slice(
    validator: Validator,
    item: Any,
    slice_node: ElementNode,
    *discriminators: tuple[str, str],
    type_code: str | None = None,
    root: dict[str, Any] | None = None,
    run: Run | None = None,
) -> bool:
    found = [Discriminator(t, p) for t, p in discriminators]
    return slicing._in_slice(validator, item, type_code, slice_node, tuple(found), run or Run(), root or {})


# A validator without definitions: the value, pattern, exists and type discriminators read none (the profile ones,
# and the type of a target profile that is not a core URL, use the module's validator).
BARE = Validator(DefinitionIndex())

SYSTEM_A = el("identifier", el("system", fixed="a"), el("use"), slice_name="a")
USE_HOME = el("identifier", el("system"), el("use", pattern="home"), slice_name="home")


@pytest.mark.parametrize(
    ("item", "slice_node", "discriminators", "expected"),
    [
        ({"system": "a"}, SYSTEM_A, [("value", "system")], True),
        ({"system": "a"}, SYSTEM_A, [("pattern", "system")], True),
        ({"system": "a"}, SYSTEM_A, [("value", " $this.system ")], True),
        ({"system": "b"}, SYSTEM_A, [("value", "system")], False),
        ({}, SYSTEM_A, [("value", "system")], False),
        ({"system": "a"}, SYSTEM_A, [], False),
        # A slice that leaves every discriminator's path open matches nothing.
        ({"system": "a"}, USE_HOME, [("value", "system")], False),
        ({"system": "a", "use": "home"}, USE_HOME, [("value", "system"), ("value", "use")], True),
        ({"system": "a", "use": "work"}, USE_HOME, [("value", "system"), ("value", "use")], False),
        ({"system": "a", "use": "home"}, SYSTEM_A, [("value", "system"), ("pattern", "use")], True),
        ({"system": "b", "use": "home"}, SYSTEM_A, [("value", "system"), ("pattern", "use")], False),
        ({"system": "a", "use": "home"}, SYSTEM_A, [("value", "system"), ("position", "use")], False),
        ({"system": "a"}, SYSTEM_A, [("position", "system")], False),
        # Any of several values at the path may match.
        (
            {"coding": [{"code": "a"}, {"code": "b"}]},
            el("cc", el("coding", el("code", fixed="b"))),
            [("value", "coding.code")],
            True,
        ),
        ({"coding": [{"code": "a"}]}, el("cc", el("coding", el("code", fixed="b"))), [("value", "coding.code")], False),
    ],
)
def test_in_slice_by_value_or_pattern(
    item: Any, slice_node: ElementNode, discriminators: list[tuple[str, str]], expected: bool
) -> None:
    assert in_slice(BARE, item, slice_node, *discriminators) is expected


def test_a_value_discriminator_through_of_type_reads_the_type_of_the_value_itself() -> None:
    slice_node = el("value[x]", el("unit", fixed="mg"), slice_name="mg")
    discriminator = ("value", "ofType(Quantity).unit")
    assert in_slice(BARE, {"unit": "mg"}, slice_node, discriminator, type_code="Quantity") is True
    assert in_slice(BARE, {"unit": "mg"}, slice_node, discriminator, type_code="string") is False


def with_value(min_: int, max_: int | None) -> ElementNode:
    return el("component", el("value[x]", min=min_, max=max_), slice_name=f"value-{min_}-{max_}")


# exists: the slice requires the path's value (min > 0, or a max other than 0) or forbids it (max 0).
@pytest.mark.parametrize(
    ("slice_node", "present", "expected"),
    [
        (with_value(1, 1), True, True),
        (with_value(1, 1), False, False),
        (with_value(0, 0), False, True),
        (with_value(0, 0), True, False),
        (with_value(0, 1), True, True),
        (with_value(0, 1), False, False),
        (with_value(0, None), True, True),
        (with_value(1, 0), True, True),
        (with_value(1, 0), False, False),
        (with_value(2, 0), True, True),
        (with_value(0, 2), True, True),
        (el("component", slice_name="open"), True, False),
        (el("component", slice_name="open"), False, False),
    ],
)
def test_in_slice_by_exists(slice_node: ElementNode, present: bool, expected: bool) -> None:
    item = {"code": {"text": "c"}, "valueQuantity": {"value": 1}} if present else {"code": {"text": "c"}}
    assert in_slice(BARE, item, slice_node, ("exists", "value")) is expected


QUANTITY_SLICE = el("value[x]", types=(TypeRef("Quantity"),), slice_name="valueQuantity")
ENTRY_PATIENT = el("entry", el("resource", types=(TypeRef("Patient"),)), slice_name="patient")
ENTRY_ANY = el("entry", el("resource"), slice_name="any")


def entry_item(target: str, profile: str) -> ElementNode:
    reference = TypeRef("Reference", target_profiles=(target,))
    return el("entry", el("item", types=(reference,)), slice_name=profile)


@pytest.mark.parametrize(
    ("item", "slice_node", "path", "type_code", "expected"),
    [
        ({"value": 1}, QUANTITY_SLICE, "$this", "Quantity", True),
        ({"value": 1}, QUANTITY_SLICE, "$this", "string", False),
        ({"value": 1}, QUANTITY_SLICE, "$this", None, False),
        ({"resource": PATIENT_1}, ENTRY_PATIENT, "resource", None, True),
        ({"resource": GROUP_2}, ENTRY_PATIENT, "resource", None, False),
        ({"resource": [PATIENT_1, GROUP_2]}, ENTRY_PATIENT, "resource", None, False),
        ({"resource": [PATIENT_1, PATIENT_1_AGAIN]}, ENTRY_PATIENT, "resource", None, True),
        ({}, ENTRY_PATIENT, "resource", None, False),
        ({"resource": PATIENT_1}, ENTRY_ANY, "resource", None, False),  # the slice names no type
        ({"resource": PATIENT_1}, ENTRY_PATIENT, "request", None, False),
    ],
)
def test_in_slice_by_type(item: Any, slice_node: ElementNode, path: str, type_code: str | None, expected: bool) -> None:
    assert in_slice(BARE, item, slice_node, ("type", path), type_code=type_code) is expected


LIST_ROOT = {
    "resourceType": "List",
    "contained": [{"resourceType": "Condition", "id": "c"}, GROUP_2, VITAL_OBSERVATION],
}


@pytest.mark.parametrize(
    ("reference", "slice_node", "path", "expected"),
    [
        ("#c", entry_item(f"{CORE}/Condition", "conditions"), "item.resolve()", True),
        ("#c", entry_item(f"{CORE}/Condition|4.0.1", "conditions"), "item.resolve()", True),
        ("#2", entry_item(f"{CORE}/Condition", "conditions"), "item.resolve()", False),
        ("#nowhere", entry_item(f"{CORE}/Condition", "conditions"), "item.resolve()", False),
        ("#v", entry_item(CATEGORY, "vitals"), "item.resolve()", True),  # a profile on Observation
        ("#2", entry_item("http://example.org/unknown/Group", "groups"), "item.resolve()", True),
        ("#2", entry_item("http://example.org/unknown/Group|2", "groups"), "item.resolve()", True),
        ("#2", entry_item("http://example.org/unknown/Groups", "groups"), "item.resolve()", False),
        ("#c", el("entry", el("item", types=(TypeRef("Reference"),)), slice_name="any"), "item.resolve()", False),
        ("#c", el("entry", slice_name="none"), "item.resolve()", False),
        ("#c", entry_item(f"{CORE}/Condition", "conditions"), "date.resolve()", False),
    ],
)
def test_in_slice_by_resolved_type(
    validator: Validator, reference: str, slice_node: ElementNode, path: str, expected: bool
) -> None:
    item = {"item": {"reference": reference}}
    assert in_slice(validator, item, slice_node, ("type", path), root=LIST_ROOT) is expected


def test_in_slice_by_the_type_a_reference_itself_resolves_to() -> None:
    slice_node = el("item", types=(TypeRef("Reference", target_profiles=(f"{CORE}/Condition",)),), slice_name="c")
    assert in_slice(BARE, {"reference": "#c"}, slice_node, ("type", "resolve()"), root=LIST_ROOT) is True
    assert in_slice(BARE, {"reference": "#2"}, slice_node, ("type", "resolve()"), root=LIST_ROOT) is False


def profiled_entry(*profiles: str) -> ElementNode:
    return el("entry", el("resource", types=(TypeRef("Patient", profiles),)), slice_name="profiled")


@pytest.mark.parametrize(
    ("resources", "slice_node", "expected"),
    [
        ([PATIENT_WITH_MRN], profiled_entry(IDENTIFIERS), True),
        ([patient()], profiled_entry(IDENTIFIERS), False),
        ([patient()], profiled_entry(IDENTIFIERS, f"{CORE}/Patient"), True),
        ([PATIENT_WITH_MRN, PATIENT_WITH_MRN], profiled_entry(IDENTIFIERS), True),
        ([PATIENT_WITH_MRN, patient()], profiled_entry(IDENTIFIERS), False),
        ([PATIENT_WITH_MRN], profiled_entry(), False),  # the slice names no profile
        ([PATIENT_WITH_MRN], el("entry", slice_name="none"), False),
        ([], profiled_entry(f"{CORE}/Patient"), False),
    ],
)
def test_in_slice_by_profile(
    validator: Validator, resources: list[dict[str, Any]], slice_node: ElementNode, expected: bool
) -> None:
    item = {"resource": resources} if resources else {"request": {}}
    assert in_slice(validator, item, slice_node, ("profile", "resource")) is expected


@pytest.mark.parametrize(
    ("canonical", "resource_type"),
    [
        (IDENTIFIERS, "Patient"),
        (f"{CORE}/Observation", "Observation"),
        (f"{CORE}/Observation|4.0.1", "Observation"),
        ("http://example.org/unknown/Thing", "Thing"),
        ("http://example.org/unknown/Thing|1.0", "Thing"),
        ("Thing", "Thing"),
        ("a b/Thing", "Thing"),
    ],
)
def test_profile_type(validator: Validator, canonical: str, resource_type: str) -> None:
    assert slicing._profile_type(validator, canonical) == resource_type


DATA_ABSENT = {"extension": [{"url": f"{CORE}/data-absent-reason", "valueCode": "masked"}]}


# A sliced primitive: a value with only extensions (``_given``) is a value too, and matches no slice here; a value
# with neither is left to the other rules (ele-1).
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ({"given": ["A"]}, []),
        ({"given": ["A", None], "_given": [None, DATA_ABSENT]}, [no_match("Patient.name[0].given[1]", GIVEN)]),
        ({"given": ["A", "B"], "_given": [DATA_ABSENT]}, [no_match("Patient.name[0].given[1]", GIVEN)]),
        (
            {"_given": [DATA_ABSENT]},
            [
                no_match("Patient.name[0].given[0]", GIVEN),
                required("Patient.name[0]", "Patient.name.given:first", GIVEN),
            ],
        ),
        (
            {"given": [None, "A"], "_given": [None, None]},
            [
                (
                    "error",
                    "invariant",
                    "Patient.name[0].given[0]",
                    "Constraint failed: ele-1: 'All FHIR elements must have a @value or children' (defined in "
                    f"{CORE}/Element)",
                )
            ],
        ),
    ],
)
def test_slices_of_a_primitive_with_extensions(
    validator: Validator, name: dict[str, Any], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(patient(name=[name]), [GIVEN])) == expected


def test_resolve_in_a_discriminator_of_a_contained_resource_looks_in_its_container(validator: Validator) -> None:
    # The List claims BY_TARGET; its entry's #c is a sibling in the Composition's contained resources.
    contained_list = {
        "resourceType": "List",
        "id": "l",
        "meta": {"profile": [BY_TARGET]},
        "text": TEXT,
        "status": "current",
        "mode": "working",
        "entry": [{"item": {"reference": "#c"}}],
    }
    composition = {
        "resourceType": "Composition",
        "id": "x",
        "text": TEXT,
        "status": "final",
        "type": {"text": "t"},
        "date": "2020-01-01",
        "author": [{"display": "a"}],
        "title": "t",
        "contained": [contained_list, CONDITION],
        "section": [{"entry": [{"reference": "#l"}, {"reference": "#c"}]}],
    }
    assert errors(validator.validate(composition)) == []
    contained_list["entry"] = [{"item": {"reference": "#x"}}]
    assert errors(validator.validate(composition)) == [
        (
            "error",
            "invariant",
            "Composition.contained[0]/*List/l*/.entry[0].item",
            "Constraint failed: ref-1: 'SHALL have a contained resource if a local reference is provided'",
        ),
        no_match("Composition.contained[0]/*List/l*/.entry[0]", BY_TARGET),
        required("Composition.contained[0]/*List/l*/", "List.entry:conditions", BY_TARGET),
    ]


def composition(*contained: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Composition",
        "id": "x",
        "text": TEXT,
        "status": "final",
        "type": {"text": "t"},
        "date": "2020-01-01",
        "author": [{"display": "a"}],
        "title": "t",
        "contained": list(contained),
        "section": [{"entry": [{"reference": f"#{c['id']}"} for c in contained]}],
    }


def test_a_resource_in_a_slice_is_checked_against_the_slice_type_profile(validator: Validator) -> None:
    coded = {**CONDITION, "code": {"text": "x"}}
    uncoded = {**CONDITION, "id": "u"}
    assert errors(validator.validate(composition(coded, GROUP), [HOLDER])) == []
    message = f"Condition.code: minimum required = 1, but only found 0 (from {label(CODED)})"
    assert errors(validator.validate(composition(uncoded, GROUP), [HOLDER])) == [
        ("error", "required", "Composition.contained[0]/*Condition/u*/", message)
    ]
    assert errors(validator.validate(composition(coded, uncoded), [HOLDER])) == [
        ("error", "required", "Composition.contained[1]/*Condition/u*/", message),
        too_many("Composition", "Composition.contained:condition", 1, 2, HOLDER),
    ]


DOCUMENT = {
    "resourceType": "DocumentReference",
    "id": "d",
    "status": "current",
    "content": [{"attachment": {"contentType": "text/plain"}}],
}
TASK = {"resourceType": "Task", "id": "t", "status": "draft", "intent": "order"}


# Payloads sliced by the type their content resolves to, through ofType(Reference) (closed): document 1..1, task
# 0..1; a string content resolves to nothing, so it is in no slice.
@pytest.mark.parametrize(
    ("contents", "expected"),
    [
        ([{"contentReference": {"reference": "#t"}}, {"contentReference": {"reference": "#d"}}], []),
        (
            [
                {"contentReference": {"reference": "#t"}},
                {"contentString": "s"},
                {"contentReference": {"reference": "#d"}},
                {"contentReference": {"reference": "#d"}},
            ],
            [
                no_match("Communication.payload[1]", PAYLOAD),
                too_many("Communication", "Communication.payload:document", 1, 2, PAYLOAD),
            ],
        ),
    ],
)
def test_slicing_by_the_type_a_choice_of_reference_resolves_to(
    validator: Validator, contents: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    communication = {
        "resourceType": "Communication",
        "id": "m",
        "text": TEXT,
        "status": "in-progress",
        "contained": [DOCUMENT, TASK],
        "payload": contents,
    }
    assert errors(validator.validate(communication, [PAYLOAD])) == expected


# A choice element sliced by type (closed): a value is named by its type, Observation.value.ofType(string).
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"valueQuantity": {"value": 1, "unit": "mg"}}, []),
        ({"valueString": "s"}, [no_match("Observation.value.ofType(string)", VALUE_TYPE)]),
        (
            {"valueQuantity": {"value": 1}},
            [
                (
                    "error",
                    "required",
                    "Observation.value.ofType(Quantity)",
                    "Observation.value[x]:valueQuantity.unit: minimum required = 1, but only found 0 (from "
                    f"{label(VALUE_TYPE)})",
                )
            ],
        ),
    ],
)
def test_a_choice_sliced_by_type(
    validator: Validator, value: dict[str, Any], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(observation(**value), [VALUE_TYPE])) == expected


def out_of_order(expression: str) -> tuple[str, str, str, str]:
    message = f"As specified by profile {label(ORDERED)}, Element 'identifier' is out of order in ordered slice"
    return ("error", "invalid", expression, message)


# Ordered slicing (mrn before ssn): a value in an earlier slice than the value before it is out of order; a value in
# no slice starts the comparison again, as the HL7 validator does.
@pytest.mark.parametrize(
    ("identifiers", "expected"),
    [
        ([MRN, SSN], []),
        ([MRN, MRN, SSN, SSN], []),
        ([SSN, MRN], [out_of_order("Patient.identifier[1]")]),
        ([MRN, SSN, MRN], [out_of_order("Patient.identifier[2]")]),
        ([SSN, SSN, MRN, MRN], [out_of_order("Patient.identifier[2]")]),
        ([SSN, MRN, SSN, MRN], [out_of_order("Patient.identifier[1]"), out_of_order("Patient.identifier[3]")]),
        ([SSN, OTHER_ID, MRN], []),
        ([OTHER_ID, SSN, MRN], [out_of_order("Patient.identifier[2]")]),
    ],
)
def test_ordered_slicing(
    validator: Validator, identifiers: list[dict[str, Any]], expected: list[tuple[str, str, str, str]]
) -> None:
    assert errors(validator.validate(patient(identifier=identifiers), [ORDERED])) == expected


def test_a_resource_without_a_recorded_root_is_its_own_root(validator: Validator) -> None:
    # check_slicing called for a resource the run has not seen: resolve() looks in the resource's own contained.
    tree = validator.tree(BY_TARGET)
    assert tree is not None
    resource = listing("#c", "#v")
    run = Run()
    slicing.check_slicing(
        validator, resource["entry"], [], tree.by_id["List.entry"], tree, "List", None, run, resource, 0
    )
    assert errors(run.issues) == []
    run = Run()
    slicing.check_slicing(validator, resource["entry"], [], tree.by_id["List.entry"], tree, "List", None, run, {}, 0)
    assert errors(run.issues) == [
        no_match("List.entry[0]", BY_TARGET),
        no_match("List.entry[1]", BY_TARGET),
        required("List", "List.entry:conditions", BY_TARGET),
    ]


def test_a_primitive_in_a_slice_keeps_its_extensions(validator: Validator) -> None:
    # given[1] has no value but an extension: in the slice too it is a value with children, not an empty one.
    name = {"given": ["A", None], "_given": [None, DATA_ABSENT]}
    assert errors(validator.validate(patient(name=[name]), [TYPED])) == []
    empty = {"given": ["A", None]}
    assert errors(validator.validate(patient(name=[empty]), [TYPED])) == [
        (
            "error",
            "invariant",
            "Patient.name[0].given[1]",
            f"Constraint failed: ele-1: 'All FHIR elements must have a @value or children' (defined in {CORE}/Element)",
        )
    ]


def test_in_slice_by_exists_through_of_type() -> None:
    # The value is there as that type or not at all.
    slice_node = el("value[x]", slice_name="quantity")
    assert in_slice(BARE, {"value": 1}, slice_node, ("exists", "ofType(Quantity)"), type_code="Quantity") is True
    assert in_slice(BARE, {"value": 1}, slice_node, ("exists", "ofType(Quantity)"), type_code="string") is False


def test_in_slice_by_the_type_of_a_bundle_entry_a_reference_resolves_to() -> None:
    slice_node = entry_item(f"{CORE}/Patient", "patients")
    for reference, expected in (("Patient/1", True), ("urn:uuid:abc", True), ("Group/2", False)):
        item = {"item": {"reference": reference}}
        assert in_slice(BARE, item, slice_node, ("type", "item.resolve()"), run=bundle_run()) is expected
