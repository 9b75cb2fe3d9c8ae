"""A QuestionnaireResponse against the Questionnaire it answers, and a Questionnaire's own rules of its items.

The response (https://hl7.org/fhir/R4/questionnaireresponse.html, "Questionnaire Response linkage"): the
Questionnaire is found from ``QuestionnaireResponse.questionnaire`` (a canonical, possibly ``|version``) among the
loaded definitions, the contained resources (``#id``) or the entries of the Bundle being validated. Its items are
then walked level by level: each response item's linkId names an item of the same level of the Questionnaire, in the
Questionnaire's order; a non-repeating item occurs once and has at most one answer; groups hold items, not answers;
questions hold nested items only under their answers; display items hold neither; a required item that is enabled
has an answer (or, for a group, sub-items) in a completed response; the SDC minOccurs and maxOccurs extensions bound
the number of answers; an item that is not enabled (enableWhen, enableBehavior, or an enableWhen expression) has no
answers. The answers themselves (types, options, limits) are checked by ``qanswers``.

The Questionnaire (https://hl7.org/fhir/R4/questionnaire.html): an enableWhen names an item that exists, is not the
item itself nor one inside it, and preferably comes before it; more than one enableWhen needs an enableBehavior
(que-12, as its human text says: R4's expression counts "> 2").

Messages are worded as the HL7 Java validator words them. Only Questionnaire and QuestionnaireResponse resources come
here: the walk dispatches on the resource type.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from casebridge.validation.fhirpath import FhirPathError, Resolver, evaluate
from casebridge.validation.issues import Run, as_list, as_obj
from casebridge.validation.qanswers import check_answers

if TYPE_CHECKING:
    from casebridge.validation.validator import Validator

TYPES = frozenset({"Questionnaire", "QuestionnaireResponse"})
EXT_MIN_OCCURS = "http://hl7.org/fhir/StructureDefinition/questionnaire-minOccurs"
EXT_MAX_OCCURS = "http://hl7.org/fhir/StructureDefinition/questionnaire-maxOccurs"
# Extensions whose FHIRPath expression decides whether an item is enabled: SDC's, and the Finnish PHR's older
# equivalent (a plain string), which the HL7 validator also honours.
EXT_ENABLE_WHEN_EXPRESSION = "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-enableWhenExpression"
EXT_ENABLE_WHEN_FI = "http://phr.kanta.fi/StructureDefinition/fiphr-ext-questionnaire-enablewhen"
_QUESTIONNAIRE_SD = "http://hl7.org/fhir/StructureDefinition/Questionnaire"
# Required items must be answered in these; other statuses (in-progress, stopped...) only get warnings.
_COMPLETED = frozenset({"completed", "amended"})
_NUMERIC = frozenset({"Integer", "Decimal"})
_ORDERED = frozenset({"Integer", "Decimal", "Date", "DateTime", "Time", "String", "Quantity"})
# The enclosing items of a response item: each Questionnaire item with the response item that answers it.
_Stack = list[tuple[dict[str, Any], dict[str, Any]]]


def check(validator: Validator, res: dict[str, Any], rtype: str, expr: str, run: Run) -> None:
    """The questionnaire rules of one resource (``rtype`` is Questionnaire or QuestionnaireResponse)."""
    if rtype == "QuestionnaireResponse":
        check_response(validator, res, expr, run)
    elif rtype == "Questionnaire":
        check_questionnaire(res, expr, run)


# --- the Questionnaire's own rules -------------------------------------------------------------------------------


class _Outline:
    """A Questionnaire's items by linkId: each item's position in document order and the items that hold it."""

    def __init__(self, questionnaire: dict[str, Any]) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.order: dict[str, int] = {}
        self.ancestors: dict[str, list[dict[str, Any]]] = {}  # outermost first
        self._add(questionnaire, [])

    def _add(self, node: dict[str, Any], chain: list[dict[str, Any]]) -> None:
        for item in as_list(node.get("item")):
            if not isinstance(item, dict):
                continue
            link = item.get("linkId")
            if isinstance(link, str) and link not in self.items:  # duplicates are que-2's concern
                self.items[link] = item
                self.order[link] = len(self.order)
                self.ancestors[link] = chain
            self._add(item, [*chain, item])


def _inside(item: dict[str, Any], link: str) -> bool:
    """Whether an item nested (at any depth) in ``item`` has this linkId."""
    for child in as_list(item.get("item")):
        if isinstance(child, dict) and (child.get("linkId") == link or _inside(child, link)):
            return True
    return False


def check_questionnaire(questionnaire: dict[str, Any], expr: str, run: Run) -> None:
    """The rules of a Questionnaire's enableWhen conditions (only Questionnaires with one get past the scan)."""
    if not _has_enable_when(questionnaire):
        return
    _questionnaire_items(questionnaire, _Outline(questionnaire), expr, run)


