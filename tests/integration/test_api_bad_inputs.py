"""Named bad inputs to the API, each with the status and OperationOutcome issue code it must get; and the FHIR
server behind the API failing in the ways servers fail (refusal, 5xx, timeout), answered as 502/503/504."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from casebridge.api.app import create_app
from casebridge.errors import ResourceNotFound
from casebridge.fhir.client import FhirClient
from tests.loopback import serve
from tests.paths import DATA_DIR

from .test_api import FHIR_JSON, PATIENT, READ, RO, WRITE, bundle_of, is_outcome, settings_for

LIMIT = 64 * 1024  # a small body limit, so the oversized cases stay small
CASE_JSON = {"Content-Type": "application/json"}
YAML = {"Content-Type": "application/yaml"}
XML = {"Content-Type": "application/fhir+xml"}
XML_TRANSACTION = (
    b'<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry>'
    b'<fullUrl value="urn:uuid:6a3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"/><resource><Patient>%s</Patient></resource>'
    b'<request><method value="POST"/><url value="Patient"/></request></entry></Bundle>'
)


@pytest.fixture(scope="module")
def api(fhir_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = settings_for(fhir_server, tmp_path_factory.mktemp("bad"), max_body_bytes=LIMIT)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def hapi_api(fhir_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The API set up for a HAPI server (CASEBRIDGE_UPSTREAM=hapi), in front of the embedded one: its pre-checks
    look the server up as they would HAPI."""
    settings = settings_for(fhir_server, tmp_path_factory.mktemp("bad-hapi"), max_body_bytes=LIMIT, upstream="hapi")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def nested(depth: int) -> bytes:
    return b'{"resourceType": "Patient", "extension": ' + b"[" * depth + b"]" * depth + b"}"


class chunks:  # lower case: read as a function call in the table
    """A body sent in chunks, without a Content-Length. Iterable again for every request: a generator built once at
    import would send an empty body the second time the table row runs (a rerun in one process)."""

    def __init__(self, data: bytes, size: int = 8192) -> None:
        self.data, self.size = data, size

    def __iter__(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


BILLION_LAUGHS = b"""a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
"""
XXE = b"""<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><gender value="&x;"/></Patient>"""
DUPLICATE_FULLURL = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:0f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
            "resource": PATIENT,
            "request": {"method": "PUT", "url": f"Patient/{PATIENT['id']}"},
        },
        {  # a create, so the entries' URLs differ (two writes of one URL are refused before validation)
            "fullUrl": "urn:uuid:0f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
            "resource": PATIENT,
            "request": {"method": "POST", "url": "Patient"},
        },
    ],
}
K3_OBSERVATION = {  # valid, and sent to a HAPI server each time with one thing HAPI would refuse
    "resourceType": "Observation",
    "id": "7d3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
    "status": "final",
    "code": {"text": "x"},
}


def with_ids(*resources: dict[str, Any]) -> dict[str, Any]:
    """``bundle_of`` for any ids: each fullUrl a UUID made from the id (``bundle_of`` needs ids that are UUIDs)."""
    bundle = bundle_of(*resources)
    for entry in bundle["entry"]:
        entry["fullUrl"] = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, entry['request']['url'])}"
    return bundle


DANGLING = bundle_of(
    {
        "resourceType": "Observation",
        "id": "3f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "urn:uuid:9f9e9a9c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"},
    }
)


@dataclass
class Bad:
    name: str
    method: str
    path: str
    status: int
    code: str  # an issue code the OperationOutcome must carry
    body: bytes | chunks | None = None
    headers: dict[str, str] = field(default_factory=dict)
    upstream: str = "generic"  # hapi: the API set up for a HAPI server (CASEBRIDGE_UPSTREAM), its pre-checks on
    words: tuple[str, ...] = ()  # what the OperationOutcome must say as well


def j(doc: Any) -> bytes:
    return json.dumps(doc).encode()


