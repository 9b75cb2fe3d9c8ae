"""A StructureDefinition's own consistency (elementdefinition.html#ElementDefinition.type.profile).

A type profile of an element constrains the data type the element's ``type.code`` names: a profile of another
type (a specialization such as Count where the code says Quantity) can never apply. An abstract code
(Resource, DomainResource, Element, BackboneElement) admits a profile of any type derived from it, since the
value is of a concrete type. A profile that is not loaded is not judged here.

Apart from the walk because it reads other definitions; called for StructureDefinition resources only.
"""

from __future__ import annotations

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
