"""Documents and messages: Bundles whose entries hang together from their first resource (bundle.html#references,
documents.html, messaging.html).

A document's Composition must find the resources it names (subject, authors, attesters, custodian, event
details, section authors, foci and entries) in the Bundle, and every entry of a document must be reachable from
the first entry by following references forwards or backwards (in a message, from the MessageHeader: a warning
in R4; an entry a document reaches only backwards draws a warning unless it is a Provenance).

References resolve as the HL7 validator resolves them in a Bundle: an absolute reference is the fullUrl of
exactly one entry (``fullUrl/_history/versionId`` names a version); a relative one is resolved against the base
of the referring entry's fullUrl when that fullUrl is RESTful and ends with the resource's own ``Type/id`` (else
against the entries without a fullUrl). Two entries at the target are "Found 2 matches"; none, but entries of
that type and id, is "Can't find" with a note that lists their fullUrls.

Paths follow the HL7 validator's: the Composition's references are reported below ``entry[1]`` with the
indexes of repeating elements counted from 1 (a section's authors and focus below its parent, without the
section), entries that cannot be reached at ``entry[n+1]`` (n counting the entries that hold a resource), and
an ambiguous reference in another entry at the Bundle, naming the element.

Apart from ``bundles`` because these follow the references between entries, once per document or message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from casebridge.validation.issues import Run, as_list, as_obj

_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A RESTful URL (the HL7 validator's, the server base optional): [base/]Type/id[/_history/version].
_RESTFUL = re.compile(
    r"^(?:https?://(?:[A-Za-z0-9\\.:%$_\-]*/)*)?[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)
_TYPE = re.compile(r"^[A-Z][A-Za-z]+$")

# (element of the Composition, repeats) whose references must resolve in the document.
_COMPOSITION_REFERENCES = (("subject", False), ("author", True), ("encounter", False), ("custodian", False))

# What resolving a reference found: the entry (its position in Bundle.entry) or None, and else the error.
_Resolution = tuple[int | None, str | None]


class _Entries:
    """A Bundle's entries, indexed as the HL7 validator indexes them to resolve references."""

    def __init__(self, bundle: dict[str, Any]) -> None:
        # (position in Bundle.entry, fullUrl or None, resource) of the entries that hold a resource.
        self.items: list[tuple[int, str | None, dict[str, Any]]] = []
        # fullUrl (None: no fullUrl; "fullUrl/_history/versionId" too) -> positions; "Type/id" -> positions.
        self.by_url: dict[str | None, list[int]] = {}
        self.by_type_id: dict[str, list[int]] = {}
        self.full_urls: dict[int, str | None] = {}
        for i, entry in enumerate(as_list(bundle.get("entry"))):
            if not isinstance(entry, dict):
                continue
            value = entry.get("fullUrl")
            full_url = value if isinstance(value, str) else None
            self.full_urls[i] = full_url
            self.by_url.setdefault(full_url, []).append(i)
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                continue
            self.items.append((i, full_url, resource))
            rid = resource.get("id")
            if isinstance(rid, str):
                self.by_type_id.setdefault(f"{resource.get('resourceType')}/{rid}", []).append(i)
            version = as_obj(resource.get("meta")).get("versionId")
            if isinstance(version, str) and full_url is not None:
                self.by_url.setdefault(f"{full_url}/_history/{version}", []).append(i)

    def resolve(self, reference: str, full_url: str | None, rtype: Any, rid: Any, name: str) -> _Resolution:
        """The entry a reference made from an entry (its fullUrl, resource type and id) resolves to, else the
        error to report (None: not found, an error or a hint as the caller decides; empty: nothing to say)."""
        reference = reference.split("#", 1)[0]
        if _ABSOLUTE.match(reference):
            found = self.by_url.get(reference, [])
            if len(found) == 1:
                return found[0], None
            if found:
                return None, f"Found {len(found)} matches for '{reference}' in the bundle ({name})"
            return None, None  # not found: only a hint unless the caller requires it
        target: str | None = None
        own = f"{rtype}/{rid}"
        if full_url is not None and _RESTFUL.match(full_url) and full_url.endswith(own):
            target = full_url[: -len(own)] + reference
        found = self.by_url.get(target, [])
        if len(found) == 1:
            return found[0], None
        if found:
            return None, f"Found {len(found)} matches for '{reference}' in the bundle ({name})"
        parts = reference.split("/")
        if len(parts) < 2 or not _TYPE.match(parts[0]):
            return None, ""  # not a Type/id: the HL7 validator says nothing
        same = self.by_type_id.get(f"{parts[0]}/{parts[1]}", [])
        if not same:
            return None, None
        urls = ",".join(sorted({self.full_urls[n] or "<missing>" for n in same}))
        message = f"Can't find '{reference}' in the bundle ({name}). Note that "
        if len(same) == 1:
            message += (
                "there is a resource in the bundle with the same type and id, but it does not match because of the "
                "fullUrl based rules around matching relative references"
            )
            if target is not None:
                return None, f"{message} (must be '{target}')"
            return None, f"{message}. Found '{urls}', but it doesn't match because of the source fullUrl '{full_url}'"
        message += (
            f"there are {len(same)} resources in the bundle with the same type and id, but they do not match "
            "because of the fullUrl based rules around matching relative references"
        )
        if target is not None:
            return None, f"{message} (must be '{target}', but found these: {urls})"
        return None, f"{message}. Found '{urls}', but none of them match because of the source fullUrl '{full_url}'"


