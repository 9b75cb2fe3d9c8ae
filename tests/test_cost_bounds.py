"""What one client can cost everyone else, against a real `casebridge serve`: a request head is refused past its
limit before it is parsed (431)."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.config import Settings

from .test_serve import Serving, _cpu_ticks

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

    from service.api import protocol

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


def test_the_limit_is_a_setting() -> None:
    assert Settings().max_header_bytes == LIMIT and Settings(max_header_bytes="8192").max_header_bytes == 8192
