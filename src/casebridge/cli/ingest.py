"""``casebridge ingest PATH``: a registry load, convert -> validate -> push, with a durable job state.

Exit codes: 0 every case pushed; 1 some cases invalid (reported, not sent), none failed; 4 some cases failed or
are unfinished (the FHIR server: see the report; also when it stayed down and the job stopped), or some patients
are left unsettled (an attempt's lost answer not yet re-asserted: see the report); 2 unusable
arguments or state file (one of another casebridge version included); 3 configuration; 130 interrupted (Ctrl-C
or SIGTERM: the report is written, with ``stopped``, and the summary printed first). Only the cases of the
current source count: a case no longer in it (its row kept in the state) changes no count and no exit code.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from casebridge.cli.support import cli_settings, err, fail, load_mappings, load_validator, out
from casebridge.cli.transfer import ServerOption, run_fhir, server_url
from casebridge.config import DATA_DIR
from casebridge.errors import InputError, MappingError
from casebridge.fhir.client import AsyncFhirClient
from casebridge.files import json_for_terminals, shown, write_atomically
from casebridge.ingest.fingerprint import ruleset_fingerprint
from casebridge.ingest.job import IngestJob, IngestOptions, RunStats
from casebridge.ingest.registry_csv import RegistryLayout
from casebridge.ingest.report import build_report, summary
from casebridge.ingest.sources import CaseSource
from casebridge.ingest.state import JobState
from casebridge.push import PatientLocks
from casebridge.runtime import settle_heap


class BarProgress:
    """A progress bar with rate and ETA, on a terminal."""

    def __init__(self) -> None:
        self._bar = Progress(
            TextColumn("ingest"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]:.1f}/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        self._task: Any = None
        self._counts: dict[str, int] = {}
        self._started = time.monotonic()

    def start(self, total: int, already_done: int) -> None:
        self._started = time.monotonic()
        self._bar.start()
        self._task = self._bar.add_task("ingest", total=total, counts="", rate=0.0)

    def advance(self, status: str) -> None:
        self._counts[status] = self._counts.get(status, 0) + 1
        worked = sum(self._counts.values()) - self._counts.get("done before", 0)
        rate = worked / max(time.monotonic() - self._started, 1e-6)
        counts = " ".join(f"{k} {v}" for k, v in sorted(self._counts.items()))
        self._bar.update(self._task, advance=1, counts=counts, rate=rate)

    def note(self, message: str) -> None:
        self._bar.console.print(shown(message), markup=False, highlight=False)

    def stop(self) -> None:
        self._bar.stop()


class LineProgress:
    """Plain lines when not on a terminal (CI logs, cron): one every few seconds, and at the end."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self._counts: dict[str, int] = {}
        self._total = 0
        self._started = time.monotonic()
        self._last = 0.0

    def start(self, total: int, already_done: int) -> None:
        self._total = total
        self._started = time.monotonic()
        self._last = self._started
        err.print(f"ingest: {total} cases", highlight=False)

    def advance(self, status: str) -> None:
        self._counts[status] = self._counts.get(status, 0) + 1
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._line(now)

    def note(self, message: str) -> None:
        err.print(f"ingest: {shown(message)}", markup=False, highlight=False)

    def stop(self) -> None:
        self._line(time.monotonic())

    def _line(self, now: float) -> None:
        done = sum(self._counts.values())
        # The rate counts this run's work only: cases done before are skipped in no time and would flatter the ETA.
        worked = done - self._counts.get("done before", 0)
        rate = worked / max(now - self._started, 1e-6)
        eta = (self._total - done) / rate if rate > 0 else 0
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self._counts.items()))
        err.print(f"ingest: {done}/{self._total} ({counts}), {rate:.1f} cases/s, ETA {eta:.0f} s", highlight=False)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _report(state: JobState, stats: RunStats, path: Path, base: str, report_path: Path) -> dict[str, Any]:
    """The report built from the state, written, and told as a summary; the state is closed."""
    result = build_report(state, stats, source=shown(path), server=base)
    state.close()
    try:
        write_atomically(report_path, json_for_terminals(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n"))
    except OSError as exc:
        raise InputError(f"cannot write the report: {exc.strerror}", source=shown(report_path)) from exc
    for line in summary(result):
        out.print(line, markup=False, highlight=False)
    out.print(f"report: {shown(report_path)}", markup=False, highlight=False)
    return result


def ingest(
    path: Annotated[
        Path,
        typer.Argument(
            help="A folder of case files (YAML/JSON; not its subfolders; a link out of it, a FIFO or a device is "
            "reported, not read), an .ndjson file of cases, or a registry .csv."
        ),
    ],
    server: ServerOption = None,
    state: Annotated[
        Path | None, typer.Option("--state", help="The job's SQLite state (default: PATH.ingest.sqlite).")
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=64, help="Pushes in flight.")] = 4,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the job of this state file.")] = False,
    report: Annotated[
        Path | None, typer.Option("--report", help="The JSON report (default: the state file's name .report.json).")
    ] = None,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, max=100, help="Attempts per case when the server fails.")
    ] = 6,
    outage_wait: Annotated[
        float,
        typer.Option(
            "--outage-wait",
            min=0,
            help="Seconds to wait for a FHIR server that stopped answering before the job stops (resume later).",
        ),
    ] = 600.0,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            min=0,
            help="Seconds after an attempt whose answer was lost before its patient's last case is pushed again: "
            "longer than any request the network may still deliver (a bound, not a proof).",
        ),
    ] = 30.0,
) -> None:
    """Load many cases: convert, validate and push each; resumable; a report at the end."""
    settings = cli_settings()
    base = server_url(settings, server)
    path = path.resolve() if path.exists() else path  # "ingest ." names its state after the folder, beside it
    layout = None
    if path.suffix.lower() == ".csv":
        try:
            layout = RegistryLayout.load(settings.mappings_dir / "registry-csv.yaml", root=DATA_DIR)
        except MappingError as exc:
            fail(3, f"mapping error: {exc}")
    source = CaseSource(path, max_bytes=settings.max_case_bytes, layout=layout)
    if nested := source.subfolders_with_cases():
        err.print(
            f"ingest: subfolders are not read (these hold case files: {', '.join(nested)}"
            f"{', ...' if len(nested) == 5 else ''})",
            markup=False,
            highlight=False,
        )
    state_path = state or path.with_name(path.name + ".ingest.sqlite")
    report_path = report or state_path.with_name(state_path.stem + ".report.json")
    named = shown(state_path)
    if state_path.exists() and not resume:
        fail(2, f"{named}: a job state exists; add --resume to continue that job, or choose another --state")
    if resume and not state_path.exists():
        fail(2, f"{named}: no job state to resume")
    # One job per state at a time: a second process would send everything again beside the first.
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        guard = os.open(state_path.with_name(state_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fail(2, f"{named}: another ingest job is running on this state")
    except OSError as exc:
        fail(2, f"{named}: cannot lock the job state: {exc.strerror}")
    try:
        job_state = JobState(state_path)
    except Exception as exc:  # noqa: BLE001 - sqlite3 and OS errors alike: the file is unusable
        fail(2, f"{named}: cannot use it as the job state: {exc}")
    started_against, started_from = job_state.meta("server"), job_state.meta("source")
    here = shown(path)  # the source as the state keeps it (a name that is not UTF-8 cannot be stored as it is)
    if started_against is not None and started_against != base:
        fail(2, f"{named}: this job sends to {started_against}; resume it against that server (--server)")
    if started_from is not None and started_from != here:
        fail(2, f"{named}: this job reads {shown(started_from)}; resume it with that PATH")
    job_state.set_meta("server", base)
    job_state.set_meta("source", here)
    validator = load_validator(settings)
    mappings = load_mappings(settings)
    # The rules a verdict is reached under: an invalid case is judged again when they change.
    ruleset = ruleset_fingerprint(
        [settings.mappings_dir, settings.profiles_dir, settings.fhir_packages_lock, settings.terminology()]
    )
    settle_heap()  # the definitions live as long as the job: out of the garbage collector's way
    progress: BarProgress | LineProgress = BarProgress() if err.is_terminal else LineProgress()
    # SIGTERM (a scheduler stopping the job) ends it as Ctrl-C does: the state is consistent either way.
    signal.signal(signal.SIGTERM, _interrupt)

    jobs: list[IngestJob] = []  # the job, once made: an interrupted run still reports what it did

    async def work() -> RunStats:
        async with AsyncFhirClient.from_settings(settings, base_url=base) as client:
            # The job retries each push itself: so it knows every attempt whose answer was lost (what makes a
            # later "already there" uncertain), and its breaker sees an outage as it happens.
            client.retry = dataclasses.replace(client.retry, attempts=1)
            job = IngestJob(
                source,
                job_state,
                client=client,
                locks=PatientLocks(settings.locks()),
                mappings=mappings,
                validator=validator,
                options=IngestOptions(
                    concurrency=concurrency, max_attempts=max_attempts, outage_wait=outage_wait, settle=settle
                ),
                progress=progress,
                ruleset=ruleset,
            )
            jobs.append(job)
            return await job.run()

    interrupted = False
    try:
        stats = run_fhir(work)
    except KeyboardInterrupt:
        # By now asyncio.run has cancelled the job and its state thread has committed every write made: the
        # state is consistent, and the report says what happened up to here. Then exit 130, as before.
        interrupted = True
        stats = jobs[0].stats if jobs else RunStats()
        stats.stopped = (
            "interrupted (Ctrl-C or SIGTERM); every case not finished stays in the state (continue with --resume)"
        )
    finally:
        progress.stop()
    result = _report(job_state, stats, path, base, report_path)
    if interrupted:
        raise KeyboardInterrupt
    counts = result["counts"]
    if stats.stopped or counts["failed"] or counts["sending"] or counts["pending"] or result["unsettled"]:
        raise typer.Exit(4)
    if counts["invalid"]:
        raise typer.Exit(1)
