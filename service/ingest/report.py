"""The end-of-job report: counts by status, every invalid and failed case with its reason, timings.

Built from the job state (the truth, across resumed runs), plus this run's timings; written as JSON and
told as a short human summary.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from typing import Any

from service.ingest.job import RunStats
from service.ingest.state import JobState

STATUSES = ("pushed", "invalid", "failed", "sending", "pending")


def build_report(state: JobState, stats: RunStats, *, source: str, server: str, total: int) -> dict[str, Any]:
    counts = {s: 0 for s in STATUSES}
    counts.update(state.counts())
    finished = time.time()
    seconds = finished - stats.started
    pushes = sorted(stats.push_seconds)
    created = already = 0
    for row in state.rows("pushed"):
        created += row.created or 0
        already += row.already_there or 0
    return {
        "source": source,
        "server": server,
        "started": dt.datetime.fromtimestamp(stats.started, dt.UTC).isoformat(timespec="seconds"),
        "finished": dt.datetime.fromtimestamp(finished, dt.UTC).isoformat(timespec="seconds"),
        "cases": total,
        "counts": counts,
        "this_run": {"done_before": stats.skipped, **stats.this_run},
        "resources": {"created": created, "already_there": already},
        "timings": {
            "seconds": round(seconds, 2),
            "cases_per_second": round(sum(stats.this_run.values()) / seconds, 2) if seconds > 0 else None,
            "push_p50_ms": round(statistics.median(pushes) * 1000, 1) if pushes else None,
            "push_p95_ms": round(pushes[int(len(pushes) * 0.95)] * 1000, 1) if pushes else None,
        },
        "invalid": [
            {"key": r.key, "source": r.source, "case_id": r.case_id, "reason": r.reason, "outcome": r.outcome}
            for r in state.rows("invalid")
        ],
        "failed": [
            {"key": r.key, "source": r.source, "case_id": r.case_id, "attempts": r.attempts, "reason": r.reason}
            for r in state.rows("failed", "sending", "pending")
        ],
    }


def summary(report: dict[str, Any]) -> list[str]:
    counts = report["counts"]
    timing = report["timings"]
    lines = [
        f"{report['cases']} cases from {report['source']} -> {report['server']}",
        f"  pushed {counts['pushed']}, invalid {counts['invalid']} (not sent), failed {counts['failed']}"
        + (f", unfinished {counts['sending'] + counts['pending']}" if counts["sending"] + counts["pending"] else ""),
        f"  this run: {', '.join(f'{k} {v}' for k, v in report['this_run'].items())}",
        f"  resources: {report['resources']['created']} created, {report['resources']['already_there']} already there",
        f"  {timing['seconds']} s, {timing['cases_per_second']} cases/s"
        + (f", push p50 {timing['push_p50_ms']} ms, p95 {timing['push_p95_ms']} ms" if timing["push_p50_ms"] else ""),
    ]
    for title, rows in (("invalid", report["invalid"]), ("failed", report["failed"])):
        for row in rows[:20]:
            first = str(row["reason"] or "").splitlines()[0] if row["reason"] else ""
            if not first.startswith(row["source"]):
                first = f"{row['source']}: {first}"
            lines.append(f"  {title}: {first[:240]}")
        if len(rows) > 20:
            lines.append(f"  ... and {len(rows) - 20} more {title} (see the JSON report)")
    return lines
