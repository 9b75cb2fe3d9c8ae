"""The FHIR client against a loopback server that answers as HAPI FHIR does, over real HTTP (and HTTPS).

What the server imitates, read from hapi-fhir's sources:

- an update whose If-Match names a version that is not the current one: 409 (not R4's 412), an OperationOutcome
  with one issue, severity ``error``, code ``processing``, diagnostics ``HAPI-0989: Trying to update
  Patient/p1/_history/1 but this is not the current version`` (BaseStorageResourceDao.doUpdateForUpdateOrPatch,
  ResourceVersionConflictException is 409, ExceptionHandlingInterceptor builds the issue); in a transaction the
  message is prefixed with the transaction's own code, ``HAPI-0550: ``;
- two writers at once: 409 ``HAPI-0550: HAPI-0823: The operation has failed with a version constraint failure...``
  (HapiTransactionService), which is transient and must stay a Conflict;
- paging: ``link[next]`` is ``[address]?_getpages=<id>&_getpagesoffset=<n>&_count=<n>&_bundletype=searchset``, the
  address built from the incoming request unless ``server_address`` is set, so behind a proxy that terminates TLS
  (or on the public test server) the scheme of the links need not be the one the client used.

The HTTP-and-HTTPS server is one port in front of two uvicorn servers (plain and TLS, one app): it looks at the first
byte of each connection (a TLS handshake starts with 0x16) and relays it to the right one, so a next link can move
from http to https on the same host and port as it would behind a real proxy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from casebridge.errors import Conflict, FhirProtocolError, PreconditionFailed
from casebridge.fhir.client import AsyncFhirClient, RetryPolicy
from casebridge.fhir.search import Search
from casebridge.ingest.job import TRANSIENT
from tests.loopback import serve

FAST = RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.01, wait_jitter=0.0)
HAPI_JSON = "application/fhir+json;charset=utf-8"  # what HAPI's Content-Type says


# -- the HAPI-like server -----------------------------------------------------------------------------------


def hapi_outcome(diagnostics: str) -> dict[str, Any]:
    # ExceptionHandlingInterceptor.populateDetails: one issue, error, processing, the exception's message.
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}],
    }


def fhir(doc: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=HAPI_JSON, headers=headers)


@dataclass
class Hapi:
    """The state of the HAPI-like server: resources with versions, and how it pages."""

    versions: dict[str, int] = field(default_factory=dict)  # "Patient/p1" -> current version
    link_base: str = ""  # the address in next links; "" = built from the request, as IncomingRequestAddressStrategy
    race_next_write: bool = False  # the next write loses a race with another writer (HAPI-0823)
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (scheme, method, path?query) of each request
    pages: int = 3

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/fhir", self.system, methods=["GET", "POST"]),
                Route("/fhir/{type}", self.search, methods=["GET"]),
                Route("/fhir/{type}/{id}", self.update, methods=["PUT"]),
            ]
        )

    def note(self, request: Request) -> None:
        query = f"?{request.url.query}" if request.url.query else ""
        self.seen.append((request.url.scheme, request.method, request.url.path + query))

    def race(self) -> Response | None:
        if not self.race_next_write:
            return None
        self.race_next_write = False
        return fhir(
            hapi_outcome(
                "HAPI-0550: HAPI-0823: The operation has failed with a version constraint failure. This generally "
                "means that two clients/threads were trying to update the same resource at the same time, and this "
                "request was chosen as the failing request."
            ),
            409,
        )

    def write(self, key: str, resource: dict[str, Any], etag: str | None, prefix: str = "") -> Response:
        # MethodUtil.parseETagValue: W/"3" -> 3
        if_match = etag.removeprefix("W/").strip('"') if etag else None
        current = self.versions.get(key)
        if if_match is not None and current is not None and if_match != str(current):
            return fhir(
                hapi_outcome(
                    f"{prefix}HAPI-0989: Trying to update {key}/_history/{if_match} but this is not the current version"
                ),
                409,
            )
        version = (current or 0) + 1
        self.versions[key] = version
        stored = {**resource, "meta": {"versionId": str(version), "lastUpdated": dt.datetime.now(dt.UTC).isoformat()}}
        return fhir(stored, 201 if current is None else 200, {"ETag": f'W/"{version}"'})

    async def update(self, request: Request) -> Response:
        self.note(request)
        if (lost := self.race()) is not None:
            return lost
        key = f"{request.path_params['type']}/{request.path_params['id']}"
        return self.write(key, orjson.loads(await request.body()), request.headers.get("if-match"))

    async def system(self, request: Request) -> Response:
        self.note(request)
        if request.method == "GET":
            return self.page(request, int(request.query_params["_getpagesoffset"]))
        bundle = orjson.loads(await request.body())
        entries = []
        for entry in bundle["entry"]:
            req = entry["request"]
            answer = self.write(req["url"], entry["resource"], req.get("ifMatch"), prefix="HAPI-0550: ")
            if answer.status_code >= 400:
                return answer  # a transaction is all or nothing
            entries.append({"response": {"status": f"{answer.status_code}"}})
        return fhir({"resourceType": "Bundle", "type": "transaction-response", "entry": entries})

    async def search(self, request: Request) -> Response:
        self.note(request)
        return self.page(request, 0)

    def page(self, request: Request, offset: int) -> Response:
        address = self.link_base or str(request.base_url).rstrip("/") + "/fhir"
        links = [{"relation": "self", "url": str(request.url)}]
        if offset + 1 < self.pages:
            links.append(
                {
                    "relation": "next",
                    "url": f"{address}?_getpages={uuid.uuid4()}&_getpagesoffset={offset + 1}&_count=1"
                    "&_bundletype=searchset",
                }
            )
        entry = {"resource": {"resourceType": "Patient", "id": f"p{offset}"}, "search": {"mode": "match"}}
        return fhir({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": [entry]})


# -- one port, both schemes ---------------------------------------------------------------------------------


def self_signed(folder: Path) -> tuple[Path, Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1, its key, and a client context that trusts only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(cafile=str(cert_file))
    return cert_file, key_file, context


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _relay(client: socket.socket, plain: int, tls: int) -> None:
    with client:
        try:
            first = client.recv(1, socket.MSG_PEEK)
        except OSError:
            return
        if not first:
            return
        with socket.create_connection(("127.0.0.1", tls if first == b"\x16" else plain)) as upstream:
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join(10)


@contextmanager
def both_schemes(app: Any, folder: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    """Serve ``app`` as http and https on one port of 127.0.0.1; yields the port and a client TLS context."""
    cert_file, key_file, context = self_signed(folder)
    with (
        serve(app, "hapi-plain") as plain_url,
        serve(app, "hapi-tls", ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)) as tls_url,
    ):
        plain, tls = int(plain_url.rsplit(":", 1)[1]), int(tls_url.rsplit(":", 1)[1])
        listener = socket.create_server(("127.0.0.1", 0))

        def accept() -> None:
            while True:
                try:
                    client, _ = listener.accept()
                except OSError:
                    return  # closed: the test is over
                threading.Thread(target=_relay, args=(client, plain, tls), daemon=True).start()

        thread = threading.Thread(target=accept, name="hapi-front", daemon=True)
        thread.start()
        try:
            yield listener.getsockname()[1], context
        finally:
            # close() alone does not wake a thread blocked in accept() on Linux; shutdown() does.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
            thread.join(10)
            assert not thread.is_alive()


# -- helpers ------------------------------------------------------------------------------------------------


def run(base: str, work: Any, context: ssl.SSLContext | None = None) -> Any:
    async def main() -> Any:
        transport = httpx.AsyncHTTPTransport(verify=context) if context is not None else None
        async with AsyncFhirClient(base, retry=FAST, transport=transport) as client:
            return await work(client)

    return asyncio.run(main())


def ids(base: str, context: ssl.SSLContext | None = None) -> list[str]:
    async def work(client: AsyncFhirClient) -> list[str]:
        return [r["id"] async for r in client.resources(Search("Patient").count(1))]

    return run(base, work, context)


PATIENT = {"resourceType": "Patient", "id": "p1", "active": True}


@pytest.fixture
def hapi() -> Iterator[tuple[Hapi, str]]:
    state = Hapi()
    with serve(state.app(), "hapi-like") as url:
        yield state, f"{url}/fhir"


# -- 409 -----------------------------------------------------------------------------------------------------


def test_a_stale_if_match_is_a_precondition_failure_that_ingestion_does_not_retry(hapi: tuple[Hapi, str]):
    state, base = hapi

    async def work(client: AsyncFhirClient) -> Any:
        first = await client.update(PATIENT)
        second = await client.update({**PATIENT, "active": False}, if_match=first["meta"]["versionId"])
        with pytest.raises(PreconditionFailed) as stale:
            await client.update(PATIENT, if_match=first["meta"]["versionId"])  # version 1, the server is at 2
        return second, stale.value

    second, error = run(base, work)
    assert second["meta"]["versionId"] == "2"
    assert error.status == 409  # the server's own status is kept
    assert "HAPI-0989" in str(error) and "not the current version" in str(error)
    assert error.outcome["issue"][0]["code"] == "processing"
    assert not isinstance(error, Conflict) and not isinstance(error, TRANSIENT)
    assert state.versions["Patient/p1"] == 2  # the stale write changed nothing
    assert [m for _, m, _ in state.seen] == ["PUT", "PUT", "PUT"]  # and it was not retried


def test_a_stale_if_match_inside_a_transaction_is_a_precondition_failure(hapi: tuple[Hapi, str]):
    state, base = hapi
    state.versions["Patient/p1"] = 3
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": PATIENT, "request": {"method": "PUT", "url": "Patient/p1", "ifMatch": 'W/"2"'}}],
    }
    # No If-Match header here: the version is in the entry, and HAPI's code in the text is what says it is stale.
    with pytest.raises(PreconditionFailed, match=r"HAPI-0550: HAPI-0989"):
        run(base, lambda c: c.transaction(bundle))


def test_every_other_409_stays_a_transient_conflict(hapi: tuple[Hapi, str]):
    state, base = hapi
    state.race_next_write = True

    async def work(client: AsyncFhirClient) -> Any:
        with pytest.raises(Conflict) as lost:
            await client.update(PATIENT, if_match="1")  # If-Match sent, but the 409 is the race, not the version
        return lost.value

    error = run(base, work)
    assert not isinstance(error, PreconditionFailed)
    assert isinstance(error, TRANSIENT)  # ingestion tries the case again later
    assert "HAPI-0823" in str(error)


# -- next links --------------------------------------------------------------------------------------------


def test_next_links_from_the_request_address_are_followed(hapi: tuple[Hapi, str]):
    state, base = hapi
    assert ids(base) == ["p0", "p1", "p2"]
    assert [q.split("&")[1] for _, m, q in state.seen[1:]] == ["_getpagesoffset=1", "_getpagesoffset=2"]


def test_an_upgrade_from_http_to_https_on_the_same_host_and_port_is_followed(tmp_path: Path):
    state = Hapi()
    with both_schemes(state.app(), tmp_path) as (port, context):
        state.link_base = f"https://127.0.0.1:{port}/fhir"  # as a proxy that terminates TLS would write them
        assert ids(f"http://127.0.0.1:{port}/fhir", context) == ["p0", "p1", "p2"]
    assert [scheme for scheme, _, _ in state.seen] == ["http", "https", "https"]


def test_a_downgrade_from_https_to_http_is_never_followed(tmp_path: Path):
    state = Hapi()
    with both_schemes(state.app(), tmp_path) as (port, context):
        # The public test server's hard-coded address: http links for an https base.
        state.link_base = f"http://127.0.0.1:{port}/fhir"
        with pytest.raises(FhirProtocolError) as refused:
            ids(f"https://127.0.0.1:{port}/fhir", context)
    message = str(refused.value)
    assert f"are http, 127.0.0.1, {port}, the base URL's https, 127.0.0.1, {port}" in message
    assert "downgrade from https to http is never followed" in message
    assert [scheme for scheme, _, _ in state.seen] == ["https"]  # nothing went out in clear


def test_an_upgrade_to_another_port_is_refused_naming_both_ports(tmp_path: Path):
    state = Hapi()
    with both_schemes(state.app(), tmp_path) as (port, context), serve(state.app(), "other") as other:
        other_port = int(other.rsplit(":", 1)[1])
        state.link_base = f"https://127.0.0.1:{other_port}/fhir"
        with pytest.raises(FhirProtocolError) as refused:
            ids(f"http://127.0.0.1:{port}/fhir", context)
    message = str(refused.value)
    assert f"are https, 127.0.0.1, {other_port}, the base URL's http, 127.0.0.1, {port}" in message
    assert "only on the same port" in message
    assert len(state.seen) == 1
