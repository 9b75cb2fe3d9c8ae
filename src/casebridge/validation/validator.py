"""The FHIR R4 validator: walks a resource's JSON against StructureDefinition snapshots.

Checks, per element: known properties, JSON shape (array or object), cardinality, data types
(including choice types and primitive formats), fixed and pattern values, bindings (required -> error,
extensible -> warning; codes of external systems -> information), invariants (FHIRPath, with native
versions of the ones every element carries), extensions against their definitions, references
(target types, and resolution inside a Bundle or among contained resources), and slicing. A resource
is checked against its base definition, or against the profiles it claims (``meta.profile``) and any
asked for; a profile that is not loaded is an error.

Issues carry a FHIRPath ``expression`` in the form the HL7 Java validator uses: ``Patient.name[0]``,
``Observation.value.ofType(Quantity)``, ``Bundle.entry[2].resource/*Observation/id*/.code``;
cardinality problems are reported on the parent element.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from casebridge.definitions.snapshot import SnapshotPathError, generate_snapshot, needs_snapshot
from casebridge.definitions.structure import (
    Constraint,
    DefinitionError,
    Definitions,
    ElementNode,
    StructureTree,
    TypeRef,
    compile_structure,
)
from casebridge.errors import log_defect
from casebridge.validation import primitives, ucum
from casebridge.validation.fhirpath import FhirPathError, Resolver, evaluate, html_checks, is_true
from casebridge.validation.terminology import EXTERNAL_SYSTEMS, Terminology

log = logging.getLogger(__name__)
SEVERITY_RANK = {"fatal": 0, "error": 1, "warning": 2, "information": 3}
MAX_CLAIMED_PROFILES = 20  # per resource (meta.profile and asked-for profiles together stay small)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
MAX_DEPTH = 200  # deeper than any real resource; a guard against hostile nesting
MAX_OUTCOME_ISSUES = 1000  # issues listed in one OperationOutcome (Settings.max_outcome_issues)


@dataclass(frozen=True)
class Issue:
    severity: str  # fatal | error | warning | information
    code: str  # an OperationOutcome issue type: structure, required, value, invariant, code-invalid, ...
    message: str
    expression: str
    source: str | None = None  # the profile that raised it

    def __reduce__(self) -> tuple[Any, ...]:
        # Issues cross from the API's worker processes; compiled, the default pickling cannot set frozen fields.
        return (Issue, (self.severity, self.code, self.message, self.expression, self.source))

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "details": {"text": self.message},
            "expression": [self.expression],
        }
        if self.source:
            out["extension"] = [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-source",
                    "valueString": self.source,
                }
            ]
        return out


def operation_outcome(issues: list[Issue], max_issues: int = MAX_OUTCOME_ISSUES) -> dict[str, Any]:
    """The issues as an OperationOutcome, most severe first (in their order within a severity).

    At most ``max_issues`` of them, then one issue saying how many more were left out: 40,000 invalid entries
    made a 39 MB answer. The most severe come first, so an outcome with errors still shows errors."""
    ordered = sorted(issues, key=lambda i: SEVERITY_RANK.get(i.severity, 9))
    if not ordered:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "details": {"text": "No issues"}}],
        }
    limit = max(1, max_issues)
    shown = [i.to_fhir() for i in ordered[:limit]]
    left_out = ordered[limit:]
    if left_out:
        counts: dict[str, int] = {}
        for i in left_out:
            counts[i.severity] = counts.get(i.severity, 0) + 1
        by_severity = ", ".join(f"{s}: {n}" for s, n in counts.items())
        text = f"{len(left_out)} more issues were left out ({by_severity}); at most {limit} are listed"
        shown.append({"severity": "information", "code": "too-costly", "details": {"text": text}})
    return {"resourceType": "OperationOutcome", "issue": shown}


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)


@dataclass(frozen=True)
class ValidationOptions:
    """Policies a caller may choose (the HL7 validator has the same switches)."""

    no_html_in_markdown: bool = False  # markdown that holds HTML tags is an error
    validate_contained: bool = True  # check contained resources (False: skip them)
    # Profiles that apply to every resource of a type (an ImplementationGuide's "global" list).
    global_profiles: tuple[tuple[str, str], ...] = ()  # (resource type, profile canonical)


@dataclass
class _Run:
    issues: list[Issue] = field(default_factory=list)
    bundle_index: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    roots: dict[int, dict[str, Any]] = field(default_factory=dict)  # id(resource) -> its %rootResource
    conforms: dict[tuple[int, str], bool] = field(default_factory=dict)  # (id(resource), profile) -> conforms
    bundle_type: str | None = None  # the type of the Bundle being validated, if any
    by_type_id: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "Type/id" -> bundle entries

    def add(self, severity: str, code: str, message: str, expression: str, source: str | None = None) -> None:
        key = (severity, expression, message)
        if key not in self.seen:
            self.seen.add(key)
            self.issues.append(Issue(severity, code, message, expression, source))


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
            and all(c.key in _CHECKED_IN_WALK for c in node.constraints)
        )
        expression = f".{name}.ofType({type_code})" if node.is_choice and type_code else f".{name}"
        single = not node.repeats and not (node.slicing and node.slices)
        return cls(node, tree, type_code, type_ref, name, primitive, plain, expression, single)


@dataclass(frozen=True, slots=True)
class _ItemPlan:
    """What ``_item`` does with a complex value of one element as one type, worked out once (the walk meets
    the same element thousands of times; each of these facts took a lookup or a call per value)."""

    node: ElementNode  # kept so that the plan's key (ids) cannot be reused by another object
    tree: StructureTree
    resource: bool  # the value is a resource (contained, Bundle.entry.resource...)
    extension: bool  # an extension, checked against its own definition
    inner: ElementNode  # where the value's children are defined
    inner_tree: StructureTree
    inner_active: tuple[tuple[Constraint, Any], ...]  # the invariants of the type (or recursive element)
    inner_base: str
    active: tuple[tuple[Constraint, Any], ...]  # the element's own invariants
    base: str
    checks: bool  # fixed, pattern, bindings, quantity limits, references or codes to check


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
        # Per element (the node is kept so that its id cannot be reused by another object).
        self._reference_target_cache: dict[int, tuple[ElementNode, tuple[str, ...]]] = {}
        self._target_profile_cache: dict[tuple[int, str], tuple[ElementNode, tuple[str, ...]]] = {}
        self._plans: dict[tuple[int, int, str | None, int], _ItemPlan] = {}
        # id(constraint tuple) -> (the tuple, kept so the id stays its own; (constraint, native check) pairs)
        self._prepared: dict[
            int, tuple[tuple[Constraint, ...] | list[Constraint], tuple[tuple[Constraint, Any], ...]]
        ] = {}

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

    def validate(self, resource: object, profiles: list[str] | tuple[str, ...] = ()) -> list[Issue]:
        run = _Run()
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
            _CONTAINED_INDEX.clear()  # built for this input only
        return run.issues

    # --- resources ------------------------------------------------------------------------------------

    def _resource(
        self,
        res: dict[str, Any],
        expr: str,
        profiles: list[str],
        run: _Run,
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
        root_expr = f"{expr}/*{rtype}/{rid}*/" if expr != rtype and isinstance(rid, str) else expr
        if rid is not None:
            if not isinstance(rid, str) or not _ID.fullmatch(rid):
                why = "Too long" if isinstance(rid, str) and len(rid) > 64 else "Invalid Characters"
                shown = f"({len(rid)} chars)" if why == "Too long" and isinstance(rid, str) else f"('{rid}')"
                run.add("error", "invalid", f"Invalid Resource id: {why} {shown}", f"{root_expr}.id")
        claimed = [p for p in _arr(_obj(res.get("meta")).get("profile")) if isinstance(p, str)]
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
                # Never a silent pass: a profile we cannot check is an error, at the claim that names it.
                where = f"{root_expr}.meta.profile[{position[url]}]" if url in position else root_expr
                message = (
                    f"Profile '{url}' could not be used: {self.unusable[url]}"
                    if url in self.unusable
                    else f"Profile reference '{url}' could not be resolved, so has not been checked"
                )
                run.add("error", "processing", message, where)
            elif tree.type != rtype:
                run.add("error", "structure", f"The profile {url} is for {tree.type}, not {rtype}", root_expr)
            else:
                trees.append(tree)
        if rtype == "Bundle":
            self._index_bundle(res, run, root_expr)
        for tree in trees or [base]:
            self._complex(res, tree.root, tree, root_expr, run, res, depth, is_root=True)
            self._constraints(tree.root.constraints, res, tree.root.path, root_expr, run, res, tree)
        if rtype == "Bundle":
            self._bundle_rules(res, run, root_expr)

    def _index_bundle(self, bundle: dict[str, Any], run: _Run, expr: str) -> None:
        index: dict[str, dict[str, Any]] = {}
        full_urls: dict[str, int] = {}
        for i, entry in enumerate(_arr(bundle.get("entry"))):
            if not isinstance(entry, dict):
                continue
            resource = entry.get("resource")
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str):
                if full_url in full_urls and isinstance(resource, dict):
                    other = _obj(bundle["entry"][full_urls[full_url]].get("resource"))
                    if _obj(other.get("meta")).get("versionId") == _obj(resource.get("meta")).get("versionId"):
                        run.add(
                            "error",
                            "invalid",
                            f"Duplicate fullUrl '{full_url}' in the bundle (entries {full_urls[full_url]} and {i})",
                            f"{expr}.entry[{i}]",
                        )
                full_urls.setdefault(full_url, i)
                if isinstance(resource, dict):
                    index[full_url] = resource
            if (
                isinstance(resource, dict)
                and isinstance(resource.get("resourceType"), str)
                and isinstance(resource.get("id"), str)
            ):
                key = f"{resource['resourceType']}/{resource['id']}"
                index.setdefault(key, resource)
                run.by_type_id.setdefault(key, []).append(resource)
        run.bundle_index = index
        bundle_type = bundle.get("type")
        run.bundle_type = bundle_type if isinstance(bundle_type, str) else ""

    def _bundle_rules(self, bundle: dict[str, Any], run: _Run, expr: str) -> None:
        relations: set[object] = set()
        for i, link in enumerate(_arr(bundle.get("link"))):
            relation = link.get("relation") if isinstance(link, dict) else None
            if relation in ("self", "first", "previous", "next", "last") and relation in relations:
                message = f"The link relationship type '{relation}' can only occur once"
                run.add("error", "invalid", message, f"{expr}.link[{i}]")
            relations.add(relation)
        for i, entry in enumerate(_arr(bundle.get("entry"))):
            if not isinstance(entry, dict):
                continue
            full_url = entry.get("fullUrl")
            resource = _obj(entry.get("resource"))
            named = (
                re.match(r"^https?://.+/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$", full_url or "")
                if isinstance(full_url, str)
                else None
            )
            if named and isinstance(resource.get("id"), str) and resource.get("resourceType"):
                if (named.group(1), named.group(2)) != (resource["resourceType"], resource["id"]):
                    message = (
                        f"The fullUrl '{full_url}' does not match the resource "
                        f"{resource['resourceType']}/{resource['id']}"
                    )
                    run.add("error", "invalid", message, f"{expr}.entry[{i}]")
            # Any absolute URI (a scheme, then a colon) will do; a relative one will not.
            if isinstance(full_url, str) and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", full_url):
                run.add(
                    "error", "invalid", f"The fullUrl must be an absolute URL (not '{full_url}')", f"{expr}.entry[{i}]"
                )

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
            self._required[key] = [c for c in node.children.values() if c.min > 0 or c.max is not None]
        return lookup, self._required[key]

    def _children_of(
        self, node: ElementNode, tree: StructureTree, type_ref: TypeRef | None
    ) -> tuple[ElementNode, StructureTree, bool]:
        """Where the children of an element are defined: (node, tree, descended into a type definition)."""
        if node.children:
            return node, tree, False
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
        run: _Run,
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
                if child is None or not child.primitive:
                    run.add("error", "structure", f"Unrecognized property '{key}'", expr)
                elif name not in obj:
                    self._property(name, None, value, child, expr, run, res, depth, counts)
                continue
            child = lookup.get(key)
            if child is None:
                run.add("error", "structure", f"Unrecognized property '{key}'", expr)
                continue
            extra = obj.get("_" + key)
            if child.plain and extra is None and type(value) in _SCALARS:
                # What _property -> _item -> _primitive would do for this value, without the calls.
                node_id = id(child.node)
                counts[node_id] = counts.get(node_id, 0) + 1
                problem = primitives.check(child.type_code or "", value)
                if problem:
                    code = "invalid" if "JSON" not in problem else "structure"
                    run.add("error", code, problem, expr + child.expression)
                continue
            if child.single and extra is None and type(value) is dict:
                # What _property does for one object of an element that neither repeats nor is sliced.
                node_id = id(child.node)
                counts[node_id] = counts.get(node_id, 0) + 1
                self._item(
                    value, None, child.node, child.tree, child.type_code, child.type_ref, expr + child.expression,
                    run, res, depth,
                )  # fmt: skip
                continue
            self._property(key, value, extra, child, expr, run, res, depth, counts)
        for child_node in bounded:
            count = counts.get(id(child_node), 0)
            if count < child_node.min:
                run.add(
                    "error",
                    "required",
                    f"{child_node.path}: minimum required = {child_node.min}, but only found {count}"
                    f" (from {tree.label})",
                    expr,
                    tree.url,
                )
            if child_node.max is not None and count > child_node.max:
                run.add(
                    "error",
                    "structure",
                    f"{child_node.path}: max allowed = {child_node.max}, but found {count} (from {tree.label})",
                    expr,
                    tree.url,
                )

    def _property(
        self,
        key: str,
        value: Any,
        extra: Any,
        child: _Child,
        expr: str,
        run: _Run,
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
        if value is None:
            items, extras = [None] * len(items), items
        counts[id(node)] = counts.get(id(node), 0) + len(items)
        type_ref = child.type_ref
        n_extras = len(extras)
        if node.repeats:
            for i, item in enumerate(items):
                item_extra = extras[i] if i < n_extras else None
                self._item(
                    item, item_extra, node, child.tree, type_code, type_ref, f"{expr}.{name}[{i}]", run, res, depth
                )
        elif items:
            item_expr = f"{expr}.{name}.ofType({type_code})" if node.is_choice and type_code else f"{expr}.{name}"
            item_extra = extras[0] if n_extras else None
            self._item(items[0], item_extra, node, child.tree, type_code, type_ref, item_expr, run, res, depth)
        if node.slicing and node.slices:
            self._slicing(items, extras, node, child.tree, expr, type_code, run, res, depth)

    # --- one value ------------------------------------------------------------------------------------

    def _item(
        self,
        item: Any,
        extra: Any,
        node: ElementNode,
        tree: StructureTree,
        type_code: str | None,
        type_ref: TypeRef | None,
        expr: str,
        run: _Run,
        res: dict[str, Any],
        depth: int,
    ) -> None:
        if type_code is None:
            if node.children or node.content_reference:
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
            run.add("error", "invariant", "All FHIR elements must have a @value or children (ele-1)", expr)
        if plan.extension:
            self._extension(item, node, tree, expr, run, res, depth)
        else:
            self._complex(item, plan.inner, plan.inner_tree, expr, run, res, depth + 1)
            if plan.inner_active:
                self._check_constraints(plan.inner_active, item, plan.inner_base, expr, run, res, plan.inner_tree)
        if plan.active:
            self._check_constraints(plan.active, item, plan.base, expr, run, res, tree)
        if not plan.checks:
            return
        if node.fixed is not None and item != node.fixed:
            run.add("error", "value", f"Value does not match the fixed value of {node.path} (from {tree.label})", expr)
        if node.pattern is not None and not _matches_pattern(item, node.pattern):
            run.add(
                "error", "value", f"Value does not match the required pattern of {node.path} (from {tree.label})", expr
            )
        if node.binding is not None and type_code in ("Coding", "CodeableConcept", "Quantity"):
            self._binding(item, type_code, node, tree, expr, run)
        for vs in node.additional_required:
            if type_code in ("Coding", "CodeableConcept"):
                self._binding(item, type_code, node, tree, expr, run, ("required", vs))
        if type_code == "Quantity" and (node.min_value is not None or node.max_value is not None):
            self._quantity_limits(item, node, expr, run)
        if type_code == "Reference":
            self._reference(item, node, expr, run, run.roots.get(id(res), res))
        if type_code in ("Coding", "CodeableConcept"):
            for coding_expr, coding in _codings(item, type_code, expr):
                self._known_code(coding, coding_expr, run)

    def _plan(self, node: ElementNode, tree: StructureTree, type_code: str, type_ref: TypeRef | None) -> _ItemPlan:
        resource = type_code == "Resource" or (type_code[:1].isupper() and self.is_resource_type(type_code))
        extension = type_code == "Extension" and node.name in ("extension", "modifierExtension") and not node.slice_name
        inner, inner_tree, inner_base = node, tree, ""
        inner_active: tuple[tuple[Constraint, Any], ...] = ()
        if not resource and not extension:
            inner, inner_tree, descended = self._children_of(node, tree, type_ref)
            if descended:
                inner_active, inner_base = self._active(inner.constraints), inner_tree.type
            elif node.content_reference and inner is not node:
                # A recursive element (Questionnaire.item.item) has the invariants of the one it names.
                inner_active, inner_base = self._active(inner.constraints), inner.path
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
            self._active(node.constraints), base, checks,
        )  # fmt: skip
        # Remembered only when no later-loaded definition could change it (a type profile not found now).
        unfound = (
            type_ref is not None
            and bool(type_ref.profiles)
            and type_code != "Extension"
            and self.tree(type_ref.profiles[0]) is None
        )
        if self.type_tree(type_code) is not None and not unfound:
            self._plans[(id(node), id(tree), type_code, id(type_ref))] = plan
        return plan

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
        run: _Run,
        res: dict[str, Any],
        depth: int,
    ) -> None:
        if value is None and not extra:
            run.add("error", "structure", "All FHIR elements must have a @value or children (ele-1)", expr)
            return
        if value is not None:
            problem = primitives.check(type_code, value)
            if problem:
                run.add("error", "invalid" if "JSON" not in problem else "structure", problem, expr)
                return
            if type_code in ("date", "dateTime", "instant") and (node.min_value or node.max_value):
                self._date_limits(value, node, expr, run)
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
                self._code_binding(str(value), node, tree, expr, run)
        if extra is not None and not isinstance(extra, dict):
            run.add("error", "structure", f"The _ companion of {node.name} must be an Object (at {expr})", expr)
        elif isinstance(extra, dict):
            # A primitive's companion is an Element: an id and extensions, nothing else.
            for key in extra:
                if key not in ("id", "extension"):
                    run.add("error", "structure", f"Unrecognized property '{key}'", expr)
            if "extension" in extra and not isinstance(extra["extension"], list):
                run.add("error", "structure", f"The property extension must be a JSON Array (at {expr})", expr)
            for i, ext in enumerate(_arr(extra.get("extension"))):
                if isinstance(ext, dict):
                    self._extension(ext, node, tree, f"{expr}.extension[{i}]", run, res, depth)
        if node.constraints and value is not None:
            self._constraints(node.constraints, value, None, expr, run, res, tree)

    # --- extensions -----------------------------------------------------------------------------------

    def _extension(
        self,
        ext: dict[str, Any],
        node: ElementNode,
        tree: StructureTree,
        expr: str,
        run: _Run,
        res: dict[str, Any],
        depth: int,
    ) -> None:
        url = ext.get("url")
        if not isinstance(url, str) or not url:
            run.add(
                "error",
                "required",
                "Extension.url is required in order to identify, use and validate the extension",
                expr,
            )
            return
        has_value = any(k.startswith("value") for k in ext)
        if has_value == bool(ext.get("extension")):
            run.add("error", "invariant", "Must have either extensions or value[x], not both (ext-1)", expr)
        if ":" not in url:
            # A relative URL names a part of a complex extension: its slice in the parent's definition
            # validates it.
            return
        definition = self.tree(url)
        if definition is None:
            run.add("error", "structure", f"The extension {url} could not be found so is not allowed here", expr)
            base = self.type_tree("Extension")
            if base is not None:
                self._complex(ext, base.root, base, expr, run, res, depth + 1)
            return
        if definition.type != "Extension":
            run.add("error", "structure", f"The definition of {url} is not an extension", expr)
            return
        self._complex(ext, definition.root, definition, expr, run, res, depth + 1)
        self._constraints(definition.root.constraints, ext, "Extension", expr, run, res, definition)

    # --- references -----------------------------------------------------------------------------------

    def _reference(self, item: dict[str, Any], node: ElementNode, expr: str, run: _Run, res: dict[str, Any]) -> None:
        reference = item.get("reference")
        if not isinstance(reference, str):
            return
        target_type: str | None = None
        resolved: dict[str, Any] | None = None
        if reference.startswith("#"):
            # A missing contained target is ref-1's failure, reported by that invariant.
            target = _contained_by_id(res).get(reference[1:])
            if target is None and reference != "#":
                return
            resolved = target if target is not None else res
            target_type = resolved.get("resourceType")
        elif reference in run.bundle_index:
            resolved = run.bundle_index[reference]
            target_type = resolved.get("resourceType")
        elif reference.startswith(("urn:uuid:", "urn:oid:")):
            if run.bundle_type in ("transaction", "batch"):
                # A transaction's URN references must be entries: the server cannot resolve them.
                message = f"Bundled or contained reference not found within the bundle/resource {reference}"
                run.add("error", "structure", message, expr)
            elif run.bundle_type is not None:
                run.add("warning", "structure", "URN reference is not locally contained within the bundle", expr)
            return
        else:
            m = _REFERENCE.search(reference)
            if m:
                target_type = m.group(1)
                self._bundle_match(reference, f"{m.group(1)}/{m.group(2)}", expr, run)
                matches = run.by_type_id.get(f"{m.group(1)}/{m.group(2)}", [])
                resolved = matches[0] if len(matches) == 1 else None
        if target_type is None:
            return
        allowed = self._reference_targets(node)
        if allowed and "Resource" not in allowed and target_type not in allowed:
            run.add(
                "error",
                "structure",
                f"Invalid Resource target type. Found {target_type}, but expected one of ({', '.join(allowed)})",
                expr,
            )
            return
        if resolved is not None:
            self._target_profiles(resolved, target_type, node, expr, run)

    def _reference_targets(self, node: ElementNode) -> tuple[str, ...]:
        """The resource types an element's Reference may point to (empty: any), worked out once per element."""
        cached = self._reference_target_cache.get(id(node))
        if cached is None or cached[0] is not node:
            allowed = tuple(
                self._profile_type(p) for t in node.types if t.code == "Reference" for p in t.target_profiles
            )
            cached = (node, allowed)
            if self._all_known(node):
                self._reference_target_cache[id(node)] = cached
        return cached[1]

    def _all_known(self, node: ElementNode) -> bool:
        # Only what no later-loaded definition can change is remembered (an unknown profile is read from its URL).
        return all(self._is_type_url(p) or self.tree(p) is not None for t in node.types for p in t.target_profiles)

    def _target_profiles(
        self, target: dict[str, Any], target_type: str, node: ElementNode, expr: str, run: _Run
    ) -> None:
        """A resolved target must conform to one of the element's target profiles for its type (core
        definitions need no check: the target is validated as itself anyway)."""
        key = (id(node), target_type)
        cached = self._target_profile_cache.get(key)
        if cached is None or cached[0] is not node:
            found = [
                p
                for t in node.types
                if t.code == "Reference"
                for p in t.target_profiles
                if not self._is_type_url(p) and self._profile_type(p) == target_type
            ]
            if any(
                self._is_type_url(p) and self._profile_type(p) == target_type
                for t in node.types
                for p in t.target_profiles
            ):
                found = []
            cached = (node, tuple(found))
            # Not remembered for a type nobody defines: target types come from input (a Reference(Any) takes any).
            if self._all_known(node) and self.type_tree(target_type) is not None:
                self._target_profile_cache[key] = cached
        profiles = cached[1]
        if not profiles:
            return
        if not self._conforms(target, profiles, run):
            message = (
                f"The resource {target_type} referred to does not conform to any of the target profiles "
                f"({', '.join(profiles)})"
            )
            run.add("error", "structure", message, expr)

    def _bundle_match(self, reference: str, key: str, expr: str, run: _Run) -> None:
        """A Type/id reference inside a Bundle must not be ambiguous, and a version it names must be there."""
        matches = run.by_type_id.get(key, [])
        version = reference.split("/_history/", 1)[1] if "/_history/" in reference else None
        if version is not None:
            if matches and not any((r.get("meta") or {}).get("versionId") == version for r in matches):
                run.add("error", "not-found", f"Can't find '{reference}' in the bundle", expr)
        elif len(matches) > 1:
            run.add("error", "invalid", f"Multiple matches in bundle for reference {reference}", expr)

    def _is_type_url(self, canonical: str) -> bool:
        """Whether a canonical is a type's own core definition (Patient), not a profile (vitalsigns)."""
        url = canonical.split("|")[0]
        name = url.rsplit("/", 1)[-1]
        return url == f"http://hl7.org/fhir/StructureDefinition/{name}" and self.type_tree(name) is not None

    def _profile_type(self, canonical: str) -> str:
        if self._is_type_url(canonical):
            return canonical.split("|")[0].rsplit("/", 1)[-1]
        tree = self.tree(canonical)
        return tree.type if tree is not None else canonical.rsplit("/", 1)[-1]

    # --- terminology ----------------------------------------------------------------------------------

    def _vs_label(self, canonical: str) -> str:
        vs = self.definitions.get(canonical) or self.definitions.get(canonical.split("|")[0]) or {}
        name = vs.get("title") or vs.get("name")
        return f"'{name}' ({canonical})" if name else f"'{canonical}'"

    def _code_binding(self, value: str, node: ElementNode, tree: StructureTree, expr: str, run: _Run) -> None:
        strength, vs = node.binding  # type: ignore[misc]
        if strength not in ("required", "extensible"):
            return
        codes = self.terminology.codes_by_value(vs)
        expansion = self.terminology.expand(vs)
        if codes is None or expansion is None:
            run.add(
                "warning", "not-found", f"The value set {vs} is not known, so the code '{value}' was not checked", expr
            )
            return
        if value in codes or not expansion.complete:
            return
        severity = "error" if strength == "required" else "warning"
        run.add(
            severity,
            "code-invalid",
            f"The value provided ('{value}') was not found in the value set {self._vs_label(vs)}, and a code is "
            f"{'required' if strength == 'required' else 'recommended'} from this value set",
            expr,
        )

    def _binding(
        self,
        item: dict[str, Any],
        type_code: str,
        node: ElementNode,
        tree: StructureTree,
        expr: str,
        run: _Run,
        binding: tuple[str, str] | None = None,
    ) -> None:
        strength, vs = binding or node.binding  # type: ignore[misc]
        if strength not in ("required", "extensible") or type_code == "Quantity":
            return
        codings = [c for _, c in _codings(item, type_code, expr)]
        expansion = self.terminology.expand(vs)
        if expansion is None:
            run.add("warning", "not-found", f"The value set {vs} is not known, so the codes were not checked", expr)
            return
        if not codings:
            if strength == "required" and type_code == "CodeableConcept":
                run.add(
                    "error",
                    "code-invalid",
                    f"No code provided, and a code is required from the value set {self._vs_label(vs)}",
                    expr,
                )
            return
        unchecked = []
        for c in codings:
            system, code = c.get("system"), c.get("code")
            if not isinstance(code, str) or not isinstance(system, (str, type(None))):
                continue  # a wrong shape is reported by the structure walk
            if (system, code) in expansion.codes:
                return
            # An enumerated value set decides even for SNOMED CT or LOINC codes; only an open one cannot.
            if system in expansion.open_systems or not expansion.complete:
                unchecked.append(f"{system}#{code}")
        if unchecked:
            run.add(
                "information",
                "informational",
                f"The code {unchecked[0]} cannot be checked against {self._vs_label(vs)} offline",
                expr,
            )
            return
        severity = "error" if strength == "required" else "warning"
        verb = "must" if strength == "required" else "should"
        run.add(
            severity,
            "code-invalid",
            f"None of the codings provided are in the value set {self._vs_label(vs)}, and a coding {verb} come "
            "from this value set",
            expr,
        )

    def _quantity_limits(self, item: dict[str, Any], node: ElementNode, expr: str, run: _Run) -> None:
        value = item.get("value")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        for limit, word, below in ((node.min_value, "minValue", True), (node.max_value, "maxValue", False)):
            if not isinstance(limit, dict) or not isinstance(limit.get("value"), (int, float)):
                continue
            unit, limit_unit = item.get("code") or item.get("unit"), limit.get("code") or limit.get("unit")
            shown = f"{value} {unit or ''}".strip()
            limit_shown = f"{limit['value']} {limit_unit or ''}".strip()
            systems = {item.get("system"), limit.get("system")} - {None}
            if unit == limit_unit and len(systems) <= 1:
                ours, theirs = (float(value), ""), (float(limit["value"]), "")  # the same unit, known or not
            else:
                converted = ucum.to_base(value, unit), ucum.to_base(limit["value"], limit_unit)
                if converted[0] is None or converted[1] is None or converted[0][1] != converted[1][1]:
                    # Not checked is not within the limit: the profile's rule stays an error.
                    message = f"The value {shown} could not be compared with the {word} {limit_shown}: no conversion"
                    run.add("error", "processing", message, expr)
                    continue
                ours, theirs = converted[0], converted[1]
            if (ours[0] < theirs[0]) if below else (ours[0] > theirs[0]):
                relation = "less" if below else "greater"
                message = (
                    f"The value in the instance ({shown}) is {relation} than the specified {word} "
                    f"({limit_shown}) after UCUM conversion"
                )
                run.add("error", "invalid", message, expr)

    def _date_limits(self, value: str, node: ElementNode, expr: str, run: _Run) -> None:
        """min/maxValue on dates: a fixed date, or a Duration from today (e.g. "at most 10 years ahead")."""
        try:
            day = dt.date.fromisoformat(value[:10]) if len(value) >= 10 else None
        except ValueError:
            return
        if day is None:
            return
        for limit, below in ((node.min_value, True), (node.max_value, False)):
            bound: dt.date | None = None
            if isinstance(limit, str):
                try:
                    bound = dt.date.fromisoformat(limit[:10])
                except ValueError:
                    continue
            elif isinstance(limit, dict) and isinstance(limit.get("value"), (int, float)):
                days = ucum.to_base(float(limit["value"]), limit.get("code") or limit.get("unit"))
                if days is None or days[1] != "time":
                    continue
                bound = dt.date.today() + dt.timedelta(seconds=days[0])
            if bound is None:
                continue
            if (day < bound) if below else (day > bound):
                word = "earlier" if below else "later"
                run.add("error", "invalid", f"The value '{value}' is {word} than the limit {bound.isoformat()}", expr)

    def _known_code(self, coding: dict[str, Any], expr: str, run: _Run) -> None:
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str) or system in EXTERNAL_SYSTEMS:
            return
        cs = self.terminology.code_system(system)
        if cs is None or not cs.complete:
            return
        if code not in cs.codes:
            run.add("error", "code-invalid", f"Unknown code '{code}' in the CodeSystem '{system}'", expr)
            return
        display = coding.get("display")
        if isinstance(display, str) and cs.codes[code] and display.lower() != cs.codes[code].lower():
            run.add(
                "warning",
                "invalid",
                f"Wrong Display Name '{display}' for {system}#{code}. Valid display is '{cs.codes[code]}'",
                expr,
            )

    # --- invariants -----------------------------------------------------------------------------------

    def _constraints(
        self,
        constraints: tuple[Constraint, ...] | list[Constraint],
        item: Any,
        base: str | None,
        expr: str,
        run: _Run,
        res: dict[str, Any],
        tree: StructureTree,
    ) -> None:
        if constraints:
            active = self._active(constraints)
            if active:
                self._check_constraints(active, item, base, expr, run, res, tree)

    def _active(self, constraints: tuple[Constraint, ...] | list[Constraint]) -> tuple[tuple[Constraint, Any], ...]:
        """Once per constraint list: the ones the walk does not check itself, each with its native check."""
        prepared = self._prepared.get(id(constraints))
        if prepared is None or prepared[0] is not constraints:
            active = tuple(
                (c, _NATIVE.get(c.key) or _NATIVE_EXPRESSIONS.get(c.expression))
                for c in constraints
                if c.key not in _CHECKED_IN_WALK
            )
            prepared = self._prepared[id(constraints)] = (constraints, active)
        return prepared[1]

    def _check_constraints(
        self,
        active: tuple[tuple[Constraint, Any], ...],
        item: Any,
        base: str | None,
        expr: str,
        run: _Run,
        res: dict[str, Any],
        tree: StructureTree,
    ) -> None:
        for c, native in active:
            if c.key == "dom-3":
                # Reported on each unreferenced contained resource, as the HL7 validator does; skipped
                # with the contained resources when the caller asked for that.
                if self.options.validate_contained and isinstance(item, dict):
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

    # --- slicing --------------------------------------------------------------------------------------

    def _slicing(
        self,
        items: list[Any],
        extras: list[Any],
        node: ElementNode,
        tree: StructureTree,
        parent_expr: str,
        type_code: str | None,
        run: _Run,
        res: dict[str, Any],
        depth: int,
    ) -> None:
        slicing = node.slicing
        assert slicing is not None
        slices = list(node.slices.values())
        counts = {s.slice_name: 0 for s in slices}
        for i, item in enumerate(items):
            extra = extras[i] if i < len(extras) else None
            if item is None and extra is None:
                continue
            item_expr = _item_expression(parent_expr, node, type_code, i)
            match = next((s for s in slices if self._in_slice(item, type_code, s, slicing.discriminators, run)), None)
            if match is None:
                if slicing.rules == "closed":
                    message = f"This element does not match any known slice defined in the profile {tree.label}"
                    run.add("error", "structure", message, item_expr)
                continue
            counts[match.slice_name] += 1
            codes = [t.code for t in match.types]
            slice_type = type_code if type_code in codes else codes[0] if len(codes) == 1 else type_code
            type_ref = next((t for t in match.types if t.code == slice_type), None)
            self._item(item, extra, match, tree, slice_type, type_ref, item_expr, run, res, depth)
        for s in slices:
            count = counts[s.slice_name]
            if count < s.min:
                run.add(
                    "error",
                    "structure",
                    f"Slice '{s.id}': a matching slice is required, but not found (from {tree.label})",
                    parent_expr,
                    tree.url,
                )
            if s.max is not None and count > s.max:
                run.add(
                    "error",
                    "structure",
                    f"{s.id}: max allowed = {s.max}, but found {count} (from {tree.label})",
                    parent_expr,
                    tree.url,
                )

    def _in_slice(
        self,
        item: Any,
        type_code: str | None,
        slice_node: ElementNode,
        discriminators: tuple[Any, ...],
        run: _Run,
    ) -> bool:
        if not discriminators:
            return False
        constrained = False
        for d in discriminators:
            path = d.path.strip().removeprefix("$this.")
            if d.type in ("value", "pattern"):
                expected = self._expected_at(slice_node, path)
                if expected is _MISSING:
                    continue  # this slice leaves that path open: it matches any value there
                constrained = True
                if not any(_matches_pattern(v, expected) for v, _ in _typed_values_at(item, path, type_code)):
                    return False
                continue
            constrained = True
            if d.type == "exists":
                target = _node_at(slice_node, path)
                present = bool(list(_typed_values_at(item, path, type_code)))
                if target is None or present != (target.min > 0 or target.max != 0):
                    return False
            elif d.type == "type":
                target = _node_at(slice_node, path)
                if target is None:
                    return False
                wanted = {t.code for t in target.types}
                values = list(_typed_values_at(item, path, type_code))
                if not values or not all(actual in wanted for _, actual in values):
                    return False
            elif d.type == "profile":
                target = _node_at(slice_node, path)
                profiles = [p for t in (target.types if target else ()) for p in t.profiles]
                # Named apart from the (value, type) pairs above: compiled, a variable keeps one type.
                resources = [v for v, _ in _typed_values_at(item, path, type_code)]
                if not profiles or not resources or not all(self._conforms(r, profiles, run) for r in resources):
                    return False
            else:
                return False
        return constrained

    def _conforms(self, value: Any, profiles: Sequence[str], run: _Run) -> bool:
        """Whether a resource conforms to any of the profiles (a profile discriminator). Cached per run."""
        if not isinstance(value, dict) or "resourceType" not in value:
            return False
        for p in profiles:
            key = (id(value), p)
            if key not in run.conforms:
                run.conforms[key] = self.tree(p) is not None and not has_errors(self.validate(value, [p]))
            if run.conforms[key]:
                return True
        return False

    def _expected_at(self, slice_node: ElementNode, path: str) -> Any:
        if path in ("url",) and slice_node.types and slice_node.types[0].code == "Extension":
            target = _node_at(slice_node, "url")
            if target is not None and target.fixed is not None:
                return target.fixed
            profiles = slice_node.types[0].profiles
            return profiles[0] if profiles else _MISSING
        # The value may be fixed on the element itself or inside a slice along the path
        # (bp: component:SystolicBP.code.coding:SBPCode.code).
        for target in _nodes_at(slice_node, path):
            if target.fixed is not None:
                return target.fixed
            if target.pattern is not None:
                return target.pattern
        return _MISSING


