"""The answers of a QuestionnaireResponse item against its Questionnaire item (validation.qanswers): each rule
fires on a small hand-written item and answer, and stays quiet on a conforming one."""

from __future__ import annotations

from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.numbers import FhirDecimal
from casebridge.validation.issues import Run
from casebridge.validation.qanswers import check_answers
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Validator

EXT = "http://hl7.org/fhir/StructureDefinition/"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
UCUM = "http://unitsofmeasure.org"
ITEM = "QuestionnaireResponse.item[0]"


@pytest.fixture(scope="module")
def validator() -> Validator:
    return load_validator(Settings())


def ext(url: str, key: str, value: Any) -> dict[str, Any]:
    return {"url": url, key: value}


def errors(validator: Validator, item: dict[str, Any], answers: list[Any]) -> list[tuple[str, str]]:
    run = Run()
    check_answers(validator, run, {"linkId": "q1", **item}, answers, ITEM)
    return [(i.expression, i.message) for i in run.issues if i.severity in ("error", "fatal")]


def at(answer: int, value_type: str | None = None) -> str:
    return f"{ITEM}.answer[{answer}]" + (f".value.ofType({value_type})" if value_type else "")


# --- the answer's type against the item's type ------------------------------------------------------------


@pytest.mark.parametrize(
    ("item_type", "expected"),
    [("boolean", "boolean"), ("date", "date"), ("text", "string"), ("url", "uri"), ("quantity", "Quantity")],
)
def test_an_answer_of_another_type_is_an_error(validator: Validator, item_type: str, expected: str) -> None:
    found = errors(validator, {"type": item_type}, [{"valueCoding": {"code": "x"}}])
    assert found == [(at(0, "Coding"), f"Answer value must be of the type {expected} not Coding")]


def test_a_choice_takes_a_coding_or_a_string_but_not_a_boolean(validator: Validator) -> None:
    item = {"type": "choice"}
    assert errors(validator, item, [{"valueString": "free"}, {"valueCoding": {"code": "x"}}]) == []
    [(where, message)] = errors(validator, item, [{"valueBoolean": True}])
    assert where == at(0, "boolean") and message.startswith("Answer value must be one of the 5 types Coding")


def test_answers_of_the_right_type_and_unknown_properties_are_left_alone(validator: Validator) -> None:
    answers = [{"valueDecimal": 1.5}, {"valueCode": "x"}]  # valueCode is not an answer type: the walk reports it
    assert errors(validator, {"type": "decimal", "repeats": True}, answers) == []
    assert errors(validator, {"type": "group"}, [{"valueString": "x"}]) == []  # answers to groups: the walk's


# --- answer options -------------------------------------------------------------------------------------


def test_a_coding_not_among_the_options_is_an_error(validator: Validator) -> None:
    options = [{"valueCoding": {"system": "http://example.org", "code": c}} for c in ("c1", "c2")]
    item = {"type": "choice", "repeats": True, "answerOption": options}
    ok = [{"valueCoding": {"system": "http://example.org", "code": "c2", "display": "Code 2"}}]
    assert errors(validator, item, ok) == []
    bad = [*ok, {"valueCoding": {"system": "http://example.org", "code": "c3"}}]
    assert errors(validator, item, bad) == [
        (at(1), "The code http://example.org::c3 is not in the set of permitted values")
    ]


def test_an_exclusive_option_must_be_the_only_answer(validator: Validator) -> None:
    exclusive = {"extension": [ext(EXT + "questionnaire-optionExclusive", "valueBoolean", True)]}
    options = [
        {"valueCoding": {"system": "http://example.org", "code": "c1"}},
        {**exclusive, "valueCoding": {"system": "http://example.org", "code": "none"}},
    ]
    item = {"type": "choice", "repeats": True, "answerOption": options}
    alone = [{"valueCoding": {"system": "http://example.org", "code": "none"}}]
    assert errors(validator, item, alone) == []
    both = [{"valueCoding": {"system": "http://example.org", "code": "c1"}}, *alone]
    [(where, message)] = errors(validator, item, both)
    assert where == at(1) and "http://example.org#none is an exclusive option" in message


