"""``casebridge views run`` as a user runs it (a subprocess): NDJSON on standard output over a Bulk-Data-like folder,
an invalid view, an input a view cannot read, and a FHIR server source (the embedded server of the test session)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow.parquet as pq

from casebridge.fhir.client import AsyncFhirClient
from tests.paths import PROJECT_ROOT

CONDITION_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "conditions",
    "resource": "Condition",
    "select": [
        {
            "column": [
                {"name": "id", "path": "id", "type": "id"},
                {"name": "text", "path": "code.text", "type": "string"},
                {"name": "verification", "path": "verificationStatus.coding.code.first()", "type": "code"},
            ]
        }
    ],
}
PATIENT_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "patients",
    "resource": "Patient",
    "select": [{"column": [{"name": "id", "path": "id", "type": "id"}]}],
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", "views", "run", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )


def write(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


def export_folder(bundles: dict[str, dict[str, Any]], folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every case's resources as Bulk Data writes them: one <Type>.ndjson file per type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for bundle in bundles.values():
        for entry in bundle["entry"]:
            by_type.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    folder.mkdir()
    for kind, resources in by_type.items():
        (folder / f"{kind}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return by_type


def test_ndjson_on_standard_output_over_a_folder(all_bundles: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    by_type = export_folder(all_bundles, tmp_path / "export")
    result = run(str(write(tmp_path / "c.json", CONDITION_VIEW)), "--source", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(by_type["Condition"]) > 19
    assert {r["id"] for r in rows} == {c["id"] for c in by_type["Condition"]}
    assert {"refuted", "confirmed"} <= {r["verification"] for r in rows}  # the differentials and the diagnoses
    assert f"conditions: {len(rows)} rows" in result.stderr


def test_an_invalid_view_exits_2_naming_the_element(tmp_path: Path) -> None:
    view = json.loads(json.dumps(CONDITION_VIEW))
    view["select"][0]["column"][1]["path"] = "code.text.("
    result = run(str(write(tmp_path / "bad.json", view)), "--source", str(tmp_path))
    assert result.returncode == 2
    outcome = json.loads(result.stdout)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["select[0].column[1].path"]
    assert "bad.json" in result.stderr and "select[0].column[1].path" in result.stderr


def test_an_unreadable_resource_exits_2_naming_file_and_line_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "Condition.ndjson"
    good = {"resourceType": "Condition", "id": "a", "verificationStatus": {"coding": [{"code": "confirmed"}]}}
    twice = {"resourceType": "Condition", "id": "b", "code": {"text": ["not", "one"]}}
    source.write_bytes(orjson.dumps(good) + b"\n" + orjson.dumps(twice) + b"\n")
    out = tmp_path / "out"
    result = run(str(write(tmp_path / "c.json", CONDITION_VIEW)), "--source", str(source), "-o", str(out))
    assert result.returncode == 2
    assert f"{source}:2" in result.stderr and "Condition/b" in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Condition.ndjson", "c.json"]


def test_a_server_source_to_a_parquet_folder(
    fhir_server: str, all_bundles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    bundle = next(iter(all_bundles.values()))

    async def push() -> None:
        async with AsyncFhirClient(fhir_server) as client:
            await client.transaction(bundle)

    asyncio.run(push())
    conditions = {e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"}
    views = [str(write(tmp_path / "c.json", CONDITION_VIEW)), str(write(tmp_path / "p.json", PATIENT_VIEW))]
    out = tmp_path / "out"
    result = run(*views, "--source", fhir_server, "--format", "parquet", "-o", str(out), "--page-size", "3")
    assert result.returncode == 0, result.stderr
    ids = set(pq.read_table(out / "conditions.parquet").column("id").to_pylist())
    assert conditions <= ids  # every page read (3 a page), whatever other tests pushed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == fhir_server
    # The server's clock (Bundle.meta.lastUpdated, to the millisecond), not the run's start (to the second).
    assert manifest["transactionTime"].endswith("Z") and "." in manifest["transactionTime"]

    # An incremental run: only what changed since the first run's transactionTime; nothing did but a new patient.
    patient = {"resourceType": "Patient", "id": f"views-{uuid.uuid4().hex[:12]}"}

    async def add() -> None:
        async with AsyncFhirClient(fhir_server) as client:
            await client.update(patient)

    asyncio.run(add())
    again = run(*views, "--source", fhir_server, "--format", "parquet", "-o", str(out), "--since", "last")
    assert again.returncode == 0, again.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    patients = next(v for v in manifest["views"] if v["name"] == "patients")
    assert [f["file"] for f in patients["files"]] == ["patients.parquet", "patients.2.parquet"]
    assert patient["id"] in pq.read_table(out / "patients.2.parquet").column("id").to_pylist()
    assert patients["files"][1]["since"] == patients["files"][0]["transactionTime"]


def test_several_views_need_a_folder_for_standard_output(tmp_path: Path) -> None:
    views = [str(write(tmp_path / "c.json", CONDITION_VIEW)), str(write(tmp_path / "p.json", PATIENT_VIEW))]
    result = run(*views, "--source", str(tmp_path))
    assert result.returncode == 2 and "give -o FOLDER" in result.stderr


def test_shipped_views_by_name_to_a_duckdb_file(all_bundles: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    by_type = export_folder(all_bundles, tmp_path / "export")
    target = tmp_path / "views.duckdb"
    result = run(
        "condition", "--view", "patient", "--source", str(tmp_path / "export"), "--format", "duckdb", "-o", str(target)
    )
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(target), read_only=True) as db:
        assert db.sql("select count(*) from condition").fetchall() == [(len(by_type["Condition"]),)]
        assert db.sql("select count(*) from patient").fetchall() == [(len(by_type["Patient"]),)]
    unknown = run("--view", "no_such_view", "--source", str(tmp_path / "export"))
    assert unknown.returncode == 2 and "no such shipped view" in unknown.stderr
