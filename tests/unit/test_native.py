"""The modules compiled by mypyc (scripts/build_native.py) give the Bundles and issues the Python sources give,
and are used only while they were built from the sources as they are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import casebridge
from casebridge import _native
from tests.paths import PROJECT_ROOT

# In a fresh process: converts the fixture cases and 40 generated ones (a tenth of them invalid) and validates
# their Bundles, the IPS examples and hostile resources; prints whether the compiled modules ran, then one line
# per input (its Bundle, if converted here, and its issues).
_SCRIPT = r"""
import datetime as dt, json, sys
from pathlib import Path
import yaml
import casebridge
from casebridge import _native
from casebridge.config import DATA_DIR
from casebridge.config import Settings
from casebridge.domain.reader import validate_case
from casebridge.tools.synth import synth_case
from casebridge.errors import CasebridgeError
from casebridge.definitions.packages import default_cache_dir
from casebridge.mapping.engine import MappingSet
from casebridge.validation.service import load_validator

settings = Settings()
validator = load_validator(settings)
mappings = MappingSet.load(settings.mappings_dir, terminology=settings.terminology())
recorded = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
docs = [yaml.safe_load(p.read_text()) for p in sorted((DATA_DIR / "cases").glob("*.yaml"))]
docs += [synth_case(i, seed=3, invalid_share=0.1).doc for i in range(40)]
inputs = []
for doc in docs:
    try:
        inputs.append(mappings.convert(validate_case(doc, source="case"), recorded=recorded, source="case"))
    except CasebridgeError as exc:
        inputs.append({"refused": str(exc)})
ips = default_cache_dir() / "hl7.fhir.uv.ips#2.0.0" / "package" / "example"
inputs += [json.loads(p.read_text()) for p in sorted(ips.glob("*.json"))]
inputs += [
    {"resourceType": "Patient", "name": "x", "gender": ["f"], "birthDate": "2020-02-30", "_gender": 1},
    {"resourceType": "Observation", "status": "done", "code": {"coding": [{"system": 3}]}, "valueQuantity": []},
    {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Nope"}}, 7, {}]},
    {"resourceType": "Patient", "text": {"status": "generated", "div": "<div><script/></div>"}, "contained": [{}]},
]
print(json.dumps(casebridge.NATIVE and _native.in_use()))
for resource in inputs:
    issues = [[i.severity, i.code, i.message, i.expression, i.source] for i in validator.validate(resource)]
    print(json.dumps([resource if "entry" in resource or "refused" in resource else None, issues]))
"""


def run_validation(*, pure: bool) -> tuple[bool, list[str]]:
    env = {**os.environ, "CASEBRIDGE_PURE_PYTHON": "1" if pure else "0"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "could not finish" not in result.stdout and "validation failed" not in result.stderr, result.stderr[-3000:]
    first, *issues = result.stdout.splitlines()
    return json.loads(first), issues


# A machine that cannot compile (no C compiler) runs casebridge from its sources, and then has nothing to compare:
# it says so by setting this, and the two tests below are skipped by name. Unset, a missing build is a failure.
WITHOUT_BUILD = "CASEBRIDGE_TEST_WITHOUT_NATIVE"


def require_a_current_build() -> None:
    """Fail (or skip, when WITHOUT_BUILD is set) unless a compiled build of the current sources is there."""
    if _native.build_matches_sources():
        return
    if os.environ.get(WITHOUT_BUILD) == "1":
        pytest.skip(f"{WITHOUT_BUILD}=1: no compiled build on this machine, the comparison is not run")
    state = "is stale (built from other sources or another Python)" if _native.MANIFEST.exists() else "is missing"
    pytest.fail(
        f"the compiled build of the validator {state}, so the compiled modules cannot be compared with the sources: "
        f"`make setup` builds it (scripts/build_native.py; `make test` runs it); on a machine with no C compiler, "
        f"set {WITHOUT_BUILD}=1 to run the suite from the sources without this comparison",
        pytrace=False,
    )


def test_the_compiled_validator_gives_the_issues_the_sources_give() -> None:
    require_a_current_build()
    compiled, ours = run_validation(pure=False)
    interpreted, theirs = run_validation(pure=True)
    assert compiled and not interpreted
    assert len(ours) == 3 + 40 + 44 + 4
    assert sum('"refused"' in line for line in ours) >= 2  # invalid generated cases took that path
    assert ours == theirs


def test_this_session_uses_the_compiled_validator_when_it_is_built() -> None:
    """`make setup` builds it; a build that silently stopped being used would cost every request. With
    CASEBRIDGE_PURE_PYTHON=1 (the sources forced), the session must run the sources instead."""
    import casebridge.validation.validator as validator

    assert validator.__file__ is not None
    if os.environ.get("CASEBRIDGE_PURE_PYTHON", "") not in ("", "0"):
        assert not casebridge.NATIVE and validator.__file__.endswith(".py"), validator.__file__
        return
    require_a_current_build()
    assert casebridge.NATIVE, "a current build is there, yet this session imported the sources"
    assert not validator.__file__.endswith(".py"), validator.__file__


def test_a_stale_or_foreign_build_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digests = {m: _native.source_digest(m) for m in _native.MODULES}
    manifest = tmp_path / "manifest.json"
    monkeypatch.setattr(_native, "MANIFEST", manifest)
    monkeypatch.setattr(_native, "compiled_files", lambda: [manifest])  # "the compiled files are there"
    monkeypatch.delenv("CASEBRIDGE_PURE_PYTHON", raising=False)

    def write(build: str, modules: dict[str, str]) -> None:
        manifest.write_text(json.dumps({"build": build, "modules": modules}))

    write(_native.build_tag(), digests)
    assert _native.compiled_is_current()
    write(_native.build_tag(), {**digests, "casebridge.validation.validator": "0" * 64})  # a source edited since
    assert not _native.compiled_is_current()
    write("cpython-312-other", digests)  # built by another Python
    assert not _native.compiled_is_current()
    write(_native.build_tag(), {m: d for m, d in digests.items() if not m.endswith("structure")})  # partial
    assert not _native.compiled_is_current()
    monkeypatch.setattr(_native, "compiled_files", lambda: [manifest, tmp_path / "gone.so"])  # one deleted
    write(_native.build_tag(), digests)
    assert not _native.compiled_is_current()
    monkeypatch.setattr(_native, "compiled_files", lambda: [manifest])
    manifest.write_text("{not json")
    assert not _native.compiled_is_current()
    write(_native.build_tag(), digests)
    monkeypatch.setenv("CASEBRIDGE_PURE_PYTHON", "1")
    assert not _native.compiled_is_current()
