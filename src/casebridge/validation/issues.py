"""What a validation reports, and the ground its check modules share: the issues (and their OperationOutcome),
the state one run gathers them in, and two readers of JSON of any shape.

Apart from the walk (validator.py) so that the callers (API, CLI, ingestion, gateway) and each check module
(bindings, references, slicing, invariants, ...) depend on these, not on one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITY_RANK = {"fatal": 0, "error": 1, "warning": 2, "information": 3}
MAX_OUTCOME_ISSUES = 1000  # issues listed in one OperationOutcome (Settings.max_outcome_issues)


@dataclass(frozen=True)
class Issue:
    severity: str  # fatal | error | warning | information
    code: str  # an OperationOutcome issue type: structure, required, value, invariant, code-invalid, ...
    message: str
    expression: str
    source: str | None = None  # the profile that raised it

    def __reduce__(self) -> tuple[Any, ...]:
        # Issues cross from the API's worker processes; compiled, the default pickling cannot set frozen fields.
        return (Issue, (self.severity, self.code, self.message, self.expression, self.source))

    def to_fhir(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "details": {"text": self.message},
            "expression": [self.expression],
        }
        if self.source:
            out["extension"] = [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/operationoutcome-issue-source",
                    "valueString": self.source,
                }
            ]
        return out


def operation_outcome(issues: list[Issue], max_issues: int = MAX_OUTCOME_ISSUES) -> dict[str, Any]:
    """The issues as an OperationOutcome, most severe first (in their order within a severity).

    At most ``max_issues`` of them, then one issue saying how many more were left out: 40,000 invalid entries
    made a 39 MB answer. The most severe come first, so an outcome with errors still shows errors."""
    ordered = sorted(issues, key=lambda i: SEVERITY_RANK.get(i.severity, 9))
    if not ordered:
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "details": {"text": "No issues"}}],
        }
    limit = max(1, max_issues)
    shown = [i.to_fhir() for i in ordered[:limit]]
    left_out = ordered[limit:]
    if left_out:
        counts: dict[str, int] = {}
        for i in left_out:
            counts[i.severity] = counts.get(i.severity, 0) + 1
        by_severity = ", ".join(f"{s}: {n}" for s, n in counts.items())
        text = f"{len(left_out)} more issues were left out ({by_severity}); at most {limit} are listed"
        shown.append({"severity": "information", "code": "too-costly", "details": {"text": text}})
    return {"resourceType": "OperationOutcome", "issue": shown}


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)


@dataclass
class Run:
    """One validation under way: the issues found so far (each once) and what it learnt of its input."""

    issues: list[Issue] = field(default_factory=list)
    bundle_index: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[tuple[str, str, str]] = field(default_factory=set)
    roots: dict[int, dict[str, Any]] = field(default_factory=dict)  # id(resource) -> its %rootResource
    conforms: dict[tuple[int, str], bool] = field(default_factory=dict)  # (id(resource), profile) -> conforms
    bundle_type: str | None = None  # the type of the Bundle being validated, if any
    by_type_id: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "Type/id" -> bundle entries
    by_full_url: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # fullUrl -> bundle entries
    full_urls: dict[int, str] = field(default_factory=dict)  # id(bundled resource) -> its entry's fullUrl
    unknown_profiles: str = "warning"  # the severity of a claimed profile that is not known (ValidationOptions)

    def add(self, severity: str, code: str, message: str, expression: str, source: str | None = None) -> None:
        key = (severity, expression, message)
        if key not in self.seen:
            self.seen.add(key)
            self.issues.append(Issue(severity, code, message, expression, source))


def as_obj(value: Any) -> dict[str, Any]:
    """The value if it is a JSON object, else an empty one: structural errors are reported by the walk;
    the rule checks that read around must not fail on a wrong shape."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """The value if it is a JSON array, else an empty one (as ``as_obj``)."""
    return value if isinstance(value, list) else []
