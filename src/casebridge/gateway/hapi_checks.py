"""Pre-checks that predict HAPI FHIR's refusals of a whole transaction, so that POST /bundles refuses such a Bundle
first, with a 422 naming the entry, rather than forwarding it for a 400 from HAPI (a 502 here). They run when the
FHIR server is HAPI (``CASEBRIDGE_UPSTREAM=hapi``), each switchable in the forwarding policy (``hapi_checks``).

What HAPI does, read in hapifhir/hapi-fhir (the JPA server the hapiproject/hapi image runs):

- **Numeric client ids** (HAPI-0960). Under the default ``client_id_strategy`` ALPHANUMERIC a client may not create
  a resource whose id is all digits (``BaseHapiFhirResourceDao.validateResourceIdCreation``: ``isIdPartValidLong``,
  every character a digit, in org.hl7.fhir.r4 ``IdType``), since HAPI's own ids are numbers. Only creating is
  refused: a PUT to a numeric id HAPI already holds (one it assigned) is an update (``doUpdate`` creates only when
  ``readEntityLatestVersion`` finds nothing; hapi-fhir-jpaserver-base at 0063ce80). So an entry is refused when its
  numeric id is on neither side. A conditional PUT with a numeric id is refused alike when that id is not stored:
  with no match HAPI creates at the id (0960), with a match of another id it refuses the mismatch (HAPI-2279).
- **Absolute references** (HAPI-0507). With ``allow_external_references`` false (the default), a reference with a
  base URL (``http://elsewhere/fhir/Patient/1``) is refused unless ``local_base_urls`` names that base
  (``SearchParamExtractorService.extractResourceLinks``, hapi-fhir-jpaserver-searchparam at 230489c2), the
  server's own base included (the starter leaves ``local_base_urls`` empty). Not references to HAPI: ``#contained``
  ones, logical references (``treat_references_as_logical``: HL7's ``http://hl7.org/fhir/ValueSet/*``,
  ``CodeSystem/*`` and ``StructureDefinition/*``), canonicals (a separate type; HAPI links them as logical), and in
  a transaction any reference equal to an entry's fullUrl (``urn:uuid:``, ``urn:oid:`` or absolute), which HAPI
  replaces with the id it writes.
- **References to resources it does not have** (HAPI-1094, ``enforce_referential_integrity_on_write`` true, the
  default): a ``Type/id`` reference must name a resource of the transaction or a stored one
  (``DaoResourceLinkResolver``: ``Resource Patient/x not found, specified in path: Observation.subject``).
  Conditional references (``Patient?identifier=...``) are resolved by HAPI's search, not checked here.

HAPI reads references only at the paths of reference search parameters (``_hapi_reference_paths``): a reference
elsewhere (an extension, an Annotation's author) is stored unchecked, and these checks leave it alone too, as they do
references inside contained resources (not indexed by default).

The stored resources are looked up with ``_id`` searches, one per type and up to ``IDS_PER_SEARCH`` ids each, at
most ``max_lookups`` of them per transaction (the forwarding policy's, as issue F bounds every caller's cost): past
that the Bundle is refused as too costly (422 ``too-costly``) rather than forwarded unchecked, deny by default as the
namespace check's own bound is. What a lookup finds may change before the transaction (another writer): these are
predictions of HAPI's answer, HAPI still decides.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from casebridge.fhir.client import AsyncFhirClient
from casebridge.fhir.search import Search
from casebridge.gateway._hapi_reference_paths import REFERENCE_PATHS
from casebridge.gateway.policy import Action, HapiChecks
from casebridge.validation.validator import Issue

IDS_PER_SEARCH = 40  # ids in one _id search: ~2.6 KB of URL at most, within any server's request-line limit
_SEARCHES_AT_ONCE = 8
_PATHS = frozenset(f"{t}.{p}" for t, paths in REFERENCE_PATHS.items() for p in paths)
_RELATIVE = re.compile(r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
# HAPI's default treat_references_as_logical (JpaStorageSettings.DEFAULT_LOGICAL_BASE_URLS), prefixes.
_LOGICAL = (
    "http://hl7.org/fhir/ValueSet/",
    "http://hl7.org/fhir/CodeSystem/",
    "http://hl7.org/fhir/valueset-",
    "http://hl7.org/fhir/codesystem-",
    "http://hl7.org/fhir/StructureDefinition/",
)
# HAPI's own words (hapi-messages.properties, BaseStorageDao / BaseSearchParamExtractor), after its code.
_HAPI_0960 = (
    "HAPI-0960: Can not create resource with ID[{id}], no resource with this ID exists and clients may only assign "
    "IDs which contain at least one non-numeric character"
)
_HAPI_0507 = (
    'HAPI-0507: Resource contains external reference to URL "{url}" but this server is not configured to allow '
    "external references"
)
_HAPI_1094 = "HAPI-1094: Resource {ref} not found, specified in path: {path}"


@dataclass(frozen=True, slots=True)
class _Needed:
    """A stored resource the transaction needs: without it, HAPI refuses (message) the entry at ``expression``."""

    ref: str  # Type/id
    expression: str
    message: str


def reference_paths(search_parameters: Sequence[Mapping[str, Any]]) -> frozenset[str]:
    """The element paths (``Observation.subject``) of the reference search parameters among ``search_parameters``:
    how ``_hapi_reference_paths`` was made, kept here so that a test can derive it again."""
    out: set[str] = set()
    for parameter in search_parameters:
        expression = parameter.get("expression")
        if parameter.get("type") != "reference" or not isinstance(expression, str):
            continue
        for part in expression.split("|"):
            path = re.sub(r"\.where\((?:[^()]|\([^()]*\))*\)", "", part.strip())
            path = re.sub(r"\.(?:as|ofType)\(Reference\)", "", path)
            path = re.sub(r"\[\d+\]", "", path)
            while path.startswith("(") and path.endswith(")"):
                path = path[1:-1].strip()
            path = re.sub(r"\s+as\s+Reference$", "", path)
            if re.fullmatch(r"[A-Z][A-Za-z]+(?:\.[a-z][A-Za-z]*)+", path):
                out.add(path)
    return frozenset(out)


class HapiPrecheck:
    """One check of one transaction (its entries' ``actions`` from ``check_entries``). ``run`` gives an error for
    each entry HAPI would refuse (code ``business-rule``, HAPI's code and words in the message), or one
    ``too-costly`` error when the stored resources to look up need more than ``checks.max_lookups`` searches."""

    def __init__(
        self, client: AsyncFhirClient, bundle: Mapping[str, Any], actions: Sequence[Action], checks: HapiChecks
    ):
        self.client = client
        self.checks = checks
        self.actions = list(actions)
        entries = bundle.get("entry")
        self.entries: list[Any] = entries if isinstance(entries, list) else []
        # What a reference may name and HAPI resolves within the transaction: every entry's fullUrl, and the Type/id
        # of every written resource (HAPI maps a POSTed resource's id too, to the id it assigns).
        self.in_bundle: set[str] = set()
        for entry in self.entries:
            if not isinstance(entry, dict):
                continue
            if isinstance(entry.get("fullUrl"), str):
                self.in_bundle.add(entry["fullUrl"])
            resource = entry.get("resource")
            if isinstance(resource, dict) and isinstance(resource.get("id"), str):
                self.in_bundle.add(f"{resource.get('resourceType')}/{resource['id']}")
        self.in_bundle.update(f"{a.resource_type}/{a.resource_id}" for a in self.actions if a.resource_id)

    def plan(self) -> tuple[list[Issue], list[_Needed]]:
        """What can be said without the server (absolute references), and the stored resources to look up."""
        issues: list[Issue] = []
        needed: list[_Needed] = []
        checks = self.checks
        for action in self.actions:
            where = f"Bundle.entry[{action.index}]"
            own = action.resource_id
            if checks.numeric_ids and own is not None and own.isdigit() and own.isascii():
                # A create at a numeric id is what HAPI refuses: unless that resource is stored, this is one.
                field = "request.url" if action.interaction == "update" else "resource.id"
                message = _HAPI_0960.format(id=own)
                needed.append(_Needed(f"{action.resource_type}/{own}", f"{where}.{field}", message))
            resource = self.entries[action.index].get("resource")
            if not isinstance(resource, dict) or not (checks.absolute_references or checks.missing_references):
                continue
            for path, expression, text in _references(resource, f"{where}.resource"):
                if text.startswith(("#", "urn:")) or "?" in text or text in self.in_bundle:
                    continue  # contained; resolved in the transaction (or left to validation); conditional
                if _ABSOLUTE.match(text):
                    if checks.absolute_references and not text.startswith(_LOGICAL):
                        issues.append(_refusal(_HAPI_0507.format(url=text), expression))
                    continue
                match = _RELATIVE.fullmatch(text)
                if match is None or not checks.missing_references:
                    continue  # not a reference HAPI reads as Type/id: validation's to judge
                ref = f"{match.group(1)}/{match.group(2)}"
                if ref not in self.in_bundle:
                    needed.append(_Needed(ref, expression, _HAPI_1094.format(ref=ref, path=path)))
        return issues, needed

    async def run(self) -> list[Issue]:
        issues, needed = self.plan()
        wanted: dict[str, dict[str, None]] = {}  # type -> ids, in order
        for need in needed:
            resource_type, _, resource_id = need.ref.partition("/")
            wanted.setdefault(resource_type, {})[resource_id] = None
        searches = [
            (resource_type, ids[i : i + IDS_PER_SEARCH])
            for resource_type, by_id in wanted.items()
            for ids in [list(by_id)]
            for i in range(0, len(ids), IDS_PER_SEARCH)
        ]
        if len(searches) > self.checks.max_lookups:
            count = sum(len(ids) for ids in wanted.values())
            message = (
                f"the Bundle needs {count} stored resources that HAPI would check; looking them up takes "
                f"{len(searches)} searches, more than the forwarding policy's hapi_checks.max_lookups "
                f"({self.checks.max_lookups}): send it in smaller transactions"
            )
            return [*issues, Issue("error", "too-costly", message, "Bundle.entry")]
        gate = asyncio.Semaphore(_SEARCHES_AT_ONCE)

        async def stored(resource_type: str, ids: list[str]) -> set[str]:
            query = Search(resource_type).param("_id", ids).param("_count", len(ids)).param("_elements", "id")
            async with gate:
                page = await self.client.search(query)
            entries = page.get("entry")
            return {
                f"{resource_type}/{e['resource'].get('id')}"
                for e in (entries if isinstance(entries, list) else ())
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == resource_type
            }

        found: set[str] = set().union(*await asyncio.gather(*(stored(t, ids) for t, ids in searches)))
        issues += [_refusal(need.message, need.expression) for need in needed if need.ref not in found]
        return issues


def _refusal(hapi: str, expression: str) -> Issue:
    return Issue("error", "business-rule", f"HAPI would refuse it: {hapi}", expression)


def _references(resource: Mapping[str, Any], expression: str) -> Iterator[tuple[str, str, str]]:
    """(element path, FHIRPath expression of the ``reference``, its text) of each Reference HAPI reads: those at a
    reference search parameter's path, outside contained resources; a choice (``medicationReference``) counts at
    its element's path (``MedicationRequest.medication``)."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return
    stack: list[tuple[Any, str, str]] = [(resource, resource_type, expression)]
    out: list[tuple[str, str, str]] = []
    while stack:
        node, path, where = stack.pop()
        if isinstance(node, list):
            stack.extend((item, path, f"{where}[{j}]") for j, item in reversed(list(enumerate(node))))
            continue
        if not isinstance(node, dict):
            continue
        text = node.get("reference")
        if node is not resource and isinstance(text, str) and path in _PATHS:
            out.append((path, f"{where}.reference", text))
        for key, value in reversed(list(node.items())):
            if node is resource and key == "contained":
                continue
            if isinstance(value, dict | list):
                element = f"{path}.{key}"
                if key.endswith("Reference") and f"{path}.{key[: -len('Reference')]}" in _PATHS:
                    element = f"{path}.{key[: -len('Reference')]}"
                stack.append((value, element, f"{where}.{key}"))
    yield from out
