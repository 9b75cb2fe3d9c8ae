"""casebridge.fhir.auth against a real token endpoint and a protected FHIR endpoint, over HTTP on loopback.

The server verifies each client assertion as a SMART Backend Services token endpoint must (signature with the
registered public key, audience, iss == sub, lifetime, jti replay, grant and assertion types), so these tests
show that the assertions we sign are accepted, not only that they look right.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from casebridge.config import Settings
from casebridge.errors import AuthError
from casebridge.fhir.auth import JWT_BEARER, BearerAuth, SmartBackendAuth, auth_from_settings
from tests.loopback import serve

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


# -- the server ---------------------------------------------------------------------------------------------


@dataclass
class Client:
    """A registered backend client, and how the token endpoint treats it."""

    id: str
    public_key: Any
    algorithm: str
    kid: str | None = None
    expires_in: int | None = 300  # None: left out of the token response
    mode: str = "ok"  # ok | 500 | html | no-token | mac | echo | deny
    token_delay: float = 0.0
    token_requests: int = 0
    fhir_requests: int = 0
    assertions: list[str] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)


class AuthServer:
    def __init__(self) -> None:
        self.clients: dict[str, Client] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (client id, expiry)
        self.seen_jti: set[str] = set()
        self.base_url = ""
        self.app = Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/fhir/Patient/x", self.patient, methods=["GET", "POST"]),
            ]
        )

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def register(self, key: PrivateKey, algorithm: str = "RS384", *, kid: str | None = None, **kw: Any) -> str:
        client_id = f"client-{uuid.uuid4().hex[:8]}"
        self.clients[client_id] = Client(client_id, key.public_key(), algorithm, kid, **kw)
        return client_id

    def revoke(self, client_id: str) -> None:
        for token in [t for t, (owner, _) in self.tokens.items() if owner == client_id]:
            del self.tokens[token]

    async def token(self, request: Request) -> Response:
        def refuse(error: str, description: str, status: int = 400) -> Response:
            return JSONResponse({"error": error, "error_description": description}, status_code=status)

        form = await request.form()
        assertion = str(form.get("client_assertion", ""))
        try:
            client_id = str(jwt.decode(assertion, options={"verify_signature": False})["iss"])
            header = jwt.get_unverified_header(assertion)
        except (jwt.InvalidTokenError, KeyError):
            return refuse("invalid_client", "unreadable client assertion", 401)
        client = self.clients.get(client_id)
        if client is None:
            return refuse("invalid_client", "unknown client", 401)
        client.token_requests += 1
        client.assertions.append(assertion)
        if client.token_delay:
            await asyncio.sleep(client.token_delay)
        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", "client_credentials only")
        if form.get("client_assertion_type") != JWT_BEARER:
            return refuse("invalid_request", "wrong client_assertion_type")
        if not form.get("scope"):
            return refuse("invalid_scope", "no scope")
        if header.get("typ") != "JWT" or header.get("alg") != client.algorithm or header.get("kid") != client.kid:
            return refuse("invalid_client", f"unexpected JWT header {header}", 401)
        try:
            claims = jwt.decode(
                assertion,
                client.public_key,
                algorithms=[client.algorithm],
                audience=self.token_url,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
        except jwt.InvalidTokenError as exc:
            return refuse("invalid_client", f"assertion rejected: {exc}", 401)
        if not claims["iss"] == claims["sub"] == client_id:
            return refuse("invalid_client", "iss and sub must be the client id", 401)
        if claims["exp"] - claims["iat"] > 300:
            return refuse("invalid_client", "assertion lives longer than 5 minutes", 401)
        if claims["jti"] in self.seen_jti:
            return refuse("invalid_client", "jti replayed", 401)
        self.seen_jti.add(claims["jti"])

        if client.mode == "500":
            return PlainTextResponse("internal error", status_code=500)
        if client.mode == "html":
            return Response("<html>login</html>", media_type="text/html")
        if client.mode == "echo":
            return refuse("invalid_grant", f"cannot use assertion {assertion}")
        token = secrets.token_urlsafe(24)
        client.issued.append(token)
        lifetime = client.expires_in if client.expires_in is not None else 300
        self.tokens[token] = (client_id, time.time() + lifetime)
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "scope": form["scope"]}
        if client.expires_in is not None:
            body["expires_in"] = client.expires_in
        if client.mode == "no-token":
            del body["access_token"]
        if client.mode == "mac":
            body["token_type"] = "mac"
        return JSONResponse(body)

    async def patient(self, request: Request) -> Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        owner, expiry = self.tokens.get(token, ("", 0.0))
        client = self.clients.get(owner)
        if client is not None:
            client.fhir_requests += 1
        if scheme.lower() != "bearer" or client is None or expiry <= time.time() or client.mode == "deny":
            return JSONResponse(
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        if request.method == "POST":
            return JSONResponse({"received": (await request.body()).decode()}, status_code=201)
        return JSONResponse({"resourceType": "Patient", "id": "x"})


@pytest.fixture(scope="module")
def server() -> Iterator[AuthServer]:
    auth_server = AuthServer()
    with serve(auth_server.app, name="auth-test-server") as base:
        auth_server.base_url = base
        yield auth_server


# -- keys ---------------------------------------------------------------------------------------------------


def pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


class Clock:
    """A clock the test moves forward; it starts at the wall clock."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def smart(server: AuthServer, rsa_key: rsa.RSAPrivateKey) -> Callable[..., tuple[SmartBackendAuth, Client]]:
    """A registered RS384 client and its auth: ``smart(expires_in=..., mode=..., clock=...)``."""

    def make(*, clock: Callable[[], float] = time.time, **client: Any) -> tuple[SmartBackendAuth, Client]:
        client_id = server.register(rsa_key, "RS384", kid="k1", **client)
        auth = SmartBackendAuth(server.token_url, client_id, pem(rsa_key), key_id="k1", clock=clock)
        return auth, server.clients[client_id]

    return make


