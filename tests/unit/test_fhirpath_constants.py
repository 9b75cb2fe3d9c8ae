"""Paths on %resource hoisted out of where()/all() (fhirpath.hoist_constants) give what the expression as
written gives: every R4 core invariant that uses %resource, on the R4 examples it applies to."""

from __future__ import annotations

import json
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import ResourceNode

from casebridge.definitions.packages import default_cache_dir
from casebridge.validation.fhirpath import (
    _USER_FUNCTIONS,
    R4_MODEL,
    Resolver,
    _no_trace,
    _resolver,
    _typed,
    compile_expression,
    normalise,
)

CORE = default_cache_dir() / "hl7.fhir.r4.examples#4.0.1" / "package"


def invariants() -> list[tuple[str, str, str]]:
    """(resource type, element path, expression) of core invariants on %resource or %rootResource."""
    out = set()
    for file in sorted(CORE.glob("StructureDefinition-*.json")):
        sd = json.loads(file.read_text())
        if sd.get("derivation") != "specialization" or sd.get("kind") != "resource":
            continue
        for element in sd["snapshot"]["element"]:
            for c in element.get("constraint", ()):
                if "%resource" in c["expression"] or "%rootResource" in c["expression"]:
                    # dom-3 is the same on every resource: one type stands for the rest
                    if c["key"] != "dom-3" or sd["type"] in ("Patient", "Questionnaire", "StructureDefinition"):
                        out.add((sd["type"], element["path"], c["expression"]))
    return sorted(out)


def examples(resource_type: str) -> list[dict[str, Any]]:
    found = []
    for file in sorted(CORE.glob(f"{resource_type}-*.json"))[:15]:
        data = json.loads(file.read_text())
        if data.get("resourceType") == resource_type:
            found.append(data)
    return found


def _at(resource: dict[str, Any], path: str) -> list[Any]:
    node: list[Any] = [resource]
    for name in path.split(".")[1:]:
        node = [v for n in node if isinstance(n, dict) for v in ([n[name]] if name in n else [])]
    return node


@pytest.mark.parametrize(("resource_type", "path", "expression"), invariants())
def test_hoisted_paths_give_the_same_answers(resource_type: str, path: str, expression: str) -> None:
    plain = fhirpathpy.compile(
        normalise(expression), model=R4_MODEL, options={"userInvocationTable": _USER_FUNCTIONS, "traceFn": _no_trace}
    )
    hoisted = compile_expression(expression)
    assert hoisted is not plain
    checked = 0
    for resource in examples(resource_type):
        for node in _at(resource, path):
            token = _resolver.set(Resolver(resource, {}))
            try:
                variables = {"resource": _typed(resource), "rootResource": _typed(resource)}
                target = ResourceNode.create_node(node, path)
                assert hoisted(target, variables) == plain(target, variables), (resource.get("id"), expression)
            finally:
                _resolver.reset(token)
            checked += 1
    assert checked, f"no example of {resource_type} has {path}"
