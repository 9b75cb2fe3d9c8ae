"""Structured JSON logs with the request id. What is logged is decided here, and it is never content:
no bodies, no query strings, no narrative, diagnosis or patient identifiers — routes, statuses, timings, counts."""

from __future__ import annotations

import contextvars
import logging
import sys

import stamina.instrumentation
from pythonjsonlogger.json import JsonFormatter

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
log = logging.getLogger("casebridge.api")


class _RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


def configure(level: str = "INFO") -> None:
    """One JSON line per event on stderr, for every logger; chatty libraries kept at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request's URL (with its query: patient ids) at INFO; uvicorn's access log likewise.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "stamina", "sekmet"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_retry(details: stamina.instrumentation.RetryDetails) -> None:
    """stamina's retry hook while serving: a JSON line with the request id, the error's type and the FHIR server's
    status, never the error's text (the URL with its query, a patient id in it, and the server's own words)."""
    caused_by = details.caused_by
    log.warning(
        "retrying a FHIR server request",
        extra={
            "attempt": details.retry_num,
            "wait_s": round(details.wait_for, 2),
            "error": type(caused_by).__name__,
            "upstream_status": getattr(caused_by, "status", None),
        },
    )
