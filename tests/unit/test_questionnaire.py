"""A QuestionnaireResponse against its Questionnaire, and a Questionnaire's enableWhen rules (validation.questionnaire):
each rule fires on a small hand-written response and stays quiet on a conforming one."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.validation.issues import Issue
from casebridge.validation.service import load_index
from casebridge.validation.validator import Validator

QR = "QuestionnaireResponse"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
EXT = "http://hl7.org/fhir/StructureDefinition/"
LOADED_URL = "http://example.com/fhir/Questionnaire/loaded"
LOADED = {
    "resourceType": "Questionnaire",
    "id": "loaded",
    "url": LOADED_URL,
    "version": "2.0",
    "status": "active",
    "effectivePeriod": {"start": "2020-01-01", "end": "2020-12-31"},
    "item": [{"linkId": "a", "type": "string", "required": True}],
}


@pytest.fixture(scope="module")
def validator() -> Validator:
    index = load_index(Settings())
    index.add_resource(copy.deepcopy(LOADED), "test_questionnaire.py")
    return Validator(index)


def response(q_items: list[dict[str, Any]], items: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    """A response with its Questionnaire contained (``#q``)."""
    questionnaire = {"resourceType": "Questionnaire", "id": "q", "status": "active", "item": q_items}
    out: dict[str, Any] = {"resourceType": QR, "status": status, "questionnaire": "#q", "contained": [questionnaire]}
    if items:
        out["item"] = items
    return out


def issues(validator: Validator, resource: dict[str, Any], *severities: str) -> list[tuple[str, str]]:
    wanted = severities or ("error", "fatal")
    found: list[Issue] = validator.validate(resource)
    return [(i.expression, i.message) for i in found if i.severity in wanted]


def answered(link: str, *values: Any, key: str = "valueString") -> dict[str, Any]:
    return {"linkId": link, "answer": [{key: v} for v in values]}


STRING = {"linkId": "a", "type": "string"}
REQUIRED = {"linkId": "a", "type": "string", "required": True}


# --- finding the Questionnaire -----------------------------------------------------------------------------------


def test_a_conforming_response_has_no_errors(validator: Validator) -> None:
    assert issues(validator, response([REQUIRED], [answered("a", "x")])) == []


def test_a_loaded_questionnaire_is_found_by_canonical_and_version(validator: Validator) -> None:
    qr = {"resourceType": QR, "status": "completed", "questionnaire": f"{LOADED_URL}|2.0", "authored": "2020-06-01"}
    assert issues(validator, qr) == [(QR, "No response answer found for required item 'a'")]
    qr["item"] = [answered("a", "x")]
    assert issues(validator, qr, "error", "warning") == [
        (QR, "Constraint failed: dom-6: 'A resource should have narrative for robust management'")
    ]


def test_authored_outside_the_questionnaire_period_is_a_warning(validator: Validator) -> None:
    qr = {"resourceType": QR, "status": "completed", "questionnaire": LOADED_URL, "item": [answered("a", "x")]}
    qr["authored"] = "2021-01-05"
    found = issues(validator, qr, "warning")
    assert (
        f"{QR}.authored",
        "The authored date '2021-01-05' is after the end of the permitted period defined in the Questionnaire "
        "('2020-12-31')",
    ) in found
    assert issues(validator, qr) == []


def test_a_questionnaire_in_the_bundle_is_found(validator: Validator) -> None:
    questionnaire = {"resourceType": "Questionnaire", "id": "b", "url": "urn:test:q", "status": "active"}
    questionnaire["item"] = [REQUIRED]
    qr = {"resourceType": QR, "id": "r", "status": "completed", "questionnaire": "urn:test:q"}
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "http://example.com/fhir/Questionnaire/b", "resource": questionnaire},
            {"fullUrl": "http://example.com/fhir/QuestionnaireResponse/r", "resource": qr},
        ],
    }
    assert issues(validator, bundle) == [
        ("Bundle.entry[1].resource/*QuestionnaireResponse/r*/", "No response answer found for required item 'a'")
    ]


