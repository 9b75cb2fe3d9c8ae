"""Authentication for the FHIR client, as ``httpx.Auth`` objects, so the client itself stays auth-agnostic.

- ``BearerAuth``: a static token, for servers that hand one out.
- ``SmartBackendAuth``: HL7 SMART App Launch "Backend Services", the standard way for a service without a user
  to get tokens: a client_credentials grant authenticated by a short-lived JWT signed with our private key
  (``private_key_jwt``), so no shared secret is ever sent. The token is cached until shortly before it expires,
  concurrent requests share one token request, and a token the server stops accepting (401) is replaced once.

Token requests are yielded from httpx's auth flow, so they go through the same client (transport, proxies,
timeouts) as the FHIR requests; like any httpx auth exchange, they are kept in ``response.history``, so do not
log that. Neither the access token nor the assertion ever appears in our messages or logs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Literal, NamedTuple

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from casebridge.config import Settings
from casebridge.errors import AuthError

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 300  # SMART Backend Services: "no more than five minutes in the future"
DEFAULT_EXPIRES_IN = 300.0  # when the token endpoint does not say (expires_in is only RECOMMENDED)
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: anything else would break (or inject into) the header


class _TokenRequest(NamedTuple):
    request: httpx.Request
    assertion: str  # kept to scrub it from any error text the token endpoint echoes back
    started: float  # a token's lifetime counts from when it was asked for


def _check_token(token: str, what: str) -> None:
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"{what} must be non-empty visible ASCII (no spaces or control characters)")


class BearerAuth(httpx.Auth):
    """A static bearer token on every request."""

    def __init__(self, token: str):
        _check_token(token, "the bearer token")
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


def _load_key(pem: bytes, algorithm: str) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:  # TypeError: the key is encrypted
        raise ValueError(f"the SMART private key is not an unencrypted PEM private key: {exc}") from None
    if algorithm == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"RS384 needs an RSA private key, not {type(key).__name__}")
        if key.key_size < 2048:
            raise ValueError(f"RS384 needs an RSA key of at least 2048 bits, this one has {key.key_size}")
        return key
    if algorithm == "ES384":
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
            curve = getattr(getattr(key, "curve", None), "name", type(key).__name__)
            raise ValueError(f"ES384 needs an EC P-384 (secp384r1) private key, not {curve}")
        return key
    raise ValueError(f"unsupported SMART algorithm {algorithm!r} (RS384 or ES384)")


class SmartBackendAuth(httpx.Auth):
    """SMART Backend Services: access tokens from ``token_url`` for ``client_id``, whose key signs the assertion.

    ``clock`` decides when a cached token is due for refresh (tests inject one); the assertion's claims use the
    wall clock, because that is what the token endpoint checks them against. Request bodies are read before the
    first send, so a request refused with 401 can be sent again.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key_pem: bytes,
        *,
        key_id: str | None = None,
        algorithm: Literal["RS384", "ES384"] = "RS384",
        scope: str = "system/*.rs system/*.cud",
        assertion_lifetime: int = 300,
        refresh_margin: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        if not 0 < assertion_lifetime <= MAX_ASSERTION_LIFETIME:
            raise ValueError(
                f"assertion_lifetime must be 1..{MAX_ASSERTION_LIFETIME} seconds, not {assertion_lifetime}"
            )
        if not refresh_margin >= 0:
            raise ValueError(f"refresh_margin must be >= 0, not {refresh_margin}")
        if not client_id:
            raise ValueError("client_id must not be empty")
        self.token_url = token_url
        self.client_id = client_id
        self.key_id = key_id
        self.algorithm = algorithm
        self.scope = scope
        self.assertion_lifetime = assertion_lifetime
        self.refresh_margin = refresh_margin
        self._key = _load_key(private_key_pem, algorithm)
        self._clock = clock
        self._cached: tuple[str, float] | None = None  # (access token, when to stop using it)
        self._thread_lock = threading.Lock()
        # An asyncio.Lock belongs to one event loop, and the sync facade may run several over our lifetime.
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"SmartBackendAuth({self.token_url!r}, {self.client_id!r}, algorithm={self.algorithm!r})"

    # -- the flows: identical but for the lock and reading the token response --------------------------------

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()  # a request refused with 401 is sent again, so its body must be replayable
        rejected: str | None = None
        for resend in (False, True):
            with self._thread_lock:
                token = self._cached_token(rejected)
                fresh = token is None
                if token is None:
                    pending = self._token_request(request)
                    response = yield pending.request
                    response.read()
                    token = self._accept(response, pending)
            response = yield self._authorized(request, token)
            if not self._resend(response, fresh=fresh, resent=resend):
                return
            rejected = token

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()  # a request refused with 401 is sent again, so its body must be replayable
        rejected: str | None = None
        for resend in (False, True):
            async with self._async_lock():
                token = self._cached_token(rejected)
                fresh = token is None
                if token is None:
                    pending = self._token_request(request)
                    response = yield pending.request
                    await response.aread()
                    token = self._accept(response, pending)
            response = yield self._authorized(request, token)
            if not self._resend(response, fresh=fresh, resent=resend):
                return
            rejected = token

    # -- shared logic ----------------------------------------------------------------------------------------

    def _async_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._async_locks.get(loop)
        if lock is None:
            lock = self._async_locks[loop] = asyncio.Lock()
        return lock

    def _cached_token(self, rejected: str | None) -> str | None:
        """The cached token if it is still good and not the one the server just refused. Call under the lock."""
        cached = self._cached
        if cached is None:
            return None
        token, refresh_at = cached
        if token == rejected or self._clock() >= refresh_at:
            return None
        return token

    @staticmethod
    def _authorized(request: httpx.Request, token: str) -> httpx.Request:
        request.headers["Authorization"] = f"Bearer {token}"
        return request

    @staticmethod
    def _resend(response: httpx.Response, *, fresh: bool, resent: bool) -> bool:
        # A token fetched for this very request that is refused would be refused again: only a cached one is retried.
        return response.status_code == 401 and not fresh and not resent

    def assertion(self) -> str:
        """A new signed client assertion (a JWT), valid for ``assertion_lifetime`` seconds."""
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + self.assertion_lifetime,
            "iat": now,
            "jti": str(uuid.uuid4()),  # the token endpoint refuses a replayed jti
        }
        headers: dict[str, Any] = {"typ": "JWT"}
        if self.key_id is not None:
            headers["kid"] = self.key_id
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def _token_request(self, request: httpx.Request) -> _TokenRequest:
        headers = {"Accept": "application/json"}
        if "User-Agent" in request.headers:
            headers["User-Agent"] = request.headers["User-Agent"]
        # A Request built here carries no timeout of its own: take the client's, from the request being authorized.
        extensions = {"timeout": request.extensions["timeout"]} if "timeout" in request.extensions else {}
        assertion = self.assertion()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }
        log.debug("requesting a SMART access token from %s for %s", self.token_url, self.client_id)
        token_request = httpx.Request("POST", self.token_url, data=form, headers=headers, extensions=extensions)
        return _TokenRequest(token_request, assertion, self._clock())

    def _accept(self, response: httpx.Response, pending: _TokenRequest) -> str:
        """The access token from the token endpoint's (read) response, now cached; else AuthError."""
        assertion = pending.assertion

        def fail(problem: str) -> AuthError:
            return AuthError(
                f"SMART token request to {self.token_url} failed: {problem}", method="POST", url=self.token_url
            )

        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if not response.is_success:
            oauth = _oauth_error(body, assertion)
            raise fail(f"HTTP {response.status_code}" + (f": {oauth}" if oauth else ""))
        if not isinstance(body, dict):
            raise fail(f"HTTP {response.status_code} with a body that is not a JSON object")
        token = body.get("access_token")
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise fail("the answer has no usable access_token")
        token_type = body.get("token_type")
        # RFC 6749 requires token_type, but only a present, different type is a reason to refuse the token.
        if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
            raise fail(f"token_type is {_clean(str(token_type), assertion)!r}, not bearer")
        expires_in = _expires_in(body.get("expires_in"))
        if expires_in is None:
            raise fail("expires_in is not a positive number")
        self._cached = (token, pending.started + expires_in - self.refresh_margin)
        log.debug("SMART access token received from %s, expires in %s s", self.token_url, expires_in)
        return token


