"""The FHIR package loader: installing from (fake) npm tarballs, and the definition index.

The packages here are real .tgz files built in tmp_path, and ``npm`` is a small script that copies them
into ``--pack-destination`` and records each call, so nothing of ours is mocked. One test uses the real
pinned packages; it is skipped when they are not installed (``casebridge packages fetch``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from casebridge.cli.packages import packages_app
from casebridge.definitions.packages import (
    DEFAULT_LOCK_FILE,
    INDEX_FILE,
    INDEX_FORMAT,
    MARKER_FILE,
    DefinitionIndex,
    PackageError,
    PackageSpec,
    default_cache_dir,
    ensure_all,
    install,
    is_installed,
    is_packaged_file,
    load_lock,
    plan_add,
    version_satisfies,
)
from tests.conftest import pinned_packages_missing

EX = "http://example.org/fhir"
PROFILE = f"{EX}/StructureDefinition/MyPatient"
THING = f"{EX}/StructureDefinition/Thing"
COLOURS_VS = f"{EX}/ValueSet/colours"
COLOURS_CS = f"{EX}/CodeSystem/colours"
EXAMPLE_ONLY = f"{EX}/ValueSet/example-only"


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=1).encode()


def profile(url: str = PROFILE, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "id": url.rsplit("/", 1)[-1],
        "url": url,
        "version": version,
        "name": "MyPatient",
        "kind": "resource",
        "type": "Patient",
        "derivation": "constraint",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        **extra,
    }


def value_set(url: str = COLOURS_VS, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "id": url.rsplit("/", 1)[-1], "url": url, "version": version, **extra}


def package_members(name: str, version: str, *, vs_version: str = "1.0.0") -> dict[str, bytes]:
    """A small FHIR package: two StructureDefinitions, a ValueSet, a CodeSystem without a .json suffix, and
    things that must not be indexed (an example under package/example/, a Patient, text, npm's .index.json)."""
    thing = {
        "resourceType": "StructureDefinition",
        "id": "Thing",
        "url": THING,
        "version": version,
        "name": "Thing",
        "kind": "resource",
        "type": "Thing",
        "derivation": "specialization",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/DomainResource",
        "snapshot": {"element": [{"id": "Thing", "path": "Thing"}]},
    }
    return {
        "package/package.json": _json({"name": name, "version": version, "fhirVersions": ["4.0.1"]}),
        "package/.index.json": _json({"index-version": 1, "files": []}),
        "package/StructureDefinition-MyPatient.json": _json(profile()),
        "package/StructureDefinition-Thing.json": _json(thing),
        "package/ValueSet-colours.json": _json(value_set(version=vs_version)),
        "package/CodeSystem-colours": _json(
            {"resourceType": "CodeSystem", "id": "colours", "url": COLOURS_CS, "version": "1.0.0"}
        ),
        "package/Patient-example.json": _json({"resourceType": "Patient", "id": "example"}),
        "package/readme.txt": b"not JSON at all\n",
        "package/example/ValueSet-example-only.json": _json(value_set(EXAMPLE_ONLY)),
        "package/other/spec.internals": b"{ not json",
    }


def write_tgz(path: Path, members: dict[str, bytes], extra: Callable[[tarfile.TarFile], None] | None = None) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra is not None:
            extra(archive)


def integrity_of(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


FAKE_NPM = """#!{python}
# A stand-in for `npm pack <name>@<version> --pack-destination DIR --silent` (copies a tarball from the fake
# registry folder) and `npm view <name>@<version or x-range> dist.integrity|version --json`; records its arguments.
# A file <name>-<version>.integrity next to a tarball overrides the dist.integrity served ("" for none).
import base64, fnmatch, hashlib, json, shutil, sys
from pathlib import Path

registry = Path({registry!r})
args = sys.argv[1:]
with open(registry / "calls.log", "a") as log:
    log.write(json.dumps(args) + "\\n")


def not_found(what):
    print(f"npm error code E404\\nnpm error 404 No match found for version {{what}}", file=sys.stderr)
    sys.exit(1)


if args[:1] == ["view"] and len(args) == 4 and args[3] == "--json":
    name, _, selector = args[1].rpartition("@")
    pattern = selector.replace("x", "*")
    found = sorted(
        (p.name[len(name) + 1 : -4] for p in registry.glob(f"{{name}}-*.tgz")),
        key=lambda v: [int(n) if n.isdigit() else n for n in v.replace("-", ".").split(".")],
    )
    found = [v for v in found if fnmatch.fnmatchcase(v, pattern)]
    if not found:
        not_found(args[1])
    if args[2] == "version":
        print(json.dumps(found if len(found) > 1 else found[0]))
    elif args[2] == "dist.integrity":
        override = registry / f"{{name}}-{{found[-1]}}.integrity"
        if override.exists():
            value = override.read_text()
        else:
            digest = hashlib.sha512((registry / f"{{name}}-{{found[-1]}}.tgz").read_bytes()).digest()
            value = "sha512-" + base64.b64encode(digest).decode()
        if value:
            print(json.dumps(value))
    else:
        sys.exit(f"fake npm: unexpected field {{args[2]}}")
    sys.exit(0)
if not args or args[0] != "pack" or "--pack-destination" not in args:
    sys.exit(f"fake npm: unexpected arguments {{args}}")
name, _, version = args[1].rpartition("@")
tarball = registry / f"{{name}}-{{version}}.tgz"
if not tarball.is_file():
    print("npm notice fetching", file=sys.stderr)
    print(f"npm error code E404\\nnpm error 404 Not Found - GET https://registry.npmjs.org/{{name}}", file=sys.stderr)
    sys.exit(1)
shutil.copy(tarball, Path(args[args.index("--pack-destination") + 1]) / tarball.name)
"""


@dataclass
class Registry:
    """A folder of package tarballs and a fake npm serving them."""

    folder: Path
    npm: str
    cache: Path

    def publish(
        self,
        name: str = "example.fhir.pkg",
        version: str = "1.0.0",
        members: dict[str, bytes] | None = None,
        extra: Callable[[tarfile.TarFile], None] | None = None,
        **kwargs: Any,
    ) -> PackageSpec:
        tarball = self.folder / f"{name}-{version}.tgz"
        write_tgz(tarball, members if members is not None else package_members(name, version, **kwargs), extra)
        return PackageSpec(name, version, integrity_of(tarball))

    def calls(self) -> list[list[str]]:
        log = self.folder / "calls.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    folder = tmp_path / "registry"
    folder.mkdir()
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    npm.write_text(FAKE_NPM.format(python=sys.executable, registry=str(folder)))
    npm.chmod(0o755)
    return Registry(folder, str(npm), tmp_path / "cache")


def leftovers(cache: Path) -> list[str]:
    """Temporary folders and files an install or a cache write may have left behind."""
    return [p.name for p in cache.rglob("*") if ".casebridge-tmp-" in p.name or p.name.endswith(".tmp")]


# --- the lock file ------------------------------------------------------------------------------------------


def test_project_lock_pins_the_five_packages() -> None:
    specs = load_lock(DEFAULT_LOCK_FILE)
    # Priority order: the published expansions before the core package, so expanded value sets win.
    assert [s.folder_name for s in specs] == [
        "hl7.fhir.r4.expansions#4.0.1",
        "hl7.fhir.r4.examples#4.0.1",
        "hl7.fhir.uv.ips#2.0.0",
        "hl7.fhir.uv.extensions.r4#5.3.0-ballot-tc1",
        "hl7.terminology.r4#7.0.1",
    ]
    assert all(s.integrity.startswith("sha512-") for s in specs)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{", "not valid JSON"),
        ('{"name": "a"}', "expected a JSON list"),
        ('[{"name": "a", "version": "1.0.0"}]', "entry 0: expected exactly the string fields"),
        ('[{"name": "a", "version": "1.0.0", "integrity": "sha1-abc"}]', "entry 0: a: integrity must be"),
        ('[{"name": "../a", "version": "1.0.0", "integrity": "sha512-x"}]', "entry 0: invalid package name"),
        ('[{"name": "a", "version": "1#2", "integrity": "sha512-x"}]', "entry 0: a: invalid version"),
    ],
)
def test_lock_errors_name_the_file_and_entry(tmp_path: Path, content: str, expected: str) -> None:
    lock = tmp_path / "fhir-packages.json"
    lock.write_text(content)
    with pytest.raises(PackageError, match=r"fhir-packages\.json") as caught:
        load_lock(lock)
    assert expected in str(caught.value)


def test_lock_refuses_a_package_listed_twice(tmp_path: Path) -> None:
    entry = {"name": "a", "version": "1.0.0", "integrity": "sha512-" + base64.b64encode(bytes(64)).decode()}
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps([entry, {**entry, "version": "2.0.0"}]))
    with pytest.raises(PackageError, match="entry 1: a is listed twice"):
        load_lock(lock)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CASEBRIDGE_FHIR_PACKAGE_CACHE", str(tmp_path / "elsewhere"))
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("CASEBRIDGE_FHIR_PACKAGE_CACHE")
    assert default_cache_dir() == Path.home() / ".fhir" / "packages"


