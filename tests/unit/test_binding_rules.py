"""The terminology rules of validation/bindings.py, each with the exact issue it gives (severity, code, message,
expression): a code, string or uri value against its binding (required -> two errors, extensible -> a warning,
preferred and example -> nothing; an unknown value set -> a warning; an incomplete expansion -> nothing), a Coding
or CodeableConcept against its binding (the same strengths, a CodeableConcept without codings, codes of open systems
-> information, an additional required binding worded as the HL7 validator words it), and a coding against the code
system we hold (unknown codes, wrong displays, displays of a designation or of a bound value set).

Most tables run the checks over a small terminology held in memory (a code system, value sets by compose and by
expansion); the last ones run the validator over base R4 resources, so that a required binding on a
CodeableConcept that became a warning (a Condition.clinicalStatus holding a verification status) fails here."""

from __future__ import annotations

from typing import Any

import pytest

from casebridge.definitions.structure import ElementNode, StructureTree, TypeRef
from casebridge.validation.bindings import Bindings, codings
from casebridge.validation.issues import Issue, Run
from casebridge.validation.terminology import Terminology
from casebridge.validation.validator import Validator

COLOUR = "http://example.org/cs/colour"  # a complete code system
PARTIAL = "http://example.org/cs/partial"  # content fragment: its codes cannot all be known
EMPTY = "http://example.org/cs/empty"  # complete, but without concepts
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"  # external, even with a code system of that url held
VS = "http://example.org/vs/colours"  # title and version; red and green by compose
NAMED = "http://example.org/vs/named"  # a name, no title; the whole colour system
BARE = "http://example.org/vs/bare"  # neither title nor name; red only
OPEN = "http://example.org/vs/open"  # red, and SNOMED CT (an open system)
UNRESOLVED = "http://example.org/vs/unresolved"  # red, and a value set we do not hold: incomplete
SHADES = "http://example.org/vs/shades"  # an expansion that gives red a display and a designation of its own
MISSING = "http://example.org/vs/missing"  # not held at all


def _value_set(url: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "url": url, "status": "active", **extra}


RESOURCES: list[dict[str, Any]] = [
    {
        "resourceType": "CodeSystem",
        "url": COLOUR,
        "status": "active",
        "content": "complete",
        "concept": [
            {
                "code": "red",
                "display": "Red",
                "designation": [{"language": "de", "value": "Rot"}, {"value": "Reddish"}],
            },
            {"code": "green", "display": "Green"},
            {"code": "blue"},  # no display: any display is accepted
        ],
    },
    {
        "resourceType": "CodeSystem",
        "url": PARTIAL,
        "status": "active",
        "content": "fragment",
        "concept": [{"code": "one", "display": "One"}],
    },
    {"resourceType": "CodeSystem", "url": EMPTY, "status": "active", "content": "complete"},
    {
        "resourceType": "CodeSystem",
        "url": LOINC,
        "status": "active",
        "content": "complete",
        "concept": [{"code": "1-8", "display": "Acyclovir"}],
    },
    _value_set(
        VS,
        title="Colours",
        name="ColourSet",
        version="1.2",
        compose={"include": [{"system": COLOUR, "concept": [{"code": "red"}, {"code": "green"}]}]},
    ),
    _value_set(NAMED, name="NamedColours", compose={"include": [{"system": COLOUR}]}),
    _value_set(BARE, compose={"include": [{"system": COLOUR, "concept": [{"code": "red"}]}]}),
    _value_set(
        OPEN, title="Open", compose={"include": [{"system": COLOUR, "concept": [{"code": "red"}]}, {"system": SNOMED}]}
    ),
    _value_set(
        UNRESOLVED,
        title="Unresolved",
        compose={"include": [{"system": COLOUR, "concept": [{"code": "red"}]}, {"valueSet": [MISSING]}]},
    ),
    _value_set(
        SHADES,
        title="Shades",
        expansion={
            "contains": [
                {"system": COLOUR, "code": "red", "display": "Crimson", "designation": [{"value": "Scarlet"}]},
                {"system": COLOUR, "code": "green", "display": "Lime"},
            ]
        },
    ),
]


class Store(dict[str, dict[str, Any]]):
    """Definitions held in memory, by canonical (the Definitions protocol: get, and no core types)."""

    def core_definition(self, type_name: str) -> dict[str, Any] | None:
        return None


@pytest.fixture(scope="module")
def bindings() -> Bindings:
    store = Store({r["url"]: r for r in RESOURCES})
    return Bindings(store, Terminology(store))


