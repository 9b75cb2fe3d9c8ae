"""Mapping expressions: a small, safe subset of Python expression syntax, compiled once into closures.

Used inside ``{{ ... }}`` in mapping templates. Allowed: names of variables in scope, attribute access
(``case.patient.sex``), constant indexes (``step.findings[0]``), literals, ``and``/``or``/``not``,
comparisons (including ``in`` and ``is None``), ``a if c else b``, list literals and calls of the
registered mapping functions (``concept(d.concept)``). Nothing else: no arithmetic (a mapping must not
compute clinical values), no method calls, no dunder names.

Why our own and not Jinja2 expressions: a mapping is checked when it is loaded, so that
``case.patient.sexx`` fails at start with the file and line, naming the fields that do exist; and a case
converts in well under 2 ms, which needs evaluation at closure speed.

Attribute access is None-safe: ``a.b`` is None when ``a`` is None, so optional parts of a case simply
drop out of the output.
"""

from __future__ import annotations

import ast
import inspect
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from casebridge.errors import MappingError

Env = dict[str, Any]
Compiled = Callable[[Env], Any]


# --- static types, for load-time checks ------------------------------------------------------------------


@dataclass(frozen=True)
class ListOf:
    item: StaticType


@dataclass(frozen=True)
class OneOf:
    members: tuple[type[BaseModel], ...]


# None means "not known statically": no checks below it.
StaticType = type[BaseModel] | ListOf | OneOf | None


def static_type(annotation: Any) -> StaticType:
    """The checkable part of a type annotation: models, lists of them and unions of models."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return static_type(get_args(annotation)[0])
    if origin in (list, tuple) or annotation in (list, tuple):
        args = get_args(annotation)
        return ListOf(static_type(args[0]) if args else None)
    if origin in (Union, types.UnionType):
        members = [static_type(a) for a in get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
        if members and all(isinstance(m, type) for m in members):
            return OneOf(tuple(m for m in members if isinstance(m, type)))
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _attribute_type(owner: type[BaseModel], name: str) -> tuple[bool, StaticType]:
    """(exists, type) of a field or property of a model class."""
    if name in owner.model_fields:
        return True, static_type(owner.model_fields[name].annotation)
    attr = inspect.getattr_static(owner, name, None)
    fget = getattr(attr, "fget", None) or getattr(attr, "func", None)  # property / cached_property
    if fget is not None:
        try:
            hints = typing.get_type_hints(fget)
        except Exception:  # noqa: BLE001 - an unresolvable hint only costs the check
            return True, None
        return True, static_type(hints.get("return"))
    return False, None


def _public_names(owner: type[BaseModel]) -> list[str]:
    """The names a mapping may read on a model: its fields and its (cached) properties."""
    derived = [n for n in dir(owner) if isinstance(inspect.getattr_static(owner, n, None), (property, cached_property))]
    return sorted(n for n in {*owner.model_fields, *derived} if not n.startswith("_") and not n.startswith("model_"))


# --- functions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """A mapping function. ``impl`` receives the conversion context first, then the call's arguments."""

    name: str
    impl: Callable[..., Any]
    doc: str
    returns: StaticType = None
    check: Callable[[list[ast.expr], dict[str, ast.expr]], str | None] | None = None

    def signature(self) -> inspect.Signature:
        sig = inspect.signature(self.impl)
        return sig.replace(parameters=list(sig.parameters.values())[1:])


# --- compiler --------------------------------------------------------------------------------------------

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: b is not None and a in b,
    ast.NotIn: lambda a, b: b is None or a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}


