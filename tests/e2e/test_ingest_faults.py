"""Registry ingestion under faults: a fault-injecting proxy on loopback in front of the embedded FHIR server,
generated cases (5% deliberately invalid; a fifth are follow-ups of an earlier case's patient, so many
patients have several cases and share one Patient), and `casebridge ingest` as a real process.

Scenarios: the server down at start, random 500s, 429 with Retry-After, answers slower than the client waits,
connections cut before the request went in (mid-body) or after the server did the work, idle kept-alive
connections closed or reset, connections refused for a window mid-run, the server restarted mid-run, and the
job SIGKILLed mid-run then resumed. In every one: every valid case on the server exactly once (checked by
reading back every resource and counting identifiers), every invalid case reported and not sent, nothing lost.

Idempotent PUTs hide duplicate sends on the server, so the proxy also records every transaction it saw (which
case, what it did to it, whether the server committed it, whether the client got the answer, and on one clock
when it was forwarded and when the server's answer came back), and each scenario checks that a case is sent
again only after an attempt whose outcome the client could not know (a fault, a cut, a refused connection):
never after the client had its answer. Per patient: its cases went in in source order (every send of an
earlier case had come back before the last committed send of the next one was forwarded), and the Patient on
the server is the one its last case writes. A finished job run again sends nothing; a killed job, resumed,
sends the cases not yet pushed at the kill, and, by design, a pushed case again only when an earlier case of
its patient was unfinished at the kill (it goes again after that one, so the Patient ends as its last case
says).

A job's stdout and stderr go to files (a pipe nobody reads while the job runs would block a chatty job); their
tails are shown when a check fails.

Cases per scenario: CASEBRIDGE_FAULT_CASES (default 200, so the suite stays within a few minutes on two
cores; `make faults` runs the full 1,000 per scenario).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from casebridge.domain.reader import validate_case
from casebridge.fhir.client import FhirClient
from casebridge.fhir.embedded import EmbeddedFhirServer
from casebridge.fhir.search import Search
from casebridge.mapping.engine import MappingSet
from casebridge.push import patient_key
from casebridge.tools.synth import generate
from tests.faultproxy import FaultProxy, Faults, Send
from tests.paths import PROJECT_ROOT

CASES = int(os.environ.get("CASEBRIDGE_FAULT_CASES", "200"))
SEED = 11
REPEAT_PATIENTS = 0.2  # the share of cases that are follow-ups of an earlier case's patient
UNFINISHED = ("pending", "sending", "failed")  # a case's statuses in the job state before it is pushed
pytestmark = pytest.mark.slow


def comparable(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource without what the server adds to it (``meta.versionId``, ``lastUpdated``, ``source``)."""
    kept = {k: v for k, v in resource.items() if k != "meta"}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated", "source")}
    if meta:
        kept["meta"] = meta
    return kept


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, mappings: MappingSet) -> dict[str, Any]:
    """The generated cases as NDJSON, and what the server must hold afterwards."""
    folder = tmp_path_factory.mktemp("fault-cases")
    path = folder / "cases.ndjson"
    expected: collections.Counter[str] = collections.Counter()
    valid, invalid, provenance = 0, 0, 0
    ids: set[str] = set()  # the valid cases' Bundle identifiers (what the proxy names a transaction by)
    sequence: list[str] = []  # the same, in source order
    patients: dict[str, list[str]] = collections.defaultdict(list)  # Patient/<id> -> its valid cases, in order
    patient_of: dict[str, str] = {}  # valid case -> Patient/<id>
    written: dict[str, dict[str, Any]] = {}  # valid case -> the Patient its Bundle writes
    generated = generate(CASES, seed=SEED, invalid_share=0.05, repeat_patient_share=REPEAT_PATIENTS)
    with path.open("w") as handle:
        for case in generated:
            handle.write(json.dumps(case.doc, separators=(",", ":")) + "\n")
            if not case.valid:
                invalid += 1
                continue
            try:
                bundle = mappings.convert(validate_case(case.doc, source=case.name))
            except Exception:  # noqa: BLE001 - a generated case refused at conversion counts as invalid
                invalid += 1
                continue
            valid += 1
            case_id = bundle["identifier"]["value"]
            ids.add(case_id)
            sequence.append(case_id)
            patient = patient_key(bundle)
            assert patient is not None, f"{case.name}: a Bundle without a Patient"
            patients[patient].append(case_id)
            patient_of[case_id] = patient
            for entry in bundle["entry"]:
                resource = entry["resource"]
                if resource["resourceType"] == "Provenance":
                    provenance += 1
                if resource["resourceType"] == "Patient":
                    written[case_id] = comparable(resource)
                for identifier in resource.get("identifier") or []:
                    if identifier.get("system") == "urn:casebridge:resource":
                        expected[f"{resource['resourceType']}|{identifier['value']}"] += 1
    assert len(ids) == valid, "two valid cases share a Bundle identifier: the send checks need them distinct"
    shared = {p: c for p, c in patients.items() if len(c) > 1}
    # Patients whose last case writes a Patient none of their earlier cases writes (the age at presentation in
    # its narrative differs): on those, a Patient left by an earlier case is seen on the server.
    telling = [p for p, c in shared.items() if all(written[e] != written[c[-1]] for e in c[:-1])]
    assert len(shared) >= 5 and telling, "too few patients with several cases to exercise per-patient order"
    return {
        "path": path,
        "expected": expected,
        "valid": valid,
        "invalid": invalid,
        "provenance": provenance,
        "ids": frozenset(ids),
        "sequence": sequence,
        "patients": dict(patients),
        "patient_of": patient_of,
        "written": written,
        "shared": len(shared),
        "telling": len(telling),
    }


