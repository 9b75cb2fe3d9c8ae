"""The types of what ``casebridge`` exports: ``__init__.py`` imports each name when first used (see there)."""

from casebridge._facade import Casebridge
from casebridge.config import Settings
from casebridge.definitions.packages import PackageError
from casebridge.domain.case import CaseReport
from casebridge.errors import (
    AuthError,
    BadRequest,
    CasebridgeError,
    CaseFileError,
    CaseSchemaError,
    ConfigurationError,
    Conflict,
    ConversionError,
    FhirClientError,
    FhirError,
    FhirHttpError,
    FhirProtocolError,
    FhirServerError,
    FhirTransportError,
    InputError,
    InvalidResourceError,
    LockError,
    MappingError,
    PreconditionFailed,
    Problem,
    ResourceGone,
    ResourceNotFound,
    TooManyRequests,
    Unauthorized,
)
from casebridge.fhir.client import AsyncFhirClient, FhirClient, RetryPolicy
from casebridge.fhir.search import Search
from casebridge.mapping.engine import MappingSet
from casebridge.pipeline import (
    Checked,
    check,
    convert,
    read_case,
    read_case_file,
    read_resource,
    refuse_invalid,
    run,
    run_case,
    validate,
)
from casebridge.pull import PulledReports
from casebridge.push import PushResult
from casebridge.validation.validator import Issue, ValidationOptions, Validator, has_errors, operation_outcome

__version__: str
NATIVE: bool

__all__ = [
    "NATIVE",
    "AsyncFhirClient",
    "AuthError",
    "BadRequest",
    "CaseFileError",
    "CaseReport",
    "CaseSchemaError",
    "Casebridge",
    "CasebridgeError",
    "Checked",
    "ConfigurationError",
    "Conflict",
    "ConversionError",
    "FhirClient",
    "FhirClientError",
    "FhirError",
    "FhirHttpError",
    "FhirProtocolError",
    "FhirServerError",
    "FhirTransportError",
    "InputError",
    "InvalidResourceError",
    "Issue",
    "LockError",
    "MappingError",
    "MappingSet",
    "PackageError",
    "PreconditionFailed",
    "Problem",
    "PulledReports",
    "PushResult",
    "ResourceGone",
    "ResourceNotFound",
    "RetryPolicy",
    "Search",
    "Settings",
    "TooManyRequests",
    "Unauthorized",
    "ValidationOptions",
    "Validator",
    "__version__",
    "check",
    "convert",
    "has_errors",
    "operation_outcome",
    "read_case",
    "read_case_file",
    "read_resource",
    "refuse_invalid",
    "run",
    "run_case",
    "validate",
]
