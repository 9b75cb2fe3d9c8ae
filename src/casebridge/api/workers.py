"""Where the API's CPU work runs: reading, conversion and validation, away from the event loop.

``Workbench`` is what that work may touch (settings, validator, mappings, inbound profiles, the XML reader).
A piece of work is a module-level function ``fn(bench, *args)``; ``CpuRunner.run`` hands it the bench of
the place it runs in:

- ``processes=0``: one thread of the HTTP process (the app built in-process, e.g. by the tests). The
  validator's caches are filled lazily and are not meant for concurrent writers, hence one thread. A thread
  cannot be stopped: the time budget and the cancellation below apply in process mode only.
- ``processes=N``: N processes forked from the HTTP process once everything is loaded (they share its
  memory until they write to it), fed from one queue. One queue means requests are served in the order they
  arrive, whichever connection they came on. (With uvicorn's own worker processes each kept the keep-alive
  connections it had accepted: in one measured run one process held 29 of 32 clients, whose requests took
  ~200 ms while the other three clients' took 15 ms.) The event loop also stops competing with the work for
  the interpreter lock.

Arguments and results cross a pipe in process mode, so they are plain data (bytes, dicts, ``Issue``s). Errors
cross as ``ApiError`` (an input error is turned into its 400/422 answer where it happens); anything else is
logged where it happened, with the request id, and crosses as ``WorkFailed`` (a 500, no detail outside).
At most ``MAX_QUEUED`` pieces of work wait or run; beyond, requests get 503 with Retry-After at once rather
than queueing without bound.

Work is stopped, not just left unread, when it runs past ``Settings.validation_budget`` (the request gets 422
too-costly) or when the request it is for is abandoned (its client hung up): its process is killed and a
fresh one forked in its place, while the others carry on. A process that dies on its own (killed, out of
memory) costs only the request it was working for a 503, and is replaced the same way. The pool is written
here rather than taken from ``concurrent.futures``: a ProcessPoolExecutor cannot stop one piece of work, and
it gives up as a whole (every request under way fails, then every process is replaced) when one process dies.
Each worker has a pipe for tasks and one for results, and runs one task at a time; the event loop reads the
results and hands the waiting work, oldest first, to whichever worker is idle, then one piece ahead to each
busy worker (work sent ahead that was not started goes back to the queue when its worker is stopped).
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
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Concatenate, ParamSpec, TypeVar

from casebridge.api.errors import ApiError, input_error
from casebridge.api.logs import request_id
from casebridge.config import DATA_DIR, Settings
from casebridge.definitions.xml import XmlReader
from casebridge.errors import InputError, log_defect
from casebridge.gateway.policy import ForwardingPolicy, load_forwarding_policy
from casebridge.mapping.engine import MappingSet
from casebridge.pipeline import load_mappings, load_validator
from casebridge.validation.inbound import load_inbound_profiles
from casebridge.validation.validator import Validator

P = ParamSpec("P")
T = TypeVar("T")
MAX_QUEUED = 64
_AHEAD = 1  # pieces of work a worker holds beyond the one it runs
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
log = logging.getLogger("casebridge.api")


@dataclass
class Workbench:
    settings: Settings
    validator: Validator
    mappings: MappingSet
    inbound_profiles: dict[str, list[str]]
    forwarding: ForwardingPolicy

    @classmethod
    def build(cls, settings: Settings) -> Workbench:
        """Load everything, or fail (PackageError, MappingError) before the server takes a request."""
        validator = load_validator(settings)
        mappings = load_mappings(settings)
        inbound = load_inbound_profiles(settings.mappings_dir / "inbound-profiles.yaml", validator, root=DATA_DIR)
        forwarding = load_forwarding_policy(
            settings.mappings_dir / "forwarding-policy.yaml",
            validator.is_resource_type,
            root=DATA_DIR,
        )
        return cls(
            settings=settings, validator=validator, mappings=mappings, inbound_profiles=inbound, forwarding=forwarding
        )

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
    # A replacement is forked from the serving process, with uvicorn's handlers and the event loop's wakeup
    # socket: a worker stopped with SIGTERM just ends.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    # Should the HTTP process die without shutting them down (SIGKILL), the workers go with it rather than
    # waiting forever on a pipe nobody feeds (Linux; elsewhere a no-op).
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


def _serve(parent: int, tasks: Connection, results: Connection, theirs: list[Connection]) -> None:
    """A worker process: one task at a time, until its task pipe closes."""
    for conn in theirs:  # the HTTP process's ends of every pipe, this one's included
        conn.close()
    _start_worker(parent)
    while True:
        try:
            fn, args, rid = tasks.recv()
        except EOFError:
            return
        try:
            reply: tuple[bool, Any] = (True, _work(fn, args, rid))
        except (ApiError, WorkFailed) as exc:
            reply = (False, exc)
        try:
            data = ForkingPickler.dumps(reply)
        except Exception as exc:  # noqa: BLE001 - a result that cannot cross the pipe is a defect, answered as one
            log_defect(log, "unhandled", exc)
            data = ForkingPickler.dumps((False, WorkFailed(type(exc).__name__)))
        try:
            results.send_bytes(data)
        except OSError:
            return  # the HTTP process has gone, or dropped this worker


def _pid(_: Workbench | None) -> int:
    return os.getpid()


@dataclass(eq=False)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    rid: str
    future: asyncio.Future[Any]
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    tasks: Connection  # the HTTP process's ends
    results: Connection
    # The work it runs, then at most one piece sent ahead, so that it starts on it as soon as it has answered
    # rather than after a round trip through a busy event loop (without it, throughput fell by a fifth).
    jobs: deque[_Job] = field(default_factory=deque)


def _too_costly(budget: float) -> ApiError:
    return ApiError.of(
        422,
        "too-costly",
        f"validation did not finish within its time budget of {budget:g} s; nothing was forwarded",
    )


_ABANDONED = "work for a client that hung up was stopped with its worker process"


def _stopped() -> ApiError:
    return ApiError.of(503, "transient", "a conversion process stopped; try again", headers={"Retry-After": "1"})


class CpuRunner:
    def __init__(self, bench: Workbench, processes: int = 0) -> None:
        self.bench = bench
        self.processes = processes
        self.budget = bench.settings.validation_budget  # seconds per task (process mode)
        self.queued = 0  # waiting or under way
        self.replaced = 0  # worker processes replaced: died, over budget, or abandoned
        self._thread = None if processes else ThreadPoolExecutor(1, "casebridge-cpu")
        self._workers: list[_Worker] = []
        self._waiting: deque[_Job] = deque()
        self._dying: list[BaseProcess] = []  # killed, not yet reaped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def start(self) -> None:
        """Start the worker processes now (before the server starts its threads and sockets) and wait until
        they answer."""
        self._top_up()
        for worker in self._workers:
            worker.tasks.send((_pid, (), ""))
        for worker in self._workers:
            if not worker.results.poll(60):
                raise RuntimeError("a worker process did not start")
            worker.results.recv()

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    def alive(self) -> int:
        """Worker processes running (1 for the thread)."""
        if not self.processes:
            return 1
        return sum(1 for w in self._workers if w.process.is_alive())

    async def run(self, fn: Callable[Concatenate[Workbench, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        if kwargs:
            raise TypeError("work takes positional arguments only")
        if self.queued >= MAX_QUEUED or self._closed:
            raise ApiError.of(
                503, "transient", "busy: too much validation waiting; try again shortly", headers={"Retry-After": "2"}
            )
        self.queued += 1
        try:
            if self._thread is not None:
                call = functools.partial(_work, fn, args, request_id.get(), self.bench)
                return await asyncio.get_running_loop().run_in_executor(self._thread, call)
            self._attach()
            self._top_up()
            job = _Job(fn, args, request_id.get(), asyncio.get_running_loop().create_future())
            self._waiting.append(job)
            self._dispatch()
            try:
                result: T = await job.future
                return result
            except asyncio.CancelledError:
                self._abandon(job)
                raise
        finally:
            self.queued -= 1

    async def revive(self) -> int:
        """When a worker process has died, replace it now rather than at the cost of the next request (the
        readiness check calls this); the worker processes running."""
        if self.processes and not self._closed:
            self._attach()
            for worker in [w for w in self._workers if not w.process.is_alive()]:
                self._retire(worker, "a worker process stopped; starting a new one")
            self._top_up()
            self._dispatch()
        return self.alive()

    def close(self) -> None:
        """Stop taking work; let the workers finish what they run (the server has answered its requests by now)
        and wait for them to exit, so none outlives the server."""
        self._closed = True
        if self._thread is not None:
            self._thread.shutdown(wait=True, cancel_futures=True)
            return
        for job in self._waiting:
            if not job.future.done() and not job.future.get_loop().is_closed():
                job.future.set_exception(_stopped())
        self._waiting.clear()
        workers, self._workers = self._workers, []
        for job in [j for w in workers for j in w.jobs]:
            if not job.future.done() and not job.future.get_loop().is_closed():
                job.future.set_exception(_stopped())
        for worker in workers:
            self._detach(worker)
            worker.tasks.close()  # its loop ends once its task is done
        for worker in workers:
            worker.process.join(self.budget)
            if worker.process.is_alive():
                worker.process.kill()
            worker.results.close()
            self._dying.append(worker.process)
        for process in list(self._dying):
            self._reap(process)

    # The pool itself: everything below runs on the event loop, between its other callbacks.

    def _spawn(self) -> _Worker:
        global _inherited
        _inherited = self.bench
        context = multiprocessing.get_context("fork")
        task_out, task_in = context.Pipe(duplex=False)
        result_out, result_in = context.Pipe(duplex=False)
        theirs = [c for w in self._workers for c in (w.tasks, w.results)] + [task_in, result_out]
        process = context.Process(
            target=_serve, args=(os.getpid(), task_out, result_in, theirs), name="casebridge-cpu", daemon=True
        )
        process.start()
        task_out.close()  # the worker's ends: a worker that dies closes its results pipe, which says so
        result_in.close()
        worker = _Worker(process, task_in, result_out)
        if self._loop is not None and not self._loop.is_closed():
            self._watch(self._loop, worker)
        return worker

    def _top_up(self) -> None:
        while not self._closed and len(self._workers) < self.processes:
            try:
                self._workers.append(self._spawn())
            except OSError as exc:  # out of memory or processes: the next request or readiness check tries again
                log.error("cannot start a worker process (%s)", type(exc).__name__)
                return

    def _attach(self) -> None:
        """Read results on the running loop (the server's; in tests, each asyncio.run has its own)."""
        loop = asyncio.get_running_loop()
        if loop is self._loop:
            return
        self._loop = loop
        for worker in self._workers:
            self._watch(loop, worker)
        for process in self._dying:
            loop.add_reader(process.sentinel, self._reap, process)

    def _watch(self, loop: asyncio.AbstractEventLoop, worker: _Worker) -> None:
        loop.add_reader(worker.results.fileno(), self._on_result, worker)
        # uvloop makes a watched descriptor non-blocking; a result longer than the pipe holds is read whole.
        os.set_blocking(worker.results.fileno(), True)

    def _detach(self, worker: _Worker) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(worker.results.fileno())

    def _dispatch(self) -> None:
        """Hand waiting work, oldest first, to idle workers, then one piece ahead to busy ones."""
        while self._waiting:
            idle = min((w for w in self._workers if len(w.jobs) <= _AHEAD), key=lambda w: len(w.jobs), default=None)
            if idle is None:
                return
            job = self._waiting.popleft()
            try:
                data = ForkingPickler.dumps((job.fn, job.args, job.rid))
            except Exception as exc:  # noqa: BLE001 - work that cannot cross is a defect of its caller
                job.future.set_exception(exc)
                continue
            try:
                idle.tasks.send_bytes(data)
            except OSError:  # it died before it was given work: a fresh one takes it, this work keeps its place
                self._waiting.appendleft(job)
                self._retire(idle, "a worker process stopped; starting a new one")
                continue
            idle.jobs.append(job)
            if len(idle.jobs) == 1:
                self._clock(idle)

    def _clock(self, worker: _Worker) -> None:
        """The work a worker has just started is given its time budget."""
        job = worker.jobs[0]
        if self._loop is not None:
            job.timer = self._loop.call_later(self.budget, self._overrun, worker, job)

    def _on_result(self, worker: _Worker) -> None:
        try:
            ok, value = worker.results.recv()
        except (EOFError, OSError):  # it died
            self._retire(worker, "a worker process stopped; starting a new one")
            self._dispatch()
            return
        except Exception as exc:  # noqa: BLE001 - an answer that does not read back is a defect, answered as one
            log_defect(log, "unhandled", exc)
            ok, value = False, WorkFailed(type(exc).__name__)
        if worker.jobs:
            job = worker.jobs.popleft()
            if job.timer is not None:
                job.timer.cancel()
            if not job.future.done():
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)
        if worker.jobs:  # it has started on the work sent ahead
            if worker.jobs[0].future.done():  # abandoned while it waited there
                self._retire(worker, _ABANDONED, level=logging.INFO)
            else:
                self._clock(worker)
        self._dispatch()

    def _overrun(self, worker: _Worker, job: _Job) -> None:
        if worker.jobs and worker.jobs[0] is job:
            if not job.future.done():
                job.future.set_exception(_too_costly(self.budget))
            self._retire(worker, f"work ran past its time budget of {self.budget:g} s; its worker process stopped")
            self._dispatch()

    def _abandon(self, job: _Job) -> None:
        """The request is gone (its client hung up, or the server is stopping): its work is dropped, and
        stopped if it is running."""
        if job in self._waiting:
            self._waiting.remove(job)
            return
        worker = next((w for w in self._workers if job in w.jobs), None)
        if worker is not None and worker.jobs[0] is job:
            self._retire(worker, _ABANDONED, level=logging.INFO)
            self._dispatch()
        # Sent ahead, it has not started: it is stopped when it does (see _on_result).

    def _retire(self, worker: _Worker, why: str, level: int = logging.ERROR) -> None:
        """Take a worker out of the pool (killed if it still runs) and fork a fresh one in its place. The work it
        was running, unless answered already, gets 503; work sent ahead goes back to the head of the queue."""
        log.log(level, why)
        self._workers.remove(worker)
        self._detach(worker)
        worker.tasks.close()
        worker.results.close()
        if worker.jobs:
            job = worker.jobs.popleft()
            if job.timer is not None:
                job.timer.cancel()
            if not job.future.done():
                job.future.set_exception(_stopped())
        while worker.jobs:
            job = worker.jobs.pop()
            if not job.future.done():
                self._waiting.appendleft(job)
        if worker.process.is_alive():
            worker.process.kill()
        self._dying.append(worker.process)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.add_reader(worker.process.sentinel, self._reap, worker.process)
        self.replaced += 1
        self._top_up()

    def _reap(self, process: BaseProcess) -> None:
        """Wait for a process that has ended (or been killed), so none is left a zombie."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(process.sentinel)
        process.join()
        process.close()
        self._dying.remove(process)
