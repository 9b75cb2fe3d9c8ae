"""An immutable FHIR search: each method returns a new ``Search``, so a base query can be shared and refined.

    reports = Search("DiagnosticReport").include("DiagnosticReport:result")
    mine = reports.where(patient="Patient/123", category="SP").since("2026-01-01")

Values are strings; a list means OR (joined with commas, each value's own commas escaped), repeating a
parameter means AND. Parameter names may carry a modifier (``code:text``) or, as keyword arguments, use
``__`` for the colon (``code__text="calcification"``).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9_.-]*(:[A-Za-z][A-Za-z0-9_.-]*)?")
_TYPE = re.compile(r"[A-Z][A-Za-z]+")
Value = str | int | dt.date | dt.datetime


def _text(value: Value) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)


def _escape(value: str) -> str:
    # FHIR search escaping: a literal \ , $ or | inside one value is preceded by \ (only , matters when joining).
    return value.replace("\\", "\\\\").replace(",", "\\,")


@dataclass(frozen=True, slots=True)
class Search:
    resource_type: str
    params: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _TYPE.fullmatch(self.resource_type):
            raise ValueError(f"{self.resource_type!r} is not a FHIR resource type")

    def param(self, name: str, value: Value | Iterable[Value]) -> Search:
        """Add ``name=value`` (a list or tuple of values: any of them)."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a search parameter name")
        if isinstance(value, str | int | dt.date | dt.datetime):
            text = _text(value)
        else:
            values = [_text(v) for v in value]
            if not values:
                raise ValueError(f"{name}: no values")
            text = ",".join(_escape(v) for v in values)
        if text == "":
            raise ValueError(f"{name}: empty value")
        return replace(self, params=(*self.params, (name, text)))

    def where(self, **criteria: Value | Iterable[Value]) -> Search:
        """Add criteria; ``code__text=...`` is ``code:text=...``. ``None`` is not allowed: leave it out."""
        query = self
        for key, value in criteria.items():
            query = query.param(key.replace("__", ":"), value)
        return query

    def include(self, *specs: str) -> Search:
        """``_include`` (``DiagnosticReport:result``), one parameter per spec."""
        query = self
        for spec in specs:
            query = query.param("_include", spec)
        return query

    def revinclude(self, *specs: str) -> Search:
        query = self
        for spec in specs:
            query = query.param("_revinclude", spec)
        return query

    def since(self, instant: Value) -> Search:
        """Resources created or changed at or after ``instant`` (``_lastUpdated=ge...``)."""
        return self.param("_lastUpdated", f"ge{_text(instant)}")

    def count(self, page_size: int) -> Search:
        if page_size < 1:
            raise ValueError("page size must be at least 1")
        kept = tuple(p for p in self.params if p[0] != "_count")
        return replace(self, params=(*kept, ("_count", str(page_size))))

    def sort(self, *fields: str) -> Search:
        return replace(self, params=tuple(p for p in self.params if p[0] != "_sort")).param("_sort", ",".join(fields))

    def summary_count(self) -> Search:
        """Only the total (``_summary=count``)."""
        return self.param("_summary", "count")

    def query(self) -> list[tuple[str, str]]:
        return list(self.params)

    def __str__(self) -> str:
        from urllib.parse import urlencode

        return f"{self.resource_type}?{urlencode(self.params)}" if self.params else self.resource_type
