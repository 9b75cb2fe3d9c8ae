"""Cost of large inputs: CPU time at n, 2n, 4n and 8n and the growth per doubling (2.0 is linear, 4.0 is
quadratic), for each shape next to a baseline of the same size spread over ordinary inputs, measured in the
same run.

Shapes:
- a StructureDefinition with n snapshot elements (and the same differential), validated as a resource
  ($validate of a posted StructureDefinition); baseline: a collection Bundle of StructureDefinitions of
  ten elements each, n elements in all;
- a StructureDefinition with only a differential of n slices, its snapshot generated; baseline: the same
  number of slices spread over profiles of ten;
- a Questionnaire of n items (in groups of ten), validated; baseline: a Bundle of Questionnaires of ten items;
- a List of n contained resources, each referred to ('#id'); baseline: a Bundle of n Basic resources;
- a case file that is one YAML list of n bytes (refused: a case is a mapping), and a YAML case mapping of n
  bytes (refused past MAX_YAML_NODES values); baseline: the same bytes as JSON, parsed.

Run: .venv/bin/python benchmarks/bench_scaling.py [--scale F] (F multiplies every n; 1 by default).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge.config import Settings  # noqa: E402
from casebridge.definitions.snapshot import generate_snapshot  # noqa: E402
from casebridge.domain.reader import read_case  # noqa: E402
from casebridge.errors import InputError  # noqa: E402
from casebridge.validation.service import load_index  # noqa: E402
from casebridge.validation.validator import Validator  # noqa: E402


def cpu(fn: Callable[[], object], repeat: int = 3) -> float:
    """The best CPU time of ``repeat`` runs, without the garbage collector (its passes come at moments that
    depend on what else was allocated)."""
    best = float("inf")
    for _ in range(repeat):
        gc.disable()
        try:
            start = time.process_time()
            fn()
            best = min(best, time.process_time() - start)
        finally:
            gc.enable()
    return best


def timed(make: Callable[[int], Any], run: Callable[[Any], object], repeat: int = 3) -> Callable[[int], float]:
    """n -> the CPU time of ``run`` on ``make(n)`` (the input is made before the clock starts)."""

    def at(n: int) -> float:
        doc = make(n)
        return cpu(lambda: run(doc), repeat)

    return at


def profile(n: int, url: str = "http://example.org/StructureDefinition/large") -> dict[str, Any]:
    elements = [{"id": "Basic", "path": "Basic", "min": 0, "max": "*"}]
    elements += [
        {"id": f"Basic.extension:e{i}", "path": "Basic.extension", "sliceName": f"e{i}", "min": 0, "max": "1"}
        for i in range(n - 1)
    ]
    return {
        "resourceType": "StructureDefinition",
        "url": url,
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


def differential(n: int) -> dict[str, Any]:
    sd = profile(1)
    del sd["snapshot"]
    sd["differential"] = {
        "element": [{"id": "Basic.extension", "path": "Basic.extension", "slicing": {"rules": "open"}}]
        + [{"id": f"Basic.extension:e{i}", "path": "Basic.extension", "sliceName": f"e{i}"} for i in range(n)]
    }
    return sd


def questionnaire(n: int) -> dict[str, Any]:
    groups = [
        {"linkId": f"g{g}", "type": "group", "item": [{"linkId": f"i{g}.{i}", "type": "string"} for i in range(10)]}
        for g in range(max(1, n // 10))
    ]
    return {"resourceType": "Questionnaire", "status": "active", "item": groups}


def contained(n: int) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "contained": [{"resourceType": "Basic", "id": f"b{i}", "code": {"text": "x"}} for i in range(n)],
        "entry": [{"item": {"reference": f"#b{i}"}} for i in range(n)],
    }


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


YAML_ITEM = "- {a: 1, b: [x, y], c: text}\n"


def yaml_list(n: int) -> bytes:
    return (YAML_ITEM * (n // len(YAML_ITEM))).encode()


def yaml_mapping(n: int) -> bytes:
    return b"patient:\n  sex: female\nextra:\n" + (("  " + YAML_ITEM) * (n // (len(YAML_ITEM) + 2))).encode()


def as_json(n: int) -> bytes:
    return json.dumps({"extra": [{"a": 1, "b": ["x", "y"], "c": "text"}] * (n // len(YAML_ITEM))}).encode()


def read(data: bytes, source: str) -> None:
    try:
        read_case(data, source=source, max_bytes=len(data) + 1)
    except InputError:
        pass


def row(name: str, sizes: list[int], shape: Callable[[int], float], baseline: Callable[[int], float]) -> None:
    times = [shape(n) for n in sizes]
    bases = [baseline(n) for n in sizes]
    cells = "  ".join(f"{t:7.3f}" for t in times)
    base_cells = "  ".join(f"{t:7.3f}" for t in bases)
    growth = max(b / max(a, 1e-6) for a, b in itertools.pairwise(times))
    base_growth = max(b / max(a, 1e-6) for a, b in itertools.pairwise(bases))
    print(f"{name:34} {cells}   growth/doubling {growth:4.2f}")
    print(f"{'  baseline':34} {base_cells}   growth/doubling {base_growth:4.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size by this")
    scale = parser.parse_args().scale
    index = load_index(Settings())
    validator = Validator(index)
    validator.validate({"resourceType": "Patient"})  # compile the common trees first

    def sizes(n: int) -> list[int]:
        return [max(10, int(n * scale)) * 2**k for k in range(4)]

    print(f"{'shape (CPU seconds at n, 2n, 4n, 8n)':34} {'n':>7}  {'2n':>7}  {'4n':>7}  {'8n':>7}")
    check = validator.validate
    row(
        "StructureDefinition, n elements",
        sizes(250),
        timed(profile, check, 1),
        timed(lambda n: bundle([profile(10, f"http://x/{i}") for i in range(n // 10)]), check, 1),
    )
    row(
        "snapshot of n differential slices",
        sizes(1000),
        timed(differential, lambda sd: generate_snapshot(sd, index)),
        timed(
            lambda n: [differential(10) for _ in range(n // 10)],
            lambda sds: [generate_snapshot(sd, index) for sd in sds],
        ),
    )
    row(
        "Questionnaire, n items",
        sizes(500),
        timed(questionnaire, check, 1),
        timed(lambda n: bundle([questionnaire(10) for _ in range(n // 10)]), check, 1),
    )
    row(
        "List of n '#id' contained resources",
        sizes(1000),
        timed(contained, check),
        timed(lambda n: bundle([contained(1) for _ in range(n)]), check),
    )
    row(
        "YAML case: a list of n bytes",
        sizes(625_000),
        timed(yaml_list, lambda data: read(data, "cases.yaml")),
        timed(as_json, lambda data: read(data, "cases.json")),
    )
    row(
        "YAML case: a mapping of n bytes",
        sizes(625_000),
        timed(yaml_mapping, lambda data: read(data, "case.yaml")),
        timed(as_json, lambda data: read(data, "case.json")),
    )


if __name__ == "__main__":
    main()
