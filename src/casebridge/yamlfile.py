"""YAML data files read as node trees, so that every mistake is reported with its file and line.

The mapping folder, the forwarding policy, the API keys file, the inbound profiles and the registry CSV layout
are all read this way: ``compose`` the text, walk it with ``mapping_items`` (keys checked: strings, no
duplicates), take values with ``scalar`` and lines with ``line_of``. A mistake is a ``MappingError``.
"""

from __future__ import annotations

from typing import Any

import yaml

from casebridge.errors import MappingError

_CONSTRUCTOR = yaml.SafeLoader("")  # only its construct_object() is used, for scalars


def yaml_error(exc: yaml.YAMLError, file: str) -> MappingError:
    """An error of the YAML library itself, naming the file and line. ``compose`` turns the parser's into one;
    a loader calls this for what the constructor raises from ``scalar`` (a merge key, an unknown tag)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return MappingError(f"malformed YAML: {problem}", file=file, line=mark.line + 1 if mark else None)


def compose(text: str, file: str) -> yaml.Node:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise yaml_error(exc, file) from exc
    if node is None:
        raise MappingError("the file is empty", file=file, line=1)
    return node


def line_of(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def scalar(node: yaml.Node) -> Any:
    return _CONSTRUCTOR.construct_object(node, deep=True)


def mapping_items(node: yaml.Node, file: str) -> list[tuple[str, yaml.Node, int]]:
    """(key, value node, line) of a YAML mapping, refusing duplicate and non-string keys."""
    if not isinstance(node, yaml.MappingNode):
        raise MappingError(f"expected a mapping, found {_kind(node)}", file=file, line=line_of(node))
    seen: set[str] = set()
    out = []
    for k, v in node.value:
        key = scalar(k) if isinstance(k, yaml.ScalarNode) else None
        if not isinstance(key, str):
            raise MappingError("keys must be strings", file=file, line=line_of(k))
        if key in seen:
            raise MappingError(f"duplicate key {key!r}", file=file, line=line_of(k))
        seen.add(key)
        out.append((key, v, line_of(k)))
    return out


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, yaml.SequenceNode) else "a scalar"
