"""The answers of a QuestionnaireResponse item against the Questionnaire item they answer.

The walk over a response (questionnaire.py) pairs each response item with its Questionnaire item and hands each
answer here: the answer's type against the item's type, the permitted options and value sets, exclusive options,
minimum and maximum values, decimal places, lengths and patterns, attachments (type and size), quantity units and
comparisons, and reference targets (SDC extensions on the item: https://hl7.org/fhir/uv/sdc/).

The rules are those of Questionnaire.item (https://hl7.org/fhir/R4/questionnaire.html) and of the extensions
the item carries; messages are worded as the HL7 validator words them.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Any

from casebridge.validation import ucum
from casebridge.validation.fhirpath import FhirPathError, full_match
from casebridge.validation.issues import Run, as_list, as_obj

if TYPE_CHECKING:
    from casebridge.validation.validator import Validator

EXT = "http://hl7.org/fhir/StructureDefinition/"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
MIN_VALUE = EXT + "minValue"
MAX_VALUE = EXT + "maxValue"
MAX_DECIMALS = EXT + "maxDecimalPlaces"
MIN_LENGTH = EXT + "minLength"
REGEX = EXT + "regex"
ENTRY_FORMAT = EXT + "entryFormat"
MIME_TYPE = EXT + "mimeType"
MAX_SIZE = EXT + "maxSize"
EXCLUSIVE = EXT + "questionnaire-optionExclusive"
UNIT_OPTION = EXT + "questionnaire-unitOption"
UNIT_VALUE_SET = EXT + "questionnaire-unitValueSet"
REFERENCE_RESOURCE = EXT + "questionnaire-referenceResource"
MIN_QUANTITY = SDC + "sdc-questionnaire-minQuantity"
MAX_QUANTITY = SDC + "sdc-questionnaire-maxQuantity"
UCUM = "http://unitsofmeasure.org"

_CHOICE_TYPES = ("Coding", "date", "time", "integer", "string")
# The answer value types each R4 item type permits (Questionnaire.item.type, "QuestionnaireItemType"); group,
# display and question items take no answers, which the walk reports.
ALLOWED_TYPES: dict[str, tuple[str, ...]] = {
    "boolean": ("boolean",),
    "decimal": ("decimal",),
    "integer": ("integer",),
    "date": ("date",),
    "dateTime": ("dateTime",),
    "time": ("time",),
    "string": ("string",),
    "text": ("string",),
    "url": ("uri",),
    "choice": _CHOICE_TYPES,
    "open-choice": _CHOICE_TYPES,
    "attachment": ("Attachment",),
    "reference": ("Reference",),
    "quantity": ("Quantity",),
}
_COMPLEX = frozenset({"Attachment", "Coding", "Quantity", "Reference"})
# QuestionnaireResponse.item.answer.value[x] in R4; any other value* property is unknown, which the walk reports.
_ANSWER_TYPES = frozenset({"boolean", "decimal", "integer", "date", "dateTime", "time", "string", "uri"} | _COMPLEX)
_SYSTEM_NAMES = {UCUM: "UCUM", "http://snomed.info/sct": "SNOMED CT"}
# A reference: local (#id), absolute (a scheme and no white space) or relative (Type/id[/_history/vid], or a search).
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_RELATIVE = re.compile(r"[A-Za-z]+(/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?|\?\S*)")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]+")
_FHIR_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


# --- reading the item and the answer ---------------------------------------------------------------------


def _extensions(element: dict[str, Any], url: str) -> list[Any]:
    """The values (value[x]) of the element's extensions with this url."""
    out: list[Any] = []
    for ext in as_list(element.get("extension")):
        if isinstance(ext, dict) and ext.get("url") == url:
            for key, value in ext.items():
                if key.startswith("value"):
                    out.append(value)
                    break
    return out


def _extension(element: dict[str, Any], url: str) -> Any:
    values = _extensions(element, url)
    return values[0] if values else None


def _answer_value(answer: dict[str, Any]) -> tuple[str, Any] | None:
    """(FHIR type, value) of the answer's value[x], or None when it has none."""
    for key, value in answer.items():
        if key.startswith("value") and len(key) > 5 and key[5].isupper():
            suffix = key[5:]
            value_type = suffix if suffix in _COMPLEX else suffix[0].lower() + suffix[1:]
            if value_type in _ANSWER_TYPES:
                return value_type, value
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _text(value: Any) -> str:
    """A number as it was written (decimals read from XML keep their digits; see definitions.numbers)."""
    text = getattr(value, "text", None)
    if isinstance(text, str):
        return text
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _decimal_places(value: Any) -> int:
    text = _text(value)
    if "e" in text or "E" in text or "." not in text:
        return 0
    return len(text) - text.index(".") - 1


