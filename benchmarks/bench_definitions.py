"""Validation speed of large definitional resources: the core StructureDefinitions, CodeSystems and ValueSets,
checked with the native ElementDefinition, StructureDefinition and CodeSystem invariants
(invariants.DEFINITIONAL_NATIVES) next to the same validation with those invariants left to the FHIRPath
interpreter, measured in the same run.

Inputs come from the pinned hl7.fhir.r4.examples#4.0.1 package (``make setup`` fetches it). Both validators
share one definition index; the baseline is built with the definitional natives taken out of the table (each
validator prepares its constraint lists once, on first use) and must report the same issues.

Run: .venv/bin/python benchmarks/bench_definitions.py [--quick] (--quick leaves out the Bundles,
Bundle-profiles-others.json, Bundle-resources.json and Bundle-dataelements.json: a few minutes through the
interpreter).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge.config import Settings  # noqa: E402
from casebridge.definitions.packages import default_cache_dir  # noqa: E402
from casebridge.validation import invariants  # noqa: E402
from casebridge.validation.service import load_index  # noqa: E402
from casebridge.validation.validator import ValidationOptions, Validator  # noqa: E402

EXAMPLES = "hl7.fhir.r4.examples#4.0.1"
# (file, runs of each validator): the median is reported.
INPUTS = (
    ("StructureDefinition-ExplanationOfBenefit.json", 3),
    ("StructureDefinition-Observation.json", 3),
    ("CodeSystem-v3-ActCode.json", 3),
    ("CodeSystem-dicom-dcim.json", 3),
    ("ValueSet-c80-doc-typecodes.json", 3),
    ("Bundle-profiles-others.json", 1),
    # 6,781 StructureDefinitions of data elements and the core resources' own definitions: the per-definition rules
    # (sdf-2 to sdf-21, cpt-2 on their contacts, opd-* and cpb-12).
    ("Bundle-resources.json", 1),
    ("Bundle-dataelements.json", 1),
)


def median_s(fn: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="leave out the Bundles")
    args = parser.parse_args()
    settings = Settings()
    folder = (settings.fhir_package_cache or default_cache_dir()) / EXAMPLES / "package"
    index = load_index(settings)
    options = ValidationOptions(unknown_profiles=settings.unknown_profiles)
    native = Validator(index, options=options)
    interpreted = Validator(index, options=options)
    print(f"{'input':48} {'size':>8} {'native':>9} {'FHIRPath':>9} {'speed-up':>8}")
    for name, runs in INPUTS:
        if args.quick and name.startswith("Bundle-"):
            continue
        resource = orjson.loads((folder / name).read_bytes())
        size = (folder / name).stat().st_size // 1024
        # The interpreter's run first, with the natives out of the table, so that it prepares its lists without
        # them; the first validation of each (compiling expressions, building trees) is not timed.
        removed = {e: invariants._NATIVE_EXPRESSIONS.pop(e) for e in invariants.DEFINITIONAL_NATIVES}
        try:
            slow_issues = interpreted.validate(resource)
            slow = median_s(lambda r=resource: interpreted.validate(r), runs)
        finally:
            invariants._NATIVE_EXPRESSIONS.update(removed)
        fast_issues = native.validate(resource)
        fast = median_s(lambda r=resource: native.validate(r), runs)
        same = "" if fast_issues == slow_issues else "  DIFFERENT ISSUES"
        print(f"{name:48} {size:>6}KB {fast:>8.3f}s {slow:>8.3f}s {slow / fast:>7.1f}x{same}")


if __name__ == "__main__":
    main()
