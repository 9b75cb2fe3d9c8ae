"""Scoring our validator against the HL7 Java validator on a folder of HL7 ``fhir-test-cases``.

The folder holds ``manifest.json`` (``{"test-cases": [...]}``), the instances and definitions it names, and
``outcomes/``, the OperationOutcomes the Java validator produced. Each case has a *base* step and, when it has
a ``profile`` entry, a *profile* step:

base
    load ``supporting``, ``supporting5`` and ``profiles`` (definition files), validate ``file`` against its base
    type and its ``meta.profile``; expected: ``java``.
profile
    load as well ``profile.supporting`` and ``profile.source``, validate ``file`` again against the source's url;
    expected: ``profile.java``.

This is what the Java test runner does (``ValidationTests.java`` in hapifhir/org.hl7.fhir.core): ``profiles``
are only loaded into the context, not validated against (the cases show it: ``StructureDefinition-Slice23``
lists an Extension profile for a StructureDefinition instance, ``bundle-conformsto`` Patient and Composition
profiles for a Bundle, and Java reports no type mismatch), and ``supporting5`` is not a typo but "supporting
files in R5 format", loaded like ``supporting``.

An expected outcome is a path under ``outcomes/`` (an OperationOutcome), ``{"outcome": OperationOutcome}``, or
the legacy ``{"errorCount": n, ...}``, which gives a count but no issues. A step is *valid* when its outcome has
no error or fatal issue (legacy: ``errorCount == 0``). Manifest keys that only describe a case (``version``,
``module``, ``description``, ``firely-sdk-*``...) are ignored; Java validator options we do not have
(``advisor``, ``examples``, ``validateContains``...) are ignored too but noted on the step;
``assumeValidRestReferences`` is passed to the validator.

An instance in FHIR XML is read with the type definitions; the elements its type does not define are left out
and reported first, as errors worded and placed as the Java validator's XML parser reports them ("Undefined
element 'identifier' at /f:CapabilityStatement").

A step we cannot run is never dropped: it is *unsupported* (a missing or unreadable file, an unusable
expected outcome) or *crashed* (our validator raised), and counts as a disagreement in the verdict agreement
over all steps. The scores, per step kind: verdict agreement (over all steps and over the steps that ran),
same error count, and the precision and recall of error expressions: per step, the multiset of the first
``expression`` of the error/fatal issues, ours against theirs, summed over the steps (legacy outcomes,
which list no issues, are left out of these two).

Speed: the package index is built once (``load_base_index``) and each step gets an ``OverlayDefinitions``: its
own loose definitions over that shared index, and its own ``Validator`` (it caches compiled trees, so one per
step keeps the cases apart). Compiled trees of package definitions are not shared across steps: measured on
the 82 HL7 cases, sharing them saved about 0.1 s of a 0.4 s run, not worth coupling to the validator's cache.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from casebridge.config import Settings
from casebridge.definitions.packages import (
    INDEXED_TYPES,
    DefinitionIndex,
    PackageError,
    default_cache_dir,
    ensure_all,
    load_lock,
)
from casebridge.definitions.xml import FhirXmlError, XmlProblem, XmlReader
from casebridge.errors import CasebridgeError
from casebridge.validation.validator import Issue, ValidationOptions, Validator

MANIFEST = "manifest.json"
OUTCOMES = "outcomes"
STEPS = ("base", "profile")
NO_MODULE = "(none)"
CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"  # a case whose manifest entry names no module
ERROR_SEVERITIES = frozenset({"error", "fatal"})

# Keys that only describe a case, or belong to other validators' expected outcomes: nothing to do or note.
_DESCRIPTIVE = frozenset({"name", "version", "module", "description", "explanation", "documentation"})
_HANDLED = frozenset(
    {
        "file",
        "supporting",
        "supporting5",
        "profiles",
        "profile",
        "java",
        "noHtmlInMarkdown",
        "validateContains",
        "assumeValidRestReferences",
    }
)
_PROFILE_HANDLED = frozenset({"source", "supporting", "java", "assumeValidRestReferences"})


class ConformanceError(CasebridgeError):
    """The test-case folder is unusable: no ``manifest.json``, unreadable, or not the manifest format."""


class _Unsupported(Exception):
    """A step we cannot run, with the reason."""


# --- definitions: one overlay per step over the shared package index -----------------------------------


class OverlayDefinitions:
    """A step's loose definitions over a shared ``DefinitionIndex``: loose first, then the base.

    Satisfies the validator's ``Definitions`` protocol (``get``, ``core_definition``) with the same priority
    rules a single index with these loose files added would have, without copying the base.
    """

    def __init__(self, base: DefinitionIndex):
        self.base = base
        self.loose = DefinitionIndex()

    def add_path(self, path: Path) -> int:
        """Add a loose definition file (``DefinitionIndex.add_path``); FHIR XML is read through the overlay,
        whose base holds the type definitions the XML reader needs."""
        if path.suffix.lower() != ".xml":
            return self.loose.add_path(path)
        try:
            resource = XmlReader(self).read(path.read_bytes(), path.name)
        except (FhirXmlError, OSError) as exc:
            raise PackageError(f"{path}: {exc}") from exc
        if resource.get("resourceType") not in INDEXED_TYPES:
            return 0
        self.loose.add_resource(resource, str(path))
        return 1

    def get(self, canonical: str) -> dict[str, Any] | None:
        record = self.loose.get_info(canonical)
        return self.loose.resource(record) if record is not None else self.base.get(canonical)

    def core_definition(self, type_name: str) -> dict[str, Any] | None:
        # As DefinitionIndex: a loose definition replaces the package's only when it is that very type's core
        # definition; a case's specialisation of the same type name (a profile mislabelled as one, a logical
        # model) must not hide the real one.
        loose = self.loose.core_definition(type_name)
        base = self.base.core_definition(type_name)
        if loose is not None and (base is None or loose.get("url") == f"{CORE_PREFIX}{type_name}"):
            return loose
        return base


def load_base_index(settings: Settings) -> DefinitionIndex:
    """The pinned packages only (not casebridge's own profiles): the test cases bring their own definitions.
    Raises ``PackageError`` when the packages are not installed."""
    cache = settings.fhir_package_cache or default_cache_dir()
    return DefinitionIndex.load(ensure_all(load_lock(settings.fhir_packages_lock), cache, offline=True))


# --- results -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One error or fatal issue: where (the first ``expression``) and what."""

    expression: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"expression": self.expression, "message": self.message}


