"""POST /ViewDefinition/$viewdefinition-run: SQL on FHIR v2's run operation, over the FHIR server behind the API.

The body is a Parameters resource (JSON). Taken, each at most once unless said:
- ``viewResource`` (a ViewDefinition inline) or ``viewReference`` (a shipped view: ``ViewDefinition/<name>`` or the
  view's canonical url, as valueReference, valueCanonical or valueString): exactly one;
- ``_format``: ndjson (default), csv or json (one JSON array of row objects); ``header`` (csv: false leaves the
  header row out);
- ``patient`` (repeatable, at most 100): ``Patient/<id>`` or an id; the search keeps that patient's resources
  (``patient=``; ``_id=`` for a Patient view);
- ``_since``: resources changed at or after (``_lastUpdated=ge``), a date or an instant with its zone;
- ``_limit``: at most this many rows (1 to ``CASEBRIDGE_VIEW_RUN_MAX_ROWS``); the answer is complete when reached.
Every other parameter (``group``, ``resource``, ``source``...) is refused with 400 naming it: a parameter
quietly ignored would answer another question than the one asked.

A view that cannot be run is 422 with the OperationOutcome of ``read_view`` (each issue naming the view's
element). The resources are fetched by search, page by page, and run through the view as they come (each page
in a thread, so the event loop keeps serving); rows are streamed. The first page is fetched and run before the
answer starts, so an unreachable server (502/503/504), a first page the view cannot read (422) and a search whose
``total`` is over ``CASEBRIDGE_VIEW_RUN_MAX_RESOURCES`` (422 too-costly) are clean answers. Past that, a stream
that meets a resource the view cannot read, the resource bound (when the server gave no total) or, without
``_limit``, ``CASEBRIDGE_VIEW_RUN_MAX_ROWS`` is cut short: the client sees an incomplete answer, and the audit
record says why. A read key suffices: the key needs ``s`` and ``r`` on the view's resource type. Audited as a
search: the query, the ids read, the patients, the view's sha256 and the rows sent.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import StreamingResponse

from casebridge.api import examples
from casebridge.api.audit import Audited, query_text
from casebridge.api.body import JSON_TYPES, media_type, parse_fhir, read_body
from casebridge.api.deps import ReadKey, ServicesDep
from casebridge.api.errors import ApiError
from casebridge.api.security import require_scopes
from casebridge.config import Settings
from casebridge.errors import FhirError
from casebridge.fhir.search import Search
from casebridge.files import csv_cell
from casebridge.pull import page_entries, parse_since
from casebridge.views import (
    NamedView,
    ResourceList,
    ViewDefinitionError,
    ViewEvaluationError,
    csv_text,
    read_view,
    view_digest,
    view_rows,
)
from casebridge.views.shipped import shipped_view, shipped_view_names

router = APIRouter(tags=["views"])
MEDIA = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8", "json": "application/json"}
PAGE_SIZE = 200  # resources per upstream page: one page's rows are made in one go
BATCH = 2_000  # rows made per hop to the thread (the rows of one page are never all held at once)
MAX_PATIENTS = 100
_TAKEN = frozenset({"viewResource", "viewReference", "_format", "header", "patient", "_since", "_limit"})
_REPEATABLE = frozenset({"patient"})
_SHIPPED_URL = "https://casebridge.example.org/fhir/ViewDefinition/"


class _CutShort(Exception):
    """The stream stops before its end (a bound reached, a resource the view cannot read): see the audit."""


@dataclass(frozen=True)
class RunRequest:
    view: NamedView
    fmt: str
    header: bool
    patients: tuple[str, ...]
    since: str | None
    limit: int | None


def _bad(text: str, where: str, code: str = "invalid", status: int = 400) -> ApiError:
    return ApiError.of(status, code, text, where)


def _value(param: dict[str, Any], where: str, *kinds: str) -> Any:
    for kind in kinds:
        if f"value{kind}" in param:
            return param[f"value{kind}"]
    raise _bad(f"expected value{' or value'.join(kinds)}", where)


def read_parameters(doc: dict[str, Any], settings: Settings) -> RunRequest:
    """The run asked for, from the Parameters body; ApiError (400, or 422 for a view that cannot be run, 404 for an
    unknown shipped view) naming the parameter."""
    if doc.get("resourceType") != "Parameters":
        raise _bad("the body must be a Parameters resource", "Parameters", "structure")
    raw = doc.get("parameter")
    if not isinstance(raw, list) or not raw:
        raise _bad("a Parameters body needs viewResource or viewReference", "Parameters.parameter", "required")
    found: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for i, param in enumerate(raw):
        where = f"Parameters.parameter[{i}]"
        name = param.get("name") if isinstance(param, dict) else None
        if not isinstance(name, str):
            raise _bad("a parameter needs a name", where, "structure")
        if name not in _TAKEN:
            raise _bad(
                f"the parameter {name[:60]!r} is not supported here; supported: {', '.join(sorted(_TAKEN))}",
                f"{where}.name",
                "not-supported",
            )
        if name in found and name not in _REPEATABLE:
            raise _bad(f"{name} is given twice", where)
        found.setdefault(name, []).append((where, param))

    views = found.get("viewResource", []) + found.get("viewReference", [])
    if len(views) != 1:
        raise _bad("give exactly one of viewResource and viewReference", "Parameters.parameter", "required")
    where, param = views[0]
    if param["name"] == "viewResource":
        view = param.get("resource")
        if not isinstance(view, dict) or view.get("resourceType") != "ViewDefinition":
            raise _bad("viewResource must hold a ViewDefinition", f"{where}.resource", "structure")
        name = "view"
    else:
        name, view = _shipped(_value(param, where, "Reference", "Canonical", "String"), where)
    try:
        plan = read_view(view, source="viewResource")
    except ViewDefinitionError as exc:
        raise ApiError(422, exc.outcome()) from exc
    named = NamedView(plan.name or name, plan, view_digest(view))

    fmt = "ndjson"
    if "_format" in found:
        where, param = found["_format"][0]
        fmt = str(_value(param, where, "Code", "String"))
        fmt = {"application/x-ndjson": "ndjson", "application/ndjson": "ndjson", "text/csv": "csv"}.get(fmt, fmt)
        if fmt not in MEDIA:
            raise _bad(f"_format {fmt[:40]!r} is not offered: ndjson, csv or json", where, "not-supported")
    header = True
    if "header" in found:
        where, param = found["header"][0]
        header = _value(param, where, "Boolean")
        if not isinstance(header, bool):
            raise _bad("header: true or false", where)
    patients = tuple(_patient(param, where) for where, param in found.get("patient", []))
    if len(patients) > MAX_PATIENTS:
        raise _bad(f"at most {MAX_PATIENTS} patients per run", "Parameters.parameter", "too-costly", 422)
    since = None
    if "_since" in found:
        where, param = found["_since"][0]
        text = _value(param, where, "Instant", "DateTime", "Date", "String")
        try:
            since = parse_since(str(text)).isoformat()
        except ValueError as exc:
            raise _bad(str(exc).replace("since:", "_since:"), where) from exc
    limit = None
    if "_limit" in found:
        where, param = found["_limit"][0]
        limit = _value(param, where, "Integer", "PositiveInt", "UnsignedInt")
        if type(limit) is not int or not 1 <= limit <= settings.view_run_max_rows:
            raise _bad(f"_limit: a whole number from 1 to {settings.view_run_max_rows:,}", where)
    return RunRequest(named, fmt, header, patients, since, limit)


def _shipped(value: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A shipped view by ``ViewDefinition/<name>`` or its canonical url: its name and JSON; 404 otherwise."""
    text = value.get("reference") if isinstance(value, dict) else value
    if not isinstance(text, str) or not text:
        raise _bad("viewReference: ViewDefinition/<name> of a shipped view, or its url", where)
    name = text.removeprefix(_SHIPPED_URL) if text.startswith(_SHIPPED_URL) else text.removeprefix("ViewDefinition/")
    if "/" in name or name not in shipped_view_names():
        raise _bad(
            f"no shipped view {text[:80]!r}; the shipped views are ViewDefinition/ and one of "
            f"{', '.join(shipped_view_names())}",
            where,
            "not-found",
            404,
        )
    return name, shipped_view(name)


