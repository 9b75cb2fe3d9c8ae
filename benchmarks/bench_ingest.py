"""Ingestion push path: the job's own push (state row written before and after, patient lock, retry-aware
client, response accounting) against plain httpx posting the same pre-built Bundles, same server, same
concurrency, alternating rounds. Target: casebridge's overhead <= 10% (time ratio <= 1.10).

Run: .venv/bin/python benchmarks/bench_ingest.py [--cases 600] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge.config import Settings  # noqa: E402
from casebridge.domain.reader import validate_case  # noqa: E402
from casebridge.fhir.client import AsyncFhirClient  # noqa: E402
from casebridge.fhir.embedded import EmbeddedFhirServer  # noqa: E402
from casebridge.ingest.job import IngestJob, Prepared  # noqa: E402
from casebridge.ingest.sources import CaseSource, SourceItem  # noqa: E402
from casebridge.ingest.state import JobState  # noqa: E402
from casebridge.mapping.engine import MappingSet  # noqa: E402
from casebridge.push import PatientLocks, patient_key  # noqa: E402
from casebridge.tools.synth import generate  # noqa: E402

ROUND = 60
HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


def bundles(mappings: MappingSet, n: int, seed: int) -> list[dict[str, Any]]:
    return [mappings.convert(validate_case(c.doc, source=c.name)) for c in generate(n, seed=seed) if c.valid]


async def casebridge_round(job: IngestJob, items: list[Prepared], concurrency: int) -> float:
    queue = list(items)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            prepared = queue.pop()
            # Through the job's state thread, as the job itself does (the connection is used from that thread).
            await job._state(job.state.pending, prepared.item.key, prepared.item.source, prepared.item.digest)
            assert await job._push(prepared) == "pushed"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def httpx_round(http: httpx.AsyncClient, base: str, items: list[dict[str, Any]], concurrency: int) -> float:
    queue = list(items)
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            response = await http.post(base, content=orjson.dumps(queue.pop()), headers=HEADERS)
            response.raise_for_status()
            assert response.json()["type"] == "transaction-response"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def main(cases: int, concurrency: int) -> None:
    settings = Settings()
    mappings = MappingSet.load(settings.mappings_dir)
    ours = bundles(mappings, cases, seed=501)
    theirs = bundles(mappings, cases, seed=502)
    n = min(len(ours), len(theirs))
    ours, theirs = ours[:n], theirs[:n]
    prepared = [
        Prepared(SourceItem(f"case-{i}", f"case-{i}", b"", ".json"), b["identifier"]["value"], b, patient_key(b))
        for i, b in enumerate(ours)
    ]
    with tempfile.TemporaryDirectory() as tmp, EmbeddedFhirServer(Path(tmp) / "fhir") as server:
        base = server.base_url
        (Path(tmp) / "cases.ndjson").write_text("{}\n")
        state = JobState(Path(tmp) / "job.sqlite")
        async with AsyncFhirClient(base) as client, httpx.AsyncClient(timeout=60) as http:
            job = IngestJob(
                CaseSource(Path(tmp) / "cases.ndjson", max_bytes=1 << 20),
                state,
                client=client,
                locks=PatientLocks(Path(tmp) / "locks"),
                mappings=mappings,
                validator=None,  # type: ignore[arg-type]
            )
            t_ours = t_theirs = 0.0
            for r, start in enumerate(range(0, n, ROUND)):
                a, b = prepared[start : start + ROUND], theirs[start : start + ROUND]
                if r % 2 == 0:
                    t_ours += await casebridge_round(job, a, concurrency)
                    t_theirs += await httpx_round(http, base, b, concurrency)
                else:
                    t_theirs += await httpx_round(http, base, b, concurrency)
                    t_ours += await casebridge_round(job, a, concurrency)
        state.close()
    resources = sum(len(b["entry"]) for b in ours)
    print(f"push {n} synthetic case Bundles ({resources} resources), {concurrency} in flight, same embedded server")
    print(f"  casebridge ingest push path : {t_ours:7.2f} s  {n / t_ours:6.1f} cases/s")
    print(f"  plain httpx post            : {t_theirs:7.2f} s  {n / t_theirs:6.1f} cases/s")
    print(f"  overhead: {100 * (t_ours / t_theirs - 1):+.1f}%  (target <= +10%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.cases, args.concurrency))
