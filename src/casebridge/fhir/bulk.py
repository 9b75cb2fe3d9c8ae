"""A FHIR Bulk Data Access (v2) ``$export`` client: kick-off, status polling, the manifest, resumable downloads.

``run_export(client, ExportRequest(...), folder)`` exports at the system, Patient or Group level (``_type``,
``_since``, ``_typeFilter``, ``_outputFormat``) through an ``AsyncFhirClient``: its transport, auth, timeouts,
retries and error translation. The rules:

- kick-off: ``GET [base]/$export`` (``Patient/$export``, ``Group/[id]/$export``) with ``Accept:
  application/fhir+json`` and ``Prefer: respond-async``; anything but 202 with a ``Content-Location`` is refused;
- polling honours ``Retry-After`` (seconds or an HTTP date); without one the wait starts at ``interval`` and
  grows. Both the total wait and the number of polls are bounded (``PollPolicy``); 429 and an OperationOutcome
  of transient issues only keep polling; any other error status is the export's failure (``BulkExportError``);
- our credentials go only to the server's own origin: a status URL or manifest page elsewhere is refused, a file
  elsewhere is fetched only when the manifest says no token is needed (pre-signed storage URLs), and then without
  the Authorization header; the token goes with file requests only when ``requiresAccessToken`` is true;
- files are streamed to ``<type>.<n>.ndjson`` (errors under ``error/``, deleted under ``deleted/``) through a
  ``.part`` file renamed when complete; every line must be a JSON object of the entry's type, the line count must
  match the manifest's ``count`` when it gives one, and no line may exceed ``MAX_LINE_BYTES``;
- the folder keeps its state in ``.export-state.json`` (the request, the status URL, then the manifest), written
  atomically at each step, so a rerun of the same request resumes: it keeps polling the same job (a new kick-off
  if the server forgot it), skips complete files and continues a ``.part`` with ``Range`` when the server answers
  206 (else it starts that file again). ``manifest.json`` (the server's manifest, each entry with its ``file``) is
  written last, atomically: its presence means the export is complete. A folder holding anything else, or
  another request's export, is refused.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson

from casebridge.errors import (
    BulkExportError,
    FhirHttpError,
    FhirProtocolError,
    FhirTransportError,
    InputError,
    ResourceGone,
    ResourceNotFound,
    TooManyRequests,
)
from casebridge.fhir.client import (
    FHIR_JSON,
    RETRY_STATUSES,
    AsyncFhirClient,
    _check_id,
    _check_type,
    _http_error,
    parse_retry_after,
)
from casebridge.files import shown, write_atomically

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})  # the IG's names for the one format we read
STATE_FILE = ".export-state.json"
MANIFEST_FILE = "manifest.json"
MAX_LINE_BYTES = 64 * 1024 * 1024  # one resource; a server that never sends a newline is not buffered forever
MAX_MANIFEST_PAGES = 10_000
# IssueType codes of the "transient" branch: the job may still finish, so polling goes on. Not "exception", which
# the branch also holds: servers (the embedded one among them) answer a failed job with it.
TRANSIENT_CODES = frozenset({"transient", "lock-error", "no-store", "timeout", "incomplete", "throttled"})
_TYPE_FILTER = re.compile(r"[A-Z][A-Za-z]+\?\S+")

Level = Literal["system", "patient", "group"]
Kind = Literal["output", "error", "deleted"]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """What to export. ``since``: a FHIR instant; ``type_filters``: ``Type?search`` queries (``_typeFilter``)."""

    level: Level = "system"
    group: str | None = None
    types: tuple[str, ...] = ()
    since: str | None = None
    type_filters: tuple[str, ...] = ()
    output_format: str = NDJSON

    def __post_init__(self) -> None:
        if self.level not in ("system", "patient", "group"):
            raise ValueError(f"level {self.level!r}: not system, patient or group")
        if (self.level == "group") != (self.group is not None):
            raise ValueError("a group id goes with the group level, and only with it")
        if self.group is not None:
            _check_id(self.group)
        for kind in self.types:
            _check_type(kind)
        for query in self.type_filters:
            if not _TYPE_FILTER.fullmatch(query):
                raise ValueError(f"type filter {query!r}: not a Type?parameters query (Observation?status=final)")
        if self.since is not None:
            check_instant(self.since)
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output format {self.output_format!r}: only NDJSON ({NDJSON}) is read")

    @property
    def path(self) -> str:
        if self.level == "system":
            return "$export"
        if self.level == "patient":
            return "Patient/$export"
        return f"Group/{self.group}/$export"

    def params(self) -> list[tuple[str, str]]:
        params = [("_outputFormat", self.output_format)]
        if self.types:
            params.append(("_type", ",".join(self.types)))
        if self.since:
            params.append(("_since", self.since))
        # One parameter each: a filter's own query may hold commas.
        params += [("_typeFilter", query) for query in self.type_filters]
        return params


def check_instant(value: str) -> str:
    """A FHIR instant (date, time to the second, a zone), or ValueError."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", value):
        raise ValueError(f"since {value!r}: not an instant (YYYY-MM-DDThh:mm:ss[.sss]Z or +hh:mm)")
    try:
        dt.datetime.fromisoformat(value[:19])
    except ValueError:
        raise ValueError(f"since {value!r}: not a date and time") from None
    return value


