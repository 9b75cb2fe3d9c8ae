"""The audit trail: who wrote or read which patient's data, when, from where, and how it ended.

One JSON line per audited request on the logger ``casebridge.audit`` (and appended to ``CASEBRIDGE_AUDIT_FILE``
when set), optionally one FHIR AuditEvent per interaction shaped as IHE Basic Audit Log Patterns (BALP) in
``CASEBRIDGE_AUDIT_EVENTS_FILE``. What is recorded is identity, never content: the key's name, interactions,
resource types and ids, statuses, the client's address and the request id; no names, codes, values or narrative.

A route starts a record with ``services.audit.begin(request, interaction)`` and fills in what it learns (the
entries attempted, the transaction-response, the pages streamed); the request middleware finishes it once the
answer is over, with the status actually answered, so refusals raised anywhere (a dependency's 403, a 422, an
upstream 502, a stream cut short) are recorded with the rest. A request without a known key (401) is not
audited here: the request log has it.

The audit logger does not propagate to the root logger: the service's own log promises no patient ids, and the
audit trail is made of them. Unless the operator has given ``casebridge.audit`` handlers of its own, its lines go
to standard output (the service's log is on standard error), one bare JSON object per line.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import Request

from casebridge.api.logs import request_id
from casebridge.errors import log_defect
from casebridge.fhir.client import AsyncFhirClient

log = logging.getLogger("casebridge.audit")
service_log = logging.getLogger("casebridge.api")
STATE_KEY = "audit"  # where the record under way is kept in the request's state
MAX_IDS = 1_000  # resource ids (and patients) kept per record; the rest are counted
QUEUE_BATCHES = 1_000  # requests' AuditEvents waiting for the FHIR server; beyond, dropped and counted

Interaction = Literal["transaction", "create", "update", "delete", "patch", "read", "search"]

_BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_SOURCE_ROLE = {"system": _DCM, "code": "110153", "display": "Source Role ID"}
_DESTINATION_ROLE = {"system": _DCM, "code": "110152", "display": "Destination Role ID"}
_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_PERSON = {"system": _ENTITY_TYPE, "code": "1", "display": "Person"}
_SYSTEM_OBJECT = {"system": _ENTITY_TYPE, "code": "2", "display": "System Object"}
_PATIENT_ROLE = {"system": _ROLE, "code": "1", "display": "Patient"}
_DOMAIN_RESOURCE = {"system": _ROLE, "code": "4", "display": "Domain Resource"}
_QUERY_ROLE = {"system": _ROLE, "code": "24", "display": "Query"}
_REQUEST_ID_TYPE = {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"}

# interaction -> (restful-interaction code, AuditEvent.action, BALP pattern)
_PATTERNS: dict[str, tuple[str, str, str | None]] = {
    "create": ("create", "C", "Create"),
    "update": ("update", "U", "Update"),
    "patch": ("patch", "U", "Update"),
    "delete": ("delete", "D", "Delete"),
    "read": ("read", "R", "Read"),
    "search": ("search-type", "E", "Query"),
    # A transaction refused before its entries could be read: BALP has no pattern for it.
    "transaction": ("transaction", "E", None),
}
_METHODS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete", "GET": "read", "HEAD": "read"}


class Audited:
    """One request's audit record while it is under way; finished once (later calls do nothing)."""

    def __init__(self, audit: Audit, request: Request, interaction: Interaction, resource_type: str | None) -> None:
        self._audit = audit
        self._state = request.scope.setdefault("state", {})
        self.interaction = interaction
        self.resource_type = resource_type
        self.request_id = request_id.get()
        client = request.scope.get("client")
        self.client = str(client[0]) if client else "-"  # the socket's peer: serve trusts no proxy header
        self.method = str(request.scope.get("method", ""))
        self.recorded = _now()
        self.entries: list[dict[str, Any]] = []
        self.entries_left_out = 0
        self.patients: list[str] = []
        self.resources: list[str] = []
        self.left_out = 0
        self.query: str | None = None
        self.error: str | None = None
        self.complete: bool | None = None  # a stream: whether it was sent to its end
        self.view: str | None = None  # a view run: the sha256 of the view's canonical JSON
        self.rows: int | None = None  # a view run: the rows sent
        self._seen: set[str] = set()
        self.finished = False

    # -- what the route learns -------------------------------------------------------------------------------

    def attempted(self, entries: object) -> None:
        """The entries of the transaction Bundle the client sent (``Bundle.entry``): method, type, id, or for a
        conditional URL the names of its search parameters (their values may be business identifiers)."""
        if not isinstance(entries, list):
            return
        full_urls: dict[str, str] = {}
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            request = _mapping(entry.get("request"))
            resource = _mapping(entry.get("resource"))
            method = str(request.get("method") or "").upper()
            url = str(request.get("url") or "")
            path, _, query = url.partition("?")
            parts = [p for p in path.split("/") if p]
            item: dict[str, Any] = {
                "method": method,
                "interaction": _METHODS.get(method, "other"),
                "type": _token(parts[0] if parts else resource.get("resourceType")),
            }
            if query:
                item["conditional"] = sorted({name for name, _ in parse_qsl(query, keep_blank_values=True)})
            elif len(parts) >= 2:
                item["id"] = _token(parts[1])
            elif isinstance(resource.get("id"), str) and method != "POST":
                item["id"] = _token(resource["id"])
            if len(self.entries) < MAX_IDS:
                self.entries.append(item)
            else:
                self.entries_left_out += 1
            if item["type"] == "Patient":
                if "id" in item:
                    self._patient(item["id"])
                if isinstance(entry.get("fullUrl"), str):
                    full_urls[entry["fullUrl"]] = item.get("id", "")
        for entry in entries:  # the patients the other entries are about
            for target in _patient_references(_mapping(_mapping(entry).get("resource"))):
                patient = full_urls.get(target) if target in full_urls else _patient_id(target)
                if patient:
                    self._patient(patient)

    def answered(self, response: object) -> None:
        """The FHIR server's transaction-response: each entry's status, and the id the server gave it."""
        answers = response.get("entry") if isinstance(response, Mapping) else None
        if not isinstance(answers, list):
            return
        for item, answer in zip(self.entries, answers, strict=False):
            reply = answer.get("response") if isinstance(answer, dict) else None
            if not isinstance(reply, dict):
                continue
            item["status"] = _token(reply.get("status"))
            location = _path_parts(str(reply.get("location") or ""))
            if len(location) >= 2 and location[-2] == item["type"]:
                item["id"] = _token(location[-1])
                if item["type"] == "Patient":
                    self._patient(item["id"])

    def searched(self, query: str) -> None:
        """The search as sent to the FHIR server (``Type?name=value...``): kept for the AuditEvent, where BALP
        puts it (base64 in ``entity.query``); the JSON line keeps only the parameter names."""
        self.query = query

    def returned(self, page: object) -> None:
        """A searchset page on its way to the client: its resources' types and ids, and their patients. Past
        ``MAX_IDS`` the rest are counted, not listed; only the listed ones are remembered (memory stays bounded
        however long the stream), so one counted is counted again if a later page sends it again."""
        entries = page.get("entry") if isinstance(page, Mapping) else None
        counted: set[str] = set()  # this page's, past the cap
        for entry in entries if isinstance(entries, list) else []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            reference = f"{_token(resource.get('resourceType'))}/{_token(resource.get('id'))}"
            if reference in self._seen or reference in counted:
                continue
            if len(self.resources) < MAX_IDS:
                self._seen.add(reference)
                self.resources.append(reference)
            else:
                counted.add(reference)
                self.left_out += 1
            if resource.get("resourceType") == "Patient":
                self._patient(_token(resource.get("id")))
            for target in _patient_references(resource):
                if patient := _patient_id(target):
                    self._patient(patient)

    def ran(self, view_digest: str) -> None:
        """A view run: which view (its hash, never its text: a view may quote values); rows are counted in
        ``rows`` as they go out."""
        self.view = view_digest
        self.rows = 0

    def stream(self) -> None:
        """The answer is streamed: it counts as complete only once ``streamed`` is called at its end."""
        self.complete = False

    def streamed(self) -> None:
        self.complete = True

    def about(self, patient: str) -> None:
        """A patient the request names (``Patient/<id>`` or the id)."""
        if patient_id := _patient_id(patient if "/" in patient else f"Patient/{patient}"):
            self._patient(patient_id)

    def _patient(self, patient_id: str) -> None:
        if patient_id and patient_id not in self.patients and len(self.patients) < MAX_IDS:
            self.patients.append(patient_id)

    # -- the end -----------------------------------------------------------------------------------------------

    def finish(self, status: int | str, route: str = "-") -> dict[str, Any] | None:
        """Record it, with the status answered (``"aborted"``: a stream cut short after its start). Returns the
        JSON line's object, or None when there was nothing to record (already finished, or no known key)."""
        if self.finished:
            return None
        self.finished = True
        key = self._state.get("api_key")
        if not key:
            return None  # not authenticated: the request log line has it
        error = self.error
        if self.complete is False and _succeeded(status):
            # Started well, but not sent to the end (the client hung up): some of it reached the client.
            error = error or "the client closed the connection"
        line = self._line(str(key), status, route, error)
        self._audit.write(line, self._events(str(key), status))
        return line

    def _line(self, key: str, status: int | str, route: str, error: str | None) -> dict[str, Any]:
        line: dict[str, Any] = {
            "time": _iso(self.recorded),
            "request_id": self.request_id,
            "key": key,
            "client": self.client,
            "method": self.method,
            "route": route,
            "interaction": self.interaction,
            "status": status,
            "outcome": "success" if _succeeded(status) and self.complete is not False else "failure",
        }
        if self.resource_type:
            line["type"] = self.resource_type
        if error:
            line["error"] = error
        line["patients"] = self.patients
        if self.complete is not None:
            line["complete"] = self.complete
        if self.interaction == "search":
            if self.query is not None:
                line["parameters"] = sorted({name for name, _ in parse_qsl(self.query.partition("?")[2])})
            line["resources"] = self.resources
            line["more"] = self.left_out
            if self.view is not None:
                line["view"] = self.view
                line["rows"] = self.rows
        else:
            line["entries"] = self.entries
            if self.entries_left_out:
                line["more_entries"] = self.entries_left_out
        return line

    def _events(self, key: str, status: int | str) -> list[dict[str, Any]]:
        if not self._audit.events_enabled:
            return []
        if self.interaction == "search":
            outcome = "4" if self.complete is False and _succeeded(status) else _event_outcome(status)
            return [self._event(key, "search", outcome, status, None, self.resources)]
        events = []
        for item in self.entries or [{"interaction": self.interaction, "type": self.resource_type}]:
            kind = item.get("interaction", "other")
            if kind not in _PATTERNS:
                kind = "transaction"
            what = [f"{item['type']}/{item['id']}"] if item.get("id") and item.get("type") else []
            entry_status = item.get("status") or status
            events.append(self._event(key, kind, _event_outcome(entry_status), entry_status, item.get("type"), what))
        return events

    def _event(
        self, key: str, kind: str, outcome: str, status: int | str, resource_type: str | None, what: Sequence[str]
    ) -> dict[str, Any]:
        """A FHIR R4 AuditEvent in the shape of BALP's Create/Update/Delete/Read/Query pattern for one
        interaction: the client (the key) and this server as agents, the patients and the data as entities."""
        subtype, action, pattern = _PATTERNS.get(kind, _PATTERNS["transaction"])
        reads = action in ("R", "E")
        # BALP: the side the data comes from is the source role, the side it goes to the destination.
        client_role, server_role = (_DESTINATION_ROLE, _SOURCE_ROLE) if reads else (_SOURCE_ROLE, _DESTINATION_ROLE)
        one_patient = len(self.patients) == 1
        # An id of its own: the file's copy and the FHIR server's are the same event, and resending it is harmless.
        event: dict[str, Any] = {"resourceType": "AuditEvent", "id": str(uuid.uuid4())}
        if pattern is not None:
            # BALP's Patient* patterns hold exactly one patient; with none or several, the general pattern.
            event["meta"] = {"profile": [_BALP + ("Patient" + pattern if one_patient else pattern)]}
        event |= {
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                "code": "rest",
                "display": "RESTful Operation",
            },
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype, "display": subtype}],
            "action": action,
            "recorded": _iso(self.recorded),
            "outcome": outcome,
            "outcomeDesc": f"HTTP {status}",
            "agent": [
                {
                    "type": {"coding": [client_role]},
                    "who": {"identifier": {"value": key}, "display": key},
                    "requestor": True,
                    "network": {"address": self.client, "type": _address_type(self.client)},
                },
                {"type": {"coding": [server_role]}, "who": {"display": "casebridge"}, "requestor": False},
            ],
            "source": {
                "observer": {"display": "casebridge"},
                "type": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                        "code": "4",
                        "display": "Application Server",
                    }
                ],
            },
        }
        entities: list[dict[str, Any]] = [
            {"what": {"identifier": {"value": self.request_id}}, "type": _REQUEST_ID_TYPE}
        ]
        if kind == "search" and self.query is not None:
            query: dict[str, Any] = {
                "type": _SYSTEM_OBJECT,
                "role": _QUERY_ROLE,
                "query": base64.b64encode(self.query.encode()).decode(),
            }
            if self.view is not None:
                query["detail"] = [
                    {"type": "view-sha256", "valueString": self.view},
                    {"type": "rows", "valueString": str(self.rows)},
                ]
            entities.append(query)
        entities += [
            {"what": {"reference": f"Patient/{p}"}, "type": _PERSON, "role": _PATIENT_ROLE} for p in self.patients
        ]
        data = [{"what": {"reference": r}, "type": _SYSTEM_OBJECT, "role": _DOMAIN_RESOURCE} for r in what]
        if not data and resource_type and kind != "search":
            # What was attempted when its id is not known (a conditional or refused create): its type.
            data = [{"what": {"type": resource_type}, "type": _SYSTEM_OBJECT, "role": _DOMAIN_RESOURCE}]
        event["entity"] = entities + data
        return event


