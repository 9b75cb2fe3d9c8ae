"""Pulling DiagnosticReports for analysts: one search with their results and specimens, every page, then
one of three shapes — a searchset Bundle, NDJSON (one report per line), or CSV (one row per report).

Everything is fetched before anything is written, so a failure half-way leaves no half-written output.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from casebridge.fhir.client import AsyncFhirClient
from casebridge.fhir.search import Search
from casebridge.files import csv_cell as _cell

REPORT_INCLUDES = ("DiagnosticReport:result", "DiagnosticReport:specimen")
CSV_COLUMNS = (
    "id",
    "patient",
    "category",
    "code",
    "date",
    "status",
    "conclusion",
    "conclusion_codes",
    "results",
)


def report_query(
    *,
    patient: str | None = None,
    category: str | None = None,
    code: str | None = None,
    since: dt.date | dt.datetime | None = None,
    page_size: int = 100,
) -> Search:
    """DiagnosticReports with their results and specimens. ``patient``: an id or ``Patient/<id>``;
    ``category``/``code``: a code or ``system|code``; ``since``: created or changed at or after (``_lastUpdated``),
    because the reports of published cases carry no clinical dates."""
    for name, value in (("patient", patient), ("category", category), ("code", code)):
        if value is not None and not value.strip():
            # An empty filter (an unset shell variable) must not quietly widen the pull to every patient.
            raise ValueError(f"{name}: empty; leave the filter out to mean 'all'")
    query = Search("DiagnosticReport").include(*REPORT_INCLUDES).count(page_size)
    if patient:
        query = query.where(patient=patient if "/" in patient else f"Patient/{patient}")
    if category:
        query = query.where(category=category)
    if code:
        query = query.where(code=code)
    if since is not None:
        query = query.since(since)
    return query.sort("_id")


@dataclass
class PulledReports:
    reports: list[dict[str, Any]] = field(default_factory=list)
    included: dict[str, dict[str, Any]] = field(default_factory=dict)  # "Type/id" -> resource
    total: int | None = None


def page_entries(page: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """(``Type/id``, resource, is a matched DiagnosticReport) for each usable entry of a searchset page."""
    entries = page.get("entry")
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        search = entry.get("search")
        mode = search.get("mode", "match") if isinstance(search, dict) else "match"
        is_match = mode == "match" and resource.get("resourceType") == "DiagnosticReport"
        yield f"{resource.get('resourceType')}/{resource.get('id')}", resource, is_match


async def pull_reports(client: AsyncFhirClient, query: Search) -> PulledReports:
    pulled = PulledReports()
    seen: set[str] = set()
    async for page in client.pages(query):
        _collect(pulled, seen, page)
    return pulled


def _collect(pulled: PulledReports, seen: set[str], page: Mapping[str, Any]) -> None:
    if pulled.total is None and isinstance(page.get("total"), int):
        pulled.total = page["total"]
    for key, resource, is_match in page_entries(page):
        if is_match:
            if key not in seen:  # a server may repeat a match across pages if data changes while paging
                seen.add(key)
                pulled.reports.append(resource)
        else:
            pulled.included.setdefault(key, resource)


def to_searchset(pulled: PulledReports, base_url: str) -> dict[str, Any]:
    """One searchset Bundle: the reports (mode match), then what they include (mode include)."""
    entries = [
        {"fullUrl": f"{base_url}/DiagnosticReport/{r.get('id')}", "resource": r, "search": {"mode": "match"}}
        for r in pulled.reports
    ]
    entries += [
        {"fullUrl": f"{base_url}/{key}", "resource": r, "search": {"mode": "include"}}
        for key, r in pulled.included.items()
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "total": len(pulled.reports),
        "entry": entries,
    }


def to_ndjson(pulled: PulledReports) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in pulled.reports)


def to_csv(pulled: PulledReports) -> str:
    return csv_rows([CSV_COLUMNS, *(report_row(r, pulled.included) for r in pulled.reports)])


def csv_rows(rows: Iterable[Sequence[str]]) -> str:
    """Rows as CSV (RFC 4180: CRLF line ends), each cell defused. With CRLF, csv quotes a cell holding a lone CR
    too; with LF alone it did not, and a CR in a conclusion started a new row in a spreadsheet."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


def report_row(report: Mapping[str, Any], included: Mapping[str, Mapping[str, Any]]) -> list[str]:
    results = []
    for ref in _list(report.get("result")):
        if not isinstance(ref, dict):
            continue
        target = included.get(_local(str(ref.get("reference") or "")))
        if target is None:
            results.append(f"{ref.get('display') or ref.get('reference')}: (not included)")
        else:
            results.append(f"{_concept(target.get('code')) or ref.get('display') or '?'}: {observation_value(target)}")
    return [
        str(report.get("id") or ""),
        str(_obj(report.get("subject")).get("reference") or ""),
        "; ".join(_concept(c) for c in _list(report.get("category"))),
        _concept(report.get("code")),
        _date(report),
        str(report.get("status") or ""),
        str(report.get("conclusion") or ""),
        "; ".join(_concept(c) for c in _list(report.get("conclusionCode"))),
        "; ".join(results),
    ]


