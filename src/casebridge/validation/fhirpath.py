"""FHIRPath invariants through fhirpathpy, with what it lacks for FHIR R4 validation.

fhirpathpy compiles every R4 core invariant but has no ``hasValue()``, ``htmlChecks()`` or
``resolve()``: they are supplied here. The function form ``as(type)`` (used by dom-3) is read as
``ofType(type)``, which is what it means on collections. Compiled expressions are cached by text.
``resolve()`` needs to know the resource being validated and its Bundle: the validator sets them in a
context variable around each evaluation.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, cast
from xml.parsers import expat

import fhirpathpy
import fhirpathpy.engine as fhirpath_engine
import fhirpathpy.engine.util as fhirpath_util
import fhirpathpy.parser as fhirpath_parser
import re2
import regex
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import FP_Quantity, ResourceNode
from fhirpathpy.models import models

from casebridge.errors import CasebridgeError
from casebridge.validation import ucum

R4_MODEL = models["r4"]


class FhirPathError(CasebridgeError):
    """An invariant that cannot be compiled or evaluated."""


@dataclass
class Resolver:
    """Finds the target of a reference from where it is evaluated: contained resources, the Bundle."""

    resource: dict[str, Any] | None
    bundle_index: dict[str, dict[str, Any]]

    def resolve(self, reference: str) -> dict[str, Any] | None:
        if reference.startswith("#") and self.resource is not None:
            for contained in self.resource.get("contained", ()):
                if isinstance(contained, dict) and contained.get("id") == reference[1:]:
                    return contained
            return None
        return self.bundle_index.get(reference)


_resolver: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar("fhirpath_resolver", default=None)


def _has_value(inputs: list[Any]) -> bool:
    return len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], (dict, list))


def _resolve(inputs: list[Any]) -> list[dict[str, Any]]:
    resolver = _resolver.get()
    out = []
    for item in inputs:
        ref = item.get("reference") if isinstance(item, dict) else item if isinstance(item, str) else None
        if ref and resolver is not None:
            target = resolver.resolve(ref)
            if target is not None:
                out.append(target)
    return out


# The XHTML subset allowed in narrative (R4 "Narrative" rules): no active content, no forms, no frames.
XHTML = "http://www.w3.org/1999/xhtml"
_ALLOWED_TAGS = frozenset(
    "a abbr acronym b big blockquote br caption cite code col colgroup dd dfn div dl dt em h1 h2 h3 h4 h5 h6 hr i "
    "img li ol p pre q samp small span strong sub sup table tbody td tfoot th thead tr tt ul var".split()
)
_ALLOWED_ATTRIBUTES = frozenset(
    {
        *"abbr accesskey align alt axis border cellpadding cellspacing char charoff charset cite class colspan compact "
        "coords datetime dir frame headers height href hreflang id lang name nowrap rel rev rowspan rules scope shape "
        "span src start style summary tabindex target title type valign value width".split(),
        "{http://www.w3.org/XML/1998/namespace}lang",
    }
)
# As expat names them with namespace_separator=" ": "uri local" for elements and namespaced attributes, so that
# each name is checked by one set lookup.
_ALLOWED_ELEMENT_NAMES = frozenset(f"{XHTML} {tag}" for tag in _ALLOWED_TAGS)
_DIV = f"{XHTML} div"
_ALLOWED_ATTRIBUTE_NAMES = frozenset(a.lstrip("{").replace("}", " ", 1) for a in _ALLOWED_ATTRIBUTES)
_UNSAFE_URL = re.compile(r"^(javascript|vbscript|data):", re.I)
# An image's source may be inline (data:image/png;base64,...: the core definitions' own narratives carry such
# icons); a script URL never.
_UNSAFE_SRC = re.compile(r"^(javascript|vbscript):", re.I)
_URL_BLANKS = re.compile(r"[\x00-\x20]+")  # what a browser ignores in a URL


class _NotNarrative(Exception):
    pass


def html_checks(div: str) -> bool:
    """txt-1: the narrative is well-formed XHTML, a div in the XHTML namespace, and uses only the basic
    elements and attributes FHIR allows, with no script URLs (checked after decoding, as a browser would).

    Checked by expat's callbacks as it parses, with no tree built (it runs on every narrative); no DTD is
    accepted, so no entity can be declared or fetched."""
    parser = expat.ParserCreate(namespace_separator=" ")
    started = False

    def start(name: str, attributes: dict[str, str]) -> None:
        nonlocal started
        if name not in _ALLOWED_ELEMENT_NAMES or (not started and name != _DIV):
            raise _NotNarrative
        started = True
        if attributes:
            for attribute in attributes:
                # data-* attributes are inert (no namespace, so no " " in the name): the HL7 publisher writes
                # data-fhir="generated" on every narrative it makes, and accepts them.
                if attribute not in _ALLOWED_ATTRIBUTE_NAMES and not attribute.startswith("data-"):
                    raise _NotNarrative
            href = attributes.get("href")
            if href is not None and _UNSAFE_URL.match(_URL_BLANKS.sub("", href)):
                raise _NotNarrative
            src = attributes.get("src")
            if src is not None and _UNSAFE_SRC.match(_URL_BLANKS.sub("", src)):
                raise _NotNarrative

    def refuse(*_: Any) -> Any:
        raise _NotNarrative

    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(div, True)
    except (_NotNarrative, expat.ExpatError, ValueError):
        return False
    return started


def _html_checks(inputs: list[Any]) -> bool:
    return all(isinstance(i, str) and html_checks(i) for i in inputs)


# Patterns come from profiles and are run on input, so they must not cost more than the input is long: a
# backtracking engine takes exponential time on '^(a+)+$' against 'aaaa…!'. RE2 matches in linear time; only
# the syntax RE2 leaves out (backreferences, lookaround, possessive quantifiers) goes to the ``regex`` module,
# which backtracks but is stopped after PATTERN_TIME_LIMIT seconds of processor time. A pattern that is
# invalid, or that does not finish in time, cannot be evaluated: its invariant says so with its own severity.
PATTERN_TIME_LIMIT = 0.25
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a pattern RE2 refuses goes to the fallback; RE2 need not log it too
_RE2_OPTIONS.dot_nl = True  # as the HL7 validator reads a pattern: '.' matches a line end too
_GROUP_REFERENCE = re.compile(r"\$(\d+)")


@dataclass(frozen=True)
class _Pattern:
    compiled: Any
    linear: bool  # compiled by RE2 (else by ``regex``, run with a time limit)


@lru_cache(maxsize=1024)
def _pattern(pattern: str) -> _Pattern:
    try:
        return _Pattern(re2.compile(pattern, options=_RE2_OPTIONS), True)
    except re2.error:
        pass
    try:
        return _Pattern(regex.compile(pattern, regex.DOTALL), False)
    except regex.error as exc:
        raise FhirPathError(f"the pattern {pattern!r} is not a valid regular expression: {exc}") from exc


def _too_long(pattern: str) -> str:
    return f"the pattern took too long (over {PATTERN_TIME_LIMIT} s): {pattern!r}"


def full_match(pattern: str, text: str) -> bool:
    """Whether all of ``text`` matches ``pattern``, in bounded time (see PATTERN_TIME_LIMIT)."""
    p = _pattern(pattern)
    if p.linear:
        return p.compiled.fullmatch(text) is not None
    try:
        return p.compiled.fullmatch(text, timeout=PATTERN_TIME_LIMIT) is not None
    except TimeoutError as exc:
        raise FhirPathError(_too_long(pattern)) from exc


def replace_matches(pattern: str, substitution: str, text: str) -> str:
    """FHIRPath replaceMatches(): every match replaced, with $1, $2 ... naming the groups matched."""
    p = _pattern(pattern)

    def expand(match: Any) -> str:
        return _GROUP_REFERENCE.sub(lambda g: match.group(int(g[1])) or "", substitution)

    if p.linear:
        return str(p.compiled.sub(expand, text))
    try:
        return str(p.compiled.sub(expand, text, timeout=PATTERN_TIME_LIMIT))
    except TimeoutError as exc:
        raise FhirPathError(_too_long(pattern)) from exc


def _one_string(inputs: list[Any], function: str) -> str | None:
    """The input of a string function: FHIRPath ends the evaluation with an error on several items (it used to
    be read as empty, so the invariant passed); nothing or a value that is not a string gives empty."""
    if len(inputs) > 1:
        raise FhirPathError(f"{function}() needs one string, not a collection of {len(inputs)}")
    return inputs[0] if inputs and isinstance(inputs[0], str) else None


def _matches(inputs: list[Any], pattern: Any) -> list[bool]:
    # As the HL7 validator reads it: the whole string must match (fhirpathpy searches for a part).
    text = _one_string(inputs, "matches")
    if text is None or not isinstance(pattern, str):
        return []
    return [full_match(pattern, text)]


def _replace_matches(inputs: list[Any], pattern: Any, substitution: Any) -> list[str]:
    # fhirpathpy's own runs Python's backtracking engine with no limit.
    text = _one_string(inputs, "replaceMatches")
    if text is None or not isinstance(pattern, str) or not isinstance(substitution, str):
        return []
    return [replace_matches(pattern, substitution, text)]


# Quantities compare as FHIRPath says (section 6.3): the same unit, or units one converts to the other, compare
# their values; a comparison of quantities with units that do not convert is empty. fhirpathpy compares the
# JSON objects instead, which Python refuses (rng-2, low <= high, could not be evaluated on any Range).
_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"})
_UCUM = "http://unitsofmeasure.org"
_NOT_A_QUANTITY = object()


def _quantity_of(item: Any) -> Any:
    """(value, unit, system) of a Quantity node or literal; None for one without a value; else _NOT_A_QUANTITY."""
    if isinstance(item, FP_Quantity):
        unit = FP_Quantity.timeUnitsToUCUM.get(item.unit, item.unit) if isinstance(item.unit, str) else None
        return (Decimal(str(item.value)), unit.strip("'") if unit else "1", _UCUM)
    if not isinstance(item, ResourceNode) or item.path not in _QUANTITY_TYPES or not isinstance(item.data, dict):
        return _NOT_A_QUANTITY
    data = item.data
    value = data.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        return None
    system = data.get("system")
    unit = data.get("code") if system is not None else data.get("unit")
    return (Decimal(str(value)), unit if isinstance(unit, str) else None, system)


def _quantity_order(a: tuple[Decimal, str | None, Any], b: tuple[Decimal, str | None, Any]) -> int | None:
    """-1, 0 or 1 as ``a`` is less, equal or greater; None when their units do not compare."""
    (va, ua, sa), (vb, ub, sb) = a, b
    if ua == ub and sa == sb:
        return (va > vb) - (va < vb)
    if sa == sb == _UCUM:
        ba, bb = ucum.to_base(float(va), ua), ucum.to_base(float(vb), ub)
        if ba is not None and bb is not None and ba[1] == bb[1]:
            return (ba[0] > bb[0]) - (ba[0] < bb[0])
    return None


def _comparison(original: Callable[..., Any], holds: Callable[[int], bool]) -> Callable[..., Any]:
    def compare(ctx: Any, a: Any, b: Any) -> Any:
        if isinstance(a, list) and isinstance(b, list) and len(a) == 1 and len(b) == 1:
            qa, qb = _quantity_of(a[0]), _quantity_of(b[0])
            if qa is not _NOT_A_QUANTITY and qb is not _NOT_A_QUANTITY:
                order = None if qa is None or qb is None else _quantity_order(qa, qb)
                return [] if order is None else [holds(order)]
        return original(ctx, a, b)

    return compare


# fhirpathpy is used by this module alone: its operators are replaced in its own table, since functions given as
# user functions receive their input without the types that tell a Quantity.
for _operator, _holds in {
    "<": lambda order: order < 0,
    "<=": lambda order: order <= 0,
    ">": lambda order: order > 0,
    ">=": lambda order: order >= 0,
}.items():
    _entry = cast(dict[str, Any], invocation_registry[_operator])
    if not _entry.get("quantities"):  # once, should the module be loaded twice (compiled and from source)
        _entry["fn"] = _comparison(_entry["fn"], _holds)
        _entry["quantities"] = True


_USER_FUNCTIONS: dict[str, dict[str, Any]] = {
    "matches": {"fn": _matches, "arity": {1: ["String"]}},
    "replaceMatches": {"fn": _replace_matches, "arity": {2: ["String", "String"]}},
    "hasValue": {"fn": _has_value, "arity": {0: []}},
    "htmlChecks": {"fn": _html_checks, "arity": {0: []}},
    "resolve": {"fn": _resolve, "arity": {0: []}},
}
_AS_FUNCTION = re.compile(r"(?<![\w$])as\(")


def normalise(expression: str) -> str:
    """The expression as fhirpathpy reads it: ``x.as(T)`` becomes ``x.ofType(T)``."""
    return _AS_FUNCTION.sub("ofType(", expression)


# A path on %resource or %rootResource made of names and argument-free functions (first(), descendants()...)
# has one value per evaluation. Inside a where(), all(), select()... it was evaluated again for each item:
# sdf-8's %resource.snapshot.element.first() walked the whole snapshot once per element, quadratic in its size.
# Such paths inside parentheses are evaluated once per evaluation and passed in as variables.
_STRING_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'")
_CONSTANT_PATH = re.compile(r"%(?:resource|rootResource)(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\(\)|(?![A-Za-z0-9_(])))+|[()]")


def _no_trace(*args: Any) -> None:
    """trace() must not print: invariants such as ref-1 call it."""


def hoist_constants(expression: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``expression`` with each constant path inside parentheses replaced by a variable ``%_constantN``, and
    the (name, path) pairs. Text inside string literals is left alone."""
    pieces: list[str] = []
    names: dict[str, str] = {}
    depth = 0
    position = 0
    bounds = [(m.start(), m.end()) for m in _STRING_LITERAL.finditer(expression)]
    for start, end in [*bounds, (len(expression), len(expression))]:
        code = expression[position:start]
        last = 0
        for match in _CONSTANT_PATH.finditer(code):
            found = match.group()
            if found == "(":
                depth += 1
            elif found == ")":
                depth -= 1
            elif depth > 0:
                name = names.setdefault(found, f"_constant{len(names)}")
                pieces.append(code[last : match.start()] + f"%{name}")
                last = match.end()
        pieces.append(code[last:] + expression[start:end])
        position = end
    return "".join(pieces), tuple((name, path) for path, name in names.items())


