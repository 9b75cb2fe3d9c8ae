"""Whether a unit is valid UCUM (case-sensitive syntax, https://ucum.org/ucum#section-Syntax-Rules).

A valid UCUM expression is its own code in http://unitsofmeasure.org, so the case model refuses any other unit
and the mappings code every unit as written. The grammar is ucumvert's (MIT, pinned in pyproject.toml): it is
generated from the UCUM specification's own table of prefixes and atoms (ucum-essence.xml, version 2.2) and
parses every example of the specification. Only its grammar file is read, with lark: importing the ucumvert
package would also import pint (its unit conversions), which casebridge does not use and which would add a fifth
of a second to every start.
"""

from __future__ import annotations

import importlib.util
from functools import cache, lru_cache
from pathlib import Path

from lark import Lark
from lark.exceptions import LarkError

SYSTEM = "http://unitsofmeasure.org"
_GRAMMAR = "ucum_grammar.lark"
# Real units are short ("mL/min/{1.73_m2}" is 16 characters); the Earley parse costs about 0.3 ms per character
# of a contrived one, so longer strings are refused without parsing.
MAX_UNIT_LENGTH = 64


@cache
def _parser() -> Lark:
    # find_spec locates the package without running its __init__ (which imports pint).
    spec = importlib.util.find_spec("ucumvert")
    locations = list(spec.submodule_search_locations or ()) if spec else []
    if not locations:
        raise RuntimeError("the ucumvert package (the UCUM grammar) is not installed")
    grammar = (Path(locations[0]) / _GRAMMAR).read_text(encoding="utf-8")
    # Earley, as ucumvert builds it: the grammar is ambiguous (a prefix or an atom: "cd", "mo"), which LALR
    # would resolve by lexing greedily and so refuse valid units.
    return Lark(grammar, start="main_term", strict=True)


@lru_cache(maxsize=4096)
def is_ucum(unit: str) -> bool:
    """True when ``unit`` is a valid UCUM expression (case-sensitive: "mg/dL" and "mg/dl" are, "MG/DL" is not)."""
    if not unit or len(unit) > MAX_UNIT_LENGTH:
        return False
    try:
        _parser().parse(unit)
    except LarkError:
        return False
    return True


def problem(unit: str) -> str | None:
    """Why ``unit`` cannot be used, in plain words, or None when it is valid UCUM."""
    if is_ucum(unit):
        return None
    if len(unit) > MAX_UNIT_LENGTH:
        return f"a unit of {len(unit)} characters is too long for UCUM (at most {MAX_UNIT_LENGTH}); e.g. mg/dL, U/L"
    return f"{unit!r} is not a UCUM unit; write it as UCUM (case-sensitive), e.g. mg/dL, U/L, 10*9/L"
