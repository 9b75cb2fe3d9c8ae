"""``casebridge push``, ``casebridge pull diagnostic-reports``, ``casebridge ping`` and the demo's server part.

Exit codes (besides the common ones, see ``casebridge.cli.core``): 1 the Bundle is not valid, nothing was sent
(push prints its OperationOutcome); 4 the FHIR server could not be reached, or refused or failed the
request (the message carries the server's OperationOutcome).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from casebridge import pipeline
from casebridge.cli.support import cli_settings, dump_json, err, fail, load_mappings, load_validator, out
from casebridge.config import Settings
from casebridge.definitions.xml import XmlReader, is_xml
from casebridge.errors import FhirError, FhirHttpError, InputError, InvalidResourceError
from casebridge.fhir.client import AsyncFhirClient
from casebridge.files import read_bounded, shown, write_atomically
from casebridge.pull import (
    PulledReports,
    ReportTable,
    parse_since,
    pull_reports,
    report_query,
    to_csv,
    to_ndjson,
    to_searchset,
)
from casebridge.push import PatientLocks, PushResult, push_bundle
from casebridge.validation.validator import Issue, Validator

T = TypeVar("T")
FHIR_SERVER_EXIT = 4

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server", help="FHIR base URL (default: CASEBRIDGE_FHIR_BASE_URL, else http://127.0.0.1:8090/fhir)."
    ),
]
pull_app = typer.Typer(help="Fetch resources from a FHIR server.", no_args_is_help=True)


def server_url(settings: Settings, server: str | None) -> str:
    if server is None:
        return settings.fhir_base_url
    try:
        return Settings.model_validate({**settings.model_dump(), "fhir_base_url": server}).fhir_base_url
    except Exception:  # noqa: BLE001 - the pydantic message is long; ours says what is wrong
        fail(2, f"--server {server!r}: not an http(s) base URL")


def run_fhir(work: Callable[[], Awaitable[T]]) -> T:
    """Run async work; FHIR failures become exit 4 with the server's words."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except FhirError as exc:
        lines = [f"FHIR server error: {exc}"]
        if isinstance(exc, FhirHttpError):
            lines += [f"  - {d}" for d in exc.diagnostics()[1:6]]
        fail(FHIR_SERVER_EXIT, "\n".join(lines))


# -- push ---------------------------------------------------------------------------------------------------


def load_push_input(
    path: Path, settings: Settings, validator: Validator, problems: list[Issue] | None = None
) -> dict[str, Any]:
    """A case report (converted here) or a FHIR transaction Bundle (JSON or XML); ``problems``: what the XML
    reader left out, errors for ``pipeline.check`` (``read_resource``)."""
    data = read_bounded(path, max(settings.max_case_bytes, settings.max_resource_bytes))
    return pipeline.read_push_input(
        data,
        source=shown(path),
        xml=is_xml(data, path.name),
        reader=XmlReader(validator.definitions),
        mappings=lambda: load_mappings(settings),
        problems=problems,
    )


def push(
    file: Annotated[Path, typer.Argument(help="A case report (JSON/YAML) or a transaction Bundle.", dir_okay=False)],
    server: ServerOption = None,
) -> None:
    """Validate, then send one transaction. Invalid: nothing is sent, the OperationOutcome is printed, exit 1."""
    settings = cli_settings()
    base = server_url(settings, server)
    validator = load_validator(settings)
    problems: list[Issue] = []
    bundle = load_push_input(file, settings, validator, problems)
    try:
        warnings = pipeline.check(bundle, validator, max_issues=settings.max_outcome_issues, read_problems=problems)
    except InvalidResourceError as exc:
        sys.stdout.buffer.write(dump_json(exc.outcome))
        fail(1, f"{shown(file)}: {exc}")

    async def work() -> PushResult:
        async with AsyncFhirClient.from_settings(settings, base_url=base) as client:
            return await push_bundle(client, bundle, locks=PatientLocks(settings.locks()), warnings=warnings)

    result = run_fhir(work)
    print_push(result)


def print_push(result: PushResult) -> None:
    out.print(
        f"pushed to {escape(result.server)}: one transaction of {len(result.entries)} entries in {result.seconds:.2f} s"
        f" - [green]{result.created} created[/green], {result.already_there} already there (updated in place)",
        highlight=False,
    )
    if result.patient:
        out.print(f"patient: {result.patient}", highlight=False, markup=False)
    table = Table(show_edge=False, box=None, padding=(0, 2))
    table.add_column("resource")
    table.add_column("created", justify="right")
    table.add_column("already there", justify="right")
    for kind, (new, old) in result.by_type().items():
        table.add_row(escape(kind), str(new), str(old))
    out.print(table)
    if result.warnings:
        out.print(f"validation warnings: {len(result.warnings)} (run `casebridge validate` for the list)")


# -- pull ---------------------------------------------------------------------------------------------------


class PullFormat(StrEnum):
    json = "json"
    ndjson = "ndjson"
    csv = "csv"


