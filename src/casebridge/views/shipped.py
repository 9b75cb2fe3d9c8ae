"""The views casebridge ships (package data, ``data/views/<name>.json``) and the check that keeps them shareable.

Each shipped view is a plain SQL on FHIR v2 ViewDefinition an analyst can copy and change. ``shipped_view(name)``
gives its JSON, ``load_shipped_views()`` every view checked and compiled with ``read_view`` (a shipped file that
cannot be run is a ViewDefinitionError naming the file and the element).

``shareable_problems(view)`` checks a view against the spec's ShareableViewDefinition profile, so that it runs
unchanged on other runners (Pathling on Spark): ``url``, ``name``, ``status`` and ``fhirVersion`` given, a ``type`` on
every column, no 2.1-only element (``repeat``), and every expression inside the FHIRPath subset every runner must
implement. Anything not on that list is refused, including the functions the spec marks experimental.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from casebridge._data import data_dir
from casebridge.errors import InputError, Problem
from casebridge.views._definition import ViewDefinitionError, ViewPlan, read_view
from casebridge.views._fhirpath import PRIMITIVES, FhirPathCompileError
from casebridge.views._fhirpath import _parse as parse_path  # the runner's own parser: one syntax for both

__all__ = ["load_shipped_views", "shareable_problems", "shipped_view", "shipped_view_names"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# The FHIRPath every runner conforming to the Shareable View Definition profile implements (the spec's "Required
# FHIRPath Expressions/Functions", plus getResourceKey and getReferenceKey, which every runner must have).
_FUNCTIONS = frozenset(
    {"where", "exists", "empty", "extension", "ofType", "first", "not", "getResourceKey", "getReferenceKey"}
)
# Listed by the spec as experimental: intended for the subset, not yet in it.
_EXPERIMENTAL = frozenset({"join", "lowBoundary", "highBoundary"})
_OPERATORS = {
    "EqualityExpression": frozenset({"=", "!="}),
    "InequalityExpression": frozenset({">", "<="}),
    "AndExpression": frozenset({"and"}),
    "OrExpression": frozenset({"or"}),
    "AdditiveExpression": frozenset({"+", "-"}),
    "MultiplicativeExpression": frozenset({"*", "/"}),
}
# Parse-tree nodes that carry no semantics of their own (paths, calls, parentheses, string and number literals).
_STRUCTURE = frozenset(
    {
        None,
        "TermExpression",
        "InvocationExpression",
        "InvocationTerm",
        "MemberInvocation",
        "Identifier",
        "FunctionInvocation",
        "Functn",
        "ParamList",
        "ParenthesizedTerm",
        "LiteralTerm",
        "StringLiteral",
        "NumberLiteral",
        "IndexerExpression",
        "ExternalConstantTerm",
        "ExternalConstant",
    }
)
_NOT_SHAREABLE = {
    "BooleanLiteral": "a boolean literal (the subset has string, integer and decimal literals)",
    "DateTimeLiteral": "a date or time literal",
    "TimeLiteral": "a time literal",
    "QuantityLiteral": "a quantity literal",
    "NullLiteral": "the empty literal {}",
    "ThisInvocation": "$this",
    "IndexInvocation": "$index",
    "TotalInvocation": "$total",
    "PolarityExpression": "a unary sign",
    "UnionExpression": "the union operator |",
    "TypeExpression": "the is/as operators",
    "MembershipExpression": "the in/contains operators",
    "ImpliesExpression": "implies",
}


def _views_dir() -> Path:
    return data_dir() / "views"


@cache
def shipped_view_names() -> tuple[str, ...]:
    """The names of the shipped views, sorted (the file names without .json)."""
    return tuple(sorted(p.stem for p in _views_dir().glob("*.json")))


def shipped_view(name: str) -> dict[str, Any]:
    """The JSON of the shipped view ``name`` (a fresh copy: the caller may change it). InputError for a name that
    is not shipped."""
    if name not in shipped_view_names():
        raise InputError(f"no shipped view named {name!r}; the shipped views are {', '.join(shipped_view_names())}")
    path = _views_dir() / f"{name}.json"
    view = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(view, dict):
        raise ViewDefinitionError("a ViewDefinition must be a JSON object", source=str(path))
    return view


def load_shipped_views() -> dict[str, ViewPlan]:
    """Every shipped view, by name, checked and compiled. ViewDefinitionError (naming the file) for one that cannot
    be run."""
    return {
        name: read_view(shipped_view(name), source=str(_views_dir() / f"{name}.json")) for name in shipped_view_names()
    }


def shareable_problems(view: Any) -> list[Problem]:
    """What keeps ``view`` (a ViewDefinition as JSON) out of the ShareableViewDefinition profile, each problem at its
    element (``select[0].column[2].type``). Empty when the view is shareable. Checks the profile only: whether the
    view can be run at all is ``read_view``'s to say."""
    if not isinstance(view, Mapping):
        return [Problem("", "a ViewDefinition must be a JSON object")]
    problems: list[Problem] = []
    url = view.get("url")
    if not isinstance(url, str) or not _absolute_uri(url):
        problems.append(Problem("url", "is required in a shareable view: an absolute URI that names the view"))
    name = view.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(Problem("name", "is required in a shareable view: letters, digits and _, from a letter"))
    if not isinstance(view.get("status"), str) or not view["status"]:
        problems.append(Problem("status", "is required (draft, active, retired or unknown)"))
    versions = view.get("fhirVersion")
    if not isinstance(versions, list) or not versions or not all(isinstance(v, str) and v for v in versions):
        problems.append(Problem("fhirVersion", "is required in a shareable view: the FHIR versions it reads (4.0.1)"))
    constants = {c.get("name") for c in view.get("constant") or [] if isinstance(c, Mapping)}
    for location, text in _expressions(view, problems):
        problems.extend(Problem(location, message) for message in _path_problems(text, constants))
    for i, item in enumerate(view.get("where") or []):
        if isinstance(item, Mapping):
            problems.extend(Problem(f"where[{i}].path", m) for m in _path_problems(item.get("path"), constants))
    return problems


