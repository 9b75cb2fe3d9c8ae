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

from service.errors import CasebridgeError

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


class Definitions(Protocol):
    def get(self, canonical: str) -> dict[str, Any] | None: ...

    def core_definition(self, type_name: str) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class TypeRef:
    code: str
    profiles: tuple[str, ...] = ()
    target_profiles: tuple[str, ...] = ()


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
        out.append(TypeRef(code, tuple(t.get("profile", ())), tuple(t.get("targetProfile", ()))))
    return tuple(out)


def _node(element: dict[str, Any], source: str) -> ElementNode:
    path = element["path"]
    binding = element.get("binding")
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
        base_max=(element.get("base") or {}).get("max", element.get("max", "1")),
    )


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
    url = sd.get("url", "")
    snapshot = (sd.get("snapshot") or {}).get("element")
    if not snapshot:
        raise DefinitionError(f"StructureDefinition {url} has no snapshot")
    by_id: dict[str, ElementNode] = {}
    root: ElementNode | None = None
    for element in snapshot:
        node = _node(element, url)
        by_id[node.id] = node
        parts = _split_id(node.id)
        if len(parts) == 1:
            root = node
            continue
        name, slice_name = parts[-1]
        parent_id = node.id[: node.id.rfind("." + parts[-1][0])]
        parent = by_id.get(parent_id)
        if parent is None:
            raise DefinitionError(f"StructureDefinition {url}: element {node.id} has no parent {parent_id}")
        if slice_name is None:
            parent.children[name] = node
        else:
            # A slice: its base element is the sibling without the slice name (or, for a reslice,
            # the slice it refines).
            base_id = node.id[: node.id.rfind(":")]
            base = by_id.get(base_id)
            if base is None:
                raise DefinitionError(f"StructureDefinition {url}: slice {node.id} has no base element {base_id}")
            base.slices[slice_name] = node
    if root is None:
        raise DefinitionError(f"StructureDefinition {url} has an empty snapshot")
    return StructureTree(
        url=url,
        version=sd.get("version"),
        name=sd.get("name", ""),
        type=sd.get("type", root.path),
        kind=sd.get("kind", ""),
        derivation=sd.get("derivation"),
        base=sd.get("baseDefinition"),
        root=root,
        by_id=by_id,
        abstract=bool(sd.get("abstract")),
    )