TREE_ROOT = ElementNode("Basic", "Basic", "Basic", 0, None, ())
TREE = StructureTree("http://example.org/sd/basic", None, "Basic", "Basic", "resource", None, None, TREE_ROOT, {})


def node(
    binding: tuple[str, str] | None = None, additional: tuple[str, ...] = (), type_code: str = "CodeableConcept"
) -> ElementNode:
    return ElementNode(
        "Basic.code", "Basic.code", "code", 0, 1, (TypeRef(type_code),), binding=binding, additional_required=additional
    )


def issues(run: Run) -> list[tuple[str, str, str, str]]:
    return [(i.severity, i.code, i.expression, i.message) for i in run.issues]


def label(canonical: str, name: str | None) -> str:
    return f"'{name}' ({canonical})" if name else f"'{canonical}'"


# --- codings --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "type_code", "expected"),
    [
        ({"system": COLOUR, "code": "red"}, "Coding", [("X.c", {"system": COLOUR, "code": "red"})]),
        # A Coding is itself, even holding a coding property.
        ({"coding": [{"code": "a"}]}, "Coding", [("X.c", {"coding": [{"code": "a"}]})]),
        (
            {"coding": [{"code": "a"}, "not an object", {"code": "b"}]},
            "CodeableConcept",
            [("X.c.coding[0]", {"code": "a"}), ("X.c.coding[2]", {"code": "b"})],
        ),
        ({"coding": {"code": "a"}}, "CodeableConcept", []),  # not an array: the walk reports the shape
        ({"text": "words"}, "CodeableConcept", []),
    ],
)
def test_codings_of_a_coding_and_of_a_codeable_concept(
    item: dict[str, Any], type_code: str, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    assert codings(item, type_code, "X.c") == expected


# --- value set labels -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("canonical", "expected"),
    [
        (VS, f"'Colours' ({VS})"),  # the title before the name
        (f"{VS}|1.2", f"'Colours' ({VS}|1.2)"),  # found without its version, named with it
        (NAMED, f"'NamedColours' ({NAMED})"),
        (BARE, f"'{BARE}'"),
        (MISSING, f"'{MISSING}'"),
    ],
)
def test_a_value_set_is_named_by_its_title_or_name(bindings: Bindings, canonical: str, expected: str) -> None:
    assert bindings.vs_label(canonical) == expected


# --- a code, string or uri value against its binding ----------------------------------------------------------------


def _required_code(value: str, vs: str, name: str | None) -> list[tuple[str, str, str, str]]:
    no_system = f"The System URI could not be determined for the code '{value}' in the ValueSet '{vs}'"
    return [
        ("error", "code-invalid", "X.c", no_system),
        (
            "error",
            "code-invalid",
            "X.c",
            f"The value provided ('{value}') was not found in the value set {label(vs, name)}, and a code is required "
            f"from this value set  (error message = {no_system}; The provided code '#{value}' was not found in the "
            f"value set '{vs}')",
        ),
    ]


def _extensible_code(value: str, vs: str, name: str | None) -> list[tuple[str, str, str, str]]:
    message = (
        f"The value provided ('{value}') was not found in the value set {label(vs, name)}, and a code is recommended "
        "from this value set"
    )
    return [("warning", "code-invalid", "X.c", message)]


@pytest.mark.parametrize(
    ("strength", "vs", "value", "expected"),
    [
        ("required", VS, "red", []),
        ("required", VS, "green", []),
        ("required", VS, "blue", _required_code("blue", VS, "Colours")),
        ("required", VS, "Red", _required_code("Red", VS, "Colours")),  # codes are compared exactly
        ("required", NAMED, "blue", []),
        ("required", BARE, "green", _required_code("green", BARE, None)),
        ("required", f"{VS}|1.2", "blue", _required_code("blue", f"{VS}|1.2", "Colours")),
        ("extensible", VS, "red", []),
        ("extensible", VS, "blue", _extensible_code("blue", VS, "Colours")),
        ("extensible", NAMED, "purple", _extensible_code("purple", NAMED, "NamedColours")),
        ("preferred", VS, "blue", []),
        ("example", VS, "blue", []),
        # An incomplete expansion cannot say a code is not in it.
        ("required", OPEN, "blue", []),
        ("required", UNRESOLVED, "blue", []),
        ("extensible", OPEN, "blue", []),
        (
            "required",
            MISSING,
            "blue",
            [
                (
                    "warning",
                    "not-found",
                    "X.c",
                    f"The value set {MISSING} is not known, so the code 'blue' was not checked",
                )
            ],
        ),
        (
            "extensible",
            MISSING,
            "x",
            [("warning", "not-found", "X.c", f"The value set {MISSING} is not known, so the code 'x' was not checked")],
        ),
        ("preferred", MISSING, "blue", []),
    ],
)
def test_a_code_value_against_its_binding(
    bindings: Bindings, strength: str, vs: str, value: str, expected: list[tuple[str, str, str, str]]
) -> None:
    run = Run()
    bindings.code_binding(value, node((strength, vs), type_code="code"), TREE, "X.c", run)
    assert issues(run) == expected


