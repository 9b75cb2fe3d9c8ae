"""A fingerprint of the rules a case is judged by: the mapping folder (templates, code tables, the registry
layout), our profiles, the pinned FHIR packages and the terminology file.

The job state keeps it beside every invalid verdict, so that a case refused under other rules is processed
again once the rules change (an invalid case's own content did not change, but its verdict may).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def ruleset_fingerprint(paths: Iterable[Path | None]) -> str:
    """sha256 over every file under ``paths`` (files or folders), by name relative to each path, and content.

    A path that does not exist counts as absent (and differs from an empty file). Hidden files and caches are
    left out: an editor's swap file must not make every invalid case be processed again."""
    digest = hashlib.sha256()
    for index, root in enumerate(paths):
        digest.update(f"\0root {index}\0".encode())
        if root is None or not root.exists():
            digest.update(b"absent")
            continue
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and _kept(p, root))
        for file in files:
            name = file.name if file == root else file.relative_to(root).as_posix()
            digest.update(f"\0file {name}\0".encode())
            try:
                digest.update(file.read_bytes())
            except OSError as exc:  # unreadable now: its absence is part of the rules in use
                digest.update(f"unreadable: {exc.strerror}".encode())
    return digest.hexdigest()


def _kept(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") or part == "__pycache__" for part in path.relative_to(root).parts)