@pytest.mark.parametrize(
    ("item_type", "key", "options", "good", "bad"),
    [
        ("integer", "valueInteger", [1, 2], 2, 3),
        ("date", "valueDate", ["2022-01-01", "2022-02-01"], "2022-02-01", "2022-03-01"),
        ("time", "valueTime", ["10:00:00"], "10:00:00", "11:00:00"),
        ("string", "valueString", ["str1", "str2"], "str1", "str3"),
    ],
)
def test_a_value_not_among_the_options_is_an_error(
    validator: Validator, item_type: str, key: str, options: list[Any], good: Any, bad: Any
) -> None:
    item = {"type": item_type, "answerOption": [{key: o} for o in options]}
    assert errors(validator, item, [{key: good}]) == []
    assert errors(validator, item, [{key: bad}]) == [
        (at(0, item_type), f"The {item_type} {bad} is not in the set of permitted values")
    ]


def test_a_string_answer_to_a_choice_of_codings(validator: Validator) -> None:
    options = [{"valueCoding": {"code": "B", "display": "B"}}]
    closed = errors(validator, {"type": "choice", "answerOption": options}, [{"valueString": "Open answer"}])
    assert closed == [(at(0), "Option list has no option values of type string")]
    # An open choice takes free text besides its options.
    assert errors(validator, {"type": "open-choice", "answerOption": options}, [{"valueString": "Open"}]) == []


# --- value sets -------------------------------------------------------------------------------------------


def test_a_coding_not_in_the_answer_value_set_is_an_error(validator: Validator) -> None:
    item = {"type": "choice", "answerValueSet": "http://hl7.org/fhir/ValueSet/item-type"}
    good = {"valueCoding": {"system": "http://hl7.org/fhir/item-type", "code": "boolean", "display": "Boolean"}}
    assert errors(validator, item, [good]) == []
    bad = {"valueCoding": {"system": "http://hl7.org/fhir/item-type", "code": "nonsense"}}
    [(where, message)] = errors(validator, item, [bad])
    assert where == at(0) and message.startswith("The code 'nonsense' in the system 'http://hl7.org/fhir/item-type'")


def test_a_wrong_display_of_a_code_in_the_answer_value_set(validator: Validator) -> None:
    item = {"type": "open-choice", "answerValueSet": "http://hl7.org/fhir/ValueSet/item-type"}
    answer = {"valueCoding": {"system": "http://hl7.org/fhir/item-type", "code": "string", "display": "Australia"}}
    assert [w for w, _ in errors(validator, item, [answer])] == [at(0, "Coding") + ".display", at(0)]


def test_an_unknown_answer_value_set_or_an_open_system_is_not_an_error(validator: Validator) -> None:
    unknown = {"type": "choice", "answerValueSet": "http://example.org/no-such-value-set"}
    assert errors(validator, unknown, [{"valueCoding": {"system": "urn:iso:std:iso:3166", "code": "AU"}}]) == []
    open_system = {"type": "choice", "answerValueSet": "http://hl7.org/fhir/ValueSet/jurisdiction"}
    assert errors(validator, open_system, [{"valueCoding": {"system": "urn:iso:std:iso:3166", "code": "AU"}}]) == []


# --- limits ------------------------------------------------------------------------------------------------


def test_decimal_limits_and_decimal_places(validator: Validator) -> None:
    item = {
        "type": "decimal",
        "extension": [
            ext(EXT + "minValue", "valueDecimal", 2),
            ext(EXT + "maxValue", "valueDecimal", 20),
            ext(EXT + "maxDecimalPlaces", "valueInteger", 2),
        ],
    }
    assert errors(validator, item, [{"valueDecimal": 5.25}]) == []
    assert errors(validator, item, [{"valueDecimal": 1.5}]) == [
        (at(0, "decimal"), "The value 1.5 is less than the allowed minimum of 2")
    ]
    assert errors(validator, item, [{"valueDecimal": FhirDecimal("5.120")}]) == [
        (at(0, "decimal"), "The value 5.120 has too many decimal places (limit = 2)")
    ]


def test_integer_limits(validator: Validator) -> None:
    item = {"type": "integer", "extension": [ext(EXT + "maxValue", "valueInteger", 10)]}
    assert errors(validator, item, [{"valueInteger": 10}]) == []
    assert errors(validator, item, [{"valueInteger": 11}]) == [
        (at(0, "integer"), "The value 11 is greater than the allowed maximum of 10")
    ]


def test_date_and_date_time_limits_compare_from_the_first_instant(validator: Validator) -> None:
    item = {
        "type": "dateTime",
        "repeats": True,
        "extension": [
            ext(EXT + "minValue", "valueDateTime", "2020"),
            ext(EXT + "maxValue", "valueDateTime", "2022-06"),
        ],
    }
    inside = [{"valueDateTime": v} for v in ("2020", "2021-03-04T10:00:00Z", "2022-06")]
    assert errors(validator, item, inside) == []
    outside = [{"valueDateTime": v} for v in ("1998", "2022-06-30")]
    assert errors(validator, item, outside) == [
        (at(0, "dateTime"), "The value 1998 is less than the allowed minimum of 2020"),
        (at(1, "dateTime"), "The value 2022-06-30 is greater than the allowed maximum of 2022-06"),
    ]