def _instant(text: Any) -> dt.datetime | None:
    """The first instant of a FHIR date or dateTime (a partial date starts at its first day, as the HL7
    validator compares them); None when it is not one."""
    if not isinstance(text, str):
        return None
    m = _FHIR_DATE.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second, zone = m.groups()
    try:
        moment = dt.datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0)
        )
    except ValueError:
        return None
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        try:
            moment -= sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        except OverflowError:
            return None
    return moment


def _coding_display(coding: dict[str, Any]) -> str:
    display = coding.get("display")
    out = display if isinstance(display, str) else ""
    system, code = coding.get("system"), coding.get("code")
    if system is not None or code is not None:
        name = _SYSTEM_NAMES.get(system, system) if isinstance(system, str) else ""
        out += f" ({name}#{code if code is not None else 'null'})"
    return out.strip()


def _quantity_display(q: dict[str, Any]) -> str:
    comparator = q.get("comparator")
    out = (comparator if isinstance(comparator, str) else "") + _text(q.get("value"))
    unit = q.get("unit")
    if isinstance(unit, str):
        out += " " + unit
    system, code = q.get("system"), q.get("code")
    if system is not None or code is not None:
        name = _SYSTEM_NAMES.get(system, system) if isinstance(system, str) else ""
        out += f" ({name}#{code if code is not None else 'null'})"
    return out


# --- the entry point -----------------------------------------------------------------------------------


def check_answers(validator: Validator, run: Run, item: dict[str, Any], answers: list[Any], expression: str) -> None:
    """Check the answers of one response item.

    ``item`` is the Questionnaire item (a JSON object), ``answers`` the response item's ``answer`` list as it is in
    the instance, ``expression`` the FHIRPath location of the response item (e.g.
    ``QuestionnaireResponse.item[0].item[1]``); answer ``i`` is at ``f"{expression}.answer[{i}]"``. Issues go to
    ``run.add``. Counts of answers (required, repeats, min/max occurs) are the walk's, not this function's.
    """
    item_type = item.get("type")
    allowed = ALLOWED_TYPES.get(item_type) if isinstance(item_type, str) else None
    answers = as_list(answers)
    if allowed is None or not answers:
        return
    count = len(answers)
    for i, answer in enumerate(answers):
        if not isinstance(answer, dict):
            continue
        found = _answer_value(answer)
        if found is None:
            continue
        value_type, value = found
        answer_expr = f"{expression}.answer[{i}]"
        value_expr = f"{answer_expr}.value.ofType({value_type})"
        if value_type not in allowed:
            if len(allowed) == 1:
                message = f"Answer value must be of the type {allowed[0]} not {value_type}"
            else:
                message = f"Answer value must be one of the {len(allowed)} types {', '.join(allowed)} not {value_type}"
            run.add("error", "structure", message, value_expr)
            continue
        if item_type in ("choice", "open-choice"):
            _choice(validator, run, item, item_type == "open-choice", value_type, value, answer_expr, count)
        elif value_type in ("decimal", "integer"):
            _number_answer(run, item, value_type, value, value_expr)
        elif value_type in ("date", "dateTime", "time"):
            _date_answer(run, item, value_type, value, value_expr)
        elif value_type == "string":
            _string_answer(validator, run, item, item_type == "string", value, value_expr)
        elif value_type == "Attachment":
            _attachment(run, item, as_obj(value), answer_expr, value_expr)
        elif value_type == "Quantity":
            _quantity(validator, run, item, as_obj(value), value_expr)
        elif value_type == "Reference":
            _reference(validator, run, item, as_obj(value), value_expr)


# --- answer options --------------------------------------------------------------------------------------


_OPTION_KEY = {"date": "valueDate", "time": "valueTime", "integer": "valueInteger", "string": "valueString"}


def _options(item: dict[str, Any], key: str) -> list[tuple[Any, dict[str, Any]]]:
    """(value, option) of the item's answerOptions of one type."""
    return [(o[key], o) for o in as_list(item.get("answerOption")) if isinstance(o, dict) and key in o]


