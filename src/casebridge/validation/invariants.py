"""The invariants (constraints) of element definitions, checked on the values of their elements.

Each is a FHIRPath expression; the ones every resource carries (dom-*, txt-*, ref-1, the Bundle rules, the
common IPS rules) also have a native version of the same meaning here, matched on their key or exact R4
expression, which takes the interpreter out of the common path. So do the ElementDefinition (eld-*),
StructureDefinition (sdf-*), CodeSystem (csd-1), ContactPoint (cpt-2), OperationDefinition (opd-1, opd-2) and
CapabilityStatement (cpb-12) rules and the shared name rule (sdf-0, vsd-0, csd-0 ...), run on every element or
every entry of a definition: these decide the shapes valid JSON has and leave any other (a primitive extension on
a field the rule reads, a value of the wrong JSON type) to the interpreter. ele-1 and ext-1 are checked by the walk
itself.

Apart from the walk because it is the one place that runs FHIRPath, and the native table is checked against
the interpreter on its own (tests/unit/test_native_invariants.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from casebridge.definitions.structure import Constraint, StructureTree
from casebridge.validation.fhirpath import FhirPathError, Resolver, evaluate, full_match, html_checks, is_true
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
            # A native check answers True or False, or None for a shape it leaves to FHIRPath (a primitive's
            # extension, a value of the wrong JSON type), where the interpreter's own answer is the reference.
            ok = native(item, run.roots.get(id(res), res)) if native is not None else None
            if ok is None:
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
    # text.`div`.exists(): any value counts, an empty string or one of the wrong JSON type too (the walk reports
    # those), and so does a text repeated by mistake (FHIRPath flattens the array).
    text = res.get("text") if isinstance(res, dict) else None
    return any(isinstance(t, dict) and _present(t, "div") for t in (text if isinstance(text, list) else [text]))


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


def _no_type(item: dict[str, Any]) -> bool:
    """A Bundle's type is empty in FHIRPath (absent or null, with no extension): a comparison with it is empty, and
    so is an "or" of it with falses, which passes."""
    return item.get("type") is None and "_type" not in item


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
        if _no_type(item):
            return not entries
        expected = kind in kinds
        return all((isinstance(e, dict) and _present(e, element)) == expected for e in entries)

    return check


def _bdl_7(item: Any, root: Any = None) -> bool:
    if not isinstance(item, dict) or item.get("type") == "history" or _no_type(item):
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
        not isinstance(item, dict)
        or not _present(item, "total")
        or item.get("type") in ("searchset", "history")
        or _no_type(item)
    ),
    "entry.search.empty() or (type = 'searchset')": lambda item, root=None: (
        not isinstance(item, dict)
        or item.get("type") == "searchset"
        or _no_type(item)
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
TIM_9_R4 = "offset.empty() or (when.exists() and ((when in ('C' | 'CM' | 'CD' | 'CV')).not()))"
_MEAL_EVENTS = frozenset({"C", "CM", "CD", "CV"})


def _tim_9(repeat: Any, root: Any = None) -> bool:
    """An offset needs a when, and not a meal (C, CM, CD, CV). The interpreter refuses the union on the right of
    `in` (it wants a singleton there), where FHIRPath's `in` is membership in that collection."""
    if not isinstance(repeat, dict) or repeat.get("offset") is None:
        return True
    when = [w for w in as_list(repeat.get("when")) if isinstance(w, str)]
    return bool(when) and not any(w in _MEAL_EVENTS for w in when)


_CORRECTED: dict[str, Any] = {
    OPD_3_R4: opd_3,  # a resource parameter may have target profiles too (as R5 has it)
    TIM_9_R4: _tim_9,
}


# --- definitional resources: ElementDefinition (eld-*), StructureDefinition (sdf-*), CodeSystem (csd-1) --------
# About twenty invariants on every element of a snapshot and differential: through the interpreter they were
# nine tenths of the time spent on a StructureDefinition. Each native decides the shapes valid JSON has (fields
# absent or of their JSON type, no primitive extension "_name" on a field it reads) and answers None for any other,
# which goes to the interpreter: its three-valued logic on such shapes is the reference and is not copied here.

