"""FHIRPath for ViewDefinitions: the common subset compiled to Python closures over the JSON resources (plain
dicts), everything else evaluated by fhirpathpy.

Expressions are parsed by fhirpathpy's own parser (its ANTLR grammar), so both paths read the same syntax and a
syntax error is reported the same way. The parse tree is then compiled node by node; a node outside the subset
(a function, operator or literal not handled here, or a step whose FHIR type cannot be told statically) makes the
whole expression go to fhirpathpy, evaluated on the same dicts with their FHIR types.

Types are tracked at compile time from fhirpathpy's R4 model (element paths to types, choice elements): it is what
turns ``value.ofType(Quantity)`` into a lookup of ``valueQuantity`` and tells a ``date`` from a ``dateTime`` for
lowBoundary(). Nothing is typed at run time, which is where the speed comes from.

A path that is a chain of one-value steps (names, choices, first(), [n], the key functions, where(name = 'text'))
is also compiled to one generated Python function of the item, the runner's hot path: its source comes from this
module's fixed templates only, the view's names and strings being variables of its namespace, never its text.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine.nodes import FP_Type, ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

_MODEL: dict[str, Any] = models["r4"]
_PATH2TYPE: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_PARENT: dict[str, str] = _MODEL["type2Parent"]
# Backbone elements have no entry of their own, only their children do: "Patient.contact" is the prefix of
# "Patient.contact.name". Their type is their path, as in fhirpathpy.
_BACKBONES: frozenset[str] = frozenset(p.rsplit(".", 1)[0] for p in _PATH2TYPE if p.count(".") > 1)

PRIMITIVES: frozenset[str] = frozenset(
    "base64Binary boolean canonical code date dateTime decimal id instant integer integer64 markdown oid positiveInt "
    "string time unsignedInt uri url uuid xhtml".split()
)
_SYSTEM = {
    "System.String": "string",
    "System.Boolean": "boolean",
    "System.Integer": "integer",
    "System.Decimal": "decimal",
    "System.Date": "date",
    "System.DateTime": "dateTime",
    "System.Time": "time",
}
_DATE_LIKE = frozenset({"date", "dateTime", "instant", "time"})
_NUMERIC = frozenset({"decimal", "integer", "positiveInt", "unsignedInt", "integer64"})
_BOOLEAN = "boolean"

# Environment variables every expression may use, besides the view's constants.
ENVIRONMENT = frozenset({"rowIndex", "resource", "rootResource", "context", "ucum"})


class FhirPathCompileError(Exception):
    """An expression that does not parse, or names a constant the view does not define. Internal: _definition
    reports it as a ViewDefinitionError at the element that holds the expression."""


class _Unsupported(Exception):
    """Outside the compiled subset: the expression goes to fhirpathpy."""


class Env:
    """What an evaluation reads besides its focus: the row's index and the resource it comes from."""

    __slots__ = ("resource", "row_index")

    def __init__(self, resource: dict[str, Any], row_index: int) -> None:
        self.resource = resource
        self.row_index = row_index


Fn = Callable[[list[Any], Env], list[Any]]


@dataclass(frozen=True)
class Constant:
    """A ViewDefinition constant: its value as JSON gives it and its FHIR type (from the value[x] key)."""

    name: str
    value: Any
    type: str


# Steps of a path that yields at most one value per step (names, first(), [n], reference keys, where() on a name
# equal to a string): evaluated on one value at a time with no list built, the common shape of a column. A path of
# steps is compiled into one function of the item (``CompiledPath.one``).
MEMBER = 0
_CHOICE = 1
_FIRST = 2
_INDEX = 3
_CALL = 4
_WHERE_EQUAL = 5  # where(name = 'text'): keeps the items whose element ``name`` is the string ``text``
Step = tuple[int, Any]
SLOW: Any = object()  # the steps met a collection of several values: evaluate the general closure
One = Callable[[Any], Any]
Row = Callable[[Any], tuple[Any, ...]]


@dataclass(frozen=True)
class _Node:
    fn: Fn
    type: str | None  # the FHIR type of its values; None when it cannot be told
    steps: tuple[Step, ...] | None  # a one-value chain from the focus (None: not one)
    # For where(): this node is "name = 'text'" (or the other way round) on the focus: (name's JSON key, text).
    test: tuple[str, str] | None = field(default=None, kw_only=True)
    text: str | None = field(default=None, kw_only=True)  # a string literal or string constant: its value


@dataclass(frozen=True)
class CompiledPath:
    """A compiled expression. ``evaluate`` returns the FHIRPath collection (plain JSON values); ``scalar``
    returns its only value, None for none, or raises ValueError for several. ``one``, when the path is a chain of
    one-value steps: the value from one item, None for none, SLOW when a collection of several was met (then
    ``evaluate`` tells)."""

    text: str
    type: str | None
    compiled: bool  # False: evaluated by fhirpathpy
    fn: Fn
    steps: tuple[Step, ...] | None
    one: One | None = None

    def evaluate(self, focus: list[Any], env: Env) -> list[Any]:
        return self.fn(focus, env)

    def scalar(self, item: Any, env: Env) -> Any:
        if self.one is not None:
            value = self.one(item)
            if value is not SLOW:
                return value
        values = self.fn([item], env)
        if not values:
            return None
        if len(values) > 1:
            raise ValueError(f"{len(values)} values")
        return values[0]