def _patient(param: dict[str, Any], where: str) -> str:
    value = _value(param, where, "Reference", "Id", "String")
    text = value.get("reference") if isinstance(value, dict) else value
    if isinstance(text, str):
        key = text.removeprefix("Patient/")
        if key and len(key) <= 64 and all(c.isalnum() or c in "-." for c in key):
            return key
    raise _bad("patient: Patient/<id> or an id (letters, digits, - and ., at most 64)", where)


def search_for(asked: RunRequest) -> Search:
    """The search of the view's resources: by _id, paged, with the patients and _since asked for."""
    kind = asked.view.plan.resource
    query = Search(kind).count(PAGE_SIZE).sort("_id")
    if asked.patients:
        if kind == "Patient":
            query = query.where(_id=list(asked.patients))
        else:
            query = query.where(patient=[f"Patient/{p}" for p in asked.patients])
    if asked.since:
        query = query.since(asked.since)
    return query


def _take(rows: Iterator[tuple[Any, ...]], n: int) -> list[tuple[Any, ...]]:
    return list(islice(rows, n))


class _Writer:
    """Rows as bytes in the format asked for."""

    def __init__(self, asked: RunRequest) -> None:
        self.fmt = asked.fmt
        self.names = [c.name for c in asked.view.columns]
        self.first = True
        self.header = asked.header

    def start(self) -> bytes:
        if self.fmt == "json":
            return b"["
        if self.fmt == "csv" and self.header:
            return self._csv([[csv_cell(n) for n in self.names]])
        return b""

    def rows(self, rows: list[tuple[Any, ...]]) -> bytes:
        if self.fmt == "csv":
            return self._csv([[csv_cell(csv_text(v)) for v in row] for row in rows])
        items = [orjson.dumps(dict(zip(self.names, row, strict=True))) for row in rows]
        if self.fmt == "ndjson":
            return b"".join(item + b"\n" for item in items)
        if not items:
            return b""
        text = (b"" if self.first else b",") + b",".join(items)
        self.first = False
        return text

    def end(self) -> bytes:
        return b"]" if self.fmt == "json" else b""

    @staticmethod
    def _csv(rows: list[list[str]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        return buffer.getvalue().encode()


async def _produce(
    asked: RunRequest,
    pages: AsyncIterator[dict[str, Any]],
    audited: Audited,
    settings: Settings,
) -> AsyncIterator[bytes]:
    """The answer's chunks. The first is yielded once the first page's rows are made (or the run is over)."""
    writer = _Writer(asked)
    limit = asked.limit or settings.view_run_max_rows
    pending: list[bytes] | None = [writer.start()]  # held until the first page's rows are made
    seen: set[str] = set()
    read = 0
    rows = 0
    async for page in pages:
        audited.returned(page)
        resources = []
        for key, resource, _ in page_entries(page):
            entry_type = resource.get("resourceType")
            if entry_type == asked.view.plan.resource and key not in seen:
                seen.add(key)  # a server may repeat a match across pages while data changes
                resources.append(resource)
        read += len(resources)
        if read > settings.view_run_max_resources:
            bound = settings.view_run_max_resources
            raise _CutShort(f"more than {bound:,} resources (CASEBRIDGE_VIEW_RUN_MAX_RESOURCES)")
        source = ResourceList(resources, name="FHIR server")
        made = view_rows(asked.view, source, None)
        while True:
            try:
                batch = await asyncio.to_thread(_take, made, min(BATCH, limit - rows + 1))
            except ViewEvaluationError as exc:
                if rows == 0 and pending is not None:
                    raise  # nothing sent yet: a 422 naming the resource
                raise _CutShort(f"a resource the view cannot read: {source.position()}") from exc
            if not batch:
                break
            if rows + len(batch) > limit:
                if asked.limit is None:
                    raise _CutShort(f"more than {limit:,} rows (CASEBRIDGE_VIEW_RUN_MAX_ROWS); ask with _limit")
                batch = batch[: limit - rows]
            rows += len(batch)
            audited.rows = rows
            chunk = writer.rows(batch)
            if pending is not None:
                pending.append(chunk)
            else:
                yield chunk
            if rows >= limit and asked.limit is not None:
                break
        if pending is not None:
            yield b"".join(pending)
            pending = None
        if rows >= limit and asked.limit is not None:
            break
    if pending is not None:
        yield b"".join(pending)
    yield writer.end()


@router.post(
    "/ViewDefinition/$viewdefinition-run",
    summary="Run a SQL on FHIR ViewDefinition over the FHIR server's resources, rows streamed",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Streamed rows: NDJSON (default), CSV or a JSON array.",
            "content": {
                "application/x-ndjson": {"example": '{"patient_id":"...","gender":"female"}\n'},
                "text/csv": {"example": "patient_id,gender\r\n...,female\r\n"},
                "application/json": {"example": [{"patient_id": "...", "gender": "female"}]},
            },
        },
        400: examples.outcome_response("A parameter that is not valid or not supported.", examples.OUTCOME_INVALID),
        404: examples.outcome_response("No shipped view of that name.", examples.OUTCOME_INVALID),
        422: examples.outcome_response(
            "A view that cannot be run (each issue names its element), or a run over the bounds (too-costly).",
            examples.OUTCOME_INVALID,
        ),
        **examples.UPSTREAM_RESPONSES,
        401: examples.AUTH_RESPONSES[401],
        431: examples.AUTH_RESPONSES[431],
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/fhir+json": {
                    "schema": {
                        "type": "object",
                        "required": ["resourceType", "parameter"],
                        "properties": {"resourceType": {"type": "string"}, "parameter": {"type": "array"}},
                    },
                    "example": {
                        "resourceType": "Parameters",
                        "parameter": [
                            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/observation"}},
                            {"name": "patient", "valueReference": {"reference": "Patient/123"}},
                            {"name": "_format", "valueCode": "csv"},
                        ],
                    },
                }
            },
        }
    },
)
async def viewdefinition_run(request: Request, key: ReadKey, services: ServicesDep) -> StreamingResponse:
    # A read of patient data, audited however it ends (refusals included): the middleware records it at the end.
    audited = services.audit.begin(request, "search")
    media_type(request, JSON_TYPES)
    data = await read_body(request, services.settings.max_body_bytes)
    doc = parse_fhir(data, "application/fhir+json", services.bench.xml_reader)
    asked = read_parameters(doc, services.settings)
    kind = asked.view.plan.resource
    audited.resource_type = kind
    for patient in asked.patients:
        audited.about(patient)
    require_scopes(key, ((kind, "s"), (kind, "r")), f"run a view of {kind}")
    query = search_for(asked)
    audited.searched(query_text(query.resource_type, query.query()))
    audited.ran(asked.view.digest)

    pages = services.client.pages(query)
    first = await anext(pages)  # before the answer starts: upstream errors become 502/503/504 here
    total = first.get("total")
    bound = services.settings.view_run_max_resources
    if isinstance(total, int) and total > bound:
        await pages.aclose()
        raise ApiError.of(
            422,
            "too-costly",
            f"the search matches {total:,} {kind} resources, over the {bound:,} one run may read: narrow it "
            "with patient or _since",
        )

    async def all_pages() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for page in pages:
            yield page

    chunks = _produce(asked, all_pages(), audited, services.settings)
    try:
        head = await anext(chunks)  # the first page's rows: a resource the view cannot read is still a 422
    except _CutShort as exc:
        raise ApiError.of(422, "too-costly", str(exc)) from exc

    async def body() -> AsyncIterator[bytes]:
        try:
            yield head
            async for chunk in chunks:
                yield chunk
            audited.streamed()
        except _CutShort as exc:
            audited.error = f"cut short: {exc}"
            raise
        except FhirError as exc:
            # A later page failed: the answer has started, so it can only be cut short.
            services.metrics.upstream_errors.labels(type(exc).__name__).inc()
            audited.error = f"upstream {type(exc).__name__}"
            raise

    audited.stream()
    return StreamingResponse(body(), media_type=MEDIA[asked.fmt])
