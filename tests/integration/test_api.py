"""The HTTP API, with the real embedded FHIR server behind it: every endpoint and its error paths."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from casebridge.api.app import create_app
from casebridge.api.errors import ApiError
from casebridge.api.routes.reports import _format
from casebridge.config import Settings
from tests import loopback
from tests.conftest import SEED

RW = "rw-" + "k" * 30
RO = "ro-" + "r" * 30
KEYS = f"job:rw:{RW},analyst:ro:{RO}"
WRITE = {"Authorization": f"Bearer {RW}"}
READ = {"Authorization": f"Bearer {RO}"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
YAML = {"Content-Type": "application/yaml"}


def settings_for(server: str, tmp: Path, **extra: Any) -> Settings:
    return Settings(fhir_base_url=server, api_keys=KEYS, lock_dir=tmp / "locks", **extra)


@pytest.fixture(scope="module")
def api(fhir_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(settings_for(fhir_server, tmp_path_factory.mktemp("api")))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture(scope="module")
def seed_yaml() -> bytes:
    """The seed case as YAML under its own case id: the session's FHIR server keeps the real seed's ids for the
    test that checks the seed goes in once."""
    text = SEED.read_text()
    assert "case_id: ijsra-2026-18-3-0536\n" in text
    return text.replace("case_id: ijsra-2026-18-3-0536\n", "case_id: ijsra-2026-18-3-0536-api\n").encode()


def case_copy(case_id: str) -> bytes:
    doc = yaml.safe_load(SEED.read_text())
    doc["case_id"] = case_id
    return json.dumps(doc, default=str).encode()


def is_outcome(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    if code is not None:
        assert code in {i["code"] for i in body["issue"]}, body
    return body


def patient_of(transaction_response: dict[str, Any]) -> str:
    """The Patient id from a transaction-response's locations (relative or absolute)."""
    for entry in transaction_response["entry"]:
        parts = entry["response"]["location"].split("/_history")[0].split("/")
        if parts[-2] == "Patient":
            return parts[-1]
    raise AssertionError("no Patient in the transaction-response")


def no_errors(body: dict[str, Any]) -> bool:
    return not [i for i in body["issue"] if i["severity"] in ("error", "fatal")]


def count(fhir_server: str, query: str) -> int:
    return int(httpx.get(f"{fhir_server}/{query}", timeout=10).json()["total"])


# -- health ---------------------------------------------------------------------------------------------------


def test_no_dependency_runs_on_a_worker_thread(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """FastAPI runs a plain-function dependency on a worker thread: two such hops per request cost ~1 ms of
    CPU per /cases request (and GIL contention with the validation thread). Every dependency is a coroutine."""
    hops: list[Any] = []
    original = anyio.to_thread.run_sync

    async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(fn)
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    assert api.post("/cases", content=b"case_id: [", headers={**READ, **YAML}).status_code == 400
    assert (
        api.post(
            "/Patient/$validate", content=b'{"resourceType": "Patient"}', headers={**WRITE, **FHIR_JSON}
        ).status_code
        == 200
    )
    assert api.post("/bundles", content=b"{}", headers={**READ, **FHIR_JSON}).status_code == 403
    assert api.get("/diagnostic-reports?_count=x", headers=READ).status_code == 400
    assert hops == []


def test_health_readiness_and_metrics_need_no_key(api: TestClient) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["fhir"].endswith("FHIR 4.0.1")
    assert ready.json()["workers"] == 1  # the in-process app: a thread
    api.post("/Patient/$validate", json={"resourceType": "Patient"}, headers={**READ, **FHIR_JSON})
    metrics = api.get("/metrics").text
    assert 'casebridge_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics
    assert 'casebridge_validations_total{endpoint="validate",outcome="valid"}' in metrics
    assert "casebridge_http_request_duration_seconds_bucket" in metrics


def test_health_answers_head_and_negotiation_honours_quality(api: TestClient, pushed_patient: str) -> None:
    assert api.head("/healthz").status_code == 200 and api.head("/readyz").status_code == 200
    refused_csv = api.get(
        f"/diagnostic-reports?patient={pushed_patient}",
        headers={**READ, "Accept": "text/csv;q=0, application/fhir+json"},
    )
    assert refused_csv.headers["content-type"] == "application/fhir+json"
    assert refused_csv.headers["vary"] == "Accept"
    preferred = api.get(
        f"/diagnostic-reports?patient={pushed_patient}",
        headers={**READ, "Accept": "application/fhir+json;q=0.5, text/csv"},
    )
    assert preferred.headers["content-type"].startswith("text/csv")


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        ("", "json"),
        ("*/*", "json"),
        ("application/*", "json"),
        ("application/json", "json"),
        ("text/csv, application/fhir+json", "csv"),  # equal quality: the range named first
        ("application/x-ndjson;q=0.9, */*;q=0.8", "ndjson"),
        # A specific q=0 is not overridden by a wider range that also covers it (RFC 9110 12.5.1).
        ("application/fhir+json;q=0, */*", "ndjson"),
        ("application/fhir+json;q=0, application/json", None),  # what would be answered was refused
        ("text/*", "csv"),
        ("text/*;q=0.1, application/fhir+ndjson;q=0.2", "ndjson"),
        ("*/*;q=0, text/csv", "csv"),
        ("text/html, image/*", None),
        ("text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2", "json"),  # Java's default (it was a 406)
    ],
)
def test_accept_is_read_as_rfc_9110_says(accept: str, chosen: str | None) -> None:
    if chosen is None:
        with pytest.raises(ApiError) as refused:
            _format(None, accept)
        assert refused.value.status == 406
    else:
        assert _format(None, accept) == chosen
    assert _format("csv", accept) == "csv"  # _format wins


