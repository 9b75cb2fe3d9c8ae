"""Reading a case report from bytes: JSON or YAML, bounded, with errors that name the field path."""

from __future__ import annotations

from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from service.domain.case import CaseReport
from service.errors import CaseFileError, CaseSchemaError, Problem

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
MAX_DEPTH = 64  # a case report nests about 6 deep; anything far deeper is an attack or an accident

_YamlLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str) -> Any:
    """Safe YAML without anchors or aliases: a case never needs them, and aliases are how a small YAML
    file expands into a huge document ("billion laughs"). The events are scanned first (in C when
    available), then the document is built."""
    for event in yaml.parse(text, Loader=_YamlLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.MarkedYAMLError(
                problem="YAML anchors and aliases are not accepted",
                problem_mark=event.start_mark,  # type: ignore[arg-type]  # the C parser's Mark is alike
            )
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader


def parse_document(data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Bytes -> a JSON-like dict. JSON is tried first when the text starts like JSON; YAML otherwise."""
    if len(data) > max_bytes:
        raise CaseFileError(f"the file is {len(data):,} bytes; the limit is {max_bytes:,}", source=source)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CaseFileError(f"not UTF-8 text (byte {exc.start})", source=source) from exc
    if not text.strip():
        raise CaseFileError("the file is empty", source=source)
    if text.lstrip().startswith(("{", "[")):
        try:
            doc = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise CaseFileError(
                f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=source
            ) from exc
    else:
        try:
            doc = _load_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise CaseFileError(f"malformed YAML{where}: {problem}", source=source) from exc
    if not isinstance(doc, dict):
        raise CaseFileError(f"a case must be a JSON/YAML object, not {type(doc).__name__}", source=source)
    _check_depth(doc, source)
    return doc


def _check_depth(doc: object, source: str) -> None:
    # Iterative, so a hostile document cannot exhaust the Python stack.
    stack: list[tuple[object, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CaseFileError(f"the document nests deeper than {MAX_DEPTH} levels", source=source)
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def format_location(loc: tuple[int | str, ...]) -> str:
    """('diagnostic_steps', 2, 'ultrasound', 'differential', 0) -> 'diagnostic_steps[2].differential[0]'.

    Pydantic puts the discriminator tag of a union member into the location; it is not a field, so it is
    dropped (it is the step's ``kind``, which the message already implies).
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


_UNION_TAGS = frozenset({"clinical_examination", "xray", "ultrasound", "ct", "mri", "laboratory", "histopathology"})


def validate_case(doc: dict[str, Any], *, source: str) -> CaseReport:
    try:
        return CaseReport.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            loc = format_location(tuple(err["loc"]))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "missing":
                msg = "required field is missing"
            problems.append(Problem(loc, msg))
        raise CaseSchemaError(
            f"the case does not fit the case model ({len(problems)} problem{'s' if len(problems) != 1 else ''})",
            source=source,
            problems=problems,
        ) from exc


def read_case(data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES) -> CaseReport:
    return validate_case(parse_document(data, source=source, max_bytes=max_bytes), source=source)
