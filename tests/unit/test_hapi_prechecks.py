"""The gateway's HAPI pre-checks (casebridge.gateway.hapi_checks): what each predicts HAPI refuses and what it lets
through, the paths HAPI reads references at, the policy file's hapi_checks, and the lookups against a loopback
server that answers _id searches as HAPI does (the API's rows are in tests/integration/test_api_bad_inputs.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from casebridge.config import DATA_DIR, Settings
from casebridge.definitions.packages import default_cache_dir
from casebridge.errors import MappingError
from casebridge.fhir.client import AsyncFhirClient
from casebridge.gateway._hapi_reference_paths import REFERENCE_PATHS
from casebridge.gateway.hapi_checks import IDS_PER_SEARCH, HapiPrecheck, reference_paths
from casebridge.gateway.policy import HapiChecks, check_entries, load_forwarding_policy
from tests.conftest import pinned_packages_missing
from tests.loopback import serve

ON = HapiChecks()


def put(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    return {
        "fullUrl": full_url or f"urn:uuid:{resource['id']}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def observation(oid: str = "obs-1", **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "x"}, **fields}


def plan(bundle: dict[str, Any], checks: HapiChecks = ON) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(refusals as (expression, message), lookups as (Type/id, expression)) without a server."""
    actions, refused = check_entries(bundle, None)
    assert refused == []
    issues, needed = HapiPrecheck(None, bundle, actions, checks).plan()  # type: ignore[arg-type]  # no lookups here
    return [(i.expression, i.message) for i in issues], [(n.ref, n.expression) for n in needed]


# -- numeric ids ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rid", ["123", "0", "0042", "9" * 64])
def test_a_put_at_a_numeric_id_needs_that_resource_stored(rid: str) -> None:
    refused, needed = plan(transaction(put({"resourceType": "Patient", "id": rid})))
    assert refused == [] and needed == [(f"Patient/{rid}", "Bundle.entry[0].request.url")]


@pytest.mark.parametrize("rid", ["123a", "a123", "12-3", "1.5", "0f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"])
def test_an_id_with_one_non_digit_is_not_numeric(rid: str) -> None:
    assert plan(transaction(put({"resourceType": "Patient", "id": rid}))) == ([], [])


def test_a_post_of_a_resource_with_a_numeric_id_is_not_refused() -> None:
    # HAPI drops the id of a created resource (doCreateForPost: "ID and version in the body should be ignored").
    entry = {"resource": {"resourceType": "Patient", "id": "123"}, "request": {"method": "POST", "url": "Patient"}}
    assert plan(transaction(entry)) == ([], [])


def test_a_conditional_put_with_a_numeric_id_needs_it_stored_too() -> None:
    entry = {
        "resource": {"resourceType": "Patient", "id": "77"},
        "request": {"method": "PUT", "url": "Patient?identifier=urn:sys|77"},
    }
    assert plan(transaction(entry)) == ([], [("Patient/77", "Bundle.entry[0].resource.id")])


def test_numeric_ids_off() -> None:
    checks = HapiChecks(numeric_ids=False)
    assert plan(transaction(put({"resourceType": "Patient", "id": "123"})), checks) == ([], [])


# -- references -----------------------------------------------------------------------------------------------


def test_an_absolute_reference_is_refused_naming_its_element_and_hapis_code() -> None:
    obs = observation(subject={"reference": "http://elsewhere.example/fhir/Patient/p1"})
    refused, needed = plan(transaction(put(obs)))
    assert needed == []
    assert refused == [
        (
            "Bundle.entry[0].resource.subject.reference",
            "HAPI would refuse it: HAPI-0507: Resource contains external reference to URL "
            '"http://elsewhere.example/fhir/Patient/p1" but this server is not configured to allow external references',
        )
    ]


@pytest.mark.parametrize(
    "reference",
    [
        "#p",  # contained
        "urn:uuid:6a3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",  # an entry's fullUrl
        "http://example.org/fhir/Patient/abs",  # an entry's absolute fullUrl, replaced by HAPI in the transaction
        "Patient/in-bundle",  # an entry's Type/id
        "Patient/in-bundle/_history/2",  # a version of it (HAPI strips versions from references at most paths)
        "Patient?identifier=urn:sys|1",  # conditional: HAPI's search resolves it
        "http://hl7.org/fhir/StructureDefinition/Patient",  # logical by HAPI's default
    ],
)
def test_references_hapi_resolves_or_does_not_check(reference: str) -> None:
    patients = [
        put({"resourceType": "Patient", "id": "in-bundle"}, "urn:uuid:6a3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"),
        put({"resourceType": "Patient", "id": "abs"}, "http://example.org/fhir/Patient/abs"),
    ]
    obs = observation(subject={"reference": reference}, contained=[{"resourceType": "Patient", "id": "p"}])
    assert plan(transaction(*patients, put(obs))) == ([], [])


def test_a_posted_resources_id_counts_as_in_the_bundle() -> None:
    posted = {"resource": {"resourceType": "Patient", "id": "new-one"}, "request": {"method": "POST", "url": "Patient"}}
    assert plan(transaction(posted, put(observation(subject={"reference": "Patient/new-one"})))) == ([], [])


