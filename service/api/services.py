"""What the API's handlers share, built once at start: settings, validator, mappings, the FHIR client,
the per-patient write locks, metrics, and the thread(s) that convert and validate.

Conversion and validation are CPU work; they run on one thread of their own (the validator's caches are
filled lazily and are not meant for concurrent writers), so the event loop keeps answering health checks
and streams while a large Bundle is validated. At most ``MAX_QUEUED`` pieces of such work wait for that
thread; beyond, requests get 503 with Retry-After at once rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from service.api.errors import ApiError
from service.api.metrics import Metrics
from service.api.security import key_digests
from service.config import PROJECT_ROOT, ApiKey, Settings
from service.fhir.client import AsyncFhirClient
from service.fhir.xml import XmlReader
from service.mapping.engine import MappingSet
from service.push import PatientLocks
from service.validation.inbound import load_inbound_profiles
from service.validation.service import load_validator
from service.validation.validator import Validator

P = ParamSpec("P")
MAX_QUEUED = 64
T = TypeVar("T")


@dataclass
class Services:
    settings: Settings
    validator: Validator
    mappings: MappingSet
    client: AsyncFhirClient
    inbound_profiles: dict[str, list[str]]
    locks: PatientLocks
    metrics: Metrics = field(default_factory=Metrics)
    key_digests: list[tuple[ApiKey, bytes]] = field(default_factory=list)
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "casebridge-cpu"))

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Load everything, or fail (PackageError, MappingError) before the server takes a request."""
        validator = load_validator(settings)
        terminology = settings.terminology()
        mappings = MappingSet.load(settings.mappings_dir, terminology=terminology)
        inbound = load_inbound_profiles(settings.mappings_dir / "inbound-profiles.yaml", validator, root=PROJECT_ROOT)
        return cls(
            settings=settings,
            validator=validator,
            mappings=mappings,
            client=AsyncFhirClient.from_settings(settings),
            inbound_profiles=inbound,
            locks=PatientLocks(settings.locks()),
            key_digests=key_digests(settings.keys()),
        )

    queued: int = 0

    async def cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.queued >= MAX_QUEUED:
            raise ApiError.of(
                503, "transient", "busy: too much validation waiting; try again shortly", headers={"Retry-After": "2"}
            )
        self.queued += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))
        finally:
            self.queued -= 1

    @functools.cached_property
    def xml_reader(self) -> XmlReader:
        """One reader, so its compiled type trees are reused (used on the CPU thread only)."""
        return XmlReader(self.validator.definitions)

    async def aclose(self) -> None:
        await self.client.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)
