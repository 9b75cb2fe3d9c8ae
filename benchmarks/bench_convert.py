"""Conversion speed: case file -> transaction Bundle, next to fhir.resources parsing that same Bundle.

Run: make bench (or .venv/bin/python benchmarks/bench_convert.py [--reps 15] [--cpu]).

Conversion, as timed, is ``MappingSet.convert(read_case(file bytes))``:
- read: the bytes decoded and parsed (YAML or JSON, with the reader's size, anchor and depth checks);
- validate: the case model (``CaseReport.model_validate``, with its cross-checks of ids and times);
- map: the mapping engine building the transaction Bundle as a dict (resources, ids, narratives).
The file is already in memory; loading the mapping folder (once per process) is timed apart, and serialising the
Bundle is not timed. The baseline is fhir.resources' R4B ``Bundle.model_validate`` of the same Bundle (the dict
decoded from its JSON, decoding not timed).

Both are measured in the same run, interleaved (each repetition times every case's conversion, its stages and
its parse, alternating which goes first), and the median over repetitions is printed: absolute times on shared
machines are noisy, the ratio is the figure to compare between runs. Target (issue I): conversion <= 0.2 x the
R4B parse time. The 1.0 read path (1.0 validation + upgrade + 2.0 validation) is timed against the 2.0 file of
the same case the same way.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import orjson
from fhir.resources.R4B.bundle import Bundle

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge import _native  # noqa: E402
from casebridge.config import DATA_DIR, Settings  # noqa: E402
from casebridge.domain import case_v1  # noqa: E402
from casebridge.domain.case import CaseReport  # noqa: E402
from casebridge.domain.migrate import upgrade  # noqa: E402
from casebridge.domain.reader import parse_document, read_case, validate_case  # noqa: E402
from casebridge.mapping.engine import MappingSet  # noqa: E402

FIXTURES = ROOT / "fixtures" / "cases"
CASES_1_0 = ROOT / "tests" / "data" / "cases-1.0"
# The case's derived views, computed by the first mapping and kept: dropped before each timed "map", which would
# otherwise time a case already half mapped.
_CACHED = [name for name, value in vars(CaseReport).items() if isinstance(value, cached_property)]


def _map_fresh(mappings: MappingSet, case: CaseReport) -> object:
    for name in _CACHED:
        case.__dict__.pop(name, None)
    return mappings.convert(case)


@dataclass
class Timed:
    """One row: named timings, each a list of samples (one per repetition), in seconds."""

    name: str
    fns: dict[str, Callable[[], object]]
    resources: int = 0  # entries of the Bundle produced
    samples: dict[str, list[float]] = field(default_factory=dict)

    def median_ms(self, key: str) -> float:
        return statistics.median(self.samples[key]) * 1000


def run(rows: list[Timed], reps: int, warmup: int, clock: Callable[[], float]) -> None:
    """Every row's every function once per repetition, the order of the functions reversed every other
    repetition, so that a slow spell of the machine falls on conversion and parse alike."""
    for row in rows:
        row.samples = {k: [] for k in row.fns}
    for rep in range(warmup + reps):
        gc.collect()
        for row in rows:
            items = list(row.fns.items())
            if rep % 2:
                items.reverse()
            for key, fn in items:
                t0 = clock()
                fn()
                elapsed = clock() - t0
                if rep >= warmup:
                    row.samples[key].append(elapsed)


def total_ms(rows: list[Timed], key: str) -> float:
    """Median over repetitions of the sum over rows (one repetition's whole set of cases)."""
    reps = len(rows[0].samples[key])
    return statistics.median(sum(r.samples[key][i] for r in rows) for i in range(reps)) * 1000


def conversion_rows(paths: list[Path], mappings: MappingSet) -> list[Timed]:
    rows = []
    for path in paths:
        data = path.read_bytes()
        name = path.name
        doc = parse_document(data, source=name)
        case = validate_case(doc, source=name)
        bundle_json = orjson.dumps(mappings.convert(case))
        bundle = orjson.loads(bundle_json)
        Bundle.model_validate(bundle)  # the baseline must accept what it is timed on
        row = Timed(
            name,
            resources=len(bundle["entry"]),
            fns={
                "convert": lambda d=data, n=name: mappings.convert(read_case(d, source=n)),
                "read": lambda d=data, n=name: parse_document(d, source=n),
                "validate": lambda doc=doc, n=name: validate_case(doc, source=n),
                "map": lambda c=case: _map_fresh(mappings, c),
                "parse": lambda b=bundle: Bundle.model_validate(b),
            },
        )
        rows.append(row)
    return rows


def upgrade_rows(pairs: list[tuple[Path, Path]]) -> list[Timed]:
    rows = []
    for old, new in pairs:
        old_data, new_data = old.read_bytes(), new.read_bytes()
        old_doc = parse_document(old_data, source=old.name)
        new_doc = parse_document(new_data, source=new.name)
        assert old_doc.get("schema_version") == case_v1.SCHEMA_VERSION, old
        assert new_doc.get("schema_version") != case_v1.SCHEMA_VERSION, new
        v1 = case_v1.CaseReport.model_validate(old_doc)
        upgraded, _notes = upgrade(v1)
        rows.append(
            Timed(
                old.stem,
                {
                    "1.0 read": lambda d=old_data, n=old.name: read_case(d, source=n),
                    "2.0 read": lambda d=new_data, n=new.name: read_case(d, source=n),
                    "1.0 model": lambda doc=old_doc, n=old.name: validate_case(doc, source=n),
                    "2.0 model": lambda doc=new_doc, n=new.name: validate_case(doc, source=n),
                    "1.0 check": lambda doc=old_doc: case_v1.CaseReport.model_validate(doc),
                    "upgrade": lambda v=v1: upgrade(v),
                    "2.0 check": lambda u=upgraded: CaseReport.model_validate(u),
                },
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="repetitions (the median over these is printed)")
    parser.add_argument("--warmup", type=int, default=2, help="repetitions run first and not counted")
    parser.add_argument("--cpu", action="store_true", help="time this process's CPU time instead of wall time")
    parser.add_argument("--only", default="", help="only the case files whose name contains this")
    args = parser.parse_args()
    clock = time.process_time if args.cpu else time.perf_counter

    print(f"compiled modules in use: {_native.in_use()}; clock: {'CPU' if args.cpu else 'wall'}")
    settings = Settings()
    t0 = time.perf_counter()
    mappings = MappingSet.load(settings.mappings_dir, terminology=settings.terminology())
    print(f"mapping folder load (once per process, not in the figures): {(time.perf_counter() - t0) * 1000:.1f} ms")

    paths = sorted(FIXTURES.glob("*.yaml")) + sorted((DATA_DIR / "cases").glob("*.yaml"))
    paths = [p for p in paths if args.only in p.name]
    rows = conversion_rows(paths, mappings)
    run(rows, args.reps, args.warmup, clock)
    head = (
        f"{'case file':44} {'res':>4} {'read':>7} {'valid.':>7} {'map':>7} {'convert':>8} {'R4B parse':>9} {'ratio':>6}"
    )
    print(f"\nconversion, ms (median of {args.reps} interleaved repetitions)")
    print(head)
    for r in rows:
        conv, parse = r.median_ms("convert"), r.median_ms("parse")
        print(
            f"{r.name:44} {r.resources:>4} {r.median_ms('read'):>7.2f} {r.median_ms('validate'):>7.2f}"
            f" {r.median_ms('map'):>7.2f} {conv:>8.2f} {parse:>9.2f} {conv / parse:>6.2f}"
        )
    conv, parse = total_ms(rows, "convert"), total_ms(rows, "parse")
    stages = " ".join(f"{total_ms(rows, k):>7.1f}" for k in ("read", "validate", "map"))
    resources = sum(r.resources for r in rows)
    print(f"{f'total ({len(rows)} files)':44} {resources:>4} {stages} {conv:>8.1f} {parse:>9.1f} {conv / parse:>6.2f}")
    print(
        "convert = read (bytes -> document) + validate (case model) + map (-> Bundle dict), timed as one call;"
        " the stages are timed apart.\nratio = convert / R4B Bundle.model_validate of the produced Bundle;"
        " target <= 0.2"
    )

    pairs = [(p, DATA_DIR / "cases" / p.name) for p in sorted(CASES_1_0.glob("*.yaml"))]
    pairs = [(old, new) for old, new in pairs if new.exists() and args.only in new.name]
    if pairs:
        urows = upgrade_rows(pairs)
        run(urows, args.reps, args.warmup, clock)
        keys = ["1.0 read", "2.0 read", "1.0 model", "2.0 model", "1.0 check", "upgrade", "2.0 check"]
        print(f"\n1.0 read path against the 2.0 file of the same case, ms (median of {args.reps})")
        print(f"{'case':40} " + " ".join(f"{k:>9}" for k in keys) + f" {'model x':>8}")
        for r in urows:
            cells = " ".join(f"{r.median_ms(k):>9.3f}" for k in keys)
            print(f"{r.name:40} {cells} {r.median_ms('1.0 model') / r.median_ms('2.0 model'):>8.2f}")
        cells = " ".join(f"{total_ms(urows, k):>9.3f}" for k in keys)
        print(f"{'total':40} {cells} {total_ms(urows, '1.0 model') / total_ms(urows, '2.0 model'):>8.2f}")
        print(
            "read = read_case from the file's bytes; model = from the parsed document: 1.0 check + upgrade +"
            " 2.0 check for a 1.0 file,\n2.0 check alone for a 2.0 file; model x = 1.0 model / 2.0 model"
        )


if __name__ == "__main__":
    main()
