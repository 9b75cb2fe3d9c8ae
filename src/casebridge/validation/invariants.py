"""The invariants (constraints) of element definitions, checked on the values of their elements.

Each is a FHIRPath expression; the ones every resource carries (dom-*, txt-*, ref-1, the Bundle rules, the
common IPS rules) also have a native version of the same meaning here, matched on their key or exact R4
expression, which takes the interpreter out of the common path. ele-1 and ext-1 are checked by the walk itself.

Apart from the walk because it is the one place that runs FHIRPath, and the native table is checked against
the interpreter on its own (tests/unit/test_native_invariants.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from casebridge.definitions.structure import Constraint, StructureTree
from casebridge.validation.fhirpath import FhirPathError, Resolver, evaluate, html_checks, is_true
from casebridge.validation.issues import Run, as_list, as_obj
from casebridge.validation.operations import OPD_3_R4, opd_3
from casebridge.validation.references import contained_by_id

# Checked by the walk itself (ele-1 on every element, ext-1 on every extension), never as invariants.
CHECKED_IN_WALK = frozenset({"ele-1", "ext-1"})

Active = tuple[tuple[Constraint, Any], ...]  # constraints to check, each with its native check (or None)


class Invariants:
    """The invariant checks of one validator; the constraint lists it has met are prepared once."""

    def __init__(self, validate_contained: bool) -> None:
        self.validate_contained = validate_contained  # ValidationOptions.validate_contained (dom-3 follows it)
        # id(constraint tuple) -> (the tuple, kept so the id stays its own; (constraint, native check) pairs)
        self._prepared: dict[int, tuple[tuple[Constraint, ...] | list[Constraint], Active]] = {}

    def check_all(
        self,
        constraints: tuple[Constraint, ...] | list[Constraint],
        item: Any,
        base: str | None,
        expr: str,
        run: Run,
        res: dict[str, Any],
        tree: StructureTree,
    ) -> None:
        """The constraints of an element on one of its values."""
        if constraints:
            active = self.active(constraints)
            if active:
                self.check(active, item, base, expr, run, res, tree)

    def active(self, constraints: tuple[Constraint, ...] | list[Constraint]) -> Active:
        """Once per constraint list: the ones the walk does not check itself, each with its native check."""
        prepared = self._prepared.get(id(constraints))
        if prepared is None or prepared[0] is not constraints:
            active = tuple(
                (c, _NATIVE.get(c.key) or _NATIVE_EXPRESSIONS.get(c.expression) or _CORRECTED.get(c.expression))
                for c in constraints
                if c.key not in CHECKED_IN_WALK
            )
            prepared = self._prepared[id(constraints)] = (constraints, active)
        return prepared[1]

    def check(
        self,
        active: Active,
        item: Any,
        base: str | None,
        expr: str,
        run: Run,
        res: dict[str, Any],
        tree: StructureTree,
    ) -> None:
        """Prepared constraints (``active``) on one value: native checks where there are, else FHIRPath."""
        for c, native in active:
            if c.key == "dom-3":
                # Reported on each unreferenced contained resource, as the HL7 validator does; skipped
                # with the contained resources when the caller asked for that.
                if self.validate_contained and isinstance(item, dict):
                    for i in _unreferenced_contained(item):
                        cid = item["contained"][i].get("id")
                        message = (
                            f"The contained resource '{cid}' is not referenced to from elsewhere in the "
                            "containing resource nor does it refer to the containing resource (dom-3)"
                        )
                        run.add("error", "invariant", message, f"{expr}.contained[{i}]", tree.url)
                continue
            if native is not None:
                ok = native(item, run.roots.get(id(res), res))
            else:
                try:
                    root = run.roots.get(id(res), res)
                    base_path = None if isinstance(item, dict) and "resourceType" in item else base
                    ok = is_true(
                        evaluate(
                            c.expression,
                            item,
                            base=base_path,
                            resource=res,
                            root=root,
                            resolver=Resolver(root, run.bundle_index),
                        )
                    )
                except FhirPathError as exc:
                    # A rule that cannot be checked is not a rule that holds: it keeps its own severity, so
                    # that an error-level invariant never lets its resource through as valid.
                    severity = "error" if c.severity == "error" else "warning"
                    message = f"Constraint {c.key} could not be evaluated: {exc}"
                    run.add(severity, "processing", message, expr, tree.url)
                    continue
            if not ok:
                severity = "error" if c.severity == "error" else "warning"
                run.add(severity, "invariant", f"Constraint failed: {c.key}: '{c.human}'", expr, tree.url)


# --- native invariants: the same meaning as their FHIRPath, without the interpreter ------------------------


def _contained(res: Any) -> list[dict[str, Any]]:
    return [c for c in as_list(res.get("contained")) if isinstance(c, dict)] if isinstance(res, dict) else []


def _dom_2(res: Any, root: Any = None) -> bool:
    return all(not c.get("contained") for c in _contained(res))


def _dom_4(res: Any, root: Any = None) -> bool:
    return all(
        not as_obj(c.get("meta")).get("versionId") and not as_obj(c.get("meta")).get("lastUpdated")
        for c in _contained(res)
    )


def _dom_5(res: Any, root: Any = None) -> bool:
    return all(not as_obj(c.get("meta")).get("security") for c in _contained(res))


def _dom_6(res: Any, root: Any = None) -> bool:
    return isinstance(res, dict) and bool(as_obj(res.get("text")).get("div"))


def _strings(node: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


_NARRATIVE_LOCAL_REF = re.compile(r"""\b(?:src|href)\s*=\s*["'](#[^"']+)["']""")


def _unreferenced_contained(res: Any) -> list[int]:
    """dom-3: indexes of contained resources that nothing refers to and that refer to nothing of their container."""
    contained = _contained(res)
    if not contained:
        return []
    outside = {k: v for k, v in res.items() if k != "contained"}
    refs: set[str] = set()
    for key, v in _strings(outside):
        if v.startswith("#"):
            refs.add(v)
        elif key == "div" and "#" in v:
            # The narrative may show or link a contained resource (<img src="#id">, <a href="#id">).
            refs.update(m.group(1) for m in _NARRATIVE_LOCAL_REF.finditer(v))
    # "#id" -> the contained resources that refer to it: one referred to by another contained resource is used.
    inner_refs: dict[str, set[int]] = {}
    for j, c in enumerate(contained):
        for _, v in _strings(c):
            if v.startswith("#"):
                inner_refs.setdefault(v, set()).add(j)
    bad = []
    for i, c in enumerate(contained):
        cid = c.get("id")
        if f"#{cid}" in refs or inner_refs.get(f"#{cid}", set()) - {i}:
            continue
        if "#" in {v for _, v in _strings(c)}:  # it refers to its container
            continue
        bad.append(i)
    return bad


# Text outside tags that is not whitespace: at the start or after a ">", blanks then something other than "<".
_TEXT_OUTSIDE_TAGS = re.compile(r"(?:^|>)\s*[^\s<]")


def _txt_2(item: Any, root: Any = None) -> bool:
    """txt-2: the narrative has some non-whitespace content (text outside the tags, or an image).

    Searched for rather than found by deleting the tags and stripping what is left (five times slower); an
    unclosed "<" is text as the deletion would leave it."""
    if not isinstance(item, str):
        return True
    return _TEXT_OUTSIDE_TAGS.search(item) is not None or item.rfind("<") > item.rfind(">") or "<img" in item


def _ref_1(item: Any, root: Any = None) -> bool:
    """ref-1: a local reference ("#id") needs that contained resource ("#" alone is the container)."""
    if not isinstance(item, dict):
        return True
    reference = item.get("reference")
    if not isinstance(reference, str) or not reference.startswith("#") or reference == "#":
        return True
    return reference[1:] in contained_by_id(root)


_NATIVE = {
    "dom-2": _dom_2,
    "dom-4": _dom_4,
    "dom-5": _dom_5,
    "dom-6": _dom_6,
    "txt-1": lambda item, root=None: not isinstance(item, str) or html_checks(item),
    "txt-2": _txt_2,
    "ref-1": _ref_1,
}


def _present(item: dict[str, Any], name: str) -> bool:
    """FHIRPath exists() for an element: a value, or for a primitive its extension-only companion."""
    value = item.get(name)
    return (value is not None and value != []) or f"_{name}" in item


def _choice_present(item: dict[str, Any], stem: str) -> bool:
    return any((k.startswith(stem) and k[len(stem) :][:1].isupper()) or k.startswith(f"_{stem}") for k in item)


def _codings_of(cc: Any) -> list[Any]:
    return list(as_list(cc.get("coding"))) if isinstance(cc, dict) else []


def _coded(cc: Any, system: str, codes: tuple[str, ...]) -> bool:
    return any(c.get("system") == system and c.get("code") in codes for c in _codings_of(cc) if isinstance(c, dict))


_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def _obs_7(item: Any, root: Any = None) -> bool:
    if not isinstance(item, dict) or not _choice_present(item, "value"):
        return True
    codes = _codings_of(item.get("code"))
    return not any(c in codes for comp in as_list(item.get("component")) for c in _codings_of(as_obj(comp).get("code")))


def _con_4(item: Any, root: Any = None) -> bool:
    return (
        not isinstance(item, dict)
        or not _choice_present(item, "abatement")
        or _coded(item.get("clinicalStatus"), _CLIN, ("resolved", "remission", "inactive"))
    )


def _con_3(item: Any, root: Any = None) -> bool:
    # As R4 wrote it: category.select($this='problem-list-item') compares a CodeableConcept with a string,
    # which is false, so the last clause holds only when there is no category at all.
    return (
        not isinstance(item, dict)
        or _present(item, "clinicalStatus")
        or _coded(item.get("verificationStatus"), _VER, ("entered-in-error",))
        or not item.get("category")
    )


def _entries(item: Any) -> list[Any]:
    return list(as_list(item.get("entry"))) if isinstance(item, dict) else []


def _bundle_entries_match(kinds: tuple[str, ...], element: str) -> Any:
    """bdl-3 / bdl-4: every entry has ``element`` exactly when the Bundle's type is one of ``kinds``.

    As FHIRPath has it, a Bundle without a type compares to empty, and all() of empties is false when there is
    any entry."""

    def check(item: Any, root: Any = None) -> bool:
        if not isinstance(item, dict):
            return True
        entries = _entries(item)
        kind = item.get("type")
        if kind is None:
            return not entries
        expected = kind in kinds
        return all((isinstance(e, dict) and _present(e, element)) == expected for e in entries)

    return check


def _bdl_7(item: Any, root: Any = None) -> bool:
    if not isinstance(item, dict) or item.get("type") == "history":
        return True
    seen: set[str] = set()
    for entry in _entries(item):
        if not isinstance(entry, dict) or not _present(entry, "fullUrl"):
            continue
        version = as_obj(as_obj(entry.get("resource")).get("meta")).get("versionId")
        key = f"{entry.get('fullUrl') or ''}{version or ''}"
        if key in seen:
            return False
        seen.add(key)
    return True


# Invariants with a native version of the same meaning, matched on their exact R4 expression (so a
# profile reusing a key for something else still goes through FHIRPath). They run on every resource.
def _first_entry_is(item: Any, bundle_type: str, resource_type: str) -> bool:
    """type = '<bundle_type>' implies entry.first().resource.is(<resource_type>): no first resource is empty,
    which an invariant takes as passing."""
    if not isinstance(item, dict) or item.get("type") != bundle_type:
        return True
    entries = as_list(item.get("entry"))
    first = entries[0] if entries and isinstance(entries[0], dict) else {}
    resource = first.get("resource")
    return not isinstance(resource, dict) or resource.get("resourceType") == resource_type


_NATIVE_EXPRESSIONS: dict[str, Any] = {
    "resource.exists() or request.exists() or response.exists()": lambda item, root=None: (
        not isinstance(item, dict) or any(_present(item, k) for k in ("resource", "request", "response"))
    ),
    "fullUrl.contains('/_history/').not()": lambda item, root=None: (
        not isinstance(item, dict) or "/_history/" not in str(item.get("fullUrl", ""))
    ),
    "dataAbsentReason.empty() or value.empty()": lambda item, root=None: (
        not isinstance(item, dict) or not (_present(item, "dataAbsentReason") and _choice_present(item, "value"))
    ),
    "value.empty() or component.code.where(coding.intersect(%resource.code.coding).exists()).empty()": _obs_7,
    "clinicalStatus.exists() or verificationStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/"
    "condition-ver-status' and code = 'entered-in-error').exists() or category.select($this='problem-list-item')"
    ".empty()": _con_3,
    "abatement.empty() or clinicalStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/"
    "condition-clinical' and (code='resolved' or code='remission' or code='inactive')).exists()": _con_4,
    "verificationStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/condition-ver-status' and "
    "code='entered-in-error').empty() or clinicalStatus.empty()": lambda item, root=None: (
        not isinstance(item, dict)
        or not _coded(item.get("verificationStatus"), _VER, ("entered-in-error",))
        or not _present(item, "clinicalStatus")
    ),
    "code.exists() or detail.exists()": lambda item, root=None: (
        not isinstance(item, dict) or _present(item, "code") or _present(item, "detail")
    ),
    "data.empty() or contentType.exists()": lambda item, root=None: (
        not isinstance(item, dict) or not _present(item, "data") or _present(item, "contentType")
    ),
    # The Bundle rules: on a large Bundle the interpreter takes a quarter of all validation time with these three.
    "entry.all(request.exists() = (%resource.type = 'batch' or %resource.type = 'transaction' or %resource.type = "
    "'history'))": _bundle_entries_match(("batch", "transaction", "history"), "request"),
    "entry.all(response.exists() = (%resource.type = 'batch-response' or %resource.type = 'transaction-response' or "
    "%resource.type = 'history'))": _bundle_entries_match(
        ("batch-response", "transaction-response", "history"), "response"
    ),
    "(type = 'history') or entry.where(fullUrl.exists()).select(fullUrl&resource.meta.versionId).isDistinct()": _bdl_7,
    "code.empty() or system.exists()": lambda item, root=None: (
        not isinstance(item, dict) or not _present(item, "code") or _present(item, "system")
    ),
    # Evaluated on every case Bundle (IPS HumanName and Observation rules, bdl-1/2/9/10/11/12): natives take
    # the interpreter out of the common path.
    "family.exists() or given.exists() or text.exists()": lambda item, root=None: (
        not isinstance(item, dict) or any(_present(item, k) for k in ("family", "given", "text"))
    ),
    "value.exists() or hasMember.exists() or component.exists() or dataAbsentReason.exists()": lambda item, root=None: (
        not isinstance(item, dict)
        or _choice_present(item, "value")
        or any(_present(item, k) for k in ("value", "hasMember", "component", "dataAbsentReason"))
    ),
    "component.exists() implies (component.value.exists() or component.dataAbsentReason.exists())": (
        lambda item, root=None: (
            not isinstance(item, dict)
            or not _present(item, "component")
            or any(
                _choice_present(c, "value") or _present(c, "dataAbsentReason")
                for c in as_list(item.get("component"))
                if isinstance(c, dict)
            )
        )
    ),
    "total.empty() or (type = 'searchset') or (type = 'history')": lambda item, root=None: (
        not isinstance(item, dict) or not _present(item, "total") or item.get("type") in ("searchset", "history")
    ),
    "entry.search.empty() or (type = 'searchset')": lambda item, root=None: (
        not isinstance(item, dict)
        or item.get("type") == "searchset"
        or not any(_present(e, "search") for e in as_list(item.get("entry")) if isinstance(e, dict))
    ),
    "type = 'document' implies (identifier.system.exists() and identifier.value.exists())": lambda item, root=None: (
        not isinstance(item, dict)
        or item.get("type") != "document"
        or (_present(as_obj(item.get("identifier")), "system") and _present(as_obj(item.get("identifier")), "value"))
    ),
    "type = 'document' implies (timestamp.hasValue())": lambda item, root=None: (
        not isinstance(item, dict) or item.get("type") != "document" or item.get("timestamp") is not None
    ),
    "type = 'document' implies entry.first().resource.is(Composition)": lambda item, root=None: _first_entry_is(
        item, "document", "Composition"
    ),
    "type = 'message' implies entry.first().resource.is(MessageHeader)": lambda item, root=None: _first_entry_is(
        item, "message", "MessageHeader"
    ),
}

# Invariants published wrong, checked as the reference validator corrects them (FHIRPathExpressionFixer): not the
# meaning of their FHIRPath, so apart from the natives above.
_CORRECTED: dict[str, Any] = {
    OPD_3_R4: opd_3,  # a resource parameter may have target profiles too (as R5 has it)
}