BAD_INPUTS = [
    Bad("malformed JSON case", "POST", "/cases", 400, "structure", b'{"case_id": ', {**READ, **CASE_JSON}),
    Bad("malformed YAML case", "POST", "/cases", 400, "structure", b"a: [1, 2\nb: }", {**READ, **YAML}),
    Bad("YAML bomb (aliases)", "POST", "/cases", 400, "structure", BILLION_LAUGHS, {**READ, **YAML}),
    Bad("1,000-deep JSON case", "POST", "/cases", 400, "structure", b"[" * 1000 + b"]" * 1000, {**READ, **CASE_JSON}),
    Bad("1,000-deep resource", "POST", "/Patient/$validate", 400, "structure", nested(1000), {**READ, **FHIR_JSON}),
    Bad(
        "huge string (over the limit)",
        "POST",
        "/cases",
        413,
        "too-costly",
        j({"case_id": "x" * (LIMIT + 10)}),
        {**READ, **CASE_JSON},
    ),
    Bad(
        "huge string in an id",
        "POST",
        "/cases",
        422,
        "invalid",
        j({"schema_version": "1.0", "case_id": "x" * 5000}),
        {**READ, **CASE_JSON},
    ),
    Bad(
        "oversized body, chunked (no Content-Length)",
        "POST",
        "/Bundle/$validate",
        413,
        "too-costly",
        chunks(b" " * (LIMIT + 1)),
        {**READ, **FHIR_JSON},
    ),
    Bad("wrong content type", "POST", "/cases", 415, "not-supported", b"{}", {**READ, "Content-Type": "text/plain"}),
    Bad("no content type", "POST", "/Patient/$validate", 415, "not-supported", b"{}", READ),
    Bad(
        "form content type on /bundles",
        "POST",
        "/bundles",
        415,
        "not-supported",
        b"a=b",
        {**WRITE, "Content-Type": "application/x-www-form-urlencoded"},
    ),
    Bad(
        "unknown resource type in the path",
        "POST",
        "/Foo/$validate",
        404,
        "not-supported",
        j({"resourceType": "Foo"}),
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "unknown resourceType in the body",
        "POST",
        "/Bundle/$validate",
        400,
        "invalid",
        j({"resourceType": "Foo"}),
        {**READ, **FHIR_JSON},
    ),
    Bad("no resourceType", "POST", "/Patient/$validate", 400, "structure", j({"id": "x"}), {**READ, **FHIR_JSON}),
    Bad("duplicate fullUrls", "POST", "/bundles", 422, "invalid", j(DUPLICATE_FULLURL), {**WRITE, **FHIR_JSON}),
    Bad("dangling reference", "POST", "/bundles", 422, "structure", j(DANGLING), {**WRITE, **FHIR_JSON}),
    Bad(
        "bad code",
        "POST",
        "/bundles",
        422,
        "code-invalid",
        j(bundle_of({**PATIENT, "gender": "f"})),
        {**WRITE, **FHIR_JSON},
    ),
    Bad(
        "batch instead of transaction",
        "POST",
        "/bundles",
        422,
        "invalid",
        j({**bundle_of(PATIENT), "type": "batch"}),
        {**WRITE, **FHIR_JSON},
    ),
    Bad("no Authorization", "POST", "/cases", 401, "login", b"{}", CASE_JSON),
    Bad("unknown API key", "POST", "/cases", 401, "login", b"{}", {"Authorization": "Bearer " + "n" * 40, **CASE_JSON}),
    Bad("Basic instead of Bearer", "GET", "/diagnostic-reports", 401, "login", None, {"Authorization": f"Basic {RO}"}),
    Bad("read-only key forwarding", "POST", "/bundles", 403, "forbidden", j(bundle_of(PATIENT)), {**READ, **FHIR_JSON}),
    Bad(
        "duplicate JSON keys",
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        b'{"resourceType": "Patient", "gender": "male", "gender": "female"}',
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "not UTF-8",
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        b'{"resourceType": "Patient", "x": "\xff"}',
        {**READ, **FHIR_JSON},
    ),
    Bad("a JSON array, not a case", "POST", "/cases", 400, "structure", b"[1, 2]", {**READ, **CASE_JSON}),
    Bad("empty body", "POST", "/cases", 400, "required", b"", {**READ, **CASE_JSON}),
    Bad(
        "case that does not fit the model",
        "POST",
        "/cases",
        422,
        "invalid",
        j({"schema_version": "1.0", "case_id": "x", "patient": {"sex": "nonsense"}}),
        {**READ, **CASE_JSON},
    ),
    Bad(
        "XML with an external entity",
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        XXE,
        {**READ, "Content-Type": "application/fhir+xml"},
    ),
    Bad(
        "Parameters without a resource",
        "POST",
        "/Patient/$validate",
        400,
        "required",
        j({"resourceType": "Parameters", "parameter": []}),
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "unknown profile",
        "POST",
        "/Patient/$validate?profile=http://example.org/nope",
        400,
        "not-found",
        j({"resourceType": "Patient"}),
        {**READ, **FHIR_JSON},
    ),
    Bad("page size 0", "GET", "/diagnostic-reports?_count=0", 400, "invalid", None, READ),
    Bad("since that is not a date", "GET", "/diagnostic-reports?since=yesterday", 400, "invalid", None, READ),
    Bad("empty patient filter", "GET", "/diagnostic-reports?patient=", 400, "invalid", None, READ),
    Bad("unknown format", "GET", "/diagnostic-reports?_format=xlsx", 400, "invalid", None, READ),
    Bad("unknown route", "GET", "/Patient/123", 404, "not-found", None, READ),
    # Found in review: each of these was a 500, a redirect, or a bypass.
    Bad(
        "lone surrogate as the resource type",
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        b'{"resourceType": "\\ud800"}',
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "lone surrogate in a forwarded value",
        "POST",
        "/bundles",
        400,
        "structure",
        j(bundle_of(PATIENT)).replace(b'"female"', b'"\\udc00"'),
        {**WRITE, **FHIR_JSON},
    ),
    Bad(
        "XML nested 2,000 deep",
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        b'<Patient xmlns="http://hl7.org/fhir">'
        + b'<extension url="x">' * 2000
        + b"</extension>" * 2000
        + b"</Patient>",
        {**READ, "Content-Type": "application/fhir+xml"},
    ),
    Bad("YAML with a list as a key", "POST", "/cases", 400, "structure", b"? [1, 2]\n: x\n", {**READ, **YAML}),
    Bad(
        "NaN",
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        b'{"resourceType": "Patient", "multipleBirthInteger": NaN}',
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "a number too large for a float",
        "POST",
        "/bundles",
        400,
        "structure",
        j(bundle_of(PATIENT)).replace(b'"gender"', b'"multipleBirthInteger": 1e400, "gender"'),
        {**WRITE, **FHIR_JSON},
    ),
    Bad("trailing slash (no redirect)", "POST", "/cases/", 404, "not-found", b"{}", {**READ, **CASE_JSON}),
    Bad(
        "meta.profile not a list, forwarded",
        "POST",
        "/bundles",
        422,
        "structure",
        j(bundle_of({**PATIENT, "meta": {"profile": {"evil": 1}}})),
        {**WRITE, **FHIR_JSON},
    ),
    Bad(
        "thousands of claimed profiles",
        "POST",
        "/bundles",
        422,
        "too-costly",
        j(bundle_of({**PATIENT, "meta": {"profile": [f"http://example.org/p{i}" for i in range(500)]}})),
        {**WRITE, **FHIR_JSON},
    ),
    Bad(
        "too many profile parameters",
        "POST",
        "/Patient/$validate?" + "&".join(f"profile=p{i}" for i in range(11)),
        400,
        "too-costly",
        j({"resourceType": "Patient"}),
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "a data type, not a resource",
        "POST",
        "/HumanName/$validate",
        404,
        "not-supported",
        j({"resourceType": "HumanName"}),
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "an abstract type",
        "POST",
        "/DomainResource/$validate",
        404,
        "not-supported",
        j({"resourceType": "DomainResource"}),
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "a format nobody offers",
        "GET",
        "/diagnostic-reports",
        406,
        "not-supported",
        None,
        {**READ, "Accept": "text/html"},
    ),
    Bad(
        "an Accept quality that is not a number from 0 to 1",
        "GET",
        "/diagnostic-reports",
        406,
        "not-supported",
        None,
        {**READ, "Accept": "text/csv;q=nan"},
    ),
    Bad(
        "since without a time zone", "GET", "/diagnostic-reports?since=2026-01-01T10:00:00", 400, "invalid", None, READ
    ),
    Bad("since in year 9999", "GET", "/diagnostic-reports?since=9999-12-31", 400, "invalid", None, READ),
    Bad("wrong method", "GET", "/cases", 405, "not-supported", None, READ),
    Bad(
        "since with seconds in its offset",
        "GET",
        "/diagnostic-reports?since=2020-01-01T00:00:00%2B05:30:15",
        400,
        "invalid",
        None,
        READ,
    ),
    Bad(
        "since with an offset past 14 h",
        "GET",
        "/diagnostic-reports?since=2020-01-01T00:00:00%2B20:00",
        400,
        "invalid",
        None,
        READ,
    ),
    Bad(
        "Parameters.parameter not an array",
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        j({"resourceType": "Parameters", "parameter": 5}),
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "Bundle.entry not an array",
        "POST",
        "/bundles",
        422,
        "structure",
        j({"resourceType": "Bundle", "type": "transaction", "entry": 5}),
        {**WRITE, **FHIR_JSON},
    ),
    Bad(
        "XML element named like a JSON companion",  # it crashed the XML reader: a 500
        "POST",
        "/Patient/$validate",
        400,
        "structure",
        b'<Patient xmlns="http://hl7.org/fhir"><name><_given/><given value="x"/></name></Patient>',
        {**READ, **XML},
    ),
    Bad(
        "XML narrative with an element in no namespace",  # likewise a 500
        "POST",
        "/bundles",
        400,
        "structure",
        XML_TRANSACTION
        % b'<text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p xmlns="">x</p></div></text>',
        {**WRITE, **XML},
    ),
    Bad(
        "XML attribute FHIR does not define",  # dropped, and the rest forwarded
        "POST",
        "/bundles",
        400,
        "structure",
        XML_TRANSACTION % b'<gender value="female" foo="male"/>',
        {**WRITE, **XML},
    ),
    Bad(
        "XML number too large for JSON",  # forwarded, then refused by the FHIR server: a 502
        "POST",
        "/Observation/$validate",
        400,
        "structure",
        b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code>'
        b'<valueQuantity><value value="1e400"/></valueQuantity></Observation>',
        {**READ, **XML},
    ),
    Bad(
        "JSON integer too large for a decimal",  # 1e400 spelled out: it passed, and the FHIR server failed (a 502)
        "POST",
        "/Observation/$validate",
        400,
        "structure",
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1'
        + b"0" * 400
        + b"}}",
        {**READ, **FHIR_JSON},
    ),
    Bad(
        "compressed body",  # not decompressed here: it was read as text and refused as 'not UTF-8'
        "POST",
        "/cases",
        415,
        "not-supported",
        gzip.compress(b'{"case_id": "x"}'),
        {**READ, **CASE_JSON, "Content-Encoding": "gzip"},
    ),
    Bad(
        "negative reference-range bound",  # a quantity, like the value it frames
        "POST",
        "/cases",
        422,
        "invalid",
        (DATA_DIR / "cases" / "lipoma-left-forearm.yaml")
        .read_bytes()
        .replace(b"reference_range: {low: 2.15,", b"reference_range: {low: -1,"),
        {**READ, **YAML},
    ),
    # What HAPI refuses as a whole (400) under its default settings, refused first for a HAPI server.
    Bad(
        "numeric client id, for HAPI",
        "POST",
        "/bundles",
        422,
        "business-rule",
        j(with_ids({**PATIENT, "id": "20260412"})),
        {**WRITE, **FHIR_JSON},
        upstream="hapi",
        words=("Bundle.entry[0].request.url", "HAPI would refuse it: HAPI-0960"),
    ),
    Bad(
        "absolute reference, for HAPI",
        "POST",
        "/bundles",
        422,
        "business-rule",
        j(bundle_of({**K3_OBSERVATION, "subject": {"reference": "http://elsewhere.example/fhir/Patient/p1"}})),
        {**WRITE, **FHIR_JSON},
        upstream="hapi",
        words=("Bundle.entry[0].resource.subject.reference", "HAPI-0507", "http://elsewhere.example/fhir/Patient/p1"),
    ),
    Bad(
        "reference to a resource neither in the Bundle nor on the server, for HAPI",
        "POST",
        "/bundles",
        422,
        "business-rule",
        j(bundle_of(PATIENT, {**K3_OBSERVATION, "performer": [{"reference": "Practitioner/k3-nobody"}]})),
        {**WRITE, **FHIR_JSON},
        upstream="hapi",
        words=("Bundle.entry[1].resource.performer[0].reference", "HAPI-1094", "Practitioner/k3-nobody"),
    ),
    Bad(
        "more stored references than HAPI's pre-checks may look up",
        "POST",
        "/bundles",
        422,
        "too-costly",
        j(bundle_of({**K3_OBSERVATION, "hasMember": [{"reference": f"Observation/k3-m{i}"} for i in range(401)]})),
        {**WRITE, **FHIR_JSON},
        upstream="hapi",
        words=("hapi_checks.max_lookups (10)",),
    ),
]


