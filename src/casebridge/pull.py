"""Pulling DiagnosticReports for analysts: one search with their results and specimens, every page, then
one of three shapes — a searchset Bundle, NDJSON (one report per line), or CSV (one row per report).

The CSV is the shipped ``diagnostic_report`` view's rows (one flattening, the analysts' views' own) and one
column more, ``results``, joined from the ``report_result`` and ``observation`` views (``ReportTable``).

Everything is fetched before anything is written, so a failure half-way leaves no half-written output.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from casebridge.fhir.client import AsyncFhirClient
from casebridge.fhir.search import Search
from casebridge.files import csv_cell as _cell
from casebridge.views import NamedView, ResourceList, csv_text, read_view, view_digest, view_rows
from casebridge.views.shipped import shipped_view

REPORT_INCLUDES = ("DiagnosticReport:result", "DiagnosticReport:specimen")
REPORT_VIEW = "diagnostic_report"  # the shipped view that makes the CSV's rows


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
    table = ReportTable()
    for resource in pulled.included.values():
        table.include(resource)
    return csv_rows([table.columns, *table.rows(pulled.reports)])


def csv_rows(rows: Iterable[Sequence[str]]) -> str:
    """Rows as CSV (RFC 4180: CRLF line ends), each cell defused. With CRLF, csv quotes a cell holding a lone CR
    too; with LF alone it did not, and a CR in a conclusion started a new row in a spreadsheet."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in rows:
        writer.writerow([_cell(v) for v in row])
    return buffer.getvalue()


# An Observation's components (a tumour's two dimensions), which the shipped observation view leaves out: the
# results column shows them, as it did before the CSV came from the views. Run by the same runner.
_COMPONENT_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "observation_component",
    "status": "active",
    "resource": "Observation",
    "select": [
        {"column": [{"name": "observation_id", "path": "getResourceKey()", "type": "id"}]},
        {
            "forEach": "component",
            "column": [
                {"name": "code_code", "path": "code.coding.first().code", "type": "code"},
                {"name": "code_display", "path": "code.coding.first().display", "type": "string"},
                {"name": "code_text", "path": "code.text", "type": "string"},
                {"name": "valuequantity_value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                {"name": "valuequantity_comparator", "path": "value.ofType(Quantity).comparator", "type": "code"},
                {"name": "valuequantity_unit", "path": "value.ofType(Quantity).unit", "type": "string"},
                {"name": "valuequantity_code", "path": "value.ofType(Quantity).code", "type": "code"},
                {"name": "valuecodeableconcept_code", "path": "value.ofType(CodeableConcept).coding.first().code"},
                {
                    "name": "valuecodeableconcept_display",
                    "path": "value.ofType(CodeableConcept).coding.first().display",
                },
                {"name": "valuecodeableconcept_text", "path": "value.ofType(CodeableConcept).text"},
                {"name": "valuestring", "path": "value.ofType(string)", "type": "string"},
                {"name": "valueboolean", "path": "value.ofType(boolean)", "type": "boolean"},
            ],
        },
    ],
}


@cache
def _report_views() -> tuple[NamedView, ...]:
    """The shipped diagnostic_report, report_result and observation views, and the components' view."""
    named = []
    for name in (REPORT_VIEW, "report_result", "observation"):
        view = shipped_view(name)
        named.append(NamedView(name, read_view(view, source=f"shipped view {name}"), view_digest(view)))
    plan = read_view(_COMPONENT_VIEW, source="casebridge.pull")
    named.append(NamedView("observation_component", plan, view_digest(_COMPONENT_VIEW)))
    return tuple(named)


def csv_columns() -> tuple[str, ...]:
    """The CSV's columns: the shipped diagnostic_report view's, then ``results``."""
    return (*(c.name for c in _report_views()[0].columns), "results")


