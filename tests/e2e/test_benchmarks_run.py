"""The benchmarks reach into the service (the ingest job's push path and state thread; `serve --workers`): a
change there must not leave `make bench` broken unnoticed. Tiny runs, to see them reach their figures, not to
measure."""

from __future__ import annotations

import subprocess
import sys

from tests.paths import PROJECT_ROOT


def run_benchmark(*args: str) -> str:
    """Its standard output, once it has exited 0."""
    result = subprocess.run(
        [sys.executable, *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bench_ingest_runs_to_its_figure() -> None:
    out = run_benchmark("benchmarks/bench_ingest.py", "--cases", "4", "--concurrency", "2")
    assert "overhead:" in out and "casebridge ingest push path" in out


def test_bench_api_runs_to_its_figures() -> None:
    """Both servers start, take load from two clients for a second each, and the figures are printed."""
    out = run_benchmark("benchmarks/bench_api.py", "--seconds", "1", "--clients", "2", "--workers", "2")
    for figure in ("throughput ratio", "server CPU per request", "load generator CPU per request", "p99 of POST"):
        assert figure in out, out
