"""The clinical case-report input model, schema version 2.0.

A case report is what a published (or registry, or synthetic) case says about one patient: the source, the
patient (demographics, medical, family and social history, medication at presentation), the presentation, the
diagnoses considered, the diagnostic steps (each performed or not, with its findings, measurements and what it
said about each diagnosis), procedures, medications and management, specimens, the final diagnosis, the outcomes,
the patient's perspective and the consent statement: the sections of the CARE checklist for case reports.

Rules of the model:
- Nothing is invented, so nothing is required that a report may not give: a fact the source does not give is
  left out; there is no birth date and no patient name.
- Every fact may carry ``quote``, the words of the source it comes from.
- Any event may carry ``time``, a time element as the source gives it: the patient's age, a time relative to
  the presentation or to another event, an interval, or a date only when the report gives one.
- Diagnoses are entities with ids. Each step says what it did to each diagnosis (``assessment``: considered,
  excluded, confirmed, provisional); the final diagnosis names one by id. Nothing is linked by wording.
- Unknown fields, wrong types and impossible values are rejected; every error names the field path.
- Concepts are free text with an optional vocabulary ``key``; the key selects codes from the mapping's code
  tables (``mappings/codes``), never from this model.

Schema 1.0 files (``case_v1``) are still read: validated as 1.0, then upgraded (``migrate.upgrade``). The JSON
Schema published in ``schemas/case-report-2.0.schema.json`` is generated from this module (``casebridge schema``);
a test keeps the two in step.
"""

from __future__ import annotations

import datetime as dt
from functools import cache, cached_property
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    model_validator,
)

from casebridge.domain import case_v1
from casebridge.domain.case_v1 import (
    STEP_LABELS as _V1_LABELS,
)
from casebridge.domain.case_v1 import (
    Age,
    BodySite,
    Concept,
    Decimal,
    Figure,
    Interpretation,
    Key,
    PatientIdentifier,
    PossibleCause,
    Quantity,
    ReferenceRange,
    ShortText,
    Text,
    _schema_performed,
    _unique,
)

__all__ = [
    "SCHEMA_VERSION",
    "Age",
    "BodySite",
    "CaseReport",
    "Concept",
    "Diagnosis",
    "DiagnosticStep",
    "Quantity",
    "TimeElement",
]

SCHEMA_VERSION = "2.0"

STEP_LABELS = _V1_LABELS | {
    "cytology": "Cytology",
    "genetic_test": "Genetic test",
    "endoscopy": "Endoscopy",
    "other": "Diagnostic procedure",
}

TimeUnit = Literal["years", "months", "weeks", "days", "hours", "minutes"]
_UNIT_WORDS = {"years": "year", "months": "month", "weeks": "week", "days": "day", "hours": "hour", "minutes": "minute"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, validate_default=True)


def _one_or_many(value: object) -> object:
    # One site is written as a mapping, several as a list: both read as a list.
    return [value] if isinstance(value, dict | BodySite) else value


# Where a finding or diagnosis is: one body site, or several (lesions at many sites), each with its side.
Sites = Annotated[list[BodySite], BeforeValidator(_one_or_many)]


def sites_label(sites: list[BodySite]) -> str:
    return " and ".join(s.label for s in sites)


# --- time -------------------------------------------------------------------------------------------------


class Duration(case_v1.Duration):
    """How long, as 1.0's duration, in hours and minutes too."""

    unit: TimeUnit  # type: ignore[assignment]  # the 1.0 units and more

    @property
    def label(self) -> str:
        value = int(self.value) if float(self.value).is_integer() else self.value
        unit = _UNIT_WORDS[self.unit] if value == 1 else self.unit
        return f"{'about ' if self.approximate else ''}{value} {unit}"


class Relative(_Model):
    """A time relative to the presentation or to another event of the case (by its id)."""

    relation: Literal["before", "after", "at"]
    to: Key  # "presentation" or the id of an event of this case
    value: Annotated[Decimal, Field(gt=0)] | None = None
    unit: TimeUnit | None = None

    @model_validator(mode="after")
    def _offset(self) -> Relative:
        # "after the CT" gives the order without an offset: before/after take a value and unit, or neither.
        if self.relation == "at":
            if self.value is not None or self.unit is not None:
                raise ValueError("value: 'at' has no offset; use before or after with a value and a unit")
        elif (self.value is None) != (self.unit is None):
            raise ValueError("value: an offset needs both a value and a unit (e.g. value: 4, unit: weeks)")
        return self

    def words(self, names: dict[str, str] | None = None) -> str:
        target = (names or {}).get(self.to, self.to)
        if self.relation == "at":
            return f"at {target}"
        if self.value is None or self.unit is None:
            return f"{self.relation} {target}"
        return f"{Duration(value=self.value, unit=self.unit).label} {self.relation} {target}"