def _option_check(run: Run, item: dict[str, Any], value_type: str, value: Any, expr: str, open_choice: bool) -> None:
    """A date, time, integer or string answer against the item's answerOptions (when it has some)."""
    if not as_list(item.get("answerOption")):
        return
    options = [v for v, _ in _options(item, _OPTION_KEY[value_type])]
    if not options:
        if not open_choice:
            run.add("error", "invariant", f"Option list has no option values of type {value_type}", expr)
        elif value_type == "string" and isinstance(value, str):
            _string_like_coding(run, item, value, expr)
        return
    if open_choice and value_type == "string":
        _string_like_coding(run, item, value, expr)
        return
    if not any(type(o) is type(value) and o == value for o in options):
        shown = _text(value) if value_type == "integer" else value
        run.add("error", "invariant", f"The {value_type} {shown} is not in the set of permitted values", expr)


def _string_like_coding(run: Run, item: dict[str, Any], value: str, expr: str) -> None:
    """Free text of an open choice that is one of the coded options should have been given as that Coding."""
    for coding, _ in _options(item, "valueCoding"):
        c = as_obj(coding)
        for key in ("display", "code"):
            text = c.get(key)
            if isinstance(text, str) and text.lower() == value.lower():
                run.add(
                    "warning",
                    "invariant",
                    f"The string '{value}' matches the {key} of one of the coded options; use the Coding instead",
                    expr,
                )
                return


def _choice(
    validator: Validator,
    run: Run,
    item: dict[str, Any],
    open_choice: bool,
    value_type: str,
    value: Any,
    expr: str,
    count: int,
) -> None:
    """An answer to a choice or open-choice item: against answerOption, else answerValueSet (answers of a type
    other than Coding are checked against the options of their own type)."""
    has_options = bool(as_list(item.get("answerOption")))
    if value_type != "Coding":
        if has_options:
            _option_check(run, item, value_type, value, expr, open_choice)
        else:
            run.add(
                "information",
                "informational",
                f"Cannot validate {value_type} answer option because no option list is provided",
                expr,
            )
        return
    coding = as_obj(value)
    system, code = coding.get("system"), coding.get("code")
    if has_options:
        options = _options(item, "valueCoding")
        if not options:
            if not open_choice:
                run.add("error", "invariant", "Option list has no option values of type coding", expr)
            return
        for option_value, option in options:
            o = as_obj(option_value)
            if o.get("system") == system and o.get("code") == code:
                if count > 1 and any(v is True for v in _extensions(option, EXCLUSIVE)):
                    run.add(
                        "error",
                        "invariant",
                        f"Selected answer {system}#{code} is an exclusive option - can't select anything else at "
                        "the same time",
                        expr,
                    )
                return
        if open_choice and code is None and system is None:
            return  # free text given as a display only
        shown = f"{system if system is not None else 'null'}::{code if code is not None else 'null'}"
        run.add("error", "invariant", f"The code {shown} is not in the set of permitted values", expr)
        return
    value_set = item.get("answerValueSet")
    if isinstance(value_set, str):
        _coding_in_value_set(validator, run, value_set, coding, open_choice, expr)
    else:
        run.add(
            "information", "informational", "Cannot validate options because no option or options are provided", expr
        )


def _vs_name(validator: Validator, canonical: str) -> str:
    vs = validator.definitions.get(canonical) or validator.definitions.get(canonical.split("|")[0]) or {}
    name = vs.get("name") or vs.get("title")
    return name if isinstance(name, str) else canonical


