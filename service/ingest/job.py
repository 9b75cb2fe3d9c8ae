"""An ingestion job: every case of a source converted, validated and pushed, each exactly once, none lost.

The pipeline: one thread converts and validates (CPU work, in order), ``concurrency`` tasks push. A bounded
queue between them keeps memory flat however large the source. Before each push the case is recorded as
``sending``, after it as ``pushed`` (or ``failed``): a job killed at any instant resumes from the state and
sends again only what may not have arrived — which is safe, every push being idempotent (PUT with
deterministic ids). Writes for one patient are serialized (registry cases of one patient share a Patient).

A push that fails for a reason that may pass (no answer, 429, 5xx, a conflict) is tried again, up to
``max_attempts`` times with a growing wait; one the server refuses for its content (other 4xx) fails at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.domain.reader import parse_document, validate_case
from service.errors import (
    Conflict,
    FhirError,
    FhirHttpError,
    FhirProtocolError,
    FhirServerError,
    FhirTransportError,
    InputError,
    LockError,
    Problem,
    TooManyRequests,
)
from service.fhir.client import AsyncFhirClient
from service.ingest.sources import CaseSource, SourceItem
from service.ingest.state import JobState
from service.mapping.engine import MappingSet
from service.push import PatientLocks, patient_key, push_bundle
from service.validation.validator import Validator, has_errors, operation_outcome

TRANSIENT = (FhirTransportError, FhirServerError, TooManyRequests, Conflict, FhirProtocolError)


@dataclass(frozen=True)
class IngestOptions:
    concurrency: int = 4
    max_attempts: int = 6  # per case and run; each attempt is a client call with its own quick retries
    retry_wait: float = 1.0  # the first wait between attempts; doubles, up to max_wait
    max_wait: float = 30.0


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


@dataclass
class RunStats:
    started: float = field(default_factory=time.time)
    skipped: int = 0  # done in an earlier run, content unchanged
    this_run: dict[str, int] = field(default_factory=dict)
    push_seconds: list[float] = field(default_factory=list)

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
    if item.suffix == ".too-large":
        reason = f"{item.source}: {int(item.data):,} bytes, over the size limit"
        return Refused(item, None, reason, _problems_outcome([Problem("", reason)]))
    if item.suffix == ".invalid-row":
        reason = item.data.decode()
        return Refused(item, None, reason, _problems_outcome([Problem("", reason)]))
    if item.suffix == ".unreadable":
        reason = f"{item.source}: {item.data.decode()}"
        return Refused(item, None, reason, _problems_outcome([Problem("", reason)]))
    case_id = None
    try:
        doc = parse_document(item.data, source=item.source)
        raw_id = doc.get("case_id")
        case_id = raw_id if isinstance(raw_id, str) else None
        case = validate_case(doc, source=item.source)
        bundle = mappings.convert(case, source=item.source)
    except InputError as exc:
        return Refused(item, case_id, exc.report(), _problems_outcome(exc.problems))
    issues = validator.validate(bundle)
    if has_errors(issues):
        errors = sum(1 for i in issues if i.severity in ("error", "fatal"))
        return Refused(
            item, case.case_id, f"{item.source}: the Bundle has {errors} validation errors", operation_outcome(issues)
        )
    return Prepared(item, case.case_id, bundle, patient_key(bundle))


def _reason(exc: Exception) -> str:
    if isinstance(exc, FhirHttpError):
        details = exc.diagnostics()
        return f"{exc}" + (f" ({details[0]})" if details and details[0] not in str(exc) else "")
    return str(exc)


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
        total: int | None = None,
    ):
        self.total = total  # the source's size, when the caller has counted it already
        self.source = source
        self.state = state
        self.client = client
        self.locks = locks
        self.mappings = mappings
        self.validator = validator
        self.options = options
        self.progress = progress or NoProgress()
        self.sleep = sleep
        self.stats = RunStats()
        self._random = random.Random()  # noqa: S311 - jitter, not secrets

    async def run(self) -> RunStats:
        queue: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=self.options.concurrency * 2)
        try:
            # A task group: if a pusher dies (its state write failed), the converter waiting on the full queue
            # is cancelled with the rest, instead of waiting for ever.
            async with asyncio.TaskGroup() as group:
                for _ in range(self.options.concurrency):
                    group.create_task(self._pusher(queue))
                group.create_task(self._convert_then_stop(queue))
        except* Exception as failures:  # noqa: BLE001 - the first failure of the group, re-raised as it was
            raise failures.exceptions[0] from None
        return self.stats

    async def _convert_then_stop(self, queue: asyncio.Queue[Prepared | None]) -> None:
        await self._convert_all(queue)
        for _ in range(self.options.concurrency):
            await queue.put(None)

    async def _convert_all(self, queue: asyncio.Queue[Prepared | None]) -> None:
        loop = asyncio.get_running_loop()
        total = self.total if self.total is not None else self.source.count()
        done_before = 0
        with ThreadPoolExecutor(1, "casebridge-convert") as executor:
            items = iter(self.source)
            started = False
            while True:
                item = await loop.run_in_executor(executor, next, items, None)
                if item is None:
                    break
                if not started:
                    self.progress.start(total, 0)
                    started = True
                if self.state.is_done(item.key, item.digest):
                    done_before += 1
                    self.stats.skipped += 1
                    self.progress.advance("done before")
                    continue
                self.state.pending(item.key, item.source, item.digest)
                try:
                    result = await loop.run_in_executor(executor, prepare, item, self.mappings, self.validator)
                except Exception as exc:  # noqa: BLE001 - our own defect on one case must not stop the job
                    self.state.failed(item.key, f"{item.source}: internal error: {type(exc).__name__}: {exc}")
                    self.stats.add("failed")
                    self.progress.advance("failed")
                    continue
                if isinstance(result, Refused):
                    self.state.invalid(item.key, result.case_id, result.reason, result.outcome)
                    self.stats.add("invalid")
                    self.progress.advance("invalid")
                    continue
                await queue.put(result)
            if not started:
                self.progress.start(total, 0)

    async def _pusher(self, queue: asyncio.Queue[Prepared | None]) -> None:
        while True:
            prepared = await queue.get()
            if prepared is None:
                return
            status = await self._push(prepared)
            self.stats.add(status)
            self.progress.advance(status)

    async def _push(self, prepared: Prepared) -> str:
        key = prepared.item.key
        wait = self.options.retry_wait
        attempt = 0  # this run's attempts (the state keeps the total across runs, for the report)
        while True:
            self.state.sending(key, prepared.case_id, prepared.patient)
            attempt += 1
            started = time.perf_counter()
            try:
                result = await push_bundle(self.client, prepared.bundle, locks=self.locks)
            except (FhirError, LockError) as exc:
                outcome = exc.outcome if isinstance(exc, FhirHttpError) else None
                transient = isinstance(exc, TRANSIENT) or isinstance(exc, LockError)
                if not transient or attempt >= self.options.max_attempts:
                    self.state.failed(key, f"attempt {attempt}: {_reason(exc)}", outcome)
                    return "failed"
                self.state.failed(key, f"attempt {attempt}: {_reason(exc)} (will try again)", outcome)
                pause = wait
                if isinstance(exc, TooManyRequests) and exc.retry_after is not None:
                    pause = min(max(pause, exc.retry_after), self.options.max_wait)
                self.progress.note(f"{prepared.item.source}: {_reason(exc)}; again in {pause:.1f} s")
                await self.sleep(pause + self._random.uniform(0, pause / 4))
                wait = min(wait * 2, self.options.max_wait)
                continue
            except Exception as exc:  # noqa: BLE001 - an unexpected failure is this case's, recorded with its reason
                self.state.failed(key, f"attempt {attempt}: internal error: {type(exc).__name__}: {exc}")
                return "failed"
            seconds = time.perf_counter() - started
            self.stats.push_seconds.append(seconds)
            self.state.pushed(key, result.created, result.already_there, seconds)
            return "pushed"
