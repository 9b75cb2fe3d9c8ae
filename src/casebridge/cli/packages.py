"""``casebridge packages``: install the pinned FHIR packages into the package cache, and list them.

Registered by the main command line as ``app.add_typer(packages_app, name="packages")``.
Exit codes: 0 success; 1 (``list``) a pinned package is missing; 2 a package cannot be pinned, fetched,
verified or indexed (the message, on stderr, names the package or file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from casebridge.definitions.packages import (
    DEFAULT_LOCK_FILE,
    DefinitionIndex,
    PackageError,
    default_cache_dir,
    ensure_all,
    install,
    is_installed,
    load_lock,
)

packages_app = typer.Typer(
    name="packages",
    help="FHIR packages: fetch the pinned ones (fhir-packages.json) into the package cache, list them.",
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