# A date as precise as the source gives it: a year, a month or a day.
PartialDate = Annotated[str, Field(pattern=r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?)?$")]


class _Point(_Model):
    """One point in time, as the source gives it: exactly one of age, relative, date."""

    age: Age | None = None
    relative: Relative | None = None
    date: PartialDate | None = None
    approximate: StrictBool = False
    text: ShortText | None = None  # the source's words ("week 4")

    @model_validator(mode="before")
    @classmethod
    def _date_text(cls, data: object) -> object:
        # YAML reads 2019-03-14 as a date: keep it as written.
        if isinstance(data, dict) and isinstance(data.get("date"), dt.date):
            return data | {"date": data["date"].isoformat()}
        return data

    _KINDS: ClassVar[tuple[str, ...]] = ("age", "relative", "date")

    @model_validator(mode="after")
    def _exactly_one(self) -> _Point:
        given = [n for n in self._KINDS if getattr(self, n) is not None]
        # The source's words alone ("several months ago", "in the past") when it gives nothing more exact.
        if len(given) > 1 or (not given and self.text is None):
            raise ValueError(
                f"a time element has exactly one of {', '.join(self._KINDS)}, or only text in the source's words"
                + (f"; got {' and '.join(given)}" if given else "")
            )
        if self.date is not None:
            parts = [int(p) for p in self.date.split("-")]
            try:
                dt.date(parts[0], parts[1] if len(parts) > 1 else 1, parts[2] if len(parts) > 2 else 1)
            except ValueError:
                raise ValueError(f"date: {self.date} is not a date in the calendar") from None
        return self

    @property
    def label(self) -> str:
        """The time in words: "at 12 years of age", "4 weeks after presentation", "2019-03"."""
        return self.words()

    def words(self, names: dict[str, str] | None = None) -> str:
        """The time in words, events named by ``names`` (id -> name) rather than by their ids."""
        prefix = "about " if self.approximate else ""
        if self.age is not None:
            return f"{prefix}at {self.age.value} {self.age.unit} of age"
        if self.relative is not None:
            return prefix + self.relative.words(names)
        if self.date is not None:
            return f"{prefix}{self.date}"
        return self.text or ""


class TimeElement(_Point):
    """When an event happened, as the source gives it (GA4GH Phenopackets' time element): the patient's age, a
    time relative to the presentation or another event, an interval between two such points, or a date only when
    the source gives one. ``text`` keeps the source's words."""

    _KINDS = ("age", "relative", "date", "interval")
    interval: Interval | None = None

    def words(self, names: dict[str, str] | None = None) -> str:
        if self.interval is not None:
            return f"from {self.interval.start.words(names)} to {self.interval.end.words(names)}"
        return super().words(names)

    @property
    def untyped(self) -> str | None:
        """The time in words when FHIR has no typed place for it (neither an age nor a date)."""
        return None if self.age is not None or self.date is not None else self.label

    @property
    def date_time(self) -> str | None:
        """The date when the source gives one (FHIR dateTime takes a year, a month or a day)."""
        return self.date

    @property
    def age_at(self) -> Age | None:
        return self.age

    def events(self) -> list[str]:
        points = [self] if self.interval is None else [self.interval.start, self.interval.end]
        return [p.relative.to for p in points if p.relative is not None and p.relative.to != "presentation"]


class Interval(_Model):
    start: _Point
    end: _Point


TimeElement.model_rebuild()


@cache
def _time_fields(cls: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``cls`` whose values can hold a time element: the only ones ``CaseReport._check_times`` walks
    (walking every field of every model was nearly half the time of validating a case)."""
    return tuple(name for name, f in cls.model_fields.items() if _reaches_time(f.annotation, set()))


def _reaches_time(annotation: object, seen: set[type]) -> bool:
    if annotation is Any or annotation is object:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # Subclasses too: a field may hold an instance of one, built in Python rather than validated.
        todo: list[type[BaseModel]] = [annotation]
        while todo:
            cls = todo.pop()
            if cls in seen:
                continue
            seen.add(cls)
            todo.extend(cls.__subclasses__())
            if issubclass(cls, TimeElement) or any(
                _reaches_time(f.annotation, seen) for f in cls.model_fields.values()
            ):
                return True
        return False
    return any(_reaches_time(arg, seen) for arg in get_args(annotation))  # list[X], X | None, Annotated[X, ...]


# Fragments of one quote are joined with a spaced ellipsis, the usual mark of words left out.
QUOTE_JOIN = " … "


def _quote(value: object) -> object:
    # A fact the source states in two places ("the operation ... Duration of the operation was 100 minutes") is
    # quoted as a list of its fragments; each fragment stays verbatim.
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return QUOTE_JOIN.join(v.strip() for v in value)
    return value


# The source's words a fact comes from: one verbatim passage, or a list of them.
Quote = Annotated[Text, BeforeValidator(_quote)]


class _Fact(_Model):
    """What every fact may carry: the source's words for it."""

    quote: Quote | None = None


class _Event(_Fact):
    time: TimeElement | None = None


# --- findings, measurements, results ---------------------------------------------------------------------


class Finding(_Event):
    """A sign, symptom or concern, present or explicitly absent ("no fever"), at no, one or several sites."""

    concept: Concept
    present: StrictBool
    body_site: Sites = []
    note: Text | None = None


class Measurement(_Event):
    """A measured size (one to three dimensions, largest first) or any other measured value (a knee flexion of
    60 deg, a blood pressure in mm[Hg]) with its interpretation and reference range."""

    concept: Concept
    dimensions: Annotated[list[Quantity], Field(max_length=3)] = []
    value: Quantity | None = None
    interpretation: Interpretation | None = None
    reference_range: ReferenceRange | None = None
    body_site: BodySite | None = None

    @property
    def maximum(self) -> Quantity:
        return self.dimensions[0]

    @property
    def additional(self) -> list[Quantity]:
        return self.dimensions[1:]

    @property
    def is_size(self) -> bool:
        return bool(self.dimensions)

    @model_validator(mode="after")
    def _size_or_value(self) -> Measurement:
        if bool(self.dimensions) == (self.value is not None):
            raise ValueError("dimensions: give either dimensions (a size) or value (any other measured value)")
        if self.dimensions:
            if self.interpretation is not None or self.reference_range is not None:
                raise ValueError("interpretation: a size has none; give value for a measured value")
            problem = case_v1.dimensions_problem(self.dimensions)
            if problem is not None:
                raise ValueError(f"dimensions: {problem}")
        elif self.value and self.reference_range and self.value.unit != self.reference_range.unit:
            raise ValueError("reference_range: value and reference_range must use the same unit")
        return self


class LabTest(case_v1.LabTest):
    """A laboratory result, as in 1.0, with its time and quote."""

    time: TimeElement | None = None
    quote: Quote | None = None


# --- diagnoses --------------------------------------------------------------------------------------------


class Diagnosis(_Event):
    """A diagnosis considered at some point of the case, at no, one or several sites; ``time`` is its onset."""

    id: Key
    concept: Concept
    body_site: Sites = []
    stage: ShortText | None = None  # as the source gives it ("Stage IIIB (T4N2M0)")
    # How the source settled it when no step of the case did (a diagnosis made on arrival, a complication the
    # patient had): a step's assessment, or the final diagnosis, take precedence.
    status: Literal["confirmed", "provisional", "refuted"] | None = None
    note: Text | None = None


AssessmentStatus = Literal["considered", "excluded", "confirmed", "provisional"]


class Assessment(_Fact):
    """What a step did to one diagnosis: kept it in the differential, excluded, confirmed or provisionally
    confirmed it."""

    diagnosis: Key  # a Diagnosis.id of this case
    status: AssessmentStatus
    note: Text | None = None


# --- diagnostic steps -------------------------------------------------------------------------------------


class _Step(_Event):
    """A diagnostic step. ``performed: false`` records a step the source says was not done ("ultrasound was not
    done"), with ``not_done_reason`` when the source gives one: such a step has no results, so it needs none of
    the fields a performed step needs (``_NEEDED``) and refuses every result (``_RESULTS``)."""

    model_config = ConfigDict(json_schema_extra=_schema_performed)

    _NEEDED: ClassVar[tuple[str, ...]] = ()
    _RESULTS: ClassVar[tuple[str, ...]] = ("performer", "findings", "measurements", "assessment", "impression")

    kind: str  # narrowed to a Literal by each kind of step (the union's discriminator)
    id: Key
    # The order the source gives; optional, as a source may not say whether the labs came before the X-ray.
    # Steps are listed in the source's order either way.
    order: Annotated[StrictInt, Field(ge=1, le=1000)] | None = None
    performed: StrictBool = True
    not_done_reason: Text | None = None
    performer: ShortText | None = None  # as the source names it; never a made-up name
    # The step's own name when the source gives one ("18-FDG PET-CT", "EGFR mutation test"); else its kind's.
    concept: Concept | None = None
    body_site: BodySite | None = None
    findings: list[Finding] = []
    measurements: list[Measurement] = []
    assessment: list[Assessment] = []  # what this step did to each diagnosis
    impression: Text | None = None  # the source's words for the conclusion at this step

    @property
    def label(self) -> str:
        return self.concept.text if self.concept is not None else STEP_LABELS[self.kind]

    @property
    def title(self) -> str:
        """The step and where, in words: "Ultrasound of the right forearm"."""
        return f"{self.label} of the {self.body_site.label}" if self.body_site is not None else self.label

    @property
    def held(self) -> list[Assessment]:
        """The diagnoses this step left standing (not excluded)."""
        return [a for a in self.assessment if a.status != "excluded"]

    @model_validator(mode="after")
    def _performed_or_not(self) -> _Step:
        case_v1.check_performed(self)
        return self


class ClinicalExamination(_Step):
    kind: Literal["clinical_examination"]


ImagingKind = Literal[
    "xray", "ultrasound", "ct", "mri", "pet", "nuclear_medicine", "mammography", "fluoroscopy", "angiography"
]
IMAGING_KINDS: frozenset[str] = frozenset(get_args(ImagingKind))


class ImagingStep(_Step):
    _RESULTS = (*_Step._RESULTS, "conclusion", "figure")
    kind: ImagingKind
    conclusion: Text | None = None
    figure: Figure | None = None


class LaboratoryStep(_Step):
    _NEEDED = ("tests",)
    _RESULTS = (*_Step._RESULTS, "tests")
    kind: Literal["laboratory"]
    panel: Concept | None = None  # the panel's name when the source gives one ("Liver function tests")
    tests: list[LabTest] = []


PathologyKind = Literal["histopathology", "cytology", "genetic_test"]
PATHOLOGY_KINDS: frozenset[str] = frozenset(get_args(PathologyKind))


class PathologyStep(_Step):
    """Histopathology, cytology or a genetic test: on a specimen, with a diagnosis and a conclusion when given."""

    _RESULTS = (*_Step._RESULTS, "specimen", "microscopic", "diagnosis", "conclusion")
    kind: PathologyKind
    specimen: Key | None = None  # a Specimen.id of this case
    microscopic: Text | None = None
    diagnosis: Concept | None = None
    conclusion: Text | None = None


class OtherStep(_Step):
    """Endoscopy, or any other diagnostic procedure (an ECG, an EEG, spirometry), named by ``concept``."""

    _RESULTS = (*_Step._RESULTS, "conclusion")
    kind: Literal["endoscopy", "other"]
    conclusion: Text | None = None

    @model_validator(mode="after")
    def _named(self) -> OtherStep:
        if self.kind == "other" and self.concept is None:
            raise ValueError("concept: name the diagnostic procedure (e.g. concept: {text: Electrocardiogram})")
        return self


DiagnosticStep = Annotated[
    ClinicalExamination | ImagingStep | LaboratoryStep | PathologyStep | OtherStep,
    Field(discriminator="kind"),
]
DiagnosticStepType = ClinicalExamination | ImagingStep | LaboratoryStep | PathologyStep | OtherStep

# Kept for readers of 1.0 names.
HistopathologyStep = PathologyStep


# --- patient information ------------------------------------------------------------------------------------


class HistoryItem(_Event):
    """Medical or surgical history, or a comorbidity; ``time`` is its onset or when it happened."""

    id: Key
    condition: Concept
    # false: the source says the patient does not have it ("no significant past medical history").
    present: StrictBool = True
    body_site: Sites = []
    clinical_status: Literal["active", "inactive", "resolved"] | None = None
    note: Text | None = None

    @model_validator(mode="after")
    def _status_of_what_is_present(self) -> HistoryItem:
        if not self.present and (self.clinical_status is not None or self.time is not None):
            raise ValueError(
                "clinical_status: a condition the patient does not have has no status and no onset; remove them, "
                "or remove present: false"
            )
        return self


class FamilyHistoryItem(_Fact):
    id: Key
    relationship: Concept  # {text: mother}; key from the relationship table when coded
    condition: Concept | None = None
    present: StrictBool = True  # false: the source says the relative does not have it
    note: Text | None = None


class SocialHistoryItem(_Event):
    """Occupation, smoking, alcohol, drugs, living situation, sport: what (``concept``) and the answer."""

    id: Key
    concept: Concept
    value: Text


class Presentation(_Event):
    """Why the patient came; ``time`` is when, if the source gives it (else it is the case's reference point)."""

    complaint: Concept | None = None
    body_site: Sites = []
    duration: Duration | None = None  # how long the patient had it before presenting
    course: Text | None = None
    suspected: list[Key] = []  # Diagnosis ids suspected at presentation
    findings: list[Finding] = []
    measurements: list[Measurement] = []  # measured at presentation: weight, height, vital signs


class Patient(_Fact):
    # The source's own patient id, when it has one (registries do). With it, cases of the same patient share
    # one Patient resource.
    identifier: PatientIdentifier | None = None
    sex: Literal["female", "male", "other", "unknown"] | None = None
    age_at_presentation: Age | None = None

    @property
    def title(self) -> str:
        """ "Patient (female, 26 years at presentation)", with what the source gives."""
        parts = [
            self.sex,
            f"{self.age_at_presentation.value} {self.age_at_presentation.unit} at presentation"
            if self.age_at_presentation
            else None,
        ]
        given = ", ".join(p for p in parts if p)
        return f"Patient ({given})" if given else "Patient"


# --- treatment, follow-up -----------------------------------------------------------------------------------


class Procedure(_Event):
    id: Key
    concept: Concept
    body_site: Sites = []  # one site or several ("a hip and inguinal mass excision")
    # As the source says; absent, the mapping writes "unknown": a procedure the source only names must not read
    # as done.
    status: Literal["completed", "in-progress", "not-done", "stopped"] | None = None
    outcome: ShortText | None = None
    reason: Text | None = None
    duration: Duration | None = None  # how long it took ("the operation lasted 100 minutes")
    intent: Text | None = None
    response: Text | None = None
    adverse_events: list[Text] = []


class Medication(_Event):
    """A medication the patient took at presentation (``at_presentation``) or was given as treatment."""

    id: Key
    concept: Concept
    dose: Quantity | None = None
    route: Concept | None = None
    frequency: ShortText | None = None
    duration: Duration | None = None
    # not-taken: the source says it was not given or taken ("N2O was not used"; "she took no medication").
    status: Literal["active", "completed", "stopped", "intended", "not-taken", "unknown"] | None = None
    at_presentation: StrictBool = False
    intent: Text | None = None
    response: Text | None = None
    adverse_events: list[Text] = []


class Management(_Event):
    """Conservative management, a plan, advice, physiotherapy, a follow-up plan."""

    id: Key
    concept: Concept
    status: Literal["planned", "active", "completed", "stopped", "unknown"] | None = None
    intent: Text | None = None
    response: Text | None = None


class Outcome(_Event):
    """A follow-up result: what was assessed, the result, and who assessed it."""

    id: Key
    concept: Concept
    result: Text
    assessed_by: Literal["clinician", "patient"] | None = None


class Specimen(case_v1.Specimen):
    quote: Quote | None = None


class FinalDiagnosis(_Fact):
    diagnosis: Key  # a Diagnosis.id of this case
    verification: Literal["confirmed", "provisional"]
    established_by: Key | None = None  # the DiagnosticStep.id that settled it
    possible_cause: PossibleCause | None = None
    note: Text | None = None


class Statement(_Fact):
    text: Text


class Consent(_Fact):
    statement: Text


class Unrepresented(_Model):
    """A fact of the source the model cannot hold, and why: kept so nothing is lost silently."""

    quote: Text
    why: Text


class Source(case_v1.Source):
    """Where the case comes from, as in 1.0, with a PubMed id. Every output resource's Provenance points here."""

    pmid: Annotated[str, Field(pattern=r"^[1-9]\d{0,8}$")] | None = None

    @model_validator(mode="after")
    def _locatable(self) -> Source:  # replaces 1.0's check of the same name: a PubMed id locates it too
        if self.kind == "publication" and not (self.doi or self.pmid or self.url):
            raise ValueError("a publication needs a doi, a pmid or a url")
        return self

    @property
    def pmid_line(self) -> str | None:
        return f"PubMed: PMID {self.pmid}." if self.pmid else None

    @property
    def link(self) -> str | None:
        if self.doi:
            return f"https://doi.org/{self.doi}"
        if self.pmid and not self.url:
            return f"https://pubmed.ncbi.nlm.nih.gov/{self.pmid}/"
        return self.url


# --- the case -------------------------------------------------------------------------------------------------

DiagnosisStatus = Literal["differential", "refuted", "confirmed", "provisional"]


class DiagnosisView(_Model):
    """One diagnosis across the case: the steps that held it, and how it ended."""

    diagnosis: Diagnosis
    held_at: list[str]  # step ids, in order ("presentation" for the presenting suspicion)
    held_after: list[str]  # the same steps by name
    status: DiagnosisStatus
    decided_by: str | None  # the step that excluded or confirmed it
    decided_after: str | None  # that step by name

    @property
    def key(self) -> str:
        return self.diagnosis.id

    @property
    def concept(self) -> Concept:
        return self.diagnosis.concept


class CaseReport(_Model):
    # The schema the file was written in, when it was upgraded to this one (1.0): messages about the case then
    # say that their paths are those of the upgraded case.
    _upgraded_from: str | None = PrivateAttr(default=None)

    schema_version: Literal["2.0"]
    case_id: Key
    source: Source
    patient: Patient = Patient()
    history: list[HistoryItem] = []
    family_history: list[FamilyHistoryItem] = []
    social_history: list[SocialHistoryItem] = []
    presentation: Presentation = Presentation()
    diagnoses: list[Diagnosis] = []
    diagnostic_steps: list[DiagnosticStep] = []
    procedures: list[Procedure] = []
    medications: list[Medication] = []
    management: list[Management] = []
    specimens: list[Specimen] = []
    final_diagnosis: FinalDiagnosis | None = None
    outcomes: list[Outcome] = []
    patient_perspective: Statement | None = None
    consent: Consent | None = None
    unrepresented: list[Unrepresented] = []

    @model_validator(mode="after")
    def _consistent(self) -> CaseReport:
        # Cross-references and orderings a single field cannot check; each message names its path.
        _unique("diagnostic_steps", [s.id for s in self.diagnostic_steps])
        events = self._event_ids()
        _unique(
            "ids of events (steps, procedures, medications, management, outcomes, history, diagnoses, social history)",
            events,
        )
        _unique("family_history", [f.id for f in self.family_history])
        _unique("specimens", [s.id for s in self.specimens])
        tests = [t.id for s in self.diagnostic_steps if isinstance(s, LaboratoryStep) for t in s.tests]
        _unique("diagnostic_steps[].tests", tests)
        _ordered_steps(self.diagnostic_steps)
        if "presentation" in events:
            raise ValueError("ids: 'presentation' names the presentation in time elements; use another id")
        diagnosis_ids = {d.id for d in self.diagnoses}
        for i, did in enumerate(self.presentation.suspected):
            if did not in diagnosis_ids:
                raise ValueError(f"presentation.suspected[{i}]: no diagnosis with id {did!r}")
        specimen_ids = {s.id for s in self.specimens}
        procedure_ids = {p.id for p in self.procedures}
        for i, step in enumerate(self.diagnostic_steps):
            seen: set[str] = set()
            for j, a in enumerate(step.assessment):
                if a.diagnosis not in diagnosis_ids:
                    raise ValueError(
                        f"diagnostic_steps[{i}].assessment[{j}].diagnosis: no diagnosis with id {a.diagnosis!r}"
                    )
                if a.diagnosis in seen:
                    raise ValueError(
                        f"diagnostic_steps[{i}].assessment[{j}].diagnosis: step {step.id!r} assesses "
                        f"{a.diagnosis!r} twice"
                    )
                seen.add(a.diagnosis)
            if isinstance(step, PathologyStep) and step.specimen is not None and step.specimen not in specimen_ids:
                raise ValueError(f"diagnostic_steps[{i}].specimen: no specimen with id {step.specimen!r}")
        for i, spec in enumerate(self.specimens):
            if spec.collected_by is not None and spec.collected_by not in procedure_ids:
                raise ValueError(f"specimens[{i}].collected_by: no procedure with id {spec.collected_by!r}")
        duration = self.presentation.duration
        age = self.patient.age_at_presentation
        if duration is not None and age is not None and duration.days > age.days:
            raise ValueError("presentation.duration: longer than the patient's age at presentation")
        self._check_times(set(events))
        dx = self.final_diagnosis
        if dx is not None:
            if dx.diagnosis not in diagnosis_ids:
                raise ValueError(f"final_diagnosis.diagnosis: no diagnosis with id {dx.diagnosis!r}")
            step_ids = {s.id for s in self.diagnostic_steps}
            if dx.established_by is not None and dx.established_by not in step_ids:
                raise ValueError(f"final_diagnosis.established_by: no diagnostic step with id {dx.established_by!r}")
            if dx.established_by in {s.id for s in self.diagnostic_steps if not s.performed}:
                raise ValueError(
                    f"final_diagnosis.established_by: step {dx.established_by!r} was not performed; a step not done "
                    "settles nothing"
                )
            for s in self.diagnostic_steps:
                for a in s.assessment:
                    if a.diagnosis == dx.diagnosis and a.status == "excluded":
                        raise ValueError(
                            f"final_diagnosis.diagnosis: {dx.diagnosis!r} is the final diagnosis, but step {s.id!r} "
                            "excludes it"
                        )
            cause = dx.possible_cause
            if cause is not None and cause.history not in {h.id for h in self.history}:
                raise ValueError(f"final_diagnosis.possible_cause.history: no history item with id {cause.history!r}")
        return self

    def _event_ids(self) -> list[str]:
        return [
            *(s.id for s in self.diagnostic_steps),
            *(p.id for p in self.procedures),
            *(m.id for m in self.medications),
            *(m.id for m in self.management),
            *(o.id for o in self.outcomes),
            *(h.id for h in self.history),
            *(d.id for d in self.diagnoses),
            *(s.id for s in self.social_history),  # "on the 8th morning after the earthquake"
        ]

    def _check_times(self, events: set[str]) -> None:
        """Every ``relative.to`` names the presentation or an event of this case."""
        stack: list[tuple[object, str]] = [(self, "")]
        while stack:
            node, path = stack.pop()
            if isinstance(node, TimeElement):
                for target in node.events():
                    if target not in events:
                        raise ValueError(
                            f"{path}: the time is relative to {target!r}, which no event of this case has as id"
                        )
            elif isinstance(node, BaseModel):
                for name in _time_fields(type(node)):
                    value = getattr(node, name)
                    if value is not None:
                        stack.append((value, f"{path}.{name}" if path else name))
            elif isinstance(node, list):
                stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))

    # --- derived views used by the mappings (pure functions of the case) -------------------------------

    @property
    def present_history(self) -> list[HistoryItem]:
        return [h for h in self.history if h.present]

    @property
    def absent_history(self) -> list[HistoryItem]:
        return [h for h in self.history if not h.present]

    @property
    def upgraded_from(self) -> str | None:
        return self._upgraded_from

    @cached_property
    def diagnosis_by_id(self) -> dict[str, Diagnosis]:
        return {d.id: d for d in self.diagnoses}

    @cached_property
    def final(self) -> Diagnosis | None:
        """The final diagnosis's entity."""
        return self.diagnosis_by_id[self.final_diagnosis.diagnosis] if self.final_diagnosis else None

    @cached_property
    def differentials(self) -> list[DiagnosisView]:
        """Every diagnosis, once each, with the steps that held it and how it ended.

        The final diagnosis takes its verification. Otherwise a diagnosis a step excluded is refuted (by that
        step), one a step confirmed is confirmed, and every other stays a differential: nothing is refuted
        because another diagnosis was confirmed, and nothing is matched by wording.
        """
        labels = {"presentation": STEP_LABELS["presentation"]} | {s.id: s.label for s in self.diagnostic_steps}
        held: dict[str, list[str]] = {d.id: [] for d in self.diagnoses}
        decided: dict[str, tuple[str, DiagnosisStatus]] = {}
        for did in self.presentation.suspected:
            if "presentation" not in held[did]:
                held[did].append("presentation")
        for s in self.performed_steps:
            for a in s.assessment:
                if a.status == "excluded":
                    decided[a.diagnosis] = (s.id, "refuted")
                    continue
                if s.id not in held[a.diagnosis]:
                    held[a.diagnosis].append(s.id)
                if a.status in ("confirmed", "provisional"):
                    decided[a.diagnosis] = (s.id, a.status)
        dx = self.final_diagnosis
        views = []
        for d in self.diagnoses:
            by, status = decided.get(d.id, (None, d.status or "differential"))
            if dx is not None and d.id == dx.diagnosis:
                status, by = dx.verification, dx.established_by or by
            views.append(
                DiagnosisView(
                    diagnosis=d,
                    held_at=held[d.id],
                    held_after=[labels[h] for h in held[d.id]],
                    status=status,
                    decided_by=by,
                    decided_after=labels.get(by) if by else None,
                )
            )
        return views

    @property
    def suspected_diagnoses(self) -> list[Diagnosis]:
        return [self.diagnosis_by_id[d] for d in self.presentation.suspected]

    @property
    def suspected_texts(self) -> list[str]:
        return [d.concept.text for d in self.suspected_diagnoses]

    @property
    def open_differentials(self) -> list[DiagnosisView]:
        """Every diagnosis but the final one (that one has its own Condition)."""
        final = self.final_diagnosis.diagnosis if self.final_diagnosis else None
        return [d for d in self.differentials if d.key != final]

    @cached_property
    def steps(self) -> list[StepView]:
        """Every step performed with what the mappings need beside it: the step performed before it, and its
        findings and measurements with their resource keys."""
        out = []
        previous: str | None = None
        for s in self.performed_steps:
            site = s.body_site
            findings = (
                []
                if isinstance(s, PathologyStep)  # these go into the pathology report
                else [
                    StepFinding(
                        step_id=s.id, kind=s.kind, index=i, finding=f, body_site=f.body_site or ([site] if site else [])
                    )
                    for i, f in enumerate(s.findings)
                ]
            )
            measurements = [
                StepMeasurement(step_id=s.id, kind=s.kind, index=i, measurement=m, body_site=m.body_site or site)
                for i, m in enumerate(s.measurements)
            ]
            out.append(StepView(step=s, previous_id=previous, findings=findings, measurements=measurements))
            previous = s.id
        return out

    @cached_property
    def performed_steps(self) -> list[DiagnosticStepType]:
        """The steps that were done: the diagnostic path (the steps not done are Procedures, not-done)."""
        return [s for s in self.diagnostic_steps if s.performed]

    @cached_property
    def not_done_steps(self) -> list[DiagnosticStepType]:
        return [s for s in self.diagnostic_steps if not s.performed]

    @cached_property
    def imaging_views(self) -> list[StepView]:
        return [v for v in self.steps if isinstance(v.step, ImagingStep)]

    @cached_property
    def lab_tests(self) -> list[LabTest]:
        return [t for s in self.diagnostic_steps if isinstance(s, LaboratoryStep) for t in s.tests]

    @cached_property
    def histopathology_steps(self) -> list[PathologyStep]:
        return [s for s in self.performed_steps if isinstance(s, PathologyStep)]

    @cached_property
    def measurements(self) -> list[StepMeasurement]:
        at_presentation = [
            StepMeasurement(step_id="presentation", kind="presentation", index=i, measurement=m, body_site=m.body_site)
            for i, m in enumerate(self.presentation.measurements)
        ]
        return at_presentation + [m for v in self.steps for m in v.measurements]

    @property
    def presentation_measurements(self) -> list[StepMeasurement]:
        return [m for m in self.measurements if m.step_id == "presentation"]

    @cached_property
    def event_names(self) -> dict[str, str]:
        """Each event's name by its id, for times relative to it ("2 weeks after Surgical excision")."""
        names = {"presentation": "presentation"}
        names |= {s.id: s.title for s in self.diagnostic_steps}
        for items in (self.procedures, self.medications, self.management, self.outcomes, self.diagnoses):
            names |= {i.id: i.concept.text for i in items}
        names |= {h.id: h.condition.text for h in self.history}
        names |= {s.id: s.value for s in self.social_history}
        # Mid-sentence: "after excision of the lesion", but "after CT of the chest" and "after MRI".
        return {k: v[:1].lower() + v[1:] if v[1:2].islower() else v for k, v in names.items()}

    @cached_property
    def step_findings(self) -> list[StepFinding]:
        return [f for v in self.steps for f in v.findings]

    @cached_property
    def procedure_views(self) -> list[ProcedureView]:
        out = []
        for p in self.procedures:
            specimens = [s.id for s in self.specimens if s.collected_by == p.id]
            reports = [s.id for s in self.histopathology_steps if s.specimen in specimens]
            out.append(ProcedureView(procedure=p, specimen_ids=specimens, report_step_ids=reports))
        return out

    @cached_property
    def specimen_views(self) -> list[SpecimenView]:
        procedures = {p.id: p for p in self.procedures}
        return [
            SpecimenView(specimen=s, collected_by=procedures.get(s.collected_by) if s.collected_by else None)
            for s in self.specimens
        ]