def test_not_ready_when_the_fhir_server_is_unreachable(tmp_path: Path) -> None:
    settings = settings_for("http://127.0.0.1:9/fhir", tmp_path, fhir_retry_attempts=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = is_outcome(client.get("/readyz"), 503, "transient")
        assert "127.0.0.1" not in str(body)  # no internal address without a key
        assert client.get("/healthz").status_code == 200


# -- POST /cases -------------------------------------------------------------------------------------------------


def test_a_case_becomes_a_validated_bundle(api: TestClient, seed_yaml: bytes) -> None:
    response = api.post("/cases", content=seed_yaml, headers={**READ, **YAML})
    assert response.status_code == 200, response.text
    bundle = response.json()
    assert (bundle["resourceType"], bundle["type"], len(bundle["entry"])) == ("Bundle", "transaction", 38)
    assert response.headers["x-request-id"]
    as_json = api.post(
        "/cases", content=case_copy("api-json-case"), headers={**READ, "Content-Type": "application/json"}
    )
    assert as_json.status_code == 200 and as_json.json()["type"] == "transaction"


def test_push_true_sends_it_once(api: TestClient, fhir_server: str) -> None:
    body = case_copy("api-push-case")
    first = api.post("/cases?push=true", content=body, headers={**WRITE, "Content-Type": "application/json"})
    assert first.status_code == 200, first.text
    reply = first.json()
    assert reply["type"] == "transaction-response"
    assert {e["response"]["status"].split()[0] for e in reply["entry"]} == {"201"}
    again = api.post("/cases?push=true", content=body, headers={**WRITE, "Content-Type": "application/json"})
    assert {e["response"]["status"].split()[0] for e in again.json()["entry"]} == {"200"}
    assert count(fhir_server, f"Patient?_id={patient_of(reply)}") == 1


def test_a_read_only_key_cannot_push(api: TestClient) -> None:
    response = api.post(
        "/cases?push=true", content=case_copy("api-ro"), headers={**READ, "Content-Type": "application/json"}
    )
    is_outcome(response, 403, "forbidden")


# -- $validate ----------------------------------------------------------------------------------------------------


def test_validate_answers_an_outcome_for_valid_and_invalid(api: TestClient) -> None:
    ok = api.post(
        "/Patient/$validate", json={"resourceType": "Patient", "gender": "female"}, headers={**READ, **FHIR_JSON}
    )
    assert no_errors(is_outcome(ok, 200))
    bad = api.post("/Patient/$validate", json={"resourceType": "Patient", "gender": "f"}, headers={**READ, **FHIR_JSON})
    issues = is_outcome(bad, 200)["issue"]
    assert any(i["severity"] == "error" and i["expression"] == ["Patient.gender"] for i in issues)


def test_validate_with_a_profile_as_query_or_parameters(api: TestClient) -> None:
    ips = "http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips"
    query = api.post(
        f"/Patient/$validate?profile={ips}", json={"resourceType": "Patient"}, headers={**READ, **FHIR_JSON}
    )
    assert any("Patient.name" in i.get("details", {}).get("text", "") for i in is_outcome(query, 200)["issue"])
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": {"resourceType": "Patient"}},
            {"name": "profile", "valueUri": ips},
        ],
    }
    wrapped = api.post("/Patient/$validate", json=parameters, headers={**READ, **FHIR_JSON})
    assert is_outcome(wrapped, 200)["issue"] == is_outcome(query, 200)["issue"]


