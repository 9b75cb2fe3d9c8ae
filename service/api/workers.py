"""Where the API's CPU work runs: reading, conversion and validation, away from the event loop.

``Workbench`` is what that work may touch (settings, validator, mappings, inbound profiles, the XML reader).
A piece of work is a module-level function ``fn(bench, *args)``; ``CpuRunner.run`` hands it the bench of
the place it runs in:

- ``processes=0``: one thread of the HTTP process (the app built in-process, e.g. by the tests). The
  validator's caches are filled lazily and are not meant for concurrent writers, hence one thread.
- ``processes=N``: N processes forked from the HTTP process once everything is loaded (they share its
  memory until they write to it), fed from one queue. One queue means requests are served in the order they
  arrive, whichever connection they came on. (With uvicorn's own worker processes each kept the keep-alive
  connections it had accepted: in one measured run one process held 29 of 32 clients, whose requests took
  ~200 ms while the other three clients' took 15 ms.) The event loop also stops competing with the work for
  the interpreter lock.

Arguments and results cross a pipe in process mode, so they are plain data (bytes, dicts, ``Issue``s). Errors
cross as ``ApiError`` (an input error is turned into its 400/422 answer where it happens); anything else is
logged where it happened, with the request id, and crosses as ``WorkFailed`` (a 500, no detail outside).
A process that dies (killed, out of memory) costs the requests it had: they get 503, and the pool is
replaced by fresh processes forked from the HTTP process. At most ``MAX_QUEUED`` pieces of work wait;
beyond, requests get 503 with Retry-After at once rather than queueing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import os
import signal
import stat
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from service.api.errors import ApiError, input_error
from service.api.logs import request_id
from service.config import PROJECT_ROOT, Settings
from service.errors import InputError, log_defect
from service.fhir.xml import XmlReader
from service.mapping.engine import MappingSet
from service.validation.inbound import load_inbound_profiles
from service.validation.service import load_validator
from service.validation.validator import Validator

P = ParamSpec("P")
T = TypeVar("T")
MAX_QUEUED = 64
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
log = logging.getLogger("casebridge.api")


@dataclass
class Workbench:
    settings: Settings
    validator: Validator
    mappings: MappingSet
    inbound_profiles: dict[str, list[str]]

    @classmethod
    def build(cls, settings: Settings) -> Workbench:
        """Load everything, or fail (PackageError, MappingError) before the server takes a request."""
        validator = load_validator(settings)
        mappings = MappingSet.load(settings.mappings_dir, terminology=settings.terminology())
        inbound = load_inbound_profiles(settings.mappings_dir / "inbound-profiles.yaml", validator, root=PROJECT_ROOT)
        return cls(settings=settings, validator=validator, mappings=mappings, inbound_profiles=inbound)

    @functools.cached_property
    def xml_reader(self) -> XmlReader:
        """One reader, so its compiled type trees are reused."""
        return XmlReader(self.validator.definitions)


class WorkFailed(Exception):
    """Work failed unexpectedly; what happened was logged where it ran (its type name only here)."""


# In a worker process: the bench it inherited from the HTTP process when it was forked.
_inherited: Workbench | None = None


def _work(fn: Callable[..., T], args: tuple[Any, ...], rid: str, bench: Workbench | None = None) -> T:
    token = request_id.set(rid)
    try:
        return fn(bench if bench is not None else _inherited, *args)
    except ApiError:
        raise
    except InputError as exc:
        raise input_error(exc) from None  # its problems list does not cross a pipe; its answer does
    except Exception as exc:  # noqa: BLE001 - every failure must cross as something the HTTP process can read
        log_defect(log, "unhandled", exc)
        raise WorkFailed(type(exc).__name__) from None
    finally:
        request_id.reset(token)


def _start_worker(parent: int) -> None:
    # Ctrl-C in a terminal reaches the whole process group: the HTTP process shuts the workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A replacement pool is forked from the serving process, with uvicorn's handlers and the event loop's
    # wakeup socket: a worker stopped with SIGTERM (as the pool stops the others when one dies) just ends.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    # Should the HTTP process die without shutting them down (SIGKILL), the workers go with it rather than
    # waiting forever on a queue nobody feeds (Linux; elsewhere a no-op).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(0)  # it died before the request above took effect
    # Likewise its copies of the listening and client sockets: a connection the server closes would stay open
    # in here. The pool's own channels are pipes.
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            continue


def _pid() -> int:
    return os.getpid()


class CpuRunner:
    def __init__(self, bench: Workbench, processes: int = 0) -> None:
        self.bench = bench
        self.processes = processes
        self.queued = 0
        self.replaced = 0  # pools replaced after a worker process died
        self._executor = self._new_executor()

    def _new_executor(self) -> Executor:
        if not self.processes:
            return ThreadPoolExecutor(1, "casebridge-cpu")
        global _inherited
        _inherited = self.bench
        return ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_start_worker,
            initargs=(os.getpid(),),
        )

    def start(self) -> None:
        """Start the worker processes now (before the server starts its threads and sockets) and wait until
        they answer."""
        if self.processes:
            for future in [self._executor.submit(_pid) for _ in range(self.processes * 4)]:
                future.result(timeout=60)

    def alive(self) -> int:
        """Worker processes running (1 for the thread)."""
        if not self.processes:
            return 1
        procs = getattr(self._executor, "_processes", None) or {}  # the pool's own table (no public API for it)
        return sum(1 for p in procs.values() if p.is_alive())

    async def run(self, fn: Callable[Concatenate[Workbench, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        if kwargs:
            raise TypeError("work takes positional arguments only")
        if self.queued >= MAX_QUEUED:
            raise ApiError.of(
                503, "transient", "busy: too much validation waiting; try again shortly", headers={"Retry-After": "2"}
            )
        self.queued += 1
        executor = self._executor
        bench = None if self.processes else self.bench
        try:
            call = functools.partial(_work, fn, args, request_id.get(), bench)
            return await asyncio.get_running_loop().run_in_executor(executor, call)
        except BrokenProcessPool as exc:
            self._replace(executor)
            raise ApiError.of(
                503, "transient", "a conversion process stopped; try again", headers={"Retry-After": "1"}
            ) from exc
        finally:
            self.queued -= 1

    async def revive(self) -> int:
        """When a worker process has died, replace the pool now rather than at the cost of the next request (the
        readiness check calls this); the worker processes running."""
        if self.processes and self.alive() < self.processes:
            self._replace(self._executor)
            await asyncio.get_running_loop().run_in_executor(self._executor, _pid)  # forks the new ones
        return self.alive()

    def _replace(self, broken: Executor) -> None:
        if broken is not self._executor:
            return  # another request already replaced it
        log.error("a worker process stopped; starting %d new ones", self.processes)
        broken.shutdown(wait=False, cancel_futures=True)
        self.replaced += 1
        self._executor = self._new_executor()

    def close(self) -> None:
        """Stop taking work; wait for the work under way (the server has answered its requests by now) and for
        the worker processes to exit, so none outlives the server."""
        self._executor.shutdown(wait=True, cancel_futures=True)
