"""Push and pull throughput through casebridge's client, next to plain httpx doing the same in the same run.

- push: 500 pre-built case Bundles (the seed case under 500 case ids, 37 resources each) sent one
  transaction at a time by ``push_bundle`` (patient lock, retry-aware client, response accounting) and by a
  bare ``httpx.AsyncClient.post``. Each side gets its own 500 Bundles of the same shape; they alternate in
  rounds of 50 on the same embedded server, so a database growing during the run slows both alike.
  Validation is not in the figure (bench_validate.py measures it). Target: ratio (httpx time / casebridge
  time) >= 0.9.
- pull: 10,000 DiagnosticReports read through the paging iterator (``AsyncFhirClient.resources``) and by a
  plain httpx loop over ``link[next]``, same page size, alternating, median of 3. Target: ratio >= 0.67.

Run: .venv/bin/python benchmarks/bench_push_pull.py [--cases N] [--reports N] (make bench runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge.config import DATA_DIR, Settings  # noqa: E402
from casebridge.domain.reader import parse_document, validate_case  # noqa: E402
from casebridge.fhir.client import AsyncFhirClient  # noqa: E402
from casebridge.fhir.embedded import EmbeddedFhirServer  # noqa: E402
from casebridge.fhir.search import Search  # noqa: E402
from casebridge.mapping.engine import MappingSet  # noqa: E402
from casebridge.push import PatientLocks, push_bundle  # noqa: E402

SEED = DATA_DIR / "cases" / "dystrophic-calcification-right-forearm.yaml"
HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
ROUND = 50
PAGE = 500


def case_bundles(mappings: MappingSet, n: int, tag: str) -> list[dict[str, Any]]:
    doc = parse_document(SEED.read_bytes(), source=SEED.name)
    bundles = []
    for i in range(n):
        doc["case_id"] = f"bench-{tag}-{i:05d}"
        bundles.append(mappings.convert(validate_case(doc, source=SEED.name)))
    return bundles


async def push_casebridge(base: str, bundles: list[dict[str, Any]], locks: PatientLocks) -> float:
    async with AsyncFhirClient(base) as client:
        started = time.perf_counter()
        for bundle in bundles:
            result = await push_bundle(client, bundle, locks=locks)
            assert result.created == len(bundle["entry"])
        return time.perf_counter() - started


async def push_httpx(base: str, bundles: list[dict[str, Any]]) -> float:
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.perf_counter()
        for bundle in bundles:
            response = await client.post(base, content=orjson.dumps(bundle), headers=HEADERS)
            response.raise_for_status()
            assert response.json()["type"] == "transaction-response"
        return time.perf_counter() - started


async def load_reports(base: str, n: int) -> None:
    patient = {"resourceType": "Patient", "id": "bench-pull-patient", "gender": "unknown"}
    async with AsyncFhirClient(base) as client:
        await client.update(patient)
        for start in range(0, n, 1000):
            entries = []
            for i in range(start, min(n, start + 1000)):
                report = {
                    "resourceType": "DiagnosticReport",
                    "id": f"bench-dr-{i:06d}",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "11529-5"}]},
                    "subject": {"reference": "Patient/bench-pull-patient"},
                    "conclusion": f"report {i}",
                }
                entries.append(
                    {"resource": report, "request": {"method": "PUT", "url": f"DiagnosticReport/{report['id']}"}}
                )
            await client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})


async def pull_casebridge(base: str) -> tuple[float, int]:
    async with AsyncFhirClient(base) as client:
        started = time.perf_counter()
        count = 0
        async for _ in client.resources(
            Search("DiagnosticReport").where(patient="Patient/bench-pull-patient").count(PAGE)
        ):
            count += 1
        return time.perf_counter() - started, count


async def pull_httpx(base: str) -> tuple[float, int]:
    async with httpx.AsyncClient(timeout=60, headers={"Accept": "application/fhir+json"}) as client:
        started = time.perf_counter()
        count = 0
        url: str | None = f"{base}/DiagnosticReport"
        params: dict[str, str] | None = {"patient": "Patient/bench-pull-patient", "_count": str(PAGE)}
        while url:
            response = await client.get(url, params=params)
            response.raise_for_status()
            page = response.json()
            count += sum(1 for e in page.get("entry", []) if e.get("search", {}).get("mode", "match") == "match")
            url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
            params = None
        return time.perf_counter() - started, count


async def main(cases: int, reports: int) -> None:
    settings = Settings()
    mappings = MappingSet.load(settings.mappings_dir)
    run = uuid.uuid4().hex[:6]
    ours, theirs = case_bundles(mappings, cases, f"{run}-a"), case_bundles(mappings, cases, f"{run}-b")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedFhirServer(Path(tmp) / "fhir") as server:
        base = server.base_url
        locks = PatientLocks(Path(tmp) / "locks")
        t_ours = t_theirs = 0.0
        for r, start in enumerate(range(0, cases, ROUND)):
            chunk = slice(start, start + ROUND)
            if r % 2 == 0:
                t_ours += await push_casebridge(base, ours[chunk], locks)
                t_theirs += await push_httpx(base, theirs[chunk])
            else:
                t_theirs += await push_httpx(base, theirs[chunk])
                t_ours += await push_casebridge(base, ours[chunk], locks)
        resources = sum(len(b["entry"]) for b in ours)
        print(f"push {cases} case Bundles ({resources} resources) one transaction at a time, same embedded server")
        print(f"  casebridge push_bundle : {t_ours:7.2f} s  {cases / t_ours:6.1f} Bundles/s")
        print(f"  plain httpx post       : {t_theirs:7.2f} s  {cases / t_theirs:6.1f} Bundles/s")
        print(f"  ratio (httpx time / casebridge time): {t_theirs / t_ours:.3f}  (target >= 0.9)")

        await load_reports(base, reports)
        ours_t, theirs_t = [], []
        for i in range(3):
            for side in ((pull_casebridge, ours_t), (pull_httpx, theirs_t))[:: 1 if i % 2 == 0 else -1]:
                seconds, count = await side[0](base)
                assert count == reports, count
                side[1].append(seconds)
        mine, plain = statistics.median(ours_t), statistics.median(theirs_t)
        print(f"pull {reports} DiagnosticReports, {PAGE} per page, median of 3")
        print(f"  casebridge iterator    : {mine:7.2f} s  {reports / mine:8.0f} reports/s")
        print(f"  plain httpx paging     : {plain:7.2f} s  {reports / plain:8.0f} reports/s")
        print(f"  ratio (httpx time / casebridge time): {plain / mine:.3f}  (target >= 0.67)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--reports", type=int, default=10_000)
    args = parser.parse_args()
    asyncio.run(main(args.cases, args.reports))