def document_rules(bundle: dict[str, Any], run: Run, expr: str) -> None:
    """A document's or message's references among its entries (other Bundle types: nothing to check)."""
    kind = bundle.get("type")
    if kind not in ("document", "message"):
        return
    entries = _Entries(bundle)
    first_entry = as_obj(as_list(bundle.get("entry"))[0]) if as_list(bundle.get("entry")) else {}
    first = first_entry.get("resource")
    if not isinstance(first, dict):
        if kind == "document":
            _reachable(bundle, entries, run, expr, True)
        return
    reported: set[int] = set()
    if kind == "document" and first.get("resourceType") == "Composition":
        checker = _DocumentReferences(entries, run, first_entry.get("fullUrl"), first.get("id"), reported)
        checker.composition(first, f"{expr}.entry[1].resource")
    _reachable(bundle, entries, run, expr, kind == "document", reported)


class _DocumentReferences:
    """The Composition's references that must resolve in the document, reported where the HL7 validator
    reports them (repeating elements counted from 1)."""

    def __init__(self, entries: _Entries, run: Run, full_url: Any, rid: Any, reported: set[int]) -> None:
        self.entries = entries
        self.run = run
        self.full_url: str | None = full_url if isinstance(full_url, str) else None
        self.rid: Any = rid
        self.reported = reported

    def composition(self, composition: dict[str, Any], expr: str) -> None:
        for name, repeats in _COMPOSITION_REFERENCES:
            self.element(composition, name, repeats, f"Composition.{name}", expr)
        for parent, prop, repeats in (("attester", "party", False), ("event", "detail", True)):
            for i, item in enumerate(as_list(composition.get(parent)), start=1):
                self.element(as_obj(item), prop, repeats, f"Composition.{parent}.{prop}", f"{expr}.{parent}[{i}]")
        self.sections(composition, expr)

    def sections(self, owner: dict[str, Any], expr: str) -> None:
        for i, value in enumerate(as_list(owner.get("section")), start=1):
            section = as_obj(value)
            where = f"{expr}.section[{i}]"
            # The HL7 validator reports a section's authors and focus below the section's parent.
            self.element(section, "author", True, "Section.author", expr)
            self.element(section, "focus", False, "Section.focus", expr)
            for j, entry in enumerate(as_list(section.get("entry")), start=1):
                self.reference(entry, "Section Entry", f"{where}.entry[{j}]")
            self.sections(section, where)

    def element(self, owner: dict[str, Any], name: str, repeats: bool, label: str, expr: str) -> None:
        if repeats:
            for i, value in enumerate(as_list(owner.get(name)), start=1):
                self.reference(value, label, f"{expr}.{name}[{i}]")
        else:
            values = as_list(owner.get(name)) if isinstance(owner.get(name), list) else [owner.get(name)]
            if values and values[0] is not None:
                self.reference(values[0], label, f"{expr}.{name}")

    def reference(self, value: Any, label: str, expr: str) -> None:
        reference = as_obj(value).get("reference")
        if not isinstance(reference, str) or not reference or reference.startswith("#"):
            return  # a logical reference (identifier only) or a contained resource
        found, problem = self.entries.resolve(reference, self.full_url, "Composition", self.rid, label)
        if found is not None or problem == "":
            return
        # Each Reference draws one such error, here rather than again when the entries' links are followed.
        self.reported.add(id(value))
        message = problem or f"Can't find '{reference.split('#', 1)[0]}' in the bundle ({label})"
        self.run.add("error", "not-found" if problem is None else "invalid", message, expr)


