"""casebridge: clinical case reports to FHIR R4, validated, pushed to and pulled from FHIR servers."""

__version__ = "0.1.0"