_UNDECIDED = None
# The types of the open choice elements (fixed[x], pattern[x], defaultValue[x]) and of minValue[x]/maxValue[x], as
# the interpreter's R4 model lists them: a key with another suffix is not the element.
_OPEN_TYPES = frozenset(
    "Base64Binary Boolean Canonical Code Date DateTime Decimal Id Instant Integer Markdown Oid PositiveInt String "
    "Time UnsignedInt Uri Url Uuid Address Age Annotation Attachment CodeableConcept Coding ContactPoint Count "
    "Distance Duration HumanName Identifier Money Period Quantity Range Ratio Reference SampledData Signature Timing "
    "ContactDetail Contributor DataRequirement Expression ParameterDefinition RelatedArtifact TriggerDefinition "
    "UsageContext Dosage Meta".split()
)
_MIN_MAX_TYPES = frozenset("Date DateTime Instant Time Decimal Integer PositiveInt UnsignedInt Quantity".split())
_INTEGER = re.compile(r"[+-]?[0-9]+")  # toInteger() of ASCII digits; other strings go to FHIRPath


def _plain(item: Any) -> bool:
    """An object with no primitive extensions: the shape the natives below decide."""
    return isinstance(item, dict) and not any(k[:1] == "_" for k in item)


def _plain_in(item: Any, *names: str) -> bool:
    """An object whose fields ``names`` have no primitive extension: enough for a rule that reads only those (the
    interpreter reads "_name" only with "name"; the core definitions put extensions on other fields, such as
    baseDefinition)."""
    return isinstance(item, dict) and all(f"_{n}" not in item for n in names)


def _has(item: dict[str, Any], name: str) -> bool:
    """exists() of a field of a plain object (a JSON null or [] is nothing)."""
    value = item.get(name)
    return value is not None and value != []


def _strings_or_absent(item: dict[str, Any], *names: str) -> bool:
    return all(isinstance(item.get(n), str) or not _has(item, n) for n in names)


def _objects(item: dict[str, Any], name: str) -> list[Any] | None:
    """A repeating element's plain objects ([] when absent), None for any other shape."""
    value = item.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(_plain(v) for v in value):
        return None
    return value


def _choice(item: dict[str, Any], stem: str, types: frozenset[str]) -> bool:
    """exists() of a choice element: stem + one of its type names."""
    return any(k.startswith(stem) and k[len(stem) :] in types and _has(item, k) for k in item)


def _codes(objects: list[Any], name: str) -> list[Any] | None:
    """select(name) over plain objects: their string values, None when one is not a string."""
    out = []
    for o in objects:
        if _has(o, name):
            value = o[name]
            if not isinstance(value, str):
                return None
            out.append(value)
    return out


def _eld_2(item: Any, root: Any = None) -> bool | None:
    # min.empty() or max.empty() or (max = '*') or iif(max != '*', min <= max.toInteger())
    if not _plain(item):
        return _UNDECIDED
    if not _has(item, "min") or not _has(item, "max"):
        return True
    low, high = item["min"], item["max"]
    if isinstance(low, bool) or not isinstance(low, int) or not isinstance(high, str):
        return _UNDECIDED
    if high == "*":
        return True
    if not _INTEGER.fullmatch(high):
        return _UNDECIDED  # toInteger() of anything else has rules of its own
    return low <= int(high)


def _eld_5(item: Any, root: Any = None) -> bool | None:
    if not _plain(item):
        return _UNDECIDED
    return not _has(item, "contentReference") or not (
        any(_has(item, k) for k in ("type", "example", "maxLength", "binding"))
        or _choice(item, "defaultValue", _OPEN_TYPES)
        or _choice(item, "fixed", _OPEN_TYPES)
        or _choice(item, "pattern", _OPEN_TYPES)
        or _choice(item, "minValue", _MIN_MAX_TYPES)
        or _choice(item, "maxValue", _MIN_MAX_TYPES)
    )


