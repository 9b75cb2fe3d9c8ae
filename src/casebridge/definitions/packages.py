"""FHIR packages: the pinned list, installing them into the package cache, and indexing their definitions.

The pinned packages
    ``fhir-packages.json`` at the project root is a JSON list of ``{"name", "version", "integrity"}``;
    ``integrity`` is npm's ``dist.integrity`` (``sha512-<base64>``) of the package tarball. ``load_lock`` reads it.

The package cache (the standard FHIR layout, shared with other FHIR tools)
    ``<cache>/<name>#<version>/package/*.json``; the cache is ``$CASEBRIDGE_FHIR_PACKAGE_CACHE`` when set,
    else ``~/.fhir/packages``. ``install`` fetches a tarball with ``npm pack``, checks it against the pinned
    integrity, extracts it (regular files and folders only) into a temporary folder beside the target and
    renames it into place. It then writes, last, the marker ``<name>#<version>/.casebridge-integrity`` holding
    the integrity: a folder with the right marker is installed; any other folder (another tool's, or one left
    half-finished) is replaced on the next install. Installs into one cache take turns on the lock file
    ``<cache>/.casebridge.lock``, so concurrent runs download a package once.

Adding a package (``plan_add``, ``write_lock``; the command ``casebridge packages add``)
    Resolves a package and its ``package.json`` dependencies recursively against a lock, installs the new ones
    (integrity: the registry's ``dist.integrity``) and appends them to the lock, dependencies first, after the
    packages already pinned: base definitions keep precedence over an IG's copy of the same canonical URL.
    ``hl7.fhir.r4.core`` is served by ``hl7.fhir.r4.examples`` (``CORE_SUBSTITUTES``). The lock is replaced
    atomically, never inside an installed distribution (``check_lock_writable``).

The definition index (``DefinitionIndex``)
    Indexes StructureDefinition, ValueSet, CodeSystem, ConceptMap and NamingSystem by ``url`` and by
    ``url|version``, and base StructureDefinitions by ``type`` (``core_definition``). From a package only the
    top folder ``package/*`` is read (not ``package/example/``, ``package/other/``...), and files are recognised
    as JSON by their content, since some packages' files have no ``.json`` suffix.

    Priority, for the bare ``url`` key and for ``core_definition``: loose definitions (``add_path``,
    ``add_resource``) come before packages, so a test's own profile overrides a published one; within each of
    the two layers the first one wins: packages in the order given (the caller passes them in priority
    order), loose definitions in the order added. ``url|version`` keeps every definition, best first.

    Each package folder keeps an index cache, ``<name>#<version>/.casebridge-index.json``, so that a run
    reads one small file per package instead of parsing thousands. It records the package marker (or, for a
    folder without one, the folder's modification stamp) and a format version, and is rebuilt when either
    differs or the file is unreadable. It is written atomically; a read-only folder keeps the index in memory.
    A package's resources are read from disk only when asked for (``get``), once per index; loose files are
    read when added. An index is meant to be built once and then only read.

Errors are ``PackageError``, which is defined here rather than in ``casebridge.errors``, beside its only source.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

import orjson

from casebridge._data import data_dir
from casebridge.errors import CasebridgeError

log = logging.getLogger(__name__)

DEFAULT_LOCK_FILE = data_dir() / "fhir-packages.json"
CACHE_ENV = "CASEBRIDGE_FHIR_PACKAGE_CACHE"
MARKER_FILE = ".casebridge-integrity"
INDEX_FILE = ".casebridge-index.json"
INDEX_FORMAT = 3  # bump when the cache's content changes meaning: old caches are then rebuilt
INDEXED_TYPES = frozenset(
    {
        "StructureDefinition",
        "ValueSet",
        "CodeSystem",
        "ConceptMap",
        "NamingSystem",
        "Questionnaire",
        "Measure",
        "Library",
    }
)

# Package names and versions become folder names: no separators, no '#', '|' or '@', no leading dot.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]*")
_STDERR_TAIL = 2000  # characters of npm's stderr kept in an error message
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, which orjson refuses


def _load_json(raw: bytes) -> Any:
    """JSON of a definition file, read past a byte-order mark (as Windows tools write it)."""
    return orjson.loads(raw.removeprefix(_BOM))


class PackageError(CasebridgeError):
    """A FHIR package cannot be pinned, installed or indexed. The message names the package or file.

    Defined here rather than in ``casebridge.errors``: only this module raises it.
    """


@dataclass(frozen=True)
class PackageSpec:
    """One pinned package: ``integrity`` is npm's ``sha512-<base64>`` digest of its tarball."""

    name: str
    version: str
    integrity: str

    def __post_init__(self) -> None:
        if not _NAME_RE.fullmatch(self.name) or ".." in self.name:
            raise PackageError(f"invalid package name {self.name!r}")
        if not _VERSION_RE.fullmatch(self.version) or ".." in self.version:
            raise PackageError(f"{self.name}: invalid version {self.version!r}")
        _integrity_digest(self.integrity, self.name)

    @property
    def folder_name(self) -> str:
        """The package's folder in the cache: ``<name>#<version>``."""
        return f"{self.name}#{self.version}"