# A chain of steps is compiled to the source of one Python function of the item (``one_value``): a column's value
# is then a few dict lookups in a row, as a hand-written loop would do them, rather than a call per step through
# closures (three to four times slower on a typical column). The generated source is made only from the fixed
# templates below and generated names: the view's keys, strings and functions reach it as variables of its
# namespace, never as text, so nothing in a view can change the code that runs.
#
# ``c`` is the current value: a dict, a list or a primitive, never None. A list met where one item is needed is
# unwrapped when it has one value; with several the function gives SLOW, and the caller evaluates the general
# closure (which also tells an error from an empty value).

_UNWRAP = """\
    if type(c) is list:
        if len(c) != 1:
            return SLOW if c else None
        c = c[0]
"""
_OBJECT_MEMBER = """\
    c = c.get({key})
    if c is None:
        return None
"""
_MEMBER = """\
    if type(c) is not dict:
        return None
    c = c.get({key})
    if c is None:
        return None
"""
_CHOICE_START = """\
    if type(c) is not dict:
        return None
    d = c
    c = d.get({key})
"""
_CHOICE_NEXT = """\
    if c is None:
        c = d.get({key})
"""
_FIRST_STEP = """\
    if type(c) is list:
        c = c[0] if c and c[0] is not None else first_of(c)
"""
_INDEX_STEP = """\
    c = item_at(c, {index})
"""
_CALL_STEP = """\
    c = {fn}(c)
"""
_WHERE_EQUAL_STEP = """\
    if type(c) is not list:
        c = [c]
    kept = []
    for item in c:
        if type(item) is dict:
            found = item.get({key})
            if (found == {text} and type(found) is str) or (type(found) is list and equals_text(found, {text})):
                kept.append(item)
    if not kept:
        return None
    c = kept
"""
_NONE = """\
    if c is None:
        return None
"""
_FINISH = """\
    if type(c) is list:
        if len(c) == 1:
            return c[0]
        return SLOW if c else None
    return c
"""


def _first_of(values: list[Any]) -> Any:
    for value in values:
        if value is not None:  # JSON arrays of primitives hold nulls where only an extension is given
            return value
    return None


def _item_at(current: Any, index: int) -> Any:
    if type(current) is list:
        values = [v for v in current if v is not None]
        return values[index] if index < len(values) else None
    return current if index == 0 else None


def _equals_text(values: list[Any], text: str) -> bool:
    """A repeated element equals one string only when it has that one value."""
    found = [v for v in values if v is not None]
    return len(found) == 1 and type(found[0]) is str and found[0] == text


def one_value(steps: tuple[Step, ...], *, on_object: bool = False) -> One:
    """The function giving a chain of one-value steps' value from one item: None, the value, or SLOW.
    ``on_object``: the item is always a JSON object (a resource), so the first name needs no check."""
    namespace: dict[str, Any] = {"SLOW": SLOW, "first_of": _first_of, "item_at": _item_at, "equals_text": _equals_text}

    def name(value: Any) -> str:
        found = f"v{len(namespace)}"
        namespace[found] = value
        return found

    body: list[str] = []
    for i, (op, arg) in enumerate(steps):
        if op == MEMBER and i == 0 and on_object:
            body += [_OBJECT_MEMBER.format(key=name(arg))]
        elif op == MEMBER:
            body += [_UNWRAP, _MEMBER.format(key=name(arg))]
        elif op == _CHOICE:
            body += [_UNWRAP, _CHOICE_START.format(key=name(arg[0]))]
            body += [_CHOICE_NEXT.format(key=name(key)) for key in arg[1:]]
            body.append(_NONE)
        elif op == _FIRST:
            body += [_FIRST_STEP, _NONE]
        elif op == _INDEX:
            body += [_INDEX_STEP.format(index=int(arg)), _NONE]
        elif op == _CALL:
            body += [_UNWRAP, _NONE, _CALL_STEP.format(fn=name(arg)), _NONE]
        elif op == _WHERE_EQUAL:
            body.append(_WHERE_EQUAL_STEP.format(key=name(arg[0]), text=name(arg[1])))
        else:
            raise AssertionError(f"unknown step {op}")
    return _define("one", "c", "".join(body) + _FINISH, namespace)  # type: ignore[no-any-return]


def row_function(columns: list[tuple[Step, ...]], complete: Callable[[Any, tuple[Any, ...]], tuple[Any, ...]]) -> Row:
    """One function giving the row of a resource, its columns being chains of one-value steps: a call per column,
    no loop, no list. When a column gives SLOW, the row is ``complete(resource, values)``."""
    namespace: dict[str, Any] = {"SLOW": SLOW, "complete": complete}
    body: list[str] = []
    for i, steps in enumerate(columns):
        namespace[f"c{i}"] = one_value(steps, on_object=True)
        body.append(f"    a{i} = c{i}(r)\n")
    values = "".join(f"a{i}, " for i in range(len(columns)))
    slow = " or ".join(f"a{i} is SLOW" for i in range(len(columns))) or "False"
    body.append(f"    if {slow}:\n        return complete(r, ({values}))\n    return ({values})\n")
    return _define("row", "r", "".join(body), namespace)  # type: ignore[no-any-return]


