"""The case model's refusals in a person's words, with where they are in the file.

pydantic says "Input should be a valid dictionary or instance of Age" and gives a location path. A person
writing a case file needs what was expected, with an example of a right value ("expected an age such as
{value: 26, unit: years}"), what was found instead, the fields an object has when one is unknown, and the
line and column. ``problems`` turns a ``ValidationError`` into such ``Problem``s.

Where: the reader keeps the text it parsed (``ParsedCase``). On a refusal, and only then, the positions of
the refused values are found again: for YAML, PyYAML composes the node tree (every node carries its start
mark) and it is walked along the paths; for JSON, the text is walked along the same paths with the standard
library's own string scanner and decoder, which skip every value off the paths in C. A position map built
while parsing would cost every case, valid or not, and ``object_pairs_hook`` sees values, never offsets;
re-reading only the refused paths costs nothing on the common path and reuses the parsers that accepted the
text, so the two cannot disagree about where a value is.
"""

from __future__ import annotations

import bisect
import datetime as dt
import difflib
import json
import re
import types
from collections.abc import Iterable, Sequence
from json.decoder import scanstring  # type: ignore[attr-defined]  # public, though the stubs leave it out
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from casebridge.domain.case import CaseReport
from casebridge.errors import Problem

_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Part = int | str
Path = tuple[Part, ...]


class ParsedCase(dict[str, Any]):
    """A parsed case document that remembers its text and syntax ("json" or "yaml"), so that a refusal can
    name lines and columns. It is a dict: everything else reads it as one."""

    def __init__(self, doc: dict[str, Any], text: str, syntax: str) -> None:
        super().__init__(doc)
        self.text = text
        self.syntax = syntax


# --- what a field expects ---------------------------------------------------------------------------------

# Patterns of the case model, in words. tests/unit/test_case_errors.py checks every pattern of the model is here.
KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_PATTERNS = {
    KEY_PATTERN: "expected a short name: a letter or digit, then up to 63 letters, digits, '.', '_' or '-', "
    "without spaces (such as 'previous-fracture')",
    r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$": "",  # control characters: worded with the character found
    r"^10\.\d{4,9}/[^\s]+$": "expected a DOI such as 10.30574/ijrsra.2026.18.3.0536 (without https://doi.org/)",
    r"^https?://[^\s]+$": "expected a web address starting with http:// or https://, without spaces",
    r"^(https?://|urn:)[^\s]+$": "expected a URI starting with http://, https:// or urn:, without spaces",
    r"^\S(.*\S)?$": "must not start or end with a space",
    r"^[1-9]\d{0,8}$": "expected a PubMed id: digits only, such as '28403086' (quoted in YAML)",
    r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$": (
        "expected a date as precise as the source gives it: 2019, 2019-03 or 2019-03-14"
    ),
}

# A right value of each small object, in YAML flow style (in JSON: the same with quotes). Taken from the seed
# case (the reference range from the lipoma teaching case); the test validates each against its model.
EXAMPLES = {
    "Concept": "{text: Localized swelling, key: swelling} (or just the text: Localized swelling)",
    "BodySite": "{site: forearm, laterality: right}",
    "Quantity": "{value: 0.57, unit: cm}",
    "Age": "{value: 26, unit: years}",
    "Duration": "{value: 7, unit: years}",
    "Figure": "{label: Figure 1, caption: Clinical swelling on the right forearm}",
    "ReferenceRange": "{low: 2.15, high: 2.55, unit: mmol/L}",
    "Finding": "{concept: Pain in the swelling, present: false}",
    "Measurement": "{concept: Lesion size, dimensions: [{value: 0.57, unit: cm}, {value: 0.44, unit: cm}]}",
    "PossibleCause": "{history: previous-fracture, note: The previous fracture might have led to this condition.}",
    "TimeElement": "{relative: {value: 4, unit: weeks, relation: after, to: presentation}} (or {age: {value: 12}})",
    "Assessment": "{diagnosis: lipoma, status: excluded}",
}


