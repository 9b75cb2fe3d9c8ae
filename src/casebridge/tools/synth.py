"""Synthetic case reports in the case schema 1.0, for tests, demos and benchmarks of registry ingestion.

``generate(n, seed=...)`` yields ``SynthCase`` items one at a time (100,000 cases are never held at once).
Case ``i`` is drawn from ``random.Random(f"{seed}:{i}")`` alone, so the same (seed, i) always gives the
same case and ``generate(10)`` is a prefix of ``generate(1000)``. Orthogonal choices (is it invalid, is it a
follow-up of an earlier patient) use their own per-case streams, so turning them on leaves the clinical
content of every case unchanged.

The cases are clinically plausible, not real: several conditions that present as a (often calcified)
soft-tissue lump of a limb, with ages, sites, symptoms, imaging, laboratory patterns and histopathology that
fit each. Patients are identified only by a generated identifier (``urn:casebridge:synth:patient``); there
are no names, addresses or birth dates. Vocabulary keys are those of ``mappings/codes``; a concept with no
key there travels as text.

With ``repeat_patient_share`` > 0 that share of cases are follow-ups: they reuse the patient identifier (and
sex) of an earlier case, a little older, with the same condition (a registry's recurrence or second lesion).
With ``invalid_share`` > 0 that share of cases carry one deliberate defect (``SynthCase.defect``) that the
reader refuses (``refused_at="schema"``) or that only conversion refuses (``refused_at="conversion"``).

Pure: no I/O, no FastAPI, no httpx.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Doc = dict[str, Any]
RefusedAt = Literal["schema", "conversion"]

PATIENT_SYSTEM = "urn:casebridge:synth:patient"
MAX_SEED = 2**63 - 1  # keeps case ids within the 64 characters of a Key
_FOLLOW_UP_WINDOW = 500  # a follow-up refers to one of the previous 500 cases


@dataclass(frozen=True)
class SynthCase:
    name: str  # a file stem: synth-000042
    doc: Doc  # the case, JSON-ready
    valid: bool
    defect: str | None = None  # what is wrong, for invalid cases
    refused_at: RefusedAt | None = None  # where an invalid case is refused: the reader, or conversion

    @property
    def patient_identifier(self) -> dict[str, str] | None:
        patient = self.doc.get("patient")
        ident = patient.get("identifier") if isinstance(patient, dict) else None
        return dict(ident) if isinstance(ident, dict) else None


def case_name(i: int) -> str:
    return f"synth-{i:06d}"


def generate(
    n: int,
    *,
    seed: int = 0,
    invalid_share: float = 0.0,
    repeat_patient_share: float = 0.0,
) -> Iterator[SynthCase]:
    """``n`` synthetic cases, lazily. Raises ValueError for arguments out of range (before yielding)."""
    if n < 0:
        raise ValueError("n must be 0 or more")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be between 0 and {MAX_SEED}")
    for name, share in (("invalid_share", invalid_share), ("repeat_patient_share", repeat_patient_share)):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    return (
        synth_case(i, seed=seed, invalid_share=invalid_share, repeat_patient_share=repeat_patient_share)
        for i in range(n)
    )


def synth_case(i: int, *, seed: int = 0, invalid_share: float = 0.0, repeat_patient_share: float = 0.0) -> SynthCase:
    """Case ``i`` of the series ``seed``: depends on nothing else."""
    rng = _rng(f"{seed}:{i}")
    head = _head(rng)
    root = _patient_root(i, seed, repeat_patient_share)
    if root != i:
        # A follow-up: the earlier patient's sex and condition, some years later.
        first = _head(_rng(f"{seed}:{root}"))
        gap_days = rng.randint(60, 4 * 365)
        head = _Head(first.condition, first.sex, _older(first.age, gap_days))
    doc = _build(rng, head, seed=seed, i=i, patient_value=f"S{seed}-P{root:06d}", follow_up=root != i)
    bad = _rng(f"{seed}:{i}:invalid")
    if bad.random() < invalid_share:
        defect, refused_at = _spoil(doc, bad)
        return SynthCase(case_name(i), doc, False, defect, refused_at)
    return SynthCase(case_name(i), doc, True)


def _rng(stream: str) -> random.Random:
    # Reproducible test data, not secrets: a seeded PRNG is what is wanted.
    return random.Random(stream)  # noqa: S311


def _patient_root(i: int, seed: int, share: float) -> int:
    """The case whose patient case ``i`` belongs to: itself, or (follow-ups) an earlier first case."""
    j = i
    while j > 0 and share > 0:
        r = _rng(f"{seed}:{j}:repeat")
        if r.random() >= share:
            break
        j = r.randrange(max(0, j - _FOLLOW_UP_WINDOW), j)
    return j


# --- clinical material ----------------------------------------------------------------------------------


def _c(text: str, key: str | None = None) -> Doc:
    return {"key": key, "text": text} if key else {"text": text}


@dataclass(frozen=True)
class _Site:
    text: str
    key: str | None
    paired: bool
    region: Literal["forearm", "upper", "lower", "trunk"]


SITES = {
    s.text: s
    for s in (
        _Site("forearm", "forearm", True, "forearm"),
        _Site("upper arm", None, True, "upper"),  # no body-site key: travels as text
        _Site("elbow", "elbow", True, "upper"),
        _Site("wrist", "wrist", True, "upper"),
        _Site("hand", "hand", True, "upper"),
        _Site("finger", None, True, "upper"),
        _Site("shoulder", "shoulder", True, "upper"),
        _Site("thigh", "thigh", True, "lower"),
        _Site("knee", "knee", True, "lower"),
        _Site("lower leg", "lower_leg", True, "lower"),
        _Site("ankle", None, True, "lower"),
        _Site("foot", "foot", True, "lower"),
        _Site("heel", None, True, "lower"),
        _Site("hip", None, True, "lower"),
        _Site("buttock", None, True, "trunk"),
        _Site("upper back", None, False, "trunk"),
    )
}

# Concepts with their vocabulary keys (mappings/codes/concepts.csv); text-only where the tables have none.
SOFT_TISSUE_TUMOUR = _c("Soft tissue tumour", "soft_tissue_tumour")
LIPOMA = _c("Lipoma", "lipoma")
DYSTROPHIC = _c("Dystrophic calcification", "dystrophic_calcification")
METASTATIC = _c("Metastatic calcification", "metastatic_calcification")
CALCINOSIS_CUTIS = _c("Calcinosis cutis", "calcinosis_cutis")
MYOSITIS = _c("Myositis ossificans", "myositis_ossificans")
HETEROTOPIC = _c("Post-traumatic heterotopic ossification", "post_traumatic_heterotopic_ossification")
CALCIFIED_GRANULOMA = _c("Calcified granuloma", "calcified_granuloma")
CALCIFIED_CYST = _c("Calcified cyst", "calcified_cyst")
EPIDERMAL_CYST = _c("Epidermal cyst", "epidermal_cyst")
CALCIFIC_TENDINITIS = _c("Calcific tendinitis", "calcific_tendinitis")
BENIGN_NEOPLASM = _c("Benign soft tissue neoplasm", "benign_neoplasm")
TUMORAL = _c("Tumoral calcinosis")
HAEMATOMA = _c("Calcified haematoma")
PILOMATRICOMA = _c("Pilomatricoma")
SARCOMA = _c("Soft tissue sarcoma")
SYNOVIAL_SARCOMA = _c("Synovial sarcoma")
OSTEOSARCOMA = _c("Extraskeletal osteosarcoma")
LIPOSARCOMA = _c("Well-differentiated liposarcoma")
GOUT = _c("Gouty tophus")
PHLEBOLITHS = _c("Vascular malformation with phleboliths")
ABSCESS = _c("Soft tissue abscess")


@dataclass(frozen=True)
class _History:
    id: str
    condition: Doc
    status: Literal["active", "inactive", "resolved"]
    note: str | None = None
    cause: str | None = None  # why it may have caused the condition (final_diagnosis.possible_cause)


@dataclass(frozen=True)
class _Condition:
    name: str
    dx: Doc
    weight: float
    ages: tuple[int, int]  # years
    female: float  # share of female patients
    sites: dict[str, float]
    size_cm: tuple[float, float]
    duration_days: tuple[int, int]
    calcified: bool
    pain: float  # probabilities of symptoms
    growth: float
    redness: float
    suspected: list[Doc]
    differentials: list[Doc]
    complaints: list[Doc]
    exam: list[str]
    imaging: dict[str, tuple[float, list[str]]]  # kind -> (probability, conclusions)
    lab: tuple[float, str]  # (probability, pattern)
    biopsy: float
    histology: tuple[str, list[tuple[Doc, bool]], str]  # microscopic, findings, conclusion
    history: list[tuple[float, _History]] = field(default_factory=list)
    provisional_by: tuple[str, ...] = ("mri", "ct", "ultrasound", "xray", "laboratory")
    imaging_confirms: float = 0.0  # share of cases without biopsy whose diagnosis imaging confirms
    bilateral: bool = False
    infant_share: float = 0.0

    @property
    def skin(self) -> bool:  # a lesion of the skin: the forearm's skin has its own body-site key
        return self.name in ("calcinosis-cutis", "pilomatricoma")


_NO_ATYPIA = [(_c("Atypical cells", "atypical_cells"), False), (_c("Signs of malignancy", "malignancy"), False)]
_CALCIUM_SALTS = (_c("Deposition of calcium salts", "calcium_salt_deposition"), True)
_INJURY = _History(
    "previous-injury",
    _c("Previous blunt injury at the site"),
    "resolved",
    "A blow to the same site some years before; no fracture was reported.",
    "Calcium salts deposit in tissue damaged by the earlier injury.",
)
_HAND_FRACTURE = _History(
    "previous-fracture",
    _c("Previous hand fracture", "fracture_of_hand"),
    "resolved",
    "On the same side as the swelling.",
    "Dystrophic calcification occurs where calcium deposits in damaged tissue, as after a fracture.",
)
_CKD = _History(
    "chronic-kidney-disease",
    _c("Chronic kidney disease, stage 5"),
    "active",
    "On maintenance haemodialysis, taking a calcium-based phosphate binder.",
    "A raised calcium-phosphate product deposits calcium salts in normal tissue.",
)
_SCLERODERMA = _History(
    "systemic-sclerosis",
    _c("Systemic sclerosis"),
    "active",
    "Limited cutaneous systemic sclerosis, diagnosed some years earlier.",
    "Calcinosis cutis is a known feature of systemic sclerosis.",
)
_HEEL_PRICK = _History(
    "heel-prick-sampling",
    _c("Repeated heel-prick blood sampling in the neonatal period"),
    "resolved",
    None,
    "Calcified nodules can form at heel-prick sites in infants.",
)
_ANTICOAGULATION = _History(
    "anticoagulation",
    _c("Atrial fibrillation on oral anticoagulation"),
    "active",
    "A fall onto the site was followed by a large bruise.",
    "An organising haematoma after a fall while anticoagulated may calcify.",
)
_SPORTS_INJURY = _History(
    "muscle-injury",
    _c("Muscle contusion during sport"),
    "resolved",
    "A direct blow to the muscle some weeks before the swelling appeared.",
    "Myositis ossificans typically follows a muscle contusion.",
)
_FAMILY_TC = _History(
    "family-history",
    _c("Similar swellings in a sibling"),
    "active",
    "A sibling had periarticular calcified masses excised in childhood.",
    "Familial (hyperphosphataemic) tumoral calcinosis runs in families.",
)
_INJECTIONS = _History(
    "injections",
    _c("Repeated intramuscular injections at the site"),
    "resolved",
    None,
    "Injection sites are a known place for dystrophic calcification.",
)
_UNRELATED = [
    _History("diabetes", _c("Type 2 diabetes mellitus"), "active", "Controlled with oral medication."),
    _History("hypertension", _c("Essential hypertension"), "active"),
    _History("hypothyroidism", _c("Hypothyroidism"), "active", "On thyroxine replacement."),
    _History("appendicectomy", _c("Appendicectomy"), "resolved"),
]

CONDITIONS = [
    _Condition(
        name="dystrophic",
        dx=DYSTROPHIC,
        weight=0.22,
        ages=(14, 82),
        female=0.55,
        sites={
            "forearm": 4,
            "hand": 1,
            "upper arm": 2,
            "thigh": 2,
            "lower leg": 2,
            "knee": 1,
            "buttock": 1,
            "shoulder": 1,
        },
        size_cm=(0.3, 3.5),
        duration_days=(90, 10 * 365),
        calcified=True,
        pain=0.2,
        growth=0.3,
        redness=0.1,
        suspected=[SOFT_TISSUE_TUMOUR, BENIGN_NEOPLASM],
        differentials=[
            SOFT_TISSUE_TUMOUR,
            LIPOMA,
            CALCIFIED_GRANULOMA,
            CALCIFIED_CYST,
            MYOSITIS,
            HETEROTOPIC,
            EPIDERMAL_CYST,
        ],
        complaints=[_c("Localized swelling", "swelling"), _c("Hard swelling", "swelling"), _c("Firm lump")],
        exam=["Movable mass at the affected site", "Firm, non-tender nodule fixed to the skin", "Hard, mobile lump"],
        imaging={
            "xray": (
                0.8,
                ["A small well-defined radiopaque calcified lesion.", "Amorphous soft-tissue calcification."],
            ),
            "ultrasound": (0.65, ["A small well defined heteroechoic lesion with internal calcification."]),
            "ct": (0.2, ["A dense, well-circumscribed calcified focus in the subcutaneous tissue."]),
            "mri": (0.15, ["A low-signal nodule on all sequences, consistent with calcification."]),
        },
        lab=(0.75, "normal"),
        biopsy=0.75,
        histology=(
            "Deposition of calcium salts in fibrotic, degenerate tissue; no atypical cells are seen.",
            [_CALCIUM_SALTS, *_NO_ATYPIA],
            "Dystrophic calcification, with no atypical cells and no signs of malignancy.",
        ),
        history=[(0.25, _INJURY), (0.1, _INJECTIONS)],
    ),
    _Condition(
        name="lipoma",
        dx=LIPOMA,
        weight=0.16,
        ages=(25, 78),
        female=0.5,
        sites={"forearm": 2, "upper arm": 2, "shoulder": 2, "thigh": 2, "upper back": 2, "buttock": 1, "lower leg": 1},
        size_cm=(1.5, 10.0),
        duration_days=(180, 12 * 365),
        calcified=False,
        pain=0.1,
        growth=0.6,
        redness=0.02,
        suspected=[SOFT_TISSUE_TUMOUR, LIPOMA],
        differentials=[SOFT_TISSUE_TUMOUR, EPIDERMAL_CYST, LIPOSARCOMA, BENIGN_NEOPLASM],
        complaints=[_c("Soft swelling", "soft_tissue_swelling"), _c("Painless lump")],
        exam=["Soft, mobile, subcutaneous mass", "Soft, lobulated, non-tender mass that slips under the finger"],
        imaging={
            "ultrasound": (0.85, ["An oval, compressible subcutaneous lesion, isoechoic to fat, with no vascularity."]),
            "xray": (0.2, ["A radiolucent soft-tissue mass with no calcification."]),
            "mri": (0.35, ["A lesion that follows fat signal on all sequences, with thin septa and no enhancement."]),
            "ct": (0.1, ["A well-circumscribed fat-density lesion."]),
        },
        lab=(0.4, "normal"),
        biopsy=0.7,
        histology=(
            "Lobules of mature adipocytes separated by thin fibrous septa within a thin capsule; no lipoblasts.",
            [
                (_c("Mature adipocytes", "adipocytes"), True),
                (_c("Thin fibrous capsule", "fibrous_capsule"), True),
                *_NO_ATYPIA,
            ],
            "Lipoma, completely excised, with no atypical cells and no signs of malignancy.",
        ),
        history=[],
        provisional_by=("mri", "ultrasound", "ct", "xray"),
    ),
    _Condition(
        name="metastatic",
        dx=METASTATIC,
        weight=0.12,
        ages=(35, 86),
        female=0.45,
        sites={"thigh": 2, "hip": 2, "shoulder": 2, "elbow": 1, "hand": 1, "knee": 1},
        size_cm=(1.0, 6.0),
        duration_days=(30, 2 * 365),
        calcified=True,
        pain=0.3,
        growth=0.7,
        redness=0.1,
        suspected=[SOFT_TISSUE_TUMOUR],
        differentials=[SOFT_TISSUE_TUMOUR, TUMORAL, MYOSITIS, GOUT, DYSTROPHIC, CALCIFIC_TENDINITIS],
        complaints=[_c("Hard swelling", "swelling"), _c("Painful hard lump")],
        exam=["Hard, non-mobile mass", "Firm periarticular mass with restricted movement"],
        imaging={
            "xray": (0.9, ["A lobulated, amorphous calcified mass in the soft tissue, separate from the bone."]),
            "ultrasound": (0.3, ["A hyperechoic lesion with dense posterior acoustic shadowing."]),
            "ct": (0.35, ["Multiloculated calcific deposits in the periarticular soft tissue."]),
        },
        lab=(1.0, "ckd"),
        biopsy=0.2,
        histology=(
            "Amorphous deposits of calcium salts in otherwise normal connective tissue; no atypical cells.",
            [_CALCIUM_SALTS, *_NO_ATYPIA],
            "Metastatic calcification in the setting of a raised calcium-phosphate product.",
        ),
        history=[(0.9, _CKD)],
        provisional_by=("laboratory", "ct", "xray"),
    ),
    _Condition(
        name="calcinosis-cutis",
        dx=CALCINOSIS_CUTIS,
        weight=0.12,
        ages=(8, 75),
        female=0.7,
        sites={"forearm": 3, "finger": 3, "hand": 2, "elbow": 2, "knee": 1, "heel": 0.5},
        size_cm=(0.2, 2.0),
        duration_days=(30, 5 * 365),
        calcified=True,
        pain=0.4,
        growth=0.3,
        redness=0.3,
        suspected=[EPIDERMAL_CYST, BENIGN_NEOPLASM],
        differentials=[EPIDERMAL_CYST, GOUT, PILOMATRICOMA, CALCIFIED_GRANULOMA, DYSTROPHIC],
        complaints=[_c("Firm whitish nodules of the skin"), _c("Hard nodules under the skin", "swelling")],
        exam=["Firm, yellowish-white dermal nodules, some discharging chalky material", "Hard papules of the skin"],
        imaging={
            "xray": (0.7, ["Punctate and plaque-like calcifications in the dermis and subcutaneous tissue."]),
            "ultrasound": (0.4, ["Echogenic foci with posterior acoustic shadowing in the dermis."]),
        },
        lab=(0.7, "scleroderma"),
        biopsy=0.5,
        histology=(
            "Basophilic deposits of calcium in the dermis with a foreign-body giant-cell reaction.",
            [_CALCIUM_SALTS, (_c("Foreign-body giant-cell reaction"), True), *_NO_ATYPIA],
            "Calcinosis cutis.",
        ),
        history=[(0.5, _SCLERODERMA), (0.2, _INJURY)],
        provisional_by=("xray", "laboratory", "ultrasound"),
        imaging_confirms=0.3,
        bilateral=False,
        infant_share=0.12,
    ),
    _Condition(
        name="myositis-ossificans",
        dx=MYOSITIS,
        weight=0.12,
        ages=(10, 45),
        female=0.3,
        sites={"thigh": 5, "upper arm": 3, "buttock": 1, "lower leg": 1, "shoulder": 1},
        size_cm=(2.0, 8.0),
        duration_days=(14, 180),
        calcified=True,
        pain=0.8,
        growth=0.6,
        redness=0.2,
        suspected=[SOFT_TISSUE_TUMOUR, SARCOMA],
        differentials=[SOFT_TISSUE_TUMOUR, OSTEOSARCOMA, HAEMATOMA, HETEROTOPIC, ABSCESS, SYNOVIAL_SARCOMA],
        complaints=[_c("Painful swelling", "swelling"), _c("Tender lump in the muscle")],
        exam=["Tender, firm, intramuscular mass", "Warm, tender swelling with reduced range of movement"],
        imaging={
            "xray": (0.85, ["Peripheral, zonal calcification of a soft-tissue mass, separate from the bone."]),
            "ultrasound": (0.45, ["A hypoechoic intramuscular mass with a peripheral echogenic rim."]),
            "ct": (0.45, ["A mature peripheral rim of ossification with a less dense centre (zonal pattern)."]),
            "mri": (0.45, ["An intramuscular mass with surrounding oedema and a peripheral low-signal rim."]),
        },
        lab=(0.6, "inflammatory"),
        biopsy=0.3,
        histology=(
            "A zonal lesion: immature fibroblasts centrally, osteoid and mature lamellar bone peripherally.",
            [(_c("Zonal pattern of ossification"), True), *_NO_ATYPIA],
            "Myositis ossificans; no features of an osteosarcoma.",
        ),
        history=[(0.7, _SPORTS_INJURY)],
        provisional_by=("ct", "mri", "xray", "ultrasound"),
        imaging_confirms=0.4,
    ),
    _Condition(
        name="calcified-haematoma",
        dx=HAEMATOMA,
        weight=0.08,
        ages=(20, 88),
        female=0.5,
        sites={"thigh": 3, "lower leg": 3, "forearm": 1, "buttock": 1, "hip": 1},
        size_cm=(2.0, 9.0),
        duration_days=(60, 5 * 365),
        calcified=True,
        pain=0.4,
        growth=0.4,
        redness=0.1,
        suspected=[SOFT_TISSUE_TUMOUR, SARCOMA],
        differentials=[SOFT_TISSUE_TUMOUR, SARCOMA, MYOSITIS, DYSTROPHIC, ABSCESS],
        complaints=[_c("Swelling", "swelling"), _c("Slowly enlarging lump")],
        exam=["Firm, fluctuant mass with old bruising of the skin", "Firm, poorly mobile mass"],
        imaging={
            "xray": (0.6, ["A soft-tissue mass with a thin curvilinear rim of calcification."]),
            "ultrasound": (0.7, ["A complex cystic collection with echogenic, shadowing walls."]),
            "mri": (0.4, ["A heterogeneous collection with blood products and a low-signal calcified rim."]),
            "ct": (0.2, ["A fluid-density collection with peripheral calcification."]),
        },
        lab=(0.6, "inflammatory"),
        biopsy=0.7,
        histology=(
            "Organising blood clot with haemosiderin-laden macrophages and a calcified fibrous wall.",
            [(_c("Haemosiderin-laden macrophages"), True), _CALCIUM_SALTS, *_NO_ATYPIA],
            "Chronic organising haematoma with dystrophic calcification of its wall.",
        ),
        history=[(0.5, _ANTICOAGULATION), (0.3, _INJURY)],
    ),
    _Condition(
        name="tumoral-calcinosis",
        dx=TUMORAL,
        weight=0.06,
        ages=(5, 40),
        female=0.5,
        sites={"hip": 3, "shoulder": 3, "elbow": 2, "buttock": 1, "foot": 1},
        size_cm=(3.0, 15.0),
        duration_days=(60, 6 * 365),
        calcified=True,
        pain=0.2,
        growth=0.8,
        redness=0.05,
        suspected=[SOFT_TISSUE_TUMOUR],
        differentials=[SOFT_TISSUE_TUMOUR, METASTATIC, SYNOVIAL_SARCOMA, GOUT, MYOSITIS],
        complaints=[_c("Painless hard swelling", "swelling"), _c("Large lump near the joint")],
        exam=["Large, firm, lobulated periarticular mass", "Hard, non-tender mass over the joint"],
        imaging={
            "xray": (0.95, ["Lobulated, cloud-like periarticular calcified masses with no bone involvement."]),
            "ct": (0.5, ["Multiloculated calcified cystic masses with fluid-calcium levels."]),
            "mri": (0.2, ["Lobulated masses of low signal with fluid levels."]),
            "ultrasound": (0.2, ["Echogenic masses with dense shadowing."]),
        },
        lab=(0.9, "hyperphosphataemic"),
        biopsy=0.7,
        histology=(
            "Cystic spaces filled with amorphous calcified material lined by histiocytes and giant cells.",
            [_CALCIUM_SALTS, (_c("Foreign-body giant-cell reaction"), True), *_NO_ATYPIA],
            "Tumoral calcinosis.",
        ),
        history=[(0.3, _FAMILY_TC)],
        provisional_by=("ct", "xray", "laboratory"),
        imaging_confirms=0.0,
        bilateral=True,
    ),
    _Condition(
        name="calcific-tendinitis",
        dx=CALCIFIC_TENDINITIS,
        weight=0.07,
        ages=(30, 68),
        female=0.65,
        sites={"shoulder": 6, "wrist": 1, "elbow": 1, "hip": 1},
        size_cm=(0.5, 2.5),
        duration_days=(7, 365),
        calcified=True,
        pain=0.9,
        growth=0.1,
        redness=0.2,
        suspected=[SOFT_TISSUE_TUMOUR, CALCIFIC_TENDINITIS],
        differentials=[GOUT, METASTATIC, DYSTROPHIC, ABSCESS],
        complaints=[_c("Painful swelling", "swelling"), _c("Pain and swelling around the joint")],
        exam=["Point tenderness over the tendon with painful movement", "Tender swelling with a painful arc"],
        imaging={
            "xray": (0.9, ["A dense, homogeneous calcific deposit in the region of the tendon."]),
            "ultrasound": (0.7, ["A hyperechoic, shadowing deposit within the tendon."]),
            "mri": (0.15, ["A low-signal focus within the tendon with surrounding oedema."]),
        },
        lab=(0.3, "inflammatory"),
        biopsy=0.05,
        histology=(
            "Amorphous calcific material within degenerate tendon fibres; no atypical cells.",
            [_CALCIUM_SALTS, *_NO_ATYPIA],
            "Calcific tendinitis.",
        ),
        history=[],
        provisional_by=("ultrasound", "xray", "mri"),
        imaging_confirms=0.6,
    ),
    _Condition(
        name="pilomatricoma",
        dx=PILOMATRICOMA,
        weight=0.05,
        ages=(2, 19),
        female=0.55,
        sites={"upper arm": 4, "forearm": 2, "shoulder": 1, "thigh": 1},
        size_cm=(0.5, 3.0),
        duration_days=(30, 3 * 365),
        calcified=True,
        pain=0.1,
        growth=0.4,
        redness=0.2,
        suspected=[EPIDERMAL_CYST, BENIGN_NEOPLASM],
        differentials=[EPIDERMAL_CYST, CALCIFIED_CYST, CALCINOSIS_CUTIS, DYSTROPHIC],
        complaints=[_c("Hard lump under the skin", "swelling"), _c("Firm nodule of the skin")],
        exam=["Hard, mobile subcutaneous nodule with a bluish tinge of the overlying skin", "Firm, irregular nodule"],
        imaging={
            "ultrasound": (0.9, ["A well-defined subcutaneous lesion with an echogenic centre and shadowing."]),
            "xray": (0.3, ["Stippled calcification in a subcutaneous nodule."]),
        },
        lab=(0.15, "normal"),
        biopsy=0.9,
        histology=(
            "Basaloid cells maturing into anucleate shadow cells, with calcification and a giant-cell reaction.",
            [(_c("Shadow cells"), True), _CALCIUM_SALTS, *_NO_ATYPIA],
            "Pilomatricoma, completely excised.",
        ),
        history=[],
        provisional_by=("ultrasound", "xray"),
    ),
]
_WEIGHTS = [c.weight for c in CONDITIONS]

_IMAGING_ORDER = ("xray", "ultrasound", "ct", "mri")
_LABELS = {"xray": "X-ray", "ultrasound": "Ultrasound", "ct": "CT", "mri": "MRI"}
_FINDINGS_OF = {"laboratory": "laboratory", "clinical_examination": "clinical", **_LABELS}

# --- one case -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Age:
    value: int
    unit: Literal["years", "months"]

    @property
    def days(self) -> float:
        return self.value * (365.25 if self.unit == "years" else 30.44)


@dataclass(frozen=True)
class _Head:
    condition: _Condition
    sex: Literal["female", "male", "other", "unknown"]
    age: _Age


def _head(rng: random.Random) -> _Head:
    """The first draws of a case: its condition and its patient (also used to rebuild a follow-up's patient)."""
    cond = rng.choices(CONDITIONS, _WEIGHTS)[0]
    r = rng.random()
    sex: Literal["female", "male", "other", "unknown"] = (
        "unknown" if r < 0.02 else "other" if r < 0.025 else "female" if rng.random() < cond.female else "male"
    )
    if rng.random() < cond.infant_share:
        age = _Age(rng.randint(2, 20), "months")
    else:
        low, high = cond.ages
        age = _Age(round(rng.triangular(low, high, (low + high) / 2.5)), "years")
    return _Head(cond, sex, age)


def _older(age: _Age, days: int) -> _Age:
    total = age.days + days
    return _Age(int(total / 365.25), "years") if total >= 2 * 365.25 else _Age(int(total / 30.44), "months")


def _site(rng: random.Random, cond: _Condition, head: _Head) -> tuple[_Site, str | None]:
    if head.age.unit == "months" and cond.name == "calcinosis-cutis":
        site = SITES["heel"]  # calcified heel-prick nodules of infants
    else:
        names = list(cond.sites)
        site = SITES[rng.choices(names, [cond.sites[n] for n in names])[0]]
    side: str | None = None
    if site.paired:
        r = rng.random()
        side = (
            "bilateral"
            if cond.bilateral and r < 0.15
            else None
            if r < 0.18  # a few sources do not say which side
            else rng.choice(["left", "right"])
        )
    return site, side


def _body_site(site: _Site, side: str | None, *, skin: bool = False) -> Doc:
    # Fresh dicts every time: shared objects would come out as YAML aliases, which the reader refuses.
    if skin and site.key == "forearm":
        concept = _c("skin of the forearm", "forearm_skin")
    else:
        concept = _c(site.text, site.key)
    out: Doc = {"site": concept}
    if side:
        out["laterality"] = side
    return out


def _label(site: _Site, side: str | None) -> str:
    return (
        f"{side} {site.text}" if side and side != "bilateral" else f"{site.text}s on both sides" if side else site.text
    )


def _duration(rng: random.Random, cond: _Condition, age: _Age) -> Doc | None:
    if rng.random() < 0.1:
        return None  # not reported
    low, high = cond.duration_days
    days = min(rng.uniform(low, high), age.days * 0.9)
    if days >= 2 * 365:
        d: Doc = {"value": round(days / 365.25), "unit": "years"}
    elif days >= 60:
        d = {"value": max(1, round(days / 30.44)), "unit": "months"}
    elif days >= 14:
        d = {"value": max(1, round(days / 7)), "unit": "weeks"}
    else:
        d = {"value": max(1, round(days)), "unit": "days"}
    if rng.random() < 0.3:
        d["approximate"] = True
    return d


def _person(head: _Head) -> str:
    adult = head.age.unit == "years" and head.age.value >= 18
    if head.sex == "female":
        return "woman" if adult else "girl"
    if head.sex == "male":
        return "man" if adult else "boy"
    return "patient"


def _mass_concept(rng: random.Random, site: _Site, text: str) -> Doc:
    if site.region == "forearm" and rng.random() < 0.7:
        return _c(text, "mass_of_forearm")
    if site.region in ("upper", "forearm") and rng.random() < 0.5:
        return _c(text, "mass_of_upper_limb")
    return _c(text, rng.choice(["palpable_mass", "mass_of_soft_tissue"]))


def _size(rng: random.Random, base: float) -> list[Doc]:
    dims = [base * rng.uniform(0.9, 1.1)]
    for _ in range(rng.choice([0, 1, 1, 2])):
        dims.append(dims[-1] * rng.uniform(0.45, 0.95))
    digits = 2 if base < 1 else 1
    # Rounding keeps the order (largest first); the floor keeps every dimension above 0.
    return [{"value": max(round(d, digits), 0.1), "unit": "cm"} for d in dims]


def _differential(rng: random.Random, cond: _Condition, with_dx: bool) -> list[Doc]:
    pool = rng.sample(cond.differentials, k=min(len(cond.differentials), rng.randint(1, 3)))
    picked = [dict(c) for c in pool]
    if with_dx:
        picked.insert(rng.randint(0, len(picked)), dict(cond.dx))
    return picked


def _impression(concepts: list[Doc]) -> str:
    names = [c["text"] for c in concepts]
    if len(names) == 1:
        return f"Most likely {names[0].lower()}."
    return f"The lesion might be {', '.join(n.lower() for n in names[:-1])} or {names[-1].lower()}."


# Laboratory tests: (id, concept, unit, low, high, decimals, specimen type)
_CALCIUM_MASS = ("serum-calcium", _c("Serum calcium", "serum_calcium_mass"), "mg/dL", 8.6, 10.3, 1, "serum")
_CALCIUM_MOLAR = ("serum-calcium", _c("Serum calcium", "serum_calcium_molar"), "mmol/L", 2.15, 2.55, 2, "serum")
_IONIZED = ("ionized-calcium", _c("Ionized calcium", "ionized_calcium_serum"), "mmol/L", 1.12, 1.32, 2, "serum")
_PHOSPHATE = ("serum-phosphate", _c("Serum phosphate"), "mg/dL", 2.5, 4.5, 1, "serum")
_ALP = ("alkaline-phosphatase", _c("Alkaline phosphatase"), "U/L", 40.0, 130.0, 0, "serum")
_CREATININE = ("serum-creatinine", _c("Serum creatinine"), "mg/dL", 0.6, 1.2, 1, "serum")
_PTH = ("parathyroid-hormone", _c("Parathyroid hormone"), "pg/mL", 15.0, 65.0, 0, "plasma")
_CRP = ("c-reactive-protein", _c("C-reactive protein"), "mg/L", 0.0, 5.0, 1, "serum")
_Test = tuple[str, Doc, str, float, float, int, str]


def _lab_value(rng: random.Random, test: _Test, state: str) -> Doc:
    tid, concept, unit, low, high, digits, specimen = test
    span = high - low
    if state == "high":
        value = high * rng.uniform(1.08, 1.8) if high > 0 else span * rng.uniform(1.5, 10)
    elif state == "low":
        value = low * rng.uniform(0.6, 0.92)
    else:
        value = rng.uniform(low + 0.05 * span, high - 0.05 * span)
    rounded = round(value, digits) if digits else float(round(value))
    out: Doc = {
        "id": tid,
        "concept": dict(concept),
        "specimen_type": specimen,
        "value": {"value": rounded, "unit": unit},
    }
    r = rng.random()
    if r < 0.8:
        out["interpretation"] = state if state == "normal" or r < 0.65 else "abnormal"
    if rng.random() < 0.8:
        rr: Doc = {"low": low, "high": high, "unit": unit} if low > 0 else {"high": high, "unit": unit}
        out["reference_range"] = rr
    return out


def _labs(rng: random.Random, pattern: str) -> list[Doc]:
    states = {"calcium": "normal", "phosphate": "normal", "creatinine": "normal", "alp": "normal", "crp": "normal"}
    if pattern == "ckd":
        states |= {"calcium": rng.choice(["high", "high", "normal"]), "phosphate": "high", "creatinine": "high"}
    elif pattern == "hyperphosphataemic":
        states["phosphate"] = "high" if rng.random() < 0.85 else "normal"
    elif pattern == "inflammatory":
        states["crp"] = rng.choice(["high", "normal"])
        states["alp"] = "high" if rng.random() < 0.3 else "normal"
    elif rng.random() < 0.1:
        states["calcium"] = rng.choice(["low", "high"])  # an incidental finding the diagnosis does not hinge on
    tests: list[Doc] = []
    r = rng.random()
    if states["calcium"] == "normal" and r < 0.25:
        tests.append(
            {
                "id": "serum-calcium",
                "concept": _c("Serum calcium", "serum_calcium_mass"),
                "reported_as": rng.choice(
                    ["Within normal range; the value was not reported.", "Reported as normal, without a value."]
                ),
                "interpretation": "normal",
            }
        )
    else:
        test = _CALCIUM_MASS if r < 0.6 else _CALCIUM_MOLAR if r < 0.9 else _IONIZED
        tests.append(_lab_value(rng, test, states["calcium"]))
    ckd = pattern == "ckd"
    wanted: list[tuple[_Test, float, str]] = [  # (test, probability it was done, its state)
        (_PHOSPHATE, 1.0 if pattern in ("ckd", "hyperphosphataemic") else 0.4, states["phosphate"]),
        (_CREATININE, 1.0 if ckd else 0.25, states["creatinine"]),
        (_ALP, 0.6 if pattern == "inflammatory" else 0.25, states["alp"]),
        (_CRP, 0.8 if pattern == "inflammatory" else 0.1, states["crp"]),
        (_PTH, 0.6 if ckd else 0.05, "high" if ckd else "normal"),  # secondary hyperparathyroidism
    ]
    for test, p, state in wanted:
        if rng.random() < p:
            tests.append(_lab_value(rng, test, state))
    if pattern == "scleroderma" and rng.random() < 0.5:
        tests.append(
            {
                "id": "antinuclear-antibodies",
                "concept": _c("Antinuclear antibodies"),
                "specimen_type": "serum",
                "reported_as": "Positive, with an anticentromere pattern.",
                "interpretation": "abnormal",
            }
        )
    if rng.random() < 0.25:
        tests.append(
            {
                "id": "blood-count",
                "concept": _c("Complete blood count"),
                "specimen_type": "whole blood",
                "reported_as": "Within normal limits.",
                "interpretation": "normal",
            }
        )
    return tests


def _plan(rng: random.Random, cond: _Condition) -> list[str]:
    """The kinds of diagnostic step, in the order they were taken (histopathology is added later)."""
    imaging = [k for k in _IMAGING_ORDER if k in cond.imaging and rng.random() < cond.imaging[k][0]]
    if len(imaging) >= 2 and imaging[:2] == ["xray", "ultrasound"] and rng.random() < 0.35:
        imaging[:2] = ["ultrasound", "xray"]
    if "ct" in imaging and "mri" in imaging and rng.random() < 0.5:
        a, b = imaging.index("ct"), imaging.index("mri")
        imaging[a], imaging[b] = imaging[b], imaging[a]
    lab = rng.random() < cond.lab[0]
    if not imaging and not lab:
        imaging = [max(cond.imaging, key=lambda k: cond.imaging[k][0])]
    kinds = list(imaging)
    if lab:
        kinds.insert(rng.randint(0, len(kinds)), "laboratory")
    if rng.random() < 0.92:
        kinds.insert(0, "clinical_examination")
    return kinds


def _build(rng: random.Random, head: _Head, *, seed: int, i: int, patient_value: str, follow_up: bool) -> Doc:
    cond = head.condition
    site, side = _site(rng, cond, head)
    label = _label(site, side)
    dx_text = cond.dx["text"]
    history: list[_History] = [h for p, h in cond.history if rng.random() < p]
    if site.text == "hand" and cond.name == "dystrophic" and rng.random() < 0.5:
        history = [_HAND_FRACTURE]
    if head.age.unit == "months" and cond.name == "calcinosis-cutis":
        history = [_HEEL_PRICK]
    elif head.age.value >= 40 and rng.random() < 0.3:
        history.append(rng.choice(_UNRELATED))
    history = list({h.id: h for h in history}.values())

    presentation = _presentation(rng, head, site, side)
    base_size = rng.uniform(*cond.size_cm)
    kinds = _plan(rng, cond)
    biopsy = rng.random() < cond.biopsy
    steps: list[Doc] = []
    for n, kind in enumerate(kinds):
        later = (n + 1) / (len(kinds) + (1 if biopsy else 0))
        with_dx = rng.random() < later  # the diagnosis is considered more often as the work-up goes on
        step = _diagnostic_step(rng, kind, n + 1, head, site, side, base_size)
        if kind == "laboratory":  # only some laboratory patterns point at the diagnosis
            with_dx = with_dx and cond.lab[1] in ("ckd", "hyperphosphataemic")
        if rng.random() < 0.85:
            step["differential"] = _differential(rng, cond, with_dx)
            if rng.random() < 0.7:
                step["impression"] = _impression(step["differential"])
        steps.append(step)

    procedures, specimens = _procedures(rng, cond, site, side, steps, biopsy)

    doc: Doc = {
        "schema_version": "1.0",
        "case_id": f"synth-s{seed}-{i:06d}",
        "source": {
            "kind": "synthetic",
            "citation": (
                f"Synthetic case generated by casebridge synth (seed {seed}, case {i}). "
                "It describes no real patient and has not been published."
            ),
            "title": f"Synthetic case: {dx_text.lower()} of the {label}"[:500],
            "keywords": ["synthetic", dx_text],
        },
        "patient": {
            "identifier": {"system": PATIENT_SYSTEM, "value": patient_value},
            "sex": head.sex,
            "age_at_presentation": {"value": head.age.value, "unit": head.age.unit},
        },
    }
    if follow_up:
        doc["source"]["statements"] = ["A follow-up case of a patient already in the registry."]
    if history:
        doc["history"] = [_history_item(h, site, side) for h in history]
    doc |= {"presentation": presentation, "diagnostic_steps": steps}
    if procedures:
        doc["procedures"] = procedures
    if specimens:
        doc["specimens"] = specimens
    final = _final(rng, cond, steps, history, site, side)
    if final is not None:
        doc["final_diagnosis"] = final
    return doc


def _diagnostic_step(
    rng: random.Random, kind: str, order: int, head: _Head, site: _Site, side: str | None, base_size: float
) -> Doc:
    cond = head.condition
    step: Doc = {"id": kind.replace("_", "-"), "kind": kind, "order": order}
    if kind == "clinical_examination":
        step["performer"] = rng.choice(
            ["a doctor", "a general practitioner", "an orthopaedic surgeon", "a dermatologist", "a paediatrician"]
            if head.age.unit == "months" or head.age.value < 16
            else ["a doctor", "a general practitioner", "an orthopaedic surgeon", "a dermatologist"]
        )
        step["body_site"] = _body_site(site, side)
        exam: list[Doc] = [
            {"concept": _mass_concept(rng, site, rng.choice(cond.exam)), "present": True},
            {"concept": _c("Tenderness of the mass", "tenderness"), "present": rng.random() < cond.pain},
        ]
        if rng.random() < 0.3:
            exam.append({"concept": _c("Regional lymphadenopathy"), "present": False})
        step["findings"] = exam
        if rng.random() < 0.3:
            dims = _size(rng, base_size * 1.2)[:2]
            step["measurements"] = [
                {"concept": _c("Size of the swelling on palpation", "lesion_size"), "dimensions": dims}
            ]
    elif kind == "laboratory":
        step["tests"] = _labs(rng, cond.lab[1])
    else:
        step["body_site"] = _body_site(site, side)
        if rng.random() < 0.4:
            step["performer"] = "a radiologist"
        step["conclusion"] = rng.choice(cond.imaging[kind][1])
        img: list[Doc] = [{"concept": _c("Calcification within the lesion"), "present": cond.calcified}]
        if rng.random() < 0.5:
            img.append({"concept": _c("Involvement of the adjacent bone"), "present": False})
        if kind == "ultrasound" and rng.random() < 0.5:
            img.append({"concept": _c("Internal vascularity on colour Doppler"), "present": False})
        step["findings"] = img
        if kind != "xray" or rng.random() < 0.4:
            step["measurements"] = [{"concept": _c("Lesion size", "lesion_size"), "dimensions": _size(rng, base_size)}]
    return step


def _procedures(
    rng: random.Random, cond: _Condition, site: _Site, side: str | None, steps: list[Doc], biopsy: bool
) -> tuple[list[Doc], list[Doc]]:
    """Procedures and specimens; with a biopsy or excision, also the histopathology step (appended to steps)."""
    procedures: list[Doc] = []
    specimens: list[Doc] = []
    if biopsy:
        excise = rng.random() < 0.75
        proc_concept = (
            _c("Surgical excision of the lesion", "surgical_excision")
            if excise
            else _c(rng.choice(["Core needle biopsy", "Incisional biopsy"]))
        )
        procedures.append(
            {
                "id": "excision" if excise else "biopsy",
                "concept": proc_concept,
                "body_site": _body_site(site, side),
                "status": "completed",
                "outcome": rng.choice(["Successful", "Complete excision; the wound healed without complication."])
                if excise
                else "A representative sample was obtained.",
                "reason": rng.choice(
                    [
                        "To establish the diagnosis and exclude malignancy.",
                        "For diagnosis and for the patient's concern about the swelling.",
                    ]
                ),
            }
        )
        specimens.append(
            {
                "id": "excised-lesion" if excise else "biopsy-specimen",
                "type": _c("Excised lesion" if excise else "Biopsy specimen", "tissue_specimen"),
                "description": "Sent for histopathological examination.",
                "body_site": _body_site(site, side, skin=cond.skin),
                "collected_by": procedures[0]["id"],
            }
        )
        microscopic, histo_findings, conclusion = cond.histology
        steps.append(
            {
                "id": "histopathology",
                "kind": "histopathology",
                "order": len(steps) + 1,
                **({"performer": "a pathologist"} if rng.random() < 0.3 else {}),
                "specimen": specimens[0]["id"],
                "microscopic": microscopic,
                "findings": [{"concept": dict(c), "present": p} for c, p in histo_findings],
                "diagnosis": dict(cond.dx),
                "conclusion": conclusion,
            }
        )
    elif cond.name == "calcific-tendinitis" and rng.random() < 0.4:
        procedures.append(
            {
                "id": "barbotage",
                "concept": _c("Ultrasound-guided barbotage of the calcific deposit"),
                "body_site": _body_site(site, side),
                "status": "completed",
                "outcome": "Pain relieved within weeks.",
            }
        )
    return procedures, specimens


def _presentation(rng: random.Random, head: _Head, site: _Site, side: str | None) -> Doc:
    cond = head.condition
    duration = _duration(rng, cond, head.age)
    findings = _presentation_findings(rng, cond, site)
    complaint = dict(rng.choice(cond.complaints))
    suspected = [dict(c) for c in rng.sample(cond.suspected, k=rng.randint(1, len(cond.suspected)))]
    course = (
        rng.choice(["It had slowly increased in size.", "It had grown over the last few months."])
        if findings[0]["present"]
        else rng.choice(["It had not increased in size.", "Its size had not changed."])
    )
    # A short narrative, as a published case would have: "source_text" of the synthetic source.
    where = f"of the {_label(site, side)}" if side == "bilateral" else f"on the {_label(site, side)}"
    age = f"{head.age.value}-{head.age.unit[:-1]}-old"
    story = f"A {age} {_person(head)} presented with {complaint['text'].lower()} {where}"
    if duration:
        story += (
            f", present for {'about ' if duration.get('approximate') else ''}{duration['value']} {duration['unit']}"
        )
    out: Doc = {"complaint": complaint, "body_site": _body_site(site, side)}
    if duration:
        out["duration"] = duration
    return out | {"course": course, "suspected": suspected, "findings": findings, "source_text": f"{story}. {course}"}


def _presentation_findings(rng: random.Random, cond: _Condition, site: _Site) -> list[Doc]:
    findings: list[Doc] = [
        {
            "concept": _c("Increase in size of the swelling", "growth_of_swelling"),
            "present": rng.random() < cond.growth,
        },
        {"concept": _c("Pain in the swelling", "pain"), "present": rng.random() < cond.pain},
    ]
    optional = [
        (0.6, _c("Redness or colour change", "redness"), rng.random() < cond.redness),
        (
            0.5,
            _c("Other swellings in the body", "other_swellings"),
            cond.name == "calcinosis-cutis" and rng.random() < 0.5,
        ),
        (0.3, _c("Other discomfort", "other_discomfort"), False),
        (0.4, _c("Aesthetic concern about the swelling", "aesthetic_concern"), True),
        (0.2, _c("Fever"), False),
        (0.15, _c("Weight loss"), False),
    ]
    if site.text in ("shoulder", "elbow", "wrist", "knee", "hip", "ankle"):
        optional.append((0.7, _c("Restricted movement of the joint", "restricted_movement"), rng.random() < cond.pain))
    for p, concept, present in optional:
        if rng.random() < p:
            findings.append({"concept": concept, "present": present})
    return findings


def _history_item(h: _History, site: _Site, side: str | None) -> Doc:
    item: Doc = {"id": h.id, "condition": dict(h.condition), "clinical_status": h.status}
    if h.id in ("previous-injury", "previous-fracture", "injections", "muscle-injury"):
        item["body_site"] = _body_site(site, side)
    if h.note:
        item["note"] = h.note
    return item


def _final(
    rng: random.Random,
    cond: _Condition,
    steps: list[Doc],
    history: list[_History],
    site: _Site,
    side: str | None,
) -> Doc | None:
    histo = next((s for s in steps if s["kind"] == "histopathology"), None)
    if histo is not None:
        by, verification = histo, "confirmed"
    else:
        if rng.random() < 0.04:
            return None  # the source gives no final diagnosis (lost to follow-up)
        by = next(
            (s for kind in cond.provisional_by for s in reversed(steps) if s["kind"] == kind),
            steps[-1],
        )
        verification = "confirmed" if rng.random() < cond.imaging_confirms and by["kind"] in _LABELS else "provisional"
        # The step that settled it must hold the diagnosis in its differential.
        held = by.setdefault("differential", [])
        if not any(c.get("text") == cond.dx["text"] for c in held):
            held.append(dict(cond.dx))
    out: Doc = {
        "condition": dict(cond.dx),
        "body_site": _body_site(site, side, skin=cond.skin),
        "verification": verification,
        "established_by": by["id"],
    }
    causes = [h for h in history if h.cause]
    if causes and rng.random() < 0.8:
        out["possible_cause"] = {"history": causes[0].id, "note": causes[0].cause}
    if verification == "provisional" and rng.random() < 0.5:
        out["note"] = f"Provisional on the {_FINDINGS_OF.get(by['kind'], 'reported')} findings; no biopsy was taken."
    return out


# --- defects --------------------------------------------------------------------------------------------

_Spoiler = Callable[[Doc, random.Random], tuple[str, RefusedAt] | None]


def _wrong_type(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    choice = rng.randrange(3)
    if choice == 0:
        age = doc["patient"]["age_at_presentation"]
        age["value"] = f"{age['value']} {age['unit']}"
        return f"wrong type: patient.age_at_presentation.value is the string {age['value']!r}", "schema"
    if choice == 1:
        doc["presentation"]["findings"][0]["present"] = "yes"
        return "wrong type: presentation.findings[0].present is the string 'yes', not a boolean", "schema"
    doc["diagnostic_steps"][0]["order"] = str(doc["diagnostic_steps"][0]["order"])
    return "wrong type: diagnostic_steps[0].order is a string, not an integer", "schema"


def _unknown_field(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    where, target = rng.choice(
        [
            ("patient", doc["patient"]),
            ("presentation", doc["presentation"]),
            ("diagnostic_steps[0]", doc["diagnostic_steps"][0]),
        ]
    )
    name = rng.choice(["priority", "comment", "severity"])
    target[name] = "high"
    return f"unknown field: {where}.{name}", "schema"


def _impossible_age(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    age = (
        {"value": rng.randint(151, 400), "unit": "years"}
        if rng.random() < 0.5
        else {"value": rng.randint(1900, 5000), "unit": "months"}
    )
    doc["patient"]["age_at_presentation"] = age
    doc["presentation"].pop("duration", None)  # so the age is the only defect
    return f"impossible age: {age['value']} {age['unit']}", "schema"


def _negative_size(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    for i, step in enumerate(doc["diagnostic_steps"]):
        if step.get("measurements"):
            dim = step["measurements"][0]["dimensions"]
            dim[0]["value"] = -dim[0]["value"]
            return f"negative size: diagnostic_steps[{i}].measurements[0].dimensions[0] is {dim[0]['value']}", "schema"
    value = -round(rng.uniform(0.5, 5), 1)
    doc["diagnostic_steps"][0]["measurements"] = [
        {"concept": _c("Lesion size", "lesion_size"), "dimensions": [{"value": value, "unit": "cm"}]}
    ]
    return f"negative size: diagnostic_steps[0].measurements[0].dimensions[0] is {value}", "schema"


def _dangling_reference(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt] | None:
    options: list[tuple[Doc, str, str, str]] = []  # (object, field, missing id, where)
    for i, step in enumerate(doc["diagnostic_steps"]):
        if step["kind"] == "histopathology":
            options.append((step, "specimen", "missing-specimen", f"diagnostic_steps[{i}].specimen"))
    for i, spec in enumerate(doc.get("specimens", [])):
        options.append((spec, "collected_by", "missing-procedure", f"specimens[{i}].collected_by"))
    final = doc.get("final_diagnosis")
    if final is not None:
        options.append((final, "established_by", "missing-step", "final_diagnosis.established_by"))
        if "possible_cause" in final:
            where = "final_diagnosis.possible_cause.history"
            options.append((final["possible_cause"], "history", "missing-history", where))
    if not options:
        return None
    target, name, value, where = rng.choice(options)
    target[name] = value
    return f"dangling reference: {where} names {value!r}, which the case does not have", "schema"


def _missing_required(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    choices: list[tuple[Doc, str, str]] = [
        (doc["patient"], "sex", "patient.sex"),
        (doc["source"], "citation", "source.citation"),
        (doc["presentation"], "complaint", "presentation.complaint"),
        (doc, "schema_version", "schema_version"),
        (doc["diagnostic_steps"][-1], "id", f"diagnostic_steps[{len(doc['diagnostic_steps']) - 1}].id"),
    ]
    for i, step in enumerate(doc["diagnostic_steps"]):
        if step["kind"] in _LABELS:
            choices.append((step, "conclusion", f"diagnostic_steps[{i}].conclusion"))
    target, name, where = rng.choice(choices)
    del target[name]
    return f"missing required field: {where}", "schema"


def _unknown_key(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    # Keys that look right but are not in mappings/codes: the model accepts them, conversion does not.
    if "final_diagnosis" in doc and rng.random() < 0.5:
        key = rng.choice(["calcified_haematoma", "tumoral_calcinosis", "soft_tissue_calcification"])
        doc["final_diagnosis"]["condition"]["key"] = key
        where = "final_diagnosis.condition.key"
    else:
        key = rng.choice(["upper_arm", "hip", "left_forearm"])
        doc["presentation"]["body_site"]["site"]["key"] = key
        where = "presentation.body_site.site.key"
    return f"unknown vocabulary key {key!r} at {where} (refused at conversion)", "conversion"


def _duration_over_age(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    age = doc["patient"]["age_at_presentation"]
    years = (age["value"] if age["unit"] == "years" else age["value"] // 12) + rng.randint(2, 20)
    doc["presentation"]["duration"] = {"value": years, "unit": "years"}
    return f"presentation.duration ({years} years) is longer than the patient's age", "schema"


def _unordered_dimensions(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    dims = [
        {"value": round(rng.uniform(0.3, 1.5), 1), "unit": "cm"},
        {"value": round(rng.uniform(2, 5), 1), "unit": "cm"},
    ]
    doc["diagnostic_steps"][0].setdefault("measurements", []).append(
        {"concept": _c("Lesion size", "lesion_size"), "dimensions": dims}
    )
    return "diagnostic_steps[0].measurements: dimensions listed smallest first", "schema"


def _bad_enum(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    choice = rng.randrange(3)
    if choice == 0:
        doc["patient"]["sex"] = rng.choice(["f", "m", "woman"])
        return f"unknown code: patient.sex is {doc['patient']['sex']!r}", "schema"
    if choice == 1:
        doc["presentation"]["body_site"]["laterality"] = "both"
        return "unknown code: presentation.body_site.laterality is 'both'", "schema"
    doc["source"]["kind"] = "simulation"
    return "unknown code: source.kind is 'simulation'", "schema"


def _step_order(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt] | None:
    steps = doc["diagnostic_steps"]
    if len(steps) < 2:
        return None
    if rng.random() < 0.5:
        steps[1]["order"] = steps[0]["order"]
        return "diagnostic_steps: two steps share one order number", "schema"
    steps[1]["id"] = steps[0]["id"]
    return f"diagnostic_steps: the id {steps[0]['id']!r} is used twice", "schema"


def _no_steps(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    doc["diagnostic_steps"] = []
    for name in ("final_diagnosis", "specimens", "procedures"):
        doc.pop(name, None)
    return "diagnostic_steps is empty (at least one step is required)", "schema"


def _bad_lab(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt] | None:
    for i, step in enumerate(doc["diagnostic_steps"]):
        if step["kind"] == "laboratory":
            test = step["tests"][0]
            if rng.random() < 0.5 or "value" not in test:
                test.pop("value", None)
                test.pop("reported_as", None)
                return f"diagnostic_steps[{i}].tests[0] has neither value nor reported_as", "schema"
            test["reference_range"] = {"low": 1.0, "high": 2.0, "unit": "g/L"}
            return f"diagnostic_steps[{i}].tests[0]: reference range unit differs from the value's", "schema"
    return None


_SPOILERS: list[_Spoiler] = [
    _wrong_type,
    _unknown_field,
    _impossible_age,
    _negative_size,
    _dangling_reference,
    _missing_required,
    _unknown_key,
    _duration_over_age,
    _unordered_dimensions,
    _bad_enum,
    _step_order,
    _no_steps,
    _bad_lab,
]


def _spoil(doc: Doc, rng: random.Random) -> tuple[str, RefusedAt]:
    """Give the case one defect; a kind that does not apply to this case gives way to another."""
    for spoiler in rng.sample(_SPOILERS, k=len(_SPOILERS)):
        result = spoiler(doc, rng)
        if result is not None:
            return result
    raise AssertionError("unreachable: several spoilers always apply")