@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.name for b in BAD_INPUTS])
def test_bad_input(api: TestClient, bad: Bad, request: pytest.FixtureRequest) -> None:
    client = request.getfixturevalue("hapi_api") if bad.upstream == "hapi" else api
    response = client.request(bad.method, bad.path, content=bad.body, headers=bad.headers)
    body = is_outcome(response, bad.status, bad.code)
    assert all(words in json.dumps(body) for words in bad.words), body
    assert all(i["severity"] in ("error", "fatal") or i["code"] == bad.code for i in body["issue"][:1])
    assert "Traceback" not in response.text
    if bad.status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


def at_size(size: int) -> bytes:
    """A valid Patient, padded with white space to ``size`` bytes."""
    patient = json.dumps({"resourceType": "Patient", "gender": "female"}).encode()
    return patient + b" " * (size - len(patient))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_exactly_at_the_limit_is_read_and_one_byte_more_is_413(api: TestClient, chunked: bool) -> None:
    """The limit is the largest body taken: at it, the resource is validated; one byte over, 413. With a
    Content-Length (checked before reading) and without one (counted while reading)."""
    headers = {**READ, **FHIR_JSON}
    exact, over = at_size(LIMIT), at_size(LIMIT + 1)
    assert (len(exact), len(over)) == (LIMIT, LIMIT + 1)
    response = api.post("/Patient/$validate", content=chunks(exact) if chunked else exact, headers=headers)
    assert response.status_code == 200, response.text[:500]
    assert not [i for i in response.json()["issue"] if i["severity"] in ("error", "fatal")], response.text[:500]
    response = api.post("/Patient/$validate", content=chunks(over) if chunked else over, headers=headers)
    body = is_outcome(response, 413, "too-costly")
    assert body["issue"][0]["diagnostics"] == f"the request body is larger than {LIMIT:,} bytes", body


