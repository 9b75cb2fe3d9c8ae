"""The ``casebridge`` command line.

Exit codes: 0 success; 2 unusable input, arguments or output path (the message names the file and
field path); 3 the configuration or mapping files are wrong (the message names the file and line); 70 an
internal error (no traceback unless CASEBRIDGE_DEBUG=1).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import stamina.instrumentation
import typer
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from casebridge import __version__, pipeline
from casebridge.cli.conformance import conformance
from casebridge.cli.export import export
from casebridge.cli.ingest import ingest
from casebridge.cli.packages import packages_app
from casebridge.cli.support import (
    cli_settings,
    dump_json,
    err,
    fail,
    load_mappings,
    load_validator,
    out,
    read_case_file,
)
from casebridge.cli.synth import synth
from casebridge.cli.transfer import (
    ping,
    print_pulled,
    print_push,
    pull_app,
    push,
    push_and_pull,
    server_url,
)
from casebridge.cli.views import views_app
from casebridge.config import DATA_DIR, Settings
from casebridge.definitions.check import check_loose_definitions, check_used_definitions
from casebridge.definitions.packages import PackageError
from casebridge.definitions.xml import XmlReader, is_xml
from casebridge.domain import case as case_model
from casebridge.domain import case_v1, reader
from casebridge.domain.case import CaseReport
from casebridge.errors import (
    CasebridgeError,
    ConfigurationError,
    InputError,
    InvalidResourceError,
    LockError,
    MappingError,
)
from casebridge.fhir.embedded import EmbeddedFhirServer, EmbeddedServerError
from casebridge.files import read_bounded, shown, write_atomically
from casebridge.validation.validator import SEVERITY_RANK, Issue, Validator, has_errors, operation_outcome

app = typer.Typer(
    name="casebridge",
    help="Clinical case reports to FHIR R4: convert, validate, push and pull.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(packages_app, name="packages")
app.command("conformance")(conformance)
app.command("push")(push)
app.command("ping")(ping)
app.command("synth")(synth)
app.command("ingest")(ingest)
app.command("export")(export)
app.add_typer(pull_app, name="pull")
app.add_typer(views_app, name="views")
SEED_CASE = DATA_DIR / "cases" / "dystrophic-calcification-right-forearm.yaml"


@app.command()
def convert(
    case_file: Annotated[Path, typer.Argument(help="A case report, JSON or YAML (see schemas/).", dir_okay=False)],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the Bundle here instead of stdout.", dir_okay=False)
    ] = None,
) -> None:
    """Convert a case report into a FHIR R4 transaction Bundle."""
    settings = cli_settings()
    mappings = load_mappings(settings)
    case = read_case_file(case_file, settings)
    bundle = pipeline.convert(case, mappings, source=shown(case_file)).bundle
    _check_output(bundle)
    data = dump_json(bundle)
    if output is None:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except OSError as exc:
            raise InputError(f"cannot write the Bundle: {exc.strerror}", source="standard output") from exc
    else:
        try:
            write_atomically(output, data)
        except OSError as exc:
            raise InputError(f"cannot write the Bundle: {exc.strerror}", source=shown(output)) from exc
        err.print(f"wrote {shown(output)} ({len(bundle['entry'])} resources)", highlight=False, markup=False)


def _check_output(bundle: dict[str, object]) -> None:
    """A Bundle the mappings produced must at least parse as FHIR R4; if not, the mappings are wrong."""
    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MappingError(
            f"the mappings produced a Bundle that is not valid FHIR R4: {where}: {first['msg']}"
        ) from exc


class OutputFormat(StrEnum):
    json = "json"
    text = "text"


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="A FHIR R4 resource or Bundle (JSON or XML).", dir_okay=False)],
    profile: Annotated[
        list[str] | None, typer.Option("--profile", help="Also validate against this profile (canonical URL).")
    ] = None,
    definitions: Annotated[
        list[Path] | None,
        typer.Option("--definitions", help="Extra StructureDefinition/ValueSet/CodeSystem files or folders."),
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="json: an OperationOutcome; text: a list.")] = (
        OutputFormat.text
    ),
) -> None:
    """Validate a resource against base R4, its meta.profile and --profile. Exit 0: no error; 1: errors; 2:
    unusable input or arguments."""
    settings = cli_settings()
    issues, code = _validate_file(file, settings, list(profile or ()), list(definitions or ()))
    if fmt is OutputFormat.json:
        sys.stdout.buffer.write(dump_json(operation_outcome(issues, settings.max_outcome_issues)))
    else:
        for i in sorted(issues, key=lambda i: SEVERITY_RANK.get(i.severity, 9)):
            out.print(
                f"{i.severity:<11} {i.expression or '-'}: {i.message}", markup=False, highlight=False, soft_wrap=True
            )
        counts = {s: sum(1 for i in issues if i.severity == s) for s in ("fatal", "error", "warning", "information")}
        out.print(", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no issues", highlight=False)
    raise typer.Exit(code)


def _validate_file(
    file: Path, settings: Settings, profiles: list[str], definitions: list[Path]
) -> tuple[list[Issue], int]:
    """(issues, exit code). Unusable input becomes a fatal issue and exit 2, never an exception."""
    try:
        data = read_bounded(file, settings.max_resource_bytes)
    except InputError as exc:
        return [Issue("fatal", "structure", exc.report(), "")], 2
    try:
        validator = pipeline.load_validator(settings, definitions)
    except PackageError as exc:
        return [Issue("fatal", "not-found", str(exc), "")], 2
    try:
        # What --definitions gives is used only if it can be: refused here, naming the file and element.
        check_loose_definitions(validator.definitions, definitions)
    except InputError as exc:
        return [Issue("fatal", "structure", exc.report(), "")], 2
    try:
        xml = is_xml(data, file.name)
        problems: list[Issue] = []  # XML elements the types do not define: errors, before the validation's
        reader = XmlReader(validator.definitions)
        resource = pipeline.read_resource(data, source=shown(file), xml=xml, reader=reader, problems=problems)
    except InputError as exc:
        return [Issue("fatal", "structure", exc.report(), "")], 2
    unknown = [p for p in profiles if validator.tree(p) is None]
    refused = _unusable_definitions(validator, definitions)
    if refused:
        return refused, 2
    if unknown:
        return [Issue("fatal", "not-found", f"profile {p} is not loaded", "") for p in unknown], 2
    if validator.type_tree(resource["resourceType"]) is None:
        message = f"{shown(file)}: unknown resourceType {resource['resourceType']!r}"
        return [Issue("fatal", "structure", message, "")], 2
    issues = [*problems, *pipeline.validate(resource, validator, profiles)]
    refused = _unusable_definitions(validator, definitions)
    if refused:
        return refused, 2
    return issues, 1 if has_errors(issues) else 0


def _unusable_definitions(validator: Validator, definitions: list[Path]) -> list[Issue]:
    """A fatal issue naming the file when a definition given with --definitions was needed and could not be
    used (the validation could not check what was asked)."""
    try:
        unusable = {**validator.unusable, **validator.terminology.unusable}
        check_used_definitions(validator.definitions, unusable, definitions)
    except InputError as exc:
        return [Issue("fatal", "structure", exc.report(), "")]
    return []


@app.command("fhir-server")
def fhir_server(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0: any free port).", min=0, max=65535)] = 8090,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="Where the server keeps its SQLite database.", file_okay=False)
    ] = Path(".fhir-server"),
) -> None:
    """Run the embedded FHIR R4 server (sekmet-fhir) on 127.0.0.1 until interrupted."""
    # SIGTERM ends the server like Ctrl-C does, so the database is closed cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = EmbeddedFhirServer(data_dir, port=port)
    try:
        server.serve_forever_announced(lambda base: out.print(f"FHIR base: {base}", highlight=False))
    except EmbeddedServerError as exc:
        fail(2, str(exc))


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on (0.0.0.0: all, e.g. in a container).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            max=64,
            show_default=False,
            help=(
                "Processes that convert and validate, behind one HTTP process (0: a thread of it). "
                "Default: one per CPU, at most 8."
            ),
        ),
    ] = None,
) -> None:
    """Run the HTTP API (FastAPI on uvicorn). Needs CASEBRIDGE_API_KEYS; forwards to CASEBRIDGE_FHIR_BASE_URL."""
    import uvicorn

    from casebridge.api.app import create_app
    from casebridge.api.logs import configure, log_retry
    from casebridge.api.protocol import http_protocol
    from casebridge.api.services import Services
    from casebridge.runtime import default_workers, settle_heap

    settings = cli_settings()
    if not settings.keys():
        fail(
            3,
            "configuration error: no API keys; set CASEBRIDGE_API_KEYS=NAME:SCOPES:SECRET[,...] (SCOPES ro, rw or "
            "SMART system scopes) or CASEBRIDGE_API_KEYS_FILE",
        )
    configure(settings.log_level)
    # Not main()'s line on stderr: it names the URL (query and all) and quotes the FHIR server.
    stamina.instrumentation.set_on_retry_hooks([log_retry])
    try:
        services = Services.build(settings, processes=default_workers() if workers is None else workers)
    except PackageError as exc:
        fail(2, f"{exc} (run `casebridge packages fetch`)")
    except MappingError as exc:
        fail(3, f"mapping error: {exc}")
    # Everything is loaded: out of the garbage collector's sight, then the worker processes are forked (they
    # inherit both), before uvicorn opens its socket or the event loop starts any thread.
    settle_heap()
    services.runner.start()
    uvicorn.run(  # uvicorn handles SIGTERM/SIGINT itself: a graceful shutdown
        create_app(settings, services),
        host=host,
        port=port,
        log_config=None,  # our JSON logging, configured above
        access_log=False,  # our middleware logs each request, without its query string
        server_header=False,
        proxy_headers=False,
        http=http_protocol(settings.max_header_bytes),  # malformed HTTP and heads too long answered with an outcome
        ws="none",  # no WebSocket endpoint: an upgrade request is answered as plain HTTP, by the app
    )


class SchemaVersion(StrEnum):
    v2 = "2.0"
    v1 = "1.0"


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False)] = None,
    version: Annotated[
        SchemaVersion, typer.Option("--version", help="2.0, the current model; 1.0, still read and upgraded.")
    ] = SchemaVersion.v2,
) -> None:
    """Print (or write) the JSON Schema of the case-report input model."""
    data = dump_json(case_json_schema(version.value))
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        write_atomically(output, data)


def case_json_schema(version: str = case_model.SCHEMA_VERSION) -> dict[str, object]:
    model = CaseReport if version == case_model.SCHEMA_VERSION else case_v1.CaseReport
    doc = model.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://casebridge/schemas/case-report-{version}.schema.json",
        **doc,
    }


@app.command()
def migrate(
    case_files: Annotated[
        list[Path], typer.Argument(help="Case reports (JSON or YAML) of schema 1.0.", dir_okay=False)
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the 2.0 case here (one input only).", dir_okay=False)
    ] = None,
    in_place: Annotated[bool, typer.Option("--in-place", help="Rewrite each file where it is.")] = False,
) -> None:
    """Rewrite schema 1.0 case reports as schema 2.0 YAML (stdout, -o, or --in-place).

    Each file is checked as 1.0 first; nothing is written for a file that does not fit (exit 2). A 2.0 file is
    left as it is. Notes name what the 1.0 reading decided by wording, for a person to check. The 1.0 file's
    comments are not carried over.
    """
    if output is not None and (in_place or len(case_files) != 1):
        fail(2, "-o takes one case file, and not with --in-place")
    settings = cli_settings()
    for path in case_files:
        text, notes = reader.migrate(read_bounded(path, settings.max_case_bytes), source=shown(path))
        if text is None:
            err.print(f"{shown(path)}: already schema 2.0; left as it is", highlight=False, markup=False)
            continue
        for note in notes:
            err.print(f"{shown(path)}: note: {note}", highlight=False, markup=False)
        target = path if in_place else output
        if target is None:
            sys.stdout.write(text)
            continue
        try:
            write_atomically(target, text.encode())
        except OSError as exc:
            raise InputError(f"cannot write the case: {exc.strerror}", source=shown(target)) from exc
        err.print(f"wrote {shown(target)} (schema 2.0)", highlight=False, markup=False)


@app.command("check-mappings")
def check_mappings() -> None:
    """Load and check the mapping folder; print its roles and code tables."""
    settings = cli_settings()
    mappings = load_mappings(settings)
    table = Table(title=f"Mappings in {settings.mappings_dir}")
    table.add_column("role")
    table.add_column("resource")
    table.add_column("template")
    for t in mappings.templates:
        table.add_row(t.role, t.resource_type, f"{t.file}:{t.line}")
    out.print(table)
    terminology = settings.terminology()
    checked = f"checked against {terminology.name}" if terminology else "NOT checked (no terminology file)"
    rows = sum(len(r) for t in mappings.tables.values() for r in t.rows.values())
    out.print(f"{len(mappings.tables)} code tables, {rows} rows; citations {checked}")


@app.command()
def demo(
    case_file: Annotated[Path, typer.Argument(dir_okay=False)] = SEED_CASE,
    server: Annotated[
        str | None, typer.Option("--server", help="Use this FHIR server instead of starting the embedded one.")
    ] = None,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="The embedded server's data folder (kept between runs).", file_okay=False)
    ] = Path(".fhir-demo"),
) -> None:
    """Convert a case, validate it, push it to a FHIR server, pull its DiagnosticReports back, and say what happened.

    Without --server, the embedded FHIR server is started for the demo on a free port and stopped after it.
    """
    settings = cli_settings()
    given_server = server_url(settings, server) if server is not None else None  # checked before any work
    mappings = load_mappings(settings)
    case = read_case_file(case_file, settings)
    conversion = pipeline.convert(case, mappings, source=shown(case_file))
    bundle = conversion.bundle
    name = escape(shown(case_file.name))
    out.print(f"[bold]casebridge {__version__}[/bold] - case [cyan]{escape(case.case_id)}[/cyan] from {name}")
    out.print(f"source: {case.source.citation}", highlight=False, markup=False)
    table = Table(title=f"1. converted: a FHIR R4 transaction Bundle of {len(bundle['entry'])} resources")
    table.add_column("#", justify="right")
    table.add_column("resource")
    table.add_column("what")
    table.add_column("request")
    for i, entry in enumerate(bundle["entry"], 1):
        resource = entry["resource"]
        title = conversion.titles[entry["fullUrl"]]
        table.add_row(
            str(i),
            resource["resourceType"],
            escape(title),  # the case's words: never read as markup
            f"{entry['request']['method']} {resource['resourceType']}/{resource['id'][:8]}…",
        )
    out.print(table)

    started = time.perf_counter()
    validator = load_validator(settings)
    loaded = time.perf_counter()
    issues = pipeline.validate(bundle, validator)
    checked = time.perf_counter()
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    warnings = [i for i in issues if i.severity == "warning"]
    out.print(
        f"2. validated against base R4 and the casebridge profiles: {len(errors)} errors, {len(warnings)} warnings "
        f"({checked - loaded:.2f} s; definitions loaded in {loaded - started:.2f} s)",
        highlight=False,
    )
    try:
        pipeline.refuse_invalid(issues, max_issues=settings.max_outcome_issues)
    except InvalidResourceError as exc:
        for issue in errors[:10]:
            err.print(f"  {issue.severity} {issue.expression}: {issue.message}", markup=False, highlight=False)
        fail(1, f"{shown(case_file)}: {exc}")

    embedded = None
    if given_server is None:
        embedded = EmbeddedFhirServer(data_dir)
        try:
            embedded.start()
        except EmbeddedServerError as exc:
            fail(2, str(exc))
        base = embedded.base_url
        out.print(
            f"3. started the embedded FHIR server (sekmet-fhir, SQLite in {data_dir}/) at {base}", highlight=False
        )
    else:
        base = given_server
        out.print(f"3. FHIR server: {base}", highlight=False)
    try:
        round_ = push_and_pull(settings, base, bundle, warnings)
    finally:
        if embedded is not None:
            embedded.stop()
    out.print("4. ", end="")
    print_push(round_.push)
    out.print("5. ", end="")
    print_pulled(round_.pulled, round_.pull_seconds, round_.push.patient)
    if embedded is not None:
        out.print(
            f"6. stopped the embedded FHIR server; its data stays in {data_dir}/, so a second run finds everything "
            "already there"
        )


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(__version__)
        raise typer.Exit(0)


def announce_retry(details: stamina.instrumentation.RetryDetails) -> None:
    err.print(
        f"retry {details.retry_num} in {details.wait_for:.1f} s after: {details.caused_by}",
        markup=False,
        highlight=False,
    )


def main() -> None:
    """Entry point: our errors become messages and exit codes, never tracebacks."""
    # A retry is worth a line on stderr in our words (stamina's default is a bare logging event name).
    stamina.instrumentation.set_on_retry_hooks([announce_retry])
    try:
        app(standalone_mode=True)
    except InputError as exc:
        _fail_now(2, exc.report())
    except (ConfigurationError, LockError) as exc:
        _fail_now(3, f"configuration error: {exc}")
    except MappingError as exc:
        _fail_now(3, f"mapping error: {exc}")
    except CasebridgeError as exc:
        _fail_now(2, str(exc))
    except KeyboardInterrupt:
        _fail_now(130, "interrupted")
    except Exception as exc:
        if os.environ.get("CASEBRIDGE_DEBUG"):
            raise
        _fail_now(70, f"internal error: {type(exc).__name__}: {exc} (set CASEBRIDGE_DEBUG=1 for details)")


def _fail_now(code: int, message: str) -> NoReturn:
    err.print(shown(message, keep_newlines=True), markup=False, highlight=False)
    sys.exit(code)


if __name__ == "__main__":
    main()