# --- strings -----------------------------------------------------------------------------------------------


def test_string_lengths(validator: Validator) -> None:
    item = {"type": "string", "maxLength": 5, "extension": [ext(EXT + "minLength", "valueInteger", 3)]}
    assert errors(validator, item, [{"valueString": "abcd"}]) == []
    assert errors(validator, item, [{"valueString": "ab"}, {"valueString": "abcdef"}]) == [
        (at(0, "string"), "The answer 'ab' is shorter then the required minimum length of 3"),
        (at(1, "string"), "The answer 'abcdef' is longer then the allowed maximum length of 5"),
    ]


def test_a_string_must_match_the_regex(validator: Validator) -> None:
    item = {"type": "string", "extension": [ext(EXT + "regex", "valueString", r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]}
    assert errors(validator, item, [{"valueString": "a@test.com.au"}]) == []
    [(where, message)] = errors(validator, item, [{"valueString": "a@@test.com.au"}])
    assert where == at(0, "string") and "does not conform" in message


def test_a_regex_that_backtracks_forever_is_cut_short(validator: Validator) -> None:
    item = {"type": "string", "extension": [ext(EXT + "regex", "valueString", r"^(a+)+\1$")]}
    run = Run()
    check_answers(validator, run, {"linkId": "q1", **item}, [{"valueString": "a" * 40 + "!"}], ITEM)
    assert all(i.severity != "fatal" for i in run.issues)


def test_a_line_break_is_a_warning_in_a_string_but_not_in_a_text(validator: Validator) -> None:
    run = Run()
    check_answers(validator, run, {"linkId": "q1", "type": "string"}, [{"valueString": "a\nb"}], ITEM)
    check_answers(validator, run, {"linkId": "q2", "type": "text"}, [{"valueString": "a\nb"}], "X")
    assert [(i.severity, i.expression) for i in run.issues] == [("warning", at(0, "string"))]


# --- attachments -------------------------------------------------------------------------------------------

DATA = "YWJjZGVm"  # six bytes


def test_attachment_mime_type_and_size(validator: Validator) -> None:
    item = {
        "type": "attachment",
        "extension": [ext(EXT + "mimeType", "valueCode", "image/gif"), ext(EXT + "maxSize", "valueDecimal", 4)],
    }
    small = {"valueAttachment": {"contentType": "image/gif", "data": "YWJj", "size": 3}}
    assert errors(validator, item, [small]) == []
    big = {"valueAttachment": {"contentType": "application/pdf", "data": DATA, "size": 6}}
    assert errors(validator, item, [big]) == [
        (at(0), "The mime type application/pdf is not valid for this answer (allowed = image/gif)"),
        (at(0), "The attachment is too large (allowed = 4, found = 6)"),
    ]


def test_a_stated_attachment_size_must_be_the_size_of_its_data(validator: Validator) -> None:
    answer = {"valueAttachment": {"data": DATA, "size": 5000}}
    assert errors(validator, {"type": "attachment"}, [answer]) == [
        (at(0, "Attachment"), "Stated Attachment Size 5,000 does not match actual attachment size 6")
    ]


# --- quantities --------------------------------------------------------------------------------------------


def quantity(value: float, code: str | None = None, unit: str | None = None, system: str | None = UCUM) -> Any:
    q: dict[str, Any] = {"value": value}
    for k, v in (("unit", unit), ("system", system), ("code", code)):
        if v is not None:
            q[k] = v
    return q


def test_quantity_limits_compare_through_ucum(validator: Validator) -> None:
    item = {
        "type": "quantity",
        "extension": [
            ext(SDC + "sdc-questionnaire-minQuantity", "valueQuantity", quantity(1, "km", "km")),
            ext(SDC + "sdc-questionnaire-maxQuantity", "valueQuantity", quantity(5, "km", "km")),
        ],
    }
    assert errors(validator, item, [{"valueQuantity": quantity(2000, "m", "m")}]) == []
    assert errors(validator, item, [{"valueQuantity": quantity(10000, "m", "m")}]) == [
        (at(0, "Quantity"), "The quantity 10000 m (UCUM#m) is greater than the allowed maximum of 5 km (UCUM#km)")
    ]


def test_quantities_without_formal_units_cannot_be_compared(validator: Validator) -> None:
    limit = quantity(5, unit="Kg", system=None)
    item = {"type": "quantity", "extension": [ext(SDC + "sdc-questionnaire-maxQuantity", "valueQuantity", limit)]}
    [(where, message)] = errors(validator, item, [{"valueQuantity": quantity(1, unit="Kg", system=None)}])
    assert where == at(0, "Quantity") and message.endswith("because no formal units are specified")


def test_quantity_unit_options(validator: Validator) -> None:
    options = [
        ext(EXT + "questionnaire-unitOption", "valueCoding", {"system": UCUM, "code": "km", "display": "kilometer"}),
        ext(EXT + "questionnaire-unitOption", "valueCoding", {"system": UCUM, "code": "m"}),
    ]
    item = {"type": "quantity", "repeats": True, "extension": options}
    good = [{"valueQuantity": quantity(1, "km", "kilometer")}, {"valueQuantity": quantity(1, "m")}]
    assert errors(validator, item, good) == []
    assert errors(validator, item, [{"valueQuantity": quantity(10, "kg", "Kg")}]) == [
        (
            at(0, "Quantity"),
            "The value 10 Kg (UCUM#kg) has a unit that is not valid (allowed = kilometer (UCUM#km),(UCUM#m))",
        )
    ]


def test_quantity_unit_value_set(validator: Validator) -> None:
    vs = "http://hl7.org/fhir/ValueSet/jurisdiction"
    item = {
        "type": "quantity",
        "repeats": True,
        "extension": [ext(EXT + "questionnaire-unitValueSet", "valueCanonical", vs)],
    }
    assert errors(validator, item, [{"valueQuantity": quantity(10, "AU", system="urn:iso:std:iso:3166")}]) == []
    assert errors(validator, item, [{"valueQuantity": quantity(10, "km", "kilometer")}]) == [
        (at(0, "Quantity"), f"The value 10 kilometer (UCUM#km) has a unit that is not in the unit value set '{vs}'")
    ]


# --- references --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference", ["Patient/example", "https://example.org/fhir/Patient/1/_history/2", "urn:uuid:0c3151bd-1cbf", "#p1"]
)
def test_valid_references_pass(validator: Validator, reference: str) -> None:
    assert errors(validator, {"type": "reference"}, [{"valueReference": {"reference": reference}}]) == []