# --- a Coding or CodeableConcept against its binding ----------------------------------------------------------------


def none_of(vs: str, name: str | None, strength: str) -> tuple[str, str, str, str]:
    severity, verb = ("error", "must") if strength == "required" else ("warning", "should")
    message = (
        f"None of the codings provided are in the value set {label(vs, name)}, and a coding {verb} come from this "
        "value set"
    )
    return (severity, "code-invalid", "X.c", message)


def cc(*coding: Any) -> dict[str, Any]:
    return {"coding": list(coding)}


RED = {"system": COLOUR, "code": "red"}
GREEN = {"system": COLOUR, "code": "green"}
BLUE = {"system": COLOUR, "code": "blue"}
SCT = {"system": SNOMED, "code": "22298006"}


@pytest.mark.parametrize(
    ("strength", "vs", "type_code", "item", "expected"),
    [
        # In the value set, anywhere among the codings: nothing to say.
        ("required", VS, "CodeableConcept", cc(RED), []),
        ("required", VS, "CodeableConcept", cc(BLUE, GREEN), []),
        ("required", VS, "Coding", RED, []),
        ("extensible", VS, "CodeableConcept", cc(BLUE, RED), []),
        # None in it: required is an error, extensible a warning, on a Coding as on a CodeableConcept.
        ("required", VS, "CodeableConcept", cc(BLUE), [none_of(VS, "Colours", "required")]),
        ("required", VS, "Coding", BLUE, [none_of(VS, "Colours", "required")]),
        (
            "required",
            VS,
            "CodeableConcept",
            cc(BLUE, {"system": PARTIAL, "code": "one"}),
            [none_of(VS, "Colours", "required")],
        ),
        ("extensible", VS, "CodeableConcept", cc(BLUE), [none_of(VS, "Colours", "extensible")]),
        ("extensible", VS, "Coding", BLUE, [none_of(VS, "Colours", "extensible")]),
        ("required", BARE, "Coding", GREEN, [none_of(BARE, None, "required")]),
        (
            "required",
            NAMED,
            "Coding",
            {"system": COLOUR, "code": "purple"},
            [none_of(NAMED, "NamedColours", "required")],
        ),
        # The code of another system, or without a system, is not the value set's code.
        ("required", VS, "Coding", {"system": PARTIAL, "code": "red"}, [none_of(VS, "Colours", "required")]),
        ("required", VS, "Coding", {"code": "red"}, [none_of(VS, "Colours", "required")]),
        # Preferred and example bindings are not checked; nor is a Quantity's.
        ("preferred", VS, "CodeableConcept", cc(BLUE), []),
        ("example", VS, "Coding", BLUE, []),
        ("required", VS, "Quantity", {"system": COLOUR, "code": "blue", "value": 1}, []),
        ("required", MISSING, "Quantity", {"system": COLOUR, "code": "blue", "value": 1}, []),
        ("preferred", MISSING, "Coding", BLUE, []),
        # A CodeableConcept without codings: an error only where a code is required.
        (
            "required",
            VS,
            "CodeableConcept",
            {"text": "a colour"},
            [
                (
                    "error",
                    "code-invalid",
                    "X.c",
                    f"No code provided, and a code is required from the value set 'Colours' ({VS})",
                )
            ],
        ),
        ("extensible", VS, "CodeableConcept", {"text": "a colour"}, []),
        # Codings of a wrong shape (the walk reports it) are none of the value set's, nor codes to check offline.
        ("required", VS, "CodeableConcept", cc({"system": COLOUR, "code": 5}), [none_of(VS, "Colours", "required")]),
        ("required", VS, "CodeableConcept", cc({"system": 5, "code": "red"}), [none_of(VS, "Colours", "required")]),
        ("required", OPEN, "Coding", {"system": ["x"], "code": "blue"}, [none_of(OPEN, "Open", "required")]),
        ("required", OPEN, "Coding", {"system": SNOMED, "code": 1}, [none_of(OPEN, "Open", "required")]),
        (
            "required",
            VS,
            "CodeableConcept",
            cc({"system": COLOUR, "code": 5}, BLUE),
            [none_of(VS, "Colours", "required")],
        ),
        # ...and the codings after one are looked at.
        ("required", VS, "CodeableConcept", cc({"system": COLOUR, "code": 5}, RED), []),
        # An open system, or an incomplete expansion, cannot be checked offline: information, naming the first code.
        (
            "required",
            OPEN,
            "CodeableConcept",
            cc(SCT, {"system": SNOMED, "code": "1"}),
            [
                (
                    "information",
                    "informational",
                    "X.c",
                    f"The code {SNOMED}#22298006 cannot be checked against 'Open' ({OPEN}) offline",
                )
            ],
        ),
        ("required", OPEN, "CodeableConcept", cc(SCT, RED), []),
        (
            "required",
            OPEN,
            "Coding",
            GREEN,
            [
                (
                    "information",
                    "informational",
                    "X.c",
                    f"The code {COLOUR}#green cannot be checked against 'Open' ({OPEN}) offline",
                )
            ],
        ),
        (
            "extensible",
            UNRESOLVED,
            "Coding",
            {"code": "x"},
            [
                (
                    "information",
                    "informational",
                    "X.c",
                    f"The code None#x cannot be checked against 'Unresolved' ({UNRESOLVED}) offline",
                )
            ],
        ),
        # A value set we do not hold: a warning, whatever the codes.
        (
            "required",
            MISSING,
            "CodeableConcept",
            cc(RED),
            [("warning", "not-found", "X.c", f"The value set {MISSING} is not known, so the codes were not checked")],
        ),
        (
            "extensible",
            MISSING,
            "CodeableConcept",
            {"text": "none"},
            [("warning", "not-found", "X.c", f"The value set {MISSING} is not known, so the codes were not checked")],
        ),
    ],
)
def test_a_coding_or_codeable_concept_against_its_binding(
    bindings: Bindings,
    strength: str,
    vs: str,
    type_code: str,
    item: dict[str, Any],
    expected: list[tuple[str, str, str, str]],
) -> None:
    run = Run()
    bindings.binding(item, type_code, node((strength, vs), type_code=type_code), TREE, "X.c", run)
    assert issues(run) == expected


