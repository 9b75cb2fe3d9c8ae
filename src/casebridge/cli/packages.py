"""``casebridge packages``: install the pinned FHIR packages into the package cache, list them, and add or
remove a package (an implementation guide) and its dependencies in a lock file.

Registered by the main command line as ``app.add_typer(packages_app, name="packages")``.
Exit codes: 0 success; 1 (``list``) a pinned package is missing; 2 a package cannot be pinned, fetched,
verified or indexed, or a lock file cannot be changed (the message, on stderr, names the package or file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from casebridge.config import Settings
from casebridge.definitions.packages import (
    DEFAULT_LOCK_FILE,
    DefinitionIndex,
    PackageError,
    check_lock_writable,
    default_cache_dir,
    dependants,
    ensure_all,
    install,
    is_installed,
    load_lock,
    plan_add,
    write_lock,
)

packages_app = typer.Typer(
    name="packages",
    help=(
        "FHIR packages: fetch the pinned ones (fhir-packages.json) into the package cache, list them, add or "
        "remove one in a lock file of your own."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

LockOption = Annotated[Path, typer.Option("--lock", help="The pinned package list.", dir_okay=False)]
CacheOption = Annotated[
    Path | None,
    typer.Option(
        "--cache",
        help="The FHIR package cache. Default: $CASEBRIDGE_FHIR_PACKAGE_CACHE, else ~/.fhir/packages.",
        file_okay=False,
    ),
]


def _fail(message: str) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(2)


@packages_app.command()
def fetch(
    lock: LockOption = DEFAULT_LOCK_FILE,
    cache: CacheOption = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not download: only check that every package is installed.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Say only what was installed.")] = False,
) -> None:
    """Install every pinned package (verified against its integrity); installed ones are left as they are."""
    cache_dir = cache or default_cache_dir()
    try:
        specs = load_lock(lock)
        if offline:
            ensure_all(specs, cache_dir, offline=True)
        for spec in specs:
            present = is_installed(spec, cache_dir)
            folder = install(spec, cache_dir)  # returns at once when present
            if not (quiet and present):
                typer.echo(f"{spec.folder_name}: {'present' if present else 'installed'} ({folder})")
    except PackageError as exc:
        _fail(str(exc))


@packages_app.command("list")
def list_packages(lock: LockOption = DEFAULT_LOCK_FILE, cache: CacheOption = None) -> None:
    """Show each pinned package: present or missing, and how many definitions it holds."""
    cache_dir = cache or default_cache_dir()
    missing = 0
    try:
        for spec in load_lock(lock):
            if not is_installed(spec, cache_dir):
                missing += 1
                typer.echo(f"{spec.folder_name}: missing")
                continue
            # Indexing also writes the package's index cache, which the next run then reads.
            count = DefinitionIndex().add_package(cache_dir / spec.folder_name)
            typer.echo(f"{spec.folder_name}: present, {count} definitions ({cache_dir / spec.folder_name})")
    except PackageError as exc:
        _fail(str(exc))
    if missing:
        typer.echo(f"{missing} pinned package(s) missing: run `casebridge packages fetch`", err=True)
        raise typer.Exit(1)


# Help paragraphs are single lines: the help formatter keeps line breaks and wraps to the terminal itself.
WHERE_ADD_WRITES = (
    "Which lock file is changed: --lock when given; else the configured one (CASEBRIDGE_FHIR_PACKAGES_LOCK, "
    "the fhir_packages_lock setting). Never the list shipped inside an installed casebridge (site-packages): "
    "copy it to a file of your own and set CASEBRIDGE_FHIR_PACKAGES_LOCK to it. The project's own "
    "fhir-packages.json (in a checkout) is changed only when named with --lock. The file is replaced atomically, "
    "and only once every package was fetched and verified: on an error it is left as it was (packages already "
    "fetched stay in the cache, unpinned)."
)

AddLockOption = Annotated[
    Path | None,
    typer.Option(
        "--lock",
        help="The lock file to change. Default: the configured one (CASEBRIDGE_FHIR_PACKAGES_LOCK).",
        dir_okay=False,
    ),
]


def _target(lock: Path | None) -> tuple[Path, Path | None]:
    """The lock to change (refused when not the user's to change) and the configured package cache."""
    try:
        settings = Settings()
    except ValidationError as exc:
        _fail(f"the settings are not valid: {exc}")
    path = lock if lock is not None else settings.fhir_packages_lock
    try:
        check_lock_writable(path, explicit=lock is not None)
    except PackageError as exc:
        _fail(str(exc))
    return path, settings.fhir_package_cache


def _split(package: str) -> tuple[str, str]:
    name, at, version = package.rpartition("@")
    if not at or not name or not version:
        _fail(f"{package}: expected NAME@VERSION (for example hl7.fhir.au.base@6.0.0)")
    return name, version


ADD_HELP = "\n\n".join(
    [
        "Pin a FHIR package (an implementation guide) and its dependencies, and install them.",
        "NAME@VERSION is fetched with `npm pack` from the configured npm registry, checked against the "
        "registry's dist.integrity and installed into the package cache; so are its package.json dependencies, "
        "recursively. A dependency already pinned at a version that serves it is skipped; hl7.fhir.r4.core (not "
        "served by the registry) is served by the pinned hl7.fhir.r4.examples, which carries the core "
        "definitions. A dependency pinned at another version is a conflict (exit 2) unless --keep-pinned.",
        "The new packages are appended after those already pinned, dependencies first: the packages pinned "
        "before (the core definitions, expansions, terminology) keep precedence for any canonical URL an IG "
        "also carries, and casebridge's own profiles still come before every package.",
        WHERE_ADD_WRITES,
    ]
)
REMOVE_HELP = "\n\n".join(
    [
        "Unpin a package from a lock file (the package cache is left as it is).",
        "Refused while another pinned, installed package depends on it, unless --force.",
        WHERE_ADD_WRITES,
    ]
)


@packages_app.command(help=ADD_HELP)
def add(
    package: Annotated[str, typer.Argument(metavar="NAME@VERSION", help="The package, e.g. hl7.fhir.au.base@6.0.0.")],
    lock: AddLockOption = None,
    cache: CacheOption = None,
    keep_pinned: Annotated[
        bool,
        typer.Option(
            "--keep-pinned", help="When a dependency is pinned at another version, keep the pinned one (warned)."
        ),
    ] = False,
) -> None:
    name, version = _split(package)
    path, configured_cache = _target(lock)
    cache_dir = cache or configured_cache or default_cache_dir()
    try:
        before = path.read_bytes()
        pinned = load_lock(path)
        plan = plan_add(name, version, pinned, cache_dir, keep_pinned=keep_pinned)
        for note in plan.notes:
            typer.echo(note, err=note.startswith("warning:"))
        if not plan.added:
            typer.echo(f"{path}: nothing to add")
            return
        write_lock(path, [*pinned, *plan.added], expected=before)
    except OSError as exc:
        _fail(f"{path}: cannot read the lock file: {exc.strerror or exc}")
    except PackageError as exc:
        _fail(str(exc))
    for spec in plan.added:
        typer.echo(f"{spec.folder_name}: pinned ({cache_dir / spec.folder_name})")
    typer.echo(f"{path}: {len(plan.added)} package(s) added")


@packages_app.command(help=REMOVE_HELP)
def remove(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The package name, e.g. hl7.fhir.au.base.")],
    lock: AddLockOption = None,
    cache: CacheOption = None,
    force: Annotated[bool, typer.Option("--force", help="Remove it even when others depend on it.")] = False,
) -> None:
    path, configured_cache = _target(lock)
    cache_dir = cache or configured_cache or default_cache_dir()
    try:
        before = path.read_bytes()
        pinned = load_lock(path)
        if name not in {spec.name for spec in pinned}:
            _fail(f"{name}: not pinned in {path}")
        needed_by = dependants(name, pinned, cache_dir)
        if needed_by and not force:
            _fail(f"{name}: needed by {', '.join(needed_by)}; remove those first, or pass --force")
        write_lock(path, [spec for spec in pinned if spec.name != name], expected=before)
    except OSError as exc:
        _fail(f"{path}: cannot read the lock file: {exc.strerror or exc}")
    except PackageError as exc:
        _fail(str(exc))
    typer.echo(f"{path}: {name} removed")
