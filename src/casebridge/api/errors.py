"""Every error the API answers is an OperationOutcome; no exception text from deep inside leaves the process.

``ApiError`` carries a status and its OperationOutcome; the handlers below turn our exceptions, FastAPI's
request-validation errors and Starlette's HTTP errors into OperationOutcomes. Failures of the FHIR
server behind us become 502 (it answered badly), 503 (unreachable, or asking us to slow down) or 504 (it
did not answer in time), with an OperationOutcome that says what happened upstream.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from casebridge.api.outcomes import error_outcome, issue, outcome, outcome_response, problems_outcome
from casebridge.errors import (
    AuthError,
    CasebridgeError,
    CaseFileError,
    FhirError,
    FhirHttpError,
    FhirProtocolError,
    FhirTransportError,
    InputError,
    LockError,
    TooManyRequests,
)

log = logging.getLogger("casebridge.api")


class ApiError(CasebridgeError):
    """An answer other than success: ``status`` and the OperationOutcome to send."""

    def __init__(self, status: int, body: Mapping[str, Any], *, headers: Mapping[str, str] | None = None):
        self.status = status
        self.body = dict(body)
        self.headers = dict(headers or {})
        first = (self.body.get("issue") or [{}])[0]
        super().__init__(f"{status}: {first.get('diagnostics', '')}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a worker process, it crosses a pipe: rebuilt from what it says, not from its message.
        return (functools.partial(type(self), headers=self.headers), (self.status, self.body))

    @classmethod
    def of(cls, status: int, code: str, text: str, expression: str | None = None, **kw: Any) -> ApiError:
        return cls(status, error_outcome(code, text, expression), **kw)


def input_error(exc: InputError) -> ApiError:
    """Unreadable input is 400; readable input that does not fit the model is 422."""
    status = 400 if isinstance(exc, CaseFileError) else 422
    code = "structure" if status == 400 else "invalid"
    body = problems_outcome(exc.problems, code)
    if len(exc.problems) > 1 or exc.problems[0].message != str(exc):
        body["issue"].insert(0, issue("error", code, str(exc)))
    return ApiError(status, body)


def upstream_error(exc: FhirError) -> ApiError:
    """What the FHIR server did, as 502/503/504. Its own OperationOutcome issues are passed on, marked upstream."""
    headers: dict[str, str] = {}
    if isinstance(exc, FhirTransportError):
        status = 504 if "timed out" in str(exc) else 503
        text = f"the FHIR server did not answer: {exc}"
    elif isinstance(exc, TooManyRequests):
        status = 503
        text = "the FHIR server asks us to slow down (429)"
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, AuthError):
        status = 502
        text = f"the FHIR server's token endpoint refused us: {exc}"
    elif isinstance(exc, FhirHttpError) and exc.status == 503:
        # Unavailable for now (maintenance, overload), and it may say for how long: the client's to wait, not ours.
        status = 503
        text = "the FHIR server is unavailable (503)"
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, FhirHttpError):
        status = 502
        text = f"the FHIR server answered {exc.status}"
    elif isinstance(exc, FhirProtocolError):
        status = 502
        text = f"the FHIR server's answer is not usable: {exc}"
    else:
        status = 502
        text = f"the FHIR server failed: {exc}"
    issues = [issue("error", "transient" if status in (503, 504) else "exception", text)]
    if isinstance(exc, FhirHttpError) and exc.outcome:
        upstream_issues = exc.outcome.get("issue")
        for upstream in (upstream_issues if isinstance(upstream_issues, list) else [])[:20]:
            if isinstance(upstream, dict):
                issues.append(_passed_on(upstream))
    return ApiError(status, outcome(issues), headers=headers)


_SEVERITIES = ("fatal", "error", "warning", "information")


def _passed_on(upstream: dict[str, Any]) -> dict[str, Any]:
    """An upstream issue, rebuilt from its well-formed parts only (so our OperationOutcome stays valid)."""
    severity = upstream.get("severity") if upstream.get("severity") in _SEVERITIES else "error"
    raw_code = upstream.get("code")
    code = raw_code if isinstance(raw_code, str) and raw_code else "exception"
    details = upstream.get("details")
    diagnostics = upstream.get("diagnostics")
    detail_text = details.get("text") if isinstance(details, dict) else None
    text = diagnostics if isinstance(diagnostics, str) else detail_text if isinstance(detail_text, str) else ""
    item: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": f"upstream: {text[:2000]}".rstrip(": ")}
    expression = upstream.get("expression")
    if isinstance(expression, list) and all(isinstance(e, str) for e in expression):
        item["expression"] = expression[:10]
    return item


def install(app: FastAPI) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return outcome_response(exc.status, exc.body, exc.headers)

    async def input_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputError)
        error = input_error(exc)
        return outcome_response(error.status, error.body)

    async def upstream(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, FhirError)
        error = upstream_error(exc)
        request.app.state.services.metrics.upstream_errors.labels(type(exc).__name__).inc()
        log.warning("upstream %s", type(exc).__name__, extra={"status": error.status})
        return outcome_response(error.status, error.body, error.headers)

    async def lock_problem(_: Request, exc: Exception) -> Response:
        # Another writer holds the patient's lock for too long, or the lock folder is unusable: try later.
        return outcome_response(
            503,
            error_outcome("lock-error", "the patient's write lock is not available; try again"),
            {"Retry-After": "5"},
        )

    async def request_invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        issues = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "header", "body"))
            issues.append(issue("error", "invalid", str(e.get("msg", "invalid")), where or None))
        return outcome_response(400, outcome(issues or [issue("error", "invalid", "invalid request")]))

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported"}.get(exc.status_code, "invalid")
        text = exc.detail if isinstance(exc.detail, str) else "request refused"
        return outcome_response(exc.status_code, error_outcome(code, text), getattr(exc, "headers", None))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(InputError, input_problem)
    app.add_exception_handler(FhirError, upstream)
    app.add_exception_handler(LockError, lock_problem)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