@dataclass(frozen=True)
class Expected:
    """What the Java validator said: ``errors`` is None for a legacy outcome, which gives only a count."""

    error_count: int
    errors: tuple[Finding, ...] | None

    @property
    def valid(self) -> bool:
        return self.error_count == 0


@dataclass
class StepResult:
    case: str  # the case's name (made unique: a repeated name gets "#2", "#3"...)
    step: str  # base | profile
    status: str  # ran | unsupported | crashed
    reason: str = ""  # why it did not run
    expected: Expected | None = None
    ours: tuple[Finding, ...] = ()
    seconds: float = 0.0
    notes: tuple[str, ...] = ()  # manifest options ignored, supporting files that hold no definition
    module: str = NO_MODULE  # the manifest's "module" (the validator area the case tests)

    @property
    def ran(self) -> bool:
        return self.status == "ran"

    @property
    def ours_valid(self) -> bool | None:
        return not self.ours if self.ran else None

    @property
    def agrees(self) -> bool:
        return self.ran and self.expected is not None and self.expected.valid == self.ours_valid

    @property
    def matched(self) -> int:
        """Error expressions in common (as multisets); 0 when the expected outcome lists no issues."""
        if not self.ran or self.expected is None or self.expected.errors is None:
            return 0
        ours = Counter(f.expression for f in self.ours)
        theirs = Counter(f.expression for f in self.expected.errors)
        return sum((ours & theirs).values())

    def as_dict(self) -> dict[str, Any]:
        expected = self.expected
        return {
            "case": self.case,
            "step": self.step,
            "status": self.status,
            "reason": self.reason or None,
            "expected": None
            if expected is None
            else {
                "valid": expected.valid,
                "errorCount": expected.error_count,
                "errors": None if expected.errors is None else [f.as_dict() for f in expected.errors],
            },
            "ours": None if not self.ran else {"valid": self.ours_valid, "errors": [f.as_dict() for f in self.ours]},
            "agrees": self.agrees,
            "seconds": round(self.seconds, 4),
            "notes": list(self.notes),
            "module": self.module,
        }


