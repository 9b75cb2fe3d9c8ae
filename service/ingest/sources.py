"""Where the cases of a job come from: a folder of case files, an NDJSON file of cases (one per line), or a
CSV in the flat registry layout of ``mappings/registry-csv.yaml`` (one row per case).

Items are read lazily (a job may hold 100,000 cases). Each has a ``key``, the case's own identity, that the job
state is kept under, so that inserting, removing or reordering cases (or renaming a file) does not re-key the
others: ``case:<case_id>``; for an item without a usable case_id (a file or row that cannot be read as a case)
``sha256:<content digest>``, or ``file:<name>`` for a case file too large or unreadable to hash. The location
(``file`` or ``file:line``) is carried beside it for messages. Two items of one source with the same identity
would write the same resources (resource ids derive from the case id): the first in source order keeps the key,
each later one gets ``<key>#2``, ``#3``... and ``duplicate_of`` (the first one's location), and the job reports
it as invalid without sending it. A content hash per item lets a changed input be sent again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from service.domain.reader import parse_document
from service.errors import InputError
from service.ingest.registry_csv import RegistryLayout, RowError

CASE_SUFFIXES = (".yaml", ".yml", ".json")
# The case model's id pattern; anything else (the case is refused anyway) is keyed by its content.
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# A top-level ``case_id: value`` line of a block-style YAML case: found without parsing the whole document.
_YAML_CASE_ID = re.compile(rb"^case_id:[ \t]*([\"']?)([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\1[ \t]*(?:#.*)?\r?$", re.M)


@dataclass(frozen=True, slots=True)
class SourceItem:
    key: str  # the case's identity (see above): the job state is kept under it
    source: str  # where it is, what messages name: a file, or file:line (the state's "location")
    data: bytes
    suffix: str  # ".yaml" or ".json": how to read it; ".too-large", ".unreadable", ".invalid-row": refused as is
    duplicate_of: str | None = None  # the location of an earlier item of this source with the same identity

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
        raw = self._csv() if self.kind == "csv" else self._folder() if self.kind == "folder" else self._ndjson()
        first: dict[str, str] = {}  # identity -> location of its first item
        repeats: dict[str, int] = {}
        for key, location, data, suffix in raw:
            earlier = first.get(key)
            if earlier is None:
                first[key] = location
                yield SourceItem(key, location, data, suffix)
                continue
            repeats[key] = repeats.get(key, 1) + 1
            yield SourceItem(f"{key}#{repeats[key]}", location, data, suffix, duplicate_of=earlier)

    def _files(self) -> Iterator[Path]:
        for child in sorted(self.path.iterdir()):
            if child.is_file() and child.suffix.lower() in CASE_SUFFIXES and not child.name.startswith("."):
                if child.name.endswith(".manifest.json") or child.name == "manifest.json":
                    continue
                yield child

    def _folder(self) -> Iterator[tuple[str, str, bytes, str]]:
        for file in self._files():
            try:
                size = file.stat().st_size
                data = file.read_bytes() if size <= self.max_bytes else b""
            except OSError as exc:
                yield f"file:{file.name}", str(file), f"unreadable: {exc.strerror}".encode(), ".unreadable"
                continue
            if size > self.max_bytes:
                yield f"file:{file.name}", str(file), f"{size}".encode(), ".too-large"
                continue
            suffix = ".json" if file.suffix.lower() == ".json" else ".yaml"
            yield _identity(data, suffix, str(file)), str(file), data, suffix

    def _csv(self) -> Iterator[tuple[str, str, bytes, str]]:
        assert self.layout is not None
        for line, doc in self.layout.rows(self.path):
            source = f"{self.path}:{line}"
            if isinstance(doc, RowError):
                # The message alone (the location is added when reported): the digest must not change when the
                # row merely moves.
                data = str(doc).encode()
                values = orjson.dumps(doc.values, option=orjson.OPT_SORT_KEYS)
                key = _case_key(doc.values.get("case_id")) or _digest_key(values)
                yield key, source, data, ".invalid-row"
            else:
                data = orjson.dumps(doc)
                case_id = doc.get("case_id")
                key = _case_key(case_id if isinstance(case_id, str) else None) or _digest_key(data)
                yield key, source, data, ".json"

    def _ndjson(self) -> Iterator[tuple[str, str, bytes, str]]:
        with self.path.open("rb") as handle:
            number = 0
            # At most max_bytes + 1 bytes of a line are read at once: an oversized line (one without a newline
            # for gigabytes, say) is skipped in chunks, hashed for its key, never held whole.
            while line := handle.readline(self.max_bytes + 1):
                number += 1
                source = f"{self.path}:{number}"
                if len(line) > self.max_bytes:
                    size, digest = _skip_line(handle, line)
                    yield "sha256:" + digest[:32], source, f"{size}".encode(), ".too-large"
                    continue
                if not line.strip():
                    continue
                data = line.strip()
                yield _identity(data, ".json", source), source, data, ".json"


def _skip_line(handle: BinaryIO, start: bytes, chunk: int = 1 << 16) -> tuple[int, str]:
    """Reads the rest of a line begun with ``start`` in bounded chunks: its size in bytes and its digest (what
    an oversized line is keyed by), without holding it."""
    digest = hashlib.sha256()
    size, part = 0, start
    while part:
        size += len(part)
        digest.update(part.removesuffix(b"\n"))
        if part.endswith(b"\n"):
            break
        part = handle.readline(chunk)
    return size, digest.hexdigest()


def _case_key(case_id: str | None) -> str | None:
    return f"case:{case_id}" if case_id is not None and _CASE_ID.fullmatch(case_id) else None


def _digest_key(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:32]


def _identity(data: bytes, suffix: str, source: str) -> str:
    """``case:<case_id>`` when the item has a usable case_id, else its content digest."""
    case_id: object = None
    if suffix == ".yaml":
        match = _YAML_CASE_ID.search(data)
        if match:
            return f"case:{match.group(2).decode()}"
    try:
        doc = orjson.loads(data) if suffix == ".json" else parse_document(data, source=source)
        case_id = doc.get("case_id") if isinstance(doc, dict) else None
    except (orjson.JSONDecodeError, InputError, ValueError, RecursionError):
        case_id = None  # not readable as a case: refused later, with the reader's own message
    return _case_key(case_id if isinstance(case_id, str) else None) or _digest_key(data)
