"""A SQL on FHIR v2 ViewDefinition, read and checked into an immutable plan.

Every problem is reported at the element that has it, as a path into the ViewDefinition
(``select[0].column[2].name``), in a ViewDefinitionError (an InputError: the CLI exits 2, the API answers 400, and
``outcome()`` gives the OperationOutcome). Expressions are compiled here, once, by _fhirpath.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from casebridge.errors import InputError, Problem
from casebridge.views._fhirpath import (
    PRIMITIVES,
    CompiledPath,
    Constant,
    FhirPathCompileError,
    compile_path,
    is_resource_type,
)

# The spec's names for columns and constants: usable as SQL names in any database.
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_VALUE_KEY = re.compile(r"^value[A-Z][A-Za-z0-9]*$")


class ViewDefinitionError(InputError):
    """A ViewDefinition that cannot be run. ``problems`` name the elements (``select[0].column[2].name``)."""

    def outcome(self) -> dict[str, Any]:
        """The problems as an OperationOutcome, each issue's expression naming its element."""
        issues = []
        for problem in self.problems:
            issue: dict[str, Any] = {"severity": "error", "code": "invalid", "diagnostics": problem.message}
            if problem.location:
                issue["expression"] = [problem.location]
            issues.append(issue)
        return {"resourceType": "OperationOutcome", "issue": issues}


@dataclass(frozen=True)
class ColumnPlan:
    name: str
    path: CompiledPath
    collection: bool
    type: str | None  # the declared type (``type``), as given
    location: str


@dataclass(frozen=True)
class SelectPlan:
    """One ``select``: its rows are its columns', times each nested select's, times the union of its unionAll
    branches'; computed for each item of forEach/forEachOrNull/repeat, or once for the focus when none."""

    columns: tuple[ColumnPlan, ...]
    selects: tuple[SelectPlan, ...]
    union: tuple[SelectPlan, ...]
    for_each: CompiledPath | None
    or_null: bool  # forEachOrNull: one row of nulls when there is nothing to iterate
    repeat: tuple[tuple[CompiledPath, CompiledPath], ...]  # (from the focus, from a repeated item) per expression
    names: tuple[str, ...]  # the columns this select yields, in order (its own, then nested, then unionAll's)
    location: str


@dataclass(frozen=True)
class OutputColumn:
    name: str
    type: str | None
    collection: bool


@dataclass(frozen=True)
class ViewPlan:
    resource: str
    name: str | None
    root: SelectPlan
    where: tuple[tuple[CompiledPath, str], ...]  # (expression, its location)
    columns: tuple[OutputColumn, ...]
    constants: Mapping[str, Constant]

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def fallback_paths(self) -> tuple[str, ...]:
        """The expressions evaluated by fhirpathpy rather than compiled (for tests and diagnostics)."""
        found: list[str] = [p.text for p, _ in self.where if not p.compiled]

        def walk(select: SelectPlan) -> None:
            paths = [c.path for c in select.columns]
            if select.for_each is not None:
                paths.append(select.for_each)
            for pair in select.repeat:
                paths.extend(pair)
            found.extend(p.text for p in paths if not p.compiled)
            for sub in (*select.selects, *select.union):
                walk(sub)

        walk(self.root)
        return tuple(dict.fromkeys(found))


