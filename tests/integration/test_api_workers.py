"""Where the API's CPU work runs (casebridge.api.workers): the same answers from worker processes as from the
thread, errors that cross the pipe as answers, a bounded queue, and a pool that replaces a killed process.
More in test_cost_bounds.py: the time budget and stopping abandoned work."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from casebridge.api.errors import ApiError
from casebridge.api.routes.cases import convert_to_json
from casebridge.api.workers import CpuRunner, Workbench, WorkFailed
from casebridge.config import Settings
from casebridge.validation.validator import Issue
from tests.conftest import SEED


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Workbench:
    return Workbench.build(Settings(lock_dir=tmp_path_factory.mktemp("locks")))


@pytest.fixture
def processes(bench: Workbench) -> Iterator[CpuRunner]:
    runner = CpuRunner(bench, processes=2)
    runner.start()
    yield runner
    runner.close()


def run(runner: CpuRunner, fn: Any, *args: Any) -> Any:
    return asyncio.run(runner.run(fn, *args))


def _pid(_: Workbench) -> int:
    return os.getpid()


def _slow_pid(_: Workbench, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _refuse(_: Workbench) -> None:
    raise ApiError.of(409, "conflict", "refused on purpose", headers={"Retry-After": "7"})


def _fail(_: Workbench) -> None:
    raise ValueError("Mahanti, 43, right forearm")  # what an unexpected error's text could carry


def _issues(_: Workbench) -> list[Issue]:
    return [Issue("warning", "code-invalid", "a message", "Patient.gender", "http://example.org/profile")]


def _summary(body: bytes) -> list[tuple[str, str]]:
    bundle = orjson.loads(body)
    return [(e["resource"]["resourceType"], e["fullUrl"]) for e in bundle["entry"]]


def test_worker_processes_answer_as_the_thread_does(bench: Workbench, processes: CpuRunner) -> None:
    thread = CpuRunner(bench)
    try:
        data = SEED.read_bytes()
        body, issues = run(processes, convert_to_json, data, "application/yaml")
        same_body, same_issues = run(thread, convert_to_json, data, "application/yaml")
    finally:
        thread.close()
    assert len(_summary(body)) == 38 and _summary(body) == _summary(same_body)
    assert issues == same_issues and issues and all(isinstance(i, Issue) for i in issues)  # the 2 warnings
    assert run(processes, _issues) == _issues(bench)  # compiled Issues cross the pipe with every field

    pids = _worker_pids(processes)
    assert len(pids) == 2 and os.getpid() not in pids  # both processes took work, none of it ran here
    assert processes.alive() == 2 and thread.alive() == 1


def _worker_pids(runner: CpuRunner) -> set[int]:
    """The processes that answer eight overlapping pieces of work."""

    async def many() -> set[int]:
        return set(await asyncio.gather(*(runner.run(_slow_pid, 0.05) for _ in range(8))))

    return asyncio.run(many())


def test_errors_cross_as_answers(processes: CpuRunner) -> None:
    workers = _worker_pids(processes)
    with pytest.raises(ApiError) as refused:
        run(processes, _refuse)
    assert refused.value.status == 409 and refused.value.headers == {"Retry-After": "7"}
    assert refused.value.body["issue"][0]["diagnostics"] == "refused on purpose"
    # Input errors become their answers where they happen: 400 unreadable, 422 not a case.
    for data, status in ((b"{not json", 400), (b"patient: {sex: forearm-swelling}", 422)):
        with pytest.raises(ApiError) as answer:
            run(processes, convert_to_json, data, "application/yaml")
        assert answer.value.status == status and answer.value.body["resourceType"] == "OperationOutcome"
    with pytest.raises(WorkFailed) as failed:
        run(processes, _fail)
    assert str(failed.value) == "ValueError"  # the type only: its text stays in the worker's log
    # Still serving, from the same processes: no error broke the pool.
    assert _worker_pids(processes) == workers and processes.replaced == 0 and processes.alive() == 2


def test_work_beyond_the_queue_bound_is_refused_at_once(
    bench: Workbench, monkeypatch: pytest.MonkeyPatch, processes: CpuRunner
) -> None:
    monkeypatch.setattr("casebridge.api.workers.MAX_QUEUED", 2)

    async def three() -> list[Any]:
        return await asyncio.gather(*(processes.run(_slow_pid, 0.3) for _ in range(3)), return_exceptions=True)

    results = asyncio.run(three())
    refused = [r for r in results if isinstance(r, ApiError)]
    assert len(refused) == 1 and refused[0].status == 503 and refused[0].headers == {"Retry-After": "2"}
    assert processes.queued == 0


def _sockets_of(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue  # closed meanwhile (e.g. the descriptor of this very listing)
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_a_killed_worker_costs_its_request_a_503_then_a_fresh_process_serves(processes: CpuRunner) -> None:
    pids = set(processes.pids())
    # A socket the serving process has open when the worker is replaced (a client connection, say).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()

        async def killed() -> None:
            work = asyncio.ensure_future(processes.run(_slow_pid, 2))
            await asyncio.sleep(0.2)
            os.kill(processes.pids()[0], signal.SIGKILL)  # the first idle worker took it
            with pytest.raises(ApiError) as stopped:
                await work
            assert stopped.value.status == 503 and stopped.value.headers == {"Retry-After": "1"}

        asyncio.run(killed())
        fresh = _worker_pids(processes)
        assert len(fresh) == 2 and len(fresh - pids) == 1 and processes.replaced == 1 and processes.alive() == 2
        inode = f"socket:[{os.fstat(held.fileno()).st_ino}]"
        assert inode in _sockets_of(os.getpid())
        for pid in fresh:
            assert inode not in _sockets_of(pid)  # forked from a serving process, it dropped its sockets


def test_the_readiness_check_replaces_a_dead_worker_before_a_request_finds_it(processes: CpuRunner) -> None:
    pids = {run(processes, _slow_pid, 0.05) for _ in range(6)}
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes.alive() == 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert asyncio.run(processes.revive()) == 2 and processes.replaced == 1
    assert asyncio.run(processes.revive()) == 2 and processes.replaced == 1  # nothing to do: nothing replaced
    assert victim not in {run(processes, _pid) for _ in range(4)}  # no 503 on the way


def test_work_for_a_client_that_hung_up_is_dropped_from_the_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Work queued for clients that gave up still ran, and live clients waited behind it (64 abandoned 2 s
    validations made the next request wait 70 s). Now it is dropped when the client hangs up, and the request ends
    as 499 ('client closed request')."""
    import threading

    import httpx

    from casebridge.api.app import create_app
    from casebridge.api.services import Services
    from tests.loopback import serve

    from .test_api import FHIR_JSON, READ, settings_for

    ran: list[bytes] = []  # the body of each validation that ran, in order
    working, release = threading.Event(), threading.Event()

    def slow(_: Workbench, resource_type: str, data: bytes, *args: Any) -> list[Issue]:
        ran.append(data)
        if len(ran) == 1:  # the first holds the one thread until the five below have given up
            working.set()
            release.wait(30)
        return []

    monkeypatch.setattr("casebridge.api.routes.validation._validate", slow)
    settings = settings_for("http://127.0.0.1:9/fhir", tmp_path)
    services = Services.build(settings)  # one thread does the work
    url_of = "{}/Patient/$validate".format
    body, last = b'{"resourceType": "Patient"}', b'{"resourceType": "Patient", "id": "last"}'
    with serve(create_app(settings, services)) as base:
        first = threading.Thread(
            target=httpx.post,
            args=(url_of(base),),
            kwargs={"content": body, "headers": {**READ, **FHIR_JSON}, "timeout": 30},
        )
        first.start()
        assert working.wait(30), "the first validation never started"
        for _ in range(5):  # queued behind it, then given up
            with pytest.raises(httpx.TimeoutException):
                httpx.post(url_of(base), content=body, headers={**READ, **FHIR_JSON}, timeout=0.1)
        # Each request ends (499) once the server sees its client gone; its work leaves the queue then.
        deadline = time.monotonic() + 30
        while services.runner.queued > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert services.runner.queued == 1, "abandoned work still holds places in the queue"
        release.set()
        first.join()
        answer = httpx.post(url_of(base), content=last, headers={**READ, **FHIR_JSON}, timeout=30)
        assert answer.status_code == 200, answer.text
        # Nobody's abandoned work ran ahead of it: the first validation, then this one, and nothing else.
        assert ran == [body, last] and services.runner.queued == 0
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
    assert ran == [body, last]  # nor after it
    assert 'route="/{resource_type}/$validate",status="499"} 5.0' in metrics
    services.runner.close()
