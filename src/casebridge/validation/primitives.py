"""FHIR R4 primitive types: their JSON representation and value formats.

The regular expressions are those of the R4 (4.0.1) primitive type definitions; they are fixed for
the version, so they are written here once rather than read from the packages on every start. Dates
are also checked for existence (no 30 February), as the HL7 validator does.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable

_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_TZ = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"

REGEX: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern)
    for name, pattern in {
        "date": rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?",
        "dateTime": rf"{_YEAR}(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T{_TIME}{_TZ})?)?)?",
        "instant": rf"{_YEAR}-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T{_TIME}{_TZ}",
        "time": _TIME,
        "code": r"[^\s]+(\s[^\s]+)*",
        "id": r"[A-Za-z0-9\-\.]{1,64}",
        "oid": r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+",
        "uuid": r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        "uri": r"\S*",
        "url": r"\S*",
        "canonical": r"\S*",
    }.items()
}

STRING_TYPES = frozenset(
    {
        "string",
        "code",
        "id",
        "markdown",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "date",
        "dateTime",
        "instant",
        "time",
        "base64Binary",
        "xhtml",
    }
)
INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})
PRIMITIVES = STRING_TYPES | INTEGER_TYPES | {"boolean", "decimal"}
MAX_STRING = 1024 * 1024  # 1 MB: the R4 limit on a string value


def _valid_date(text: str) -> bool:
    parts = text[:10].split("-")
    if len(parts) < 3:
        return True
    try:
        dt.date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return False
    return True


def _valid_base64(text: str) -> bool:
    compact = re.sub(r"\s+", "", text)
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def check(type_code: str, value: object) -> str | None:
    """None when ``value`` is a valid JSON value of the primitive type, else a message."""
    if type_code == "boolean":
        return None if isinstance(value, bool) else "Error parsing JSON: the primitive value must be a boolean"
    if type_code in INTEGER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"Error parsing JSON: the primitive value must be a number (an {type_code})"
        if type_code == "positiveInt" and value < 1:
            return f"Value {value} is not a positiveInt: it must be 1 or more"
        if type_code == "unsignedInt" and value < 0:
            return f"Value {value} is not an unsignedInt: it must be 0 or more"
        if type_code != "integer64" and not -(2**31) <= value < 2**31:
            return f"Value {value} is out of range for an {type_code}"
        return None
    if type_code == "decimal":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "Error parsing JSON: the primitive value must be a number"
        return None
    if not isinstance(value, str):
        return "Error parsing JSON: the primitive value must be a string"
    if value == "":
        return "value cannot be empty"
    if len(value) > MAX_STRING:
        return "value is longer than permitted maximum length of 1 MB (1048576 bytes)"
    if type_code in ("string", "markdown"):
        return None if value.strip() or type_code == "markdown" else "value should not be all whitespace"
    pattern = REGEX.get(type_code)
    if pattern is not None and not pattern.fullmatch(value):
        formatter = _FORMAT_MESSAGES.get(type_code)
        return formatter(value) if formatter else f"The value '{value}' is not a valid {type_code}"
    if type_code in ("uri", "url", "canonical") and value.startswith(("urn:oid:", "urn:uuid:")):
        # A URN of these two kinds must be well formed wherever a URI is expected.
        kind = "oid" if value.startswith("urn:oid:") else "uuid"
        if not REGEX[kind].fullmatch(value):
            return f"The value '{value}' is not a valid {kind.upper()}"
    if type_code in ("date", "dateTime", "instant") and not _valid_date(value):
        return f"Not a valid date/time ({value})"
    if type_code == "base64Binary" and not _valid_base64(value):
        return f"The value '{value[:40]}' is not a valid Base64 value"
    return None


_FORMAT_MESSAGES: dict[str, Callable[[str], str]] = {
    "date": lambda v: f"Not a valid date format: '{v}'",
    "dateTime": lambda v: f"Not a valid date/time format: '{v}'",
    "instant": lambda v: f"Not a valid instant format: '{v}'",
    "id": lambda v: f"Invalid id: '{v}'",
    "uri": lambda v: f"URI values cannot have whitespace ('{v}')",
    "code": lambda v: f"The code '{v}' is not valid (whitespace rules)",
}
