"""Writes for one patient are serialized: checked against a loopback FHIR stand-in that records how many
transactions for the same patient are in flight at once, and holds each one long enough for overlaps to show.

(The embedded server serializes whole transactions by itself, so "one copy" there cannot tell whether our
locks work; this server can.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from casebridge.fhir.client import AsyncFhirClient
from casebridge.mapping.engine import MappingSet
from casebridge.push import PatientLocks, push_bundle
from tests.integration.test_push_pull import fresh_bundle, fresh_case
from tests.loopback import serve
from tests.paths import PROJECT_ROOT

HOLD = 0.05  # seconds each transaction stays in flight (in-process pushes start together)
CLI_HOLD = 0.8  # processes start over a second or so apart: hold long enough for them to meet


class Recorder:
    """A FHIR server stand-in: answers transactions, remembering what exists and the overlap per patient."""

    def __init__(self, hold: float = HOLD) -> None:
        self.hold = hold
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.stored: set[str] = set()
        self.transactions = 0
        self.app = Starlette(routes=[Route("/fhir", self.transaction, methods=["POST"])])

    async def transaction(self, request: Request) -> Response:
        bundle = orjson.loads(await request.body())
        patient = next(
            (e["request"]["url"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"), "none"
        )
        self.in_flight[patient] = self.in_flight.get(patient, 0) + 1
        self.max_in_flight[patient] = max(self.max_in_flight.get(patient, 0), self.in_flight[patient])
        try:
            await asyncio.sleep(self.hold)
            entries = []
            for entry in bundle["entry"]:
                url = entry["request"]["url"]
                status = "200 OK" if url in self.stored else "201 Created"
                self.stored.add(url)
                entries.append({"response": {"status": status, "location": f"{url}/_history/1"}})
            self.transactions += 1
        finally:
            self.in_flight[patient] -= 1
        body = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        return Response(orjson.dumps(body), media_type="application/fhir+json")


@pytest.fixture
def recorder(request: pytest.FixtureRequest) -> Any:
    rec = Recorder(getattr(request, "param", HOLD))
    with serve(rec.app) as base:
        rec.base_url = f"{base}/fhir"  # type: ignore[attr-defined]
        yield rec


def test_in_one_process_writes_for_a_patient_never_overlap(recorder: Any, mappings: MappingSet, tmp_path: Path) -> None:
    first, second = fresh_bundle(tmp_path, mappings), fresh_bundle(tmp_path, mappings)

    async def push_all() -> list[Any]:
        async with AsyncFhirClient(recorder.base_url) as client:
            locks = PatientLocks(tmp_path / "locks")
            jobs = [push_bundle(client, b, locks=locks) for b in [first] * 6 + [second] * 6]
            return await asyncio.gather(*jobs)

    results = asyncio.run(push_all())
    assert recorder.transactions == 12
    assert set(recorder.max_in_flight.values()) == {1}  # never two at once for one patient...
    assert len(recorder.max_in_flight) == 2
    # ...and exactly one push per patient created everything.
    assert sorted(r.created for r in results if r.patient == results[0].patient)[-1] == len(first["entry"])


def test_without_the_lock_writes_do_overlap(recorder: Any, mappings: MappingSet, tmp_path: Path) -> None:
    """The control: the same pushes with a lock that does nothing overlap, so the test above can fail."""
    bundle = fresh_bundle(tmp_path, mappings)

    class NoLocks(PatientLocks):
        @contextlib.asynccontextmanager
        async def hold(self, key: str | None) -> AsyncIterator[None]:
            yield

    async def push_all() -> None:
        async with AsyncFhirClient(recorder.base_url) as client:
            locks = NoLocks(tmp_path / "locks")
            await asyncio.gather(*(push_bundle(client, bundle, locks=locks) for _ in range(6)))

    asyncio.run(push_all())
    assert max(recorder.max_in_flight.values()) > 1


@pytest.mark.parametrize("recorder", [CLI_HOLD], indirect=True)
def test_eight_cli_processes_never_overlap_for_one_patient(recorder: Any, tmp_path: Path) -> None:
    case_file, _ = fresh_case(tmp_path)
    env = {**os.environ, "CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks")}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "casebridge", "push", str(case_file), "--server", recorder.base_url],
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
    assert recorder.transactions == 8
    assert list(recorder.max_in_flight.values()) == [1]  # the file lock held across processes
