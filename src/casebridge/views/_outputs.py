"""Writing the rows of views: NDJSON, CSV, Parquet or DuckDB, to standard output, to one file, or to a folder
with a manifest.

Rules:
- Columns are typed from the view: a column's declared ``type``, else the type its path gives. boolean is a
  boolean, integer (and positiveInt, unsignedInt, integer64) a 64-bit integer, decimal a 64-bit float (the JSON
  reader has already made it one); date, dateTime, instant and time stay strings, as FHIR wrote them (a FHIR date
  may be a year or a year and month, and keeps its own zone: a timestamp would invent the rest); the other
  primitives are strings; a complex type (a CodeableConcept) is JSON text (an object in NDJSON). A column with
  ``collection: true`` is a list. Parquet and DuckDB columns carry these types; each Parquet field's metadata
  keeps its FHIR type (``fhir_type``).
- A value that does not fit its column's type (text in an integer column, an object in a string column) is a
  ViewEvaluationError naming the input (``position()`` of the source) and the column, like any resource the view
  cannot read.
- CSV is RFC 4180 (CRLF), a header row, every cell defused against spreadsheet formulas; a list or an object is
  JSON text; null is an empty cell. NDJSON is one JSON object per row, every column present (null when empty).
- Nothing is half written: standard output is spooled to a temporary file and copied out only once every row is
  made; a file or folder is written under a temporary name beside its target and renamed on success; on any
  error the temporary is removed and the target is as it was.
- A folder holds one file per view (``<name>.<format>``; DuckDB: ``views.duckdb``, one table per view) and
  ``manifest.json``: the format, the source, the run's transactionTime (the source's when it has one, else the
  time the run started), ``since``, and per view its name, the sha256 of its canonical JSON (keys sorted, no
  white space), its row count, format and files.
- Incremental runs (``since``): views already in the folder with the same hash, format and source get a delta
  file of the resources changed since (``<name>.<n>.<format>``; DuckDB: rows appended to the table); a view that
  is new or changed runs in full. The previous files are carried over (hard links; they are never changed in
  place). ``since="last"`` is the previous manifest's transactionTime. A folder is replaced only if it is one of
  ours: every file in it listed by its manifest.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from casebridge.errors import InputError, Problem
from casebridge.files import csv_cell, read_bounded, shown
from casebridge.views._definition import SelectPlan, ViewPlan
from casebridge.views._fhirpath import PRIMITIVES
from casebridge.views._runner import ViewEvaluationError, run_view
from casebridge.views._sources import ResourceSource, parse_instant

FORMATS = ("ndjson", "csv", "parquet", "duckdb")
SUFFIXES = {fmt: f".{fmt}" for fmt in FORMATS}
MANIFEST = "manifest.json"
DUCKDB_FILE = "views.duckdb"
BATCH_ROWS = 10_000
_BOOLEAN = frozenset({"boolean"})
_INTEGER = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})
_DECIMAL = frozenset({"decimal"})
_PLAIN_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class Column:
    name: str
    fhir_type: str | None
    collection: bool
    kind: str  # boolean, integer, decimal, text (a primitive written as text) or json (anything else)


@dataclass(frozen=True)
class NamedView:
    """A view to run: its output name (files, tables), its plan and the hash of its JSON."""

    name: str
    plan: ViewPlan
    digest: str

    @property
    def columns(self) -> tuple[Column, ...]:
        return columns_of(self.plan)


def view_digest(view: Any) -> str:
    """sha256 of the view's canonical JSON: keys sorted, no white space, UTF-8."""
    return hashlib.sha256(orjson.dumps(view, option=orjson.OPT_SORT_KEYS)).hexdigest()


def output_name(plan: ViewPlan, fallback: str) -> str:
    """The view's name, else ``fallback`` (a file stem) made a name: letters, digits and _, starting with a
    letter."""
    if plan.name:
        return plan.name
    name = _NOT_NAME.sub("_", fallback)
    return name if name[:1].isalpha() else f"view_{name}"