def instant(moment: dt.date | dt.datetime) -> str:
    """``_since`` for a date (its midnight, UTC) or an aware date-time: UTC, to the millisecond (``...T10:00:00.000Z``).
    One fixed form, as some servers compare it as text with their ``meta.lastUpdated``."""
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime(moment.year, moment.month, moment.day, tzinfo=dt.UTC)
    if moment.tzinfo is None:
        raise ValueError("a date-time needs its time zone")
    moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How long and how often the status is polled. ``interval``: the first wait when the server gives no
    Retry-After, growing by half each time up to ``max_interval``; ``min_interval``: a floor under any wait."""

    max_wait: float = 3600.0
    max_polls: int = 2000
    interval: float = 1.0
    max_interval: float = 60.0
    min_interval: float = 0.1


@dataclass(frozen=True, slots=True)
class ExportedFile:
    kind: Kind
    type: str
    url: str
    file: str  # relative to the folder
    count: int  # lines (resources)
    bytes: int
    downloaded: bool  # False: complete from an earlier run


@dataclass(frozen=True, slots=True)
class ExportResult:
    folder: Path
    manifest: dict[str, Any]
    files: list[ExportedFile]
    errors: list[ExportedFile]
    deleted: list[ExportedFile]
    polls: int
    resumed: bool  # the job, or its manifest, came from an earlier run

    @property
    def transaction_time(self) -> str:
        return str(self.manifest["transactionTime"])


@dataclass
class _Entry:
    kind: Kind
    type: str
    url: str
    count: int | None
    file: str = ""
    raw: dict[str, Any] = field(default_factory=dict)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


class BulkExporter:
    """One export into one folder, over ``client``. ``sleep`` and ``clock`` are injectable for tests."""

    def __init__(
        self,
        client: AsyncFhirClient,
        folder: Path,
        *,
        policy: PollPolicy | None = None,
        parallel: int = 4,
        download_attempts: int = 4,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        progress: Callable[[str], None] | None = None,
    ):
        self.client = client
        self.folder = folder
        self.policy = policy or PollPolicy()
        self.parallel = max(1, parallel)
        self.download_attempts = max(1, download_attempts)
        self.sleep = sleep
        self.clock = clock
        self.progress = progress or (lambda _message: None)
        self._base = httpx.URL(client.base_url + "/")

    # -- the whole run ----------------------------------------------------------------------------------

    async def run(self, request: ExportRequest) -> ExportResult:
        state = self._open_folder()
        # As JSON gives it back (lists), so that it compares equal to a saved one.
        key = {"server": self.client.base_url, "path": request.path, "params": [list(p) for p in request.params()]}
        if state is not None and state.get("request") != key:
            raise InputError(
                "the folder holds another export (of another server or request): choose an empty folder",
                source=shown(self.folder),
            )
        polls = 0
        manifest = state.get("manifest") if state else None
        resumed = manifest is not None
        if manifest is None:
            status_url = state.get("status_url") if state else None
            if isinstance(status_url, str):
                try:
                    manifest, polls = await self.poll(status_url)
                    resumed = True
                except (ResourceNotFound, ResourceGone):
                    self.progress("the server no longer knows the earlier export: starting a new one")
                    status_url = None
            if manifest is None:
                status_url = await self.kick_off(request)
                self._save_state({"request": key, "status_url": status_url, "manifest": None})
                manifest, polls = await self.poll(status_url)
            self._save_state({"request": key, "status_url": status_url, "manifest": manifest})
        entries = self._entries(manifest)
        done = await self.download_all(entries, bool(manifest.get("requiresAccessToken")))
        written = dict(manifest)
        for kind in ("output", "error", "deleted"):
            if kind in written or kind != "deleted":
                written[kind] = [{**e.raw, "file": e.file} for e in entries if e.kind == kind]
        write_atomically(self.folder / MANIFEST_FILE, orjson.dumps(written, option=orjson.OPT_INDENT_2) + b"\n")
        return ExportResult(
            folder=self.folder,
            manifest=written,
            files=[f for f in done if f.kind == "output"],
            errors=[f for f in done if f.kind == "error"],
            deleted=[f for f in done if f.kind == "deleted"],
            polls=polls,
            resumed=resumed,
        )

    def _open_folder(self) -> dict[str, Any] | None:
        """The folder's saved state; None for an empty (or new) folder. Anything else there: refused."""
        source = shown(self.folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            names = {p.name for p in self.folder.iterdir()}
        except OSError as exc:
            raise InputError(f"cannot use the folder: {exc.strerror}", source=source) from exc
        if STATE_FILE not in names:
            if names:
                raise InputError(
                    "the folder is not empty and holds no export to resume: choose an empty folder", source=source
                )
            return None
        try:
            state = orjson.loads((self.folder / STATE_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InputError(f"{STATE_FILE} cannot be read: {exc}", source=source) from exc
        if not isinstance(state, dict):
            raise InputError(f"{STATE_FILE} is not an export state", source=source)
        return state

    def _save_state(self, state: Mapping[str, Any]) -> None:
        write_atomically(self.folder / STATE_FILE, orjson.dumps(state, option=orjson.OPT_INDENT_2) + b"\n")

    # -- kick-off and status ----------------------------------------------------------------------------

    async def kick_off(self, request: ExportRequest) -> str:
        """Start the export; returns the status URL."""
        response = await self.client._send(
            "GET",
            request.path,
            params=request.params(),
            headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
            idempotent=False,  # each kick-off starts a job: not repeated once the server may have seen it
        )
        url = str(response.request.url)
        if response.status_code != 202:
            raise FhirProtocolError(
                f"GET {url}: {response.status_code} to an export kick-off, expected 202 Accepted",
                method="GET",
                url=url,
            )
        location = response.headers.get("content-location")
        if not location:
            raise FhirProtocolError(f"GET {url}: 202 without a Content-Location", method="GET", url=url)
        status_url = self._own(location, "status URL")
        self.progress(f"export accepted; status at {status_url}")
        return status_url

    async def poll(self, status_url: str) -> tuple[dict[str, Any], int]:
        """Poll until the manifest comes; (the manifest, polls made)."""
        policy = self.policy
        deadline = self.clock() + policy.max_wait
        interval = policy.interval
        last = ""
        for polls in range(1, policy.max_polls + 1):
            wait: float | None
            try:
                response = await self.client._send(
                    "GET", status_url, headers={"Accept": "application/json"}, idempotent=True
                )
            except TooManyRequests as exc:  # polling too often: wait as asked
                wait, last = exc.retry_after, "429 Too Many Requests"
            except (ResourceNotFound, ResourceGone):
                raise
            except FhirHttpError as exc:
                codes = {str(i.get("code")) for i in (exc.outcome or {}).get("issue") or [] if isinstance(i, dict)}
                if not codes or not codes <= TRANSIENT_CODES:
                    details = exc.diagnostics()
                    raise BulkExportError(
                        f"the server reports that the export failed ({exc.status})"
                        + (f": {'; '.join(details[:3])}" if details else ""),
                        outcome=exc.outcome,
                        method="GET",
                        url=status_url,
                    ) from exc
                wait, last = exc.retry_after, f"{exc.status}, transient: {', '.join(sorted(codes))}"
            else:
                if response.status_code == 200:
                    self.progress(f"export complete after {polls} status request(s)")
                    return await self._manifest(response, status_url), polls
                if response.status_code != 202:
                    raise FhirProtocolError(
                        f"GET {status_url}: {response.status_code} from an export status, expected 202 or 200",
                        method="GET",
                        url=status_url,
                    )
                wait = parse_retry_after(response.headers.get("retry-after"))
                last = response.headers.get("x-progress", "in progress")[:200]
                self.progress(f"in progress: {last}")
            if wait is None:
                wait, interval = interval, min(policy.max_interval, interval * 1.5)
            wait = max(wait, policy.min_interval)
            if polls == policy.max_polls:
                break
            if self.clock() + wait > deadline:
                raise BulkExportError(
                    f"the export is not complete after {policy.max_wait:g} s (last status: {last}); "
                    "the job is kept: run the same export into the same folder to keep waiting",
                    method="GET",
                    url=status_url,
                )
            await self.sleep(wait)
        raise BulkExportError(
            f"the export is not complete after {policy.max_polls} status requests (last status: {last}); "
            "the job is kept: run the same export into the same folder to keep waiting",
            method="GET",
            url=status_url,
        )

    async def cancel(self, status_url: str) -> None:
        """Ask the server to stop the export and drop its files (``DELETE`` on the status URL)."""
        await self.client._send("DELETE", self._own(status_url, "status URL"), idempotent=True)

    async def _manifest(self, response: httpx.Response, status_url: str) -> dict[str, Any]:
        """The complete manifest: its pages (``link[next]``, Bulk Data v2) merged into one."""
        manifest = _manifest_doc(response.content, status_url)
        seen = {status_url}
        page = manifest
        for _ in range(MAX_MANIFEST_PAGES):
            links = page.get("link")
            next_url = next(
                (
                    link.get("url")
                    for link in (links if isinstance(links, list) else [])
                    if isinstance(link, dict) and link.get("relation") == "next"
                ),
                None,
            )
            if not isinstance(next_url, str):
                manifest.pop("link", None)
                return manifest
            target = self._own(next_url, "manifest page")
            if target in seen:
                raise FhirProtocolError(f"the manifest's pages loop back to {target[:300]}", method="GET", url=target)
            seen.add(target)
            response = await self.client._send("GET", target, headers={"Accept": "application/json"}, idempotent=True)
            page = _manifest_doc(response.content, target)
            for kind in ("output", "error", "deleted"):
                if page.get(kind):
                    manifest[kind] = [*manifest.get(kind, []), *page[kind]]
        raise FhirProtocolError(f"more than {MAX_MANIFEST_PAGES:,} manifest pages", method="GET", url=status_url)

    def _own(self, url: str, what: str) -> str:
        """An absolute URL on the FHIR server's own origin (a relative one is resolved against the base)."""
        try:
            target = self._base.join(url)
        except httpx.InvalidURL as exc:
            raise FhirProtocolError(f"the {what} is not a URL: {url[:300]}", url=url) from exc
        if _origin(target) != _origin(self._base) or target.userinfo:
            raise FhirProtocolError(
                f"refusing a {what} outside the FHIR server {self.client.base_url} (it would carry our credentials "
                f"there): {url[:300]}",
                url=url,
            )
        return str(target)

    # -- downloads --------------------------------------------------------------------------------------

    def _entries(self, manifest: Mapping[str, Any]) -> list[_Entry]:
        entries: list[_Entry] = []
        numbers: dict[tuple[str, str], int] = {}
        for kind in ("output", "error", "deleted"):
            items = manifest.get(kind) or []
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise _bad_manifest(f"{kind}[{i}] is not an object")
                kind_type = item.get("type")
                if not isinstance(kind_type, str) or not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", kind_type):
                    raise _bad_manifest(f"{kind}[{i}].type is not a resource type")
                url = item.get("url")
                if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
                    raise _bad_manifest(f"{kind}[{i}].url is not an absolute http(s) URL")
                count = item.get("count")
                if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
                    raise _bad_manifest(f"{kind}[{i}].count is not a count")
                number = numbers[(kind, kind_type)] = numbers.get((kind, kind_type), 0) + 1
                name = f"{kind_type}.{number}.ndjson"
                file = name if kind == "output" else f"{kind}/{name}"
                entries.append(_Entry(kind, kind_type, url, count, file, dict(item)))
        return entries

    async def download_all(self, entries: list[_Entry], token: bool) -> list[ExportedFile]:
        gate = asyncio.Semaphore(self.parallel)
        results: dict[int, ExportedFile] = {}

        async def one(i: int, entry: _Entry) -> None:
            async with gate:
                results[i] = await self.download(entry, token)

        try:
            async with asyncio.TaskGroup() as group:  # one failure stops the others; their .part files stay
                for i, entry in enumerate(entries):
                    group.create_task(one(i, entry))
        except ExceptionGroup as failed:  # callers catch our exceptions, not groups of them
            raise failed.exceptions[0] from None
        return [results[i] for i in range(len(entries))]

    async def download(self, entry: _Entry, token: bool) -> ExportedFile:
        """One file, into place; complete files are left as they are, a ``.part`` is continued."""
        target = self.folder / entry.file
        if target.is_file():
            lines, size, _ = _scan(target)
            return ExportedFile(entry.kind, entry.type, entry.url, entry.file, lines, size, downloaded=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        url = httpx.URL(entry.url)
        own = _origin(url) == _origin(self._base) and not url.userinfo
        if token and not own:
            raise FhirProtocolError(
                f"refusing to send our token for a file outside the FHIR server {self.client.base_url}: "
                f"{entry.url[:300]}",
                method="GET",
                url=entry.url,
            )
        for attempt in range(1, self.download_attempts + 1):
            try:
                lines, size = await self._fetch(entry, part, send_token=token)
            except (FhirTransportError, FhirHttpError) as exc:
                retryable = isinstance(exc, FhirTransportError) or exc.status in RETRY_STATUSES
                if not retryable or attempt == self.download_attempts:
                    raise
                after = exc.retry_after if isinstance(exc, FhirHttpError) else None
                wait = after if after is not None else min(self.policy.max_interval, 2.0 ** (attempt - 1))
                self.progress(f"{entry.file}: {exc}; trying again in {wait:g} s")
                await self.sleep(wait)
                continue
            if entry.count is not None and entry.count != lines:
                part.unlink(missing_ok=True)
                raise FhirProtocolError(
                    f"{entry.url}: {lines} resources, the manifest says {entry.count}", method="GET", url=entry.url
                )
            os.replace(part, target)
            return ExportedFile(entry.kind, entry.type, entry.url, entry.file, lines, size, downloaded=True)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def _fetch(self, entry: _Entry, part: Path, *, send_token: bool) -> tuple[int, int]:
        """Stream the file into ``part`` (continued with Range when the server allows); (lines, bytes)."""
        lines, offset = 0, 0
        if part.is_file():
            lines, offset = _complete_lines(part)  # up to the last complete line: a cut line is fetched again
        http = self.client._http
        request = http.build_request("GET", entry.url, headers={"Accept": NDJSON})
        if offset:
            request.headers["Range"] = f"bytes={offset}-"
        if not send_token:
            request.headers.pop("Authorization", None)
        try:
            # The client's auth (a bearer token, SMART) only when the manifest asks for it; httpx.Auth(): none.
            response = (
                await http.send(request, stream=True)
                if send_token
                else await http.send(request, stream=True, auth=httpx.Auth())
            )
        except httpx.TransportError as exc:
            raise _transport_error(exc, entry.url) from exc
        try:
            if response.status_code >= 400:
                await response.aread()
                if response.status_code == 416 and offset:  # the server cannot continue it: start again
                    part.unlink(missing_ok=True)
                raise _http_error(response, "GET")
            if response.status_code == 206 and offset and _range_start(response) == offset:
                mode = "r+b"
            elif response.status_code == 200:
                lines, offset, mode = 0, 0, "wb"
            else:
                raise FhirProtocolError(
                    f"GET {entry.url}: {response.status_code} to a file request", method="GET", url=entry.url
                )
            check = _LineCheck(entry, lines)
            with open(part, mode) as fh:
                fh.seek(offset)
                fh.truncate()
                try:
                    async for chunk in response.aiter_bytes():  # as received: a cut keeps what came
                        check.feed(chunk)
                        fh.write(chunk)
                except httpx.TransportError as exc:
                    fh.flush()
                    raise _transport_error(exc, entry.url) from exc
                check.finish()
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
        finally:
            await response.aclose()
        return check.lines, size


class _LineCheck:
    """Each complete line a JSON object of the entry's type, counted; no line longer than MAX_LINE_BYTES."""

    def __init__(self, entry: _Entry, lines: int):
        self.entry = entry
        self.lines = lines
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        data = self.tail + chunk
        end = data.rfind(b"\n")
        if end < 0:
            self.tail = data
        else:
            for line in data[:end].split(b"\n"):
                self._line(line)
            self.tail = data[end + 1 :]
        if len(self.tail) > MAX_LINE_BYTES:
            raise self._bad(f"a line longer than {MAX_LINE_BYTES:,} bytes")

    def finish(self) -> None:
        self._line(self.tail)
        self.tail = b""

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise self._bad("not JSON") from None
        if not isinstance(doc, dict) or doc.get("resourceType") != self.entry.type:
            found = doc.get("resourceType") if isinstance(doc, dict) else type(doc).__name__
            raise self._bad(f"a {found!r} in a file of {self.entry.type}")
        self.lines += 1

    def _bad(self, what: str) -> FhirProtocolError:
        return FhirProtocolError(f"{self.entry.url}: line {self.lines + 1}: {what}", method="GET", url=self.entry.url)


def _scan(path: Path) -> tuple[int, int, int]:
    """(non-blank lines, size, offset just after the last newline) of a file, a line at a time (each was
    checked against MAX_LINE_BYTES when it was written). A last line without its newline counts: in a complete
    file it is the last resource; a ``.part`` is continued from the offset, so its cut line is fetched again
    and must not be counted there (``_fetch`` counts up to the offset only)."""
    lines = size = last = 0
    with open(path, "rb") as fh:
        for line in fh:
            size += len(line)
            if line.endswith(b"\n"):
                last = size
            if line.strip():
                lines += 1
    return lines, size, last


def _complete_lines(path: Path) -> tuple[int, int]:
    """(non-blank lines, offset) of a ``.part`` up to its last newline."""
    lines, _, last = _scan(path)
    with open(path, "rb") as fh:
        fh.seek(last)
        if fh.read().strip():  # a cut last line (at most MAX_LINE_BYTES): not counted, fetched again
            lines -= 1
    return lines, last


def _range_start(response: httpx.Response) -> int | None:
    found = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("content-range", "").strip())
    return int(found.group(1)) if found else None


def _transport_error(exc: httpx.TransportError, url: str) -> FhirTransportError:
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return FhirTransportError(
        f"GET {url} {kind}: {type(exc).__name__}: {str(exc) or 'no detail'}",
        method="GET",
        url=url,
        request_sent=not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout),
    )


def _bad_manifest(what: str) -> FhirProtocolError:
    return FhirProtocolError(f"the export manifest is not usable: {what}")


def _manifest_doc(content: bytes, url: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise FhirProtocolError(f"GET {url}: the export manifest is not JSON", method="GET", url=url) from None
    if not isinstance(doc, dict):
        raise FhirProtocolError(f"GET {url}: the export manifest is not a JSON object", method="GET", url=url)
    if not isinstance(doc.get("transactionTime"), str):
        raise FhirProtocolError(f"GET {url}: the export manifest has no transactionTime", method="GET", url=url)
    if not isinstance(doc.get("requiresAccessToken", False), bool):  # "false" as text must not read as true
        raise FhirProtocolError(
            f"GET {url}: the manifest's requiresAccessToken is not a boolean", method="GET", url=url
        )
    for kind in ("output", "error", "deleted"):
        if kind in doc and not isinstance(doc[kind], list):
            raise FhirProtocolError(f"GET {url}: the manifest's {kind} is not an array", method="GET", url=url)
    return doc


async def run_export(
    client: AsyncFhirClient,
    request: ExportRequest,
    folder: Path,
    *,
    policy: PollPolicy | None = None,
    progress: Callable[[str], None] | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ExportResult:
    """Export into ``folder`` (new or empty, or holding this same export to resume)."""
    exporter = BulkExporter(client, folder, policy=policy, progress=progress, sleep=sleep, clock=clock)
    return await exporter.run(request)


__all__ = [
    "MANIFEST_FILE",
    "NDJSON",
    "STATE_FILE",
    "BulkExporter",
    "ExportRequest",
    "ExportResult",
    "ExportedFile",
    "PollPolicy",
    "instant",
    "run_export",
]