def _at_most_one_type(stem: str) -> Any:
    """eld-6 / eld-7: <stem>.empty() or (type.count() <= 1)."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain(item):
            return _UNDECIDED
        types = _objects(item, "type")
        if types is None:
            return _UNDECIDED
        return not _choice(item, stem, _OPEN_TYPES) or len(types) <= 1

    return check


def _eld_11(item: Any, root: Any = None) -> bool | None:
    # As R4 wrote it, type.select((code = 'code') or ...) gives a boolean, true or false, for every type that
    # has a code: exists() then holds whenever type.code is not empty, so the rule cannot fail on these shapes.
    if not _plain(item):
        return _UNDECIDED
    types = _objects(item, "type")
    return _UNDECIDED if types is None or _codes(types, "code") is None else True


def _distinct_of(name: str, key: str) -> Any:
    """eld-13 / eld-14 / cpb-12: <name>.select(<key>).isDistinct()."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain_in(item, name):
            return _UNDECIDED
        objects = _objects(item, name)
        values = None if objects is None else _codes(objects, key)
        if values is None:
            return _UNDECIDED
        return len(set(values)) == len(values)

    return check


def _both_not(first: str, second: str, first_types: frozenset[str] | None, second_types: frozenset[str] | None) -> Any:
    """<first>.empty() or <second>.empty(), either a plain field (types None) or a choice element."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain(item):
            return _UNDECIDED
        a = _choice(item, first, first_types) if first_types is not None else _has(item, first)
        b = _choice(item, second, second_types) if second_types is not None else _has(item, second)
        return not (a and b)

    return check


def _matches_or_empty(name: str, pattern: str) -> Any:
    """<name>.matches(pattern), or <name>.empty() or that: empty when the field is absent, which passes."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain(item):
            return _UNDECIDED
        if not _has(item, name):
            return True
        value = item[name]
        return full_match(pattern, value) if isinstance(value, str) else _UNDECIDED

    return check


def _eld_18(item: Any, root: Any = None) -> bool | None:
    # (isModifier.exists() and isModifier) implies isModifierReason.exists()
    if not _plain(item):
        return _UNDECIDED
    modifier = item.get("isModifier")
    if modifier is not None and not isinstance(modifier, bool):
        return _UNDECIDED
    return modifier is not True or _has(item, "isModifierReason")


def _implies_present(first: str, second: str) -> Any:
    """<first>.exists() implies <second>.exists() (eld-22, cpt-2 and others)."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain_in(item, first, second):
            return _UNDECIDED
        return not _has(item, first) or _has(item, second)

    return check


def _either_present(first: str, second: str) -> Any:
    """<first>.exists() or <second>.exists()."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain_in(item, first, second):
            return _UNDECIDED
        return _has(item, first) or _has(item, second)

    return check


def _eld_3(item: Any, root: Any = None) -> bool | None:
    # On ElementDefinition.max itself: empty() or ($this = '*') or (toInteger() >= 0)
    if not isinstance(item, str):
        return _UNDECIDED
    if item == "*":
        return True
    return int(item) >= 0 if _INTEGER.fullmatch(item) else _UNDECIDED