def _dicts(view: NamedView, resources: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    names = view.plan.column_names
    for row in view_rows(view, ResourceList(resources), None):
        yield dict(zip(names, row, strict=True))


class ReportTable:
    """The rows of the report CSV: the shipped ``diagnostic_report`` view's row of each report, as ``casebridge
    views run --view diagnostic_report --format csv`` writes it, and one column more, ``results``: each result of
    the report (the ``report_result`` view's links, in the report's order) as ``name [code]: value unit`` from the
    ``observation`` view's row of the included Observation (its components' values when it has no value of its
    own), joined with ``; ``. A view's row cannot hold the rows of other resources, so this one column joins them;
    everything else is the view's.

    ``include`` the Observations (other types are ignored) before the reports that cite them."""

    def __init__(self) -> None:
        self.report_view, self.link_view, self.observation_view, self.component_view = _report_views()
        self.columns = csv_columns()
        self._results: dict[str, str] = {}  # observation id -> "name [code]: value"

    def include(self, resource: Mapping[str, Any]) -> None:
        if resource.get("resourceType") != "Observation":
            return
        one = [dict(resource)]
        for found in _dicts(self.observation_view, one):
            key = found["observation_id"]
            if not isinstance(key, str):
                continue
            value = _own_value(found)
            if value is None:
                parts = [f"{_name(c)} {_own_value(c) or ''}".strip() for c in _dicts(self.component_view, one)]
                value = ", ".join(parts) if parts else _absent(found)
            self._results[key] = f"{_name(found)}: {value}"

    def rows(self, reports: Sequence[Mapping[str, Any]]) -> Iterator[list[str]]:
        source = [dict(r) for r in reports]
        links: dict[str, list[str]] = {}
        for found in _dicts(self.link_view, source):
            ref, display = found["result_ref"], found["result_display"]
            text = self._results.get(ref) if isinstance(ref, str) else None
            if text is None:
                text = f"{display or ref or '?'}: (not included)"
            links.setdefault(str(found["diagnosticreport_id"]), []).append(text)
        key = self.report_view.plan.column_names.index("diagnosticreport_id")
        for row in view_rows(self.report_view, ResourceList(source), None):
            yield [*(csv_text(v) for v in row), "; ".join(links.get(str(row[key]), []))]


def _name(row: Mapping[str, Any]) -> str:
    display, code = row["code_display"], row["code_code"]
    if display and code:
        return f"{display} [{code}]"
    return str(code or row["code_text"] or "?")


def _number(value: Any) -> str:
    # Decimals arrive as floats: 3.0 was written 3 in the resource, and is shown so.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value)


def _own_value(row: Mapping[str, Any]) -> str | None:
    """An Observation's (or a component's) value as text, with its unit; None when it has none."""
    if row["valuequantity_value"] is not None:
        unit = row["valuequantity_unit"] or row["valuequantity_code"]
        parts = (row["valuequantity_comparator"], _number(row["valuequantity_value"]), unit)
        return " ".join(str(p) for p in parts if p)
    display, code = row["valuecodeableconcept_display"], row["valuecodeableconcept_code"]
    if display and code:
        return f"{display} [{code}]"
    if code or display or row["valuecodeableconcept_text"]:
        return str(code or display or row["valuecodeableconcept_text"])
    if row["valuestring"] is not None:
        return str(row["valuestring"])
    if row["valueboolean"] is not None:
        return "true" if row["valueboolean"] else "false"
    return None


def _absent(row: Mapping[str, Any]) -> str:
    absent = row["dataabsentreason_code"]
    return f"(no value: {absent})" if absent else "(no value)"


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


async def stream_reports(pages: AsyncIterator[dict[str, Any]], fmt: str, base_url: str) -> AsyncIterator[bytes]:
    """The pages of a report search as one output, page by page: a searchset Bundle (json), NDJSON, or CSV.

    Included resources are passed on once each; a report's CSV row uses what its own page (or an earlier one)
    included. For a server: the response can start before the last page is fetched.
    """
    seen_reports: set[str] = set()
    included: set[str] = set()
    table = ReportTable() if fmt == "csv" else None
    count = 0
    if fmt == "json":
        yield b'{"resourceType":"Bundle","type":"searchset","entry":['
    elif table is not None:
        yield csv_rows([table.columns]).encode()
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
                included.add(key)
                if table is not None:
                    table.include(resource)  # its row, for the CSV rows of this page's reports and later ones
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
        if table is not None and page_reports:
            chunk.append(csv_rows(table.rows(page_reports)).encode())
        if chunk:
            yield b"".join(chunk)
    if fmt == "json":
        yield b'],"total":' + str(count).encode() + b"}"
