"""Structured JSON logs with the request id. What is logged is decided here, and it is never content:
no bodies, no query strings, no narrative, diagnosis or patient identifiers — routes, statuses, timings, counts."""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


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
