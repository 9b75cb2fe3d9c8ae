"""uvicorn's HTTP/1.1 protocols, answering requests they cannot parse with an OperationOutcome, and refusing
request heads past a size limit before parsing them.

uvicorn answers a malformed request (bad request line, bad header, oversized head) itself, before any ASGI
code runs, with a plain-text 400. Every error of this service is an OperationOutcome, so that one is too.
The service offers no WebSocket (``serve`` runs uvicorn with ``ws="none"``): a request asking to upgrade is
answered as the plain HTTP request it also is, without uvicorn's advice to install a WebSocket library.
``http_protocol()`` picks the implementation uvicorn itself would ("auto": httptools when installed, else h11).

The head limit (``Settings.max_header_bytes``): httptools sets no limit of its own, and it joins the pieces of a
header that arrive in successive reads with ``bytes +=`` (as uvicorn does with the URL), so every read of up to
256 KiB copies all of the header read so far: the cost grows with the square of its size (one 128 MB header
took 19 s of CPU on the one event loop, which then answered nobody else). The bytes of a head are counted here
before the parser sees them, and it is given no more than the limit: past it, 431 with an OperationOutcome and
the connection is closed, the rest unread. h11 has a limit (16 KiB by default, then a plain 400); it is set to
the same limit, which this count reaches first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from casebridge.api.outcomes import FHIR_JSON, error_outcome

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
log = logging.getLogger("casebridge.api")


def _body(msg: str) -> bytes:
    return orjson.dumps(error_outcome("structure", f"not a readable HTTP request ({msg})"))


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", FHIR_JSON.encode() + b"; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]


class _HeadLimit(asyncio.Protocol):
    """Counts the bytes of each request head before the parser sees them (see the module docstring)."""

    max_header_bytes = DEFAULT_MAX_HEADER_BYTES
    transport: asyncio.Transport
    _head_bytes = 0  # of the head being read

    def _reading_head(self) -> bool:
        raise NotImplementedError

    def _cycle(self) -> object:
        """The request being served: a new one once a head is complete."""
        raise NotImplementedError

    def _default_headers(self) -> list[tuple[bytes, bytes]]:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        while True:
            if not self._reading_head():
                super().data_received(data)  # a body: counted against max_body_bytes by the app
                return
            room = self.max_header_bytes - self._head_bytes
            part = data[:room] if len(data) > room else data
            cycle = self._cycle()
            self._head_bytes += len(part)
            if part:
                super().data_received(part)
            if self._cycle() is not cycle:
                self._head_bytes = 0  # the head was complete: the next request's counts from zero
            if len(part) == len(data) or self.transport.is_closing():
                return
            data = data[len(part) :]
            if self._cycle() is cycle:  # the head goes on past the limit
                self._refuse_head()
                return

    def _refuse_head(self) -> None:
        log.warning("request head over %d bytes refused (431)", self.max_header_bytes)
        body = orjson.dumps(
            error_outcome(
                "too-long",
                f"the request line and headers are longer than the {self.max_header_bytes} bytes this server reads",
            )
        )
        head = b"HTTP/1.1 431 Request Header Fields Too Large\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in [*self._default_headers(), *_headers(body)]
        )
        self.transport.write(head + b"\r\n" + body)
        self.transport.close()  # what else the client sends is never read


class OutcomeH11Protocol(_HeadLimit, H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # h11's own limit on a head (uvicorn's default 16 KiB, then a 400): the same as this one's.
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header_bytes)

    def _reading_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _cycle(self) -> object:
        return self.cycle

    def _default_headers(self) -> list[tuple[bytes, bytes]]:
        return list(self.server_state.default_headers)

    def _unsupported_upgrade_warning(self) -> None:
        pass  # no WebSocket here, on purpose (see the module docstring)

    def send_400_response(self, msg: str) -> None:
        body = _body(msg)
        for event in (
            h11.Response(status_code=400, headers=_headers(body), reason=b"Bad Request"),
            h11.Data(data=body),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools not installed: uvicorn uses h11
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

if HttpToolsProtocol is not None:

    class OutcomeHttpToolsProtocol(_HeadLimit, HttpToolsProtocol):
        _in_head = True  # between requests, or reading one's head

        def _reading_head(self) -> bool:
            return self._in_head

        def _cycle(self) -> object:
            return self.cycle

        def _default_headers(self) -> list[tuple[bytes, bytes]]:
            return list(self.server_state.default_headers)

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._in_head = True
            super().on_message_complete()

        def _unsupported_upgrade_warning(self) -> None:
            pass  # no WebSocket here, on purpose (see the module docstring)

        def send_400_response(self, msg: str) -> None:
            body = _body(msg)
            head = b"HTTP/1.1 400 Bad Request\r\n" + b"".join(
                name + b": " + value + b"\r\n" for name, value in [*self.server_state.default_headers, *_headers(body)]
            )
            self.transport.write(head + b"\r\n" + body)
            self.transport.close()


def http_protocol(max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's ``http=``, refusing request heads over ``max_header_bytes``."""
    base: type[_HeadLimit] = OutcomeHttpToolsProtocol if HttpToolsProtocol is not None else OutcomeH11Protocol
    return type(base.__name__, (base,), {"max_header_bytes": max_header_bytes})
