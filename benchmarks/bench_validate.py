"""Validation speed: full validation (structure, profiles, bindings, invariants) per resource, next to
fhir.resources R4B parsing the same input in the same run; and the cold start of a new process.

Run: make bench (or .venv/bin/python benchmarks/bench_validate.py). Targets: <= 1 ms per resource
(median), cold start <= 2 s with the index cache warm.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from fhir.resources.R4B.bundle import Bundle

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge.config import DATA_DIR, Settings  # noqa: E402
from casebridge.domain.reader import read_case  # noqa: E402
from casebridge.mapping.engine import MappingSet  # noqa: E402
from casebridge.validation.service import load_validator  # noqa: E402

SEED = DATA_DIR / "cases" / "dystrophic-calcification-right-forearm.yaml"


def median_s(fn: object, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def big_bundle(seed: dict, size: int) -> dict:
    """``size`` resources: copies of the seed's entries with fresh ids (each copy's references renamed
    with it, so every reference still resolves)."""
    entries: list[dict] = []
    copy_no = 0
    while len(entries) < size:
        raw = json.dumps(seed["entry"])
        for e in seed["entry"]:
            old = e["resource"]["id"]
            raw = raw.replace(old, f"{old[:-4]}{copy_no:04x}")
        entries.extend(json.loads(raw))
        copy_no += 1
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries[:size]}


def main() -> None:
    settings = Settings()
    mappings = MappingSet.load(settings.mappings_dir)
    seed = mappings.convert(read_case(SEED.read_bytes(), source=SEED.name))
    validator = load_validator(settings)
    validator.validate(seed)  # compile once: the figures below are steady state
    print(f"{'input':28} {'resources':>9} {'validate/res':>13} {'R4B parse/res':>14} {'ratio':>6}")
    for name, bundle, runs in (("seed Bundle", seed, 50), ("1,000-resource Bundle", big_bundle(seed, 1000), 5)):
        n = len(bundle["entry"])
        v = median_s(lambda b=bundle: validator.validate(b), runs) / n * 1000
        p = median_s(lambda b=bundle: Bundle.model_validate(b), runs) / n * 1000
        print(f"{name:28} {n:>9} {v:>11.3f}ms {p:>12.3f}ms {v / p:>6.2f}")
    # Cold start: a new process that loads the index (cache files warm) and validates the seed once.
    code = (
        "import time; t=time.perf_counter();"
        "from casebridge.config import Settings; from casebridge.validation.service import load_validator;"
        "import json,sys; v=load_validator(Settings()); v.validate(json.load(open(sys.argv[1])));"
        "print(time.perf_counter()-t)"
    )
    seed_file = ROOT / "benchmarks" / ".seed-bundle.json"
    seed_file.write_text(json.dumps(seed))
    try:
        colds = [
            float(
                subprocess.run(
                    [sys.executable, "-c", code, str(seed_file)], capture_output=True, text=True, cwd=ROOT, check=True
                ).stdout
            )
            for _ in range(3)
        ]
    finally:
        seed_file.unlink()
    print(f"cold start (imports + index + first validation of the seed), median of 3: {statistics.median(colds):.2f} s")


if __name__ == "__main__":
    main()
