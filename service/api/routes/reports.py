"""GET /diagnostic-reports: for analysts. The filters of ``casebridge pull``; a searchset Bundle by default,
NDJSON (``Accept: application/fhir+ndjson``) or CSV (``_format=csv`` or ``Accept: text/csv``), streamed page by
page. The first page is fetched before the answer starts, so an unreachable FHIR server is a clean 502/503/504;
a failure on a later page can only cut the stream short (the client sees an incomplete response)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from service.api import examples
from service.api.deps import ReadKey, ServicesDep
from service.api.errors import ApiError
from service.pull import report_query, stream_reports

router = APIRouter(tags=["reports"])
MEDIA = {"json": "application/fhir+json", "ndjson": "application/fhir+ndjson", "csv": "text/csv; charset=utf-8"}


def _format(requested: str | None, accept: str) -> str:
    if requested is not None:
        return requested
    accepted = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    for media in accepted:
        if media in ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson"):
            return "ndjson"
        if media == "text/csv":
            return "csv"
        if media in ("application/fhir+json", "application/json", "*/*"):
            return "json"
    return "json"


def _since(value: str | None) -> dt.date | dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value) if len(value) == 10 else dt.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError.of(400, "invalid", "since: not a date (YYYY-MM-DD) or date-time", "since") from None


@router.get(
    "/diagnostic-reports",
    summary="DiagnosticReports with their results and specimens, as a searchset Bundle, NDJSON or CSV",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Streamed: a searchset Bundle (default), NDJSON, or CSV (one row per report).",
            "content": {
                "application/fhir+json": {
                    "example": {"resourceType": "Bundle", "type": "searchset", "entry": [], "total": 0}
                },
                "application/fhir+ndjson": {"example": '{"resourceType":"DiagnosticReport","id":"..."}\n'},
                "text/csv": {"example": "id,patient,category,code,date,status,conclusion,conclusion_codes,results\n"},
            },
        },
        400: examples.outcome_response("A filter that is not valid (OperationOutcome).", examples.OUTCOME_INVALID),
        **{k: v for k, v in examples.UPSTREAM_RESPONSES.items() if k != 403},
        401: examples.AUTH_RESPONSES[401],
    },
)
async def diagnostic_reports(
    request: Request,
    key: ReadKey,
    services: ServicesDep,
    patient: Annotated[str | None, Query(max_length=200, description="Patient id or Patient/<id>.")] = None,
    category: Annotated[str | None, Query(max_length=300, description="A category code or system|code.")] = None,
    code: Annotated[str | None, Query(max_length=300, description="A report code or system|code.")] = None,
    since: Annotated[str | None, Query(max_length=40, description="Created or changed at or after (date).")] = None,
    count: Annotated[int, Query(alias="_count", ge=1, le=1000, description="Reports per upstream page.")] = 100,
    fmt: Annotated[Literal["json", "ndjson", "csv"] | None, Query(alias="_format")] = None,
) -> StreamingResponse:
    output = _format(fmt, request.headers.get("accept", ""))
    try:
        query = report_query(patient=patient, category=category, code=code, since=_since(since), page_size=count)
    except ValueError as exc:
        raise ApiError.of(400, "invalid", str(exc)) from exc
    pages = services.client.pages(query)
    first = await anext(pages)  # before the answer starts: upstream errors become 502/503/504 here

    async def all_pages() -> AsyncIterator[dict[str, Any]]:
        yield first
        async for page in pages:
            yield page

    body = stream_reports(all_pages(), output, services.client.base_url)
    return StreamingResponse(body, media_type=MEDIA[output])
