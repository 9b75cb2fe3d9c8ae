"""The FHIR REST client: httpx underneath, async at the core, with one thin sync facade.

Why it is shaped this way:
- one ``httpx.AsyncClient`` per client object, so one connection pool, with explicit timeouts;
  ``Accept``/``Content-Type: application/fhir+json``;
- every failure becomes one of our exceptions (``casebridge.errors``), carrying the server's OperationOutcome;
- retries (stamina: exponential backoff with jitter) on 429/502/503/504 and transport errors, but only
  where sending twice cannot create twice: GET/HEAD/PUT/DELETE, conditional create, and transactions or
  batches made only of those. A connection that was never made is retried for any request (nothing was
  sent). ``Retry-After`` is honoured; when it asks for more than the longest wait we allow, we stop and
  raise (the error carries ``retry_after`` so a job can come back later);
- once this client has written, its reads send ``Cache-Control: no-cache``, so a caching server or proxy
  cannot answer a read-after-write with a stale copy;
- paging follows ``link[next]`` only inside the base URL (a server must not send our credentials
  elsewhere), or its upgrade from http to https on the same host and port (never a downgrade), and refuses a
  link it has already followed;
- HAPI answers a stale ``If-Match`` with 409 where FHIR R4 says 412: that 409 is a ``PreconditionFailed``
  (a retry cannot succeed), every other 409 stays a ``Conflict``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import re
import threading
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar
from urllib.parse import unquote

import httpx
import orjson
import stamina

from casebridge import __version__
from casebridge.config import Settings
from casebridge.definitions.numbers import json_default
from casebridge.errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    FhirClientError,
    FhirError,
    FhirHttpError,
    FhirProtocolError,
    FhirServerError,
    FhirTransportError,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    TooManyRequests,
    Unauthorized,
)
from casebridge.fhir.search import Search

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
_TYPE = re.compile(r"[A-Z][A-Za-z]+")
# A FHIR id; "." and ".." are excluded: a URL path would resolve them away (DELETE Patient/.. is DELETE [base]).
_ID = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9\-.]{1,64}")
MAX_PAGES = 100_000
_DEFAULT_PORTS = {"http": 80, "https": 443}
# HAPI refuses an update whose version is not the current one with ResourceVersionConflictException, a 409, not
# R4's 412: "HAPI-0989: Trying to update Patient/x/_history/1 but this is not the current version", the same code and
# text in BaseHapiFhirResourceDao (2022 sources) and hapi-fhir-storage's BaseStorageResourceDao (hapi-fhir commit
# 0059df49, 2025 sources); HAPI-0974 "Version 1 is not the most recent version of this resource" for a patch. The
# If-Match header becomes the id's version (hapi-fhir-server UpdateMethodBinding.applyETagAsVersion), and
# RestfulServer's default ExceptionHandlingInterceptor answers an OperationOutcome with one issue: severity error,
# code processing, the message as diagnostics. A transaction prefixes its own code ("HAPI-0550: HAPI-0989: ..."),
# so the code is searched anywhere in the text. Msg codes exist since HAPI 5.7.
# Other 409s must stay Conflict: HAPI-0823 ("... version constraint failure ...", two writers at once) is
# transient and ingestion retries it.
_STALE_VERSION_CODE = re.compile(r"\bHAPI-0(?:989|974)\b")
# Without a HAPI code (another server, or HAPI before 5.7): only for a request that sent If-Match, an issue coded
# conflict or processing whose text says so.
_STALE_VERSION_TEXT = re.compile(r"\bnot the (?:current|most recent) version\b", re.IGNORECASE)
_STALE_VERSION_ISSUE_CODES = frozenset({"conflict", "processing"})
_ERRORS: dict[int, type[FhirHttpError]] = {
    400: BadRequest,
    422: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: ResourceNotFound,
    409: Conflict,
    410: ResourceGone,
    412: PreconditionFailed,
    429: TooManyRequests,
}
Resource = dict[str, Any]
P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently idempotent requests are retried. ``attempts`` counts the first try."""

    attempts: int = 6
    wait_initial: float = 0.2
    wait_max: float = 30.0
    wait_jitter: float = 0.5
    # A Retry-After longer than this is not waited for: the request fails with retry_after set.
    max_retry_after: float = 30.0


def bundle_is_idempotent(bundle: Mapping[str, Any]) -> bool:
    """True when sending this transaction/batch twice cannot create anything twice."""
    for entry in bundle.get("entry") or []:
        request = (entry.get("request") or {}) if isinstance(entry, dict) else {}
        method = request.get("method")
        if method in _IDEMPOTENT_METHODS:
            continue
        if method == "POST" and request.get("ifNoneExist"):
            continue
        return False
    return True


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    # HTTP's delta-seconds are ASCII digits; str.isdigit also takes "²" (which float() refuses) and other scripts.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - (now or dt.datetime.now(dt.UTC))).total_seconds())