def _define(function: str, argument: str, body: str, namespace: dict[str, Any]) -> Any:
    source = f"def {function}({argument}):\n{body}"
    # Generated from this module's templates only (see above); the view's values are in ``namespace``.
    exec(compile(source, f"<casebridge.views {function}>", "exec"), namespace)  # noqa: S102
    return namespace[function]


# --- static types -------------------------------------------------------------------------------------------------


def _primitive(name: str) -> str:
    """A choice type's name as the model spells it ("DateTime") as the FHIR type ("dateTime")."""
    lowered = name[:1].lower() + name[1:]
    return lowered if lowered in PRIMITIVES else name


def _element(owner: str, name: str) -> tuple[str, str] | list[tuple[str, str]] | None:
    """The element ``name`` of type ``owner``: (JSON key, type), or for a choice [(JSON key, type)...];
    None if the model does not know it."""
    current: str | None = owner
    while current is not None:
        path = f"{current}.{name}"
        path = _ELSEWHERE.get(path, path)
        if path in _CHOICES:
            return [(name + t[:1].upper() + t[1:], _primitive(t)) for t in _CHOICES[path]]
        found = _PATH2TYPE.get(path)
        if found is not None:
            return (name, _SYSTEM.get(found, found))
        if path in _BACKBONES:
            return (name, path)
        current = _PARENT.get(current.split(".", 1)[0]) if "." not in current else None
    return None


def is_resource_type(name: str) -> bool:
    current: str | None = name
    while current is not None:
        if current in ("DomainResource", "Resource"):
            return name not in ("DomainResource", "Resource")
        current = _PARENT.get(current)
    return False


# --- closures -----------------------------------------------------------------------------------------------------


def _member(key: str) -> Fn:
    def member(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in focus:
            if type(item) is dict:
                value = item.get(key)
                if value is not None:
                    if type(value) is list:
                        out.extend(v for v in value if v is not None)
                    else:
                        out.append(value)
        return out

    return member


def _choice(keys: tuple[str, ...]) -> Fn:
    def choice(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in focus:
            if type(item) is dict:
                for key in keys:
                    value = item.get(key)
                    if value is not None:
                        if type(value) is list:
                            out.extend(v for v in value if v is not None)
                        else:
                            out.append(value)
        return out

    return choice


def _then(first: Fn, second: Fn) -> Fn:
    def then(focus: list[Any], env: Env) -> list[Any]:
        return second(first(focus, env), env)

    return then


def _truth(values: list[Any]) -> bool | None:
    """A collection as a boolean (FHIRPath singleton evaluation): empty is None, one value is itself if boolean
    and true otherwise."""
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"a boolean was expected, not a collection of {len(values)}")
    value = values[0]
    return value if type(value) is bool else True


def _equal_items(a: Any, b: Any) -> bool:
    if (type(a) is bool) != (type(b) is bool):
        return False
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if type(a) is not type(b):
        return False
    return bool(a == b)


def _equals(left: Fn, right: Fn, negate: bool) -> Fn:
    def equals(focus: list[Any], env: Env) -> list[Any]:
        a = left(focus, env)
        if not a:
            return []
        b = right(focus, env)
        if not b:
            return []
        same = len(a) == len(b) and all(_equal_items(x, y) for x, y in zip(a, b, strict=True))
        return [same != negate]

    return equals


def _compare(left: Fn, right: Fn, holds: Callable[[int], bool]) -> Fn:
    def compare(focus: list[Any], env: Env) -> list[Any]:
        a = left(focus, env)
        b = right(focus, env)
        if len(a) != 1 or len(b) != 1:
            if len(a) > 1 or len(b) > 1:
                raise ValueError("a comparison needs one value on each side")
            return []
        x, y = a[0], b[0]
        numbers = isinstance(x, (int, float)) and isinstance(y, (int, float))
        if type(x) is bool or type(y) is bool or (not numbers and not (type(x) is str and type(y) is str)):
            return []
        return [holds((x > y) - (x < y))]

    return compare


def _number(value: Any) -> Decimal | None:
    if isinstance(value, Decimal):  # from fhirpathpy, which reads JSON numbers as decimals
        return value
    if type(value) is bool or not isinstance(value, (int, float)):
        return None
    return Decimal(repr(value))


def _json_number(value: Decimal, integral: bool) -> Any:
    if integral and value == value.to_integral_value():
        return int(value)
    return float(value)


def _arithmetic(left: Fn, right: Fn, operator: str) -> Fn:
    # Decimal, not float: FHIRPath's decimals are exact (0.1 + 0.2 is 0.3).
    def arithmetic(focus: list[Any], env: Env) -> list[Any]:
        a = left(focus, env)
        b = right(focus, env)
        if len(a) != 1 or len(b) != 1:
            return []
        x, y = _number(a[0]), _number(b[0])
        if x is None or y is None:
            if operator == "+" and type(a[0]) is str and type(b[0]) is str:
                return [a[0] + b[0]]
            return []
        integral = type(a[0]) is int and type(b[0]) is int
        try:
            if operator == "+":
                return [_json_number(x + y, integral)]
            if operator == "-":
                return [_json_number(x - y, integral)]
            if operator == "*":
                return [_json_number(x * y, integral)]
            return [_json_number(x / y, False)]
        except (InvalidOperation, ZeroDivisionError):
            return []  # FHIRPath: division by zero is empty

    return arithmetic


def _and(left: Fn, right: Fn) -> Fn:
    def conjunction(focus: list[Any], env: Env) -> list[Any]:
        a = _truth(left(focus, env))
        if a is False:
            return [False]
        b = _truth(right(focus, env))
        if b is False:
            return [False]
        return [True] if a and b else []

    return conjunction


def _or(left: Fn, right: Fn) -> Fn:
    def disjunction(focus: list[Any], env: Env) -> list[Any]:
        a = _truth(left(focus, env))
        if a is True:
            return [True]
        b = _truth(right(focus, env))
        if b is True:
            return [True]
        return [False] if a is False and b is False else []

    return disjunction


def _constant(value: Any) -> Fn:
    result = [] if value is None else [value]

    def constant(focus: list[Any], env: Env) -> list[Any]:
        return list(result)

    return constant


def _this(focus: list[Any], env: Env) -> list[Any]:
    return focus


def _row_index(focus: list[Any], env: Env) -> list[Any]:
    return [env.row_index]


# --- functions ----------------------------------------------------------------------------------------------------


def resource_key(value: Any) -> Any:
    """getResourceKey(): the resource's id (keys are compared within a resource type, as the spec allows)."""
    if type(value) is dict and "resourceType" in value:
        return value.get("id")
    return None


def reference_key(value: Any, resource_type: str | None) -> Any:
    """getReferenceKey([type]): the id a Reference points to, matching getResourceKey() of its target; None for a
    contained (#) or logical reference, or one to another type than ``resource_type``."""
    if type(value) is not dict:
        return None
    reference = value.get("reference")
    if type(reference) is not str or reference.startswith("#"):
        return None
    if "/_history/" in reference:
        reference = reference.split("/_history/", 1)[0]
    reference = reference.rstrip("/")
    # Type and id are the last two segments ("Patient/1", "https://example.org/fhir/Patient/1"); rfind rather
    # than split: this runs for every row of most views.
    slash = reference.rfind("/")
    if slash < 0:
        return None
    if resource_type is not None and reference[reference.rfind("/", 0, slash) + 1 : slash] != resource_type:
        return None
    return reference[slash + 1 :] or None


def _reference_key_step(resource_type: str | None) -> Callable[[Any], Any]:
    prefix = f"{resource_type}/" if resource_type is not None else None
    start = len(prefix) if prefix is not None else 0

    def step(value: Any) -> Any:
        # The common case first, "Patient/1" for getReferenceKey(Patient): a prefix and a slice.
        if prefix is not None and type(value) is dict:
            reference = value.get("reference")
            if type(reference) is str and reference.startswith(prefix):
                key = reference[start:]
                if key and "/" not in key:
                    return key
        return reference_key(value, resource_type)

    return step


_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_TIME = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(\.\d+)?)?)?$")
_DATE_TIME = re.compile(r"^(\d{4}(?:-\d{2}(?:-\d{2})?)?)(?:T([0-9:.]+)?)?(Z|[+-]\d{2}:\d{2})?$")


