"""API keys: ``Authorization: Bearer <key>``, compared in constant time; read-only keys cannot write."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.api.errors import ApiError
from service.config import ApiKey

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key from CASEBRIDGE_API_KEYS: `Authorization: Bearer <key>`.",
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="casebridge"'}


def _digest(secret: str) -> bytes:
    # Digests first, so every comparison is of equal length and takes the same time whatever the key.
    return hashlib.sha256(secret.encode()).digest()


# The dependencies are coroutines, though they never wait: FastAPI runs a plain function dependency on a
# worker thread, two thread hops per request for a few microseconds of work.
async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    if credentials is None:
        raise ApiError.of(401, "login", "authentication required: Authorization: Bearer <API key>", headers=_CHALLENGE)
    given = _digest(credentials.credentials)
    found: ApiKey | None = None
    for key, digest in request.app.state.services.key_digests:
        if hmac.compare_digest(given, digest):  # no early exit: every key is compared
            found = key
    if found is None:
        raise ApiError.of(401, "login", "unknown API key", headers=_CHALLENGE)
    request.state.api_key = found.name
    return found


async def require_write(key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
    if not key.can_write:
        raise ApiError.of(403, "forbidden", f"the API key {key.name!r} is read-only: it cannot write")
    return key


def key_digests(keys: list[ApiKey]) -> list[tuple[ApiKey, bytes]]:
    return [(key, _digest(key.secret)) for key in keys]


ReadKey = Annotated[ApiKey, Depends(authenticate)]
WriteKey = Annotated[ApiKey, Depends(require_write)]