def _check_type(resource_type: str) -> str:
    if not _TYPE.fullmatch(resource_type):
        raise ValueError(f"{resource_type!r} is not a FHIR resource type")
    return resource_type


def _check_id(resource_id: str) -> str:
    if not _ID.fullmatch(resource_id):
        raise ValueError(f"{resource_id!r} is not a FHIR id")
    return resource_id


class AsyncFhirClient:
    """A FHIR R4 server at ``base_url``. Use as ``async with AsyncFhirClient(url) as fhir: ...``."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_connections: int = 16,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self._base = httpx.URL(self.base_url + "/")
        self.retry = retry or RetryPolicy()
        self._wrote = False
        self._http = httpx.AsyncClient(
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            headers={"Accept": FHIR_JSON, "User-Agent": f"casebridge/{__version__}", **(headers or {})},
            follow_redirects=False,
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, *, base_url: str | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> AsyncFhirClient:
        from casebridge.fhir.auth import auth_from_settings

        try:
            auth = auth_from_settings(settings)
        except ValueError as exc:  # a key file that is not a usable key, a token that cannot be a header
            raise ConfigurationError(f"FHIR server authentication: {exc}") from exc
        return cls(
            base_url or settings.fhir_base_url,
            auth=auth,
            timeout=settings.fhir_timeout,
            connect_timeout=settings.fhir_connect_timeout,
            max_connections=settings.fhir_max_connections,
            retry=RetryPolicy(
                attempts=settings.fhir_retry_attempts,
                wait_max=settings.fhir_retry_max_wait,
                max_retry_after=settings.fhir_retry_max_wait,
            ),
            transport=transport,
        )

    async def __aenter__(self) -> AsyncFhirClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- REST interactions ------------------------------------------------------------------------------

    async def capabilities(self) -> Resource:
        """The server's CapabilityStatement (``GET [base]/metadata``)."""
        return await self._json("GET", "metadata", idempotent=True, expect="CapabilityStatement")

    async def read(self, resource_type: str, resource_id: str) -> Resource:
        path = f"{_check_type(resource_type)}/{_check_id(resource_id)}"
        return await self._json("GET", path, idempotent=True, expect=resource_type)

    async def vread(self, resource_type: str, resource_id: str, version_id: str) -> Resource:
        path = f"{_check_type(resource_type)}/{_check_id(resource_id)}/_history/{_check_id(version_id)}"
        return await self._json("GET", path, idempotent=True, expect=resource_type)

    async def create(self, resource: Mapping[str, Any], *, if_none_exist: str | None = None) -> Resource:
        """POST a new resource; with ``if_none_exist`` (a search query) a conditional create, which may be retried."""
        resource_type = _check_type(str(resource.get("resourceType", "")))
        headers = {"If-None-Exist": if_none_exist} if if_none_exist else {}
        return await self._json(
            "POST", resource_type, body=resource, headers=headers, idempotent=bool(if_none_exist), expect=resource_type
        )

    async def update(self, resource: Mapping[str, Any], *, if_match: str | None = None) -> Resource:
        """PUT the resource at its id; with ``if_match`` (a versionId) ``PreconditionFailed`` if that is no longer
        current (412, or HAPI's 409 that says so)."""
        resource_type = _check_type(str(resource.get("resourceType", "")))
        path = f"{resource_type}/{_check_id(str(resource.get('id', '')))}"
        headers = {"If-Match": f'W/"{if_match}"'} if if_match else {}
        return await self._json("PUT", path, body=resource, headers=headers, idempotent=True, expect=resource_type)

    async def delete(self, resource_type: str, resource_id: str) -> None:
        await self._send("DELETE", f"{_check_type(resource_type)}/{_check_id(resource_id)}", idempotent=True)

    async def transaction(self, bundle: Mapping[str, Any], *, raw: bytes | None = None) -> Resource:
        """Send a transaction Bundle; returns the transaction-response Bundle.

        ``raw``: the Bundle's own JSON bytes, sent as they are (a forwarded Bundle keeps its decimals exactly:
        ``0.10`` stays ``0.10``); ``bundle`` is still what idempotence is judged on."""
        return await self._bundle(bundle, "transaction", raw)

    async def batch(self, bundle: Mapping[str, Any]) -> Resource:
        return await self._bundle(bundle, "batch")

    async def _bundle(
        self, bundle: Mapping[str, Any], kind: Literal["transaction", "batch"], raw: bytes | None = None
    ) -> Resource:
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != kind:
            raise ValueError(f"not a {kind} Bundle")
        idempotent = bundle_is_idempotent(bundle)
        response = await self._json("POST", "", body=bundle, raw=raw, idempotent=idempotent, expect="Bundle")
        if response.get("type") != f"{kind}-response":
            raise FhirProtocolError(
                f"the server answered a {kind} with a Bundle of type {response.get('type')!r}",
                method="POST",
                url=self.base_url,
            )
        return response

    # -- search ------------------------------------------------------------------------------------------

    async def search(self, query: Search) -> Resource:
        """The first page of a search (a searchset Bundle)."""
        return await self._page(f"{self.base_url}/{query.resource_type}", query.query())

    async def pages(self, query: Search) -> AsyncGenerator[Resource, None]:
        """Every page of a search, following ``link[next]``."""
        page = await self.search(query)
        seen: set[str] = set()
        while True:
            yield page
            links = page.get("link")
            next_url = next(
                (
                    link.get("url")
                    for link in (links if isinstance(links, list) else [])
                    if isinstance(link, dict) and link.get("relation") == "next"
                ),
                None,
            )
            if not next_url:
                return
            target = self._check_next(str(next_url), seen)
            seen.add(str(target))
            if len(seen) >= MAX_PAGES:
                raise FhirProtocolError(f"more than {MAX_PAGES:,} pages: stopping", method="GET", url=str(target))
            page = await self._page(str(target), None)

    async def resources(self, query: Search, *, mode: str | None = "match") -> AsyncGenerator[Resource, None]:
        """The resources of every page; ``mode`` picks ``match`` or ``include`` entries (None: both)."""
        async for page in self.pages(query):
            for entry in page.get("entry") or []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    continue
                if mode is None or (entry.get("search") or {}).get("mode", "match") == mode:
                    yield resource

    async def _page(self, url: str, params: list[tuple[str, str]] | None) -> Resource:
        bundle = await self._json("GET", url, params=params, idempotent=True, expect="Bundle")
        if bundle.get("type") != "searchset":
            raise FhirProtocolError(f"a search answered a {bundle.get('type')!r} Bundle", method="GET", url=url)
        return bundle

    def _check_next(self, url: str, seen: set[str]) -> httpx.URL:
        """The next link as a URL, if it stays inside the base URL and was not followed before."""

        def refuse(why: str) -> FhirProtocolError:
            return FhirProtocolError(f"refusing to follow a next link {why}: {url[:300]}", method="GET", url=url)

        try:
            target = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise refuse("that is not a URL") from exc
        base = self._base
        origin, base_origin = _origin(target), _origin(base)
        if origin != base_origin:
            # An upgrade to TLS on the same host and port is still this server (a proxy in front that rewrites the
            # scheme); a downgrade would send our credentials in clear, another host or port is another server. An
            # implicit 80 and 443 are different ports: nothing says they are the same server.
            upgrade = base_origin[0] == "http" and origin[0] == "https" and origin[1:] == base_origin[1:]
            if not upgrade:
                raise refuse(
                    f"outside the base URL {self.base_url}: the link's scheme, host and port are {_show(origin)}, "
                    f"the base URL's {_show(base_origin)}; " + _why_not(origin, base_origin)
                )
        # Decoded, so an encoded "../" or "/" cannot climb out of the base path on a server that decodes it.
        raw_path = target.raw_path.split(b"?")[0].decode("ascii", "replace")
        path = unquote(raw_path)
        segments = path.split("/")
        inside = (
            not target.userinfo
            and (path + "/").startswith(base.path)
            and "." not in segments
            and ".." not in segments
            and "\\" not in path
            and "%2f" not in raw_path.lower()
        )
        if not inside:
            raise refuse(f"outside the base URL {self.base_url}")
        if str(target) in seen:
            raise FhirProtocolError(f"the server's paging loops back to {url[:300]}", method="GET", url=url)
        return target

    # -- the core ---------------------------------------------------------------------------------------------

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: Mapping[str, Any] | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
        expect: str | None = None,
    ) -> Resource:
        response = await self._send(
            method, path, params=params, body=body, raw=raw, headers=headers, idempotent=idempotent
        )
        if not response.content:
            if expect is None or method == "DELETE":
                return {}
            raise FhirProtocolError(
                f"{method} {response.request.url}: {response.status_code} with an empty body, expected a {expect}",
                method=method,
                url=str(response.request.url),
            )
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise FhirProtocolError(
                f"{method} {response.request.url}: the answer is not JSON ({response.headers.get('content-type')})",
                method=method,
                url=str(response.request.url),
            ) from exc
        if not isinstance(doc, dict) or (expect is not None and doc.get("resourceType") != expect):
            found = doc.get("resourceType") if isinstance(doc, dict) else type(doc).__name__
            raise FhirProtocolError(
                f"{method} {response.request.url}: expected a {expect}, got {found!r}",
                method=method,
                url=str(response.request.url),
            )
        return doc

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: list[tuple[str, str]] | None = None,
        body: Mapping[str, Any] | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool,
    ) -> httpx.Response:
        absolute = path.lower().startswith(("http://", "https://"))
        url = path if absolute else f"{self.base_url}/{path}".rstrip("/")
        request_headers = dict(headers or {})
        content = None
        if body is not None or raw is not None:
            content = raw if raw is not None else orjson.dumps(body, default=json_default)
            request_headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        if method in ("GET", "HEAD") and self._wrote:
            request_headers["Cache-Control"] = "no-cache"
        if method not in ("GET", "HEAD"):
            # Before sending: a write that times out may still have been committed.
            self._wrote = True

        policy = self.retry

        def retry_on(exc: Exception) -> bool | float:
            if isinstance(exc, FhirTransportError):
                return idempotent or not exc.request_sent
            if isinstance(exc, FhirHttpError) and idempotent and exc.status in RETRY_STATUSES:
                if exc.retry_after is None:
                    return True
                return exc.retry_after if exc.retry_after <= policy.max_retry_after else False
            return False

        async for attempt in stamina.retry_context(
            on=retry_on,
            attempts=policy.attempts,
            timeout=None,
            wait_initial=policy.wait_initial,
            wait_max=policy.wait_max,
            wait_jitter=policy.wait_jitter,
        ):
            with attempt:
                response = await self._attempt(method, url, params, content, request_headers)
        return response

    async def _attempt(
        self,
        method: str,
        url: str,
        params: list[tuple[str, str]] | None,
        content: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, url, params=tuple(params) if params is not None else None, content=content, headers=headers
            )
        except httpx.UnsupportedProtocol as exc:
            raise FhirProtocolError(f"{method} {url}: {exc}", method=method, url=url) from exc
        except httpx.TransportError as exc:
            # Nothing reached the server when the connection (or a pooled one) could not be had.
            sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
            kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
            raise FhirTransportError(
                f"{method} {url} {kind}: {type(exc).__name__}: {str(exc) or 'no detail'}",
                method=method,
                url=url,
                request_sent=sent,
            ) from exc
        except httpx.HTTPError as exc:  # e.g. a body that does not decode, a malformed URL
            raise FhirProtocolError(f"{method} {url}: {type(exc).__name__}: {exc}", method=method, url=url) from exc
        if response.status_code >= 400:
            raise _http_error(response, method)
        if not 200 <= response.status_code < 300:
            # Redirects are not followed (credentials must not travel); a 3xx is not a success either.
            where = response.headers.get("location", "")
            raise FhirProtocolError(
                f"{method} {url}: {response.status_code} {response.reason_phrase}"
                + (f" to {where}" if where else "")
                + " (redirects are not followed: configure the final base URL)",
                method=method,
                url=url,
            )
        return response


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    # httpx drops a default port ("http://h:80" has port None), so the scheme's default stands in for it.
    return url.scheme, url.host, url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)


