"""casebridge: clinical case reports to FHIR R4, validated, pushed to and pulled from FHIR servers.

The public surface is what ``__all__`` names, importable from ``casebridge`` itself:

- ``Casebridge``: the pipeline in one object built from ``Settings``: ``read_case``, ``convert``, ``validate``,
  ``run``, ``push``, ``pull_reports``; a context manager that closes its FHIR client;
- the pipeline's steps (``casebridge.pipeline``): ``read_case``, ``read_case_file``, ``read_resource``,
  ``convert``, ``validate``, ``run`` and ``run_case`` (read, convert and validate: a ``Checked``), ``check`` and
  ``refuse_invalid`` (the refusal of an invalid Bundle);
- the case model ``CaseReport``, the mappings ``MappingSet``, the validator ``Validator`` with its
  ``ValidationOptions``, its ``Issue`` and ``has_errors``/``operation_outcome`` over a list of them;
- ``Settings`` (the ``CASEBRIDGE_*`` environment);
- the FHIR clients ``FhirClient`` (sync) and ``AsyncFhirClient``, with ``RetryPolicy`` and ``Search``; what a push
  and a pull give back: ``PushResult``, ``PulledReports``;
- the exceptions, every one a ``CasebridgeError`` (the whole tree is drawn in ``casebridge.errors``), and the
  ``Problem`` an ``InputError`` lists.

Each name is imported when first used (module ``__getattr__``), so ``import casebridge`` stays cheap: the CLI
imports it on every start, and the validator, the mappings and the HTTP client take most of a second to import.
Type checkers read the names from ``__init__.pyi``; this module imports none of them itself, so the modules that
import ``casebridge`` (for ``__version__``) do not depend on every layer above them.
"""

from __future__ import annotations

import importlib
from typing import Any

from casebridge import _native

__version__ = "0.1.0"

# Before any other module of the package: whether the validator's compiled modules may be imported (see _native).
NATIVE = _native.install()

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

# Where each lazily imported name lives.
_HOMES = {
    "casebridge._facade": ("Casebridge",),
    "casebridge.config": ("Settings",),
    "casebridge.definitions.packages": ("PackageError",),
    "casebridge.domain.case": ("CaseReport",),
    "casebridge.errors": (
        "AuthError",
        "BadRequest",
        "CaseFileError",
        "CaseSchemaError",
        "CasebridgeError",
        "ConfigurationError",
        "Conflict",
        "ConversionError",
        "FhirClientError",
        "FhirError",
        "FhirHttpError",
        "FhirProtocolError",
        "FhirServerError",
        "FhirTransportError",
        "InputError",
        "InvalidResourceError",
        "LockError",
        "MappingError",
        "PreconditionFailed",
        "Problem",
        "ResourceGone",
        "ResourceNotFound",
        "TooManyRequests",
        "Unauthorized",
    ),
    "casebridge.fhir.client": ("AsyncFhirClient", "FhirClient", "RetryPolicy"),
    "casebridge.fhir.search": ("Search",),
    "casebridge.mapping.engine": ("MappingSet",),
    "casebridge.pipeline": (
        "Checked",
        "check",
        "convert",
        "read_case",
        "read_case_file",
        "read_resource",
        "refuse_invalid",
        "run",
        "run_case",
        "validate",
    ),
    "casebridge.pull": ("PulledReports",),
    "casebridge.push": ("PushResult",),
    "casebridge.validation.validator": ("Issue", "ValidationOptions", "Validator", "has_errors", "operation_outcome"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'casebridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, found without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
