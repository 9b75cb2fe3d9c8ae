"""Registry ingestion under faults: a fault-injecting proxy on loopback in front of the embedded FHIR server,
generated cases (5% deliberately invalid), and `casebridge ingest` as a real process.

Scenarios: the server down at start, random 500s, 429 with Retry-After, answers slower than the client waits,
connections cut before the request went in (mid-body) or after the server did the work, idle kept-alive
connections closed or reset, connections refused for a window mid-run, the server restarted mid-run, and the
job SIGKILLed mid-run then resumed. In every one: every valid case on the server exactly once (checked by
reading back every resource and counting identifiers), every invalid case reported and not sent, nothing lost.

Idempotent PUTs hide duplicate sends on the server, so the proxy also records every transaction it saw (which
case, what it did to it, whether the server committed it, whether the client got the answer), and each
scenario checks that a case is sent again only after an attempt whose outcome the client could not know
(a fault, a cut, a refused connection): never after the client had its answer. A finished job run again sends
nothing; a killed job, resumed, sends only the cases not yet pushed at the kill.

Cases per scenario: CASEBRIDGE_FAULT_CASES (default 200, so the suite stays within a few minutes on two
cores; `make faults` runs the full 1,000 per scenario).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from service.config import PROJECT_ROOT
from service.domain.reader import validate_case
from service.domain.synth import generate
from service.fhir.client import FhirClient
from service.fhir.embedded import EmbeddedFhirServer
from service.fhir.search import Search
from service.mapping.engine import MappingSet

from .faultproxy import FaultProxy, Faults, Send

CASES = int(os.environ.get("CASEBRIDGE_FAULT_CASES", "200"))
SEED = 11
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, mappings: MappingSet) -> dict[str, Any]:
    """The generated cases as NDJSON, and what the server must hold afterwards."""
    folder = tmp_path_factory.mktemp("fault-cases")
    path = folder / "cases.ndjson"
    expected: collections.Counter[str] = collections.Counter()
    valid, invalid, provenance = 0, 0, 0
    ids: set[str] = set()  # the valid cases' Bundle identifiers (what the proxy names a transaction by)
    with path.open("w") as handle:
        for case in generate(CASES, seed=SEED, invalid_share=0.05):
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
            ids.add(bundle["identifier"]["value"])
            for entry in bundle["entry"]:
                resource = entry["resource"]
                if resource["resourceType"] == "Provenance":
                    provenance += 1
                for identifier in resource.get("identifier") or []:
                    if identifier.get("system") == "urn:casebridge:resource":
                        expected[f"{resource['resourceType']}|{identifier['value']}"] += 1
    assert len(ids) == valid, "two valid cases share a Bundle identifier: the send checks need them distinct"
    return {
        "path": path,
        "expected": expected,
        "valid": valid,
        "invalid": invalid,
        "provenance": provenance,
        "ids": frozenset(ids),
    }


def on_server(base_url: str, types: set[str]) -> tuple[collections.Counter[str], int]:
    """Every casebridge identifier on the server, counted; and the number of Provenances."""
    found: collections.Counter[str] = collections.Counter()
    provenance = 0
    with FhirClient(base_url) as client:
        for kind in sorted(types):
            for resource in client.resources(Search(kind).count(1000)):
                if kind == "Provenance":
                    provenance += 1
                for identifier in resource.get("identifier") or []:
                    if identifier.get("system") == "urn:casebridge:resource":
                        found[f"{kind}|{identifier['value']}"] += 1
    return found, provenance


def ingest(
    proxy_url: str,
    path: Path,
    state: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
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
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env={
            **os.environ,
            "CASEBRIDGE_FHIR_RETRY_ATTEMPTS": "3",
            "CASEBRIDGE_FHIR_RETRY_MAX_WAIT": "5",
            "CASEBRIDGE_LOCK_DIR": str(state.parent / "locks"),
            **(env or {}),
        },
    )


def pushed_so_far(state: Path) -> int:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)) as db:
            return int(db.execute("SELECT COUNT(*) FROM cases WHERE status = 'pushed'").fetchone()[0])
    except sqlite3.Error:
        return 0


def statuses(state: Path) -> tuple[collections.Counter[str], set[str] | None]:
    """Cases per status in the job state; and the case ids of the pushed ones, if the state records case ids.

    Reads only the named columns it needs (``status``, and ``case_id`` when there), so added columns do not
    matter."""
    with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5)) as db:
        counts = collections.Counter(
            {str(k): int(v) for k, v in db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status")}
        )
        columns = {str(row[1]) for row in db.execute("PRAGMA table_info(cases)")}
        pushed = None
        if "case_id" in columns:
            pushed = {str(row[0]) for row in db.execute("SELECT case_id FROM cases WHERE status = 'pushed'")}
    return counts, pushed


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen[str] | None = None, timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        if process is not None and process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the job ended (exit {process.returncode}) before the awaited point\n{err[-3000:]}")
        time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fresh embedded server and a fault proxy in front of it; job processes still running at the end are killed."""
    data = tmp_path / "fhir"
    server = EmbeddedFhirServer(data).start()
    proxy = FaultProxy(server.port, Faults(seed=SEED)).__enter__()
    processes: list[subprocess.Popen[str]] = []
    holder: dict[str, Any] = {"server": server, "proxy": proxy, "data": data, "tmp": tmp_path, "processes": processes}
    try:
        yield holder
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate(timeout=30)
        proxy.__exit__(None, None, None)
        holder["server"].stop()


