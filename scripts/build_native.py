"""Compile the validator's and the mapping engine's modules with mypyc (`make setup` runs this; it does nothing
when they are up to date).

The validator walks every element of every resource, the mapping engine renders every element of every Bundle;
compiled to C by mypyc from the same typed sources, validation runs about twice as fast, conversion ~15% faster.
The sources stay the reference: `casebridge/_native.py` loads the compiled modules only while the manifest written
here says they were built from the sources as they are now (and from this Python), and `tests/unit/test_native.py`
checks that both give the same Bundles and issues. When this build cannot run (no C compiler), it says so and
the service runs from the sources.

A regular (not editable) install does not carry the compiled modules (the wheel leaves them out): `--install`
then copies them, with the manifest, into the casebridge installed in this Python's site-packages, whose sources
must be the ones compiled (the Dockerfile does this).

Run: .venv/bin/python scripts/build_native.py [--force] [--remove] [--install]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))

from casebridge._native import (  # noqa: E402
    GROUP,
    MANIFEST,
    MODULES,
    build_matches_sources,
    build_tag,
    compiled_files,
    source_digest,
)

WORK = ROOT / ".mypyc"  # generated C and object files (gitignored)


def remove() -> None:
    MANIFEST.unlink(missing_ok=True)  # first: without it, nothing compiled is loaded
    for f in compiled_files():
        f.unlink(missing_ok=True)


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    sources = [m.replace(".", "/") + ".py" for m in MODULES]
    cwd = Path.cwd()
    os.chdir(SRC)  # mypyc names modules by their path from here
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), warnings.catch_warnings():
            # mypyc's notes on how it compiles, setuptools' on pyproject.toml: not for whoever runs make.
            warnings.simplefilter("ignore")
            # mypy's cache and the build folders go under WORK too, not into src/ (where a wheel or image would
            # pick them up); --inplace then puts only the extension files beside their sources.
            extensions = mypycify(
                ["--cache-dir", str(WORK / "mypy-cache"), *sources],
                group_name=GROUP,
                opt_level="3",
                target_dir=str(WORK / "c"),
            )
            setup(
                name="casebridge-native",
                packages=[],
                ext_modules=extensions,
                script_args=[
                    "-q",
                    "build_ext",
                    "--inplace",
                    "--build-temp",
                    str(WORK / "temp"),
                    "--build-lib",
                    str(WORK / "lib"),
                ],
            )
    finally:
        os.chdir(cwd)
    digests = {m: source_digest(m) for m in MODULES}
    MANIFEST.write_text(json.dumps({"build": build_tag(), "modules": digests}, indent=2) + "\n")


def install() -> int:
    """Copy the compiled modules and the manifest into the casebridge installed in this Python's site-packages."""
    site = Path(sysconfig.get_paths()["purelib"])
    package = site / "casebridge"
    if not package.is_dir():
        print(f"native: casebridge is not installed in {site} (an editable install uses the modules where they are)")
        return 1
    if not build_matches_sources():
        print("native: nothing compiled to install; the installed package runs from its Python sources")
        return 0
    try:
        installed = {m: hashlib.sha256((site / f"{m.replace('.', '/')}.py").read_bytes()).hexdigest() for m in MODULES}
    except OSError as exc:
        print(f"native: the installed casebridge lacks a compiled module's source ({exc})")
        return 1
    if installed != {m: source_digest(m) for m in MODULES}:
        print(f"native: the sources installed in {package} are not the ones compiled; nothing copied")
        return 1
    for f in compiled_files():
        shutil.copy2(f, site / f.relative_to(SRC))
    shutil.copy2(MANIFEST, package / MANIFEST.name)  # last: with it, the copies are used
    # Checked from a fresh interpreter, away from src/ (this one imports casebridge._native from there).
    probe = "import casebridge.validation.validator, casebridge._native as n; print(n.in_use())"
    used = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
        [sys.executable, "-c", probe], cwd=site, capture_output=True, text=True, check=False
    )
    if used.stdout.strip() != "True":
        print(f"native: copied into {package}, but not used there: {used.stderr.strip()[-500:]}")
        return 1
    print(f"native: {len(MODULES)} compiled modules installed into {package}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="build even when up to date")
    parser.add_argument("--remove", action="store_true", help="remove the compiled modules (run from the sources)")
    parser.add_argument(
        "--install", action="store_true", help="copy the compiled modules into a regular install of casebridge"
    )
    args = parser.parse_args()
    if args.install:
        return install()
    if args.remove:
        remove()
        shutil.rmtree(WORK, ignore_errors=True)
        print("native: removed; the service runs from the Python sources")
        return 0
    if not args.force and build_matches_sources():
        return 0
    remove()
    started = time.monotonic()
    try:
        build()
    except (Exception, SystemExit) as exc:  # noqa: BLE001  (any failure: run from the sources; no compiler: SystemExit)
        remove()
        print(f"native: not built ({type(exc).__name__}: {exc}); the service runs from the Python sources")
        return 0
    took = time.monotonic() - started
    print(f"native: compiled {len(MODULES)} modules (validation, mapping) with mypyc in {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