def _show(origin: tuple[str, str, int | None]) -> str:
    scheme, host, port = origin
    return f"{scheme or '(none)'}, {host or '(none)'}, {port if port is not None else '(none)'}"


def _why_not(origin: tuple[str, str, int | None], base: tuple[str, str, int | None]) -> str:
    if origin[0] == "http" and base[0] == "https":
        return "a downgrade from https to http is never followed (our credentials would travel in clear)"
    if origin[0] == "https" and base[0] == "http" and origin[1] == base[1]:
        return "an upgrade from http to https is followed only on the same port"
    return (
        "only the base URL's own scheme, host and port are followed, or an upgrade from http to https on the same "
        "host and port"
    )


def _stale_version(outcome: Mapping[str, Any] | None, if_match_sent: bool) -> bool:
    """True when a 409's OperationOutcome says the version the request named is not the current one."""
    issues = (outcome or {}).get("issue")
    for issue in issues if isinstance(issues, list) else []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details")
        texts = [issue.get("diagnostics"), details.get("text") if isinstance(details, dict) else None]
        text = " ".join(t for t in texts if isinstance(t, str))
        if _STALE_VERSION_CODE.search(text):
            return True
        if if_match_sent and issue.get("code") in _STALE_VERSION_ISSUE_CODES and _STALE_VERSION_TEXT.search(text):
            return True
    return False


