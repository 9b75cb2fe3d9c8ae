"""Slicing: which slice of a sliced element each value belongs to (by its discriminators: value, pattern, exists,
type, profile; a value discriminator's value may come from a complex fixed or pattern value of the slice or of an
element on its path; a path ending in ``resolve()`` follows a Reference to a contained resource or Bundle entry, and a
type discriminator then compares its resource type with the slice's target profiles), each value checked against
its slice, the slices' cardinality, and closed slicing.

Apart from the walk because matching a value to a slice reads the value along discriminator paths and the slice
definitions along the same paths, a search of its own; the walk hands each sliced element's values here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from casebridge.definitions.structure import ElementNode, StructureTree
from casebridge.validation import primitives
from casebridge.validation.issues import Run
from casebridge.validation.references import contained_by_id
from casebridge.validation.values import matches_pattern

if TYPE_CHECKING:
    from casebridge.validation.validator import Validator


def check_slicing(
    validator: Validator,
    items: list[Any],
    extras: list[Any],
    node: ElementNode,
    tree: StructureTree,
    parent_expr: str,
    type_code: str | None,
    run: Run,
    res: dict[str, Any],
    depth: int,
) -> None:
    """The values of a sliced element: each matched to a slice and checked as it (closed slicing: a value that
    matches none is an error; ordered slicing: a value in an earlier slice than the value before it is an error),
    then each slice's cardinality."""
    slicing = node.slicing
    assert slicing is not None
    slices = list(node.slices.values())
    counts = {s.slice_name: 0 for s in slices}
    root = run.roots.get(id(res), res)  # where a discriminator's resolve() finds contained resources
    previous = -1  # the position of the slice of the value before, -1 when it was in none (as the HL7 validator)
    for i, item in enumerate(items):
        extra = extras[i] if i < len(extras) else None
        if item is None and extra is None:
            continue
        item_expr = _item_expression(parent_expr, node, type_code, i)
        position = next(
            (
                j
                for j, s in enumerate(slices)
                if _in_slice(validator, item, type_code, s, slicing.discriminators, run, root)
            ),
            None,
        )
        if position is None:
            if slicing.rules == "closed":
                message = f"This element does not match any known slice defined in the profile {tree.label}"
                run.add("error", "structure", message, item_expr)
            previous = -1
            continue
        match = slices[position]
        if slicing.ordered and position < previous:
            message = f"As specified by profile {tree.label}, Element '{node.name}' is out of order in ordered slice"
            run.add("error", "invalid", message, item_expr)
        previous = position
        counts[match.slice_name] += 1
        codes = [t.code for t in match.types]
        slice_type = type_code if type_code in codes else codes[0] if len(codes) == 1 else type_code
        type_ref = next((t for t in match.types if t.code == slice_type), None)
        validator.check_item(item, extra, match, tree, slice_type, type_ref, item_expr, run, res, depth)
    for s in slices:
        count = counts[s.slice_name]
        if count < s.min:
            run.add(
                "error",
                "structure",
                f"Slice '{s.id}': a matching slice is required, but not found (from {tree.label}). {_OTHER_SLICES}",
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
    validator: Validator,
    item: Any,
    type_code: str | None,
    slice_node: ElementNode,
    discriminators: tuple[Any, ...],
    run: Run,
    root: dict[str, Any],
) -> bool:
    if not discriminators:
        return False
    constrained = False
    for d in discriminators:
        path = d.path.strip().removeprefix("$this.")
        if d.type in ("value", "pattern"):
            expected = _expected_at(slice_node, path)
            if expected is _MISSING:
                continue  # this slice leaves that path open: it matches any value there
            constrained = True
            if not any(matches_pattern(v, expected) for v, _ in _typed_values_at(item, path, type_code, root, run)):
                return False
            continue
        constrained = True
        if d.type == "exists":
            target = _node_at(slice_node, path)
            present = bool(list(_typed_values_at(item, path, type_code, root, run)))
            if target is None or present != (target.min > 0 or target.max != 0):
                return False
        elif d.type == "type":
            reference_path = _before_resolve(path)
            if reference_path is not None:
                # The type of the resource a Reference resolves to: the slice names it by target profile.
                target = _node_at(slice_node, reference_path)
                wanted = {
                    _profile_type(validator, p) for t in (target.types if target else ()) for p in t.target_profiles
                }
            else:
                target = _node_at(slice_node, path)
                wanted = {t.code for t in target.types} if target is not None else set()
            if not wanted:
                return False
            values = list(_typed_values_at(item, path, type_code, root, run))
            if not values or not all(actual in wanted for _, actual in values):
                return False
        elif d.type == "profile":
            target = _node_at(slice_node, path)
            profiles = [p for t in (target.types if target else ()) for p in t.profiles]
            # Named apart from the (value, type) pairs above: compiled, a variable keeps one type.
            resources = [v for v, _ in _typed_values_at(item, path, type_code, root, run)]
            if not profiles or not resources or not all(validator.conforms(r, profiles, run) for r in resources):
                return False
        else:
            return False
    return constrained