def test_a_reference_to_an_unknown_resource_type_or_with_a_bad_syntax(validator: Validator) -> None:
    answer = [{"valueReference": {"reference": "https://example.org/Chicken/example"}}]
    assert errors(validator, {"type": "reference"}, answer) == [
        (
            at(0, "Reference"),
            "The resource type Chicken in the reference https://example.org/Chicken/example is not valid",
        )
    ]
    found = errors(validator, {"type": "reference"}, [{"valueReference": {"reference": "ht tp://x.org/Patient/1"}}])
    assert found == [(at(0, "Reference"), "The reference 'ht tp://x.org/Patient/1' is not a valid reference")]


def test_a_reference_must_be_to_an_allowed_resource_type(validator: Validator) -> None:
    allowed = [ext(EXT + "questionnaire-referenceResource", "valueCode", t) for t in ("Patient", "Practitioner")]
    item = {"type": "reference", "repeats": True, "extension": allowed}
    assert errors(validator, item, [{"valueReference": {"reference": "Practitioner/1"}}]) == []
    assert errors(validator, item, [{"valueReference": {"reference": "Organization/example"}}]) == [
        (
            at(0, "Reference"),
            "The resource type 'Organization' in the reference Organization/example is not allowed "
            "(allowed = Patient,Practitioner)",
        )
    ]


def test_a_mime_type_family_admits_its_members(validator: Validator) -> None:
    item = {"type": "attachment", "extension": [ext(EXT + "mimeType", "valueCode", "image/*")]}
    assert errors(validator, item, [{"valueAttachment": {"contentType": "image/png; q=1"}}]) == []
    [(where, _)] = errors(validator, item, [{"valueAttachment": {"contentType": "imagery/png"}}])
    assert where == at(0)


def test_an_open_choice_takes_a_display_only_coding_as_free_text(validator: Validator) -> None:
    options = [{"valueCoding": {"system": "http://example.org", "code": "c1"}}]
    answer = [{"valueCoding": {"display": "something else"}}]
    assert errors(validator, {"type": "open-choice", "answerOption": options}, answer) == []
    assert len(errors(validator, {"type": "choice", "answerOption": options}, answer)) == 1
