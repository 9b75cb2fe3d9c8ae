"""Conversion speed: case -> transaction Bundle, next to fhir.resources parsing that same Bundle.

Run: make bench (or .venv/bin/python benchmarks/bench_convert.py [--n 1000]).
The baseline is measured in the same run, on the same machine, because absolute times on shared
machines are noisy: the ratio is the figure to compare between runs. Target: <= 2 ms per case.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from fhir.resources.R4B.bundle import Bundle

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge.config import DATA_DIR, Settings  # noqa: E402
from casebridge.domain.reader import read_case  # noqa: E402
from casebridge.mapping.engine import MappingSet  # noqa: E402


def median_ms(fn: Callable[[], object], n: int) -> float:
    for _ in range(min(50, n)):  # warm-up
        fn()
    gc.collect()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000, help="conversions per case (median over these)")
    args = parser.parse_args()
    settings = Settings()
    t0 = time.perf_counter()
    mappings = MappingSet.load(settings.mappings_dir, terminology=settings.terminology())
    load_ms = (time.perf_counter() - t0) * 1000
    print(f"mapping folder load (once per process): {load_ms:.1f} ms")
    print(f"{'case':52} {'resources':>9} {'convert':>9} {'+ parse':>9} {'+ JSON':>9} {'R4B parse':>10} {'ratio':>6}")
    for path in sorted((DATA_DIR / "cases").glob("*.yaml")):
        data = path.read_bytes()
        case = read_case(data, source=path.name)
        bundle = mappings.convert(case)
        convert = median_ms(lambda c=case: mappings.convert(c), args.n)
        end_to_end = median_ms(lambda d=data, n=path.name: mappings.convert(read_case(d, source=n)), args.n)
        with_json = median_ms(
            lambda d=data, n=path.name: orjson.dumps(mappings.convert(read_case(d, source=n))), args.n
        )
        parse = median_ms(lambda b=bundle: Bundle.model_validate(b), args.n)
        print(
            f"{path.stem:52} {len(bundle['entry']):>9} {convert:>7.3f}ms {end_to_end:>7.3f}ms {with_json:>7.3f}ms"
            f" {parse:>8.3f}ms {convert / parse:>6.2f}"
        )
    print(
        f"median of {args.n} runs each. convert: case model -> Bundle dict; + parse: from YAML bytes;"
        " + JSON: and serialised; ratio: convert / R4B parse of the produced Bundle"
    )


if __name__ == "__main__":
    main()