def test_there_are_at_least_25_named_bad_inputs() -> None:
    assert len({b.name for b in BAD_INPUTS}) == len(BAD_INPUTS) >= 25


def test_for_hapi_nothing_refused_is_stored_and_what_hapi_accepts_is_forwarded(
    api: TestClient, hapi_api: TestClient, fhir_server: str
) -> None:
    for bad in BAD_INPUTS:
        if bad.upstream == "hapi":
            hapi_api.request(bad.method, bad.path, content=bad.body, headers=bad.headers)
    with FhirClient(fhir_server) as server:
        with pytest.raises(ResourceNotFound):
            server.read("Patient", "20260412")
        with pytest.raises(ResourceNotFound):
            server.read("Observation", K3_OBSERVATION["id"])
    # The same rows for another server: forwarded (the embedded server takes numeric ids and dangling references).
    generic = api.post("/bundles", json=with_ids({**PATIENT, "id": "20260413"}), headers={**WRITE, **FHIR_JSON})
    assert generic.status_code == 200, generic.text
    # For HAPI, a reference to what the server holds passes (the Patient just stored), as does a stored numeric id.
    observation = {
        **K3_OBSERVATION,
        "id": "8d3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
        "subject": {"reference": "Patient/20260413"},
    }
    for bundle in (with_ids(observation), with_ids({**PATIENT, "id": "20260413"}, observation)):
        passed = hapi_api.post("/bundles", json=bundle, headers={**WRITE, **FHIR_JSON})
        assert passed.status_code == 200, passed.text


