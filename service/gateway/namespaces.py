"""Identifier namespaces: a key bound to them creates and updates only its own patients' data.

A patient lies in a key's namespaces when one of its identifiers has a system the key is bound to (the source
system the key speaks for, e.g. ``urn:oid:1.2.36.146.595.217.0.1``). For a key so bound, every resource a
transaction writes must be its patients' (for the Patient itself, its identifiers; for anything else, every
Patient it refers to: in the Bundle, contained, by identifier, or stored on the FHIR server), and so must every
stored resource a write would overwrite (``PUT Type/id``, or the match of a conditional ``PUT Type?search``), so
one client cannot overwrite or take over another's patients. Resources that refer to no patient (Practitioner,
Organization, Medication...) are governed by the key's scopes alone.

The check reads from the FHIR server before the transaction is sent; the two are not one atomic step there. The
API runs the check and the transaction under the patient's write lock, which serializes casebridge's own writers;
a writer that bypasses casebridge could still change a resource between the two.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

from service.errors import ResourceGone, ResourceNotFound
from service.fhir.client import AsyncFhirClient
from service.fhir.search import Search
from service.gateway.policy import Action
from service.validation.validator import Issue

_LOOKUPS = 8  # reads in flight at once for one check


def in_namespaces(patient: Mapping[str, Any], namespaces: Sequence[str]) -> bool:
    identifiers = patient.get("identifier")
    return isinstance(identifiers, list) and any(
        isinstance(i, dict) and i.get("system") in namespaces for i in identifiers
    )


def patient_refs(resource: Any) -> Iterator[dict[str, Any]]:
    """Every Reference in a resource, its contained resources' included (stored with it), that may point at a
    Patient."""
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for value in node.values():
                if isinstance(value, dict) and ("reference" in value or ("identifier" in value and "type" in value)):
                    yield value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


class NamespaceCheck:
    """One check of one transaction for a key bound to ``namespaces``."""

    def __init__(self, client: AsyncFhirClient, bundle: Mapping[str, Any], namespaces: Sequence[str], key: str):
        self.client = client
        self.namespaces = tuple(namespaces)
        self.key = key
        entries = bundle.get("entry")
        self.entries: list[dict[str, Any]] = (
            [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        )
        self.by_full_url: dict[str, dict[str, Any]] = {}
        self.by_type_id: dict[str, dict[str, Any]] = {}
        for entry in self.entries:
            resource = entry.get("resource")
            if not isinstance(resource, dict):
                continue
            if isinstance(entry.get("fullUrl"), str):
                self.by_full_url[entry["fullUrl"]] = resource
            if isinstance(resource.get("resourceType"), str) and isinstance(resource.get("id"), str):
                self.by_type_id[f"{resource['resourceType']}/{resource['id']}"] = resource
        self.issues: list[Issue] = []
        self._gate = asyncio.Semaphore(_LOOKUPS)

    @property
    def bound(self) -> str:
        return f"the API key {self.key!r} writes only patients with an identifier in {', '.join(self.namespaces)}"

    async def run(self, actions: Sequence[Action]) -> list[Issue]:
        written = [(a, self.entries[a.index]["resource"]) for a in actions]
        # What each write may overwrite, as stored now; then the Patients referred to that live on the server.
        stored = await asyncio.gather(*(self._stored(a) for a, _ in written))
        wanted: dict[str, None] = {}
        for (action, resource), targets in zip(written, stored, strict=True):
            wanted.update(dict.fromkeys(self._on_server(resource, in_bundle=True)))
            if action.resource_type != "Patient":
                for target in targets:
                    wanted.update(dict.fromkeys(self._on_server(target, in_bundle=False)))
        found = await asyncio.gather(*(self._read(ref) for ref in wanted))
        patients = dict(zip(wanted, found, strict=True))
        for (action, resource), targets in zip(written, stored, strict=True):
            where = f"Bundle.entry[{action.index}]"
            if action.resource_type == "Patient":
                if not in_namespaces(resource, self.namespaces):
                    self._refuse(f"{self.bound}: this Patient has none", f"{where}.resource")
                for target in targets:
                    if not in_namespaces(target, self.namespaces):
                        stored_id = f"Patient/{target.get('id')}"
                        message = f"{self.bound}: the stored {stored_id}, which this write would overwrite, has none"
                        self._refuse(message, f"{where}.request.url")
            else:
                for target in targets:
                    for ref in patient_refs(target):
                        problem = self._foreign(ref, target, patients, in_bundle=False)
                        if problem:
                            what = f"{action.resource_type}/{target.get('id')}"
                            self._refuse(
                                f"{self.bound}: the stored {what}, which this write would overwrite: {problem}",
                                f"{where}.request.url",
                            )
            # Patients it refers to (a Patient's own links included) must be this key's too.
            for ref in patient_refs(resource):
                problem = self._foreign(ref, resource, patients, in_bundle=True)
                if problem:
                    self._refuse(f"{self.bound}: {problem}", f"{where}.resource")
        return self.issues

    def _refuse(self, message: str, expression: str) -> None:
        self.issues.append(Issue("error", "forbidden", message, expression))

    def _resolve(
        self, ref: Mapping[str, Any], container: Mapping[str, Any], *, in_bundle: bool
    ) -> tuple[str, Any] | None:
        """("patient", resource), ("server", "Patient/id"), ("identifier", system), or None: not a Patient."""
        text = ref.get("reference")
        if isinstance(text, str):
            if text.startswith("#"):
                contained = container.get("contained")
                for inner in contained if isinstance(contained, list) else ():
                    if (
                        isinstance(inner, dict)
                        and inner.get("id") == text[1:]
                        and inner.get("resourceType") == "Patient"
                    ):
                        return "patient", inner
                return None
            if in_bundle and text in self.by_full_url:
                target = self.by_full_url[text]
                return ("patient", target) if target.get("resourceType") == "Patient" else None
            path, mark, query = text.partition("?")
            if mark and (path == "Patient" or path.endswith("/Patient")):
                # A conditional reference: the FHIR server resolves it, in a transaction, to the Patient it matches.
                return "conditional", query
            match = _PATIENT_URL.search(text)
            if match is None:
                return None
            key = f"Patient/{match.group(1)}"
            if in_bundle and key in self.by_type_id:
                return "patient", self.by_type_id[key]
            return "server", key
        identifier = ref.get("identifier")
        if ref.get("type") == "Patient" and isinstance(identifier, dict):
            return "identifier", identifier.get("system")
        return None

    def _on_server(self, resource: Mapping[str, Any], *, in_bundle: bool) -> Iterator[str]:
        for ref in patient_refs(resource):
            resolved = self._resolve(ref, resource, in_bundle=in_bundle)
            if resolved is not None and resolved[0] == "server":
                yield resolved[1]

    def _foreign(
        self,
        ref: Mapping[str, Any],
        container: Mapping[str, Any],
        patients: Mapping[str, dict[str, Any] | None],
        *,
        in_bundle: bool,
    ) -> str | None:
        """Why a reference is to a patient outside the namespaces, or None when it is not."""
        resolved = self._resolve(ref, container, in_bundle=in_bundle)
        if resolved is None:
            return None
        kind, value = resolved
        if kind == "conditional":
            if _identifier_search_in(value, self.namespaces):
                return None
            return "it refers to a Patient by a search that is not identifier=SYSTEM|value in those systems"
        if kind == "identifier":
            return None if value in self.namespaces else f"it refers to a Patient by an identifier of {value!r}"
        if kind == "patient":
            return None if in_namespaces(value, self.namespaces) else "it refers to a Patient that has none"
        stored = patients.get(value)
        if stored is None:
            # A stored resource pointing at a Patient that is gone: nobody's patient to protect.
            return (
                None if not in_bundle else f"it refers to {value}, which neither this Bundle nor the FHIR server holds"
            )
        return None if in_namespaces(stored, self.namespaces) else f"it refers to {value}, which has none"

    async def _stored(self, action: Action) -> list[dict[str, Any]]:
        if action.interaction == "update" and action.resource_id is not None:
            found = await self._read(f"{action.resource_type}/{action.resource_id}")
            return [found] if found is not None else []
        if action.interaction == "conditional-update" and action.condition:
            query = Search(action.resource_type)
            try:
                for name, value in parse_qsl(action.condition, keep_blank_values=True):
                    query = query.param(name, value)
            except ValueError as exc:
                where = f"Bundle.entry[{action.index}].request.url"
                self._refuse(f"the conditional URL cannot be checked: {exc}", where)
                return []
            async with self._gate:
                page = await self.client.search(query.param("_count", 2))
            matches = page.get("entry")
            return [
                m["resource"]
                for m in (matches if isinstance(matches, list) else ())
                if isinstance(m, dict)
                and isinstance(m.get("resource"), dict)
                and m["resource"].get("resourceType") == action.resource_type
            ]
        return []  # a create writes something new

    async def _read(self, ref: str) -> dict[str, Any] | None:
        resource_type, _, resource_id = ref.partition("/")
        async with self._gate:
            try:
                return await self.client.read(resource_type, resource_id)
            except (ResourceNotFound, ResourceGone):
                return None


def _identifier_search_in(query: str, namespaces: Sequence[str]) -> bool:
    """Whether a search is only ``identifier=SYSTEM|value`` with SYSTEM among ``namespaces``: what it matches is
    then a patient of those namespaces."""
    params = parse_qsl(query, keep_blank_values=True)
    return bool(params) and all(
        name == "identifier" and "|" in value and value.split("|", 1)[0] in namespaces and "," not in value
        for name, value in params
    )


_PATIENT_URL = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


async def check_namespaces(
    client: AsyncFhirClient, bundle: Mapping[str, Any], actions: Sequence[Action], namespaces: Sequence[str], key: str
) -> list[Issue]:
    """Errors (code forbidden) for each write of a transaction that touches a patient outside ``namespaces``."""
    return await NamespaceCheck(client, bundle, namespaces, key).run(actions)
