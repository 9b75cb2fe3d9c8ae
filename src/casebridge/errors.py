"""casebridge's exceptions, drawn in one tree.

Every error the project raises on purpose is a ``CasebridgeError``; third-party errors are translated
where they enter (``raise Ours(...) from exc``), so callers catch ours only.

The classes without a module in brackets are defined in this module; the others beside the code that raises
them, in the module named in brackets (under ``casebridge``): errors of one subsystem that nothing else raises,
and the definition errors, which live in the compiled ``definitions.structure`` because the compiled validator
binds them there. tests/unit/test_errors_tree.py checks this drawing against every subclass of ``CasebridgeError`` in
the package: its name, its parent and its module.

    CasebridgeError
    ├── InputError                 bad input from a user: the CLI exits 2, the API answers 4xx
    │   ├── CaseFileError          a case or resource cannot be read: empty, too large, not JSON/YAML (or FHIR
    │   │                          XML), not an object, nested too deep, a resource without resourceType
    │   ├── CaseSchemaError        the case does not fit the case model: each problem with its field path
    │   ├── ConversionError        a valid case the mappings cannot convert (e.g. an unknown vocabulary key)
    │   ├── RowError               [ingest.registry_csv] a registry CSV row that does not fit the layout
    │   ├── ViewDefinitionError    [views._definition] a ViewDefinition that cannot be run: each problem at its
    │   │                          element
    │   └── ViewEvaluationError    [views._runner] a resource a view cannot read (several values for a column
    │                              that is not a collection, a where that gives no boolean)
    ├── MappingError               a mapping, code table or terminology file is wrong: names file and line
    ├── ConfigurationError         a setting that cannot work (a SMART key that does not fit): the CLI exits 3
    ├── LockError                  the per-patient write lock cannot be had (lock folder unusable, waited too long)
    ├── InvalidResourceError       a Bundle failed validation, so nothing was sent: carries the OperationOutcome
    ├── PackageError               [definitions.packages] a FHIR package cannot be pinned, installed or indexed
    ├── DefinitionError            [definitions.structure] a StructureDefinition the validator needs is missing or
    │   │                          unusable (no snapshot, bad ids)
    │   ├── DefinitionShapeError   [definitions.structure] a definition's JSON not shaped as FHIR says (``location``)
    │   └── SnapshotPathError      [definitions.structure] a differential names an element its base does not have
    ├── FhirXmlError               [definitions.xml] not FHIR XML the reader can map: not well-formed, unknown type,
    │                              unsafe
    ├── FhirPathError              [validation.fhirpath] an invariant that cannot be compiled or evaluated
    ├── StateVersionError          [ingest.state] an ingestion state file of another casebridge version
    ├── EmbeddedServerError        [fhir.embedded] the embedded FHIR server could not start
    ├── ConformanceError           [tools.conformance] the HL7 test-case folder is unusable
    ├── ApiError                   [api.errors] an HTTP answer other than success: ``status`` and its OperationOutcome
    └── FhirError                  talking to a FHIR server failed; ``url`` names the request
        ├── FhirTransportError     no answer: connection refused or reset, timeout (after any retries)
        ├── FhirProtocolError      an answer that is not usable FHIR: not JSON, wrong resourceType, a next
        │                          link outside the base URL, a paging loop
        ├── AuthError              the token endpoint refused or failed (SMART Backend Services)
        ├── BulkExportError        a Bulk Data export the server reports as failed, or not complete within the wait
        │                          or the number of polls allowed (``outcome``: the server's OperationOutcome)
        └── FhirHttpError          the server answered 4xx/5xx: ``status`` and its ``outcome`` (OperationOutcome)
            ├── FhirClientError    4xx
            │   ├── BadRequest             400, 422: the server refused the content
            │   ├── Unauthorized           401, 403
            │   ├── ResourceNotFound       404
            │   ├── Conflict               409 (e.g. a concurrent write on the server)
            │   ├── ResourceGone           410: deleted
            │   ├── PreconditionFailed     412 (or HAPI's 409 that says so): If-Match names a version no longer current
            │   └── TooManyRequests        429 (after any retries)
            └── FhirServerError    5xx (after any retries)

``InputError`` and its subclasses carry ``problems``: (location, message) pairs, where location is a
field path such as ``patient.sex`` or ``diagnostic_steps[2].differential[0].key``.

An exception nobody expected (a defect of ours) is logged with ``log_defect``: its type and stack frames,
never its text, which can quote the input.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    location: str  # a field path in the input ("" for the whole document)
    message: str
    line: int | None = None  # where in the input text (1-based), when the reader could tell
    column: int | None = None

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message

    def at(self, source: str = "") -> str:
        """``source:line:column: `` (the form editors and terminals turn into a link), or what of it is known."""
        if self.line is None:
            return f"{source}: " if source else ""
        if not source:
            return f"line {self.line}, column {self.column or 1}: "
        return f"{source}:{self.line}:{self.column or 1}: "


class CasebridgeError(Exception):
    """Base of every error casebridge raises on purpose."""


class InputError(CasebridgeError):
    """Input from a user is unusable. ``source`` names the file (or "request body")."""

    def __init__(self, message: str, *, source: str = "", problems: Sequence[Problem] = ()):
        self.source = source
        self.problems = list(problems) or [Problem("", message)]
        super().__init__(message)

    def report(self) -> str:
        """A readable, multi-line account: the source, then one line per problem."""
        only = len(self.problems) == 1 and self.problems[0].message == str(self)
        head = f"{(self.problems[0] if only else Problem('', '')).at(self.source)}{self}"
        lines = [head]
        if not only:
            lines += [f"  - {p.at(self.source) if p.line is not None else ''}{p}" for p in self.problems]
        return "\n".join(lines)


class CaseFileError(InputError):
    """The case file cannot be read as a JSON or YAML object."""


class CaseSchemaError(InputError):
    """The case does not fit the case model."""


class ConversionError(InputError):
    """A case that fits the model but that the mappings cannot convert."""


class MappingError(CasebridgeError):
    """A mapping, code table or terminology file is wrong. The message names the file and line."""

    def __init__(self, message: str, *, file: str = "", line: int | None = None):
        self.file = file
        self.line = line
        where = f"{file}:{line}" if file and line else file
        super().__init__(f"{where}: {message}" if where else message)


class ConfigurationError(CasebridgeError):
    """A setting that passed its own checks but cannot work (e.g. a key file that is not the right kind of key)."""


class LockError(CasebridgeError):
    """The per-patient write lock cannot be had."""


class InvalidResourceError(CasebridgeError):
    """A resource or Bundle failed validation, so it was not sent. ``outcome`` is the OperationOutcome."""

    def __init__(self, message: str, *, outcome: Mapping[str, Any]):
        self.outcome = dict(outcome)
        super().__init__(message)


class FhirError(CasebridgeError):
    """Talking to a FHIR server failed. ``method`` and ``url`` name the request."""

    def __init__(self, message: str, *, method: str = "", url: str = ""):
        self.method = method
        self.url = url
        super().__init__(message)


class FhirTransportError(FhirError):
    """No answer: the connection was refused or reset, or timed out (after any retries).

    ``request_sent`` is False when no connection was made, so the server cannot have seen the request.
    """

    def __init__(self, message: str, *, method: str = "", url: str = "", request_sent: bool = True):
        self.request_sent = request_sent
        super().__init__(message, method=method, url=url)


class FhirProtocolError(FhirError):
    """An answer that is not usable FHIR, or a paging link that must not be followed."""


class AuthError(FhirError):
    """The token endpoint refused or failed."""


class BulkExportError(FhirError):
    """A Bulk Data ``$export`` the server reports as failed, or that did not complete within the wait or the number
    of polls allowed. ``outcome`` is the server's OperationOutcome, when it sent one."""

    def __init__(self, message: str, *, outcome: Mapping[str, Any] | None = None, method: str = "", url: str = ""):
        self.outcome = dict(outcome) if outcome is not None else None
        super().__init__(message, method=method, url=url)