def _coding_in_value_set(
    validator: Validator, run: Run, value_set: str, coding: dict[str, Any], open_choice: bool, expr: str
) -> None:
    if value_set.startswith("#"):
        return  # a value set contained in the Questionnaire: the walk holds the container, not this check
    system, code, display = coding.get("system"), coding.get("code"), coding.get("display")
    if system is None and code is None and isinstance(display, str) and open_choice:
        return  # free text given as a display only
    expansion = validator.terminology.expand(value_set)
    if expansion is None:
        run.add("warning", "not-found", f"ValueSet '{value_set}' not found", expr)
        return
    if not isinstance(code, str) or not isinstance(system, (str, type(None))):
        return  # a wrong shape is reported by the structure walk
    prefix = f"The code '{code}' in the system '{system}' is not in the options value set "
    if (system, code) in expansion.codes:
        if not isinstance(system, str) or not isinstance(display, str):
            return
        cs = validator.terminology.code_system(system)
        valid = cs.codes.get(code) if cs is not None and cs.complete else None
        if valid and display.lower() != valid.lower():
            wrong = f"Wrong Display Name '{display}' for {system}#{code}. Valid display is '{valid}'"
            run.add("error", "invalid", wrong, f"{expr}.value.ofType(Coding).display")
            name = _vs_name(validator, value_set)
            message = f"{prefix}({name}) specified by the questionnaire. Terminology Error: {wrong}"
            run.add("error", "code-invalid", message, expr)
        return
    name = _vs_name(validator, value_set)
    if system in expansion.open_systems or not expansion.complete:
        run.add(
            "information",
            "informational",
            f"The code {system}#{code} cannot be checked against the options value set ({name}) offline",
            expr,
        )
        return
    run.add("error", "code-invalid", f"{prefix}({name}) specified by the questionnaire", expr)


# --- numbers, dates, strings -------------------------------------------------------------------------------


def _limit_message(shown: str, limit: Any, below: bool) -> str:
    if below:
        return f"The value {shown} is less than the allowed minimum of {_text(limit)}"
    return f"The value {shown} is greater than the allowed maximum of {_text(limit)}"


def _number_answer(run: Run, item: dict[str, Any], value_type: str, value: Any, expr: str) -> None:
    number = _number(value)
    if number is None:
        return
    shown = _text(value)
    for url, below in ((MIN_VALUE, True), (MAX_VALUE, False)):
        limit = _extension(item, url)
        bound = _number(limit)
        if bound is not None and ((number < bound) if below else (number > bound)):
            run.add("error", "invariant", _limit_message(shown, limit, below), expr)
    if value_type == "decimal":
        places = _extension(item, MAX_DECIMALS)
        if isinstance(places, int) and not isinstance(places, bool) and _decimal_places(value) > places:
            run.add("error", "invariant", f"The value {shown} has too many decimal places (limit = {places})", expr)
    else:
        _option_check(run, item, value_type, value, expr, False)


def _date_answer(run: Run, item: dict[str, Any], value_type: str, value: Any, expr: str) -> None:
    if not isinstance(value, str):
        return
    for url, below in ((MIN_VALUE, True), (MAX_VALUE, False)):
        limit = _extension(item, url)
        if not isinstance(limit, str):
            continue
        if value_type == "time":
            outside = (value < limit) if below else (value > limit)  # hh:mm:ss compares as text
        else:
            ours, theirs = _instant(value), _instant(limit)
            if ours is None or theirs is None:
                continue
            outside = (ours < theirs) if below else (ours > theirs)
        if outside:
            run.add("error", "invariant", _limit_message(value, limit, below), expr)
    if value_type != "dateTime":
        _option_check(run, item, value_type, value, expr, False)


def _string_answer(
    validator: Validator, run: Run, item: dict[str, Any], single_line: bool, value: Any, expr: str
) -> None:
    if not isinstance(value, str):
        return
    min_length = _extension(item, MIN_LENGTH)
    if isinstance(min_length, int) and not isinstance(min_length, bool) and len(value) < min_length:
        message = f"The answer '{value}' is shorter then the required minimum length of {min_length}"
        run.add("error", "invariant", message, expr)
    max_length = item.get("maxLength")
    if isinstance(max_length, int) and not isinstance(max_length, bool) and len(value) > max_length:
        message = f"The answer '{value}' is longer then the allowed maximum length of {max_length}"
        run.add("error", "invariant", message, expr)
    pattern = _extension(item, REGEX)
    if isinstance(pattern, str):
        _regex(run, item, value, pattern, expr)
    if single_line:
        if "\r" in value or "\n" in value:
            run.add("warning", "invariant", "The answer should not contain new line characters", expr)
        value_set = item.get("answerValueSet")
        if isinstance(value_set, str) and not value_set.startswith("#"):
            codes = validator.terminology.codes_by_value(value_set)
            expansion = validator.terminology.expand(value_set)
            if codes is None or expansion is None:
                run.add("warning", "not-found", f"ValueSet '{value_set}' not found", expr)
            elif value not in codes and expansion.complete:
                run.add("error", "invariant", f"The value '{value}' is not in the value set '{value_set}'", expr)
        _option_check(run, item, "string", value, expr, False)


