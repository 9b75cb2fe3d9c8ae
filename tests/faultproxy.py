"""A fault-injecting HTTP proxy on loopback, for the ingestion fault tests.

It sits in front of a FHIR server (the embedded one) and, per request, passes it on or fails it the way
networks and servers fail:

- ``down``: every connection reset (as if nothing listened);
- ``500`` / ``429`` (with Retry-After): answered by the proxy, nothing forwarded;
- ``422`` (``refuse``): the first ``refuse_attempts`` sends of the named cases answered with a 422
  OperationOutcome by the proxy, nothing forwarded (the server refusing the content: the case fails at once);
- ``slow``: answered ``slow_seconds`` late (the request reaches the server, which commits it);
- ``hold``: the first send of the named cases held ``hold_seconds`` before it is forwarded (a request the network
  delivers late: the client has given up on it, retried, and may have pushed the patient's next case meanwhile);
- ``reset-after``: the connection cut once the server has answered (it went in; the client never hears);
- ``reset-before``: the connection cut partway through reading the request body (nothing forwarded);
- ``idle_close``: after an answer, a kept-alive client connection closed (FIN) or reset (RST) while idle,
  a few milliseconds later (the client's pool must notice, or retry a request that raced the close);
- ``stop_listening``/``start_listening``: the listening socket closed (connections refused, open ones
  reset) and reopened on the same port, for a window mid-run.

Client connections are kept alive (HTTP/1.1); each forwarded request opens its own upstream connection
(``Connection: close``), and the answer is re-framed with a Content-Length for the client.

Every transaction POST (``POST [base]``) is recorded as a ``Send``: which case it carried (the Bundle's
identifier), what the proxy did to it, whether the upstream committed it, and whether the client received
that answer; and, on one clock of the proxy's events, when it was forwarded and when the upstream's answer
(or the end of the upstream connection) came back, so that two transactions' effects on the server can be
ordered (one forwarded after the other's answer came back went in after it). Fault draws for a transaction
are seeded by (seed, case, attempt number), so the same attempt of the same case meets the same fault on
every run whatever the scheduling; the other draws (GETs, idle closes) come from one generator seeded with
``seed``.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


def _canned(status: str, code: str, extra: str = "") -> bytes:
    """A whole answer of the proxy's own: an OperationOutcome, its Content-Length counted."""
    body = json.dumps(
        {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": "x"}]},
        separators=(",", ":"),
    ).encode()
    head = f"HTTP/1.1 {status}\r\n{extra}Content-Type: application/fhir+json\r\nConnection: close\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


CANNED = {
    500: _canned("500 Internal Server Error", "exception"),
    429: _canned("429 Too Many Requests", "throttled", "Retry-After: 1\r\n"),
    422: _canned("422 Unprocessable Entity", "invalid"),
}
# The Bundle's own identifier comes before its entries (and their identifiers) in the body.
_BUNDLE_ID = re.compile(rb'^\s*\{[^\[]*?"identifier"\s*:\s*\{[^{}]*?"value"\s*:\s*"([^"\\]+)"')
_PEEK = 4096  # bytes of a body read before its fault is drawn (enough to name the case)
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}
UPSTREAM_TIMEOUT = 120.0


@dataclass
class Faults:
    """What to do to each request: probabilities per fault, or the server down altogether."""

    down: bool = False  # reset every connection
    error_500: float = 0.0
    throttle_429: float = 0.0
    slow: float = 0.0  # answer after `slow_seconds` (the request reaches the server)
    slow_seconds: float = 2.0
    reset_after: float = 0.0  # cut the connection once the server has answered (it went in)
    reset_before: float = 0.0  # cut the connection partway through the request body (it did not go in)
    idle_close: float = 0.0  # after an answer, close (or reset) the kept-alive connection while idle
    idle_close_within: float = 0.05  # seconds after the answer
    refuse: frozenset[str] = frozenset()  # cases whose first `refuse_attempts` sends are answered 422
    refuse_attempts: int = 1
    hold: frozenset[str] = frozenset()  # cases whose first send is held `hold_seconds` before it is forwarded
    hold_seconds: float = 4.0
    only_writes: bool = True  # faults hit POST/PUT only (reads pass), so the job's own checks stay simple
    # The client's read timeout, when the test shortened it: an answer later than that did not reach it.
    client_timeout: float | None = None
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)


@dataclass
class Send:
    """One transaction POST that reached the proxy."""

    run: int  # the proxy's run label when it arrived (the test starts a new one per job process)
    case: str | None  # the Bundle's identifier value (the case id); None if it could not be read
    attempt: int  # 1 for the first time this proxy saw this case, 2 for the second...
    # What happened to it: pass, or a fault the proxy drew (down, 500, 429, 422, slow, reset-after, reset-before), or
    # one that befell it (cut: stopped listening, late..., idle-reset after the answer).
    fault: str
    upstream: str = "not sent"  # not sent | committed (2xx) | refused (an error status) | unknown (no answer)
    # Whether the client got the upstream's answer: True, False, or None (cannot tell: e.g. answered at about
    # the client's timeout, or the connection was reset soon after the answer was written).
    delivered: bool | None = False
    seconds: float = 0.0  # from the request's head to the answer written (or the cut)
    # On the proxy's event clock (``FaultProxy.tick``): when it was written to the upstream (None: never
    # forwarded), and when the upstream's answer, or the end of its connection, came back (None: not yet).
    forwarded: int | None = None
    settled: int | None = None

    def describe(self) -> str:
        got = {True: "answered", False: "no answer", None: "answer maybe lost"}[self.delivered]
        return f"#{self.attempt} run {self.run}: {self.fault}, upstream {self.upstream}, {got}"


