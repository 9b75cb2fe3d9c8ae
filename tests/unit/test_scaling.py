"""Large inputs cost about twice as much when twice as large, or are refused by a limit.

Each shape is timed (CPU time, the best of a few runs) at n, 2n and 4n; the growth per doubling must stay
below GROWTH (2 is linear, 4 quadratic). The sizes are moderate: the whole file runs in well under 30 s.
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex
from casebridge.definitions.snapshot import generate_snapshot
from casebridge.domain.reader import MAX_YAML_NODES, read_case
from casebridge.errors import CaseFileError
from casebridge.validation.fhirpath import Resolver, evaluate, hoist_constants
from casebridge.validation.service import load_index
from casebridge.validation.validator import Validator

GROWTH = 2.6
REPEAT = 3


@pytest.fixture(scope="module")
def base_index() -> DefinitionIndex:
    return load_index(Settings())


@pytest.fixture(scope="module")
def validator(base_index: DefinitionIndex) -> Validator:
    v = Validator(base_index)
    v.validate({"resourceType": "Patient"})  # compile the common trees first
    return v


def cpu(fn: Callable[[], object]) -> float:
    # Without the collector: its passes come at moments that depend on what else was allocated before.
    gc.disable()
    try:
        start = time.process_time()
        fn()
        return time.process_time() - start
    finally:
        gc.enable()


def assert_linear(make: Callable[[int], Any], run: Callable[[Any], object], sizes: tuple[int, ...]) -> None:
    """The time ratios between successive sizes stay below GROWTH: each size's time is its best of REPEAT
    rounds, interleaved so that other work on the machine weighs on every size alike; when a ratio is above,
    one more set of rounds is taken before failing."""
    docs = [make(n) for n in sizes]
    best = [float("inf")] * len(sizes)
    ratios: list[float] = []
    for _ in range(2):
        for _ in range(REPEAT):
            for i, doc in enumerate(docs):
                best[i] = min(best[i], cpu(lambda doc=doc: run(doc)))
        ratios = [later / max(earlier, 1e-6) for earlier, later in itertools.pairwise(best)]
        if max(ratios) < GROWTH:
            return
    raise AssertionError(f"growth per doubling {ratios} (sizes {sizes}, CPU seconds {best})")


def structure_definition(n: int) -> dict[str, Any]:
    """A profile of Basic with n snapshot elements (slices of extension) and the same differential."""
    elements = [{"id": "Basic", "path": "Basic", "min": 0, "max": "*"}]
    elements += [
        {"id": f"Basic.extension:e{i}", "path": "Basic.extension", "sliceName": f"e{i}", "min": 0, "max": "1"}
        for i in range(n - 1)
    ]
    return {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/large",
        "name": "Large",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Basic",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Basic",
        "derivation": "constraint",
        "snapshot": {"element": elements},
        "differential": {"element": [dict(e) for e in elements]},
    }


SDF_8 = (
    "(%resource.kind = 'logical' or element.first().path = %resource.type) and "
    "element.tail().all(path.startsWith(%resource.snapshot.element.first().path&'.'))"
)


def test_a_resource_path_inside_all_is_evaluated_once() -> None:
    """sdf-8 read %resource.snapshot.element.first() again for each element: quadratic in the snapshot."""

    def run(sd: dict[str, Any]) -> object:
        result = evaluate(SDF_8, sd["snapshot"], base=None, resource=sd, root=sd, resolver=Resolver(sd, {}))
        assert result == [True]
        return result

    assert_linear(structure_definition, run, (1000, 2000, 4000))


@pytest.mark.parametrize(
    ("expression", "hoisted"),
    [
        ("(%resource.kind = 'x')", "(%_constant0 = 'x')"),
        ("a.all(b = %resource.c.first().d&'.')", "a.all(b = %_constant0&'.')"),
        (
            "a.all(b.startsWith(%resource.c.d.replaceMatches('x', '')))",
            "a.all(b.startsWith(%_constant0.replaceMatches('x', '')))",
        ),
        ("%resource.a = 'b'", "%resource.a = 'b'"),  # evaluated once anyway
        ("a.where(b = '(%resource.c)')", "a.where(b = '(%resource.c)')"),  # inside a string
        ("a.where(b = %resource.c.where(d))", "a.where(b = %_constant0.where(d))"),
    ],
)
def test_which_paths_are_hoisted(expression: str, hoisted: str) -> None:
    assert hoist_constants(expression)[0] == hoisted


def test_a_large_structure_definition_validates_in_linear_time(validator: Validator) -> None:
    assert_linear(structure_definition, validator.validate, (40, 80, 160))


def sliced_differential(n: int) -> dict[str, Any]:
    """A profile of Basic that only has a differential: n slices of extension."""
    elements: list[dict[str, Any]] = [
        {"id": "Basic.extension", "path": "Basic.extension", "slicing": {"rules": "open", "discriminator": []}}
    ]
    elements += [
        {"id": f"Basic.extension:e{i}", "path": "Basic.extension", "sliceName": f"e{i}", "max": "1"} for i in range(n)
    ]
    sd = structure_definition(1)
    del sd["snapshot"]
    sd["differential"] = {"element": elements}
    return sd


def test_a_snapshot_is_generated_in_linear_time(base_index: DefinitionIndex) -> None:
    """Each new slice scanned the slices before it, and each element's id was searched element by element."""
    snapshot = generate_snapshot(sliced_differential(3), base_index)["snapshot"]["element"]
    assert [e["id"] for e in snapshot if e.get("sliceName")] == [f"Basic.extension:e{i}" for i in range(3)]
    assert_linear(sliced_differential, lambda sd: generate_snapshot(sd, base_index), (1000, 2000, 4000))