def _expires_in(value: object) -> float | None:
    if value is None:
        return DEFAULT_EXPIRES_IN
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _clean(text: str, assertion: str) -> str:
    """Server-supplied text made safe for a message: no echoed assertion, no control characters, bounded."""
    text = text.replace(assertion, "[assertion]")
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    return text if len(text) <= 300 else text[:300] + "…"


def _oauth_error(body: object, assertion: str) -> str:
    """``error: error_description`` from an OAuth error answer (RFC 6749 §5.2), or ""."""
    if not isinstance(body, dict):
        return ""
    parts = [body[k] for k in ("error", "error_description") if isinstance(body.get(k), str) and body[k]]
    return _clean(": ".join(parts), assertion)


def auth_from_settings(settings: Settings) -> httpx.Auth | None:
    """The auth the settings configure: a static token, SMART Backend Services, or none."""
    if settings.fhir_token is not None:
        return BearerAuth(settings.fhir_token.get_secret_value())
    if settings.smart_token_url and settings.smart_client_id and settings.smart_private_key:
        path = settings.smart_private_key
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read the SMART private key {path}: {exc.strerror}") from exc
        try:
            return SmartBackendAuth(
                settings.smart_token_url,
                settings.smart_client_id,
                pem,
                key_id=settings.smart_key_id,
                algorithm=settings.smart_algorithm,
                scope=settings.smart_scope,
            )
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    return None
