"""Identifier namespaces: a key bound to them creates and updates only its own patients' data.

A patient lies in a key's namespaces when one of its identifiers has a system the key is bound to (the source
system the key speaks for, e.g. ``urn:oid:1.2.36.146.595.217.0.1``). For a key so bound, every resource a
transaction writes must be its patients' (for the Patient itself, its identifiers; for anything else, every
Patient it refers to: in the Bundle, contained, by identifier, or stored on the FHIR server), and so must every
stored resource a write would overwrite (``PUT Type/id``; for a conditional ``PUT Type?search`` its match and, as
a server writes there when nothing matches, the resource's own id), so one client cannot overwrite or take over
another's patients. References are read as a FHIR server reads them: conditional references (``Patient?...``) and
the fullUrl of a conditional create stand for whatever their search matches, so they must search by an identifier
of the key's systems; a POSTed resource's own id means nothing to the server; logical references by identifier
count as a Patient's unless their ``type`` names another resource type. A key's Patient may not carry an identifier
of a system bound to another key. Resources that refer to no patient (Practitioner, Organization, Medication...)
are governed by the key's scopes alone. Messages name no stored resource or patient the caller did not name.

The check reads from the FHIR server before the transaction is sent; the two are not one atomic step there. The
API runs the check and the transaction under the patient's write lock, which serializes casebridge's own writers;
a writer that bypasses casebridge could still change a resource between the two.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

from casebridge.errors import ResourceGone, ResourceNotFound
from casebridge.fhir.client import AsyncFhirClient
from casebridge.fhir.search import Search
from casebridge.gateway.policy import Action
from casebridge.validation.validator import Issue

_LOOKUPS = 8  # reads in flight at once for one check
MAX_PATIENT_LOOKUPS = 100  # distinct stored Patients one transaction may refer to, for a bound key
# What a bound key's conditional update may search by: searches whose match the check sees as the server does.
CONDITION_PARAMETERS = frozenset({"identifier", "_id"})
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
# A literal reference to a Patient as servers read it: relative or absolute, any version or trailing part.
_PATIENT_URL = re.compile(r"(?:^|/)Patient/+([A-Za-z0-9\-.]{1,64})(?=$|[/?#])")
_PATIENT_ANY = re.compile(r"(?:^|/)Patient/")


def in_namespaces(patient: Mapping[str, Any], namespaces: Sequence[str]) -> bool:
    return any(system in namespaces for system in _systems(patient))


def _systems(patient: Mapping[str, Any]) -> list[Any]:
    identifiers = patient.get("identifier")
    return [i.get("system") for i in identifiers if isinstance(i, dict)] if isinstance(identifiers, list) else []


def patient_refs(resource: Any) -> Iterator[dict[str, Any]]:
    """Every Reference in a resource, in lists or not, its contained resources' included (stored with it): a
    literal one (``reference``) or a logical one (``identifier``, an object where a resource's is a list)."""
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node is not resource and "resourceType" not in node:
                if isinstance(node.get("reference"), str) or isinstance(node.get("identifier"), dict):
                    yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class NamespaceCheck:
    """One check of one transaction for a key bound to ``namespaces``; ``foreign``: the systems bound to other
    keys. ``run`` gives an error (code forbidden; too-costly past the lookup limit) for each write that touches a
    patient outside ``namespaces``."""

    def __init__(
        self,
        client: AsyncFhirClient,
        bundle: Mapping[str, Any],
        actions: Sequence[Action],
        namespaces: Sequence[str],
        key: str,
        foreign: Sequence[str] = (),
    ):
        self.client = client
        self.namespaces = tuple(namespaces)
        self.foreign = tuple(s for s in foreign if s not in self.namespaces)
        self.key = key
        self.actions = list(actions)
        entries = bundle.get("entry")
        self.entries: list[Any] = entries if isinstance(entries, list) else []
        by_index = {a.index: a for a in self.actions}
        self.by_full_url: dict[str, tuple[dict[str, Any], Action | None]] = {}
        self.by_type_id: dict[str, dict[str, Any]] = {}
        for i, entry in enumerate(self.entries):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            action = by_index.get(i)
            if isinstance(entry.get("fullUrl"), str):
                self.by_full_url[entry["fullUrl"]] = (resource, action)
            if action is not None and action.interaction == "update":
                # Only an update keeps the id it names; a POSTed resource's id is replaced by the server's.
                self.by_type_id[f"{action.resource_type}/{action.resource_id}"] = resource
        self.issues: list[Issue] = []
        self._gate = asyncio.Semaphore(_LOOKUPS)

    @property
    def bound(self) -> str:
        return f"the API key {self.key!r} writes only patients with an identifier in {', '.join(self.namespaces)}"

    async def run(self) -> list[Issue]:
        written = [(a, self.entries[a.index]["resource"]) for a in self.actions]
        # What each write may overwrite, as stored now; then the Patients referred to that live on the server.
        stored = await asyncio.gather(*(self._stored(a) for a, _ in written))
        wanted: dict[str, None] = {}
        for (action, resource), targets in zip(written, stored, strict=True):
            wanted.update(dict.fromkeys(self._on_server(resource, in_bundle=True)))
            if action.resource_type != "Patient":
                for target in targets:
                    wanted.update(dict.fromkeys(self._on_server(target, in_bundle=False)))
        if len(wanted) > MAX_PATIENT_LOOKUPS:
            message = (
                f"the Bundle refers to {len(wanted)} stored Patients; a key bound to namespaces may refer to at most "
                f"{MAX_PATIENT_LOOKUPS} in one transaction, each checked with the FHIR server"
            )
            return [Issue("error", "too-costly", message, "Bundle.entry")]
        found = await asyncio.gather(*(self._read(ref) for ref in wanted))
        patients = dict(zip(wanted, found, strict=True))
        for (action, resource), targets in zip(written, stored, strict=True):
            where = f"Bundle.entry[{action.index}]"
            if action.resource_type == "Patient":
                self._own_patient(resource, f"{where}.resource")
                if any(not in_namespaces(target, self.namespaces) for target in targets):
                    self._refuse(f"{self.bound}: the stored Patient this write would overwrite has none", where)
            elif any(self._foreign(ref, t, patients, in_bundle=False) for t in targets for ref in patient_refs(t)):
                self._refuse(f"{self.bound}: what this write would overwrite is stored for another patient", where)
            # The Patients it refers to (a Patient's own links included) must be this key's too.
            for ref in patient_refs(resource):
                problem = self._foreign(ref, resource, patients, in_bundle=True)
                if problem:
                    self._refuse(f"{self.bound}: {problem}", f"{where}.resource")
        return self.issues

    def _own_patient(self, patient: Mapping[str, Any], where: str) -> None:
        if not in_namespaces(patient, self.namespaces):
            self._refuse(f"{self.bound}: this Patient has none", where)
        claimed = sorted({s for s in _systems(patient) if s in self.foreign})
        if claimed:
            self._refuse(f"this Patient carries an identifier of {', '.join(claimed)}, bound to another key", where)

    def _refuse(self, message: str, expression: str) -> None:
        self.issues.append(Issue("error", "forbidden", message, expression))

    def _resolve(
        self, ref: Mapping[str, Any], container: Mapping[str, Any], *, in_bundle: bool
    ) -> tuple[str, Any] | None:
        """What a reference stands for, as a FHIR server reads it: ("patient", resource), ("server",
        "Patient/id"), ("conditional", search), ("identifier", system), ("unreadable", text), or None: no Patient."""
        raw = ref.get("reference")
        if isinstance(raw, str):
            text = unquote(raw).strip()
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
            if in_bundle and raw in self.by_full_url:
                target, action = self.by_full_url[raw]
                if target.get("resourceType") != "Patient":
                    return None
                if action is not None and action.interaction == "conditional-create":
                    return "conditional", action.condition or ""  # the match, when there is one
                return "patient", target
            path, mark, query = text.partition("?")
            if mark and (path == "Patient" or path.endswith("/Patient")):
                # A conditional reference: the FHIR server resolves it, in a transaction, to the Patient it matches.
                return "conditional", query
            match = _PATIENT_URL.search(text)
            if match is None:
                return ("unreadable", text) if _PATIENT_ANY.search(text) else None
            key = f"Patient/{match.group(1)}"
            if in_bundle and key in self.by_type_id:
                return "patient", self.by_type_id[key]
            return "server", key
        identifier = ref.get("identifier")
        if isinstance(identifier, dict):
            named = ref.get("type")
            if isinstance(named, str) and _TYPE.fullmatch(named) and named != "Patient":
                return None  # a logical reference to another resource type
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
            if value in self.namespaces:
                return None
            return (
                "it refers to a patient by an identifier of another system (a logical reference to something else "
                "names its type)"
            )
        if kind == "unreadable":
            return "it refers to a Patient in a form that cannot be checked"
        if kind == "patient":
            return None if in_namespaces(value, self.namespaces) else "it refers to a Patient that has none"
        stored = patients.get(value)
        if stored is None:
            # A stored resource pointing at a Patient that is gone: nobody's patient to protect.
            if not in_bundle:
                return None
            return f"it refers to {value}, which neither this Bundle nor the FHIR server holds"
        return None if in_namespaces(stored, self.namespaces) else f"it refers to {value}, which has none"

    async def _stored(self, action: Action) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = []
        if action.interaction in ("update", "conditional-update") and action.resource_id is not None:
            found = await self._read(f"{action.resource_type}/{action.resource_id}")
            targets += [found] if found is not None else []
        if action.interaction == "conditional-update" and action.condition:
            where = f"Bundle.entry[{action.index}].request.url"
            params = parse_qsl(action.condition, keep_blank_values=True)
            if not params or any(name not in CONDITION_PARAMETERS for name, _ in params):
                message = (
                    f"{self.bound}: its conditional updates search by {' or '.join(sorted(CONDITION_PARAMETERS))} "
                    "only, so that what they match can be checked as the FHIR server finds it"
                )
                self._refuse(message, where)
                return targets
            query = Search(action.resource_type)
            try:
                for name, value in params:
                    query = query.param(name, value)
            except ValueError as exc:
                self._refuse(f"the conditional URL cannot be checked: {exc}", where)
                return targets
            async with self._gate:
                page = await self.client.search(query.param("_count", 2))
            matches = page.get("entry")
            targets += [
                m["resource"]
                for m in (matches if isinstance(matches, list) else ())
                if isinstance(m, dict)
                and isinstance(m.get("resource"), dict)
                and m["resource"].get("resourceType") == action.resource_type
            ]
        return targets  # a create writes something new

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
