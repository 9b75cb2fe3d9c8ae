"""The clinical case-report input model, schema version 1.0 (kept to read 1.0 files).

A 1.0 file is validated against this model first, so its errors name its own fields and lines; it is then
upgraded to the current model (``migrate.upgrade``), which is what everything downstream reads. The leaf types
(concepts, sites, quantities, ages) are shared with schema 2.0, which imports them from here.

Rules of the model:
- Nothing is invented: a fact the source does not give is left out (optional fields) or said to be
  unreported (``LabTest.reported_as`` with no ``value``); there is no birth date and no patient name.
- Unknown fields, wrong types and impossible values are rejected; every error names the field path.
- Concepts are free text with an optional vocabulary ``key``; the key selects codes from the mapping's
  code tables (``mappings/codes``), never from this model.

The JSON Schema published in ``schemas/case-report-1.0.schema.json`` is generated from this module; a test keeps
the two in step.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from casebridge.domain import ucum

SCHEMA_VERSION = "1.0"

# Short machine names: case ids, step ids, vocabulary keys. Kept FHIR-id compatible.
Key = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
# No control characters (tab and newline aside): they cannot appear in XHTML narrative or most exports.
_PRINTABLE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
Text = Annotated[str, Field(min_length=1, max_length=10_000, pattern=_PRINTABLE)]
ShortText = Annotated[str, Field(min_length=1, max_length=500, pattern=_PRINTABLE)]
# int is accepted for a decimal (0.5 and 1 are both numbers in JSON); bool and "12" strings are not.
Decimal = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def _ucum(unit: str) -> str:
    problem = ucum.problem(unit)
    if problem is not None:
        raise ValueError(problem)
    return unit


# A unit of measure: valid UCUM (case-sensitive), which is then its own code (http://unitsofmeasure.org).
Unit = Annotated[
    ShortText,
    AfterValidator(_ucum),
    Field(description="A UCUM unit, case-sensitive (https://ucum.org/ucum): e.g. cm, mg/dL, mmol/L, U/L, 10*9/L"),
]

# How steps are named in titles and narrative ("after the X-ray").
STEP_LABELS = {
    "presentation": "Presentation",
    "clinical_examination": "Clinical examination",
    "xray": "X-ray",
    "ultrasound": "Ultrasound",
    "ct": "CT",
    "mri": "MRI",
    "pet": "PET",
    "nuclear_medicine": "Nuclear medicine scan",
    "mammography": "Mammography",
    "fluoroscopy": "Fluoroscopy",
    "angiography": "Angiography",
    "laboratory": "Laboratory tests",
    "histopathology": "Histopathology",
}

# hours and minutes: units of schema 2.0, whose Duration extends this one
_DAYS = {"years": 365.25, "months": 30.44, "weeks": 7.0, "days": 1.0, "hours": 1 / 24, "minutes": 1 / 1440}

Sex = Literal["female", "male", "other", "unknown"]
Laterality = Literal["left", "right", "bilateral"]
TimeUnit = Literal["years", "months", "weeks", "days"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, validate_default=True)


class Concept(_Model):
    """A clinical concept: the words of the source, and optionally a vocabulary key for its codes."""

    text: ShortText
    key: Key | None = None

    @property
    def ref_key(self) -> str:
        """What tells this concept apart within a case: its vocabulary key, else its exact words.

        For words, a readable slug plus a hash of the case-folded text: two different texts never share
        a key (not even in scripts the slug cannot show), and the same words always get the same key.
        """
        if self.key:
            return self.key
        digest = hashlib.sha256(self.text.casefold().encode()).hexdigest()[:10]
        slug = re.sub(r"[^a-z0-9]+", "-", self.text.lower()).strip("-")[:40]
        return f"{slug}-{digest}" if slug else f"text-{digest}"

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: object) -> object:
        # A bare string is a text-only concept: the common case when writing fixtures by hand.
        return {"text": data} if isinstance(data, str) else data


class BodySite(_Model):
    """Where: a body structure and, for paired structures, the side."""

    site: Concept
    laterality: Laterality | None = None

    @property
    def label(self) -> str:
        return f"{self.laterality} {self.site.text}" if self.laterality else self.site.text


class Quantity(_Model):
    value: Annotated[Decimal, Field(ge=0)]
    unit: Unit  # coded as written; mappings/codes/units.csv may override a unit's coding


class Age(_Model):
    value: Annotated[StrictInt, Field(ge=0)]
    unit: TimeUnit = "years"

    @property
    def days(self) -> float:
        return self.value * _DAYS[self.unit]

    @model_validator(mode="after")
    def _plausible(self) -> Age:
        if self.days > 150 * 365.25:
            raise ValueError(f"an age of {self.value} {self.unit} is not possible")
        return self


class Duration(_Model):
    value: Annotated[Decimal, Field(gt=0)]
    unit: TimeUnit
    approximate: StrictBool = False

    @property
    def days(self) -> float:
        return float(self.value) * _DAYS[self.unit]

    @model_validator(mode="after")
    def _plausible(self) -> Duration:
        if self.days > 150 * 365.25:
            raise ValueError(f"a duration of {self.value} {self.unit} is not possible")
        return self

    @property
    def label(self) -> str:
        value = int(self.value) if float(self.value).is_integer() else self.value
        return f"{'about ' if self.approximate else ''}{value} {self.unit}"


class Finding(_Model):
    """A sign, symptom or concern, present or explicitly absent."""

    concept: Concept
    present: StrictBool
    body_site: BodySite | None = None
    note: Text | None = None


class Measurement(_Model):
    """A measured size: one to three dimensions, largest first (the first is the maximum dimension)."""

    concept: Concept
    dimensions: Annotated[list[Quantity], Field(min_length=1, max_length=3)]
    body_site: BodySite | None = None

    @property
    def maximum(self) -> Quantity:
        return self.dimensions[0]

    @property
    def additional(self) -> list[Quantity]:
        return self.dimensions[1:]

    @model_validator(mode="after")
    def _largest_first(self) -> Measurement:
        problem = dimensions_problem(self.dimensions)
        if problem is not None:
            raise ValueError(problem)
        return self


def dimensions_problem(dimensions: list[Quantity]) -> str | None:
    """What is wrong with a size's dimensions, if anything: one unit, largest first, none of 0. Schema 2.0's
    measurements share the rule."""
    units = {q.unit for q in dimensions}
    if len(units) > 1:
        return f"all dimensions must share one unit, got {sorted(units)}"
    values = [q.value for q in dimensions]
    if values != sorted(values, reverse=True):
        return "dimensions must be listed largest first"
    if any(v == 0 for v in values):
        return "a dimension of 0 is not a measurement"
    return None


class ReferenceRange(_Model):
    # Bounds are quantities like the value they frame, which cannot be negative (Quantity).
    low: Annotated[Decimal, Field(ge=0)] | None = None
    high: Annotated[Decimal, Field(ge=0)] | None = None
    unit: Unit

    @property
    def low_quantity(self) -> Quantity | None:
        return None if self.low is None else Quantity(value=self.low, unit=self.unit)

    @property
    def high_quantity(self) -> Quantity | None:
        return None if self.high is None else Quantity(value=self.high, unit=self.unit)

    @model_validator(mode="after")
    def _ordered(self) -> ReferenceRange:
        if self.low is None and self.high is None:
            raise ValueError("a reference range needs low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        return self


# Coded through mappings/codes/interpretation.csv (v3 ObservationInterpretation N, A, H, L, HH, LL).
Interpretation = Literal["normal", "abnormal", "high", "low", "critical high", "critical low"]


class LabTest(_Model):
    """A laboratory result. With no ``value``, ``reported_as`` says what the source said instead."""

    id: Key
    concept: Concept
    specimen_type: ShortText | None = None  # e.g. "serum"
    value: Quantity | None = None
    reported_as: Text | None = None
    interpretation: Interpretation | None = None
    reference_range: ReferenceRange | None = None

    @model_validator(mode="after")
    def _value_or_report(self) -> LabTest:
        if self.value is None and self.reported_as is None:
            raise ValueError("give the value, or reported_as saying what the source reported instead")
        if self.value and self.reference_range and self.value.unit != self.reference_range.unit:
            raise ValueError("value and reference_range must use the same unit")
        return self


def _schema_performed(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """pydantic sees the fields a performed step needs as optional (a step not done lacks them): say in the
    JSON Schema that a performed step needs them and that a step not done has no results."""
    needed: tuple[str, ...] = getattr(model, "_NEEDED", ())
    results: tuple[str, ...] = getattr(model, "_RESULTS", ())
    schema["if"] = {"properties": {"performed": {"const": False}}, "required": ["performed"]}
    schema["then"] = {"properties": {name: False for name in results}}
    if needed:
        # A needed list (a laboratory step's tests) needs an item; any other needed field a value.
        properties: dict[str, Any] = {
            name: {"minItems": 1} if model.model_fields[name].default == [] else {"not": {"type": "null"}}
            for name in needed
        }
        schema["else"] = {"required": list(needed), "properties": properties}


class _Step(_Model):
    """A diagnostic step. ``performed: false`` records a step the source says was not done ("ultrasound was
    not done"), with ``not_done_reason`` when the source gives one: such a step has no results, so it needs
    none of the fields a performed step needs (below, ``_NEEDED``) and refuses every result (``_RESULTS``)."""

    model_config = ConfigDict(json_schema_extra=_schema_performed)

    # Fields a performed step of this kind must have (required in the JSON Schema's "else" branch).
    _NEEDED: ClassVar[tuple[str, ...]] = ()
    # What only a performed step can have: what it found and concluded, and who did it.
    _RESULTS: ClassVar[tuple[str, ...]] = ("performer", "findings", "measurements", "differential", "impression")

    kind: str  # narrowed to a Literal by each kind of step (the union's discriminator)
    id: Key
    order: Annotated[StrictInt, Field(ge=1, le=1000)]
    performed: StrictBool = True  # false: the source says this step was not done
    not_done_reason: Text | None = None  # why not, in the source's words (only with performed: false)
    performer: ShortText | None = None  # as the source names it, e.g. "a doctor"; never a made-up name
    findings: list[Finding] = []
    measurements: list[Measurement] = []
    differential: list[Concept] = []  # the differential diagnosis held after this step
    impression: Text | None = None  # the source's words for that conclusion (the seed's Table 1)
    source_text: Text | None = None  # a verbatim quotation, kept for traceability

    @property
    def label(self) -> str:
        return STEP_LABELS[self.kind]

    @property
    def title(self) -> str:
        """The step and where, in words: "Ultrasound of the right forearm"."""
        site: BodySite | None = getattr(self, "body_site", None)
        return f"{self.label} of the {site.label}" if site is not None else self.label

    @model_validator(mode="after")
    def _performed_or_not(self) -> _Step:
        check_performed(self)
        return self


def check_performed(step: Any) -> None:
    """A performed step has what its kind needs (``_NEEDED``) and no reason it was not done; a step not done has
    no result (``_RESULTS``), not even an empty one, as the JSON Schema says. Schema 2.0's steps share the rule.
    Each message starts with the field's name: the error then points at that field's line."""
    if step.performed:
        if step.not_done_reason is not None:
            raise ValueError(
                "not_done_reason: only a step that was not performed has a reason it was not done; "
                "add performed: false, or remove not_done_reason"
            )
        for name in step._NEEDED:
            value = getattr(step, name)
            if value is None or value == []:
                problem = "required field is missing" if value is None else "must not be empty"
                raise ValueError(
                    f"{name}: {problem} for a step that was performed (a step the source says was not "
                    "done has performed: false and needs no results)"
                )
    else:
        for name in step._RESULTS:
            if name in step.model_fields_set:
                raise ValueError(
                    f"{name}: a step that was not performed has no {name.replace('_', ' ')}; remove it, "
                    "or remove performed: false if the source says the step was done"
                )


class ClinicalExamination(_Step):
    kind: Literal["clinical_examination"]
    body_site: BodySite | None = None


# Each imaging kind maps to one DICOM acquisition modality (codes/modality.csv): an X-ray is DX, a nuclear
# medicine scan (scintigraphy) NM, a fluoroscopy RF, an angiography XA.
ImagingKind = Literal[
    "xray", "ultrasound", "ct", "mri", "pet", "nuclear_medicine", "mammography", "fluoroscopy", "angiography"
]
IMAGING_KINDS: frozenset[str] = frozenset(get_args(ImagingKind))


class Figure(_Model):
    label: ShortText
    caption: Text


class ImagingStep(_Step):
    _NEEDED = ("body_site", "conclusion")  # a step not done may still say where it would have looked
    _RESULTS = (*_Step._RESULTS, "conclusion", "figure")
    kind: ImagingKind
    body_site: BodySite | None = None
    conclusion: Text | None = None
    figure: Figure | None = None


class LaboratoryStep(_Step):
    _NEEDED = ("tests",)
    _RESULTS = (*_Step._RESULTS, "tests")
    kind: Literal["laboratory"]
    tests: list[LabTest] = []  # at least one for a performed step


class HistopathologyStep(_Step):
    _NEEDED = ("specimen", "diagnosis", "conclusion")
    _RESULTS = (*_Step._RESULTS, "specimen", "microscopic", "diagnosis", "conclusion")
    kind: Literal["histopathology"]
    specimen: Key | None = None  # a Specimen.id of this case
    microscopic: Text | None = None
    diagnosis: Concept | None = None
    conclusion: Text | None = None


DiagnosticStep = Annotated[
    ClinicalExamination | ImagingStep | LaboratoryStep | HistopathologyStep,
    Field(discriminator="kind"),
]


class HistoryItem(_Model):
    id: Key
    condition: Concept
    body_site: BodySite | None = None
    clinical_status: Literal["active", "inactive", "resolved"] | None = None
    note: Text | None = None
    source_text: Text | None = None


class Presentation(_Model):
    complaint: Concept
    body_site: BodySite
    duration: Duration | None = None  # how long the patient had it before presenting
    course: Text | None = None  # e.g. "has not increased in size"
    suspected: list[Concept] = []  # what it was suspected to be when the patient presented
    findings: list[Finding] = []  # symptoms present and absent, the patient's concern
    source_text: Text | None = None


class Procedure(_Model):
    id: Key
    concept: Concept
    body_site: BodySite | None = None
    # As the source says; absent, the mapping writes "unknown": a procedure the source only names (conservative
    # management) must not read as done.
    status: Literal["completed", "in-progress", "not-done", "stopped"] | None = None
    outcome: ShortText | None = None
    reason: Text | None = None
    source_text: Text | None = None


class Specimen(_Model):
    id: Key
    type: Concept
    description: Text | None = None
    body_site: BodySite | None = None
    collected_by: Key | None = None  # a Procedure.id of this case
    note: Text | None = None


class PossibleCause(_Model):
    history: Key  # a HistoryItem.id of this case
    note: Text


class FinalDiagnosis(_Model):
    condition: Concept
    body_site: BodySite | None = None
    verification: Literal["confirmed", "provisional"]
    established_by: Key  # the DiagnosticStep.id that settled it
    possible_cause: PossibleCause | None = None
    note: Text | None = None


class PublicationHistory(_Model):
    received: dt.date | None = None
    revised: dt.date | None = None
    accepted: dt.date | None = None

    @field_validator("received", "revised", "accepted", mode="before")
    @classmethod
    def _iso_date(cls, value: object) -> object:
        # JSON gives strings; YAML may already give dates. Either way only YYYY-MM-DD is accepted (a number
        # would otherwise be read as a Unix time: 0 became 1970-01-01).
        if not isinstance(value, str | dt.date) or (
            isinstance(value, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)
        ):
            raise ValueError("dates are written YYYY-MM-DD")
        return value

    @property
    def summary(self) -> str | None:
        parts = [
            f"{name.capitalize()} {d.isoformat()}"
            for name, d in (("received", self.received), ("revised", self.revised), ("accepted", self.accepted))
            if d
        ]
        return "Publication history: " + "; ".join(parts) + "." if parts else None

    @model_validator(mode="after")
    def _ordered(self) -> PublicationHistory:
        dates = [d for d in (self.received, self.revised, self.accepted) if d is not None]
        if dates != sorted(dates):
            raise ValueError("received, revised and accepted must be in date order")
        return self


class Source(_Model):
    """Where the case comes from. Every output resource's Provenance points here."""

    kind: Literal["publication", "registry", "synthetic"]
    citation: Text
    title: ShortText | None = None
    doi: Annotated[str, Field(pattern=r"^10\.\d{4,9}/[^\s]+$")] | None = None
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")] | None = None
    authors: list[ShortText] = []
    affiliations: list[Text] = []
    corresponding_author: ShortText | None = None
    keywords: list[ShortText] = []
    journal: ShortText | None = None
    year: Annotated[StrictInt, Field(ge=1800, le=2100)] | None = None
    publication_history: PublicationHistory | None = None
    statements: list[Text] = []  # e.g. informed consent, conflicts of interest
    figures: list[Figure] = []
    tables: list[Figure] = []  # captions of the source's tables (their content is in the steps)

    @model_validator(mode="after")
    def _locatable(self) -> Source:
        if self.kind == "publication" and not (self.doi or self.url):
            raise ValueError("a publication needs a doi or a url")
        return self

    @property
    def affiliation_line(self) -> str | None:
        parts = [
            f"Affiliation: {'; '.join(self.affiliations)}." if self.affiliations else None,
            f"Corresponding author: {self.corresponding_author}." if self.corresponding_author else None,
        ]
        return " ".join(p for p in parts if p) or None

    @property
    def keyword_line(self) -> str | None:
        return f"Keywords: {'; '.join(self.keywords)}." if self.keywords else None

    @property
    def journal_line(self) -> str | None:
        parts = [p for p in (self.journal, str(self.year) if self.year else None) if p]
        return f"Published in: {', '.join(parts)}." if parts else None

    @property
    def link(self) -> str | None:
        return f"https://doi.org/{self.doi}" if self.doi else self.url


class PatientIdentifier(_Model):
    system: Annotated[str, Field(pattern=r"^(https?://|urn:)[^\s]+$")]  # the registry's namespace, a URI
    value: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]


