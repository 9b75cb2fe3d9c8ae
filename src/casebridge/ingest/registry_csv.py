"""A flat registry CSV -> case reports, through the layout in ``mappings/registry-csv.yaml`` (a data file).

The layout is a case-report template whose values name columns ("$age_years:number"); an element whose
columns are all empty is left out, and ``_when: column`` keeps an element only when that column is filled.
Checked when loaded (every "$name" a documented column, known types) with errors naming file and line; a CSV
without a required column is refused before the job starts, naming the file and the columns.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from casebridge.errors import InputError, MappingError
from casebridge.files import open_regular, shown
from casebridge.yamlfile import compose, line_of, mapping_items, scalar

_PLACEHOLDER = re.compile(r"\$([a-z][a-z0-9_]*)(?::(number|bool|list))?")
_ANY_PLACEHOLDER = re.compile(r"\$([a-z][a-z0-9_]*)(?::([a-z]+))?")
_EMPTY = object()


class RowError(InputError):
    """A CSV row that does not fit the layout, with the row's values: its identity in the job state is its
    case_id column (or its values), so that it keeps its key when rows are inserted above it."""

    def __init__(self, message: str, *, source: str, values: dict[str, str]):
        self.values = values
        super().__init__(message, source=source)


csv.field_size_limit(16 * 1024 * 1024)  # a long free-text column is a case's text, not an error (the default is 128 KB)


@dataclass(frozen=True)
class RegistryLayout:
    columns: dict[str, bool]  # name -> required
    template: Any
    file: str

    @classmethod
    def load(cls, path: Path, *, root: Path | None = None) -> RegistryLayout:
        file = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
        try:
            node = compose(path.read_text(encoding="utf-8"), file)
        except OSError as exc:
            raise MappingError(f"cannot read: {exc.strerror}", file=file) from exc
        top = {key: (value, line) for key, value, line in mapping_items(node, file)}
        for needed in ("columns", "case"):
            if needed not in top:
                raise MappingError(f"no '{needed}' section", file=file, line=1)
        columns: dict[str, bool] = {}
        for name, spec, line in mapping_items(top["columns"][0], file):
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
                raise MappingError(f"column name {name!r}: lowercase letters, digits and _", file=file, line=line)
            value = scalar(spec) if isinstance(spec, yaml.MappingNode) else None
            if not isinstance(value, dict):
                raise MappingError("a column is {required: ..., description: ...}", file=file, line=line)
            columns[name] = bool(value.get("required", False))
        template = _check(top["case"][0], columns, file)
        return cls(columns, template, file)

    def rows(self, path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        """(line number, case document or the error that row gives), row by row."""
        try:
            yield from self._rows(path)
        except (csv.Error, UnicodeDecodeError) as exc:
            # The CSV itself is broken from here on (a runaway quote, bytes that are not UTF-8): say where.
            raise InputError(f"unreadable CSV: {exc}", source=shown(path)) from exc

    def _rows(self, path: Path) -> Iterator[tuple[int, dict[str, Any] | RowError]]:
        fd, _ = open_regular(path)  # a FIFO or a device is refused, never opened
        with open(fd, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c, required in self.columns.items() if required and c not in header]
            if missing:
                raise InputError(
                    f"the CSV lacks required columns of the registry layout ({self.file}): {', '.join(missing)}",
                    source=shown(path),
                )
            for row in reader:
                line = reader.line_num
                values = {(k or "").strip(): (v or "").strip() for k, v in row.items() if isinstance(v, str)}
                try:
                    doc = _fill(self.template, values)
                except ValueError as exc:
                    yield line, RowError(str(exc), source=f"{shown(path)}:{line}", values=values)
                    continue
                yield line, doc if isinstance(doc, dict) else {}


def _check(node: yaml.Node, columns: dict[str, bool], file: str) -> Any:
    """The template as plain data, every placeholder checked against the documented columns."""
    if isinstance(node, yaml.MappingNode):
        return {key: _check(value, columns, file) for key, value, _ in mapping_items(node, file)}
    if isinstance(node, yaml.SequenceNode):
        return [_check(item, columns, file) for item in node.value]
    value = scalar(node)
    if isinstance(value, str):
        names = [m.group(1) for m in _PLACEHOLDER.finditer(value)]
        typed = [m.group(2) for m in _ANY_PLACEHOLDER.finditer(value) if m.group(2)]
        if ("$" in value and not names) or any(t not in ("number", "bool", "list") for t in typed):
            raise MappingError(
                f"{value!r}: a placeholder is $column or $column:number|bool|list", file=file, line=line_of(node)
            )
        for name in names:
            if name not in columns:
                raise MappingError(f"${name}: not a documented column (see columns:)", file=file, line=line_of(node))
    return value


def _fill(template: Any, row: dict[str, str]) -> Any:
    """The template with the row's values; empty elements dropped (returns _EMPTY when nothing is left)."""
    if isinstance(template, dict):
        when = template.get("_when")
        if when is not None and not row.get(str(when)):
            return _EMPTY
        out = {}
        placeholders = filled = 0
        for key, value in template.items():
            if key == "_when":
                continue
            result = _fill(value, row)
            if _has_placeholder(value):
                placeholders += 1
                filled += result is not _EMPTY
            if result is not _EMPTY:
                out[key] = result
        if placeholders and not filled:
            return _EMPTY
        return out
    if isinstance(template, list):
        items = [r for r in (_fill(item, row) for item in template) if r is not _EMPTY]
        return items if items else _EMPTY
    if isinstance(template, str) and "$" in template:
        match = _PLACEHOLDER.fullmatch(template)
        if match:
            return _typed(row.get(match.group(1), ""), match.group(2), match.group(1))
        text = _PLACEHOLDER.sub(lambda m: row.get(m.group(1), ""), template)
        return text if text.strip() else _EMPTY
    return template


def _typed(text: str, kind: str | None, column: str) -> Any:
    if text == "":
        return _EMPTY
    if kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"column {column}: {text[:40]!r} is not a number") from None
        return int(number) if number.is_integer() else number
    if kind == "bool":
        lowered = text.lower()
        if lowered not in ("yes", "no", "true", "false"):
            raise ValueError(f"column {column}: {text[:40]!r} is not yes/no")
        return lowered in ("yes", "true")
    if kind == "list":
        return [part.strip() for part in text.split(";") if part.strip()] or _EMPTY
    return text


def _has_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return "$" in value
    if isinstance(value, dict):
        return any(_has_placeholder(v) for k, v in value.items() if k != "_when")
    if isinstance(value, list):
        return any(_has_placeholder(v) for v in value)
    return False