def patient_url(server: AuthServer) -> str:
    return f"{server.base_url}/fhir/Patient/x"


# -- SMART Backend Services ---------------------------------------------------------------------------------


def test_sync_client_gets_the_resource_and_reuses_the_token(server: AuthServer, smart: Any) -> None:
    auth, client = smart()
    with httpx.Client(auth=auth) as http:
        responses = [http.get(patient_url(server)) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert responses[0].json() == {"resourceType": "Patient", "id": "x"}
    assert client.token_requests == 1
    assert client.fhir_requests == 3
    token_response = responses[0].history[0]
    assert token_response.request.url == server.token_url
    assert token_response.request.headers["Accept"] == "application/json"


def test_async_client_gets_the_resource_and_reuses_the_token(server: AuthServer, smart: Any) -> None:
    auth, client = smart()

    async def run() -> list[int]:
        async with httpx.AsyncClient(auth=auth) as http:
            return [(await http.get(patient_url(server))).status_code for _ in range(3)]

    assert asyncio.run(run()) == [200, 200, 200]
    assert client.token_requests == 1


def test_the_token_is_refreshed_before_it_expires(server: AuthServer, smart: Any) -> None:
    clock = Clock()
    auth, client = smart(expires_in=120, clock=clock)
    with httpx.Client(auth=auth) as http:
        assert http.get(patient_url(server)).status_code == 200
        clock.now += 89  # refresh_margin is 30 s: still good for one more second
        assert http.get(patient_url(server)).status_code == 200
        assert client.token_requests == 1
        clock.now += 2
        assert http.get(patient_url(server)).status_code == 200
    assert client.token_requests == 2
    assert len(set(client.issued)) == 2


def test_a_token_without_expires_in_is_kept_300_seconds(server: AuthServer, smart: Any) -> None:
    clock = Clock()
    auth, client = smart(expires_in=None, clock=clock)
    with httpx.Client(auth=auth) as http:
        http.get(patient_url(server))
        clock.now += 269
        http.get(patient_url(server))
        assert client.token_requests == 1
        clock.now += 2
        assert http.get(patient_url(server)).status_code == 200
    assert client.token_requests == 2


def test_a_revoked_token_is_replaced_once(server: AuthServer, smart: Any) -> None:
    auth, client = smart()
    with httpx.Client(auth=auth) as http:
        assert http.get(patient_url(server)).status_code == 200
        server.revoke(client.id)
        response = http.get(patient_url(server))
    assert response.status_code == 200
    assert client.token_requests == 2
    assert client.fhir_requests == 2  # the 401 in between is not counted: a revoked token names no client
    assert [r.status_code for r in response.history] == [401, 200]  # the refused request, the new token


def test_a_revoked_token_is_replaced_once_async(server: AuthServer, smart: Any) -> None:
    auth, client = smart()

    async def run() -> list[int]:
        async with httpx.AsyncClient(auth=auth) as http:
            first = await http.get(patient_url(server))
            server.revoke(client.id)
            return [first.status_code, (await http.get(patient_url(server))).status_code]

    assert asyncio.run(run()) == [200, 200]
    assert client.token_requests == 2


def test_a_refused_cached_token_is_retried_once_only(server: AuthServer, smart: Any) -> None:
    auth, client = smart()
    with httpx.Client(auth=auth) as http:
        assert http.get(patient_url(server)).status_code == 200
        client.mode = "deny"
        response = http.get(patient_url(server))
    assert response.status_code == 401  # given back to the caller, who raises Unauthorized
    assert client.token_requests == 2
    assert client.fhir_requests == 3


def test_a_refused_fresh_token_is_not_retried(server: AuthServer, smart: Any) -> None:
    auth, client = smart(mode="deny")
    with httpx.Client(auth=auth) as http:
        assert http.get(patient_url(server)).status_code == 401
    assert client.token_requests == 1
    assert client.fhir_requests == 1


def test_a_post_refused_with_401_is_sent_again_with_its_body(server: AuthServer, smart: Any) -> None:
    auth, client = smart()
    seen: list[bytes] = []
    with httpx.Client(auth=auth, event_hooks={"request": [lambda r: seen.append(r.read())]}) as http:
        http.get(patient_url(server))
        server.revoke(client.id)
        # A streamed body: it is read before the first send, so it can go a second time.
        response = http.post(patient_url(server), content=(chunk for chunk in [b'{"a":', b"1}"]))
    assert response.status_code == 201
    assert response.json() == {"received": '{"a":1}'}
    assert seen.count(b'{"a":1}') == 2
    assert client.token_requests == 2


def test_20_concurrent_async_requests_share_one_token_request(server: AuthServer, smart: Any) -> None:
    clock = Clock()
    auth, client = smart(token_delay=0.05, clock=clock)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(auth=auth) as http:
            responses = await asyncio.gather(*(http.get(patient_url(server)) for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 20
    assert client.token_requests == 1
    # A second event loop (as the sync facade may start) gets its own lock, and again one token request.
    clock.now += 300
    assert asyncio.run(burst()) == [200] * 20
    assert client.token_requests == 2


def test_concurrent_threads_share_one_token_request(server: AuthServer, smart: Any) -> None:
    auth, client = smart(token_delay=0.05)
    with httpx.Client(auth=auth) as http:
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda: results.append(http.get(patient_url(server)).status_code)) for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == [200] * 8
    assert client.token_requests == 1


def test_es384(server: AuthServer, ec_key: ec.EllipticCurvePrivateKey) -> None:
    client_id = server.register(ec_key, "ES384")
    auth = SmartBackendAuth(server.token_url, client_id, pem(ec_key), algorithm="ES384")
    with httpx.Client(auth=auth) as http:
        assert http.get(patient_url(server)).status_code == 200
    assert server.clients[client_id].token_requests == 1


def test_the_assertion(rsa_key: rsa.RSAPrivateKey) -> None:
    auth = SmartBackendAuth("https://auth.test/token", "me", pem(rsa_key), key_id="k9", assertion_lifetime=120)
    first, second = auth.assertion(), auth.assertion()
    assert jwt.get_unverified_header(first) == {"alg": "RS384", "typ": "JWT", "kid": "k9"}
    claims = jwt.decode(first, rsa_key.public_key(), algorithms=["RS384"], audience="https://auth.test/token")
    assert claims["iss"] == claims["sub"] == "me"
    assert claims["exp"] - claims["iat"] == 120
    assert abs(claims["iat"] - time.time()) < 5
    assert claims["jti"] != jwt.decode(second, options={"verify_signature": False})["jti"]
    assert "kid" not in jwt.get_unverified_header(SmartBackendAuth("https://a.test/t", "me", pem(rsa_key)).assertion())


# -- token endpoint failures --------------------------------------------------------------------------------


def test_a_key_the_server_does_not_know_is_an_auth_error(
    server: AuthServer, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    client_id = server.register(rsa_key)
    auth = SmartBackendAuth(server.token_url, client_id, pem(other_rsa_key))
    with httpx.Client(auth=auth) as http, pytest.raises(AuthError) as caught:
        http.get(patient_url(server))
    message = str(caught.value)
    assert "HTTP 401" in message and "invalid_client" in message and "Signature verification failed" in message
    assert caught.value.method == "POST" and caught.value.url == server.token_url
    assert server.clients[client_id].fhir_requests == 0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("500", "HTTP 500"),
        ("html", "not a JSON object"),
        ("no-token", "no usable access_token"),
        ("mac", "token_type is 'mac', not bearer"),
    ],
)
def test_unusable_token_answers_are_auth_errors(server: AuthServer, smart: Any, mode: str, expected: str) -> None:
    auth, client = smart(mode=mode)
    with httpx.Client(auth=auth) as http, pytest.raises(AuthError, match=expected) as caught:
        http.get(patient_url(server))
    assert caught.value.url == server.token_url
    assert client.fhir_requests == 0
    for secret in client.issued:  # the mac case issued a token: it must not leak
        assert secret not in str(caught.value)


def test_unusable_token_answer_async(server: AuthServer, smart: Any) -> None:
    auth, _ = smart(mode="500")

    async def run() -> None:
        async with httpx.AsyncClient(auth=auth) as http:
            await http.get(patient_url(server))

    with pytest.raises(AuthError, match="HTTP 500"):
        asyncio.run(run())


def test_neither_assertion_nor_token_appears_in_messages_or_logs(
    server: AuthServer, smart: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="casebridge.fhir.auth")
    auth, client = smart(mode="echo")  # the endpoint quotes the assertion back in error_description
    with httpx.Client(auth=auth) as http, pytest.raises(AuthError) as caught:
        http.get(patient_url(server))
    (assertion,) = client.assertions
    message = str(caught.value)
    assert "invalid_grant: cannot use assertion [assertion]" in message
    assert assertion not in message and assertion.rsplit(".", 1)[1] not in message

    good, ok_client = smart()
    with httpx.Client(auth=good) as http:
        assert http.get(patient_url(server)).status_code == 200
    logged = caplog.text + message
    assert "requesting a SMART access token" in caplog.text
    for secret in [*client.assertions, *ok_client.assertions, *ok_client.issued]:
        assert secret not in logged


# -- keys and configuration -----------------------------------------------------------------------------------


def test_keys_that_do_not_fit_the_algorithm_are_refused_at_construction(
    rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    url = "https://auth.test/token"
    with pytest.raises(ValueError, match="ES384 needs an EC P-384"):
        SmartBackendAuth(url, "me", pem(rsa_key), algorithm="ES384")
    with pytest.raises(ValueError, match="RS384 needs an RSA private key"):
        SmartBackendAuth(url, "me", pem(ec_key))
    with pytest.raises(ValueError, match="not secp256r1"):
        SmartBackendAuth(url, "me", pem(ec.generate_private_key(ec.SECP256R1())), algorithm="ES384")
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="at least 2048 bits, this one has 1024"):
        SmartBackendAuth(url, "me", pem(small))
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        SmartBackendAuth(url, "me", b"-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    encrypted = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        SmartBackendAuth(url, "me", encrypted)
    with pytest.raises(ValueError, match="assertion_lifetime"):
        SmartBackendAuth(url, "me", pem(rsa_key), assertion_lifetime=301)


def test_bearer_auth_adds_the_header(server: AuthServer, rsa_key: rsa.RSAPrivateKey) -> None:
    client_id = server.register(rsa_key)
    server.tokens["static-token"] = (client_id, time.time() + 60)
    try:
        with httpx.Client(auth=BearerAuth("static-token")) as http:
            response = http.get(patient_url(server))
            refused = http.get(patient_url(server), auth=BearerAuth("wrong"))
    finally:
        del server.tokens["static-token"]
    assert response.status_code == 200
    assert response.request.headers["Authorization"] == "Bearer static-token"
    assert refused.status_code == 401
    with pytest.raises(ValueError, match="visible ASCII"):
        BearerAuth("two words")


def test_auth_from_settings(
    server: AuthServer, tmp_path: Path, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    none: dict[str, Any] = {"fhir_token": None, "smart_token_url": None, "smart_client_id": None}
    assert auth_from_settings(Settings(**none, smart_private_key=None)) is None
    bearer = auth_from_settings(Settings(**{**none, "fhir_token": "abc"}, smart_private_key=None))
    assert isinstance(bearer, BearerAuth)

    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem(ec_key))
    client_id = server.register(ec_key, "ES384", kid="kid-1")
    settings = Settings(
        fhir_token=None,
        smart_token_url=server.token_url,
        smart_client_id=client_id,
        smart_private_key=key_file,
        smart_key_id="kid-1",
        smart_algorithm="ES384",
        smart_scope="system/Patient.rs",
    )
    auth = auth_from_settings(settings)
    assert isinstance(auth, SmartBackendAuth)
    assert (auth.algorithm, auth.key_id, auth.scope, auth.client_id) == (
        "ES384",
        "kid-1",
        "system/Patient.rs",
        client_id,
    )
    with httpx.Client(auth=auth) as http:
        assert http.get(patient_url(server)).status_code == 200

    key_file.write_bytes(pem(rsa_key))
    with pytest.raises(ValueError, match=f"{key_file}: ES384 needs an EC P-384"):
        auth_from_settings(settings)


def test_the_fhir_client_authenticates_from_settings(
    server: AuthServer, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """The whole path: settings -> AsyncFhirClient -> SMART token -> FHIR read; a refused client is an AuthError."""
    from casebridge.errors import AuthError
    from casebridge.fhir.client import AsyncFhirClient

    key_file = tmp_path / "key.pem"
    key_file.write_bytes(pem(rsa_key))
    client_id = server.register(rsa_key, "RS384", kid="k9")
    settings = Settings(
        fhir_token=None,
        smart_token_url=server.token_url,
        smart_client_id=client_id,
        smart_private_key=key_file,
        smart_key_id="k9",
    )

    async def read(settings: Settings) -> dict[str, Any]:
        async with AsyncFhirClient.from_settings(settings, base_url=f"{server.base_url}/fhir") as fhir:
            return await fhir.read("Patient", "x")

    assert asyncio.run(read(settings)) == {"resourceType": "Patient", "id": "x"}
    assert server.clients[client_id].token_requests == 1
    stranger = settings.model_copy(update={"smart_client_id": "client-unknown"})
    with pytest.raises(AuthError, match="invalid_client"):
        asyncio.run(read(stranger))
