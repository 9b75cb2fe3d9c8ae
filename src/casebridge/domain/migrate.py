"""Upgrading a schema 1.0 case to schema 2.0.

1.0 matched diagnoses by wording: a differential was the same diagnosis as another, or as the final diagnosis,
when their vocabulary keys or exact words were the same, and every differential was refuted once a confirmed final
diagnosis existed. 2.0 makes both explicit, so the upgrade writes down what 1.0 implied and nothing more:
- each distinct concept becomes a ``diagnoses`` entry whose id is 1.0's key for it (``Concept.ref_key``), so the
  resources made from an upgraded case keep their ids;
- a differential at a step becomes ``considered`` there; with a confirmed final diagnosis, every other diagnosis
  is ``excluded`` by the step that established it, as 1.0 concluded;
- ``final_diagnosis.condition`` becomes a link to its diagnosis, which takes its body site (the differentials
  take the presentation's, as the 1.0 mappings did) and, as its onset, the time before presentation that the
  presentation's duration gives (1.0's mappings dated it so);
- ``source_text`` becomes ``quote``.
``notes`` says where the 1.0 reading may not be what the source meant, for a person to check.
"""

from __future__ import annotations

from typing import Any

from casebridge.domain.case_v1 import CaseReport as CaseReportV1
from casebridge.domain.case_v1 import Concept


def _rename_quotes(node: Any) -> Any:
    if isinstance(node, dict):
        return {("quote" if k == "source_text" else k): _rename_quotes(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_rename_quotes(v) for v in node]
    return node


def _concept(c: Concept) -> dict[str, Any]:
    return c.model_dump(mode="json", exclude_none=True)


def upgrade(case: CaseReportV1) -> tuple[dict[str, Any], list[str]]:
    """The 2.0 document of a validated 1.0 case, and notes for a person to check."""
    doc: dict[str, Any] = _rename_quotes(case.model_dump(mode="json", exclude_unset=True, by_alias=True))
    doc["schema_version"] = "2.0"
    notes: list[str] = []
    presentation_site = doc["presentation"].get("body_site")
    final = case.final_diagnosis
    final_key = final.condition.ref_key if final else None

    diagnoses: dict[str, dict[str, Any]] = {}

    def add(c: Concept) -> str:
        key = c.ref_key
        if key not in diagnoses:
            entry: dict[str, Any] = {"id": key, "concept": _concept(c)}
            if key != final_key and presentation_site is not None:
                entry["body_site"] = presentation_site
            diagnoses[key] = entry
        return key

    doc["presentation"]["suspected"] = [add(c) for c in case.presentation.suspected]
    if not doc["presentation"]["suspected"]:
        doc["presentation"].pop("suspected")
    establishing = final.established_by if final else None
    for step, out in zip(case.diagnostic_steps, doc["diagnostic_steps"], strict=True):
        out.pop("differential", None)
        assessment = [{"diagnosis": add(c), "status": "considered"} for c in step.differential]
        if assessment:
            out["assessment"] = assessment
    if final is not None:
        key = add(final.condition)
        entry = diagnoses[key]
        if final.body_site is not None:
            entry["body_site"] = final.body_site.model_dump(mode="json", exclude_none=True)
        duration = case.presentation.duration
        if duration is not None:
            # 1.0 dated the final diagnosis's onset by how long the patient had the complaint before presenting.
            relative = {"relation": "before", "to": "presentation", "value": duration.value, "unit": duration.unit}
            entry["time"] = {"relative": relative} | ({"approximate": True} if duration.approximate else {})
        fd = doc["final_diagnosis"]
        fd.pop("condition")
        fd.pop("body_site", None)
        fd = {"diagnosis": key, **fd}
        doc["final_diagnosis"] = fd
        if final.verification == "confirmed":
            step_index = next(i for i, s in enumerate(case.diagnostic_steps) if s.id == establishing)
            out = doc["diagnostic_steps"][step_index]
            assessed = {a["diagnosis"]: a for a in out.get("assessment", [])}
            for other in diagnoses:
                if other == key:
                    continue
                if other in assessed:
                    assessed[other]["status"] = "excluded"
                else:
                    out.setdefault("assessment", []).append({"diagnosis": other, "status": "excluded"})
            words = {d["concept"]["text"].casefold() for k, d in diagnoses.items() if k != key}
            near = [w for w in words if w in final.condition.text.casefold() or final.condition.text.casefold() in w]
            if near:
                notes.append(
                    f"final_diagnosis: {final.condition.text!r} and the differential {sorted(near)[0]!r} are "
                    "different diagnoses in 1.0 (different words), so the differential is now excluded; if they are "
                    "the same diagnosis, give it one id"
                )
    # Diagnoses first raised at the final diagnosis come last, as in 1.0's order of first mention.
    ordered: dict[str, Any] = {}
    for k, v in doc.items():
        ordered[k] = v
        if k == "presentation":
            ordered["diagnoses"] = list(diagnoses.values())
    if not diagnoses:
        ordered.pop("diagnoses")
    return ordered, notes