def _regex(run: Run, item: dict[str, Any], value: str, pattern: str, expr: str) -> None:
    # The pattern comes from the Questionnaire and runs on input: matched in bounded time as FHIRPath matches().
    try:
        matched = full_match(pattern, value)
    except FhirPathError as exc:
        run.add("warning", "processing", f"The regex of this item could not be evaluated: {exc}", expr)
        return
    if matched:
        return
    entry_format = _extension(item, ENTRY_FORMAT)
    if isinstance(entry_format, str):
        message = f"The answer '{value}' does not conform to the expected format '{entry_format}' (regex '{pattern}')"
    else:
        message = f"The answer '{value}' does not conform to the regex '{pattern}'"
    run.add("error", "invariant", message, expr)


# --- attachments -------------------------------------------------------------------------------------------


def _base64_size(data: str) -> int | None:
    """The number of bytes base64 text decodes to, without decoding it (None when it is not whole base64)."""
    text = "".join(data.split())
    if len(text) % 4:
        return None
    padding = len(text) - len(text.rstrip("="))
    return len(text) // 4 * 3 - padding if padding <= 2 else None


def _attachment(run: Run, item: dict[str, Any], value: dict[str, Any], answer_expr: str, value_expr: str) -> None:
    allowed = [m for m in _extensions(item, MIME_TYPE) if isinstance(m, str)]
    if allowed:
        content_type = value.get("contentType")
        if not isinstance(content_type, str):
            message = f"The attachment has no mime type, and this answer requires one (allowed = {', '.join(allowed)})"
            run.add("error", "required", message, answer_expr)
        else:
            base = content_type.split(";")[0].strip().lower()
            if not any(_mime_matches(base, a.strip().lower()) for a in allowed):
                message = f"The mime type {content_type} is not valid for this answer (allowed = {', '.join(allowed)})"
                run.add("error", "required", message, answer_expr)
    data = value.get("data")
    actual = _base64_size(data) if isinstance(data, str) else None
    if actual is None:
        return
    stated = value.get("size")
    if isinstance(stated, int) and not isinstance(stated, bool) and stated != actual:
        message = f"Stated Attachment Size {stated:,} does not match actual attachment size {actual:,}"
        run.add("error", "structure", message, value_expr)
    max_size = _number(_extension(item, MAX_SIZE))
    if max_size is not None and max_size > 0 and actual > max_size:
        message = f"The attachment is too large (allowed = {_text(_extension(item, MAX_SIZE))}, found = {actual})"
        run.add("error", "required", message, answer_expr)


def _mime_matches(content_type: str, allowed: str) -> bool:
    # "image/*" or "image" names a family of types; otherwise the type itself, whatever its parameters.
    if allowed.endswith("/*") or "/" not in allowed:
        return content_type.startswith(allowed.removesuffix("*").removesuffix("/") + "/")
    return content_type == allowed.split(";")[0].strip()


# --- quantities --------------------------------------------------------------------------------------------


def _quantity(validator: Validator, run: Run, item: dict[str, Any], q: dict[str, Any], expr: str) -> None:
    value = _number(q.get("value"))
    if value is None:
        return
    shown = _quantity_display(q)
    for url, below in ((MIN_QUANTITY, True), (MAX_QUANTITY, False)):
        limit = _extension(item, url)
        if isinstance(limit, dict):
            _quantity_limit(run, q, value, shown, limit, below, expr)
    places = _extension(item, MAX_DECIMALS)
    if isinstance(places, int) and not isinstance(places, bool) and _decimal_places(q.get("value")) > places:
        message = f"The value {_text(q.get('value'))} has too many decimal places (limit = {places})"
        run.add("error", "invariant", message, expr)
    options = [as_obj(c) for c in _extensions(item, UNIT_OPTION)]
    if options and not any(_unit_matches(q, c) for c in options):
        allowed = ",".join(_coding_display(c) for c in options)
        run.add("error", "invariant", f"The value {shown} has a unit that is not valid (allowed = {allowed})", expr)
    unit_vs = _extension(item, UNIT_VALUE_SET)
    if isinstance(unit_vs, str):
        _unit_in_value_set(validator, run, q, shown, unit_vs, expr)


