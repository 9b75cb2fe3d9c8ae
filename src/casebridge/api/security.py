"""API keys: ``Authorization: Bearer <key>``, compared in constant time; what a key may do is its scopes
(``casebridge.access.scopes``), checked by the routes through ``require_scopes``."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from casebridge.access.keys import ApiKey
from casebridge.access.keys import digest as secret_digest
from casebridge.api.errors import ApiError
from casebridge.fhir.client import AsyncFhirClient
from casebridge.gateway.namespaces import NamespaceCheck
from casebridge.gateway.policy import Action
from casebridge.validation.validator import operation_outcome

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    description="An API key from CASEBRIDGE_API_KEYS: `Authorization: Bearer <key>`.",
)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="casebridge"'}


# The dependencies are coroutines, though they never wait: FastAPI runs a plain function dependency on a
# worker thread, two thread hops per request for a few microseconds of work.
async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    if credentials is None:
        raise ApiError.of(401, "login", "authentication required: Authorization: Bearer <API key>", headers=_CHALLENGE)
    # Digests, so every comparison is of equal length and takes the same time whatever the key.
    given = secret_digest(credentials.credentials)
    found: ApiKey | None = None
    for key in request.app.state.services.keys:
        if hmac.compare_digest(given, key.digest):  # no early exit: every key is compared
            found = key
    if found is None:
        raise ApiError.of(401, "login", "unknown API key", headers=_CHALLENGE)
    request.state.api_key = found.name
    return found


def require_scopes(key: ApiKey, needs: Iterable[tuple[str, str]], what: str) -> None:
    """403 naming the scopes the key lacks for ``(resource type, permission)`` pairs (c, r, u, d, s)."""
    missing = key.scopes.missing(needs)
    if missing:
        shown = " ".join(missing[:10]) + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else "")
        raise ApiError.of(403, "forbidden", f"the API key {key.name!r} lacks the scopes {shown} to {what}")


def namespace_guard(
    client: AsyncFhirClient,
    bundle: Mapping[str, Any],
    actions: Sequence[Action],
    key: ApiKey,
    keys: Sequence[ApiKey],
) -> Callable[[], Awaitable[None]] | None:
    """For a key bound to identifier namespaces, the check ``push_bundle`` runs under the patient's write lock
    before sending: 403 naming each entry that writes another's patient (``casebridge.gateway.namespaces``), 422 when
    the check itself would cost too much. ``keys``: every key, whose namespaces this key's patients may not claim."""
    if not key.namespaces:
        return None
    foreign = sorted({ns for other in keys if other.name != key.name for ns in other.namespaces})

    async def check() -> None:
        refused = await NamespaceCheck(client, bundle, actions, key.namespaces, key.name, foreign).run()
        if refused:
            costly = any(issue.code == "too-costly" for issue in refused)
            raise ApiError(422 if costly else 403, operation_outcome(refused))

    return check


ReadKey = Annotated[ApiKey, Depends(authenticate)]
