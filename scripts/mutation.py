"""Mutation testing (make mutation): mutmut over the modules of scripts/mutation.toml, one module at a time.

For each module: a copy of src/ (without the compiled modules), tests/ and fixtures/ in build/mutation/work/<name>/
with a mutmut configuration that mutates that one file and runs that module's tests; `mutmut run` there, bounded by
the module's timeout; then its results are read back. build/mutation/report.md gets, per module, the mutants
killed, survived, timed out and not checked, the score, and every survivor with its diff (an equivalent one named
as such, with why). The checkout is never changed, so other work can go on beside a run.

    python scripts/mutation.py                 # every module of scripts/mutation.toml
    python scripts/mutation.py files body      # some of them
    python scripts/mutation.py --report-only   # rewrite the report from the last runs

MUTATION_CHILDREN sets mutmut's parallel test processes (default 1, so a run leaves a core to the machine's other
work); MUTATION_TIMEOUT overrides every module's timeout (seconds).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "scripts" / "mutation.toml"
OUT = ROOT / "build" / "mutation"
MUTMUT = Path(sys.executable).parent / "mutmut"

# mutmut's exit codes of a mutant's test run (mutmut.stats.status_by_exit_code), the ones a run gives here.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout"}
STATUS |= {-24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", 37: "killed", None: "not checked"}


@dataclass
class Module:
    name: str
    source: str
    tests: list[str]
    timeout: float
    equivalent: dict[str, str] = field(default_factory=dict)
    functions: list[str] = field(default_factory=list)

    @property
    def patterns(self) -> list[str]:
        """mutmut's names of the mutants of `functions` (a function, or Class.method), as fnmatch patterns."""
        dotted = self.source.removeprefix("src/").removesuffix(".py").replace("/", ".")
        out = []
        for f in self.functions:
            cls, _, method = f.rpartition(".")
            out.append(f"{dotted}.x\u01c1{cls}\u01c1{method}__mutmut_*" if cls else f"{dotted}.x_{f}__mutmut_*")
        return out

    def selected(self, name: str) -> bool:
        return not self.functions or any(fnmatch.fnmatch(name, p) for p in self.patterns)

    @property
    def work(self) -> Path:
        return OUT / "work" / self.name


def load_modules() -> list[Module]:
    data = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    default_timeout = float(os.environ.get("MUTATION_TIMEOUT") or data.get("defaults", {}).get("timeout", 600))
    modules = []
    for name, entry in data["modules"].items():
        timeout = float(os.environ.get("MUTATION_TIMEOUT") or entry.get("timeout", default_timeout))
        module = Module(
            name,
            entry["source"],
            list(entry["tests"]),
            timeout,
            dict(entry.get("equivalent", {})),
            list(entry.get("functions", [])),
        )
        modules.append(module)
    return modules


def check_files(module: Module) -> None:
    paths = [module.source, *(t.split("::")[0] for t in module.tests if not t.startswith("-"))]
    missing = [t for t in paths if not (ROOT / t).exists()]
    if missing:
        raise SystemExit(f"{CONFIG.name}: module {module.name}: no such file: {', '.join(missing)}")


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(module: Module) -> None:
    """A fresh copy of what the tests need, and a configuration that mutates the module's file only."""
    if module.work.exists():
        shutil.rmtree(module.work)
    module.work.mkdir(parents=True)
    skip = shutil.ignore_patterns("*.so", "__pycache__", "_native.json", ".mypyc")
    for folder in ("src", "tests", "fixtures"):
        if (ROOT / folder).is_dir():
            shutil.copytree(ROOT / folder, module.work / folder, ignore=skip)
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]
    markers = pytest_options["ini_options"].get("markers", [])
    (module.work / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list([module.source])}\n"
        'also_copy = ["fixtures"]\n'
        f"pytest_add_cli_args_test_selection = {_toml_list(module.tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
        "use_git_change_detection = false\n"
        "\n[tool.pytest.ini_options]\n"
        f"markers = {_toml_list(markers)}\n",
        encoding="utf-8",
    )