def _since(value: str | None) -> dt.date | dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        fail(2, f"--{exc}")


@pull_app.command("diagnostic-reports")
def pull_diagnostic_reports(
    server: ServerOption = None,
    patient: Annotated[str | None, typer.Option("--patient", help="Patient id or Patient/<id>.")] = None,
    category: Annotated[str | None, typer.Option("--category", help="A category code or system|code.")] = None,
    code: Annotated[str | None, typer.Option("--code", help="A report code or system|code.")] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only reports created or changed at or after this date.")
    ] = None,
    fmt: Annotated[PullFormat, typer.Option("--format", help="json: a searchset Bundle; ndjson; csv.")] = (
        PullFormat.json
    ),
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (atomically) instead of stdout.", dir_okay=False)
    ] = None,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=1000, help="Reports per page.")] = 100,
) -> None:
    """DiagnosticReports with their results and specimens (_include), every page."""
    settings = cli_settings()
    base = server_url(settings, server)
    try:
        query = report_query(patient=patient, category=category, code=code, since=_since(since), page_size=page_size)
    except ValueError as exc:
        fail(2, str(exc))

    async def work() -> PulledReports:
        async with AsyncFhirClient.from_settings(settings, base_url=base) as client:
            return await pull_reports(client, query)

    pulled = run_fhir(work)
    if fmt is PullFormat.json:
        data = dump_json(to_searchset(pulled, base))
    elif fmt is PullFormat.ndjson:
        data = to_ndjson(pulled)
    else:
        data = to_csv(pulled).encode()
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        try:
            write_atomically(output, data)
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror}", source=shown(output)) from exc
        err.print(f"wrote {shown(output)}: {len(pulled.reports)} DiagnosticReports", highlight=False, markup=False)


# -- ping ---------------------------------------------------------------------------------------------------


def ping(
    server: ServerOption = None,
    wait: Annotated[float, typer.Option("--wait", min=0, help="Keep trying for up to this many seconds.")] = 0,
) -> None:
    """Check that a FHIR server answers (GET [base]/metadata); print its software and FHIR version."""
    settings = cli_settings()
    base = server_url(settings, server)
    deadline = time.monotonic() + wait

    async def work() -> dict[str, Any]:
        while True:
            try:
                async with AsyncFhirClient.from_settings(settings, base_url=base) as client:
                    return await client.capabilities()
            except FhirError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(2)

    capabilities = run_fhir(work)
    software = capabilities.get("software") or {}
    name = " ".join(str(x) for x in (software.get("name"), software.get("version")) if x) or "unnamed server"
    out.print(f"{base}: {name}, FHIR {capabilities.get('fhirVersion', '?')}", highlight=False, markup=False)


# -- the demo's server part ---------------------------------------------------------------------------------


@dataclass
class DemoRound:
    push: PushResult
    pulled: PulledReports
    pull_seconds: float


def push_and_pull(settings: Settings, base: str, bundle: dict[str, Any], warnings: list[Issue]) -> DemoRound:
    """Push the Bundle, then read its patient's DiagnosticReports back over the same client (so no-cache)."""

    async def work() -> DemoRound:
        async with AsyncFhirClient.from_settings(settings, base_url=base) as client:
            pushed = await push_bundle(client, bundle, locks=PatientLocks(settings.locks()), warnings=warnings)
            started = time.perf_counter()
            pulled = await pull_reports(client, report_query(patient=pushed.patient))
            return DemoRound(pushed, pulled, time.perf_counter() - started)

    return run_fhir(work)


def print_pulled(pulled: PulledReports, seconds: float, patient: str | None) -> None:
    out.print(
        f"pulled back {len(pulled.reports)} DiagnosticReports of {patient} (+{len(pulled.included)} included "
        f"results and specimens) in {seconds:.2f} s",
        highlight=False,
        markup=False,
    )
    table = Table(show_lines=False)
    for column in ("category", "code", "status", "conclusion", "results"):
        table.add_column(column)
    rows = ReportTable()  # the CSV's rows: one flattening
    for resource in pulled.included.values():
        rows.include(resource)
    at = {c: rows.columns.index(c) for c in rows.columns}
    for row in rows.rows(pulled.reports):
        code = row[at["code_text"]] or row[at["code_display"]]
        shown = (row[at["category_display"]], code, row[at["status"]], row[at["conclusion"]], row[at["results"]])
        table.add_row(*(escape(text) for text in shown))  # server text: never markup
    out.print(table)
    for report in pulled.reports:
        codes = {c.get("code") for cat in report.get("category") or [] for c in cat.get("coding") or []}
        if "SP" in codes:
            found = "; ".join(str(c.get("text") or "") for c in report.get("conclusionCode") or [] if c.get("text"))
            conclusion = escape(str(report.get("conclusion", "(none)")))
            out.print(f"[bold]histopathology conclusion:[/bold] {conclusion}", highlight=False)
            if found:
                out.print(f"  conclusion code: {found}", highlight=False, markup=False)
