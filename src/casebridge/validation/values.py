"""A value against what its element definition fixes: patterns, complex fixed values (element by element, as
elementdefinition-definitions.html#ElementDefinition.fixed_x_ has it: what the fixed value leaves out must be absent,
extensions included), and the minValue/maxValue limits of quantities (compared through UCUM) and dates (a fixed date
or a Duration from today).

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


def fixed_value(item: dict[str, Any], fixed: dict[str, Any], expr: str, source: str, context: str, run: Run) -> None:
    """A complex value against its element's complex fixed value, element by element, worded and placed as the HL7
    validator reports it (checkFixedValue): an element the fixed value lacks is not allowed, one it has is
    required and must be the same, repeats must be as many; ``source`` names the profile, ``context`` the profile
    and element (the wording of a differing primitive). The id is not compared (the HL7 validator skips it)."""
    names: list[str] = []
    for key in (*item, *fixed):
        name = key[1:] if key.startswith("_") else key
        if name not in names and name not in ("id", "extension", "resourceType"):
            names.append(name)
    for name in names:
        path = f"{expr}.{name}"
        value, value_extra = item.get(name), item.get("_" + name)
        wanted, wanted_extra = fixed.get(name), fixed.get("_" + name)
        present = value is not None or value_extra is not None
        if wanted is None and wanted_extra is None:
            if present:
                message = (
                    f"The element {name} is present in the instance but not allowed in the applicable fixed value "
                    "specified in profile"
                )
                run.add("error", "value", message, path)
            continue
        if not present:
            message = f"Missing element '{name}' - required by fixed value assigned in profile {source}"
            run.add("error", "value", message, path)
            continue
        if isinstance(wanted, list) or isinstance(value, list):
            values, wants = _as_list(value), _as_list(wanted)
            if len(values) != len(wants):
                run.add("error", "value", f"Expected {len(wants)} but found {len(values)} {name} elements", expr)
                continue
            extras, wanted_extras = _as_list(value_extra), _as_list(wanted_extra)
            for i, (one, want) in enumerate(zip(values, wants, strict=True)):
                one_extra = extras[i] if i < len(extras) else None
                want_extra = wanted_extras[i] if i < len(wanted_extras) else None
                _fixed_one(one, one_extra, want, want_extra, path, source, context, run)
        else:
            _fixed_one(value, value_extra, wanted, wanted_extra, path, source, context, run)
    _fixed_extensions(item.get("extension"), fixed.get("extension"), expr, source, context, run)


def _fixed_one(
    value: Any, extra: Any, wanted: Any, wanted_extra: Any, path: str, source: str, context: str, run: Run
) -> None:
    if isinstance(wanted, dict) and isinstance(value, dict):
        fixed_value(value, wanted, path, source, context, run)
        return
    if wanted is not None and value != wanted:
        message = f"Value is '{_shown(value)}' but is fixed to '{_shown(wanted)}' in the profile {context}"
        run.add("error", "value", message, path)
    # A primitive's extensions (its JSON "_" companion) are fixed too.
    extensions = extra.get("extension") if isinstance(extra, dict) else None
    wanted_extensions = wanted_extra.get("extension") if isinstance(wanted_extra, dict) else None
    _fixed_extensions(extensions, wanted_extensions, path, source, context, run)


def _fixed_extensions(extensions: Any, wanted: Any, path: str, source: str, context: str, run: Run) -> None:
    found, wants = _as_list(extensions), _as_list(wanted)
    if not wants:
        if found:
            message = "No extensions allowed, as the specified fixed value doesn't contain any extensions"
            run.add("error", "value", message, path)
        return
    if len(found) != len(wants):
        run.add("error", "value", f"Extensions count mismatch: expected {len(wants)} but found {len(found)}", path)
        return
    for want in wants:
        url = want.get("url") if isinstance(want, dict) else None
        match = next((e for e in found if isinstance(e, dict) and e.get("url") == url), None)
        if match is None:
            run.add("error", "value", f"Extension count mismatch: unable to find extension: {url}", path)
        elif isinstance(want, dict):
            fixed_value(match, want, path, source, context, run)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _shown(value: Any) -> str:
    """A primitive as the HL7 validator prints it (JSON true/false, a decimal as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, FhirDecimal):
        return value.text
    return "null" if value is None else str(value)


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
