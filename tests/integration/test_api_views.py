"""POST /ViewDefinition/$viewdefinition-run with the embedded FHIR server behind the API: the seed pushed, shipped
and inline views run over it, in the three formats, with the keys, bounds and audit record the operation promises.

The rows over the server must be those of the same view over the converted Bundle read as a view source (its
urn:uuid references read as the server stores them), so the keys agree whichever source an analyst uses."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from casebridge.api.app import create_app
from casebridge.api.routes import views as views_route
from casebridge.config import Settings
from casebridge.fhir.client import FhirClient
from casebridge.views import LocalSource, run_to_dicts, view_digest
from casebridge.views.shipped import load_shipped_views, shipped_view

from .test_api import KEYS, READ, RO, RW, is_outcome

RUN = "/ViewDefinition/$viewdefinition-run"
OBS_KEY = "obs-" + "o" * 30  # system/Observation.rs: may not read Patients


def params(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(items)}


def shipped(name: str) -> dict[str, Any]:
    return {"name": "viewReference", "valueReference": {"reference": f"ViewDefinition/{name}"}}


@pytest.fixture(scope="module")
def seed_file(seed_bundle: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("views-api") / "seed.json"
    path.write_text(json.dumps(seed_bundle))
    return path


@pytest.fixture(scope="module")
def patient(fhir_server: str, seed_bundle: dict[str, Any]) -> str:
    with FhirClient(fhir_server) as client:
        client.transaction(seed_bundle)  # PUTs at fixed ids: the same resources whichever test pushed it first
    return next(e["resource"]["id"] for e in seed_bundle["entry"] if e["resource"]["resourceType"] == "Patient")


@pytest.fixture(scope="module")
def audit_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("views-audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def api(fhir_server: str, audit_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(
        fhir_base_url=fhir_server,
        api_keys=f"{KEYS},observer:system/Observation.rs:{OBS_KEY}",
        lock_dir=tmp_path_factory.mktemp("locks"),
        audit_file=audit_file,
        view_run_max_rows=50,
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def rows_of(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text[:800]
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_shipped_view_gives_the_rows_of_the_converted_bundle(api: TestClient, patient: str, seed_file: Path) -> None:
    for name in ("diagnostic_report", "observation", "report_result", "patient", "condition"):
        response = api.post(RUN, json=params(shipped(name), {"name": "patient", "valueString": patient}), headers=READ)
        assert response.headers["content-type"].startswith("application/x-ndjson")
        from_server = rows_of(response)
        plan = load_shipped_views()[name]
        from_bundle = run_to_dicts(plan, LocalSource(seed_file).resources(plan.resource, None))
        key = lambda row: json.dumps(row, sort_keys=True)  # noqa: E731
        assert from_server and sorted(from_server, key=key) == sorted(from_bundle, key=key), name
    # The keys join: every report's subject is the patient, every result an Observation of the patient.
    reports = rows_of(
        api.post(RUN, json=params(shipped("report_result"), {"name": "patient", "valueString": patient}), headers=READ)
    )
    observations = rows_of(
        api.post(RUN, json=params(shipped("observation"), {"name": "patient", "valueString": patient}), headers=READ)
    )
    assert {r["subject_ref"] for r in reports} == {patient}
    assert {r["result_ref"] for r in reports} <= {o["observation_id"] for o in observations}
    assert len(reports) == 4  # the x-ray has no result, the ultrasound and the laboratory one each, the histology two


def test_formats_limit_since_and_an_inline_view(api: TestClient, patient: str) -> None:
    view = {
        "resourceType": "ViewDefinition",
        "resource": "DiagnosticReport",
        "status": "active",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "status", "path": "status"}]}],
    }
    inline = {"name": "viewResource", "resource": view}
    mine = {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}}
    answer = api.post(RUN, json=params(inline, mine, {"name": "_format", "valueCode": "csv"}), headers=READ)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(answer.text, newline="")))
    assert len(table) == 4 and {r["status"] for r in table} == {"final"}
    answer = api.post(RUN, json=params(inline, mine, {"name": "_format", "valueCode": "json"}), headers=READ)
    assert answer.headers["content-type"].startswith("application/json")
    assert sorted(r["id"] for r in answer.json()) == sorted(r["id"] for r in table)
    limited = api.post(RUN, json=params(inline, mine, {"name": "_limit", "valueInteger": 3}), headers=READ)
    assert len(rows_of(limited)) == 3
    later = api.post(
        RUN, json=params(inline, mine, {"name": "_since", "valueInstant": "2199-01-01T00:00:00Z"}), headers=READ
    )
    assert rows_of(later) == []


def test_an_invalid_view_is_422_naming_the_element(api: TestClient) -> None:
    view = {
        "resourceType": "ViewDefinition",
        "resource": "Patient",
        "status": "active",
        "select": [{"column": [{"name": "id", "path": "getResourceKey()"}, {"name": "bad name", "path": "id"}]}],
    }
    body = is_outcome(api.post(RUN, json=params({"name": "viewResource", "resource": view}), headers=READ), 422)
    assert any("select[0].column[1].name" in i.get("expression", []) for i in body["issue"]), body
    body = is_outcome(api.post(RUN, json=params(shipped("nothing")), headers=READ), 404, "not-found")
    body = is_outcome(
        api.post(RUN, json=params(shipped("patient"), {"name": "group", "valueString": "g"}), headers=READ), 400
    )
    assert body["issue"][0]["expression"] == ["Parameters.parameter[1].name"]
    is_outcome(
        api.post(RUN, json=params(shipped("patient"), {"name": "_limit", "valueInteger": 51}), headers=READ), 400
    )
    is_outcome(
        api.post(RUN, json=params(shipped("patient"), {"name": "viewResource", "resource": view}), headers=READ),
        400,
        "required",
    )
    is_outcome(api.post(RUN, json={"resourceType": "Patient"}, headers=READ), 400, "structure")


def test_keys_a_read_key_suffices_scopes_are_checked(api: TestClient, patient: str) -> None:
    mine = {"name": "patient", "valueString": patient}
    is_outcome(api.post(RUN, json=params(shipped("patient"), mine)), 401, "login")
    assert len(rows_of(api.post(RUN, json=params(shipped("patient"), mine), headers=READ))) == 1
    assert (
        len(rows_of(api.post(RUN, json=params(shipped("patient"), mine), headers={"Authorization": f"Bearer {RW}"})))
        == 1
    )
    observer = {"Authorization": f"Bearer {OBS_KEY}"}
    body = is_outcome(api.post(RUN, json=params(shipped("patient"), mine), headers=observer), 403, "forbidden")
    assert "system/Patient.r" in body["issue"][0]["diagnostics"] or "Patient" in body["issue"][0]["diagnostics"]
    assert rows_of(api.post(RUN, json=params(shipped("observation"), mine), headers=observer))


def test_the_row_bound(fhir_server: str, patient: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """view_run_max_rows is 20 here, and one Observation a page: a view of 1 to 3 rows per Observation passes the
    bound once the answer has started, so it is cut short (the client sees it incomplete) and the audit says
    why. Passed on the first page, it is a 422. With _limit the same run is complete."""
    monkeypatch.setattr(views_route, "PAGE_SIZE", 1)
    audit = tmp_path / "audit.jsonl"
    settings = Settings(
        fhir_base_url=fhir_server, api_keys=KEYS, lock_dir=tmp_path, audit_file=audit, view_run_max_rows=20
    )
    view = {
        "resourceType": "ViewDefinition",
        "resource": "Observation",
        "status": "active",
        "select": [
            {"forEach": "identifier | code.coding | category", "column": [{"name": "id", "path": "%resource.id"}]}
        ],
    }
    inline = {"name": "viewResource", "resource": view}
    mine = {"name": "patient", "valueString": patient}
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        try:
            answer = api.post(RUN, json=params(inline, mine), headers={**READ, "X-Request-ID": "view-run-cut"})
            assert answer.status_code == 200 and len(answer.text.splitlines()) <= 20  # never past the bound
        except httpx.HTTPError:
            pass  # the transport saw the stream end early
        (line,) = [json.loads(t) for t in audit.read_text().splitlines() if '"view-run-cut"' in t]
        assert line["complete"] is False and line["outcome"] == "failure" and line["status"] == "aborted"
        assert "more than 20 rows" in line["error"] and 0 < line["rows"] <= 20
        limited = params(inline, mine, {"name": "_limit", "valueInteger": 20})
        assert len(rows_of(api.post(RUN, json=limited, headers=READ))) == 20
        # Every element of every Observation is a row: the first one alone passes the bound.
        everything = {**view, "select": [{"forEach": "descendants()", "column": [{"name": "id", "path": "id"}]}]}
        first = params({"name": "viewResource", "resource": everything}, mine)
        monkeypatch.setattr(views_route, "PAGE_SIZE", 200)
        body = is_outcome(api.post(RUN, json=first, headers=READ), 422, "too-costly")
        assert "more than 20 rows" in body["issue"][0]["diagnostics"]


def test_the_resource_bound_is_422_before_the_answer(fhir_server: str, tmp_path: Path, patient: str) -> None:
    settings = Settings(fhir_base_url=fhir_server, api_keys=KEYS, lock_dir=tmp_path, view_run_max_resources=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        body = is_outcome(client.post(RUN, json=params(shipped("observation")), headers=READ), 422, "too-costly")
        assert "narrow it" in body["issue"][0]["diagnostics"]
        mine = {"name": "patient", "valueString": patient}
        assert len(rows_of(client.post(RUN, json=params(shipped("patient"), mine), headers=READ))) == 1


def test_runs_are_audited_with_the_view_hash_and_rows(api: TestClient, patient: str, audit_file: Path) -> None:
    mine = {"name": "patient", "valueString": patient}
    response = api.post(RUN, json=params(shipped("condition"), mine), headers={**READ, "X-Request-ID": "view-run-1"})
    rows = rows_of(response)
    (line,) = [json.loads(t) for t in audit_file.read_text().splitlines() if '"view-run-1"' in t]
    assert (line["key"], line["interaction"], line["type"], line["status"]) == ("analyst", "search", "Condition", 200)
    assert line["view"] == view_digest(shipped_view("condition")) and line["rows"] == len(rows)
    assert line["patients"] == [patient] and line["complete"] is True and line["outcome"] == "success"
    assert len(line["resources"]) == len({r["condition_id"] for r in rows})
    assert RO not in audit_file.read_text()
