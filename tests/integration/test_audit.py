"""The audit trail over real HTTP, against the embedded FHIR server: who wrote or read which patient's data,
with what outcome, as JSON lines (logger and file) and as base R4 AuditEvents; never the case's content."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from casebridge.api.app import create_app
from casebridge.api.audit import Audit
from casebridge.config import Settings
from casebridge.validation.service import load_validator
from casebridge.validation.validator import has_errors
from tests import loopback

from .test_api import READ, RO, RW, WRITE, case_copy, settings_for
from .test_serve import Serving

JSON = {"Content-Type": "application/json"}
# Words of the seed case (its patient's story, diagnosis and narrative): none may reach the trail.
CASE_WORDS = ("dystrophic", "calcification", "forearm", "swelling", "histopathology", "radiopaque")


class Lines(logging.Handler):
    """The messages of the casebridge.audit logger (it does not propagate to the root logger)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit")


@pytest.fixture(scope="module")
def audit_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("casebridge.audit")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def api(fhir_server: str, trail: Path, audit_lines: Lines) -> Iterator[TestClient]:
    settings = settings_for(
        fhir_server, trail, audit_file=trail / "audit.jsonl", audit_events_file=trail / "events.ndjson"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def lines(trail: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (trail / "audit.jsonl").read_text().splitlines()]


def events(trail: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (trail / "events.ndjson").read_text().splitlines()]


def line_of(trail: Path, response: httpx.Response) -> dict[str, Any]:
    """The one audit line of a request, found by its request id."""
    found = [line for line in lines(trail) if line["request_id"] == response.headers["x-request-id"]]
    assert len(found) == 1, found
    return found[0]


def events_of(trail: Path, response: httpx.Response) -> list[dict[str, Any]]:
    rid = response.headers["x-request-id"]
    return [
        e
        for e in events(trail)
        if any(x.get("what", {}).get("identifier", {}).get("value") == rid for x in e["entity"])
    ]


@pytest.fixture(scope="module")
def pushed(api: TestClient) -> httpx.Response:
    response = api.post("/cases?push=true", content=case_copy("audit-push"), headers={**WRITE, **JSON})
    assert response.status_code == 200, response.text
    return response


def located(reply: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, id, status) of each entry of a transaction-response."""
    found = []
    for entry in reply["entry"]:
        kind, rid = entry["response"]["location"].split("/_history")[0].split("/")[-2:]
        found.append((kind, rid, entry["response"]["status"]))
    return found


def test_a_push_is_audited_with_key_types_ids_and_outcome(api: TestClient, trail: Path, pushed: httpx.Response) -> None:
    line = line_of(trail, pushed)
    reply = located(pushed.json())
    patient = next(rid for kind, rid, _ in reply if kind == "Patient")
    assert (line["key"], line["route"], line["method"], line["interaction"]) == ("job", "/cases", "POST", "transaction")
    assert (line["status"], line["outcome"], line["client"]) == (200, "success", "testclient")
    assert line["patients"] == [patient]
    assert [(e["type"], e["id"], e["status"]) for e in line["entries"]] == reply
    assert {e["method"] for e in line["entries"]} == {"PUT"} and len(reply) == 38
    recorded = dt.datetime.fromisoformat(line["time"])
    assert recorded.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - recorded).total_seconds()) < 120
    # One AuditEvent per entry (BALP's Update pattern: PUT), each naming the key, the patient and its resource.
    written = events_of(trail, pushed)
    assert len(written) == 38
    assert {(e["subtype"][0]["code"], e["action"], e["outcome"]) for e in written} == {("update", "U", "0")}
    client = written[0]["agent"][0]
    assert (client["who"]["display"], client["requestor"], client["network"]["address"]) == ("job", True, "testclient")
    assert all(
        {"reference": f"Patient/{patient}"}
        in [x.get("what") for x in e["entity"] if x.get("role", {}).get("code") == "1"]
        for e in written
    )
    data = [x["what"]["reference"] for e in written for x in e["entity"] if x.get("role", {}).get("code") == "4"]
    assert data == [f"{kind}/{rid}" for kind, rid, _ in reply]


def test_a_read_is_audited_with_what_was_returned(api: TestClient, trail: Path, pushed: httpx.Response) -> None:
    patient = next(rid for kind, rid, _ in located(pushed.json()) if kind == "Patient")
    response = api.get(f"/diagnostic-reports?patient={patient}&_format=ndjson&_count=1", headers=READ)
    assert response.status_code == 200
    reports = [f"DiagnosticReport/{json.loads(row)['id']}" for row in response.text.splitlines()]
    line = line_of(trail, response)
    assert (line["key"], line["interaction"], line["type"], line["status"]) == (
        "analyst",
        "search",
        "DiagnosticReport",
        200,
    )
    assert (line["outcome"], line["complete"], line["patients"], line["more"]) == ("success", True, [patient], 0)
    assert "patient" in line["parameters"] and len(reports) == 4
    assert set(reports) <= set(line["resources"])  # the reports streamed page by page, with what they include
    assert any(r.startswith("Observation/") for r in line["resources"])
    (event,) = events_of(trail, response)
    assert (event["subtype"][0]["code"], event["action"], event["outcome"]) == ("search-type", "E", "0")
    assert event["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientQuery"
    ]
    query = next(x for x in event["entity"] if x.get("role", {}).get("code") == "24")
    assert f"patient=Patient%2F{patient}" in base64.b64decode(query["query"]).decode()
    client, server = event["agent"]
    assert (client["type"]["coding"][0]["code"], server["type"]["coding"][0]["code"]) == ("110152", "110153")


def test_a_refused_write_is_audited_as_a_failure(api: TestClient, trail: Path) -> None:
    refused = api.post("/cases?push=true", content=case_copy("audit-ro"), headers={**READ, **JSON})
    assert refused.status_code == 403
    line = line_of(trail, refused)
    assert (line["key"], line["interaction"], line["status"], line["outcome"]) == (
        "analyst",
        "transaction",
        403,
        "failure",
    )
    (event,) = events_of(trail, refused)
    assert (event["outcome"], event["outcomeDesc"]) == ("4", "HTTP 403")
    # An invalid case from an rw key: what was attempted is there, and nothing was written.
    invalid = json.loads(case_copy("audit-invalid"))
    invalid["patient"]["sex"] = "nonsense"
    answered = api.post("/cases?push=true", content=json.dumps(invalid, default=str), headers={**WRITE, **JSON})
    assert answered.status_code == 422
    line = line_of(trail, answered)
    assert (line["key"], line["status"], line["outcome"]) == ("job", 422, "failure")


def test_an_unauthenticated_request_is_not_audited_but_logged(
    api: TestClient, trail: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="casebridge.api")
    anonymous = api.post("/cases?push=true", content=case_copy("audit-anon"), headers=JSON)
    assert anonymous.status_code == 401
    assert not [line for line in lines(trail) if line["request_id"] == anonymous.headers["x-request-id"]]
    converted = api.post("/cases", content=case_copy("audit-convert"), headers={**READ, **JSON})
    assert converted.status_code == 200
    assert not [line for line in lines(trail) if line["request_id"] == converted.headers["x-request-id"]]
    logged = [r for r in caplog.records if r.getMessage() == "request" and getattr(r, "route", "") == "/cases"]
    assert [(getattr(r, "status"), getattr(r, "key")) for r in logged] == [(401, "-"), (200, "analyst")]


def test_the_request_log_names_the_key(api: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="casebridge.api")
    api.get("/diagnostic-reports?patient=nobody-here&_format=csv", headers=READ)
    (record,) = [
        r for r in caplog.records if r.getMessage() == "request" and getattr(r, "route", "") == "/diagnostic-reports"
    ]
    assert getattr(record, "key") == "analyst"
    assert RO not in str(record.__dict__) and RW not in str(record.__dict__)


def test_the_trail_holds_no_content_and_the_events_are_valid_r4(
    api: TestClient, trail: Path, audit_lines: Lines, pushed: httpx.Response
) -> None:
    patient = next(rid for kind, rid, _ in located(pushed.json()) if kind == "Patient")
    for fmt in ("json", "csv"):
        assert api.get(f"/diagnostic-reports?patient={patient}&_format={fmt}", headers=READ).status_code == 200
    written = (trail / "audit.jsonl").read_text()
    # The logger and the file carry the same lines, one per audited request.
    assert audit_lines.messages == written.splitlines()
    both = (written + (trail / "events.ndjson").read_text()).lower()
    for word in (*CASE_WORDS, RW, RO):
        assert word.lower() not in both, word
    validator = load_validator(Settings())
    sample = events(trail)
    assert {e["action"] for e in sample} >= {"U", "E"}
    for event in sample:
        # BALP's profiles are not among the packages here: checked against base R4 only.
        event = {k: v for k, v in event.items() if k != "meta"}
        issues = validator.validate(event)
        assert not has_errors(issues), [i for i in issues if i.severity in ("error", "fatal")]


def test_the_audit_file_has_one_json_line_per_audited_request(api: TestClient, trail: Path) -> None:
    before = len(lines(trail))
    for _ in range(3):
        assert api.get("/diagnostic-reports?patient=nobody-here", headers=READ).status_code == 200
    after = lines(trail)
    assert len(after) == before + 3
    assert [line["patients"] for line in after[-3:]] == [["nobody-here"]] * 3
    assert len({line["request_id"] for line in after}) == len(after)


def test_a_stream_cut_short_is_audited_as_a_failure(tmp_path: Path) -> None:
    """The FHIR server's second page cannot be followed (its link leaves the base URL): the answer has started,
    so it is cut short, and the trail says so with what was already sent."""

    async def fhir_server(scope: dict[str, Any], receive: Any, send: Any) -> None:
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": "http://elsewhere.example/fhir/DiagnosticReport?page=2"}],
            "entry": [
                {
                    "search": {"mode": "match"},
                    "resource": {
                        "resourceType": "DiagnosticReport",
                        "id": "r1",
                        "status": "final",
                        "code": {"text": "x"},
                        "subject": {"reference": "Patient/p1"},
                    },
                }
            ],
        }
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/fhir+json")]}
        )
        await send({"type": "http.response.body", "body": json.dumps(page).encode()})

    with loopback.serve(fhir_server) as base:
        settings = settings_for(f"{base}/fhir", tmp_path, audit_file=tmp_path / "audit.jsonl")
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            cut = client.get("/diagnostic-reports?_format=ndjson", headers=READ)
    assert [json.loads(row)["id"] for row in cut.text.splitlines()] == ["r1"]  # the first page went out
    (line,) = lines(tmp_path)
    assert (line["status"], line["outcome"], line["complete"]) == ("aborted", "failure", False)
    assert line["resources"] == ["DiagnosticReport/r1"] and line["patients"] == ["p1"]
    assert line["error"] == "upstream FhirProtocolError"


def test_an_upstream_failure_before_the_answer_is_audited(tmp_path: Path) -> None:
    settings = settings_for(
        "http://127.0.0.1:9/fhir", tmp_path, fhir_retry_attempts=1, audit_file=tmp_path / "audit.jsonl"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/diagnostic-reports?patient=p2", headers=READ).status_code == 503
        assert (
            client.post("/cases?push=true", content=case_copy("audit-down"), headers={**WRITE, **JSON}).status_code
            == 503
        )
    read, write = lines(tmp_path)
    assert (read["status"], read["outcome"], read["patients"], read["resources"]) == (503, "failure", ["p2"], [])
    assert (write["status"], write["outcome"], len(write["entries"])) == (503, "failure", 38)
    assert all("status" not in e for e in write["entries"])  # attempted, never answered


# -- the API POST /bundles uses: entries attempted, then the transaction-response --------------------------------


class _Request:
    """What Audited reads of a request: its ASGI scope."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {"client": ("10.0.0.7", 5000), "method": "POST", "state": {"api_key": "ehr"}}


def test_entries_and_the_transaction_response_give_types_ids_and_statuses(tmp_path: Path) -> None:
    audit = Audit(file=tmp_path / "a.jsonl", events_file=tmp_path / "e.ndjson")
    request = _Request()
    audited = audit.begin(request, "transaction")  # type: ignore[arg-type]
    assert audit.begin(request, "transaction") is audited  # one record per request  # type: ignore[arg-type]
    patient = {"resourceType": "Patient", "name": [{"family": "Mahanti"}]}
    condition = {
        "resourceType": "Condition",
        "code": {"text": "dystrophic calcification"},
        "subject": {"reference": "urn:uuid:p"},
    }
    audited.attempted(
        [
            {"fullUrl": "urn:uuid:p", "resource": patient, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": condition,
                "request": {"method": "PUT", "url": "Condition?identifier=http://h.example|MRN-555"},
            },
            {"request": {"method": "DELETE", "url": "Observation/o9"}},
        ]
    )
    audited.answered(
        {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"status": "201 Created", "location": "Patient/p77/_history/1"}},
                {"response": {"status": "201 Created", "location": "http://s.example/fhir/Condition/c5/_history/1"}},
                {"response": {"status": "204 No Content"}},
            ],
        }
    )
    line = audited.finish(200, "/bundles")
    assert line is not None and audited.finish(500) is None  # finished once
    assert line["entries"] == [
        {"method": "POST", "interaction": "create", "type": "Patient", "id": "p77", "status": "201 Created"},
        {
            "method": "PUT",
            "interaction": "update",
            "type": "Condition",
            "conditional": ["identifier"],
            "id": "c5",
            "status": "201 Created",
        },
        {"method": "DELETE", "interaction": "delete", "type": "Observation", "id": "o9", "status": "204 No Content"},
    ]
    assert line["patients"] == ["p77"] and line["client"] == "10.0.0.7" and line["key"] == "ehr"
    audit.close()
    text = (tmp_path / "a.jsonl").read_text() + (tmp_path / "e.ndjson").read_text()
    for word in ("mahanti", "dystrophic", "MRN-555", "h.example"):
        assert word.lower() not in text.lower(), word
    written = events_from(tmp_path / "e.ndjson")
    assert [(e["action"], e["agent"][0]["network"]["type"]) for e in written] == [("C", "2"), ("U", "2"), ("D", "2")]


