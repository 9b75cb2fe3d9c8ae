"""Prometheus metrics, in a registry of the app's own (so two apps in one process never share counters)."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from casebridge import _native

if TYPE_CHECKING:
    from casebridge.api.workers import CpuRunner


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "casebridge_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "casebridge_http_request_duration_seconds",
            "Time to answer, by method and route template.",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.validations = Counter(
            "casebridge_validations",
            "Validations run, by endpoint and outcome (valid: no error).",
            ["endpoint", "outcome"],
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "casebridge_upstream_errors",
            "Failures of the FHIR server behind the API, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.audit_events = Counter(
            "casebridge_audit_events",
            "AuditEvents sent to the FHIR server (CASEBRIDGE_AUDIT_EVENTS_TO_SERVER), by outcome: stored, failed, "
            "dropped (the queue full, or still queued at shutdown).",
            ["outcome"],
            registry=self.registry,
        )
        # The loaded definitions are moved out of the collector's sight at start (service/runtime.py); when
        # that is missed, every request pays for walking them again.
        self.frozen = Gauge(
            "casebridge_gc_frozen_objects",
            "Objects the garbage collector no longer walks (the FHIR definitions loaded at start).",
            registry=self.registry,
        )
        self.frozen.set_function(gc.get_freeze_count)
        self.compiled = Gauge(
            "casebridge_compiled_modules",
            "1 when the validator and mapping engine run compiled by mypyc (make setup), 0 from the Python sources.",
            registry=self.registry,
        )
        self.compiled.set_function(lambda: float(_native.in_use()))
        self.workers = Gauge(
            "casebridge_cpu_workers",
            "Worker processes converting and validating that are running (1: a thread of the HTTP process).",
            registry=self.registry,
        )
        self.replaced = Gauge(
            "casebridge_cpu_worker_pools_replaced",
            "Worker processes replaced: stopped past the validation budget or for a client that hung up, or died.",
            registry=self.registry,
        )

    def watch(self, runner: CpuRunner) -> None:
        self.workers.set_function(lambda: float(runner.alive()))
        self.replaced.set_function(lambda: float(runner.replaced))