def _expected_at(slice_node: ElementNode, path: str) -> Any:
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
    return _inside_complex_value(slice_node, path)


def _inside_complex_value(slice_node: ElementNode, path: str) -> Any:
    """The discriminator's value where a complex fixed or pattern value of the slice, or of an element on the path,
    gives it (a slice fixing ContactPoint {use: home} for a discriminator on ``use``), as the HL7 validator reads it;
    else missing."""
    parts = [p for p in _split_path(path) if _of_type(p) is None]
    if path in ("$this", "") or any(_extension_url(p) is not None or p == _RESOLVE for p in parts):
        return _MISSING
    current: ElementNode | None = slice_node
    for i, part in enumerate(parts):
        if current is None:
            return _MISSING
        for value in (current.fixed, current.pattern):
            found: Any = value
            for step in parts[i:]:
                found = found.get(step, _MISSING) if isinstance(found, dict) else _MISSING
            if found is not _MISSING and not isinstance(found, list):
                return found
        current = current.children.get(part) or current.children.get(part + "[x]")
    return _MISSING


def _item_expression(parent_expr: str, node: ElementNode, type_code: str | None, index: int) -> str:
    name = node.name[:-3] if node.is_choice else node.name
    if node.repeats:
        return f"{parent_expr}.{name}[{index}]"
    if node.is_choice and type_code:
        return f"{parent_expr}.{name}.ofType({type_code})"
    return f"{parent_expr}.{name}"


_MISSING = object()
# The HL7 validator adds this to every missing required slice, open or closed slicing alike.
_OTHER_SLICES = "Note that other slices are allowed in addition to this required slice"
_RESOLVE = "resolve()"
_TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")
_EXTENSION_CALL = re.compile(r"""extension\(\s*(['"])(.*)\1\s*\)""")
_OF_TYPE = re.compile(r"ofType\(\s*([A-Za-z][A-Za-z0-9]*)\s*\)")


def _split_path(path: str) -> list[str]:
    """A discriminator path's steps: split at the dots outside quotes and parentheses, so that
    ``extension('http://example.org/x').value`` is two steps (profiling.html#discriminator allows extension())."""
    return split_path(path)[0]


