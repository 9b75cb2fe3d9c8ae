"""View outputs (NDJSON, CSV, Parquet, DuckDB) and local sources: each format read back, typed columns, nothing left
behind by a failure, the folder's manifest and incremental runs."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from casebridge.errors import InputError
from casebridge.views import (
    LocalSource,
    NamedView,
    ViewEvaluationError,
    read_view,
    run_to_dicts,
    run_to_file,
    run_to_folder,
    run_to_stdout,
    view_digest,
)

OBSERVATION_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "obs",
    "resource": "Observation",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "text", "path": "code.text", "type": "string"},
                {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"},
                {"name": "flag", "path": "value.ofType(boolean)", "type": "boolean"},
                {"name": "count", "path": "value.ofType(integer)", "type": "integer"},
                {"name": "issued", "path": "issued", "type": "instant"},
                {"name": "codes", "path": "code.coding.code", "collection": True},
                {"name": "code", "path": "code"},
            ]
        }
    ],
}
PATIENT_VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "pat",
    "resource": "Patient",
    "select": [{"column": [{"name": "id", "path": "id"}, {"name": "born", "path": "birthDate"}]}],
}


def obs(i: int, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"o{i}",
        "meta": {"lastUpdated": f"2026-01-0{1 + i % 9}T00:00:00Z"},
        "status": "final",
        "code": {"text": f"test {i}", "coding": [{"code": f"c{i}"}, {"code": "x"}]},
        "issued": "2026-01-02T03:04:05+02:00",
    }
    resource.update(extra)
    return resource


RESOURCES = [
    obs(1, valueQuantity={"value": 1.5, "unit": "mg"}),
    obs(2, valueBoolean=True),
    obs(3, valueInteger=7),
    obs(4, code={"text": '=HYPERLINK("x")\r\nnext'}),
    {"resourceType": "Patient", "id": "p1", "birthDate": "1980-05"},
]


def named(view: dict[str, Any]) -> NamedView:
    return NamedView(view["name"], read_view(view), view_digest(view))


def write_ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in resources))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    source = tmp_path / "export"
    source.mkdir()
    write_ndjson(source / "Observation.ndjson", [r for r in RESOURCES if r["resourceType"] == "Observation"])
    write_ndjson(source / "Patient.ndjson", [r for r in RESOURCES if r["resourceType"] == "Patient"])
    return source


def expected(view: dict[str, Any]) -> list[dict[str, Any]]:
    return run_to_dicts(read_view(view), RESOURCES)


def test_ndjson_round_trip(folder: Path, tmp_path: Path) -> None:
    counts = run_to_file([named(OBSERVATION_VIEW)], LocalSource(folder), "ndjson", tmp_path / "obs.ndjson")
    rows = [json.loads(line) for line in (tmp_path / "obs.ndjson").read_text().splitlines()]
    assert counts == {"obs": 4}
    assert rows == expected(OBSERVATION_VIEW)
    assert rows[0]["value"] == 1.5 and rows[1]["flag"] is True and rows[2]["count"] == 7
    assert rows[0]["code"] == {"text": "test 1", "coding": [{"code": "c1"}, {"code": "x"}]}  # an object stays one


def test_csv_is_rfc4180_typed_as_text_and_defused(folder: Path) -> None:
    stream = io.BytesIO()
    assert run_to_stdout(named(OBSERVATION_VIEW), LocalSource(folder), "csv", stream) == 4
    data = stream.getvalue()
    assert data.count(b"\r\n") >= 5 and b"\n" not in data.replace(b"\r\n", b"").replace(b"\r\nnext", b"")
    rows = list(csv.reader(io.StringIO(data.decode(), newline="")))
    assert rows[0] == ["id", "text", "value", "flag", "count", "issued", "codes", "code"]
    assert rows[1][:7] == ["o1", "test 1", "1.5", "", "", "2026-01-02T03:04:05+02:00", '["c1","x"]']
    assert rows[2][3] == "true" and rows[3][4] == "7"
    assert rows[4][1] == '\'=HYPERLINK("x")\r\nnext'  # a formula cell gets an apostrophe; its CRLF stays in it


def test_csv_defuses_every_formula_lead(tmp_path: Path) -> None:
    """Each leading character a spreadsheet reads as a formula (=, +, -, @, TAB, CR, after white space, full
    width) is defused in a view's CSV; a plain negative number and plain text are written as they are."""
    from tests.unit.test_csv_cell import CELLS

    cells = [(text, cell) for text, cell in CELLS if text]
    source = tmp_path / "export"
    source.mkdir()
    write_ndjson(source / "Observation.ndjson", [obs(i, code={"text": t}) for i, (t, _) in enumerate(cells)])
    view = {**OBSERVATION_VIEW, "select": [{"column": OBSERVATION_VIEW["select"][0]["column"][:2]}]}
    stream = io.BytesIO()
    assert run_to_stdout(named(view), LocalSource(source), "csv", stream) == len(cells)
    rows = list(csv.reader(io.StringIO(stream.getvalue().decode(), newline="")))
    assert rows[0] == ["id", "text"]
    assert sorted(rows[1:]) == sorted([f"o{i}", cell] for i, (_, cell) in enumerate(cells))