@dataclass(frozen=True)
class Scores:
    steps: int
    ran: int
    unsupported: int
    crashed: int
    agree: int
    # The verdicts of the steps that ran, expected/ours: a false alarm is valid/invalid.
    valid_valid: int
    valid_invalid: int
    invalid_valid: int
    invalid_invalid: int
    same_count: int  # steps that ran where our error count equals theirs
    scored: int  # steps that ran with an expected issue list (not legacy): precision and recall
    ours_errors: int
    their_errors: int
    matched: int

    @classmethod
    def of(cls, results: Sequence[StepResult]) -> Scores:
        ran = [r for r in results if r.ran and r.expected is not None]
        scored = [r for r in ran if r.expected is not None and r.expected.errors is not None]

        def verdicts(expected: bool, ours: bool) -> int:
            return sum(
                1 for r in ran if r.expected is not None and r.expected.valid == expected and r.ours_valid is ours
            )

        return cls(
            steps=len(results),
            ran=len(ran),
            unsupported=sum(1 for r in results if r.status == "unsupported"),
            crashed=sum(1 for r in results if r.status == "crashed"),
            agree=sum(1 for r in ran if r.agrees),
            valid_valid=verdicts(True, True),
            valid_invalid=verdicts(True, False),
            invalid_valid=verdicts(False, True),
            invalid_invalid=verdicts(False, False),
            same_count=sum(1 for r in ran if r.expected is not None and r.expected.error_count == len(r.ours)),
            scored=len(scored),
            ours_errors=sum(len(r.ours) for r in scored),
            their_errors=sum(len(r.expected.errors or ()) for r in scored if r.expected is not None),
            matched=sum(r.matched for r in scored),
        )

    @property
    def agreement_all(self) -> float | None:
        """Verdict agreement over every step, those that did not run counting as disagreements (%)."""
        return _percent(self.agree, self.steps)

    @property
    def agreement_ran(self) -> float | None:
        return _percent(self.agree, self.ran)

    @property
    def same_count_rate(self) -> float | None:
        return _percent(self.same_count, self.ran)

    @property
    def precision(self) -> float | None:
        return _percent(self.matched, self.ours_errors)

    @property
    def recall(self) -> float | None:
        return _percent(self.matched, self.their_errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "ran": self.ran,
            "unsupported": self.unsupported,
            "crashed": self.crashed,
            "verdictAgreementAll": self.agreement_all,
            "verdictAgreementRan": self.agreement_ran,
            "confusion": {
                "expectedValidOursValid": self.valid_valid,
                "expectedValidOursInvalid": self.valid_invalid,
                "expectedInvalidOursValid": self.invalid_valid,
                "expectedInvalidOursInvalid": self.invalid_invalid,
            },
            "sameErrorCount": self.same_count_rate,
            "expressionScoredSteps": self.scored,
            "ourErrors": self.ours_errors,
            "theirErrors": self.their_errors,
            "matchedErrors": self.matched,
            "precision": self.precision,
            "recall": self.recall,
        }


def _percent(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100.0 * part / whole, 1)


@dataclass(frozen=True)
class Disagreement:
    """A step that ran where our verdict differs from the Java validator's."""

    case: str
    step: str
    expected_valid: bool
    ours_valid: bool
    expected_error_count: int
    expected: tuple[Finding, ...] | None  # None: a legacy outcome (a count only)
    ours: tuple[Finding, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "step": self.step,
            "expectedValid": self.expected_valid,
            "oursValid": self.ours_valid,
            "expectedErrorCount": self.expected_error_count,
            "expected": None if self.expected is None else [f.as_dict() for f in self.expected],
            "ours": [f.as_dict() for f in self.ours],
        }


