"""Code tables: CSV files in ``mappings/codes/``, one table per file, named by the file's stem.

Columns: ``key,system,code,display,source,note``. A key may have several rows (several codings of one
concept, e.g. a SNOMED CT and an ICD-10-CM code). A row with an empty ``code`` makes the key known but
uncoded: the concept is carried as ``CodeableConcept.text`` only, and ``display`` is that text where a
template asks for a fixed concept.

Every coded row cites its ``source``: the path of an entry in the project's terminology file
(``case-codes.yaml``), e.g. ``snomed_ct.right_forearm_structure`` or ``loinc.calcium[17861-6]`` (a
``[code]`` picks the list item with that code). When the terminology file is available the citation is
checked: the entry must exist, be ``confirmed: true`` and carry the same code and system, and the display
must be the entry's (its semantic tag may be dropped). A code that is not confirmed can therefore not be
used by editing a CSV alone.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from casebridge.errors import MappingError

COLUMNS = ("key", "system", "code", "display", "source", "note")
_URI = re.compile(r"^(https?://|urn:)[^\s]+$")


@dataclass(frozen=True)
class CodeRow:
    key: str
    system: str
    code: str
    display: str
    source: str
    file: str
    line: int

    @property
    def coded(self) -> bool:
        return bool(self.code)

    def coding(self) -> dict[str, str]:
        out = {"system": self.system, "code": self.code}
        if self.display:
            out["display"] = self.display
        return out


@dataclass
class CodeTable:
    name: str
    file: str
    rows: dict[str, list[CodeRow]] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def codings(self, key: str) -> list[dict[str, str]]:
        return [r.coding() for r in self.rows.get(key, ()) if r.coded]

    def text(self, key: str) -> str | None:
        """The display of the key's first row: the words used when a concept has no code."""
        rows = self.rows.get(key)
        return rows[0].display or None if rows else None


def load_table(path: Path, *, label: str | None = None) -> CodeTable:
    name = label or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"cannot read code table: {exc}", file=name) from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise MappingError("the code table is empty; its first line must be the header", file=name, line=1) from None
    if tuple(h.strip() for h in header) != COLUMNS:
        raise MappingError(f"the header must be {','.join(COLUMNS)} (got {','.join(header)})", file=name, line=1)
    table = CodeTable(name=path.stem, file=name)
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if len(cells) != len(COLUMNS):
            raise MappingError(
                f"expected {len(COLUMNS)} columns ({','.join(COLUMNS)}), found {len(cells)}", file=name, line=line
            )
        key, system, code, display, source, _note = (c.strip() for c in cells)
        if not key:
            raise MappingError("the key is empty", file=name, line=line)
        if code and not system:
            raise MappingError(f"code {code!r} has no system", file=name, line=line)
        if system and not _URI.match(system):
            raise MappingError(f"system {system!r} is not an absolute URI", file=name, line=line)
        if code and not source:
            raise MappingError(
                f"code {code!r} cites no source: every code must come from a confirmed entry of the "
                "terminology file (give its path in the source column)",
                file=name,
                line=line,
            )
        if not code and not display:
            raise MappingError("an uncoded row needs a display (the text to carry)", file=name, line=line)
        rows = table.rows.setdefault(key, [])
        if any(r.system == system and r.code == code for r in rows if code):
            raise MappingError(f"{key!r} lists {system}|{code} twice", file=name, line=line)
        if rows and (not code or not rows[0].coded):
            raise MappingError(
                f"{key!r}: an uncoded row cannot be combined with other rows of the same key",
                file=name,
                line=line,
            )
        rows.append(CodeRow(key, system, code, display, source, name, line))
    return table


def load_tables(folder: Path, *, root: Path | None = None) -> dict[str, CodeTable]:
    if not folder.is_dir():
        raise MappingError("the code table folder does not exist", file=_rel(folder, root))
    return {p.stem: load_table(p, label=_rel(p, root)) for p in sorted(folder.glob("*.csv"))}


def _rel(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root else str(path)
    except ValueError:
        return str(path)


# --- checking citations against the terminology file ------------------------------------------------------

_SEGMENT = re.compile(r"([A-Za-z0-9_]+)(?:\[([^\]]+)\])?(?:\.|$)")


def load_terminology(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"cannot read the terminology file: {exc}", file=str(path)) from exc
    if not isinstance(doc, dict):
        raise MappingError("the terminology file is not a YAML mapping", file=str(path))
    return doc


def resolve_citation(terminology: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The cited entry and its ancestors (nearest last). Raises KeyError with a reason."""
    node: Any = terminology
    ancestors: list[dict[str, Any]] = []
    pos = 0
    while pos < len(source):
        m = _SEGMENT.match(source, pos)
        if not m or not isinstance(node, dict):
            raise KeyError(f"{source[pos:]!r} is not a path here")
        pos = m.end()
        name, selector = m.groups()
        if name not in node:
            raise KeyError(f"no entry {name!r}")
        ancestors.append(node)
        node = node[name]
        if selector is not None:
            if not isinstance(node, list):
                raise KeyError(f"{name!r} is not a list, so [{selector}] selects nothing")
            hits = [i for i in node if isinstance(i, dict) and str(i.get("code")) == selector]
            if len(hits) != 1:
                raise KeyError(f"{name!r} has {len(hits)} items with code {selector!r}")
            node = hits[0]
    if not isinstance(node, dict):
        raise KeyError("the path does not end at an entry")
    return node, ancestors


def _nearest(entry: dict[str, Any], ancestors: list[dict[str, Any]], *names: str) -> Any:
    for scope in [entry, *reversed(ancestors)]:
        for n in names:
            if n in scope and not isinstance(scope[n], (dict, list)):
                return scope[n]
    return None


def _without_tag(display: str) -> str:
    return re.sub(r"\s*\([a-z][a-z /-]*\)$", "", display)


def check_citations(tables: Mapping[str, CodeTable], terminology: Mapping[str, Any], *, file: str) -> None:
    for table in tables.values():
        for rows in table.rows.values():
            for row in rows:
                if not row.coded:
                    continue
                try:
                    entry, ancestors = resolve_citation(terminology, row.source)
                except KeyError as exc:
                    raise MappingError(
                        f"source {row.source!r} is not an entry of {file}: {exc.args[0]}",
                        file=row.file,
                        line=row.line,
                    ) from None
                if _nearest(entry, ancestors, "confirmed") is not True:
                    raise MappingError(
                        f"source {row.source!r} is not confirmed in {file}: its code cannot be used",
                        file=row.file,
                        line=row.line,
                    )
                if str(entry.get("code")) != row.code:
                    raise MappingError(
                        f"code {row.code!r} differs from the cited entry's code {entry.get('code')!r}",
                        file=row.file,
                        line=row.line,
                    )
                system = _nearest(entry, ancestors, "system", "modality_system")
                if system is not None and system != row.system:
                    raise MappingError(
                        f"system {row.system!r} differs from the cited entry's system {system!r}",
                        file=row.file,
                        line=row.line,
                    )
                display = entry.get("display")
                if row.display and display and row.display not in (display, _without_tag(str(display))):
                    raise MappingError(
                        f"display {row.display!r} differs from the cited entry's display {display!r}",
                        file=row.file,
                        line=row.line,
                    )
