"""Measures and their reports (measure.html, measurereport.html): what can be checked without a CQL engine.

A Measure's stratifier criteria in CQL name a definition of one of the Measure's libraries
(``Library.Definition``, or a bare name when there is one library). Only the libraries that resolve count, as
the reference validator counts them: with none (none named, or none loaded) there is nothing to evaluate the
criteria against, an error; and when the Library is loaded and carries its compiled ELM, a definition it does
not hold is an error. A MeasureReport follows the Measure it names (when that Measure is loaded): its groups,
populations and stratifiers carry codes that match the Measure's, each once; one of the Measure's left out is a
warning (a report may be partial: the reference validator calls it an error, and so would the core examples'
own partial reports be). As the reference validator, only stratifier criteria are checked among the criteria.

Apart from the walk because these look across resources (the Measure behind a report, the libraries behind a
Measure); dispatched by resource type, so other resources pay nothing.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import re
from typing import Any

from casebridge.definitions.structure import Definitions
from casebridge.validation.issues import Run, as_list, as_obj

_POPULATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/measure-population"
_ELM_DEF = re.compile(r"<(?:[A-Za-z_][\w.-]*:)?def\b[^>]*?\bname\s*=\s*\"([^\"]*)\"")


def check_measure(measure: dict[str, Any], definitions: Definitions, run: Run, expr: str) -> None:
    """A Measure's libraries and the CQL its stratifiers name."""
    libraries: list[dict[str, Any]] = []
    declared = [ref for ref in as_list(measure.get("library")) if isinstance(ref, str)]
    for ref in declared:
        library = _contained(measure, ref[1:]) if ref.startswith("#") else definitions.get(ref)
        if library is not None and library.get("resourceType") == "Library":
            libraries.append(library)
        else:
            message = f"The Library {ref} could not be resolved, so expression validation may not be correct"
            run.add("information", "not-found", message, expr)
    for g, group in enumerate(as_list(measure.get("group"))):
        for s, stratifier in enumerate(as_list(as_obj(group).get("stratifier"))):
            where = f"{expr}.group[{g}].stratifier[{s}]"
            stratifier = as_obj(stratifier)
            if "criteria" in stratifier:
                _criteria(as_obj(stratifier["criteria"]), libraries, run, f"{where}.criteria")
            for c, component in enumerate(as_list(stratifier.get("component"))):
                component = as_obj(component)
                if "criteria" in component:
                    where_c = f"{where}.component[{c}].criteria"
                    _criteria(as_obj(component["criteria"]), libraries, run, where_c)


def _contained(resource: dict[str, Any], cid: str) -> dict[str, Any] | None:
    return next((c for c in as_list(resource.get("contained")) if as_obj(c).get("id") == cid), None)


def _criteria(criteria: dict[str, Any], libraries: list[dict[str, Any]], run: Run, expr: str) -> None:
    """An Expression in CQL must name a definition of one of the Measure's libraries: those that resolve, as the
    reference validator counts them (one named but not loaded was an information already)."""
    if criteria.get("language") not in ("text/cql", "text/cql.identifier", "text/cql-identifier"):
        return
    reference = criteria.get("expression")
    if not libraries:
        run.add("error", "business-rule", "No CQL Libraries found on this Measure", expr)
        return
    if not isinstance(reference, str):
        return  # an Expression by reference only: nothing here to look up
    library: dict[str, Any] | None = None
    if "." in reference and not reference.startswith('"'):
        namespace, reference = reference.split(".", 1)
        named = [lib for lib in libraries if lib.get("name") == namespace]
        if len(named) > 1:
            run.add("error", "business-rule", f"Multiple matching libraries found for the namespace {namespace}", expr)
            return
        if not named:
            run.add("error", "business-rule", f"No matching Library found for the namespace {namespace}", expr)
            return
        library = named[0]
    elif len(libraries) == 1:
        library = libraries[0]
    else:
        message = "If the CQL expression does not include a namespace, there can only be one Library for the measure"
        run.add("error", "business-rule", message, expr)
        return
    names = _elm_definitions(library)
    if names is None:
        # CQL source alone would need a CQL translator to be read: not checked, and not the Measure's fault.
        message = f"Error in {library.get('url')}: No compiled version of CQL found"
        run.add("information", "business-rule", message, expr)
    elif reference.strip('"') not in names:
        message = f"The function {reference} does not exist in the library {library.get('url')}"
        run.add("error", "business-rule", message, expr)


def _elm_definitions(library: dict[str, Any]) -> set[str] | None:
    """The names a Library's compiled ELM (XML or JSON) defines; None when it carries no ELM to read."""
    for content in as_list(library.get("content")):
        content = as_obj(content)
        kind = content.get("contentType")
        data = content.get("data")
        if kind not in ("application/elm+xml", "application/elm+json") or not isinstance(data, str):
            continue
        try:
            text = base64.b64decode(data, validate=False).decode("utf-8", "replace")
        except (binascii.Error, ValueError):
            continue
        if kind == "application/elm+xml":
            return {html.unescape(name) for name in _ELM_DEF.findall(text)}
        try:
            elm = json.loads(text)
        except ValueError:
            continue
        statements = as_obj(as_obj(as_obj(elm).get("library")).get("statements")).get("def")
        return {d["name"] for d in as_list(statements) if isinstance(as_obj(d).get("name"), str)}
    return None