def _constant(parsed: Any, table: Any, variables: dict[str, Any]) -> Any:
    """One hoisted path's value as the engine's own nodes (typed, primitives' extensions kept)."""
    ctx = {
        "dataRoot": [],
        "vars": {"context": None, "ucum": "http://unitsofmeasure.org", **variables},
        "model": R4_MODEL,
        "userInvocationTable": table,
        "traceFn": _no_trace,
    }
    return fhirpath_engine.do_eval(ctx, [], parsed["children"][0])  # type: ignore[no-untyped-call]


@lru_cache(maxsize=4096)
def compile_expression(expression: str) -> Callable[..., Any]:
    normal = normalise(expression)
    text, constants = hoist_constants(normal)
    options = {"userInvocationTable": _USER_FUNCTIONS, "traceFn": _no_trace}
    try:
        plain = fhirpathpy.compile(normal, model=R4_MODEL, options=options)
        if not constants:
            return plain
        fn = fhirpathpy.compile(text, model=R4_MODEL, options=options)
        parsed = tuple((name, fhirpath_parser.parse(path)) for name, path in constants)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise FhirPathError(f"cannot compile FHIRPath {expression!r}: {exc}") from exc
    table = fhirpath_util.process_user_invocation_table(_USER_FUNCTIONS)  # type: ignore[no-untyped-call]

    def run(target: Any, variables: dict[str, Any]) -> Any:
        try:
            values = {name: _constant(tree, table, variables) for name, tree in parsed}
        except Exception:  # noqa: BLE001 - evaluated where it stands, it may never be reached (an empty where())
            return plain(target, variables)
        return fn(target, {**variables, **values})

    return run


