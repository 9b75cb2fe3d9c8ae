"""An ingestion job: every case of a source converted, validated and pushed, each exactly once, none lost.

The pipeline: first the whole source is registered in the state (its identities and digests: what this run's
counts cover); then one thread converts and validates (CPU work, in order), ``concurrency`` tasks push. A
bounded queue between them keeps memory flat however large the source. Before each push the case is recorded
as ``sending``, after it as ``pushed`` (or ``failed``): a job killed at any instant resumes from the state and
sends again only what may not have arrived — which is safe, every push being idempotent (PUT with
deterministic ids). State calls run on one thread of their own (``StateThread``), never on the event loop.

Per patient, cases are pushed in source order: a case is not sent while an earlier case of its patient is
unfinished (being tried again, or waiting out an outage), so a retried earlier case never overwrites the
Patient a later one wrote. An earlier case that finally fails does not hold the later ones back (they go, in
order, after it). When an earlier case of a patient is to be sent in a run (a retried failure, a changed case),
the patient's later cases that were already pushed are made ``pending`` in the state (one commit, before that
case is queued: durable, so a job killed between the two pushes still re-sends them) and sent again after it,
so the patient ends as its last case says; that is the one time a finished case is re-sent. Such a re-send is
not a new verdict on the case: if the current rules refuse its unchanged content, it stays ``pushed`` (that
version is on the server) with a warning. A case whose earlier version is on the server and whose changed
content is refused is ``invalid``, its reason saying the earlier version is on the server.

A push that fails for a reason that may pass (no answer, 429, 5xx, a conflict) is tried again, up to
``max_attempts`` times with a growing wait; one the server refuses for its content (other 4xx) fails at once.
The job retries itself (the client's own retries are off for pushes: see ``ingest_cli``), so it knows each
attempt whose answer was lost. Job-wide, a circuit breaker (``Breaker``) tells an outage from a case's trouble:
after ``breaker_threshold`` transport-level failures in a row (no answer, 5xx) across all pushers, pushes pause
and one probe (GET metadata) is tried with growing waits; an attempt that failed in the outage does not count
against its case. Before a case is marked ``failed`` for a transport-level error (its attempts used up), the
server is probed: if the probe fails too, it is an outage, the breaker opens and the case waits it out instead.
If the server does not answer within ``outage_wait`` seconds (measured on the clock from the moment the breaker
opened, probes included), the job stops: unsent cases stay ``pending`` (never ``failed`` for the outage) for
``--resume``.

Settle and re-assert: an attempt whose answer was lost (a timeout, a reset after sending, a run killed while the
case was ``sending``) may still be travelling to the server, and may land after the patient's later case was
pushed, writing the earlier Patient over the later one. Per-patient order cannot prevent that (the job no longer
knows of that request), so each such attempt marks its patient ``unsettled`` in the state, durably, with the
attempt's time (in the commit that records the attempt). After every push of the run (and so also on a
``--resume`` of a state with marks), the settle pass waits, per unsettled patient, until ``settle`` seconds have
passed since its last lost attempt — a bound on how long the network may still deliver a request, not a proof —
then pushes the patient's last pushed case (source order) again, re-converted as any re-send is, and clears the
mark in the commit that records that answer. A re-assert that loses its answer leaves the patient unsettled (the
pass waits again; at most ``max_attempts`` tries); one that cannot be made leaves the mark with its reason, for
the report and the next run.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from casebridge.errors import (
    CasebridgeError,
    Conflict,
    FhirError,
    FhirHttpError,
    FhirProtocolError,
    FhirServerError,
    FhirTransportError,
    InputError,
    InvalidResourceError,
    LockError,
    Problem,
    TooManyRequests,
)
from casebridge.fhir.client import AsyncFhirClient
from casebridge.ingest.sources import CaseSource, SourceItem
from casebridge.ingest.state import DONE, JobState, StateThread
from casebridge.mapping.engine import MappingSet
from casebridge.pipeline import parse_case, refuse_invalid, run_document
from casebridge.push import PatientLocks, patient_key, push_bundle
from casebridge.validation.validator import Validator

TRANSIENT = (FhirTransportError, FhirServerError, TooManyRequests, Conflict, FhirProtocolError)
OUTAGE = (FhirTransportError, FhirServerError)  # no answer, or the server failing: what the breaker counts
REGISTER_BATCH = 2000


@dataclass(frozen=True)
class IngestOptions:
    concurrency: int = 4
    max_attempts: int = 6  # per case and run; each attempt is a client call with its own quick retries
    retry_wait: float = 1.0  # the first wait between attempts; doubles, up to max_wait
    max_wait: float = 30.0
    breaker_threshold: int = 5  # transport-level failures in a row, across pushers, that pause every push
    outage_wait: float = 600.0  # how long the paused job waits (its waits summed) for the server to answer
    probe_wait: float = 1.0  # the first wait before probing a server that stopped answering; doubles to max_wait
    # Seconds after an attempt whose answer was lost before its patient's last case is pushed again (the settle
    # pass): longer than any request the network may still deliver. A bound, not a proof.
    settle: float = 30.0


class Progress(Protocol):
    def start(self, total: int, already_done: int) -> None: ...

    def advance(self, status: str) -> None: ...

    def note(self, message: str) -> None: ...


class NoProgress:
    def start(self, total: int, already_done: int) -> None:
        pass

    def advance(self, status: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Prepared:
    item: SourceItem
    case_id: str
    bundle: dict[str, Any]
    patient: str | None


@dataclass(frozen=True, slots=True)
class Refused:
    item: SourceItem
    case_id: str | None
    reason: str
    outcome: dict[str, Any]


@dataclass(slots=True)
class Work:
    """A prepared case on its way to a pusher: ``after`` is set when the previous case of its patient is done."""

    prepared: Prepared
    after: asyncio.Event | None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class PushTimes:
    """Push durations in bounded memory: count, total, and a uniform sample of at most ``size`` of them
    (reservoir sampling) for the percentiles, however many cases the job pushes."""

    def __init__(self, size: int = 4096, seed: int = 0) -> None:
        self.size = size
        self.count = 0
        self.total = 0.0
        self.sample: list[float] = []
        self._random = random.Random(seed)  # noqa: S311 - sampling, not secrets

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        if len(self.sample) < self.size:
            self.sample.append(seconds)
            return
        slot = self._random.randrange(self.count)
        if slot < self.size:
            self.sample[slot] = seconds

    def percentile(self, share: float) -> float | None:
        if not self.sample:
            return None
        ordered = sorted(self.sample)
        return ordered[min(int(len(ordered) * share), len(ordered) - 1)]


@dataclass
class RunStats:
    started: float = field(default_factory=time.time)
    total: int = 0  # the source's items (every one registered in the state)
    skipped: int = 0  # done in an earlier run, content unchanged
    this_run: dict[str, int] = field(default_factory=dict)
    push_times: PushTimes = field(default_factory=PushTimes)
    pauses: int = 0  # times the breaker paused pushes
    stopped: str | None = None  # why the job stopped before its end (the server stayed down)
    # Patients whose last case the settle pass pushed again in this run: (patient, case key, location, sends).
    reasserted: list[tuple[str, str, str, int]] = field(default_factory=list)

    def add(self, status: str) -> None:
        self.this_run[status] = self.this_run.get(status, 0) + 1


def _problems_outcome(problems: list[Problem]) -> dict[str, Any]:
    issues = []
    for p in problems:
        issue: dict[str, Any] = {"severity": "error", "code": "invalid", "diagnostics": p.message}
        if p.location:
            issue["expression"] = [p.location]
        issues.append(issue)
    return {"resourceType": "OperationOutcome", "issue": issues}


def prepare(item: SourceItem, mappings: MappingSet, validator: Validator) -> Prepared | Refused:
    """Read, convert and validate one case (runs on the converter thread; touches no shared state)."""
    if item.duplicate_of is not None:
        same = f"case_id {item.key.split(':', 1)[1].split('#')[0]}" if item.key.startswith("case:") else "content"
        reason = f"{item.source}: the same {same} as {item.duplicate_of}: not sent (a case is loaded once)"
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "duplicate", "diagnostics": reason}],
        }
        return Refused(item, None, reason, outcome)
    if item.suffix == ".too-large":
        reason = f"{item.source}: {int(item.data):,} bytes, over the size limit"
        return Refused(item, None, reason, _problems_outcome([Problem("", reason)]))
    if item.suffix in (".invalid-row", ".unreadable", ".refused"):
        reason = f"{item.source}: {item.data.decode()}"
        return Refused(item, None, reason, _problems_outcome([Problem("", reason)]))
    case_id = None
    try:
        doc = parse_case(item.data, source=item.source)
        raw_id = doc.get("case_id")
        case_id = raw_id if isinstance(raw_id, str) else None  # named in the refusal of a case that does not fit
        checked = run_document(doc, source=item.source, mappings=mappings, validator=validator)
    except InputError as exc:
        return Refused(item, case_id, exc.report(), _problems_outcome(exc.problems))
    try:
        refuse_invalid(checked.issues)
    except InvalidResourceError as exc:
        return Refused(item, checked.case.case_id, f"{item.source}: {exc}", exc.outcome)
    return Prepared(item, checked.case.case_id, checked.bundle, patient_key(checked.bundle))


def _refs(bundle: dict[str, Any]) -> list[str]:
    """``Type/id`` of every entry a push writes (what an unanswered attempt may have created)."""
    refs = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") and resource.get("id"):
            refs.append(f"{resource['resourceType']}/{resource['id']}")
    return refs


def _may_have_arrived(exc: Exception) -> bool:
    """No usable answer, though the request may have been carried out (a timeout after the commit, a gateway
    giving up, an answer that did not parse)."""
    if isinstance(exc, FhirTransportError):
        return exc.request_sent
    if isinstance(exc, FhirServerError):
        return exc.status in (502, 504)
    return isinstance(exc, FhirProtocolError)


def _reason(exc: Exception) -> str:
    if isinstance(exc, FhirHttpError):
        details = exc.diagnostics()
        return f"{exc}" + (f" ({details[0]})" if details and details[0] not in str(exc) else "")
    return str(exc)


class Breaker:
    """Job-wide: after ``threshold`` transport-level failures in a row (across pushers), pushes pause and one
    probe is tried with growing waits, by the first pusher that finds the breaker open (the others wait for
    it). The first answer resumes every pusher; ``give_up_after`` seconds on ``clock`` from the breaker opening
    (waits and probes alike) without one stop the job."""

    def __init__(
        self,
        probe: Callable[[], Awaitable[object]],
        *,
        threshold: int,
        give_up_after: float,
        first_wait: float,
        max_wait: float,
        sleep: Callable[[float], Any],
        progress: Progress,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.probe = probe
        self.clock = clock
        self.threshold = threshold
        self.give_up_after = give_up_after
        self.first_wait = first_wait
        self.max_wait = max_wait
        self.sleep = sleep
        self.progress = progress
        self.streak = 0
        self.is_open = False
        self.gave_up = False
        self.pauses = 0
        self.down_for = 0.0  # how long the last outage lasted, on the clock
        self.opened_at = 0.0
        self._probing = False
        self._resumed = asyncio.Event()

    def success(self) -> None:
        self.streak = 0

    def failure(self) -> None:
        self.streak += 1
        if self.streak >= self.threshold:
            self._open()

    def _open(self) -> None:
        if not self.is_open and not self.gave_up:
            self.is_open = True
            self.pauses += 1
            self.opened_at = self.clock()
            self._resumed = asyncio.Event()

    async def answers(self) -> bool:
        """Whether the server answers now (one probe), asked before a case is marked failed for a transport-level
        error: if it does not, that was an outage, not the case's trouble, and the breaker opens."""
        if self.is_open or self.gave_up:
            return False
        try:
            await self.probe()
        except OUTAGE:
            self._open()
            return False
        except (FhirError, CasebridgeError):
            pass  # any other answer says the server is there
        return True

    async def wait(self) -> bool:
        """Returns at once while closed; when open, once the server answers (True) or the job gives up (False)."""
        while self.is_open and not self.gave_up:
            if self._probing:
                await self._resumed.wait()
                continue
            self._probing = True
            try:
                await self._probe_until_up()
            finally:
                self._probing = False
                self.is_open = False
                self.streak = 0
                self._resumed.set()
        return not self.gave_up

    async def _probe_until_up(self) -> None:
        self.progress.note(
            f"the FHIR server failed {self.streak} requests in a row: pushes paused; checking it "
            f"(for up to {self.give_up_after:.0f} s)"
        )
        wait, last = self.first_wait, ""
        while True:
            # Time on the clock, not the waits summed: a probe may itself take up to the client's timeouts.
            waited = self.clock() - self.opened_at
            if waited >= self.give_up_after:
                self.gave_up = True
                self.down_for = waited
                self.progress.note(f"the FHIR server did not answer for {waited:.0f} s ({last}): stopping")
                return
            await self.sleep(min(wait, self.give_up_after - waited))
            try:
                await self.probe()
            except OUTAGE as exc:
                last = str(exc)
                wait = min(wait * 2, self.max_wait)
                continue
            except (FhirError, CasebridgeError):
                pass  # any other answer (401, 404, not FHIR...) says the server is there again
            waited = self.clock() - self.opened_at
            self.down_for = waited
            self.progress.note(f"the FHIR server answers again (after {waited:.0f} s): pushes resume")
            return


