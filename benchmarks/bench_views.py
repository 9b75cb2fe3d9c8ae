"""ViewDefinition speed: rows/s of a 9-column Observation view over generated Observations, casebridge's runner next
to sqlonfhir 0.0.2 and a hand-written orjson loop, in one run.

Run: .venv/bin/python benchmarks/bench_views.py [--sizes 10000 50000] [--rounds 3]

- The input: N laboratory-like Observations (seeded, the same file every run) written as NDJSON under .bench/.
- The view (``VIEW`` below): id via getResourceKey(), the patient via getReferenceKey(Patient), the LOINC code via
  ``where(system=...)``, the quantity's value and unit, the effective time, status, the interpretation and category
  codes.
- Three runners, each in a fresh subprocess that streams the file (one line at a time, decoded with orjson) and
  reports its own loop time and peak RSS (ru_maxrss): casebridge's ``run_view``; sqlonfhir in its own virtualenv
  (``.bench/sqlonfhir-venv``, created on first use: it pins an older fhirpathpy than casebridge's), driven through
  its evaluator one resource at a time rather than its ``eval``, which gathers every row in one list; and a
  hand-written loop taking the same nine values with plain dict access.
- Before timing, the three must give the same rows on the first 2,000 resources: a benchmark of runners that
  disagree measures nothing.
- Rounds are interleaved (each round runs the three, the order rotated), the median round is printed per runner,
  with the ratios casebridge / sqlonfhir and casebridge / hand loop. Targets (issue J): >= 20 x sqlonfhir and
  >= 0.5 x the hand loop; peak memory flat in N (the N=10,000 and N=50,000 figures side by side).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bench"
SQLONFHIR_VENV = WORK / "sqlonfhir-venv"
SQLONFHIR_PINS = ("sqlonfhir==0.0.2", "orjson==3.13.0")
CHECKED = 2000  # resources whose rows the three runners must agree on

LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"

VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "observation_lab",
    "resource": "Observation",
    "status": "active",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "patient_id", "path": "subject.getReferenceKey(Patient)"},
                {"name": "code", "path": f"code.coding.where(system='{LOINC}').code.first()"},
                {"name": "value", "path": "value.ofType(Quantity).value"},
                {"name": "unit", "path": "value.ofType(Quantity).code"},
                {"name": "effective", "path": "effective.ofType(dateTime)"},
                {"name": "status", "path": "status"},
                {"name": "interpretation", "path": "interpretation.coding.code.first()"},
                {"name": "category", "path": "category.coding.code.first()"},
            ]
        }
    ],
}

# (LOINC code, display, UCUM unit, low, high, decimals)
_TESTS = [
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.0, 11.0, 1),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145, 0),
    ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 0, 5, 1),
]
_FLAGS = {"L": "Low", "N": "Normal", "H": "High"}


def observation(i: int, rng: random.Random) -> dict[str, Any]:
    code, display, unit, low, high, places = _TESTS[rng.randrange(len(_TESTS))]
    span = high - low
    value = round(rng.uniform(low - span * 0.3, high + span * 0.3), places)
    value = int(value) if places == 0 else value
    flag = "L" if value < low else "H" if value > high else "N"
    codings = [{"system": LOINC, "code": code, "display": display}]
    if i % 4 == 0:  # a local code first, as laboratory systems send: the LOINC one must be picked by its system
        codings.insert(0, {"system": "http://lab.example.org/codes", "code": f"L{code}"})
    day = rng.randrange(3650)
    return {
        "resourceType": "Observation",
        "id": f"obs-{i:07d}",
        "meta": {"lastUpdated": "2024-05-01T10:00:00Z"},
        "status": "final" if i % 10 else "amended",
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory", "display": "Laboratory"}]}],
        "code": {"coding": codings, "text": display},
        "subject": {"reference": f"Patient/pat-{i % 5000:05d}"},
        "effectiveDateTime": (
            f"{2014 + day // 365}-{day % 365 // 31 + 1:02d}-{day % 28 + 1:02d}T{rng.randrange(24):02d}:"
            f"{rng.randrange(60):02d}:00Z"
        ),
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        "referenceRange": [
            {
                "low": {"value": low, "unit": unit, "system": UCUM, "code": unit},
                "high": {"value": high, "unit": unit, "system": UCUM, "code": unit},
            }
        ],
        "interpretation": [{"coding": [{"system": INTERPRETATION, "code": flag, "display": _FLAGS[flag]}]}],
    }


def write_input(n: int) -> Path:
    """N Observations as NDJSON (seeded: the same file every time), written once and reused."""
    path = WORK / f"observations-{n}.ndjson"
    if path.exists():
        return path
    WORK.mkdir(exist_ok=True)
    rng = random.Random(20240501)
    partial = path.with_suffix(".part")
    with partial.open("wb") as out:
        for i in range(n):
            out.write(orjson.dumps(observation(i, rng)) + b"\n")
    partial.replace(path)  # a half-written file is never taken for a whole one
    return path


def ensure_sqlonfhir() -> Path:
    python = SQLONFHIR_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {SQLONFHIR_VENV} with {' '.join(SQLONFHIR_PINS)} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(SQLONFHIR_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *SQLONFHIR_PINS], check=True)
    return python


# --- the runners (each run in its own process by ``--worker``) ----------------------------------------------------


def _lines(path: Path, limit: int | None) -> Any:
    loads = orjson.loads
    with path.open("rb") as handle:
        for count, line in enumerate(handle):
            if limit is not None and count >= limit:
                return
            yield loads(line)


def casebridge_runner() -> Any:
    sys.path.insert(0, str(ROOT / "src"))
    from casebridge.views import read_view, run_view

    def rows(path: Path, limit: int | None) -> Any:
        return run_view(read_view(VIEW), _lines(path, limit))

    return rows


def sqlonfhir_runner() -> Any:
    from sqlonfhir.sqlonfhir import ViewDefinitionEvaluator, normalize

    names = [c["name"] for c in VIEW["select"][0]["column"]]

    def rows(path: Path, limit: int | None) -> Any:
        # What sqlonfhir.evaluate does, one resource at a time (its eval keeps every row in one list).
        norm = normalize(json.loads(json.dumps(VIEW)))
        evaluator = ViewDefinitionEvaluator()
        for resource_ in _lines(path, limit):
            if resource_["resourceType"] != VIEW["resource"]:
                continue
            for row in evaluator.call_fn(norm, resource_, VIEW):
                yield tuple(row[name] for name in names)

    return rows


def rows_hand(path: Path, limit: int | None) -> Any:
    for r in _lines(path, limit):
        if r.get("resourceType") != "Observation":
            continue
        code = None
        for coding in r.get("code", {}).get("coding", ()):
            if coding.get("system") == LOINC and "code" in coding:
                code = coding["code"]
                break
        quantity = r.get("valueQuantity") or {}
        reference = (r.get("subject") or {}).get("reference", "")
        kind, _, target = reference.partition("/")
        interpretation = r.get("interpretation")
        category = r.get("category")
        yield (
            r.get("id"),
            target if kind == "Patient" else None,
            code,
            quantity.get("value"),
            quantity.get("code"),
            r.get("effectiveDateTime"),
            r.get("status"),
            interpretation[0]["coding"][0].get("code") if interpretation else None,
            category[0]["coding"][0].get("code") if category else None,
        )


RUNNERS = {"casebridge": casebridge_runner, "sqlonfhir": sqlonfhir_runner, "hand": lambda: rows_hand}


def _plain(value: Any) -> Any:
    """A value as JSON would give it: fhirpathpy's decimals and dates as numbers and text."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and value.as_tuple().exponent == 0 else float(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def worker(kind: str, path: Path, check: bool) -> None:
    """Run one runner over the file; print a JSON line: rows, seconds, peak RSS (and the rows, for the check)."""
    limit = CHECKED if check else None
    run = RUNNERS[kind]()  # imports, not timed: the view's compilation is (in the first rows)
    start, start_cpu = time.perf_counter(), time.process_time()
    rows = run(path, limit)
    if check:
        print(json.dumps([[_plain(v) for v in row] for row in rows]))
        return
    count = 0
    for _ in rows:
        count += 1
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": count, "wall": wall, "cpu": cpu, "peak_mib": peak_kib / 1024}))


