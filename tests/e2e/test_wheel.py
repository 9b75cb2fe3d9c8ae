"""The wheel, installed into a fresh virtualenv outside the checkout, works: its data files travel inside it, and the
`casebridge` command runs the demo, converts, validates, checks the FHIR packages and serves from there alone.

The wheel is built from a copy of pyproject.toml, README.md and src/ in a temporary folder: building in the checkout
would write build/ and an egg-info folder into a tree other processes are using. It is built without build
isolation, with the setuptools of the environment running the tests (a dev dependency): no download, so the test
also runs offline. The new virtualenv gets the wheel alone (`pip install --no-deps --no-index`); the wheel's
dependencies are reached through a .pth file naming the test environment's site-packages. That keeps the test to
seconds and offline, where installing the dependencies would take minutes and need the index. The .pth file only
adds that folder to sys.path: the editable install's own .pth file in it (which points at src/) is not processed,
so `casebridge` can only come from the new virtualenv, which the tests check.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import httpx
import pytest

from tests.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow

SRC = PROJECT_ROOT / "src"
SEED_NAME = "dystrophic-calcification-right-forearm.yaml"
RW = "rw-" + "w" * 30
RO = "ro-" + "r" * 30


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    work: Path  # the working directory of every command: a temporary folder outside the checkout

    @property
    def casebridge(self) -> Path:
        return self.venv / "bin" / "casebridge"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, **extra: str) -> dict[str, str]:
        """The caller's environment without anything that points Python or casebridge elsewhere; the FHIR package
        cache setting is kept (`make setup` fills that cache, and the tests reuse it)."""
        keep = {"CASEBRIDGE_FHIR_PACKAGE_CACHE"}
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
            and (not k.startswith("CASEBRIDGE_") or k in keep)
        }
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["CASEBRIDGE_LOCK_DIR"] = str(self.work / "locks")
        return {**env, **extra}

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.casebridge), *args],
            cwd=self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _setuptools_major() -> int:
    try:
        return int(version("setuptools").split(".")[0])
    except (PackageNotFoundError, ValueError):
        return 0


def _ok(*argv: str) -> str:
    """Run a build or install step; its stdout, or a failure that shows what it said."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _outside_checkout(path: Path) -> bool:
    return not path.resolve().is_relative_to(PROJECT_ROOT.resolve())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert _setuptools_major() >= 77, (
        "the wheel is built with this environment's setuptools, which must be 77 or later (a dev dependency: "
        "run make setup)"
    )
    root = tmp_path_factory.mktemp("wheel-build")
    assert _outside_checkout(root), f"the temporary folder {root} is inside the checkout"
    project = root / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(PROJECT_ROOT / name, project / name)
    # The tree as it is, compiled modules and their manifest included: the wheel must leave them out.
    shutil.copytree(SRC, project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    dist = root / "dist"
    _ok(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
        "--wheel-dir", str(dist), str(project))  # fmt: skip
    (built,) = dist.glob("casebridge-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel-install")
    venv = root / "venv"
    # No pip of its own (seconds saved): this environment's pip installs into it with --python.
    _ok(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    site_packages = Path(_ok(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "_casebridge_test_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    _ok(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
        str(wheel))  # fmt: skip
    work = root / "work"
    work.mkdir()
    return Installed(wheel=wheel, venv=venv, site_packages=site_packages, work=work)


def test_the_wheel_holds_the_package_and_its_data_and_nothing_else(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "casebridge/py.typed",
        "casebridge/data/mappings/bundle.yaml",
        "casebridge/data/fhir-packages.json",
        "casebridge/data/terminology/case-codes.yaml",
        "casebridge/data/schemas/case-report-1.0.schema.json",
        "casebridge/data/schemas/case-report-2.0.schema.json",
        f"casebridge/data/cases/{SEED_NAME}",
    }
    # Every data file and every module of the source tree, so a new data folder or subpackage cannot be missed.
    package = SRC / "casebridge"
    for path in package.rglob("*"):
        shipped = path.suffix == ".py" or package / "data" in path.parents
        if shipped and path.is_file() and "__pycache__" not in path.parts:
            expected.add(path.relative_to(SRC).as_posix())
    assert any(n.startswith("casebridge/data/cases/") and n.endswith(".yaml") for n in expected)
    assert any(n.startswith("casebridge/data/profiles/") and n.endswith(".json") for n in expected)
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing} (see [tool.setuptools.package-data] in pyproject.toml)"

    stray = sorted(
        n
        for n in names
        if n.endswith((".so", ".pyd", ".pyc", ".c", ".o"))
        or n.endswith("_native.json")
        or not n.startswith(("casebridge/", "casebridge-"))
        or any(part in ("tests", "benchmarks", "build", "__pycache__", ".mypy_cache") for part in n.split("/"))
    )
    assert not stray, f"the wheel carries files built or kept in the checkout: {stray}"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text, text[:800]
    assert (
        "casebridge = casebridge.cli:main"
        in zipfile.ZipFile(wheel).read(metadata.replace("METADATA", "entry_points.txt")).decode()
    )


def test_the_installed_package_runs_from_site_packages(installed: Installed) -> None:
    probe = (
        "import json, sys, casebridge, casebridge.config as c, casebridge._native as n, "
        "casebridge.validation.validator as v\n"
        "s = c.Settings()\n"
        "print(json.dumps({'package': casebridge.__file__, 'data': str(c.DATA_DIR), 'validator': v.__file__,"
        " 'compiled': n.in_use(), 'lock': str(s.fhir_packages_lock), 'mappings': str(s.mappings_dir),"
        " 'profiles': str(s.profiles_dir), 'path': sys.path}))"
    )
    result = subprocess.run(
        [str(installed.python), "-c", probe],
        cwd=installed.work, env=installed.env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    home = installed.site_packages / "casebridge"
    for key in ("package", "data", "validator", "lock", "mappings", "profiles"):
        assert Path(found[key]).is_relative_to(home), f"{key}: {found[key]} is not under {home}"
    assert found["validator"].endswith(".py") and not found["compiled"], "the wheel carries no compiled modules"
    assert not any(Path(p).resolve() == SRC.resolve() for p in found["path"] if p), "src/ is on sys.path"
    shebang = installed.casebridge.read_text().splitlines()[0]
    assert shebang == f"#!{installed.python}", shebang
    # The dependencies the wheel declares are met by those the .pth file lends it (the ones make setup installs).
    _ok(sys.executable, "-m", "pip", "--python", str(installed.python), "check")


def test_the_installed_command_converts_and_validates_the_packaged_seed_case(installed: Installed) -> None:
    seed = installed.site_packages / "casebridge" / "data" / "cases" / SEED_NAME
    assert seed.is_file()
    bundle = installed.work / "seed-bundle.json"
    converted = installed.run("convert", str(seed), "--output", str(bundle))
    assert converted.returncode == 0, converted.stderr
    doc = json.loads(bundle.read_text())
    assert doc["resourceType"] == "Bundle" and doc["type"] == "transaction" and doc["entry"]
    validated = installed.run("validate", str(bundle))
    assert validated.returncode == 0, f"{validated.stdout[-3000:]}\n{validated.stderr[-3000:]}"


def test_the_installed_command_runs_the_demo(installed: Installed) -> None:
    """The embedded FHIR server, started by the demo itself; the default case is the packaged seed."""
    data = installed.work / "fhir-demo"
    result = installed.run("demo", "--data-dir", str(data))
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert SEED_NAME in result.stdout
    assert "pulled back" in result.stdout and "stopped the embedded FHIR server" in result.stdout, result.stdout
    assert data.is_dir()


def test_the_installed_command_checks_the_pinned_fhir_packages(installed: Installed) -> None:
    """`packages fetch` reads the lock from the package data; the cache `make setup` filled has every package, so
    nothing is downloaded."""
    lock = json.loads((installed.site_packages / "casebridge" / "data" / "fhir-packages.json").read_text())
    result = installed.run("packages", "fetch")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    for package in lock:
        assert f"{package['name']}#{package['version']}" in result.stdout, result.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def serving(installed: Installed) -> Iterator[str]:
    port = _free_port()
    log = installed.work / f"serve-{port}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(installed.casebridge), "serve", "--port", str(port), "--workers", "1"],
            cwd=installed.work,
            env=installed.env(CASEBRIDGE_API_KEYS=f"job:rw:{RW},analyst:ro:{RO}"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"serve exited with {process.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"serve did not answer /healthz: {log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
            raise AssertionError(f"serve did not stop on SIGTERM: {log.read_text()[-3000:]}") from None


def test_the_installed_command_serves_the_api(installed: Installed, serving: str) -> None:
    assert httpx.get(f"{serving}/healthz", timeout=10).json() == {"status": "ok"}
    seed = (installed.site_packages / "casebridge" / "data" / "cases" / SEED_NAME).read_bytes()
    headers = {"Content-Type": "application/yaml"}
    refused = httpx.post(f"{serving}/cases", content=seed, headers=headers, timeout=60)
    assert refused.status_code == 401, refused.text
    converted = httpx.post(
        f"{serving}/cases", content=seed, headers={**headers, "Authorization": f"Bearer {RO}"}, timeout=120
    )
    assert converted.status_code == 200, converted.text[:2000]
    assert converted.json()["resourceType"] == "Bundle"