# -- the FHIR server behind the API failing -------------------------------------------------------------------


class Upstream:
    """A FHIR server stand-in whose transaction endpoint fails as told."""

    def __init__(self) -> None:
        self.mode = "refuse"
        self.next_elsewhere = False
        self.app = Starlette(
            routes=[
                Route("/fhir", self.transaction, methods=["POST"]),
                Route("/fhir/DiagnosticReport", self.search, methods=["GET"]),
                Route("/fhir/metadata", self.metadata, methods=["GET"]),
            ]
        )

    async def metadata(self, request: Request) -> Response:
        # "software" should be an object: a server that says otherwise is still there.
        return JSONResponse({"resourceType": "CapabilityStatement", "software": "x", "fhirVersion": "4.0.1"})

    async def transaction(self, request: Request) -> Response:
        await request.body()
        if self.mode == "slow":
            await asyncio.sleep(2)
        if self.mode == "unavailable":  # for longer than the client waits itself (30 s)
            down = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "transient"}]}
            return JSONResponse(down, status_code=503, headers={"Retry-After": "120"})
        if self.mode == "refuse":
            return JSONResponse(
                {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "error", "code": "processing", "diagnostics": "HAPI-0550: id already in use"}
                    ],
                },
                status_code=400,
            )
        return JSONResponse(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "database down"}],
            },
            status_code=500,
        )

    async def search(self, request: Request) -> Response:
        if self.next_elsewhere:  # a first page whose next link leaves the FHIR server
            page = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [{"resource": {"resourceType": "DiagnosticReport", "id": "r1", "status": "final"}}],
                "link": [{"relation": "next", "url": "http://169.254.169.254/fhir/DiagnosticReport?page=2"}],
            }
            return JSONResponse(page, media_type="application/fhir+json")
        return Response(b"<html>proxy error</html>", status_code=502, media_type="text/html")


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Upstream]]:
    upstream = Upstream()
    with serve(upstream.app) as base:
        settings = settings_for(
            f"{base}/fhir", Path(tmp_path_factory.mktemp("upstream")), fhir_timeout=0.5, fhir_retry_attempts=2
        )
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            yield client, upstream