def columns_of(plan: ViewPlan) -> tuple[Column, ...]:
    found: dict[str, Column] = {}

    def walk(select: SelectPlan) -> None:
        for column in select.columns:
            if column.name not in found:
                fhir_type = column.type or column.path.type
                found[column.name] = Column(column.name, fhir_type, column.collection, _kind(fhir_type))
        for sub in select.selects:
            walk(sub)
        if select.union:
            walk(select.union[0])

    walk(plan.root)
    return tuple(found[c.name] for c in plan.columns)


def _kind(fhir_type: str | None) -> str:
    if fhir_type in _BOOLEAN:
        return "boolean"
    if fhir_type in _INTEGER:
        return "integer"
    if fhir_type in _DECIMAL:
        return "decimal"
    if fhir_type is None or fhir_type in PRIMITIVES or fhir_type.startswith("System."):
        return "text"
    return "json"


class _Mismatch(Exception):
    def __init__(self, column: Column, message: str) -> None:
        super().__init__(message)
        self.column = column


def _value(column: Column, value: Any) -> Any:
    """``value`` checked against the column's kind: the Python value every format starts from."""
    if value is None:
        return None
    kind = column.kind
    if kind == "json":
        return value
    if kind == "boolean":
        if type(value) is bool:
            return value
    elif kind == "integer":
        if type(value) is int:
            # JSON readers give integers up to 2^64 - 1: one beyond int64 would fail in Arrow, not name its input.
            if -(2**63) <= value < 2**63:
                return value
            raise _Mismatch(column, f"column {column.name!r} ({column.fhir_type}): {value} is not a 64-bit integer")
    elif kind == "decimal":
        if type(value) in (int, float):
            return float(value)
    elif type(value) is str:
        return value
    elif type(value) in (bool, int, float):
        return orjson.dumps(value).decode()  # a number or boolean in a text column: its JSON text
    shape = "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else repr(value)
    raise _Mismatch(column, f"column {column.name!r} ({column.fhir_type or 'text'}): {shape} is not a {kind}")


def _typed_row(columns: Sequence[Column], row: tuple[Any, ...]) -> tuple[Any, ...]:
    out = []
    for column, value in zip(columns, row, strict=True):
        if column.collection and column.kind != "json":
            out.append([_value(column, v) for v in value] if isinstance(value, list) else _value(column, value))
        else:
            out.append(_value(column, value))
    return tuple(out)


def view_rows(view: NamedView, source: ResourceSource, since: str | None) -> Iterator[tuple[Any, ...]]:
    """The view's typed rows over the source. A resource the view cannot read: ViewEvaluationError whose source is
    where that resource came from (``file:line``)."""
    columns = view.columns
    rows = run_view(view.plan, source.resources(view.plan.resource, since))
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except ViewEvaluationError as exc:
            raise ViewEvaluationError(
                f"view {view.name!r}: {exc}", source=source.position(), problems=exc.problems
            ) from None
        try:
            yield _typed_row(columns, row)
        except _Mismatch as exc:
            location = f"view {view.name!r} column {exc.column.name!r}"
            raise ViewEvaluationError(
                f"view {view.name!r}: {exc}", source=source.position(), problems=[Problem(location, str(exc))]
            ) from None


# -- formats --------------------------------------------------------------------------------------------------


def _json_text(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else orjson.dumps(value).decode()


def write_ndjson(stream: IO[bytes], view: NamedView, rows: Iterable[tuple[Any, ...]]) -> int:
    names = [c.name for c in view.columns]
    count = 0
    for row in rows:
        stream.write(orjson.dumps(dict(zip(names, row, strict=True))) + b"\n")
        count += 1
    return count


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()  # booleans as true/false, numbers, lists and objects as JSON


def write_csv(stream: IO[bytes], view: NamedView, rows: Iterable[tuple[Any, ...]]) -> int:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="", write_through=True)
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow([csv_cell(c.name) for c in view.columns])
    count = 0
    for row in rows:
        writer.writerow([csv_cell(_csv_text(v)) for v in row])
        count += 1
    text.flush()
    text.detach()  # the caller owns the stream
    return count