def test_an_unknown_questionnaire_is_a_warning_not_an_error(validator: Validator) -> None:
    qr = {"resourceType": QR, "status": "completed", "questionnaire": "http://acme.org/Questionnaire/none"}
    qr["item"] = [answered("zz", "x")]
    assert issues(validator, qr) == []
    message = (
        "The questionnaire 'http://acme.org/Questionnaire/none' could not be resolved, so no validation can be "
        "performed against the base questionnaire"
    )
    assert (QR, message) in issues(validator, qr, "warning")
    # example.org canonicals are examples: never at hand, so only information.
    qr["questionnaire"] = "http://example.org/Questionnaire/none"
    unresolved = [m for _, m in issues(validator, qr, "error", "warning") if "could not be resolved" in m]
    assert unresolved == []
    assert any("could not be resolved" in m for _, m in issues(validator, qr, "information"))


# --- linkIds and structure ---------------------------------------------------------------------------------------


def test_a_linkid_not_in_the_questionnaire_is_an_error_on_the_parent(validator: Validator) -> None:
    assert issues(validator, response([STRING], [answered("b", "x")])) == [
        (QR, "LinkId 'b' not found in questionnaire")
    ]
    group = {"linkId": "g", "type": "group", "item": [STRING]}
    qr = response([group], [{"linkId": "g", "item": [answered("c", "x")]}])
    assert issues(validator, qr) == [(f"{QR}.item[0]", "LinkId 'c' not found in questionnaire")]


def test_an_item_at_the_wrong_level_is_an_error(validator: Validator) -> None:
    group = {"linkId": "g", "type": "group", "item": [STRING]}
    found = issues(validator, response([group], [answered("a", "x")]))
    assert found == [(QR, "Structural Error: item with linkid a is in the wrong place")]


def test_items_out_of_order_are_an_error(validator: Validator) -> None:
    q_items = [STRING, {"linkId": "b", "type": "string"}]
    assert issues(validator, response(q_items, [answered("a", "x"), answered("b", "y")])) == []
    found = issues(validator, response(q_items, [answered("b", "y"), answered("a", "x")]))
    assert found == [(QR, "Structural Error: items are out of order")]


def test_display_and_group_items_take_no_answers(validator: Validator) -> None:
    display = {"linkId": "d", "type": "display", "text": "Read this"}
    group = {"linkId": "g", "type": "group", "item": [STRING]}
    assert issues(validator, response([display], [answered("d", "x")])) == [
        (f"{QR}.item[0]", "Items of type 'display' cannot have answers")
    ]
    assert issues(validator, response([group], [answered("g", "x")])) == [
        (f"{QR}.item[0]", "Items of type group should not have answers")
    ]
    assert issues(validator, response([display, group], [{"linkId": "g", "item": [answered("a", "x")]}])) == []


def test_an_abstract_item_type_takes_no_answers(validator: Validator) -> None:
    q_items = [{"linkId": "a", "type": "question"}]
    found = issues(validator, response(q_items, [answered("a", "x")]))
    assert (f"{QR}.item[0]", "Items of type question should not have answers") in found


def test_a_question_holds_nested_items_under_its_answers(validator: Validator) -> None:
    q_items = [{"linkId": "a", "type": "boolean", "item": [{"linkId": "b", "type": "string"}]}]
    nested = {"linkId": "a", "answer": [{"valueBoolean": True, "item": [answered("b", "x")]}]}
    assert issues(validator, response(q_items, [nested])) == []
    outside = {"linkId": "a", "answer": [{"valueBoolean": True}], "item": [answered("b", "x")]}
    found = issues(validator, response(q_items, [outside]))
    assert (
        f"{QR}.item[0]",
        "Items not of type group should not have items outside answers (use answer.item not .item)",
    ) in found