@pytest.mark.parametrize(
    ("mode", "status", "words"),
    [
        ("refuse", 502, "HAPI-0550"),
        ("crash", 502, "database down"),
        ("slow", 504, "timed out"),
        ("unavailable", 503, "unavailable (503)"),
    ],
)
def test_upstream_failures_are_502_503_or_504_with_what_happened(
    failing: tuple[TestClient, Upstream], mode: str, status: int, words: str
) -> None:
    client, upstream = failing
    upstream.mode = mode
    response = client.post("/bundles", json=bundle_of(PATIENT), headers={**WRITE, **FHIR_JSON})
    body = is_outcome(response, status)
    assert words in json.dumps(body)
    # The server's own Retry-After, beyond what the client waits itself, is passed on rather than lost.
    assert response.headers.get("retry-after") == ("120" if mode == "unavailable" else None)
    assert body["issue"][0]["diagnostics"].startswith(("the FHIR server", "upstream"))


def test_an_upstream_answer_that_is_not_fhir_is_502(failing: tuple[TestClient, Upstream]) -> None:
    client, _ = failing
    body = is_outcome(client.get("/diagnostic-reports", headers=READ), 502)
    assert "502" in json.dumps(body)


def test_readiness_survives_an_odd_capability_statement(failing: tuple[TestClient, Upstream]) -> None:
    client, _ = failing
    response = client.get("/readyz")
    assert response.status_code == 200 and response.json()["fhir"] == "FHIR server, FHIR 4.0.1"


def test_a_next_link_elsewhere_cuts_the_stream_and_says_why(
    failing: tuple[TestClient, Upstream], caplog: pytest.LogCaptureFixture
) -> None:
    client, upstream = failing
    before = refused_links(client)
    upstream.next_elsewhere = True
    try:
        with caplog.at_level(logging.WARNING):
            response = client.get("/diagnostic-reports?_format=ndjson", headers=READ)
    finally:
        upstream.next_elsewhere = False
    assert response.status_code == 200 and b'"r1"' in response.content  # the first page, then the cut
    assert "response aborted: FhirProtocolError" in caplog.text  # not Starlette's RuntimeError around it
    assert refused_links(client) == before + 1


def refused_links(client: TestClient) -> float:
    prefix = 'casebridge_upstream_errors_total{kind="FhirProtocolError"} '
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0
