"""Where an extension may be used, and what a complex extension may hold.

- A modifier extension is used as a modifierExtension, and no other extension is.
- An extension's url is absolute, except for the sub-extensions of a complex extension, which are named
  by their slice (extensibility.html#Extension).
- A complex extension holds the sub-extensions its definition slices (by relative url), no others.
- An extension appears only where its definition's ``context`` allows it (element: a type or an element
  path, matched through the type's ancestors; extension: inside the named extension; fhirpath: an
  element the expression selects from the resource), and where every ``contextInvariant`` holds on the
  element that carries it (structuredefinition-definitions.html#StructureDefinition.context).

Apart from the walk because the context needs the element that holds the extension (its type, its path
and the extension it sits in), which the walk does not carry: it is found again from the expression, only
for extensions whose definitions restrict their context.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from casebridge.definitions.structure import ElementNode, StructureTree
from casebridge.validation.fhirpath import FhirPathError, Resolver, evaluate
from casebridge.validation.issues import Run, as_list

if TYPE_CHECKING:
    from casebridge.validation.validator import Validator

_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_LAST_STEP = re.compile(r"\.(?:extension|modifierExtension)\[(\d+)\]$")
_STEP = re.compile(r"\.([A-Za-z][A-Za-z0-9_]*)(?:\.ofType\(([A-Za-z0-9]+)\))?(?:\[(\d+)\])?")
# Values that stand for other elements' content: any extension may appear there (as the HL7 validator holds).
_MORE_CONTEXTS = {
    "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type": ("ElementDefinition.type",),
    "http://hl7.org/fhir/StructureDefinition/questionnaire-choiceOrientation": ("Questionnaire",),
}
_ANY_EXTENSION_UNDER = (".fixed", ".pattern", ".example", ".defaultValue")


@dataclass(frozen=True, slots=True)
class Contexts:
    """The context rules of one extension definition."""

    elements: tuple[str, ...]
    extensions: tuple[str, ...]
    fhirpaths: tuple[str, ...]
    invariants: tuple[str, ...]
    shown: str  # as the HL7 validator lists them: "e:Patient, x:http://..., p:Patient.address"
    anywhere: bool  # an element context of Element (or no context at all): nothing to find out


@dataclass(frozen=True, slots=True)
class Holder:
    """The element an extension sits on."""

    value: Any  # the element's JSON (an object, or a primitive's value)
    type: str  # its type: "Address", "BackboneElement", "Patient", "boolean"
    path: str  # its path in its resource, without indexes: "Patient.address"
    choice_path: str  # the same with choice elements named as defined: "Observation.value[x]"
    defined_path: str  # where a backbone element is defined: "ElementDefinition.type" (else as path)
    resource: bool  # it is a resource
    in_extension: str | None  # the url of the nearest extension it is in (or is)


# id(definition tree) -> (the tree, kept so that the id stays its own; its contexts)
_CONTEXTS: dict[int, tuple[StructureTree, Contexts]] = {}
_MAX_CACHED = 4096


def contexts_for(validator: Validator, definition: StructureTree) -> Contexts:
    cached = _CONTEXTS.get(id(definition))
    if cached is not None and cached[0] is definition:
        return cached[1]
    sd = validator.definitions.get(f"{definition.url}|{definition.version}" if definition.version else definition.url)
    if sd is None:
        sd = validator.definitions.get(definition.url)
    found = contexts_of(sd if isinstance(sd, dict) else {})
    if len(_CONTEXTS) >= _MAX_CACHED:
        _CONTEXTS.clear()
    _CONTEXTS[id(definition)] = (definition, found)
    return found


def contexts_of(sd: dict[str, Any]) -> Contexts:
    elements: list[str] = []
    extensions: list[str] = []
    fhirpaths: list[str] = []
    shown: list[str] = []
    for c in as_list(sd.get("context")):
        kind, expression = (c.get("type"), c.get("expression")) if isinstance(c, dict) else (None, None)
        if not isinstance(expression, str):
            continue
        if kind == "element":
            elements.append(expression)
            shown.append(f"e:{expression}")
        elif kind == "extension":
            extensions.append(expression)
            shown.append(f"x:{expression}")
        elif kind == "fhirpath":
            fhirpaths.append(expression)
            shown.append(f"p:{expression}")
    # Published R4 definitions whose context misses where R4 itself uses them (the HL7 validator adds these too):
    # the core snapshots carry fhir-type on ElementDefinition.type, and choiceOrientation on a Questionnaire.
    for extra in _MORE_CONTEXTS.get(str(sd.get("url")), ()):
        if extra not in elements:
            elements.append(extra)
    invariants = tuple(i for i in as_list(sd.get("contextInvariant")) if isinstance(i, str))
    anywhere = not shown or any(e in ("Element", "Any") for e in elements)
    return Contexts(tuple(elements), tuple(extensions), tuple(fhirpaths), invariants, ", ".join(shown), anywhere)


def is_sub_extension(node: ElementNode) -> bool:
    """The extension sits in an extension (Extension.extension, or a profile's Patient.extension.extension)."""
    return node.path.endswith("xtension.extension")


def check_url(url: str, node: ElementNode, expr: str, run: Run) -> bool:
    """Only a complex extension's parts have relative urls; False when the url is not absolute."""
    if _ABSOLUTE.match(url):
        return True
    if not is_sub_extension(node):
        run.add("error", "structure", "Extension.url must be an absolute URL", expr)
    return False


def check_modifier(node: ElementNode, definition: StructureTree, expr: str, run: Run) -> None:
    """A modifier extension goes in modifierExtension, and only it does (extensibility.html#modifierExtension)."""
    labelled = node.name == "modifierExtension"
    if labelled != definition.root.is_modifier:
        which = (
            "is labelled as a modifier, but the underlying extension is not"
            if labelled
            else "is not labelled as a modifier, but the underlying extension is"
        )
        run.add("error", "structure", f"Extension modifier mismatch: the extension element {which}", expr)


def check_sub_extensions(ext: dict[str, Any], definition: StructureTree, expr: str, run: Run) -> None:
    """The relative urls of a complex extension's parts must be ones its definition slices."""
    subs = ext.get("extension")
    if not isinstance(subs, list):
        return
    sliced = definition.root.children.get("extension")
    if sliced is None or not sliced.slices:
        return
    known: set[str] = set()
    for piece in sliced.slices.values():
        url_node = piece.children.get("url")
        fixed = url_node.fixed if url_node is not None else None
        if not isinstance(fixed, str):
            return  # a part named otherwise than by a fixed url: not ours to judge
        known.add(fixed)
    label = f"{definition.url}|{definition.version}" if definition.version else definition.url
    for i, sub in enumerate(subs):
        url = sub.get("url") if isinstance(sub, dict) else None
        if isinstance(url, str) and url and not _ABSOLUTE.match(url) and url not in known:
            message = f"Sub-extension url '{url}' is not defined by the Extension {label}"
            run.add("error", "structure", message, f"{expr}.extension[{i}][url='{url}']")


def check_context(
    validator: Validator,
    ext: dict[str, Any],
    definition: StructureTree,
    expr: str,
    run: Run,
    res: dict[str, Any],
) -> None:
    """The extension is used where its definition allows it, and its context invariants hold there."""
    contexts = contexts_for(validator, definition)
    if contexts.anywhere and not contexts.invariants:
        return
    step = _LAST_STEP.search(expr)
    if step is None:
        return
    holder_expr = expr[: step.start()]
    holder = find_holder(validator, res, holder_expr, ext, int(step.group(1)))
    if holder is None:
        return  # not found again: no judgement rather than a false one
    name = f"{definition.url} v{definition.version}" if definition.version else definition.url
    if not contexts.anywhere and not _allowed(validator, contexts, holder, res, run):
        here = ", ".join(sorted({holder.type, holder.path}))
        message = (
            f"The extension {name} is not allowed to be used at this point "
            f"(this element is [{here}]; allowed for this version = {contexts.shown})"
        )
        run.add("error", "structure", message, holder_expr, definition.url)
        return
    for invariant in contexts.invariants:
        base = None if holder.resource else holder.type
        try:
            result = evaluate(
                invariant,
                holder.value,
                base=base,
                resource=res,
                root=run.roots.get(id(res), res),
                resolver=Resolver(run.roots.get(id(res), res), run.bundle_index),
            )
        except FhirPathError:
            continue
        if result != [True]:
            message = (
                f"The extension {name} is not allowed to be used at this point "
                f"(based on context invariant '{invariant}')"
            )
            run.add("error", "structure", message, holder_expr, definition.url)


def _allowed(validator: Validator, contexts: Contexts, holder: Holder, res: dict[str, Any], run: Run) -> bool:
    if ".element." in holder.path and any(part in holder.path for part in _ANY_EXTENSION_UNDER):
        return True
    paths = {holder.type, holder.path, holder.choice_path, holder.defined_path}
    for expression in contexts.elements:
        wanted = expression.split("#", 1)[1] if "#" in expression else expression
        if wanted == "Resource" and holder.resource:
            return True
        for path in paths:
            if path and _matches(validator, path, wanted):
                return True
    if holder.in_extension is not None and holder.in_extension in contexts.extensions:
        return True
    if contexts.fhirpaths:
        if not isinstance(holder.value, dict):
            return True  # a primitive's value is not its element (the extensions are apart): not judged
        # The engine hands back copies: an equal element stands for the holder.
        key = _key(holder.value)
        for expression in contexts.fhirpaths:
            found = _selected(run, res, expression)
            if found is None or key in found:
                return True
    return False


# (id(run), id(resource), expression) -> (the run and resource, kept so the ids stay theirs; what it selects):
# a resource with many extensions evaluates each context expression once, not once per extension.
_SELECTED: dict[tuple[int, int, str], tuple[Run, dict[str, Any], set[str] | None]] = {}
_MAX_SELECTED = 64


def _selected(run: Run, res: dict[str, Any], expression: str) -> set[str] | None:
    """The elements a fhirpath context selects in ``res`` (by their JSON text); None when it cannot be evaluated."""
    cache_key = (id(run), id(res), expression)
    hit = _SELECTED.get(cache_key)
    if hit is not None and hit[0] is run and hit[1] is res:
        return hit[2]
    root = run.roots.get(id(res), res)
    found: set[str] | None
    try:
        items = evaluate(expression, res, base=None, resource=res, root=root, resolver=Resolver(root, run.bundle_index))
        found = {_key(item) for item in items if isinstance(item, dict)}
    except FhirPathError:
        found = None
    if len(_SELECTED) >= _MAX_SELECTED:
        _SELECTED.clear()
    _SELECTED[cache_key] = (run, res, found)
    return found


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _matches(validator: Validator, path: str, wanted: str) -> bool:
    """``path`` (a type or an element path) is ``wanted``, or is it through an ancestor of its type."""
    if path == wanted:
        return True
    head, dot, rest = path.partition(".")
    tree = validator.type_tree(head)
    seen = 0
    while tree is not None and seen < 16:
        if tree.type + dot + rest == wanted:
            return True
        base = tree.base
        tree = validator.type_tree(base.rsplit("/", 1)[-1]) if base else None
        seen += 1
    return False


def find_holder(validator: Validator, res: dict[str, Any], holder_expr: str, ext: Any, index: int) -> Holder | None:
    """The element ``holder_expr`` names in ``res``, found again through the instance and the base definitions;
    None when the expression does not lead to the extension ``ext`` at ``index``."""
    rtype = res.get("resourceType")
    if not isinstance(rtype, str):
        return None
    rid = res.get("id")
    marker = f"/*{rtype}/{rid if isinstance(rid, str) else 'null'}*/"
    if marker in holder_expr:
        tail = holder_expr[holder_expr.rindex(marker) + len(marker) :]
    elif holder_expr == rtype or holder_expr.startswith(rtype + "."):
        tail = holder_expr[len(rtype) :]
    else:
        return None
    tree = validator.type_tree(rtype)
    if tree is None:
        return None
    node: ElementNode | None = tree.root
    value: Any = res
    companion: Any = None  # a primitive's "_" object, where its extensions are
    type_name, path, choice_path, is_resource = rtype, rtype, rtype, True
    defined_path = rtype
    in_extension: str | None = None
    position = 0
    while position < len(tail):
        step = _STEP.match(tail, position)
        if step is None or node is None or not isinstance(value, dict):
            return None
        position = step.end()
        name, of_type, index_text = step.group(1), step.group(2), step.group(3)
        child = node.children.get(name) or node.children.get(f"{name}[x]")
        if child is None:
            return None
        key = name + of_type[0].upper() + of_type[1:] if of_type else name
        item: Any = value.get(key)
        extra: Any = value.get(f"_{key}")
        if index_text is not None:
            i = int(index_text)
            item = item[i] if isinstance(item, list) and i < len(item) else None
            extra = extra[i] if isinstance(extra, list) and i < len(extra) else None
        elif isinstance(item, list) or isinstance(extra, list):
            return None
        path += f".{name}"
        choice_path += f".{child.name}"
        # Where the element is defined: "HumanName.family" inside a data type, the resource's path otherwise.
        defined_path = child.path or choice_path
        is_resource = False
        if name in ("extension", "modifierExtension") and isinstance(item, dict):
            url = item.get("url")
            in_extension = url if isinstance(url, str) else None
        if of_type:
            type_name = of_type
        elif child.content_reference:
            target = tree.by_id.get(child.content_reference.lstrip("#").rsplit("#", 1)[-1])
            if target is None:
                return None
            node, value, companion, type_name = target, item, None, "BackboneElement"
            defined_path = target.path
            continue
        elif child.children:
            node, value, companion = child, item, None
            type_name = child.types[0].code if len(child.types) == 1 else "BackboneElement"
            defined_path = child.path
            continue
        elif len(child.types) == 1:
            type_name = child.types[0].code
        else:
            return None
        if isinstance(item, dict) and isinstance(item.get("resourceType"), str):
            # A resource inside (contained, Bundle.entry.resource...): paths start again at its type.
            type_name = path = choice_path = defined_path = item["resourceType"]
            is_resource, in_extension = True, None
            inner = validator.type_tree(type_name)
            tree = inner if inner is not None else tree
            node = inner.root if inner is not None else None
            value, companion = item, None
            continue
        inner = validator.type_tree(type_name)
        if inner is None:
            return None
        tree, node = inner, inner.root
        value, companion = item, extra
    carrier = companion if companion is not None and not isinstance(value, dict) else value
    found = carrier.get("extension") if isinstance(carrier, dict) else None
    mod = carrier.get("modifierExtension") if isinstance(carrier, dict) else None
    if not any(isinstance(lst, list) and index < len(lst) and lst[index] is ext for lst in (found, mod)):
        return None
    return Holder(value, type_name, path, choice_path, defined_path, is_resource, in_extension)