@dataclass
class ConformanceReport:
    directory: str
    cases: int
    results: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0  # the whole run
    setup_seconds: float = 0.0  # building the package index

    def scores(self, step: str | None = None) -> Scores:
        """The scores of one step kind ("base", "profile"), or of every step."""
        return Scores.of([r for r in self.results if step is None or r.step == step])

    def modules(self) -> dict[str, Scores]:
        """The scores of every step of each manifest module, by module name (``NO_MODULE`` last)."""
        names = sorted({r.module for r in self.results}, key=lambda m: (m == NO_MODULE, m))
        return {m: Scores.of([r for r in self.results if r.module == m]) for m in names}

    @property
    def disagreements(self) -> list[Disagreement]:
        return [
            Disagreement(
                r.case,
                r.step,
                r.expected.valid,
                not r.ours,
                r.expected.error_count,
                r.expected.errors,
                r.ours,
            )
            for r in self.results
            if r.ran and r.expected is not None and not r.agrees
        ]

    @property
    def not_run(self) -> list[StepResult]:
        """The unsupported and crashed steps."""
        return [r for r in self.results if not r.ran]

    def as_dict(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "cases": self.cases,
            "seconds": round(self.seconds, 3),
            "setupSeconds": round(self.setup_seconds, 3),
            "scores": {name: self.scores(None if name == "all" else name).as_dict() for name in ("all", *STEPS)},
            "modules": {name: scores.as_dict() for name, scores in self.modules().items()},
            "notRun": [{"case": r.case, "step": r.step, "status": r.status, "reason": r.reason} for r in self.not_run],
            "disagreements": [d.as_dict() for d in self.disagreements],
            "results": [r.as_dict() for r in self.results],
        }

    def to_json(self) -> str:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2).decode("utf-8") + "\n"


# --- the manifest ------------------------------------------------------------------------------------------


