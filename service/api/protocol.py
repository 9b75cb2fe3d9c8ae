"""uvicorn's HTTP/1.1 protocols, answering requests they cannot parse with an OperationOutcome.

uvicorn answers a malformed request (bad request line, bad header, oversized head) itself, before any ASGI
code runs, with a plain-text 400. Every error of this service is an OperationOutcome, so that one is too.
The service offers no WebSocket (``serve`` runs uvicorn with ``ws="none"``): a request asking to upgrade is
answered as the plain HTTP request it also is, without uvicorn's advice to install a WebSocket library.
``http_protocol()`` picks the implementation uvicorn itself would ("auto": httptools when installed, else h11).
"""

from __future__ import annotations

import asyncio

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.outcomes import FHIR_JSON, error_outcome


def _body(msg: str) -> bytes:
    return orjson.dumps(error_outcome("structure", f"not a readable HTTP request ({msg})"))


def _headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", FHIR_JSON.encode() + b"; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]


class OutcomeH11Protocol(H11Protocol):
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

    class OutcomeHttpToolsProtocol(HttpToolsProtocol):
        def _unsupported_upgrade_warning(self) -> None:
            pass  # no WebSocket here, on purpose (see the module docstring)

        def send_400_response(self, msg: str) -> None:
            body = _body(msg)
            head = b"HTTP/1.1 400 Bad Request\r\n" + b"".join(
                name + b": " + value + b"\r\n" for name, value in [*self.server_state.default_headers, *_headers(body)]
            )
            self.transport.write(head + b"\r\n" + body)
            self.transport.close()


def http_protocol() -> type[asyncio.Protocol]:
    """The protocol class for uvicorn's ``http=`` (module level, so worker processes can import it)."""
    return OutcomeHttpToolsProtocol if HttpToolsProtocol is not None else OutcomeH11Protocol
