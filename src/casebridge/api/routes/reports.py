"""GET /diagnostic-reports: for analysts. The filters of ``casebridge pull``; a searchset Bundle by default,
NDJSON (``Accept: application/fhir+ndjson``) or CSV (``_format=csv`` or ``Accept: text/csv``), streamed page by
page. The first page is fetched before the answer starts, so an unreachable FHIR server is a clean 502/503/504;
a failure on a later page can only cut the stream short (the client sees an incomplete response)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import StreamingResponse

from casebridge.api import examples
from casebridge.api.audit import query_text
from casebridge.api.deps import ReadKey, ServicesDep
from casebridge.api.errors import ApiError
from casebridge.api.security import require_scopes
from casebridge.errors import FhirError
from casebridge.pull import parse_since, report_query, stream_reports

router = APIRouter(tags=["reports"])
# Reports are searched and read, with the Observations and Specimens they cite (_include): a scope for each.
READ_SCOPES = (("DiagnosticReport", "s"), ("DiagnosticReport", "r"), ("Observation", "r"), ("Specimen", "r"))
MEDIA = {"json": "application/fhir+json", "ndjson": "application/fhir+ndjson", "csv": "text/csv; charset=utf-8"}


# What each format answers as, then the other names a client may ask for it by; in the server's order of preference.
_OFFERED = {
    "json": ("application/fhir+json", "application/json"),
    "ndjson": ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson"),
    "csv": ("text/csv",),
}


# RFC 9110's qvalue, and ".2" as Java's default Accept writes it (0 to 1, three decimals at most).
_QVALUE = re.compile(r"0(\.[0-9]{0,3})?|\.[0-9]{1,3}|1(\.0{0,3})?")


def _format(requested: str | None, accept: str) -> str:
    """``_format`` wins; else the Accept header as RFC 9110 (12.5.1) reads it: each format takes the quality of
    the most specific range that names it (its type, then ``type/*``, then ``*/*``; q=0: not acceptable); the
    highest quality wins, then the range named first, then the server's order. JSON when nothing is asked."""
    if requested is not None:
        return requested
    if not accept.strip():
        return "json"
    ranges: list[tuple[str, float]] = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                # Anything but a qvalue ("nan", "2") is not acceptable.
                quality = float(value) if _QVALUE.fullmatch(value.strip()) else 0.0
        media = media.lower()
        ranges.append(("*/*" if media == "*" else media, quality))  # a bare * (Java's default Accept): anything
    best: tuple[float, int, int, str] | None = None
    for preference, (choice, names) in enumerate(_OFFERED.items()):
        kind = names[0].split("/")[0]
        # The most specific range that applies decides: the type answered, another name for it, type/*, */*.
        for patterns in (names[:1], names[1:], (f"{kind}/*",), ("*/*",)):
            # (quality, -position): the highest quality, then the range named first
            matched = [(quality, -position) for position, (media, quality) in enumerate(ranges) if media in patterns]
            if matched:
                quality, earliest = max(matched)
                if quality > 0 and (best is None or (quality, earliest, -preference) > best[:3]):
                    best = (quality, earliest, -preference, choice)
                break
    if best is None:
        raise ApiError.of(
            406,
            "not-supported",
            "none of the Accept types is offered: application/fhir+json, "
            "application/fhir+ndjson, text/csv (or _format=json|ndjson|csv)",
        )
    return best[3]


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
                "text/csv": {"example": "diagnosticreport_id,subject_ref,category_code,...,results\r\n"},
            },
        },
        400: examples.outcome_response("A filter that is not valid (OperationOutcome).", examples.OUTCOME_INVALID),
        406: examples.outcome_response(
            "None of the Accept types is offered (OperationOutcome).", examples.OUTCOME_NOT_ACCEPTABLE
        ),
        **examples.UPSTREAM_RESPONSES,
        401: examples.AUTH_RESPONSES[401],
        431: examples.AUTH_RESPONSES[431],
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
    # A read of patient data, audited however it ends: the middleware records it once the answer is over.
    audited = services.audit.begin(request, "search", resource_type="DiagnosticReport")
    if patient is not None and patient.strip():
        audited.about(patient)
    require_scopes(key, READ_SCOPES, "read reports with their results and specimens")
    output = _format(fmt, request.headers.get("accept", ""))
    try:
        moment = parse_since(since) if since is not None else None
        query = report_query(patient=patient, category=category, code=code, since=moment, page_size=count)
    except ValueError as exc:
        raise ApiError.of(400, "invalid", str(exc)) from exc
    audited.searched(query_text(query.resource_type, query.query()))
    pages = services.client.pages(query)
    first = await anext(pages)  # before the answer starts: upstream errors become 502/503/504 here

    async def all_pages() -> AsyncIterator[dict[str, Any]]:
        # What each page holds is recorded as it goes out, so a stream cut short says what was sent.
        audited.returned(first)
        yield first
        async for page in pages:
            audited.returned(page)
            yield page

    async def counted() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream_reports(all_pages(), output, services.client.base_url):
                yield chunk
            audited.streamed()
        except FhirError as exc:
            # A later page failed: the answer has started, so it can only be cut short (the client sees it
            # incomplete). Counted and logged here; the middleware records the request as aborted.
            services.metrics.upstream_errors.labels(type(exc).__name__).inc()
            audited.error = f"upstream {type(exc).__name__}"
            raise

    audited.stream()
    return StreamingResponse(counted(), media_type=MEDIA[output], headers={"Vary": "Accept"})
