"""The ingest benchmark reaches into the job (its push path, its state thread): a change there must not leave
`make bench` broken unnoticed. A few cases, to see it run to its figure, not to measure."""

from __future__ import annotations

import subprocess
import sys

from service.config import PROJECT_ROOT


def test_bench_ingest_runs_to_its_figure() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/bench_ingest.py", "--cases", "4", "--concurrency", "2"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "overhead:" in result.stdout and "casebridge ingest push path" in result.stdout