def _is_model(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _patterns(meta: object) -> list[str]:
    pattern = getattr(meta, "pattern", None)
    found = [pattern] if isinstance(pattern, str) else []
    for inner in getattr(meta, "metadata", None) or ():
        found += _patterns(inner)
    return found


def _unwrap(tp: Any) -> tuple[Any, tuple[str, ...]]:
    """The type under ``Annotated`` and ``| None``, with the patterns set on the way."""
    patterns: list[str] = []
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp, *meta = get_args(tp)
            patterns += [p for m in meta for p in _patterns(m)]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp, tuple(patterns)
            tp = members[0]
        else:
            return tp, tuple(patterns)


def _union_models(tp: Any) -> list[type[BaseModel]]:
    """The members of a union of models (the diagnostic steps), else []."""
    if get_origin(tp) not in (Union, types.UnionType):
        return []
    members = get_args(tp)
    return list(members) if all(_is_model(m) for m in members) else []


def _tags(model: type[BaseModel]) -> tuple[str, ...]:
    field = model.model_fields.get("kind")
    return tuple(str(a) for a in get_args(_unwrap(field.annotation)[0])) if field else ()


class Spot(NamedTuple):
    """What the walk along an error's location found: the path without pydantic's union tags, the type the value
    should have (None when the path leaves the model), and the model whose field the last part is (or, for an
    unknown field, the model it was found in)."""

    path: Path
    type: Any
    patterns: tuple[str, ...]
    holder: type[BaseModel] | None


def walk(loc: Iterable[Part], root: type[BaseModel] = CaseReport) -> Spot:
    tp: Any = root
    patterns: tuple[str, ...] = ()
    holder: type[BaseModel] | None = None
    path: list[Part] = []
    for part in loc:
        tp, _ = _unwrap(tp)
        members = _union_models(tp)
        chosen = [m for m in members if isinstance(part, str) and part in _tags(m)]
        if chosen:  # pydantic names the union member it tried; the document has no such level
            tp = chosen[0]
            continue
        path.append(part)
        if isinstance(part, int) and get_origin(tp) is list:
            tp, patterns, holder = get_args(tp)[0], (), None
        elif isinstance(part, str) and _is_model(tp) and part in tp.model_fields:
            field = tp.model_fields[part]
            holder = tp
            tp, patterns = field.annotation, tuple(p for m in field.metadata for p in _patterns(m))
        else:
            holder = tp if _is_model(tp) else None
            tp, patterns = None, ()
    tp, more = _unwrap(tp)
    return Spot(tuple(path), tp, (*patterns, *more), holder)


def _words(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r" \1", name).lower()


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _bare(noun: str) -> str:
    return noun.split(" ", 1)[1] if noun.startswith(("a ", "an ")) else noun


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"


def _choices(values: Sequence[object]) -> str:
    return ", ".join(str(v) for v in values)


# What every fact or event may carry: listed last, after the fields that say what the object is.
_COMMON = ("time", "quote")


def _names(model: type[BaseModel]) -> list[str]:
    return [n for n in model.model_fields if n not in _COMMON] + [n for n in _COMMON if n in model.model_fields]


def _fields(model: type[BaseModel]) -> str:
    names = _names(model)
    required = [n for n in names if model.model_fields[n].is_required()]
    optional = [n for n in names if not model.model_fields[n].is_required()]
    parts = [f"required {_choices(required)}" if required else "", f"optional {_choices(optional)}" if optional else ""]
    return "; ".join(p for p in parts if p)


def noun(tp: Any, patterns: tuple[str, ...] = ()) -> str:
    """What a value of ``tp`` is, in words, with its article: "an age", "one of left, right, bilateral"."""
    tp, more = _unwrap(tp)
    patterns = (*patterns, *more)
    if _is_model(tp):
        return _a(_words(tp.__name__))
    if _union_models(tp):
        return "a diagnostic step"
    origin = get_origin(tp)
    if origin is Literal:
        return f"one of {_choices(get_args(tp))}"
    if origin is list:
        item = noun(get_args(tp)[0])
        many = f"values, each {item}" if item.startswith("one of") else _plural(_bare(item))
        return f"a list of {many}"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is dt.date:
        return "a date written YYYY-MM-DD"
    if tp is str:
        return "a short name" if KEY_PATTERN in patterns else "text"
    return "a value"


def expected(tp: Any, patterns: tuple[str, ...] = ()) -> str:
    """``noun`` with an example of a right value, or, for a larger object, its fields."""
    words = noun(tp, patterns)
    tp, _ = _unwrap(tp)
    if _is_model(tp):
        example = EXAMPLES.get(tp.__name__)
        return f"{words} such as {example}" if example else f"{words}: an object with the fields {_fields(tp)}"
    if _union_models(tp):
        return f"{words}: an object whose kind is one of {_choices([t for m in _union_models(tp) for t in _tags(m)])}"
    if get_origin(tp) is list:
        item, _ = _unwrap(get_args(tp)[0])
        example = EXAMPLES.get(item.__name__) if _is_model(item) else None
        return f"{words}, one item like {example}" if example else words
    return {
        "a short name": "a short name such as previous-fracture",
        "a whole number": "a whole number such as 26",
        "a number": "a number such as 0.57",
        "a date written YYYY-MM-DD": "a date written YYYY-MM-DD, such as 2026-02-07",
    }.get(words, words)


# --- what was found -------------------------------------------------------------------------------------


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def got(value: object) -> str:
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return f"the number {_number(value)}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the text {shown!r}"
    if isinstance(value, dt.datetime):
        return f"the date and time {value.isoformat()}"
    if isinstance(value, dt.date):
        return f"the date {value.isoformat()}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return "an object" + (f" with the fields {_choices(list(value)[:8])}" if value else " with no fields")
    return type(value).__name__


def _hint(value: object, tp: Any) -> str:
    """A nudge for the common slips: a number or true/false in quotes."""
    if not isinstance(value, str):
        return ""
    if tp in (int, float) and re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", value):
        return "; write the number without quotes"
    if tp is bool and value.strip().lower() in ("true", "false", "yes", "no"):
        return "; write true or false, without quotes"
    return ""


# --- the message ------------------------------------------------------------------------------------------

_TYPE_ERRORS = frozenset(
    {
        "model_type",
        "model_attributes_type",
        "dict_type",
        "list_type",
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "date_type",
    }
)
_DATE_ERRORS = frozenset({"date_parsing", "date_from_datetime_parsing", "date_from_datetime_inexact", "date_future"})


def message(err: Any, spot: Spot) -> str:
    """One pydantic error in plain words. ``err`` is an item of ``ValidationError.errors()``."""
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    tp = spot.type
    if kind == "missing":
        return f"required field is missing; expected {expected(tp, spot.patterns)}"
    if kind in ("extra_forbidden", "invalid_key"):
        name = spot.path[-1] if spot.path else ""
        holder = spot.holder
        fields = _names(holder) if holder else []
        close = difflib.get_close_matches(str(name), fields, n=1)
        words = f"unknown field {name!r}" if kind == "extra_forbidden" else f"a field name must be text, not {name!r}"
        if close:
            words += f" (did you mean {close[0]!r}?)"
        if holder is not None:
            words += f"; {_a(_words(holder.__name__))} has the fields {_choices(fields)}"
        return words
    if kind in _TYPE_ERRORS:
        return f"expected {expected(tp, spot.patterns)}; got {got(value)}{_hint(value, tp)}"
    if kind == "literal_error":
        choices = _choices(get_args(tp)) if get_origin(tp) is Literal else ctx.get("expected", "")
        return f"expected one of {choices}; got {got(value)}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tags = [t for m in _union_models(tp) for t in _tags(m)]
        tags = tags or re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        if kind == "union_tag_not_found":
            return f"a diagnostic step needs a kind: one of {_choices(tags)}"
        tag = value.get("kind") if isinstance(value, dict) else ctx.get("tag")
        return f"unknown kind: {got(tag)}; the kind of a diagnostic step is one of {_choices(tags)}"
    if kind == "string_too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"must be at least {n} characters long"
    if kind == "string_too_long":
        length = len(value) if isinstance(value, str) else "more"
        return f"is {length} characters long; at most {ctx.get('max_length')} are allowed"
    if kind == "string_pattern_mismatch":
        return _pattern_message(str(ctx.get("pattern", "")), value)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = ctx.get({"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le"}.get(kind, "lt"))
        words = {
            "greater_than_equal": f"must be {_number(bound)} or more",
            "greater_than": f"must be more than {_number(bound)}",
            "less_than_equal": f"must be {_number(bound)} or less",
            "less_than": f"must be less than {_number(bound)}",
        }[kind]
        if kind == "greater_than_equal" and bound == 0:
            words = "must not be negative"
        return f"{words}; got {got(value)}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        if n == 1:
            item = get_args(tp)[0] if get_origin(tp) is list else None
            return f"must not be empty: give at least one {_bare(noun(item))}"
        return f"needs at least {n} items; got {ctx.get('actual_length')}"
    if kind == "too_long":
        return f"holds at most {ctx.get('max_length')} items; got {ctx.get('actual_length')}"
    if kind == "finite_number":
        return f"must be a finite number; got {got(value)}"
    if kind in _DATE_ERRORS or kind.startswith("date_"):
        detail = " (a date without a time)" if kind == "date_from_datetime_inexact" else ""
        return f"expected a real calendar date written YYYY-MM-DD{detail}, such as 2026-02-07; got {got(value)}"
    # value_error and anything unforeseen: the model's own words (case.py writes them for people)
    return str(err["msg"]).removeprefix("Value error, ")


def _pattern_message(pattern: str, value: object) -> str:
    words = _PATTERNS.get(pattern)
    if words == "" and isinstance(value, str):
        bad = re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", value)
        where = f" U+{ord(bad.group()):04X} at character {bad.start() + 1}" if bad else ""
        return f"contains the control character{where}; text may hold tabs and line breaks, no other control characters"
    return f"{words or f'does not have the expected form (pattern {pattern})'}; got {got(value)}"


# A model-level check of case.py names the field it refers to first: "diagnostic_steps[2].order: ...".
_PATH_PREFIX = re.compile(r"([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*): (.+)", re.DOTALL)


def _split_prefix(loc: Path, text: str, root: type[BaseModel]) -> tuple[Path, str]:
    """``loc`` is pydantic's, with its union tags: they say which kind of step a step's own check ran in."""
    spot = walk(loc, root)
    match = _PATH_PREFIX.fullmatch(text)
    if not match:
        return spot.path, text
    parts: list[Part] = [int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|\w+", match[1])]
    if not (_is_model(spot.type) and parts[0] in spot.type.model_fields):
        return spot.path, text  # a colon in the message, not a path
    return (*spot.path, *parts), match[2]


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


# --- where ------------------------------------------------------------------------------------------------


class Place(NamedTuple):
    """Where a value starts (1-based line and column), where its key starts if it is an object's member, and
    whether it is a single value (not a list or object)."""

    line: int
    column: int
    key: tuple[int, int] | None
    scalar: bool


def _trie(paths: Iterable[Path]) -> dict[Part, Any]:
    root: dict[Part, Any] = {}
    for path in paths:
        node = root
        for part in path:
            node = node.setdefault(part, {})
    return root


def _yaml_places(text: str, wanted: dict[Part, Any]) -> dict[Path, Place]:
    found: dict[Path, Place] = {}
    root = yaml.compose(text, Loader=_YamlLoader)  # the text was read with this loader already

    def visit(node: yaml.Node, path: Path, trie: dict[Part, Any], key: yaml.Node | None) -> None:
        at = node.start_mark
        found[path] = Place(
            at.line + 1,
            at.column + 1,
            (key.start_mark.line + 1, key.start_mark.column + 1) if key is not None else None,
            isinstance(node, yaml.ScalarNode),
        )
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                name = k.value if isinstance(k, yaml.ScalarNode) else None
                for part in (name, int(name)) if isinstance(name, str) and name.isdigit() else (name,):
                    if part in trie:
                        visit(v, (*path, part), trie[part], k)
        elif isinstance(node, yaml.SequenceNode):
            for part, sub in trie.items():
                if isinstance(part, int) and 0 <= part < len(node.value):
                    visit(node.value[part], (*path, part), sub, None)

    if root is not None:
        visit(root, (), wanted, None)
    return found


_SKIP = json.JSONDecoder(parse_int=str, parse_float=str, parse_constant=str)  # only where a value ends matters
_WS = re.compile(r"[ \t\n\r]*")


def _json_places(text: str, wanted: dict[Part, Any]) -> dict[Path, Place]:
    offsets: dict[Path, tuple[int, int | None, bool]] = {}

    def skip(i: int) -> int:
        return _WS.match(text, i).end()  # type: ignore[union-attr]  # the pattern matches the empty string

    def visit(i: int, path: Path, trie: dict[Part, Any], key: int | None) -> int:
        """Record where the value at ``i`` is, descend into the wanted members, return where it ends."""
        opening = text[i]
        offsets[path] = (i, key, opening not in "[{")
        if not trie or opening not in "[{":
            return _SKIP.raw_decode(text, i)[1]
        i = skip(i + 1)
        index = 0
        while text[i] not in "]}":
            if opening == "{":
                key_at = i
                name, i = scanstring(text, i + 1)
                i = skip(skip(i) + 1)  # past the colon
                part: Part = name
            else:
                key_at, part = -1, index
            if part in trie:
                i = visit(i, (*path, part), trie[part], key_at if key_at >= 0 else None)
            else:
                i = _SKIP.raw_decode(text, i)[1]
            i = skip(i)
            if text[i] == ",":
                i = skip(i + 1)
            index += 1
        return i + 1

    visit(skip(0), (), wanted, None)
    starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def line_column(offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(starts, offset)
        return line, offset - starts[line - 1] + 1

    return {
        path: Place(*line_column(at), line_column(key) if key is not None else None, scalar)
        for path, (at, key, scalar) in offsets.items()
    }


def places(doc: object, paths: Iterable[Path]) -> dict[Path, Place]:
    """Where each of ``paths`` (and every object on the way) is in the text ``doc`` was parsed from; {} when
    ``doc`` does not carry its text."""
    if not isinstance(doc, ParsedCase):
        return {}
    wanted = _trie(paths)
    try:
        return _json_places(doc.text, wanted) if doc.syntax == "json" else _yaml_places(doc.text, wanted)
    except (yaml.YAMLError, ValueError, IndexError, RecursionError):
        return {}  # the text was read once already; a position is a help, never a reason to fail


def _position(kind: str, path: Path, found: dict[Path, Place]) -> tuple[int, int] | None:
    place = found.get(path)
    if place is not None:
        if kind in ("extra_forbidden", "invalid_key") or not place.scalar:
            # the unknown key itself; for an object or list, its key's line rather than its first member's
            return place.key or (place.line, place.column)
        return place.line, place.column
    for n in range(len(path) - 1, -1, -1):  # a missing field: the object that lacks it
        parent = found.get(path[:n])
        if parent is not None:
            return parent.key or (parent.line, parent.column)
    return None


def _as_written(path: Path, doc: object) -> Path:
    """The path as the document has it: one body site written as a mapping is read as a list of one, so
    pydantic's path has an index the document does not."""
    out: list[Part] = []
    node: Any = doc
    for part in path:
        if isinstance(part, int) and isinstance(node, dict):
            continue
        out.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(out)


def problems(exc: ValidationError, doc: object, root: type[BaseModel] = CaseReport) -> list[Problem]:
    """Each error of ``exc`` as a ``Problem``: the field path, the plain words, and the line and column in the
    text ``doc`` was parsed from (when it is a ``ParsedCase``). ``root``: the model that was validated (a 1.0
    case is validated against the 1.0 model)."""
    located: list[tuple[str, Path, Path, str]] = []
    for err in exc.errors(include_url=False):
        spot = walk(err["loc"], root)
        words = message(err, spot)
        path = where = spot.path
        if err["type"] == "value_error":
            path, words = _split_prefix(tuple(err["loc"]), words, root)
            where = path
        elif err["type"] == "union_tag_invalid":
            where = (*path, "kind")  # the refused value is the step's kind; the problem is the step's
        located.append((err["type"], _as_written(path, doc), _as_written(where, doc), words))
    found = places(doc, [where for _, _, where, _ in located])
    out = []
    for kind, path, where, words in located:
        at = _position(kind, where, found)
        out.append(Problem(format_path(path), words, *(at or (None, None))))
    return out
