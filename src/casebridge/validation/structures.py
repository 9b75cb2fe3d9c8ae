"""A StructureDefinition's own consistency (elementdefinition.html#ElementDefinition.type.profile).

A type profile of an element constrains the data type the element's ``type.code`` names: a profile of another
type (a specialization such as Count where the code says Quantity) can never apply. An abstract code
(Resource, DomainResource, Element, BackboneElement) admits a profile of any type derived from it, since the
value is of a concrete type. A profile that is not loaded is not judged here.

A discriminator path must select something in the element being sliced (profiling.html#discriminator). As
the reference validator, it is followed on the types the element itself states (an element that states none is
not judged), and only for an element the base type defines by that path: names must be elements of the type (a
choice by its name or by name and type), ``extension('url')`` selects an Extension, ``ofType(T)`` a type and
``$this`` the element; what cannot be followed statically (``resolve()``, other functions) is not judged.

Apart from the walk because it reads other definitions; called for StructureDefinition resources only.
"""

from __future__ import annotations

import re
from typing import Any

from casebridge.definitions.structure import Definitions
from casebridge.validation.issues import Run, as_list, as_obj

_ABSTRACT = frozenset({"Resource", "DomainResource", "Element", "BackboneElement"})
_CORE = "http://hl7.org/fhir/StructureDefinition/"


def check_structure_definition(sd: dict[str, Any], definitions: Definitions, run: Run, expr: str) -> None:
    for part in ("differential", "snapshot"):
        for i, element in enumerate(as_list(as_obj(sd.get(part)).get("element"))):
            element = as_obj(element)
            for j, type_ref in enumerate(as_list(element.get("type"))):
                type_ref = as_obj(type_ref)
                code = type_ref.get("code")
                if not isinstance(code, str):
                    continue
                for k, profile in enumerate(as_list(type_ref.get("profile"))):
                    if not isinstance(profile, str):
                        continue
                    found = _profile_type(definitions, profile)
                    if found is None or _is_instance_of(definitions, found, code):
                        continue
                    message = (
                        f"Profile {profile} is for type {found}, but the {element.get('path')} element has type {code}"
                    )
                    where = f"{expr}.{part}.element[{i}].type[{j}].profile[{k}]"
                    run.add("error", "structure", message, where)
            slicing = element.get("slicing")
            if isinstance(slicing, dict):
                _check_discriminators(definitions, element, slicing, run, f"{expr}.{part}.element[{i}].slicing")


def _profile_type(definitions: Definitions, canonical: str) -> str | None:
    sd = definitions.get(canonical)
    if sd is None or sd.get("resourceType") != "StructureDefinition":
        return None
    kind = sd.get("type")
    return kind if isinstance(kind, str) else None


def _is_instance_of(definitions: Definitions, type_name: str, code: str) -> bool:
    """Whether a value of ``type_name`` may be where ``code`` is (the same type, or derived from an abstract one)."""
    if type_name == code or code.endswith(f"/{type_name}"):
        return True
    if code not in _ABSTRACT:
        return False
    seen: set[str] = set()
    current: str | None = type_name
    while current is not None and current not in seen:
        if current == code:
            return True
        seen.add(current)
        base = as_obj(definitions.core_definition(current)).get("baseDefinition")
        current = base[len(_CORE) :] if isinstance(base, str) and base.startswith(_CORE) else None
    return False


# --- discriminator paths ------------------------------------------------------------------------------------