def _item_expression(parent_expr: str, node: ElementNode, type_code: str | None, index: int) -> str:
    name = node.name[:-3] if node.is_choice else node.name
    if node.repeats:
        return f"{parent_expr}.{name}[{index}]"
    if node.is_choice and type_code:
        return f"{parent_expr}.{name}.ofType({type_code})"
    return f"{parent_expr}.{name}"


_MISSING = object()


def _obj(value: Any) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one: structural errors are reported by the walk;
    the rule checks that read around must not fail on a wrong shape."""
    return value if isinstance(value, dict) else {}


def _arr(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _node_at(node: ElementNode, path: str) -> ElementNode | None:
    if path in ("$this", ""):
        return node
    current: ElementNode | None = node
    for part in path.split("."):
        if current is None:
            return None
        part = re.sub(r"\.ofType\(.*\)$", "", part)
        current = current.children.get(part) or current.children.get(part + "[x]")
    return current


def _nodes_at(node: ElementNode, path: str) -> Iterator[ElementNode]:
    """Every definition of the element at ``path`` below ``node``: through children, and through the
    slices of each element on the way."""
    if path in ("$this", ""):
        yield node
        return
    parts = [re.sub(r"\.ofType\(.*\)$", "", p) for p in path.split(".")]
    frontier = [node]
    for part in parts:
        following: list[ElementNode] = []
        for current in frontier:
            child = current.children.get(part) or current.children.get(part + "[x]")
            if child is not None:
                following.append(child)
                following.extend(child.slices.values())
        frontier = following
    yield from frontier


def _type_of_key(key: str, stem: str) -> str:
    """The type a choice property name implies: valueQuantity -> Quantity, valueString -> string."""
    suffix = key[len(stem) :]
    lowered = suffix[:1].lower() + suffix[1:]
    return lowered if lowered in primitives.PRIMITIVES else suffix


def _typed_values_at(item: Any, path: str, type_code: str | None) -> Iterator[tuple[Any, str | None]]:
    """The values at a discriminator path, each with its type where the JSON tells it."""
    if path in ("$this", ""):
        actual = item["resourceType"] if isinstance(item, dict) and "resourceType" in item else type_code
        yield item, actual
        return
    current: list[tuple[Any, str | None]] = [(item, type_code)]
    for part in path.split("."):
        part = re.sub(r"\.?ofType\(.*\)$", "", part)
        nxt: list[tuple[Any, str | None]] = []
        for c, _ in current:
            if not isinstance(c, dict):
                continue
            found: list[tuple[Any, str | None]]
            if part in c:
                found = [(c[part], None)]
            else:
                found = [
                    (v, _type_of_key(k, part))
                    for k, v in c.items()
                    if k.startswith(part) and k[len(part) :][:1].isupper()
                ]
            for v, t in found:
                for x in v if isinstance(v, list) else [v]:
                    actual = x["resourceType"] if isinstance(x, dict) and "resourceType" in x else t
                    nxt.append((x, actual))
        current = nxt
    yield from current


def _matches_pattern(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(k in value and _matches_pattern(value[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        if not isinstance(value, list):
            return False
        return all(any(_matches_pattern(v, p) for v in value) for p in pattern)
    return bool(value == pattern)


def _codings(item: dict[str, Any], type_code: str, expr: str) -> list[tuple[str, dict[str, Any]]]:
    if type_code == "Coding":
        return [(expr, item)]
    return [(f"{expr}.coding[{i}]", c) for i, c in enumerate(_arr(item.get("coding"))) if isinstance(c, dict)]


# --- native invariants: the same meaning as their FHIRPath, without the interpreter ------------------------


def _contained(res: Any) -> list[dict[str, Any]]:
    return [c for c in _arr(res.get("contained")) if isinstance(c, dict)] if isinstance(res, dict) else []


# id(contained list) -> (the list, its resources by id), for the validation under way: looked up once per
# reference, a scan of the list made n references to n contained resources quadratic.
_CONTAINED_INDEX: dict[int, tuple[list[Any], dict[str, dict[str, Any]]]] = {}


def _contained_by_id(res: Any) -> dict[str, dict[str, Any]]:
    """A resource's contained resources by id (the first of each id)."""
    contained = res.get("contained") if isinstance(res, dict) else None
    if not isinstance(contained, list) or not contained:
        return {}
    entry = _CONTAINED_INDEX.get(id(contained))
    if entry is None or entry[0] is not contained:
        index: dict[str, dict[str, Any]] = {}
        for c in contained:
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                index.setdefault(c["id"], c)
        entry = _CONTAINED_INDEX[id(contained)] = (contained, index)
    return entry[1]


