"""Where the cases of a job come from: a folder of case files, or an NDJSON file of cases (one per line).

Items are read lazily (a job may hold 100,000 cases). Each has a stable ``key`` (the file name, or
``<file>:<line>``) the job state is kept under, and a content hash, so a changed input is sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.errors import InputError

CASE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True, slots=True)
class SourceItem:
    key: str  # stable across runs: the job state is kept under it
    source: str  # what error messages name: a file, or file:line
    data: bytes
    suffix: str  # ".yaml" or ".json": how to read it

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class CaseSource:
    def __init__(self, path: Path, *, max_bytes: int):
        if not path.exists():
            raise InputError("no such file or folder", source=str(path))
        self.path = path
        self.max_bytes = max_bytes
        self.kind = "folder" if path.is_dir() else "ndjson"
        if self.kind == "ndjson" and path.suffix.lower() not in (".ndjson", ".jsonl"):
            raise InputError("expected a folder of case files or an .ndjson file of cases", source=str(path))

    def __iter__(self) -> Iterator[SourceItem]:
        return self._folder() if self.kind == "folder" else self._ndjson()

    def count(self) -> int:
        """How many items, without reading them all into memory (for the progress bar)."""
        if self.kind == "folder":
            return sum(1 for _ in self._files())
        with self.path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())

    def _files(self) -> Iterator[Path]:
        for child in sorted(self.path.iterdir()):
            if child.is_file() and child.suffix.lower() in CASE_SUFFIXES and not child.name.startswith("."):
                if child.name.endswith(".manifest.json") or child.name == "manifest.json":
                    continue
                yield child

    def _folder(self) -> Iterator[SourceItem]:
        for file in self._files():
            try:
                size = file.stat().st_size
                data = file.read_bytes() if size <= self.max_bytes else b""
            except OSError as exc:
                data = f"unreadable: {exc.strerror}".encode()
                yield SourceItem(file.name, str(file), data, ".unreadable")
                continue
            if size > self.max_bytes:
                yield SourceItem(file.name, str(file), f"{size}".encode(), ".too-large")
                continue
            suffix = ".json" if file.suffix.lower() == ".json" else ".yaml"
            yield SourceItem(file.name, str(file), data, suffix)

    def _ndjson(self) -> Iterator[SourceItem]:
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                key = f"{self.path.name}:{number}"
                if len(line) > self.max_bytes:
                    yield SourceItem(key, f"{self.path}:{number}", f"{len(line)}".encode(), ".too-large")
                    continue
                yield SourceItem(key, f"{self.path}:{number}", line.strip(), ".json")
