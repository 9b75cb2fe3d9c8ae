"""Resource templates: YAML files in ``mappings/resources/``, compiled once at load time.

A template file describes one FHIR resource type and lists the roles it plays in a case::

    resourceType: Observation
    resources:
      - role: serum-calcium            # unique across all files; resource ids derive from it
        title: "Serum calcium"         # shown in references' display and in the narrative
        for_each: case.lab_tests       # optional: one resource per item ...
        as: test                       # ... bound to this name
        key: test.id                   # ... and told apart by this key (part of the id)
        when: case.final_diagnosis     # optional: only when truthy
        body:                          # the resource, without resourceType and id
          status: final
          code: "{{ concept(test.concept) }}"

In ``body``, a string that is exactly ``{{ expr }}`` takes the expression's value (a number stays a
number, a dict becomes an element); a string with text around ``{{ }}`` interpolates and is dropped when
any part is None. Elements whose value is None, "", [] or {} are dropped, so optional facts drop out.
Directives: ``$if: expr`` on a mapping keeps it only when truthy; a list item ``{$for: expr, $as: name,
...}`` repeats the rest of the item (or its ``$value``) for each element; a list item whose expression
yields a list is spliced in. The expression language is described in ``expressions.py``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from casebridge.errors import MappingError
from casebridge.mapping.expressions import (
    Compiled,
    Env,
    ExpressionCompiler,
    Function,
    ListOf,
    StaticType,
)
from casebridge.yamlfile import line_of, mapping_items, scalar

Render = Callable[[Env], Any]
_EXPR = re.compile(r"\{\{(.*?)\}\}", re.S)


def _json_ready(value: Any, file: str, line: int) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, BaseModel):
        raise MappingError(
            f"an expression gave a {type(value).__name__} object, which is not FHIR: "
            "pick a field of it, or pass it to a function such as concept() or site()",
            file=file,
            line=line,
        )
    return value


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return str(value)


class BodyCompiler:
    def __init__(self, functions: dict[str, Function], file: str):
        self.functions = functions
        self.file = file

    def expr(self, source: str, scope: dict[str, StaticType], line: int) -> tuple[Compiled, StaticType]:
        return ExpressionCompiler(self.functions, file=self.file, line=line).compile(source, scope)

    def value(self, node: yaml.Node, scope: dict[str, StaticType]) -> Render:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, scope)
        if isinstance(node, yaml.SequenceNode):
            return self._sequence(node, scope)
        value = scalar(node)
        if isinstance(value, str) and "{{" in value:
            return self._string(value, scope, line_of(node))
        if isinstance(value, (dt.date, dt.datetime)):
            value = value.isoformat()
        return lambda env: value

    def _string(self, text: str, scope: dict[str, StaticType], line: int) -> Render:
        file = self.file
        whole = _EXPR.fullmatch(text.strip()) if text.count("{{") == 1 else None
        if whole:
            fn = self.expr(whole.group(1), scope, line)[0]
            return lambda env: _json_ready(fn(env), file, line)
        pieces: list[str | Compiled] = []
        pos = 0
        for m in _EXPR.finditer(text):
            if m.start() > pos:
                gap = text[pos : m.start()]
                if "{{" in gap or "}}" in gap:  # a stray brace before an expression, not only after the last
                    raise MappingError(f"unbalanced {{{{ }}}} in {text!r}", file=file, line=line)
                pieces.append(gap)
            pieces.append(self.expr(m.group(1), scope, line)[0])
            pos = m.end()
        if "{{" in text[pos:] or "}}" in text[pos:]:
            raise MappingError(f"unbalanced {{{{ }}}} in {text!r}", file=file, line=line)
        if pos < len(text):
            pieces.append(text[pos:])

        def interpolate(env: Env) -> str | None:
            out = []
            for p in pieces:
                if isinstance(p, str):
                    out.append(p)
                    continue
                v = p(env)
                if _empty(v):
                    return None
                out.append(_fmt(v))
            return "".join(out)

        return interpolate

    def _mapping(self, node: yaml.MappingNode, scope: dict[str, StaticType]) -> Render:
        condition: Compiled | None = None
        fields: list[tuple[str, Render]] = []
        for key, child, line in mapping_items(node, self.file):
            if key == "$if":
                condition = self.expr(str(scalar(child)), scope, line)[0]
            elif key.startswith("$"):
                raise MappingError(
                    f"{key!r} is not a directive here (mappings take $if; list items take $for/$as/$value)",
                    file=self.file,
                    line=line,
                )
            else:
                fields.append((key, self.value(child, scope)))

        def render(env: Env) -> dict[str, Any] | None:
            if condition is not None and not condition(env):
                return None
            out = {}
            for key, fn in fields:
                v = fn(env)
                if not _empty(v):
                    out[key] = v
            return out or None

        return render

    def _sequence(self, node: yaml.SequenceNode, scope: dict[str, StaticType]) -> Render:
        items: list[tuple[bool, Render]] = []  # (is a loop, render)
        for child in node.value:
            if isinstance(child, yaml.MappingNode) and any(
                isinstance(k, yaml.ScalarNode) and k.value == "$for" for k, _ in child.value
            ):
                items.append((True, self._loop(child, scope)))
            else:
                items.append((False, self.value(child, scope)))

        def render(env: Env) -> list[Any] | None:
            out: list[Any] = []
            for is_loop, fn in items:
                v = fn(env)
                if is_loop or isinstance(v, list):
                    out.extend(x for x in (v or ()) if not _empty(x))
                elif not _empty(v):
                    out.append(v)
            return out or None

        return render

    def _loop(self, node: yaml.MappingNode, scope: dict[str, StaticType]) -> Render:
        entries = {k: (v, line) for k, v, line in mapping_items(node, self.file)}
        for_node, for_line = entries.pop("$for")
        if "$as" not in entries:
            raise MappingError("$for needs $as: the name of the loop variable", file=self.file, line=for_line)
        as_node, as_line = entries.pop("$as")
        name = scalar(as_node)
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise MappingError(f"$as must be a plain name, not {name!r}", file=self.file, line=as_line)
        if name in scope:
            raise MappingError(f"$as {name!r} hides a name already in scope", file=self.file, line=as_line)
        source, source_type = self.expr(str(scalar(for_node)), scope, for_line)
        if source_type is not None and not isinstance(source_type, ListOf):
            raise MappingError("$for needs a list", file=self.file, line=for_line)
        inner_scope = {**scope, name: source_type.item if isinstance(source_type, ListOf) else None}
        if "$value" in entries:
            value_node, value_line = entries.pop("$value")
            if entries:
                raise MappingError("$value excludes other keys in a $for item", file=self.file, line=value_line)
            body = self.value(value_node, inner_scope)
        else:
            body = self.value(_strip(node, {"$for", "$as"}), inner_scope)

        def render(env: Env) -> list[Any]:
            out = []
            for item in source(env) or ():
                v = body({**env, name: item})
                if isinstance(v, list):
                    out.extend(v)
                elif not _empty(v):
                    out.append(v)
            return out

        return render


def _strip(node: yaml.MappingNode, keys: set[str]) -> yaml.MappingNode:
    return yaml.MappingNode(
        node.tag,
        [(k, v) for k, v in node.value if not (isinstance(k, yaml.ScalarNode) and k.value in keys)],
        node.start_mark,
        node.end_mark,
    )


@dataclass
class ResourceTemplate:
    role: str
    resource_type: str
    file: str
    line: int
    title: Render | None
    for_each: Compiled | None
    var: str | None
    key: Compiled | None
    when: Compiled | None
    body: Render
    identity: Compiled | None = None
    profile: str | None = None  # the profile every resource of this role claims (meta.profile)