def _references(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """(path, reference, Reference) of every Reference.reference below a resource but those to its contained
    resources, and not into a Bundle inside it."""
    if isinstance(node, dict):
        reference = node.get("reference")
        if isinstance(reference, str) and reference and not reference.startswith("#"):
            yield path, reference, node
        for key, value in node.items():
            if isinstance(value, dict) and value.get("resourceType") == "Bundle":
                continue
            if isinstance(value, list):
                for i, item in enumerate(value):
                    yield from _references(item, f"{path}.{key}[{i}]")
            elif isinstance(value, dict):
                yield from _references(value, f"{path}.{key}")


def _reachable(
    bundle: dict[str, Any], entries: _Entries, run: Run, expr: str, document: bool, reported: set[int] | None = None
) -> None:
    """Every entry must be reachable from the first by references, forwards or (from an entry that refers to one
    already reached) backwards; a stylesheet link's Type/id counts as reached."""
    done = reported if reported is not None else set()
    position = {index: n for n, (index, _, _) in enumerate(entries.items)}
    links: list[set[int]] = []
    for n, (index, full_url, resource) in enumerate(entries.items):
        targets: set[int] = set()
        seen: set[str] = set()
        for path, reference, source in _references(resource, f"Bundle.entry[{index}].resource"):
            if reference in seen:
                continue
            seen.add(reference)
            found, problem = entries.resolve(
                reference, full_url, resource.get("resourceType"), resource.get("id"), path
            )
            if found is not None and position.get(found, n) != n:
                targets.add(position[found])
            elif problem and id(source) not in done:
                done.add(id(source))
                run.add("error", "invalid", problem, expr)
        links.append(targets)
    reached: set[int] = set()
    _visit([0] if entries.items else [], links, reached)
    for link in as_list(bundle.get("link")):
        link = as_obj(link)
        if link.get("relation") == "stylesheet":
            for n, (_, _, resource) in enumerate(entries.items):
                if link.get("url") == f"{resource.get('resourceType')}/{resource.get('id')}":
                    reached.add(n)
                    break
    # Then backwards, in the order of the entries: one reached this way takes along what it refers to.
    backwards: list[int] = []
    again = True
    while again:
        again = False
        for n in range(len(entries.items)):
            if n not in reached and links[n] & reached:
                backwards.append(n)
                _visit([n], links, reached)
                again = True
    start = "Composition" if document else "MessageHeader"
    # The HL7 validator reports these at one past the last entry (a counter it forgot to reset).
    after = f"{expr}.entry[{len(as_list(bundle.get('entry'))) + 1}]"
    for n in backwards:
        _, full_url, resource = entries.items[n]
        if document and resource.get("resourceType") != "Provenance":
            shown = f"'{full_url}'" if full_url is not None else ""
            message = (
                f"Entry {shown} isn't reachable by traversing forwards from the Composition. Only Provenance is "
                "approved to be used this way (R4 section 3.3.1)"
            )
            run.add("warning", "invalid", message, after)
    for n, (_, full_url, _) in enumerate(entries.items):
        if n in reached:
            continue
        shown = f"'{full_url}'" if full_url is not None else ""
        where = f"{expr}.entry[{n + 1}]"
        if document:
            message = f"Entry {shown} isn't reachable by traversing links (forward or backward) from the {start}"
            run.add("error", "informational", message, where)
        else:
            message = f"Entry {shown} isn't reachable by traversing forwards from the {start}"
            run.add("warning", "informational", message, where)


def _visit(pending: list[int], links: list[set[int]], reached: set[int]) -> None:
    """Marks as reached the entries given and all they lead to forwards."""
    while pending:
        n = pending.pop()
        if n not in reached:
            reached.add(n)
            pending.extend(links[n] - reached)
