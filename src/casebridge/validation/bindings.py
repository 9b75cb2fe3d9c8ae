"""Terminology checks of coded values: the bindings of code, string and uri values, Codings and
CodeableConcepts to value sets (required -> error, extensible -> warning; a code of an open or external system
that cannot be checked offline -> information), and codes and displays against the code systems we hold.

Apart from the walk because it asks the terminology, not the structure definitions: what a value set expands
to and which codes a code system has.
"""

from __future__ import annotations

from typing import Any

from casebridge.definitions.structure import Definitions, ElementNode, StructureTree
from casebridge.validation.issues import Run, as_list
from casebridge.validation.terminology import EXTERNAL_SYSTEMS, Terminology


def codings(item: dict[str, Any], type_code: str, expr: str) -> list[tuple[str, dict[str, Any]]]:
    """A Coding, or a CodeableConcept's codings, each with its expression."""
    if type_code == "Coding":
        return [(expr, item)]
    return [(f"{expr}.coding[{i}]", c) for i, c in enumerate(as_list(item.get("coding"))) if isinstance(c, dict)]


class Bindings:
    """The binding and code checks of one validator, over its definitions (for value set names) and terminology."""

    def __init__(self, definitions: Definitions, terminology: Terminology) -> None:
        self.definitions = definitions
        self.terminology = terminology

    def vs_label(self, canonical: str) -> str:
        vs = self.definitions.get(canonical) or self.definitions.get(canonical.split("|")[0]) or {}
        name = vs.get("title") or vs.get("name")
        return f"'{name}' ({canonical})" if name else f"'{canonical}'"

    def _versioned_label(self, canonical: str) -> str:
        """A value set as the HL7 validator names it: its title or name, and its canonical with its version."""
        vs = self.definitions.get(canonical) or self.definitions.get(canonical.split("|")[0]) or {}
        name = vs.get("title") or vs.get("name")
        version = vs.get("version")
        url = canonical if "|" in canonical or not isinstance(version, str) else f"{canonical}|{version}"
        return f"'{name}' ({url})" if name else f"'{url}'"

    def code_binding(self, value: str, node: ElementNode, tree: StructureTree, expr: str, run: Run) -> None:
        """A code, string or uri value against its element's binding."""
        strength, vs = node.binding  # type: ignore[misc]
        if strength not in ("required", "extensible"):
            return
        codes = self.terminology.codes_by_value(vs)
        expansion = self.terminology.expand(vs)
        if codes is None or expansion is None:
            run.add(
                "warning", "not-found", f"The value set {vs} is not known, so the code '{value}' was not checked", expr
            )
            return
        if value in codes or not expansion.complete:
            return
        if strength == "extensible":
            run.add(
                "warning",
                "code-invalid",
                f"The value provided ('{value}') was not found in the value set {self.vs_label(vs)}, and a code is "
                "recommended from this value set",
                expr,
            )
            return
        # A bare code names no system: the reference validator first fails to infer one from the value set (an
        # error of its own), then reports the code missing, quoting both causes.
        no_system = f"The System URI could not be determined for the code '{value}' in the ValueSet '{vs}'"
        run.add("error", "code-invalid", no_system, expr)
        run.add(
            "error",
            "code-invalid",
            f"The value provided ('{value}') was not found in the value set {self.vs_label(vs)}, and a code is "
            f"required from this value set  (error message = {no_system}; The provided code '#{value}' was not "
            f"found in the value set '{vs}')",
            expr,
        )

    def _bound_displays(self, node: ElementNode, system: str, code: str) -> set[str]:
        """What the value sets bound to an element call a code (an expansion's display and designations): a
        value set may name a code in its own words, and the code is then valid with them."""
        bound = [node.binding[1]] if node.binding is not None else []
        out: set[str] = set()
        for vs in (*bound, *node.additional_required):
            expansion = self.terminology.expand(vs)
            if expansion is not None and (system, code) in expansion.codes:
                out.add(expansion.codes[(system, code)].lower())
                out.update(v.lower() for v in expansion.designations.get((system, code), ()))
        return out

    def binding(
        self,
        item: dict[str, Any],
        type_code: str,
        node: ElementNode,
        tree: StructureTree,
        expr: str,
        run: Run,
        binding: tuple[str, str] | None = None,
        additional: bool = False,
    ) -> None:
        """A Coding or CodeableConcept against its element's binding (or the one given; ``additional``: one of
        its additional bindings)."""
        strength, vs = binding or node.binding  # type: ignore[misc]
        if strength not in ("required", "extensible") or type_code == "Quantity":
            return
        found = [c for _, c in codings(item, type_code, expr)]
        expansion = self.terminology.expand(vs)
        if expansion is None:
            run.add("warning", "not-found", f"The value set {vs} is not known, so the codes were not checked", expr)
            return
        if not found:
            if strength == "required" and type_code == "CodeableConcept":
                run.add(
                    "error",
                    "code-invalid",
                    f"No code provided, and a code is required from the value set {self.vs_label(vs)}",
                    expr,
                )
            return
        unchecked = []
        for c in found:
            system, code = c.get("system"), c.get("code")
            if not isinstance(code, str) or not isinstance(system, (str, type(None))):
                continue  # a wrong shape is reported by the structure walk
            if (system, code) in expansion.codes:
                return
            # An enumerated value set decides even for SNOMED CT or LOINC codes; only an open one cannot.
            if system in expansion.open_systems or not expansion.complete:
                unchecked.append(f"{system}#{code}")
        if unchecked:
            run.add(
                "information",
                "informational",
                f"The code {unchecked[0]} cannot be checked against {self.vs_label(vs)} offline",
                expr,
            )
            return
        if additional and strength == "required":
            # Worded as the HL7 validator words it (TERMINOLOGY_TX_NOVALID_1_CC, an additional binding's value set
            # named with its version).
            shown = ", ".join(f"{c.get('system') or 'null'}#{c.get('code')}" for c in found)
            message = (
                f"None of the codings provided are in the value set {self._versioned_label(vs)} specified in an "
                f"additional binding, and a coding from this value set is required) (codes = {shown})"
            )
            run.add("error", "code-invalid", message, expr)
            return
        severity = "error" if strength == "required" else "warning"
        verb = "must" if strength == "required" else "should"
        run.add(
            severity,
            "code-invalid",
            f"None of the codings provided are in the value set {self.vs_label(vs)}, and a coding {verb} come "
            "from this value set",
            expr,
        )

    def known_code(self, coding: dict[str, Any], expr: str, run: Run, node: ElementNode | None = None) -> None:
        """A code of a code system we hold completely must be one of its codes, with its display if it has one
        (or a display the value sets bound to ``node`` give the code)."""
        system, code = coding.get("system"), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str) or system in EXTERNAL_SYSTEMS:
            return
        cs = self.terminology.code_system(system)
        if cs is None or not cs.complete:
            return
        if code not in cs.codes:
            run.add("error", "code-invalid", f"Unknown code '{code}' in the CodeSystem '{system}'", expr)
            return
        display = coding.get("display")
        if not isinstance(display, str) or not cs.codes[code]:
            return
        # The display, or a designation (a display in another language), compared without case. Wrong, it is an
        # error at the display, as the reference validator reports it.
        choices = [(cs.codes[code], ""), *((value, language) for language, value in cs.designations.get(code, ()))]
        if any(display.lower() == value.lower() for value, _ in choices):
            return
        if node is not None and display.lower() in self._bound_displays(node, system, code):
            return
        if len(choices) == 1:
            valid = f"Valid display is '{cs.codes[code]}'"
        else:
            named = [f"'{value}'" + (f" ({language})" if language else "") for value, language in choices]
            valid = f"Valid display is one of {len(named)} choices: {', '.join(named[:-1])} or {named[-1]}"
        run.add("error", "invalid", f"Wrong Display Name '{display}' for {system}#{code}. {valid}", f"{expr}.display")
