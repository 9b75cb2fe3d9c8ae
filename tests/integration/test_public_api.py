"""The public surface: what ``casebridge`` exports resolves, ``import casebridge`` stays cheap, and the
``Casebridge`` façade runs the pipeline against a real FHIR server (the session's embedded one, over HTTP), as
README's Python example does."""

from __future__ import annotations

import ast
import copy
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

import casebridge
from casebridge import Casebridge, InvalidResourceError, Settings, has_errors
from tests.conftest import SEED
from tests.paths import PROJECT_ROOT

STUB = Path(casebridge.__file__).with_suffix(".pyi")


def test_every_exported_name_resolves() -> None:
    for name in casebridge.__all__:
        assert getattr(casebridge, name) is not None, name
    assert set(dir(casebridge)) >= set(casebridge.__all__)
    with pytest.raises(AttributeError):
        casebridge.no_such_name  # an unknown name is an AttributeError, as for any module


def test_the_stub_types_exactly_what_is_exported() -> None:
    tree = ast.parse(STUB.read_text())
    imported = {
        alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    annotated = {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)}  # type: ignore[union-attr]
    listed = next(node.value for node in tree.body if isinstance(node, ast.Assign))
    assert ast.literal_eval(listed) == casebridge.__all__
    assert set(imported) | annotated == set(casebridge.__all__)
    assert imported == casebridge._HOME  # each name typed from the module it is imported from


def test_import_casebridge_imports_nothing_else_of_it() -> None:
    watched = ("casebridge", "httpx", "pydantic", "yaml", "fhir")
    code = f"import sys, casebridge; print(*sorted(m for m in sys.modules if m.split('.')[0] in {watched!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.split() == ["casebridge", "casebridge._native"]


# -- the façade, against the session's FHIR server --------------------------------------------------------------


@pytest.fixture(scope="module")
def cb(fhir_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Casebridge]:
    settings = Settings(fhir_base_url=fhir_server, lock_dir=tmp_path_factory.mktemp("locks"))
    with Casebridge.from_settings(settings) as facade:
        yield facade


def fresh_case() -> bytes:
    """The seed case under a new case id (the session's server keeps the seed's own ids for other tests)."""
    doc = yaml.safe_load(SEED.read_text())
    doc["case_id"] = f"{doc['case_id']}-{uuid.uuid4().hex[:8]}"
    return yaml.safe_dump(doc, sort_keys=False).encode()


def test_the_facade_converts_and_validates_the_seed_case(cb: Casebridge) -> None:
    case = cb.read_case(SEED)
    bundle = cb.convert(case)
    issues = cb.validate(bundle)
    assert (bundle["type"], len(bundle["entry"])) == ("transaction", 38)
    assert not has_errors(issues), [i for i in issues if i.severity in ("error", "fatal")]
    assert cb.read_case(SEED.read_bytes(), source=SEED.name) == case
    checked = cb.run(SEED)
    assert checked.valid and checked.errors == [] and len(checked.titles) == 38
    assert checked.bundle["identifier"] == bundle["identifier"]


def test_the_facade_pushes_then_pulls_the_reports_back(cb: Casebridge, fhir_server: str) -> None:
    bundle = cb.convert(cb.read_case(fresh_case(), source="fresh.yaml"))
    first = cb.push(bundle)
    assert (first.created, first.already_there, first.server) == (38, 0, fhir_server)
    again = cb.push(bundle)
    assert (again.created, again.already_there) == (0, 38)
    pulled = cb.pull_reports(patient=first.patient)
    assert len(pulled.reports) == 4
    assert {r["subject"]["reference"] for r in pulled.reports} == {first.patient}
    assert any(key.startswith("Observation/") for key in pulled.included)
    pathology = cb.pull_reports(patient=first.patient, category="SP", since="2000-01-01")
    assert [r["conclusion"].split(":")[0] for r in pathology.reports] == ["Dystrophic calcification"]


def test_the_facade_sends_nothing_invalid(cb: Casebridge, fhir_server: str) -> None:
    bundle = copy.deepcopy(cb.convert(cb.read_case(fresh_case(), source="fresh.yaml")))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["gender"] = "f"
    with pytest.raises(InvalidResourceError, match=r"the Bundle is not valid \(\d+ errors\): nothing was sent") as info:
        cb.push(bundle)
    assert info.value.outcome["resourceType"] == "OperationOutcome"
    found = httpx.get(f"{fhir_server}/Patient", params={"_id": patient["id"]}, timeout=10).json()
    assert found["total"] == 0


def test_a_closed_facade_has_no_client(fhir_server: str, tmp_path: Path) -> None:
    facade = Casebridge.from_settings(Settings(fhir_base_url=fhir_server, lock_dir=tmp_path))
    assert facade.fhir.capabilities()["fhirVersion"] == "4.0.1"
    facade.close()
    facade.close()  # twice is harmless
    with pytest.raises(RuntimeError):
        facade.fhir  # a closed façade makes no new client


# -- README's Python example ------------------------------------------------------------------------------------


def readme_example() -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    found = re.search(r"^<!-- python-example -->\n.*?^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert found, "README.md has no ```python block after <!-- python-example -->"
    return found.group(1)


def test_the_readme_example_runs(fhir_server: str, tmp_path: Path) -> None:
    env = {**os.environ, "CASEBRIDGE_FHIR_BASE_URL": fhir_server, "CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks")}
    # Run from elsewhere than the checkout: the example needs only the installed package.
    result = subprocess.run(
        [sys.executable, "-c", readme_example()],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ijsra-2026-18-3-0536: 38 resources, 0 errors" in result.stdout, result.stdout
    assert "4 DiagnosticReports" in result.stdout, result.stdout
