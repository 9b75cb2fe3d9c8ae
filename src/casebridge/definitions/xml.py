"""FHIR XML read into FHIR JSON, the form the rest of casebridge works with.

XML does not say which elements repeat or which primitive is a number, so the reader walks the XML
with the type definitions (StructureDefinition snapshots) in hand: repeating elements become arrays,
``boolean``/``integer``/``decimal`` values become JSON booleans and numbers, choice elements keep their
typed names (``valueQuantity``), ``id`` and extensions of primitives go to ``_name``, the narrative
``div`` becomes its XHTML text, and contained or bundled resources are read with their own definitions.
Parsing uses defusedxml: entity expansion and external references are refused.

What FHIR XML cannot hold, and FHIR JSON could not carry on, is refused with its place rather than dropped:
elements outside the FHIR namespace (but the narrative's XHTML ``div``), attributes other than ``value``,
``id`` and an extension's ``url`` (and XML Schema's ``xsi:`` hints), text between elements, element names
that begin with ``_`` (JSON's primitive companions), a narrative with elements outside XHTML, and numbers too
large for JSON. A known element that does not repeat but appears more than once is kept: its values are kept as
``RepeatedElement``, which validation counts against the element's cardinality (JSON has no such form: an array
there is refused).

An element in FHIR's namespace that the type does not define (nor a choice element's name begins it, as the HL7
validator's XmlParser matches ``value[x]``) is left out of the resource and reported as that parser reports it:
an ``XmlProblem``, "Undefined element 'name' at /f:Patient/f:contact", placed at the parent's XPath-like path
("/f:" and the local name per level, no indexes; inside a contained or bundled resource the path starts again
at the resource's bare name, ``Patient/f:name``, as that parser builds it). ``read`` refuses such an instance
(``FhirXmlError``) unless given a list to collect the problems in: whoever validates the instance then reports them
as errors before the validation issues, so an instance that had one is never accepted as valid.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element, tostring

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from casebridge.definitions.numbers import FhirDecimal
from casebridge.definitions.structure import DefinitionError, Definitions, ElementNode, StructureTree, compile_structure
from casebridge.errors import CasebridgeError

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"  # xsi:schemaLocation, as many FHIR XML files carry
_NUMBERS = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def is_xml(data: bytes, name: str = "") -> bool:
    """Whether a file holds XML rather than JSON: named ``.xml``, or starting with ``<`` after any byte-order mark
    and white space (JSON is UTF-8 without one; a UTF-16 mark can only be XML)."""
    if name.lower().endswith(".xml") or data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    return data.removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"<"


class RepeatedElement(list[Any]):
    """The values of an element that does not repeat but appears more than once in XML (a cardinality error, which
    validation reports as such: ``max allowed = 1, but found 2``)."""


class FhirXmlError(CasebridgeError):
    """The XML is not FHIR XML this reader can map (not well-formed, unknown type, unsafe)."""


@dataclass(frozen=True)
class XmlProblem:
    """Content the reader left out of the resource: an error, worded and placed as the HL7 validator's XML parser
    reports it (``expression``: the XPath-like path of the parent, ``/f:Patient/f:name``)."""

    message: str
    expression: str


class _Read:
    """One read's source name and where its problems go (None: the first one refuses the instance)."""

    __slots__ = ("problems", "source")

    def __init__(self, source: str, problems: list[XmlProblem] | None):
        self.source = source
        self.problems = problems

    def problem(self, where: str, message: str, expression: str) -> None:
        if self.problems is None:
            raise FhirXmlError(f"{self.source}: {where}: {message}")
        self.problems.append(XmlProblem(message, expression))


def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


MAX_XML_DEPTH = 256  # elements, counting XHTML: JSON's limit is 128 objects/arrays, each two XML levels at most