class _Reader:
    def __init__(self, resource: str, constants: Mapping[str, Constant]) -> None:
        self.resource = resource
        self.constants = constants
        self.problems: list[Problem] = []

    def fail(self, location: str, message: str) -> None:
        self.problems.append(Problem(location, message))

    def path(self, value: Any, context: str | None, location: str) -> CompiledPath | None:
        if not isinstance(value, str) or not value.strip():
            self.fail(location, "must be a FHIRPath expression (a non-empty string)")
            return None
        try:
            return compile_path(value, context, self.constants, self.resource)
        except FhirPathCompileError as exc:
            self.fail(location, str(exc))
            return None

    def select(self, raw: Any, context: str | None, location: str) -> SelectPlan | None:
        if not isinstance(raw, dict):
            self.fail(location, "must be an object")
            return None
        known = {"column", "select", "unionAll", "forEach", "forEachOrNull", "repeat"}
        for key in raw:
            if key not in known and not key.startswith("_") and key not in ("extension", "id"):
                self.fail(f"{location}.{key}", f"unknown element {key!r} of a select")
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in raw]
        if len(iterators) > 1:
            self.fail(location, f"only one of forEach, forEachOrNull and repeat may be given, not {iterators}")
        for_each: CompiledPath | None = None
        or_null = False
        repeat: list[tuple[CompiledPath, CompiledPath]] = []
        focus = context
        if "forEach" in raw or "forEachOrNull" in raw:
            key = "forEach" if "forEach" in raw else "forEachOrNull"
            or_null = key == "forEachOrNull"
            for_each = self.path(raw[key], context, f"{location}.{key}")
            focus = for_each.type if for_each is not None else None
        elif "repeat" in raw:
            focus = self.repeat(raw["repeat"], context, f"{location}.repeat", repeat)
        columns = self.columns(raw.get("column"), focus, f"{location}.column")
        selects = self.selects(raw.get("select"), focus, f"{location}.select", required=False)
        union = self.selects(raw.get("unionAll"), focus, f"{location}.unionAll", required=False)
        if "unionAll" in raw:
            self.agree(union, f"{location}.unionAll")
        names = (
            *(c.name for c in columns),
            *(n for s in selects for n in s.names),
            *(union[0].names if union else ()),
        )
        return SelectPlan(columns, selects, union, for_each, or_null, tuple(repeat), names, location)

    def repeat(
        self, raw: Any, context: str | None, location: str, out: list[tuple[CompiledPath, CompiledPath]]
    ) -> str | None:
        if not isinstance(raw, list) or not raw:
            self.fail(location, "must be a list of FHIRPath expressions")
            return None
        firsts = [self.path(text, context, f"{location}[{i}]") for i, text in enumerate(raw)]
        types = {first.type for first in firsts if first is not None and first.type is not None}
        # Below the first level the focus is a repeated item: typed as the first level's items when all agree.
        item_type = next(iter(types)) if len(types) == 1 else None
        for text, first in zip(raw, firsts, strict=True):
            if first is None:
                continue
            deeper = compile_path(text, item_type, self.constants, self.resource)
            if item_type is not None and deeper.type != item_type:
                item_type = None
            out.append((first, deeper))
        return item_type

    def selects(self, raw: Any, context: str | None, location: str, *, required: bool) -> tuple[SelectPlan, ...]:
        if raw is None:
            if required:
                self.fail(location, "is required")
            return ()
        if not isinstance(raw, list) or (required and not raw):
            self.fail(location, "must be a non-empty list")
            return ()
        found = []
        for i, item in enumerate(raw):
            plan = self.select(item, context, f"{location}[{i}]")
            if plan is not None:
                found.append(plan)
        return tuple(found)

    def agree(self, union: tuple[SelectPlan, ...], location: str) -> None:
        if not union:
            self.fail(location, "must be a non-empty list")
            return
        first = union[0].names
        for branch in union[1:]:
            if branch.names != first:
                self.fail(
                    branch.location,
                    f"a unionAll branch must have the same columns in the same order as the first: "
                    f"{list(branch.names)} is not {list(first)}",
                )

    def columns(self, raw: Any, context: str | None, location: str) -> tuple[ColumnPlan, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list) or not raw:
            self.fail(location, "must be a non-empty list")
            return ()
        found = []
        for i, item in enumerate(raw):
            at = f"{location}[{i}]"
            if not isinstance(item, dict):
                self.fail(at, "must be an object")
                continue
            name = item.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                self.fail(f"{at}.name", f"must be a name of letters, digits and _ starting with a letter, not {name!r}")
                continue
            collection = item.get("collection", False)
            if not isinstance(collection, bool):
                self.fail(f"{at}.collection", "must be true or false")
                continue
            declared = item.get("type")
            if declared is not None and not isinstance(declared, str):
                self.fail(f"{at}.type", "must be a type name")
                continue
            path = self.path(item.get("path"), context, f"{at}.path")
            if path is not None:
                found.append(ColumnPlan(name, path, collection, declared, at))
        return tuple(found)

    def constant(self, raw: Any, location: str) -> Constant | None:
        if not isinstance(raw, dict):
            self.fail(location, "must be an object")
            return None
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            self.fail(
                f"{location}.name", f"must be a name of letters, digits and _ starting with a letter, not {name!r}"
            )
            return None
        values = [k for k in raw if _VALUE_KEY.match(k)]
        if len(values) != 1:
            self.fail(location, f"constant {name!r} needs exactly one value[x], not {len(values)}")
            return None
        key = values[0]
        fhir_type = key[5:6].lower() + key[6:]
        fhir_type = fhir_type if fhir_type in PRIMITIVES else key[5:]
        value = raw[key]
        if value is None or isinstance(value, (dict, list)):
            self.fail(f"{location}.{key}", "must be a primitive value")
            return None
        return Constant(name, value, fhir_type)