def _http_error(response: httpx.Response, method: str) -> FhirHttpError:
    outcome: dict[str, Any] | None = None
    try:
        doc = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and doc.get("resourceType") == "OperationOutcome":
        outcome = doc
    status = response.status_code
    cls = _ERRORS.get(status) or (FhirServerError if status >= 500 else FhirClientError)
    if status == 409 and _stale_version(outcome, "if-match" in response.request.headers):
        cls = PreconditionFailed
    url = str(response.request.url)
    error = cls(
        f"{method} {url}: {status} {response.reason_phrase}".rstrip(),
        status=status,
        outcome=outcome,
        method=method,
        url=url,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )
    details = error.diagnostics()
    if details:
        error.args = (f"{error.args[0]}: {details[0]}" + (f" (+{len(details) - 1} more)" if len(details) > 1 else ""),)
    return error


class FhirClient:
    """The same client for synchronous code: each call runs the async client on a private event loop.

    The loop runs in a daemon thread, so a client that is never closed cannot keep the interpreter from
    exiting. No logic lives here: every method hands its arguments to ``AsyncFhirClient``.
    """

    def __init__(self, base_url: str, **options: Any):
        self._start(lambda: AsyncFhirClient(base_url, **options))

    @classmethod
    def from_settings(
        cls, settings: Settings, *, base_url: str | None = None, transport: httpx.AsyncBaseTransport | None = None
    ) -> FhirClient:
        client = cls.__new__(cls)
        client._start(lambda: AsyncFhirClient.from_settings(settings, base_url=base_url, transport=transport))
        return client

    def _start(self, make: Callable[[], AsyncFhirClient]) -> None:
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="casebridge-fhir", daemon=True)
        self._thread.start()
        try:
            self._client = self._call(_build(make))
        except BaseException:
            self._stop_loop()
            raise
        self.base_url = self._client.base_url

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._client.aclose())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _run(self, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise RuntimeError("the FHIR client is closed")
        return self._call(fn(*args, **kwargs))

    def call(
        self, fn: Callable[Concatenate[AsyncFhirClient, P], Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``fn(async_client, *args, **kwargs)`` on this client's loop: async code over the FHIR client (a push
        under its patient lock, a pull of every page) serves synchronous callers without a copy of its own."""
        if self._closed:
            raise RuntimeError("the FHIR client is closed")
        return self._call(fn(self._client, *args, **kwargs))

    def capabilities(self) -> Resource:
        return self._run(self._client.capabilities)

    def read(self, resource_type: str, resource_id: str) -> Resource:
        return self._run(self._client.read, resource_type, resource_id)

    def vread(self, resource_type: str, resource_id: str, version_id: str) -> Resource:
        return self._run(self._client.vread, resource_type, resource_id, version_id)

    def create(self, resource: Mapping[str, Any], *, if_none_exist: str | None = None) -> Resource:
        return self._run(self._client.create, resource, if_none_exist=if_none_exist)

    def update(self, resource: Mapping[str, Any], *, if_match: str | None = None) -> Resource:
        return self._run(self._client.update, resource, if_match=if_match)

    def delete(self, resource_type: str, resource_id: str) -> None:
        self._run(self._client.delete, resource_type, resource_id)

    def transaction(self, bundle: Mapping[str, Any]) -> Resource:
        return self._run(self._client.transaction, bundle)

    def batch(self, bundle: Mapping[str, Any]) -> Resource:
        return self._run(self._client.batch, bundle)

    def search(self, query: Search) -> Resource:
        return self._run(self._client.search, query)

    def pages(self, query: Search) -> Iterator[Resource]:
        return self._iterate(self._client.pages(query))

    def resources(self, query: Search, *, mode: str | None = "match") -> Iterator[Resource]:
        return self._iterate(self._client.resources(query, mode=mode))

    def _iterate(self, agen: AsyncGenerator[Resource, None]) -> Iterator[Resource]:
        try:
            while True:
                if self._closed:
                    raise RuntimeError("the FHIR client is closed")
                try:
                    yield self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:
                self._call(agen.aclose())


async def _build(make: Callable[[], AsyncFhirClient]) -> AsyncFhirClient:
    # Built inside the client's own event loop, so its connection pool belongs to that loop.
    return make()


__all__ = [
    "AsyncFhirClient",
    "FhirClient",
    "FhirError",
    "RetryPolicy",
    "Search",
    "bundle_is_idempotent",
    "parse_retry_after",
]