def _date_bound(text: str, high: bool) -> str | None:
    found = _DATE.match(text)
    if found is None:
        return None
    year, month, day = found.group(1), found.group(2), found.group(3)
    if month is None:
        month = "12" if high else "01"
    if day is None:
        day = f"{calendar.monthrange(int(year), int(month))[1]:02d}" if high else "01"
    return f"{year}-{month}-{day}"


def _time_bound(text: str, high: bool) -> str | None:
    found = _TIME.match(text)
    if found is None:
        return None
    hour, minute, second, fraction = found.groups()
    fill = "59" if high else "00"
    digits = (fraction or ".")[1:4]
    millis = digits + ("9" if high else "0") * (3 - len(digits))
    return f"{hour}:{minute or fill}:{second or fill}.{millis}"


def _date_time_bound(text: str, high: bool) -> str | None:
    found = _DATE_TIME.match(text)
    if found is None:
        return None
    date = _date_bound(found.group(1), high)
    time = _time_bound(found.group(2) or "", high) if found.group(2) else ("23:59:59.999" if high else "00:00:00.000")
    if date is None or time is None:
        return None
    # With no offset the value could be in any time zone: the earliest is at +14:00, the latest at -12:00.
    zone = found.group(3) or ("-12:00" if high else "+14:00")
    return f"{date}T{time}{zone}"


def _decimal_bound(value: Any, high: bool) -> Any:
    number = _number(value)
    if number is None:
        return None
    exponent = number.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    half = Decimal(5).scaleb(-(places + 1))
    return float(number + half if high else number - half)


def boundary(value: Any, fhir_type: str, high: bool) -> Any:
    """lowBoundary()/highBoundary() of one value of a known FHIR type; None where it has none."""
    if fhir_type in _NUMERIC:
        return _decimal_bound(value, high)
    if type(value) is not str:
        return None
    if fhir_type == "date":
        return _date_bound(value, high)
    if fhir_type == "time":
        return _time_bound(value, high)
    if fhir_type in ("dateTime", "instant"):
        return _date_time_bound(value, high)
    return None


