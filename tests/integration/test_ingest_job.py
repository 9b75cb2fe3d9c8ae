"""The ingestion job in-process: a defect on one case is that case's recorded failure, and a broken state
ends the job at once (it must never hang on its own queue)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from casebridge.config import Settings
from casebridge.domain.reader import validate_case
from casebridge.errors import Conflict, FhirServerError, FhirTransportError, TooManyRequests
from casebridge.fhir.client import AsyncFhirClient
from casebridge.ingest.fingerprint import ruleset_fingerprint
from casebridge.ingest.job import IngestJob, IngestOptions, PushTimes
from casebridge.ingest.report import build_report
from casebridge.ingest.sources import CaseSource
from casebridge.ingest.state import JobState
from casebridge.mapping.engine import MappingSet
from casebridge.push import PatientLocks
from casebridge.tools.synth import generate
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Issue


@pytest.fixture(scope="module")
def validator() -> Any:
    return load_validator(Settings())


def cases_file(tmp: Path, n: int) -> Path:
    path = tmp / "cases.ndjson"
    path.write_text("".join(json.dumps(c.doc) + "\n" for c in generate(n, seed=303)))
    return path


def job(path: Path, state: JobState, client: AsyncFhirClient, mappings: MappingSet, validator: Any) -> IngestJob:
    return IngestJob(
        CaseSource(path, max_bytes=5_000_000),
        state,
        client=client,
        locks=PatientLocks(path.parent / "locks"),
        mappings=mappings,
        validator=validator,
        options=IngestOptions(concurrency=2),
    )


def test_a_case_that_breaks_the_validator_is_that_case_s_failure(
    fhir_server: str, tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    class Flaky:
        calls = 0

        def validate(self, resource: Any, profiles: Any = ()) -> Any:
            Flaky.calls += 1
            if Flaky.calls == 2:
                raise ValueError("a defect of ours")
            return validator.validate(resource, profiles)

    state = JobState(tmp_path / "job.sqlite")

    async def go() -> None:
        async with AsyncFhirClient(fhir_server) as client:
            await job(cases_file(tmp_path, 4), state, client, mappings, Flaky()).run()

    asyncio.run(asyncio.wait_for(go(), 120))
    counts = state.counts()
    assert counts == {"pushed": 3, "failed": 1}, counts
    failed = next(state.rows("failed"))
    assert "internal error: ValueError: a defect of ours" in (failed.reason or "")


def test_a_state_that_cannot_be_written_ends_the_job_instead_of_hanging(
    fhir_server: str, tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    class BrokenState(JobState):
        def pushed(self, *args: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

    state = BrokenState(tmp_path / "job.sqlite")

    async def go() -> None:
        async with AsyncFhirClient(fhir_server) as client:
            await job(cases_file(tmp_path, 12), state, client, mappings, validator).run()

    with pytest.raises(sqlite3.OperationalError):
        asyncio.run(asyncio.wait_for(go(), 120))  # a hang would be a TimeoutError here
    # Every case registered; the job stopped at the first failed write: only the pushes in flight then (at most
    # one per pusher) were sent, and their rows say so; nothing else was sent or marked done.
    counts = state.counts()
    assert sum(counts.values()) == 12 and set(counts) <= {"sending", "pending"}, counts
    assert 1 <= counts.get("sending", 0) <= 2, counts


# -- doubles ------------------------------------------------------------------------------------------------


class FakeServer:
    """A FHIR server stand-in for ``AsyncFhirClient``: keeps resources (Type/id -> version), records each
    transaction's case id in order, and fails on request: ``down`` (no connection), ``faults[case_id]``: a list
    of "503" (the server failing, nothing done), "409" (a conflict: this case's trouble, nothing done) or "lost"
    (done, then the answer lost)."""

    base_url = "http://fake.invalid/fhir"

    def __init__(self) -> None:
        self.stored: dict[str, int] = {}
        self.bodies: dict[str, dict[str, Any]] = {}
        self.calls: list[str] = []
        self.probes = 0
        self.down = False
        self.up_after_probes: int | None = None
        self.faults: dict[str, list[str]] = {}
        self.before_send: Any = None

    async def capabilities(self) -> dict[str, Any]:
        self.probes += 1
        if self.up_after_probes is not None and self.probes >= self.up_after_probes:
            self.down = False
        if self.down:
            raise FhirTransportError("GET metadata failed: connection refused", request_sent=False)
        return {"resourceType": "CapabilityStatement"}

    async def transaction(self, bundle: dict[str, Any], *, raw: bytes | None = None) -> dict[str, Any]:
        case_id = bundle["identifier"]["value"]
        if self.before_send is not None:
            self.before_send(case_id)
        self.calls.append(case_id)
        await asyncio.sleep(0.001)
        if self.down:
            raise FhirTransportError("POST failed: connection refused", request_sent=False)
        fault = (self.faults.get(case_id) or [None]).pop(0) if self.faults.get(case_id) else None
        if fault == "503":
            raise FhirServerError("POST: 503 Service Unavailable", status=503)
        if fault == "409":
            raise Conflict("POST: 409 Conflict", status=409)
        if fault == "429":
            raise TooManyRequests("POST: 429 Too Many Requests", status=429)
        if fault == "down":  # the server goes down from this request on
            self.down = True
            raise FhirTransportError("POST failed: connection refused", request_sent=False)
        entries = []
        for entry in bundle["entry"]:
            resource = entry["resource"]
            ref = f"{resource['resourceType']}/{resource['id']}"
            created = ref not in self.stored
            self.stored[ref] = self.stored.get(ref, 0) + 1
            self.bodies[ref] = resource
            status = "201 Created" if created else "200 OK"
            entries.append({"response": {"status": status, "location": f"{ref}/_history/{self.stored[ref]}"}})
        if fault == "lost":
            raise FhirTransportError("POST timed out: ReadTimeout", request_sent=True)
        return {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}


class Notes:
    def __init__(self) -> None:
        self.notes: list[str] = []

    def start(self, total: int, already_done: int) -> None:
        pass

    def advance(self, status: str) -> None:
        pass

    def note(self, message: str) -> None:
        self.notes.append(message)


async def no_wait(seconds: float) -> None:
    await asyncio.sleep(0)


class Clock:
    """A fake monotonic clock that only the job's waits (and a slow probe) move."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def write_cases(tmp: Path, docs: list[dict[str, Any]], name: str = "cases.ndjson") -> Path:
    path = tmp / name
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def fake_job(
    path: Path,
    state: JobState,
    server: FakeServer,
    mappings: MappingSet,
    validator: Any,
    *,
    sleep: Any = no_wait,
    progress: Any = None,
    ruleset: str | None = None,
    clock: Any = None,
    **options: Any,
) -> IngestJob:
    return IngestJob(
        CaseSource(path, max_bytes=5_000_000),
        state,
        client=server,  # type: ignore[arg-type]
        locks=PatientLocks(path.parent / "locks"),
        mappings=mappings,
        validator=validator,
        options=IngestOptions(**{"concurrency": 4, **options}),
        progress=progress,
        sleep=sleep,
        ruleset=ruleset,
        **({"clock": clock} if clock is not None else {}),
    )


def same_patient(docs: list[dict[str, Any]], *indexes: int) -> None:
    for i in indexes[1:]:
        docs[i]["patient"] = json.loads(json.dumps(docs[indexes[0]]["patient"]))


# -- 2: state calls off the event loop ---------------------------------------------------------------------


def test_state_calls_run_on_one_thread_off_the_loop_and_sending_is_committed_before_the_push(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    threads: set[int] = set()

    class Watched(JobState):
        def sending(self, *args: Any, **kwargs: Any) -> int:
            threads.add(threading.get_ident())
            return super().sending(*args, **kwargs)

        def pushed(self, *args: Any, **kwargs: Any) -> None:
            threads.add(threading.get_ident())
            super().pushed(*args, **kwargs)

        def register(self, *args: Any, **kwargs: Any) -> None:
            threads.add(threading.get_ident())
            super().register(*args, **kwargs)

        def lookup(self, *args: Any, **kwargs: Any) -> Any:
            threads.add(threading.get_ident())
            return super().lookup(*args, **kwargs)

    docs = [c.doc for c in generate(5, seed=311)]
    path = write_cases(tmp_path, docs)
    state = Watched(tmp_path / "job.sqlite")
    server = FakeServer()
    seen: dict[str, str] = {}

    def committed_status(case_id: str) -> None:
        # Another connection sees only what is committed: the row must say 'sending' before the request goes.
        with sqlite3.connect(tmp_path / "job.sqlite") as db:
            seen[case_id] = db.execute("SELECT status FROM cases WHERE case_id = ?", (case_id,)).fetchone()[0]

    server.before_send = committed_status
    loop_thread: list[int] = []

    async def go() -> None:
        loop_thread.append(threading.get_ident())
        await fake_job(path, state, server, mappings, validator).run()

    asyncio.run(asyncio.wait_for(go(), 120))
    assert state.counts() == {"pushed": 5}
    assert len(threads) == 1 and loop_thread[0] not in threads
    assert seen == {d["case_id"]: "sending" for d in docs}


# -- 4: per-patient order ----------------------------------------------------------------------------------


def test_a_patient_s_later_case_waits_for_the_earlier_one_being_retried(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(6, seed=312)]
    same_patient(docs, 0, 1)  # cases 0 and 1: one patient, in this order, the later one older
    later_age = docs[0]["patient"]["age_at_presentation"]["value"] + 7
    docs[1]["patient"]["age_at_presentation"]["value"] = later_age
    first, second = docs[0]["case_id"], docs[1]["case_id"]
    first_patient = mappings.convert(validate_case(docs[0], source="x"))["entry"][0]["resource"]["id"]
    path = write_cases(tmp_path, docs)
    state = JobState(tmp_path / "job.sqlite")
    server = FakeServer()
    server.faults[first] = ["503"]  # the first case of the patient fails once

    async def go() -> None:
        # Real waits: the retry of the first case comes after the second case is ready to go.
        await fake_job(path, state, server, mappings, validator, sleep=asyncio.sleep, retry_wait=0.3).run()

    asyncio.run(asyncio.wait_for(go(), 120))
    assert [c for c in server.calls if c in (first, second)] == [first, first, second]
    assert state.counts() == {"pushed": 6}
    # The Patient was last written by the second case: it says that case's age at presentation.
    (patient,) = [body for ref, body in server.bodies.items() if ref.startswith("Patient/") and first_patient in ref]
    assert f"{later_age} years at presentation" in patient["text"]["div"]


def test_an_earlier_case_that_fails_lets_the_later_ones_go_in_order_and_a_retry_re_sends_them(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(4, seed=313)]
    same_patient(docs, 0, 1, 2)
    ids = [d["case_id"] for d in docs[:3]]
    path = write_cases(tmp_path, docs)
    state = JobState(tmp_path / "job.sqlite")
    server = FakeServer()
    server.faults[ids[0]] = ["409", "409"]  # two attempts allowed: it fails for this run

    async def go(**options: Any) -> None:
        await fake_job(path, state, server, mappings, validator, **options).run()

    asyncio.run(asyncio.wait_for(go(max_attempts=2), 120))
    assert state.counts() == {"pushed": 3, "failed": 1}
    assert [c for c in server.calls if c in ids] == [ids[0], ids[0], ids[1], ids[2]]
    # Resumed: the failed case goes, then its patient's later cases again, after it (the patient ends as its
    # last case says); the other patient's case is not sent again.
    server.calls.clear()
    asyncio.run(asyncio.wait_for(go(), 120))
    assert state.counts() == {"pushed": 4}
    assert server.calls == ids


# -- 3: the circuit breaker --------------------------------------------------------------------------------


def test_a_long_outage_stops_the_job_with_every_unsent_case_pending_then_resume_finishes(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(8, seed=314)]
    path = write_cases(tmp_path, docs)
    state = JobState(tmp_path / "job.sqlite")
    server = FakeServer()
    server.down = True
    notes = Notes()
    clock = Clock()

    async def go() -> Any:
        return await fake_job(
            path,
            state,
            server,
            mappings,
            validator,
            sleep=clock.sleep,
            clock=clock,
            progress=notes,
            concurrency=1,  # one pusher: its retry waits all come before the breaker opens, and the clock is exact
            max_attempts=3,
            outage_wait=60,
            probe_wait=1,
            max_wait=16,
        ).run()

    stats = asyncio.run(asyncio.wait_for(go(), 120))
    assert stats.stopped and "did not answer for 60 s" in stats.stopped
    assert state.counts() == {"pending": 8}  # none failed for the outage
    assert any("pushes paused" in n for n in notes.notes)
    # Two retry waits of the case (attempts 1 and 2), its third failure opens the breaker; then a probe after
    # each wait: 1 + 2 + 4 + 8 + 16 + 16 (max_wait) + 13 (what is left of the 60 s), and the job stops.
    assert server.probes == 7
    assert len(clock.waits) == 9 and clock.waits[2:] == pytest.approx([1, 2, 4, 8, 16, 16, 13]), clock.waits
    report = build_report(state, stats, source=str(path), server=server.base_url)
    assert report["failed"] == [] and len(report["unfinished"]) == 8
    assert all(r["reason"] for r in report["unfinished"])
    server.down = False
    stats = asyncio.run(asyncio.wait_for(go(), 120))
    assert stats.stopped is None and state.counts() == {"pushed": 8}


def test_a_short_outage_pauses_pushes_and_burns_no_case_s_attempts(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(10, seed=315)]
    path = write_cases(tmp_path, docs)
    state = JobState(tmp_path / "job.sqlite")
    server = FakeServer()
    server.down = True
    server.up_after_probes = 4
    notes = Notes()

    async def go() -> Any:
        return await fake_job(path, state, server, mappings, validator, progress=notes, max_attempts=2).run()

    stats = asyncio.run(asyncio.wait_for(go(), 120))
    assert state.counts() == {"pushed": 10}
    assert stats.pauses >= 1 and stats.stopped is None
    assert any("answers again" in n for n in notes.notes)


# -- 5: a changed rule set judges invalid cases again ------------------------------------------------------


def test_invalid_cases_are_judged_again_when_the_rules_change_pushed_ones_are_not_re_sent(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(4, seed=316)]
    refused = docs[2]["case_id"]

    class Strict:
        """The rules of the first run: one case's Bundle does not pass."""

        def validate(self, resource: Any, profiles: Any = ()) -> Any:
            if resource.get("identifier", {}).get("value") == refused:
                return [Issue("error", "invalid", "refused by the old rules", "Bundle")]
            return validator.validate(resource, profiles)

    path = write_cases(tmp_path, docs)
    state = JobState(tmp_path / "job.sqlite")
    server = FakeServer()

    def go(rules: Any, ruleset: str) -> Any:
        job = fake_job(path, state, server, mappings, rules, ruleset=ruleset)
        return asyncio.run(asyncio.wait_for(job.run(), 120))

    go(Strict(), "rules-1")
    assert state.counts() == {"pushed": 3, "invalid": 1}
    # The same rules: nothing again.
    assert go(Strict(), "rules-1").this_run == {}
    server.calls.clear()
    # Fixed rules: the invalid case is processed again and pushed; the pushed ones are not sent again.
    stats = go(validator, "rules-2")
    assert stats.this_run == {"pushed": 1} and stats.skipped == 3
    assert server.calls == [refused]
    assert state.counts() == {"pushed": 4}


def test_the_rules_fingerprint_covers_the_mapping_files(tmp_path: Path) -> None:
    folder = tmp_path / "mappings"
    (folder / "codes").mkdir(parents=True)
    (folder / "codes" / "concepts.csv").write_text("key,code\n")
    lock = tmp_path / "lock.json"
    lock.write_text("{}")
    before = ruleset_fingerprint([folder, lock, None])
    assert ruleset_fingerprint([folder, lock, None]) == before
    (folder / ".concepts.csv.swp").write_text("editor state")  # not a rule
    assert ruleset_fingerprint([folder, lock, None]) == before
    (folder / "codes" / "concepts.csv").write_text("key,code\nnew,1\n")
    assert ruleset_fingerprint([folder, lock, None]) != before


# -- 6: the report ------------------------------------------------------------------------------------------


def test_resources_are_counted_once_each_and_a_lost_answer_makes_them_uncertain_not_already_there(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(4, seed=317)]
    same_patient(docs, 0, 1)
    lost = docs[3]["case_id"]
    path = write_cases(tmp_path, docs)
    state = JobState(tmp_path / "job.sqlite")
    server = FakeServer()
    server.faults[lost] = ["lost"]  # done on the server, the answer lost: the retry finds it all there

    async def go() -> Any:
        return await fake_job(path, state, server, mappings, validator).run()

    stats = asyncio.run(asyncio.wait_for(go(), 120))
    bundles = [mappings.convert(validate_case(d, source="x")) for d in docs]
    lost_refs = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundles[3]["entry"]}
    report = build_report(state, stats, source=str(path), server=server.base_url)
    assert report["resources"] == {
        "created": len(server.stored) - len(lost_refs),
        "already_there": 0,  # the shared Patient, found by the second case, was created by the first
        "uncertain": len(lost_refs),
        "unanswered": 0,
    }
    assert report["counts"]["pushed"] == 4 and report["failed"] == [] and report["unfinished"] == []
    # A second job (a new state) on the same server: everything already there, nothing created.
    again = JobState(tmp_path / "again.sqlite")
    stats = asyncio.run(asyncio.wait_for(fake_job(path, again, server, mappings, validator).run(), 120))
    report = build_report(again, stats, source=str(path), server=server.base_url)
    assert report["resources"] == {"created": 0, "already_there": len(server.stored), "uncertain": 0, "unanswered": 0}


# -- review F: re-sends are durable; a pushed case is never shown as not sent; outages never fail a case -----


def killed_after_pushed(path: Path, case_id: str, snapshot: Path) -> JobState:
    """A JobState that copies its committed state to ``snapshot`` the instant ``case_id``'s answer is recorded:
    what a SIGKILL there would leave."""

    class KilledAfter(JobState):
        def pushed(self, key: str, *args: Any, **kwargs: Any) -> None:
            super().pushed(key, *args, **kwargs)
            if key == f"case:{case_id}":
                with sqlite3.connect(snapshot) as copy:
                    self._db.backup(copy)

    return KilledAfter(path)


def _earlier_case_refused_twice(tmp_path: Path) -> tuple[Path, FakeServer, str, str]:
    """Three cases, the first two of one patient (A then B); the server answers A's first two sends with 409:
    with two attempts A fails and B, later, goes first."""
    docs = [c.doc for c in generate(3, seed=313)]
    same_patient(docs, 0, 1)
    a, b = docs[0]["case_id"], docs[1]["case_id"]
    path = write_cases(tmp_path, docs)
    server = FakeServer()
    server.faults[a] = ["409", "409"]
    return path, server, a, b


def test_a_later_case_is_re_sent_even_when_the_job_is_killed_right_after_the_earlier_one(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    path, server, a, b = _earlier_case_refused_twice(tmp_path)
    state = JobState(tmp_path / "job.sqlite")
    asyncio.run(asyncio.wait_for(fake_job(path, state, server, mappings, validator, max_attempts=2).run(), 120))
    assert state.counts() == {"pushed": 2, "failed": 1}  # run 1: A failed, B (later, same patient) pushed
    state.close()
    snapshot = tmp_path / "killed.sqlite"

    run2 = killed_after_pushed(tmp_path / "job.sqlite", a, snapshot)
    asyncio.run(asyncio.wait_for(fake_job(path, run2, server, mappings, validator).run(), 120))
    assert snapshot.exists()
    # Run 3 resumes from the state the kill left: A is done, and B must still go after it (the Patient as B says).
    server.calls.clear()
    run3 = JobState(snapshot)
    asyncio.run(asyncio.wait_for(fake_job(path, run3, server, mappings, validator).run(), 120))
    assert server.calls == [b]
    assert run3.counts() == {"pushed": 3}


def test_a_pushed_case_due_again_after_an_earlier_one_and_refused_by_new_rules_stays_pushed_with_a_warning(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    path, server, a, b = _earlier_case_refused_twice(tmp_path)
    state = JobState(tmp_path / "job.sqlite")
    job = fake_job(path, state, server, mappings, validator, max_attempts=2, ruleset="rules-1")
    asyncio.run(asyncio.wait_for(job.run(), 120))
    assert state.counts() == {"pushed": 2, "failed": 1}

    class Stricter:
        """The new rules refuse B's (unchanged) Bundle."""

        def validate(self, resource: Any, profiles: Any = ()) -> Any:
            if resource.get("identifier", {}).get("value") == b:
                return [Issue("error", "invalid", "refused by the new rules", "Bundle")]
            return validator.validate(resource, profiles)

    server.calls.clear()
    job = fake_job(path, state, server, mappings, Stricter(), ruleset="rules-2")
    stats = asyncio.run(asyncio.wait_for(job.run(), 120))
    # A is sent; B is not sent again, and is not relabelled "invalid (not sent)": its resources are on the server.
    assert server.calls == [a]
    assert state.counts() == {"pushed": 3}
    assert stats.this_run == {"pushed": 1, "kept": 1}
    report = build_report(state, stats, source=str(path), server=server.base_url)
    (warning,) = report["warnings"]
    assert warning["case_id"] == b and "version pushed earlier" in warning["reason"]
    assert report["invalid"] == []


def test_a_pushed_case_whose_changed_content_is_refused_is_invalid_with_its_earlier_version_on_the_server(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(3, seed=318)]
    path = write_cases(tmp_path, docs)
    server = FakeServer()
    state = JobState(tmp_path / "job.sqlite")
    asyncio.run(asyncio.wait_for(fake_job(path, state, server, mappings, validator).run(), 120))
    assert state.counts() == {"pushed": 3}
    docs[1]["patient"]["sex"] = "sometimes"  # the corrected case is now refused
    write_cases(tmp_path, docs)
    stats = asyncio.run(asyncio.wait_for(fake_job(path, state, server, mappings, validator).run(), 120))
    report = build_report(state, stats, source=str(path), server=server.base_url)
    (invalid,) = report["invalid"]
    assert invalid["case_id"] == docs[1]["case_id"] and invalid["on_server"] is True
    assert "its earlier version is on the server" in invalid["reason"]
    assert [r["on_server"] for r in report["failed"] + report["unfinished"]] == []


def test_with_one_attempt_a_case_is_not_failed_for_an_outage(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(4, seed=319)]
    path = write_cases(tmp_path, docs)
    server = FakeServer()
    server.down = True
    server.up_after_probes = 3
    state = JobState(tmp_path / "job.sqlite")
    job = fake_job(path, state, server, mappings, validator, concurrency=1, max_attempts=1)
    stats = asyncio.run(asyncio.wait_for(job.run(), 120))
    # The first case's refused connection is checked with a probe before it is blamed: the server is down, the
    # breaker opens, and the case waits it out.
    assert state.counts() == {"pushed": 4}, [r.reason for r in state.rows("failed")]
    assert stats.pauses == 1 and stats.stopped is None


def test_429s_then_refused_connections_do_not_fail_a_case(tmp_path: Path, mappings: MappingSet, validator: Any) -> None:
    docs = [c.doc for c in generate(3, seed=320)]
    path = write_cases(tmp_path, docs)
    server = FakeServer()
    first = docs[0]["case_id"]
    # Four 429s (answers: the server is there), then it goes down: the 5th and 6th attempts are refused, and the
    # 6th is the case's last. The probe finds the server down too: an outage, not the case's trouble.
    server.faults[first] = ["429", "429", "429", "429", "down"]
    server.up_after_probes = 3
    state = JobState(tmp_path / "job.sqlite")
    job = fake_job(path, state, server, mappings, validator, concurrency=1)
    stats = asyncio.run(asyncio.wait_for(job.run(), 120))
    assert state.counts() == {"pushed": 3}, [r.reason for r in state.rows("failed")]
    assert server.calls[:6] == [first] * 6 and stats.pauses == 1


def test_a_case_the_server_keeps_refusing_connections_for_while_it_answers_probes_fails(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(2, seed=321)]
    path = write_cases(tmp_path, docs)

    class RefusesOne(FakeServer):
        async def transaction(self, bundle: dict[str, Any], *, raw: bytes | None = None) -> dict[str, Any]:
            if bundle["identifier"]["value"] == docs[0]["case_id"]:
                self.calls.append(docs[0]["case_id"])
                raise FhirTransportError("POST failed: connection reset", request_sent=False)
            return await super().transaction(bundle, raw=raw)

    server = RefusesOne()
    state = JobState(tmp_path / "job.sqlite")
    asyncio.run(asyncio.wait_for(fake_job(path, state, server, mappings, validator, max_attempts=1).run(), 120))
    # The probe answers: that case's own trouble, failed (the probe does not keep a case pending for ever).
    assert state.counts() == {"pushed": 1, "failed": 1}


def test_the_outage_wait_is_time_on_the_clock_slow_probes_included(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    docs = [c.doc for c in generate(3, seed=322)]
    path = write_cases(tmp_path, docs)
    clock = Clock()

    class SlowProbes(FakeServer):
        async def capabilities(self) -> dict[str, Any]:
            clock.now += 20  # each probe takes 20 s to time out
            return await super().capabilities()

    server = SlowProbes()
    server.down = True
    state = JobState(tmp_path / "job.sqlite")
    job = fake_job(
        path,
        state,
        server,
        mappings,
        validator,
        sleep=clock.sleep,
        clock=clock,
        concurrency=1,
        max_attempts=2,
        outage_wait=60,
        probe_wait=1,
    )
    stats = asyncio.run(asyncio.wait_for(job.run(), 120))
    # Opened at t; probes at t+1 (ends t+21), t+23 (ends t+43), t+47 (ends t+67): past 60 s, it stops. Summing only
    # the waits, it would have probed 7 times (over 200 s).
    assert server.probes == 3
    assert stats.stopped and "did not answer for 67 s" in stats.stopped
    assert state.counts() == {"pending": 3}


def test_push_times_stay_bounded_however_many_pushes() -> None:
    times = PushTimes(size=100)
    for i in range(10_000):
        times.add(i / 1000)
    assert times.count == 10_000 and len(times.sample) == 100
    assert abs(times.total - sum(i / 1000 for i in range(10_000))) < 1e-6
    p50 = times.percentile(0.5)
    assert p50 is not None and 3.5 < p50 < 6.5  # a uniform sample of 0..10 s


# What each earlier schema lacked: turning today's state back into it.
_EARLIER_SCHEMAS = {
    2: "DROP INDEX cases_patient_seq; ALTER TABLE cases DROP COLUMN seq; ALTER TABLE cases DROP COLUMN "
    "pushed_digest; DROP TABLE written; DROP TABLE orphaned; DROP TABLE unsettled; "
    "UPDATE job SET value = '2' WHERE name = 'schema';",
    3: "DROP TABLE unsettled; UPDATE job SET value = '3' WHERE name = 'schema';",
}


@pytest.mark.parametrize("schema", sorted(_EARLIER_SCHEMAS))
def test_a_state_of_an_earlier_schema_is_brought_up_to_date_and_its_pushed_cases_stay_done(
    tmp_path: Path, mappings: MappingSet, validator: Any, schema: int
) -> None:
    docs = [c.doc for c in generate(2, seed=323)]
    path = write_cases(tmp_path, docs)
    server = FakeServer()
    state = JobState(tmp_path / "job.sqlite")
    asyncio.run(asyncio.wait_for(fake_job(path, state, server, mappings, validator).run(), 120))
    state.close()
    with sqlite3.connect(tmp_path / "job.sqlite") as db:
        db.executescript(_EARLIER_SCHEMAS[schema])
    state = JobState(tmp_path / "job.sqlite")
    assert state.meta("schema") == 4 and state.unsettled() == []
    assert all(row.on_server for row in state.rows("pushed"))
    server.calls.clear()
    stats = asyncio.run(asyncio.wait_for(fake_job(path, state, server, mappings, validator).run(), 120))
    assert server.calls == [] and stats.skipped == 2 and state.counts() == {"pushed": 2}


# -- settle and re-assert: a lost attempt landing late -------------------------------------------------------


class LateServer(FakeServer):
    """A FakeServer whose ``"stale"`` fault keeps the transaction as it was sent and loses its answer: nothing is
    written then; ``land()`` writes it later (a request the network delivered after the client gave up)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[dict[str, Any]] = []

    async def transaction(self, bundle: dict[str, Any], *, raw: bytes | None = None) -> dict[str, Any]:
        case_id = bundle["identifier"]["value"]
        if self.faults.get(case_id) and self.faults[case_id][0] == "stale":
            self.faults[case_id].pop(0)
            self.calls.append(case_id)
            self.held.append(json.loads(json.dumps(bundle)))
            raise FhirTransportError("POST timed out: ReadTimeout", request_sent=True)
        return await super().transaction(bundle, raw=raw)

    def land(self) -> None:
        for bundle in self.held:
            for entry in bundle["entry"]:
                resource = entry["resource"]
                ref = f"{resource['resourceType']}/{resource['id']}"
                self.stored[ref] = self.stored.get(ref, 0) + 1
                self.bodies[ref] = resource
        self.held.clear()


class _LostFirstAnswer(NamedTuple):
    path: Path
    first: str
    second: str
    patient: str  # Patient/id
    later_age: int
    server: LateServer


def _lost_first_answer(tmp_path: Path, mappings: MappingSet) -> _LostFirstAnswer:
    """Cases 0 and 1 of one patient (the later one older) and two others, behind a server that loses the answer
    to the first case's first attempt while the request is still on its way."""
    docs = [c.doc for c in generate(4, seed=331)]
    same_patient(docs, 0, 1)
    later_age = docs[0]["patient"]["age_at_presentation"]["value"] + 7
    docs[1]["patient"]["age_at_presentation"]["value"] = later_age
    patient = mappings.convert(validate_case(docs[0], source="x"))["entry"][0]["resource"]
    assert patient["resourceType"] == "Patient"
    server = LateServer()
    server.faults[docs[0]["case_id"]] = ["stale"]
    path = write_cases(tmp_path, docs)
    return _LostFirstAnswer(path, docs[0]["case_id"], docs[1]["case_id"], f"Patient/{patient['id']}", later_age, server)


def test_a_lost_attempt_that_lands_after_the_later_case_is_overwritten_by_the_settle_pass(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    path, first, second, patient, later_age, server = _lost_first_answer(tmp_path, mappings)
    state = JobState(tmp_path / "job.sqlite")
    clock = Clock()
    waits: list[float] = []
    wall = [1000.0]

    def landed_then_wait(case_id: str) -> None:
        # The first time the pass pushes (the second case again), the stale first attempt has landed.
        if server.held and case_id == second and server.calls.count(second) == 1:
            server.land()

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        wall[0] += seconds
        await asyncio.sleep(0)

    async def go() -> Any:
        job = fake_job(path, state, server, mappings, validator, sleep=sleep, clock=clock, settle=30.0)
        job.wall = lambda: wall[0]
        return await job.run()

    server.before_send = landed_then_wait
    stats = asyncio.run(asyncio.wait_for(go(), 120))
    # first (lost), first (retried, answered), second, then the pass: second again, after the stale first landed.
    assert [c for c in server.calls if c in (first, second)] == [first, first, second, second]
    assert not server.held
    assert f"{later_age} years at presentation" in server.bodies[patient]["text"]["div"]
    assert 30.0 in waits or any(w > 25 for w in waits), waits  # it waited out the settle time after the loss
    assert state.unsettled() == []
    report = build_report(state, stats, source=str(path), server=server.base_url)
    assert [(r["patient"], r["sends"]) for r in report["reasserted"]] == [(patient, 1)]
    assert report["unsettled"] == [] and report["counts"] == {**report["counts"], "pushed": 4}


def test_without_the_pass_the_late_attempt_would_leave_the_earlier_patient(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    """The defect the pass closes, shown on the same doubles: the stale attempt landing after the pushes."""
    path, _, _, patient, later_age, server = _lost_first_answer(tmp_path, mappings)
    state = JobState(tmp_path / "job.sqlite")

    class NoPass(IngestJob):
        async def _settle_pass(self) -> None:
            server.land()

    job = NoPass(
        CaseSource(path, max_bytes=5_000_000),
        state,
        client=server,  # type: ignore[arg-type]
        locks=PatientLocks(tmp_path / "locks"),
        mappings=mappings,
        validator=validator,
        sleep=no_wait,
    )
    asyncio.run(asyncio.wait_for(job.run(), 120))
    assert f"{later_age} years at presentation" not in server.bodies[patient]["text"]["div"]
    assert [p for p, _, _ in JobState(tmp_path / "job.sqlite").unsettled()] == [patient]  # the mark says so


def test_the_unsettled_mark_survives_a_kill_and_resume_re_asserts(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    path, first, second, patient, later_age, server = _lost_first_answer(tmp_path, mappings)
    snapshot = tmp_path / "killed.sqlite"

    class Killed(Exception):
        pass

    run1 = killed_after_pushed(tmp_path / "job.sqlite", second, snapshot)

    class DiesBeforeThePass(IngestJob):
        async def _settle_pass(self) -> None:
            raise Killed

    job = DiesBeforeThePass(
        CaseSource(path, max_bytes=5_000_000),
        run1,
        client=server,  # type: ignore[arg-type]
        locks=PatientLocks(tmp_path / "locks"),
        mappings=mappings,
        validator=validator,
        # One push at a time: at the kill no other case is `sending` (a case killed while sending would make its
        # own patient unsettled too, which is right, but not what this test is about).
        options=IngestOptions(concurrency=1),
        sleep=no_wait,
    )
    with pytest.raises(Killed):
        asyncio.run(asyncio.wait_for(job.run(), 120))
    server.land()  # the stale first attempt lands after the kill: the earlier Patient is on the server
    assert f"{later_age} years at presentation" not in server.bodies[patient]["text"]["div"]
    resumed = JobState(snapshot)
    assert [p for p, _, _ in resumed.unsettled()] == [patient]
    server.calls.clear()
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    stats = asyncio.run(
        asyncio.wait_for(fake_job(path, resumed, server, mappings, validator, sleep=sleep, settle=3600.0).run(), 120)
    )
    # The cases unfinished at the kill (not of this patient), then the pass: the patient's last case again.
    assert first not in server.calls and server.calls[-1] == second and server.calls.count(second) == 1
    assert waits and 3000 < waits[0] <= 3600, waits  # from the lost attempt's recorded time, not from now
    assert f"{later_age} years at presentation" in server.bodies[patient]["text"]["div"]
    assert resumed.unsettled() == [] and [r[0] for r in stats.reasserted] == [patient]


def test_a_re_assert_that_keeps_losing_its_answer_leaves_the_patient_unsettled_with_why(
    tmp_path: Path, mappings: MappingSet, validator: Any
) -> None:
    path, _, second, patient, _, server = _lost_first_answer(tmp_path, mappings)
    state = JobState(tmp_path / "job.sqlite")
    server.faults[second] = [None, "stale", "stale", "stale"]  # type: ignore[list-item]
    stats = asyncio.run(asyncio.wait_for(fake_job(path, state, server, mappings, validator, max_attempts=3).run(), 120))
    assert server.calls.count(second) == 4  # pushed once, then three re-asserts, each answer lost
    report = build_report(state, stats, source=str(path), server=server.base_url)
    assert report["reasserted"] == []
    (left,) = report["unsettled"]
    assert left["patient"] == patient and "3 re-assert pushes" in left["reason"], left
    assert report["counts"]["pushed"] == 4  # the case stays pushed: its content is on the server