def test_parquet_has_typed_columns_and_the_rows(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "obs.parquet"
    run_to_file([named(OBSERVATION_VIEW)], LocalSource(folder), "parquet", target)
    table = pq.read_table(target)
    types = {f.name: f.type for f in table.schema}
    assert types == {
        "id": pa.string(),
        "text": pa.string(),
        "value": pa.float64(),
        "flag": pa.bool_(),
        "count": pa.int64(),
        "issued": pa.string(),  # dates and instants stay as FHIR wrote them
        "codes": pa.list_(pa.string()),
        "code": pa.string(),  # a CodeableConcept: JSON text
    }
    assert table.schema.field("issued").metadata == {b"fhir_type": b"instant"}
    rows = table.to_pylist()
    want = expected(OBSERVATION_VIEW)
    for row, wanted in zip(rows, want, strict=True):
        assert row == wanted | {"code": orjson.dumps(wanted["code"]).decode()}


def test_duckdb_holds_one_table_per_view(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "views.duckdb"
    counts = run_to_file([named(OBSERVATION_VIEW), named(PATIENT_VIEW)], LocalSource(folder), "duckdb", target)
    assert counts == {"obs": 4, "pat": 1}
    with duckdb.connect(str(target), read_only=True) as db:
        assert db.sql("select id, value, flag, count from obs order by id").fetchall() == [
            ("o1", 1.5, None, None),
            ("o2", None, True, None),
            ("o3", None, None, 7),
            ("o4", None, None, None),
        ]
        kinds = {row[0]: row[1] for row in db.sql("describe obs").fetchall()}
        assert kinds["value"] == "DOUBLE" and kinds["flag"] == "BOOLEAN" and kinds["count"] == "BIGINT"
        assert kinds["codes"] == "VARCHAR[]"
        assert db.sql("select born from pat").fetchall() == [("1980-05",)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "views.duckdb"]


# A view that cannot read the third Observation: a column that is not a collection gets two codes.
STRICT_VIEW: dict[str, Any] = {
    "name": "strict",
    "resource": "Observation",
    "select": [{"column": [{"name": "id", "path": "id"}, {"name": "code", "path": "code.coding.code"}]}],
}


def failing_source(tmp_path: Path) -> LocalSource:
    resources = [obs(1, code={"coding": [{"code": "a"}]}), obs(2, code={}), obs(3), obs(4, code={})]
    return LocalSource(write_ndjson(tmp_path / "bad.ndjson", resources))


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet", "duckdb"])
def test_a_failing_resource_leaves_no_file(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "out" / f"strict.{fmt}"
    with pytest.raises(ViewEvaluationError) as caught:
        run_to_file([named(STRICT_VIEW)], failing_source(tmp_path), fmt, target)
    assert caught.value.source.endswith("bad.ndjson:3")
    assert "Observation/o3" in str(caught.value)
    assert caught.value.problems[0].location == "select[0].column[1].path"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failing_resource_leaves_the_previous_folder_as_it_was(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_to_folder([named(OBSERVATION_VIEW)], LocalSource(folder), "parquet", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ViewEvaluationError):
        run_to_folder([named(PATIENT_VIEW), named(STRICT_VIEW)], failing_source(tmp_path), "parquet", out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ndjson", "export", "out"]  # no temporary left


def test_standard_output_gets_nothing_when_a_resource_fails(tmp_path: Path) -> None:
    stream = io.BytesIO()
    with pytest.raises(ViewEvaluationError):
        run_to_stdout(named(STRICT_VIEW), failing_source(tmp_path), "ndjson", stream)
    assert stream.getvalue() == b""


def test_a_value_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    view = {
        "name": "v",
        "resource": "Observation",
        "select": [{"column": [{"name": "n", "path": "status", "type": "integer"}]}],
    }
    with pytest.raises(ViewEvaluationError, match="column 'n' \\(integer\\)") as caught:
        run_to_file([named(view)], failing_source(tmp_path), "parquet", tmp_path / "v.parquet")
    assert caught.value.source.endswith("bad.ndjson:1")
    assert not (tmp_path / "v.parquet").exists()


def test_manifest(folder: Path, tmp_path: Path) -> None:
    started = dt.datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=dt.UTC)
    out = tmp_path / "out"
    run_to_folder([named(OBSERVATION_VIEW), named(PATIENT_VIEW)], LocalSource(folder), "csv", out, started=started)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "csv" and manifest["source"] == str(folder)
    assert manifest["transactionTime"] == "2026-03-04T05:06:07Z" and manifest["since"] is None
    obs_entry, pat_entry = manifest["views"]
    canonical = json.dumps(OBSERVATION_VIEW, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert obs_entry["hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert (obs_entry["name"], obs_entry["rows"], obs_entry["format"]) == ("obs", 4, "csv")
    assert obs_entry["files"] == [
        {"file": "obs.csv", "rows": 4, "since": None, "transactionTime": "2026-03-04T05:06:07Z"}
    ]
    assert pat_entry["files"][0]["file"] == "pat.csv" and pat_entry["rows"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "obs.csv", "pat.csv"]


def test_a_bulk_data_manifest_gives_the_transaction_time(folder: Path, tmp_path: Path) -> None:
    (folder / "manifest.json").write_text(json.dumps({"transactionTime": "2026-02-01T00:00:00Z", "output": []}))
    manifest = run_to_folder([named(PATIENT_VIEW)], LocalSource(folder), "ndjson", tmp_path / "out")
    assert manifest["transactionTime"] == "2026-02-01T00:00:00Z"


def test_since_last_reads_the_previous_manifest(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    run_to_folder([named(OBSERVATION_VIEW), named(PATIENT_VIEW)], LocalSource(folder), "parquet", out, started=first)
    # Observations o1..o4 were updated on 2026-01-02..05: o2, o3, o4 at or after the first run's transactionTime.
    manifest = run_to_folder(
        [named(OBSERVATION_VIEW)], LocalSource(folder), "parquet", out, since="last", started=first + dt.timedelta(9)
    )
    assert manifest["since"] == "2026-01-03T00:00:00Z"
    entry = next(v for v in manifest["views"] if v["name"] == "obs")
    assert [(f["file"], f["rows"], f["since"]) for f in entry["files"]] == [
        ("obs.parquet", 4, None),
        ("obs.2.parquet", 3, "2026-01-03T00:00:00Z"),
    ]
    assert pq.read_table(out / "obs.2.parquet").column("id").to_pylist() == ["o2", "o3", "o4"]
    assert entry["rows"] == 7
    assert {v["name"] for v in manifest["views"]} == {"obs", "pat"}  # the view not run now is kept
    assert (out / "pat.parquet").is_file() and (out / "obs.parquet").is_file()


def test_an_incremental_duckdb_run_appends(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_to_folder(
        [named(OBSERVATION_VIEW)], LocalSource(folder), "duckdb", out, started=dt.datetime(2026, 1, 4, tzinfo=dt.UTC)
    )
    run_to_folder([named(OBSERVATION_VIEW)], LocalSource(folder), "duckdb", out, since="last")
    with duckdb.connect(str(out / "views.duckdb"), read_only=True) as db:
        assert db.sql("select id from obs order by id").fetchall() == [
            ("o1",),
            ("o2",),
            ("o3",),
            ("o3",),
            ("o4",),
            ("o4",),
        ]


def test_a_changed_view_runs_in_full(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_to_folder(
        [named(OBSERVATION_VIEW)], LocalSource(folder), "ndjson", out, started=dt.datetime(2026, 1, 9, tzinfo=dt.UTC)
    )
    changed = OBSERVATION_VIEW | {"description": "changed"}
    manifest = run_to_folder([named(changed)], LocalSource(folder), "ndjson", out, since="last")
    assert manifest["views"][0]["files"] == [
        {"file": "obs.ndjson", "rows": 4, "since": None, "transactionTime": manifest["transactionTime"]}
    ]


def test_since_last_needs_a_manifest(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no manifest.json"):
        run_to_folder([named(PATIENT_VIEW)], LocalSource(folder), "csv", tmp_path / "new", since="last")
    assert not (tmp_path / "new").exists()


def test_a_folder_that_is_not_ours_is_not_replaced(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"without manifest.json"):
        run_to_folder([named(PATIENT_VIEW)], LocalSource(folder), "csv", out)
    run_to_folder([named(PATIENT_VIEW)], LocalSource(tmp_path / "export"), "csv", tmp_path / "ours")
    (tmp_path / "ours" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match=r"does not list: notes.txt"):
        run_to_folder([named(PATIENT_VIEW)], LocalSource(folder), "csv", tmp_path / "ours")
    assert (out / "notes.txt").read_text() == "mine" and (tmp_path / "ours" / "notes.txt").is_file()


# -- sources ----------------------------------------------------------------------------------------------------


def test_a_bundle_file_and_a_bulk_folder_give_the_same_rows(folder: Path, tmp_path: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in RESOURCES]}
    (tmp_path / "b.json").write_bytes(orjson.dumps(bundle))
    view = named(OBSERVATION_VIEW)
    from_bundle = io.BytesIO()
    from_folder = io.BytesIO()
    run_to_stdout(view, LocalSource(tmp_path / "b.json"), "ndjson", from_bundle)
    run_to_stdout(view, LocalSource(folder), "ndjson", from_folder)
    assert from_bundle.getvalue() == from_folder.getvalue() and from_bundle.getvalue().count(b"\n") == 4


def test_a_folder_file_named_for_another_type_is_not_read(folder: Path) -> None:
    (folder / "Patient.ndjson").write_text("not json at all\n")  # never opened by an Observation view
    (folder / "notes.txt").write_text("not an ndjson file: skipped")
    assert run_to_stdout(named(OBSERVATION_VIEW), LocalSource(folder), "csv", io.BytesIO()) == 4
    with pytest.raises(InputError, match="line 1: not JSON") as caught:
        run_to_stdout(named(PATIENT_VIEW), LocalSource(folder), "csv", io.BytesIO())
    assert caught.value.source.endswith("Patient.ndjson")


def test_lines_are_bounded_and_must_be_resources(tmp_path: Path) -> None:
    path = write_ndjson(tmp_path / "x.ndjson", [obs(1), obs(2, status="x" * 500)])
    with pytest.raises(InputError, match="line 2 is longer than the limit of 400 bytes"):
        list(LocalSource(path, max_line_bytes=400).resources("Observation", None))
    path.write_text('{"resourceType": "Observation"}\n\n[1, 2]\n')
    with pytest.raises(InputError, match="line 3: not a JSON object"):
        list(LocalSource(path).resources("Observation", None))


def test_a_link_in_a_folder_is_refused(folder: Path, tmp_path: Path) -> None:
    (folder / "Other.ndjson").symlink_to(folder / "Observation.ndjson")
    with pytest.raises(InputError, match="link"):
        list(LocalSource(folder).resources("Observation", None))