def _check_output(reader: _Reader, root: SelectPlan) -> tuple[OutputColumn, ...]:
    seen: dict[str, str] = {}
    out: list[OutputColumn] = []

    def walk(select: SelectPlan) -> None:
        for column in select.columns:
            if column.name in seen:
                reader.fail(f"{column.location}.name", f"column {column.name!r} is also defined at {seen[column.name]}")
            else:
                seen[column.name] = column.location
                out.append(OutputColumn(column.name, column.type, column.collection))
        for sub in select.selects:
            walk(sub)
        if select.union:
            # The branches agree (or that was reported): the first names the columns.
            walk(select.union[0])
            for branch in select.union[1:]:
                _check_branch(reader, branch)

    walk(root)
    by_name = {c.name: c for c in out}
    return tuple(by_name[n] for n in root.names if n in by_name)


def _check_branch(reader: _Reader, branch: SelectPlan) -> None:
    """Duplicates inside a later unionAll branch (its names equal the first's, checked by ``agree``)."""
    names: list[str] = []

    def walk(select: SelectPlan) -> None:
        names.extend(c.name for c in select.columns)
        for sub in select.selects:
            walk(sub)
        if select.union:
            walk(select.union[0])

    walk(branch)
    if len(set(names)) != len(names):
        reader.fail(branch.location, "a column name is used twice")


def read_view(view: Any, *, source: str = "ViewDefinition") -> ViewPlan:
    """Check ``view`` (a ViewDefinition as JSON) and compile it. Raises ViewDefinitionError naming every element
    that is wrong."""
    if not isinstance(view, dict):
        raise ViewDefinitionError("a ViewDefinition must be a JSON object", source=source)
    problems: list[Problem] = []
    kind = view.get("resourceType")
    if kind is not None and kind != "ViewDefinition":
        problems.append(Problem("resourceType", f"must be ViewDefinition, not {kind!r}"))
    resource = view.get("resource")
    if not isinstance(resource, str) or not resource:
        problems.append(Problem("resource", "is required: the FHIR resource type the view reads"))
        resource = ""
    elif not is_resource_type(resource):
        problems.append(Problem("resource", f"{resource!r} is not a FHIR R4 resource type"))
    name = view.get("name")
    if name is not None and (not isinstance(name, str) or not _NAME.match(name)):
        problems.append(
            Problem("name", f"must be a name of letters, digits and _ starting with a letter, not {name!r}")
        )

    constants: dict[str, Constant] = {}
    reader = _Reader(resource, constants)
    raw_constants = view.get("constant", [])
    if not isinstance(raw_constants, list):
        reader.fail("constant", "must be a list")
        raw_constants = []
    for i, raw in enumerate(raw_constants):
        constant = reader.constant(raw, f"constant[{i}]")
        if constant is not None:
            if constant.name in constants:
                reader.fail(f"constant[{i}].name", f"constant {constant.name!r} is defined twice")
            constants[constant.name] = constant

    context = resource or None
    selects = reader.selects(view.get("select"), context, "select", required=True)
    root = SelectPlan((), selects, (), None, False, (), tuple(n for s in selects for n in s.names), "")
    columns = _check_output(reader, root)

    where: list[tuple[CompiledPath, str]] = []
    raw_where = view.get("where", [])
    if not isinstance(raw_where, list):
        reader.fail("where", "must be a list")
        raw_where = []
    for i, item in enumerate(raw_where):
        at = f"where[{i}]"
        if not isinstance(item, dict):
            reader.fail(at, "must be an object")
            continue
        path = reader.path(item.get("path"), context, f"{at}.path")
        if path is None:
            continue
        if path.type is not None and path.type != "boolean":
            reader.fail(f"{at}.path", f"must give a boolean, not a {path.type}")
            continue
        where.append((path, f"{at}.path"))

    problems.extend(reader.problems)
    if problems:
        count = f"{len(problems)} problems" if len(problems) > 1 else str(problems[0])
        raise ViewDefinitionError(f"the ViewDefinition cannot be run: {count}", source=source, problems=problems)
    return ViewPlan(resource, name if isinstance(name, str) else None, root, tuple(where), columns, dict(constants))
