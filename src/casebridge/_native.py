"""The validator's and mapping engine's modules compiled by mypyc (scripts/build_native.py), used only while they
match their sources.

A compiled module sits beside its source (``validator.cpython-311-x86_64-linux-gnu.so`` next to ``validator.py``)
and Python's import prefers it. A source edited after the build, a build from another Python, or a partial
build would then run stale code, or mix compiled and interpreted classes of one group (which mypyc does not
allow). So unless the manifest the build writes names this Python and the current digest of every module's
source, all of them are imported from their sources. ``CASEBRIDGE_PURE_PYTHON=1`` forces the sources.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
GROUP = "casebridge._native_group"  # the shared library of the compiled modules: _native_group__mypyc.*.so
MANIFEST = _PACKAGE_ROOT / "casebridge" / "_native.json"
MODULES = (
    "casebridge.mapping.codes",
    "casebridge.mapping.engine",
    "casebridge.mapping.expressions",
    "casebridge.mapping.functions",
    "casebridge.mapping.narrative",
    "casebridge.mapping.templates",
    "casebridge.validation.fhirpath",
    "casebridge.validation.primitives",
    "casebridge.definitions.structure",
    "casebridge.validation.terminology",
    "casebridge.validation.issues",
    "casebridge.validation.values",
    "casebridge.validation.bindings",
    "casebridge.validation.invariants",
    "casebridge.validation.references",
    "casebridge.validation.bundles",
    "casebridge.validation.documents",
    "casebridge.validation.measure",
    "casebridge.validation.structures",
    "casebridge.validation.operations",
    "casebridge.validation.qanswers",
    "casebridge.validation.slicing",
    "casebridge.validation.implied",
    "casebridge.validation.extensions",
    "casebridge.validation.narrative",
    "casebridge.validation.validator",
    "casebridge.validation.questionnaire",
)


def build_tag() -> str:
    return f"{sys.implementation.cache_tag}-{sysconfig.get_config_var('EXT_SUFFIX')}"


def source_digest(module: str) -> str:
    path = _PACKAGE_ROOT / (module.replace(".", "/") + ".py")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_files() -> list[Path]:
    """The group's shared library and each module's own extension file."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return [_PACKAGE_ROOT / (name.replace(".", "/") + suffix) for name in (f"{GROUP}__mypyc", *MODULES)]


def build_matches_sources() -> bool:
    """The manifest names this Python and every source's current digest, and every compiled file is there."""
    try:
        manifest = json.loads(MANIFEST.read_text())
        return bool(
            manifest.get("build") == build_tag()
            and manifest.get("modules") == {m: source_digest(m) for m in MODULES}
            and all(f.exists() for f in compiled_files())
        )
    except (OSError, ValueError):
        return False


def compiled_is_current() -> bool:
    return os.environ.get("CASEBRIDGE_PURE_PYTHON", "") in ("", "0") and build_matches_sources()


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports the listed modules from their .py files, whatever compiled files lie beside them."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        source = _PACKAGE_ROOT / (fullname.replace(".", "/") + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def install() -> bool:
    """Called once, when ``casebridge`` is imported (before any of its modules). True: the compiled ones are used."""
    if compiled_is_current():
        return True
    if not any(isinstance(f, _FromSource) for f in sys.meta_path):
        sys.meta_path.insert(0, _FromSource())
    return False


def in_use() -> bool:
    """Whether the validator running in this process is the compiled one (the mapping modules go with it)."""
    module = sys.modules.get("casebridge.validation.validator")
    return module is not None and not (module.__file__ or "").endswith(".py")