class FhirHttpError(FhirError):
    """The server answered with an error status. ``outcome`` is its OperationOutcome, when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        outcome: Mapping[str, Any] | None = None,
        method: str = "",
        url: str = "",
        retry_after: float | None = None,
    ):
        self.status = status
        self.outcome = dict(outcome) if outcome is not None else None
        self.retry_after = retry_after
        super().__init__(message, method=method, url=url)

    def diagnostics(self) -> list[str]:
        """The outcome's issues as readable lines (severity, code, diagnostics/details, expression)."""
        lines = []
        for issue in (self.outcome or {}).get("issue", []) or []:
            if not isinstance(issue, dict):
                continue
            details = issue.get("details")
            text = issue.get("diagnostics") or (details.get("text") if isinstance(details, dict) else "") or ""
            places = issue.get("expression") or issue.get("location") or []
            where = ", ".join(str(p) for p in places) if isinstance(places, list) else str(places)
            line = f"{issue.get('severity', '?')} {issue.get('code', '?')}: {text}"
            lines.append(f"{line} (at {where})" if where else line)
        return lines


class FhirClientError(FhirHttpError):
    """4xx."""


class BadRequest(FhirClientError):
    """400 or 422: the server refused the request's content."""


class Unauthorized(FhirClientError):
    """401 or 403."""


class ResourceNotFound(FhirClientError):
    """404."""


class Conflict(FhirClientError):
    """409."""


class ResourceGone(FhirClientError):
    """410: the resource was deleted."""


class PreconditionFailed(FhirClientError):
    """412, or a 409 whose OperationOutcome says the version is not current (HAPI-0989, HAPI-0974): If-Match
    named a version that is no longer current."""


class TooManyRequests(FhirClientError):
    """429, after any retries."""


class FhirServerError(FhirHttpError):
    """5xx, after any retries."""


def log_defect(log: logging.Logger, what: str, exc: BaseException, **extra: Any) -> None:
    """Log an unexpected exception by its type and stack frames (in the ``frames`` field), not its text: the text
    can quote the input (patient data has no place in logs); the frames are our code."""
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s: %s", what, type(exc).__name__, extra={"frames": frames, **extra})
