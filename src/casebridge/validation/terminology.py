"""Offline terminology: is a code in a value set, is it a code of its code system?

Value sets are expanded from what the packages hold: a published expansion (the R4 expansions package)
when there is one, otherwise the ``compose`` rules evaluated over the CodeSystems the packages carry
(``concept`` lists, whole systems, ``is-a``/``descendent-of`` filters, nested value sets, excludes).
Codes of systems that are not in the packages (SNOMED CT, LOINC, UCUM, ...) cannot be checked offline:
an expansion that needs them is *open* for that system, and the validator reports such codes as
information, never as errors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from casebridge.definitions.structure import Definitions, DefinitionShapeError, check_code_system, check_value_set

# Large external terminologies: never in our packages, never checkable offline.
EXTERNAL_SYSTEMS = frozenset(
    {
        "http://snomed.info/sct",
        "http://loinc.org",
        "http://unitsofmeasure.org",
        "http://www.nlm.nih.gov/research/umls/rxnorm",
        "http://hl7.org/fhir/sid/icd-10",
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-9-cm",
        "http://hl7.org/fhir/sid/cvx",
        "http://hl7.org/fhir/sid/ndc",
        "urn:ietf:bcp:47",
        "urn:ietf:bcp:13",
        "urn:iso:std:iso:3166",
        "urn:iso:std:iso:4217",
        "http://www.ama-assn.org/go/cpt",
        "http://dicom.nema.org/resources/ontology/DCM",
    }
)


@dataclass
class Expansion:
    codes: dict[tuple[str, str], str] = field(default_factory=dict)  # (system, code) -> display
    open_systems: set[str] = field(default_factory=set)  # included systems we cannot enumerate
    unresolved: list[str] = field(default_factory=list)  # what could not be expanded
    # (system, code) -> designations an expansion gives a code: with its display, what the value set calls it
    designations: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.open_systems and not self.unresolved

    def by_code(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for system, code in self.codes:
            out.setdefault(code, set()).add(system)
        return out


@dataclass
class CodeSystemInfo:
    url: str
    complete: bool
    codes: dict[str, str]  # code -> display
    parents: dict[str, set[str]]  # code -> parent codes
    case_sensitive: bool = True
    # code -> its designations (language or "", value): displays in other languages, also valid displays
    designations: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def descendants(self, code: str) -> set[str]:
        children: dict[str, set[str]] = {}
        for child, ps in self.parents.items():
            for p in ps:
                children.setdefault(p, set()).add(child)
        out: set[str] = set()
        stack = [code]
        while stack:
            for c in children.get(stack.pop(), ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out


class Terminology:
    def __init__(self, definitions: Definitions):
        self.definitions = definitions
        self._expansions: dict[str, Expansion | None] = {}
        self._systems: dict[str, CodeSystemInfo | None] = {}
        self._by_code: dict[str, dict[str, set[str]]] = {}
        self.unusable: dict[str, str] = {}  # canonical -> why a value set or code system that exists cannot be used

    # --- code systems ---------------------------------------------------------------------------------

    def code_system(self, url: str) -> CodeSystemInfo | None:
        if url in self._systems:
            return self._systems[url]
        cs = self.definitions.get(url)
        if cs is None:
            return None  # not remembered: systems come from input, and unknown ones would grow the cache forever
        info = None
        if cs.get("resourceType") == "CodeSystem":
            try:
                check_code_system(cs)
            except DefinitionShapeError as exc:
                self.unusable[url] = str(exc)
                cs = {}  # read as a code system we know nothing of
            codes: dict[str, str] = {}
            parents: dict[str, set[str]] = {}
            designations: dict[str, list[tuple[str, str]]] = {}

            def walk(concepts: Iterable[Any], parent: str | None) -> None:
                for c in concepts:
                    code = c.get("code")
                    if not isinstance(code, str):
                        continue
                    codes[code] = c.get("display", "")
                    for d in c.get("designation", ()):
                        if not isinstance(d, dict) or not isinstance(d.get("value"), str) or not d["value"]:
                            continue
                        language = d.get("language")
                        designations.setdefault(code, []).append(
                            (language if isinstance(language, str) else "", d["value"])
                        )
                    if parent is not None:
                        parents.setdefault(code, set()).add(parent)
                    for prop in c.get("property", ()):
                        if prop.get("code") in ("subsumedBy", "parent") and prop.get("valueCode"):
                            parents.setdefault(code, set()).add(prop["valueCode"])
                    walk(c.get("concept", ()), code)

            walk(cs.get("concept", ()), None)
            info = CodeSystemInfo(
                url,
                cs.get("content") == "complete" and bool(codes),
                codes,
                parents,
                cs.get("caseSensitive", True),
                designations,
            )
        self._systems[url] = info
        return info

    # --- value sets -----------------------------------------------------------------------------------

    def expand(self, canonical: str) -> Expansion | None:
        """The expansion of a value set, or None when the value set is not known at all."""
        if canonical in self._expansions:
            return self._expansions[canonical]
        self._expansions[canonical] = None  # a value set that includes itself expands to nothing more
        vs = self.definitions.get(canonical) or self.definitions.get(canonical.split("|")[0])
        result = None
        if vs is not None and vs.get("resourceType") == "ValueSet":
            try:
                check_value_set(vs)
            except DefinitionShapeError as exc:
                self.unusable[canonical] = str(exc)
                result = Expansion(unresolved=[f"{canonical}: {exc}"])
            else:
                expansion = vs.get("expansion") or {}
                result = self._from_expansion(vs) if expansion.get("contains") else self._from_compose(vs)
        self._expansions[canonical] = result
        return result

    def _from_expansion(self, vs: dict[str, Any]) -> Expansion:
        out = Expansion()

        def walk(items: Iterable[Any]) -> None:
            for c in items:
                if c.get("code") and c.get("system") and not c.get("abstract"):
                    out.codes[(c["system"], c["code"])] = c.get("display", "")
                    values = [d["value"] for d in c.get("designation", ()) if isinstance(d.get("value"), str)]
                    if values:
                        out.designations[(c["system"], c["code"])] = values
                walk(c.get("contains", ()))

        walk(vs["expansion"]["contains"])
        total = vs["expansion"].get("total")
        if isinstance(total, int) and total > len(out.codes) and not vs["expansion"].get("parameter"):
            out.unresolved.append("expansion is paged")
        return out

    def _from_compose(self, vs: dict[str, Any]) -> Expansion:
        out = Expansion()
        compose = vs.get("compose") or {}
        for include in compose.get("include", ()):
            part = self._include(include)
            out.codes.update(part.codes)
            out.open_systems |= part.open_systems
            out.unresolved += part.unresolved
        for exclude in compose.get("exclude", ()):
            part = self._include(exclude)
            for key in part.codes:
                out.codes.pop(key, None)
        return out

    def _include(self, include: dict[str, Any]) -> Expansion:
        out = Expansion()
        system = include.get("system")
        nested = [self.expand(v) for v in include.get("valueSet", ())]
        if any(n is None for n in nested):
            out.unresolved += [v for v, n in zip(include.get("valueSet", ()), nested, strict=True) if n is None]
        if system is None:
            for n in nested:
                if n is not None:
                    out.codes.update(n.codes)
                    out.open_systems |= n.open_systems
                    out.unresolved += n.unresolved
            return out
        cs = self.code_system(system)
        if include.get("concept"):
            for c in include["concept"]:
                display = c.get("display") or (cs.codes.get(c["code"], "") if cs else "")
                out.codes[(system, c["code"])] = display
        elif include.get("filter"):
            if cs is None or not cs.complete:
                out.open_systems.add(system)
            else:
                selected = set(cs.codes)
                for f in include["filter"]:
                    op, value, prop = f.get("op"), f.get("value", ""), f.get("property")
                    if op == "is-a" and prop == "concept":
                        selected &= {value} | cs.descendants(value)
                    elif op == "descendent-of" and prop == "concept":
                        selected &= cs.descendants(value)
                    elif op == "is-not-a" and prop == "concept":
                        selected -= {value} | cs.descendants(value)
                    else:
                        out.open_systems.add(system)
                        break
                else:
                    out.codes.update({(system, c): cs.codes[c] for c in selected})
        elif cs is not None and cs.complete:
            out.codes.update({(system, c): d for c, d in cs.codes.items()})
        else:
            out.open_systems.add(system)
        if nested:
            # system + valueSet: the intersection.
            for n in nested:
                if n is not None and n.complete:
                    out.codes = {k: v for k, v in out.codes.items() if k in n.codes}
        return out

    def codes_by_value(self, canonical: str) -> dict[str, set[str]] | None:
        """code -> systems, for elements of type ``code`` that carry no system."""
        if canonical not in self._by_code:
            exp = self.expand(canonical)
            if exp is None:
                return None
            self._by_code[canonical] = exp.by_code()
        return self._by_code[canonical]