# --- MeasureReport ------------------------------------------------------------------------------------------


def check_measure_report(report: dict[str, Any], definitions: Definitions, run: Run, expr: str) -> None:
    """A MeasureReport's groups, populations and stratifiers against those of the Measure it reports on."""
    url = report.get("measure")
    if not isinstance(url, str):
        return
    measure = _contained(report, url[1:]) if url.startswith("#") else definitions.get(url)
    if measure is None or measure.get("resourceType") != "Measure":
        message = f"The Measure '{url}' could not be resolved, so no validation can be done against the Measure"
        run.add("warning", "not-found", message, f"{expr}.measure")
        return
    groups = [as_obj(g) for g in as_list(measure.get("group"))]
    if not groups:
        return  # nothing to hold the report to
    reported = [as_obj(g) for g in as_list(report.get("group"))]
    if len(reported) == 1 and len(groups) == 1:
        # A single group may be anonymous; a code it has must be the Measure's.
        mine, theirs = reported[0].get("code"), groups[0].get("code")
        if isinstance(mine, dict) and isinstance(theirs, dict) and not _matches(mine, theirs):
            message = (
                f"The code for this group ({_display(mine)}) does not match the measure definition ({_display(theirs)})"
            )
            run.add("error", "business-rule", message, f"{expr}.group[0]")
        _group(reported[0], groups[0], run, f"{expr}.group[0]")
        return
    used: list[int] = []
    for i, group in enumerate(reported):
        where = f"{expr}.group[{i}]"
        found = _find(group.get("code"), groups, "group", run, where, used)
        if found is not None:
            _group(group, groups[found], run, where)
    if report.get("type") != "data-collection":
        for n, group in enumerate(groups):
            if n not in used:
                message = f"The MeasureReport does not include a group for the group {_display(group.get('code'))}"
                run.add("warning", "business-rule", message, expr)


def _group(reported: dict[str, Any], group: dict[str, Any], run: Run, expr: str) -> None:
    populations = [as_obj(p) for p in as_list(group.get("population"))]
    used: list[int] = []
    for i, population in enumerate(as_list(reported.get("population"))):
        _find(as_obj(population).get("code"), populations, "group population", run, f"{expr}.population[{i}]", used)
    for n, population in enumerate(populations):
        code = as_obj(population.get("code"))
        observation = any(
            as_obj(c).get("system") == _POPULATION_SYSTEM and as_obj(c).get("code") == "measure-observation"
            for c in as_list(code.get("coding"))
        )
        if n not in used and not observation:
            message = f"The MeasureReport does not include a population for the group population {_display(code)}"
            run.add("warning", "business-rule", message, expr)
    stratifiers = [as_obj(s) for s in as_list(group.get("stratifier"))]
    used = []
    for i, stratifier in enumerate(as_list(reported.get("stratifier"))):
        # A report's stratifier lists its codes (0..*); the first is the one that names it.
        codes = as_list(as_obj(stratifier).get("code"))
        _find(codes[0] if codes else None, stratifiers, "group stratifier", run, f"{expr}.stratifier[{i}]", used)
    for n, stratifier in enumerate(stratifiers):
        if n not in used:
            message = (
                f"The MeasureReport does not include a stratifier for the stratifier with code "
                f"'{_display(stratifier.get('code'))}' (id = '{stratifier.get('id', '')}')"
            )
            run.add("warning", "business-rule", message, expr)


def _find(code: Any, defined: list[dict[str, Any]], what: str, run: Run, expr: str, used: list[int]) -> int | None:
    """The index of the definition whose code matches ``code`` (each matched once), else an error."""
    if not isinstance(code, dict) or not code:
        run.add(
            "error",
            "business-rule",
            f"Group should have a code that matches the {what} definition in the measure",
            expr,
        )
        return None
    found = next(
        (n for n, d in enumerate(defined) if isinstance(d.get("code"), dict) and _matches(code, d["code"])), None
    )
    if found is None:
        run.add("error", "business-rule", f"The code for this {what} has no match in the measure definition", expr)
        return None
    if found in used:
        run.add("error", "business-rule", f"The code for this {what} is duplicated", expr)
        return None
    used.append(found)
    return found


def _matches(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two CodeableConcepts name the same thing: a coding in common (the same code, and the same system unless
    one leaves it out: a bare code does not contradict a system), or, without codings, the same text."""
    left = [as_obj(c) for c in as_list(a.get("coding"))]
    right = [as_obj(c) for c in as_list(b.get("coding"))]
    if left or right:
        return any(
            x.get("code") is not None
            and x.get("code") == y.get("code")
            and (x.get("system") is None or y.get("system") is None or x.get("system") == y.get("system"))
            for x in left
            for y in right
        )
    return isinstance(a.get("text"), str) and a.get("text") == b.get("text")


def _display(code: Any) -> str:
    code = as_obj(code)
    if isinstance(code.get("text"), str):
        return str(code["text"])
    for coding in as_list(code.get("coding")):
        coding = as_obj(coding)
        for key in ("display", "code"):
            if isinstance(coding.get(key), str):
                return str(coding[key])
    return ""