def read_manifest(directory: Path) -> list[dict[str, Any]]:
    """The test cases of ``directory/manifest.json``; ``ConformanceError`` naming the path when unusable."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ConformanceError(f"{directory}: not a folder")
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ConformanceError(f"{path}: no manifest.json in {directory}") from exc
    except OSError as exc:
        raise ConformanceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise ConformanceError(f"{path}: not valid JSON: {exc}") from exc
    cases = data.get("test-cases") if isinstance(data, dict) else None
    if not isinstance(cases, list):
        raise ConformanceError(f"{path}: expected an object with a 'test-cases' list")
    return cases


@dataclass(frozen=True)
class _Case:
    name: str  # unique
    entry: dict[str, Any]


def _named_cases(entries: list[Any]) -> Iterator[_Case]:
    seen: Counter[str] = Counter()
    for i, entry in enumerate(entries):
        raw = entry.get("name") if isinstance(entry, dict) else None
        name = raw if isinstance(raw, str) and raw else f"case-{i + 1}"
        seen[name] += 1
        yield _Case(name if seen[name] == 1 else f"{name}#{seen[name]}", entry if isinstance(entry, dict) else {})


def _file_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Unsupported(f"'{key}' is not a list of file names")
    return list(value)


def _inside(directory: Path, name: str) -> Path:
    """A manifest file name as a path inside the folder (a manifest must not reach outside it)."""
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise _Unsupported(f"{name}: outside the test-case folder")
    return path


def _read_json(
    directory: Path, name: str, what: str, xml: XmlReader | None = None, problems: list[XmlProblem] | None = None
) -> Any:
    """A JSON file of the case, or a FHIR XML one when an XML reader (with definitions) is given; ``problems``
    collects what the XML reader left out (without it, that makes the file unusable)."""
    if name.lower().endswith(".xml") and xml is None:
        raise _Unsupported(f"{what} {name} is XML and no XML reader was given")
    path = _inside(directory, name)
    try:
        if name.lower().endswith(".xml") and xml is not None:
            return xml.read(path.read_bytes(), name, problems)
        return orjson.loads(path.read_bytes())
    except FhirXmlError as exc:
        raise _Unsupported(f"{what} {name}: {exc}") from exc
    except FileNotFoundError as exc:
        raise _Unsupported(f"{what} {name} does not exist") from exc
    except OSError as exc:
        raise _Unsupported(f"{what} {name} cannot be read: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise _Unsupported(f"{what} {name} is not valid JSON: {exc}") from exc


def _expected(directory: Path, spec: Any) -> Expected:
    """An expected outcome: a file under outcomes/, an inline ``{"outcome": ...}``, or a legacy count."""
    if isinstance(spec, str):
        outcome = _read_json(directory / OUTCOMES, spec, "expected outcome")
    elif isinstance(spec, dict) and isinstance(spec.get("outcome"), dict):
        outcome = spec["outcome"]
    elif isinstance(spec, dict) and isinstance(spec.get("errorCount"), int):
        return Expected(spec["errorCount"], None)
    elif spec is None:
        raise _Unsupported("no expected outcome ('java')")
    else:
        raise _Unsupported("the expected outcome is neither a file, an {outcome} nor an {errorCount}")
    issues = outcome.get("issue", []) if isinstance(outcome, dict) else None
    if (
        not isinstance(outcome, dict)
        or outcome.get("resourceType") != "OperationOutcome"
        or not isinstance(issues, list)
    ):
        raise _Unsupported("the expected outcome is not an OperationOutcome")
    errors = tuple(_finding(i) for i in issues if isinstance(i, dict) and i.get("severity") in ERROR_SEVERITIES)
    return Expected(len(errors), errors)


def _finding(issue: dict[str, Any]) -> Finding:
    where = issue.get("expression") or issue.get("location") or [""]
    text = (issue.get("details") or {}).get("text") or issue.get("diagnostics") or ""
    return Finding(str(where[0]) if isinstance(where, list) and where else "", str(text))


def _ignored_options(entry: dict[str, Any], handled: frozenset[str]) -> list[str]:
    """Manifest keys that ask the Java validator for something we do not do (descriptive keys are skipped)."""
    return [
        f"ignored option '{key}'"
        for key in entry
        if key not in handled and key not in _DESCRIPTIVE and not key.startswith("firely-sdk")
    ]


# --- running -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """What one step loads, what it validates against, and what it expects."""

    definitions: tuple[str, ...]
    profiles: tuple[str, ...]  # files whose StructureDefinition url the instance is validated against
    expected: Any
    notes: tuple[str, ...]
    urls: tuple[str, ...] = ()  # canonicals validated against directly (a profile step's source given as a url)
    options: ValidationOptions = field(default_factory=ValidationOptions)


def _plans(entry: dict[str, Any]) -> list[tuple[str, _Plan | _Unsupported]]:
    """(step, plan) for the base step and, when the case has one, the profile step."""
    notes = tuple(_ignored_options(entry, _HANDLED))
    try:
        # The Java runner loads all three into the context; "profiles" are not validated against.
        loaded = [
            *_file_list(entry.get("supporting"), "supporting"),
            *_file_list(entry.get("supporting5"), "supporting5"),
            *_file_list(entry.get("profiles"), "profiles"),
        ]
    except _Unsupported as exc:
        problem: _Unsupported | None = exc
        loaded = []
    else:
        problem = None
    # The runner's switches that change what the validator checks.
    options = ValidationOptions(
        no_html_in_markdown=bool(entry.get("noHtmlInMarkdown")),
        validate_contained=entry.get("validateContains") != "IGNORE",
        # The HL7 runner allows examples unless the case says otherwise.
        allow_example_extensions=entry.get("examples") is not False,
        allow_example_urls=entry.get("examples") is not False,
        # Off unless the case says so, as in the HL7 runner: a reference's type is checked where it resolves.
        assume_valid_rest_references=entry.get("assumeValidRestReferences") is True,
    )
    plans: list[tuple[str, _Plan | _Unsupported]] = [
        ("base", problem or _Plan(tuple(loaded), (), entry.get("java"), notes, (), options))
    ]
    step = entry.get("profile")
    if step is None:
        return plans
    try:
        if problem is not None:
            raise problem
        if not isinstance(step, dict):
            raise _Unsupported("'profile' is not an object")
        extra = _file_list(step.get("supporting"), "profile.supporting")
        source = step.get("source")
        if not isinstance(source, str):
            raise _Unsupported("'profile' has no 'source' file")
        # The Java runner loads the profile step's files into the same context: the base step's files stay.
        notes = (*notes, *(f"profile: {n}" for n in _ignored_options(step, _PROFILE_HANDLED)))
        # The runner keeps the case's switch unless the profile step sets its own.
        assume = step.get("assumeValidRestReferences", options.assume_valid_rest_references) is True
        step_options = replace(options, assume_valid_rest_references=assume)
        if "://" in source:  # the runner takes an absolute URL as the canonical of a definition already loaded
            plans.append(("profile", _Plan((*loaded, *extra), (), step.get("java"), notes, (source,), step_options)))
        else:
            plans.append(
                ("profile", _Plan((*loaded, *extra, source), (source,), step.get("java"), notes, (), step_options))
            )
    except _Unsupported as exc:
        plans.append(("profile", exc))
    return plans


def _profile_url(directory: Path, name: str, xml: XmlReader | None = None) -> str:
    sd = _read_json(directory, name, "profile", xml)
    if (
        not isinstance(sd, dict)
        or sd.get("resourceType") != "StructureDefinition"
        or not isinstance(sd.get("url"), str)
    ):
        raise _Unsupported(f"profile {name} is not a StructureDefinition with a url")
    return str(sd["url"])


def _run_step(
    directory: Path,
    case: str,
    step: str,
    instance_name: Any,
    plan: _Plan,
    base: DefinitionIndex,
) -> StepResult:
    """Load the step's definitions into a fresh overlay, validate the instance, keep our errors."""
    started = time.perf_counter()
    result = StepResult(case, step, "unsupported", notes=plan.notes)
    try:
        result.expected = _expected(directory, plan.expected)
        if not isinstance(instance_name, str):
            raise _Unsupported("no instance ('file')")
        overlay = OverlayDefinitions(base)
        xml = XmlReader(overlay)
        problems: list[XmlProblem] = []
        instance = _read_json(directory, instance_name, "instance", xml, problems)
        notes = list(plan.notes)
        for name in dict.fromkeys(plan.definitions):
            path = _inside(directory, name)
            if not path.is_file():
                raise _Unsupported(f"definition {name} does not exist")
            try:
                if overlay.add_path(path) == 0:
                    notes.append(f"{name} holds no definition the validator can use")
            except PackageError as exc:
                raise _Unsupported(f"definition {name}: {exc}") from exc
        result.notes = tuple(notes)
        urls = [*plan.urls, *(_profile_url(directory, name, xml) for name in plan.profiles)]
    except _Unsupported as exc:
        result.reason = str(exc)
        result.seconds = time.perf_counter() - started
        return result
    try:
        options = replace(plan.options, global_profiles=_global_profiles(directory, plan.definitions))
        # The XML reader's errors come first, as the Java validator reports its parser's before validating.
        read = [Issue("error", "structure", p.message, p.expression) for p in problems]
        issues = read + Validator(overlay, options=options).validate(instance, urls)
    except Exception as exc:  # noqa: BLE001 - a crash of the validator is a result to report, not to raise
        result.status = "crashed"
        result.reason = _crash(exc)
    else:
        result.status = "ran"
        result.ours = _errors(issues)
    result.seconds = time.perf_counter() - started
    return result