def _type_code_is_reference_or(other: str) -> Any:
    """eld-4 / eld-17: <other>.empty() or code is Reference or canonical. With no code the comparisons are
    empty, and so is the whole rule when <other> is there: an empty result passes."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain(item) or not _strings_or_absent(item, "code"):
            return _UNDECIDED
        return not _has(item, other) or not _has(item, "code") or item["code"] in ("Reference", "canonical")

    return check


def _eld_12(item: Any, root: Any = None) -> bool | None:
    # valueSet.exists() implies (valueSet.startsWith('http:') or valueSet.startsWith('https') or ... 'urn:')
    if not _plain(item) or not _strings_or_absent(item, "valueSet"):
        return _UNDECIDED
    return not _has(item, "valueSet") or item["valueSet"].startswith(("http:", "https", "urn:"))


def _sdf_10(item: Any, root: Any = None) -> bool | None:
    # binding.empty() or binding.valueSet.exists() or binding.description.exists()
    if not _plain(item):
        return _UNDECIDED
    if not _has(item, "binding"):
        return True
    binding = item["binding"]
    if not _plain(binding):
        return _UNDECIDED
    return _has(binding, "valueSet") or _has(binding, "description")


def _elements(item: Any, name: str | None = None) -> list[Any] | None:
    """The plain elements of a snapshot or differential (``name`` of a StructureDefinition, or the item itself),
    each with a string path; None for any other shape."""
    if name is not None:
        if not _plain_in(item, name):
            return None
        if not _has(item, name):
            return []
        item = item[name]
    if not _plain(item):
        return None
    elements = _objects(item, "element")
    if elements is None or not all(isinstance(e.get("path"), str) for e in elements):
        return None
    return elements


def _sd_elements(item: Any, *names: str) -> list[Any] | None:
    out: list[Any] = []
    for name in names:
        elements = _elements(item, name)
        if elements is None:
            return None
        out.extend(elements)
    return out


def _sdf_9(item: Any, root: Any = None) -> bool | None:
    # children().element.where(path.contains('.').not()).label.empty() and ... code ... and ... requirements
    elements = _sd_elements(item, "snapshot", "differential")
    if elements is None:
        return _UNDECIDED
    # children() are all the fields: only snapshot and differential are known to have an "element".
    for key, value in item.items():
        if key not in ("snapshot", "differential") and (
            (isinstance(value, dict) and "element" in value)
            or (isinstance(value, list) and any(isinstance(v, dict) and "element" in v for v in value))
        ):
            return _UNDECIDED
    return not any(
        "." not in e["path"] and (_has(e, "label") or _has(e, "code") or _has(e, "requirements")) for e in elements
    )


def _sdf_23(item: Any, root: Any = None) -> bool | None:
    # (snapshot | differential).element.all(path.contains('.').not() implies sliceName.empty())
    elements = _sd_elements(item, "snapshot", "differential")
    if elements is None:
        return _UNDECIDED
    return all("." in e["path"] or not _has(e, "sliceName") for e in elements)


_SDF_19_DIFFERENTIAL = "^[a-zA-Z0-9]+$"
_SDF_19_SNAPSHOT = "^[a-zA-Z0-9\\.]+$"
_SDF_19_SYSTEM = "^http:\\/\\/hl7\\.org\\/fhirpath\\/System\\.[A-Z][A-Za-z]+$"
_CORE_SD = "http://hl7.org/fhir/StructureDefinition"


def _type_codes(elements: list[Any]) -> list[Any] | None:
    out: list[Any] = []
    for e in elements:
        types = _objects(e, "type")
        codes = None if types is None else _codes(types, "code")
        if codes is None:
            return None
        out.extend(codes)
    return out


def _sdf_19(item: Any, root: Any = None) -> bool | None:
    # A core definition's type codes are simple names (a snapshot's may hold a dot) or FHIRPath system types.
    if not _plain_in(item, "url") or not _strings_or_absent(item, "url"):
        return _UNDECIDED
    if not _has(item, "url") or not item["url"].startswith(_CORE_SD):
        return True
    differential = _elements(item, "differential")
    snapshot = _elements(item, "snapshot")
    if differential is None or snapshot is None:
        return _UNDECIDED
    in_differential, in_snapshot = _type_codes(differential), _type_codes(snapshot)
    if in_differential is None or in_snapshot is None:
        return _UNDECIDED
    return all(full_match(_SDF_19_DIFFERENTIAL, c) or full_match(_SDF_19_SYSTEM, c) for c in in_differential) and all(
        full_match(_SDF_19_SNAPSHOT, c) or full_match(_SDF_19_SYSTEM, c) for c in in_snapshot
    )


def _all_elements_have(*names: str) -> Any:
    """sdf-3 / sdf-8b, on a snapshot: element.all(<name>.exists() and ...)."""

    def check(item: Any, root: Any = None) -> bool | None:
        elements = _elements(item)
        if elements is None:
            return _UNDECIDED
        return all(all(_has(e, n) for n in names) for e in elements)

    return check


def _sdf_14(item: Any, root: Any = None) -> bool | None:
    # snapshot.element.all(id.exists()) and differential.element.all(id.exists())
    elements = _sd_elements(item, "snapshot", "differential")
    return _UNDECIDED if elements is None else all(_has(e, "id") for e in elements)


def _ids_distinct(name: str) -> Any:
    """sdf-16 / sdf-17: <name>.element.all(id.exists()) and <name>.element.id.isDistinct()."""

    def check(item: Any, root: Any = None) -> bool | None:
        elements = _elements(item, name)
        ids = None if elements is None else _codes(elements, "id")
        if elements is None or ids is None:
            return _UNDECIDED
        return len(ids) == len(elements) and len(set(ids)) == len(ids)

    return check


def _sdf_22(item: Any, root: Any = None) -> bool | None:
    # url.startsWith('http://hl7.org/fhir/StructureDefinition') implies no element has a defaultValue
    if not _plain_in(item, "url") or not _strings_or_absent(item, "url"):
        return _UNDECIDED
    if not _has(item, "url") or not item["url"].startswith(_CORE_SD):
        return True
    elements = _sd_elements(item, "snapshot", "differential")
    if elements is None:
        return _UNDECIDED
    return not any(_choice(e, "defaultValue", _OPEN_TYPES) for e in elements)


def _sdf_1(item: Any, root: Any = None) -> bool | None:
    # derivation = 'constraint' or snapshot.element.select(path).isDistinct(): with no derivation the first
    # comparison is empty, and an empty result passes.
    if not _plain_in(item, "derivation") or not _strings_or_absent(item, "derivation"):
        return _UNDECIDED
    if not _has(item, "derivation") or item["derivation"] == "constraint":
        return True
    elements = _elements(item, "snapshot")
    if elements is None:
        return _UNDECIDED
    paths = [e["path"] for e in elements]
    return len(set(paths)) == len(paths)


def _sdf_20(item: Any, root: Any = None) -> bool | None:
    # On a differential: element.where(path.contains('.').not()).slicing.empty()
    elements = _elements(item)
    if elements is None:
        return _UNDECIDED
    return not any("." not in e["path"] and _has(e, "slicing") for e in elements)


def _own_definition(item: Any, root: Any, name: str) -> dict[str, Any] | None:
    """%resource for sdf-8 / sdf-8a, known when it is the root (not a contained resource): the StructureDefinition
    whose ``name`` (snapshot or differential) is ``item``, with a string kind and type."""
    if (
        isinstance(root, dict)
        and root.get("resourceType") == "StructureDefinition"
        and root.get(name) is item
        and _plain_in(root, "kind", "type", name)
        and isinstance(root.get("kind"), str)
        and isinstance(root.get("type"), str)
    ):
        return root
    return None


def _sdf_8(item: Any, root: Any = None) -> bool | None:
    # (%resource.kind = 'logical' or element.first().path = %resource.type) and
    # element.tail().all(path.startsWith(%resource.snapshot.element.first().path&'.'))
    sd = _own_definition(item, root, "snapshot")
    elements = _elements(item)
    if sd is None or not elements:
        return _UNDECIDED
    first = elements[0]["path"]
    prefix = f"{first}."
    return (sd["kind"] == "logical" or first == sd["type"]) and all(e["path"].startswith(prefix) for e in elements[1:])


def _sdf_8a(item: Any, root: Any = None) -> bool | None:
    # (%resource.kind = 'logical' or element.first().path.startsWith(%resource.type)) and (element.tail().empty()
    # or element.tail().all(path.startsWith(<first path up to its first dot>&'.')))
    sd = _own_definition(item, root, "differential")
    elements = _elements(item)
    if sd is None or not elements:
        return _UNDECIDED
    first = elements[0]["path"]
    prefix = f"{first.split('.', 1)[0]}."  # replaceMatches('\\..*', ''): all from the first dot
    return (sd["kind"] == "logical" or first.startswith(sd["type"])) and all(
        e["path"].startswith(prefix) for e in elements[1:]
    )


# The rules on the StructureDefinition itself, once per definition: the thousands of the core data elements Bundle
# made them most of its FHIRPath time. A comparison with an absent field is empty, and so is an "or" of empties
# and falses or an "implies" from empty to anything but true: an empty result passes, so each fails only when every
# field it compares is there.


def _sdf_4(item: Any, root: Any = None) -> bool | None:
    # abstract = true or baseDefinition.exists()
    if not _plain_in(item, "abstract", "baseDefinition"):
        return _UNDECIDED
    abstract = item.get("abstract")
    if abstract is None:
        return True  # empty or a boolean: never false
    if not isinstance(abstract, bool):
        return _UNDECIDED
    return abstract is True or _has(item, "baseDefinition")


def _sdf_5(item: Any, root: Any = None) -> bool | None:
    # type != 'Extension' or derivation = 'specialization' or (context.exists())
    if not _plain_in(item, "type", "derivation", "context") or not _strings_or_absent(item, "type", "derivation"):
        return _UNDECIDED
    return not (
        _has(item, "type")
        and item["type"] == "Extension"
        and _has(item, "derivation")
        and item["derivation"] != "specialization"
        and not _has(item, "context")
    )


def _kind_not_logical(item: dict[str, Any]) -> bool:
    """kind != 'logical' is true (not false, nor empty for want of a kind)."""
    return _has(item, "kind") and item["kind"] != "logical"


def _sdf_11(item: Any, root: Any = None) -> bool | None:
    # kind != 'logical' implies snapshot.empty() or snapshot.element.first().path = type
    if not _plain_in(item, "kind", "type", "snapshot") or not _strings_or_absent(item, "kind", "type"):
        return _UNDECIDED
    if not _kind_not_logical(item) or not _has(item, "snapshot"):
        return True
    elements = _elements(item, "snapshot")
    if elements is None:
        return _UNDECIDED
    return not elements or not _has(item, "type") or elements[0]["path"] == item["type"]


def _first_element_untyped(name: str, only_root: bool) -> Any:
    """sdf-15 (snapshot) / sdf-15a (differential, when its first element is a root, without a dot):
    kind != 'logical' and ... implies <name>.element.first().type.empty()."""

    def check(item: Any, root: Any = None) -> bool | None:
        if not _plain_in(item, "kind", name) or not _strings_or_absent(item, "kind"):
            return _UNDECIDED
        if not _kind_not_logical(item):
            return True
        elements = _elements(item, name)
        if elements is None:
            return _UNDECIDED
        if not elements or (only_root and "." in elements[0]["path"]):
            return True
        types = _objects(elements[0], "type")
        return _UNDECIDED if types is None else not types

    return check


def _sdf_18(item: Any, root: Any = None) -> bool | None:
    # contextInvariant.exists() implies type = 'Extension'
    if not _plain_in(item, "contextInvariant", "type") or not _strings_or_absent(item, "type"):
        return _UNDECIDED
    return not _has(item, "contextInvariant") or not _has(item, "type") or item["type"] == "Extension"


def _sdf_21(item: Any, root: Any = None) -> bool | None:
    # differential.element.defaultValue.exists() implies (derivation = 'specialization')
    if not _plain_in(item, "derivation") or not _strings_or_absent(item, "derivation"):
        return _UNDECIDED
    elements = _elements(item, "differential")
    if elements is None:
        return _UNDECIDED
    if not _has(item, "derivation") or not any(_choice(e, "defaultValue", _OPEN_TYPES) for e in elements):
        return True
    derivation: str = item["derivation"]
    return derivation == "specialization"


def _opd_2(item: Any, root: Any = None) -> bool | None:
    # On OperationDefinition.parameter: searchType.exists() implies type = 'string'
    if not _plain_in(item, "searchType", "type") or not _strings_or_absent(item, "type"):
        return _UNDECIDED
    return not _has(item, "searchType") or not _has(item, "type") or item["type"] == "string"


def _descendant_concept_codes(node: Any, depth: int, out: list[Any]) -> bool:
    """The codes of the concepts of every object below the CodeSystem (descendants().concept.code), into ``out``;
    False on a shape left to the interpreter (a primitive extension, a code that is not a string)."""
    if isinstance(node, list):
        return all(_descendant_concept_codes(v, depth, out) for v in node)
    if not isinstance(node, dict):
        return True
    if not _plain(node):
        return False
    if depth > 0 and _has(node, "concept"):
        concepts = _objects(node, "concept")
        codes = None if concepts is None else _codes(concepts, "code")
        if codes is None:
            return False
        out.extend(codes)
    return all(_descendant_concept_codes(v, depth + 1, out) for v in node.values())


def _csd_1(item: Any, root: Any = None) -> bool | None:
    # concept.code.combine($this.descendants().concept.code).isDistinct()
    if not _plain(item):
        return _UNDECIDED
    concepts = _objects(item, "concept")
    codes = None if concepts is None else _codes(concepts, "code")
    if codes is None or not _descendant_concept_codes(item, 0, codes):
        return _UNDECIDED
    return len(set(codes)) == len(codes)


def _vsd_9(item: Any, root: Any = None) -> bool | None:
    # On ValueSet.expansion.contains: code.exists() or abstract = true. With no code and no abstract the right side
    # is empty, and so is the whole, which passes.
    if not _plain(item):
        return _UNDECIDED
    if _has(item, "code") or item.get("abstract") is None:
        return True
    abstract = item["abstract"]
    return abstract if isinstance(abstract, bool) else _UNDECIDED


# By exact R4 expression, as above (benchmarks/bench_definitions.py times them against the interpreter).
DEFINITIONAL_NATIVES: dict[str, Any] = {
    "min.empty() or max.empty() or (max = '*') or iif(max != '*', min <= max.toInteger())": _eld_2,
    "contentReference.empty() or (type.empty() and defaultValue.empty() and fixed.empty() and pattern.empty() "
    "and example.empty() and minValue.empty() and maxValue.empty() and maxLength.empty() and binding.empty())": (
        _eld_5
    ),
    "fixed.empty() or (type.count()  <= 1)": _at_most_one_type("fixed"),
    "pattern.empty() or (type.count() <= 1)": _at_most_one_type("pattern"),
    "pattern.empty() or fixed.empty()": _both_not("pattern", "fixed", _OPEN_TYPES, _OPEN_TYPES),
    "binding.empty() or type.code.empty() or type.select((code = 'code') or (code = 'Coding') or "
    "(code='CodeableConcept') or (code = 'Quantity') or (code = 'string') or (code = 'uri')).exists()": _eld_11,
    "type.select(code).isDistinct()": _distinct_of("type", "code"),
    "constraint.select(key).isDistinct()": _distinct_of("constraint", "key"),
    "defaultValue.empty() or meaningWhenMissing.empty()": _both_not(
        "defaultValue", "meaningWhenMissing", _OPEN_TYPES, None
    ),
    "sliceName.empty() or sliceName.matches('^[a-zA-Z0-9\\\\/\\\\-_\\\\[\\\\]\\\\@]+$')": _matches_or_empty(
        "sliceName", "^[a-zA-Z0-9\\/\\-_\\[\\]\\@]+$"
    ),
    "(isModifier.exists() and isModifier) implies isModifierReason.exists()": _eld_18,
    "path.matches('[^\\\\s\\\\.,:;\\\\\\'\"\\\\/|?!@#$%&*()\\\\[\\\\]{}]{1,64}(\\\\.[^\\\\s\\\\.,:;\\\\\\'\"\\\\/|?!@#$%"
    "&*()\\\\[\\\\]{}]{1,64}(\\\\[x\\\\])?(\\\\:[^\\\\s\\\\.]+)?)*')": _matches_or_empty(
        "path",
        "[^\\s\\.,:;\\'\"\\/|?!@#$%&*()\\[\\]{}]{1,64}(\\.[^\\s\\.,:;\\'\"\\/|?!@#$%&*()\\[\\]{}]{1,64}(\\[x\\])?"
        "(\\:[^\\s\\.]+)?)*",
    ),
    "path.matches('[A-Za-z][A-Za-z0-9]*(\\\\.[a-z][A-Za-z0-9]*(\\\\[x])?)*')": _matches_or_empty(
        "path", "[A-Za-z][A-Za-z0-9]*(\\.[a-z][A-Za-z0-9]*(\\[x])?)*"
    ),
    "sliceIsConstraining.exists() implies sliceName.exists()": _implies_present("sliceIsConstraining", "sliceName"),
    "discriminator.exists() or description.exists()": _either_present("discriminator", "description"),
    "empty() or ($this = '*') or (toInteger() >= 0)": _eld_3,
    "aggregation.empty() or (code = 'Reference') or (code = 'canonical')": _type_code_is_reference_or("aggregation"),
    "(code='Reference' or code = 'canonical') or targetProfile.empty()": _type_code_is_reference_or("targetProfile"),
    "expression.exists()": lambda item, root=None: _has(item, "expression") if _plain(item) else _UNDECIDED,
    "valueSet.exists() implies (valueSet.startsWith('http:') or valueSet.startsWith('https') or "
    "valueSet.startsWith('urn:'))": _eld_12,
    "binding.empty() or binding.valueSet.exists() or binding.description.exists()": _sdf_10,
    "children().element.where(path.contains('.').not()).label.empty() and children().element.where(path.contains("
    "'.').not()).code.empty() and children().element.where(path.contains('.').not()).requirements.empty()": _sdf_9,
    "(snapshot | differential).element.all(path.contains('.').not() implies sliceName.empty())": _sdf_23,
    "url.startsWith('http://hl7.org/fhir/StructureDefinition') implies (differential.element.type.code.all("
    "matches('^[a-zA-Z0-9]+$') or matches('^http:\\\\/\\\\/hl7\\\\.org\\\\/fhirpath\\\\/System\\\\.[A-Z][A-Za-z]+$'"
    ")) and snapshot.element.type.code.all(matches('^[a-zA-Z0-9\\\\.]+$') or matches('^http:\\\\/\\\\/hl7\\\\.org"
    "\\\\/fhirpath\\\\/System\\\\.[A-Z][A-Za-z]+$')))": _sdf_19,
    "element.all(definition.exists() and min.exists() and max.exists())": _all_elements_have(
        "definition", "min", "max"
    ),
    "element.all(base.exists())": _all_elements_have("base"),
    "snapshot.element.all(id.exists()) and differential.element.all(id.exists())": _sdf_14,
    "snapshot.element.all(id.exists()) and snapshot.element.id.trace('ids').isDistinct()": _ids_distinct("snapshot"),
    "differential.element.all(id.exists()) and differential.element.id.trace('ids').isDistinct()": _ids_distinct(
        "differential"
    ),
    "url.startsWith('http://hl7.org/fhir/StructureDefinition') implies (snapshot.element.defaultValue.empty() and "
    "differential.element.defaultValue.empty())": _sdf_22,
    "derivation = 'constraint' or snapshot.element.select(path).isDistinct()": _sdf_1,
    "element.where(path.contains('.').not()).slicing.empty()": _sdf_20,
    "(%resource.kind = 'logical' or element.first().path = %resource.type) and element.tail().all(path.startsWith("
    "%resource.snapshot.element.first().path&'.'))": _sdf_8,
    "(%resource.kind = 'logical' or element.first().path.startsWith(%resource.type)) and (element.tail().empty() "
    "or element.tail().all(path.startsWith(%resource.differential.element.first().path.replaceMatches('\\\\..*',"
    "'')&'.')))": _sdf_8a,
    "concept.code.combine($this.descendants().concept.code).isDistinct()": _csd_1,
    "name.matches('[A-Z]([A-Za-z0-9_]){0,254}')": _matches_or_empty("name", "[A-Z]([A-Za-z0-9_]){0,254}"),
    # ValueSet.expansion.contains, thousands of them in a large expansion: vsd-6 and vsd-9.
    "code.exists() or display.exists()": _either_present("code", "display"),
    "code.exists() or abstract = true": _vsd_9,
    # The StructureDefinition's own rules (sdf-2, 4, 5, 6, 11, 15, 15a, 18, 21) and ContactPoint's cpt-2 (on the
    # contacts of every definition), the rest of the FHIRPath time of the core data elements Bundle.
    "name.exists() or uri.exists()": _either_present("name", "uri"),
    "abstract = true or baseDefinition.exists()": _sdf_4,
    "type != 'Extension' or derivation = 'specialization' or (context.exists())": _sdf_5,
    "snapshot.exists() or differential.exists()": _either_present("snapshot", "differential"),
    "kind != 'logical' implies snapshot.empty() or snapshot.element.first().path = type": _sdf_11,
    "kind!='logical' implies snapshot.element.first().type.empty()": _first_element_untyped("snapshot", False),
    "(kind!='logical'  and differential.element.first().path.contains('.').not()) implies differential.element."
    "first().type.empty()": _first_element_untyped("differential", True),
    "contextInvariant.exists() implies type = 'Extension'": _sdf_18,
    "differential.element.defaultValue.exists() implies (derivation = 'specialization')": _sdf_21,
    "value.empty() or system.exists()": _implies_present("value", "system"),
    # OperationDefinition.parameter (opd-1, opd-2) and CapabilityStatement.rest.resource (cpb-12), many of each
    # in the core resources Bundle.
    "type.exists() or part.exists()": _either_present("type", "part"),
    "searchType.exists() implies type = 'string'": _opd_2,
    "searchParam.select(name).isDistinct()": _distinct_of("searchParam", "name"),
}
_NATIVE_EXPRESSIONS.update(DEFINITIONAL_NATIVES)
