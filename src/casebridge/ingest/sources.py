"""Where the cases of a job come from: a folder of case files, an NDJSON file of cases (one per line), or a
CSV in the flat registry layout of ``mappings/registry-csv.yaml`` (one row per case).

Items are read lazily (a job may hold 100,000 cases). Each has a ``key``, the case's own identity, that the job
state is kept under, so that inserting, removing or reordering cases (or renaming a file) does not re-key the
others: ``case:<case_id>``; for an item without a usable case_id (a file or row that cannot be read as a case)
``sha256:<content digest>``, or ``file:<name>`` for a case file too large or unreadable to hash. The location
(``file`` or ``file:line``) is carried beside it for messages, escaped (``files.shown``): a name's control or
bidi characters can neither fake a line of output nor be stored raw. Two items of one source with the same identity
would write the same resources (resource ids derive from the case id): the first in source order keeps the key,
each later one gets ``<key>#2``, ``#3``... and ``duplicate_of`` (the first one's location), and the job reports
it as invalid without sending it. A content hash per item lets a changed input be sent again.

A folder source reads the regular files directly in it with a case suffix, in name order (not its subfolders).
A link is followed only to a file inside the folder, and is then an item of its own, under the link's name (a
link to another case file of the folder is that case twice: the later one in name order is reported as the
duplicate). Everything else with a case suffix is an item refused unread, keyed ``file:<name>``, its reason
saying why: a link out of the folder (never followed: the folder is what the job was given), a broken link or
a loop, a FIFO (never opened: its open waits for a writer), a socket, a device, a folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from casebridge.domain.reader import parse_document
from casebridge.errors import InputError
from casebridge.files import kind_of, open_regular, read_at_most, shown
from casebridge.ingest.registry_csv import RegistryLayout, RowError

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
    # ".yaml" or ".json": how to read it; ".too-large", ".unreadable", ".invalid-row", ".refused" (not read: a
    # link out of the folder, a FIFO, a device...; data is why): refused as is
    suffix: str
    duplicate_of: str | None = None  # the location of an earlier item of this source with the same identity

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class CaseSource:
    def __init__(self, path: Path, *, max_bytes: int, layout: RegistryLayout | None = None):
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise InputError("no such file or folder", source=shown(path)) from None
        except OSError as exc:
            raise InputError(f"cannot read it: {exc.strerror}", source=shown(path)) from exc
        self.path = path
        self.shown = shown(path)  # the path as messages and locations name it
        self.max_bytes = max_bytes
        self.layout = layout
        suffix = path.suffix.lower()
        self.kind = "folder" if stat.S_ISDIR(mode) else "csv" if suffix == ".csv" else "ndjson"
        if self.kind != "folder" and not stat.S_ISREG(mode):
            # Never opened: a FIFO's open waits for a writer, a device may never end.
            raise InputError(f"{kind_of(mode)}, not a regular file: not read", source=self.shown)
        if self.kind == "ndjson" and suffix not in (".ndjson", ".jsonl"):
            raise InputError(
                "expected a folder of case files, an .ndjson file of cases or a registry .csv", source=self.shown
            )
        if self.kind == "csv":
            if layout is None:
                raise InputError("a registry CSV needs the layout (mappings/registry-csv.yaml)", source=self.shown)
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
        """The folder's entries with a case suffix, in name order, whatever they are (links, FIFOs, folders
        included: ``_folder`` says why one is not read). Subfolders are not descended."""
        for child in sorted(self.path.iterdir()):
            if child.suffix.lower() in CASE_SUFFIXES and not child.name.startswith("."):
                if child.name.endswith(".manifest.json") or child.name == "manifest.json":
                    continue
                yield child

    def subfolders_with_cases(self, most: int = 5) -> list[str]:
        """Names of (at most ``most``) subfolders holding files with a case suffix: not read, which the job says
        once. Links are not followed here."""
        found = []
        if self.kind == "folder":
            for child in sorted(self.path.iterdir()):
                if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
                    try:
                        holds = any(f.suffix.lower() in CASE_SUFFIXES for f in child.iterdir())
                    except OSError:
                        continue
                    if holds:
                        found.append(shown(child.name))
                        if len(found) >= most:
                            break
        return found

    def _folder(self) -> Iterator[tuple[str, str, bytes, str]]:
        root = self.path.resolve()
        for file in self._files():
            location = shown(file)
            # Keyed by its name: what is not read has no content to be keyed by.
            refused = f"file:{shown(file.name)}", location
            target, why = _inside(file, root)
            if target is None:
                yield *refused, why.encode(), ".refused"
                continue
            try:
                # Not through the link again (it might be changed to point elsewhere in between): the checked
                # target, itself no link.
                fd, status = open_regular(target, follow=False)
            except InputError as exc:
                yield *refused, f"skipped: {exc}".encode(), ".refused"
                continue
            if target != file and not _opened_inside(fd, root):
                os.close(fd)
                yield *refused, b"a link out of the source folder: not read", ".refused"
                continue
            try:
                data = read_at_most(fd, self.max_bytes + 1)
            except OSError as exc:
                yield *refused, f"unreadable: {exc.strerror}".encode(), ".unreadable"
                continue
            if len(data) > self.max_bytes:
                yield *refused, f"{max(status.st_size, len(data))}".encode(), ".too-large"
                continue
            suffix = ".json" if file.suffix.lower() == ".json" else ".yaml"
            yield _identity(data, suffix, location), location, data, suffix

    def _csv(self) -> Iterator[tuple[str, str, bytes, str]]:
        assert self.layout is not None
        for line, doc in self.layout.rows(self.path):
            source = f"{self.shown}:{line}"
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
        fd, _ = open_regular(self.path)
        with open(fd, "rb") as handle:
            number = 0
            # At most max_bytes + 1 bytes of a line are read at once: an oversized line (one without a newline
            # for gigabytes, say) is skipped in chunks, hashed for its key, never held whole.
            while line := handle.readline(self.max_bytes + 1):
                number += 1
                source = f"{self.shown}:{number}"
                if len(line) > self.max_bytes:
                    size, digest = _skip_line(handle, line)
                    yield "sha256:" + digest[:32], source, f"{size}".encode(), ".too-large"
                    continue
                if not line.strip():
                    continue
                data = line.strip()
                yield _identity(data, ".json", source), source, data, ".json"


def _inside(file: Path, root: Path) -> tuple[Path | None, str]:
    """``(path to open, "")`` for an entry of the folder: itself, or for a link the file it leads to, if that
    is inside the folder ``root``; else ``(None, why it is not read)``. A link leading out of the folder is
    never followed: the folder is what the job was given."""
    if not file.is_symlink():
        return file, ""
    try:
        target = file.resolve(strict=True)
    except FileNotFoundError:
        return None, "skipped: a broken link (what it names does not exist)"
    except (OSError, RuntimeError):  # a loop of links, or one that cannot be followed
        return None, "skipped: a link that cannot be followed (a loop of links?)"
    if not target.is_relative_to(root):
        return None, "a link out of the source folder: not read"
    return target, ""


def _opened_inside(fd: int, root: Path) -> bool:
    """Whether the file open as ``fd`` is inside ``root``, by the path the kernel opened: a folder on the way to a
    link's target may have been swapped for a link out between the check and the open (O_NOFOLLOW guards the
    last name only). Without /proc, the check made before the open stands."""
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return True
    return opened.is_relative_to(root)


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
