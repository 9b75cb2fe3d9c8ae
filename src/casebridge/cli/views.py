"""``casebridge views run`` and ``casebridge views list``: SQL on FHIR v2 views over local NDJSON, a JSON Bundle or
a FHIR server, written as NDJSON, CSV, Parquet or DuckDB.

Exit codes (besides the common ones, see ``casebridge.cli.core``): 2 a ViewDefinition that cannot be run (its
OperationOutcome on standard output, each issue naming the element), an input a view cannot read (the message
names the file and line, or the resource), unusable arguments or output; nothing is written then. 4 the FHIR
server could not be reached or refused the search.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from casebridge.analytics import DEFAULT_PAGE_SIZE, ServerSource
from casebridge.cli.support import cli_settings, dump_json, err, fail, out
from casebridge.cli.transfer import FHIR_SERVER_EXIT, server_url
from casebridge.config import Settings
from casebridge.errors import FhirError, FhirHttpError, InputError
from casebridge.files import read_bounded, shown
from casebridge.views import (
    SUFFIXES,
    LocalSource,
    NamedView,
    ResourceSource,
    ViewDefinitionError,
    output_name,
    parse_instant,
    read_view,
    run_to_file,
    run_to_folder,
    run_to_stdout,
    view_digest,
)
from casebridge.views.shipped import shipped_view, shipped_view_names

views_app = typer.Typer(
    help="SQL on FHIR v2 views: typed tables from NDJSON, Bundles or a FHIR server.", no_args_is_help=True
)


class ViewFormat(StrEnum):
    ndjson = "ndjson"
    csv = "csv"
    parquet = "parquet"
    duckdb = "duckdb"


def load_view(given: str, settings: Settings, *, by_name: bool = False) -> NamedView:
    """A ViewDefinition file, or a shipped view's name (``by_name``, or a bare name that is not a file). An invalid
    view: its OperationOutcome on standard output and exit 2."""
    path = Path(given)
    if by_name or (not path.exists() and given in shipped_view_names()):
        if given not in shipped_view_names():
            fail(2, f"{given}: no such shipped view (shipped: {', '.join(shipped_view_names())})")
        source = f"shipped view {given}"
        doc: Any = shipped_view(given)
        fallback = given
    else:
        source = shown(path)
        if not path.exists():
            fail(2, f"{source}: no such file nor shipped view (shipped: {', '.join(shipped_view_names())})")
        try:
            doc = orjson.loads(read_bounded(path, settings.max_resource_bytes))
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not JSON: {exc}", source=source) from None
        fallback = path.stem
    try:
        plan = read_view(doc, source=source)
    except ViewDefinitionError as exc:
        sys.stdout.buffer.write(dump_json(exc.outcome()))
        sys.stdout.flush()
        fail(2, exc.report())
    return NamedView(output_name(plan, fallback), plan, view_digest(doc))


def _since(value: str | None) -> str | None:
    if value is None or value == "last":
        return value
    try:
        parse_instant(value)
    except ValueError as exc:
        fail(2, f"--{exc}")
    return value


def _with_fhir_errors(work: Callable[[], None]) -> None:
    try:
        work()
    except FhirError as exc:
        lines = [f"FHIR server error: {exc}"]
        if isinstance(exc, FhirHttpError):
            lines += [f"  - {d}" for d in exc.diagnostics()[1:6]]
        fail(FHIR_SERVER_EXIT, "\n".join(lines))


@views_app.command("run")
def run(
    source: Annotated[
        str,
        typer.Option(
            "--source",
            help="An NDJSON file, a folder of NDJSON files (Bulk Data export), a JSON Bundle, or a FHIR base URL.",
        ),
    ],
    views: Annotated[
        list[str] | None,
        typer.Argument(help="ViewDefinition files (JSON), or names of shipped views (see `casebridge views list`)."),
    ] = None,
    view_names: Annotated[
        list[str] | None, typer.Option("--view", help="A shipped view by name (repeatable).", show_default=False)
    ] = None,
    fmt: Annotated[ViewFormat, typer.Option("--format", help="ndjson, csv, parquet or duckdb.")] = ViewFormat.ndjson,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="A folder (one file per view and manifest.json), or one file named <...>.<format>. "
            "Without it: NDJSON or CSV of one view on standard output.",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Only resources changed at or after this instant (a server: _lastUpdated; files: meta.lastUpdated); "
            "`last`: the transactionTime of the output folder's manifest, adding to that folder.",
        ),
    ] = None,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=1000, help="Resources per page of a server search.")
    ] = DEFAULT_PAGE_SIZE,
) -> None:
    """Run views over a source. Nothing is written unless every row of every view is made."""
    settings = cli_settings()
    given = [(v, False) for v in views or []] + [(v, True) for v in view_names or []]
    if not given:
        fail(2, "no view: give ViewDefinition files or --view NAME")
    loaded = [load_view(v, settings, by_name=by_name) for v, by_name in given]
    moment = _since(since)
    started = dt.datetime.now(dt.UTC)
    to_file = output is not None and output.suffix == SUFFIXES[fmt.value] and not output.is_dir()
    if output is None:
        if fmt in (ViewFormat.parquet, ViewFormat.duckdb):
            fail(2, f"--format {fmt.value} needs -o (a file or a folder)")
        if len(loaded) != 1:
            fail(2, f"{len(loaded)} views: standard output takes one; give -o FOLDER")
    if moment == "last" and (output is None or to_file):
        fail(2, "--since last reads the manifest of an output folder: give -o FOLDER")

    resource_source: ResourceSource
    if source.startswith(("http://", "https://")):
        base = server_url(settings, source)

        def work() -> None:
            with ServerSource(settings, base, page_size=page_size) as server:
                _write(loaded, server, fmt.value, output, moment, started, to_file)

        _with_fhir_errors(work)
        return
    resource_source = LocalSource(Path(source), max_line_bytes=settings.max_resource_bytes)
    _write(loaded, resource_source, fmt.value, output, moment, started, to_file)


def _write(
    views: list[NamedView],
    source: ResourceSource,
    fmt: str,
    output: Path | None,
    since: str | None,
    started: dt.datetime,
    to_file: bool,
) -> None:
    if output is None:
        count = run_to_stdout(views[0], source, fmt, sys.stdout.buffer, since)
        err.print(f"{views[0].name}: {count} rows", highlight=False, markup=False)
        return
    try:
        if to_file:
            counts = run_to_file(views, source, fmt, output, since)
        else:
            manifest = run_to_folder(views, source, fmt, output, since=since, started=started)
            counts = {
                v["name"]: v["files"][-1]["rows"] for v in manifest["views"] if v["name"] in {w.name for w in views}
            }
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", source=shown(output)) from exc
    summary = ", ".join(f"{name}: {count} rows" for name, count in counts.items())
    err.print(f"wrote {shown(output)} ({summary})", highlight=False, markup=False)


@views_app.command("list")
def list_views() -> None:
    """The shipped views: name, resource type and title."""
    for name in shipped_view_names():
        view = shipped_view(name)
        title = view.get("title") or view.get("description") or ""
        out.print(f"{name}\t{view.get('resource', '')}\t{title}", highlight=False, markup=False)
