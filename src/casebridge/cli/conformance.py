"""``casebridge conformance DIR``: score our validator against the HL7 Java validator's expected outcomes.

Registered by ``casebridge.cli.core`` with ``app.command("conformance")(conformance)``. Exit codes: 0 the cases ran
(the scores are information, not a verdict); 2 the folder, its manifest or the ``--json-out`` path is
unusable, or the FHIR packages are not installed; 3 the configuration (``CASEBRIDGE_*``) is wrong.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from casebridge.config import Settings
from casebridge.definitions.packages import PackageError
from casebridge.files import write_atomically
from casebridge.tools.conformance import (
    STEPS,
    ConformanceError,
    ConformanceReport,
    Finding,
    Scores,
    run_conformance,
)

_err = Console(stderr=True, soft_wrap=True)
_out = Console(width=shutil.get_terminal_size((120, 40)).columns, soft_wrap=True)
_FINDINGS_SHOWN = 3  # error lines per side of a disagreement
_MESSAGE_CHARS = 160
_COLUMNS = (  # (header, width)
    ("step", 14),
    ("steps", 6),
    ("ran", 5),
    ("unsupp.", 9),
    ("crashed", 9),
    ("agree all", 11),
    ("agree ran", 11),
    ("false alarm", 13),
    ("missed", 8),
    ("same #err", 11),
    ("precision", 11),
    ("recall", 8),
)


def conformance(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="A folder of test cases in the HL7 fhir-test-cases format (manifest.json, outcomes/).",
        ),
    ],
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Also write the full report as JSON here.", dir_okay=False)
    ] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="How many disagreements to print.")] = 20,
    case: Annotated[str | None, typer.Option("--case", help="Run only the cases whose name contains this.")] = None,
) -> None:
    """Run a folder of HL7 validator test cases and score our validator against the Java validator's outcomes.
    Exit 0 when it ran, whatever the score; 2 when the folder or its manifest is unusable."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        _fail(3, f"configuration error (CASEBRIDGE_* environment): {problems}")
    try:
        report = run_conformance(directory, settings=settings, case_filter=case)
    except (ConformanceError, PackageError) as exc:
        _fail(2, str(exc))
    if case and not report.cases:
        _err.print(f"no case name contains {case!r}", markup=False, highlight=False)
    print_report(report, show)
    if json_out is not None:
        try:
            write_atomically(json_out, report.to_json().encode("utf-8"))
        except OSError as exc:
            _fail(2, f"{json_out}: cannot write the report: {exc.strerror or exc}")
        _err.print(f"wrote {json_out}", markup=False, highlight=False)


def print_report(report: ConformanceReport, show: int, console: Console = _out) -> None:
    """The summary: counts, the scores per step kind, what did not run, then the first disagreements."""

    def say(text: str = "") -> None:  # plain text: messages carry brackets that are not rich markup
        console.print(text, markup=False, highlight=False)

    steps = report.scores()
    per_kind = ", ".join(f"{report.scores(s).steps} {s}" for s in STEPS)
    say(f"{report.directory}: {report.cases} cases, {steps.steps} steps ({per_kind}) in {report.seconds:.2f} s")
    # Plain fixed-width text: it reads the same in a terminal, a pipe and a CI log.
    say()
    say("Agreement with the HL7 Java validator:")
    say(_row([header for header, _ in _COLUMNS]))
    for name in (*STEPS, "all"):
        say(_row([name, *_score_cells(report.scores(None if name == "all" else name))]))
    say(
        "agree: same valid/invalid verdict (all: steps that did not run count as disagreements; ran: over the steps "
        "that ran); false alarm: we say invalid, Java valid; missed: the reverse; same #err: same number of errors; "
        "precision/recall: of error expressions "
        f"({steps.matched} matched, {steps.ours_errors} ours, {steps.their_errors} theirs, over {steps.scored} steps "
        "with an issue list)."
    )
    say()
    say("Per module (every step of the cases the manifest puts in it):")
    say(_row(["module", *(header for header, _ in _COLUMNS[1:])]))
    for module, scores in report.modules().items():
        say(_row([module, *_score_cells(scores)]))
    not_run = report.not_run
    if not_run:
        say()
        say(f"Not run ({len(not_run)}):")
        for r in not_run:
            say(f"  {r.case} [{r.step}] {r.status}: {r.reason}")
    disagreements = report.disagreements
    say()
    if not disagreements:
        say("No verdict disagreements.")
        return
    shown = disagreements[:show]
    say(f"Verdict disagreements ({len(disagreements)}; showing {len(shown)}):")
    for d in shown:
        theirs = f"invalid ({_errors(d.expected_error_count)})" if not d.expected_valid else "valid"
        ours = f"invalid ({_errors(len(d.ours))})" if not d.ours_valid else "valid"
        say(f"  {d.case} [{d.step}]: expected {theirs}, ours {ours}")
        if d.expected is None:
            say("    expected: (a count only)")
        _findings(say, "expected", d.expected or ())
        _findings(say, "ours", d.ours)


def _row(cells: list[str]) -> str:
    """The first cell left-aligned, the numbers right-aligned, in the widths of ``_COLUMNS``."""
    first, *rest = cells
    return f"{first:<{_COLUMNS[0][1]}}" + "".join(f"{c:>{w}}" for c, (_, w) in zip(rest, _COLUMNS[1:], strict=True))


def _score_cells(s: Scores) -> list[str]:
    return [
        str(s.steps),
        str(s.ran),
        str(s.unsupported),
        str(s.crashed),
        _pct(s.agreement_all),
        _pct(s.agreement_ran),
        str(s.valid_invalid),
        str(s.invalid_valid),
        _pct(s.same_count_rate),
        _pct(s.precision),
        _pct(s.recall),
    ]


def _errors(count: int) -> str:
    return f"{count} error" if count == 1 else f"{count} errors"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _findings(say: Callable[[str], None], label: str, findings: tuple[Finding, ...]) -> None:
    for f in findings[:_FINDINGS_SHOWN]:
        message = f.message if len(f.message) <= _MESSAGE_CHARS else f.message[: _MESSAGE_CHARS - 1] + "…"
        say(f"    {label}: {f.expression or '-'}: {message}")
    if len(findings) > _FINDINGS_SHOWN:
        say(f"    {label}: … and {len(findings) - _FINDINGS_SHOWN} more")


def _fail(code: int, message: str) -> NoReturn:
    _err.print(message, markup=False, highlight=False)
    raise typer.Exit(code)