def test_a_binding_given_overrides_the_elements(bindings: Bindings) -> None:
    run = Run()
    # The element's own binding is example (nothing checked): the one given is required.
    bindings.binding(cc(BLUE), "CodeableConcept", node(("example", NAMED)), TREE, "X.c", run, ("required", VS))
    assert issues(run) == [none_of(VS, "Colours", "required")]
    run = Run()
    bindings.binding(cc(BLUE), "CodeableConcept", node(("required", VS)), TREE, "X.c", run, ("preferred", VS))
    assert issues(run) == []


def additional(vs_shown: str, codes: str) -> tuple[str, str, str, str]:
    message = (
        f"None of the codings provided are in the value set {vs_shown} specified in an additional binding, and a "
        f"coding from this value set is required) (codes = {codes})"
    )
    return ("error", "code-invalid", "X.c", message)


@pytest.mark.parametrize(
    ("strength", "vs", "item", "expected"),
    [
        # Named with its version, as the HL7 validator names it; each coding shown, a missing system as null.
        ("required", VS, cc(BLUE, {"code": "x"}), [additional(f"'Colours' ({VS}|1.2)", f"{COLOUR}#blue, null#x")]),
        ("required", f"{VS}|1.2", cc(BLUE), [additional(f"'Colours' ({VS}|1.2)", f"{COLOUR}#blue")]),
        ("required", f"{VS}|1.0", cc(BLUE), [additional(f"'Colours' ({VS}|1.0)", f"{COLOUR}#blue")]),
        (
            "required",
            NAMED,
            cc({"system": COLOUR, "code": "x"}),
            [additional(f"'NamedColours' ({NAMED})", f"{COLOUR}#x")],
        ),
        ("required", BARE, cc(GREEN), [additional(f"'{BARE}'", f"{COLOUR}#green")]),
        ("required", VS, cc(RED), []),
        # An additional binding that is not required is worded as any other.
        ("extensible", VS, cc(BLUE), [none_of(VS, "Colours", "extensible")]),
    ],
)
def test_an_additional_binding_is_worded_as_the_hl7_validator_words_it(
    bindings: Bindings, strength: str, vs: str, item: dict[str, Any], expected: list[tuple[str, str, str, str]]
) -> None:
    run = Run()
    bindings.binding(item, "CodeableConcept", node(), TREE, "X.c", run, (strength, vs), additional=True)
    assert issues(run) == expected


