"""What the API's handlers share, built once at start: settings, validator, mappings, the FHIR client,
the per-patient write locks, metrics, and the thread(s) that convert and validate.

Conversion and validation are CPU work; they run on a small thread pool of their own (one thread by
default: the validator's caches are filled lazily and are not meant for concurrent writers), so the event
loop keeps answering health checks and streams while a large Bundle is validated.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from service.api.metrics import Metrics
from service.api.security import key_digests
from service.config import PROJECT_ROOT, ApiKey, Settings
from service.fhir.client import AsyncFhirClient
from service.mapping.engine import MappingSet
from service.push import PatientLocks
from service.validation.inbound import load_inbound_profiles
from service.validation.service import load_validator
from service.validation.validator import Validator

P = ParamSpec("P")
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
            executor=ThreadPoolExecutor(settings.api_cpu_threads, "casebridge-cpu"),
        )

    async def cpu(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def aclose(self) -> None:
        await self.client.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)
