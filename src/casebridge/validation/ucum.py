"""Just enough UCUM to compare quantities offline: common metric units of mass, length, volume,
amount and time, reduced to one base unit per dimension. Anything else is "not comparable"."""

from __future__ import annotations

_PREFIX = {"": 1.0, "k": 1e3, "d": 1e-1, "c": 1e-2, "m": 1e-3, "u": 1e-6, "n": 1e-9, "p": 1e-12}
_BASE = {"g": "mass", "m": "length", "L": "volume", "l": "volume", "mol": "amount", "s": "time"}
_TIME = {"min": 60.0, "h": 3600.0, "d": 86400.0, "wk": 604800.0, "mo": 2629800.0, "a": 31557600.0}


def to_base(value: float, code: object) -> tuple[float, str] | None:
    """(value in the dimension's base unit, dimension), or None when the unit is not one we know."""
    if not isinstance(code, str):
        return None
    if code in _TIME:
        return value * _TIME[code], "time"
    for base, dimension in _BASE.items():
        if code.endswith(base):
            prefix = code[: -len(base)]
            if prefix in _PREFIX:
                return value * _PREFIX[prefix], dimension
    return None