def test_validate_reads_fhir_xml(api: TestClient) -> None:
    xml = b'<Patient xmlns="http://hl7.org/fhir"><gender value="female"/></Patient>'
    response = api.post("/Patient/$validate", content=xml, headers={**READ, "Content-Type": "application/fhir+xml"})
    assert no_errors(is_outcome(response, 200))


def test_the_seed_bundle_validates(api: TestClient, seed_bundle: dict[str, Any]) -> None:
    response = api.post("/Bundle/$validate", json=seed_bundle, headers={**READ, **FHIR_JSON})
    assert not [i for i in is_outcome(response, 200)["issue"] if i["severity"] in ("error", "fatal")]


# -- POST /bundles -----------------------------------------------------------------------------------------------


def bundle_of(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }


PATIENT = {
    "resourceType": "Patient",
    "id": "0f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
    "name": [{"family": "Example", "given": ["Test"]}],
    "gender": "female",
    "birthDate": "1990-01-01",
}


def test_a_valid_bundle_is_forwarded(api: TestClient, fhir_server: str) -> None:
    response = api.post("/bundles", json=bundle_of(PATIENT), headers={**WRITE, **FHIR_JSON})
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "transaction-response"
    assert count(fhir_server, f"Patient?_id={PATIENT['id']}") == 1


def test_an_invalid_bundle_is_422_and_not_forwarded(api: TestClient, fhir_server: str) -> None:
    patient = {**PATIENT, "id": "1f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b", "gender": "f"}
    body = is_outcome(api.post("/bundles", json=bundle_of(patient), headers={**WRITE, **FHIR_JSON}), 422)
    assert any("gender" in " ".join(i.get("expression", [])) for i in body["issue"])
    nameless = {**PATIENT, "id": "2f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"}
    del nameless["name"]
    # Valid R4, but not the configured inbound profile (IPS Patient needs a name).
    body = is_outcome(api.post("/bundles", json=bundle_of(nameless), headers={**WRITE, **FHIR_JSON}), 422)
    assert any("Patient.name" in i.get("details", {}).get("text", "") for i in body["issue"])
    assert count(fhir_server, f"Patient?_id={patient['id']}") == 0
    assert count(fhir_server, f"Patient?_id={nameless['id']}") == 0


def test_entries_whose_effect_cannot_be_validated_are_refused(api: TestClient, fhir_server: str) -> None:
    """A PATCH that removes the name IPS Patient requires passed (only its Parameters was validated); so did an
    operation, and a PUT whose URL names another type than the resource validated."""
    patient = {**PATIENT, "id": "4f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b"}
    assert api.post("/bundles", json=bundle_of(patient), headers={**WRITE, **FHIR_JSON}).status_code == 200
    remove_name = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name"}],
            }
        ],
    }
    observation = {"resourceType": "Observation", "id": patient["id"], "status": "final", "code": {"text": "x"}}
    for request, resource, where, words in (
        ({"method": "PATCH", "url": f"Patient/{patient['id']}"}, remove_name, "method", "PATCH"),
        ({"method": "POST", "url": f"Patient/{patient['id']}/$meta-add"}, remove_name, "url", "operations"),
        ({"method": "PUT", "url": f"Patient/{patient['id']}"}, observation, "url", "type 'Observation'"),
        ({"method": "POST", "url": "Patient/%24meta-add"}, remove_name, "url", "operations"),  # %24 is $
    ):
        entry = {"fullUrl": "urn:uuid:5f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b", "resource": resource, "request": request}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        body = is_outcome(api.post("/bundles", json=bundle, headers={**WRITE, **FHIR_JSON}), 422)
        refused = [i for i in body["issue"] if i["expression"] == [f"Bundle.entry[0].request.{where}"]]
        assert refused and words in refused[0]["details"]["text"], body
    stored = httpx.get(f"{fhir_server}/Patient/{patient['id']}", timeout=10).json()
    assert stored["name"] == PATIENT["name"] and stored["resourceType"] == "Patient"


