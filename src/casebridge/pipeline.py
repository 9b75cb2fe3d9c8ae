"""The pipeline, written once: read a case report (JSON or YAML) -> convert it with the mappings into a
transaction Bundle -> validate the Bundle against base R4 and casebridge's profiles -> push it (optional).

The CLI, the HTTP API, the ingestion job and the ``Casebridge`` façade all run these steps, so a case is refused
in the same words wherever it comes in; how a refusal is shown (an exit code, an HTTP status, a row of a job's
report) is the caller's business. The refusals:

- ``CaseFileError``: the case or resource cannot be read (empty, too large, not UTF-8, not JSON/YAML or FHIR XML,
  not an object, nested too deep, no ``resourceType`` for a resource);
- ``CaseSchemaError``: the case does not fit the case model, each problem with its field path;
- ``ConversionError``: a valid case the mappings cannot convert (an unknown vocabulary key);
- ``InvalidResourceError``: the Bundle has validation errors, or is not a transaction Bundle: "the Bundle is not
  valid (N errors): nothing was sent", with the OperationOutcome.

Each step is a function of its inputs (mappings, validator, FHIR client), so the API can run the CPU steps in its
worker processes and the ingestion job on its converter thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from casebridge.config import Settings
from casebridge.definitions.xml import FhirXmlError, XmlProblem, XmlReader
from casebridge.domain.case import CaseReport
from casebridge.domain.reader import DEFAULT_MAX_BYTES, check_depth, load_json, parse_document, validate_case
from casebridge.errors import CaseFileError, InputError, InvalidResourceError
from casebridge.files import read_bounded, shown
from casebridge.mapping.engine import Conversion, MappingSet
from casebridge.pull import PulledReports, pull_reports, report_query
from casebridge.push import PatientLocks, PushResult, push_bundle
from casebridge.validation.service import load_validator
from casebridge.validation.validator import MAX_OUTCOME_ISSUES, Issue, Validator, has_errors, operation_outcome

__all__ = [
    "MAX_RESOURCE_DEPTH",
    "Checked",
    "PatientLocks",
    "PulledReports",
    "PushResult",
    "check",
    "convert",
    "load_mappings",
    "load_validator",
    "parse_case",
    "pull_reports",
    "push_bundle",
    "read_case",
    "read_case_file",
    "read_push_input",
    "read_resource",
    "refuse_invalid",
    "report_query",
    "run",
    "run_case",
    "run_document",
    "validate",
]

# FHIR resources nest a few dozen levels at most (deep Questionnaires included); deeper is hostile. A case report
# has its own, lower limit (``casebridge.domain.reader.MAX_DEPTH``).
MAX_RESOURCE_DEPTH = 128

Media = Literal["json", "yaml"]


@dataclass(frozen=True)
class Checked:
    """A case converted and validated: its Bundle, what each entry is (fullUrl -> words) and the issues."""

    case: CaseReport
    bundle: dict[str, Any]
    titles: dict[str, str]
    issues: list[Issue]

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity in ("error", "fatal")]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def valid(self) -> bool:
        return not has_errors(self.issues)


# -- what the steps need ------------------------------------------------------------------------------------


def load_mappings(settings: Settings) -> MappingSet:
    """The mapping folder of the settings, its code tables checked against the terminology file if there is one
    (``MappingError`` names the file and line of a mistake)."""
    return MappingSet.load(settings.mappings_dir, terminology=settings.terminology())


# ``load_validator(settings, extra=())``: the pinned FHIR packages and casebridge's profiles (``PackageError`` when
# a package is not installed: ``casebridge packages fetch``). Imported above, listed here as a step's input.


# -- reading ------------------------------------------------------------------------------------------------


def parse_case(
    data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES, media: Media | None = None
) -> dict[str, Any]:
    """A case report's bytes -> a JSON-like dict, not yet checked against the case model. ``media``: "json" reads
    JSON only; "yaml" reads YAML (whose flow style reads JSON too); None decides by ``source`` (``.json``: JSON)."""
    if media is None or (media == "json") == source.lower().endswith(".json"):
        return parse_document(data, source=source, max_bytes=max_bytes)
    try:
        # The reader tells JSON from YAML by the name's suffix; the refusal still names the source as given.
        return parse_document(data, source=f"{source}.{media}", max_bytes=max_bytes)
    except InputError as exc:
        exc.source = source
        raise


def read_case(
    data: bytes, *, source: str, max_bytes: int = DEFAULT_MAX_BYTES, media: Media | None = None
) -> CaseReport:
    """A case report from bytes (JSON or YAML), checked against the case model."""
    return validate_case(parse_case(data, source=source, max_bytes=max_bytes, media=media), source=source)


def read_case_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> CaseReport:
    """A case report from a file: only a regular file, read no further than ``max_bytes``."""
    return read_case(read_bounded(path, max_bytes), source=shown(path), max_bytes=max_bytes)


def read_resource(
    data: bytes, *, source: str, xml: bool, reader: XmlReader, problems: list[Issue] | None = None
) -> dict[str, Any]:
    """A FHIR resource from JSON (duplicate keys refused) or XML; ``CaseFileError`` when it cannot be read as one.
    XML elements the types do not define are left out: appended to ``problems`` as errors (the caller reports
    them with the validation's issues), or, without that list, the XML is refused."""
    found: list[XmlProblem] | None = [] if problems is not None else None
    try:
        doc: Any = reader.read(data, source, found) if xml else load_json(data.decode("utf-8-sig"), source)
    except FhirXmlError as exc:
        # Its message starts with the source's name, which the refusal adds itself.
        raise CaseFileError(str(exc).removeprefix(f"{source}: "), source=source) from exc
    except UnicodeDecodeError as exc:
        raise CaseFileError("not UTF-8 text", source=source) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise CaseFileError("not a FHIR resource (no resourceType)", source=source)
    check_depth(doc, source, MAX_RESOURCE_DEPTH)
    if problems is not None and found:
        problems.extend(Issue("error", "structure", p.message, p.expression) for p in found)
    return doc


def read_push_input(
    data: bytes,
    *,
    source: str,
    xml: bool,
    reader: XmlReader,
    mappings: Callable[[], MappingSet],
    problems: list[Issue] | None = None,
) -> dict[str, Any]:
    """What can be pushed: a FHIR resource (JSON or XML) as it is, or a case report (JSON or YAML) converted.
    ``mappings`` is called only for a case. The size was bounded by whoever read ``data``. ``problems``: as
    ``read_resource``'s (give them to ``check``)."""
    if xml:
        return read_resource(data, source=source, xml=True, reader=reader, problems=problems)
    try:
        found: Any = load_json(data.decode("utf-8-sig"), source)
    except (UnicodeDecodeError, InputError):
        found = None  # not a JSON resource: read as a case, whose refusal says what is wrong
    doc: dict[str, Any]
    if isinstance(found, dict) and "resourceType" in found:
        doc = found
    else:
        doc = parse_case(data, source=source, max_bytes=len(data) + 1)
        if "resourceType" not in doc:
            return convert(validate_case(doc, source=source), mappings(), source=source).bundle
    # A resource whose resourceType is not a Bundle's is refused by ``check``, naming what can be pushed.
    check_depth(doc, source, MAX_RESOURCE_DEPTH)
    return doc


# -- converting and validating ------------------------------------------------------------------------------


def convert(case: CaseReport, mappings: MappingSet, *, source: str = "") -> Conversion:
    """The case's transaction Bundle (``.bundle``) and what each entry is (``.titles``); ``ConversionError``
    names ``source``."""
    return mappings.convert_detailed(case, source=source)


def validate(resource: object, validator: Validator, profiles: Sequence[str] = ()) -> list[Issue]:
    """Every issue of the resource against base R4, the profiles it claims and ``profiles`` (a resource that is not
    a JSON object is one fatal issue)."""
    return validator.validate(resource, list(profiles))


def run_case(case: CaseReport, *, source: str = "", mappings: MappingSet, validator: Validator) -> Checked:
    """A case converted and validated. Validation errors are in ``Checked.issues``, not raised: see
    ``refuse_invalid``."""
    conversion = convert(case, mappings, source=source)
    return Checked(case, conversion.bundle, conversion.titles, validate(conversion.bundle, validator))


def run_document(doc: dict[str, Any], *, source: str, mappings: MappingSet, validator: Validator) -> Checked:
    """A parsed case (``parse_case``) checked against the case model, converted and validated."""
    return run_case(validate_case(doc, source=source), source=source, mappings=mappings, validator=validator)


def run(
    data: bytes,
    *,
    source: str,
    mappings: MappingSet,
    validator: Validator,
    max_bytes: int = DEFAULT_MAX_BYTES,
    media: Media | None = None,
) -> Checked:
    """A case report's bytes read, converted and validated (``run_document`` after ``parse_case``)."""
    doc = parse_case(data, source=source, max_bytes=max_bytes, media=media)
    return run_document(doc, source=source, mappings=mappings, validator=validator)


def refuse_invalid(issues: list[Issue], *, max_issues: int = MAX_OUTCOME_ISSUES) -> None:
    """``InvalidResourceError`` with the OperationOutcome (at most ``max_issues`` issues) if any issue is an
    error: the one refusal of an invalid Bundle."""
    if has_errors(issues):
        errors = sum(1 for i in issues if i.severity in ("error", "fatal"))
        raise InvalidResourceError(
            f"the Bundle is not valid ({errors} errors): nothing was sent",
            outcome=operation_outcome(issues, max_issues),
        )


def check(
    bundle: Mapping[str, Any],
    validator: Validator,
    *,
    max_issues: int = MAX_OUTCOME_ISSUES,
    read_problems: Sequence[Issue] = (),
) -> list[Issue]:
    """Before a push: a transaction Bundle without validation errors, or ``InvalidResourceError`` (nothing is to be
    sent). Returns the issues (warnings and information). ``read_problems``: what reading the Bundle's XML left
    out (``read_resource``), errors reported before the validation's."""
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
        raise InvalidResourceError(
            "only a transaction Bundle can be pushed",
            outcome=operation_outcome([Issue("error", "invalid", "not a transaction Bundle", "Bundle.type")]),
        )
    issues = [*read_problems, *validate(bundle, validator)]
    refuse_invalid(issues, max_issues=max_issues)
    return issues


# -- pushing and pulling ------------------------------------------------------------------------------------
# ``push_bundle`` sends a Bundle ``check`` passed, as one transaction under its
# patient's write lock; ``pull_reports`` fetches DiagnosticReports with their results and
# specimens (``report_query`` builds the search). Imported above from casebridge.push and casebridge.pull.