def split_path(path: str) -> tuple[list[str], bool]:
    """A discriminator path's steps (as ``_split_path``), and whether its quotes and parentheses balance."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for i, ch in enumerate(path):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append(path[start:i])
            start = i + 1
    parts.append(path[start:])
    return parts, not quote and depth == 0


def _extension_url(part: str) -> str | None:
    """The URL of an ``extension('url')`` step, else None."""
    match = _EXTENSION_CALL.fullmatch(part)
    return match.group(2) if match else None


def _of_type(part: str) -> str | None:
    """The type of an ``ofType(Type)`` step (``value.ofType(Quantity)``, profiling.html#discriminator), else None."""
    match = _OF_TYPE.fullmatch(part)
    return match.group(1) if match else None


def _extension_slices(extension: ElementNode, url: str) -> list[ElementNode]:
    """The slices of an extension element that are the extension ``url``."""
    out = []
    for slice_node in extension.slices.values():
        fixed = slice_node.children.get("url")
        profiles = [p for t in slice_node.types for p in t.profiles]
        if (fixed is not None and fixed.fixed == url) or url in profiles:
            out.append(slice_node)
    return out


def _node_at(node: ElementNode, path: str) -> ElementNode | None:
    if path in ("$this", ""):
        return node
    current: ElementNode | None = node
    for part in _split_path(path):
        if current is None:
            return None
        url = _extension_url(part)
        if url is not None:
            extension = current.children.get("extension")
            found = _extension_slices(extension, url) if extension is not None else []
            current = found[0] if found else None
            continue
        if _of_type(part) is not None:
            continue  # the same (choice) element, as one of its types
        current = current.children.get(part) or current.children.get(part + "[x]")
    return current


def _nodes_at(node: ElementNode, path: str) -> Iterator[ElementNode]:
    """Every definition of the element at ``path`` below ``node``: through children, and through the
    slices of each element on the way."""
    if path in ("$this", ""):
        yield node
        return
    parts = [p for p in _split_path(path) if _of_type(p) is None]
    frontier = [node]
    for part in parts:
        following: list[ElementNode] = []
        url = _extension_url(part)
        for current in frontier:
            if url is not None:
                extension = current.children.get("extension")
                following.extend(_extension_slices(extension, url) if extension is not None else ())
                continue
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


def _before_resolve(path: str) -> str | None:
    """The path of the Reference a discriminator path resolves (``item`` of ``item.resolve()``), else None."""
    if path == _RESOLVE:
        return "$this"
    if path.endswith("." + _RESOLVE):
        return path[: -len(_RESOLVE) - 1]
    return None


def _profile_type(validator: Validator, canonical: str) -> str:
    """The resource type a target profile constrains (a core type's URL ends with its name)."""
    tree = validator.tree(canonical)
    return tree.type if tree is not None else canonical.split("|")[0].rsplit("/", 1)[-1]


def _resolve(reference: Any, root: dict[str, Any] | None, run: Run | None) -> dict[str, Any] | None:
    """What a Reference points to inside the input: a resource contained in ``root``, or a Bundle entry (by fullUrl,
    or by Type/id when one entry has it). Anything else does not resolve here."""
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if not isinstance(ref, str):
        return None
    if ref.startswith("#"):
        return contained_by_id(root).get(ref[1:]) if root is not None else None
    if run is None:
        return None
    if ref in run.bundle_index:
        return run.bundle_index[ref]
    m = _TYPE_ID.search(ref)
    matches = run.by_type_id.get(f"{m.group(1)}/{m.group(2)}", []) if m else []
    return matches[0] if len(matches) == 1 else None


def _typed_values_at(
    item: Any, path: str, type_code: str | None, root: dict[str, Any] | None = None, run: Run | None = None
) -> Iterator[tuple[Any, str | None]]:
    """The values at a discriminator path, each with its type where the JSON tells it; a ``resolve()`` step goes
    from References to the resources they point to inside the input (``root``'s contained ones, the Bundle's)."""
    if path in ("$this", ""):
        actual = item["resourceType"] if isinstance(item, dict) and "resourceType" in item else type_code
        yield item, actual
        return
    current: list[tuple[Any, str | None]] = [(item, type_code)]
    for part in _split_path(path):
        nxt: list[tuple[Any, str | None]] = []
        if part == _RESOLVE:
            for c, _ in current:
                target = _resolve(c, root, run)
                rtype = target.get("resourceType") if target is not None else None
                if target is not None and isinstance(rtype, str):
                    nxt.append((target, rtype))
            current = nxt
            continue
        of_type = _of_type(part)
        if of_type is not None:
            # The values of that type (a value whose type the JSON does not tell is kept).
            current = [(c, t) for c, t in current if t in (of_type, None)]
            continue
        url = _extension_url(part)
        for c, _ in current:
            if not isinstance(c, dict):
                continue
            found: list[tuple[Any, str | None]]
            if url is not None:
                extensions = c.get("extension")
                found = [
                    (e, "Extension")
                    for e in (extensions if isinstance(extensions, list) else ())
                    if isinstance(e, dict) and e.get("url") == url
                ]
            elif part in c:
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
