"""Profiles the FHIR specification implies for a resource whether or not it claims them.

R4 (observation.html#vitals, observation-vitalsigns.html): an Observation whose code is a vital sign SHALL conform
to the vital signs profile of that sign. The codes are those the HL7 validator recognises (LOINC first, then
SNOMED CT equivalents), so a vital sign coded only in SNOMED CT is held to the profile too, whose slice then asks
for the LOINC code.
"""

from __future__ import annotations

from typing import Any

_BASE = "http://hl7.org/fhir/StructureDefinition/"
_LOINC = "http://loinc.org"
_SCT = "http://snomed.info/sct"

# (profile, its name, LOINC codes, SNOMED CT codes), in the order they are tried: the first match wins.
_VITAL_SIGNS: tuple[tuple[str, str, frozenset[str], frozenset[str]], ...] = (
    ("vitalspanel", "Vital Signs Panel", frozenset({"85353-1"}), frozenset({"46680005"})),
    (
        "resprate",
        "Respiratory Rate",
        frozenset({"9279-1", "76170-0", "76172-6", "76171-8", "19840-8", "33438-3", "76270-8", "11291-2"}),
        frozenset({"86290005", "271625008", "271306003"}),
    ),
    (
        "heartrate",
        "Heart rate",
        frozenset(
            {
                "60978-4", "73795-7", "73799-9", "76476-1", "76477-9", "8867-4", "8889-8", "8890-6", "8891-4",
                "8892-2", "8893-0", "40443-4", "55425-3", "68999-2", "11328-2", "69000-8", "8886-4",
            }
        ),
        frozenset({"271306003", "249043002", "444981005", "399017001", "251670001", "429525003", "429614003"}),
    ),
    (
        "oxygensat",
        "Oxygen saturation",
        frozenset(
            {"2708-6", "19224-5", "20564-1", "2709-4", "2710-2", "2713-6", "51733-4", "59408-5", "59417-6",
             "89276-0", "97549-0"}
        ),
        frozenset({"442476006", "431314004"}),
    ),
    (
        "bodytemp",
        "Body temperature",
        frozenset(
            {
                "8310-5", "60834-9", "60835-6", "60836-4", "60838-0", "60955-2", "61009-7", "75539-7", "75987-8",
                "76010-8", "76011-6", "76278-1", "8309-7", "8328-7", "8329-5", "8330-3", "8331-1", "8332-9",
                "8333-7", "8334-5", "91371-5", "98657-0", "98663-8",
            }
        ),
        frozenset(
            {
                "386725007", "276885007", "300076005", "1222808002", "364246006", "307047009", "708499008",
                "431598003", "698831002", "698832009", "415882003", "415974002", "415929009", "415945006",
            }
        ),
    ),
    (
        "bodyheight",
        "Body height",
        frozenset({"8302-2", "3137-7", "3138-5", "8306-3", "8308-9"}),
        frozenset({"1153637007", "1162419008", "50373000", "1162418000", "1230278008", "1162392001", "1162417005"}),
    ),
    (
        "headcircum",
        "Head circumference",
        frozenset({"9843-4", "8287-5"}),
        frozenset({"363812007", "169876006", "1269262007", "363811000"}),
    ),
    (
        "bodyweight",
        "Body weight",
        frozenset({"29463-7", "3141-9", "3142-7", "75292-3", "79348-9", "8350-1", "8351-9"}),
        frozenset({"735395000", "425024002", "424927000", "784399000", "1162416001", "1162415002"}),
    ),
    ("bmi", "Body mass index", frozenset({"39156-5", "89270-3"}), frozenset({"60621009"})),
    (
        "bp",
        "Blood pressure systolic and diastolic",
        frozenset({"85354-9", "35094-2", "8459-0", "76534-7", "55284-4", "8480-6"}),
        frozenset(
            {"251076008", "163033001", "163035008", "386534000", "386536003", "271649006", "271650006",
             "407556006", "407554009", "716579001", "399304008"}
        ),
    ),
)  # fmt: skip


def _codes(resource: dict[str, Any], system: str) -> list[str]:
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    out: list[str] = []
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, dict) and coding.get("system") == system and isinstance(coding.get("code"), str):
            out.append(coding["code"])
    return out


def implied_profiles(resource_type: str, resource: dict[str, Any]) -> list[tuple[str, str]]:
    """The profiles the specification requires of this resource, each with why: (canonical, reason)."""
    if resource_type != "Observation":
        return []
    for system, system_name, column in ((_LOINC, "LOINC", 2), (_SCT, "SNOMED CT", 3)):
        found = _codes(resource, system)
        if not found:
            continue
        for row in _VITAL_SIGNS:
            codes = row[2] if column == 2 else row[3]
            for code in found:
                if code in codes:
                    url = _BASE + row[0]
                    reason = (
                        f"Validate Observation against the {row[1]} profile ({url}) which is required by the FHIR "
                        f"specification because the {system_name} code {code} was found"
                    )
                    return [(url, reason)]
    return []
