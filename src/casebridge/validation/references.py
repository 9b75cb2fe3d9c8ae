"""References: what a Reference resolves to (a contained resource, a Bundle entry by fullUrl or Type/id), whether
its target type is one the element allows, and whether a resolved target conforms to the element's target
profiles. As the HL7 validator checks them: a resolved target's type against the types of the target profiles it
can resolve (each one it cannot is an error of its own); an unresolved one's type, read from the reference's text,
only when REST references are taken as valid (an option), and then a specialisation of an allowed type passes.
Inside a Bundle, a relative reference that names two entries (the same fullUrl against the base of its own
entry's fullUrl, and the same version if it names one) is ambiguous, as the HL7 validator has it.

Apart from the walk because it looks across the input (containers, Bundles) rather than down one value; the
walk calls ``check_reference`` on each Reference, and checks a resolved target against a profile through
``Validator.conforms``. The facts worked out per element are cached on the validator.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from casebridge.definitions.structure import ElementNode
from casebridge.validation.issues import Run, as_obj

if TYPE_CHECKING:
    from casebridge.validation.validator import Validator

_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")

# id(contained list) -> (the list, its resources by id), for the validation under way: looked up once per
# reference, a scan of the list made n references to n contained resources quadratic.
_CONTAINED_INDEX: dict[int, tuple[list[Any], dict[str, dict[str, Any]]]] = {}


def contained_by_id(res: Any) -> dict[str, dict[str, Any]]:
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


def forget_contained() -> None:
    """Drops the index of contained resources: it was built for one input only."""
    _CONTAINED_INDEX.clear()


def check_reference(
    validator: Validator, item: dict[str, Any], node: ElementNode, expr: str, run: Run, res: dict[str, Any]
) -> None:
    """A Reference value of ``node`` (``res``: the %rootResource it sits in)."""
    reference = item.get("reference")
    if not isinstance(reference, str):
        return
    target_type: Any = None  # from the instance: maybe not a string (compiled code checks a str annotation)
    resolved: dict[str, Any] | None = None
    ambiguous = False  # several entries match: in the Bundle, but not one target
    if reference.startswith("#"):
        # A missing contained target is ref-1's failure, reported by that invariant.
        target = contained_by_id(res).get(reference[1:])
        if target is None and reference != "#":
            return
        resolved = target if target is not None else res
        target_type = resolved.get("resourceType")
    elif reference in run.bundle_index:
        resolved = run.bundle_index[reference]
        target_type = resolved.get("resourceType")
        _bundle_match(reference, expr, run, res)
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
            _bundle_match(reference, expr, run, res)
            matches = run.by_type_id.get(f"{m.group(1)}/{m.group(2)}", [])
            resolved = matches[0] if len(matches) == 1 else None
            ambiguous = len(matches) > 1
    if resolved is None and not ambiguous and not reference.startswith("#") and _only_in_input(node):
        # elementdefinition.html#ElementDefinition.type.aggregation: without "referenced", the target must be
        # contained or in the Bundle, where it is not.
        message = f"Bundled or contained reference not found within the bundle/resource {reference}"
        run.add("error", "structure", message, expr)
    if not isinstance(target_type, str):  # a target without a usable resourceType is reported as a resource
        return
    if resolved is None:
        # Not in the input: the type comes only from the reference's text, which the HL7 validator takes at its
        # word only when told REST references are valid (assumeValidRestReferences).
        if validator.options.assume_valid_rest_references:
            _implied_type(validator, node, target_type, reference, expr, run)
        return
    allowed, unresolved = _reference_targets(validator, node)
    if "Resource" in allowed:
        return
    for canonical in unresolved:
        run.add("error", "not-found", f"Unable to resolve the profile reference '{canonical}'", expr)
    if (allowed or unresolved) and target_type not in allowed:
        # The HL7 validator lists the types as a Java set prints itself.
        shown = ", ".join(java_set_order(allowed))
        message = f"Invalid Resource target type. Found {target_type}, but expected one of ([{shown}])"
        run.add("error", "structure", message, expr)
        return
    _target_profiles(validator, resolved, target_type, node, expr, run)


def _only_in_input(node: ElementNode) -> bool:
    """The element's Reference type names aggregation modes, and "referenced" is not among them."""
    for type_ref in node.types:
        if type_ref.code == "Reference" and type_ref.aggregation:
            return "referenced" not in type_ref.aggregation
    return False


def _implied_type(
    validator: Validator, node: ElementNode, target_type: str, reference: str, expr: str, run: Run
) -> None:
    """The type a reference's text names must be one the element allows (or a specialisation of one); target
    profiles that cannot be resolved allow anything."""
    allowed, _ = _reference_targets(validator, node)
    tree = validator.type_tree(target_type)
    if not allowed or tree is None:  # a type nobody defines is the reference's own error, not a wrong target
        return
    ancestry = {target_type}
    while tree is not None and tree.base is not None:
        parent = tree.base.split("|")[0].rsplit("/", 1)[-1]
        if parent in ancestry:
            break
        ancestry.add(parent)
        tree = validator.type_tree(parent)
    if ancestry.isdisjoint(allowed):
        message = (
            f"The type '{target_type}' implied by the reference URL {reference} is not a valid Target for this "
            f"element (must be one of [{', '.join(java_set_order(allowed))}])"
        )
        run.add("error", "structure", message, expr)