# -- GET /diagnostic-reports ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed_patient(api: TestClient) -> str:
    reply = api.post(
        "/cases?push=true", content=case_copy("api-reports"), headers={**WRITE, "Content-Type": "application/json"}
    )
    assert reply.status_code == 200, reply.text
    return patient_of(reply.json())


def test_reports_as_searchset_ndjson_and_csv(api: TestClient, pushed_patient: str) -> None:
    searchset = api.get(f"/diagnostic-reports?patient={pushed_patient}", headers=READ)
    assert searchset.status_code == 200 and searchset.headers["content-type"] == "application/fhir+json"
    bundle = searchset.json()
    assert (bundle["type"], bundle["total"]) == ("searchset", 4)
    modes = [e["search"]["mode"] for e in bundle["entry"]]
    assert modes.count("match") == 4 and modes.count("include") >= 4
    ndjson = api.get(
        f"/diagnostic-reports?patient={pushed_patient}", headers={**READ, "Accept": "application/fhir+ndjson"}
    )
    assert ndjson.headers["content-type"] == "application/fhir+ndjson"
    assert [json.loads(line)["resourceType"] for line in ndjson.text.splitlines()] == ["DiagnosticReport"] * 4
    for how in ({"params": {"_format": "csv"}}, {"headers": {"Accept": "text/csv"}}):
        csv_text = api.get(
            "/diagnostic-reports",
            params={"patient": pushed_patient, **how.get("params", {})},
            headers={**READ, **how.get("headers", {})},
        )
        assert csv_text.headers["content-type"].startswith("text/csv")
        rows = csv_text.text.splitlines()
        # The shipped diagnostic_report view's columns, then results (as `pull --format csv`).
        assert rows[0].startswith("diagnosticreport_id,subject_ref,category_code") and len(rows) == 5
        assert rows[0].endswith(",results")
        # The laboratory step is a report, with its result.
        assert [r for r in rows if ",LAB," in r and ",Laboratory tests," in r and "[17861-6]" in r]


def test_reports_paged_with_small_pages(api: TestClient, pushed_patient: str) -> None:
    response = api.get(f"/diagnostic-reports?patient={pushed_patient}&_count=1&_format=ndjson", headers=READ)
    assert len({json.loads(line)["id"] for line in response.text.splitlines()}) == 4


def test_reports_filters(api: TestClient, pushed_patient: str) -> None:
    def n(**params: str) -> int:
        r = api.get(
            "/diagnostic-reports", params={"patient": pushed_patient, "_format": "ndjson", **params}, headers=READ
        )
        assert r.status_code == 200, r.text
        return len(r.text.splitlines())

    assert n(category="SP") == 1
    assert n(category="LAB") == 1
    assert n(code="http://loinc.org|18748-4") == 2
    assert n(since="2199-01-01") == 0


def test_reports_when_the_fhir_server_is_down(tmp_path: Path) -> None:
    settings = settings_for("http://127.0.0.1:9/fhir", tmp_path, fhir_retry_attempts=1)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = is_outcome(client.get("/diagnostic-reports", headers=READ), 503, "transient")
        assert "did not answer" in body["issue"][0]["diagnostics"]
        forwarded = client.post("/bundles", json=bundle_of(PATIENT), headers={**WRITE, **FHIR_JSON})
        is_outcome(forwarded, 503, "transient")


# -- logs ---------------------------------------------------------------------------------------------------------