def _quantity_limit(
    run: Run, q: dict[str, Any], value: float, shown: str, limit: dict[str, Any], below: bool, expr: str
) -> None:
    bound = _number(limit.get("value"))
    if bound is None:
        return
    word = "minimum" if below else "maximum"
    limit_shown = _quantity_display(limit)
    system, code = q.get("system"), q.get("code")
    limit_system, limit_code = limit.get("system"), limit.get("code")
    if not (system and code and limit_system and limit_code):
        message = (
            f"The quantity {shown} cannot be compared to the allowed {word} of {limit_shown} because no formal "
            "units are specified"
        )
        run.add("error", "invariant", message, expr)
        return
    if system == limit_system and code == limit_code:
        ours, theirs = value, bound
    else:
        converted = ucum.to_base(value, code), ucum.to_base(bound, limit_code)
        if system != UCUM or limit_system != UCUM or converted[0] is None or converted[1] is None:
            message = f"The quantity {shown} cannot be compared to the allowed {word} of {limit_shown}"
            run.add("error", "invariant", message, expr)
            return
        if converted[0][1] != converted[1][1]:
            message = (
                f"The quantity {shown} cannot be compared to the allowed {word} of {limit_shown} because the units "
                "are not comparable"
            )
            run.add("error", "invariant", message, expr)
            return
        ours, theirs = converted[0][0], converted[1][0]
    if (ours < theirs) if below else (ours > theirs):
        relation = "less than" if below else "greater than"
        run.add("error", "invariant", f"The quantity {shown} is {relation} the allowed {word} of {limit_shown}", expr)


def _unit_matches(q: dict[str, Any], option: dict[str, Any]) -> bool:
    # Each part the unit option states must be the quantity's: system, code, and display as the unit text.
    return all(
        option.get(key) is None or option.get(key) == q.get(other)
        for key, other in (("system", "system"), ("code", "code"), ("display", "unit"))
    )


def _unit_in_value_set(
    validator: Validator, run: Run, q: dict[str, Any], shown: str, value_set: str, expr: str
) -> None:
    expansion = validator.terminology.expand(value_set)
    if expansion is None:
        run.add(
            "warning", "not-found", f"The unit value set '{value_set}' is not known, so the unit was not checked", expr
        )
        return
    system, code = q.get("system"), q.get("code")
    if not isinstance(system, (str, type(None))):
        return  # a wrong shape is reported by the structure walk
    if isinstance(code, str):
        if (system, code) in expansion.codes or system in expansion.open_systems or expansion.unresolved:
            return  # in the value set, or a code we cannot decide on offline
    message = f"The value {shown} has a unit that is not in the unit value set '{value_set}'"
    run.add("error", "invariant", message, expr)


# --- references --------------------------------------------------------------------------------------------


def _reference_type(reference: str) -> str | None:
    """The resource type a literal reference names (Type/id, or the end of an absolute URL)."""
    if reference.startswith("#") or reference.startswith("urn:"):
        return None
    parts = reference.split("?")[0].split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if "?" in reference and len(parts) == 1:
        candidate = parts[0]  # a search: Type?params
    elif len(parts) >= 2:
        candidate = parts[-2]
    else:
        return None
    # Only a segment shaped like a type name is read as one: an absolute URL need not be a FHIR REST address.
    return candidate if _TYPE_NAME.fullmatch(candidate) else None


def _reference(validator: Validator, run: Run, item: dict[str, Any], value: dict[str, Any], expr: str) -> None:
    reference = value.get("reference")
    if not isinstance(reference, str):
        return
    if not (reference.startswith("#") or _RELATIVE.fullmatch(reference) or _ABSOLUTE.fullmatch(reference)):
        run.add("error", "invalid", f"The reference '{reference}' is not a valid reference", expr)
    resource_type = _reference_type(reference)
    allowed = [t for t in _extensions(item, REFERENCE_RESOURCE) if isinstance(t, str)]
    if allowed and not ({"Resource", "Any"} & set(allowed)):
        if resource_type is None:
            if not reference.startswith("#"):
                message = f"The resource type of the reference {reference} cannot be determined, so it was not checked"
                run.add("warning", "invariant", message, expr)
        elif resource_type not in allowed:
            message = (
                f"The resource type '{resource_type}' in the reference {reference} is not allowed "
                f"(allowed = {','.join(allowed)})"
            )
            run.add("error", "invariant", message, expr)
        return
    if resource_type is not None and not validator.is_resource_type(resource_type):
        message = f"The resource type {resource_type} in the reference {reference} is not valid"
        run.add("error", "invariant", message, expr)