class Patient(_Model):
    # The source's own patient id, when it has one (registries do). With it, cases of the same
    # patient share one Patient resource.
    identifier: PatientIdentifier | None = None
    sex: Sex
    age_at_presentation: Age


class CaseReport(_Model):
    schema_version: Literal["1.0"]
    case_id: Key
    source: Source
    patient: Patient
    history: list[HistoryItem] = []
    presentation: Presentation
    diagnostic_steps: Annotated[list[DiagnosticStep], Field(min_length=1)]
    procedures: list[Procedure] = []
    specimens: list[Specimen] = []
    final_diagnosis: FinalDiagnosis | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CaseReport:
        # Cross-references and orderings a single field cannot check; each message names its path.
        _unique("diagnostic_steps", [s.id for s in self.diagnostic_steps])
        _unique("history", [h.id for h in self.history])
        _unique("procedures", [p.id for p in self.procedures])
        _unique("specimens", [s.id for s in self.specimens])
        tests = [t.id for s in self.diagnostic_steps if isinstance(s, LaboratoryStep) for t in s.tests]
        _unique("diagnostic_steps[].tests", tests)
        _ordered_steps(self.diagnostic_steps)
        step_ids = {s.id for s in self.diagnostic_steps}
        specimen_ids = {s.id for s in self.specimens}
        procedure_ids = {p.id for p in self.procedures}
        for i, step in enumerate(self.diagnostic_steps):
            if isinstance(step, HistopathologyStep) and step.performed and step.specimen not in specimen_ids:
                raise ValueError(f"diagnostic_steps[{i}].specimen: no specimen with id {step.specimen!r}")
        for i, spec in enumerate(self.specimens):
            if spec.collected_by is not None and spec.collected_by not in procedure_ids:
                raise ValueError(f"specimens[{i}].collected_by: no procedure with id {spec.collected_by!r}")
        duration = self.presentation.duration
        if duration is not None and duration.days > self.patient.age_at_presentation.days:
            raise ValueError("presentation.duration: longer than the patient's age at presentation")
        _unique("presentation.findings (by concept)", [f.concept.ref_key for f in self.presentation.findings])
        dx = self.final_diagnosis
        if dx is not None:
            if dx.established_by not in step_ids:
                raise ValueError(f"final_diagnosis.established_by: no diagnostic step with id {dx.established_by!r}")
            if dx.established_by in {s.id for s in self.diagnostic_steps if not s.performed}:
                raise ValueError(
                    f"final_diagnosis.established_by: step {dx.established_by!r} was not performed; a step not done "
                    "settles nothing"
                )
            cause = dx.possible_cause
            if cause is not None and cause.history not in {h.id for h in self.history}:
                raise ValueError(f"final_diagnosis.possible_cause.history: no history item with id {cause.history!r}")
        return self


DiagnosticStepType = ClinicalExamination | ImagingStep | LaboratoryStep | HistopathologyStep


def _ordered_steps(steps: list[DiagnosticStepType]) -> None:
    """Each step its own order number, listed in that order; the message names the steps involved."""
    first: dict[int, str] = {}
    for i, step in enumerate(steps):
        if step.order in first:
            raise ValueError(
                f"diagnostic_steps[{i}].order: steps {first[step.order]!r} and {step.id!r} both have order "
                f"{step.order}; give each step its own order number"
            )
        first[step.order] = step.id
        if i and step.order < steps[i - 1].order:
            raise ValueError(
                f"diagnostic_steps[{i}].order: step {step.id!r} (order {step.order}) is listed after step "
                f"{steps[i - 1].id!r} (order {steps[i - 1].order}); list the steps in their order"
            )


def _unique(where: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise ValueError(f"{where}: id {i!r} is used twice")
        seen.add(i)
