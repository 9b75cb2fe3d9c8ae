"""What the API's handlers share, built once at start: settings, the workbench (validator, mappings) and
where its work runs (``casebridge.api.workers``), the FHIR client, the per-patient write locks and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, TypeVar

from starlette.requests import Request

from casebridge.api.audit import Audit
from casebridge.api.errors import ApiError
from casebridge.api.metrics import Metrics
from casebridge.api.workers import CpuRunner, Workbench
from casebridge.config import ApiKey, Settings
from casebridge.fhir.client import AsyncFhirClient
from casebridge.push import PatientLocks
from casebridge.validation.validator import Issue, has_errors, operation_outcome

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    bench: Workbench
    runner: CpuRunner
    client: AsyncFhirClient
    locks: PatientLocks
    metrics: Metrics = field(default_factory=Metrics)
    keys: list[ApiKey] = field(default_factory=list)  # every API key, with its secret's digest
    audit: Audit = field(default_factory=Audit)

    @classmethod
    def build(cls, settings: Settings, processes: int = 0) -> Services:
        """Load everything, or fail (PackageError, MappingError) before the server takes a request.
        ``processes``: 0 runs conversion and validation on a thread, N in N worker processes (``start``
        them before the server opens its sockets)."""
        bench = Workbench.build(settings)
        services = cls(
            settings=settings,
            bench=bench,
            runner=CpuRunner(bench, processes),
            client=AsyncFhirClient.from_settings(settings),
            locks=PatientLocks(settings.locks()),
            keys=settings.keys(),
            audit=Audit.from_settings(settings),
        )
        if settings.audit_events_to_server:
            # Looked up when counted: the app gives the services its own Metrics once they are built.
            services.audit.to_server(
                services.client, lambda outcome, n: services.metrics.audit_events.labels(outcome).inc(n)
            )
        return services

    async def cpu(
        self, request: Request, fn: Callable[Concatenate[Workbench, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(bench, *args)`` where the CPU work runs (see casebridge.api.workers), for as long as the client
        who asked for it is there: when it hangs up, work not yet started is dropped from the queue (it held a
        place there and kept live clients waiting behind it), work already running in a worker process is stopped
        with its process (a fresh one replaces it), and the request ends as 499, nginx's 'client closed request'.
        Work on the thread (``processes=0``) cannot be stopped and finishes unread."""
        work = asyncio.ensure_future(self.runner.run(fn, *args, **kwargs))
        gone = asyncio.ensure_future(_hung_up(request))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            abandoned = not work.done()  # the client hung up, or this request was cancelled (shutdown)
            if abandoned:
                work.cancel()  # takes effect at its next step: its place in the queue is given up then
        if abandoned:
            raise ApiError.of(499, "incomplete", "the client closed the connection before the answer")
        return work.result()

    def count_validation(self, endpoint: str, issues: list[Issue]) -> bool:
        """Count a validation by outcome (valid: no error); whether it was invalid."""
        invalid = has_errors(issues)
        self.metrics.validations.labels(endpoint, "invalid" if invalid else "valid").inc()
        return invalid

    def refuse_invalid(self, endpoint: str, issues: list[Issue]) -> None:
        """Count a validation by outcome; with any error, answer 422 with the OperationOutcome."""
        if self.count_validation(endpoint, issues):
            raise ApiError(422, operation_outcome(issues, self.settings.max_outcome_issues))

    async def aclose(self) -> None:
        await self.audit.aclose()  # first: AuditEvents still queued for the FHIR server need the client
        await self.client.aclose()
        self.runner.close()


async def _hung_up(request: Request) -> None:
    """Returns once the client has gone. Called after the body is read: the server's next message is then the
    disconnect (or nothing, until the answer is sent)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
