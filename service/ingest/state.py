"""The job's durable state: one SQLite row per case, written before and after each push.

A job killed at any instant resumes from it: ``pushed`` and ``invalid`` cases (with unchanged content) are
done; ``sending`` means the push may or may not have reached the server, and is sent again (every push is
idempotent: PUTs with deterministic ids); ``pending`` and ``failed`` are (re)tried. WAL journal with
synchronous=NORMAL: a commit survives the process being killed; after a power loss the last few commits may be
gone, which only means sending those cases again (idempotent), never losing one, and it spares an fsync per write.

    status      pending -> sending -> pushed
                        \\-> invalid (with its OperationOutcome)      sending -> failed (reason, attempts)
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    key TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    digest TEXT NOT NULL,
    case_id TEXT,
    patient TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'sending', 'pushed', 'invalid', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    outcome TEXT,
    created INTEGER,
    already_there INTEGER,
    seconds REAL,
    updated TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_status ON cases(status);
CREATE TABLE IF NOT EXISTS job (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
DONE = ("pushed", "invalid")


@dataclass(frozen=True, slots=True)
class CaseRow:
    key: str
    source: str
    digest: str
    case_id: str | None
    patient: str | None
    status: str
    attempts: int
    reason: str | None
    outcome: dict[str, Any] | None
    created: int | None
    already_there: int | None
    seconds: float | None


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class JobState:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used from the event loop's thread only; autocommit: every statement is its own commit.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

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

    def get(self, key: str) -> CaseRow | None:
        row = self._db.execute(_SELECT + " WHERE key = ?", (key,)).fetchone()
        return _row(row) if row else None

    def is_done(self, key: str, digest: str) -> bool:
        row = self._db.execute("SELECT status, digest FROM cases WHERE key = ?", (key,)).fetchone()
        return bool(row and row[0] in DONE and row[1] == digest)

    def pending(self, key: str, source: str, digest: str) -> None:
        """Known to the job, not yet done (a changed input starts again from pending)."""
        self._db.execute(
            "INSERT INTO cases(key, source, digest, status, updated) VALUES (?, ?, ?, 'pending', ?) "
            "ON CONFLICT(key) DO UPDATE SET source = excluded.source, digest = excluded.digest, "
            "status = CASE WHEN cases.digest = excluded.digest THEN cases.status ELSE 'pending' END, "
            "updated = excluded.updated",
            (key, source, digest, _now()),
        )

    def invalid(self, key: str, case_id: str | None, reason: str, outcome: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE cases SET status = 'invalid', case_id = ?, reason = ?, outcome = ?, updated = ? WHERE key = ?",
            (case_id, reason, orjson.dumps(outcome).decode(), _now(), key),
        )

    def sending(self, key: str, case_id: str, patient: str | None) -> int:
        """Recorded before the push is sent; returns the attempt number."""
        self._db.execute(
            "UPDATE cases SET status = 'sending', case_id = ?, patient = ?, attempts = attempts + 1, updated = ? "
            "WHERE key = ?",
            (case_id, patient, _now(), key),
        )
        row = self._db.execute("SELECT attempts FROM cases WHERE key = ?", (key,)).fetchone()
        return int(row[0])

    def pushed(self, key: str, created: int, already_there: int, seconds: float) -> None:
        self._db.execute(
            "UPDATE cases SET status = 'pushed', reason = NULL, created = ?, already_there = ?, seconds = ?, "
            "updated = ? WHERE key = ?",
            (created, already_there, seconds, _now(), key),
        )

    def failed(self, key: str, reason: str, outcome: dict[str, Any] | None = None) -> None:
        self._db.execute(
            "UPDATE cases SET status = 'failed', reason = ?, outcome = ?, updated = ? WHERE key = ?",
            (reason, orjson.dumps(outcome).decode() if outcome else None, _now(), key),
        )

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, COUNT(*) FROM cases GROUP BY status").fetchall())

    def rows(self, *statuses: str) -> Iterator[CaseRow]:
        query = _SELECT
        if statuses:
            # Only placeholders are built here; the statuses themselves are bound parameters.
            query += " WHERE status IN (" + ", ".join("?" * len(statuses)) + ")"
        for row in self._db.execute(query + " ORDER BY key", statuses):
            yield _row(row)

    def keys(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT key FROM cases")}


_SELECT = (
    "SELECT key, source, digest, case_id, patient, status, attempts, reason, outcome, created, already_there, seconds "
    "FROM cases"
)


def _row(row: tuple[Any, ...]) -> CaseRow:
    values = list(row)
    values[8] = orjson.loads(values[8]) if values[8] else None
    return CaseRow(*values)