def test_logs_carry_no_case_content(api: TestClient, caplog: pytest.LogCaptureFixture, seed_yaml: bytes) -> None:
    """A full run (convert, push, validate, forward, pull in three formats): no word of the case in any log."""
    caplog.set_level(logging.DEBUG, logger="casebridge")
    caplog.set_level(logging.INFO)
    reply = api.post("/cases?push=true", content=seed_yaml, headers={**WRITE, **YAML})
    assert reply.status_code == 200
    bundle = api.post("/cases", content=seed_yaml, headers={**READ, **YAML}).json()
    api.post("/Bundle/$validate", json=bundle, headers={**READ, **FHIR_JSON})
    api.post("/bundles", json=bundle, headers={**WRITE, **FHIR_JSON})
    patient = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    for fmt in ("json", "ndjson", "csv"):
        api.get(f"/diagnostic-reports?patient={patient}&_format={fmt}", headers=READ)
    api.post("/cases", content=b"patient: {sex: nonsense, secret_word: Mahanti}", headers={**READ, **YAML})
    # The FHIR server's own logs aside, and the audit trail, which names patient ids by design (its own test,
    # tests/integration/test_audit.py, reads it for the case's words).
    records = [r for r in caplog.records if not r.name.startswith(("sekmet", "casebridge.audit"))]
    assert any(getattr(r, "route", None) == "/cases" for r in records), "the access log is there"
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records).lower()
    for word in (
        "dystrophic",
        "calcification",
        "forearm",
        "swelling",
        "mahanti",
        "histopathology",
        "nonsense",
        patient,
        RW,
        RO,
    ):
        assert word.lower() not in logged, word


def test_openapi_has_examples_for_every_endpoint(api: TestClient) -> None:
    assert api.get("/openapi.json").status_code == 401  # behind a key, like the data endpoints
    assert api.get("/docs").status_code == 404
    document = api.get("/openapi.json", headers=READ).json()
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "CaseReport" in document["components"]["schemas"]
    operations = [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]
    assert len(operations) == 10  # with HEAD on /healthz and /readyz
    ids = [op["operationId"] for _, _, op in operations]
    assert len(set(ids)) == len(ids), ids  # client generators need them unique
    # An invalid parameter is a 400 OperationOutcome, not FastAPI's 422 'Validation Error'.
    assert "HTTPValidationError" not in json.dumps(document)
    documented = {(path, method): set(op["responses"]) for path, method, op in operations}
    assert {"400", "404"} <= documented[("/{resource_type}/$validate", "post")]
    assert "406" in documented[("/diagnostic-reports", "get")] and "503" in documented[("/readyz", "get")]
    for path, method, op in operations:
        if method == "head":  # headers only: its GET twin carries the example
            assert "get" in document["paths"][path] and "200" in op["responses"], path
            continue
        examples = [
            media
            for response in op["responses"].values()
            for media in response.get("content", {}).values()
            if "example" in media or "examples" in media
        ]
        assert examples, f"{method} {path}: no response example"
        for status, response in op["responses"].items():
            if int(status) >= 400:  # every error documented as the OperationOutcome it is, with an example
                media = response.get("content", {})
                assert list(media) == ["application/fhir+json"], f"{method} {path} {status}: {list(media)}"
                assert media["application/fhir+json"]["example"]["resourceType"] == "OperationOutcome"
        if method == "post":
            bodies = op["requestBody"]["content"].values()
            assert any("example" in media for media in bodies), f"{method} {path}: no request example"


def test_metric_labels_stay_bounded(api: TestClient) -> None:
    api.request("XXXXXXXX", "/healthz")
    api.get("/no/such/route/" + "z" * 50, headers=READ)
    metrics = api.get("/metrics").text
    assert "XXXXXXXX" not in metrics and 'method="OTHER"' in metrics
    assert "zzzz" not in metrics and 'route="unmatched"' in metrics


