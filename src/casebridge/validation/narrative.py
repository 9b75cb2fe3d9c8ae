"""Language sections of a narrative, as a profile controls them with the narrative-language-control extension.

A narrative in several languages puts each in a language section: a child element of the narrative's div with
a ``lang`` (or ``xml:lang``) attribute. A profile may say, on a Narrative element, which sections it wants
(http://hl7.org/fhir/StructureDefinition/narrative-language-control): ``_no`` (none), ``_yes`` (some),
``_resource`` (one for the resource's language), or language codes (one for each).

Apart from the walk because the rule sits on the profile's element definition (which the compiled tree does
not keep) and reads the XHTML: it is looked up once per profile, and runs only where a profile has it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import defusedxml.ElementTree as SafeET

from casebridge.definitions.structure import StructureTree
from casebridge.validation.issues import Run, as_list

if TYPE_CHECKING:
    from casebridge.validation.validator import Validator

CONTROL = "http://hl7.org/fhir/StructureDefinition/narrative-language-control"
_LANG = ("lang", "{http://www.w3.org/XML/1998/namespace}lang")
# id(tree) -> (the tree, kept so that the id stays its own; (element path, controls) of its Narrative elements)
_CONTROLS: dict[int, tuple[StructureTree, tuple[tuple[str, tuple[str, ...]], ...]]] = {}
_MAX_CACHED = 4096


def controls(validator: Validator, tree: StructureTree) -> tuple[tuple[str, tuple[str, ...]], ...]:
    cached = _CONTROLS.get(id(tree))
    if cached is not None and cached[0] is tree:
        return cached[1]
    found: dict[str, tuple[str, ...]] = {}
    sd = validator.definitions.get(tree.url) if tree.derivation == "constraint" else None
    if isinstance(sd, dict):
        for part in ("snapshot", "differential"):
            holder = sd.get(part)
            for element in as_list(holder.get("element") if isinstance(holder, dict) else None):
                if not isinstance(element, dict) or not isinstance(element.get("path"), str):
                    continue
                codes = tuple(
                    e["valueCode"]
                    for e in as_list(element.get("extension"))
                    if isinstance(e, dict) and e.get("url") == CONTROL and isinstance(e.get("valueCode"), str)
                )
                if codes and ":" not in str(element.get("id", "")):
                    found.setdefault(element["path"], codes)
    result = tuple(found.items())
    if len(_CONTROLS) >= _MAX_CACHED:
        _CONTROLS.clear()
    _CONTROLS[id(tree)] = (tree, result)
    return result


def check_language_sections(
    validator: Validator, tree: StructureTree, res: dict[str, Any], expr: str, run: Run
) -> None:
    """The narrative-language-control rules of the profile ``tree`` on the resource ``res``."""
    rules = controls(validator, tree)
    if not rules:
        return
    profile = f"StructureDefinition[{tree.url}]"
    for path, codes in rules:
        steps = path.split(".")[1:]
        narrative: Any = res
        for step in steps:
            narrative = narrative.get(step) if isinstance(narrative, dict) else None
        if not isinstance(narrative, dict) or not isinstance(narrative.get("div"), str):
            continue
        sections = _sections(narrative["div"])
        if sections is None:
            continue  # not readable XHTML: the narrative's own checks report it
        where = f"{expr}.{'.'.join(steps)}"
        shown = ", ".join(sorted(set(sections)))
        for code in codes:
            if code == "_no" and sections:
                message = (
                    f"The xhtml has some language sections ({shown}), but language sections are prohibited "
                    f"in this context by the profile {profile}"
                )
                run.add("error", "business-rule", message, where, tree.url)
            elif code == "_yes" and not sections:
                message = (
                    "The xhtml has no language sections, but language sections are required in this context by "
                    f"the profile {profile}"
                )
                run.add("error", "business-rule", message, where, tree.url)
            elif code == "_resource":
                language = res.get("language")
                if isinstance(language, str) and language not in sections:
                    message = (
                        f"The profile {profile} requires a section in the narrative for the resource language "
                        f"({language}), but it was not found (found {shown})"
                    )
                    run.add("error", "business-rule", message, where, tree.url)
            elif not code.startswith("_") and code not in sections:
                message = (
                    f"The profile {profile} requires a section in the narrative for the language {code}, "
                    f"but it was not found (found {shown})"
                )
                run.add("error", "business-rule", message, where, tree.url)


def _sections(div: str) -> list[str] | None:
    """The languages of the div's language sections (its children with a lang), None when it does not parse."""
    try:
        root = SafeET.fromstring(div)
    except Exception:  # noqa: BLE001 - any parse failure: not judged here
        return None
    languages: list[str] = []
    for child in list(root):
        for attribute in _LANG:
            value = child.get(attribute)
            if value:
                languages.append(value)
                break
    return languages
