"""A value against what its element definition fixes: patterns, and the minValue/maxValue limits of quantities
(compared through UCUM) and dates (a fixed date or a Duration from today).

Apart from the walk because these read the value itself, not its structure; slicing matches patterns too.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from casebridge.definitions.numbers import FhirDecimal
from casebridge.definitions.structure import ElementNode
from casebridge.validation import ucum
from casebridge.validation.issues import Run


def matches_pattern(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(k in value and matches_pattern(value[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        return all(any(matches_pattern(v, p) for v in value) for p in pattern)
    return bool(value == pattern)


def quantity_limits(item: dict[str, Any], node: ElementNode, expr: str, run: Run) -> None:
    value = item.get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    for limit, word, below in ((node.min_value, "minValue", True), (node.max_value, "maxValue", False)):
        if not isinstance(limit, dict) or not isinstance(limit.get("value"), (int, float)):
            continue
        unit, limit_unit = item.get("code") or item.get("unit"), limit.get("code") or limit.get("unit")
        shown = f"{value} {unit or ''}".strip()
        limit_shown = f"{limit['value']} {limit_unit or ''}".strip()
        # Only strings are systems: a malformed one (an object, a list) is reported by its own type check.
        systems = {s for s in (item.get("system"), limit.get("system")) if isinstance(s, str)}
        if unit == limit_unit and len(systems) <= 1:
            ours, theirs = (float(value), ""), (float(limit["value"]), "")  # the same unit, known or not
        else:
            converted = ucum.to_base(value, unit), ucum.to_base(limit["value"], limit_unit)
            if converted[0] is None or converted[1] is None or converted[0][1] != converted[1][1]:
                # Not checked is not within the limit: the profile's rule stays an error.
                message = f"The value {shown} could not be compared with the {word} {limit_shown}: no conversion"
                run.add("error", "processing", message, expr)
                continue
            ours, theirs = converted[0], converted[1]
        if (ours[0] < theirs[0]) if below else (ours[0] > theirs[0]):
            relation = "less" if below else "greater"
            message = (
                f"The value in the instance ({shown}) is {relation} than the specified {word} "
                f"({limit_shown}) after UCUM conversion"
            )
            run.add("error", "invalid", message, expr)


def date_limits(value: str, node: ElementNode, expr: str, run: Run) -> None:
    """min/maxValue on dates: a fixed date, or a Duration from today (e.g. "at most 10 years ahead")."""
    try:
        day = dt.date.fromisoformat(value[:10]) if len(value) >= 10 else None
    except ValueError:
        return
    if day is None:
        return
    for limit, below in ((node.min_value, True), (node.max_value, False)):
        bound: dt.date | None = None
        if isinstance(limit, str):
            try:
                bound = dt.date.fromisoformat(limit[:10])
            except ValueError:
                continue
        elif isinstance(limit, dict) and isinstance(limit.get("value"), (int, float)):
            days = ucum.to_base(float(limit["value"]), limit.get("code") or limit.get("unit"))
            if days is None or days[1] != "time":
                continue
            bound = dt.date.today() + dt.timedelta(seconds=days[0])
        if bound is None:
            continue
        if (day < bound) if below else (day > bound):
            word = "earlier" if below else "later"
            run.add("error", "invalid", f"The value '{value}' is {word} than the limit {bound.isoformat()}", expr)


_NUMBER_TYPES = {
    "decimal": "DecimalType",
    "integer": "IntegerType",
    "positiveInt": "PositiveIntType",
    "unsignedInt": "UnsignedIntType",
}


def number_limits(value: Any, type_code: str, node: ElementNode, expr: str, run: Run) -> None:
    """minValue/maxValue on decimals and integers (a limit has the element's own type,
    ElementDefinition.minValue[x]); worded as the HL7 validator words them."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    shown_type = _NUMBER_TYPES.get(type_code)
    if shown_type is None:
        return
    prefix = "decimal value" if type_code == "decimal" else "value"
    for limit, below in ((node.min_value, True), (node.max_value, False)):
        if not isinstance(limit, (int, float)) or isinstance(limit, bool):
            continue
        if (value < limit) if below else (value > limit):
            relation = "less than permitted minimum" if below else "greater than permitted maximum"
            shown = limit.text if isinstance(limit, FhirDecimal) else str(limit)  # as written in the profile
            run.add("error", "invalid", f"{prefix} is {relation} value of {shown_type}[{shown}]", expr)
