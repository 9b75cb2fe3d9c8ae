"""Running a ViewDefinition plan over resources, one resource at a time.

Rows are yielded as tuples in the order of ``plan.columns``. A resource's rows are all computed before the first
is yielded, so a resource the view cannot read (a column that is not a collection giving several values, a where
that gives no boolean) raises ViewEvaluationError before any of its rows is out; what the caller had already
received came from the resources before it. Nothing else is held: memory does not grow with the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import product
from typing import Any

from casebridge.errors import InputError, Problem
from casebridge.views._definition import ColumnPlan, SelectPlan, ViewPlan
from casebridge.views._fhirpath import SLOW, Env, Row, row_function


class ViewEvaluationError(InputError):
    """A resource the view cannot read. The problem's location is the element of the view that failed
    (``select[0].column[1].path``); the message names the resource."""


class _Failure(Exception):
    def __init__(self, location: str, message: str) -> None:
        super().__init__(message)
        self.location = location
        self.message = message


def _column_value(column: ColumnPlan, focus: list[Any], env: Env) -> Any:
    path = column.path
    if column.collection:
        return path.evaluate(focus, env)
    if len(focus) == 1 and path.one is not None:
        value = path.one(focus[0])
        if value is not SLOW:
            return value
    values = path.evaluate(focus, env)
    if not values:
        return None
    if len(values) > 1:
        raise _Failure(
            f"{column.location}.path",
            f"column {column.name!r} gives {len(values)} values; only a column with collection: true may",
        )
    return values[0]


def _repeat(select: SelectPlan, item: Any, env: Env) -> list[Any]:
    """The items reached from ``item`` by the repeat expressions, depth first (each item, then what is reached
    from it), without recursion so that deep nesting cannot overflow the stack."""
    out: list[Any] = []
    stack: list[tuple[Any, int]] = [(item, 0)]
    while stack:
        node, level = stack.pop()
        if level > 0:
            out.append(node)
        children: list[Any] = []
        for first, deeper in select.repeat:
            children.extend((first if level == 0 else deeper).evaluate([node], env))
        stack.extend((child, level + 1) for child in reversed(children))
    return out


def _rows(select: SelectPlan, focus: list[Any], index: int, resource: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The rows of ``select`` on ``focus`` (one item, or none for forEachOrNull's row of nulls)."""
    foci: list[tuple[int, list[Any]]]
    if select.for_each is not None or select.repeat:
        if select.for_each is not None:
            items = select.for_each.evaluate(focus, Env(resource, index))
        else:
            items = _repeat(select, focus[0], Env(resource, index)) if focus else []
        if not items:
            if not select.or_null:
                return []
            return [_null_row(select, resource)]
        foci = [(i, [item]) for i, item in enumerate(items)]
    else:
        foci = [(index, focus)]
    out: list[tuple[Any, ...]] = []
    for i, each in foci:
        env = Env(resource, i)
        parts: list[list[tuple[Any, ...]]] = [[tuple(_column_value(c, each, env) for c in select.columns)]]
        for sub in select.selects:
            parts.append(_rows(sub, each, i, resource))
        if select.union:
            branches: list[tuple[Any, ...]] = []
            for branch in select.union:
                branches.extend(_rows(branch, each, i, resource))
            parts.append(branches)
        if len(parts) == 1:
            out.append(parts[0][0])
        else:
            out.extend(sum(combination, ()) for combination in product(*parts))
    return out


def _null_row(select: SelectPlan, resource: dict[str, Any]) -> tuple[Any, ...]:
    """forEachOrNull over nothing: one row, its columns evaluated on an empty focus (so %rowIndex is 0 and the
    rest null); a nested select or unionAll that gives no row there gives nulls."""
    env = Env(resource, 0)
    row = tuple(_column_value(c, [], env) for c in select.columns)
    for sub in select.selects:
        found = _rows(sub, [], 0, resource)
        row += found[0] if found else (None,) * len(sub.names)
    if select.union:
        found = []
        for branch in select.union:
            found.extend(_rows(branch, [], 0, resource))
        row += found[0] if found else (None,) * len(select.union[0].names)
    return row


def _flat_columns(select: SelectPlan) -> list[ColumnPlan] | None:
    """The columns of a view with no forEach, repeat or unionAll, in output order; None for any other view."""
    if select.for_each is not None or select.repeat or select.union:
        return None
    columns = list(select.columns)
    for sub in select.selects:
        found = _flat_columns(sub)
        if found is None:
            return None
        columns.extend(found)
    return columns


def _where_holds(plan: ViewPlan, resource: dict[str, Any]) -> bool:
    focus = [resource]
    env: Env | None = None
    for path, location in plan.where:
        value = path.one(resource) if path.one is not None else SLOW
        if value is SLOW:
            env = env or Env(resource, 0)
            values = path.evaluate(focus, env)
            if len(values) > 1:
                raise _Failure(location, "the where expression must give true, false or nothing")
            value = values[0] if values else None
        if value is None or value is False:
            return False
        if value is not True:
            raise _Failure(location, "the where expression must give true, false or nothing")
    return True


def _fast_row(plan: ViewPlan) -> Row | None:
    """For a view whose rows are one per resource (no forEach, repeat or unionAll) and whose columns are all
    chains of one-value steps: the function of the resource giving its row (a column that met a collection of
    several values is evaluated in full, which also tells an error from an empty value). None for any other
    view."""
    flat = _flat_columns(plan.root)
    if flat is None or any(c.collection or c.path.steps is None or not c.path.compiled for c in flat):
        return None

    def complete(resource: dict[str, Any], row: tuple[Any, ...]) -> tuple[Any, ...]:
        env = Env(resource, 0)
        return tuple(
            _column_value(column, [resource], env) if value is SLOW else value
            for value, column in zip(row, flat, strict=True)
        )

    return row_function([c.path.steps for c in flat if c.path.steps is not None], complete)


def run_view(plan: ViewPlan, resources: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """The view's rows over ``resources`` (JSON objects; those of other types than the view's are skipped)."""
    row_of = _fast_row(plan)
    kind = plan.resource
    where = plan.where
    for resource in resources:
        if type(resource) is not dict:
            raise ViewEvaluationError(
                "an input is not a FHIR resource (a JSON object)", problems=[Problem("", "not a JSON object")]
            )
        if resource.get("resourceType") != kind:
            continue
        # Rows are made inside the try and given out after it: an error is raised before any row of its resource.
        try:
            if where and not _where_holds(plan, resource):
                continue
            if row_of is not None:
                # The hot loop: one call per column, no Env, no list per value.
                row = row_of(resource)
            else:
                rows = _rows(plan.root, [resource], 0, resource)
        except _Failure as failure:
            raise _evaluation_error(resource, failure.location, failure.message) from None
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise _evaluation_error(resource, "", f"{type(exc).__name__}: {exc}") from exc
        if row_of is not None:
            yield row
        else:
            yield from rows


def _evaluation_error(resource: dict[str, Any], location: str, message: str) -> ViewEvaluationError:
    name = f"{resource.get('resourceType')}/{resource.get('id', '(no id)')}"
    return ViewEvaluationError(f"{name}: {message}", source=name, problems=[Problem(location, f"{name}: {message}")])


def run_to_dicts(plan: ViewPlan, resources: Iterable[Any]) -> list[dict[str, Any]]:
    """All rows as {column: value} (for tests and small inputs; run_view streams)."""
    names = plan.column_names
    return [dict(zip(names, row, strict=True)) for row in run_view(plan, resources)]
