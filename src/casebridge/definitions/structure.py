"""StructureDefinition snapshots compiled into element trees the validator walks.

A snapshot is a flat list of ElementDefinitions; the validator needs, for an element of an instance,
its definition and the definitions of its children by JSON name. ``compile_structure`` builds that tree
once per StructureDefinition (by element ``id``, so slices get their own subtrees) and caches it.

Children that a snapshot does not list (a profile that leaves ``Patient.name`` alone lists no
``Patient.name.family``) come from the element's type: the validator asks for the type's own tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from casebridge.errors import CasebridgeError

FHIRPATH_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}


class DefinitionError(CasebridgeError):
    """A StructureDefinition the validator needs is missing or unusable (no snapshot, bad ids)."""


# --- the JSON shape of definitions ----------------------------------------------------------------------
# The snapshot generator, the compiler below and the terminology code read definitions as FHIR shapes them
# (``element`` a list of objects, ``type`` a list of objects with a string ``code``...); a definition of
# another shape made them fail inside with a TypeError or KeyError. What they read is checked first, and a
# DefinitionShapeError names the element as FHIRPath writes it:
# ``StructureDefinition.differential.element[3].type: expected a list of objects``.
# The checks run on every definition compiled: a location is only put together when it is reported.

_OPTIONAL_STRINGS = ("url", "version", "name", "type", "kind", "derivation", "baseDefinition", "fhirVersion")
_ELEMENT_STRINGS = ("id", "sliceName", "contentReference", "short", "definition")
_MAX_PATH_DEPTH = 64  # element path levels; FHIR's deepest are about a dozen


class DefinitionShapeError(DefinitionError):
    """A definition whose JSON is not shaped as FHIR says: ``location`` names the element."""

    def __init__(self, location: str, problem: str):
        self.location = location
        self.problem = problem
        super().__init__(f"{location}: {problem}")


def _fail(where: str, key: str, problem: str) -> DefinitionShapeError:
    return DefinitionShapeError(f"{where}.{key}" if key else where, problem)


def _string(holder: dict[str, Any], key: str, where: str, *, required: bool = False) -> None:
    value = holder.get(key)
    if value is None:
        if required:
            raise _fail(where, key, "required, and missing")
        return
    if not isinstance(value, str):
        raise _fail(where, key, f"expected a string, found {_kind(value)}")
    if required and not value:
        raise _fail(where, key, "expected a non-empty string")


def _boolean(holder: dict[str, Any], key: str, where: str) -> None:
    value = holder.get(key)
    # "true" and "false" as strings are read as the booleans they spell, as the HL7 validator's JSON reader does.
    if value is not None and not isinstance(value, bool) and value not in ("true", "false"):
        raise _fail(where, key, f"expected true or false, found {_kind(value)}")


def _integer(holder: dict[str, Any], key: str, where: str, *, minimum: int | None = None) -> None:
    value = holder.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, key, f"expected an integer, found {_kind(value)}")
    if minimum is not None and value < minimum:
        raise _fail(where, key, f"expected an integer of at least {minimum}, found {value}")


def _object(holder: dict[str, Any], key: str, where: str) -> dict[str, Any] | None:
    value = holder.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _fail(where, key, f"expected an object, found {_kind(value)}")
    return value


def _objects(holder: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """A list of objects (absent: empty)."""
    value = holder.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(where, key, f"expected a list of objects, found {_kind(value)}")
    for item in value:
        if not isinstance(item, dict):
            raise _fail(where, key, f"expected a list of objects, found a list holding {_kind(item)}")
    return value


def _strings(holder: dict[str, Any], key: str, where: str) -> None:
    value = holder.get(key)
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(where, key, f"expected a list of strings, found {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    return "null" if value is None else type(value).__name__


def _max_text(holder: dict[str, Any], key: str, where: str) -> None:
    _string(holder, key, where)
    value = holder.get(key)
    if isinstance(value, str) and value != "*" and not (value.isascii() and value.isdigit()):
        raise _fail(where, key, f"expected '*' or a whole number, found {value!r}")


def _extensions(holder: dict[str, Any], key: str, where: str, depth: int = 0) -> None:
    for i, ext in enumerate(_objects(holder, key, where)):
        if depth < 4:
            _string(ext, "url", f"{where}.{key}[{i}]")
            _extensions(ext, "extension", f"{where}.{key}[{i}]", depth + 1)


def check_element(element: Any, where: str) -> None:
    """One ElementDefinition, as the snapshot generator and the structure compiler read it."""
    if not isinstance(element, dict):
        raise _fail(where, "", f"expected an object, found {_kind(element)}")
    _string(element, "path", where, required=True)
    for key in _ELEMENT_STRINGS:
        _string(element, key, where)
    for key in ("path", "id"):
        value = element.get(key)
        if isinstance(value, str) and value.count(".") > _MAX_PATH_DEPTH:
            # The snapshot generator goes down a path one level per call.
            raise _fail(where, key, f"deeper than {_MAX_PATH_DEPTH} levels")
    _integer(element, "min", where, minimum=0)
    _max_text(element, "max", where)
    _integer(element, "maxLength", where, minimum=0)
    _boolean(element, "isModifier", where)
    base = _object(element, "base", where)
    if base is not None:
        _string(base, "path", f"{where}.base")
        _integer(base, "min", f"{where}.base", minimum=0)
        _max_text(base, "max", f"{where}.base")
    for i, t in enumerate(_objects(element, "type", where)):
        if len(t) == 1 and isinstance(t.get("code"), str):
            continue  # the common case, checked
        at = f"{where}.type[{i}]"
        _string(t, "code", at, required=True)
        _strings(t, "profile", at)
        _strings(t, "targetProfile", at)
        _extensions(t, "extension", at)
    binding = _object(element, "binding", where)
    if binding is not None:
        at = f"{where}.binding"
        _string(binding, "strength", at, required=bool(binding.get("valueSet")))
        _string(binding, "valueSet", at)
        _extensions(binding, "extension", at)
    for i, c in enumerate(_objects(element, "constraint", where)):
        at = f"{where}.constraint[{i}]"
        _string(c, "key", at, required=True)
        for key in ("severity", "human", "expression", "source"):
            _string(c, key, at)
    slicing = _object(element, "slicing", where)
    if slicing is not None:
        at = f"{where}.slicing"
        for i, d in enumerate(_objects(slicing, "discriminator", at)):
            _string(d, "type", f"{at}.discriminator[{i}]", required=True)
            _string(d, "path", f"{at}.discriminator[{i}]", required=True)
        _string(slicing, "rules", at)
        _boolean(slicing, "ordered", at)


def _no_nulls(node: Any, where: str) -> None:
    """FHIR JSON has no nulls (but in lists of primitives): the definitions code reads null as absent only in
    some places, so a definition holding one is refused whole."""
    # Looked for without paths first; the path only once one is found.
    stack: list[Any] = [node]
    while stack:
        value = stack.pop()
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if item is None and isinstance(value, dict):
                raise _fail(_null_path(node, where), "", "null is not allowed in FHIR JSON")
            if isinstance(item, (dict, list)):
                stack.append(item)


def _null_path(node: Any, where: str) -> str:
    stack: list[tuple[Any, str]] = [(node, where)]
    while stack:
        value, at = stack.pop()
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in pairs:
            inner = f"{at}.{key}" if isinstance(value, dict) else f"{at}[{key}]"
            if item is None and isinstance(value, dict):
                return inner
            if isinstance(item, (dict, list)):
                stack.append((item, inner))
    return where


def check_structure_definition(sd: dict[str, Any], parts: tuple[str, ...] = ("snapshot", "differential")) -> None:
    """``parts``: the element lists to check (the compiler reads only the snapshot)."""
    top = "StructureDefinition"
    _no_nulls(sd, top)
    for key in _OPTIONAL_STRINGS:
        _string(sd, key, top)
    _boolean(sd, "abstract", top)
    for part in parts:
        holder = _object(sd, part, top)
        if holder is None:
            continue
        at = f"{top}.{part}"
        for i, element in enumerate(_objects(holder, "element", at)):
            check_element(element, f"{at}.element[{i}]")


def _concepts(holder: dict[str, Any], key: str, where: str, depth: int = 0) -> None:
    if depth > 64:
        raise _fail(where, key, "concepts nest deeper than 64 levels")
    for i, c in enumerate(_objects(holder, key, where)):
        at = f"{where}.{key}[{i}]"
        _string(c, "code", at)
        _string(c, "display", at)
        for j, p in enumerate(_objects(c, "property", at)):
            _string(p, "code", f"{at}.property[{j}]")
            _string(p, "valueCode", f"{at}.property[{j}]")
        _concepts(c, "concept", at, depth + 1)


def check_code_system(cs: dict[str, Any]) -> None:
    _no_nulls(cs, "CodeSystem")
    for key in ("url", "version", "content"):
        _string(cs, key, "CodeSystem")
    _boolean(cs, "caseSensitive", "CodeSystem")
    _concepts(cs, "concept", "CodeSystem")


def _contains(holder: dict[str, Any], key: str, where: str, depth: int = 0) -> None:
    if depth > 64:
        raise _fail(where, key, "expansion entries nest deeper than 64 levels")
    for i, c in enumerate(_objects(holder, key, where)):
        at = f"{where}.{key}[{i}]"
        for name in ("system", "code", "display"):
            _string(c, name, at)
        _boolean(c, "abstract", at)
        _contains(c, "contains", at, depth + 1)


def check_value_set(vs: dict[str, Any]) -> None:
    _no_nulls(vs, "ValueSet")
    for key in ("url", "version"):
        _string(vs, key, "ValueSet")
    compose = _object(vs, "compose", "ValueSet")
    if compose is not None:
        for part in ("include", "exclude"):
            for i, include in enumerate(_objects(compose, part, "ValueSet.compose")):
                at = f"ValueSet.compose.{part}[{i}]"
                _string(include, "system", at)
                _strings(include, "valueSet", at)
                for j, c in enumerate(_objects(include, "concept", at)):
                    _string(c, "code", f"{at}.concept[{j}]", required=True)
                    _string(c, "display", f"{at}.concept[{j}]")
                for j, f in enumerate(_objects(include, "filter", at)):
                    for key in ("property", "op", "value"):
                        _string(f, key, f"{at}.filter[{j}]")
    expansion = _object(vs, "expansion", "ValueSet")
    if expansion is not None:
        _integer(expansion, "total", "ValueSet.expansion")
        _objects(expansion, "parameter", "ValueSet.expansion")
        _contains(expansion, "contains", "ValueSet.expansion")


def check_definition(resource: dict[str, Any]) -> None:
    """Raise DefinitionShapeError when a StructureDefinition, ValueSet or CodeSystem is not shaped as the
    validator reads it (other resources are not checked)."""
    kind = resource.get("resourceType")
    if kind == "StructureDefinition":
        check_structure_definition(resource)
    elif kind == "ValueSet":
        check_value_set(resource)
    elif kind == "CodeSystem":
        check_code_system(resource)


class SnapshotPathError(DefinitionError):
    """The differential names an element the base does not have (a wrong path or choice name). Defined here
    (compiled) rather than beside the snapshot generator: the compiled validator binds it as a DefinitionError,
    which an interpreted subclass cannot be."""


class Definitions(Protocol):
    def get(self, canonical: str) -> dict[str, Any] | None: ...

    def core_definition(self, type_name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class TypeRef:
    code: str
    profiles: tuple[str, ...] = ()
    target_profiles: tuple[str, ...] = ()
    aggregation: tuple[str, ...] = ()  # contained | referenced | bundled: where a Reference's target may be


@dataclass(frozen=True)
class Constraint:
    key: str
    severity: str
    human: str
    expression: str
    source: str


@dataclass(frozen=True)
class Discriminator:
    type: str  # value | exists | pattern | type | profile
    path: str


@dataclass(frozen=True)
class Slicing:
    discriminators: tuple[Discriminator, ...]
    rules: str  # open | closed | openAtEnd
    ordered: bool


@dataclass
class ElementNode:
    id: str
    path: str
    name: str  # last path segment, e.g. "value[x]"
    min: int
    max: int | None  # None: unbounded
    types: tuple[TypeRef, ...]
    fixed: Any = None
    pattern: Any = None
    binding: tuple[str, str] | None = None  # (strength, value set canonical)
    constraints: tuple[Constraint, ...] = ()
    slicing: Slicing | None = None
    slice_name: str | None = None
    content_reference: str | None = None
    max_length: int | None = None
    min_value: Any = None
    max_value: Any = None
    additional_required: tuple[str, ...] = ()  # value sets of "additional" bindings with purpose required
    children: dict[str, ElementNode] = field(default_factory=dict)  # by element name ("value[x]")
    slices: dict[str, ElementNode] = field(default_factory=dict)  # by slice name
    is_modifier: bool = False
    base_max: str = "1"
    # R5's ElementDefinition.mustHaveValue and .valueAlternatives, carried in R4 by extensions: a primitive must
    # have a value, or, without one, carry one of these extensions.
    must_have_value: bool = False
    value_alternatives: tuple[str, ...] = ()

    # Cached: the validator asks these for every value it walks; name and base_max never change after
    # compilation.
    @cached_property
    def is_choice(self) -> bool:
        return self.name.endswith("[x]")

    @cached_property
    def repeats(self) -> bool:
        # The JSON shape follows the base definition's max: an element that repeats in the base is an
        # array even where a profile limits it to one.
        return self.base_max != "1" and self.base_max != "0"

    def json_names(self) -> dict[str, str | None]:
        """JSON property name -> the type it implies (None: any of the element's types)."""
        if not self.is_choice:
            return {self.name: None}
        stem = self.name[:-3]
        return {stem + t.code[:1].upper() + t.code[1:]: t.code for t in self.types}


@dataclass
class StructureTree:
    url: str
    version: str | None
    name: str
    type: str
    kind: str  # resource | complex-type | primitive-type | logical
    derivation: str | None
    base: str | None
    root: ElementNode
    by_id: dict[str, ElementNode]
    abstract: bool = False

    @property
    def label(self) -> str:
        return f"{self.url}|{self.version}" if self.version else self.url


def _choice_value(element: dict[str, Any], prefix: str) -> Any:
    for key, value in element.items():
        if key.startswith(prefix) and len(key) > len(prefix) and key[len(prefix)].isupper():
            return value
    return None


def _max(value: str | None) -> int | None:
    if value is None or value == "*":
        return None
    return int(value)


def _types(element: dict[str, Any]) -> tuple[TypeRef, ...]:
    out = []
    for t in element.get("type", ()):
        code = t.get("code", "")
        # Primitive values inside primitive type definitions are typed by FHIRPath system types.
        code = FHIRPATH_TYPES.get(code, code)
        for ext in t.get("extension", ()):
            if ext.get("url") == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type":
                code = ext.get("valueUrl") or ext.get("valueUri") or code
        aggregation = tuple(a for a in t.get("aggregation", ()) if isinstance(a, str))
        out.append(TypeRef(code, tuple(t.get("profile", ())), tuple(t.get("targetProfile", ())), aggregation))
    return tuple(out)


def _node(element: dict[str, Any], source: str, contained: dict[str, str]) -> ElementNode:
    path = element["path"]
    binding = element.get("binding")
    if binding and isinstance(binding.get("valueSet"), str) and binding["valueSet"].startswith("#"):
        # A value set the definition contains, named by its canonical (under which it is indexed).
        binding = {**binding, "valueSet": contained.get(binding["valueSet"][1:], binding["valueSet"])}
    slicing = element.get("slicing")
    return ElementNode(
        id=element.get("id") or path,
        path=path,
        name=path.rsplit(".", 1)[-1],
        min=int(element.get("min", 0)),
        max=_max(element.get("max")),
        types=_types(element),
        fixed=_choice_value(element, "fixed"),
        pattern=_choice_value(element, "pattern"),
        binding=(binding["strength"], binding["valueSet"]) if binding and binding.get("valueSet") else None,
        additional_required=_additional_required(binding),
        constraints=tuple(
            Constraint(
                c["key"], c.get("severity", "error"), c.get("human", ""), c["expression"], c.get("source", source)
            )
            for c in element.get("constraint", ())
            if c.get("expression")
        ),
        slicing=Slicing(
            tuple(Discriminator(d["type"], d["path"]) for d in slicing.get("discriminator", ())),
            slicing.get("rules", "open"),
            bool(slicing.get("ordered", False)),
        )
        if slicing
        else None,
        slice_name=element.get("sliceName"),
        content_reference=element.get("contentReference"),
        max_length=element.get("maxLength"),
        min_value=_choice_value(element, "minValue"),
        max_value=_choice_value(element, "maxValue"),
        is_modifier=bool(element.get("isModifier")),
        must_have_value=any(
            e.get("url") == _MUST_HAVE_VALUE and e.get("valueBoolean") is True for e in element.get("extension", ())
        ),
        value_alternatives=tuple(
            str(e["valueCanonical"])
            for e in element.get("extension", ())
            if e.get("url") == _VALUE_ALTERNATIVES and isinstance(e.get("valueCanonical"), str)
        ),
        base_max=(element.get("base") or {}).get("max", element.get("max", "1")),
    )


_MUST_HAVE_VALUE = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.mustHaveValue"
_VALUE_ALTERNATIVES = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.valueAlternatives"
_ADDITIONAL_BINDING = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-ElementDefinition.binding.additional",
    "http://hl7.org/fhir/tools/StructureDefinition/additional-binding",
)


