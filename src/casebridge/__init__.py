"""casebridge: clinical case reports to FHIR R4, validated, pushed to and pulled from FHIR servers."""

from casebridge import _native

__version__ = "0.1.0"

# Before any other module of the package: whether the validator's compiled modules may be imported (see _native).
NATIVE = _native.install()