def start(
    stack: dict[str, Any], cases: dict[str, Any], *extra: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """A job process against the proxy, as a new run of the proxy's records."""
    proxy: FaultProxy = stack["proxy"]
    proxy.begin_run()
    process = ingest(proxy.base_url, cases["path"], stack["tmp"] / "job.sqlite", *extra, env=env)
    stack["processes"].append(process)
    return process


def finish(process: subprocess.Popen[str], timeout: float = 600 * max(1, CASES // 200)) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=30)
        raise AssertionError(f"the job did not finish within {timeout} s\n{err[-3000:]}") from None
    return process.returncode, out, err


def check_exactly_once(stack: dict[str, Any], cases: dict[str, Any], state: Path) -> None:
    report = json.loads(state.with_name(state.stem + ".report.json").read_text())
    counts = report["counts"]
    assert counts["pushed"] == cases["valid"], report["counts"]
    assert counts["invalid"] == cases["invalid"], report["counts"]
    assert counts["failed"] == counts["sending"] == counts["pending"] == 0, (report["counts"], report["failed"][:5])
    assert len(report["invalid"]) == cases["invalid"] and all(r["reason"] for r in report["invalid"])
    types = {key.split("|")[0] for key in cases["expected"]} | {"Provenance"}
    found, provenance = on_server(stack["server"].base_url, types)
    extra = {k: v for k, v in found.items() if k not in cases["expected"]}
    assert not extra, f"{len(extra)} resources of cases that should not be there: {list(extra)[:5]}"
    twice = {k: v for k, v in found.items() if v > 1}
    assert not twice, f"{len(twice)} resources duplicated on the server: {list(twice.items())[:5]}"
    missing = [k for k in cases["expected"] if found[k] != 1]
    assert not missing, f"{len(missing)} resources missing on the server: {missing[:5]}"
    assert provenance == cases["provenance"]


def _cases_line(by_case: dict[str, list[Send]], limit: int = 5) -> str:
    return "; ".join(
        f"{case} [{' | '.join(s.describe() for s in sends)}]" for case, sends in list(by_case.items())[:limit]
    )


def check_sends(proxy: FaultProxy, cases: dict[str, Any], run: int, *, finished: bool = True) -> dict[str, int]:
    """What reached the proxy during one job run: only valid cases; a case sent again only after an attempt
    whose outcome the client could not know; committed sends bounded by the cases plus the faults that hid a
    commit. ``finished``: the run ended normally (not killed), so each case's last send was answered."""
    sends = proxy.sends_of(run)
    unnamed = [s.describe() for s in sends if s.case is None]
    assert not unnamed, f"{len(unnamed)} transactions the proxy could not name a case for: {unnamed[:5]}"
    strangers = sorted({str(s.case) for s in sends} - cases["ids"])
    assert not strangers, f"transactions of {len(strangers)} cases that are not valid cases: {strangers[:10]}"
    by_case: dict[str, list[Send]] = collections.defaultdict(list)
    for send in sends:
        by_case[str(send.case)].append(send)
    again = {case: s for case, s in by_case.items() if any(x.delivered is True for x in s[:-1])}
    assert not again, (
        f"{len(again)} cases sent again after the client had received the server's answer to an earlier send: "
        + _cases_line(again)
    )
    if finished:
        unanswered = {
            case: s for case, s in by_case.items() if s[-1].delivered is False or s[-1].upstream != "committed"
        }
        assert not unanswered, (
            f"{len(unanswered)} cases whose last send was not committed and answered, yet the job ended: "
            + _cases_line(unanswered)
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
    }


def check_reached(proxy: FaultProxy, cases: dict[str, Any]) -> None:
    """Every valid case was committed by the server at least once (over every run so far)."""
    committed = {s.case for s in list(proxy.sends) if s.upstream == "committed"}
    missing = sorted(cases["ids"] - committed)
    assert not missing, f"{len(missing)} valid cases never committed through the proxy: {missing[:10]}"


def check_rerun_sends_nothing(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    """The finished job, run again: every case done before, no write reaches the proxy."""
    proxy: FaultProxy = stack["proxy"]
    state = stack["tmp"] / "job.sqlite"
    process = start(stack, cases, "--resume")
    code, out, err = finish(process)
    assert code == (1 if cases["invalid"] else 0), f"exit {code}\n{out}\n{err[-3000:]}"
    sends = proxy.sends_of(proxy.run)
    assert proxy.writes_of(proxy.run) == 0, (
        f"re-running the finished job sent {proxy.writes_of(proxy.run)} writes: "
        + "; ".join(f"{s.case} {s.describe()}" for s in sends[:5])
    )
    again = json.loads(state.with_name(state.stem + ".report.json").read_text())
    assert again["this_run"] == {"done_before": cases["valid"] + cases["invalid"]}, again["this_run"]


def run_scenario(
    stack: dict[str, Any],
    cases: dict[str, Any],
    faults: Faults,
    during: Callable[[Path, subprocess.Popen[str]], None] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, int]:
    proxy: FaultProxy = stack["proxy"]
    proxy.faults.__dict__.update({k: v for k, v in faults.__dict__.items() if k not in ("seed", "injected")})
    state = stack["tmp"] / "job.sqlite"
    process = start(stack, cases, env=env)
    if during is not None:
        during(state, process)
    code, out, err = finish(process)
    assert code == (1 if cases["invalid"] else 0), f"exit {code}\n{out}\n{err[-3000:]}"
    check_exactly_once(stack, cases, state)
    check_reached(proxy, cases)
    result = check_sends(proxy, cases, proxy.run)
    assert result["cases"] == cases["valid"], result
    print(f"sends: {result}; faults: {dict(proxy.faults.injected)}; connections: {proxy.connections}")
    return result


def test_server_down_at_start(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    def come_up_later(state: Path, process: subprocess.Popen[str]) -> None:
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
    kinds = collections.Counter((s.fault, s.upstream) for s in proxy.sends_of(proxy.run) if s.fault != "pass")
    assert kinds[("reset-before", "not sent")] > 0 and kinds[("reset-after", "committed")] > 0, kinds
    assert set(kinds) <= {("reset-before", "not sent"), ("reset-after", "committed")}, kinds
    assert result["hidden"] >= kinds[("reset-after", "committed")], result


def test_idle_connections_closed_and_connections_refused_mid_run(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    """Kept-alive connections closed (FIN) or reset (RST) while idle in the client's pool; then, mid-run, the
    listening socket closed for 3 s (connections refused, open ones reset) and reopened on the same port."""
    proxy: FaultProxy = stack["proxy"]
    window: dict[str, int] = {}

    def refuse_for_a_while(state: Path, process: subprocess.Popen[str]) -> None:
        wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3, process)
        proxy.stop_listening()
        window["before"] = len(proxy.sends)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
        time.sleep(3)
        window["during"] = len(proxy.sends) - window["before"]
        assert process.poll() is None, "the job ended during the window: it never met the refused connections"
        proxy.start_listening()

    result = run_scenario(stack, cases, Faults(idle_close=0.15), during=refuse_for_a_while)
    injected = proxy.faults.injected
    assert injected["idle-close"] > 0 and injected["idle-reset"] > 0 and injected["stopped listening"] == 1, injected
    assert window["during"] == 0, window  # nothing got through while nothing listened
    assert len(proxy.sends) > window["before"], "no transaction after the listening socket came back"
    check_rerun_sends_nothing(stack, cases)
    assert result["cases"] == cases["valid"]


def test_server_restarted_mid_run(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    def restart(state: Path, process: subprocess.Popen[str]) -> None:
        wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3, process)
        server: EmbeddedFhirServer = stack["server"]
        port = server.port
        server.stop()
        time.sleep(2)
        stack["server"] = EmbeddedFhirServer(stack["data"], port=port).start()

    run_scenario(stack, cases, Faults(), during=restart)


def test_job_killed_mid_run_then_resumed(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    proxy: FaultProxy = stack["proxy"]
    state = stack["tmp"] / "job.sqlite"
    process = start(stack, cases)
    killed_run = proxy.run
    wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    at_kill, pushed_ids = statuses(state)
    before = at_kill["pushed"]
    assert 0 < before < cases["valid"], at_kill
    unfinished = cases["valid"] - before  # pending, sending or failed at the kill, or not read yet
    check_sends(proxy, cases, killed_run, finished=False)
    answered = {s.case for s in proxy.sends_of(killed_run) if s.delivered is True}

    code, out, err = finish(start(stack, cases, "--resume"))
    assert code == (1 if cases["invalid"] else 0), f"{out}\n{err[-3000:]}"
    report = json.loads(state.with_name(state.stem + ".report.json").read_text())
    assert report["this_run"]["done_before"] >= before  # finished cases were not sent again
    resumed = check_sends(proxy, cases, proxy.run)
    sent = {s.case for s in proxy.sends_of(proxy.run)}
    # Only the cases not pushed at the kill are sent, each once (no faults here).
    assert resumed["sends"] <= unfinished, (resumed, dict(at_kill), unfinished)
    if pushed_ids is not None:
        again = sorted(str(c) for c in sent & pushed_ids)
        assert not again, f"{len(again)} cases pushed before the kill were sent again after --resume: {again[:10]}"
    # A case answered before the kill but sent again can only be one the kill caught between the answer and
    # recording it (state 'sending').
    over = sorted(str(c) for c in sent & answered)
    assert len(over) <= at_kill["sending"], (over[:10], dict(at_kill))
    check_exactly_once(stack, cases, state)
    check_reached(proxy, cases)
    print(f"killed at {dict(at_kill)}; resumed: {resumed}")
    # Re-running the finished job sends nothing and creates nothing.
    check_rerun_sends_nothing(stack, cases)