def test_a_reference_neither_in_the_bundle_nor_known_is_looked_up_at_each_place() -> None:
    obs = observation(
        subject={"reference": "Patient/elsewhere"},
        performer=[{"reference": "Practitioner/doc"}, {"reference": "Patient/elsewhere/_history/3"}],
    )
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr",
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "Medication/m1"},  # a choice: HAPI's path is .medication
        "subject": {"reference": "Patient/elsewhere"},
    }
    _, needed = plan(transaction(put(obs), put(request)))
    assert needed == [
        ("Patient/elsewhere", "Bundle.entry[0].resource.subject.reference"),
        ("Practitioner/doc", "Bundle.entry[0].resource.performer[0].reference"),
        ("Patient/elsewhere", "Bundle.entry[0].resource.performer[1].reference"),
        ("Medication/m1", "Bundle.entry[1].resource.medicationReference.reference"),
        ("Patient/elsewhere", "Bundle.entry[1].resource.subject.reference"),
    ]


def test_references_hapi_does_not_index_are_left_alone() -> None:
    obs = observation(
        note=[{"authorReference": {"reference": "Practitioner/nowhere"}, "text": "x"}],  # no search parameter
        extension=[{"url": "http://example.org/x", "valueReference": {"reference": "http://elsewhere/Patient/1"}}],
        contained=[
            {
                "resourceType": "Observation",
                "id": "c",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/nowhere"},
            }  # no search parameter reaches into contained resources
        ],
    )
    assert plan(transaction(put(obs))) == ([], [])


def test_reference_checks_off() -> None:
    obs = observation(subject={"reference": "http://elsewhere/fhir/Patient/1"}, focus=[{"reference": "Patient/x"}])
    assert plan(transaction(put(obs)), HapiChecks(absolute_references=False, missing_references=False)) == ([], [])
    refused, needed = plan(transaction(put(obs)), HapiChecks(missing_references=False))
    assert len(refused) == 1 and needed == []


# -- the paths HAPI reads references at -------------------------------------------------------------------------


def test_the_shipped_reference_paths_are_those_of_the_r4_search_parameters() -> None:
    source = default_cache_dir() / "hl7.fhir.r4.examples#4.0.1" / "package" / "Bundle-searchParams.json"
    if not source.is_file():
        pinned_packages_missing(f"{source} is missing")
    bundle = json.loads(source.read_text(encoding="utf-8"))
    derived = reference_paths(
        [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "SearchParameter"]
    )
    shipped = {f"{t}.{p}" for t, paths in REFERENCE_PATHS.items() for p in paths}
    assert shipped == derived
    assert {"Observation.subject", "MedicationRequest.medication", "Condition.evidence.detail"} <= shipped
    assert "Observation.note.authorReference" not in shipped


def test_reference_paths_reads_hapis_expression_forms() -> None:
    parameters = [
        {"type": "reference", "expression": "Account.subject.where(resolve() is Patient) | Claim.patient"},
        {"type": "reference", "expression": "(MedicationRequest.medication as Reference)"},
        {"type": "reference", "expression": "ActivityDefinition.relatedArtifact.where(type='composed-of').resource"},
        {"type": "reference", "expression": "(ConceptMap.source as canonical)"},
        {"type": "token", "expression": "Observation.code"},
    ]
    assert reference_paths(parameters) == {
        "Account.subject",
        "Claim.patient",
        "MedicationRequest.medication",
        "ActivityDefinition.relatedArtifact.resource",
    }


# -- the policy file --------------------------------------------------------------------------------------------


def policy_file(tmp_path: Path, extra: str) -> Path:
    text = (DATA_DIR / "mappings" / "forwarding-policy.yaml").read_text(encoding="utf-8")
    head = text.split("\nhapi_checks:", 1)[0]
    path = tmp_path / "forwarding-policy.yaml"
    path.write_text(head + "\n" + extra, encoding="utf-8")
    return path


def test_the_shipped_policy_turns_every_check_on() -> None:
    policy = load_forwarding_policy(DATA_DIR / "mappings" / "forwarding-policy.yaml", lambda _: True)
    assert policy.hapi_checks == HapiChecks(True, True, True, 10)


def test_a_policy_without_hapi_checks_has_them_on(tmp_path: Path) -> None:
    assert load_forwarding_policy(policy_file(tmp_path, ""), lambda _: True).hapi_checks == ON


def test_a_check_turned_off(tmp_path: Path) -> None:
    path = policy_file(tmp_path, "hapi_checks:\n  numeric_ids: false\n  max_lookups: 3\n")
    checks = load_forwarding_policy(path, lambda _: True).hapi_checks
    assert checks == HapiChecks(numeric_ids=False, max_lookups=3) and checks.enabled


