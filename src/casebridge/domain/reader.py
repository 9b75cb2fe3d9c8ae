"""Reading a case report from bytes: JSON or YAML, bounded, with errors that name the field path."""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from casebridge.domain import case_v1
from casebridge.domain.case import CaseReport
from casebridge.domain.case_errors import ParsedCase
from casebridge.domain.case_errors import problems as case_problems
from casebridge.domain.migrate import upgrade
from casebridge.errors import CaseFileError, CaseSchemaError, Problem

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
MAX_DEPTH = 64  # a case report nests about 6 deep; anything far deeper is an attack or an accident
MAX_YAML_NODES = 100_000  # values (scalars, lists, mappings) in a YAML case; the seed case has about 500

M = TypeVar("M", bound=BaseModel)

_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_YamlLoader):  # type: ignore[misc, valid-type]
    """Safe YAML that refuses duplicate keys (silently keeping the last one would lose a fact)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                # A list or mapping as a key ("? [1, 2]") is legal YAML and cannot be a JSON key.
                raise yaml.MarkedYAMLError(problem="a key must be a plain value", problem_mark=key_node.start_mark)
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"duplicate key {key!r}",
                    problem_mark=key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _load_yaml(text: str, source: str) -> Any:
    """Safe YAML without anchors or aliases: a case never needs them, and aliases are how a small YAML
    file expands into a huge document ("billion laughs"). The events are scanned first (in C when
    available), then the document is built. The scan stops at the first value when the document is not a
    mapping, and after MAX_YAML_NODES values: building the document costs about 10 microseconds a value, so a
    5 MB list took 14 s to read before being refused for not being a case."""
    nodes = 0
    for event in yaml.parse(text, Loader=_YamlLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(
                problem="YAML anchors and aliases are not accepted",
                problem_mark=event.start_mark,  # type: ignore[arg-type]  # the C parser's Mark is alike
            )
        if isinstance(event, yaml.NodeEvent):
            if nodes == 0 and not isinstance(event, yaml.MappingStartEvent):
                kind = "list" if isinstance(event, yaml.SequenceStartEvent) else "single value"
                raise CaseFileError(f"a case must be a JSON/YAML object, not a {kind}", source=source)
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise CaseFileError(
                    f"the YAML document holds more than {MAX_YAML_NODES:,} values; the seed case holds about 500",
                    source=source,
                )
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


class _DuplicateKey(ValueError):
    pass


_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is too large a number")
    return value


def _sized(text: str) -> int:
    """An integer, if a float can hold it too: a decimal written as 1 and 400 zeros is 1e400 (refused above) by
    another spelling, and a FHIR server converting it fails."""
    value = int(text)
    if len(text) > 300:  # the cheap test first: no float overflows below 309 digits
        try:
            float(value)
        except OverflowError:
            raise ValueError(f"{text[:40]}... is too large a number") from None
    return value


def load_json(text: str, source: str) -> Any:
    # The standard library's parser (C-accelerated) rather than orjson: only it lets us refuse
    # duplicate keys, which RFC 8259 leaves undefined and most parsers resolve by keeping the last.
    if "\\u" in text and _LONE_SURROGATE.search(text):  # the test first: the pattern alone took 0.14 ms per case
        # "\ud800" alone is legal JSON syntax but not Unicode text: nothing downstream can encode it.
        raise CaseFileError("malformed JSON: an unpaired surrogate escape (\\ud800-\\udfff)", source=source)
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite, parse_int=_sized
        )
    except json.JSONDecodeError as exc:
        raise _positioned(f"malformed JSON: {exc.msg}", source, exc.lineno, exc.colno) from exc
    except _DuplicateKey as exc:
        raise CaseFileError(f"malformed JSON: duplicate key {exc.args[0]!r}", source=source) from exc
    except RecursionError as exc:
        raise CaseFileError(f"the document nests deeper than {MAX_DEPTH} levels", source=source) from exc
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise CaseFileError(f"malformed JSON: {exc}", source=source) from exc


def _positioned(message: str, source: str, line: int | None, column: int | None) -> CaseFileError:
    return CaseFileError(message, source=source, problems=[Problem("", message, line, column)])


# The line breaks YAML counts (libyaml and PyYAML alike), so a mark's line number finds its line.
_YAML_LINES = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")


def _yaml_error(exc: yaml.YAMLError, source: str, text: str) -> CaseFileError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is None:
        return CaseFileError(f"malformed YAML: {problem}", source=source)
    line, column = mark.line + 1, mark.column + 1
    # The parser's words for a tab ("found character that cannot start any token", "a tab character that violates
    # indentation") do not say what to do; a tab in the indentation of the line it stopped on is the cause.
    lines = _YAML_LINES.split(text, maxsplit=mark.line + 1)
    here = lines[mark.line] if mark.line < len(lines) else ""
    indent = len(here) - len(here.lstrip(" \t"))
    if "\t" in here[:indent]:
        column = here.index("\t") + 1
        problem = f"a tab character indents line {line}; YAML indents with spaces only"
    elif here[mark.column : mark.column + 1] == "\t":
        problem = f"a tab character on line {line} cannot start a value; use spaces"
    return _positioned(f"malformed YAML: {problem}", source, line, column)


def parse_document(data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Bytes -> a JSON-like dict. A ``.json`` file is JSON; otherwise YAML, whose flow style also reads
    JSON (a document starting with ``{`` is tried as JSON first, for speed and JSON's own messages)."""
    if len(data) > max_bytes:
        raise CaseFileError(f"the file is {len(data):,} bytes; the limit is {max_bytes:,}", source=source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CaseFileError(f"not UTF-8 text: an invalid byte on line {line}", source=source) from exc
    if not text.strip():
        raise CaseFileError("the file is empty", source=source)
    syntax = "json"
    if source.lower().endswith(".json"):
        doc = load_json(text, source)
    else:
        try:
            doc = load_json(text, source) if text.lstrip().startswith(("{", "[")) else None
        except CaseFileError:
            doc = None  # not JSON: it may still be YAML flow style
        if doc is None:
            syntax = "yaml"
            try:
                doc = _load_yaml(text, source)
            except yaml.YAMLError as exc:
                raise _yaml_error(exc, source, text) from exc
            except RecursionError as exc:
                raise CaseFileError(f"the document nests deeper than {MAX_DEPTH} levels", source=source) from exc
            except ValueError as exc:  # e.g. an integer of more digits than Python converts
                raise CaseFileError(f"malformed YAML: {exc}", source=source) from exc
    if not isinstance(doc, dict):
        raise CaseFileError(f"a case must be a JSON/YAML object, not {type(doc).__name__}", source=source)
    check_depth(doc, source)
    return ParsedCase(doc, text, syntax)


def check_depth(doc: object, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse a document nested deeper than ``limit``. Iterative, so a hostile document cannot exhaust the
    Python stack."""
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise CaseFileError(f"the document nests deeper than {limit} levels", source=source)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _validated(
    model: type[M], doc: dict[str, Any], *, source: str, located_in: object = None, model_name: str = "case model"
) -> M:
    """``doc`` as ``model``, or ``CaseSchemaError`` with each problem in plain words and its line and column in
    ``located_in`` (default ``doc``), when that came from ``parse_document`` (``case_errors``)."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = case_problems(exc, doc if located_in is None else located_in, model)
        raise CaseSchemaError(
            f"the case does not fit the {model_name} ({len(problems)} problem{'s' if len(problems) != 1 else ''})",
            source=source,
            problems=problems,
        ) from exc


def validate_case(doc: dict[str, Any], *, source: str) -> CaseReport:
    """The case, or ``CaseSchemaError`` with each problem in plain words and, when ``doc`` came from
    ``parse_document``, its line and column (``case_errors``). A 1.0 case is checked against the 1.0 model (its
    errors name its own fields) and then upgraded to 2.0."""
    if doc.get("schema_version") != case_v1.SCHEMA_VERSION:
        return _validated(CaseReport, doc, source=source)
    upgraded, _notes = upgrade(_validated(case_v1.CaseReport, doc, source=source))
    case = _validated(CaseReport, upgraded, source=source, located_in=doc)
    case._upgraded_from = case_v1.SCHEMA_VERSION
    return case


def read_case(data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> CaseReport:
    return validate_case(parse_document(data, source=source, max_bytes=max_bytes), source=source)


def migrate(data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str | None, list[str]]:
    """A 1.0 case as 2.0 YAML, with notes for a person to check; ``None`` when the case is 2.0 already. The case is
    checked as 1.0 first (errors as ``read_case`` gives them), and the upgrade as 2.0."""
    doc = parse_document(data, source=source, max_bytes=max_bytes)
    if doc.get("schema_version") != case_v1.SCHEMA_VERSION:
        validate_case(doc, source=source)  # a 2.0 case is still checked: migrate must not pass a broken file
        return None, []
    upgraded, notes = upgrade(_validated(case_v1.CaseReport, doc, source=source, model_name="1.0 case model"))
    _validated(CaseReport, upgraded, source=source, located_in=doc)
    header = "# Upgraded from case schema 1.0 by casebridge migrate (the 1.0 file's comments are not carried over).\n"
    text = yaml.dump(_plain_numbers(upgraded), Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=110)
    return header + text, notes


class _NoAliases(yaml.SafeDumper):
    """Repeated values written out again: the reader refuses anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _plain_numbers(node: Any) -> Any:
    """4.0 written as 4, as a person would (both read as the same number)."""
    if isinstance(node, float) and node.is_integer():
        return int(node)
    if isinstance(node, dict):
        return {k: _plain_numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain_numbers(v) for v in node]
    return node
