"""Where the cases of a job come from: a folder of case files, an NDJSON file of cases (one per line), or a
CSV in the flat registry layout of ``mappings/registry-csv.yaml`` (one row per case).

Items are read lazily (a job may hold 100,000 cases). Each has a stable ``key`` (the file name, or
``<file>:<line>``: append to a file being loaded, do not insert) the job state is kept under, and a content
hash, so a changed input is sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from service.errors import InputError
from service.ingest.registry_csv import RegistryLayout

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
    def __init__(self, path: Path, *, max_bytes: int, layout: RegistryLayout | None = None):
        if not path.exists():
            raise InputError("no such file or folder", source=str(path))
        self.path = path
        self.max_bytes = max_bytes
        self.layout = layout
        suffix = path.suffix.lower()
        self.kind = "folder" if path.is_dir() else "csv" if suffix == ".csv" else "ndjson"
        if self.kind == "ndjson" and suffix not in (".ndjson", ".jsonl"):
            raise InputError(
                "expected a folder of case files, an .ndjson file of cases or a registry .csv", source=str(path)
            )
        if self.kind == "csv":
            if layout is None:
                raise InputError("a registry CSV needs the layout (mappings/registry-csv.yaml)", source=str(path))
            next(layout.rows(path), None)  # the header is checked now, before anything is sent

    def __iter__(self) -> Iterator[SourceItem]:
        if self.kind == "csv":
            return self._csv()
        return self._folder() if self.kind == "folder" else self._ndjson()

    def count(self) -> int:
        """How many items, without reading them all into memory (for the progress bar)."""
        if self.kind == "folder":
            return sum(1 for _ in self._files())
        if self.kind == "csv":
            return sum(1 for _ in self._csv())
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

    def _csv(self) -> Iterator[SourceItem]:
        assert self.layout is not None
        for line, doc in self.layout.rows(self.path):
            key, source = f"{self.path.name}:{line}", f"{self.path}:{line}"
            if isinstance(doc, InputError):
                yield SourceItem(key, source, doc.report().encode(), ".invalid-row")
            else:
                yield SourceItem(key, source, orjson.dumps(doc), ".json")

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