def arrow_schema(view: NamedView) -> Any:
    import pyarrow as pa

    kinds = {"boolean": pa.bool_(), "integer": pa.int64(), "decimal": pa.float64()}
    fields = []
    for column in view.columns:
        kind: Any = kinds.get(column.kind, pa.string())
        if column.collection:
            kind = pa.list_(kind)
        metadata = {"fhir_type": column.fhir_type} if column.fhir_type else None
        fields.append(pa.field(column.name, kind, metadata=metadata))
    return pa.schema(fields)


def _arrow_batches(view: NamedView, rows: Iterable[tuple[Any, ...]], counter: list[int]) -> Iterator[Any]:
    """Record batches of at most BATCH_ROWS rows (memory stays flat); ``counter[0]`` counts the rows."""
    import pyarrow as pa

    schema = arrow_schema(view)
    as_text = [c.kind == "json" for c in view.columns]
    batch: list[tuple[Any, ...]] = []

    def make() -> Any:
        arrays = []
        for i, field in enumerate(schema):
            values = [row[i] for row in batch]
            if as_text[i]:
                values = (
                    [[_json_text(v) for v in x] if isinstance(x, list) else _json_text(x) for x in values]
                    if field.type != pa.string()
                    else [_json_text(v) for v in values]
                )
            arrays.append(pa.array(values, type=field.type))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    for row in rows:
        batch.append(row)
        counter[0] += 1
        if len(batch) >= BATCH_ROWS:
            yield make()
            batch = []
    if batch:
        yield make()


def write_parquet(path: Path, view: NamedView, rows: Iterable[tuple[Any, ...]]) -> int:
    import pyarrow.parquet as pq

    counter = [0]
    with pq.ParquetWriter(path, arrow_schema(view)) as writer:
        for batch in _arrow_batches(view, rows, counter):
            writer.write_batch(batch)
    return counter[0]


def write_duckdb(connection: Any, view: NamedView, rows: Iterable[tuple[Any, ...]], *, append: bool) -> int:
    """The rows into the table named as the view (a name of letters, digits and _, so quoting suffices):
    replaced, or appended to when ``append``."""
    import pyarrow as pa

    table = f'"{view.name}"'
    if not append:
        connection.register("casebridge_rows", pa.Table.from_batches([], schema=arrow_schema(view)))
        connection.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM casebridge_rows")  # noqa: S608
    counter = [0]
    for batch in _arrow_batches(view, rows, counter):
        connection.register("casebridge_rows", batch)
        connection.execute(f"INSERT INTO {table} SELECT * FROM casebridge_rows")  # noqa: S608 - a checked name
    connection.unregister("casebridge_rows")
    return counter[0]


def _connect(path: Path) -> Any:
    import duckdb

    return duckdb.connect(str(path))


def write_stream(fmt: str, stream: IO[bytes], view: NamedView, rows: Iterable[tuple[Any, ...]]) -> int:
    if fmt == "ndjson":
        return write_ndjson(stream, view, rows)
    if fmt == "csv":
        return write_csv(stream, view, rows)
    raise ValueError(f"{fmt} is not written to a stream")


# -- targets --------------------------------------------------------------------------------------------------


def run_to_stdout(
    view: NamedView, source: ResourceSource, fmt: str, stream: IO[bytes], since: str | None = None
) -> int:
    """NDJSON or CSV of one view on ``stream``, once every row is made (spooled to a temporary file meanwhile, so
    memory stays flat and a failure writes nothing)."""
    with tempfile.TemporaryFile() as spool:
        count = write_stream(fmt, spool, view, view_rows(view, source, since))
        spool.seek(0)
        shutil.copyfileobj(spool, stream)
    stream.flush()
    return count