def _dom_2(res: Any, root: Any = None) -> bool:
    return all(not c.get("contained") for c in _contained(res))


def _dom_4(res: Any, root: Any = None) -> bool:
    return all(
        not _obj(c.get("meta")).get("versionId") and not _obj(c.get("meta")).get("lastUpdated") for c in _contained(res)
    )


def _dom_5(res: Any, root: Any = None) -> bool:
    return all(not _obj(c.get("meta")).get("security") for c in _contained(res))


def _dom_6(res: Any, root: Any = None) -> bool:
    return isinstance(res, dict) and bool(_obj(res.get("text")).get("div"))


def _strings(node: Any, key: str | None = None) -> Iterator[tuple[str | None, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


def _unreferenced_contained(res: Any) -> list[int]:
    """dom-3: indexes of contained resources that nothing refers to and that refer to nothing of their container."""
    contained = _contained(res)
    if not contained:
        return []
    outside = {k: v for k, v in res.items() if k != "contained"}
    refs = {v for _, v in _strings(outside) if v.startswith("#")}
    inner_refs = {v for c in contained for _, v in _strings(c) if v.startswith("#")}
    bad = []
    for i, c in enumerate(contained):
        cid = c.get("id")
        if f"#{cid}" in refs or f"#{cid}" in inner_refs - {f"#{cid}"}:
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
    return reference[1:] in _contained_by_id(root)


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
    return list(_arr(cc.get("coding"))) if isinstance(cc, dict) else []


def _coded(cc: Any, system: str, codes: tuple[str, ...]) -> bool:
    return any(c.get("system") == system and c.get("code") in codes for c in _codings_of(cc) if isinstance(c, dict))


_VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def _obs_7(item: Any, root: Any = None) -> bool:
    if not isinstance(item, dict) or not _choice_present(item, "value"):
        return True
    codes = _codings_of(item.get("code"))
    return not any(c in codes for comp in _arr(item.get("component")) for c in _codings_of(_obj(comp).get("code")))


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
    return list(_arr(item.get("entry"))) if isinstance(item, dict) else []


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
        version = _obj(_obj(entry.get("resource")).get("meta")).get("versionId")
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
    entries = _arr(item.get("entry"))
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
                for c in _arr(item.get("component"))
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
        or not any(_present(e, "search") for e in _arr(item.get("entry")) if isinstance(e, dict))
    ),
    "type = 'document' implies (identifier.system.exists() and identifier.value.exists())": lambda item, root=None: (
        not isinstance(item, dict)
        or item.get("type") != "document"
        or (_present(_obj(item.get("identifier")), "system") and _present(_obj(item.get("identifier")), "value"))
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
_SCALARS = frozenset({str, bool, int, float})
# Checked by the walk itself (ele-1 on every element, ext-1 on every extension), never as invariants.
_CHECKED_IN_WALK = frozenset({"ele-1", "ext-1"})
