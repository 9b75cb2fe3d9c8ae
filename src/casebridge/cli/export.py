"""``casebridge export``: a FHIR Bulk Data ``$export`` into a folder of NDJSON files (``casebridge.fhir.bulk``).

Exit codes (besides the common ones, see ``casebridge.cli.core``): 2 bad arguments, or an output folder that is
not empty and holds no export of the same request to resume; 4 the FHIR server refused or failed the export, or
it did not complete within ``--max-wait`` (the job is kept: the same command resumes it).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from casebridge.cli.support import cli_settings, err, fail, out
from casebridge.cli.transfer import ServerOption, run_fhir, server_url
from casebridge.fhir.bulk import ExportRequest, ExportResult, PollPolicy, instant, run_export
from casebridge.fhir.client import AsyncFhirClient
from casebridge.files import shown
from casebridge.pull import parse_since


class Level(StrEnum):
    system = "system"
    patient = "patient"
    group = "group"


def export(
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="The folder (new or empty; or this export's, to resume it).", file_okay=False
        ),
    ],
    server: ServerOption = None,
    level: Annotated[
        Level, typer.Option("--level", help="system: everything; patient: every patient's compartment; group.")
    ] = Level.system,
    group: Annotated[str | None, typer.Option("--group", help="The Group id (with --level group).")] = None,
    types: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only these resource types (repeat it, or Type1,Type2): _type."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only resources changed at or after: a date or a date-time with its zone (_since)."
        ),
    ] = None,
    type_filters: Annotated[
        list[str] | None,
        typer.Option("--type-filter", help="A Type?search query that narrows that type (repeatable): _typeFilter."),
    ] = None,
    max_wait: Annotated[
        float, typer.Option("--max-wait", min=1, help="Seconds to wait for the server to finish (default 3600).")
    ] = 3600,
) -> None:
    """Bulk Data $export (system, Patient or Group level) into NDJSON files, one per type (<Type>.<n>.ndjson)
    with the server's manifest.json (transactionTime: the next --since). A rerun into the same folder resumes."""
    settings = cli_settings()
    base = server_url(settings, server)
    if level is Level.group and not group:
        fail(2, "--level group needs --group ID")
    if group and level is not Level.group:
        fail(2, "--group goes with --level group")
    try:
        moment = _since(since) if since is not None else None
        request = ExportRequest(
            level=level.value,
            group=group,
            types=tuple(t.strip() for value in types or () for t in value.split(",") if t.strip()),
            since=moment,
            type_filters=tuple(type_filters or ()),
        )
    except ValueError as exc:
        fail(2, f"bad argument: {exc}")

    def progress(message: str) -> None:
        err.print(message, markup=False, highlight=False)

    async def work() -> ExportResult:
        async with AsyncFhirClient.from_settings(settings, base_url=base) as client:
            return await run_export(client, request, output, policy=PollPolicy(max_wait=max_wait), progress=progress)

    result = run_fhir(work)
    print_export(result)


def _since(value: str) -> str:
    """``--since`` as ``_since``: checked as ``pull``'s is, but its fraction of a second kept (a manifest's
    transactionTime is to the millisecond, and what was written in its second before it must not come again)."""
    moment = parse_since(value)
    if isinstance(moment, dt.datetime):
        moment = dt.datetime.fromisoformat(value)
    return instant(moment)


def print_export(result: ExportResult) -> None:
    downloaded = sum(1 for f in (*result.files, *result.errors, *result.deleted) if f.downloaded)
    total = len(result.files) + len(result.errors) + len(result.deleted)
    out.print(
        f"exported {sum(f.count for f in result.files):,} resources in {len(result.files)} files to "
        f"{shown(result.folder)} ({downloaded} of {total} files downloaded now"
        f"{', the rest complete from an earlier run' if downloaded < total else ''})",
        markup=False,
        highlight=False,
        soft_wrap=True,  # it names the folder: one line, whatever its length
    )
    out.print(f"transactionTime: {result.transaction_time} (the next --since)", markup=False, highlight=False)
    table = Table(show_edge=False, box=None, padding=(0, 2))
    table.add_column("file")
    table.add_column("resources", justify="right")
    table.add_column("bytes", justify="right")
    for f in (*result.files, *result.deleted, *result.errors):
        table.add_row(escape(shown(f.file)), f"{f.count:,}", f"{f.bytes:,}")
    out.print(table)
    if result.errors:
        count = sum(f.count for f in result.errors)
        err.print(
            f"the server reported {count} problem(s) in {len(result.errors)} error file(s): see "
            f"{', '.join(f.file for f in result.errors)}",
            markup=False,
            highlight=False,
        )
