"""Process-level tuning shared by the long-running commands (serve, ingest)."""

from __future__ import annotations

import gc
import os


def settle_heap() -> None:
    """Move everything loaded so far (the FHIR definitions: hundreds of thousands of objects that live as long
    as the process) out of the garbage collector's sight. Otherwise every full collection walks them again,
    which cost about 0.7 ms per converted and validated case (measured with gc callbacks; see benchmarks/).
    Objects created later are collected as usual.

    The youngest generation is collected after 10,000 net new container objects instead of 700: converting and
    validating a case holds tens of thousands at its peak and frees them all by reference counting, so at 700
    the collector ran ~230 times per 256 cases, for nothing (0.13 ms per case, measured with gc callbacks);
    at 10,000 it does not run during a case at all."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


YOUNG_THRESHOLD = 10_000


MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """`serve`'s worker processes when none are asked for: one per CPU this process may run on, at most 8. Past
    about that many, the one HTTP process that feeds them (~1-1.3 ms of CPU per POST /cases against ~6-8 ms of
    a worker's) is the limit, and each worker grows to ~100 MB of its own."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # not on macOS
    return max(1, min(usable or 1, MAX_DEFAULT_WORKERS))