def test_decimals_from_xml_keep_their_digits_when_forwarded(tmp_path: Path) -> None:
    """FHIR decimals carry their precision (2.50 is not 2.5): an XML Bundle's decimals reach the server as written
    (and a JSON Bundle's bytes, less a byte-order mark)."""
    received: list[bytes] = []

    async def fhir_server(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        received.append(body)
        answer = json.dumps(
            {"resourceType": "Bundle", "type": "transaction-response", "entry": [{"response": {"status": "201"}}]}
        ).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/fhir+json")]}
        )
        await send({"type": "http.response.body", "body": answer})

    xml = b"""<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>
      <entry><fullUrl value="urn:uuid:6b0a3c1e-8f4d-4b2a-9c3e-1d2f3a4b5c6d"/><resource><Observation>
        <id value="6b0a3c1e-8f4d-4b2a-9c3e-1d2f3a4b5c6d"/><status value="final"/>
        <code><text value="serum calcium"/></code>
        <valueQuantity><value value="2.50"/><unit value="mmol/L"/><system value="http://unitsofmeasure.org"/>
          <code value="mmol/L"/></valueQuantity>
        <referenceRange><low><value value="2.10"/></low><high><value value="1.0e1"/></high></referenceRange>
      </Observation></resource>
      <request><method value="PUT"/><url value="Observation/6b0a3c1e-8f4d-4b2a-9c3e-1d2f3a4b5c6d"/></request></entry>
    </Bundle>"""
    as_json = json.dumps(bundle_of(PATIENT)).encode()
    with loopback.serve(fhir_server) as base:
        with TestClient(create_app(settings_for(base, tmp_path)), raise_server_exceptions=False) as client:
            response = client.post("/bundles", content=xml, headers={**WRITE, "Content-Type": "application/fhir+xml"})
            # JSON goes as it came, less a byte-order mark (which a server may refuse).
            with_bom = client.post("/bundles", content=b"\xef\xbb\xbf" + as_json, headers={**WRITE, **FHIR_JSON})
    assert response.status_code == 200, response.text
    assert with_bom.status_code == 200, with_bom.text
    sent, sent_json = received
    assert b'"value":2.50' in sent and b'"value":2.10' in sent and b'"value":1.0e1' in sent
    assert json.loads(sent)["entry"][0]["resource"]["valueQuantity"]["value"] == 2.5
    assert sent_json == as_json


def test_a_contained_resource_meets_the_inbound_profiles_too(api: TestClient, fhir_server: str) -> None:
    """A Patient does not escape the configured Patient profile by being contained in another resource."""
    condition = {
        "resourceType": "Condition",
        "id": "3f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b",
        "contained": [{"resourceType": "Patient", "id": "p", "gender": "female"}],  # IPS Patient needs a name
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "code": {"text": "soft-tissue mass"},
        "subject": {"reference": "#p"},
    }
    body = is_outcome(api.post("/bundles", json=bundle_of(condition), headers={**WRITE, **FHIR_JSON}), 422)
    contained_issues = [
        i
        for i in body["issue"]
        if any("contained[0]" in e for e in i.get("expression", [])) and i["severity"] == "error"
    ]
    assert any("Patient.name" in i.get("details", {}).get("text", "") for i in contained_issues), body
    assert count(fhir_server, f"Condition?_id={condition['id']}") == 0
    condition["contained"][0] |= {"name": [{"family": "Example"}], "birthDate": "1990-01-01"}
    response = api.post("/bundles", json=bundle_of(condition), headers={**WRITE, **FHIR_JSON})
    assert response.status_code == 200, response.text


def test_an_unknown_claimed_profile_is_refused_at_the_gateway_but_only_warned_of_in_validate(
    api: TestClient, fhir_server: str
) -> None:
    """The forwarding policy's unknown_profiles (error) rules POST /bundles; $validate follows the setting
    (warning, as the HL7 validator reports a profile it could not check)."""
    unknown = "http://example.org/fhir/StructureDefinition/not-loaded"
    patient = {**PATIENT, "id": "3f3e2a4c-1b2d-4e5f-8a9b-0c1d2e3f4a5b", "meta": {"profile": [unknown]}}
    body = is_outcome(api.post("/bundles", json=bundle_of(patient), headers={**WRITE, **FHIR_JSON}), 422)
    assert any(
        i["severity"] == "error" and unknown in i["details"]["text"] and "meta.profile[0]" in i["expression"][0]
        for i in body["issue"]
    )
    assert count(fhir_server, f"Patient?_id={patient['id']}") == 0
    checked = is_outcome(api.post("/Patient/$validate", json=patient, headers={**READ, **FHIR_JSON}), 200)
    assert no_errors(checked)
    assert any(i["severity"] == "warning" and unknown in i["details"]["text"] for i in checked["issue"])