class IngestJob:
    def __init__(
        self,
        source: CaseSource,
        state: JobState,
        *,
        client: AsyncFhirClient,
        locks: PatientLocks,
        mappings: MappingSet,
        validator: Validator,
        options: IngestOptions = IngestOptions(),
        progress: Progress | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        ruleset: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.source = source
        self.wall = wall  # epoch seconds: a lost attempt's time is kept in the state, across processes
        self.state = state
        self.client = client
        self.locks = locks
        self.mappings = mappings
        self.validator = validator
        self.options = options
        self.ruleset = ruleset  # the rules' fingerprint, kept with each verdict (see fingerprint.py)
        self.progress = progress or NoProgress()
        self.sleep = sleep
        self.stats = RunStats()
        self._random = random.Random()  # noqa: S311 - jitter, not secrets
        self._state = StateThread()
        self._tails: dict[str, asyncio.Event] = {}  # patient -> the done event of its latest queued case
        # At least 2, so that one case failing alone (a pusher on its own) is not taken for an outage for ever.
        threshold = max(2, min(options.breaker_threshold, options.max_attempts))
        self.breaker = Breaker(
            client.capabilities,
            threshold=threshold,
            give_up_after=options.outage_wait,
            first_wait=options.probe_wait,
            max_wait=options.max_wait,
            sleep=sleep,
            progress=self.progress,
            clock=clock,
        )

    async def run(self) -> RunStats:
        queue: asyncio.Queue[Work | None] = asyncio.Queue(maxsize=self.options.concurrency * 2)
        try:
            try:
                # A task group: if a pusher dies (its state write failed), the converter waiting on the full queue
                # is cancelled with the rest, instead of waiting for ever.
                async with asyncio.TaskGroup() as group:
                    for _ in range(self.options.concurrency):
                        group.create_task(self._pusher(queue))
                    group.create_task(self._convert_then_stop(queue))
            except* Exception as failures:  # noqa: BLE001 - the first failure of the group, re-raised as it was
                raise failures.exceptions[0] from None
            if not self.breaker.gave_up:
                await self._settle_pass()  # after every push of the run: see the module's docstring
        finally:
            self._state.close()  # every write made is committed before the caller reads the state
        self.stats.pauses = self.breaker.pauses
        if self.breaker.gave_up:
            self.stats.stopped = (
                f"the FHIR server did not answer for {self.breaker.down_for:.0f} s; the cases not sent are pending "
                "(continue with --resume)"
            )
        return self.stats

    async def _convert_then_stop(self, queue: asyncio.Queue[Work | None]) -> None:
        await self._convert_all(queue)
        for _ in range(self.options.concurrency):
            await queue.put(None)

    async def _register_all(self, executor: ThreadPoolExecutor) -> int:
        """Every item of the source in the state, before any work: this run's counts cover exactly these."""
        loop = asyncio.get_running_loop()
        await self._state(self.state.begin_run)
        items = iter(self.source)
        total = 0

        def take() -> list[tuple[str, str, str, int | None]]:
            # Each item with its position in the source (``total``: the items registered before this batch).
            return [(i.key, i.source, i.digest, total + n) for n, i in zip(range(REGISTER_BATCH), items, strict=False)]

        while batch := await loop.run_in_executor(executor, take):
            total += len(batch)
            await self._state(self.state.register, batch, self.ruleset)
        return total

    async def _convert_all(self, queue: asyncio.Queue[Work | None]) -> None:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1, "casebridge-convert") as executor:
            self.stats.total = await self._register_all(executor)
            self.progress.start(self.stats.total, 0)
            items = iter(self.source)
            position = -1
            while not self.breaker.gave_up:
                item = await loop.run_in_executor(executor, next, items, None)
                if item is None:
                    break
                position += 1
                # A later case of a patient whose earlier case is sent in this run was made pending by
                # ``resend_later`` (committed before that case was queued): this lookup, on the same state thread,
                # comes after it.
                known = await self._state(self.state.lookup, item.key)
                if known is None:  # the source changed since it was registered: a case must never go unrecorded
                    entry = (item.key, item.source, item.digest, position)
                    await self._state(self.state.register, [entry], self.ruleset)
                if known is not None and known[0] in DONE:
                    self.stats.skipped += 1
                    self.progress.advance("done before")
                    continue
                try:
                    result = await loop.run_in_executor(executor, prepare, item, self.mappings, self.validator)
                except Exception as exc:  # noqa: BLE001 - our own defect on one case must not stop the job
                    reason = f"{item.source}: internal error: {type(exc).__name__}: {exc}"
                    await self._state(self.state.failed, item.key, reason)
                    self.stats.add("failed")
                    self.progress.advance("failed")
                    continue
                if isinstance(result, Refused):
                    status = await self._refused(item, result)
                    self.stats.add(status)
                    self.progress.advance(status)
                    continue
                after = None
                if result.patient is not None:
                    await self._state(self.state.resend_later, item.key, result.patient)
                    after = self._tails.get(result.patient)
                work = Work(result, after)
                if result.patient is not None:
                    self._tails[result.patient] = work.done
                await queue.put(work)

    async def _refused(self, item: SourceItem, result: Refused) -> str:
        """Records a refused case; one whose earlier version is on the server is never shown as merely not sent."""
        row = await self._state(self.state.get, item.key)
        if row is not None and row.pushed_digest == item.digest:
            # Its content is what was pushed (it was to go again after an earlier case of its patient): a re-send
            # is not a new verdict; that version stays on the server and the case stays pushed, with a warning.
            first = result.reason.splitlines()[0] if result.reason else ""
            warning = (
                f"{first}: not sent again under the current rules; its version pushed earlier (same content) is on "
                "the server"
            )
            await self._state(self.state.kept, item.key, warning)
            return "kept"
        reason = result.reason
        if row is not None and row.on_server:
            # On the first line, which the summary shows.
            first, newline, rest = reason.partition("\n")
            note = "; its earlier version is on the server (pushed before the content changed; not replaced)"
            reason = first + note + newline + rest
        await self._state(self.state.invalid, item.key, result.case_id, reason, result.outcome, self.ruleset)
        return "invalid"

    async def _pusher(self, queue: asyncio.Queue[Work | None]) -> None:
        while True:
            work = await queue.get()
            if work is None:
                return
            patient = work.prepared.patient
            try:
                if work.after is not None:
                    await work.after.wait()  # the previous case of this patient first: source order
                status = await self._push(work.prepared)
            finally:
                work.done.set()
                if patient is not None and self._tails.get(patient) is work.done:
                    del self._tails[patient]  # its last queued case: forget the patient (memory stays flat)
            self.stats.add(status)
            self.progress.advance(status)

    async def _push(self, prepared: Prepared) -> str:
        key = prepared.item.key
        refs = _refs(prepared.bundle)
        wait = self.options.retry_wait
        attempt = 0  # this run's attempts that count against the case (the state keeps every one, for the report)
        while True:
            if not await self.breaker.wait():
                reason = "not sent: the FHIR server stopped answering and the job stopped"
                await self._state(self.state.not_sent, key, reason)
                return "not sent"
            await self._state(self.state.sending, key, prepared.case_id, prepared.patient, refs, now=self.wall())
            attempt += 1
            started = time.perf_counter()
            try:
                result = await push_bundle(self.client, prepared.bundle, locks=self.locks)
            except (FhirError, LockError) as exc:
                outcome = exc.outcome if isinstance(exc, FhirHttpError) else None
                lost = refs if _may_have_arrived(exc) else None
                if isinstance(exc, OUTAGE):
                    self.breaker.failure()
                elif isinstance(exc, FhirHttpError):
                    self.breaker.success()  # an answer: the server is there
                if isinstance(exc, OUTAGE) and self.breaker.is_open:
                    # The server's outage, not this case's trouble: the attempt does not count against the case.
                    attempt -= 1
                    reason = f"{_reason(exc)} (the server is not answering; pushes paused)"
                    await self._state(self.state.retrying, key, reason, outcome, lost=lost, now=self.wall())
                    continue
                transient = isinstance(exc, TRANSIENT) or isinstance(exc, LockError)
                if transient and attempt >= self.options.max_attempts and isinstance(exc, OUTAGE):
                    # Before blaming the case: does the server answer at all? If not, this is an outage (the
                    # breaker opens) and the case waits it out, pending, its attempt not counted.
                    if not await self.breaker.answers():
                        attempt -= 1
                        reason = f"{_reason(exc)} (the server is not answering; pushes paused)"
                        await self._state(self.state.retrying, key, reason, outcome, lost=lost, now=self.wall())
                        continue
                if not transient or attempt >= self.options.max_attempts:
                    await self._state(
                        self.state.failed,
                        key,
                        f"attempt {attempt}: {_reason(exc)}",
                        outcome,
                        lost=lost,
                        now=self.wall(),
                    )
                    return "failed"
                reason = f"attempt {attempt}: {_reason(exc)} (will try again)"
                await self._state(self.state.retrying, key, reason, outcome, lost=lost, now=self.wall())
                pause = wait
                if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
                    pause = min(max(pause, exc.retry_after), self.options.max_wait)
                self.progress.note(f"{prepared.item.source}: {_reason(exc)}; again in {pause:.1f} s")
                await self.sleep(pause + self._random.uniform(0, pause / 4))
                wait = min(wait * 2, self.options.max_wait)
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is this case's, recorded with its reason
                reason = f"attempt {attempt}: internal error: {type(exc).__name__}: {exc}"
                await self._state(self.state.failed, key, reason, lost=refs, now=self.wall())
                return "failed"
            self.breaker.success()
            seconds = time.perf_counter() - started
            self.stats.push_times.add(seconds)
            entries = [(f"{e.resource_type}/{e.id}", e.created) for e in result.entries]
            await self._state(self.state.pushed, key, entries, seconds, self.ruleset)
            return "pushed"

    # -- settle and re-assert ---------------------------------------------------------------------------------

    async def _settle_pass(self) -> None:
        """Every unsettled patient (see the module's docstring), oldest lost attempt first."""
        marks = await self._state(self.state.unsettled)
        if not marks:
            return
        self.progress.note(
            f"{len(marks)} patients had an attempt whose answer was lost: their last case goes again once "
            f"{self.options.settle:.0f} s have passed since it"
        )
        keys = set()
        for patient, _, _ in marks:
            row = await self._state(self.state.last_pushed, patient)
            if row is not None:
                keys.add(row.key)
        items = await self._items(keys)
        for patient, _, _ in marks:
            reason = await self._reassert(patient, items)
            if reason is not None:
                await self._state(self.state.still_unsettled, patient, reason)
                self.progress.note(f"{patient}: still unsettled: {reason}")

    async def _items(self, keys: set[str]) -> dict[str, SourceItem]:
        """The source items of ``keys``, read again from the source (one pass, on a thread)."""

        def find() -> dict[str, SourceItem]:
            return {item.key: item for item in self.source if item.key in keys} if keys else {}

        return await asyncio.get_running_loop().run_in_executor(None, find)

    async def _reassert(self, patient: str, items: dict[str, SourceItem]) -> str | None:
        """Pushes the patient's last pushed case again once ``settle`` seconds have passed since its last lost
        attempt; returns why the patient stays unsettled, or None (re-asserted, mark cleared)."""
        sends = 0
        while True:
            seen = await self._state(self.state.unsettled_at, patient)
            if seen is None:
                return None
            row = await self._state(self.state.last_pushed, patient)
            if row is None:
                return "no case of the patient is pushed in this source yet: re-asserted once one is"
            item = items.get(row.key)
            if item is None or item.digest != row.pushed_digest:
                return f"{row.location}: its content changed since it was pushed: re-asserted when it is pushed"
            if sends >= self.options.max_attempts:
                return f"{row.location}: {sends} re-assert pushes, none answered in time to settle the patient"
            remaining = seen + self.options.settle - self.wall()
            if remaining > 0:
                await self.sleep(remaining)
            result = await asyncio.get_running_loop().run_in_executor(
                None, prepare, item, self.mappings, self.validator
            )
            if isinstance(result, Refused):
                first = result.reason.splitlines()[0] if result.reason else ""
                return f"{first}: refused by the current rules, so not re-asserted"
            if not await self.breaker.wait():
                return "the FHIR server stopped answering before the patient's last case was re-asserted"
            sends += 1
            try:
                answer = await push_bundle(self.client, result.bundle, locks=self.locks)
            except (FhirError, LockError) as exc:
                if isinstance(exc, OUTAGE):
                    self.breaker.failure()
                elif isinstance(exc, FhirHttpError):
                    self.breaker.success()
                if _may_have_arrived(exc):
                    # It may land late as well: the patient stays unsettled, from now.
                    await self._state(self.state.reassert_lost, patient, self.wall())
                elif not (isinstance(exc, TRANSIENT) or isinstance(exc, LockError)):
                    return f"{row.location}: re-assert refused: {_reason(exc)}"
                self.progress.note(f"{row.location}: re-assert of its patient: {_reason(exc)}")
                await self.sleep(self.options.retry_wait)
                continue
            self.breaker.success()
            entries = [(f"{e.resource_type}/{e.id}", e.created) for e in answer.entries]
            if await self._state(self.state.reasserted, row.key, patient, entries, seen):
                self.stats.reasserted.append((patient, row.key, row.location, sends))
                return None