def _absolute_uri(text: str) -> bool:
    parts = urlsplit(text)
    return (
        bool(parts.scheme) and (bool(parts.netloc) or parts.scheme in ("urn",)) and not any(c.isspace() for c in text)
    )


def _expressions(view: Mapping[str, Any], problems: list[Problem]) -> Iterator[tuple[str, Any]]:
    """Every select's expressions (forEach, forEachOrNull, column paths), with their locations; columns without a
    type and 2.1's repeat go into ``problems`` on the way."""

    def walk(selects: Any, location: str) -> Iterator[tuple[str, Any]]:
        for i, select in enumerate(selects if isinstance(selects, list) else []):
            if not isinstance(select, Mapping):
                continue
            at = f"{location}[{i}]"
            if "repeat" in select:
                problems.append(
                    Problem(f"{at}.repeat", "repeat is SQL on FHIR 2.1 (draft), not in the shareable profile")
                )
            for key in ("forEach", "forEachOrNull"):
                if key in select:
                    yield f"{at}.{key}", select[key]
            for j, column in enumerate(select.get("column") or []):
                if not isinstance(column, Mapping):
                    continue
                declared = column.get("type")
                if not isinstance(declared, str) or not declared:
                    problems.append(Problem(f"{at}.column[{j}].type", "every column of a shareable view has a type"))
                elif declared not in PRIMITIVES:
                    problems.append(
                        Problem(
                            f"{at}.column[{j}].type", f"{declared!r} is not a FHIR primitive type (string, code, ...)"
                        )
                    )
                yield f"{at}.column[{j}].path", column.get("path")
            yield from walk(select.get("select"), f"{at}.select")
            yield from walk(select.get("unionAll"), f"{at}.unionAll")

    yield from walk(view.get("select"), "select")


def _path_problems(text: Any, constants: set[Any]) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return ["must be a FHIRPath expression"]
    try:
        tree = parse_path(text)
    except FhirPathCompileError as exc:
        return [str(exc)]
    found: list[str] = []

    def visit(node: Mapping[str, Any]) -> None:
        kind = node.get("type")
        kids = node.get("children") or []
        operators = node.get("terminalNodeText") or []
        if kind in _NOT_SHAREABLE:
            found.append(f"{_NOT_SHAREABLE[kind]} is outside the shareable FHIRPath subset: {text!r}")
        elif kind in _OPERATORS:
            for operator in operators:
                if operator not in _OPERATORS[kind]:
                    found.append(f"the operator {operator!r} is outside the shareable FHIRPath subset: {text!r}")
        elif kind == "Functn":
            function = str(kids[0].get("text") or "") if kids else ""
            if function in _EXPERIMENTAL:
                found.append(f"{function}() is experimental, not yet in the shareable FHIRPath subset: {text!r}")
            elif function not in _FUNCTIONS:
                found.append(f"{function}() is outside the shareable FHIRPath subset: {text!r}")
        elif kind == "ExternalConstant":
            constant = str(kids[0].get("text") or "") if kids else ""
            if constant not in constants:
                found.append(f"%{constant} is not a constant of the view (shareable views use only their own)")
        elif kind not in _STRUCTURE:
            found.append(f"{kind} is outside the shareable FHIRPath subset: {text!r}")
        for kid in kids:
            visit(kid)

    visit(tree)
    return list(dict.fromkeys(found))
