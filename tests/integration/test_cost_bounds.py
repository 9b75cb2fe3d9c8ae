"""What one client can cost everyone else, against a real `casebridge serve`: a request head is refused past its
limit before it is parsed (431), work past its time budget is stopped (422 too-costly), and work for a client
that hung up is stopped while it runs; with CpuRunner directly, the same for work that only sleeps."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from casebridge.api.errors import ApiError
from casebridge.api.workers import CpuRunner, Workbench
from casebridge.config import Settings
from tests.conftest import SEED

from .test_api import READ
from .test_serve import Serving, _children, _cpu_ticks

LIMIT = 64 * 1024  # the default of CASEBRIDGE_MAX_HEADER_BYTES
HUGE = 64 * 1024 * 1024


def _exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send a request from a thread while reading the answer, as a client that sees an early answer would: the
    server may answer and close before the request is sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:

        def send() -> None:
            try:
                sock.sendall(request)
            except OSError:
                pass  # the server closed the connection: the rest was never read

        sender = threading.Thread(target=send)
        sender.start()
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        sender.join()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _head(size: int, *, headers: int = 1) -> bytes:
    """A GET /healthz whose head (request line to the blank line) is exactly ``size`` bytes, its extra bytes in
    ``headers`` headers."""
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    room = size - len(start) - 2 - headers * len(b"X-0000: \r\n")
    lines = [b"X-%04d: %s\r\n" % (i, b"a" * (room // headers + (i < room % headers))) for i in range(headers)]
    request = start + b"".join(lines) + b"\r\n"
    assert len(request) == size
    return request


def _rss_kb(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


def test_a_request_head_past_the_limit_is_refused_before_it_is_parsed(fhir_server: str, tmp_path: Path) -> None:
    """One 128 MB header cost 19 s of the event loop's CPU (httptools joins a header's pieces, read by read, with
    bytes +=), and four 60 MB ones kept /healthz waiting 5 s."""
    with Serving(fhir_server, tmp_path, "--workers", "1") as serving:
        pid, port = serving.process.pid, serving.port
        rss = _rss_kb(pid)
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * HUGE + b"\r\n\r\n"
        ticks = _cpu_ticks(pid)
        status, body = _exchange(port, huge)
        assert _cpu_ticks(pid) - ticks < 10, "more than 0.1 s of the server's CPU"  # 100 ticks a second
        assert status == 431, body[:200]
        outcome = orjson.loads(body)
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-long"

        # Four at once, while /healthz is asked: it answers as usual.
        senders = [threading.Thread(target=_exchange, args=(port, huge)) for _ in range(4)]
        for sender in senders:
            sender.start()
        probes = []
        for _ in range(7):
            started = time.monotonic()
            assert _exchange(port, _head(200))[0] == 200
            probes.append(time.monotonic() - started)
        for sender in senders:
            sender.join()
        assert statistics.median(probes) < 0.1, probes
        assert _rss_kb(pid) - rss < 32 * 1024  # kB: nothing of the heads was kept

        # The limit counts the whole head, however many headers make it up; a head at the limit is served.
        assert _exchange(port, _head(LIMIT + 1))[0] == 431
        assert _exchange(port, _head(LIMIT + 1, headers=1000))[0] == 431
        assert _exchange(port, _head(LIMIT))[0] == 200
        assert _exchange(port, _head(LIMIT, headers=600))[0] == 200
        # Keep-alive: each request's head counts from zero.
        keep = _head(LIMIT // 2).replace(b"Connection: close", b"X-Keep-Alive: 1")
        status, body = _exchange(port, keep + keep + _head(LIMIT // 2))
        assert status == 200 and body.count(b"HTTP/1.1 200 OK") == 2, body[-300:]


@pytest.mark.parametrize("implementation", ["httptools", "h11"])
def test_both_protocols_count_the_head(implementation: str) -> None:
    """serve uses httptools when installed, else h11 (which refused heads over 16 KiB with a plain 400)."""
    import uvicorn

    from casebridge.api import protocol

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    base = protocol.OutcomeHttpToolsProtocol if implementation == "httptools" else protocol.OutcomeH11Protocol
    limited = type("Limited", (base,), {"max_header_bytes": LIMIT})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off", http=limited, ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        port = sock.getsockname()[1]
        assert _exchange(port, _head(LIMIT))[0] == 200
        assert _exchange(port, _head(LIMIT, headers=600))[0] == 200
        status, body = _exchange(port, _head(LIMIT + 1))
        assert status == 431 and orjson.loads(body)["issue"][0]["code"] == "too-long"
        assert _exchange(port, _head(LIMIT + 1, headers=1000))[0] == 431
        assert _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (8 << 20))[0] == 431
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _costly() -> bytes:
    """A Patient whose 40,000 contained resources reference each other in a chain (3.6 MB): its validation takes
    tens of seconds or more (the references' check grows faster than their number)."""
    contained = [
        {"resourceType": "Organization", "id": f"o{i}", "name": "x", "partOf": {"reference": f"#o{i + 1}"}}
        for i in range(40_000)
    ]
    return orjson.dumps(
        {"resourceType": "Patient", "contained": contained, "managingOrganization": {"reference": "#o0"}}
    )


VALIDATE = {**READ, "Content-Type": "application/fhir+json"}
CASE = {**READ, "Content-Type": "application/yaml"}


def _live_children(pid: int, expected: int, wait: float = 5.0) -> set[int]:
    """The server's child processes that are running (a killed one stays listed until reaped), once there are
    ``expected`` of them or ``wait`` seconds have passed."""
    deadline = time.monotonic() + wait
    while True:
        live = set()
        for child in _children(pid):
            try:
                state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                live.add(child)
        if len(live) == expected or time.monotonic() > deadline:
            return live
        time.sleep(0.05)


def test_work_past_its_budget_is_stopped_and_only_its_request_fails(fhir_server: str, tmp_path: Path) -> None:
    env = {"CASEBRIDGE_VALIDATION_BUDGET": "1"}
    with Serving(fhir_server, tmp_path, "--workers", "2", env=env) as serving:
        workers = set(_children(serving.process.pid))

        async def both() -> tuple[httpx.Response, list[httpx.Response]]:
            async with httpx.AsyncClient(base_url=serving.base, timeout=60) as client:
                costly = asyncio.ensure_future(client.post("/Patient/$validate", content=_costly(), headers=VALIDATE))
                await asyncio.sleep(0.3)  # under way on one worker; the other serves cases meanwhile
                cases = [await client.post("/cases", content=SEED.read_bytes(), headers=CASE) for _ in range(3)]
                return await costly, cases

        started = time.monotonic()
        refused, cases = asyncio.run(both())
        assert time.monotonic() - started < 10  # not the tens of seconds it would run
        assert [c.status_code for c in cases] == [200] * 3
        assert refused.status_code == 422, refused.text[:300]
        issue = refused.json()["issue"][0]
        assert issue["code"] == "too-costly" and "time budget of 1 s" in issue["diagnostics"], issue
        now = _live_children(serving.process.pid, 2)
        assert len(now) == 2 and len(now & workers) == 1  # the one that ran it was replaced, the other kept
        assert serving.metric("casebridge_cpu_worker_pools_replaced") == 1


def test_abandoned_costly_validations_do_not_hold_later_requests(fhir_server: str, tmp_path: Path) -> None:
    """Two costly validations whose clients gave up after 1.5 s ran on (~60 s each) and held every POST /cases.
    Their work is now stopped when the client hangs up, well before the time budget (10 s here) would stop it."""
    with Serving(fhir_server, tmp_path, "--workers", "2", env={"CASEBRIDGE_VALIDATION_BUDGET": "10"}) as serving:
        workers = set(_children(serving.process.pid))
        body = _costly()

        def give_up() -> None:
            with pytest.raises(httpx.TimeoutException):
                httpx.post(f"{serving.base}/Patient/$validate", content=body, headers=VALIDATE, timeout=1)

        quitters = [threading.Thread(target=give_up) for _ in range(2)]
        for quitter in quitters:
            quitter.start()
        for quitter in quitters:
            quitter.join()
        started = time.monotonic()
        answer = httpx.post(f"{serving.base}/cases", content=SEED.read_bytes(), headers=CASE, timeout=60)
        waited = time.monotonic() - started
        assert answer.status_code == 200 and waited < 4, waited
        assert not set(_children(serving.process.pid)) & workers  # both stopped, and replaced
        metrics = httpx.get(f"{serving.base}/metrics", timeout=10).text
        assert 'route="/{resource_type}/$validate",status="499"} 2.0' in metrics
    assert "work for a client that hung up was stopped with its worker process" in serving.stderr


# CpuRunner directly, with work that only sleeps.


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Workbench:
    settings = Settings(lock_dir=tmp_path_factory.mktemp("locks"), validation_budget=0.5)
    return Workbench.build(settings)


@pytest.fixture
def runner(bench: Workbench) -> Iterator[CpuRunner]:
    runner = CpuRunner(bench, processes=2)
    runner.start()
    yield runner
    runner.close()


def _nap(_: Workbench, seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _gone(pid: int, wait: float = 5.0) -> bool:
    """Whether the process has ended (a zombie, or reaped), within ``wait`` seconds: a SIGKILL takes effect when
    the kernel next schedules the process, which on a loaded machine is not at once."""
    deadline = time.monotonic() + wait
    while True:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def test_the_budget_stops_the_work_and_spares_the_others(runner: CpuRunner) -> None:
    assert runner.budget == 0.5  # from the settings
    pids = set(runner.pids())

    async def go() -> list[Any]:
        slow = asyncio.ensure_future(runner.run(_nap, 30))
        await asyncio.sleep(0.1)
        quick = [await runner.run(_nap, 0.2) for _ in range(4)]  # meanwhile, one after another
        return [await asyncio.gather(slow, return_exceptions=True), quick]

    started = time.monotonic()
    [[stopped], quick] = asyncio.run(go())
    assert time.monotonic() - started < 5
    assert isinstance(stopped, ApiError) and stopped.status == 422, stopped
    assert stopped.body["issue"][0]["code"] == "too-costly"
    assert "budget of 0.5 s" in stopped.body["issue"][0]["diagnostics"]
    [victim] = pids - set(quick)  # the quick work all ran on the other worker
    assert _gone(victim) and runner.replaced == 1 and runner.alive() == 2 and victim not in runner.pids()
    assert runner.queued == 0


def test_running_work_whose_request_is_abandoned_is_stopped(runner: CpuRunner) -> None:
    pids = set(runner.pids())

    async def go() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runner.run(_nap, 0.45), 0.2)  # under its budget: only the caller gave up

    asyncio.run(go())
    [victim] = pids - set(runner.pids())
    assert _gone(victim) and runner.replaced == 1 and runner.alive() == 2 and runner.queued == 0
    assert asyncio.run(runner.run(_nap, 0)) in runner.pids()


def test_work_sent_ahead_and_abandoned_is_stopped_when_it_starts(runner: CpuRunner) -> None:
    """Each worker holds one piece of work beyond the one it runs; given up there, it never runs to its end."""
    ran: list[Any] = []

    async def go() -> None:
        work = [asyncio.ensure_future(runner.run(_nap, 0.3)) for _ in range(4)]  # the third waits at the first worker
        await asyncio.sleep(0.1)
        work[2].cancel()
        ran.extend(await asyncio.gather(*work, return_exceptions=True))

    pids = runner.pids()
    asyncio.run(go())
    assert isinstance(ran[2], asyncio.CancelledError) and all(isinstance(r, int) for r in ran[:2] + ran[3:])
    assert ran[0] == pids[0] and _gone(pids[0]) and runner.replaced == 1 and runner.alive() == 2
    assert runner.queued == 0


def test_a_killed_worker_costs_only_its_own_request_a_503(runner: CpuRunner) -> None:
    async def go() -> list[Any]:
        work = [asyncio.ensure_future(runner.run(_nap, 0.4)) for _ in range(4)]  # two under way, two waiting
        await asyncio.sleep(0.1)
        os.kill(runner.pids()[0], signal.SIGKILL)
        return await asyncio.gather(*work, return_exceptions=True)

    results = asyncio.run(go())
    failed = [r for r in results if isinstance(r, ApiError)]
    assert len(failed) == 1 and failed[0].status == 503 and failed[0].headers == {"Retry-After": "1"}
    assert all(isinstance(r, int) for r in results if r not in failed)
    assert runner.replaced == 1 and runner.alive() == 2


def test_the_budget_is_a_setting() -> None:
    assert Settings().validation_budget == 20 and Settings().max_header_bytes == LIMIT
    assert Settings(validation_budget="2.5", max_header_bytes="8192").validation_budget == 2.5