class FaultProxy:
    def __init__(self, upstream_port: int, faults: Faults | None = None, *, base_path: str = "/fhir"):
        self.upstream_port = upstream_port
        self.faults = faults or Faults()
        self.base_path = base_path.rstrip("/")
        self._random = random.Random(self.faults.seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._current: dict[asyncio.StreamWriter, Send] = {}  # the transaction each connection is serving
        self._attempts: Counter[str] = Counter()
        self.port = 0
        self.run = 0
        self.sends: list[Send] = []  # every transaction POST, in arrival order
        self.requests: Counter[tuple[int, str]] = Counter()  # (run, method) -> requests that reached the proxy
        self.connections = 0  # client connections accepted
        self._clock = 0  # the event clock: only the proxy's event loop advances it
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def begin_run(self) -> int:
        """Label the requests from now on as a new run (call before starting a job process)."""
        self.run += 1
        return self.run

    def tick(self) -> int:
        """The next instant of the proxy's event clock (one event loop: no two events share one)."""
        self._clock += 1
        return self._clock

    def sends_of(self, run: int) -> list[Send]:
        return [s for s in list(self.sends) if s.run == run]

    def writes_of(self, run: int) -> int:
        """Requests other than GET/HEAD that reached the proxy during ``run``."""
        return sum(n for (r, method), n in list(self.requests.items()) if r == run and method not in ("GET", "HEAD"))

    def stop_listening(self) -> None:
        """Close the listening socket (new connections are refused) and reset every open client connection."""
        asyncio.run_coroutine_threadsafe(self._close_all(), self._loop).result(10)
        self.faults.injected["stopped listening"] += 1

    def start_listening(self) -> None:
        """Listen again, on the same port."""
        asyncio.run_coroutine_threadsafe(self._listen(self.port), self._loop).result(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._listen(0))
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._clients):
            send = self._current.get(writer)
            if send is not None and send.fault == "pass":
                send.fault = "cut: stopped listening"
            writer.transport.abort()
        await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        await self._close_all()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _draw(self, method: str, case: str | None) -> tuple[str, int]:
        """The fault for this request, and the attempt number of its case."""
        f = self.faults
        attempt = 0
        rng = self._random
        if case is not None:
            self._attempts[case] += 1
            attempt = self._attempts[case]
            rng = random.Random(f"{f.seed}|{case}|{attempt}")
        if f.down:
            return "down", attempt
        if case is not None and case in f.refuse and attempt <= f.refuse_attempts:
            return "422", attempt
        if f.only_writes and method in ("GET", "HEAD"):
            return "pass", attempt
        roll = rng.random()
        for name, share in (
            ("500", f.error_500),
            ("429", f.throttle_429),
            ("slow", f.slow),
            ("reset-after", f.reset_after),
            ("reset-before", f.reset_before),
        ):
            if roll < share:
                return name, attempt
            roll -= share
        return "pass", attempt

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just before the listening socket was closed
            writer.transport.abort()
            return
        self.connections += 1
        self._clients.add(writer)
        try:
            while True:
                try:
                    keep_alive, last = await self._one(reader, writer)
                finally:
                    self._current.pop(writer, None)
                if not keep_alive:
                    return
                if self._random.random() >= self.faults.idle_close:
                    continue
                # Idle, in the client's pool: closed a moment later, as a server's keep-alive timeout would.
                await asyncio.sleep(self._random.uniform(0, self.faults.idle_close_within))
                if self._random.random() < 0.5:
                    self.faults.injected["idle-close"] += 1
                    writer.close()
                else:
                    self.faults.injected["idle-reset"] += 1
                    if last is not None and last.delivered is True:
                        last.delivered = None  # a reset may discard an answer the client has not read yet
                        if last.fault == "pass":
                            last.fault = "idle-reset after the answer"
                    writer.transport.abort()
                return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.transport.abort()
        finally:
            self._clients.discard(writer)
            if not writer.transport.is_closing():
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[bool, Send | None]:
        """Serve one request of a client connection: whether to keep the connection, and its Send if any."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False, None  # the client closed its connection between requests
        started = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rpartition(" ")[0]
        self.requests[(self.run, method)] += 1
        length = 0
        keep_alive = True
        kept = [lines[0]]
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            lowered = name.strip().lower()
            if lowered == "content-length":
                length = int(value.strip())
            if lowered == "connection" and "close" in value.lower():
                keep_alive = False
            if lowered in ("connection", "keep-alive", "proxy-connection"):
                continue
            kept.append(line)
        transaction = method == "POST" and target.split("?")[0].rstrip("/") == self.base_path
        first = await reader.readexactly(min(length, _PEEK)) if length else b""
        case = _case_of(first) if transaction else None
        fault, attempt = self._draw(method, case)
        self.faults.injected[fault] += 1
        send = Send(self.run, case, attempt, fault) if transaction else None
        if send is not None:
            self.sends.append(send)
            self._current[writer] = send

        def done(upstream: str, delivered: bool | None) -> None:
            if send is not None:
                send.upstream, send.delivered = upstream, delivered
                send.seconds = time.monotonic() - started

        if fault == "reset-before":
            # Part of the body read (the client may still be writing the rest), then a reset: nothing forwarded.
            more = max(0, length // 2 - len(first))
            if more:
                await reader.readexactly(more)
            done("not sent", False)
            writer.transport.abort()
            return False, send
        body = first + (await reader.readexactly(length - len(first)) if length > len(first) else b"")
        if send is not None and send.case is None:
            send.case = _case_of_document(body)
        if fault == "down":
            done("not sent", False)
            writer.transport.abort()  # a reset: as if nothing listened
            return False, send
        if fault in ("500", "429", "422"):
            done("not sent", False)
            writer.write(CANNED[int(fault)])
            await _close(writer)
            return False, send
        request = ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1") + body
        if send is not None and send.case in self.faults.hold and send.attempt == 1:
            send.fault = "held"
            self.faults.injected["held"] += 1
            await asyncio.sleep(self.faults.hold_seconds)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            done("not sent", False)
            writer.transport.abort()  # the server is not there (restarting): a reset
            return False, send
        if send is not None:
            send.forwarded = self.tick()
        try:
            up_writer.write(request)
            await up_writer.drain()
            raw = await asyncio.wait_for(up_reader.read(), UPSTREAM_TIMEOUT)  # until the server closes
        except (OSError, TimeoutError):
            raw = b""
        finally:
            up_writer.transport.abort()
            if send is not None:
                send.settled = self.tick()
        answer = _reframe(raw, method, keep_alive)
        if answer is None:
            done("unknown", False)  # sent, but no complete answer: it may or may not have gone in
            writer.transport.abort()
            return False, send
        response, status = answer
        upstream = "committed" if 200 <= status < 300 else "refused"
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_seconds)
        if fault == "reset-after":
            done(upstream, False)
            writer.transport.abort()  # the server did the work; the client never hears of it
            return False, send
        if writer.transport.is_closing() or reader.at_eof():
            if send is not None and send.fault == "pass":
                send.fault = "cut" if writer.transport.is_closing() else "late: the client gave up"
            done(upstream, False)  # the client gave up (timed out) or was cut off meanwhile
            writer.transport.abort()
            return False, send
        writer.write(response)
        try:
            await writer.drain()
        except ConnectionError:
            done(upstream, False)
            return False, send
        in_time = self._in_time(time.monotonic() - started)
        if send is not None and send.fault == "pass" and in_time is not True:
            send.fault = "late: answered at about the client's timeout or after"
        done(upstream, in_time)
        if not keep_alive:
            await _close(writer)
        return keep_alive, send

    def _in_time(self, seconds: float) -> bool | None:
        limit = self.faults.client_timeout
        if limit is None or seconds < 0.7 * limit:
            return True
        return False if seconds > 1.3 * limit else None


def _case_of(start: bytes) -> str | None:
    found = _BUNDLE_ID.match(start)
    return found.group(1).decode() if found else None


def _case_of_document(body: bytes) -> str | None:
    """The Bundle's identifier, else its Patient's reference, from a whole body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    identifier = doc.get("identifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        return str(identifier["value"])
    for entry in doc.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == "Patient":
            return f"Patient/{resource.get('id')}"
    return None


def _reframe(raw: bytes, method: str, keep_alive: bool) -> tuple[bytes, int] | None:
    """The upstream's whole answer re-framed for a kept-alive client (Content-Length), with its status;
    None when the answer is incomplete."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return None
    headers = []
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        lowered = name.strip().lower()
        if lowered == "content-length":
            length = int(value.strip())
        elif lowered == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        if lowered not in _HOP:
            headers.append(line)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif chunked:
        decoded = _dechunk(body)
        if decoded is None:
            return None
        body = decoded
    elif length is not None:
        if len(body) < length:
            return None
        body = body[:length]
    headers.append(f"Content-Length: {len(body)}")
    headers.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join([lines[0], *headers]) + "\r\n\r\n").encode("latin-1") + body, status


def _dechunk(data: bytes) -> bytes | None:
    out = bytearray()
    at = 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return None
        try:
            size = int(data[at:end].split(b";")[0], 16)
        except ValueError:
            return None
        at = end + 2
        if size == 0:
            return bytes(out)
        if len(data) < at + size + 2:
            return None
        out += data[at : at + size]
        at += size + 2


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()