def _has_enable_when(node: dict[str, Any]) -> bool:
    for item in as_list(node.get("item")):
        if isinstance(item, dict) and ("enableWhen" in item or _has_enable_when(item)):
            return True
    return False


def _questionnaire_items(node: dict[str, Any], outline: _Outline, expr: str, run: Run) -> None:
    for i, item in enumerate(as_list(node.get("item"))):
        if not isinstance(item, dict):
            continue
        item_expr = f"{expr}.item[{i}]"
        conditions = as_list(item.get("enableWhen"))
        if conditions:
            _enable_when_rules(item, conditions, outline, item_expr, run)
        _questionnaire_items(item, outline, item_expr, run)


def _enable_when_rules(item: dict[str, Any], conditions: list[Any], outline: _Outline, expr: str, run: Run) -> None:
    link = item.get("linkId")
    for condition in conditions:
        question = as_obj(condition).get("question")
        if not isinstance(question, str) or not question:
            message = "Questions with an enableWhen must have a value for the question link"
            run.add("error", "business-rule", message, expr)
        elif _inside(item, question):
            # An item cannot depend on its own content: it is only shown when enabled.
            message = "Questions with an enableWhen cannot refer to an inner question for its enableWhen condition"
            run.add("error", "business-rule", message, expr)
        elif question not in outline.items:
            message = f"Unable to find an item with the linkId '{question}' which is referenced in the enableWhen for "
            message += f"'{link}'"
            run.add("error", "business-rule", message, expr)
        elif outline.items[question] is item:
            run.add("error", "business-rule", "Target for this question enableWhen can't reference itself", expr)
        elif isinstance(link, str) and link in outline.order and outline.order[question] > outline.order[link]:
            # Document order: an enclosing item or one of an earlier branch comes first.
            message = f"The target of this enableWhen rule ({question}) comes after the question itself"
            run.add("warning", "business-rule", message, expr)
    if len(conditions) > 1 and "enableBehavior" not in item:
        message = "Constraint failed: que-12: 'If there are more than one enableWhen, enableBehavior must be specified'"
        run.add("error", "invariant", message, expr, _QUESTIONNAIRE_SD)


# --- finding the Questionnaire of a response ---------------------------------------------------------------------


def find_questionnaire(validator: Validator, response: dict[str, Any], run: Run) -> dict[str, Any] | None:
    """The Questionnaire a response names: contained (``#id``), loaded, or an entry of the Bundle being validated."""
    ref = response.get("questionnaire")
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("#"):
        for resource in as_list(response.get("contained")):
            if _is_questionnaire(resource) and resource.get("id") == ref[1:]:
                return resource  # type: ignore[no-any-return]
        return None
    found = validator.definitions.get(ref)
    if _is_questionnaire(found):
        return found
    if run.bundle_index:
        direct = run.bundle_index.get(ref)
        if _is_questionnaire(direct):
            return direct
        url, _, version = ref.partition("|")
        for resource in run.bundle_index.values():
            if _is_questionnaire(resource) and resource.get("url") == url:
                if not version or resource.get("version") == version:
                    return resource
    return None


