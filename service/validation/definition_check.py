"""Definitions a user gives (``casebridge validate --definitions``): refused up front when unusable.

``check_loose_definitions`` checks their JSON shape (``structure.check_definition``) and builds what the
validator would build from each (the snapshot and the element tree, the value set's expansion), so that a
definition that cannot be used is refused up front, naming its file and element, instead of failing (or
being skipped by) the validation that needs it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from service.errors import InputError
from service.fhir.packages import DefinitionIndex, DefinitionInfo
from service.validation.snapshot import generate_snapshot, needs_snapshot
from service.validation.structure import (
    DefinitionError,
    Definitions,
    DefinitionShapeError,
    check_definition,
    compile_structure,
)
from service.validation.terminology import Terminology


def _file_of(record: DefinitionInfo) -> str:
    return record.file or record.source


def _usable(record: DefinitionInfo, resource: dict[str, Any], definitions: Definitions) -> None:
    """Build what the validator builds from this definition; raises DefinitionError when it cannot."""
    if record.resource_type == "StructureDefinition":
        try:
            sd = generate_snapshot(resource, definitions) if needs_snapshot(resource) else resource
            if (sd.get("snapshot") or {}).get("element"):
                compile_structure(sd)
        except RecursionError as exc:
            raise DefinitionError("its definitions refer to each other without end") from exc
    elif record.resource_type == "ValueSet" and record.url:
        terminology = Terminology(definitions)
        terminology.expand(record.url)
        why = terminology.unusable.get(record.url)
        if why:
            raise DefinitionError(why)


def check_loose_definitions(index: Definitions, sources: Iterable[Path]) -> None:
    """Refuse (InputError, naming the file and the element) a definition read from ``sources`` (files or
    folders given by a user) that the validator could not use. The shapes of all are checked before any is
    built, so that a shape error is named in its own file rather than in a profile built on it."""
    roots = [str(p) for p in sources]
    if not roots or not isinstance(index, DefinitionIndex):
        return
    records = [r for r in index.records() if r.package is None and any(_within(r.source, root) for root in roots)]
    for record in records:
        try:
            check_definition(index.resource(record))
        except DefinitionShapeError as exc:
            raise InputError(f"{exc.location}: {exc.problem}", source=_file_of(record)) from exc
    for record in records:
        try:
            _usable(record, index.resource(record), index)
        except DefinitionError as exc:
            what = f"{record.resource_type} {record.url or record.id or ''}".rstrip()
            raise InputError(f"{what} cannot be used: {exc}", source=_file_of(record)) from exc


def _within(source: str, root: str) -> bool:
    return source == root or source.startswith(root.rstrip("/") + "/") or source.startswith(root + " (entry ")