def _additional_required(binding: dict[str, Any] | None) -> tuple[str, ...]:
    """Value sets of additional bindings (the R5 feature, carried in R4 by extension) that are required."""
    out = []
    for ext in (binding or {}).get("extension", ()):
        if ext.get("url") not in _ADDITIONAL_BINDING:
            continue
        parts = {e.get("url"): e for e in ext.get("extension", ())}
        purpose = (parts.get("purpose") or {}).get("valueCode")
        vs = (parts.get("valueSet") or {}).get("valueCanonical")
        if purpose == "required" and isinstance(vs, str):
            out.append(vs)
    return tuple(out)


def _split_id(element_id: str) -> list[tuple[str, str | None]]:
    """'Observation.component:a.value[x]' -> [('Observation', None), ('component', 'a'), ('value[x]', None)]"""
    parts = []
    for segment in element_id.split("."):
        name, _, slice_name = segment.partition(":")
        parts.append((name, slice_name or None))
    return parts


def compile_structure(sd: dict[str, Any]) -> StructureTree:
    check_structure_definition(sd, ("snapshot",))
    url = sd.get("url") or ""
    snapshot = (sd.get("snapshot") or {}).get("element")
    if not snapshot:
        raise DefinitionError(f"StructureDefinition {url} has no snapshot")
    by_id: dict[str, ElementNode] = {}
    root: ElementNode | None = None
    contained = {
        c["id"]: c["url"]
        for c in sd.get("contained") or ()
        if isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("url"), str)
    }
    for i, element in enumerate(snapshot):
        where = f"StructureDefinition.snapshot.element[{i}]"
        node = _node(element, url, contained)
        by_id[node.id] = node
        parts = _split_id(node.id)
        if len(parts) == 1:
            root = node
            continue
        name, slice_name = parts[-1]
        parent_id = node.id[: node.id.rfind("." + parts[-1][0])]
        parent = by_id.get(parent_id)
        if parent is None:
            raise DefinitionShapeError(where, f"element {node.id} has no parent {parent_id} before it")
        if slice_name is None:
            parent.children[name] = node
        else:
            # A slice: its base element is the sibling without the slice name (or, for a reslice,
            # the slice it refines).
            base_id = node.id[: node.id.rfind(":")]
            base = by_id.get(base_id)
            if base is None:
                raise DefinitionShapeError(where, f"slice {node.id} has no base element {base_id} before it")
            base.slices[slice_name] = node
    if root is None:
        raise DefinitionError(f"StructureDefinition {url} has an empty snapshot")
    return StructureTree(
        url=url,
        version=sd.get("version"),
        name=sd.get("name") or "",
        type=sd.get("type") or root.path,
        kind=sd.get("kind") or "",
        derivation=sd.get("derivation"),
        base=sd.get("baseDefinition"),
        root=root,
        by_id=by_id,
        abstract=sd.get("abstract") in (True, "true"),
    )
