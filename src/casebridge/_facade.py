"""``Casebridge``: the pipeline (``casebridge.pipeline``) for Python code, in one object that holds its inputs."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from casebridge import pipeline
from casebridge.config import Settings
from casebridge.domain.case import CaseReport
from casebridge.fhir.client import FhirClient
from casebridge.files import shown
from casebridge.mapping.engine import MappingSet
from casebridge.pull import PulledReports, parse_since
from casebridge.push import PatientLocks, PushResult
from casebridge.validation.validator import Issue, Validator


class Casebridge:
    """Read, convert, validate, push and pull, synchronously, with the mappings, validator and FHIR server of one
    ``Settings``::

        with Casebridge.from_settings() as cb:
            bundle = cb.convert(cb.read_case("case.yaml"))
            cb.push(bundle)

    Each method is one step of ``casebridge.pipeline`` and refuses as it does (``casebridge.errors``). Reuse one
    instance: loading the validator's definitions takes a while, validating with them does not. Closing it closes
    its FHIR client; ``fhir`` is that client (``FhirClient``) for other requests.
    """

    def __init__(self, settings: Settings, *, mappings: MappingSet, validator: Validator) -> None:
        self.settings = settings
        self.mappings = mappings
        self.validator = validator
        self.locks = PatientLocks(settings.locks())
        self._fhir: FhirClient | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Casebridge:
        """``settings`` default to the ``CASEBRIDGE_*`` environment. The mappings (``MappingError``) and the validator
        (``PackageError`` when a FHIR package is not installed: ``casebridge packages fetch``) are loaded now; the
        FHIR client is made when first needed, so converting and validating need no server settings that work."""
        settings = settings if settings is not None else Settings()
        return cls(settings, mappings=pipeline.load_mappings(settings), validator=pipeline.load_validator(settings))

    # -- the pipeline's steps -----------------------------------------------------------------------------

    def read_case(self, case: str | os.PathLike[str] | bytes, *, source: str = "case") -> CaseReport:
        """A case report (JSON or YAML) from a file, or from its bytes (``source`` names them in refusals)."""
        if isinstance(case, bytes):
            return pipeline.read_case(case, source=source, max_bytes=self.settings.max_case_bytes)
        return pipeline.read_case_file(Path(case), max_bytes=self.settings.max_case_bytes)

    def convert(self, case: CaseReport) -> dict[str, Any]:
        """The case's transaction Bundle."""
        return pipeline.convert(case, self.mappings).bundle

    def validate(self, resource: Mapping[str, Any], *, profiles: Sequence[str] = ()) -> list[Issue]:
        """The issues of a resource or Bundle against base R4, casebridge's profiles and ``profiles``."""
        return pipeline.validate(resource, self.validator, profiles)

    def run(self, case: str | os.PathLike[str] | bytes, *, source: str = "case") -> pipeline.Checked:
        """Read, convert and validate a case: its Bundle and issues (validation errors are not raised)."""
        report = self.read_case(case, source=source)
        named = source if isinstance(case, bytes) else shown(case)
        return pipeline.run_case(report, source=named, mappings=self.mappings, validator=self.validator)

    def push(self, bundle: Mapping[str, Any]) -> PushResult:
        """Validate the transaction Bundle (``InvalidResourceError``: nothing is sent), then send it as one
        transaction under its patient's write lock."""
        warnings = pipeline.check(bundle, self.validator, max_issues=self.settings.max_outcome_issues)
        return self.fhir.call(pipeline.push_bundle, bundle, locks=self.locks, warnings=warnings)

    def pull_reports(
        self,
        *,
        patient: str | None = None,
        category: str | None = None,
        code: str | None = None,
        since: dt.date | dt.datetime | str | None = None,
        page_size: int = 100,
    ) -> PulledReports:
        """DiagnosticReports with their results and specimens, every page. ``patient``: an id or ``Patient/<id>``;
        ``category``/``code``: a code or ``system|code``; ``since``: created or changed at or after (a date, or a
        date-time with its zone; as text too). A filter that cannot be is a ``ValueError``."""
        moment = parse_since(since) if isinstance(since, str) else since
        query = pipeline.report_query(patient=patient, category=category, code=code, since=moment, page_size=page_size)
        return self.fhir.call(pipeline.pull_reports, query)

    # -- the FHIR client ----------------------------------------------------------------------------------

    @property
    def fhir(self) -> FhirClient:
        """The FHIR client of the settings (``fhir_base_url``, timeouts, retries, authentication)."""
        if self._closed:
            raise RuntimeError("this Casebridge is closed")
        if self._fhir is None:
            self._fhir = FhirClient.from_settings(self.settings)
        return self._fhir

    def close(self) -> None:
        self._closed = True
        if self._fhir is not None:
            self._fhir.close()

    def __enter__(self) -> Casebridge:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