def _guess_boundary(value: Any, high: bool) -> Any:
    """For fhirpathpy, whose user functions see values without their types: the type told by the value's shape
    (a date is not told from a dateTime of the same precision: read as a date)."""
    if isinstance(value, (int, float, Decimal)) and type(value) is not bool:
        return _decimal_bound(value, high)
    if type(value) is not str:
        return None
    if _TIME.match(value):
        return _time_bound(value, high)
    if _DATE.match(value):
        return _date_bound(value, high)
    return _date_time_bound(value, high)


def _boundary_step(fhir_type: str, high: bool) -> Callable[[Any], Any]:
    def step(value: Any) -> Any:
        return boundary(value, fhir_type, high)

    return step


def _map(step: Callable[[Any], Any]) -> Fn:
    def mapped(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in focus:
            value = step(item)
            if value is not None:
                out.append(value)
        return out

    return mapped


def _where(condition: Fn) -> Fn:
    def where(focus: list[Any], env: Env) -> list[Any]:
        return [item for item in focus if condition([item], env) == [True]]

    return where


def _exists(condition: Fn | None) -> Fn:
    def exists(focus: list[Any], env: Env) -> list[Any]:
        if condition is None:
            return [bool(focus)]
        return [any(condition([item], env) == [True] for item in focus)]

    return exists


def _empty(focus: list[Any], env: Env) -> list[Any]:
    return [not focus]


def _first(focus: list[Any], env: Env) -> list[Any]:
    return focus[:1]


def _last(focus: list[Any], env: Env) -> list[Any]:
    return focus[-1:]


def _count(focus: list[Any], env: Env) -> list[Any]:
    return [len(focus)]


def _not(focus: list[Any], env: Env) -> list[Any]:
    value = _truth(focus)
    return [] if value is None else [not value]


def _join(separator: Fn | None) -> Fn:
    def join(focus: list[Any], env: Env) -> list[Any]:
        sep = ""
        if separator is not None:
            given = separator(focus, env)
            sep = given[0] if given and type(given[0]) is str else ""
        return [sep.join(str(v) for v in focus if type(v) is str)]

    return join


def _index(index: Fn) -> Fn:
    def indexer(focus: list[Any], env: Env) -> list[Any]:
        at = index(focus, env)
        if len(at) != 1 or type(at[0]) is not int:
            return []
        n = at[0]
        return focus[n : n + 1] if n >= 0 else []

    return indexer


def _subset(source: Fn, index: Fn) -> Fn:
    pick = _index(index)

    def subset(focus: list[Any], env: Env) -> list[Any]:
        return pick(source(focus, env), env)

    return subset


def _extension(url: str) -> Fn:
    def extension(focus: list[Any], env: Env) -> list[Any]:
        out: list[Any] = []
        for item in focus:
            if type(item) is dict:
                for ext in item.get("extension") or ():
                    if type(ext) is dict and ext.get("url") == url:
                        out.append(ext)
        return out

    return extension


def _keep_if(fhir_type: str | None, wanted: str) -> Fn:
    keep = fhir_type == wanted

    def of_type(focus: list[Any], env: Env) -> list[Any]:
        return focus if keep else []

    return of_type


# --- the compiler -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scope:
    constants: Mapping[str, Constant]
    resource_type: str | None  # the view's resource (for "Patient.name" and %resource)


def _kids(node: dict[str, Any]) -> list[dict[str, Any]]:
    children = node.get("children")
    return list(children) if children else []


def _identifier(node: dict[str, Any]) -> str:
    text = str(node.get("text") or "")
    return text[1:-1] if text.startswith("`") and text.endswith("`") else text


def _type_name(node: dict[str, Any]) -> str:
    """A type argument (ofType(Quantity), getReferenceKey(Patient)) as its name, without the FHIR namespace."""
    text = str(node.get("text") or "").replace("`", "")
    if text.startswith("FHIR."):
        text = text[5:]
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", text):
        raise _Unsupported(text)
    return text


def _string_literal(text: str) -> str:
    body = text[1:-1]
    escapes = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and i + 5 < len(body) + 1:
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(escapes.get(nxt, nxt))
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class _Compiler:
    def __init__(self, scope: _Scope) -> None:
        self.scope = scope

    def expression(self, node: dict[str, Any], context: str | None, at_root: bool) -> _Node:
        kind = node.get("type")
        kids = _kids(node)
        if kind == "TermExpression":
            return self.term(kids[0], context, at_root)
        if kind == "InvocationExpression":
            left = self.expression(kids[0], context, at_root)
            return self.invocation(kids[1], left)
        if kind == "IndexerExpression":
            source = self.expression(kids[0], context, at_root)
            index = self.expression(kids[1], context, True)
            steps = None
            literal = kids[1].get("text")
            if source.steps is not None and isinstance(literal, str) and literal.isdigit():
                steps = (*source.steps, (_INDEX, int(literal)))
            return _Node(_subset(source.fn, index.fn), source.type, steps)
        if kind in (
            "EqualityExpression",
            "InequalityExpression",
            "AndExpression",
            "OrExpression",
            "AdditiveExpression",
        ):
            return self.binary(node, kids, context)
        if kind == "MultiplicativeExpression":
            return self.binary(node, kids, context)
        if kind == "PolarityExpression":
            inner = self.expression(kids[0], context, at_root)
            if node.get("terminalNodeText") != ["-"] or inner.type not in _NUMERIC:
                raise _Unsupported("polarity")
            negate = _arithmetic(_constant(0), inner.fn, "-")
            return _Node(negate, inner.type, None)
        raise _Unsupported(str(kind))

    def binary(self, node: dict[str, Any], kids: list[dict[str, Any]], context: str | None) -> _Node:
        operator = (node.get("terminalNodeText") or [""])[0]
        left = self.expression(kids[0], context, True)
        right = self.expression(kids[1], context, True)
        if operator in ("and", "or"):
            return _Node(_and(left.fn, right.fn) if operator == "and" else _or(left.fn, right.fn), _BOOLEAN, None)
        # Dates and times compare by precision and time zone, which string comparison does not do.
        if left.type is None or right.type is None or left.type in _DATE_LIKE or right.type in _DATE_LIKE:
            raise _Unsupported("untyped or temporal comparison")
        if operator in ("=", "!="):
            test = None
            if operator == "=":
                test = _member_equals_text(left, right) or _member_equals_text(right, left)
            return _Node(_equals(left.fn, right.fn, operator == "!="), _BOOLEAN, None, test=test)
        holds: dict[str, Callable[[int], bool]] = {
            "<": lambda order: order < 0,
            "<=": lambda order: order <= 0,
            ">": lambda order: order > 0,
            ">=": lambda order: order >= 0,
        }
        if operator in holds:
            return _Node(_compare(left.fn, right.fn, holds[operator]), _BOOLEAN, None)
        if operator in ("+", "-", "*", "/"):
            if left.type not in _NUMERIC or right.type not in _NUMERIC:
                raise _Unsupported("arithmetic on non-numbers")
            integral = operator != "/" and left.type == right.type == "integer"
            return _Node(_arithmetic(left.fn, right.fn, operator), "integer" if integral else "decimal", None)
        raise _Unsupported(operator)

    def term(self, node: dict[str, Any], context: str | None, at_root: bool) -> _Node:
        kind = node.get("type")
        kids = _kids(node)
        if kind == "ParenthesizedTerm":
            return self.expression(kids[0], context, True)
        if kind == "LiteralTerm":
            return self.literal(kids[0])
        if kind == "ExternalConstantTerm":
            name = _identifier(_kids(kids[0])[0]) if _kids(kids[0]) else ""
            name = _string_literal(name) if name.startswith("'") else name
            if name == "rowIndex":
                return _Node(_row_index, "integer", None)
            found = self.scope.constants.get(name)
            if found is None:
                raise _Unsupported(name)  # %resource and the like
            text = found.value if type(found.value) is str else None
            return _Node(_constant(found.value), found.type, None, text=text)
        if kind == "InvocationTerm":
            inner = kids[0]
            if inner.get("type") == "ThisInvocation":
                return _Node(_this, context, ())
            if inner.get("type") == "MemberInvocation":
                name = _identifier(_kids(inner)[0])
                if at_root and context is not None and name == context and is_resource_type(name):
                    return _Node(_this, context, ())
            return self.invocation(inner, _Node(_this, context, ()))
        raise _Unsupported(str(kind))

    def literal(self, node: dict[str, Any]) -> _Node:
        kind = node.get("type")
        text = str(node.get("text") or "")
        if kind == "StringLiteral":
            value = _string_literal(text)
            return _Node(_constant(value), "string", None, text=value)
        if kind == "BooleanLiteral":
            return _Node(_constant(text == "true"), _BOOLEAN, None)
        if kind == "NullLiteral":
            return _Node(_constant(None), "string", None)
        if kind == "NumberLiteral":
            if re.fullmatch(r"\d+", text):
                return _Node(_constant(int(text)), "integer", None)
            return _Node(_constant(float(text)), "decimal", None)
        raise _Unsupported(str(kind))

    def invocation(self, node: dict[str, Any], left: _Node) -> _Node:
        kind = node.get("type")
        if kind == "MemberInvocation":
            return self.member(_identifier(_kids(node)[0]), left)
        if kind == "FunctionInvocation":
            return self.function(_kids(node)[0], left)
        if kind == "ThisInvocation":
            return left
        raise _Unsupported(str(kind))

    def member(self, name: str, left: _Node) -> _Node:
        if left.type is None or left.type in PRIMITIVES:
            raise _Unsupported(f"member {name} of {left.type}")  # a primitive's id/extension live in "_name"
        element = _element(left.type, name)
        if element is None:
            # Not in the model (misspelt, or another FHIR version's): read as is, as fhirpathpy would, untyped.
            steps = None if left.steps is None else (*left.steps, (MEMBER, name))
            return _Node(_then(left.fn, _member(name)), None, steps)
        if isinstance(element, list):
            keys = tuple(key for key, _ in element)
            steps = None if left.steps is None else (*left.steps, (_CHOICE, keys))
            types = {t for _, t in element}
            # The choice's keys are kept on the node for a following ofType() to pick one.
            return _ChoiceNode(
                _then(left.fn, _choice(keys)),
                next(iter(types)) if len(types) == 1 else None,
                steps,
                left,
                name,
                tuple(element),
            )
        key, fhir_type = element
        steps = None if left.steps is None else (*left.steps, (MEMBER, key))
        return _Node(_then(left.fn, _member(key)), fhir_type, steps)

    def function(self, node: dict[str, Any], left: _Node) -> _Node:
        kids = _kids(node)
        name = _identifier(kids[0])
        params = _kids(kids[1]) if len(kids) > 1 else []
        arity = len(params)

        def chain(fn: Fn, fhir_type: str | None, step: Step | None) -> _Node:
            steps = None if left.steps is None or step is None else (*left.steps, step)
            return _Node(_then(left.fn, fn), fhir_type, steps)

        if name == "first" and arity == 0:
            return chain(_first, left.type, (_FIRST, None))
        if name == "last" and arity == 0:
            return chain(_last, left.type, None)
        if name == "count" and arity == 0:
            return chain(_count, "integer", None)
        if name == "empty" and arity == 0:
            return chain(_empty, _BOOLEAN, None)
        if name == "not" and arity == 0:
            return chain(_not, _BOOLEAN, None)
        if name == "exists" and arity <= 1:
            condition = self.expression(params[0], left.type, True).fn if params else None
            return chain(_exists(condition), _BOOLEAN, None)
        if name == "where" and arity == 1:
            test = self.expression(params[0], left.type, True)
            return chain(_where(test.fn), left.type, None if test.test is None else (_WHERE_EQUAL, test.test))
        if name == "join" and arity <= 1:
            separator = self.expression(params[0], None, True).fn if params else None
            return chain(_join(separator), "string", None)
        if name == "ofType" and arity == 1:
            wanted = _type_name(params[0])
            if isinstance(left, _ChoiceNode):
                picked = [(key, t) for key, t in left.element if t == wanted]
                if not picked:
                    return _Node(_constant(None), wanted, None)
                key, fhir_type = picked[0]
                steps = None if left.parent.steps is None else (*left.parent.steps, (MEMBER, key))
                return _Node(_then(left.parent.fn, _member(key)), fhir_type, steps)
            if left.type is None:
                raise _Unsupported("ofType on an untyped collection")
            return chain(_keep_if(left.type, wanted), wanted, (_CALL, _identity) if left.type == wanted else None)
        if name == "extension" and arity == 1:
            if left.type is None or left.type in PRIMITIVES:
                raise _Unsupported("extension of a primitive")
            literal = params[0].get("text")
            if not (isinstance(literal, str) and literal.startswith("'")):
                raise _Unsupported("extension() with a computed url")
            return chain(_extension(_string_literal(literal)), "Extension", None)
        if name == "getResourceKey" and arity == 0:
            return chain(_map(resource_key), "string", (_CALL, resource_key))
        if name == "getReferenceKey" and arity <= 1:
            target = _type_name(params[0]) if params else None
            step = _reference_key_step(target)
            return chain(_map(step), "string", (_CALL, step))
        if name in ("lowBoundary", "highBoundary") and arity == 0:
            if left.type is None or (left.type not in _NUMERIC and left.type not in _DATE_LIKE):
                raise _Unsupported(f"{name} on {left.type}")
            bound = _boundary_step(left.type, name == "highBoundary")
            return chain(_map(bound), "decimal" if left.type in _NUMERIC else left.type, (_CALL, bound))
        raise _Unsupported(f"{name}()")


def _member_equals_text(member: _Node, text: _Node) -> tuple[str, str] | None:
    """(key, text) when ``member`` is one name read on the focus and ``text`` a string: where()'s common test."""
    steps = member.steps
    if text.text is None or steps is None or len(steps) != 1 or steps[0][0] != MEMBER:
        return None
    return (steps[0][1], text.text)


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class _ChoiceNode(_Node):
    parent: _Node
    name: str
    element: tuple[tuple[str, str], ...]


# --- fhirpathpy, for the rest --------------------------------------------------------------------------------------

_R4 = models["r4"]


def _fp_resource_key(inputs: list[Any]) -> list[Any]:
    return [k for k in (resource_key(v) for v in inputs) if k is not None]


def _fp_reference_key(inputs: list[Any], resource_type: Any = None) -> list[Any]:
    wanted = resource_type if isinstance(resource_type, str) else None
    return [k for k in (reference_key(v, wanted) for v in inputs) if k is not None]


def _fp_low(inputs: list[Any]) -> list[Any]:
    return [b for b in (_guess_boundary(v, False) for v in inputs) if b is not None]


def _fp_high(inputs: list[Any]) -> list[Any]:
    return [b for b in (_guess_boundary(v, True) for v in inputs) if b is not None]


def _fp_join(inputs: list[Any], separator: Any = None) -> list[Any]:
    # As the suite expects and the compiled join() does: joining nothing gives "" (fhirpathpy gives nothing).
    sep = separator if isinstance(separator, str) else ""
    return [sep.join(v for v in inputs if isinstance(v, str))]


_USER_FUNCTIONS: dict[str, dict[str, Any]] = {
    "join": {"fn": _fp_join, "arity": {0: [], 1: ["String"]}},
    "getResourceKey": {"fn": _fp_resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _fp_reference_key, "arity": {0: [], 1: ["Identifier"]}},
    "lowBoundary": {"fn": _fp_low, "arity": {0: []}},
    "highBoundary": {"fn": _fp_high, "arity": {0: []}},
}


def plain(value: Any) -> Any:
    """A fhirpathpy result as JSON: its typed values (dates, quantities) as their text, decimals as numbers."""
    if isinstance(value, ResourceNode):
        value = value.data
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent == 0 else float(value)
    if isinstance(value, FP_Type):
        return str(value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _typed(value: Any, fhir_type: str | None) -> Any:
    if fhir_type is None:
        return value
    return ResourceNode.create_node(value, fhir_type)  # type: ignore[no-untyped-call]


def _fallback(text: str, context: str | None, scope: _Scope) -> Fn:
    try:
        compiled = fhirpathpy.compile(text, model=_R4, options={"userInvocationTable": _USER_FUNCTIONS})
    except Exception as exc:  # fhirpathpy raises bare Exceptions
        raise FhirPathCompileError(f"cannot compile FHIRPath {text!r}: {exc}") from exc
    # Constants as fhirpathpy's typed values, so that a date constant compares as a date.
    constants = {c.name: _typed(c.value, c.type) for c in scope.constants.values()}
    resource_type = scope.resource_type

    def fallback(focus: list[Any], env: Env) -> list[Any]:
        variables = dict(constants)
        variables["rowIndex"] = env.row_index
        variables["resource"] = _typed(env.resource, resource_type)
        variables["rootResource"] = variables["resource"]
        # A resource is typed by its resourceType (fhirpathpy then also reads "Patient.name"); anything else by the
        # type it has in the view.
        target: Any = [
            item if type(item) is dict and "resourceType" in item else _typed(item, context) for item in focus
        ]
        try:
            return [plain(v) for v in compiled(target, variables)]
        except Exception as exc:  # fhirpathpy raises bare Exceptions; the runner names the resource
            raise ValueError(f"FHIRPath {text!r}: {exc}") from exc

    return fallback


# --- entry point --------------------------------------------------------------------------------------------------


class _RaiseOnError(ErrorListener):  # type: ignore[misc]
    def syntaxError(self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any) -> None:
        raise FhirPathCompileError(f"column {column + 1}: {msg}")


def _strict_parse(text: str) -> Any:
    """The parse tree of the expression. fhirpathpy's parser recovers from syntax errors without a word
    ("name..x" reads as "name.x") and stops at the first expression ("a b" reads as "a"): the whole text is parsed
    here, strictly, and the tree handed to fhirpathpy's own listener (one parse, not two: parsing is most of the
    time a view takes to compile)."""
    listener = _RaiseOnError()
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    return parser.entireExpression().expression()  # type: ignore[no-untyped-call]


@lru_cache(maxsize=1024)  # bounded: views may come from API requests
def _parse(text: str) -> dict[str, Any]:
    try:
        expression = _strict_parse(text)
    except FhirPathCompileError as exc:
        raise FhirPathCompileError(f"not a FHIRPath expression: {text!r} ({exc})") from None
    try:
        listener = ASTPathListener()  # type: ignore[no-untyped-call]
        ParseTreeWalker().walk(listener, expression)
        tree = listener.parentStack[0]
    except Exception as exc:  # the ANTLR runtime raises several unrelated exception types
        raise FhirPathCompileError(f"not a FHIRPath expression: {text!r}") from exc
    if not isinstance(tree, dict) or not tree.get("children"):
        raise FhirPathCompileError(f"not a FHIRPath expression: {text!r}")
    return tree


def _constants_named(node: dict[str, Any]) -> list[str]:
    found: list[str] = []
    if node.get("type") == "ExternalConstant":
        for kid in _kids(node):
            name = _identifier(kid)
            found.append(_string_literal(name) if name.startswith("'") else name)
    for kid in _kids(node):
        found.extend(_constants_named(kid))
    return found


def compile_path(
    text: str,
    context: str | None,
    constants: Mapping[str, Constant],
    resource_type: str | None,
    *,
    engine: str = "auto",
) -> CompiledPath:
    """Compile ``text`` for a focus of FHIR type ``context`` (a resource type, a backbone path such as
    "Patient.contact", a data type; None if unknown). ``engine``: "auto" (compiled, else fhirpathpy), "compiled"
    (only; FhirPathCompileError outside the subset) or "fhirpathpy" (only, to compare the two). Raises
    FhirPathCompileError for a syntax error or a constant that is not defined."""
    if not isinstance(text, str) or not text.strip():
        raise FhirPathCompileError("an empty FHIRPath expression")
    tree = _parse(text)
    for name in _constants_named(tree):
        if name not in constants and name not in ENVIRONMENT:
            raise FhirPathCompileError(f"%{name} is not a constant of the view")
    scope = _Scope(constants, resource_type)
    if engine == "fhirpathpy":
        return CompiledPath(text, None, False, _fallback(text, context, scope), None)
    try:
        node = _Compiler(scope).expression(tree["children"][0], context, True)
    except _Unsupported:
        if engine == "compiled":
            raise FhirPathCompileError(f"outside the compiled FHIRPath subset: {text!r}") from None
        return CompiledPath(text, None, False, _fallback(text, context, scope), None)
    one = one_value(node.steps) if node.steps is not None else None
    return CompiledPath(text, node.type, True, node.fn, node.steps, one)


def element_type(owner: str, name: str) -> str | None:
    """The FHIR type of ``owner.name`` (None for a choice or an unknown element): for callers that type a
    repeat's items."""
    found = _element(owner, name)
    return found[1] if isinstance(found, tuple) else None