class ExpressionCompiler:
    def __init__(self, functions: dict[str, Function], *, file: str, line: int):
        self.functions = functions
        self.file = file
        self.line = line

    def error(self, message: str) -> MappingError:
        return MappingError(message, file=self.file, line=self.line)

    def compile(self, source: str, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as exc:
            raise self.error(f"cannot parse expression {source.strip()!r}: {exc.msg}") from exc
        return self._node(tree.body, scope)

    def _node(self, node: ast.expr, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        # Explicit dispatch rather than a method looked up by name: the module is compiled (mypyc), and this
        # is also the list of what an expression may contain.
        if isinstance(node, ast.Constant):
            return self._Constant(node, scope)
        if isinstance(node, ast.Name):
            return self._Name(node, scope)
        if isinstance(node, ast.Attribute):
            return self._Attribute(node, scope)
        if isinstance(node, ast.Subscript):
            return self._Subscript(node, scope)
        if isinstance(node, ast.Call):
            return self._Call(node, scope)
        if isinstance(node, ast.BoolOp):
            return self._BoolOp(node, scope)
        if isinstance(node, ast.UnaryOp):
            return self._UnaryOp(node, scope)
        if isinstance(node, ast.Compare):
            return self._Compare(node, scope)
        if isinstance(node, ast.IfExp):
            return self._IfExp(node, scope)
        if isinstance(node, ast.List | ast.Tuple):
            return self._List(node, scope)
        raise self.error(f"{type(node).__name__} is not allowed in a mapping expression ({ast.unparse(node)!r})")

    def _Constant(self, node: ast.Constant, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        value = node.value
        return (lambda env: value), None

    def _Name(self, node: ast.Name, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        name = node.id
        if name not in scope:
            hint = " (it is a function: call it)" if name in self.functions else ""
            raise self.error(f"unknown name {name!r}{hint}; in scope here: {', '.join(sorted(scope)) or 'nothing'}")
        return (lambda env: env[name]), scope[name]

    def _Attribute(self, node: ast.Attribute, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        attr = node.attr
        if attr.startswith("_"):
            raise self.error(f"private attribute {attr!r} is not allowed")
        base, base_type = self._node(node.value, scope)
        result_type: StaticType = None
        if isinstance(base_type, ListOf):
            raise self.error(f"{ast.unparse(node.value)!r} is a list: loop over it with $for, or index it")
        owners = (
            [base_type]
            if isinstance(base_type, type)
            else list(base_type.members)
            if isinstance(base_type, OneOf)
            else []
        )
        if owners:
            found = [(o, *_attribute_type(o, attr)) for o in owners]
            hits = [t for _, ok, t in found if ok]
            if not hits:
                names = sorted({n for o in owners for n in _public_names(o)})
                raise self.error(f"{ast.unparse(node.value)!r} has no field {attr!r}; it has: {', '.join(names)}")
            result_type = hits[0] if len(set(map(repr, hits))) == 1 else None

        def get(env: Env) -> Any:
            obj = base(env)
            return None if obj is None else getattr(obj, attr, None)

        return get, result_type

    def _Subscript(self, node: ast.Subscript, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        if not isinstance(node.slice, ast.Constant) or not isinstance(node.slice.value, int):
            raise self.error("only constant integer indexes are allowed, e.g. items[0]")
        index = node.slice.value
        base, base_type = self._node(node.value, scope)

        def get(env: Env) -> Any:
            seq = base(env)
            try:
                return seq[index] if seq is not None else None
            except (IndexError, TypeError):
                return None

        return get, base_type.item if isinstance(base_type, ListOf) else None

    def _Call(self, node: ast.Call, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        if not isinstance(node.func, ast.Name) or node.func.id not in self.functions:
            known = ", ".join(sorted(self.functions))
            raise self.error(f"unknown function {ast.unparse(node.func)!r}; known: {known}")
        fn = self.functions[node.func.id]
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise self.error("*args and **kwargs are not allowed")
        try:
            fn.signature().bind(*node.args, **{k.arg: k.value for k in node.keywords if k.arg})
        except TypeError as exc:
            raise self.error(f"{fn.name}{fn.signature()}: {exc}") from exc
        if fn.check is not None:
            problem = fn.check(node.args, {k.arg: k.value for k in node.keywords if k.arg})
            if problem:
                raise self.error(f"{fn.name}(): {problem}")
        args = [self._node(a, scope)[0] for a in node.args]
        kwargs = {k.arg: self._node(k.value, scope)[0] for k in node.keywords if k.arg}
        impl = fn.impl

        def call(env: Env) -> Any:
            return impl(env["$ctx"], *[a(env) for a in args], **{k: v(env) for k, v in kwargs.items()})

        return call, fn.returns

    def _BoolOp(self, node: ast.BoolOp, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        parts = [self._node(v, scope)[0] for v in node.values]
        if isinstance(node.op, ast.And):

            def all_(env: Env) -> Any:
                value = None
                for p in parts:
                    value = p(env)
                    if not value:
                        return value
                return value

            return all_, None

        def any_(env: Env) -> Any:
            value = None
            for p in parts:
                value = p(env)
                if value:
                    return value
            return value

        return any_, None

    def _UnaryOp(self, node: ast.UnaryOp, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        if not isinstance(node.op, ast.Not):
            raise self.error("only 'not' is allowed as a unary operator")
        inner = self._node(node.operand, scope)[0]
        return (lambda env: not inner(env)), None

    def _Compare(self, node: ast.Compare, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        first = self._node(node.left, scope)[0]
        rest = [(_COMPARE[type(op)], self._node(c, scope)[0]) for op, c in zip(node.ops, node.comparators, strict=True)]

        def compare(env: Env) -> bool:
            left = first(env)
            for op, right_fn in rest:
                right = right_fn(env)
                try:
                    if not op(left, right):
                        return False
                except TypeError:  # e.g. None < 1: a missing value compares false, never crashes
                    return False
                left = right
            return True

        return compare, None

    def _IfExp(self, node: ast.IfExp, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        test = self._node(node.test, scope)[0]
        yes, yes_type = self._node(node.body, scope)
        no, no_type = self._node(node.orelse, scope)
        return (lambda env: yes(env) if test(env) else no(env)), (yes_type if repr(yes_type) == repr(no_type) else None)

    def _List(self, node: ast.List | ast.Tuple, scope: dict[str, StaticType]) -> tuple[Compiled, StaticType]:
        items = [self._node(e, scope)[0] for e in node.elts]
        return (lambda env: [i(env) for i in items]), ListOf(None)