# --- installing ---------------------------------------------------------------------------------------------


def test_install_then_reinstall_is_a_no_op(registry: Registry) -> None:
    spec = registry.publish()
    folder = install(spec, registry.cache, npm=registry.npm)
    assert folder == registry.cache / "example.fhir.pkg#1.0.0"
    assert (folder / "package" / "package.json").is_file()
    assert (folder / "package" / "CodeSystem-colours").is_file()
    assert (folder / "package" / "example" / "ValueSet-example-only.json").is_file()
    assert (folder / MARKER_FILE).read_text().strip() == spec.integrity
    assert is_installed(spec, registry.cache)

    assert install(spec, registry.cache, npm=registry.npm) == folder
    calls = registry.calls()
    assert len(calls) == 1
    assert calls[0][:2] == ["pack", "example.fhir.pkg@1.0.0"] and "--silent" in calls[0]
    assert leftovers(registry.cache) == []


def test_integrity_mismatch_is_refused_and_leaves_nothing(registry: Registry) -> None:
    published = registry.publish()
    wrong = "sha512-" + base64.b64encode(hashlib.sha512(b"something else").digest()).decode()
    spec = PackageSpec(published.name, published.version, wrong)
    with pytest.raises(PackageError) as caught:
        install(spec, registry.cache, npm=registry.npm)
    message = str(caught.value)
    assert "example.fhir.pkg#1.0.0" in message and wrong in message and published.integrity in message
    assert not (registry.cache / spec.folder_name).exists()
    assert leftovers(registry.cache) == []


