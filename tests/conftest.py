from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from casebridge.config import Settings
from casebridge.domain.case import CaseReport
from casebridge.domain.reader import read_case
from casebridge.mapping.engine import MappingSet
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Validator
from tests.paths import DATA_DIR, PROJECT_ROOT

FIXTURES = PROJECT_ROOT / "fixtures"
CASE_FILES = sorted(p for p in (DATA_DIR / "cases").iterdir() if p.suffix in (".json", ".yaml", ".yml"))
SEED = DATA_DIR / "cases" / "dystrophic-calcification-right-forearm.yaml"
# The seed as it was written in schema 1.0: 1.0 files are still read (checked as 1.0, then upgraded).
CASES_V1 = PROJECT_ROOT / "tests" / "data" / "cases-1.0"
SEED_V1 = CASES_V1 / "dystrophic-calcification-right-forearm.yaml"
TERMINOLOGY = DATA_DIR / "terminology" / "case-codes.yaml"
# Cases transcribed from MACCROBAT2020 reports (fixtures/cases/README.md): the rule checks run over these too,
# as real reports have shapes the packaged examples do not.
FIXTURE_FILES = sorted((FIXTURES / "cases").glob("*.yaml"))
ALL_CASE_FILES = CASE_FILES + FIXTURE_FILES
# By file name, as the tests parametrize by name; a name shared by two folders would make one case hide the other.
CASE_PATHS = {p.name: p for p in ALL_CASE_FILES}
assert len(CASE_PATHS) == len(ALL_CASE_FILES), "a fixture case has the name of a packaged case"
# A fixed conversion time, so that outputs compare equal across runs.
RECORDED = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def pinned_packages_missing(what: object) -> NoReturn:
    """The pinned FHIR packages are part of what the suite needs (`make setup` installs them, and `make test` runs
    it): a test that needs them fails, saying how to install them, rather than skip and pass the run."""
    pytest.fail(
        f"{what}: `make setup` (or `casebridge packages fetch`) installs the pinned FHIR packages", pytrace=False
    )


@pytest.fixture(scope="session")
def mappings() -> MappingSet:
    assert TERMINOLOGY.is_file(), "the tests check code citations against terminology/case-codes.yaml"
    return MappingSet.load(Settings().mappings_dir, terminology=TERMINOLOGY)


def load_case(path: Path) -> CaseReport:
    return read_case(path.read_bytes(), source=str(path))


@pytest.fixture(scope="session")
def validator() -> Validator:
    """The validator of the default settings (base R4, the pinned packages, casebridge's profiles), loaded once:
    loading it reads every definition."""
    return load_validator(Settings())


@pytest.fixture(scope="session")
def bundles(mappings: MappingSet) -> dict[str, dict[str, Any]]:
    return {p.name: mappings.convert(load_case(p), recorded=RECORDED) for p in CASE_FILES}


@pytest.fixture(scope="session")
def all_bundles(mappings: MappingSet, bundles: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The Bundles of the packaged cases and of the MACCROBAT fixtures, by file name."""
    return bundles | {p.name: mappings.convert(load_case(p), recorded=RECORDED) for p in FIXTURE_FILES}


@pytest.fixture(scope="session")
def seed_bundle(bundles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return bundles[SEED.name]


@pytest.fixture(scope="session")
def fhir_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded FHIR server, started once for the test session on a free port; yields its base URL."""
    from casebridge.fhir.embedded import EmbeddedFhirServer

    with EmbeddedFhirServer(tmp_path_factory.mktemp("fhir-server")) as server:
        yield server.base_url


@pytest.fixture
def empty_fhir_server(tmp_path: Path) -> Iterator[str]:
    """An embedded FHIR server of the test's own, with nothing stored: for a test that counts what a first write
    creates, which the session's server cannot promise once other tests (in any order) have written to it."""
    from casebridge.fhir.embedded import EmbeddedFhirServer

    with EmbeddedFhirServer(tmp_path / "fhir-server") as server:
        yield server.base_url