_EXAM_KINDS = frozenset({"clinical_examination", "presentation"})


class _StepItem(_Model):
    """Something a step produced (a finding, a measurement), with the step it belongs to."""

    step_id: str
    kind: str
    index: int

    @property
    def key(self) -> str:
        return f"{self.step_id}-{self.index + 1}"

    @property
    def category(self) -> str | None:
        return "exam" if self.kind in _EXAM_KINDS else "imaging" if self.kind in IMAGING_KINDS else None


class StepMeasurement(_StepItem):
    measurement: Measurement
    body_site: BodySite | None


class StepFinding(_StepItem):
    finding: Finding
    body_site: list[BodySite]


class StepView(_Model):
    step: DiagnosticStep
    previous_id: str | None
    findings: list[StepFinding]
    measurements: list[StepMeasurement]


class ProcedureView(_Model):
    procedure: Procedure
    specimen_ids: list[str]
    report_step_ids: list[str]


class SpecimenView(_Model):
    specimen: Specimen
    collected_by: Procedure | None


def _ordered_steps(steps: list[DiagnosticStepType]) -> None:
    """Order numbers, where given, are each a step's own and rise in the listed order; the message names the
    steps involved."""
    first: dict[int, str] = {}
    last: DiagnosticStepType | None = None
    for i, step in enumerate(steps):
        if step.order is None:
            continue
        if step.order in first:
            raise ValueError(
                f"diagnostic_steps[{i}].order: steps {first[step.order]!r} and {step.id!r} both have order "
                f"{step.order}; give each step its own order number"
            )
        first[step.order] = step.id
        if last is not None and last.order is not None and step.order < last.order:
            raise ValueError(
                f"diagnostic_steps[{i}].order: step {step.id!r} (order {step.order}) is listed after step "
                f"{last.id!r} (order {last.order}); list the steps in their order"
            )
        last = step
