"""Snapshot generation: a profile that carries only a differential gets its snapshot here.

The snapshot starts as a copy of the base definition's snapshot; each differential element is then
merged into the element with the same id. An id the copy does not have yet is made first:
- a deeper element (``Observation.code.coding``) by expanding its parent with the children of the
  parent's type, taken from that type's own snapshot and rebased onto the parent's path;
- a slice (``Observation.category:lab``) by copying its base element, after the base element's subtree
  and the slices already there;
- a renamed choice (``Observation.valueQuantity``) is read as ``Observation.value[x]`` restricted to that
  type, as R4 allows.

This covers what profiles commonly do (cardinality, types, fixed and pattern values, bindings,
invariants, slicing, extensions); it does not re-derive what the HL7 snapshot generator checks about a
profile's own consistency.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from casebridge.definitions.structure import (
    DefinitionError,
    Definitions,
    DefinitionShapeError,
    SnapshotPathError,
    check_structure_definition,
)

__all__ = ["SnapshotPathError", "generate_snapshot", "needs_snapshot"]

_MERGED_LISTS = ("constraint",)


_NEVER_COPIED = ("id", "path")
_SLICE_NAMES = re.compile(r":[^.]*")  # 'Observation.component:a.code' -> 'Observation.component.code'
_MAX_BASE_DEPTH = 20
# The complex data types (R4) a choice may hold; with the primitives (lower case) they all derive from Element.
_DATATYPES = frozenset(
    {
        "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactDetail", "ContactPoint",
        "Contributor", "Count", "DataRequirement", "Distance", "Dosage", "Duration", "Expression", "HumanName",
        "Identifier", "Meta", "Money", "ParameterDefinition", "Period", "Quantity", "Range", "Ratio", "Reference",
        "RelatedArtifact", "SampledData", "Signature", "Timing", "TriggerDefinition", "UsageContext",
    }
)  # fmt: skip


def _elements(sd: dict[str, Any], part: str) -> Any:
    holder = sd.get(part)
    return holder.get("element") if isinstance(holder, dict) else None


def needs_snapshot(sd: dict[str, Any]) -> bool:
    return not _elements(sd, "snapshot") and bool(_elements(sd, "differential"))


def generate_snapshot(sd: dict[str, Any], definitions: Definitions, _depth: int = 0) -> dict[str, Any]:
    """A copy of ``sd`` with a snapshot. Raises DefinitionError when it cannot be built (a
    DefinitionShapeError, naming the element, when the JSON is not shaped as FHIR says)."""
    check_structure_definition(sd)
    url = sd.get("url") or "?"
    if _depth > _MAX_BASE_DEPTH:
        raise DefinitionError(f"{url}: the chain of base definitions is too long (or circular)")
    base_url = sd.get("baseDefinition")
    if not base_url:
        raise DefinitionError(f"{url}: a differential without a baseDefinition")
    base = definitions.get(base_url)
    if base is None:
        raise DefinitionError(f"{url}: its base definition {base_url} is not loaded")
    if base.get("resourceType") != "StructureDefinition":
        raise DefinitionError(f"{url}: its base definition {base_url} is a {base.get('resourceType')}")
    base = _other(base, definitions, _depth + 1, f"{url}: its base definition {base_url}")
    elements = copy.deepcopy(_elements(base, "snapshot") or [])
    if not elements:
        raise DefinitionError(f"{url}: its base definition {base_url} has no snapshot")
    for e in elements:
        # Ids are what the builder goes by; a snapshot may leave them out (the path is the id then).
        if not e.get("id"):
            e["id"] = e["path"] + (f":{e['sliceName']}" if e.get("sliceName") else "")
    builder = _Builder(elements, definitions, url, _depth)
    base_type = base.get("type")
    if sd.get("type") and base_type and sd["type"] != base_type and sd.get("derivation") != "specialization":
        raise DefinitionError(f"{url}: type {sd['type']} differs from its base's type {base_type}")
    differential = _elements(sd, "differential")
    for i, (diff, element_id) in enumerate(zip(differential, _differential_ids(differential), strict=True)):
        try:
            builder.apply(diff, element_id)
        except DefinitionError as exc:
            where = f"StructureDefinition.differential.element[{i}]: {str(exc).removeprefix(f'{url}: ')}"
            raise (SnapshotPathError if isinstance(exc, SnapshotPathError) else DefinitionError)(where) from exc
    out = dict(sd)
    out["snapshot"] = {"element": builder.elements}
    return out


def _differential_ids(differential: list[Any]) -> list[str | None]:
    """The id each differential element is merged by. As the HL7 snapshot generator does, an element is placed by
    its path, in the slice opened last above it: ``Communication.payload.contentString`` after the slice
    ``Communication.payload:string`` belongs to that slice. An id is taken as written when it names the path (the
    slices it names are the context); one naming another path, or none, gives way to the path in context."""
    open_slices: dict[str, str] = {}  # path -> the slice of it that the elements after it are in
    out: list[str | None] = []
    for diff in differential:
        path = diff.get("path") if isinstance(diff, dict) else None
        if not isinstance(path, str) or not path:
            out.append(None)  # apply() reports it
            continue
        slice_name = diff.get("sliceName")
        given = diff.get("id")
        if isinstance(given, str) and given and _SLICE_NAMES.sub("", given) == path:
            out.append(given)
        else:
            parts = path.split(".")
            for i in range(len(parts) - 1):
                in_slice = open_slices.get(".".join(parts[: i + 1]))
                if in_slice is not None:
                    parts[i] += f":{in_slice}"
            element_id = ".".join(parts)
            out.append(f"{element_id}:{slice_name}" if isinstance(slice_name, str) and slice_name else element_id)
        # An element closes the slices below its path; a slice opens (or, unnamed, the element closes) its own.
        for opened in [p for p in open_slices if p.startswith(path + ".")]:
            del open_slices[opened]
        if isinstance(slice_name, str) and slice_name:
            open_slices[path] = slice_name
        else:
            open_slices.pop(path, None)
    return out


def _other(sd: dict[str, Any], definitions: Definitions, depth: int, what: str) -> dict[str, Any]:
    """Another definition this one builds on (its base, an element's type), with its snapshot. Its own shape
    errors are named as its own: they are not this definition's elements."""
    try:
        if needs_snapshot(sd):
            return generate_snapshot(sd, definitions, depth)
        check_structure_definition(sd)
    except DefinitionShapeError as exc:
        raise DefinitionError(f"{what}: {exc}") from exc
    return sd


class _Builder:
    def __init__(self, elements: list[dict[str, Any]], definitions: Definitions, url: str, depth: int = 0):
        self.depth = depth  # of base definitions and types above this one: a cycle among them must end
        self.elements = elements
        # The elements' ids, kept in step with ``elements``: searched in C rather than element by element.
        self.ids: list[str] = [e["id"] for e in elements]
        self._present = set(self.ids)
        self._at: dict[str, int] = {}  # where an id was last found (a hint: inserts move elements)
        # contentReference names an element of the base definition as defined there, unconstrained.
        self.base_elements = copy.deepcopy(elements)
        self.base_ids = list(self.ids)
        # Where an element's subtree ended when last asked: a profile adding thousands of slices to one
        # element made each new slice scan all those before it (quadratic in the differential).
        self._ends: dict[str, int] = {}
        self.definitions = definitions
        self.url = url

    # --- positions --------------------------------------------------------------------------------------

    def _index(self, element_id: str) -> int | None:
        # Most questions are about ids not there yet (each new slice's): a set answers those.
        if element_id not in self._present:
            return None
        hint = self._at.get(element_id)
        if hint is not None and hint < len(self.ids) and self.ids[hint] == element_id:
            return hint
        index = self._at[element_id] = self.ids.index(element_id)
        return index

    def _subtree_end(self, index: int, ids: list[str] | None = None) -> int:
        """The index just after the element at ``index`` and everything below it (its children, its
        slices and theirs), in ``ids`` (default: the snapshot being built). A subtree is one run of
        elements, so a remembered end still inside it is a place to go on from."""
        ids = self.ids if ids is None else ids
        own = ids[index]
        prefixes = (own + ".", own + ":")
        end = index + 1
        hint = self._ends.get(own) if ids is self.ids else None
        if hint is not None and index < hint <= len(ids) and ids[hint - 1].startswith(prefixes):
            end = hint
        while end < len(ids) and ids[end].startswith(prefixes):
            end += 1
        if ids is self.ids:
            self._ends[own] = end
        return end

    # --- applying one differential element --------------------------------------------------------------

    def apply(self, diff: dict[str, Any], given_id: str | None = None) -> None:
        element_id = self._normalise_id(diff, given_id)
        index = self._index(element_id)
        if index is None:
            index = self._make(element_id, diff)
        target = self.elements[index]
        for key, value in diff.items():
            if key in _NEVER_COPIED:
                continue
            if key in _MERGED_LISTS:
                existing = {c.get("key"): c for c in target.get(key, [])}
                for item in value:
                    existing[item.get("key")] = item
                target[key] = list(existing.values())
            else:
                target[key] = copy.deepcopy(value)
        if diff.get("type") and target["path"].endswith("[x]"):
            # The choice is narrowed: fixed or pattern values of the removed types would no longer apply.
            target["type"] = copy.deepcopy(diff["type"])

    def _normalise_id(self, diff: dict[str, Any], given_id: str | None = None) -> str:
        element_id = given_id or diff.get("id")
        path = diff.get("path")
        if not isinstance(path, str) or not path:
            raise DefinitionError(f"{self.url}: a differential element has no path")
        if not isinstance(element_id, str) or not element_id:
            element_id = path + (f":{diff['sliceName']}" if diff.get("sliceName") else "")
        elif _SLICE_NAMES.sub("", element_id) != path:
            # The id is what the element is merged by: one naming another element than the path would
            # constrain that other element.
            raise SnapshotPathError(f"{self.url}: the id {element_id} does not match the path {path}")
        # The path is checked too: an id may look right while the path names no element.
        self._choice_rename(path)
        return self._choice_rename(element_id)

    def _choice_rename(self, element_id: str) -> str:
        """``Observation.valueQuantity`` -> ``Observation.value[x]`` when the base has that choice."""
        parts = element_id.split(".")
        for i in range(1, len(parts)):
            name, _, slice_name = parts[i].partition(":")
            prefix = ".".join(parts[:i])
            if self._index(f"{prefix}.{name}") is not None or name.endswith("[x]"):
                continue
            for stem_end in range(len(name) - 1, 0, -1):
                if name[stem_end].isupper():
                    choice_index = self._index(f"{prefix}.{name[:stem_end]}[x]")
                    if choice_index is None:
                        continue
                    wanted = name[stem_end:]
                    codes = [str(t.get("code", "")) for t in self.elements[choice_index].get("type", [])]
                    if not any(c[:1].upper() + c[1:] == wanted for c in codes):
                        raise SnapshotPathError(
                            f"{self.url}: the path must be '{prefix}.{name[:stem_end]}[x]' not '{prefix}.{name}' "
                            f"({wanted} is not one of its types)"
                        )
                    parts[i] = f"{name[:stem_end]}[x]" + (f":{slice_name}" if slice_name else "")
                    break
        return ".".join(parts)

    def _make(self, element_id: str, diff: dict[str, Any]) -> int:
        head, _, last = element_id.rpartition(".")
        name, _, slice_name = last.partition(":")
        if slice_name:
            base_id = f"{head}.{name}" if head else name
            base_index = self._index(base_id)
            if base_index is None:
                base_index = self._make(base_id, {})
            new = copy.deepcopy(self.elements[base_index])
            new.pop("slicing", None)
            new["id"] = element_id
            new["sliceName"] = slice_name
            position = self._subtree_end(base_index)
            self.elements.insert(position, new)
            self.ids.insert(position, element_id)
            self._present.add(element_id)
            return position
        if not head:
            raise SnapshotPathError(f"{self.url}: element {element_id} is not in the base definition")
        parent_index = self._index(head)
        if parent_index is None:
            parent_index = self._make(head, {})
        self._expand(parent_index)
        index = self._index(element_id)
        if index is None:
            # A renamed choice below an element just expanded (an extension slice's valueCode): read it now.
            index = self._index(self._choice_rename(element_id))
        if index is None:
            raise SnapshotPathError(f"{self.url}: element {element_id} is not in the base definition")
        return index

    def _copy_children(self, parent_index: int, source_id: str, *, from_base: bool = False) -> bool:
        """Copy the children (not the slices) of ``source_id`` under the element at ``parent_index``; from
        the base definition as it was (``from_base``) or from the snapshot being built."""
        pool, pool_ids = (self.base_elements, self.base_ids) if from_base else (self.elements, self.ids)
        if source_id not in pool_ids:
            return False
        source_index = pool_ids.index(source_id)
        parent = self.elements[parent_index]
        source = pool[source_index]
        copied = []
        for e in pool[source_index + 1 : self._subtree_end(source_index, pool_ids)]:
            if not e["id"].startswith(source_id + ".") or ":" in e["id"][len(source_id) :]:
                continue
            child = copy.deepcopy(e)
            child["id"] = parent["id"] + e["id"][len(source_id) :]
            child["path"] = parent["path"] + e["path"][len(source["path"]) :]
            copied.append(child)
        self.elements[parent_index + 1 : parent_index + 1] = copied
        self.ids[parent_index + 1 : parent_index + 1] = [c["id"] for c in copied]
        self._present.update(c["id"] for c in copied)
        return bool(copied)

    def _expand(self, parent_index: int) -> None:
        """Give an element its children (once): those of the element it slices or refers to
        (``contentReference``) when that one has them, else those of its type."""
        parent = self.elements[parent_index]
        # Children come straight after their element (its slices after them).
        if parent_index + 1 < len(self.ids) and self.ids[parent_index + 1].startswith(parent["id"] + "."):
            return
        if parent.get("sliceName"):
            # A slice starts as its base element as the profile constrains it.
            if self._copy_children(parent_index, parent["id"][: parent["id"].rfind(":")]):
                return
        reference = parent.get("contentReference")
        if isinstance(reference, str) and self._copy_children(
            parent_index, reference.split("#", 1)[-1], from_base=True
        ):
            return
        types = parent.get("type") or []
        codes = {t.get("code") for t in types}
        if len(codes) > 1 and all((isinstance(c, str) and c[:1].islower()) or c in _DATATYPES for c in codes):
            # A choice of data types: what all of them have (Element's id and extension) may be constrained
            # without picking one type, as the HL7 snapshot generator allows (effective[x].extension).
            codes = {"Element"}
            types = [{"code": "Element"}]
        if len(codes) != 1:
            raise DefinitionError(
                f"{self.url}: cannot go below {parent['id']}: it has {len(codes)} types (restrict it to one first)"
            )
        type_code = codes.pop()
        profile = next((p for t in types for p in t.get("profile", ())), None)
        type_sd = self.definitions.get(profile) if profile and type_code != "Extension" else None
        if type_sd is None:
            type_sd = self.definitions.core_definition(str(type_code))
        if type_sd is None:
            raise DefinitionError(f"{self.url}: the type {type_code} of {parent['id']} is not loaded")
        type_sd = _other(
            type_sd, self.definitions, self.depth + 1, f"{self.url}: the type {type_code} of {parent['id']}"
        )
        type_elements = (type_sd.get("snapshot") or {}).get("element") or []
        if not type_elements:
            raise DefinitionError(f"{self.url}: the type {type_code} has no snapshot")
        root_path = type_elements[0]["path"]
        root_id = type_elements[0].get("id", root_path)
        children = []
        for e in type_elements[1:]:
            child = copy.deepcopy(e)
            child["id"] = parent["id"] + child.get("id", child["path"])[len(root_id) :]
            child["path"] = parent["path"] + child["path"][len(root_path) :]
            children.append(child)
        position = parent_index + 1
        self.elements[position:position] = children
        self.ids[position:position] = [c["id"] for c in children]
        self._present.update(c["id"] for c in children)