def _check_names(views: Sequence[NamedView], target: Path) -> None:
    # DuckDB's table names and some file systems ignore case: Patient and patient would be one output.
    names = [v.name.lower() for v in views]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(
            f"two views write the same output (names ignore case): {', '.join(twice)}", source=shown(target)
        )


def _temporary_beside(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{secrets.token_hex(6)}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_one(fmt: str, path: Path, view: NamedView, rows: Iterable[tuple[Any, ...]]) -> int:
    if fmt == "parquet":
        return write_parquet(path, view, rows)
    with path.open("xb") as fh:
        return write_stream(fmt, fh, view, rows)


def run_to_file(
    views: Sequence[NamedView], source: ResourceSource, fmt: str, path: Path, since: str | None = None
) -> dict[str, int]:
    """One file: one view's NDJSON, CSV or Parquet, or a DuckDB database of every view (a table each). Written
    under a temporary name and renamed: on any error the target is as it was."""
    if fmt != "duckdb" and len(views) != 1:
        raise InputError(f"one {fmt} file holds one view, not {len(views)}: give a folder", source=shown(path))
    if path.is_dir():
        raise InputError("a folder, not a file", source=shown(path))
    _check_names(views, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path, "tmp")
    counts: dict[str, int] = {}
    try:
        if fmt == "duckdb":
            connection = _connect(tmp)
            try:
                for view in views:
                    counts[view.name] = write_duckdb(connection, view, view_rows(view, source, since), append=False)
            finally:
                connection.close()
        else:
            view = views[0]
            counts[view.name] = _write_one(fmt, tmp, view, view_rows(view, source, since))
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)
        raise
    return counts


