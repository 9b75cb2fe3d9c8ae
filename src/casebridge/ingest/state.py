"""The job's durable state: one SQLite row per case, written before and after each push.

A job killed at any instant resumes from it: ``pushed`` and ``invalid`` cases (with unchanged content) are
done; ``sending`` means the push may or may not have reached the server, and is sent again (every push is
idempotent: PUTs with deterministic ids); ``pending`` and ``failed`` are (re)tried. WAL journal with
synchronous=NORMAL: a commit survives the process being killed; after a power loss the last few commits may be
gone, which only means sending those cases again (idempotent), never losing one, and it spares an fsync per write.

    status      pending -> sending -> pushed
                        \\-> invalid (with its OperationOutcome)      sending -> failed (reason, attempts)
                                                                     sending -> pending (to be tried again)
                pushed -> pending  (an earlier case of its patient is about to be sent: it goes again after it)

Rows are keyed by the case's identity (``sources.py``), with its ``location`` (file or file:line) for messages.
Every run first registers the whole source (``begin_run`` then ``register``): a row's ``run`` says the last run
whose source held it. Counts and rows are those of the current run's source; rows of cases no longer in the
source ("stale") are kept (their resources are on the server, and a case put back is known again) but counted
apart and never in the exit code. A changed content makes a case ``pending`` again; so does a changed rule set
(mappings, code tables, profiles: ``fingerprint.py``) for an ``invalid`` case, never for a ``pushed`` one: a
pushed case is on the server, and a new rule set alone does not send the registry again (use a new state).

``seq`` is the row's position in the current run's source (set at registration): one patient's cases are sent in
that order, and when an earlier case of a patient is about to be sent (``resend_later``), the patient's later
``pushed`` cases are made ``pending`` again in the same commit, so the patient ends as its last case says even if
the job is killed between the two pushes. ``pushed_digest`` is the digest of the content last pushed: a case
whose earlier version is on the server is never shown as merely "not sent" (``on_server``), and a re-send of
unchanged content that the current rules refuse keeps the case ``pushed`` with a warning in ``reason``.

``written`` holds, per case, the resources its last push wrote. Resource ids derive from the case's content
(``case_id``/role/key), so a corrected case pushed again may no longer write some of them: such a resource that
no other case of the job writes either is recorded in ``orphaned`` — left on the server, not deleted (a DELETE in
the case's transaction could make the server refuse the whole transaction, referential integrity say, and fail
a corrected case; and a resource there before the job is not ours to delete) — and reported, for an operator to
remove. Written again by any case, it is no longer orphaned. (Rows pushed under schema 2 have no ``written``
entries: a change to those cases cannot be checked.)

``resources`` holds every resource (``Type/id``) the job's pushes were told about, with what the first answer
said: ``created`` (201), ``already_there`` (200, and no attempt of this job that touched it went unanswered),
``uncertain`` (200 after such an attempt: created by the lost attempt, or there before), ``unanswered`` (only
touched by attempts whose answer was lost). Counting distinct resources keeps a patient shared by several
cases, a retry and a re-send of a changed case from counting twice.

``unsettled`` holds the patients an attempt of one of whose cases lost its answer (a timeout, a reset after
sending, a run killed while ``sending``), with the time (epoch seconds) of the last such attempt: that attempt may
still be travelling to the server and land after the patient's later writes. The job's settle pass, once
``--settle`` seconds have passed since it, pushes the patient's last pushed case (source order) again and clears the
mark in the commit that records that push; a mark survives a kill, and the next run's pass handles it.

One connection, used from one thread at a time: while a job runs, ``StateThread``'s (the event loop never
blocks on SQLite); before and after, the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import orjson

from casebridge.errors import CasebridgeError

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE cases (
    key TEXT PRIMARY KEY,
    location TEXT NOT NULL,
    digest TEXT NOT NULL,
    run INTEGER NOT NULL,
    case_id TEXT,
    patient TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'pushed', 'invalid', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    unanswered INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    outcome TEXT,
    ruleset TEXT,
    created INTEGER,
    already_there INTEGER,
    seconds REAL,
    updated TEXT NOT NULL,
    seq INTEGER,
    pushed_digest TEXT
);
CREATE INDEX cases_run_status ON cases(run, status);
CREATE INDEX cases_patient_seq ON cases(patient, seq);
CREATE TABLE resources (
    ref TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    first TEXT NOT NULL CHECK (first IN ('created', 'already_there', 'uncertain', 'unanswered'))
);
CREATE TABLE job (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE written (key TEXT NOT NULL, ref TEXT NOT NULL, PRIMARY KEY (key, ref));
CREATE INDEX written_ref ON written(ref);
CREATE TABLE orphaned (ref TEXT PRIMARY KEY, key TEXT NOT NULL, noted TEXT NOT NULL);
CREATE TABLE unsettled (patient TEXT PRIMARY KEY, last_lost_at REAL NOT NULL, reason TEXT);
"""
# Schema 2 -> 3: a pushed row's digest is the content it pushed; its position comes with the next registration.
MIGRATE_2_3 = """
ALTER TABLE cases ADD COLUMN seq INTEGER;
ALTER TABLE cases ADD COLUMN pushed_digest TEXT;
UPDATE cases SET pushed_digest = digest WHERE status = 'pushed';
CREATE INDEX cases_patient_seq ON cases(patient, seq);
CREATE TABLE written (key TEXT NOT NULL, ref TEXT NOT NULL, PRIMARY KEY (key, ref));
CREATE INDEX written_ref ON written(ref);
CREATE TABLE orphaned (ref TEXT PRIMARY KEY, key TEXT NOT NULL, noted TEXT NOT NULL);
"""
# Schema 3 -> 4: no patient is known unsettled (a state of schema 3 did not record lost attempts per patient).
MIGRATE_3_4 = """
CREATE TABLE unsettled (patient TEXT PRIMARY KEY, last_lost_at REAL NOT NULL, reason TEXT);
"""
DONE = ("pushed", "invalid")
RESOURCE_OUTCOMES = ("created", "already_there", "uncertain", "unanswered")