@pytest.mark.parametrize(
    ("block", "line_offset", "words"),
    [
        ("hapi_checks:\n  numeric_ids: maybe\n", 2, "expected true or false"),
        ("hapi_checks:\n  absolute_references: true\n  max_lookups: 0\n", 3, "from 1 to 100"),
        ("hapi_checks:\n  referential_integrity: false\n", 2, "unknown key 'referential_integrity'"),
        ("hapi_checks: [numeric_ids]\n", 1, "expected a mapping"),
    ],
)
def test_mistakes_in_hapi_checks_name_file_and_line(tmp_path: Path, block: str, line_offset: int, words: str) -> None:
    path = policy_file(tmp_path, block)
    first = len(path.read_text(encoding="utf-8").splitlines()) - block.count("\n")
    with pytest.raises(MappingError) as caught:
        load_forwarding_policy(path, lambda _: True)
    assert words in str(caught.value)
    assert caught.value.line == first + line_offset
    assert "forwarding-policy.yaml" in str(caught.value)


def test_the_upstream_setting_defaults_to_generic() -> None:
    assert Settings.model_fields["upstream"].default == "generic"
    assert Settings(upstream="hapi").upstream == "hapi"  # type: ignore[call-arg]


# -- lookups against a server that answers _id searches as HAPI does --------------------------------------------


class Hapi:
    """Answers GET /fhir/{type}?_id=a,b&_count=n&_elements=id with the stored ones, as a searchset; records queries."""

    def __init__(self, stored: set[str]) -> None:
        self.stored = stored
        self.queries: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/fhir/{type}", self.search, methods=["GET"])])

    async def search(self, request: Request) -> Response:
        params = dict(request.query_params)
        self.queries.append(params)
        resource_type = request.path_params["type"]
        ids = params["_id"].split(",")
        found = [i for i in ids if f"{resource_type}/{i}" in self.stored]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {"resource": {"resourceType": resource_type, "id": i}, "search": {"mode": "match"}} for i in found
            ],
        }
        return JSONResponse(bundle, media_type="application/fhir+json")


@pytest.fixture
def hapi() -> Iterator[tuple[Hapi, str]]:
    server = Hapi({"Patient/stored", "Patient/12345", "Practitioner/doc"})
    with serve(server.app, name="hapi-lookups") as base:
        yield server, f"{base}/fhir"


def run(base: str, bundle: dict[str, Any], checks: HapiChecks = ON) -> list[tuple[str, str, str]]:
    async def go() -> list[tuple[str, str, str]]:
        actions, _ = check_entries(bundle, None)
        async with AsyncFhirClient(base) as client:
            issues = await HapiPrecheck(client, bundle, actions, checks).run()
        return [(i.code, i.expression, i.message) for i in issues]

    return asyncio.run(go())


def test_stored_targets_pass_and_absent_ones_are_refused(hapi: tuple[Hapi, str]) -> None:
    server, base = hapi
    bundle = transaction(
        put({"resourceType": "Patient", "id": "12345"}),  # numeric, but stored: an update
        put({"resourceType": "Patient", "id": "678"}),  # numeric and absent: HAPI-0960
        put(observation(subject={"reference": "Patient/stored"}, performer=[{"reference": "Practitioner/doc"}])),
        put(observation("obs-2", subject={"reference": "Patient/gone"})),
    )
    assert run(base, bundle) == [
        (
            "business-rule",
            "Bundle.entry[1].request.url",
            "HAPI would refuse it: HAPI-0960: Can not create resource with ID[678], no resource with this ID exists "
            "and clients may only assign IDs which contain at least one non-numeric character",
        ),
        (
            "business-rule",
            "Bundle.entry[3].resource.subject.reference",
            "HAPI would refuse it: HAPI-1094: Resource Patient/gone not found, specified in path: Observation.subject",
        ),
    ]
    # One search per type, every id of that type in it.
    assert sorted((q["_id"], q["_count"], q["_elements"]) for q in server.queries) == [
        ("12345,678,stored,gone", "4", "id"),
        ("doc", "1", "id"),
    ]


def test_lookups_are_batched_and_bounded(hapi: tuple[Hapi, str]) -> None:
    server, base = hapi
    members = [{"reference": f"Observation/m{i}"} for i in range(IDS_PER_SEARCH * 3 + 1)]  # four searches
    bundle = transaction(put(observation(hasMember=members)))
    refused = run(base, bundle, HapiChecks(max_lookups=4))
    assert len(refused) == len(members) and {r[0] for r in refused} == {"business-rule"}
    assert [len(q["_id"].split(",")) for q in server.queries] == [IDS_PER_SEARCH] * 3 + [1]
    server.queries.clear()
    # One search more than the bound: refused as too costly, and the server is not asked at all.
    assert run(base, bundle, HapiChecks(max_lookups=3)) == [
        (
            "too-costly",
            "Bundle.entry",
            f"the Bundle needs {len(members)} stored resources that HAPI would check; looking them up takes 4 "
            "searches, more than the forwarding policy's hapi_checks.max_lookups (3): send it in smaller transactions",
        )
    ]
    assert server.queries == []


def test_nothing_to_look_up_asks_nothing(hapi: tuple[Hapi, str]) -> None:
    server, base = hapi
    bundle = transaction(put({"resourceType": "Patient", "id": "p-uuid-like"}))
    assert run(base, bundle) == [] and server.queries == []