def evaluate(
    expression: str,
    node: Any,
    *,
    base: str | None,
    resource: dict[str, Any] | None,
    root: dict[str, Any] | None,
    resolver: Resolver,
) -> list[Any]:
    """Evaluate on ``node``; ``base`` is its element path (e.g. "Observation.component"), which tells
    FHIRPath the node's type so that choice elements (``value``) resolve."""
    fn = compile_expression(expression)
    token = _resolver.set(resolver)
    try:
        target = ResourceNode.create_node(node, base) if base else node  # type: ignore[no-untyped-call]
        return fn(target, {"resource": _typed(resource), "rootResource": _typed(root or resource)})  # type: ignore[no-any-return]
    except FhirPathError:
        raise
    except Exception as exc:
        raise FhirPathError(f"error evaluating {expression!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        _resolver.reset(token)


def _typed(resource: dict[str, Any] | None) -> Any:
    """A resource as a typed FHIRPath node, so that %resource.type() names its type."""
    if isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
        return ResourceNode.create_node(resource, resource["resourceType"])  # type: ignore[no-untyped-call]
    return resource


def is_true(result: list[Any]) -> bool:
    """FHIRPath's rule for an invariant: it passes when the result is true (an empty result passes)."""
    if not result:
        return True
    return result == [True]