def _global_profiles(directory: Path, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The "global" profiles of any ImplementationGuide among the loaded files: (type, profile)."""
    out: list[tuple[str, str]] = []
    for name in names:
        if not name.lower().endswith(".json"):
            continue
        try:
            resource = _read_json(directory, name, "definition")
        except _Unsupported:
            continue
        if isinstance(resource, dict) and resource.get("resourceType") == "ImplementationGuide":
            for g in resource.get("global") or ():
                if isinstance(g, dict) and isinstance(g.get("type"), str) and isinstance(g.get("profile"), str):
                    out.append((g["type"], g["profile"]))
    return tuple(out)


def _errors(issues: list[Issue]) -> tuple[Finding, ...]:
    return tuple(Finding(i.expression, i.message) for i in issues if i.severity in ERROR_SEVERITIES)


def _crash(exc: Exception) -> str:
    """The exception and where it was raised, for a bug report."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_conformance(
    directory: Path,
    base: DefinitionIndex | None = None,
    *,
    settings: Settings | None = None,
    case_filter: str | None = None,
    case_names: Collection[str] | None = None,
) -> ConformanceReport:
    """Run the cases of ``directory`` (those whose name contains ``case_filter``, and is one of ``case_names`` when
    given) and score them.

    ``base`` is the package index (default: the pinned packages of ``settings``, which must be installed).
    Raises ``ConformanceError`` for an unusable folder and ``PackageError`` when the packages are missing.
    """
    started = time.perf_counter()
    entries = read_manifest(directory)
    if base is None:
        base = load_base_index(settings or Settings())
    setup = time.perf_counter() - started
    report = ConformanceReport(str(directory), 0, setup_seconds=setup)
    for case in _named_cases(entries):
        if (case_filter and case_filter not in case.name) or (case_names is not None and case.name not in case_names):
            continue
        report.cases += 1
        module = case.entry.get("module")
        for step, plan in _plans(case.entry):
            if isinstance(plan, _Unsupported):
                result = StepResult(case.name, step, "unsupported", str(plan))
            else:
                result = _run_step(directory, case.name, step, case.entry.get("file"), plan, base)
            result.module = module if isinstance(module, str) and module else NO_MODULE
            report.results.append(result)
    report.seconds = time.perf_counter() - started
    return report