def java_set_order(items: tuple[str, ...]) -> list[str]:
    """Strings in the order a java.util.HashSet of them iterates: by bucket of String.hashCode (spread as HashMap
    does, over a table that doubles past three quarters full), then in order of insertion."""
    unique = list(dict.fromkeys(items))
    size = 16
    while len(unique) > size * 3 // 4:
        size *= 2

    def bucket(text: str) -> int:
        h = 0
        data = text.encode("utf-16-be")
        for i in range(0, len(data), 2):
            h = (31 * h + (data[i] << 8 | data[i + 1])) & 0xFFFFFFFF
        return (h ^ (h >> 16)) & (size - 1)

    return sorted(unique, key=lambda text: (bucket(text), unique.index(text)))


def _reference_targets(validator: Validator, node: ElementNode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The resource types an element's Reference may point to (none: any), and the target profiles that cannot be
    resolved, worked out once per element."""
    cached = validator._reference_target_cache.get(id(node))
    if cached is None or cached[0] is not node:
        allowed: list[str] = []
        unresolved: list[str] = []
        for t in node.types:
            if t.code != "Reference":
                continue
            for p in t.target_profiles:
                rtype = _resolved_type(validator, p)
                if rtype is None:
                    unresolved.append(p)
                elif rtype not in allowed:
                    allowed.append(rtype)
        cached = (node, tuple(allowed), tuple(unresolved))
        if _all_known(validator, node):
            validator._reference_target_cache[id(node)] = cached
    return cached[1], cached[2]


def _resolved_type(validator: Validator, canonical: str) -> str | None:
    """The resource type a target profile constrains, None when it cannot be resolved."""
    if _is_type_url(validator, canonical):
        return canonical.split("|")[0].rsplit("/", 1)[-1]
    tree = validator.tree(canonical)
    return tree.type if tree is not None else None


def _all_known(validator: Validator, node: ElementNode) -> bool:
    # Only what no later-loaded definition can change is remembered (an unknown profile is read from its URL).
    return all(
        _is_type_url(validator, p) or validator.tree(p) is not None for t in node.types for p in t.target_profiles
    )


def _target_profiles(
    validator: Validator, target: dict[str, Any], target_type: str, node: ElementNode, expr: str, run: Run
) -> None:
    """A resolved target must conform to one of the element's target profiles for its type (core
    definitions need no check: the target is validated as itself anyway)."""
    key = (id(node), target_type)
    cached = validator._target_profile_cache.get(key)
    if cached is None or cached[0] is not node:
        found = [
            p
            for t in node.types
            if t.code == "Reference"
            for p in t.target_profiles
            if not _is_type_url(validator, p) and _profile_type(validator, p) == target_type
        ]
        if any(
            _is_type_url(validator, p) and _profile_type(validator, p) == target_type
            for t in node.types
            for p in t.target_profiles
        ):
            found = []
        cached = (node, tuple(found))
        # Not remembered for a type nobody defines: target types come from input (a Reference(Any) takes any).
        if _all_known(validator, node) and validator.type_tree(target_type) is not None:
            validator._target_profile_cache[key] = cached
    profiles = cached[1]
    if not profiles:
        return
    if not validator.conforms(target, profiles, run):
        message = (
            f"The resource {target_type} referred to does not conform to any of the target profiles "
            f"({', '.join(profiles)})"
        )
        run.add("error", "structure", message, expr)


def _bundle_match(reference: str, expr: str, run: Run, res: dict[str, Any]) -> None:
    """A relative reference from a bundled resource names the entry whose fullUrl is the reference against the
    base of the resource's own fullUrl (a version: the entry of that meta.versionId); two such entries make it
    ambiguous. None is no error: the HL7 validator only warns of entries that match by type and id."""
    source = run.full_urls.get(id(res))
    if source is None or _ABSOLUTE.match(reference) or reference.count("/") not in (1, 3):
        return
    if source.startswith("urn"):
        base = "".join(f"{part}:" for part in source.split(":")[:-1])
    else:
        base = "".join(f"{part}/" for part in source.rstrip("/").split("/")[:-2])
    path, _, version = reference.partition("/_history/")
    if version:
        target = base + path
    elif base.startswith("urn"):
        target = base + reference.split("/")[1]
    else:
        target = base + reference
    matches = [
        r for r in run.by_full_url.get(target, []) if not version or as_obj(r.get("meta")).get("versionId") == version
    ]
    if len(matches) > 1:
        run.add("error", "invalid", f"Multiple matches in bundle for reference {reference}", expr)


def _is_type_url(validator: Validator, canonical: str) -> bool:
    """Whether a canonical is a type's own core definition (Patient), not a profile (vitalsigns)."""
    url = canonical.split("|")[0]
    name = url.rsplit("/", 1)[-1]
    return url == f"http://hl7.org/fhir/StructureDefinition/{name}" and validator.type_tree(name) is not None


def _profile_type(validator: Validator, canonical: str) -> str:
    if _is_type_url(validator, canonical):
        return canonical.split("|")[0].rsplit("/", 1)[-1]
    tree = validator.tree(canonical)
    return tree.type if tree is not None else canonical.rsplit("/", 1)[-1]
