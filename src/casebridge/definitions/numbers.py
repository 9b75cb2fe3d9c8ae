"""FHIR decimals keep the digits they were written with.

FHIR says a decimal's precision is part of its value (2.50 is not 2.5). JSON read with orjson already gives
floats, and JSON bodies are forwarded byte for byte; but a decimal read from FHIR XML must be written as JSON
by us. ``FhirDecimal`` is a float (so validation treats it as the number it is) that remembers its text, and
``json_default`` makes orjson write that text unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

# The FHIR decimal grammar, which is also a valid JSON number: nothing else is written verbatim.
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


class FhirDecimal(float):
    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> FhirDecimal:
        if not _DECIMAL.fullmatch(text):
            raise ValueError(f"not a FHIR decimal: {text!r}")
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __reduce__(self) -> tuple[type[FhirDecimal], tuple[str]]:
        return (FhirDecimal, (self.text,))

    def __repr__(self) -> str:
        return self.text


def json_default(value: Any) -> Any:
    """orjson's ``default``: a FhirDecimal is written as it was read."""
    if isinstance(value, FhirDecimal):
        return orjson.Fragment(value.text.encode("ascii"))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