def observation_value(observation: Mapping[str, Any]) -> str:
    """An Observation's value as text, with its unit; components joined; a data-absent reason when no value."""
    own = _value(observation)
    if own:
        return own
    components = observation.get("component")
    parts = [
        f"{_concept(c.get('code'))} {_value(c)}".strip()
        for c in (components if isinstance(components, list) else [])
        if isinstance(c, dict)
    ]
    if any(parts):
        return ", ".join(p for p in parts if p)
    absent = _concept(observation.get("dataAbsentReason"))
    return f"(no value: {absent})" if absent else "(no value)"


def _value(element: Any) -> str:
    if not isinstance(element, dict):
        return ""
    if isinstance(element.get("valueQuantity"), dict):
        q = element["valueQuantity"]
        return " ".join(str(x) for x in (q.get("comparator"), q.get("value"), q.get("unit") or q.get("code")) if x)
    if "valueCodeableConcept" in element:
        return _concept(element["valueCodeableConcept"])
    if isinstance(element.get("valueRange"), dict):
        low, high = _obj(element["valueRange"].get("low")), _obj(element["valueRange"].get("high"))
        unit = low.get("unit") or high.get("unit") or ""
        return f"{low.get('value', '')}-{high.get('value', '')} {unit}".strip()
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime", "valueTime"):
        if key in element:
            return str(element[key]).lower() if key == "valueBoolean" else str(element[key])
    return ""


def _concept(concept: Any) -> str:
    """``display [code]`` for each coding, or the text when there is no coding."""
    if not isinstance(concept, dict):
        return ""
    codings = [c for c in _list(concept.get("coding")) if isinstance(c, dict) and c.get("code")]
    if not codings:
        return str(concept.get("text") or "")
    return ", ".join(f"{c['display']} [{c['code']}]" if c.get("display") else str(c["code"]) for c in codings)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_since(value: str) -> dt.date | dt.datetime:
    """``--since``/``since``: a date, or a date-time with its time zone (FHIR wants one when a time is given)."""
    try:
        moment: dt.date | dt.datetime = (
            dt.date.fromisoformat(value) if len(value) == 10 else dt.datetime.fromisoformat(value)
        )
    except ValueError:
        raise ValueError("since: not a date (YYYY-MM-DD) or date-time with a zone (YYYY-MM-DDThh:mm:ssZ)") from None
    if isinstance(moment, dt.datetime) and moment.tzinfo is None:
        raise ValueError("since: a date-time needs its time zone (Z or +hh:mm)")
    offset = moment.utcoffset() if isinstance(moment, dt.datetime) else None
    # Python reads offsets FHIR has no form for (+05:30:15, +20:00): the server would refuse them.
    if offset is not None and (offset % dt.timedelta(minutes=1) or abs(offset) > dt.timedelta(hours=14)):
        raise ValueError("since: the time zone must be Z or +hh:mm between -14:00 and +14:00")
    if not 1900 <= moment.year <= 2200:
        raise ValueError("since: the year must be between 1900 and 2200")
    if isinstance(moment, dt.datetime) and moment.microsecond:
        moment = moment.replace(microsecond=0)
    return moment


def _date(report: Mapping[str, Any]) -> str:
    if report.get("effectiveDateTime"):
        return str(report["effectiveDateTime"])
    period = _obj(report.get("effectivePeriod"))
    return str(period.get("start") or report.get("issued") or "")


def _local(reference: str) -> str:
    """``Observation/x`` from a relative or absolute reference (history part dropped)."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:])


def summarize(pulled: PulledReports) -> Iterable[tuple[str, str, str]]:
    """(category, code, conclusion) per report, for the demo's table."""
    for report in pulled.reports:
        yield (
            "; ".join(_concept(c) for c in _list(report.get("category"))),
            _concept(report.get("code")),
            str(report.get("conclusion") or ""),
        )


async def stream_reports(pages: AsyncIterator[dict[str, Any]], fmt: str, base_url: str) -> AsyncIterator[bytes]:
    """The pages of a report search as one output, page by page: a searchset Bundle (json), NDJSON, or CSV.

    Included resources are passed on once each; a report's CSV row uses what its own page (or an earlier one)
    included. For a server: the response can start before the last page is fetched.
    """
    seen_reports: set[str] = set()
    included: dict[str, dict[str, Any]] = {}
    count = 0
    if fmt == "json":
        yield b'{"resourceType":"Bundle","type":"searchset","entry":['
    elif fmt == "csv":
        yield csv_rows([CSV_COLUMNS]).encode()
    first = True
    async for page in pages:
        chunk: list[bytes] = []
        page_reports: list[dict[str, Any]] = []
        for key, resource, is_match in page_entries(page):
            if is_match:
                if key in seen_reports:
                    continue
                seen_reports.add(key)
                page_reports.append(resource)
                count += 1
            elif key in included:
                continue
            else:
                # Kept for the CSV rows of later reports; the other formats need only to know it was passed on.
                included[key] = resource if fmt == "csv" else {}
            if fmt == "json":
                item = {
                    "fullUrl": f"{base_url}/{key}",
                    "resource": resource,
                    "search": {"mode": "match" if is_match else "include"},
                }
                chunk.append((b"" if first else b",") + orjson.dumps(item))
                first = False
            elif fmt == "ndjson" and is_match:
                chunk.append(orjson.dumps(resource) + b"\n")
        if fmt == "csv" and page_reports:
            chunk.append(csv_rows(report_row(report, included) for report in page_reports).encode())
        if chunk:
            yield b"".join(chunk)
    if fmt == "json":
        yield b'],"total":' + str(count).encode() + b"}"