def test_the_text_of_an_item_matches_the_questionnaire(validator: Validator) -> None:
    q_items = [{**STRING, "text": "Name?"}]
    assert issues(validator, response(q_items, [{**answered("a", "x"), "text": "Name?"}])) == []
    found = issues(validator, response(q_items, [{**answered("a", "x"), "text": "Other"}]))
    assert found == [(f"{QR}.item[0]", "If text exists, it must match the questionnaire definition for linkId a")]


# --- repeats, required, min and max occurs -----------------------------------------------------------------------


def test_a_question_that_does_not_repeat_has_one_answer(validator: Validator) -> None:
    assert issues(validator, response([STRING], [answered("a", "x", "y")])) == [
        (f"{QR}.item[0]", "Only one response answer item with this linkId allowed")
    ]
    assert issues(validator, response([{**STRING, "repeats": True}], [answered("a", "x", "y")])) == []


def test_an_item_that_does_not_repeat_occurs_once(validator: Validator) -> None:
    group = {"linkId": "g", "type": "group", "item": [STRING]}
    two = [{"linkId": "g", "item": [answered("a", "x")]}, {"linkId": "g", "item": [answered("a", "y")]}]
    assert issues(validator, response([group], two)) == [(QR, "Only one response item with this linkId allowed - g")]
    assert issues(validator, response([{**group, "repeats": True}], two)) == []


def test_required_items_are_answered_in_a_completed_response(validator: Validator) -> None:
    assert issues(validator, response([REQUIRED], [])) == [(QR, "No response answer found for required item 'a'")]
    assert issues(validator, response([REQUIRED], [{"linkId": "a"}])) == [
        (f"{QR}.item[0]", "No response answer found for required item 'a'")
    ]
    # In progress: required items may still be missing (a warning).
    in_progress = response([REQUIRED], [], status="in-progress")
    assert issues(validator, in_progress) == []
    assert (QR, "No response answer found for required item 'a'") in issues(validator, in_progress, "warning")


def test_required_items_inside_groups_and_answers(validator: Validator) -> None:
    group = {"linkId": "g", "type": "group", "item": [REQUIRED, {"linkId": "b", "type": "string"}]}
    assert issues(validator, response([group], [{"linkId": "g", "item": [answered("b", "x")]}])) == [
        (f"{QR}.item[0]", "No response answer found for required item 'a'")
    ]
    question = {"linkId": "q", "type": "boolean", "item": [REQUIRED]}
    found = issues(validator, response([question], [answered("q", True, key="valueBoolean")]))
    assert found == [(f"{QR}.item[0].answer[0]", "No response answer found for required item 'a'")]


def test_a_required_group_has_sub_items(validator: Validator) -> None:
    group = {"linkId": "g", "type": "group", "required": True, "item": [STRING]}
    assert issues(validator, response([group], [{"linkId": "g"}])) == [
        (f"{QR}.item[0]", "No sub-items found for required group")
    ]
    assert issues(validator, response([group], [])) == [(QR, "No response answer found for required item 'g'")]
    assert issues(validator, response([group], [{"linkId": "g", "item": [answered("a", "x")]}])) == []


def test_min_and_max_occurs(validator: Validator) -> None:
    def occurs(name: str, n: int) -> dict[str, Any]:
        return {"url": f"{EXT}questionnaire-{name}", "valueInteger": n}

    item = {**STRING, "repeats": True, "extension": [occurs("minOccurs", 2), occurs("maxOccurs", 3)]}
    assert issues(validator, response([item], [answered("a", "x", "y")])) == []
    assert issues(validator, response([item], [answered("a", "x", "y", "z")])) == []
    assert issues(validator, response([item], [answered("a", "w", "x", "y", "z")])) == [
        (f"{QR}.item[0]", "The maximum number of answers is 3 but this has 4 answers")
    ]
    assert issues(validator, response([item], [answered("a", "x")])) == [
        (f"{QR}.item[0]", "The minimum number of answers is 2 but this has 1 answers")
    ]


# --- enableWhen --------------------------------------------------------------------------------------------------

CONDITION = {"linkId": "c", "type": "boolean"}


