"""Bulk Data export from the embedded FHIR server: time and peak memory of ``casebridge.fhir.bulk`` for N cases.

- load: N synthetic cases (``casebridge.tools.synth``, the valid ones), converted and pushed as transactions
  (four at a time) into a fresh embedded server run as its own process (``casebridge fhir-server``), so the
  server's memory is not counted. With ``--data-dir`` the loaded server data is kept, and a later run with the
  same N reuses it (the embedded server takes 5-10 cases a second: 3,000 cases loaded in 8 minutes).
- export: a system-level ``$export`` (kick-off, polling, manifest, every NDJSON file downloaded and checked),
  run in a child process of its own, so its peak RSS (``resource.getrusage``) is the client's alone.

Run: .venv/bin/python benchmarks/bench_export.py [--n 1000] [--data-dir D] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}
CASEBRIDGE = [sys.executable, "-m", "casebridge"]


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """The embedded FHIR server in a process of its own; (the process, its base URL)."""
    process = subprocess.Popen(
        [*CASEBRIDGE, "fhir-server", "--port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"FHIR base: (\S+)", line)
    if not found:
        process.kill()
        raise SystemExit(f"the FHIR server did not start: {line!r}")
    base = found.group(1)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/metadata", timeout=5).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("the FHIR server does not answer")
        time.sleep(0.2)


async def load(base: str, n: int, concurrency: int) -> tuple[int, int, float]:
    """Convert and push the valid ones of N synthetic cases; (cases, resources, seconds)."""
    from casebridge.config import Settings
    from casebridge.domain.reader import validate_case
    from casebridge.mapping.engine import MappingSet
    from casebridge.tools.synth import generate

    settings = Settings()
    mappings = MappingSet.load(settings.mappings_dir, terminology=settings.terminology())
    cases = (c for c in generate(n, seed=7) if c.valid)
    pushed = resources = 0
    started = time.perf_counter()

    async with httpx.AsyncClient(timeout=120) as http:

        async def worker() -> None:
            nonlocal pushed, resources
            for case in cases:  # one shared generator: each case is converted by one worker, when it is needed
                bundle = mappings.convert(validate_case(case.doc, source=case.name))
                response = await http.post(base, content=orjson.dumps(bundle), headers=HEADERS)
                response.raise_for_status()
                pushed += 1
                resources += len(bundle["entry"])
                if pushed % 500 == 0:
                    rate = pushed / (time.perf_counter() - started)
                    print(f"  pushed {pushed:,} cases ({rate:.1f}/s)", file=sys.stderr, flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return pushed, resources, time.perf_counter() - started


def export_child(base: str, out: str) -> None:
    """The export itself (in a child process): prints a JSON line with the time, the peak RSS and the counts."""
    from casebridge.fhir.bulk import ExportRequest, run_export
    from casebridge.fhir.client import AsyncFhirClient

    async def work() -> dict[str, object]:
        async with AsyncFhirClient(base, timeout=600) as client:
            started = time.perf_counter()
            result = await run_export(client, ExportRequest(), Path(out))
            seconds = time.perf_counter() - started
        return {
            "seconds": seconds,
            "polls": result.polls,
            "files": len(result.files),
            "resources": sum(f.count for f in result.files),
            "bytes": sum(f.bytes for f in result.files),
            "by_type": {f.type: f.count for f in result.files},
        }

    figures = asyncio.run(work())
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="synthetic cases to load (default 1,000)")
    parser.add_argument("--data-dir", type=Path, help="keep the loaded server data here (reused for the same N)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--export-child", nargs=2, metavar=("BASE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        export_child(*args.export_child)
        return

    temporary = args.data_dir is None
    data_dir: Path = Path(tempfile.mkdtemp(prefix="bench-export-")) if temporary else args.data_dir
    marker = data_dir / "loaded.json"
    loaded = json.loads(marker.read_text()) if marker.is_file() else None
    if loaded is not None and loaded.get("n") != args.n:
        raise SystemExit(f"{data_dir} holds {loaded.get('n')} cases, not {args.n}: use another --data-dir")
    server, base = start_server(data_dir / "server")
    try:
        if loaded is None:
            print(f"loading {args.n:,} synthetic cases into {base} ...", file=sys.stderr, flush=True)
            cases, resources, seconds = asyncio.run(load(base, args.n, args.concurrency))
            loaded = {"n": args.n, "cases": cases, "resources": resources, "load_seconds": round(seconds, 1)}
            marker.write_text(json.dumps(loaded))
        print(
            f"server holds {loaded['cases']:,} cases, {loaded['resources']:,} resources "
            f"(loaded in {loaded['load_seconds']:.0f} s)",
            flush=True,
        )
        out = Path(tempfile.mkdtemp(prefix="bench-export-out-"))
        try:
            child = subprocess.run(
                [sys.executable, __file__, "--export-child", base, str(out / "export")],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode != 0:
                raise SystemExit(f"the export failed:\n{child.stderr}")
            figures = json.loads(child.stdout.strip().splitlines()[-1])
        finally:
            shutil.rmtree(out, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if temporary:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(
        f"system-level $export of {loaded['cases']:,} cases: {figures['resources']:,} resources in "
        f"{figures['files']} files ({figures['bytes'] / 1e6:.0f} MB) in {figures['seconds']:.1f} s "
        f"({figures['polls']} status polls); peak RSS of the exporting process {figures['peak_rss_mb']:.0f} MB"
    )
    for kind, count in sorted(figures["by_type"].items()):
        print(f"  {kind:<24} {count:>9,}")


if __name__ == "__main__":
    main()
