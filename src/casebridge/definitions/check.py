"""Definitions a user gives (``casebridge validate --definitions``): refused, naming the file, when unusable.

Two steps. Before validating, ``check_loose_definitions`` checks the JSON shape of every definition read from
the user's files (``structure.check_definition``): a wrong shape is refused naming the file and the element
(``my-sd.json: StructureDefinition.differential.element[3].type: expected a list of objects``). After
validating, ``check_used_definitions`` refuses a definition from those files that the validation needed but
could not build (its base is unknown or circular, a path names no element...): the validation could not
check what was asked. Definitions that were not needed are not built: a folder of published definitions
holds some that cannot be (R4's own familymemberhistory-genetic lists a slice without its base element).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from casebridge.definitions.packages import DefinitionIndex, DefinitionInfo
from casebridge.definitions.structure import Definitions, DefinitionShapeError, check_definition
from casebridge.errors import InputError

CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


def _file_of(record: DefinitionInfo) -> str:
    return record.file or record.source


def _given(index: DefinitionIndex, sources: Iterable[Path]) -> list[DefinitionInfo]:
    roots = [str(p) for p in sources]
    return [r for r in index.records() if r.package is None and any(_within(r.source, root) for root in roots)]


def _within(source: str, root: str) -> bool:
    return source == root or source.startswith(root.rstrip("/") + "/") or source.startswith(root + " (entry ")


def check_loose_definitions(index: Definitions, sources: Iterable[Path]) -> None:
    """Refuse (InputError naming the file and the element) a definition read from ``sources`` (files or
    folders given by a user) whose JSON is not shaped as the validator reads it."""
    if not isinstance(index, DefinitionIndex):
        return
    for record in _given(index, sources):
        try:
            check_definition(index.resource(record))
        except DefinitionShapeError as exc:
            raise InputError(f"{exc.location}: {exc.problem}", source=_file_of(record)) from exc


def check_used_definitions(index: Definitions, unusable: Mapping[str, str], sources: Iterable[Path]) -> None:
    """Refuse (InputError naming the file) a definition read from ``sources`` that a validation needed and
    could not use; ``unusable`` is what the validator and its terminology recorded (canonical -> why)."""
    if not isinstance(index, DefinitionIndex) or not unusable:
        return
    given = set(_given(index, sources))
    for canonical, why in unusable.items():
        if canonical.startswith("type:"):  # a base type, replaced by a loose definition of its own url
            canonical = CORE_PREFIX + canonical.removeprefix("type:")
        record = index.get_info(canonical) or index.get_info(canonical.split("|")[0])
        if record is not None and record in given:
            what = f"{record.resource_type} {record.url or record.id or ''}".rstrip()
            raise InputError(f"{what} cannot be used: {why}", source=_file_of(record))