# --- a coding against the code system we hold -----------------------------------------------------------------------


def wrong_display(display: str, code: str, valid: str) -> list[tuple[str, str, str, str]]:
    return [("error", "invalid", "X.c.display", f"Wrong Display Name '{display}' for {COLOUR}#{code}. {valid}")]


RED_CHOICES = "Valid display is one of 3 choices: 'Red', 'Rot' (de) or 'Reddish'"


@pytest.mark.parametrize(
    ("coding", "expected"),
    [
        ({"system": COLOUR, "code": "red"}, []),
        ({"system": COLOUR, "code": "red", "display": "Red"}, []),
        ({"system": COLOUR, "code": "red", "display": "RED"}, []),  # without case
        ({"system": COLOUR, "code": "red", "display": "rot"}, []),  # a designation, in any language
        ({"system": COLOUR, "code": "red", "display": "REDDISH"}, []),
        ({"system": COLOUR, "code": "red", "display": "Rouge"}, wrong_display("Rouge", "red", RED_CHOICES)),
        (
            {"system": COLOUR, "code": "green", "display": "Greenish"},
            wrong_display("Greenish", "green", "Valid display is 'Green'"),
        ),
        ({"system": COLOUR, "code": "green", "display": ""}, wrong_display("", "green", "Valid display is 'Green'")),
        ({"system": COLOUR, "code": "green", "display": 5}, []),  # not a string: the walk reports it
        ({"system": COLOUR, "code": "blue", "display": "Anything"}, []),  # the system gives no display
        (
            {"system": COLOUR, "code": "purple", "display": "Purple"},
            [("error", "code-invalid", "X.c", f"Unknown code 'purple' in the CodeSystem '{COLOUR}'")],
        ),
        (
            {"system": COLOUR, "code": "Red"},  # case-sensitive
            [("error", "code-invalid", "X.c", f"Unknown code 'Red' in the CodeSystem '{COLOUR}'")],
        ),
        # Systems we do not hold completely, or cannot hold, are not checked.
        ({"system": PARTIAL, "code": "two"}, []),
        ({"system": PARTIAL, "code": "one", "display": "Uno"}, []),
        ({"system": EMPTY, "code": "any"}, []),
        ({"system": "http://example.org/cs/unknown", "code": "any"}, []),
        ({"system": SNOMED, "code": "not-a-code", "display": "x"}, []),
        ({"system": LOINC, "code": "2-9"}, []),
        ({"system": LOINC, "code": "1-8", "display": "x"}, []),
        # Wrong shapes are the walk's to report.
        ({"code": "purple"}, []),
        ({"system": 5, "code": "purple"}, []),
        ({"system": COLOUR, "code": 5}, []),
        ({"system": COLOUR}, []),
    ],
)
def test_a_code_and_its_display_against_the_code_system(
    bindings: Bindings, coding: dict[str, Any], expected: list[tuple[str, str, str, str]]
) -> None:
    run = Run()
    bindings.known_code(coding, "X.c", run)
    assert issues(run) == expected


@pytest.mark.parametrize(
    ("element", "display", "expected"),
    [
        # The display or a designation the bound expansion gives the code (compared without case) is valid too.
        (node(("required", SHADES)), "crimson", []),
        (node(("example", SHADES)), "SCARLET", []),
        (node(additional=(SHADES,)), "Crimson", []),
        (node(("required", VS), (SHADES,)), "scarlet", []),
        # ...but only for that code: green's display in the value set is not red's.
        (node(("required", SHADES)), "Lime", wrong_display("Lime", "red", RED_CHOICES)),
        # A value set without one, or not held, gives no display of its own.
        (node(("required", VS)), "Crimson", wrong_display("Crimson", "red", RED_CHOICES)),
        (node(("required", MISSING)), "Crimson", wrong_display("Crimson", "red", RED_CHOICES)),
        (node(), "Crimson", wrong_display("Crimson", "red", RED_CHOICES)),
        (None, "Crimson", wrong_display("Crimson", "red", RED_CHOICES)),
    ],
)
def test_a_display_a_bound_value_set_gives_the_code(
    bindings: Bindings, element: ElementNode | None, display: str, expected: list[tuple[str, str, str, str]]
) -> None:
    run = Run()
    bindings.known_code({"system": COLOUR, "code": "red", "display": display}, "X.c", run, element)
    assert issues(run) == expected