def events_from(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_request_without_a_key_records_nothing(tmp_path: Path) -> None:
    audit = Audit(file=tmp_path / "a.jsonl")
    request = _Request()
    request.scope["state"] = {}
    assert audit.begin(request, "transaction").finish(401) is None  # type: ignore[arg-type]
    audit.close()
    assert (tmp_path / "a.jsonl").read_text() == ""


# -- a real server ---------------------------------------------------------------------------------------------


class AuditServing(Serving):
    """`casebridge serve`, keeping its standard output (the audit lines go there) as well as its log."""

    stdout = ""

    def __exit__(self, *_: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.stdout, self.stderr = self.process.communicate(timeout=30)


def test_serve_writes_the_trail_from_the_http_process_only(fhir_server: str, tmp_path: Path) -> None:
    """With worker processes (forked after the audit file was opened), each audited request is one line in the
    file and on standard output, none in the service's log (standard error, which names no patient)."""
    audit_file = tmp_path / "audit.jsonl"
    env = {"CASEBRIDGE_AUDIT_FILE": str(audit_file), "CASEBRIDGE_AUDIT_EVENTS_FILE": str(tmp_path / "events.ndjson")}
    with AuditServing(fhir_server, tmp_path, "--workers", "2", env=env) as serving:
        pushed = httpx.post(
            f"{serving.base}/cases?push=true", content=case_copy("audit-serve"), headers={**WRITE, **JSON}, timeout=60
        )
        assert pushed.status_code == 200, pushed.text
        patient = next(rid for kind, rid, _ in located(pushed.json()) if kind == "Patient")
        for _ in range(4):  # conversions run in the workers: not audited, no line from them
            converted = httpx.post(
                f"{serving.base}/cases", content=case_copy("audit-serve"), headers={**READ, **JSON}, timeout=60
            )
            assert converted.status_code == 200
        read = httpx.get(f"{serving.base}/diagnostic-reports?patient={patient}", headers=READ, timeout=60)
        assert read.status_code == 200
    written = audit_file.read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in written] == [
        pushed.headers["x-request-id"],
        read.headers["x-request-id"],
    ]
    assert [line for line in serving.stdout.splitlines() if line.strip()] == written
    assert json.loads(written[0])["client"] == "127.0.0.1"
    assert patient not in serving.stderr and patient in written[0]
    requests = [line for line in serving.log_lines() if line.get("message") == "request"]
    assert {(r["route"], r["key"]) for r in requests if r["route"] != "/healthz"} == {
        ("/cases", "job"),
        ("/cases", "analyst"),
        ("/diagnostic-reports", "analyst"),
    }
    assert {r["key"] for r in requests if r["route"] == "/healthz"} == {"-"}
    assert len((tmp_path / "events.ndjson").read_text().splitlines()) == 38 + 1


# -- AuditEvents on the FHIR server ------------------------------------------------------------------------------


def test_audit_events_are_stored_on_the_fhir_server_too(fhir_server: str, tmp_path: Path) -> None:
    settings = settings_for(
        fhir_server, tmp_path, audit_events_file=tmp_path / "events.ndjson", audit_events_to_server=True
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        pushed = client.post("/cases?push=true", content=case_copy("audit-to-server"), headers={**WRITE, **JSON})
        assert pushed.status_code == 200, pushed.text
        patient = next(rid for kind, rid, _ in located(pushed.json()) if kind == "Patient")
        assert client.get(f"/diagnostic-reports?patient={patient}", headers=READ).status_code == 200
    # Shut down: what was still queued was sent first.
    written = events_from(tmp_path / "events.ndjson")
    assert len(written) == 38 + 1  # one per entry written, and the read of the reports
    for event in written:
        stored = httpx.get(f"{fhir_server}/AuditEvent/{event['id']}", timeout=10)
        assert stored.status_code == 200, stored.text
        assert stored.json()["entity"] == event["entity"] and stored.json()["action"] == event["action"]


def test_a_fhir_server_refusing_audit_events_fails_no_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The FHIR server answers searches but fails every write: the read is answered as usual, and the events that
    could not be stored are counted and logged by the error's type only."""

    async def fhir_server(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            status, body = (
                500,
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]},
            )
        else:
            report = {"resourceType": "DiagnosticReport", "id": "r7", "status": "final", "code": {"text": "x"}}
            status, body = 200, {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": report}]}
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/fhir+json")]}
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})

    caplog.set_level(logging.WARNING, logger="casebridge.api")
    with loopback.serve(fhir_server) as base:
        settings = settings_for(f"{base}/fhir", tmp_path, audit_events_to_server=True, fhir_retry_attempts=1)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            read = client.get("/diagnostic-reports?patient=p9&_format=ndjson", headers=READ)
            assert read.status_code == 200 and json.loads(read.text)["id"] == "r7"
            failed = 'casebridge_audit_events_total{outcome="failed"} 1.0'
            for _ in range(100):
                if failed in client.get("/metrics").text:
                    break
                time.sleep(0.05)
            assert failed in client.get("/metrics").text
    (warning,) = [r for r in caplog.records if r.getMessage() == "audit events not stored on the FHIR server"]
    assert getattr(warning, "error") == "FhirServerError" and getattr(warning, "events") == 1
    assert "p9" not in str(warning.__dict__) and "r7" not in str(warning.__dict__)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_an_audit_file_that_cannot_be_written_is_an_error_in_the_log(
    tmp_path: Path, fhir_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk under the audit file: the answer (already sent) stands, and the log says the record is lost."""
    caplog.set_level(logging.ERROR, logger="casebridge.api")
    settings = settings_for(fhir_server, tmp_path, audit_file=Path("/dev/full"))
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/diagnostic-reports?patient=nobody-here", headers=READ).status_code == 200
    (error,) = [r for r in caplog.records if r.getMessage().startswith("audit record not written")]
    assert (
        error.getMessage() == "audit record not written: OSError" and getattr(error, "route") == "/diagnostic-reports"
    )


def test_a_long_read_keeps_a_thousand_ids_and_counts_the_rest(tmp_path: Path) -> None:
    audit = Audit(file=tmp_path / "a.jsonl")
    audited = audit.begin(_Request(), "search", resource_type="DiagnosticReport")  # type: ignore[arg-type]
    for page in range(15):  # 15 pages of 100 reports, one patient each, one report sent twice
        entries = [
            {
                "resource": {
                    "resourceType": "DiagnosticReport",
                    "id": f"r{page}-{i}",
                    "subject": {"reference": f"Patient/p{page}-{i}"},
                }
            }
            for i in range(100)
        ]
        audited.returned({"entry": [*entries, entries[0]]})
    line = audited.finish(200, "/diagnostic-reports")
    audit.close()
    assert line is not None and len(line["resources"]) == 1_000 and line["more"] == 500
    assert line["resources"][0] == "DiagnosticReport/r0-0" and len(line["patients"]) == 1_000