def dependent(*conditions: dict[str, Any], behavior: str | None = None, required: bool = True) -> dict[str, Any]:
    item: dict[str, Any] = {"linkId": "d", "type": "string", "required": required, "enableWhen": list(conditions)}
    if behavior:
        item["enableBehavior"] = behavior
    return item


def when(question: str, operator: str, key: str, value: Any) -> dict[str, Any]:
    return {"question": question, "operator": operator, key: value}


NOT_ENABLED = (f"{QR}.item[1]", "Item has answer, even though it is not enabled (item id = 'd')")


def test_an_answer_to_an_item_that_is_not_enabled_is_an_error(validator: Validator) -> None:
    q_items = [CONDITION, dependent(when("c", "=", "answerBoolean", True))]
    no = answered("c", False, key="valueBoolean")
    yes = answered("c", True, key="valueBoolean")
    assert issues(validator, response(q_items, [no, answered("d", "x")])) == [NOT_ENABLED]
    assert issues(validator, response(q_items, [yes, answered("d", "x")])) == []
    # Not enabled, so not required.
    assert issues(validator, response(q_items, [no])) == []
    assert issues(validator, response(q_items, [yes])) == [(QR, "No response answer found for required item 'd'")]


def test_enable_when_operators(validator: Validator) -> None:
    number = {"linkId": "c", "type": "integer"}

    def enabled(operator: str, key: str, expected: Any, *given: Any, answer_key: str = "valueInteger") -> bool:
        q_items = [{**number, "repeats": True}, dependent(when("c", operator, key, expected), required=False)]
        items = [answered("c", *given, key=answer_key)] if given else []
        found = issues(validator, response(q_items, [*items, answered("d", "x")]))
        return not any("not enabled" in m for _, m in found)

    assert enabled(">", "answerInteger", 3, 5)
    assert not enabled(">", "answerInteger", 3, 3)
    assert enabled(">=", "answerInteger", 3, 3)
    assert enabled("<", "answerDecimal", 3.5, 3)
    assert not enabled("<=", "answerInteger", 3, 4)
    assert enabled("!=", "answerInteger", 3, 4)
    assert not enabled("!=", "answerInteger", 3, 3, 4)  # no answer may equal it
    assert enabled("exists", "answerBoolean", True, 1)
    assert not enabled("exists", "answerBoolean", False, 1)
    assert enabled("exists", "answerBoolean", False)


def test_enable_when_codings(validator: Validator) -> None:
    choice = {"linkId": "c", "type": "choice"}
    coding = {"system": "http://example.com/cs", "code": "y"}
    q_items = [choice, dependent(when("c", "=", "answerCoding", coding))]
    same = answered("c", {**coding, "display": "Yes"}, key="valueCoding")
    other = answered("c", {"system": "http://example.com/other", "code": "y"}, key="valueCoding")
    assert not any("not enabled" in m for _, m in issues(validator, response(q_items, [same, answered("d", "x")])))
    assert NOT_ENABLED in issues(validator, response(q_items, [other, answered("d", "x")]))


def test_enable_behavior_all_and_any(validator: Validator) -> None:
    c1, c2 = {"linkId": "c1", "type": "boolean"}, {"linkId": "c2", "type": "boolean"}
    conditions = (when("c1", "=", "answerBoolean", True), when("c2", "=", "answerBoolean", True))
    items = [answered("c1", True, key="valueBoolean"), answered("c2", False, key="valueBoolean")]
    dependent_at = (f"{QR}.item[2]", "Item has answer, even though it is not enabled (item id = 'd')")
    all_of = response([c1, c2, dependent(*conditions, behavior="all")], [*items, answered("d", "x")])
    any_of = response([c1, c2, dependent(*conditions, behavior="any")], [*items, answered("d", "x")])
    assert dependent_at in issues(validator, all_of)
    assert issues(validator, any_of) == []


