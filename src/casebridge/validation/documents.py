"""Documents and messages: Bundles whose entries hang together from their first resource (bundle.html#references,
documents.html, messaging.html).

A document's Composition must find the resources it names (subject, authors, attesters, custodian, event
details, section authors, foci and entries) in the Bundle, and every entry of a document must be reachable from
the Composition by following references forwards or backwards (in a message, from the MessageHeader: a warning
in R4). References resolve by the Bundle's rules: an absolute reference is an entry's fullUrl; a relative one
(``Type/id``) is resolved against the base of the referring entry's fullUrl, which is known only when that
fullUrl ends with the resource's own ``Type/id``; an entry without a fullUrl matches by type and id.

Apart from ``bundles`` because these follow the references between entries, once per document or message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from casebridge.validation.issues import Run, as_list, as_obj

_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")

# (element of the Composition, repeats) whose references must resolve in the document.
_COMPOSITION_REFERENCES = (("subject", False), ("encounter", False), ("author", True), ("custodian", False))
_SECTION_REFERENCES = (
    ("author", True, "Section Author"),
    ("focus", False, "Section Focus"),
    ("entry", True, "Section Entry"),
)


class _Entries:
    """A Bundle's entries that hold a resource: (index, fullUrl or None, resource)."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        self.items: list[tuple[int, str | None, dict[str, Any]]] = []
        for i, entry in enumerate(as_list(bundle.get("entry"))):
            resource = as_obj(entry).get("resource")
            if isinstance(resource, dict):
                full_url = entry.get("fullUrl")
                self.items.append((i, full_url if isinstance(full_url, str) else None, resource))
        self.by_full_url: dict[str, int] = {}
        for n, (_, full_url, _) in enumerate(self.items):
            if full_url is not None:
                self.by_full_url.setdefault(full_url, n)

    def resolve(self, reference: str, source: int) -> tuple[int | None, list[int]]:
        """The item a reference made from item ``source`` resolves to (None: none), and else the items of the
        same type and id that the fullUrl rules do not let it match."""
        if _ABSOLUTE.match(reference):
            found = self.by_full_url.get(reference)
            if found is None and "/_history/" in reference:
                found = self.by_full_url.get(reference.split("/_history/", 1)[0])
            return found, []
        m = _RELATIVE.match(reference)
        if m is None:
            return None, []
        _, full_url, resource = self.items[source]
        own = f"{resource.get('resourceType')}/{resource.get('id')}"
        if full_url is not None and isinstance(resource.get("id"), str) and full_url.endswith(own):
            return self.by_full_url.get(f"{full_url[: -len(own)]}{m.group(1)}/{m.group(2)}"), []
        same = [
            n
            for n, (_, _, r) in enumerate(self.items)
            if r.get("resourceType") == m.group(1) and r.get("id") == m.group(2)
        ]
        if full_url is None:
            return (same[0] if same else None), []
        return None, same


def document_rules(bundle: dict[str, Any], run: Run, expr: str) -> None:
    """A document's or message's references among its entries (other Bundle types: nothing to check)."""
    kind = bundle.get("type")
    if kind not in ("document", "message"):
        return
    entries = _Entries(bundle)
    if not entries.items:
        return
    first = entries.items[0][2]
    if kind == "document" and first.get("resourceType") == "Composition" and entries.items[0][0] == 0:
        _composition_references(first, entries, run, f"{expr}.entry[0].resource")
    start = "Composition" if kind == "document" else "MessageHeader"
    if first.get("resourceType") == start:
        _reachable(entries, run, expr, kind == "document", start)


def _composition_references(composition: dict[str, Any], entries: _Entries, run: Run, expr: str) -> None:
    for name, repeats in _COMPOSITION_REFERENCES:
        _must_resolve(composition, name, repeats, f"Composition.{name}", entries, run, expr)
    for i, attester in enumerate(as_list(composition.get("attester"))):
        _must_resolve(
            as_obj(attester), "party", False, "Composition.attester.party", entries, run, f"{expr}.attester[{i}]"
        )
    for i, event in enumerate(as_list(composition.get("event"))):
        _must_resolve(as_obj(event), "detail", True, "Composition.event.detail", entries, run, f"{expr}.event[{i}]")
    _sections(as_list(composition.get("section")), entries, run, expr)


def _sections(sections: list[Any], entries: _Entries, run: Run, expr: str) -> None:
    for i, section in enumerate(sections):
        section = as_obj(section)
        where = f"{expr}.section[{i}]"
        for name, repeats, label in _SECTION_REFERENCES:
            _must_resolve(section, name, repeats, label, entries, run, where)
        _sections(as_list(section.get("section")), entries, run, where)


def _must_resolve(
    owner: dict[str, Any], name: str, repeats: bool, label: str, entries: _Entries, run: Run, expr: str
) -> None:
    values = as_list(owner.get(name)) if repeats else [owner.get(name)]
    for i, value in enumerate(values):
        reference = as_obj(value).get("reference")
        if not isinstance(reference, str) or reference.startswith("#"):
            continue  # a logical reference (identifier only) or a contained resource
        found, excluded = entries.resolve(reference, 0)
        if found is not None:
            continue
        message = f"Can't find '{reference}' in the bundle ({label})"
        found_urls = ",".join(str(entries.items[n][1]) for n in excluded)
        if len(excluded) == 1:
            message += (
                ". Note that there is a resource in the bundle with the same type and id, but it does not match "
                f"because of the fullUrl based rules around matching relative references. Found '{found_urls}', "
                f"but it doesn't match because of the source fullUrl '{entries.items[0][1]}'"
            )
        elif excluded:
            message += (
                f". Note that there are {len(excluded)} resources in the bundle with the same type and id, but they "
                "do not match because of the fullUrl based rules around matching relative references. Found "
                f"'{found_urls}', but none of them match because of the source fullUrl '{entries.items[0][1]}'"
            )
        run.add("error", "not-found", message, f"{expr}.{name}[{i}]" if repeats else f"{expr}.{name}")


def _references(node: Any) -> Iterator[str]:
    """Every Reference.reference below a resource, but those to its contained resources."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if not value.startswith("#"):
                    yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _reachable(entries: _Entries, run: Run, expr: str, document: bool, start: str) -> None:
    """Every entry must be reachable from the first by references, forwards or (from an entry that refers to one
    already reached) backwards."""
    links: list[set[int]] = []
    for n, (_, _, resource) in enumerate(entries.items):
        targets = {entries.resolve(ref, n)[0] for ref in _references(resource)}
        links.append({t for t in targets if t is not None and t != n})
    reached: set[int] = set()
    pending = [0]
    while True:
        while pending:
            n = pending.pop()
            if n not in reached:
                reached.add(n)
                pending.extend(links[n] - reached)
        pending = [n for n in range(len(entries.items)) if n not in reached and links[n] & reached]
        if not pending:
            break
    for n, (index, full_url, _) in enumerate(entries.items):
        if n in reached:
            continue
        shown = f"'{full_url}'" if full_url is not None else ""
        if document:
            message = f"Entry {shown} isn't reachable by traversing links (forward or backward) from the {start}"
            run.add("error", "informational", message, f"{expr}.entry[{index}]")
        else:
            message = f"Entry {shown} isn't reachable by traversing forwards from the {start}"
            run.add("warning", "informational", message, f"{expr}.entry[{index}]")
