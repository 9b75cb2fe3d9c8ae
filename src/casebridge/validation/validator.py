"""The FHIR R4 validator: walks a resource's JSON against StructureDefinition snapshots.

Checks, per element: known properties, JSON shape (array or object), cardinality, data types
(including choice types and primitive formats), fixed and pattern values, bindings (required -> error,
extensible -> warning; codes of external systems -> information), invariants (FHIRPath, with native
versions of the ones every element carries), extensions against their definitions, references
(target types, and resolution inside a Bundle or among contained resources), and slicing. A resource
is checked against its base definition, or against the profiles it claims (``meta.profile``) and any
asked for; a profile that is not loaded is an error. A value whose type lists several profiles must conform
to one of them (none: an error, with each profile's own errors); a choice property of a type the base allows
but the profile rules out is an element of unknown type, not an unknown property.

Issues carry a FHIRPath ``expression`` in the form the HL7 Java validator uses: ``Patient.name[0]``,
``Observation.value.ofType(Quantity)``, ``Bundle.entry[2].resource/*Observation/id*/.code``;
cardinality problems are reported on the parent element, naming the element by its id (a slice's child as
``Parameters.parameter:p1.extension``).

This module is the walk itself: resources, their profiles, elements (cardinality, JSON shape, types and choice
types), primitives and extensions. It hands each value to the checks of its concern: ``bindings`` (terminology),
``invariants`` (FHIRPath and native constraints), ``references`` (resolution and target profiles), ``slicing``,
``values`` (patterns and min/max limits) and ``bundles`` (a Bundle's index and rules); ``issues`` holds what they
report (and is re-exported here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from casebridge.definitions.snapshot import SnapshotPathError, generate_snapshot, needs_snapshot
from casebridge.definitions.structure import (
    DefinitionError,
    Definitions,
    ElementNode,
    StructureTree,
    TypeRef,
    compile_structure,
)
from casebridge.definitions.xml import RepeatedElement
from casebridge.errors import log_defect
from casebridge.validation import extensions, narrative, primitives, questionnaire
from casebridge.validation.bindings import Bindings, codings
from casebridge.validation.bundles import bundle_rules, index_bundle
from casebridge.validation.documents import document_rules
from casebridge.validation.implied import implied_profiles
from casebridge.validation.invariants import CHECKED_IN_WALK, Active, Invariants
from casebridge.validation.issues import (
    MAX_OUTCOME_ISSUES,
    SEVERITY_RANK,
    Issue,
    Run,
    as_list,
    as_obj,
    has_errors,
    operation_outcome,
)
from casebridge.validation.measure import check_measure, check_measure_report
from casebridge.validation.operations import check_operation_definition
from casebridge.validation.references import check_reference, forget_contained
from casebridge.validation.slicing import check_slicing
from casebridge.validation.structures import check_structure_definition
from casebridge.validation.terminology import Terminology
from casebridge.validation.values import date_limits, fixed_value, matches_pattern, number_limits, quantity_limits

__all__ = [
    "MAX_CLAIMED_PROFILES",
    "MAX_DEPTH",
    "MAX_OUTCOME_ISSUES",
    "SEVERITY_RANK",
    "UNKNOWN_PROFILE_SEVERITIES",
    "Issue",
    "ValidationOptions",
    "Validator",
    "has_errors",
    "operation_outcome",
]

log = logging.getLogger(__name__)
MAX_CLAIMED_PROFILES = 20  # per resource (meta.profile and asked-for profiles together stay small)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
MAX_DEPTH = 200  # deeper than any real resource; a guard against hostile nesting
_SCALARS = frozenset({str, bool, int, float})
UNKNOWN_PROFILE_SEVERITIES = ("warning", "error")
_NUMBERS = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
_URI_TYPES = frozenset({"uri", "url", "canonical"})
# ele-1 as the reference validator words a failed invariant; the walk checks it itself (CHECKED_IN_WALK).
ELE_1 = (
    "Constraint failed: ele-1: 'All FHIR elements must have a @value or children' "
    "(defined in http://hl7.org/fhir/StructureDefinition/Element)"
)
EMPTY_VALUE = "value cannot be empty"


def is_example_url(url: str) -> bool:
    """A URL in the domains reserved for examples, as the reference validator recognises them."""
    return "example.org" in url or "acme.com" in url


_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9_\[\]]*")


def is_absolute_url(url: str) -> bool:
    """An absolute URL as the reference validator judges one (Utilities.isAbsoluteUrl): a scheme (http, https, urn
    or any lower-case token) and something after it, without spaces."""
    scheme, colon, details = url.partition(":")
    known = scheme in ("http", "https", "urn") or (_URL_SCHEME.fullmatch(scheme) is not None and scheme.islower())
    return bool(colon) and known and bool(details) and " " not in details


def _canonical_ok(value: str) -> bool:
    return value.startswith("#") or is_absolute_url(value)


@dataclass(frozen=True)
class ValidationOptions:
    """Policies a caller may choose (the HL7 validator has the same switches)."""

    no_html_in_markdown: bool = False  # markdown that holds HTML tags is an error
    validate_contained: bool = True  # check contained resources (False: skip them)
    # Profiles that apply to every resource of a type (an ImplementationGuide's "global" list).
    global_profiles: tuple[tuple[str, str], ...] = ()  # (resource type, profile canonical)
    # A profile a resource claims (meta.profile) that is not known: "warning", as the HL7 validator reports it (not
    # checked, the instance may still be valid), or "error" (nothing passes unchecked). A profile the caller asks
    # for is always an error: the caller meant it to be checked.
    unknown_profiles: str = "warning"
    # Unknown extensions in the domains reserved for examples (example.org, acme.com) are let through, as the HL7
    # validator does for examples; off, any extension whose definition is not loaded is an error.
    allow_example_extensions: bool = False
    # URLs in those domains in uri, url and canonical values: allowed (the specification reserves the domains
    # and does not forbid them), or an error, as the HL7 validator reports them unless told to allow examples.
    allow_example_urls: bool = True
    # A reference to a resource not in the input (Type/id on a server) names that resource's type: its type is
    # checked against the element's targets (as the HL7 validator does when told assumeValidRestReferences; its
    # default, off, checks only the targets it can resolve).
    assume_valid_rest_references: bool = True

    def __post_init__(self) -> None:
        if self.unknown_profiles not in UNKNOWN_PROFILE_SEVERITIES:
            raise ValueError(f"unknown_profiles must be one of {', '.join(UNKNOWN_PROFILE_SEVERITIES)}")


@dataclass(frozen=True, slots=True)
class _Child:
    node: ElementNode
    tree: StructureTree
    type_code: str | None  # implied by a choice property name, else the element's only type (None: several)
    type_ref: TypeRef | None  # the TypeRef of type_code
    name: str  # the element's name without [x]
    primitive: bool
    # A single primitive with nothing to check but its type: the walk checks its value in place (most
    # values of a resource are such; the full path costs five calls per value).
    plain: bool
    expression: str  # the item's expression relative to its parent's (".name" or ".name.ofType(T)")
    single: bool  # neither repeats nor is sliced: one value, checked without _property

    @classmethod
    def of(cls, node: ElementNode, tree: StructureTree, implied: str | None) -> _Child:
        # Worked out once per (element, tree): the walk asks for these on every value.
        type_code = implied or (node.types[0].code if len(node.types) == 1 else None)
        type_ref = next((t for t in node.types if t.code == type_code), None)
        name = node.name[:-3] if node.is_choice else node.name
        primitive = type_code in primitives.PRIMITIVES
        plain = (
            primitive
            and type_code != "markdown"
            and not node.repeats
            and node.fixed is None
            and node.pattern is None
            and node.binding is None
            and node.max_length is None
            and node.min_value is None
            and node.max_value is None
            and node.slicing is None
            and all(c.key in CHECKED_IN_WALK for c in node.constraints)
        )
        expression = f".{name}.ofType({type_code})" if node.is_choice and type_code else f".{name}"
        single = not node.repeats and not (node.slicing and node.slices)
        return cls(node, tree, type_code, type_ref, name, primitive, plain, expression, single)


@dataclass(frozen=True, slots=True)
class _ItemPlan:
    """What ``check_item`` does with a complex value of one element as one type, worked out once (the walk meets
    the same element thousands of times; each of these facts took a lookup or a call per value)."""

    node: ElementNode  # kept so that the plan's key (ids) cannot be reused by another object
    tree: StructureTree
    resource: bool  # the value is a resource (contained, Bundle.entry.resource...)
    extension: bool  # an extension, checked against its own definition
    inner: ElementNode  # where the value's children are defined
    inner_tree: StructureTree
    inner_active: Active  # the invariants of the type (or recursive element)
    inner_base: str
    active: Active  # the element's own invariants
    base: str
    checks: bool  # fixed, pattern, bindings, quantity limits, references or codes to check
    choices: tuple[str, ...]  # the type's profiles when it lists several: the value must conform to one of them


class Validator:
    """Validates resources against the definitions of a ``Definitions`` source. Reuse one instance:
    compiled trees and expansions are cached on it."""

    def __init__(
        self,
        definitions: Definitions,
        terminology: Terminology | None = None,
        options: ValidationOptions | None = None,
    ):
        self.definitions = definitions
        self.terminology = terminology or Terminology(definitions)
        self.options = options or ValidationOptions()
        self._trees: dict[str, StructureTree | None] = {}
        self.unusable: dict[str, str] = {}  # canonical -> why a definition that exists cannot be used
        self._lookups: dict[tuple[int, int], dict[str, _Child]] = {}
        self._required: dict[tuple[int, int], list[ElementNode]] = {}
        self._resource_types: dict[str, bool] = {}
        # Per element (the node is kept so that its id cannot be reused by another object); the reference
        # caches are references.py's.
        self._reference_target_cache: dict[int, tuple[ElementNode, tuple[str, ...], tuple[str, ...]]] = {}
        self._target_profile_cache: dict[tuple[int, str], tuple[ElementNode, tuple[str, ...]]] = {}
        self._plans: dict[tuple[int, int, str | None, int], _ItemPlan] = {}
        self.bindings = Bindings(self.definitions, self.terminology)
        self.invariants = Invariants(self.options.validate_contained)

    # --- definitions ----------------------------------------------------------------------------------

    def tree(self, canonical: str) -> StructureTree | None:
        if canonical not in self._trees:
            sd = self.definitions.get(canonical)
            if sd is None and "|" in canonical:
                sd = self.definitions.get(canonical.split("|")[0])
            if sd is None:
                return None  # not remembered: unknown URLs come from input, and would grow the cache forever
            tree = None
            if sd is not None and sd.get("resourceType") == "StructureDefinition":
                try:
                    tree = compile_structure(generate_snapshot(sd, self.definitions) if needs_snapshot(sd) else sd)
                except DefinitionError as exc:
                    self.unusable[canonical] = str(exc)
            self._trees[canonical] = tree
        return self._trees[canonical]

    def type_tree(self, type_code: str) -> StructureTree | None:
        key = f"type:{type_code}"
        if key not in self._trees:
            sd = self.definitions.core_definition(type_code)
            if sd is None:
                return None  # not remembered, as in tree()
            try:
                self._trees[key] = compile_structure(sd) if sd.get("snapshot") else None
            except DefinitionError as exc:  # a loose definition of a base type may be unusable
                self.unusable[key] = str(exc)
                self._trees[key] = None
        return self._trees[key]

    # --- entry points ---------------------------------------------------------------------------------

    def validate(
        self, resource: object, profiles: list[str] | tuple[str, ...] = (), *, unknown_profiles: str | None = None
    ) -> list[Issue]:
        """The issues of a resource against its base definition, the profiles it claims and ``profiles``;
        ``unknown_profiles`` ("warning" or "error") overrides the option of that name for this call."""
        run = Run()
        run.unknown_profiles = unknown_profiles or self.options.unknown_profiles
        if run.unknown_profiles not in UNKNOWN_PROFILE_SEVERITIES:
            raise ValueError(f"unknown_profiles must be one of {', '.join(UNKNOWN_PROFILE_SEVERITIES)}")
        if not isinstance(resource, dict):
            run.add("fatal", "structure", "The content is not a JSON object", "")
            return run.issues
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            run.add("fatal", "structure", "Unable to find resourceType property", "")
            return run.issues
        try:
            self._resource(resource, rtype, list(profiles), run, depth=0, container=None)
        except RecursionError:
            run.add("fatal", "structure", "The resource nests too deeply to be validated", rtype)
        except Exception as exc:  # noqa: BLE001 - any defect becomes a fatal issue, never a crash of the caller
            # A defect of ours, not of the input; the caller gets its type name too, not its text.
            log_defect(log, "validation failed on unforeseen input", exc)
            message = f"The validator could not finish on this input ({type(exc).__name__})"
            run.add("fatal", "exception", message, rtype)
        finally:
            forget_contained()  # built for this input only
        return run.issues

    # --- resources ------------------------------------------------------------------------------------

    def _resource(
        self,
        res: dict[str, Any],
        expr: str,
        profiles: list[str],
        run: Run,
        *,
        depth: int,
        container: dict[str, Any] | None,
    ) -> None:
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            run.add("error", "structure", "Unable to find resourceType property", expr)
            return
        base = self.type_tree(rtype)
        if base is None or base.kind != "resource" or base.abstract:
            why = "an abstract type, not a resource" if base is not None and base.abstract else "unknown"
            run.add("error", "structure", f"Unknown resource type '{rtype}' ({why})", expr)
            return
        # A contained resource's %rootResource is its container; any other resource is its own root.
        run.roots[id(res)] = run.roots.get(id(container), container) if container is not None else res
        rid = res.get("id")
        # Inside a Bundle or as a contained resource, paths name the resource: entry[0].resource/*Type/id*/
        # (/*Type/null*/ without an id, as the HL7 validator writes it).
        root_expr = f"{expr}/*{rtype}/{rid if isinstance(rid, str) else 'null'}*/" if expr != rtype else expr
        if rid is not None:
            if not isinstance(rid, str) or not _ID.fullmatch(rid):
                why = "Too long" if isinstance(rid, str) and len(rid) > 64 else "Invalid Characters"
                shown = f"({len(rid)} chars)" if why == "Too long" and isinstance(rid, str) else f"('{rid}')"
                run.add("error", "invalid", f"Invalid Resource id: {why} {shown}", f"{root_expr}.id")
        claimed = [p for p in as_list(as_obj(res.get("meta")).get("profile")) if isinstance(p, str)]
        if len(claimed) > MAX_CLAIMED_PROFILES:
            # Each profile is a full validation pass: a resource claiming thousands is an attack, not data.
            run.add(
                "error",
                "too-costly",
                f"{len(claimed)} profiles claimed; at most {MAX_CLAIMED_PROFILES} are checked",
                f"{root_expr}.meta.profile",
            )
            claimed = claimed[:MAX_CLAIMED_PROFILES]
        position = {url: i for i, url in reversed(list(enumerate(claimed)))}
        global_profiles = [p for t, p in self.options.global_profiles if t == rtype]
        if rtype == "StructureDefinition" and needs_snapshot(res):
            try:
                generate_snapshot(res, self.definitions)
            except SnapshotPathError as exc:  # its own paths are wrong (a missing base is not its fault)
                run.add("error", "invalid", f"Error generating Snapshot: {exc}", root_expr)
            except DefinitionError:
                pass
        trees = []
        for url in dict.fromkeys([*claimed, *profiles, *global_profiles]):
            tree = self.tree(url)
            if tree is None:
                # Never a silent pass: a profile we cannot check is reported, at the claim that names it. One only
                # claimed and unknown anywhere is the HL7 validator's warning (ValidationOptions.unknown_profiles);
                # one asked for, or known but unusable, is an error.
                where = f"{root_expr}.meta.profile[{position[url]}]" if url in position else root_expr
                if url in self.unusable:
                    run.add("error", "processing", f"Profile '{url}' could not be used: {self.unusable[url]}", where)
                else:
                    severity = run.unknown_profiles if url in position and url not in profiles else "error"
                    message = f"Profile reference '{url}' could not be resolved, so has not been checked"
                    run.add(severity, "processing", message, where)
            elif tree.type != rtype:
                run.add("error", "structure", f"The profile {url} is for {tree.type}, not {rtype}", root_expr)
            else:
                trees.append(tree)
        if rtype == "Observation":  # the only type the specification implies profiles for (vital signs)
            for url, reason in implied_profiles(rtype, res):
                tree = self.tree(url)
                if tree is not None and tree not in trees:
                    run.add("information", "informational", reason, root_expr)
                    trees.append(tree)
        if rtype == "Bundle":
            index_bundle(res, run, root_expr)
        for tree in trees or [base]:
            self._complex(res, tree.root, tree, root_expr, run, res, depth, is_root=True)
            self.invariants.check_all(tree.root.constraints, res, tree.root.path, root_expr, run, res, tree)
            if tree.derivation == "constraint":  # a profile's narrative language rules
                narrative.check_language_sections(self, tree, res, root_expr, run)
        if rtype in questionnaire.TYPES:  # a response against its Questionnaire; a Questionnaire's enableWhens
            questionnaire.check(self, res, rtype, root_expr, run)
        if rtype == "Bundle":
            bundle_rules(res, run, root_expr)
            document_rules(res, run, root_expr)
        elif rtype == "Measure":
            check_measure(res, self.definitions, run, root_expr)
        elif rtype == "MeasureReport":
            check_measure_report(res, self.definitions, run, root_expr)
        elif rtype == "StructureDefinition":
            check_structure_definition(res, self.definitions, run, root_expr)
        elif rtype == "OperationDefinition":
            check_operation_definition(res, self.definitions, run, root_expr)

    # --- complex elements -----------------------------------------------------------------------------

    def _lookup(self, node: ElementNode, tree: StructureTree) -> tuple[dict[str, _Child], list[ElementNode]]:
        key = (id(node), id(tree))
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = {}
            for child in node.children.values():
                for json_name, implied in child.json_names().items():
                    lookup[json_name] = _Child.of(child, tree, implied)
            self._lookups[key] = lookup
            self._required[key] = [
                c
                for c in node.children.values()
                if c.min > 0 or c.max is not None or any(s.min > 0 for s in c.slices.values())
            ]
        return lookup, self._required[key]

    def _children_of(
        self, node: ElementNode, tree: StructureTree, type_ref: TypeRef | None
    ) -> tuple[ElementNode, StructureTree, bool]:
        """Where the children of an element are defined: (node, tree, descended into a type definition)."""
        if node.children and not (len(node.types) > 1 and type_ref is not None):
            return node, tree, False
        # A choice of several types has children only when a profile constrains what they share (its
        # extensions): the value's own type defines its children.
        if node.content_reference:
            # contentReference names the element as the base type defines it, not as a profile constrains it.
            base = self.type_tree(tree.type) or tree
            target = base.by_id.get(node.content_reference.split("#", 1)[-1])
            if target is not None:
                return target, base, False
        if type_ref is not None:
            type_tree = None
            if type_ref.profiles and type_ref.code != "Extension":
                type_tree = self.tree(type_ref.profiles[0])
            if type_tree is None:
                type_tree = self.type_tree(type_ref.code)
            if type_tree is not None:
                return type_tree.root, type_tree, True
        return node, tree, False

    def _complex(
        self,
        obj: dict[str, Any],
        node: ElementNode,
        tree: StructureTree,
        expr: str,
        run: Run,
        res: dict[str, Any],
        depth: int,
        *,
        is_root: bool = False,
    ) -> None:
        if depth > MAX_DEPTH:
            raise RecursionError
        lookup, bounded = self._lookup(node, tree)
        counts: dict[int, int] = {}
        for key, value in obj.items():
            if key == "resourceType" and is_root:
                continue
            if key.startswith("_"):
                name = key[1:]
                child = lookup.get(name)
                if child is None and self._other_choice(name, name not in obj, node, tree, expr, run, counts):
                    continue
                if child is None or not child.primitive:
                    run.add("error", "structure", f"Unrecognized property '{key}'", expr)
                elif name not in obj:
                    self._property(name, None, value, child, expr, run, res, depth, counts)
                continue
            child = lookup.get(key)
            if child is None:
                if not self._other_choice(key, True, node, tree, expr, run, counts):
                    run.add("error", "structure", f"Unrecognized property '{key}'", expr)
                continue
            extra = obj.get("_" + key)
            if child.plain and extra is None and type(value) in _SCALARS:
                # What _property -> check_item -> _primitive would do for this value, without the calls.
                node_id = id(child.node)
                counts[node_id] = counts.get(node_id, 0) + 1
                self._value(value, child.type_code or "", False, expr + child.expression, run)
                continue
            if child.single and extra is None and type(value) is dict:
                # What _property does for one object of an element that neither repeats nor is sliced.
                node_id = id(child.node)
                counts[node_id] = counts.get(node_id, 0) + 1
                self.check_item(
                    value, None, child.node, child.tree, child.type_code, child.type_ref, expr + child.expression,
                    run, res, depth,
                )  # fmt: skip
                continue
            self._property(key, value, extra, child, expr, run, res, depth, counts)
        for child_node in bounded:
            count = counts.get(id(child_node), 0)
            if count == 0 and child_node.slices:
                # Absent, the element's slices were never matched (check_slicing counts them when present).
                for required in child_node.slices.values():
                    if required.min > 0:
                        message = (
                            f"Slice '{required.id}': a matching slice is required, but not found (from {tree.label})."
                            " Note that other slices are allowed in addition to this required slice"
                        )
                        run.add("error", "structure", message, expr, tree.url)
            if count < child_node.min:
                run.add(
                    "error",
                    "required",
                    f"{child_node.id}: minimum required = {child_node.min}, but only found {count} (from {tree.label})",
                    expr,
                    tree.url,
                )
            if child_node.max is not None and count > child_node.max:
                run.add(
                    "error",
                    "structure",
                    f"{child_node.id}: max allowed = {child_node.max}, but found {count} (from {tree.label})",
                    expr,
                    tree.url,
                )

    def _other_choice(
        self,
        name: str,
        count: bool,
        node: ElementNode,
        tree: StructureTree,
        expr: str,
        run: Run,
        counts: dict[int, int],
    ) -> bool:
        """A choice property of a type the base definition allows but a profile rules out (valueString where the
        profile keeps Quantity and CodeableConcept): the HL7 validator reads the element by the base definition, so
        it is there (its cardinality is met), of a type the profile does not know. Extensions are left out: their
        value types are checked against the extension's definition."""
        if tree.derivation != "constraint" or tree.type == "Extension":
            return False
        for child in node.children.values():
            stem = child.name[:-3]
            if not child.is_choice or not name.startswith(stem) or not name[len(stem) :][:1].isupper():
                continue
            suffix = name[len(stem) :]
            code = suffix[:1].lower() + suffix[1:]
            if code not in primitives.PRIMITIVES:
                code = suffix
            base = self.type_tree(tree.type)
            base_node = base.by_id.get(child.path) if base is not None else None
            if base_node is None or not any(t.code == code for t in base_node.types):
                return False
            if count:  # once: a primitive and its _ companion are one element
                counts[id(child)] = counts.get(id(child), 0) + 1
            valid = ", ".join(t.code for t in child.types)
            message = (
                f"The type of element {name} is not known - it could not be determined from the information "
                f"available. Valid types at this point are {valid}"
            )
            run.add("error", "structure", message, expr)
            return True
        return False

    def _property(
        self,
        key: str,
        value: Any,
        extra: Any,
        child: _Child,
        expr: str,
        run: Run,
        res: dict[str, Any],
        depth: int,
        counts: dict[int, int],
    ) -> None:
        node = child.node
        name = child.name
        type_code = child.type_code
        source = value if value is not None else extra
        if node.repeats and not isinstance(source, list):
            run.add(
                "error",
                "structure",
                f"The property {key} must be a JSON Array, not an Object (at {expr})",
                f"{expr}.{name}",
            )
            items: list[Any] = [source]
            extras: list[Any] = [extra if value is not None else None]
        elif not node.repeats and isinstance(source, RepeatedElement):
            # The same element more than once in XML: counted, so that its cardinality reports it.
            items, extras = list(source), []
        elif not node.repeats and isinstance(source, list):
            run.add(
                "error",
                "structure",
                f"The property {key} must be an Object, not an Array (at {expr})",
                f"{expr}.{name}",
            )
            return
        else:
            items = source if isinstance(source, list) else [source]
            extras = extra if isinstance(extra, list) else [extra] if extra is not None else []
            if value is not None and extra is not None and isinstance(extra, list) != node.repeats:
                # A primitive's companion (_name) has its value's shape: an array beside an array, one object
                # beside one value (as the HL7 validator's JSON reader requires).
                shape = ("a JSON Array, not an Object", "an Object, not an Array")[not node.repeats]
                run.add("error", "structure", f"The property _{key} must be {shape} (at {expr})", f"{expr}.{name}")
        if value is None:
            items, extras = [None] * len(items), items
        counts[id(node)] = counts.get(id(node), 0) + len(items)
        type_ref = child.type_ref
        n_extras = len(extras)
        if node.repeats:
            for i, item in enumerate(items):
                item_extra = extras[i] if i < n_extras else None
                self.check_item(
                    item, item_extra, node, child.tree, type_code, type_ref, f"{expr}.{name}[{i}]", run, res, depth
                )
        elif items:
            item_expr = f"{expr}.{name}.ofType({type_code})" if node.is_choice and type_code else f"{expr}.{name}"
            item_extra = extras[0] if n_extras else None
            self.check_item(items[0], item_extra, node, child.tree, type_code, type_ref, item_expr, run, res, depth)
        if node.slicing and node.slices:
            check_slicing(self, items, extras, node, child.tree, expr, type_code, run, res, depth)

    # --- one value ------------------------------------------------------------------------------------

    def check_item(
        self,
        item: Any,
        extra: Any,
        node: ElementNode,
        tree: StructureTree,
        type_code: str | None,
        type_ref: TypeRef | None,
        expr: str,
        run: Run,
        res: dict[str, Any],
        depth: int,
    ) -> None:
        """One value of ``node`` as ``type_code`` (``extra``: its primitive's ``_`` companion); slicing calls this
        for each value with the slice it matched."""
        if type_code is None:
            rtype = item.get("resourceType") if isinstance(item, dict) else None
            if isinstance(rtype, str) and node.types and all(self.is_resource_type(t.code) for t in node.types):
                # A profile may allow several resource types (Parameters.parameter.resource): the resource says which.
                type_ref = next((t for t in node.types if t.code == rtype), None)
                if type_ref is None:
                    allowed = ", ".join(t.code for t in node.types)
                    run.add(
                        "error", "structure", f"The type '{rtype}' is not valid here: it must be one of {allowed}", expr
                    )
                    return
                type_code = rtype
            elif node.children or node.content_reference:
                type_code = "BackboneElement"
            else:
                run.add("error", "structure", f"The type of element {node.path} is not known", expr)
                return
        if type_code in primitives.PRIMITIVES:
            self._primitive(item, extra, node, tree, type_code, expr, run, res, depth)
            return
        plan = self._plans.get((id(node), id(tree), type_code, id(type_ref)))
        if plan is None or plan.node is not node or plan.tree is not tree:
            plan = self._plan(node, tree, type_code, type_ref)
        if plan.resource:
            if node.name == "contained" and not self.options.validate_contained:
                return
            if not isinstance(item, dict):
                run.add("error", "structure", "A resource must be a JSON object", expr)
                return
            self._resource(
                item,
                expr,
                [p for p in (type_ref.profiles if type_ref else ())],
                run,
                depth=depth + 1,
                container=res if node.name == "contained" else None,
            )
            return
        if not isinstance(item, dict):
            run.add(
                "error", "structure", f"The property must be an Object, not a {type(item).__name__} (at {expr})", expr
            )
            return
        if not item or (len(item) == 1 and "id" in item):
            run.add("error", "invariant", ELE_1, expr)
        if plan.extension:
            self._extension(item, node, tree, expr, run, res, depth)
        elif not (plan.choices and self._profile_choices(item, plan.choices, expr, run, res, depth)):
            self._complex(item, plan.inner, plan.inner_tree, expr, run, res, depth + 1)
            if plan.inner_active:
                self.invariants.check(plan.inner_active, item, plan.inner_base, expr, run, res, plan.inner_tree)
        if plan.active:
            self.invariants.check(plan.active, item, plan.base, expr, run, res, tree)
        if not plan.checks:
            return
        if isinstance(node.fixed, dict):
            # Element by element: what the fixed value leaves out must be absent (a pattern would allow it).
            fixed_value(item, node.fixed, expr, tree.label, f"{tree.label}#{node.id}", run)
        elif node.fixed is not None and item != node.fixed:
            run.add("error", "value", f"Value does not match the fixed value of {node.path} (from {tree.label})", expr)
        if node.pattern is not None and not matches_pattern(item, node.pattern):
            run.add(
                "error", "value", f"Value does not match the required pattern of {node.path} (from {tree.label})", expr
            )
        if node.binding is not None and type_code in ("Coding", "CodeableConcept", "Quantity"):
            self.bindings.binding(item, type_code, node, tree, expr, run)
        for vs in node.additional_required:
            if type_code in ("Coding", "CodeableConcept"):
                self.bindings.binding(item, type_code, node, tree, expr, run, ("required", vs), additional=True)
        if type_code == "Quantity" and (node.min_value is not None or node.max_value is not None):
            quantity_limits(item, node, expr, run)
        if type_code == "Reference":
            check_reference(self, item, node, expr, run, run.roots.get(id(res), res))
        # A CodeableConcept's codings are checked with it, where its binding is known (a value set may give a
        # code a display of its own), not again each on its own.
        if type_code == "CodeableConcept" or (type_code == "Coding" and node.name != "coding"):
            for coding_expr, coding in codings(item, type_code, expr):
                self.bindings.known_code(coding, coding_expr, run, node)

    def _plan(self, node: ElementNode, tree: StructureTree, type_code: str, type_ref: TypeRef | None) -> _ItemPlan:
        resource = type_code == "Resource" or (type_code[:1].isupper() and self.is_resource_type(type_code))
        extension = type_code == "Extension" and node.name in ("extension", "modifierExtension") and not node.slice_name
        inner, inner_tree, inner_base = node, tree, ""
        inner_active: Active = ()
        choices: tuple[str, ...] = ()
        if not resource and not extension:
            inner, inner_tree, descended = self._children_of(node, tree, type_ref)
            if descended and type_ref is not None and len(type_ref.profiles) > 1 and type_code != "Extension":
                choices = type_ref.profiles
            if descended:
                inner_active, inner_base = self.invariants.active(inner.constraints), inner_tree.type
            elif node.content_reference and inner is not node:
                # A recursive element (Questionnaire.item.item) has the invariants of the one it names.
                inner_active, inner_base = self.invariants.active(inner.constraints), inner.path
        # FHIRPath knows a node's type from its path: a datatype's name gives type() and its children;
        # a backbone element needs its element path (for choices such as component.value).
        base = type_code if type_code not in ("BackboneElement", "Element") else node.path
        checks = (
            node.fixed is not None
            or node.pattern is not None
            or (node.binding is not None and type_code in ("Coding", "CodeableConcept", "Quantity"))
            or bool(node.additional_required)
            or type_code in ("Quantity", "Reference", "Coding", "CodeableConcept")
        )
        plan = _ItemPlan(
            node, tree, resource, extension, inner, inner_tree, inner_active, inner_base,
            self.invariants.active(node.constraints), base, checks, choices,
        )  # fmt: skip
        # Remembered only when no later-loaded definition could change it (a type profile not found now).
        unfound = (
            type_ref is not None
            and bool(type_ref.profiles)
            and type_code != "Extension"
            and any(self.tree(p) is None for p in type_ref.profiles[: max(1, len(choices))])
        )
        if self.type_tree(type_code) is not None and not unfound:
            self._plans[(id(node), id(tree), type_code, id(type_ref))] = plan
        return plan

    def _profile_choices(
        self, item: dict[str, Any], profiles: tuple[str, ...], expr: str, run: Run, res: dict[str, Any], depth: int
    ) -> bool:
        """A value whose type lists several profiles conforms to at least one of them (ElementDefinition.type.profile:
        "If multiple profiles are present, the element SHALL conform to at least one of them"). As the HL7 validator
        reports it: one match, that profile's issues; none, an error at the value, then every profile's own issues,
        each saying which profile it came from; several, a warning and their issues, said the same way. False when
        none of the profiles is loaded."""
        good: list[tuple[StructureTree, list[Issue]]] = []
        bad: list[tuple[StructureTree, list[Issue]]] = []
        for url in profiles:
            tree = self.tree(url)
            if tree is None:  # a profile we cannot load is no choice (the walk falls back to the base type)
                continue
            # What the value meets in the run is shared (the Bundle it is in, contained resources, ...): only the
            # issues are its own, to be judged per profile.
            sub = Run(
                bundle_index=run.bundle_index,
                roots=run.roots,
                conforms=run.conforms,
                bundle_type=run.bundle_type,
                by_type_id=run.by_type_id,
                unknown_profiles=run.unknown_profiles,
            )
            self._complex(item, tree.root, tree, expr, sub, res, depth + 1)
            self.invariants.check_all(tree.root.constraints, item, tree.type, expr, sub, res, tree)
            (bad if has_errors(sub.issues) else good).append((tree, sub.issues))
        if not good and not bad:
            return False  # none of them loaded: the walk checks the value against its base type
        if len(good) == 1:
            for issue in good[0][1]:
                run.add(issue.severity, issue.code, issue.message, issue.expression, issue.source)
            return True
        if good:
            urls = ", ".join(tree.url for tree, _ in good)
            run.add("warning", "structure", f"Found multiple matching profiles among {len(good)} choices: {urls}", expr)
        else:
            message = f"Unable to find a match for the specified profile among choices: {', '.join(profiles)}"
            run.add("error", "structure", message, expr)
        for tree, issues in good or bad:
            for issue in issues:
                message = f"{issue.message} (validating against {tree.label} [{tree.name}])"
                run.add(issue.severity, issue.code, message, issue.expression, issue.source)
        return True

    def is_resource_type(self, type_code: str) -> bool:
        known = self._resource_types.get(type_code)
        if known is None:
            tree = self.type_tree(type_code)
            known = tree is not None and tree.kind == "resource"
            if tree is not None:  # unknown codes come from input: not remembered
                self._resource_types[type_code] = known
        return known

    def _primitive(
        self,
        value: Any,
        extra: Any,
        node: ElementNode,
        tree: StructureTree,
        type_code: str,
        expr: str,
        run: Run,
        res: dict[str, Any],
        depth: int,
    ) -> None:
        if value is None and not extra:
            run.add("error", "invariant", ELE_1, expr)
            return
        if value is not None:
            if not self._value(value, type_code, bool(extra), expr, run):
                return
            if type_code in ("date", "dateTime", "instant") and (node.min_value or node.max_value):
                date_limits(value, node, expr, run)
            elif type_code in _NUMBERS and (node.min_value is not None or node.max_value is not None):
                number_limits(value, type_code, node, expr, run)
            if node.max_length is not None and isinstance(value, str) and len(value) > node.max_length:
                run.add(
                    "error", "too-long", f"value is longer than permitted maximum length of {node.max_length}", expr
                )
            if node.fixed is not None and value != node.fixed:
                run.add(
                    "error", "value", f"Value is '{value}' but is fixed to '{node.fixed}' (from {tree.label})", expr
                )
            if node.pattern is not None and value != node.pattern:
                message = f"Value is '{value}' but must be '{node.pattern}' (from {tree.label})"
                run.add("error", "value", message, expr)
            if type_code == "markdown" and self.options.no_html_in_markdown:
                tag = re.search(r"<[A-Za-z/!]", value)
                if tag:
                    message = (
                        f"The markdown contains content that appears to be an embedded HTML tag starting at "
                        f"'{value[tag.start() : tag.start() + 2]}'"
                    )
                    run.add("error", "invalid", message, expr)
            if node.binding is not None and type_code in ("code", "string", "uri"):
                self.bindings.code_binding(str(value), node, tree, expr, run)
        if value is None and (node.must_have_value or node.value_alternatives):
            self._value_absent(extra, node, tree, expr, run)
        if extra is not None and not isinstance(extra, dict):
            run.add("error", "structure", f"The _ companion of {node.name} must be an Object (at {expr})", expr)
        elif isinstance(extra, dict):
            # A primitive's companion is an Element: an id and extensions, nothing else.
            for key in extra:
                if key not in ("id", "extension"):
                    run.add("error", "structure", f"Unrecognized property '{key}'", expr)
            if "extension" in extra and not isinstance(extra["extension"], list):
                run.add("error", "structure", f"The property extension must be a JSON Array (at {expr})", expr)
            for i, ext in enumerate(as_list(extra.get("extension"))):
                if isinstance(ext, dict):
                    self._extension(ext, node, tree, f"{expr}.extension[{i}]", run, res, depth)
        if node.constraints and value is not None:
            self.invariants.check_all(node.constraints, value, None, expr, run, res, tree)

    def _value(self, value: Any, type_code: str, children: bool, expr: str, run: Run) -> bool:
        """The rules of a primitive value itself, for the walk's fast path and ``_primitive`` alike: its format
        (False when wrong: nothing more is checked), then example URLs and canonical URLs."""
        problem = primitives.check(type_code, value)
        if problem:
            run.add("error", "invalid" if "JSON" not in problem else "structure", problem, expr)
            if value == "" and not children:  # no value and no children either
                run.add("error", "invariant", ELE_1, expr)
            return False
        if type_code in _URI_TYPES:
            if not self.options.allow_example_urls and is_example_url(value):
                run.add("error", "invalid", f"Example URLs are not allowed in this context ({value})", expr)
            if type_code == "canonical" and not _canonical_ok(value):
                # datatypes.html#canonical: a canonical is an absolute URL, or a fragment reference to a contained
                # resource.
                message = f"Canonical URLs must be absolute URLs if they are not fragment references ({value})"
                run.add("error", "invalid", message, expr)
        return True

    def _value_absent(self, extra: Any, node: ElementNode, tree: StructureTree, expr: str, run: Run) -> None:
        """A primitive with extensions but no value, where the profile asks for a value (mustHaveValue) or
        allows its absence only with certain extensions (valueAlternatives) (R5 ElementDefinition, R4 extensions)."""
        if node.must_have_value:
            message = (
                f"The element definition ``{node.path}`` in the profile '{tree.url}' requires that a value be present "
                "in this element"
            )
            run.add("error", "business-rule", message, expr, tree.url)
            return
        urls = {e.get("url") for e in as_list(as_obj(extra).get("extension")) if isinstance(e, dict)}
        if not urls & set(node.value_alternatives):
            which = (
                f"the extension '{node.value_alternatives[0]}' must"
                if len(node.value_alternatives) == 1
                else f"one of the extensions '{', '.join(node.value_alternatives)}' must"
            )
            message = (
                f"The element definition ``{node.path}`` in the profile '{tree.url}' requires that if a value is not "
                f"present, {which} be present"
            )
            run.add("error", "business-rule", message, expr, tree.url)

    # --- extensions -----------------------------------------------------------------------------------

    def _extension(
        self,
        ext: dict[str, Any],
        node: ElementNode,
        tree: StructureTree,
        expr: str,
        run: Run,
        res: dict[str, Any],
        depth: int,
    ) -> None:
        url = ext.get("url")
        if not isinstance(url, str) or not url:
            # Three layers report it, as in the reference validator: the extension, then the element's
            # cardinality (no url) or the primitive (an empty one).
            run.add(
                "error",
                "required",
                "Extension.url is required in order to identify, use and validate the extension",
                expr,
            )
            base = self.type_tree("Extension")
            if url is None and base is not None:
                message = f"Extension.url: minimum required = 1, but only found 0 (from {base.label})"
                run.add("error", "structure", message, expr)
            elif url == "":
                run.add("error", "invalid", EMPTY_VALUE, f"{expr}.url")
                run.add("error", "invariant", ELE_1, f"{expr}.url")
            return
        if not self.options.allow_example_urls and is_example_url(url):
            run.add("error", "invalid", f"Example URLs are not allowed in this context ({url})", f"{expr}.url")
        has_value = any(k.startswith("value") for k in ext)
        if has_value == bool(ext.get("extension")):
            run.add("error", "invariant", "Must have either extensions or value[x], not both (ext-1)", expr)
        if not extensions.check_url(url, node, expr, run):
            # A relative URL names a part of a complex extension: its slice in the parent's definition
            # validates it.
            return
        definition = self.tree(url)
        if definition is None:
            if self.options.allow_example_extensions and ("example.org" in url or "acme.com" in url):
                run.add("information", "informational", f"Unknown extension {url}", expr)
            else:
                run.add("error", "structure", f"The extension {url} could not be found so is not allowed here", expr)
            base = self.type_tree("Extension")
            if base is not None:
                self._complex(ext, base.root, base, expr, run, res, depth + 1)
            return
        if definition.type != "Extension":
            run.add("error", "structure", f"The definition of {url} is not an extension", expr)
            return
        if "|" in url:  # extensibility.html: the url identifies the extension, never a version of it
            message = (
                "The extension URL must not contain a version. The extension was validated against version "
                f"{definition.version} of the extension"
            )
            run.add("error", "structure", message, f"{expr}[url='{url}']")
        extensions.check_modifier(node, definition, expr, run)
        extensions.check_context(self, ext, definition, expr, run, res)
        extensions.check_sub_extensions(ext, definition, expr, run)
        self._complex(ext, definition.root, definition, expr, run, res, depth + 1)
        self.invariants.check_all(definition.root.constraints, ext, "Extension", expr, run, res, definition)

    # --- conformance of other resources ---------------------------------------------------------------

    def conforms(self, value: Any, profiles: Sequence[str], run: Run) -> bool:
        """Whether a resource conforms to any of the profiles (a profile discriminator in slicing, a Reference's
        target profiles). Cached per run."""
        if not isinstance(value, dict) or "resourceType" not in value:
            return False
        for p in profiles:
            key = (id(value), p)
            if key not in run.conforms:
                run.conforms[key] = self.tree(p) is not None and not has_errors(
                    self.validate(value, [p], unknown_profiles=run.unknown_profiles)
                )
            if run.conforms[key]:
                return True
        return False
