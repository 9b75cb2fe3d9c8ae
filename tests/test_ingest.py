"""`casebridge ingest` on small jobs over real HTTP (the embedded server): sources, state, resume, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from service.config import PROJECT_ROOT
from service.domain.synth import generate


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "CASEBRIDGE_LOCK_DIR": str(tmp / "locks")},
        timeout=300,
        check=False,
    )


def folder_of_cases(tmp: Path, n: int, seed: int, invalid_share: float = 0.0) -> tuple[Path, int, int]:
    folder = tmp / f"cases-{seed}"
    folder.mkdir()
    valid = invalid = 0
    for case in generate(n, seed=seed, invalid_share=invalid_share):
        (folder / f"{case.name}.json").write_text(json.dumps(case.doc))
        valid += case.valid
        invalid += not case.valid
    return folder, valid, invalid


def report_of(state: Path) -> dict:
    return json.loads(state.with_name(state.stem + ".report.json").read_text())


def test_a_folder_job_reports_every_case_and_resumes_to_nothing(fhir_server: str, tmp_path: Path) -> None:
    folder, valid, invalid = folder_of_cases(tmp_path, 12, seed=101, invalid_share=0.3)
    assert valid and invalid
    state = tmp_path / "job.sqlite"
    first = run("ingest", str(folder), "--server", fhir_server, "--state", str(state), tmp=tmp_path)
    assert first.returncode == 1, first.stderr  # some invalid, none failed
    report = report_of(state)
    assert report["counts"]["pushed"] + report["counts"]["invalid"] == 12
    assert report["counts"]["invalid"] >= invalid - 1  # a generated defect may only show at conversion
    assert all(r["outcome"]["resourceType"] == "OperationOutcome" for r in report["invalid"])
    assert f"pushed {report['counts']['pushed']}" in first.stdout
    assert "ingest: 12 cases" in first.stderr  # plain progress lines when not on a terminal
    # The same state without --resume is refused; with it, nothing is sent again.
    again = run("ingest", str(folder), "--server", fhir_server, "--state", str(state), tmp=tmp_path)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run("ingest", str(folder), "--server", fhir_server, "--state", str(state), "--resume", tmp=tmp_path)
    assert report_of(state)["this_run"] == {"done_before": 12}, resumed.stdout
    # A changed case is sent again; the others stay done.
    changed = next(p for p in sorted(folder.iterdir()) if json.loads(p.read_text()).get("presentation"))
    doc = json.loads(changed.read_text())
    doc["presentation"]["narrative"] = "Changed after the first load."
    changed.write_text(json.dumps(doc))
    run("ingest", str(folder), "--server", fhir_server, "--state", str(state), "--resume", tmp=tmp_path)
    assert report_of(state)["this_run"].get("pushed", 0) + report_of(state)["this_run"].get("invalid", 0) == 1


def test_an_ndjson_job_and_a_fresh_state_create_nothing_new(fhir_server: str, tmp_path: Path) -> None:
    path = tmp_path / "cases.ndjson"
    path.write_text("".join(json.dumps(c.doc) + "\n" for c in generate(5, seed=102)))
    first = run("ingest", str(path), "--server", fhir_server, "--state", str(tmp_path / "a.sqlite"), tmp=tmp_path)
    assert first.returncode == 0, first.stderr
    assert report_of(tmp_path / "a.sqlite")["resources"]["already_there"] == 0
    # Without the state (a new job), the same cases update the same resources: nothing is created.
    second = run("ingest", str(path), "--server", fhir_server, "--state", str(tmp_path / "b.sqlite"), tmp=tmp_path)
    assert second.returncode == 0, second.stderr
    report = report_of(tmp_path / "b.sqlite")
    assert report["resources"]["created"] == 0 and report["resources"]["already_there"] > 0


def test_bad_arguments(fhir_server: str, tmp_path: Path) -> None:
    result = run("ingest", str(tmp_path / "nowhere"), "--server", fhir_server, tmp=tmp_path)
    assert result.returncode == 2 and "nowhere" in result.stderr
    (tmp_path / "cases.txt").write_text("x")
    result = run("ingest", str(tmp_path / "cases.txt"), "--server", fhir_server, tmp=tmp_path)
    assert result.returncode == 2 and ".ndjson" in result.stderr
    result = run(
        "ingest",
        str(tmp_path),
        "--server",
        fhir_server,
        "--resume",
        "--state",
        str(tmp_path / "x.sqlite"),
        tmp=tmp_path,
    )
    assert result.returncode == 2 and "no job state" in result.stderr


def test_two_jobs_on_one_state_are_refused(fhir_server: str, tmp_path: Path) -> None:
    import fcntl

    state = tmp_path / "job.sqlite"
    path = tmp_path / "cases.ndjson"
    path.write_text("".join(json.dumps(c.doc) + "\n" for c in generate(1, seed=104)))
    with (tmp_path / "job.sqlite.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running job holds it
        result = run("ingest", str(path), "--server", fhir_server, "--state", str(state), tmp=tmp_path)
    assert result.returncode == 2 and "another ingest job" in result.stderr
