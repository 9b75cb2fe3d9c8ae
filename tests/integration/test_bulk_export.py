"""Bulk Data $export against the embedded FHIR server, over real HTTP: two converted cases pushed, then exported at
the system, Patient and Group levels with _type, and incrementally with --since.

Each test has a server of its own (``empty_fhir_server``), so the counts are exactly those of the cases pushed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from casebridge.fhir.bulk import MANIFEST_FILE, ExportRequest, ExportResult, PollPolicy, run_export
from casebridge.fhir.client import AsyncFhirClient, FhirClient
from tests.paths import PROJECT_ROOT

FIRST = "dystrophic-calcification-right-forearm.yaml"
SECOND = "15939911.yaml"
TYPES = ("Patient", "Observation", "DiagnosticReport")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=os.environ.copy(),
        timeout=120,
        check=False,
    )


def push(server: str, bundle: dict[str, Any]) -> None:
    with FhirClient(server) as client:
        response = client.transaction(bundle)
    assert len(response["entry"]) == len(bundle["entry"])


def expected(*bundles: dict[str, Any], types: tuple[str, ...] = TYPES) -> dict[str, set[str]]:
    """Resource ids by type, of the given types, in these Bundles."""
    found: dict[str, set[str]] = {}
    for bundle in bundles:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] in types:
                found.setdefault(resource["resourceType"], set()).add(resource["id"])
    return found


def exported(folder: Path) -> dict[str, set[str]]:
    """Resource ids by type, read from the NDJSON files the manifest names (each line checked against its type)."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    found: dict[str, set[str]] = {}
    for item in manifest["output"]:
        lines = (folder / item["file"]).read_bytes().splitlines()
        assert len(lines) == item["count"]
        for line in lines:
            resource = orjson.loads(line)
            assert resource["resourceType"] == item["type"]
            found.setdefault(item["type"], set()).add(resource["id"])
    return found


def export(server: str, request: ExportRequest, folder: Path) -> ExportResult:
    async def work() -> ExportResult:
        async with AsyncFhirClient(server) as client:
            return await run_export(client, request, folder, policy=PollPolicy(max_wait=120))

    return asyncio.run(work())


def test_system_and_patient_level_exports_with_type(
    empty_fhir_server: str, all_bundles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    first, second = all_bundles[FIRST], all_bundles[SECOND]
    push(empty_fhir_server, first)
    push(empty_fhir_server, second)
    want = expected(first, second)

    system = run_cli("export", "--server", empty_fhir_server, "--type", ",".join(TYPES), "-o", str(tmp_path / "sys"))
    assert system.returncode == 0, system.stderr
    assert exported(tmp_path / "sys") == want
    assert sorted(p.name for p in (tmp_path / "sys").glob("*.ndjson")) == sorted(f"{t}.1.ndjson" for t in TYPES)
    assert "transactionTime:" in system.stdout
    assert f"exported {sum(len(ids) for ids in want.values()):,} resources in 3 files" in system.stdout

    patient = export(empty_fhir_server, ExportRequest(level="patient", types=TYPES), tmp_path / "pat")
    assert exported(tmp_path / "pat") == want
    assert Counter({f.type: f.count for f in patient.files}) == Counter({t: len(ids) for t, ids in want.items()})
    assert all(f.downloaded for f in patient.files)

    # The same command again: the export is complete, nothing is fetched again.
    again = run_cli("export", "--server", empty_fhir_server, "--type", ",".join(TYPES), "-o", str(tmp_path / "sys"))
    assert again.returncode == 0, again.stderr
    assert "0 of 3 files downloaded now" in again.stdout


def test_group_level_exports_only_its_members(
    empty_fhir_server: str, all_bundles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    first, second = all_bundles[FIRST], all_bundles[SECOND]
    push(empty_fhir_server, first)
    push(empty_fhir_server, second)
    member = next(iter(expected(second, types=("Patient",))["Patient"]))
    group = {
        "resourceType": "Group",
        "id": "cohort",
        "type": "person",
        "actual": True,
        "member": [{"entity": {"reference": f"Patient/{member}"}}],
    }
    with FhirClient(empty_fhir_server) as client:
        client.update(group)
    result = export(empty_fhir_server, ExportRequest(level="group", group="cohort", types=TYPES), tmp_path / "grp")
    assert exported(tmp_path / "grp") == expected(second)
    assert result.transaction_time


def test_since_the_last_transaction_time_gets_only_what_came_after(
    empty_fhir_server: str, all_bundles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    first, second = all_bundles[FIRST], all_bundles[SECOND]
    push(empty_fhir_server, first)
    before = export(empty_fhir_server, ExportRequest(types=TYPES), tmp_path / "one")
    assert exported(tmp_path / "one") == expected(first)

    push(empty_fhir_server, second)
    since = run_cli(
        "export",
        "--server",
        empty_fhir_server,
        "--since",
        before.transaction_time,
        *(arg for t in TYPES for arg in ("--type", t)),
        "-o",
        str(tmp_path / "two"),
    )
    assert since.returncode == 0, since.stderr
    assert exported(tmp_path / "two") == expected(second)


def test_cli_errors(empty_fhir_server: str, tmp_path: Path) -> None:
    bad = run_cli("export", "--server", empty_fhir_server, "--type", "observation", "-o", str(tmp_path / "a"))
    assert bad.returncode == 2 and "observation" in bad.stderr
    no_group = run_cli("export", "--server", empty_fhir_server, "--level", "group", "-o", str(tmp_path / "b"))
    assert no_group.returncode == 2 and "--group" in no_group.stderr
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    busy = run_cli("export", "--server", empty_fhir_server, "-o", str(tmp_path / "c"))
    assert busy.returncode == 2 and "not empty" in busy.stderr
    missing = run_cli(
        "export", "--server", empty_fhir_server, "--level", "group", "--group", "nope", "-o", str(tmp_path / "d")
    )
    assert missing.returncode == 4 and "Group/nope" in missing.stderr