# --- the driver ---------------------------------------------------------------------------------------------------


def _python_for(kind: str, sqlonfhir_python: Path) -> str:
    return str(sqlonfhir_python) if kind == "sqlonfhir" else sys.executable


def spawn(kind: str, path: Path, sqlonfhir_python: Path, *, check: bool = False) -> Any:
    args = [_python_for(kind, sqlonfhir_python), __file__, "--worker", kind, str(path)]
    if check:
        args.append("--check")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(args, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def agree(path: Path, sqlonfhir_python: Path) -> None:
    found = {kind: spawn(kind, path, sqlonfhir_python, check=True) for kind in RUNNERS}
    reference = found["casebridge"]
    if len(reference) != min(CHECKED, sum(1 for _ in path.open("rb"))):
        raise SystemExit(f"casebridge gave {len(reference)} rows for the first {CHECKED} resources")
    for kind, rows in found.items():
        if rows != reference:
            at = next((i for i, (a, b) in enumerate(zip(rows, reference, strict=False)) if a != b), None)
            detail = f"row {at}: {rows[at]} != {reference[at]}" if at is not None else f"{len(rows)} rows"
            raise SystemExit(f"{kind} disagrees with casebridge on the first {CHECKED} resources: {detail}")
    print(f"the three runners agree on the rows of the first {CHECKED} resources")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("RUNNER", "FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.check)
        return

    sqlonfhir_python = ensure_sqlonfhir()
    kinds = list(RUNNERS)
    peaks: dict[int, dict[str, float]] = {}
    for n in args.sizes:
        path = write_input(n)
        agree(path, sqlonfhir_python)
        rounds: list[dict[str, dict[str, float]]] = []
        for round_ in range(args.rounds):
            order = kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]
            rounds.append({kind: spawn(kind, path, sqlonfhir_python) for kind in order})
        report(n, rounds, kinds)
        peaks[n] = {kind: max(r[kind]["peak_mib"] for r in rounds) for kind in kinds}
    if len(peaks) > 1:
        print(
            "\npeak RSS by N (MB): "
            + "; ".join(f"{kind} " + " / ".join(f"{peaks[n][kind]:.1f}" for n in peaks) for kind in kinds)
            + f"  (N = {' / '.join(f'{n:,}' for n in peaks)})"
        )


def report(n: int, rounds: list[dict[str, dict[str, float]]], kinds: list[str]) -> None:
    """Rows/s by CPU time (the machine may be shared: CPU time moves less with its other load than wall time),
    wall-clock rows/s beside it; the ratios are taken round by round (the runners of one round ran side by side)
    and their median printed."""
    print(f"\nN = {n:,} Observations, {len(rounds)} interleaved rounds: median (min-max)")
    print(f"{'runner':<12}{'rows':>8}{'rows/s (CPU)':>14}{'range':>20}{'rows/s (wall)':>15}{'peak RSS':>11}")
    for kind in kinds:
        runs = [r[kind] for r in rounds]
        cpu = [r["rows"] / r["cpu"] for r in runs]
        wall = [r["rows"] / r["wall"] for r in runs]
        spread = f"{min(cpu):,.0f}-{max(cpu):,.0f}"
        peak = max(r["peak_mib"] for r in runs)
        print(
            f"{kind:<12}{runs[0]['rows']:>8,}{statistics.median(cpu):>14,.0f}{spread:>20}"
            f"{statistics.median(wall):>15,.0f}{peak:>8.1f} MB"
        )

    def ratio(other: str) -> str:
        found = [r[other]["cpu"] / r["casebridge"]["cpu"] for r in rounds]
        return f"{statistics.median(found):.2f} ({min(found):.2f}-{max(found):.2f})"

    print(f"casebridge / sqlonfhir = {ratio('sqlonfhir')}, target >= 20")
    print(f"casebridge / hand loop = {ratio('hand')}, target >= 0.5")


if __name__ == "__main__":
    main()