def contained_list(n: int) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "contained": [{"resourceType": "Basic", "id": f"b{i}", "code": {"text": "x"}} for i in range(n)],
        "entry": [{"item": {"reference": f"#b{i}"}} for i in range(n)],
    }


def test_references_to_contained_resources_in_linear_time(validator: Validator) -> None:
    """Each '#id' reference scanned the contained resources (in the walk and in ref-1): quadratic."""
    issues = validator.validate(contained_list(50))
    assert not [i for i in issues if i.severity == "error"], issues
    assert_linear(contained_list, validator.validate, (2000, 4000, 8000))


def questionnaire(n: int) -> dict[str, Any]:
    groups = [
        {"linkId": f"g{g}", "type": "group", "item": [{"linkId": f"i{g}.{i}", "type": "string"} for i in range(10)]}
        for g in range(n // 10)
    ]
    return {"resourceType": "Questionnaire", "status": "active", "item": groups}


def test_a_large_questionnaire_validates_in_linear_time(validator: Validator) -> None:
    assert_linear(questionnaire, validator.validate, (60, 120, 240))


def refused(text: bytes) -> None:
    with pytest.raises(CaseFileError):
        read_case(text, source="case.yaml", max_bytes=len(text))


def test_a_large_yaml_list_is_refused_at_once() -> None:
    """A 5 MB YAML list was built in full (14 s) before being refused for not being a case."""
    text = b"- {a: 1, b: [x, y], c: text}\n" * 180_000
    with pytest.raises(CaseFileError, match="not a list"):
        read_case(text, source="cases.yaml", max_bytes=len(text))
    assert cpu(lambda: refused(text)) < 0.5


def test_a_yaml_case_of_too_many_values_is_refused_quickly() -> None:
    text = b"patient:\n  sex: female\nextra:\n" + b"  - {a: 1, b: [x, y], c: text}\n" * 180_000
    with pytest.raises(CaseFileError, match=f"more than {MAX_YAML_NODES:,} values"):
        read_case(text, source="case.yaml", max_bytes=len(text))
    assert cpu(lambda: refused(text)) < 1.5
