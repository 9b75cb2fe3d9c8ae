"""Ingestion at scale without a server: synthetic cases converted and validated (the job's own `prepare`, no
push), 10,000 then 100,000, each in a fresh process; peak RSS and time. Targets: peak RSS <= 300 MB; the time
for 100,000 within 1.1 x ten times the time for 10,000 (linear: nothing grows with the job).

Run: .venv/bin/python benchmarks/bench_ingest_scale.py [--small 10000] [--large 100000]
(the large run takes roughly twenty minutes on a 2-core machine)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = 10_000
sys.path.insert(0, str(ROOT / "src"))


def phase(n: int, path: Path) -> dict[str, float]:
    """In this process: write n cases as NDJSON (not timed), then convert and validate every one (timed)."""
    from casebridge.config import Settings
    from casebridge.ingest.job import Prepared, prepare
    from casebridge.ingest.sources import CaseSource
    from casebridge.mapping.engine import MappingSet
    from casebridge.runtime import settle_heap
    from casebridge.tools.synth import generate
    from casebridge.validation.service import load_validator

    with path.open("w") as handle:
        for case in generate(n, seed=2026, invalid_share=0.02):
            handle.write(json.dumps(case.doc, separators=(",", ":")) + "\n")
    settings = Settings()
    mappings = MappingSet.load(settings.mappings_dir)
    validator = load_validator(settings)
    settle_heap()  # as `casebridge ingest` does once loaded
    started, started_cpu = time.perf_counter(), time.process_time()
    valid = 0
    blocks: list[float] = []  # CPU seconds per 10,000 cases: flat if nothing grows with the job
    block_start = started_cpu
    for i, item in enumerate(CaseSource(path, max_bytes=settings.max_case_bytes), 1):
        valid += isinstance(prepare(item, mappings, validator), Prepared)
        if i % BLOCK == 0:
            now = time.process_time()
            blocks.append(now - block_start)
            block_start = now
    seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "cases": n,
        "valid": valid,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": peak_mb,
        "blocks": blocks,
    }


def run_phase(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, __file__, "--phase", str(n), "--file", str(Path(tmp) / "cases.ndjson")],
            capture_output=True,
            text=True,
            check=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--phase", type=int)
    parser.add_argument("--file", type=Path)
    args = parser.parse_args()
    if args.phase is not None:
        print(json.dumps(phase(args.phase, args.file)))
        return
    small, large = run_phase(args.small), run_phase(args.large)
    for r in (small, large):
        print(
            f"{r['cases']:>7} cases ({r['valid']} valid): {r['seconds']:8.1f} s, "
            f"{r['cases'] / r['seconds']:6.1f} cases/s, CPU {r['cpu_seconds']:8.1f} s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB  (target <= 300 MB)"
        )
    if len(large["blocks"]) > 1:
        first, blocks = large["blocks"][0], large["blocks"]
        print(
            f"CPU seconds per {BLOCK:,} cases through the large run: "
            + ", ".join(f"{b:.0f}" for b in blocks)
            + f"  (last / first: {blocks[-1] / first:.3f}; max / min: {max(blocks) / min(blocks):.3f})"
        )
    scale = large["cases"] / small["cases"]
    for what in ("seconds", "cpu_seconds"):
        # CPU time as well as wall time: other work on the machine stretches the wall time, not the CPU time.
        ratio = large[what] / (small[what] * scale)
        label = "time" if what == "seconds" else "CPU time"
        print(f"{label}({large['cases']}) / ({scale:g} x {label}({small['cases']})): {ratio:.3f}  (target <= 1.1)")


if __name__ == "__main__":
    main()
