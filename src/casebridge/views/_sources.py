"""Where a view's resources come from, locally: an NDJSON file, a folder of NDJSON files, or a JSON file (a
Bundle, or one resource).

Rules:
- NDJSON is streamed: one line, one resource at a time, each line bounded (``max_line_bytes``); a line that is not
  a JSON object with a resourceType is an InputError naming the file and line. Blank lines are skipped.
- A folder is read in name order: its ``*.ndjson`` files (and ``*.jsonl``). A file whose name names a resource type
  (``Patient.ndjson``, ``1.Observation.ndjson``, ``Observation-2.ndjson``, as Bulk Data exports write them) is read
  only by views of that type; any other name is read by every view (its resources of other types are skipped).
  Links, FIFOs and devices are refused, never opened.
- A JSON file is read whole (bounded by ``max_json_bytes``): a Bundle's entry resources, or the resource itself.
  In a Bundle, a reference to another entry's fullUrl (``urn:uuid:...`` in a transaction from ``casebridge
  convert``) is read as that entry's ``Type/id``, as a server stores it once the transaction is in, so that
  getReferenceKey() gives the same keys over the Bundle as over the server. An entry without an id (a POST the
  server would name) keeps its references as they are.
- ``since``: only resources whose meta.lastUpdated is at or after it; a resource without meta.lastUpdated is kept
  (it cannot be told old).
- ``transaction_time``: a Bulk Data manifest's (``manifest.json`` in the folder, with ``transactionTime`` and an
  ``output`` list), else None.
- ``position()`` names where the last resource given came from (``file:line``, ``file: entry[3]``), so a caller
  can say which input a view could not read.
- ``ResourceList``: resources already in memory (a page of a search, a pull's reports), named ``Type/id``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from casebridge.errors import InputError
from casebridge.files import open_regular, read_bounded, shown
from casebridge.views._fhirpath import is_resource_type

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_JSON_BYTES = 256 * 1024 * 1024
NDJSON_SUFFIXES = (".ndjson", ".jsonl")
_WORD = re.compile(r"[A-Za-z]+")


class ResourceSource(Protocol):
    """What a view run reads. ``name``: the path or URL, for messages and the manifest."""

    name: str

    def resources(self, resource_type: str, since: str | None) -> Iterator[dict[str, Any]]: ...

    def position(self) -> str: ...

    def transaction_time(self) -> str | None: ...


def parse_instant(value: str, *, what: str = "since") -> dt.datetime:
    """A FHIR instant or date (``2026-01-02``, ``2026-01-02T03:04:05Z``) as an aware datetime; a date is its
    midnight UTC, a date-time needs its zone."""
    try:
        if len(value) == 10:
            return dt.datetime.combine(dt.date.fromisoformat(value), dt.time(), dt.UTC)
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not a date (YYYY-MM-DD) or an instant (YYYY-MM-DDThh:mm:ssZ)") from None
    if moment.tzinfo is None:
        raise ValueError(f"{what}: {value!r} needs its time zone (Z or +hh:mm)")
    return moment


def _changed_since(resource: dict[str, Any], since: dt.datetime | None) -> bool:
    if since is None:
        return True
    meta = resource.get("meta")
    updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if not isinstance(updated, str):
        return True
    try:
        moment = dt.datetime.fromisoformat(updated)
    except ValueError:
        return True
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment >= since


def named_type(path: Path) -> str | None:
    """The resource type a Bulk Data file name names (``Patient.ndjson``, ``1.Observation.ndjson``), if any."""
    name = path.name
    for suffix in NDJSON_SUFFIXES:
        name = name.removesuffix(suffix)
    found = [word for word in _WORD.findall(name) if is_resource_type(word)]
    return found[0] if len(found) == 1 else None


class ResourceList:
    """Resources already in memory as a source: each view reads those of its type, in order."""

    def __init__(self, resources: Iterable[dict[str, Any]], *, name: str = "resources") -> None:
        self.name = name
        self._resources = resources
        self._position = ""

    def resources(self, resource_type: str, since: str | None) -> Iterator[dict[str, Any]]:
        moment = parse_instant(since) if since else None
        for resource in self._resources:
            if resource.get("resourceType") == resource_type and _changed_since(resource, moment):
                self._position = f"{resource_type}/{resource.get('id')}"
                yield resource

    def position(self) -> str:
        return self._position

    def transaction_time(self) -> str | None:
        return None


class LocalSource:
    """An NDJSON file, a folder of NDJSON files, or a JSON file (Bundle or resource)."""

    def __init__(self, path: Path, *, max_line_bytes: int = MAX_LINE_BYTES, max_json_bytes: int = MAX_JSON_BYTES):
        self.path = path
        self.name = shown(path)
        self.max_line_bytes = max_line_bytes
        self.max_json_bytes = max_json_bytes
        self._position = ""
        if path.is_dir():
            if path.is_symlink():
                raise InputError("a link to a folder: not read", source=self.name)
            self.is_folder = True
        else:
            self.is_folder = False
            fd, _ = open_regular(path)  # refuses what is not a regular file before any view runs
            os.close(fd)

    def files(self) -> list[Path]:
        if not self.is_folder:
            return [self.path]
        return sorted(p for p in self.path.iterdir() if p.name.endswith(NDJSON_SUFFIXES) and not p.name.startswith("."))

    def resources(self, resource_type: str, since: str | None) -> Iterator[dict[str, Any]]:
        moment = parse_instant(since) if since else None
        for file in self.files():
            if self.is_folder:
                kind = named_type(file)
                if kind is not None and kind != resource_type:
                    continue
            reader = self._json_file if file.suffix == ".json" else self._ndjson_file
            for resource in reader(file):
                if _changed_since(resource, moment):
                    yield resource

    def position(self) -> str:
        return self._position

    def transaction_time(self) -> str | None:
        if not self.is_folder:
            return None
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            return None
        try:
            doc = orjson.loads(read_bounded(manifest, 64 * 1024 * 1024))
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not JSON: {exc}", source=shown(manifest)) from exc
        if isinstance(doc, dict) and isinstance(doc.get("output"), list):
            value = doc.get("transactionTime")
            if isinstance(value, str):
                try:
                    parse_instant(value, what="transactionTime")
                except ValueError as exc:
                    raise InputError(str(exc), source=shown(manifest)) from exc
                return value
        return None

    def _ndjson_file(self, file: Path) -> Iterator[dict[str, Any]]:
        source = shown(file)
        # A file named on the command line may be a link; one found in a folder may not (it could lead anywhere).
        fd, _ = open_regular(file, follow=not self.is_folder)
        with os.fdopen(fd, "rb") as fh:
            number = 0
            while True:
                line = fh.readline(self.max_line_bytes + 1)
                if not line:
                    return
                number += 1
                self._position = f"{source}:{number}"
                if len(line) > self.max_line_bytes and not line.endswith(b"\n"):
                    raise InputError(
                        f"line {number} is longer than the limit of {self.max_line_bytes:,} bytes", source=source
                    )
                if not line.strip():
                    continue
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    raise InputError(f"line {number}: not JSON ({exc.msg})", source=source) from None
                yield _resource(resource, f"line {number}", source)

    def _json_file(self, file: Path) -> Iterator[dict[str, Any]]:
        source = shown(file)
        self._position = source
        try:
            doc = orjson.loads(read_bounded(file, self.max_json_bytes))  # a JSON document cannot be streamed
        except orjson.JSONDecodeError as exc:
            raise InputError(f"not JSON ({exc.msg})", source=source) from None
        if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
            yield _resource(doc, "the document", source)
            return
        entries = doc.get("entry", [])
        if not isinstance(entries, list):
            raise InputError("Bundle.entry: not a list", source=source)
        local = _local_references(entries)
        for i, entry in enumerate(entries):
            self._position = f"{source}: Bundle.entry[{i}]"
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if resource is None:
                continue
            resource = _resource(resource, f"Bundle.entry[{i}].resource", source)
            yield _with_local_references(resource, local) if local else resource


def _local_references(entries: list[Any]) -> dict[str, str]:
    """fullUrl -> ``Type/id`` for the entries whose resource has both (the id a transaction's PUT gives it)."""
    local: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        full_url, resource = entry.get("fullUrl"), entry.get("resource")
        if not isinstance(full_url, str) or not full_url or not isinstance(resource, dict):
            continue
        kind, key = resource.get("resourceType"), resource.get("id")
        if isinstance(kind, str) and kind and isinstance(key, str) and key:
            local[full_url] = f"{kind}/{key}"
    return local


def _with_local_references(value: Any, local: dict[str, str]) -> Any:
    """``value`` with every ``reference`` that names an entry's fullUrl made that entry's ``Type/id`` (a copy:
    the document's own objects are left as they are). Iterative, so that deep nesting cannot overflow the stack."""
    root: list[Any] = [value]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, value)]  # (container of the copy, its key, the original)
    while stack:
        parent, key, item = stack.pop()
        if isinstance(item, dict):
            copy: dict[str, Any] = {}
            parent[key] = copy
            for name, child in item.items():
                if name == "reference" and isinstance(child, str):
                    copy[name] = local.get(child, child)
                elif isinstance(child, dict | list):
                    copy[name] = None
                    stack.append((copy, name, child))
                else:
                    copy[name] = child
        elif isinstance(item, list):
            items: list[Any] = [None] * len(item)
            parent[key] = items
            for i, child in enumerate(item):
                if isinstance(child, dict | list):
                    stack.append((items, i, child))
                else:
                    items[i] = child
    return root[0]


def _resource(value: Any, where: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InputError(f"{where}: not a JSON object", source=source)
    kind = value.get("resourceType")
    if not isinstance(kind, str) or not kind:
        raise InputError(f"{where}: a JSON object without resourceType", source=source)
    return value