def test_enable_when_looks_in_the_same_repetition_of_a_group(validator: Validator) -> None:
    group = {"linkId": "g", "type": "group", "repeats": True}
    group["item"] = [CONDITION, dependent(when("c", "=", "answerBoolean", True), required=False)]
    first = {"linkId": "g", "item": [answered("c", True, key="valueBoolean"), answered("d", "x")]}
    second = {"linkId": "g", "item": [answered("c", False, key="valueBoolean"), answered("d", "y")]}
    assert issues(validator, response([group], [first, second])) == [
        (f"{QR}.item[1].item[1]", "Item has answer, even though it is not enabled (item id = 'd')")
    ]


def test_an_enable_when_expression(validator: Validator) -> None:
    expression = {"language": "text/fhirpath", "expression": "%resource.item.where(linkId='c').answer.value = true"}
    item = {"linkId": "d", "type": "string", "extension": [{"url": f"{SDC}sdc-questionnaire-enableWhenExpression"}]}
    item["extension"][0]["valueExpression"] = expression
    no = [answered("c", False, key="valueBoolean"), answered("d", "x")]
    yes = [answered("c", True, key="valueBoolean"), answered("d", "x")]

    def walk(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
        # The SDC package is not loaded here: its extension's own "not found" error is not this test's concern.
        return [i for i in issues(validator, response([CONDITION, item], items)) if "/*" not in i[0]]

    assert walk(no) == [NOT_ENABLED]
    assert walk(yes) == []
    # An expression that cannot be evaluated (an unknown variable) decides nothing: the item counts as enabled.
    expression["expression"] = "%patient.gender = 'male'"
    assert walk(no) == []


# --- the Questionnaire's own enableWhen rules --------------------------------------------------------------------


def questionnaire(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Questionnaire", "status": "active", "item": list(items)}


def test_an_enable_when_cannot_refer_to_an_inner_question(validator: Validator) -> None:
    group = {"linkId": "g", "type": "group", "item": [CONDITION], "enableWhen": [when("c", "=", "answerBoolean", True)]}
    assert issues(validator, questionnaire(group)) == [
        (
            "Questionnaire.item[0]",
            "Questions with an enableWhen cannot refer to an inner question for its enableWhen condition",
        )
    ]


def test_an_enable_when_names_an_item_that_exists_and_is_not_itself(validator: Validator) -> None:
    missing = dependent(when("zz", "=", "answerBoolean", True))
    assert issues(validator, questionnaire(CONDITION, missing)) == [
        (
            "Questionnaire.item[1]",
            "Unable to find an item with the linkId 'zz' which is referenced in the enableWhen for 'd'",
        )
    ]
    itself = dependent(when("d", "=", "answerBoolean", True))
    assert issues(validator, questionnaire(itself)) == [
        ("Questionnaire.item[0]", "Target for this question enableWhen can't reference itself")
    ]


def test_an_enable_when_target_after_the_item_is_a_warning(validator: Validator) -> None:
    before = questionnaire(CONDITION, dependent(when("c", "=", "answerBoolean", True)))
    after = questionnaire(dependent(when("c", "=", "answerBoolean", True)), CONDITION)
    message = "The target of this enableWhen rule (c) comes after the question itself"
    assert ("Questionnaire.item[0]", message) in issues(validator, after, "warning")
    assert message not in [m for _, m in issues(validator, before, "warning")]
    assert issues(validator, after) == issues(validator, before) == []


def test_two_enable_whens_need_an_enable_behavior(validator: Validator) -> None:
    c1, c2 = {"linkId": "c1", "type": "boolean"}, {"linkId": "c2", "type": "boolean"}
    conditions = (when("c1", "=", "answerBoolean", True), when("c2", "=", "answerBoolean", True))
    assert issues(validator, questionnaire(c1, c2, dependent(*conditions))) == [
        (
            "Questionnaire.item[2]",
            "Constraint failed: que-12: 'If there are more than one enableWhen, enableBehavior must be specified'",
        )
    ]
    assert issues(validator, questionnaire(c1, c2, dependent(*conditions, behavior="all"))) == []
    assert issues(validator, questionnaire(c1, dependent(conditions[0]))) == []