def on_server(base_url: str, types: set[str]) -> tuple[collections.Counter[str], int, dict[str, dict[str, Any]]]:
    """Every casebridge identifier on the server, counted; the number of Provenances; the Patients by
    ``Patient/<id>``."""
    found: collections.Counter[str] = collections.Counter()
    provenance = 0
    patients: dict[str, dict[str, Any]] = {}
    with FhirClient(base_url) as client:
        for kind in sorted(types | {"Patient"}):
            for resource in client.resources(Search(kind).count(1000)):
                if kind == "Provenance":
                    provenance += 1
                if kind == "Patient":
                    patients[f"Patient/{resource['id']}"] = resource
                for identifier in resource.get("identifier") or []:
                    if identifier.get("system") == "urn:casebridge:resource":
                        found[f"{kind}|{identifier['value']}"] += 1
    return found, provenance, patients


@dataclass
class Job:
    """A job process; its stdout and stderr go to files, never to pipes that nobody reads while it runs."""

    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def tails(self, limit: int = 3000) -> str:
        return "".join(
            f"\n--- the job's {name} (pid {self.process.pid}, last {limit} characters) ---\n{_tail(path, limit)}"
            for name, path in (("stdout", self.out), ("stderr", self.err))
        )


def _tail(path: Path, limit: int) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError as exc:
        return f"(unreadable: {exc})"


@contextlib.contextmanager
def tails_on_failure(*jobs: Job) -> Iterator[None]:
    """A failed check names what the job processes said."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}{''.join(job.tails() for job in jobs)}") from exc


def ingest(
    proxy_url: str,
    path: Path,
    state: Path,
    logs: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> Job:
    """``casebridge ingest`` as a process; ``logs``: where its stdout and stderr go (``.out``, ``.err``)."""
    out, err = logs.with_suffix(".out"), logs.with_suffix(".err")
    with out.open("wb") as stdout, err.open("wb") as stderr:  # the child keeps its own copies
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "casebridge",
                "ingest",
                str(path),
                "--server",
                proxy_url,
                "--state",
                str(state),
                "--concurrency",
                "4",
                "--max-attempts",
                "12",
                # No fault of these scenarios but ``hold`` delivers a request later than the client's timeout (a
                # slow answer or a cut comes after the server committed): a short settle keeps them quick. The
                # ``hold`` scenario passes its own, longer than its hold.
                "--settle",
                "1",
                *extra,
            ],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=PROJECT_ROOT,
            env={
                **os.environ,
                "CASEBRIDGE_FHIR_RETRY_ATTEMPTS": "3",
                "CASEBRIDGE_FHIR_RETRY_MAX_WAIT": "5",
                "CASEBRIDGE_LOCK_DIR": str(state.parent / "locks"),
                **(env or {}),
            },
        )
    return Job(process, out, err)


def pushed_so_far(state: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)) as db:
            return int(db.execute("SELECT COUNT(*) FROM cases WHERE status = 'pushed'").fetchone()[0])
    except sqlite3.Error:
        return 0


@dataclass(frozen=True)
class CaseState:
    status: str
    patient: str | None  # the state's ``patient`` column, when it has one and it is filled


def case_states(state: Path) -> dict[str, CaseState]:
    """Every row of the job state by case: its status, and its patient when the state records one.

    Reads only the columns it names (``key``, ``status``, and ``case_id``/``patient`` when there), so added
    columns do not matter. A row keyed ``case:<case_id>`` is named by that case id (what the proxy names a
    transaction by); another by its ``case_id``, else its key."""
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)) as db:
        columns = {str(row[1]) for row in db.execute("PRAGMA table_info(cases)")}
        case_id = "case_id" if "case_id" in columns else "NULL"
        patient = "patient" if "patient" in columns else "NULL"
        rows = db.execute(f"SELECT key, status, {case_id}, {patient} FROM cases").fetchall()
    found: dict[str, CaseState] = {}
    for key, status, cid, who in rows:
        name = str(key)[len("case:") :] if str(key).startswith("case:") else str(cid or key)
        found[name] = CaseState(str(status), None if who is None else str(who))
    return found


def check_state_patients(rows: dict[str, CaseState], cases: dict[str, Any]) -> int:
    """Where the state names a case's patient, it names one patient per patient of the source (whatever its
    spelling): one value for all the cases of a patient, a different one for each patient. Returns how many
    valid cases the state names a patient for."""
    named: dict[str, str] = {}  # the source's Patient/<id> -> the state's value
    count = 0
    for case, row in rows.items():
        if row.patient is None or case not in cases["patient_of"]:
            continue
        count += 1
        patient = cases["patient_of"][case]
        assert named.setdefault(patient, row.patient) == row.patient, (
            f"the state names two patients for the cases of {patient}: {named[patient]!r} and {row.patient!r}"
        )
    assert len(set(named.values())) == len(named), "the state names two patients of the source alike"
    return count


def wait_until(condition: Callable[[], bool], job: Job | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        if job is not None and job.process.poll() is not None:
            raise AssertionError(f"the job ended (exit {job.process.returncode}) before the awaited point")
        time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fresh embedded server and a fault proxy in front of it; job processes still running at the end are killed."""
    data = tmp_path / "fhir"
    server = EmbeddedFhirServer(data).start()
    proxy = FaultProxy(server.port, Faults(seed=SEED)).__enter__()
    jobs: list[Job] = []
    holder: dict[str, Any] = {"server": server, "proxy": proxy, "data": data, "tmp": tmp_path, "jobs": jobs}
    try:
        yield holder
    finally:
        for job in jobs:
            if job.process.poll() is None:
                job.process.kill()
                job.process.wait(timeout=30)
        proxy.__exit__(None, None, None)
        holder["server"].stop()