def _is_questionnaire(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "Questionnaire"


def check_response(validator: Validator, response: dict[str, Any], expr: str, run: Run) -> None:
    """A QuestionnaireResponse against its Questionnaire (reported as not checked when it cannot be found)."""
    ref = response.get("questionnaire")
    if not isinstance(ref, str) or not ref:
        message = "No questionnaire is identified, so no validation can be performed against the base questionnaire"
        run.add("information", "required", message, expr)
        return
    questionnaire = find_questionnaire(validator, response, run)
    if questionnaire is None:
        # Not a failure of the response: its questionnaire is just not at hand (example.org ones never are).
        severity = "information" if ref.startswith(("http://example.org", "https://example.org")) else "warning"
        message = (
            f"The questionnaire '{ref}' could not be resolved, so no validation can be performed against the base "
            "questionnaire"
        )
        run.add(severity, "required", message, expr)
        return
    _authored_in_period(response, questionnaire, expr, run)
    walk = _ResponseWalk(validator, run, questionnaire, response)
    walk.items(as_list(questionnaire.get("item")), response, expr, [])


def _authored_in_period(response: dict[str, Any], questionnaire: dict[str, Any], expr: str, run: Run) -> None:
    authored = response.get("authored")
    period = as_obj(questionnaire.get("effectivePeriod"))
    if not isinstance(authored, str) or not period:
        return
    end = period.get("end")
    if isinstance(end, str) and _date_order(authored, end) > 0:
        message = (
            f"The authored date '{authored}' is after the end of the permitted period defined in the Questionnaire "
            f"('{end}')"
        )
        run.add("warning", "business-rule", message, f"{expr}.authored")
    start = period.get("start")
    if isinstance(start, str) and _date_order(authored, start) < 0:
        message = (
            f"The authored date '{authored}' is before the start of the permitted period defined in the "
            f"Questionnaire ('{start}')"
        )
        run.add("warning", "business-rule", message, f"{expr}.authored")


def _date_order(a: str, b: str) -> int:
    """The order of two dates at the precision they share (their date parts): -1, 0 or 1."""
    n = min(len(a[:10]), len(b[:10]))
    return (a[:n] > b[:n]) - (a[:n] < b[:n])


# --- the walk over a response ------------------------------------------------------------------------------------


class _ResponseWalk:
    """One response against one Questionnaire: what every level of the walk needs."""

    def __init__(self, validator: Validator, run: Run, questionnaire: dict[str, Any], response: dict[str, Any]) -> None:
        self.validator = validator
        self.run = run
        self.questionnaire = questionnaire
        self.response = response
        self.outline = _Outline(questionnaire)
        status = response.get("status")
        self.completed = isinstance(status, str) and status in _COMPLETED  # a malformed status is the walk's

    def _required(self, code: str, message: str, expr: str) -> None:
        # Questionnaire.item.required: "must be present in a 'completed' QuestionnaireResponse".
        self.run.add("error" if self.completed else "warning", code, message, expr)

    def items(self, q_items: list[Any], container: dict[str, Any], expr: str, stack: _Stack) -> None:
        """The response items of ``container`` (the response, an item or an answer, at ``expr``) against the
        Questionnaire items of that level. ``stack`` pairs each enclosing Questionnaire item with its response item."""
        run = self.run
        level: dict[str, int] = {}
        for index, q_item in enumerate(q_items):
            link = as_obj(q_item).get("linkId")
            if isinstance(link, str):
                level.setdefault(link, index)
        found: dict[str, list[tuple[dict[str, Any], int]]] = {}
        last = -1
        for i, item in enumerate(as_list(container.get("item"))):
            if not isinstance(item, dict):
                continue
            link = item.get("linkId")
            if not isinstance(link, str) or not link:
                run.add("error", "required", "No LinkId, so can't be validated", expr)
                continue
            position = level.get(link)
            if position is None:
                elsewhere = self.outline.items.get(link)
                if elsewhere is None:
                    run.add("error", "not-found", f"LinkId '{link}' not found in questionnaire", expr)
                else:
                    message = f"Structural Error: item with linkid {link} is in the wrong place"
                    run.add("error", "structure", message, expr)
                    item_expr = f"{expr}.item[{i}]"
                    self.item(elsewhere, item, item_expr, [*stack, (elsewhere, item)], self.enabled(elsewhere, stack))
                continue
            if position < last:
                run.add("error", "structure", "Structural Error: items are out of order", expr)
            last = position
            found.setdefault(link, []).append((item, i))
        for q_item in q_items:
            if not isinstance(q_item, dict):
                continue
            link = q_item.get("linkId")
            occurrences = found.get(link) if isinstance(link, str) else None
            enabled = self.enabled(q_item, stack)
            if occurrences is None:
                if enabled and q_item.get("required") is True:
                    self._required("required", f"No response answer found for required item '{link}'", expr)
                continue
            if not enabled:
                for item, i in occurrences:
                    if item.get("answer") or item.get("item"):
                        message = f"Item has answer, even though it is not enabled (item id = '{link}')"
                        run.add("error", "invalid", message, f"{expr}.item[{i}]")
            if len(occurrences) > 1 and q_item.get("repeats") is not True:
                run.add("error", "invalid", f"Only one response item with this linkId allowed - {link}", expr)
            if q_item.get("type") == "group" and enabled:
                self._occurs(q_item, len(occurrences), "repetitions", expr)
            for item, i in occurrences:
                self.item(q_item, item, f"{expr}.item[{i}]", [*stack, (q_item, item)], enabled)

    def item(
        self,
        q_item: dict[str, Any],
        item: dict[str, Any],
        expr: str,
        stack: _Stack,
        enabled: bool,
    ) -> None:
        """One response item against its Questionnaire item."""
        run = self.run
        link = q_item.get("linkId")
        kind = q_item.get("type")
        text = item.get("text")
        if isinstance(text, str) and text and text != q_item.get("text"):
            message = f"If text exists, it must match the questionnaire definition for linkId {link}"
            run.add("error", "invalid", message, expr)
        answers = as_list(item.get("answer"))
        if enabled and not answers and kind != "group" and q_item.get("required") is True:
            self._required("required", f"No response answer found for required item '{link}'", expr)
        if len(answers) > 1 and q_item.get("repeats") is not True:
            run.add("error", "invalid", "Only one response answer item with this linkId allowed", expr)
        if kind != "group" and enabled:
            self._occurs(q_item, len(answers), "answers", expr)
        children = as_list(q_item.get("item"))
        if answers:
            if kind == "group":
                run.add("error", "structure", "Items of type group should not have answers", expr)
            elif kind == "display":
                run.add("error", "structure", "Items of type 'display' cannot have answers", expr)
            elif kind == "question":
                # An abstract type (R4 item-type): there is no kind of answer it takes.
                run.add("error", "structure", "Items of type question should not have answers", expr)
            elif isinstance(kind, str):
                check_answers(self.validator, run, q_item, answers, expr)
            if kind != "group":
                for j, answer in enumerate(answers):
                    if isinstance(answer, dict) and (children or "item" in answer):
                        self.items(children, answer, f"{expr}.answer[{j}]", stack)
        nested = as_list(item.get("item"))
        if not isinstance(kind, str):
            run.add("error", "required", f"Definition for item {link} does not contain a type", expr)
        elif kind == "display":
            if nested:
                run.add("error", "structure", f"Items of type display should not have items - linkId {link}", expr)
        elif kind != "group":
            if nested:
                message = "Items not of type group should not have items outside answers (use answer.item not .item)"
                run.add("error", "structure", message, expr)
        else:
            if not nested and enabled and q_item.get("required") is True:
                self._required("invariant", "No sub-items found for required group", expr)
            self.items(children, item, expr, stack)

    def _occurs(self, q_item: dict[str, Any], count: int, what: str, expr: str) -> None:
        """The SDC minOccurs and maxOccurs extensions: answers of a question, repetitions of a group."""
        most = _integer_extension(q_item, EXT_MAX_OCCURS)
        if most is not None and count > most:
            message = f"The maximum number of {what} is {most} but this has {count} {what}"
            self.run.add("error", "invalid", message, expr)
        least = _integer_extension(q_item, EXT_MIN_OCCURS)
        if least is not None and count < least:
            message = f"The minimum number of {what} is {least} but this has {count} {what}"
            self._required("invalid", message, expr)

    # --- enableWhen --------------------------------------------------------------------------------------------

    def enabled(self, q_item: dict[str, Any], stack: _Stack) -> bool:
        """Whether an item is enabled; when that cannot be worked out (an expression that fails, a malformed
        condition) it counts as enabled, so that nothing is reported on a guess."""
        for ext in as_list(q_item.get("extension")):
            url = as_obj(ext).get("url")
            if url == EXT_ENABLE_WHEN_EXPRESSION or url == EXT_ENABLE_WHEN_FI:
                return self._expression_enabled(ext)
        conditions = [c for c in as_list(q_item.get("enableWhen")) if isinstance(c, dict)]
        if not conditions:
            return True
        results = [self._condition(c, q_item, stack) for c in conditions]
        behavior = q_item.get("enableBehavior")
        if behavior == "any" or len(results) == 1:
            return any(results)
        if behavior == "all":
            return all(results)
        return True  # several conditions and no behaviour: que-12 reports the Questionnaire

    def _expression_enabled(self, ext: dict[str, Any]) -> bool:
        expression: Any = ext.get("valueString")
        value = as_obj(ext.get("valueExpression"))
        if value:
            if value.get("language") != "text/fhirpath":
                return True
            expression = value.get("expression")
        if not isinstance(expression, str):
            return True
        root = self.run.roots.get(id(self.response), self.response)
        try:
            result = evaluate(
                expression,
                self.response,
                base="QuestionnaireResponse",
                resource=self.response,
                root=root,
                resolver=Resolver(root, self.run.bundle_index),
            )
        except FhirPathError:
            return True
        if not result:
            return False
        if len(result) == 1 and isinstance(result[0], bool):
            return result[0]
        return True

    def _condition(self, condition: dict[str, Any], q_item: dict[str, Any], stack: _Stack) -> bool:
        question = condition.get("question")
        operator = condition.get("operator")
        kind = ""
        expected: Any = None
        for key, value in condition.items():
            if key.startswith("answer") and key[6:7].isupper():
                kind, expected = key[6:], value
        if not isinstance(question, str) or not kind:
            return True
        answers = self._answers_to(question, q_item, stack)
        if operator == "exists":
            return expected == bool(answers) if isinstance(expected, bool) else True
        if operator == "=":
            return any(_compare(a, kind, expected) == 0 for a in answers)
        if operator == "!=":
            # "True if no answer has a value that is equal to the enableWhen answer" (questionnaire-enable-operator)
            return not any(_compare(a, kind, expected) == 0 for a in answers)
        if operator in (">", "<", ">=", "<="):
            if kind not in _ORDERED:
                return False
            for answer in answers:
                order = _compare(answer, kind, expected)
                if order is not None and (
                    (operator == ">" and order > 0)
                    or (operator == "<" and order < 0)
                    or (operator == ">=" and order >= 0)
                    or (operator == "<=" and order <= 0)
                ):
                    return True
            return False
        return True  # an operator R4 does not define: nothing to go by

    def _answers_to(self, question: str, source: dict[str, Any], stack: _Stack) -> list[dict[str, Any]]:
        """The answers given to ``question`` that ``source``'s condition sees: those within the nearest response
        item of the innermost group that holds both questions (the whole response when none does)."""
        target = self.outline.items.get(question)
        if target is None:
            return []
        source_link = source.get("linkId")
        outer = self.outline.ancestors.get(source_link, []) if isinstance(source_link, str) else []
        target_outer = self.outline.ancestors.get(question, [])
        common: dict[str, Any] | None = None
        for a, b in zip(outer, target_outer, strict=False):
            if a is not b:
                break
            common = a
        focus: dict[str, Any] = self.response
        if common is not None:
            for q_item, response_item in reversed(stack):
                if q_item is common:
                    focus = response_item
                    break
        out: list[dict[str, Any]] = []
        _collect_answers(focus, question, out, 0)
        return out


def _collect_answers(node: dict[str, Any], question: str, out: list[dict[str, Any]], depth: int) -> None:
    """The answers of the items with linkId ``question`` in ``node`` and anywhere below it (answers' items too)."""
    if depth > 100:  # far deeper than any form; a guard against hostile nesting
        return
    if node.get("linkId") == question:
        out.extend(a for a in as_list(node.get("answer")) if isinstance(a, dict))
    for item in as_list(node.get("item")):
        if isinstance(item, dict):
            _collect_answers(item, question, out, depth + 1)
    for answer in as_list(node.get("answer")):
        if isinstance(answer, dict) and "item" in answer:
            _collect_answers(answer, question, out, depth + 1)


def _integer_extension(item: dict[str, Any], url: str) -> int | None:
    for ext in as_list(item.get("extension")):
        if isinstance(ext, dict) and ext.get("url") == url:
            value = ext.get("valueInteger")
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def _value(answer: dict[str, Any]) -> tuple[str, Any]:
    """An answer's value[x]: its type suffix (``Coding``, ``Integer``...) and value; ("", None) when it has none."""
    for key, value in answer.items():
        if key.startswith("value") and key[5:6].isupper():
            return key[5:], value
    return "", None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _order(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _compare(answer: dict[str, Any], kind: str, expected: Any) -> int | None:
    """How an answer compares with an enableWhen answer of type ``kind``: 0 equal, -1 or 1 in order (or just
    unequal, for the unordered types), None when they cannot be compared."""
    actual_kind, actual = _value(answer)
    if actual_kind in _NUMERIC and kind in _NUMERIC:
        x, y = _decimal(actual), _decimal(expected)
        return None if x is None or y is None else _order(x, y)
    if actual_kind != kind or actual is None or expected is None:
        return None
    if kind == "Coding":
        a, e = as_obj(actual), as_obj(expected)
        if "system" in e and a.get("system") != e.get("system"):
            return 1
        return 0 if a.get("code") == e.get("code") else 1
    if kind == "Quantity":
        a, e = as_obj(actual), as_obj(expected)
        if a.get("code") and e.get("code") and (a.get("code"), a.get("system")) != (e.get("code"), e.get("system")):
            return None
        x, y = _decimal(a.get("value")), _decimal(e.get("value"))
        return None if x is None or y is None else _order(x, y)
    if kind == "Reference":
        return 0 if as_obj(actual).get("reference") == as_obj(expected).get("reference") else 1
    if kind == "Boolean":
        return 0 if actual is expected else 1
    if isinstance(actual, str) and isinstance(expected, str):
        if kind in ("Date", "DateTime") and len(actual) != len(expected):
            n = min(len(actual), len(expected))
            order = _order(actual[:n], expected[:n])
            return order if order != 0 else None  # equal as far as both go: neither equal nor in order
        return _order(actual, expected)
    return 0 if actual == expected else 1