def run(module: Module, children: int) -> float:
    """mutmut run in the module's copy, its output in build/mutation/<name>.log; ended after the timeout."""
    env = dict(os.environ, CASEBRIDGE_PURE_PYTHON="1")
    env.pop("PYTHONPATH", None)
    log = OUT / f"{module.name}.log"
    start = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own venv's mutmut
            [str(MUTMUT), "run", "--max-children", str(children), *module.patterns],
            cwd=module.work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # Until the timeout: keep a copy of the results whenever they read whole, since a stop can catch
            # mutmut writing them and leave the file empty.
            while True:
                try:
                    process.wait(timeout=min(10.0, max(0.1, start + module.timeout - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    _keep_results(module)
                    if time.monotonic() - start >= module.timeout:
                        raise
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            out.write(f"\nmake mutation: stopped after {module.timeout:.0f} s\n".encode())
    return time.monotonic() - start


def _meta(module: Module) -> Path:
    return module.work / "mutants" / (module.source + ".meta")


def _kept(meta: Path) -> Path:
    return meta.with_name(meta.name + ".kept")


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("exit_code_by_key"), dict) else None


def _keep_results(module: Module) -> None:
    meta = _meta(module)
    if _read_meta(meta) is not None:
        shutil.copyfile(meta, _kept(meta))


@dataclass
class Result:
    module: Module
    statuses: dict[str, str]
    diffs: dict[str, str]
    seconds: float | None

    def count(self, status: str) -> int:
        return sum(1 for s in self.statuses.values() if s == status)

    @property
    def survivors(self) -> list[str]:
        return [k for k, s in self.statuses.items() if s in ("survived", "no tests", "skipped")]

    @property
    def score(self) -> float | None:
        checked = len(self.statuses) - self.count("not checked")
        return None if checked == 0 else (self.count("killed") + self.count("timeout")) / checked

    @property
    def score_without_equivalent(self) -> float | None:
        equivalent = sum(1 for k in self.survivors if k in self.module.equivalent)
        checked = len(self.statuses) - self.count("not checked") - equivalent
        return None if checked <= 0 else (self.count("killed") + self.count("timeout")) / checked


def collect(module: Module, seconds: float | None) -> Result | None:
    meta = _meta(module)
    doc = _read_meta(meta) or _read_meta(_kept(meta))
    if doc is None:
        return None
    exit_codes = doc["exit_code_by_key"]
    ordered = sorted(exit_codes.items(), key=lambda kv: _order(kv[0]))
    statuses = {k: STATUS.get(v, "suspicious") for k, v in ordered if module.selected(k)}
    from mutmut.mutation.diff_apply import get_diff_for_mutant  # mutmut reads its files relative to the folder

    diffs = {}
    here = Path.cwd()
    os.chdir(module.work)
    try:
        for name, status in statuses.items():
            if status not in ("killed", "timeout", "not checked"):  # a diff costs a second: survivors only
                diffs[name] = get_diff_for_mutant(name, path=module.source)
    finally:
        os.chdir(here)
    return Result(module, statuses, diffs, seconds)


def collect_quietly(module: Module, seconds: float | None) -> Result | None:
    """A module's last results, or None while another run is rebuilding its folder (its files come and go)."""
    try:
        return collect(module, seconds)
    except (OSError, ValueError) as exc:
        print(f"mutation: {module.name}: results not readable now ({exc.__class__.__name__}); left out of the report")
        return None


def _order(name: str) -> tuple[str, int]:
    function, _, number = name.rpartition("__mutmut_")
    return function, int(number) if number.isdigit() else 0


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report(results: list[Result], command: str) -> str:
    today = dt.date.today().isoformat()
    lines = [
        "# Mutation testing report",
        "",
        f"{today}, `{command}` (mutmut, compiled modules left out). Score: (killed + timeout) / checked mutants;",
        "survivors are mutants that survived the module's tests or that no selected test ran (no tests).",
        "",
        "| module | file | mutants | killed | survived | no tests | timeout | not checked | score | score, equivalent"
        " left out | seconds |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        seconds = "-" if r.seconds is None else f"{r.seconds:.0f}"
        lines.append(
            f"| {r.module.name} | `{r.module.source}` | {len(r.statuses)} | {r.count('killed')} | {r.count('survived')}"
            f" | {r.count('no tests')} | {r.count('timeout')} | {r.count('not checked')} | {_pct(r.score)}"
            f" | {_pct(r.score_without_equivalent)} | {seconds} |"
        )
    for r in results:
        lines += ["", f"## {r.module.name}: `{r.module.source}`", "", "Tests: " + ", ".join(r.module.tests), ""]
        stale = sorted(set(r.module.equivalent) - set(r.survivors))
        if stale:
            lines += [f"Named equivalent in {CONFIG.name} but not a survivor now: {', '.join(stale)}", ""]
        if not r.survivors:
            lines.append("No survivors.")
        for name in r.survivors:
            why = r.module.equivalent.get(name)
            label = f"equivalent: {why}" if why else r.statuses[name]
            lines += [f"### {name} ({label})", "", "```diff", r.diffs.get(name, "").strip(), "```", ""]
        others = [k for k, s in r.statuses.items() if s not in ("killed", "timeout", "not checked", *_SURVIVING)]
        for name in others:
            lines += [f"### {name} ({r.statuses[name]})", "", "```diff", r.diffs.get(name, "").strip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


_SURVIVING = ("survived", "no tests", "skipped")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="names from scripts/mutation.toml (default: all)")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from the last runs")
    args = parser.parse_args()
    modules = load_modules()
    unknown = set(args.modules) - {m.name for m in modules}
    if unknown:
        parser.error(f"not in {CONFIG.name}: {', '.join(sorted(unknown))}")
    chosen = [m for m in modules if not args.modules or m.name in args.modules]
    children = int(os.environ.get("MUTATION_CHILDREN") or 1)
    OUT.mkdir(parents=True, exist_ok=True)
    timings_file = OUT / "seconds.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    if not args.report_only:
        for module in chosen:
            print(f"mutation: {module.name} ({module.source}), at most {module.timeout:.0f} s", flush=True)
            check_files(module)
            prepare(module)
            timings[module.name] = run(module, children)
            if "Failed to run clean test" in (OUT / f"{module.name}.log").read_text(errors="replace"):
                print(
                    f"mutation: {module.name}: its tests fail without a mutant (see build/mutation/{module.name}.log)"
                )
            # Re-read before writing: runs of other modules may have finished meanwhile.
            latest = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
            timings_file.write_text(json.dumps(latest | {module.name: timings[module.name]}, indent=1))
    results = [r for m in modules if (r := collect_quietly(m, timings.get(m.name))) is not None]
    command = "make mutation" + (f" MODULES='{' '.join(args.modules)}'" if args.modules else "")
    (OUT / "report.md").write_text(report(results, command), encoding="utf-8")
    for r in results:
        print(
            f"{r.module.name:10} mutants {len(r.statuses):4}  killed {r.count('killed'):4}  "
            f"survived {len(r.survivors):3}  not checked {r.count('not checked'):3}  score {_pct(r.score)}"
        )
    print(f"report: {(OUT / 'report.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