def _symlink(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("package/link.json")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    archive.addfile(info)


def _hardlink(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("package/hard.json")
    info.type = tarfile.LNKTYPE
    info.linkname = "package/package.json"
    archive.addfile(info)


def _device(archive: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("package/null")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    archive.addfile(info)


def _member(name: str) -> Callable[[tarfile.TarFile], None]:
    def add(archive: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = 4
        archive.addfile(info, io.BytesIO(b"evil"))

    return add


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (_member("../evil"), "'../evil'"),
        (_member("package/../../evil"), "'package/../../evil'"),
        (_member("/tmp/casebridge-evil"), "'/tmp/casebridge-evil'"),
        (_symlink, "links and devices are refused"),
        (_hardlink, "links and devices are refused"),
        (_device, "links and devices are refused"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device"],
)
def test_unsafe_tarballs_are_refused(
    registry: Registry, extra: Callable[[tarfile.TarFile], None], expected: str
) -> None:
    spec = registry.publish(extra=extra)
    with pytest.raises(PackageError, match=r"example\.fhir\.pkg#1\.0\.0") as caught:
        install(spec, registry.cache, npm=registry.npm)
    assert expected in str(caught.value)
    assert not (registry.cache / spec.folder_name).exists()
    assert not (registry.cache.parent / "evil").exists() and not (registry.cache / "evil").exists()
    assert not Path("/tmp/casebridge-evil").exists()
    assert leftovers(registry.cache) == []


def test_a_tarball_of_another_package_is_refused(registry: Registry) -> None:
    spec = registry.publish(members=package_members("someone.else", "1.0.0"))
    with pytest.raises(PackageError, match=r"package/package\.json names someone\.else#1\.0\.0"):
        install(spec, registry.cache, npm=registry.npm)


@pytest.mark.parametrize("marker", [None, "sha512-stale"], ids=["no-marker", "wrong-marker"])
def test_a_folder_without_a_valid_marker_is_reinstalled(registry: Registry, marker: str | None) -> None:
    spec = registry.publish()
    folder = registry.cache / spec.folder_name
    (folder / "package").mkdir(parents=True)
    (folder / "package" / "package.json").write_text('{"name": "half-finished"}')
    (folder / "package" / "stray.json").write_text("{}")
    if marker is not None:
        (folder / MARKER_FILE).write_text(marker)

    assert install(spec, registry.cache, npm=registry.npm) == folder
    assert len(registry.calls()) == 1
    assert not (folder / "package" / "stray.json").exists()
    assert json.loads((folder / "package" / "package.json").read_text())["name"] == "example.fhir.pkg"
    assert (folder / MARKER_FILE).read_text().strip() == spec.integrity
    assert leftovers(registry.cache) == []


def test_npm_failing_or_missing_is_reported(registry: Registry) -> None:
    unpublished = PackageSpec("not.published", "1.0.0", "sha512-" + base64.b64encode(bytes(64)).decode())
    with pytest.raises(PackageError, match="404 Not Found") as caught:
        install(unpublished, registry.cache, npm=registry.npm)
    assert "not.published#1.0.0" in str(caught.value)
    with pytest.raises(PackageError, match="npm not found"):
        install(unpublished, registry.cache, npm=str(registry.folder / "no-such-npm"))
    assert not (registry.cache / unpublished.folder_name).exists()
    assert leftovers(registry.cache) == []


def test_an_unusable_cache_folder_is_reported(registry: Registry, tmp_path: Path) -> None:
    spec = registry.publish()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(PackageError, match="cannot install into the package cache"):
        install(spec, blocker / "cache", npm=registry.npm)


def test_concurrent_installs_download_once(registry: Registry) -> None:
    spec = registry.publish()
    with ThreadPoolExecutor(max_workers=4) as pool:
        folders = list(pool.map(lambda _: install(spec, registry.cache, npm=registry.npm), range(4)))
    assert set(folders) == {registry.cache / spec.folder_name}
    assert len(registry.calls()) == 1  # the others waited on the cache lock, then found it installed
    assert leftovers(registry.cache) == []


def test_ensure_all_offline_lists_what_is_missing(registry: Registry) -> None:
    present = registry.publish("present.pkg")
    absent = registry.publish("absent.pkg")
    install(present, registry.cache, npm=registry.npm)
    with pytest.raises(PackageError) as caught:
        ensure_all([present, absent], registry.cache, offline=True)
    assert "absent.pkg#1.0.0" in str(caught.value) and "present.pkg" not in str(caught.value)
    assert len(registry.calls()) == 1  # offline never calls npm

    folders = ensure_all([present, absent], registry.cache, npm=registry.npm)
    assert folders == [registry.cache / "present.pkg#1.0.0", registry.cache / "absent.pkg#1.0.0"]
    assert ensure_all([present, absent], registry.cache, offline=True) == folders
    assert len(registry.calls()) == 2


# --- the definition index -----------------------------------------------------------------------------------


@pytest.fixture
def package(registry: Registry) -> Path:
    return install(registry.publish(), registry.cache, npm=registry.npm)


def test_index_by_url_and_url_version(package: Path) -> None:
    index = DefinitionIndex.load([package])
    assert index.get(PROFILE)["name"] == "MyPatient"  # type: ignore[index]
    assert index.get(f"{PROFILE}|1.0.0") is index.get(PROFILE)
    assert index.get(f"{PROFILE}|9.9.9") is None
    assert index.get("http://example.org/unknown") is None
    assert index.get(COLOURS_VS)["resourceType"] == "ValueSet"  # type: ignore[index]
    # A file without a .json suffix is JSON all the same.
    assert index.get(COLOURS_CS)["id"] == "colours"  # type: ignore[index]
    # package/example/ is not indexed, nor are non-definitions, text, package.json or .index.json.
    assert index.get(EXAMPLE_ONLY) is None
    assert sorted(r.resource_type for r in index.records()) == [
        "CodeSystem",
        "StructureDefinition",
        "StructureDefinition",
        "ValueSet",
    ]
    assert [r.url for r in index.structure_definitions()] == [PROFILE, THING]
    assert [r.url for r in index.value_sets()] == [COLOURS_VS]
    info = index.get_info(PROFILE)
    assert info is not None and info.package == "example.fhir.pkg#1.0.0" and info.type == "Patient"
    assert info.derivation == "constraint" and not info.is_core_definition


def test_core_definition_is_the_specialization(package: Path) -> None:
    index = DefinitionIndex.load([package])
    thing = index.core_definition("Thing")
    assert thing is not None and thing["url"] == THING and thing["snapshot"]
    assert index.core_definition("Patient") is None  # the package has a profile of Patient, not Patient


def test_the_first_package_wins_for_the_bare_url(registry: Registry) -> None:
    first = install(registry.publish("first.pkg", vs_version="1.0.0"), registry.cache, npm=registry.npm)
    second = install(registry.publish("second.pkg", vs_version="2.0.0"), registry.cache, npm=registry.npm)

    index = DefinitionIndex.load([first, second])
    assert index.get(COLOURS_VS)["version"] == "1.0.0"  # type: ignore[index]
    assert index.get(f"{COLOURS_VS}|2.0.0")["version"] == "2.0.0"  # type: ignore[index]
    assert [r.package for r in index.value_sets()] == ["first.pkg#1.0.0"]
    # Both define PROFILE|1.0.0: url|version keeps both, the first first.
    assert index.get_info(f"{PROFILE}|1.0.0").package == "first.pkg#1.0.0"  # type: ignore[union-attr]

    reversed_index = DefinitionIndex.load([second, first])
    assert reversed_index.get(COLOURS_VS)["version"] == "2.0.0"  # type: ignore[index]


def test_loose_definitions_override_packages(package: Path, tmp_path: Path) -> None:
    loose = tmp_path / "profiles" / "nested"
    loose.mkdir(parents=True)
    (loose / "my-patient.json").write_text(json.dumps(profile(name="LocalPatient")))

    index = DefinitionIndex.load([package], extra=[tmp_path / "profiles"])
    assert index.get(PROFILE)["name"] == "LocalPatient"  # type: ignore[index]
    assert index.get(f"{PROFILE}|1.0.0")["name"] == "LocalPatient"  # type: ignore[index]
    assert index.get_info(PROFILE).package is None  # type: ignore[union-attr]
    # One record per url: the loose profile replaces the package's.
    sources = sorted(Path(r.source).name for r in index.structure_definitions())
    assert sources == ["StructureDefinition-Thing.json", "my-patient.json"]

    # An in-memory definition is loose too: it beats the package's ValueSet, but not the earlier loose profile.
    index.add_resource(value_set(title="mine"), "test")
    index.add_resource(profile(name="Later"), "later")
    assert index.get(COLOURS_VS)["title"] == "mine"  # type: ignore[index]
    assert index.get(PROFILE)["name"] == "LocalPatient"  # type: ignore[index]
    with pytest.raises(PackageError, match="test: not a definition"):
        index.add_resource({"resourceType": "Patient"}, "test")


def test_a_bundle_of_definitions_is_indexed(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": profile()},
            {"resource": value_set()},
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {"fullUrl": "urn:uuid:no-resource"},
        ],
    }
    file = tmp_path / "definitions.json"
    file.write_text(json.dumps(bundle))
    index = DefinitionIndex()
    assert index.add_path(file) == 2
    assert index.get(PROFILE) is not None and index.get(COLOURS_VS) is not None
    assert index.get_info(COLOURS_VS).source == f"{file} (entry 1)"  # type: ignore[union-attr]


def test_bad_loose_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "StructureDefinition",')
    with pytest.raises(PackageError, match=r"broken\.json: not valid JSON"):
        DefinitionIndex().add_path(broken)
    xml = tmp_path / "folder" / "profile.xml"
    xml.parent.mkdir()
    xml.write_text("<StructureDefinition/>")
    with pytest.raises(PackageError, match=r"profile\.xml: the root element is not in the FHIR namespace"):
        DefinitionIndex().add_path(xml.parent)
    with pytest.raises(PackageError, match=r"missing\.json: no such"):
        DefinitionIndex().add_path(tmp_path / "missing.json")
    with pytest.raises(PackageError, match="not a FHIR package folder"):
        DefinitionIndex.load([tmp_path])


def test_definitions_are_read_lazily_and_once(package: Path) -> None:
    index = DefinitionIndex.load([package])
    info = index.get_info(COLOURS_VS)
    assert info is not None and info.file is not None
    first = index.get(COLOURS_VS)
    assert first is index.get(COLOURS_VS) is index.get(f"{COLOURS_VS}|1.0.0")
    # Read once: the index does not go back to the file.
    Path(info.file).unlink()
    assert index.get(COLOURS_VS) is first

    # Lazy: a fresh index (from the index cache) knows the record but only reads the file when asked.
    fresh = DefinitionIndex.load([package])
    assert fresh.get_info(COLOURS_VS) == info
    with pytest.raises(PackageError, match=r"ValueSet-colours\.json: cannot read the indexed definition"):
        fresh.get(COLOURS_VS)
    assert not (package / INDEX_FILE).exists()  # dropped, so that the next run rescans


def test_the_index_cache_is_written_reused_and_rebuilt(package: Path) -> None:
    cache = package / INDEX_FILE
    assert not cache.exists()  # installing does not index
    DefinitionIndex.load([package])
    document = json.loads(cache.read_text())
    assert document["format"] == INDEX_FORMAT and document["stamp"].startswith("integrity:sha512-")
    paths = sorted(row[0] for row in document["files"])
    assert paths == [
        "package/CodeSystem-colours",
        "package/StructureDefinition-MyPatient.json",
        "package/StructureDefinition-Thing.json",
        "package/ValueSet-colours.json",
    ]
    # Reused: a file deleted behind the index's back is still listed by a fresh index.
    (package / "package" / "ValueSet-colours.json").unlink()
    assert DefinitionIndex.load([package]).get_info(COLOURS_VS) is not None
    # Rebuilt when the package marker changes (a re-installed package).
    (package / MARKER_FILE).write_text("sha512-another")
    assert DefinitionIndex.load([package]).get_info(COLOURS_VS) is None
    assert json.loads(cache.read_text())["stamp"] == "integrity:sha512-another"
    # Rebuilt when unreadable.
    cache.write_text("{ truncated")
    assert DefinitionIndex.load([package]).get_info(PROFILE) is not None
    assert json.loads(cache.read_text())["format"] == INDEX_FORMAT


def test_the_index_cache_of_an_unmarked_folder_follows_its_files(tmp_path: Path) -> None:
    folder = tmp_path / "other.tool#1.0.0"
    (folder / "package").mkdir(parents=True)
    (folder / "package" / "package.json").write_text('{"name": "other.tool", "version": "1.0.0"}')
    (folder / "package" / "ValueSet-a.json").write_text(json.dumps(value_set()))
    assert DefinitionIndex.load([folder]).get_info(COLOURS_VS) is not None
    assert json.loads((folder / INDEX_FILE).read_text())["stamp"].startswith("unverified:")
    (folder / "package" / "ValueSet-a.json").unlink()  # changes the folder's mtime
    os.utime(folder / "package", ns=(1, 1))  # make sure, even on a coarse clock
    assert DefinitionIndex.load([folder]).get_info(COLOURS_VS) is None


@pytest.fixture
def read_only(package: Path) -> Iterator[Path]:
    (package / INDEX_FILE).unlink(missing_ok=True)
    package.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        yield package
    finally:
        package.chmod(stat.S_IRWXU)


def test_a_read_only_package_folder_still_works(read_only: Path) -> None:
    index = DefinitionIndex.load([read_only])
    assert index.get(PROFILE) is not None
    if os.geteuid() != 0:  # root writes through permissions: see the next test for a failing write
        assert not (read_only / INDEX_FILE).exists()
    assert leftovers(read_only) == []


def test_a_failing_index_cache_write_keeps_the_index_in_memory(package: Path) -> None:
    # A folder in the cache file's place: reading and the final rename both fail, even for root.
    (package / INDEX_FILE).unlink(missing_ok=True)
    (package / INDEX_FILE).mkdir()
    index = DefinitionIndex.load([package])
    assert index.get(PROFILE) is not None and index.get(COLOURS_CS) is not None
    assert (package / INDEX_FILE).is_dir() and leftovers(package) == []


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_fetch_and_list(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registry.publish()
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps([{"name": spec.name, "version": spec.version, "integrity": spec.integrity}]))
    monkeypatch.setenv("PATH", f"{Path(registry.npm).parent}{os.pathsep}{os.environ['PATH']}")
    runner = CliRunner()
    args = ["--lock", str(lock), "--cache", str(registry.cache)]

    missing = runner.invoke(packages_app, ["list", *args])
    assert missing.exit_code == 1 and "example.fhir.pkg#1.0.0: missing" in missing.stdout
    offline = runner.invoke(packages_app, ["fetch", *args, "--offline"])
    assert offline.exit_code == 2 and "example.fhir.pkg#1.0.0" in offline.stderr
    assert "Traceback" not in offline.output

    first = runner.invoke(packages_app, ["fetch", *args])
    assert first.exit_code == 0, first.output
    assert "example.fhir.pkg#1.0.0: installed" in first.stdout
    second = runner.invoke(packages_app, ["fetch", *args, "--offline"])
    assert second.exit_code == 0 and "example.fhir.pkg#1.0.0: present" in second.stdout
    listed = runner.invoke(packages_app, ["list", *args])
    assert listed.exit_code == 0 and "example.fhir.pkg#1.0.0: present, 4 definitions" in listed.stdout
    assert len(registry.calls()) == 1


# --- adding and removing packages (packages add / remove) ---------------------------------------------------


def ig_members(
    name: str, version: str, dependencies: dict[str, str] | None = None, fhir_versions: tuple[str, ...] = ("4.0.1",)
) -> dict[str, bytes]:
    """A small package with dependencies in its package.json and one ValueSet of its own."""
    manifest: dict[str, Any] = {"name": name, "version": version, "fhirVersions": list(fhir_versions)}
    if dependencies is not None:
        manifest["dependencies"] = dependencies
    own = value_set(f"{EX}/ValueSet/{name}", version)
    return {"package/package.json": _json(manifest), f"package/ValueSet-{name}.json": _json(own)}


def lock_of(path: Path, *specs: PackageSpec) -> Path:
    path.write_text(json.dumps([{"name": s.name, "version": s.version, "integrity": s.integrity} for s in specs]))
    return path


@pytest.fixture
def ig_registry(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The registry with a small IG: ig.a 1.0.0 needs the core, dep.b 2.0.x (which needs dep.d) and pinned.c;
    the fake npm first on PATH and no configured lock or cache."""
    registry.publish("hl7.fhir.r4.examples", "4.0.1", members=ig_members("hl7.fhir.r4.examples", "4.0.1"))
    registry.publish("pinned.c", "1.0.1", members=ig_members("pinned.c", "1.0.1"))
    registry.publish("dep.d", "1.0.0", members=ig_members("dep.d", "1.0.0"))
    for patch in ("2.0.1", "2.0.3"):
        registry.publish("dep.b", patch, members=ig_members("dep.b", patch, {"dep.d": "1.0.0"}))
    registry.publish("dep.b", "3.0.0", members=ig_members("dep.b", "3.0.0"))
    dependencies = {"hl7.fhir.r4.core": "4.0.1", "dep.b": "2.0.x", "pinned.c": "1.0.0"}
    registry.publish("ig.a", "1.0.0", members=ig_members("ig.a", "1.0.0", dependencies))
    monkeypatch.setenv("PATH", f"{Path(registry.npm).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CASEBRIDGE_FHIR_PACKAGES_LOCK", raising=False)
    monkeypatch.delenv("CASEBRIDGE_FHIR_PACKAGE_CACHE", raising=False)
    return registry


def spec_of(registry: Registry, name: str, version: str) -> PackageSpec:
    return PackageSpec(name, version, integrity_of(registry.folder / f"{name}-{version}.tgz"))


def base_lock(registry: Registry, path: Path) -> Path:
    """A lock like the project's: the core carrier and pinned.c at a later patch than ig.a asks for."""
    return lock_of(path, spec_of(registry, "hl7.fhir.r4.examples", "4.0.1"), spec_of(registry, "pinned.c", "1.0.1"))


def add(registry: Registry, lock: Path, *more: str, package: str = "ig.a@1.0.0") -> Any:
    args = ["add", package, "--lock", str(lock), "--cache", str(registry.cache), *more]
    return CliRunner().invoke(packages_app, args)


def packs(registry: Registry) -> list[str]:
    return [call[1] for call in registry.calls() if call[0] == "pack"]


@pytest.mark.parametrize(
    ("pinned", "required", "expected"),
    [
        ("4.0.1", "4.0.1", True),
        ("4.0.1", "4.0.x", True),
        ("4.0.1", "4.x", True),
        ("4.0.1", "4.0.0", True),  # a later patch serves an earlier one
        ("4.0.0", "4.0.1", False),
        ("4.1.0", "4.0.1", False),
        ("5.3.0-ballot-tc1", "5.2.0", False),
        ("5.3.0-ballot-tc1", "5.3.0", False),  # a pre-release serves only itself
        ("5.3.0-ballot-tc1", "5.3.x", False),
    ],
)
def test_version_satisfies(pinned: str, required: str, expected: bool) -> None:
    assert version_satisfies(pinned, required) is expected


def test_add_pins_the_package_and_its_dependencies(ig_registry: Registry, tmp_path: Path) -> None:
    lock = base_lock(ig_registry, tmp_path / "lock.json")
    before = load_lock(lock)
    done = add(ig_registry, lock)
    assert done.exit_code == 0, done.output
    # Appended after the pinned ones, dependencies first; dep.b's 2.0.x resolved to the highest 2.0 patch.
    specs = load_lock(lock)
    assert specs[:2] == before
    assert [s.folder_name for s in specs[2:]] == ["dep.d#1.0.0", "dep.b#2.0.3", "ig.a#1.0.0"]
    assert all(s == spec_of(ig_registry, s.name, s.version) for s in specs[2:])
    assert all(is_installed(s, ig_registry.cache) for s in specs[2:])
    assert "hl7.fhir.r4.core#4.0.1 (needed by ig.a#1.0.0): served by the pinned hl7.fhir.r4.examples#4.0.1" in (
        done.stdout
    )
    assert "pinned.c#1.0.0 (needed by ig.a#1.0.0): already pinned as pinned.c#1.0.1" in done.stdout
    assert f"{lock}: 3 package(s) added" in done.stdout
    # The pinned and the core are not fetched; the new ones once each.
    assert sorted(packs(ig_registry)) == ["dep.b@2.0.3", "dep.d@1.0.0", "ig.a@1.0.0"]
    # The lock loads, and the IG's definitions with it.
    index = DefinitionIndex.load(ensure_all(specs[2:], ig_registry.cache, offline=True))
    assert index.get(f"{EX}/ValueSet/ig.a") is not None and index.get(f"{EX}/ValueSet/dep.d") is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    again = add(ig_registry, lock)
    assert again.exit_code == 0 and "ig.a#1.0.0 (requested): already pinned" in again.stdout
    assert "nothing to add" in again.stdout and load_lock(lock) == specs


def test_add_fetches_the_core_carrier_when_it_is_not_pinned(ig_registry: Registry, tmp_path: Path) -> None:
    plan = plan_add(
        "ig.a", "1.0.0", [spec_of(ig_registry, "pinned.c", "1.0.1")], ig_registry.cache, npm=ig_registry.npm
    )
    assert [s.folder_name for s in plan.added] == [
        "dep.d#1.0.0",
        "dep.b#2.0.3",
        "hl7.fhir.r4.examples#4.0.1",
        "ig.a#1.0.0",
    ]
    assert any("hl7.fhir.r4.core#4.0.1" in n and "using hl7.fhir.r4.examples#4.0.1" in n for n in plan.notes)
    assert "hl7.fhir.r4.core@4.0.1" not in packs(ig_registry)


def test_add_refuses_a_conflicting_pinned_version_unless_kept(ig_registry: Registry, tmp_path: Path) -> None:
    lock = lock_of(
        tmp_path / "lock.json",
        spec_of(ig_registry, "hl7.fhir.r4.examples", "4.0.1"),
        spec_of(ig_registry, "dep.b", "3.0.0"),
        spec_of(ig_registry, "pinned.c", "1.0.1"),
    )
    content = lock.read_bytes()
    refused = add(ig_registry, lock)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert "cannot add ig.a@1.0.0" in refused.stderr
    assert "ig.a#1.0.0 needs dep.b#2.0.x, but the lock pins dep.b#3.0.0" in refused.stderr
    assert "--keep-pinned" in refused.stderr
    assert lock.read_bytes() == content

    kept = add(ig_registry, lock, "--keep-pinned")
    assert kept.exit_code == 0, kept.output
    assert "warning: ig.a#1.0.0 needs dep.b#2.0.x; keeping the pinned dep.b#3.0.0" in kept.stderr
    assert [s.folder_name for s in load_lock(lock)[3:]] == ["ig.a#1.0.0"]


def test_add_refuses_the_package_pinned_at_another_version(ig_registry: Registry, tmp_path: Path) -> None:
    lock = lock_of(tmp_path / "lock.json", spec_of(ig_registry, "dep.b", "2.0.1"))
    content = lock.read_bytes()
    done = add(ig_registry, lock, "--keep-pinned", package="dep.b@3.0.0")
    assert done.exit_code == 2
    assert "dep.b is already pinned at 2.0.1, not 3.0.0" in done.stderr and "packages remove dep.b" in done.stderr
    assert lock.read_bytes() == content


def test_add_refuses_two_new_packages_needing_different_versions(ig_registry: Registry, tmp_path: Path) -> None:
    ig_registry.publish(
        "ig.two", "1.0.0", members=ig_members("ig.two", "1.0.0", {"dep.b": "2.0.1", "ig.three": "1.0.0"})
    )
    ig_registry.publish("ig.three", "1.0.0", members=ig_members("ig.three", "1.0.0", {"dep.b": "3.0.0"}))
    lock = base_lock(ig_registry, tmp_path / "lock.json")
    content = lock.read_bytes()
    done = add(ig_registry, lock, package="ig.two@1.0.0")
    assert done.exit_code == 2
    assert "ig.three#1.0.0 needs dep.b#3.0.0, but dep.b#2.0.1 is added" in done.stderr
    assert lock.read_bytes() == content


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("unpublished", "missing.pkg@1.0.0: `npm view` failed (exit 1)"),
        ("wrong-integrity", "ig.a#1.0.0: the downloaded tarball does not match the pinned integrity"),
        ("fhir-r5", "r5.pkg#1.0.0: made for FHIR 5.0.0; this validator is FHIR R4 (4.0.1)"),
        ("bad-version", "ig.a: invalid version 'a/b'"),
    ],
)
def test_a_failing_add_names_the_package_and_leaves_the_lock(
    ig_registry: Registry, tmp_path: Path, setup: str, expected: str
) -> None:
    package = "ig.a@1.0.0"
    if setup == "unpublished":
        ig_registry.publish("ig.a", "1.0.0", members=ig_members("ig.a", "1.0.0", {"missing.pkg": "1.0.0"}))
    elif setup == "wrong-integrity":
        wrong = "sha512-" + base64.b64encode(hashlib.sha512(b"another tarball").digest()).decode()
        (ig_registry.folder / "ig.a-1.0.0.integrity").write_text(wrong)
    elif setup == "fhir-r5":
        ig_registry.publish("r5.pkg", "1.0.0", members=ig_members("r5.pkg", "1.0.0", fhir_versions=("5.0.0",)))
        package = "r5.pkg@1.0.0"
    else:
        package = "ig.a@a/b"
    lock = base_lock(ig_registry, tmp_path / "lock.json")
    content = lock.read_bytes()
    done = add(ig_registry, lock, package=package)
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert expected in done.stderr
    assert lock.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["lock.json"]


def test_add_pins_the_tarball_digest_when_the_registry_gives_none(ig_registry: Registry, tmp_path: Path) -> None:
    (ig_registry.folder / "dep.d-1.0.0.integrity").write_text("")
    lock = base_lock(ig_registry, tmp_path / "lock.json")
    done = add(ig_registry, lock)
    assert done.exit_code == 0, done.output
    assert "dep.d#1.0.0: the registry gives no dist.integrity; pinned the tarball's sha512" in done.stdout
    assert spec_of(ig_registry, "dep.d", "1.0.0") in load_lock(lock)


def test_add_never_writes_inside_an_installed_distribution(ig_registry: Registry, tmp_path: Path) -> None:
    data = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "casebridge" / "data"
    data.mkdir(parents=True)
    packaged = base_lock(ig_registry, data / "fhir-packages.json")
    content = packaged.read_bytes()
    assert is_packaged_file(packaged) and not is_packaged_file(tmp_path / "lock.json")
    done = add(ig_registry, packaged)
    assert done.exit_code == 2
    assert "shipped inside an installed casebridge" in done.stderr and "CASEBRIDGE_FHIR_PACKAGES_LOCK" in done.stderr
    assert packaged.read_bytes() == content and ig_registry.calls() == []


def test_add_writes_the_configured_lock_and_the_project_one_only_when_named(
    ig_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    # No --lock, no setting: the default is the project's own list, which is changed only when named.
    content = DEFAULT_LOCK_FILE.read_bytes()
    default = runner.invoke(packages_app, ["add", "ig.a@1.0.0", "--cache", str(ig_registry.cache)])
    assert default.exit_code == 2 and "pass --lock" in default.stderr
    assert DEFAULT_LOCK_FILE.read_bytes() == content and ig_registry.calls() == []
    # A lock of one's own, configured: written without --lock.
    mine = base_lock(ig_registry, tmp_path / "mine.json")
    monkeypatch.setenv("CASEBRIDGE_FHIR_PACKAGES_LOCK", str(mine))
    done = runner.invoke(packages_app, ["add", "ig.a@1.0.0", "--cache", str(ig_registry.cache)])
    assert done.exit_code == 0, done.output
    assert load_lock(mine)[-1].folder_name == "ig.a#1.0.0"
    # A configured lock that does not exist: nothing to start from.
    monkeypatch.setenv("CASEBRIDGE_FHIR_PACKAGES_LOCK", str(tmp_path / "absent.json"))
    absent = runner.invoke(packages_app, ["add", "ig.a@1.0.0", "--cache", str(ig_registry.cache)])
    assert absent.exit_code == 2 and "no such lock file" in absent.stderr
    assert not (tmp_path / "absent.json").exists()


def test_remove_unpins_unless_another_package_needs_it(ig_registry: Registry, tmp_path: Path) -> None:
    lock = base_lock(ig_registry, tmp_path / "lock.json")
    assert add(ig_registry, lock).exit_code == 0
    runner = CliRunner()
    args = ["--lock", str(lock), "--cache", str(ig_registry.cache)]

    needed = runner.invoke(packages_app, ["remove", "dep.d", *args])
    assert needed.exit_code == 2 and "dep.d: needed by dep.b#2.0.3" in needed.stderr
    core = runner.invoke(packages_app, ["remove", "hl7.fhir.r4.examples", *args])
    assert core.exit_code == 2 and "needed by ig.a#1.0.0" in core.stderr  # as the carrier of hl7.fhir.r4.core
    unknown = runner.invoke(packages_app, ["remove", "not.pinned", *args])
    assert unknown.exit_code == 2 and "not.pinned: not pinned" in unknown.stderr

    removed = runner.invoke(packages_app, ["remove", "ig.a", *args])
    assert removed.exit_code == 0, removed.output
    forced = runner.invoke(packages_app, ["remove", "dep.d", "--force", *args])
    assert forced.exit_code == 0, forced.output
    names = [s.name for s in load_lock(lock)]
    assert names == ["hl7.fhir.r4.examples", "pinned.c", "dep.b"]
    assert (ig_registry.cache / "ig.a#1.0.0").is_dir()  # the cache is left as it is


# --- the real pinned packages -------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_real_packages_resolve() -> None:
    try:
        folders = ensure_all(load_lock(), default_cache_dir(), offline=True)
    except PackageError as exc:
        pinned_packages_missing(f"the pinned FHIR packages are not installed: {exc}")
    index = DefinitionIndex.load(folders)
    patient = index.get("http://hl7.org/fhir/StructureDefinition/Patient")
    assert patient is not None and patient["type"] == "Patient"
    ips = index.get("http://hl7.org/fhir/uv/ips/StructureDefinition/Patient-uv-ips")
    assert ips is not None and ips["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Patient"
    gender = index.get("http://hl7.org/fhir/ValueSet/administrative-gender")
    assert gender is not None and gender["resourceType"] == "ValueSet"
    observation = index.core_definition("Observation")
    assert observation is not None and observation["snapshot"]["element"][0]["path"] == "Observation"