def instant(moment: dt.datetime) -> str:
    """A FHIR instant in UTC, to the second (truncated: a run's start must not move later)."""
    return moment.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, if the folder exists; refuses a folder that is not one of ours (a file, or files
    its manifest does not list: they would be lost when it is replaced)."""
    if not folder.exists():
        return None
    if not folder.is_dir() or folder.is_symlink():
        raise InputError("not a folder: not replaced", source=shown(folder))
    present = {p.name for p in folder.iterdir()}
    if not present:
        return None
    if MANIFEST not in present:
        raise InputError(f"a folder without {MANIFEST} (not a views output): not replaced", source=shown(folder))
    source = shown(folder / MANIFEST)
    try:
        doc = orjson.loads(read_bounded(folder / MANIFEST, 64 * 1024 * 1024))
    except orjson.JSONDecodeError as exc:
        raise InputError(f"not JSON: {exc}", source=source) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("views"), list):
        raise InputError("not a views manifest (no views list)", source=source)
    listed = {MANIFEST}
    for i, entry in enumerate(doc["views"]):
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise InputError(f"views[{i}].files: not a list of objects", source=source)
        for f in files:
            name = f.get("file")
            if not isinstance(name, str) or not _PLAIN_FILE.match(name) or not (folder / name).is_file():
                raise InputError(f"views[{i}].files: {name!r} is not a file of the folder", source=source)
            listed.add(name)
    extra = sorted(present - listed)
    if extra:
        listing = ", ".join(extra[:5])
        raise InputError(f"files its manifest does not list: {listing}: not replaced", source=shown(folder))
    if not isinstance(doc.get("transactionTime"), str):
        raise InputError("transactionTime: missing", source=source)
    return doc


def _carry(old: Path, new: Path) -> None:
    """A previous file into the new folder: a hard link when the file system allows (files are never changed in
    place), else a copy."""
    try:
        os.link(old, new)
    except OSError:
        shutil.copy2(old, new)


def run_to_folder(
    views: Sequence[NamedView],
    source: ResourceSource,
    fmt: str,
    folder: Path,
    *,
    since: str | None = None,
    started: dt.datetime | None = None,
) -> dict[str, Any]:
    """Every view into ``folder`` with its manifest (see the module's rules); returns the manifest. ``since``:
    None for a full run, an instant, or ``"last"`` for the previous manifest's transactionTime."""
    started = started or dt.datetime.now(dt.UTC)
    previous = read_manifest(folder)
    if since == "last":
        if previous is None:
            raise InputError(f"--since last: no {MANIFEST} in the output folder to take it from", source=shown(folder))
        since = str(previous["transactionTime"])
    if since is not None:
        try:
            parse_instant(since)
        except ValueError as exc:
            raise InputError(str(exc), source=shown(folder)) from None
    if since is not None and previous is not None and previous.get("format") != fmt:
        raise InputError(
            f"the folder holds {previous.get('format')} files; an incremental run adds the same format, not {fmt}",
            source=shown(folder),
        )
    _check_names(views, folder)

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(folder, "tmp")
    tmp.mkdir()
    try:
        manifest = _fill_folder(tmp, views, source, fmt, folder, previous, since, started)
        for path in tmp.iterdir():
            _fsync(path)
        _swap(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _fill_folder(
    tmp: Path,
    views: Sequence[NamedView],
    source: ResourceSource,
    fmt: str,
    folder: Path,
    previous: dict[str, Any] | None,
    since: str | None,
    started: dt.datetime,
) -> dict[str, Any]:
    entries: dict[str, dict[str, Any]] = {}
    if since is not None and previous is not None:
        # An incremental run keeps what the folder had; the views run now update their entries.
        for entry in previous["views"]:
            entries[str(entry.get("name"))] = entry
            for f in entry["files"]:
                if not (tmp / f["file"]).exists():
                    (shutil.copy2 if f["file"] == DUCKDB_FILE else _carry)(folder / f["file"], tmp / f["file"])
    connection = _connect(tmp / DUCKDB_FILE) if fmt == "duckdb" else None
    try:
        for view in views:
            before = entries.get(view.name)
            same = (
                before is not None
                and previous is not None
                and before.get("hash") == view.digest
                and before.get("format") == fmt
                and previous.get("source") == source.name
            )
            view_since = since if same or previous is None else None
            files: list[dict[str, Any]] = list(before["files"]) if same and before is not None else []
            if not same and before is not None and before.get("format") != "duckdb":
                for f in before["files"]:
                    (tmp / f["file"]).unlink(missing_ok=True)
            rows = view_rows(view, source, view_since)
            if connection is not None:
                name = DUCKDB_FILE
                count = write_duckdb(connection, view, rows, append=bool(files))
            else:
                name = f"{view.name}{'.' + str(len(files) + 1) if files else ''}{SUFFIXES[fmt]}"
                count = _write_one(fmt, tmp / name, view, rows)
            files.append({"file": name, "rows": count, "since": view_since})
            entries[view.name] = {
                "name": view.name,
                "resource": view.plan.resource,
                "hash": view.digest,
                "format": fmt,
                "rows": sum(int(f["rows"]) for f in files),
                "files": files,
            }
    finally:
        if connection is not None:
            connection.close()
    transaction_time = source.transaction_time() or instant(started)
    for entry in entries.values():
        for f in entry["files"]:
            f.setdefault("transactionTime", transaction_time)
    manifest = {
        "format": fmt,
        "source": source.name,
        "transactionTime": transaction_time,
        "since": since,
        "started": instant(started),
        "views": list(entries.values()),
    }
    (tmp / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def _swap(tmp: Path, folder: Path) -> None:
    """The new folder in place of the old: the old is renamed aside, the new renamed in, the old removed (a
    directory cannot be replaced by one rename)."""
    if not folder.exists():
        os.rename(tmp, folder)
        return
    old = _temporary_beside(folder, "old")
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except BaseException:
        os.rename(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
