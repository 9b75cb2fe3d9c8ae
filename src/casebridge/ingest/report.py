"""The end-of-job report: counts by status, every invalid, failed and unfinished case with its reason, timings.

Built from the job state (the truth, across resumed runs), plus this run's timings; written as JSON and
told as a short human summary. Counts and lists cover the cases of the current source only (``cases`` is
their number, and the counts add up to it); rows of cases no longer in the source are ``stale``, counted apart.
``resources`` are distinct resources (``Type/id``) over the job's life, by what the server first answered:
``created``, ``already_there`` (there before the job), ``uncertain`` (found there after an attempt of this job
whose answer was lost: created by that attempt or there before; no answer tells which), ``unanswered`` (only
sent by attempts whose answer was lost, their cases not pushed yet). Invalid, failed and unfinished cases say
``on_server``: an earlier version of the case was pushed and is on the server (a changed case now refused, say).
``orphaned`` lists resources a case's earlier push wrote that no case of the job writes any more (a corrected
case no longer produces them): left on the server, for an operator to remove. ``warnings`` lists pushed cases
with a caveat: one due to be sent again after an earlier case of its patient, whose unchanged content the
current rules refuse, stays pushed (its earlier push is on the server). ``stopped`` says why the job ended
before its end: the server stayed down, or it was interrupted (SIGTERM, Ctrl-C). ``reasserted`` lists the
patients whose last case this run's settle pass pushed again (an attempt of theirs had lost its answer and might
have landed late); ``unsettled`` those still marked (over the job's life), with why: the next run's pass
re-asserts them.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from casebridge.files import shown
from casebridge.ingest.job import RunStats
from casebridge.ingest.state import JobState

STATUSES = ("pushed", "invalid", "failed", "sending", "pending")


def build_report(state: JobState, stats: RunStats, *, source: str, server: str) -> dict[str, Any]:
    counts = {s: 0 for s in STATUSES}
    counts.update(state.counts())
    finished = time.time()
    seconds = finished - stats.started
    p50, p95 = stats.push_times.percentile(0.5), stats.push_times.percentile(0.95)
    return {
        "source": source,
        "server": server,
        "started": dt.datetime.fromtimestamp(stats.started, dt.UTC).isoformat(timespec="seconds"),
        "finished": dt.datetime.fromtimestamp(finished, dt.UTC).isoformat(timespec="seconds"),
        "cases": sum(counts.values()),
        "counts": counts,
        "stale": state.stale(),
        "stopped": stats.stopped,
        "this_run": {"done_before": stats.skipped, **stats.this_run},
        "resources": state.resources(),
        "timings": {
            "seconds": round(seconds, 2),
            "cases_per_second": round(sum(stats.this_run.values()) / seconds, 2) if seconds > 0 else None,
            "pushes": stats.push_times.count,
            "push_p50_ms": round(p50 * 1000, 1) if p50 is not None else None,
            "push_p95_ms": round(p95 * 1000, 1) if p95 is not None else None,
            "paused": stats.pauses,
        },
        "invalid": [
            {
                "key": r.key,
                "location": r.location,
                "case_id": r.case_id,
                "reason": r.reason,
                "outcome": r.outcome,
                "on_server": r.on_server,
            }
            for r in state.rows("invalid")
        ],
        "failed": [
            {
                "key": r.key,
                "location": r.location,
                "case_id": r.case_id,
                "attempts": r.attempts,
                "reason": r.reason,
                "on_server": r.on_server,
            }
            for r in state.rows("failed")
        ],
        "unfinished": [
            {
                "key": r.key,
                "location": r.location,
                "case_id": r.case_id,
                "status": r.status,
                "attempts": r.attempts,
                "reason": r.reason
                or ("sent, no answer recorded" if r.status == "sending" else "not reached before the job stopped"),
                "on_server": r.on_server,
            }
            for r in state.rows("sending", "pending")
        ],
        "orphaned": [{"ref": ref, "key": key, "location": location} for ref, key, location in state.orphaned()],
        "reasserted": [
            {"patient": patient, "key": key, "location": location, "sends": sends}
            for patient, key, location, sends in stats.reasserted
        ],
        "unsettled": [
            {
                "patient": patient,
                "last_lost_at": dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds"),
                "reason": reason or "the settle pass has not run since (the job stopped or was interrupted)",
            }
            for patient, at, reason in state.unsettled()
        ],
        "warnings": [
            {"key": r.key, "location": r.location, "case_id": r.case_id, "reason": r.reason} for r in state.warnings()
        ],
    }


def summary(report: dict[str, Any]) -> list[str]:
    counts = report["counts"]
    timing = report["timings"]
    resources = report["resources"]
    unfinished = counts["sending"] + counts["pending"]
    earlier = sum(1 for row in report["invalid"] if row["on_server"])
    lines = [
        f"{report['cases']} cases from {report['source']} -> {report['server']}",
        f"  pushed {counts['pushed']}, invalid {counts['invalid']} (not sent"
        + (f"; {earlier} with an earlier version on the server" if earlier else "")
        + f"), failed {counts['failed']}"
        + (f", unfinished {unfinished}" if unfinished else "")
        + (f"; {report['stale']} no longer in the source (not counted)" if report["stale"] else ""),
        f"  this run: {', '.join(f'{k} {v}' for k, v in report['this_run'].items())}",
        f"  resources: {resources['created']} created, {resources['already_there']} already there"
        + (f", {resources['uncertain']} created or already there (answer lost)" if resources["uncertain"] else "")
        + (f", {resources['unanswered']} sent without an answer yet" if resources["unanswered"] else ""),
        f"  {timing['seconds']} s, {timing['cases_per_second']} cases/s"
        + (f", push p50 {timing['push_p50_ms']} ms, p95 {timing['push_p95_ms']} ms" if timing["push_p50_ms"] else ""),
    ]
    if report["stopped"]:
        lines.append(f"  stopped: {report['stopped']}")
    if report["orphaned"]:
        lines.append(
            f"  orphaned: {len(report['orphaned'])} resources written by earlier versions of changed cases, no longer "
            "written by any case, left on the server (see the JSON report)"
        )
    if report["reasserted"]:
        lines.append(
            f"  re-asserted: {len(report['reasserted'])} patients (an attempt's answer was lost: their last case "
            "pushed again once it settled)"
        )
    for row in report["unsettled"][:20]:
        lines.append(f"  unsettled: {row['patient']}: {str(row['reason']).splitlines()[0][:240]}")
    if len(report["unsettled"]) > 20:
        lines.append(f"  ... and {len(report['unsettled']) - 20} more unsettled (see the JSON report)")
    for title in ("invalid", "failed", "unfinished", "warnings"):
        rows = report[title]
        for row in rows[:20]:
            # The reason's first line, after its location (a location stored raw may hold a line break).
            reason = str(row["reason"] or "").removeprefix(f"{row['location']}: ")
            first = f"{row['location']}: {reason.splitlines()[0] if reason else ''}"
            lines.append(f"  {title.removesuffix('s')}: {first[:240]}")
        if len(rows) > 20:
            lines.append(f"  ... and {len(rows) - 20} more {title} (see the JSON report)")
    # Locations are stored escaped, but a state written by an earlier version, or a reason quoting its input,
    # may still hold a control character: none reaches the terminal.
    return [shown(line) for line in lines]