def _integrity_digest(integrity: str, name: str) -> bytes:
    """The raw sha512 digest of a ``sha512-<base64>`` integrity string."""
    algorithm, _, encoded = integrity.partition("-")
    try:
        digest = base64.b64decode(encoded, validate=True)
    except ValueError:
        digest = b""
    if algorithm != "sha512" or len(digest) != hashlib.sha512().digest_size:
        raise PackageError(f"{name}: integrity must be 'sha512-<base64 of 64 bytes>', got {integrity!r}")
    return digest


def load_lock(path: Path = DEFAULT_LOCK_FILE) -> list[PackageSpec]:
    """The pinned packages of a lock file (a JSON list of ``{"name", "version", "integrity"}``), in order."""
    try:
        data = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise PackageError(f"{path}: cannot read the package list: {exc.strerror or exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise PackageError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise PackageError(f"{path}: expected a JSON list of {{name, version, integrity}} objects")
    specs: list[PackageSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(data):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise PackageError(f"{where}: expected an object with name, version and integrity")
        keys = {"name", "version", "integrity"}
        if set(entry) != keys or not all(isinstance(entry[k], str) for k in keys):
            raise PackageError(f"{where}: expected exactly the string fields name, version and integrity")
        try:
            spec = PackageSpec(entry["name"], entry["version"], entry["integrity"])
        except PackageError as exc:
            raise PackageError(f"{where}: {exc}") from exc
        # Two versions of one package would make "which one wins" depend on list order: refuse.
        if spec.name in seen:
            raise PackageError(f"{where}: {spec.name} is listed twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def default_cache_dir() -> Path:
    """``$CASEBRIDGE_FHIR_PACKAGE_CACHE`` when set, else the standard ``~/.fhir/packages``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".fhir" / "packages"


# --- installing -------------------------------------------------------------------------------------------


def is_installed(spec: PackageSpec, cache_dir: Path) -> bool:
    """Whether the package's folder is complete: it has ``package/package.json`` and our marker for it."""
    folder = cache_dir / spec.folder_name
    try:
        marker = (folder / MARKER_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return marker == spec.integrity and (folder / "package" / "package.json").is_file()


def install(spec: PackageSpec, cache_dir: Path, *, npm: str = "npm", timeout: float = 600) -> Path:
    """Install one package into the cache and return its folder ``<cache>/<name>#<version>``.

    Idempotent: an installed package (see ``is_installed``) is returned without touching the network.
    Otherwise the tarball is fetched with ``npm pack``, checked against ``spec.integrity``, extracted beside
    the target and renamed into place (replacing a folder without a valid marker); the marker is written last.
    """
    target = cache_dir / spec.folder_name
    if is_installed(spec, cache_dir):
        return target
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _cache_lock(cache_dir):
            # Another process may have installed it while we waited for the lock.
            if not is_installed(spec, cache_dir):
                _install_locked(spec, cache_dir, npm, timeout)
    except OSError as exc:  # the cache itself: not writable, full...
        raise PackageError(f"{spec.folder_name}: cannot install into the package cache {cache_dir}: {exc}") from exc
    return target


def ensure_all(
    specs: Sequence[PackageSpec],
    cache_dir: Path,
    *,
    offline: bool = False,
    npm: str = "npm",
    timeout: float = 600,
) -> list[Path]:
    """Install every package (in order) and return their folders; offline, only check they are installed."""
    if offline:
        missing = [spec.folder_name for spec in specs if not is_installed(spec, cache_dir)]
        if missing:
            raise PackageError(
                f"FHIR packages not installed in {cache_dir}: {', '.join(missing)} "
                "(run `casebridge packages fetch` with network access)"
            )
        return [cache_dir / spec.folder_name for spec in specs]
    return [install(spec, cache_dir, npm=npm, timeout=timeout) for spec in specs]


def _install_locked(spec: PackageSpec, cache_dir: Path, npm: str, timeout: float) -> None:
    """Download, verify, extract beside the target, swap into place, then write the marker."""
    target = cache_dir / spec.folder_name
    # No '#' in the name: other tools take any 'x#y' folder of the cache for a package.
    work = Path(tempfile.mkdtemp(prefix=f".casebridge-tmp-{spec.name}-{spec.version}-", dir=cache_dir))
    try:
        download = work / "download"
        download.mkdir()
        tarball = _npm_pack(spec, download, npm, timeout)
        _verify(spec, tarball)
        staged = work / "staged"
        staged.mkdir()
        _extract(tarball, staged, spec)
        _check_manifest(staged, spec)
        _swap_into_place(staged, target, work / "previous", spec)
        _write_atomic(target / MARKER_FILE, spec.integrity + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    """Serialise installs into one cache across processes (POSIX advisory lock)."""
    with open(cache_dir / ".casebridge.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _npm_pack(spec: PackageSpec, destination: Path, npm: str, timeout: float) -> Path:
    """Run ``npm pack <name>@<version>`` into an empty folder and return the one tarball it wrote."""
    arguments = ["pack", f"{spec.name}@{spec.version}", "--pack-destination", str(destination), "--silent"]
    _run_npm(arguments, spec.folder_name, npm, timeout)
    tarballs = sorted(destination.glob("*.tgz"))
    if len(tarballs) != 1:
        raise PackageError(f"{spec.folder_name}: `npm pack` wrote {len(tarballs)} tarballs, expected one")
    return tarballs[0]


def _verify(spec: PackageSpec, tarball: Path) -> None:
    """Refuse a tarball whose sha512 differs from the pinned integrity."""
    digest = hashlib.sha512()
    with open(tarball, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = "sha512-" + base64.b64encode(digest.digest()).decode("ascii")
    if digest.digest() != _integrity_digest(spec.integrity, spec.name):
        raise PackageError(
            f"{spec.folder_name}: the downloaded tarball does not match the pinned integrity: "
            f"expected {spec.integrity}, got {actual}"
        )


def _extract(tarball: Path, destination: Path, spec: PackageSpec) -> None:
    """Extract regular files and folders only; refuse absolute paths, '..', links and devices."""
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive:
                parts = _safe_member_parts(member.name, spec)
                if not parts:
                    continue  # the archive's root ("./")
                path = destination.joinpath(*parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    source = archive.extractfile(member)
                    if source is None:
                        raise PackageError(f"{spec.folder_name}: cannot read {member.name!r} from the tarball")
                    # Our own mode bits (no setuid, no executables) and no following of links.
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                    with source, open(os.open(path, flags, 0o644), "wb") as out:
                        shutil.copyfileobj(source, out, 1 << 20)
                else:
                    raise PackageError(
                        f"{spec.folder_name}: the tarball holds {member.name!r}, which is not a regular file or "
                        "a folder (links and devices are refused)"
                    )
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise PackageError(f"{spec.folder_name}: the tarball is not a valid .tgz: {exc}") from exc
    except OSError as exc:
        raise PackageError(f"{spec.folder_name}: cannot extract the tarball: {exc}") from exc


def _safe_member_parts(name: str, spec: PackageSpec) -> tuple[str, ...]:
    """A tarball member's path as relative parts; refuses anything that could land outside the folder."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise PackageError(f"{spec.folder_name}: the tarball holds an unsafe path {name!r} (absolute or odd)")
    parts = tuple(p for p in PurePosixPath(name).parts if p != ".")
    if ".." in parts:
        raise PackageError(f"{spec.folder_name}: the tarball holds an unsafe path {name!r} ('..')")
    return parts


def _check_manifest(staged: Path, spec: PackageSpec) -> None:
    """The tarball must be the FHIR package it claims to be: ``package/package.json`` with its name."""
    manifest = staged / "package" / "package.json"
    try:
        data = orjson.loads(manifest.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise PackageError(f"{spec.folder_name}: the tarball has no readable package/package.json") from exc
    if not isinstance(data, dict) or data.get("name") != spec.name or data.get("version") != spec.version:
        found = f"{data.get('name')}#{data.get('version')}" if isinstance(data, dict) else "?"
        raise PackageError(f"{spec.folder_name}: the tarball's package/package.json names {found}")


def _swap_into_place(staged: Path, target: Path, previous: Path, spec: PackageSpec) -> None:
    """Rename the staged folder to the target; an existing folder is moved aside first (and restored on failure)."""
    moved = False
    try:
        if target.exists() or target.is_symlink():
            os.rename(target, previous)
            moved = True
        os.rename(staged, target)
    except OSError as exc:
        if moved and not target.exists():
            with contextlib.suppress(OSError):
                os.rename(previous, target)
        raise PackageError(f"{spec.folder_name}: cannot move the package into {target}: {exc}") from exc


def _write_atomic(path: Path, text: str) -> None:
    """Write a file by rename, so that readers see the old content or the new, never a part."""
    handle, temporary = tempfile.mkstemp(prefix=f"{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide the file from other users of a shared cache
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --- the definition index ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DefinitionInfo:
    """What the index knows of one definition, without loading it.

    ``package`` is the package folder name (``<name>#<version>``), or None for a loose definition; ``source``
    names where it came from (a file, a Bundle entry, or the source given to ``add_resource``); ``file`` is
    the path of the file to read it from when needed (None when the resource is held in memory). A string,
    not a Path: thousands of records are made per run and Path objects would cost most of the warm start.
    """

    resource_type: str
    id: str | None
    url: str | None
    version: str | None
    name: str | None
    type: str | None
    kind: str | None
    derivation: str | None
    base_definition: str | None
    package: str | None
    source: str
    file: str | None

    @property
    def is_core_definition(self) -> bool:
        """A StructureDefinition that defines a type (not a constraint on one)."""
        return self.resource_type == "StructureDefinition" and (
            self.derivation == "specialization" or self.base_definition is None
        )


# What the index cache records per file, one list per file (rows of lists read faster than objects).
_CACHE_COLUMNS = (
    "path",
    "resourceType",
    "id",
    "url",
    "version",
    "name",
    "type",
    "kind",
    "derivation",
    "baseDefinition",
)


def _text(resource: dict[str, Any], key: str) -> str | None:
    value = resource.get(key)
    return value if isinstance(value, str) else None


def _info(resource: dict[str, Any], *, package: str | None, source: str, file: str | None) -> DefinitionInfo:
    return DefinitionInfo(
        resource_type=str(resource["resourceType"]),
        id=_text(resource, "id"),
        url=_text(resource, "url"),
        version=_text(resource, "version"),
        name=_text(resource, "name"),
        type=_text(resource, "type"),
        kind=_text(resource, "kind"),
        derivation=_text(resource, "derivation"),
        base_definition=_text(resource, "baseDefinition"),
        package=package,
        source=source,
        file=file,
    )


def _is_definition(value: Any) -> TypeGuard[dict[str, Any]]:
    if not isinstance(value, dict):
        return False
    kind = value.get("resourceType")
    return isinstance(kind, str) and kind in INDEXED_TYPES  # a list would not hash


class DefinitionIndex:
    """The canonical resources of some package folders and loose files, by url, ``url|version`` and type.

    See the module docstring for the priority rules. The dicts ``get`` returns are shared: do not change them.
    """

    def __init__(self) -> None:
        self._by_url: dict[str, DefinitionInfo] = {}
        self._by_url_version: dict[str, list[DefinitionInfo]] = {}
        self._core: dict[str, DefinitionInfo] = {}
        self._records: list[DefinitionInfo] = []
        self._loaded: dict[DefinitionInfo, dict[str, Any]] = {}  # read resources, each file once
        self._packages: dict[Path, str] = {}  # resolved package folder -> its name, to index each once

    @classmethod
    def load(cls, package_dirs: Sequence[Path], extra: Sequence[Path] = ()) -> DefinitionIndex:
        """An index of package folders (``<name>#<version>``, in priority order) and loose files or folders."""
        index = cls()
        for folder in package_dirs:
            index.add_package(folder)
        for path in extra:
            index.add_path(path)
        return index

    def copy(self) -> DefinitionIndex:
        """An index holding the same definitions, to which others can be added without changing this one
        (the resources read so far are shared: they are only read)."""
        other = DefinitionIndex()
        other._by_url = dict(self._by_url)
        other._by_url_version = {key: list(same) for key, same in self._by_url_version.items()}
        other._core = dict(self._core)
        other._records = list(self._records)
        other._loaded = dict(self._loaded)
        other._packages = dict(self._packages)
        return other

    # -- adding

    def add_package(self, folder: Path) -> int:
        """Index a package folder (``<name>#<version>`` holding ``package/``), below any added before it.

        Returns the number of definitions the package holds. Uses, and refreshes, its index cache.
        """
        if not (folder / "package" / "package.json").is_file():
            raise PackageError(f"{folder} is not a FHIR package folder (no package/package.json)")
        key = folder.resolve()
        if key in self._packages:
            return sum(1 for r in self._records if r.package == self._packages[key])
        self._packages[key] = folder.name
        records = _read_index_cache(folder)
        if records is None:
            records = _scan_package(folder)
            _write_index_cache(folder, records)
        for record in records:
            self._add(record)
        return len(records)

    def add_path(self, path: Path) -> int:
        """Add loose definitions: a JSON file (a Bundle contributes its entries) or a folder's ``*.json``.

        Loose definitions come before every package. Returns how many were added. FHIR XML files are read with
        the type definitions already indexed.
        """
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in (".json", ".xml")
                and p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files = [path]
        else:
            raise PackageError(f"{path}: no such definition file or folder")
        return sum(self._add_loose_file(file) for file in files)

    def add_resource(self, resource: dict[str, Any], source: str) -> DefinitionInfo:
        """Add one definition held in memory, as a loose definition (before every package)."""
        if not _is_definition(resource):
            kinds = ", ".join(sorted(INDEXED_TYPES))
            raise PackageError(f"{source}: not a definition ({kinds}): resourceType {resource.get('resourceType')!r}")
        record = _info(resource, package=None, source=source, file=None)
        self._loaded[record] = resource
        self._add(record)
        # A definition's contained value sets and code systems with a canonical of their own (a profile's
        # binding to "#id"): found by that canonical, as the HL7 validator finds them.
        for inner in resource.get("contained") or ():
            if _is_definition(inner) and isinstance(inner.get("url"), str):
                inner_record = _info(inner, package=None, source=f"{source} (contained {inner.get('id')})", file=None)
                self._loaded[inner_record] = inner
                self._add(inner_record)
        return record

    def _add_loose_file(self, file: Path) -> int:
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise PackageError(f"{file}: cannot read the definition file: {exc.strerror or exc}") from exc
        if file.suffix.lower() == ".xml":
            # FHIR XML is read with the type definitions already indexed (the packages come first).
            from casebridge.definitions.xml import FhirXmlError, XmlReader

            try:
                data: Any = XmlReader(self).read(raw, str(file))
            except FhirXmlError as exc:
                raise PackageError(str(exc)) from exc
        else:
            try:
                data = _load_json(raw)
            except orjson.JSONDecodeError as exc:
                raise PackageError(f"{file}: not valid JSON: {exc}") from exc
        if isinstance(data, dict) and data.get("resourceType") == "Bundle":
            added = 0
            entries = data.get("entry")
            for i, entry in enumerate(entries if isinstance(entries, list) else []):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if _is_definition(resource):
                    self.add_resource(resource, f"{file} (entry {i})")
                    added += 1
            return added
        if _is_definition(data):
            self.add_resource(data, str(file))
            return 1
        return 0  # JSON, but not a definition (an example, a package.json): nothing to index

    def _add(self, record: DefinitionInfo) -> None:
        self._records.append(record)
        loose = record.package is None
        if record.url:
            current = self._by_url.get(record.url)
            # Packages: first wins. Loose: beats any package definition, but not an earlier loose one.
            if current is None or (loose and current.package is not None):
                self._by_url[record.url] = record
            if record.version:
                same = self._by_url_version.setdefault(f"{record.url}|{record.version}", [])
                if loose:
                    same.insert(sum(1 for r in same if r.package is None), record)
                else:
                    same.append(record)
        if record.is_core_definition and record.type:
            current = self._core.get(record.type)
            # A loose definition replaces a package's only when it is that very type's core definition:
            # a test's specialisation or logical model of the same type name must not hide the real one.
            core_url = f"http://hl7.org/fhir/StructureDefinition/{record.type}"
            if current is None or (loose and current.package is not None and record.url == core_url):
                self._core[record.type] = record

    # -- looking up

    def get_info(self, canonical: str) -> DefinitionInfo | None:
        """The record for ``url`` or ``url|version`` (None when unknown), without reading the resource."""
        url, _, version = canonical.partition("|")
        if not version:
            return self._by_url.get(url)
        same = self._by_url_version.get(f"{url}|{version}")
        if not same and url in self._by_url:
            same = self._by_url_version.get(_latest_patch(self._by_url_version, url, version), [])
        return same[0] if same else None

    def get(self, canonical: str) -> dict[str, Any] | None:
        """The definition for ``url`` or ``url|version``, read from disk on first use; None when unknown."""
        record = self.get_info(canonical)
        return None if record is None else self.resource(record)

    def core_definition(self, type_name: str) -> dict[str, Any] | None:
        """The StructureDefinition that defines a type (``Observation``, ``HumanName``...), or None."""
        record = self._core.get(type_name)
        return None if record is None else self.resource(record)

    def resource(self, record: DefinitionInfo) -> dict[str, Any]:
        """The resource of a record, read from its file once and then kept."""
        loaded = self._loaded.get(record)
        if loaded is not None:
            return loaded
        if record.file is None:  # in-memory records are in _loaded from the start
            raise PackageError(f"{record.source}: the definition is not held by this index")
        try:
            data = _load_json(Path(record.file).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            _drop_index_cache(record.file)
            raise PackageError(
                f"{record.file}: cannot read the indexed definition {record.url or record.id} ({exc}); the "
                f"package folder changed or is damaged: delete it and run `casebridge packages fetch`"
            ) from exc
        if not _is_definition(data):
            raise PackageError(f"{record.file}: no longer holds the indexed {record.resource_type}")
        self._loaded[record] = data
        return data

    # -- listing

    def records(self) -> Iterator[DefinitionInfo]:
        """Every indexed definition, including those another one shadows, in the order added."""
        return iter(self._records)

    def structure_definitions(self) -> Iterator[DefinitionInfo]:
        """The StructureDefinitions ``get(url)`` resolves to (one per url), in the order added."""
        return self._winners("StructureDefinition")

    def value_sets(self) -> Iterator[DefinitionInfo]:
        """The ValueSets ``get(url)`` resolves to (one per url), in the order added."""
        return self._winners("ValueSet")

    def _winners(self, resource_type: str) -> Iterator[DefinitionInfo]:
        for record in self._records:
            if record.resource_type == resource_type and record.url and self._by_url.get(record.url) is record:
                yield record

    def __len__(self) -> int:
        return len(self._records)


def _latest_patch(by_url_version: dict[str, list[DefinitionInfo]], url: str, version: str) -> str:
    """A partial semver version (``|0.2``) names the latest version it starts (``0.2.1`` over ``0.2.0``), as
    canonical references allow; the key of that version, or "" when there is none."""
    prefix = f"{url}|{version}."
    keys = [key for key in by_url_version if key.startswith(prefix)]

    def order(key: str) -> tuple[tuple[int, int | str], ...]:
        return tuple((0, int(p)) if p.isdigit() else (1, p) for p in key[len(prefix) :].split("."))

    return max(keys, key=order) if keys else ""


# --- scanning a package, and its index cache ---------------------------------------------------------------


def _scan_package(folder: Path) -> list[DefinitionInfo]:
    """Read the top folder ``package/*`` and keep the definitions (files are JSON by content, not suffix)."""
    records: list[DefinitionInfo] = []
    top = folder / "package"
    with os.scandir(top) as entries:
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    for name in names:
        if name == "package.json":
            continue
        file = top / name
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise PackageError(f"{file}: cannot read: {exc.strerror or exc}") from exc
        if not raw.lstrip(_BOM + b" \t\r\n").startswith(b"{"):
            continue  # not JSON (a schematron, a text file...)
        try:
            data = _load_json(raw)
        except orjson.JSONDecodeError as exc:
            raise PackageError(
                f"{file}: not valid JSON ({exc}); the package is damaged: delete {folder} and fetch it again"
            ) from exc
        if _is_definition(data):
            records.append(_info(data, package=folder.name, source=str(file), file=str(file)))
    return records


def _package_stamp(folder: Path) -> str:
    """What the index cache must match: our integrity marker, else (another tool's folder) its mtimes."""
    try:
        marker = (folder / MARKER_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        marker = ""
    if marker:
        return f"integrity:{marker}"
    top = (folder / "package").stat()
    manifest = (folder / "package" / "package.json").stat()
    return f"unverified:{top.st_mtime_ns}:{manifest.st_mtime_ns}:{manifest.st_size}"


def _read_index_cache(folder: Path) -> list[DefinitionInfo] | None:
    """The records of a valid, current index cache; None when it must be rebuilt."""
    try:
        data = orjson.loads((folder / INDEX_FILE).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    if (
        not isinstance(data, dict)
        or data.get("format") != INDEX_FORMAT
        or data.get("columns") != list(_CACHE_COLUMNS)
        or data.get("stamp") != _package_stamp(folder)
        or not isinstance(data.get("files"), list)
    ):
        return None
    records = []
    package = folder.name
    for row in data["files"]:
        # A row is [path, resourceType, id, url, version, name, type, kind, derivation, baseDefinition].
        if not isinstance(row, list) or len(row) != len(_CACHE_COLUMNS):
            return None
        relative, resource_type, *rest = row
        if not (isinstance(relative, str) and isinstance(resource_type, str)):
            return None
        if relative.startswith("/") or ".." in relative.split("/"):
            return None
        if not all(value is None or isinstance(value, str) for value in rest):
            return None
        id_, url, version, name, type_, kind, derivation, base = rest
        file = f"{folder}/{relative}"
        records.append(
            DefinitionInfo(resource_type, id_, url, version, name, type_, kind, derivation, base, package, file, file)
        )
    return records


def _write_index_cache(folder: Path, records: Iterable[DefinitionInfo]) -> None:
    """Write the index cache atomically; a folder we cannot write to just keeps the index in memory."""
    rows = [
        [
            Path(r.file).relative_to(folder).as_posix(),
            r.resource_type,
            r.id,
            r.url,
            r.version,
            r.name,
            r.type,
            r.kind,
            r.derivation,
            r.base_definition,
        ]
        for r in records
        if r.file is not None  # always so for package records
    ]
    document = {
        "format": INDEX_FORMAT,
        "package": folder.name,
        "stamp": _package_stamp(folder),
        "columns": _CACHE_COLUMNS,
        "files": rows,
    }
    try:
        _write_atomic(folder / INDEX_FILE, orjson.dumps(document).decode("utf-8"))
    except OSError as exc:
        log.debug("cannot write the index cache of %s (%s); keeping it in memory", folder, exc)


def _drop_index_cache(file: str) -> None:
    """After a file of a package went missing or bad, make the next run rescan the package."""
    with contextlib.suppress(OSError):
        (Path(file).parent.parent / INDEX_FILE).unlink()  # package records are <folder>/package/<file>


# --- adding packages to a lock file ------------------------------------------------------------------------

# Packages the registry does not serve, and the pinned package that carries the same definitions instead.
CORE_SUBSTITUTES = {"hl7.fhir.r4.core": "hl7.fhir.r4.examples"}
_RANGE_CHARS = frozenset("xX*^~<>| ")
_RELEASE_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class AddPlan:
    """What ``plan_add`` resolved: the packages to pin (installed already, dependencies before the packages
    that need them) and what to tell the user (substitutions, packages already pinned, kept versions)."""

    added: tuple[PackageSpec, ...]
    notes: tuple[str, ...]


def version_satisfies(pinned: str, required: str) -> bool:
    """Whether a pinned version serves a dependency on ``required``.

    The same version; a wildcard (``4.0.x``, ``4.x``) it matches; or, both plain releases ``X.Y.Z``, the same
    ``X.Y`` with a patch at least the required one (FHIR patch releases are technical corrections). A
    pre-release (``5.3.0-ballot-tc1``) serves only itself.
    """
    if pinned == required:
        return True
    if required.endswith((".x", ".X", ".*")) and "-" not in pinned:
        prefix = required[:-1]  # "4.0."
        return pinned.startswith(prefix)
    have, want = _RELEASE_RE.fullmatch(pinned), _RELEASE_RE.fullmatch(required)
    if have is None or want is None:
        return False
    return have.group(1, 2) == want.group(1, 2) and int(have.group(3)) >= int(want.group(3))


def plan_add(
    name: str,
    version: str,
    pinned: Sequence[PackageSpec],
    cache_dir: Path,
    *,
    keep_pinned: bool = False,
    npm: str = "npm",
    timeout: float = 600,
) -> AddPlan:
    """Resolve ``name@version`` and its dependencies (``package/package.json`` ``dependencies``, recursively)
    against the ``pinned`` packages, and install every new one into the cache, verified.

    A dependency pinned at a version that serves it (``version_satisfies``) is skipped. ``hl7.fhir.r4.core``,
    which the registry does not serve, is served by the pinned ``hl7.fhir.r4.examples`` (which carries the
    core definitions), or fetched as that package when it is not pinned. The integrity pinned is the
    registry's ``dist.integrity``, which the downloaded tarball is checked against; a registry that gives none
    has the tarball's own sha512 pinned (the notes say so).

    Raises ``PackageError`` naming the package for a package that cannot be resolved, fetched, verified or
    read, for a package made for another FHIR version, and for conflicts (all of them in one message): the
    requested package pinned at another version, a dependency pinned at a version that does not serve it
    (unless ``keep_pinned``: the pinned one is kept and a note says so), two new packages needing different
    versions of a third. Nothing is pinned here: the caller writes the lock (``write_lock``) from the plan.
    """
    _check_name(name, version)
    by_name = {spec.name: spec for spec in pinned}
    chosen: dict[str, PackageSpec] = {}
    order: list[PackageSpec] = []
    notes: list[str] = []
    conflicts: list[str] = []

    def visit(dep_name: str, wanted: str, needed_by: str | None) -> None:
        who = f"needed by {needed_by}" if needed_by else "requested"
        substitute = CORE_SUBSTITUTES.get(dep_name)
        if substitute is not None and dep_name not in by_name and dep_name not in chosen:
            held = by_name.get(substitute) or chosen.get(substitute)
            where = "pinned" if substitute in by_name else "added"
            if held is not None and version_satisfies(held.version, wanted):
                notes.append(f"{dep_name}#{wanted} ({who}): served by the {where} {held.folder_name}")
                return
            if held is None:
                notes.append(f"{dep_name}#{wanted} ({who}): not served by the registry; using {substitute}#{wanted}")
            dep_name = substitute
        current = by_name.get(dep_name)
        if current is not None:
            if version_satisfies(current.version, wanted):
                notes.append(f"{dep_name}#{wanted} ({who}): already pinned as {current.folder_name}")
            elif needed_by is None:
                conflicts.append(
                    f"{dep_name} is already pinned at {current.version}, not {wanted}: "
                    f"remove it first (`casebridge packages remove {dep_name}`)"
                )
            elif keep_pinned:
                notes.append(
                    f"warning: {needed_by} needs {dep_name}#{wanted}; keeping the pinned {current.folder_name} "
                    "(--keep-pinned)"
                )
            else:
                conflicts.append(
                    f"{needed_by} needs {dep_name}#{wanted}, but the lock pins {current.folder_name} "
                    "(pass --keep-pinned to keep the pinned version)"
                )
            return
        earlier = chosen.get(dep_name)
        if earlier is not None:
            if not version_satisfies(earlier.version, wanted):
                conflicts.append(
                    f"{needed_by or 'the request'} needs {dep_name}#{wanted}, but {earlier.folder_name} is added"
                )
            return
        exact = resolve_version(dep_name, wanted, npm=npm, timeout=timeout)
        integrity = registry_integrity(dep_name, exact, npm=npm, timeout=timeout)
        if integrity is None:
            integrity = tarball_integrity(dep_name, exact, npm=npm, timeout=timeout)
            notes.append(f"{dep_name}#{exact}: the registry gives no dist.integrity; pinned the tarball's sha512")
        spec = PackageSpec(dep_name, exact, integrity)
        chosen[dep_name] = spec  # before its dependencies: a cycle ends here
        folder = install(spec, cache_dir, npm=npm, timeout=timeout)
        for child, child_version in _manifest_dependencies(folder, spec):
            visit(child, child_version, spec.folder_name)
        order.append(spec)  # after its dependencies

    visit(name, version, None)
    if conflicts:
        raise PackageError(f"cannot add {name}@{version}:\n  " + "\n  ".join(conflicts))
    return AddPlan(tuple(order), tuple(notes))


def _check_name(name: str, version: str) -> None:
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise PackageError(f"invalid package name {name!r}")
    if not version or version.startswith("-") or any(c in version for c in "#@/\\\n"):
        raise PackageError(f"{name}: invalid version {version!r}")


def _manifest_dependencies(folder: Path, spec: PackageSpec) -> list[tuple[str, str]]:
    """The ``dependencies`` of an installed package, after checking it is made for FHIR R4."""
    manifest = folder / "package" / "package.json"
    try:
        data = _load_json(manifest.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise PackageError(f"{spec.folder_name}: cannot read {manifest}: {exc}") from exc
    fhir_versions = data.get("fhirVersions") if isinstance(data, dict) else None
    if isinstance(fhir_versions, list) and fhir_versions:
        if not any(isinstance(v, str) and v.startswith("4.0") for v in fhir_versions):
            raise PackageError(
                f"{spec.folder_name}: made for FHIR {', '.join(map(str, fhir_versions))}; this validator is FHIR R4 "
                "(4.0.1)"
            )
    dependencies = data.get("dependencies") if isinstance(data, dict) else None
    if dependencies is None:
        return []
    if not isinstance(dependencies, dict) or not all(isinstance(v, str) for v in dependencies.values()):
        raise PackageError(f"{spec.folder_name}: package/package.json 'dependencies' is not an object of versions")
    return sorted(dependencies.items())


def _run_npm(arguments: list[str], what: str, npm: str, timeout: float) -> str:
    """npm's standard output, from an empty folder (no project package.json or .npmrc involved)."""
    with tempfile.TemporaryDirectory(prefix="casebridge-npm-") as empty:
        try:
            done = subprocess.run(  # noqa: S603 - a fixed argument list, no shell
                [npm, *arguments],
                cwd=empty,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PackageError(f"{what}: npm not found ({npm!r}); install Node.js and npm") from exc
        except subprocess.TimeoutExpired as exc:
            raise PackageError(f"{what}: `npm {arguments[0]}` did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise PackageError(f"{what}: cannot run npm ({npm!r}): {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip())[-_STDERR_TAIL:]
        raise PackageError(f"{what}: `npm {arguments[0]}` failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def _npm_view(name: str, selector: str, field: str, npm: str, timeout: float) -> Any:
    """``npm view NAME@SELECTOR FIELD --json``, parsed; None when the field is absent."""
    what = f"{name}@{selector}"
    out = _run_npm(["view", what, field, "--json"], what, npm, timeout).strip()
    if not out:
        return None
    try:
        return orjson.loads(out)
    except orjson.JSONDecodeError as exc:
        raise PackageError(f"{what}: `npm view` did not answer JSON: {out[:200]!r}") from exc


def resolve_version(name: str, wanted: str, *, npm: str = "npm", timeout: float = 600) -> str:
    """An exact version for ``wanted``: itself, or for a range or tag (``4.0.x``, ``latest``) the highest
    version the registry has for it."""
    if _VERSION_RE.fullmatch(wanted) and not any(c in _RANGE_CHARS for c in wanted) and wanted != "latest":
        return wanted
    found = _npm_view(name, wanted.replace(" ", ""), "version", npm, timeout)
    candidates = found if isinstance(found, list) else [found]
    versions = [v for v in candidates if isinstance(v, str)]
    if not versions:
        raise PackageError(f"{name}@{wanted}: the registry has no version matching {wanted!r}")
    return versions[-1]  # npm lists matches in ascending order


def registry_integrity(name: str, version: str, *, npm: str = "npm", timeout: float = 600) -> str | None:
    """The registry's ``dist.integrity`` of ``name@version`` when it is a sha512 one, else None."""
    found = _npm_view(name, version, "dist.integrity", npm, timeout)
    if found is None or found == []:
        return None
    if not isinstance(found, str):
        raise PackageError(f"{name}@{version}: `npm view` gave an unexpected dist.integrity {found!r}")
    sha512 = [part for part in found.split() if part.startswith("sha512-")]  # SRI may list several
    return sha512[0] if sha512 else None


def tarball_integrity(name: str, version: str, *, npm: str = "npm", timeout: float = 600) -> str:
    """The sha512 integrity of the tarball ``npm pack`` downloads (for a registry that gives none)."""
    with tempfile.TemporaryDirectory(prefix="casebridge-pack-") as folder:
        placeholder = PackageSpec(name, version, "sha512-" + base64.b64encode(bytes(64)).decode("ascii"))
        tarball = _npm_pack(placeholder, Path(folder), npm, timeout)
        digest = hashlib.sha512(tarball.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode("ascii")


# --- writing a lock file -------------------------------------------------------------------------------------


def is_packaged_file(path: Path) -> bool:
    """Whether ``path`` lies inside an installed Python distribution (site-packages, dist-packages)."""
    resolved = path.expanduser().resolve()
    if any(part in ("site-packages", "dist-packages") for part in resolved.parts):
        return True
    import site
    import sysconfig

    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    with contextlib.suppress(AttributeError):  # some embedded interpreters have no site.getsitepackages
        roots.update(site.getsitepackages())
    return any(resolved.is_relative_to(Path(root).resolve()) for root in roots)


def check_lock_writable(path: Path, *, explicit: bool) -> None:
    """Refuse to change a lock file that is not the user's to change (see the CLI's ``add`` for the rules).

    Refused: a file inside an installed distribution (an upgrade would silently drop the change, and the
    install may be shared); the project's own ``fhir-packages.json`` unless named explicitly (``explicit``);
    a file that does not exist (a lock starts as a copy of the packaged one, which pins the core).
    """
    if is_packaged_file(path):
        raise PackageError(
            f"{path} is the package list shipped inside an installed casebridge; it is not changed in place. "
            f"Copy it to a file of your own (cp {path} ./fhir-packages.json), set "
            "CASEBRIDGE_FHIR_PACKAGES_LOCK to that file (or pass --lock), and run the command again"
        )
    if not explicit and path.expanduser().resolve() == DEFAULT_LOCK_FILE.resolve():
        raise PackageError(
            f"{path} is casebridge's own pinned package list: pass --lock {path} to change it, or copy it to a "
            "file of your own and set CASEBRIDGE_FHIR_PACKAGES_LOCK to that file"
        )
    if not path.is_file():
        raise PackageError(
            f"{path}: no such lock file; start from a copy of the project's list ({DEFAULT_LOCK_FILE.name}, "
            "which pins the core definitions)"
        )


def write_lock(path: Path, specs: Sequence[PackageSpec], *, expected: bytes | None = None) -> None:
    """Write a lock file atomically, checked loadable before it replaces the old one.

    ``expected``: the content the file had when it was read; when it changed since, nothing is written (an
    error asks to run again), so that two concurrent changes do not silently lose one.
    """
    document = [{"name": s.name, "version": s.version, "integrity": s.integrity} for s in specs]
    text = orjson.dumps(document, option=orjson.OPT_INDENT_2).decode("utf-8") + "\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(handle, path.stat().st_mode & 0o777)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        load_lock(Path(temporary))  # never replace a lock with one that cannot be read back
        if expected is not None and path.read_bytes() != expected:
            raise PackageError(f"{path} changed while this command ran; nothing written: run it again")
        os.replace(temporary, path)
    except OSError as exc:
        raise PackageError(f"{path}: cannot write the lock file: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def dependants(name: str, specs: Sequence[PackageSpec], cache_dir: Path) -> list[str]:
    """The installed packages among ``specs`` whose manifest depends on ``name`` (directly, or on the core
    package it substitutes for)."""
    served = {name} | {core for core, substitute in CORE_SUBSTITUTES.items() if substitute == name}
    found = []
    for spec in specs:
        if spec.name == name or not is_installed(spec, cache_dir):
            continue
        with contextlib.suppress(PackageError):
            if any(dep in served for dep, _ in _manifest_dependencies(cache_dir / spec.folder_name, spec)):
                found.append(spec.folder_name)
    return found
