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

An obligation profile (the obligation-profile extension, true) may only add obligations to its base
(obligations.html): each differential element must be one of the base's, carrying only its id and path,
obligation extensions, mustSupport, min and max, and a binding of the base's strength with additional bindings
and nothing else; any other property is an error, worded and placed as the reference validator does. A profile
whose obligations another inherits (inherit-obligations) must be an obligation profile on the same base. Both
are checked when the base is loaded, as the reference validator does.

Apart from the walk because it reads other definitions; called for StructureDefinition resources only.
"""

from __future__ import annotations

import re
from typing import Any

from casebridge.definitions.snapshot import generate_snapshot, needs_snapshot
from casebridge.definitions.structure import DefinitionError, Definitions
from casebridge.validation.issues import Run, as_list, as_obj
from casebridge.validation.slicing import split_path

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
    base_url = sd.get("baseDefinition")
    base = definitions.get(base_url) if isinstance(base_url, str) else None
    if base is not None and base.get("resourceType") == "StructureDefinition":
        _check_obligations(sd, base, definitions, run, expr)


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
    steps, balanced = split_path(path)
    return [step.strip() for step in steps] if balanced else None


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


# --- obligation profiles ------------------------------------------------------------------------------------

_TOOLS = "http://hl7.org/fhir/tools/StructureDefinition/"
_OBLIGATION_PROFILE = (f"{_CORE}obligation-profile", f"{_TOOLS}obligation-profile")
_INHERIT_OBLIGATIONS = (f"{_CORE}inherit-obligations", f"{_TOOLS}inherit-obligations")
_OBLIGATION = (f"{_CORE}obligation", f"{_TOOLS}obligation")
_ADDITIONAL_BINDING = f"{_TOOLS}additional-binding"
_NOT_ALLOWED = "which is not allowed in Obligation profiles"


def _is_obligation_profile(sd: dict[str, Any]) -> bool:
    return any(
        as_obj(e).get("url") in _OBLIGATION_PROFILE and as_obj(e).get("valueBoolean") is True
        for e in as_list(sd.get("extension"))
    )


def _check_obligations(sd: dict[str, Any], base: dict[str, Any], definitions: Definitions, run: Run, expr: str) -> None:
    for i, extension in enumerate(as_list(sd.get("extension"))):
        extension = as_obj(extension)
        target_url = extension.get("valueCanonical")
        if extension.get("url") not in _INHERIT_OBLIGATIONS or not isinstance(target_url, str):
            continue
        target = definitions.get(target_url)
        if target is None:
            continue  # not loaded: not judged
        where = f"{expr}.extension[{i}]"
        if not _is_obligation_profile(target):
            run.add("error", "invalid", f"The profile '{target_url}' is not marked as an obligation profile", where)
        elif target.get("baseDefinition") != sd.get("baseDefinition"):
            message = (
                f"The profile '{target_url}' has a different base '{target.get('baseDefinition')}' from that "
                f"expected '{sd.get('baseDefinition')}'"
            )
            run.add("error", "invalid", message, where)
    if not _is_obligation_profile(sd) or sd.get("derivation") != "constraint":
        return
    try:
        full = generate_snapshot(_lenient(base), definitions) if needs_snapshot(base) else base
    except DefinitionError:
        return
    by_id = {as_obj(e).get("id"): as_obj(e) for e in _snapshot(full)}
    for i, element in enumerate(as_list(as_obj(sd.get("differential")).get("element"))):
        element = as_obj(element)
        element_id = element.get("id")
        base_element = by_id.get(element_id)
        if base_element is not None:
            _obligation_element(element, base_element, str(element_id), run, f"{expr}.differential.element[{i}]")


def _lenient(sd: dict[str, Any]) -> dict[str, Any]:
    """A copy whose differential bindings without a strength are left out: the reference validator's snapshot
    keeps the base's binding strength for them, and the strength is all these checks read of a binding."""
    elements = as_list(as_obj(sd.get("differential")).get("element"))
    if not any(isinstance(as_obj(e).get("binding"), dict) and "strength" not in e["binding"] for e in elements):
        return sd
    kept = [
        {k: v for k, v in e.items() if k != "binding"}
        if isinstance(e, dict) and isinstance(e.get("binding"), dict) and "strength" not in e["binding"]
        else e
        for e in elements
    ]
    return {**sd, "differential": {**as_obj(sd.get("differential")), "element": kept}}


def _properties(item: dict[str, Any]) -> list[tuple[str, int, Any]]:
    """An element's properties as the reference validator lists them: each value with its index among its name's
    values (a single value is [0]); a primitive's extension-only companion counts as the primitive."""
    out: list[tuple[str, int, Any]] = []
    for key, value in item.items():
        if key.startswith("_"):
            if key[1:] in item:
                continue
            key = key[1:]
        for n, v in enumerate(value if isinstance(value, list) else [value]):
            out.append((key, n, v))
    return out


def _obligation_element(
    element: dict[str, Any], base_element: dict[str, Any], element_id: str, run: Run, expr: str
) -> None:
    """An obligation profile's element adds only obligations to the base's (the id matched already)."""
    for name, n, value in _properties(element):
        where = f"{expr}.{name}[{n}]"
        if name == "extension":
            url = as_obj(value).get("url")
            if url not in _OBLIGATION:
                message = f"The element '{element_id}' has a property 'extension#{url}' {_NOT_ALLOWED}"
                run.add("error", "invalid", message, where)
        elif name == "binding":
            base_binding = base_element.get("binding")
            if isinstance(base_binding, dict) and isinstance(value, dict):
                _obligation_binding(value, base_binding, element_id, run, where)
        elif name not in ("id", "path", "mustSupport", "min", "max"):
            run.add("error", "invalid", f"The element '{element_id}' has a property '{name}' {_NOT_ALLOWED}", where)


def _obligation_binding(
    binding: dict[str, Any], base_binding: dict[str, Any], element_id: str, run: Run, expr: str
) -> None:
    """A binding in an obligation profile repeats the base's strength and adds additional bindings only."""
    for name, n, value in _properties(binding):
        where = f"{expr}.{name}[{n}]"
        if name == "extension":
            url = as_obj(value).get("url")
            if url != _ADDITIONAL_BINDING:
                message = f"The element '{element_id}' has a property 'extension#{url}' {_NOT_ALLOWED}"
                run.add("error", "invalid", message, where)
        elif name == "strength":
            base_strength = base_binding.get("strength")
            if value != base_strength:
                message = (
                    f"The element '{element_id}' has a different binding strength ('{value}') from the base "
                    f"('{base_strength}') {_NOT_ALLOWED}"
                )
                run.add("error", "invalid", message, where)
        else:
            message = f"The element '{element_id}' has a binding property '{name}' {_NOT_ALLOWED}"
            run.add("error", "invalid", message, where)
