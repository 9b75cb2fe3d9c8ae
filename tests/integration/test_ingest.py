"""`casebridge ingest` on small jobs over real HTTP (the embedded server): sources, state, resume, report."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from casebridge.ingest.job import prepare
from casebridge.ingest.sources import CaseSource
from casebridge.tools.synth import generate
from tests.paths import DATA_DIR, PROJECT_ROOT


def run(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args],
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


def ndjson(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def test_keys_are_case_identities_so_inserted_lines_do_not_re_key_and_removed_cases_do_not_count(
    fhir_server: str, tmp_path: Path
) -> None:
    docs = [c.doc for c in generate(5, seed=105)]
    broken = {**docs[2], "patient": {"sex": "sometimes"}}  # invalid: refused, not sent
    path = ndjson(tmp_path / "cases.ndjson", [docs[0], docs[1], broken, docs[3]])
    state = tmp_path / "job.sqlite"
    first = run("ingest", str(path), "--server", fhir_server, "--state", str(state), tmp=tmp_path)
    assert first.returncode == 1, first.stderr
    assert report_of(state)["counts"] == {"pushed": 3, "invalid": 1, "failed": 0, "sending": 0, "pending": 0}
    # A new case inserted at the top, the invalid one removed: the others keep their keys (nothing re-sent),
    # and the removed one no longer counts (nor makes the exit code 1).
    ndjson(path, [docs[4], docs[0], docs[1], docs[3]])
    again = run("ingest", str(path), "--server", fhir_server, "--state", str(state), "--resume", tmp=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    report = report_of(state)
    assert report["this_run"] == {"done_before": 3, "pushed": 1}
    assert report["counts"] == {"pushed": 4, "invalid": 0, "failed": 0, "sending": 0, "pending": 0}
    assert report["cases"] == 4 and report["stale"] == 1 and report["invalid"] == []
    assert "1 no longer in the source" in again.stdout
    keys = {json.loads(line)["case_id"] for line in path.read_text().splitlines()}
    assert {r["key"] for r in report_rows(state, "pushed")} == {f"case:{k}" for k in keys}


def report_rows(state: Path, status: str) -> list[dict]:
    import sqlite3

    with sqlite3.connect(state) as db:
        run_no = int(db.execute("SELECT value FROM job WHERE name = 'run'").fetchone()[0])
        rows = db.execute("SELECT key, location FROM cases WHERE status = ? AND run = ?", (status, run_no))
        return [{"key": k, "location": loc} for k, loc in rows]


def test_a_case_id_twice_in_one_source_is_loaded_once_and_the_repeat_reported(fhir_server: str, tmp_path: Path) -> None:
    docs = [c.doc for c in generate(2, seed=106)]
    changed = json.loads(json.dumps(docs[0]))
    changed["presentation"]["source_text"] = "Another text under the same case id."
    path = ndjson(tmp_path / "cases.ndjson", [docs[0], docs[1], changed])
    state = tmp_path / "job.sqlite"
    result = run("ingest", str(path), "--server", fhir_server, "--state", str(state), tmp=tmp_path)
    assert result.returncode == 1, result.stderr
    report = report_of(state)
    assert report["counts"]["pushed"] == 2 and report["counts"]["invalid"] == 1
    (repeat,) = report["invalid"]
    assert repeat["key"] == f"case:{docs[0]['case_id']}#2"
    assert repeat["location"].endswith("cases.ndjson:3") and f"{path}:1" in repeat["reason"]
    assert "not sent" in repeat["reason"] and repeat["outcome"]["issue"][0]["code"] == "duplicate"


def test_a_state_file_of_the_earlier_schema_is_refused_with_a_clear_message(fhir_server: str, tmp_path: Path) -> None:
    import sqlite3

    state = tmp_path / "old.sqlite"
    with sqlite3.connect(state) as db:  # the first schema: keyed by file:line, no schema version
        db.executescript(
            "CREATE TABLE cases (key TEXT PRIMARY KEY, source TEXT NOT NULL, digest TEXT NOT NULL, status TEXT);"
            "CREATE TABLE job (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO cases VALUES ('cases.ndjson:1', 'x', 'y', 'pushed');"
        )
    path = ndjson(tmp_path / "cases.ndjson", [c.doc for c in generate(1, seed=107)])
    result = run("ingest", str(path), "--server", fhir_server, "--state", str(state), "--resume", tmp=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "another casebridge version" in result.stderr and "new --state" in result.stderr


def test_a_server_that_stays_down_stops_the_job_with_exit_4_and_nothing_failed(tmp_path: Path) -> None:
    port = free_port()
    path = ndjson(tmp_path / "cases.ndjson", [c.doc for c in generate(6, seed=108)])
    state = tmp_path / "job.sqlite"
    server = f"http://127.0.0.1:{port}/fhir"
    result = run("ingest", str(path), "--server", server, "--state", str(state), "--outage-wait", "3", tmp=tmp_path)
    assert result.returncode == 4, result.stdout + result.stderr
    report = report_of(state)
    assert report["counts"] == {"pushed": 0, "invalid": 0, "failed": 0, "sending": 0, "pending": 6}
    assert report["failed"] == [] and len(report["unfinished"]) == 6
    assert report["stopped"] and "--resume" in report["stopped"] and "stopped:" in result.stdout
    assert "pushes paused" in result.stderr


def test_the_report_counts_each_resource_once_across_shared_patients_and_re_sends(
    fhir_server: str, tmp_path: Path
) -> None:
    docs = [c.doc for c in generate(3, seed=109)]
    docs[1]["patient"] = json.loads(json.dumps(docs[0]["patient"]))  # a follow-up: one Patient for two cases
    path = ndjson(tmp_path / "cases.ndjson", docs)
    state = tmp_path / "job.sqlite"
    assert run("ingest", str(path), "--server", fhir_server, "--state", str(state), tmp=tmp_path).returncode == 0
    first = report_of(state)["resources"]
    assert first["already_there"] == 0 and first["uncertain"] == 0 and first["created"] > 0
    # A changed case is sent again: its resources were created by this job, and stay counted so.
    docs[2]["presentation"]["source_text"] = "Changed after the first load."
    ndjson(path, docs)
    again = run("ingest", str(path), "--server", fhir_server, "--state", str(state), "--resume", tmp=tmp_path)
    assert again.returncode == 0, again.stderr
    assert report_of(state)["this_run"] == {"done_before": 2, "pushed": 1}
    assert report_of(state)["resources"] == first


def free_port() -> int:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_job_stopped_by_sigterm_writes_its_report_and_prints_the_summary(tmp_path: Path) -> None:
    path = ndjson(tmp_path / "cases.ndjson", [c.doc for c in generate(6, seed=111)])
    state = tmp_path / "job.sqlite"
    server = f"http://127.0.0.1:{free_port()}/fhir"  # down: the job waits out the outage until it is stopped
    with (tmp_path / "out.txt").open("w+") as out, (tmp_path / "err.txt").open("w+") as err:
        command = ["ingest", str(path), "--server", server, "--state", str(state), "--outage-wait", "120"]
        process = subprocess.Popen(
            [sys.executable, "-m", "casebridge", *command],
            stdout=out,
            stderr=err,
            cwd=PROJECT_ROOT,
            env={**os.environ, "CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks")},
        )
        try:
            deadline = time.monotonic() + 120
            while "pushes paused" not in (tmp_path / "err.txt").read_text():
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "err.txt").read_text()
                time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
    stdout, stderr = (tmp_path / "out.txt").read_text(), (tmp_path / "err.txt").read_text()
    assert returncode == 130, stdout + stderr  # interrupted, as Ctrl-C (typer's code for KeyboardInterrupt)
    report = report_of(state)
    assert report["stopped"] and report["stopped"].startswith("interrupted")
    assert report["counts"] == {"pushed": 0, "invalid": 0, "failed": 0, "sending": 0, "pending": 6}
    assert len(report["unfinished"]) == 6 and report["failed"] == []
    assert "stopped: interrupted" in stdout and "6 cases from" in stdout


def test_an_oversized_ndjson_line_is_skipped_in_bounded_memory_and_reported_with_its_line(tmp_path: Path) -> None:
    docs = [c.doc for c in generate(2, seed=112)]
    path = tmp_path / "cases.ndjson"
    long_line = b'{"case_id": "huge", "text": "' + b"a" * 3_000_000 + b'"}\n'
    with path.open("wb") as handle:
        handle.write(json.dumps(docs[0]).encode() + b"\n")
        handle.write(long_line)  # line 2
        handle.write(json.dumps(docs[1]).encode() + b"\n")
        handle.write(b"b" * 3_000_000)  # line 4: 3 MB and no newline, to the end of the file
    source = CaseSource(path, max_bytes=64_000)
    tracemalloc.start()
    try:
        items = list(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # never a whole 3 MB line in memory
    assert [i.source for i in items] == [f"{path}:{n}" for n in (1, 2, 3, 4)]
    assert [i.suffix for i in items] == [".json", ".too-large", ".json", ".too-large"]
    assert [int(items[1].data), int(items[3].data)] == [len(long_line), 3_000_000]
    assert [i.key for i in CaseSource(path, max_bytes=64_000)] == [i.key for i in items]  # stable keys
    none: Any = None  # an oversized case is refused before it is converted or validated
    refused = prepare(items[3], none, none)
    assert getattr(refused, "reason", "") == f"{path}:4: 3,000,000 bytes, over the size limit"


def test_resources_a_corrected_case_no_longer_writes_are_reported_orphaned_and_left_on_the_server(
    fhir_server: str, tmp_path: Path
) -> None:
    import httpx

    from casebridge.domain.reader import validate_case
    from casebridge.mapping.engine import MappingSet

    docs = [c.doc for c in generate(2, seed=113)]
    path = ndjson(tmp_path / "cases.ndjson", docs)
    state = tmp_path / "job.sqlite"
    assert run("ingest", str(path), "--server", fhir_server, "--state", str(state), tmp=tmp_path).returncode == 0
    assert report_of(state)["orphaned"] == []
    mappings = MappingSet.load(DATA_DIR / "mappings")

    def refs(doc: dict) -> set[str]:
        bundle = mappings.convert(validate_case(doc, source="x"))
        return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}

    before = refs(docs[1])
    docs[1]["diagnostic_steps"].pop(1)  # corrected: one step was recorded in error
    gone = before - refs(docs[1])
    assert gone
    ndjson(path, docs)
    again = run("ingest", str(path), "--server", fhir_server, "--state", str(state), "--resume", tmp=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    report = report_of(state)
    assert report["this_run"] == {"done_before": 1, "pushed": 1}
    assert {o["ref"] for o in report["orphaned"]} == gone
    assert {o["location"] for o in report["orphaned"]} == {f"{path}:2"}
    assert f"orphaned: {len(gone)} resources" in again.stdout
    for ref in gone:  # left on the server, not deleted
        assert httpx.get(f"{fhir_server}/{ref}", headers={"Accept": "application/fhir+json"}).status_code == 200
    # The step put back: its resources are written again, no longer orphaned.
    ndjson(path, [c.doc for c in generate(2, seed=113)])
    run("ingest", str(path), "--server", fhir_server, "--state", str(state), "--resume", tmp=tmp_path)
    assert report_of(state)["orphaned"] == []