def _depth(root: Element) -> int:
    """The element tree's depth, without recursion (a hostile document must not exhaust the stack)."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        element, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in element)
    return deepest


class XmlReader:
    def __init__(self, definitions: Definitions):
        self.definitions = definitions
        self._trees: dict[str, StructureTree | None] = {}

    def _tree(self, type_code: str) -> StructureTree | None:
        if type_code not in self._trees:
            sd = self.definitions.core_definition(type_code)
            if sd is None:
                return None  # not remembered: names come from input, and unknown ones would grow the cache forever
            try:
                self._trees[type_code] = compile_structure(sd) if sd.get("snapshot") else None
            except DefinitionError:
                self._trees[type_code] = None
        return self._trees[type_code]

    def read(self, data: bytes, source: str = "", problems: list[XmlProblem] | None = None) -> dict[str, Any]:
        """A FHIR resource from FHIR XML; ``FhirXmlError`` names ``source`` when it cannot be one. Elements the
        types do not define are left out and appended to ``problems``; without that list, one refuses the XML."""
        try:
            root = SafeET.fromstring(data)
        except DefusedXmlException as exc:
            raise FhirXmlError(f"{source}: unsafe XML refused ({type(exc).__name__})") from exc
        except SafeET.ParseError as exc:
            raise FhirXmlError(f"{source}: not well-formed XML: {exc}") from exc
        if _depth(root) > MAX_XML_DEPTH:
            raise FhirXmlError(f"{source}: the XML nests deeper than {MAX_XML_DEPTH} levels")
        ns, name = _local(root.tag)
        if ns != FHIR_NS:
            raise FhirXmlError(f"{source}: the root element is not in the FHIR namespace ({FHIR_NS})")
        try:
            return self._resource(root, name, _Read(source, problems), None, f"/f:{name}")
        except RecursionError as exc:
            raise FhirXmlError(f"{source}: the XML nests too deep to read") from exc

    def _resource(self, element: Element, type_code: str, read: _Read, path: str | None, xpath: str) -> dict[str, Any]:
        """``path``: where a contained or bundled resource stands (``Bundle.entry[1].resource``); ``xpath``: the
        place as the HL7 validator's XML parser names it."""
        tree = self._tree(type_code)
        if tree is None or tree.kind != "resource":
            raise FhirXmlError(f"{read.source}: {path + ': ' if path else ''}unknown resource type {type_code!r}")
        out: dict[str, Any] = {"resourceType": type_code}
        # A resource has no @id: its id is an element.
        self._complex(element, tree.root, tree, out, read, path or type_code, xpath, attributes=())
        return out

    def _children(
        self, node: ElementNode, tree: StructureTree, type_code: str | None
    ) -> tuple[ElementNode, StructureTree]:
        if node.children:
            return node, tree
        if node.content_reference:
            target = tree.by_id.get(node.content_reference.split("#", 1)[-1])
            if target is not None:
                return target, tree
        type_tree = self._tree(type_code) if type_code else None
        return (type_tree.root, type_tree) if type_tree is not None else (node, tree)

    def _complex(
        self,
        element: Element,
        node: ElementNode,
        tree: StructureTree,
        out: dict[str, Any],
        read: _Read,
        path: str,
        xpath: str,
        attributes: tuple[str, ...] = ("id", "url"),
    ) -> None:
        source = read.source
        # FHIR XML puts only an element's id and an extension's url in attributes.
        _check_attributes(element, attributes, source, path)
        for attribute in attributes:
            if attribute in element.attrib:
                out[attribute] = element.attrib[attribute]
        lookup: dict[str, tuple[ElementNode, str | None]] = {}
        stems: list[str] = []
        for child in node.children.values():
            for json_name, implied in child.json_names().items():
                lookup[json_name] = (child, implied)
            if child.is_choice:
                stems.append(child.name[:-3])
        seen: set[str] = set()
        for child_element in _elements(element, source, path):
            ns, name = _local(child_element.tag)
            found = lookup.get(name)
            if (
                found is None
                and ns == FHIR_NS
                and not name.startswith("_")
                and name != "resourceType"
                and not any(len(name) > len(stem) and name.startswith(stem) for stem in stems)
            ):
                # As the HL7 validator's XML parser: an error at the parent, and the element is not read. (A name
                # that begins with a choice element's name is that element's, of a type validation reports.)
                read.problem(f"{path}.{name}", f"Undefined element '{name}' at {xpath}", xpath)
                continue
            repeats = found is not None and found[0].repeats
            # Places as validation names them: Bundle.entry[1].resource.status
            where = f"{path}.{name}[{len(out.get(name) or ())}]" if repeats else f"{path}.{name}"
            xhtml = found is not None and len(found[0].types) == 1 and found[0].types[0].code == "xhtml"
            again = name in seen and not repeats
            if again and (found is None or xhtml or self._holds_resource(found[0])):
                # Neither an unknown element, the narrative's div nor a resource's place has a form that holds two.
                raise FhirXmlError(f"{source}: {where}: appears more than once, but the element does not repeat")
            seen.add(name)
            if ns == XHTML_NS and name == "div" and xhtml:
                out["div"] = _xhtml(child_element, source, where)  # its attributes: the narrative rules judge them
                continue
            if ns != FHIR_NS or xhtml:
                expected = "XHTML" if xhtml else "FHIR"
                raise FhirXmlError(f"{source}: {where}: the element is not in the {expected} namespace")
            if name.startswith("_") or (found is None and name == "resourceType"):
                # JSON's names for a primitive's companion and a resource's type, which the reader writes itself
                raise FhirXmlError(f"{source}: {where}: not a FHIR element name")
            if found is None:
                # A choice element's name with a type it does not have: kept, so that validation reports it.
                out.setdefault(name, child_element.attrib.get("value", {}))
                continue
            child_node, implied = found
            type_code = implied or (child_node.types[0].code if len(child_node.types) == 1 else None)
            value, companion = self._value(child_element, child_node, tree, type_code, read, where, f"{xpath}/f:{name}")
            if child_node.repeats:
                out.setdefault(name, []).append(value)
                if companion is not None or f"_{name}" in out:
                    extras = out.setdefault(f"_{name}", [None] * (len(out[name]) - 1))
                    extras.append(companion)
            elif again:
                # Kept rather than lost (the last one won) or refused: validation reports the count.
                held = out.get(name)
                if not isinstance(held, RepeatedElement):
                    held = out[name] = RepeatedElement([] if held is None else [held])
                held.append(value)
            else:
                if value is not None:
                    out[name] = value
                if companion is not None:
                    out[f"_{name}"] = companion
        # Arrays of primitives: a value-less entry is JSON null beside its companion.
        for key in [k for k in out if k.startswith("_") and isinstance(out[k], list)]:
            while len(out[key]) < len(out.get(key[1:], [])):
                out[key].append(None)

    def _value(
        self,
        element: Element,
        node: ElementNode,
        tree: StructureTree,
        type_code: str | None,
        read: _Read,
        path: str,
        xpath: str,
    ) -> tuple[Any, dict[str, Any] | None]:
        source = read.source
        if type_code in ("Resource",) or (type_code and type_code[:1].isupper() and self._is_resource(type_code)):
            _check_attributes(element, (), source, path)
            inner = None
            for child in _elements(element, source, path):
                if inner is not None:
                    raise FhirXmlError(f"{source}: {path}: holds more than one resource")
                inner = child
            if inner is None:
                return {}, None
            ns, name = _local(inner.tag)
            if ns != FHIR_NS:
                raise FhirXmlError(f"{source}: {path}.{name}: the element is not in the FHIR namespace")
            # The HL7 validator's XML parser starts a resource's path again at its bare name (Patient/f:name).
            return self._resource(inner, name, read, path, name), None
        if type_code is not None and type_code[:1].islower():
            # A primitive (the narrative's div, type xhtml, is met in _complex): a value, an id, extensions.
            _check_attributes(element, ("value", "id"), source, path)
            raw = element.attrib.get("value")
            companion: dict[str, Any] = {}
            if "id" in element.attrib:
                companion["id"] = element.attrib["id"]
            extensions = []
            for child in _elements(element, source, path):
                ns, name = _local(child.tag)
                if (ns, name) == (FHIR_NS, "extension"):
                    extensions.append(child)
                elif ns == FHIR_NS and not name.startswith("_"):
                    # A primitive's id and value are attributes: any other element is undefined, as for a type.
                    read.problem(f"{path}.{name}", f"Undefined element '{name}' at {xpath}", xpath)
                else:
                    raise FhirXmlError(f"{source}: {path}.{name}: a primitive value holds only extensions")
            if extensions:
                ext_tree = self._tree("Extension")
                companion["extension"] = [
                    self._complex_value(e, ext_tree.root, ext_tree, read, f"{path}.extension", f"{xpath}/f:extension")
                    if ext_tree
                    else {}
                    for e in extensions
                ]
            return _primitive(raw, type_code, source, path), companion or None
        inner_node, inner_tree = self._children(node, tree, type_code)
        return self._complex_value(element, inner_node, inner_tree, read, path, xpath), None

    def _complex_value(
        self, element: Element, node: ElementNode, tree: StructureTree, read: _Read, path: str, xpath: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self._complex(element, node, tree, out, read, path, xpath)
        return out

    def _holds_resource(self, node: ElementNode) -> bool:
        return any(t.code == "Resource" or (t.code[:1].isupper() and self._is_resource(t.code)) for t in node.types)

    def _is_resource(self, type_code: str) -> bool:
        tree = self._tree(type_code)
        return tree is not None and tree.kind == "resource"


def _check_attributes(element: Element, allowed: tuple[str, ...], source: str, path: str) -> None:
    for name in element.attrib:
        if name not in allowed and _local(name)[0] != XSI_NS:
            raise FhirXmlError(f"{source}: {path}: the attribute {_local(name)[1]!r} is not FHIR XML")


def _elements(element: Element, source: str, path: str) -> Iterator[Element]:
    """An element's child elements (comments and processing instructions passed over), refusing any text
    between them: FHIR XML keeps its values in attributes."""
    _check_text(element.text, source, path)
    for child in element:
        _check_text(child.tail, source, path)
        if isinstance(child.tag, str):
            yield child


def _check_text(text: str | None, source: str, path: str) -> None:
    if text is not None and text.strip():
        raise FhirXmlError(f"{source}: {path}: text outside a value attribute is not FHIR XML")


def _xhtml(element: Element, source: str, path: str) -> str:
    """The narrative's XHTML as text, XHTML the default namespace (as FHIR JSON writes it), without the
    whitespace that followed it in the document. (ElementTree's own ``default_namespace`` refuses attributes
    in no namespace, which XHTML's are: ``class``, ``style``...)"""
    for inner in element.iter():
        if isinstance(inner.tag, str):  # not a comment or processing instruction
            ns, name = _local(inner.tag)
            if ns != XHTML_NS:
                raise FhirXmlError(f"{source}: {path}: the narrative holds an element outside the XHTML namespace")
            inner.tag = name
    element.attrib = {"xmlns": XHTML_NS, **element.attrib}
    element.tail = None
    return tostring(element, encoding="unicode").replace(" />", "/>")


def _primitive(raw: str | None, type_code: str, source: str, path: str) -> Any:
    if raw is None:
        return None
    if type_code == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    if type_code in _NUMBERS:
        # FHIR's integer grammar only: int() would also take "+5", "007", " 7 ", "1_000" and other scripts' digits.
        if not _INTEGER.fullmatch(raw):
            return raw  # left as text, which validation reports
        try:
            return int(raw)
        except ValueError:  # more digits than Python converts: not a FHIR integer either
            return raw
    if type_code == "decimal":
        try:
            number = FhirDecimal(raw)
        except ValueError:
            return raw  # not a number: left as text, which validation reports
        if not math.isfinite(number):
            raise FhirXmlError(f"{source}: {path}: too large a number ({raw[:40]})")  # as JSON bodies are refused
        # A decimal keeps its digits (2.50 stays 2.50 when written as JSON); a plain integer is one.
        return int(raw) if raw.lstrip("-").isdigit() else number
    return raw
