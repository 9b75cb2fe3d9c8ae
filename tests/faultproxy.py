"""A fault-injecting HTTP proxy on loopback, for the ingestion fault tests.

It sits in front of a FHIR server (the embedded one) and, per request, passes it on or fails it the way
networks and servers fail: refusing connections (down), answering 500, answering 429 with Retry-After,
answering later than the client waits (the request still reaches the server), or cutting the connection
after the server has done the work (the client never learns that the transaction went in). Faults are drawn
from a seeded random generator, so a scenario is the same on every run. One request per connection
(``Connection: close``), which keeps the proxy a plain byte pipe.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field

CANNED = {
    500: (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/fhir+json\r\nConnection: close\r\n"
        b'Content-Length: 98\r\n\r\n{"resourceType":"OperationOutcome","issue":[{"severity":"fatal","code":"exception"'
        b',"diagnostics":"x"}]}'
    ),
    429: (
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/fhir+json\r\n"
        b'Connection: close\r\nContent-Length: 93\r\n\r\n{"resourceType":"OperationOutcome","issue":[{"severity":'
        b'"error","code":"throttled","diagnostics":"x"}]}'
    ),
}


@dataclass
class Faults:
    """What to do to each request: probabilities per fault, or the server down altogether."""

    down: bool = False  # refuse every connection
    error_500: float = 0.0
    throttle_429: float = 0.0
    slow: float = 0.0  # answer after `slow_seconds` (the request reaches the server)
    slow_seconds: float = 2.0
    reset_after: float = 0.0  # cut the connection once the server has answered
    only_writes: bool = True  # faults hit POST/PUT only (reads pass), so the job's own checks stay simple
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)


class FaultProxy:
    def __init__(self, upstream_port: int, faults: Faults | None = None):
        self.upstream_port = upstream_port
        self.faults = faults or Faults()
        self._random = random.Random(self.faults.seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._server.close()

    def _draw(self, method: str) -> str:
        f = self.faults
        if f.down:
            return "down"
        if f.only_writes and method in ("GET", "HEAD"):
            return "pass"
        roll = self._random.random()
        for name, share in (("500", f.error_500), ("429", f.throttle_429), ("slow", f.slow), ("reset", f.reset_after)):
            if roll < share:
                return name
            roll -= share
        return "pass"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        method = lines[0].split(" ", 1)[0]
        length = 0
        kept = [lines[0]]
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            if name.strip().lower() in ("connection", "keep-alive"):
                continue
            kept.append(line)
        try:
            body = await reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        fault = self._draw(method)
        self.faults.injected[fault] += 1
        if fault == "down":
            writer.transport.abort()  # a reset: as if nothing listened
            return
        if fault in ("500", "429"):
            writer.write(CANNED[int(fault)])
            await self._close(writer)
            return
        request = ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + body
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            up_writer.write(request)
            await up_writer.drain()
            response = await up_reader.read()  # until the server closes: Connection: close
            up_writer.close()
        except OSError:
            writer.transport.abort()  # the server is not there (restarting): a reset
            return
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_seconds)
        if fault == "reset":
            writer.transport.abort()  # the server did the work; the client never hears of it
            return
        writer.write(response)
        await self._close(writer)

    @staticmethod
    async def _close(writer: asyncio.StreamWriter) -> None:
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()