def test_a_bound_value_set_names_only_its_own_codes(bindings: Bindings) -> None:
    # green is in SHADES (as Lime): its display there is valid for green, not for blue, which SHADES does not hold.
    assert bindings._bound_displays(node(("required", SHADES)), COLOUR, "green") == {"lime"}
    assert bindings._bound_displays(node(("required", SHADES)), COLOUR, "blue") == set()
    assert bindings._bound_displays(node(("required", SHADES)), PARTIAL, "red") == set()
    assert bindings._bound_displays(node(("required", VS), (SHADES,)), COLOUR, "red") == {"red", "crimson", "scarlet"}


# --- through the validator: base R4 bindings ------------------------------------------------------------------------

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CLINICAL_VS = "'Condition Clinical Status Codes' (http://hl7.org/fhir/ValueSet/condition-clinical|4.0.1)"


def coded(issues_: list[Issue]) -> list[tuple[str, str, str, str]]:
    """The issues of terminology (dom-6, the narrative warning every bare resource gets, left out)."""
    return [(i.severity, i.code, i.expression, i.message) for i in issues_ if not i.message.startswith("Constraint")]


def condition(clinical_status: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": clinical_status}


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (condition({"coding": [{"system": CLINICAL, "code": "active"}]}), []),
        # A verification status where the clinical status is required: an error, not a warning.
        (
            condition({"coding": [{"system": VERIFICATION, "code": "confirmed"}]}),
            [
                (
                    "error",
                    "code-invalid",
                    "Condition.clinicalStatus",
                    f"None of the codings provided are in the value set {CLINICAL_VS}, and a coding must come from "
                    "this value set",
                )
            ],
        ),
        (
            condition({"text": "active"}),
            [
                (
                    "error",
                    "code-invalid",
                    "Condition.clinicalStatus",
                    f"No code provided, and a code is required from the value set {CLINICAL_VS}",
                )
            ],
        ),
        (
            condition({"coding": [{"system": CLINICAL, "code": "active", "display": "Bogus"}]}),
            [
                (
                    "error",
                    "invalid",
                    "Condition.clinicalStatus.coding[0].display",
                    f"Wrong Display Name 'Bogus' for {CLINICAL}#active. Valid display is 'Active'",
                )
            ],
        ),
        # Required on a code: the two errors of the reference validator.
        (
            {"resourceType": "Patient", "gender": "f"},
            [
                (
                    "error",
                    "code-invalid",
                    "Patient.gender",
                    "The System URI could not be determined for the code 'f' in the ValueSet "
                    "'http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1'",
                ),
                (
                    "error",
                    "code-invalid",
                    "Patient.gender",
                    "The value provided ('f') was not found in the value set 'AdministrativeGender' "
                    "(http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1), and a code is required from this "
                    "value set  (error message = The System URI could not be determined for the code 'f' in the "
                    "ValueSet 'http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1'; The provided code '#f' was "
                    "not found in the value set 'http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1')",
                ),
            ],
        ),
        ({"resourceType": "Patient", "gender": "female"}, []),
        # Extensible on a Coding and on a CodeableConcept: a warning.
        (
            {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://example.org/x", "code": "zz"},
            },
            [
                (
                    "warning",
                    "code-invalid",
                    "Encounter.class",
                    "None of the codings provided are in the value set 'V3 Value SetActEncounterCode' "
                    "(http://terminology.hl7.org/ValueSet/v3-ActEncounterCode), and a coding should come from this "
                    "value set",
                )
            ],
        ),
        (
            {
                "resourceType": "Patient",
                "maritalStatus": {"coding": [{"system": "http://example.org/x", "code": "zz"}]},
            },
            [
                (
                    "warning",
                    "code-invalid",
                    "Patient.maritalStatus",
                    "None of the codings provided are in the value set 'MaritalStatus' "
                    "(http://hl7.org/fhir/ValueSet/marital-status), and a coding should come from this value set",
                )
            ],
        ),
        # Preferred (Observation.category) and example (Observation.code): not checked.
        (
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://example.org/x", "code": "zz"}]},
                "category": [{"coding": [{"system": "http://example.org/x", "code": "zz"}]}],
            },
            [],
        ),
    ],
)
def test_base_bindings_by_strength(
    validator: Validator, resource: dict[str, Any], expected: list[tuple[str, str, str, str]]
) -> None:
    assert coded(validator.validate(resource)) == expected
