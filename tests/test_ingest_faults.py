"""Registry ingestion under faults: a fault-injecting proxy on loopback in front of the embedded FHIR server,
generated cases (5% deliberately invalid), and `casebridge ingest` as a real process.

Scenarios: the server down at start, random 500s, 429 with Retry-After, answers slower than the client waits,
connections cut after the server did the work, the server restarted mid-run, and the job SIGKILLed mid-run
then resumed. In every one: every valid case on the server exactly once (checked by reading back every
resource and counting identifiers), every invalid case reported and not sent, nothing lost.

Cases per scenario: CASEBRIDGE_FAULT_CASES (default 200, so the suite stays within a few minutes on two
cores; `make faults` runs the full 1,000 per scenario).
"""

from __future__ import annotations

import collections
import json
import os
import signal
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

from .faultproxy import FaultProxy, Faults

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
            for entry in bundle["entry"]:
                resource = entry["resource"]
                if resource["resourceType"] == "Provenance":
                    provenance += 1
                for identifier in resource.get("identifier") or []:
                    if identifier.get("system") == "urn:casebridge:resource":
                        expected[f"{resource['resourceType']}|{identifier['value']}"] += 1
    return {"path": path, "expected": expected, "valid": valid, "invalid": invalid, "provenance": provenance}


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
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM cases WHERE status = 'pushed'").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_until(condition: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A fresh embedded server and a fault proxy in front of it."""
    data = tmp_path / "fhir"
    server = EmbeddedFhirServer(data).start()
    proxy = FaultProxy(server.port, Faults(seed=SEED)).__enter__()
    holder = {"server": server, "proxy": proxy, "data": data, "tmp": tmp_path}
    try:
        yield holder
    finally:
        proxy.__exit__(None, None, None)
        holder["server"].stop()


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def check_exactly_once(stack: dict[str, Any], cases: dict[str, Any], state: Path) -> None:
    report = json.loads(state.with_name(state.stem + ".report.json").read_text())
    counts = report["counts"]
    assert counts["pushed"] == cases["valid"], report
    assert counts["invalid"] == cases["invalid"], report
    assert counts["failed"] == counts["sending"] == counts["pending"] == 0, report
    assert len(report["invalid"]) == cases["invalid"] and all(r["reason"] for r in report["invalid"])
    types = {key.split("|")[0] for key in cases["expected"]} | {"Provenance"}
    found, provenance = on_server(stack["server"].base_url, types)
    extra = {k: v for k, v in found.items() if k not in cases["expected"]}
    assert not extra, f"resources of cases that should not be there: {list(extra)[:5]}"
    twice = {k: v for k, v in found.items() if v > 1}
    assert not twice, f"duplicated: {list(twice.items())[:5]}"
    missing = [k for k in cases["expected"] if found[k] != 1]
    assert not missing, f"missing: {missing[:5]}"
    assert provenance == cases["provenance"]


def run_scenario(
    stack: dict[str, Any],
    cases: dict[str, Any],
    faults: Faults,
    during: Callable[[Path], None] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    proxy: FaultProxy = stack["proxy"]
    proxy.faults.__dict__.update({k: v for k, v in faults.__dict__.items() if k not in ("seed", "injected")})
    state = stack["tmp"] / "job.sqlite"
    process = ingest(proxy.base_url, cases["path"], state, env=env)
    if during is not None:
        during(state)
    code, out, err = finish(process)
    assert code == (1 if cases["invalid"] else 0), f"exit {code}\n{out}\n{err[-3000:]}"
    check_exactly_once(stack, cases, state)
    return err


def test_server_down_at_start(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    def come_up_later(state: Path) -> None:
        time.sleep(4)
        stack["proxy"].faults.down = False

    run_scenario(stack, cases, Faults(down=True), during=come_up_later)
    assert stack["proxy"].faults.injected["down"] > 0


def test_random_500s(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    run_scenario(stack, cases, Faults(error_500=0.15))
    assert stack["proxy"].faults.injected["500"] > 0


def test_429_with_retry_after(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    run_scenario(stack, cases, Faults(throttle_429=0.1))
    assert stack["proxy"].faults.injected["429"] > 0


def test_answers_slower_than_the_timeout(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    # The client waits 1 s; these answers come after 1.5 s, once the server has committed the transaction.
    run_scenario(stack, cases, Faults(slow=0.05, slow_seconds=1.5), env={"CASEBRIDGE_FHIR_TIMEOUT": "1"})
    assert stack["proxy"].faults.injected["slow"] > 0


def test_connection_reset_after_the_transaction_went_in(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    run_scenario(stack, cases, Faults(reset_after=0.1))
    assert stack["proxy"].faults.injected["reset"] > 0


def test_server_restarted_mid_run(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    def restart(state: Path) -> None:
        wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3)
        server: EmbeddedFhirServer = stack["server"]
        port = server.port
        server.stop()
        time.sleep(2)
        stack["server"] = EmbeddedFhirServer(stack["data"], port=port).start()

    run_scenario(stack, cases, Faults(), during=restart)


def test_job_killed_mid_run_then_resumed(stack: dict[str, Any], cases: dict[str, Any]) -> None:
    proxy: FaultProxy = stack["proxy"]
    state = stack["tmp"] / "job.sqlite"
    process = ingest(proxy.base_url, cases["path"], state)
    wait_until(lambda: pushed_so_far(state) >= cases["valid"] // 3)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    before = pushed_so_far(state)
    assert 0 < before < cases["valid"]
    requests_before = sum(proxy.faults.injected.values())
    code, out, err = finish(ingest(proxy.base_url, cases["path"], state, "--resume"))
    assert code == (1 if cases["invalid"] else 0), f"{out}\n{err[-3000:]}"
    report = json.loads(state.with_name(state.stem + ".report.json").read_text())
    assert report["this_run"]["done_before"] >= before  # finished cases were not sent again
    # At most the cases in flight when killed (concurrency 4) are sent twice; every push is idempotent.
    resent = sum(proxy.faults.injected.values()) - requests_before
    assert resent <= cases["valid"] - before + 4 + 10, resent  # + a few reads (metadata)
    check_exactly_once(stack, cases, state)
    # Re-running the finished job sends nothing and creates nothing.
    code, out, _ = finish(ingest(proxy.base_url, cases["path"], state, "--resume"))
    again = json.loads(state.with_name(state.stem + ".report.json").read_text())
    assert again["this_run"] == {"done_before": cases["valid"] + cases["invalid"]}, again["this_run"]
