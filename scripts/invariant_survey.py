"""Every R4 core invariant run over the R4 examples: which ones cannot be evaluated on ordinary data.

Validates each resource of hl7.fhir.r4.examples#4.0.1 (from the FHIR package cache) with the project's
validator and counts the issues "Constraint X could not be evaluated", per invariant key. The R4 examples
are valid enough that every invariant should evaluate on them; a count here is a gap of the FHIRPath
engine or of our use of it.

    .venv/bin/python scripts/invariant_survey.py [--every N] [--messages] [--files]
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from casebridge.config import Settings
from casebridge.definitions.packages import default_cache_dir
from casebridge.validation.service import load_validator

_KEY = re.compile(r"^Constraint (\S+) could not be evaluated: (.*)$", re.S)


def example_files(every: int = 1) -> list[Path]:
    folder = (Settings().fhir_package_cache or default_cache_dir()) / "hl7.fhir.r4.examples#4.0.1" / "package"
    files = sorted(p for p in folder.glob("*.json") if p.name != "package.json" and not p.name.startswith("."))
    return files[::every]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=1, help="validate every Nth example (default: all)")
    parser.add_argument("--messages", action="store_true", help="print one message and file per invariant")
    parser.add_argument("--files", action="store_true", help="print the examples where each invariant throws")
    args = parser.parse_args()
    validator = load_validator(Settings())
    counts: collections.Counter[str] = collections.Counter()
    sample: dict[str, tuple[str, str]] = {}
    where: dict[str, set[str]] = collections.defaultdict(set)
    files = example_files(args.every)
    started = time.perf_counter()
    for path in files:
        resource = orjson.loads(path.read_bytes())
        for issue in validator.validate(resource):
            match = _KEY.match(issue.message)
            if match:
                counts[match[1]] += 1
                sample.setdefault(match[1], (path.name, match[2]))
                where[match[1]].add(path.name)
    elapsed = time.perf_counter() - started
    print(f"{len(files)} examples validated in {elapsed:.0f} s; {sum(counts.values())} invariants not evaluated")
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{key}\t{count}")
        if args.messages:
            name, message = sample[key]
            print(f"    {name}: {message[:300]}")
        if args.files:
            print("    " + " ".join(sorted(where[key])))
    return 1 if counts else 0


if __name__ == "__main__":
    raise SystemExit(main())