P = ParamSpec("P")
T = TypeVar("T")


class StateVersionError(CasebridgeError):
    """A state file of another casebridge version: its rows cannot be read as this one's."""


@dataclass(frozen=True, slots=True)
class CaseRow:
    key: str
    location: str
    digest: str
    case_id: str | None
    patient: str | None
    status: str
    attempts: int
    unanswered: int
    reason: str | None
    outcome: dict[str, Any] | None
    created: int | None
    already_there: int | None
    seconds: float | None
    pushed_digest: str | None  # the content last pushed: an earlier version of the case is on the server

    @property
    def on_server(self) -> bool:
        return self.pushed_digest is not None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class JobState:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: every statement is its own commit, unless inside _transaction.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._open_schema()
        except BaseException:
            self._db.close()
            raise
        self.run = int(self.meta("run") or 0)

    def _open_schema(self) -> None:
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            with self._transaction():  # all or nothing: a half-made schema would be refused next time
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self.set_meta("schema", SCHEMA_VERSION)
            return
        version = self.meta("schema") if "job" in tables else None
        if version in (2, 3):
            # Schema 2 lacks the columns and tables of MIGRATE_2_3, schema 3 the table of MIGRATE_3_4: brought up
            # to date in place, in one commit.
            with self._transaction():
                for script in (MIGRATE_2_3, MIGRATE_3_4)[version - 2 :]:
                    for statement in script.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                self.set_meta("schema", SCHEMA_VERSION)
            return
        if version != SCHEMA_VERSION:
            found = f"schema {version}" if version is not None else "an earlier schema, cases keyed by file and line"
            raise StateVersionError(
                f"a job state of another casebridge version ({found}; this one reads schema {SCHEMA_VERSION}): "
                "finish that job with the casebridge that started it, or start this one with a new --state"
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def set_meta(self, name: str, value: Any) -> None:
        self._db.execute(
            "INSERT INTO job(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, orjson.dumps(value).decode()),
        )

    def meta(self, name: str) -> Any:
        row = self._db.execute("SELECT value FROM job WHERE name = ?", (name,)).fetchone()
        return orjson.loads(row[0]) if row else None

    # -- a run: the source registered, then worked through ----------------------------------------------

    def begin_run(self) -> int:
        """A new run: the rows its source holds get its number (``register``)."""
        self.run = int(self.meta("run") or 0) + 1
        self.set_meta("run", self.run)
        return self.run

    def register(self, items: Sequence[tuple[str, str, str, int | None]], ruleset: str | None) -> None:
        """(key, location, digest, position) of source items, in one commit: new ones ``pending``; known ones
        marked as in this run's source at their position, and ``pending`` again when their content changed, or
        (invalid ones) the rules did. A ``sending`` row stays ``sending``: its last attempt went unanswered, which
        its next push must know."""
        now = _now()
        with self._transaction():
            self._db.executemany(
                "INSERT INTO cases(key, location, digest, run, seq, status, updated) "
                "VALUES (?, ?, ?, ?, ?, 'pending', ?) "
                "ON CONFLICT(key) DO UPDATE SET location = excluded.location, run = excluded.run, seq = excluded.seq, "
                "status = CASE WHEN cases.status = 'sending' THEN 'sending' "
                "  WHEN cases.digest != excluded.digest THEN 'pending' "
                "  WHEN cases.status = 'invalid' AND cases.ruleset IS NOT ? THEN 'pending' "
                "  ELSE cases.status END, "
                "reason = CASE WHEN cases.digest != excluded.digest THEN NULL ELSE cases.reason END, "
                "digest = excluded.digest, updated = excluded.updated",
                [(key, location, digest, self.run, seq, now, ruleset) for key, location, digest, seq in items],
            )

    def pending(self, key: str, location: str, digest: str, ruleset: str | None = None) -> None:
        """One item registered, at no known position (see ``register``; used by benchmarks/bench_ingest.py)."""
        self.register([(key, location, digest, None)], ruleset)

    def resend_later(self, key: str, patient: str) -> int:
        """``key``, a case of ``patient``, is about to be sent: the patient's later cases (source order) that are
        ``pushed`` become ``pending`` again, in this one commit, so that they go again after it and the patient
        ends as its last case says, even if the job is killed in between. Returns how many."""
        with self._transaction():
            row = self._db.execute("SELECT seq, location FROM cases WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] is None:
                return 0
            reason = f"to be sent again after {row[1]}, an earlier case of its patient sent again"
            changed = self._db.execute(
                "UPDATE cases SET status = 'pending', reason = ?, updated = ? "
                "WHERE patient = ? AND seq > ? AND run = ? AND status = 'pushed'",
                (reason, _now(), patient, row[0], self.run),
            ).rowcount
        return int(changed)

    def lookup(self, key: str) -> tuple[str, str | None] | None:
        """(status, patient) of a case, if known."""
        row = self._db.execute("SELECT status, patient FROM cases WHERE key = ?", (key,)).fetchone()
        return (str(row[0]), row[1]) if row else None

    def get(self, key: str) -> CaseRow | None:
        row = self._db.execute(_SELECT + " WHERE key = ?", (key,)).fetchone()
        return _row(row) if row else None

    # -- verdicts -------------------------------------------------------------------------------------------

    def invalid(
        self, key: str, case_id: str | None, reason: str, outcome: dict[str, Any], ruleset: str | None = None
    ) -> None:
        self._db.execute(
            "UPDATE cases SET status = 'invalid', case_id = ?, reason = ?, outcome = ?, ruleset = ?, updated = ? "
            "WHERE key = ?",
            (case_id, reason, orjson.dumps(outcome).decode(), ruleset, _now(), key),
        )

    def sending(
        self, key: str, case_id: str, patient: str | None, refs: Sequence[str] = (), *, now: float | None = None
    ) -> int:
        """Recorded (committed) before the push is sent; returns the attempt number. A row found ``sending`` was
        sent by a run that died before the answer was recorded: that attempt counts as unanswered, and its patient
        is unsettled (``now``, epoch seconds, as the time of that attempt: no earlier than it was)."""
        with self._transaction():
            row = self._db.execute("SELECT status, patient FROM cases WHERE key = ?", (key,)).fetchone()
            lost = bool(row and row[0] == "sending")
            if lost:
                self._unanswered(key, refs)
                self._unsettle(row[1] or patient, now)
            self._db.execute(
                "UPDATE cases SET status = 'sending', case_id = ?, patient = ?, attempts = attempts + 1, "
                "unanswered = unanswered + ?, updated = ? WHERE key = ?",
                (case_id, patient, int(lost), _now(), key),
            )
            attempts = self._db.execute("SELECT attempts FROM cases WHERE key = ?", (key,)).fetchone()
        return int(attempts[0]) if attempts else 0

    def pushed(self, key: str, entries: Sequence[tuple[str, bool]], seconds: float, ruleset: str | None = None) -> None:
        """The push's answer: each entry as (Type/id, created?)."""
        created = sum(1 for _, new in entries if new)
        refs = sorted({ref for ref, _ in entries})
        with self._transaction():
            self._orphans(key, refs)
            # The first answer about a resource decides; one only an unanswered attempt touched is settled now.
            self._db.executemany(
                "INSERT INTO resources(ref, key, first) VALUES (?, ?, ?) ON CONFLICT(ref) DO UPDATE SET "
                "first = CASE WHEN excluded.first = 'created' THEN 'created' ELSE 'uncertain' END, key = excluded.key "
                "WHERE resources.first = 'unanswered'",
                [(ref, key, "created" if new else "already_there") for ref, new in entries],
            )
            self._db.execute(
                "UPDATE cases SET status = 'pushed', reason = NULL, outcome = NULL, created = ?, already_there = ?, "
                "seconds = ?, ruleset = ?, pushed_digest = digest, updated = ? WHERE key = ?",
                (created, len(entries) - created, seconds, ruleset, _now(), key),
            )

    def _orphans(self, key: str, refs: Sequence[str]) -> None:
        """``written`` for ``key`` becomes ``refs``; what its last push wrote and this one does not, and no other
        case writes, is ``orphaned``; what is written again is not."""
        now = _now()
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS now_written (ref TEXT PRIMARY KEY)")
        self._db.execute("DELETE FROM now_written")
        self._db.executemany("INSERT INTO now_written(ref) VALUES (?)", [(r,) for r in refs])
        self._db.execute(
            "INSERT OR IGNORE INTO orphaned(ref, key, noted) SELECT w.ref, w.key, ? FROM written w "
            "WHERE w.key = ? AND w.ref NOT IN (SELECT ref FROM now_written) "
            "AND NOT EXISTS (SELECT 1 FROM written o WHERE o.ref = w.ref AND o.key != w.key)",
            (now, key),
        )
        self._db.execute("DELETE FROM orphaned WHERE ref IN (SELECT ref FROM now_written)")
        self._db.execute("DELETE FROM written WHERE key = ?", (key,))
        self._db.executemany("INSERT INTO written(key, ref) VALUES (?, ?)", [(key, r) for r in refs])

    def orphaned(self) -> list[tuple[str, str, str | None]]:
        """(Type/id, the case that last wrote it, its location) of resources no case of the job writes any more."""
        return [
            (str(ref), str(key), location)
            for ref, key, location in self._db.execute(
                "SELECT o.ref, o.key, c.location FROM orphaned o LEFT JOIN cases c ON c.key = o.key ORDER BY o.ref"
            )
        ]

    def kept(self, key: str, warning: str) -> None:
        """A case whose content, unchanged since it was pushed, is refused by the current rules when it was to be
        sent again: it stays ``pushed`` (that version is on the server), with the warning as its reason."""
        self._db.execute(
            "UPDATE cases SET status = 'pushed', reason = ?, updated = ? WHERE key = ?", (warning, _now(), key)
        )

    def retrying(
        self,
        key: str,
        reason: str,
        outcome: dict[str, Any] | None = None,
        *,
        lost: Sequence[str] | None = None,
        now: float | None = None,
    ) -> None:
        """An attempt failed and another follows: ``pending`` with the reason. ``lost``: the attempt may have
        reached the server (no answer): the resources it carried; its patient becomes unsettled as of ``now``
        (epoch seconds)."""
        self._settle(key, "pending", reason, outcome, lost, now)

    def failed(
        self,
        key: str,
        reason: str,
        outcome: dict[str, Any] | None = None,
        *,
        lost: Sequence[str] | None = None,
        now: float | None = None,
    ) -> None:
        self._settle(key, "failed", reason, outcome, lost, now)

    def not_sent(self, key: str, reason: str) -> None:
        """The job stopped before sending this case: ``pending`` with the reason; a row still ``sending`` from a
        run that died stays so (that attempt's answer is unknown, which its next push must know)."""
        self._db.execute(
            "UPDATE cases SET status = CASE WHEN status = 'sending' THEN 'sending' ELSE 'pending' END, reason = ?, "
            "updated = ? WHERE key = ?",
            (reason, _now(), key),
        )

    def _settle(
        self,
        key: str,
        status: str,
        reason: str,
        outcome: dict[str, Any] | None,
        lost: Sequence[str] | None,
        now: float | None,
    ) -> None:
        with self._transaction():
            if lost is not None:
                self._unanswered(key, lost)
                patient = self._db.execute("SELECT patient FROM cases WHERE key = ?", (key,)).fetchone()
                self._unsettle(patient[0] if patient else None, now)
            self._db.execute(
                "UPDATE cases SET status = ?, reason = ?, outcome = ?, unanswered = unanswered + ?, updated = ? "
                "WHERE key = ?",
                (status, reason, orjson.dumps(outcome).decode() if outcome else None, lost is not None, _now(), key),
            )

    def _unsettle(self, patient: str | None, now: float | None) -> None:
        """``patient``: an attempt of one of its cases lost its answer at ``now`` (epoch seconds), and may still
        land on the server after the patient's later writes (see the settle pass in ``job.py``)."""
        if patient is None:
            return
        at = time.time() if now is None else now
        self._db.execute(
            "INSERT INTO unsettled(patient, last_lost_at, reason) VALUES (?, ?, NULL) ON CONFLICT(patient) DO UPDATE "
            "SET last_lost_at = MAX(unsettled.last_lost_at, excluded.last_lost_at), reason = NULL",
            (patient, at),
        )

    # -- the settle pass ---------------------------------------------------------------------------------------

    def unsettled(self) -> list[tuple[str, float, str | None]]:
        """(patient, time of its last lost attempt, why it is still unsettled if a pass said so), oldest first."""
        return [
            (str(p), float(at), reason)
            for p, at, reason in self._db.execute(
                "SELECT patient, last_lost_at, reason FROM unsettled ORDER BY last_lost_at, patient"
            )
        ]

    def unsettled_at(self, patient: str) -> float | None:
        row = self._db.execute("SELECT last_lost_at FROM unsettled WHERE patient = ?", (patient,)).fetchone()
        return float(row[0]) if row else None

    def last_pushed(self, patient: str) -> CaseRow | None:
        """The patient's last case in source order (this run's source) that is ``pushed``."""
        row = self._db.execute(
            _SELECT + " WHERE patient = ? AND run = ? AND status = 'pushed' ORDER BY seq DESC LIMIT 1",
            (patient, self.run),
        ).fetchone()
        return _row(row) if row else None

    def still_unsettled(self, patient: str, reason: str) -> None:
        """The settle pass could not re-assert ``patient`` in this run: the mark stays, with why."""
        self._db.execute("UPDATE unsettled SET reason = ? WHERE patient = ?", (reason, patient))

    def reassert_lost(self, patient: str, now: float | None = None) -> None:
        """A re-assert push lost its answer: it may land late too; the patient stays unsettled, as of ``now``."""
        with self._transaction():
            self._unsettle(patient, now)

    def reasserted(self, key: str, patient: str, entries: Sequence[tuple[str, bool]], seen: float) -> bool:
        """The re-assert push of ``key`` (the patient's last pushed case) was answered: its resources recorded
        and, in the same commit, the patient's mark cleared, unless an attempt lost its answer after ``seen`` (the
        mark's time the pass waited on). Returns whether it was cleared."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO resources(ref, key, first) VALUES (?, ?, ?) ON CONFLICT(ref) DO UPDATE SET "
                "first = CASE WHEN excluded.first = 'created' THEN 'created' ELSE 'uncertain' END, key = excluded.key "
                "WHERE resources.first = 'unanswered'",
                [(ref, key, "created" if new else "already_there") for ref, new in entries],
            )
            self._db.execute("UPDATE cases SET updated = ? WHERE key = ?", (_now(), key))
            cleared = self._db.execute(
                "DELETE FROM unsettled WHERE patient = ? AND last_lost_at <= ?", (patient, seen)
            ).rowcount
        return bool(cleared)

    def _unanswered(self, key: str, refs: Sequence[str]) -> None:
        self._db.executemany(
            "INSERT OR IGNORE INTO resources(ref, key, first) VALUES (?, ?, 'unanswered')", [(r, key) for r in refs]
        )

    # -- what the report reads: the current run's source ----------------------------------------------------

    def counts(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT status, COUNT(*) FROM cases WHERE run = ? GROUP BY status", (self.run,)).fetchall()
        )

    def stale(self) -> int:
        """Rows of cases no longer in the source (not counted anywhere else)."""
        return int(self._db.execute("SELECT COUNT(*) FROM cases WHERE run != ?", (self.run,)).fetchone()[0])

    def rows(self, *statuses: str) -> Iterator[CaseRow]:
        query = _SELECT + " WHERE run = ?"
        if statuses:
            # Only placeholders are built here; the statuses themselves are bound parameters.
            query += " AND status IN (" + ", ".join("?" * len(statuses)) + ")"
        for row in self._db.execute(query + " ORDER BY location, key", (self.run, *statuses)):
            yield _row(row)

    def resources(self) -> dict[str, int]:
        """Distinct resources by what this job's pushes were told first (over all its runs)."""
        found = dict(self._db.execute("SELECT first, COUNT(*) FROM resources GROUP BY first").fetchall())
        return {name: int(found.get(name, 0)) for name in RESOURCE_OUTCOMES}

    def warnings(self) -> Iterator[CaseRow]:
        """Pushed cases with a warning (``kept``)."""
        for row in self._db.execute(
            _SELECT + " WHERE run = ? AND status = 'pushed' AND reason IS NOT NULL ORDER BY location, key", (self.run,)
        ):
            yield _row(row)


class StateThread:
    """Runs the state's calls on one dedicated thread, in the order they are made: SQLite blocks (a commit waits
    for the disk) and the event loop must not. Awaiting a call returns once it is committed, so "recorded
    before the push is sent" still holds."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(1, "casebridge-state")

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)


_SELECT = (
    "SELECT key, location, digest, case_id, patient, status, attempts, unanswered, reason, outcome, created, "
    "already_there, seconds, pushed_digest FROM cases"
)


def _row(row: tuple[Any, ...]) -> CaseRow:
    values = list(row)
    values[9] = orjson.loads(values[9]) if values[9] else None
    return CaseRow(*values)