_EXTENSION_CALL = re.compile(r"extension\(\s*(['\"])[^'\"]*\1\s*\)")
_OF_TYPE = re.compile(r"ofType\(\s*([A-Za-z][A-Za-z0-9]*)\s*\)")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _check_discriminators(
    definitions: Definitions, element: dict[str, Any], slicing: dict[str, Any], run: Run, expr: str
) -> None:
    path = element.get("path")
    if not isinstance(path, str) or "." not in path:
        return
    base = definitions.core_definition(path.split(".")[0])
    if base is None or not any(as_obj(e).get("path") == path for e in _snapshot(base)):
        return  # a path the base type does not define by that name (inside a data type): not judged
    types: list[str] = []
    for type_ref in as_list(element.get("type")):
        code = as_obj(type_ref).get("code")
        if isinstance(code, str):
            # An abstract type (BackboneElement, Element, Resource) stands for the element itself in the base.
            types.append(path if code in _ABSTRACT else code)
    if not types:
        return
    for d, discriminator in enumerate(as_list(slicing.get("discriminator"))):
        disc_path = as_obj(discriminator).get("path")
        if isinstance(disc_path, str) and _selects_nothing(definitions, base, types, disc_path):
            message = (
                f"The discriminator path '{disc_path}' does not appear to be valid for the element that is being "
                f"sliced '{path}'"
            )
            run.add("error", "invalid", message, f"{expr}.discriminator[{d}]")


def _snapshot(sd: dict[str, Any]) -> list[Any]:
    return as_list(as_obj(sd.get("snapshot")).get("element"))


def _split(path: str) -> list[str] | None:
    """The steps of a discriminator path, split at the dots outside quotes and brackets; None if unbalanced."""
    steps: list[str] = []
    depth = 0
    quote = ""
    current = ""
    for ch in path:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            steps.append(current.strip())
            current = ""
            continue
        current += ch
    steps.append(current.strip())
    return None if quote or depth else steps


def _selects_nothing(definitions: Definitions, base: dict[str, Any], types: list[str], path: str) -> bool:
    """Whether following ``path`` from values of ``types`` certainly finds no element (False when unsure)."""
    steps = _split(path)
    if steps is None:
        return False
    current = types
    for step in steps:
        if step == "$this":
            continue
        of_type = _OF_TYPE.fullmatch(step)
        if _EXTENSION_CALL.fullmatch(step):
            step_types = ["Extension"]
        elif of_type is not None:
            step_types = [of_type.group(1)]
        elif _NAME.fullmatch(step):
            found: list[str] = []
            for t in current:
                children = _children(definitions, base, t)
                if children is None:
                    return False  # a type we cannot look into
                found.extend(children.get(step, ()))
            if not found:
                return True
            step_types = found
        else:
            return False  # resolve() and other functions: not followed
        current = step_types
    return False


def _children(definitions: Definitions, base: dict[str, Any], type_name: str) -> dict[str, list[str]] | None:
    """The elements a value of ``type_name`` has, by FHIRPath name, each with its types. ``type_name`` is a type, or
    the path of an element of ``base`` (for backbone elements, whose children are defined in place)."""
    if "." in type_name:
        elements, prefix = _snapshot(base), type_name
    else:
        sd = definitions.core_definition(type_name)
        if sd is None:
            return None
        elements, prefix = _snapshot(sd), type_name
    out: dict[str, list[str]] = {}
    for e in elements:
        e = as_obj(e)
        e_path = e.get("path")
        if not isinstance(e_path, str) or not e_path.startswith(prefix + ".") or "." in e_path[len(prefix) + 1 :]:
            continue
        name = e_path[len(prefix) + 1 :]
        codes = [str(as_obj(t).get("code")) for t in as_list(e.get("type")) if isinstance(as_obj(t).get("code"), str)]
        reference = e.get("contentReference")
        if isinstance(reference, str) and reference.startswith("#"):
            kinds = [reference[1:]]
        else:
            kinds = [e_path if c in _ABSTRACT else c for c in codes]
        if name.endswith("[x]"):
            stem = name[:-3]
            out.setdefault(stem, []).extend(kinds)
            for c in codes:  # a choice by name and type (valueQuantity)
                out.setdefault(stem + c[:1].upper() + c[1:], []).append(c)
        else:
            out.setdefault(name, []).extend(kinds)
    if not out and "." in type_name:
        return None  # an element whose children are not defined in place (a Resource): not looked into
    return out
