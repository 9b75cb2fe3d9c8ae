"""Push and pull over real HTTP, against the embedded FHIR server the test session runs.

Each test pushes its own copy of the seed case (a fresh case id, so fresh resource ids), so the tests do
not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from casebridge.domain.reader import validate_case
from casebridge.errors import BadRequest, PreconditionFailed, ResourceGone, ResourceNotFound
from casebridge.fhir.client import AsyncFhirClient, FhirClient
from casebridge.fhir.search import Search
from casebridge.mapping.engine import MappingSet
from casebridge.pull import csv_columns, pull_reports, report_query
from casebridge.push import PatientLocks, push_bundle
from tests.conftest import RECORDED, SEED
from tests.paths import PROJECT_ROOT

HEADERS = {"Accept": "application/fhir+json"}


def fresh_case(tmp_path: Path) -> tuple[Path, str]:
    """A copy of the seed case under a new case id: (its file, the case id)."""
    doc = yaml.safe_load(SEED.read_text())
    doc["case_id"] = f"{doc['case_id']}-{uuid.uuid4().hex[:8]}"
    path = tmp_path / f"{doc['case_id']}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, doc["case_id"]


def fresh_bundle(tmp_path: Path, mappings: MappingSet) -> dict[str, Any]:
    path, _ = fresh_case(tmp_path)
    return mappings.convert(validate_case(yaml.safe_load(path.read_text()), source=str(path)), recorded=RECORDED)


def patient_id(bundle: dict[str, Any]) -> str:
    return next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def count(server: str, query: str) -> int:
    # The query stays in the URL: httpx's params= would replace it, not add to it.
    response = httpx.get(f"{server}/{query}", headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def copies(server: str, bundle: dict[str, Any]) -> dict[str, int]:
    """How many resources the server holds with each of the Bundle's identifiers (1 each expected).

    Counted here over every resource of each type, not with identifier searches: the embedded server ignores
    search parameters it does not index (ClinicalImpression's), which would count every resource of the type.
    """
    wanted: dict[str, int] = {}
    types = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        types.add(resource["resourceType"])
        for identifier in resource.get("identifier") or []:
            if identifier.get("system") == "urn:casebridge:resource":
                wanted[f"{resource['resourceType']}|{identifier['value']}"] = 0
    provenance = 0
    with FhirClient(server) as client:
        for kind in sorted(types):
            for resource in client.resources(Search(kind).count(1000)):
                for identifier in resource.get("identifier") or []:
                    key = f"{kind}|{identifier.get('value')}"
                    if identifier.get("system") == "urn:casebridge:resource" and key in wanted:
                        wanted[key] += 1
                if kind == "Provenance" and any(
                    t.get("reference") == f"Patient/{patient_id(bundle)}" for t in resource.get("target") or []
                ):
                    provenance += 1
    wanted["Provenance"] = provenance  # Provenance has no identifier: counted by its target
    return wanted


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


# -- push -----------------------------------------------------------------------------------------------------


def test_push_creates_and_a_re_push_finds_everything_already_there(
    fhir_server: str, mappings: MappingSet, tmp_path: Path
) -> None:
    bundle = fresh_bundle(tmp_path, mappings)

    async def twice() -> list[Any]:
        async with AsyncFhirClient(fhir_server) as client:
            locks = PatientLocks(tmp_path / "locks")
            return [await push_bundle(client, bundle, locks=locks) for _ in range(2)]

    first, second = asyncio.run(twice())
    n = len(bundle["entry"])
    assert (first.created, first.already_there) == (n, 0)
    assert (second.created, second.already_there) == (0, n)
    assert first.patient == f"Patient/{patient_id(bundle)}"
    assert set(copies(fhir_server, bundle).values()) == {1}
    assert count(fhir_server, f"DiagnosticReport?patient={patient_id(bundle)}") == 4


def test_eight_concurrent_cli_pushes_of_one_case_are_idempotent(
    fhir_server: str, tmp_path: Path, mappings: MappingSet
) -> None:
    """Eight processes pushing the same case at once: all succeed and the server ends with one copy of each resource.

    What this checks is idempotence (ids derived from the case, PUTs that find the resource there), not the write
    lock: the embedded server runs whole transactions one at a time by itself, so this passes with no lock at all.
    The lock is checked against a server that lets transactions overlap: tests/e2e/test_write_serialization.py.
    """
    case_file, _ = fresh_case(tmp_path)
    env = {**os.environ, "CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "casebridge", "push", str(case_file), "--server", fhir_server],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
            env=env,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=180) for p in processes]
    assert [p.returncode for p in processes] == [0] * 8, [o[1] for o in outputs]
    bundle = mappings.convert(validate_case(yaml.safe_load(case_file.read_text()), source="x"), recorded=RECORDED)
    n = len(bundle["entry"])
    # Exactly one process created the resources, the seven others found them there (the server's transactions
    # do not interleave; whether casebridge's own lock holds is not visible here).
    created = sorted(int(out.split(" created")[0].rsplit(" ", 1)[-1]) for out, _ in outputs)
    assert created == [0] * 7 + [n], [o[0] for o in outputs]
    assert set(copies(fhir_server, bundle).values()) == {1}
    assert count(fhir_server, f"Patient?_id={patient_id(bundle)}") == 1


def test_concurrent_pushes_in_one_process_are_idempotent(
    fhir_server: str, mappings: MappingSet, tmp_path: Path
) -> None:
    """Eight pushes of one Bundle gathered in one event loop: one creates everything, seven find it there, and the
    server holds one copy. Idempotence, not the lock (the embedded server serializes transactions itself; the
    lock's own test is tests/e2e/test_write_serialization.py)."""
    bundle = fresh_bundle(tmp_path, mappings)

    async def eight() -> list[Any]:
        async with AsyncFhirClient(fhir_server) as client:
            locks = PatientLocks(tmp_path / "locks")
            return await asyncio.gather(*(push_bundle(client, bundle, locks=locks) for _ in range(8)))

    results = asyncio.run(eight())
    assert sorted(r.created for r in results) == [0] * 7 + [len(bundle["entry"])]
    assert set(copies(fhir_server, bundle).values()) == {1}


def test_an_invalid_bundle_is_not_sent(fhir_server: str, mappings: MappingSet, tmp_path: Path) -> None:
    bundle = fresh_bundle(tmp_path, mappings)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["gender"] = "f"
    path = tmp_path / "invalid.json"
    path.write_text(json.dumps(bundle))
    result = cli("push", str(path), "--server", fhir_server)
    assert result.returncode == 1, result.stderr
    assert "nothing was sent" in result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["resourceType"] == "OperationOutcome"
    assert any("gender" in " ".join(i.get("expression", [])) for i in outcome["issue"] if i["severity"] == "error")
    assert count(fhir_server, f"Patient?_id={patient['id']}") == 0


def test_push_of_a_bundle_file_and_bad_inputs(fhir_server: str, mappings: MappingSet, tmp_path: Path) -> None:
    bundle = fresh_bundle(tmp_path, mappings)
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    result = cli("push", str(path), "--server", fhir_server)
    assert result.returncode == 0, result.stderr
    assert f"{len(bundle['entry'])} created" in result.stdout
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle", ')
    result = cli("push", str(broken), "--server", fhir_server)
    assert result.returncode == 2 and str(broken) in result.stderr and "Traceback" not in result.stderr
    result = cli("push", str(path), "--server", "ftp://nowhere")
    assert result.returncode == 2 and "--server" in result.stderr
    # XML with a byte-order mark was read as a case ('a case must be a JSON/YAML object, not str'); a refusal names
    # the file once and the place.
    marked = tmp_path / "marked.xml"
    marked.write_bytes(
        b'\xef\xbb\xbf<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry><resource>'
        b'<Patient><gender value="female" foo="x"/></Patient></resource></entry></Bundle>'
    )
    result = cli("push", str(marked), "--server", fhir_server)
    assert result.returncode == 2 and "Bundle.entry[0].resource.gender: the attribute 'foo'" in result.stderr
    assert result.stderr.count(str(marked)) == 1, result.stderr


def test_an_unreachable_server_is_exit_4_with_a_message(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"CASEBRIDGE_FHIR_RETRY_ATTEMPTS": "2", "CASEBRIDGE_LOCK_DIR": str(tmp_path)}
    result = cli("push", str(SEED), "--server", f"http://127.0.0.1:{port}/fhir", env=env)
    assert result.returncode == 4, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr and "ConnectError" in result.stderr
    assert "retry 1 in" in result.stderr  # no connection was made, so even the POST was retried, and said so
    assert "Traceback" not in result.stderr
    result = cli("ping", "--server", f"http://127.0.0.1:{port}/fhir", env=env)
    assert result.returncode == 4


def test_ping(fhir_server: str) -> None:
    result = cli("ping", "--server", fhir_server)
    assert result.returncode == 0, result.stderr
    assert "FHIR 4.0.1" in result.stdout


# -- pull -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(fhir_server: str, mappings: MappingSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    bundle = fresh_bundle(tmp_path_factory.mktemp("pull"), mappings)
    with FhirClient(fhir_server) as client:
        client.transaction(bundle)
    return bundle


def test_pull_json_is_a_searchset_with_results_and_specimens(fhir_server: str, pushed: dict[str, Any]) -> None:
    result = cli("pull", "diagnostic-reports", "--server", fhir_server, "--patient", patient_id(pushed))
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)
    assert (bundle["resourceType"], bundle["type"], bundle["total"]) == ("Bundle", "searchset", 4)
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    included = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
        if e["search"]["mode"] == "include"
    }
    assert {r["resourceType"] for r in matches} == {"DiagnosticReport"}
    wanted = {ref["reference"] for r in matches for key in ("result", "specimen") for ref in r.get(key, [])}
    assert wanted and wanted <= included  # every result and specimen came along, once
    sent = {e["resource"]["id"] for e in pushed["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"}
    assert {r["id"] for r in matches} == sent
    # The laboratory step is a report too, so the pull brings its result (the serum calcium).
    (lab,) = [r for r in matches if {c.get("code") for c in r["category"][0]["coding"]} == {"LAB"}]
    calcium = next(
        e["resource"]["id"]
        for e in pushed["entry"]
        if e["resource"].get("identifier", [{}])[0].get("value", "").endswith("/lab-result/serum-calcium")
    )
    assert [ref["reference"] for ref in lab["result"]] == [f"Observation/{calcium}"]
    assert f"Observation/{calcium}" in included


def test_pull_ndjson_is_one_report_per_line(fhir_server: str, pushed: dict[str, Any]) -> None:
    result = cli(
        "pull",
        "diagnostic-reports",
        "--server",
        fhir_server,
        "--patient",
        f"Patient/{patient_id(pushed)}",
        "--format",
        "ndjson",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert {json.loads(line)["resourceType"] for line in lines} == {"DiagnosticReport"}


def test_pull_csv_is_one_row_per_report(fhir_server: str, pushed: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "reports.csv"
    result = cli(
        "pull",
        "diagnostic-reports",
        "--server",
        fhir_server,
        "--patient",
        patient_id(pushed),
        "--format",
        "csv",
        "--output",
        str(target),
    )
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    # The shipped diagnostic_report view's columns (the same rows as `views run --view diagnostic_report`), and
    # results, joined from the report_result and observation views: the CSV is the views' one flattening.
    assert list(rows[0]) == [*csv_columns()] and csv_columns()[-1] == "results"
    assert len(rows) == 4
    assert {r["subject_ref"] for r in rows} == {patient_id(pushed)}
    histology = next(r for r in rows if r["category_code"] == "SP")
    assert (histology["code_display"], histology["code_code"]) == ("Surgical pathology study", "11529-5")
    assert histology["status"] == "final"
    assert histology["conclusion"].startswith("Dystrophic calcification")
    assert histology["conclusioncode_text"] == "Dystrophic calcification"
    # Both results, in the report's order, each with its own value (a string, then a coded one).
    assert histology["results"] == (
        "Pathology report microscopic observation [22635-7]: Deposition of calcium salts; no atypical cells are seen.; "
        "Pathology report diagnosis [22637-3]: Dystrophic calcification"
    )
    assert len(json.loads(histology["result_ref"])) == 2 and len(json.loads(histology["specimen_ref"])) == 1
    laboratory = next(r for r in rows if r["category_code"] == "LAB")
    assert laboratory["code_text"] == "Laboratory tests"
    # The view gives the data-absent reason's code (it was its display and code before).
    assert laboratory["results"] == "Calcium [Mass/volume] in Serum or Plasma [17861-6]: (no value: unknown)"
    ultrasound = next(r for r in rows if r["conclusion"].startswith("A small well defined heteroechoic"))
    # The lesion size: the values of its components, with their UCUM units.
    assert ultrasound["results"] == (
        "Size Tumor [21889-1]: Size.maximum dimension in Tumor [33728-7] 0.57 cm, "
        "Size additional dimension in Tumor [33729-5] 0.44 cm"
    )
    # The fourth report cites no result: its cell is empty.
    assert [r["results"] for r in rows if r not in (histology, laboratory, ultrasound)] == [""]


def test_pull_filters_by_category_and_code(fhir_server: str, pushed: dict[str, Any]) -> None:
    common = (
        "pull",
        "diagnostic-reports",
        "--server",
        fhir_server,
        "--patient",
        patient_id(pushed),
        "--format",
        "ndjson",
    )
    result = cli(*common, "--category", "SP")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    result = cli(*common, "--code", "http://loinc.org|18748-4")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 2
    result = cli(*common, "--since", "2199-01-01")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    # An empty filter (an unset shell variable) is refused, not read as "every patient".
    result = cli("pull", "diagnostic-reports", "--server", fhir_server, "--patient", "")
    assert result.returncode == 2 and "patient: empty" in result.stderr and result.stdout == ""
    result = cli(*common, "--since", "yesterday")
    assert result.returncode == 2 and "--since" in result.stderr


def test_paging_across_three_pages(fhir_server: str, pushed: dict[str, Any]) -> None:
    async def walk() -> tuple[int, list[str]]:
        async with AsyncFhirClient(fhir_server) as client:
            query = report_query(patient=patient_id(pushed), page_size=1)
            pages = [page async for page in client.pages(query)]
            pulled = await pull_reports(client, query)
            return len(pages), [r["id"] for r in pulled.reports]

    pages, ids = asyncio.run(walk())
    assert pages >= 3
    assert len(ids) == len(set(ids)) == 4


# -- REST interactions and errors ---------------------------------------------------------------------------


def test_stale_if_match_is_412_and_errors_are_mapped(fhir_server: str) -> None:
    resource_id = f"cb-{uuid.uuid4().hex[:12]}"
    with FhirClient(fhir_server) as client:
        created = client.update({"resourceType": "Patient", "id": resource_id, "gender": "female"})
        version = created["meta"]["versionId"]
        updated = client.update({"resourceType": "Patient", "id": resource_id, "gender": "male"}, if_match=version)
        assert updated["meta"]["versionId"] != version
        with pytest.raises(PreconditionFailed) as info:
            client.update({"resourceType": "Patient", "id": resource_id, "gender": "other"}, if_match=version)
        assert info.value.status == 412 and info.value.outcome is not None
        assert client.vread("Patient", resource_id, version)["gender"] == "female"
        assert client.read("Patient", resource_id)["gender"] == "male"
        with pytest.raises(ResourceNotFound):
            client.read("Patient", f"missing-{resource_id}")
        client.delete("Patient", resource_id)
        with pytest.raises(ResourceGone):
            client.read("Patient", resource_id)
        with pytest.raises(BadRequest) as bad:
            client.update({"resourceType": "Patient", "id": resource_id, "gender": 5})
        assert bad.value.outcome is not None


def test_conditional_create_makes_one(fhir_server: str) -> None:
    value = uuid.uuid4().hex
    resource = {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": value}]}
    with FhirClient(fhir_server) as client:
        for _ in range(3):
            client.create(resource, if_none_exist=f"identifier=urn:test|{value}")
        assert len(list(client.resources(Search("Patient").where(identifier=f"urn:test|{value}")))) == 1


# -- the demo -------------------------------------------------------------------------------------------------


def test_demo_pushes_pulls_and_is_idempotent(tmp_path: Path) -> None:
    env = {"CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks")}
    first = cli("demo", "--data-dir", str(tmp_path / "fhir"), env=env)
    assert first.returncode == 0, first.stderr
    assert "0 errors" in first.stdout
    assert "38 created, 0 already there" in first.stdout
    assert "pulled back 4 DiagnosticReports" in first.stdout
    assert "histopathology conclusion: Dystrophic calcification" in first.stdout
    assert "stopped the embedded FHIR server" in first.stdout
    second = cli("demo", "--data-dir", str(tmp_path / "fhir"), env=env)
    assert second.returncode == 0, second.stderr
    assert "0 created, 38 already there" in second.stdout


# -- configuration and environment errors: exit 2/3 with a message, never an internal error ------------------


def test_configuration_problems_are_named(tmp_path: Path, fhir_server: str) -> None:
    not_a_key = tmp_path / "key.pem"
    not_a_key.write_text("not a key")
    smart = {
        "CASEBRIDGE_SMART_TOKEN_URL": "http://127.0.0.1:1/token",
        "CASEBRIDGE_SMART_CLIENT_ID": "me",
        "CASEBRIDGE_SMART_PRIVATE_KEY": str(not_a_key),
    }
    result = cli("ping", "--server", fhir_server, env=smart)
    assert result.returncode == 3 and "configuration error" in result.stderr, result.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = cli("push", str(SEED), "--server", fhir_server, env={"CASEBRIDGE_LOCK_DIR": str(blocked / "locks")})
    assert result.returncode == 3 and "lock folder" in result.stderr, result.stderr
    result = cli("demo", "--server", "localhost:8090/fhir")
    assert result.returncode == 2 and "--server" in result.stderr and "pushed" not in result.stdout
    result = cli("ping", env={"CASEBRIDGE_FHIR_BASE_URL": "http://user:secret@127.0.0.1:1/fhir"})
    assert result.returncode == 3 and "secret" not in result.stderr, result.stderr


def test_csv_cells_a_spreadsheet_would_run_are_defused() -> None:
    """Every leading character a spreadsheet reads as a formula (=, +, -, @, TAB, CR, after white space, full
    width) is defused in pull's CSV; a plain negative number and plain text are written as they are."""
    from casebridge.pull import PulledReports, to_csv
    from tests.unit.test_csv_cell import CELLS

    cells = [(text, cell) for text, cell in CELLS if text]
    reports = [
        {"resourceType": "DiagnosticReport", "id": f"r{i}", "status": "final", "code": {"text": "x"}, "conclusion": t}
        for i, (t, _) in enumerate(cells)
    ]
    rows = list(csv.DictReader(io.StringIO(to_csv(PulledReports(reports=reports)), newline="")))
    assert [r["conclusion"] for r in rows] == [cell for _, cell in cells]


def test_a_cr_or_lf_in_a_cell_never_starts_a_row() -> None:
    """A lone CR was written unquoted (csv quotes only its line terminator's characters, LF then): a spreadsheet
    read the rest as a new row, starting with a formula the first-character check never saw."""
    import csv
    import io

    from casebridge.pull import PulledReports, csv_columns, to_csv

    conclusions = ["Benign lesion\r=cmd|' /C calc'!A0", "two\nlines", "crlf\r\nend", "\r=1+1"]
    reports = [
        {"resourceType": "DiagnosticReport", "id": f"r{i}", "status": "final", "code": {"text": "x"}, "conclusion": c}
        for i, c in enumerate(conclusions)
    ]
    text = to_csv(PulledReports(reports=reports))
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == list(csv_columns()) and len(rows) == 1 + len(conclusions)
    column = csv_columns().index("conclusion")
    assert [r[column] for r in rows[1:]] == [*conclusions[:3], "'\r=1+1"]