def start(stack: dict[str, Any], cases: dict[str, Any], *extra: str, env: dict[str, str] | None = None) -> Job:
    """A job process against the proxy, as a new run of the proxy's records."""
    proxy: FaultProxy = stack["proxy"]
    run = proxy.begin_run()
    tmp: Path = stack["tmp"]
    job = ingest(proxy.base_url, cases["path"], tmp / "job.sqlite", tmp / f"job-run{run}", *extra, env=env)
    stack["jobs"].append(job)
    return job


def finish(job: Job, timeout: float = 600 * max(1, CASES // 200)) -> tuple[int, str, str]:
    """Wait for the job; its exit code, stdout and stderr."""
    try:
        code = job.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        job.process.kill()
        job.process.wait(timeout=30)
        raise AssertionError(f"the job did not finish within {timeout} s") from None
    return code, job.out.read_text(errors="replace"), job.err.read_text(errors="replace")


def check_exactly_once(stack: dict[str, Any], cases: dict[str, Any], state: Path) -> dict[str, dict[str, Any]]:
    """Every valid case on the server exactly once, no invalid one, the report agreeing; returns the Patients on
    the server (for ``check_patients``)."""
    report = json.loads(state.with_name(state.stem + ".report.json").read_text())
    counts = report["counts"]
    assert counts["pushed"] == cases["valid"], report["counts"]
    assert counts["invalid"] == cases["invalid"], report["counts"]
    assert counts["failed"] == counts["sending"] == counts["pending"] == 0, (report["counts"], report["failed"][:5])
    assert len(report["invalid"]) == cases["invalid"] and all(r["reason"] for r in report["invalid"])
    types = {key.split("|")[0] for key in cases["expected"]} | {"Provenance"}
    found, provenance, patients = on_server(stack["server"].base_url, types)
    extra = {k: v for k, v in found.items() if k not in cases["expected"]}
    assert not extra, f"{len(extra)} resources of cases that should not be there: {list(extra)[:5]}"
    twice = {k: v for k, v in found.items() if v > 1}
    assert not twice, f"{len(twice)} resources duplicated on the server: {list(twice.items())[:5]}"
    missing = [k for k in cases["expected"] if found[k] != 1]
    assert not missing, f"{len(missing)} resources missing on the server: {missing[:5]}"
    assert provenance == cases["provenance"]
    return patients


def _cases_line(by_case: dict[str, list[Send]], limit: int = 5) -> str:
    return "; ".join(
        f"{case} [{' | '.join(s.describe() for s in sends)}]" for case, sends in list(by_case.items())[:limit]
    )


def check_sends(
    proxy: FaultProxy,
    cases: dict[str, Any],
    run: int,
    *,
    finished: bool = True,
    designed: frozenset[str] = frozenset(),
    caught: frozenset[str] = frozenset(),
    reasserts: dict[str, int] | None = None,
) -> dict[str, int]:
    """What reached the proxy during one job run: only valid cases; a case sent again only after an attempt
    whose outcome the client could not know; committed sends bounded by the cases plus the faults that hid a
    commit. ``finished``: the run ended normally (not killed), so each case's last send was answered.

    Across runs: a case committed and answered in an earlier run is sent in this one only as a designed re-send
    (``designed``: an earlier case of its patient was unfinished, and is sent in this run before it) or because
    a kill caught it between that answer and recording it (``caught``: ``sending`` in the state at the kill).

    ``reasserts``: case -> sends the job's settle pass made of it in this run (the report's ``reasserted``: the
    patient's last case pushed again after an attempt of one of its cases lost its answer). Those are its last
    sends of the run, counted apart: by design, not after a fault of their own; the checks below see the rest."""
    sends = proxy.sends_of(run)
    unnamed = [s.describe() for s in sends if s.case is None]
    assert not unnamed, f"{len(unnamed)} transactions the proxy could not name a case for: {unnamed[:5]}"
    strangers = sorted({str(s.case) for s in sends} - cases["ids"])
    assert not strangers, f"transactions of {len(strangers)} cases that are not valid cases: {strangers[:10]}"
    by_case: dict[str, list[Send]] = collections.defaultdict(list)
    for send in sends:
        by_case[str(send.case)].append(send)
    whole = {case: list(s) for case, s in by_case.items()}  # with the re-assert sends
    reasserted = 0
    for case, n in (reasserts or {}).items():
        # The report counts the pass's attempts; one on a kept-alive connection the proxy had just closed never
        # reached it. So at most n of the case's last sends, never its first (its push proper).
        k = min(n, len(by_case.get(case, [])) - 1)
        assert k >= 1, f"{case}: the report says {n} re-assert sends, the proxy saw {len(by_case.get(case, []))} in all"
        tail = by_case[case][-k:]
        assert tail[-1].upstream == "committed", f"{case}: its last re-assert send was not committed: {tail[-1]}"
        by_case[case] = by_case[case][:-k]
        reasserted += k
    sends = [s for s in sends if any(s is x for x in by_case[str(s.case)])]
    again = {case: s for case, s in by_case.items() if any(x.delivered is True for x in s[:-1])}
    assert not again, (
        f"{len(again)} cases sent again after the client had received the server's answer to an earlier send: "
        + _cases_line(again)
    )
    if finished:
        unanswered = {case: s for case, s in whole.items() if s[-1].delivered is False or s[-1].upstream != "committed"}
        assert not unanswered, (
            f"{len(unanswered)} cases whose last send was not committed and answered, yet the job ended: "
            + _cases_line(unanswered)
        )
    earlier = {
        str(s.case) for s in list(proxy.sends) if s.run < run and s.upstream == "committed" and s.delivered is True
    }
    repeated = {case: by_case[case] for case in sorted(set(by_case) & earlier - designed - caught)}
    assert not repeated, (
        f"{len(repeated)} cases committed and answered in an earlier run sent again, though neither a designed "
        "re-send nor caught by a kill before their answer was recorded: " + _cases_line(repeated)
    )
    # Redundant with the above, stated as bounds: a case is committed once, plus once per send whose commit a
    # fault hid from the client (an answer cut, late, or lost).
    hidden = collections.Counter(str(s.case) for s in sends if s.upstream == "committed" and s.delivered is not True)
    committed = collections.Counter(str(s.case) for s in sends if s.upstream == "committed")
    over = {case: by_case[case] for case, n in committed.items() if n > 1 + hidden[case]}
    assert not over, f"{len(over)} cases committed more often than faults explain: " + _cases_line(over)
    assert sum(committed.values()) <= len(by_case) + sum(hidden.values())
    # Cases none of whose sends met a fault (every one forwarded as it was, committed, answered): sent once.
    clean = {case: s for case, s in by_case.items() if all(x.fault == "pass" and x.upstream == "committed" for x in s)}
    twice = {case: s for case, s in clean.items() if len(s) > 1}
    assert not twice, f"{len(twice)} cases sent more than once though no send met a fault: {_cases_line(twice)}"
    return {
        "cases": len(by_case),
        "sends": len(sends),
        "committed": sum(committed.values()),
        "hidden": sum(hidden.values()),
        "resent": len(sends) - len(by_case),
        "designed": len(set(by_case) & designed),  # cases finished in an earlier run, sent again by design
        "reasserts": reasserted,  # sends of the settle pass, not in ``sends``
    }


def check_reached(proxy: FaultProxy, cases: dict[str, Any]) -> None:
    """Every valid case was committed by the server at least once (over every run so far)."""
    committed = {s.case for s in list(proxy.sends) if s.upstream == "committed"}
    missing = sorted(cases["ids"] - committed)
    assert not missing, f"{len(missing)} valid cases never committed through the proxy: {missing[:10]}"


def check_patients(
    proxy: FaultProxy,
    cases: dict[str, Any],
    on_server: dict[str, dict[str, Any]],
    reasserted: frozenset[str] = frozenset(),
) -> dict[str, int]:
    """Per patient, over every run so far: its cases went in in source order, and its Patient on the server is
    the one its last case writes.

    ``reasserted``: patients whose last case the settle pass pushed again. Of those, a held send (one the network
    delivered late, after the client gave up on it) may come back after the next case's sends: the order then
    rests on the re-assert, so every send of the patient's earlier cases must have come back before its last
    case's last committed send (the re-assert) was forwarded.

    Order, from the proxy's clock: for each valid case and the patient's next valid case, every send of the
    first that reached the server had its answer back (or its upstream connection ended) before the last
    committed send of the next was forwarded. So the server applied the next case's final write after anything
    the first wrote, whatever the faults, retries, runs and designed re-sends in between."""
    by_case: dict[str, list[Send]] = collections.defaultdict(list)
    for send in list(proxy.sends):
        by_case[str(send.case)].append(send)
    disorder: list[str] = []
    pairs = 0
    for patient, ids in cases["patients"].items():
        for first, then in itertools.pairwise(ids):
            final = [s for s in by_case[then] if s.upstream == "committed"]
            if not final:
                continue  # never committed: check_reached says so
            pairs += 1
            at = final[-1].forwarded
            late = [
                s
                for s in by_case[first]
                if s.forwarded is not None
                and (s.settled is None or at is None or s.settled > at)
                and not (patient in reasserted and s.fault == "held")
            ]
            if late:
                disorder.append(
                    f"{patient}: {first} [{' | '.join(s.describe() for s in late)}] came back after {then}'s last "
                    f"committed send [{final[-1].describe()}] was forwarded"
                )
    for patient in sorted(reasserted):
        ids = cases["patients"][patient]
        final = [s for s in by_case[ids[-1]] if s.upstream == "committed"]
        at = final[-1].forwarded if final else None
        late = [
            s
            for c in ids[:-1]
            for s in by_case[c]
            if s.forwarded is not None and (s.settled is None or at is None or s.settled > at)
        ]
        if late:
            disorder.append(
                f"{patient}: [{' | '.join(s.describe() for s in late)}] came back after the re-assert of {ids[-1]}"
            )
    assert not disorder, f"{len(disorder)} pairs of a patient's cases went in out of source order: " + "; ".join(
        disorder[:5]
    )
    wrong: list[str] = []
    for patient, ids in cases["patients"].items():
        found = on_server.get(patient)
        if found is not None and comparable(found) == cases["written"][ids[-1]]:
            continue
        whose = [c for c in ids if found is not None and cases["written"][c] == comparable(found)]
        wrong.append(f"{patient} (cases {ids}) holds the Patient of {whose or 'none of them'}, not of {ids[-1]}")
    assert not wrong, f"{len(wrong)} Patients on the server are not what their last case writes: " + "; ".join(
        wrong[:5]
    )
    return {
        "patients": len(cases["patients"]),
        "shared": cases["shared"],  # with several valid cases
        "telling": cases["telling"],  # whose last case's Patient differs from every earlier case's
        "ordered_pairs": pairs,
        "reasserted": len(reasserted),
    }


def check_rerun_sends_nothing(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    """The finished job, run again: every case done before, no write reaches the proxy."""
    proxy: FaultProxy = stack["proxy"]
    state = stack["tmp"] / "job.sqlite"
    job = start(stack, cases, "--resume")
    with tails_on_failure(job):
        code, _, _ = finish(job)
        assert code == (1 if cases["invalid"] else 0), f"exit {code}"
        sends = proxy.sends_of(proxy.run)
        assert proxy.writes_of(proxy.run) == 0, (
            f"re-running the finished job sent {proxy.writes_of(proxy.run)} writes: "
            + "; ".join(f"{s.case} {s.describe()}" for s in sends[:5])
        )
        again = json.loads(state.with_name(state.stem + ".report.json").read_text())
        assert again["this_run"] == {"done_before": cases["valid"] + cases["invalid"]}, again["this_run"]


def reasserts_of(state: Path, cases: dict[str, Any]) -> tuple[dict[str, int], frozenset[str]]:
    """From the report of the last run: case -> its re-assert sends, and the patients (``Patient/<id>``) they
    re-asserted; the report's ``unsettled`` must be empty."""
    report = json.loads(state.with_name(state.stem + ".report.json").read_text())
    assert report["unsettled"] == [], report["unsettled"][:5]
    sends: dict[str, int] = {}
    for row in report["reasserted"]:
        case = str(row["key"]).removeprefix("case:")
        assert case in cases["ids"], row
        assert case == cases["patients"][cases["patient_of"][case]][-1], f"{case}: not its patient's last case"
        sends[case] = int(row["sends"])
    return sends, frozenset(cases["patient_of"][case] for case in sends)


def without_reasserts(sends: list[Send], reasserts: dict[str, int]) -> list[Send]:
    """``sends`` (one run's) without the settle pass's: each re-asserted case's last ``n``."""
    for case, n in reasserts.items():
        mine = [s for s in sends if s.case == case]
        mine = mine[len(mine) - min(n, len(mine) - 1) :]  # as check_sends counts them
        sends = [s for s in sends if not any(s is x for x in mine)]
    return sends


def run_scenario(
    stack: dict[str, Any],
    cases: dict[str, Any],
    faults: Faults,
    during: Callable[[Path, Job], None] | None = None,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> dict[str, int]:
    proxy: FaultProxy = stack["proxy"]
    proxy.faults.__dict__.update({k: v for k, v in faults.__dict__.items() if k not in ("seed", "injected")})
    state = stack["tmp"] / "job.sqlite"
    job = start(stack, cases, *extra, env=env)
    with tails_on_failure(job):
        if during is not None:
            during(state, job)
        code, _, _ = finish(job)
        assert code == (1 if cases["invalid"] else 0), f"exit {code}"
        patients = check_exactly_once(stack, cases, state)
        check_reached(proxy, cases)
        reasserts, reasserted = reasserts_of(state, cases)
        result = check_sends(proxy, cases, proxy.run, reasserts=reasserts)
        assert result["cases"] == cases["valid"], result
        order = check_patients(proxy, cases, patients, reasserted)
    print(
        f"sends: {result}; patients: {order}; faults: {dict(proxy.faults.injected)}; connections: {proxy.connections}"
    )
    return result


def test_server_down_at_start(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    def come_up_later(state: Path, job: Job) -> None:
        time.sleep(4)
        stack["proxy"].faults.down = False

    run_scenario(stack, cases, Faults(down=True), during=come_up_later)
    assert stack["proxy"].faults.injected["down"] > 0


def test_random_500s_then_the_finished_job_run_again(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    result = run_scenario(stack, cases, Faults(error_500=0.15))
    assert stack["proxy"].faults.injected["500"] > 0
    assert result["resent"] > 0 and result["hidden"] == 0, result  # a 500 of the proxy's: nothing went in
    check_rerun_sends_nothing(stack, cases)


def test_429_with_retry_after(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    run_scenario(stack, cases, Faults(throttle_429=0.1))
    assert stack["proxy"].faults.injected["429"] > 0


def test_answers_slower_than_the_timeout(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    # The client waits 1 s; these answers come after 1.5 s, once the server has committed the transaction.
    result = run_scenario(
        stack,
        cases,
        Faults(slow=0.05, slow_seconds=1.5, client_timeout=1.0),
        env={"CASEBRIDGE_FHIR_TIMEOUT": "1"},
    )
    assert stack["proxy"].faults.injected["slow"] > 0
    assert result["hidden"] > 0, result


def test_connection_reset_before_or_after_the_transaction_went_in(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    # Cut partway through the request body (nothing forwarded), or once the server has committed.
    result = run_scenario(stack, cases, Faults(reset_before=0.07, reset_after=0.07))
    proxy: FaultProxy = stack["proxy"]
    reasserts, _ = reasserts_of(stack["tmp"] / "job.sqlite", cases)
    sends = without_reasserts(proxy.sends_of(proxy.run), reasserts)  # those the checks of ``result`` saw
    kinds = collections.Counter((s.fault, s.upstream) for s in sends if s.fault != "pass")
    assert kinds[("reset-before", "not sent")] > 0 and kinds[("reset-after", "committed")] > 0, kinds
    assert set(kinds) <= {("reset-before", "not sent"), ("reset-after", "committed")}, kinds
    assert result["hidden"] >= kinds[("reset-after", "committed")], result


def test_idle_connections_closed_and_connections_refused_mid_run(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    """Kept-alive connections closed (FIN) or reset (RST) while idle in the client's pool; then, mid-run, the
    listening socket closed for 3 s (connections refused, open ones reset) and reopened on the same port."""
    proxy: FaultProxy = stack["proxy"]
    window: dict[str, int] = {}

    def refuse_for_a_while(state: Path, job: Job) -> None:
        wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3, job)
        proxy.stop_listening()
        window["before"] = len(proxy.sends)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
        time.sleep(3)
        window["during"] = len(proxy.sends) - window["before"]
        assert job.process.poll() is None, "the job ended during the window: it never met the refused connections"
        proxy.start_listening()

    result = run_scenario(stack, cases, Faults(idle_close=0.15), during=refuse_for_a_while)
    injected = proxy.faults.injected
    assert injected["idle-close"] > 0 and injected["idle-reset"] > 0 and injected["stopped listening"] == 1, injected
    assert window["during"] == 0, window  # nothing got through while nothing listened
    assert len(proxy.sends) > window["before"], "no transaction after the listening socket came back"
    check_rerun_sends_nothing(stack, cases)
    assert result["cases"] == cases["valid"]


def test_server_restarted_mid_run(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    def restart(state: Path, job: Job) -> None:
        wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3, job)
        server: EmbeddedFhirServer = stack["server"]
        port = server.port
        server.stop()
        time.sleep(2)
        stack["server"] = EmbeddedFhirServer(stack["data"], port=port).start()

    run_scenario(stack, cases, Faults(), during=restart)


def first_cases_with_early_follow_ups(cases: dict[str, Any], limit: int = 3) -> frozenset[str]:
    """The first case of up to ``limit`` patients whose next case comes within the first fifth of the source
    (so both are reached long before the kill at a third)."""
    early = set(cases["sequence"][: cases["valid"] // 5])
    chosen = sorted(ids[0] for ids in cases["patients"].values() if len(ids) > 1 and ids[1] in early)
    return frozenset(chosen[:limit])


def earlier_cases(cases: dict[str, Any], case: str) -> list[str]:
    """The valid cases of ``case``'s patient that come before it in the source."""
    ids: list[str] = cases["patients"][cases["patient_of"][case]]
    return ids[: ids.index(case)]


def test_job_killed_mid_run_then_resumed(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    """SIGKILL at a third, then --resume. The first case of a few patients is refused once (a 422 of the
    proxy's: the case fails at once), so their later cases are pushed after it; the resume sends it again, and
    by design those later cases again after it. A case pushed before the kill is sent again exactly when an
    earlier case of its patient was unfinished (pending, sending or failed) at the kill."""
    proxy: FaultProxy = stack["proxy"]
    state = stack["tmp"] / "job.sqlite"
    refused = first_cases_with_early_follow_ups(cases)
    assert refused, "no patient has two cases early in the source"
    proxy.faults.refuse = refused
    job = start(stack, cases)
    killed_run = proxy.run
    with tails_on_failure(job):
        wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3, job)
        job.process.send_signal(signal.SIGKILL)
        job.process.wait(timeout=30)
        assert job.process.returncode == -signal.SIGKILL
    rows = case_states(state)
    at_kill = collections.Counter(row.status for row in rows.values())
    unregistered = sorted(cases["ids"] - rows.keys())
    assert not unregistered, f"valid cases not in the state at the kill: {unregistered[:10]}"
    status = {case: rows[case].status for case in cases["ids"]}
    odd = {case: s for case, s in status.items() if s not in ("pushed", *UNFINISHED)}
    assert not odd, f"valid cases neither pushed nor unfinished at the kill: {list(odd.items())[:10]}"
    pushed = frozenset(case for case, s in status.items() if s == "pushed")
    unfinished = cases["ids"] - pushed
    assert 0 < len(pushed) < cases["valid"], at_kill
    named = check_state_patients(rows, cases)
    failed = {case for case in unfinished if status[case] == "failed"}
    assert failed == refused, (sorted(failed), sorted(refused))  # each refused case failed at once; nothing else
    # Pushed at the kill, with an earlier case of the patient unfinished: sent again after it (designed).
    designed = frozenset(case for case in pushed if set(earlier_cases(cases, case)) & unfinished)
    assert designed, "no case was pushed at the kill with an earlier case of its patient unfinished"
    caught = frozenset(case for case, s in status.items() if s == "sending")
    check_sends(proxy, cases, killed_run, finished=False)
    answered = {str(s.case) for s in proxy.sends_of(killed_run) if s.delivered is True}

    resume = start(stack, cases, "--resume")
    with tails_on_failure(job, resume):
        code, _, _ = finish(resume)
        assert code == (1 if cases["invalid"] else 0), f"exit {code}"
        report = json.loads(state.with_name(state.stem + ".report.json").read_text())
        assert report["this_run"]["done_before"] >= len(pushed) - len(designed), report["this_run"]
        # A case the kill caught ``sending`` lost its answer: its patient is unsettled, and the resume's settle
        # pass pushes the patient's last case again (counted apart, as designed).
        reasserts, reasserted = reasserts_of(state, cases)
        assert reasserted <= {cases["patient_of"][c] for c in caught}, (sorted(reasserted), sorted(caught))
        resumed = check_sends(proxy, cases, proxy.run, designed=designed, caught=caught, reasserts=reasserts)
        sent = {str(s.case) for s in without_reasserts(proxy.sends_of(proxy.run), reasserts)}
        # Exactly the cases unfinished at the kill, and the designed re-sends; each once (no faults now).
        needless = sorted(sent - unfinished - designed)
        assert not needless, (
            f"{len(needless)} cases pushed before the kill sent again after --resume, though no earlier case of "
            f"their patient was unfinished at the kill: {needless[:10]}"
        )
        unsent = sorted(unfinished - sent)
        assert not unsent, f"{len(unsent)} cases unfinished at the kill not sent by --resume: {unsent[:10]}"
        skipped = sorted(designed - sent)
        assert not skipped, (
            f"{len(skipped)} cases pushed before the kill not sent again after an earlier case of their patient "
            f"was: {skipped[:10]}"
        )
        assert resumed["sends"] == len(sent) and resumed["designed"] == len(designed), (resumed, len(designed))
        # A case answered before the kill but sent again, not by design: only one the kill caught between the
        # answer and recording it (state 'sending').
        over = sorted((sent & answered) - designed - caught)
        assert not over, (over[:10], dict(at_kill))
        patients = check_exactly_once(stack, cases, state)
        check_reached(proxy, cases)
        order = check_patients(proxy, cases, patients, reasserted)
    print(
        f"killed at {dict(at_kill)} (state names the patient of {named} cases); designed re-sends "
        f"{len(designed)} after {len(refused)} refused cases; re-asserted {len(reasserted)} patients; resumed: "
        f"{resumed}; patients: {order}"
    )
    # Re-running the finished job sends nothing and creates nothing.
    check_rerun_sends_nothing(stack, cases)


def held_first_cases(cases: dict[str, Any], limit: int = 3, within: int = 6) -> frozenset[str]:
    """The first case of up to ``limit`` patients with several cases, whose next case comes within ``within``
    valid cases of it (so it is pushed while the held first send is still on its way), those whose last case's
    Patient differs from every earlier case's first (there the overwrite shows)."""
    at = {case: n for n, case in enumerate(cases["sequence"])}
    written = cases["written"]
    chosen = [ids for ids in cases["patients"].values() if len(ids) > 1 and at[ids[1]] - at[ids[0]] <= within]
    chosen.sort(key=lambda ids: (any(written[e] == written[ids[-1]] for e in ids[:-1]), at[ids[0]]))
    return frozenset(ids[0] for ids in chosen[:limit])


def test_a_first_send_delivered_late_is_overwritten_by_the_settle_pass(
    stack: dict[str, Any], cases: dict[str, Any]
) -> None:
    """The first send of the first case of a few patients held 4 s before it reaches the server, against a 1 s
    client timeout: the job retries it, the retry is answered, the patient's next case is pushed; then the held
    send lands and writes the earlier Patient over the later one. The settle pass (--settle 8: longer than the
    hold) pushes each such patient's last case again, so the Patient on the server is its last case's."""
    proxy: FaultProxy = stack["proxy"]
    held = held_first_cases(cases)
    assert held, "no patient has two cases close together in the source"
    result = run_scenario(
        stack,
        cases,
        Faults(hold=held, hold_seconds=4.0, client_timeout=1.0),
        env={"CASEBRIDGE_FHIR_TIMEOUT": "1"},
        extra=("--settle", "8"),
    )
    sends = proxy.sends_of(proxy.run)
    landed = [s for s in sends if s.fault == "held"]
    assert len(landed) == len(held) and all(s.upstream == "committed" for s in landed), [s.describe() for s in landed]
    # The held send came back after the next case of its patient was committed: the overwrite did happen.
    overwritten = 0
    for case in held:
        ids = cases["patients"][cases["patient_of"][case]]
        (h,) = [s for s in sends if s.case == case and s.fault == "held"]
        nexts = [s for s in sends if s.case == ids[1] and s.upstream == "committed"]
        overwritten += bool(
            nexts and h.settled is not None and nexts[0].settled is not None and h.settled > nexts[0].settled
        )
    assert overwritten, "no held send landed after its patient's next case: the scenario shows nothing"
    # Each held case's patient re-asserted (the report's list, counted in check_sends).
    assert result["reasserts"] >= len(held), result
