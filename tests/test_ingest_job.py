"""The ingestion job in-process: a defect on one case is that case's recorded failure, and a broken state
ends the job at once (it must never hang on its own queue)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.domain.synth import generate
from service.fhir.client import AsyncFhirClient
from service.ingest.job import IngestJob, IngestOptions
from service.ingest.sources import CaseSource
from service.ingest.state import JobState
from service.mapping.engine import MappingSet
from service.push import PatientLocks
from service.validation.service import load_validator


@pytest.fixture(scope="module")
def validator() -> Any:
    return load_validator(Settings())


def cases_file(tmp: Path, n: int) -> Path:
    path = tmp / "cases.ndjson"
    path.write_text("".join(json.dumps(c.doc) + "\n" for c in generate(n, seed=303)))
    return path


def job(path: Path, state: JobState, client: AsyncFhirClient, mappings: MappingSet, validator: Any) -> IngestJob:
    return IngestJob(
        CaseSource(path, max_bytes=5_000_000),
        state,
        client=client,
        locks=PatientLocks(path.parent / "locks"),
        mappings=mappings,
        validator=validator,
        options=IngestOptions(concurrency=2),
    )


def test_a_case_that_breaks_the_validator_is_that_case_s_failure(
    fhir_server: str, tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    class Flaky:
        calls = 0

        def validate(self, resource: Any, profiles: Any = ()) -> Any:
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise ValueError("a defect of ours")
            return validator.validate(resource, profiles)

    state = JobState(tmp_path / "job.sqlite")

    async def go() -> None:
        async with AsyncFhirClient(fhir_server) as client:
            await job(cases_file(tmp_path, 4), state, client, mappings, Flaky()).run()

    asyncio.run(asyncio.wait_for(go(), 120))
    counts = state.counts()
    assert counts == {"pushed": 3, "failed": 1}, counts
    failed = next(state.rows("failed"))
    assert "internal error: ValueError: a defect of ours" in (failed.reason or "")


def test_a_state_that_cannot_be_written_ends_the_job_instead_of_hanging(
    fhir_server: str, tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    class BrokenState(JobState):
        def pushed(self, *args: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    state = BrokenState(tmp_path / "job.sqlite")

    async def go() -> None:
        async with AsyncFhirClient(fhir_server) as client:
            await job(cases_file(tmp_path, 12), state, client, mappings, validator).run()

    with pytest.raises(sqlite3.OperationalError):
        asyncio.run(asyncio.wait_for(go(), 120))  # a hang would be a TimeoutError here
    assert state.counts().get("pushed", 0) == 0