class Audit:
    """Where audit records go: the ``casebridge.audit`` logger, and the files configured. The files are opened
    once, appended to with one ``write`` per line (``O_APPEND``: a line is never split by another writer), and
    written by the HTTP process only (the worker processes never record)."""

    def __init__(self, *, file: Path | None = None, events_file: Path | None = None) -> None:
        _own_handler()
        self._fd = _open_append(file) if file is not None else None
        self._events_fd = _open_append(events_file) if events_file is not None else None
        self._server: _ServerSink | None = None
        self.events_enabled = self._events_fd is not None

    @classmethod
    def from_settings(cls, settings: Any) -> Audit:
        return cls(file=settings.audit_file, events_file=settings.audit_events_file)

    def to_server(self, client: AsyncFhirClient, count: Callable[[str, int], None]) -> None:
        """Also store the AuditEvents on the FHIR server, in the background (see ``_ServerSink``); ``count(outcome,
        n)`` counts them by outcome: stored, failed, dropped."""
        self._server = _ServerSink(client, count)
        self.events_enabled = True

    def begin(
        self,
        request: Request,
        interaction: Interaction,
        *,
        resource_type: str | None = None,
    ) -> Audited:
        """Start the audit record of this request (at most one; a second call returns the first). The request
        middleware finishes it with the status answered."""
        state = request.scope.setdefault("state", {})
        existing = state.get(STATE_KEY)
        if isinstance(existing, Audited):
            return existing
        audited = Audited(self, request, interaction, resource_type)
        state[STATE_KEY] = audited
        return audited

    def write(self, line: Mapping[str, Any], events: Sequence[Mapping[str, Any]]) -> None:
        text = orjson.dumps(line)
        log.info(text.decode())
        if self._fd is not None:
            _write(self._fd, text + b"\n")
        if self._events_fd is not None and events:
            _write(self._events_fd, b"".join(orjson.dumps(e) + b"\n" for e in events))
        if self._server is not None and events:
            self._server.put(list(events))

    async def aclose(self) -> None:
        """Give the AuditEvents still queued a few seconds to reach the FHIR server, then close the files."""
        if self._server is not None:
            await self._server.aclose()
        self.close()

    def close(self) -> None:
        for fd in (self._fd, self._events_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._events_fd = None


class _ServerSink:
    """AuditEvents to the FHIR server without holding up the requests they describe: each request's events are
    queued (bounded: beyond ``QUEUE_BATCHES`` they are dropped) and one task sends them, one batch Bundle of PUTs
    per request. Failures are counted and logged by type, never with the events or the server's answer."""

    def __init__(self, client: AsyncFhirClient, count: Callable[[str, int], None]) -> None:
        self.client = client
        self.count = count
        self._queue: asyncio.Queue[list[Mapping[str, Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    def put(self, events: list[Mapping[str, Any]]) -> None:
        if self._queue is None:  # started in the server's event loop, at its first event
            self._queue = asyncio.Queue(QUEUE_BATCHES)
            self._task = asyncio.get_running_loop().create_task(self._run(self._queue))
        try:
            self._queue.put_nowait(events)
        except asyncio.QueueFull:
            self.count("dropped", len(events))
            service_log.warning(
                "audit events dropped: the queue to the FHIR server is full", extra={"events": len(events)}
            )

    async def _run(self, queue: asyncio.Queue[list[Mapping[str, Any]]]) -> None:
        while True:
            events = await queue.get()
            try:
                await self._send(events)
            finally:
                queue.task_done()

    async def _send(self, events: list[Mapping[str, Any]]) -> None:
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            # PUT at their own ids: a retry cannot store one twice.
            "entry": [{"resource": e, "request": {"method": "PUT", "url": f"AuditEvent/{e['id']}"}} for e in events],
        }
        try:
            response = await self.client.batch(bundle)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the request it describes has been answered
            self.count("failed", len(events))
            service_log.warning(
                "audit events not stored on the FHIR server", extra={"error": type(exc).__name__, "events": len(events)}
            )
            return
        answers = response.get("entry")
        statuses = [
            _status_code(str(_mapping(_mapping(a).get("response")).get("status", "")))
            for a in (answers if isinstance(answers, list) else [])
        ]
        stored = sum(1 for status in statuses if status is not None and 200 <= status < 300)
        self.count("stored", stored)
        if stored < len(events):
            self.count("failed", len(events) - stored)
            service_log.warning("audit events refused by the FHIR server", extra={"events": len(events) - stored})

    async def aclose(self, timeout: float = 5.0) -> None:
        if self._queue is None or self._task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            left = sum(len(self._queue.get_nowait()) for _ in range(self._queue.qsize()))
            self.count("dropped", left)
            service_log.warning(
                "audit events dropped at shutdown: the FHIR server did not take them", extra={"events": left}
            )
        self._task.cancel()


def finish_pending(state: Mapping[str, Any] | None, status: int | str, route: str) -> None:
    """The request middleware's end of the request: finish the record a route began, if any."""
    audited = state.get(STATE_KEY) if state else None
    if isinstance(audited, Audited):
        try:
            audited.finish(status, route)
        except Exception as exc:  # noqa: BLE001 - the answer has gone (the file unusable, disk full): say it loudly
            log_defect(service_log, "audit record not written", exc, route=route)


# -- helpers ---------------------------------------------------------------------------------------------------


class _Stdout(logging.StreamHandler[Any]):
    """Standard output as it is at each line (not as it was when the handler was made: tests replace it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout  # under the handler's lock (Handler.handle)
        super().emit(record)


def _own_handler() -> None:
    # Kept out of the service's log (no patient ids there); an operator's own handlers are left alone.
    log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    if not log.handlers:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)


def _open_append(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _succeeded(status: int | str) -> bool:
    code = _status_code(status)
    return code is not None and code < 400


def _status_code(status: int | str) -> int | None:
    if isinstance(status, int):
        return status
    head = status.split()[0] if status.split() else ""
    return int(head) if head.isdigit() else None


def _event_outcome(status: int | str) -> str:
    """0 success, 4 minor failure (the client's: refused, invalid, gone), 8 serious (upstream failed, a stream
    cut short), 12 major (our own defect)."""
    code = _status_code(status)
    if code is None:
        return "8"
    if code < 400:
        return "0"
    if code < 500:
        return "4"
    return "12" if code == 500 else "8"


def _address_type(address: str) -> str:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return "1"  # a machine name
    return "2"  # an IP address


_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._ ")


def _token(value: object) -> str:
    """Types, ids and statuses as the client or server wrote them, kept only while they look like one (at most
    64 characters of [A-Za-z0-9-._ ]): anything else is not an identifier and is not copied into the trail."""
    text = str(value) if isinstance(value, str | int) else ""
    return text if 0 < len(text) <= 64 and set(text) <= _TOKEN_CHARS else "?"


def _patient_references(resource: Mapping[str, Any]) -> Iterable[str]:
    for name in ("subject", "patient"):
        ref = resource.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            yield ref["reference"]


def _path_parts(reference: str) -> list[str]:
    """A reference or location's path segments, without its query and version: [..., Type, id]."""
    return reference.split("?")[0].split("/_history")[0].rstrip("/").split("/")


def _patient_id(reference: str) -> str | None:
    parts = _path_parts(reference)
    if len(parts) >= 2 and parts[-2] == "Patient":
        patient = _token(parts[-1])
        return patient if patient != "?" else None
    return None


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def query_text(resource_type: str, params: Iterable[tuple[str, str]]) -> str:
    """A search as BALP records it: ``Type?name=value&...``."""
    return f"{resource_type}?{urlencode(list(params))}"
