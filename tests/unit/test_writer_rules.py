"""The CSV and view writers' rules, exactly: pull's CSV (columns, rows, every cell defused, CRLF) and the views'
outputs (each column's type, the exact bytes of CSV and NDJSON, Parquet and DuckDB types, a value of the wrong
type refused with its message, the names of the outputs, files written whole or not at all, the folder's
manifest and its incremental runs)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from casebridge.errors import InputError
from casebridge.pull import PulledReports, csv_columns, csv_rows, to_csv
from casebridge.views import (
    NamedView,
    ResourceList,
    ViewEvaluationError,
    read_view,
    run_to_file,
    run_to_folder,
    run_to_stdout,
    view_digest,
)
from casebridge.views._outputs import (
    BATCH_ROWS,
    Column,
    _carry,
    _Mismatch,
    _swap,
    _typed_row,
    _value,
    arrow_schema,
    columns_of,
    instant,
    output_name,
    read_manifest,
    write_csv,
    write_duckdb,
    write_parquet,
    write_stream,
)
from tests.unit.test_csv_cell import CELLS

# -- pull's CSV -------------------------------------------------------------------------------------------------

REPORT_COLUMNS = (
    "diagnosticreport_id",
    "subject_ref",
    "category_code",
    "category_system",
    "category_display",
    "code_code",
    "code_system",
    "code_display",
    "code_text",
    "effectivedatetime",
    "effectiveperiod_start",
    "effectiveperiod_end",
    "issued",
    "status",
    "conclusion",
    "conclusioncode_code",
    "conclusioncode_system",
    "conclusioncode_display",
    "conclusioncode_text",
    "result_ref",
    "specimen_ref",
    "imagingstudy_ref",
    "identifier_value",
    "results",
)
HEADER = ",".join(REPORT_COLUMNS) + "\r\n"


def test_csv_rows_defuses_formulas_and_ends_lines_with_crlf() -> None:
    assert csv_rows([["a", "=1+1"], ["+x", "b,c"]]) == "a,'=1+1\r\n'+x,\"b,c\"\r\n"


# Each cell as csv_rows writes it alone on its row: defused (an apostrophe before =, +, -, @, TAB, CR), quoted
# (RFC 4180: a comma, a quote doubled, CR or LF inside quotes), or as it is.
ROW_CELLS = [
    ("=1+1", "'=1+1\r\n"),
    ("+x", "'+x\r\n"),
    ("-x", "'-x\r\n"),
    ("@x", "'@x\r\n"),
    ("\tx", "'\tx\r\n"),
    ("\rx", '"\'\rx"\r\n'),
    ("a\rb", '"a\rb"\r\n'),
    ("a\nb", '"a\nb"\r\n'),
    ("a\r\nb", '"a\r\nb"\r\n'),
    ('say "hi"', '"say ""hi"""\r\n'),
    ("a,b", '"a,b"\r\n'),
    ("-5", "-5\r\n"),
    ("x", "x\r\n"),
    ("", '""\r\n'),  # an empty row's one cell is quoted, else the line would be an empty record
]


@pytest.mark.parametrize(("text", "line"), ROW_CELLS)
def test_csv_rows_writes_each_cell_exactly(text: str, line: str) -> None:
    assert csv_rows([[text]]) == line


@pytest.mark.parametrize(("text", "cell"), [c for c in CELLS if c[0]])
def test_csv_rows_defuses_every_formula_lead(text: str, cell: str) -> None:
    quoted = '"' + cell + '"' if "\r" in cell else cell
    assert csv_rows([["r", text]]) == f"r,{quoted}\r\n"


def test_csv_columns_are_the_report_view_and_results() -> None:
    assert csv_columns() == REPORT_COLUMNS


REPORT: dict[str, Any] = {
    "resourceType": "DiagnosticReport",
    "id": "r1",
    "status": "final",
    "subject": {"reference": "Patient/p1"},
    "code": {"coding": [{"system": "http://loinc.org", "code": "11529-5", "display": "Surgical pathology study"}]},
    "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2", "display": "Missing one"}],
    "conclusion": "=1+1",
}
GLUCOSE: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
    "valueQuantity": {"value": 5.0, "unit": "mmol/L"},
}


def test_to_csv_writes_the_header_and_a_row_per_report_with_its_included_results() -> None:
    pulled = PulledReports(reports=[REPORT], included={"Observation/o1": GLUCOSE, "Patient/p1": {"id": "p1"}})
    row = (
        "r1,p1,,,,11529-5,http://loinc.org,Surgical pathology study,,,,,,final,'=1+1,,,,,"
        '"[""o1"",""o2""]",[],[],,Glucose [2345-7]: 5 mmol/L; Missing one: (not included)\r\n'
    )
    assert to_csv(pulled) == HEADER + row


def test_to_csv_of_no_report_is_the_header() -> None:
    assert to_csv(PulledReports()) == HEADER


# -- the views' outputs -----------------------------------------------------------------------------------------

PATIENTS: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "patients",
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "id"},
                {"name": "active", "path": "active"},
                {"name": "born", "path": "birthDate"},
                {"name": "births", "path": "multipleBirth.ofType(integer)"},
                {"name": "died", "path": "deceased.ofType(dateTime)"},
                {"name": "family", "path": "name.first().family"},
                {"name": "given", "path": "name.given", "collection": True},
                {"name": "names", "path": "name", "collection": True},
                {"name": "marital", "path": "maritalStatus"},
                {"name": "weight", "path": "extension.where(url='w').value.ofType(decimal)"},
            ]
        }
    ],
}
PATIENT_ROWS: list[dict[str, Any]] = [
    {
        "resourceType": "Patient",
        "id": "a",
        "active": True,
        "birthDate": "2001-02",
        "multipleBirthInteger": 2,
        "deceasedDateTime": "2020-01-02T03:04:05+01:00",
        "name": [{"family": 'O\'Neil, "Jr"', "given": ["Ann", "=B"]}],
        "maritalStatus": {"text": "M"},
        "extension": [{"url": "w", "valueDecimal": 2}],
    },
    {"resourceType": "Patient", "id": "b", "active": False, "multipleBirthInteger": 0},
    {"resourceType": "Observation", "id": "o"},  # another type: not this view's
    {"resourceType": "Patient", "id": "c", "extension": [{"url": "w", "valueDecimal": -0.5}]},
]


def named(view: dict[str, Any]) -> NamedView:
    return NamedView(view["name"], read_view(view), view_digest(view))


def test_each_column_is_typed_from_its_path_or_its_declared_type() -> None:
    view = {
        "name": "v",
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "id"},
                    {"name": "n", "path": "id", "type": "positiveInt"},
                    {"name": "u", "path": "id", "type": "unsignedInt"},
                    {"name": "big", "path": "id", "type": "integer64"},
                    {"name": "code", "path": "gender"},
                    {"name": "sys", "path": "id", "type": "System.String"},
                    {"name": "when", "path": "meta.lastUpdated"},
                    {"name": "ref", "path": "managingOrganization"},
                    {"name": "untyped", "path": "id & gender"},
                ]
            },
            {"column": [{"name": "d", "path": "id", "type": "decimal"}]},
            {"forEach": "name", "column": [{"name": "given", "path": "given", "collection": True}]},
        ],
    }
    assert [(c.name, c.fhir_type, c.collection, c.kind) for c in columns_of(read_view(view))] == [
        ("id", "string", False, "text"),
        ("n", "positiveInt", False, "integer"),
        ("u", "unsignedInt", False, "integer"),
        ("big", "integer64", False, "integer"),
        ("code", "code", False, "text"),
        ("sys", "System.String", False, "text"),
        ("when", "instant", False, "text"),
        ("ref", "Reference", False, "json"),
        ("untyped", None, False, "text"),
        ("d", "decimal", False, "decimal"),
        ("given", "string", True, "text"),
    ]


def test_a_union_types_each_column_from_its_first_branch() -> None:
    view = {
        "name": "v",
        "resource": "Patient",
        "select": [
            {
                "unionAll": [
                    {"column": [{"name": "x", "path": "active"}]},
                    {"column": [{"name": "x", "path": "active", "type": "string"}]},
                ]
            }
        ],
    }
    assert [(c.name, c.fhir_type, c.kind) for c in columns_of(read_view(view))] == [("x", "boolean", "boolean")]


def test_csv_bytes_typed_quoted_and_defused() -> None:
    stream = io.BytesIO()
    assert run_to_stdout(named(PATIENTS), ResourceList(PATIENT_ROWS), "csv", stream) == 3
    assert stream.getvalue() == (
        b"id,active,born,births,died,family,given,names,marital,weight\r\n"
        b'a,true,2001-02,2,2020-01-02T03:04:05+01:00,"O\'Neil, ""Jr""","[""Ann"",""=B""]",'
        b'"[{""family"":""O\'Neil, \\""Jr\\"""",""given"":[""Ann"",""=B""]}]","{""text"":""M""}",2.0\r\n'
        b"b,false,,0,,,[],[],,\r\n"
        b"c,,,,,,[],[],,-0.5\r\n"
    )


def test_ndjson_bytes_every_column_present_null_when_empty() -> None:
    stream = io.BytesIO()
    assert run_to_stdout(named(PATIENTS), ResourceList(PATIENT_ROWS), "ndjson", stream) == 3
    assert stream.getvalue() == (
        b'{"id":"a","active":true,"born":"2001-02","births":2,"died":"2020-01-02T03:04:05+01:00",'
        b'"family":"O\'Neil, \\"Jr\\"","given":["Ann","=B"],"names":[{"family":"O\'Neil, \\"Jr\\"",'
        b'"given":["Ann","=B"]}],"marital":{"text":"M"},"weight":2.0}\n'
        b'{"id":"b","active":false,"born":null,"births":0,"died":null,"family":null,"given":[],"names":[],'
        b'"marital":null,"weight":null}\n'
        b'{"id":"c","active":null,"born":null,"births":null,"died":null,"family":null,"given":[],"names":[],'
        b'"marital":null,"weight":-0.5}\n'
    )


FAMILY: dict[str, Any] = {
    "name": "family",
    "resource": "Patient",
    "select": [{"column": [{"name": "family", "path": "name.family"}]}],
}


@pytest.mark.parametrize(
    ("family", "line"),
    [
        ("=1+1", b"'=1+1\r\n"),
        ("+1", b"'+1\r\n"),
        ("-x", b"'-x\r\n"),
        ("@x", b"'@x\r\n"),
        ("\tx", b"'\tx\r\n"),
        ("\rx", b'"\'\rx"\r\n'),
        ("-1.5", b"-1.5\r\n"),
        ("a\nb", b'"a\nb"\r\n'),
        ("plain", b"plain\r\n"),
    ],
)
def test_a_view_csv_cell_is_defused_and_quoted_exactly(family: str, line: bytes) -> None:
    stream = io.BytesIO()
    resources = [{"resourceType": "Patient", "name": [{"family": family}]}]
    assert run_to_stdout(named(FAMILY), ResourceList(resources), "csv", stream) == 1
    assert stream.getvalue() == b"family\r\n" + line


def test_write_csv_leaves_the_stream_open_and_counts_rows() -> None:
    stream = io.BytesIO()
    assert write_csv(stream, named(FAMILY), [("x",), (None,), (True,), (1.5,), ([1, "a"],), ({"k": 1},)]) == 6
    stream.write(b"more")  # still the caller's
    assert stream.getvalue() == b'family\r\nx\r\n""\r\ntrue\r\n1.5\r\n"[1,""a""]"\r\n"{""k"":1}"\r\nmore'


def test_write_stream_knows_ndjson_and_csv_only() -> None:
    with pytest.raises(ValueError, match=r"^parquet is not written to a stream$"):
        write_stream("parquet", io.BytesIO(), named(FAMILY), [])


def column(kind: str, fhir_type: str | None = None) -> Column:
    return Column("c", fhir_type, False, kind)


# (kind, FHIR type, value, the value every format starts from)
FITTING = [
    ("boolean", "boolean", True, True),
    ("boolean", "boolean", False, False),
    ("integer", "integer", 0, 0),
    ("integer", "integer64", -(2**40), -(2**40)),
    ("integer", "integer64", -(2**63), -(2**63)),  # the bounds of a 64-bit integer
    ("integer", "integer64", 2**63 - 1, 2**63 - 1),
    ("decimal", "decimal", 3, 3.0),  # an integer in a decimal column: a float
    ("decimal", "decimal", -0.5, -0.5),
    ("text", "string", "x", "x"),
    ("text", None, True, "true"),  # a number or boolean in a text column: its JSON text
    ("text", "string", False, "false"),
    ("text", "string", 7, "7"),
    ("text", "string", 1.25, "1.25"),
    ("json", "CodeableConcept", {"text": "t"}, {"text": "t"}),
    ("json", "HumanName", "anything", "anything"),
    ("integer", "integer", None, None),
    ("text", "string", None, None),
]


@pytest.mark.parametrize(("kind", "fhir_type", "value", "typed"), FITTING)
def test_a_fitting_value_is_typed(kind: str, fhir_type: str | None, value: Any, typed: Any) -> None:
    out = _value(column(kind, fhir_type), value)
    assert out == typed and type(out) is type(typed)


# (kind, FHIR type, value, the exact message)
MISFITS = [
    ("integer", "integer", "x", "column 'c' (integer): 'x' is not a integer"),
    ("integer", "positiveInt", True, "column 'c' (positiveInt): True is not a integer"),
    ("integer", "integer", 1.5, "column 'c' (integer): 1.5 is not a integer"),
    ("integer", "integer64", 2**63, "column 'c' (integer64): 9223372036854775808 is not a 64-bit integer"),
    ("integer", "integer", -(2**63) - 1, "column 'c' (integer): -9223372036854775809 is not a 64-bit integer"),
    ("boolean", "boolean", 1, "column 'c' (boolean): 1 is not a boolean"),
    ("boolean", "boolean", "true", "column 'c' (boolean): 'true' is not a boolean"),
    ("decimal", "decimal", "1", "column 'c' (decimal): '1' is not a decimal"),
    ("decimal", "decimal", True, "column 'c' (decimal): True is not a decimal"),
    ("text", "string", {"a": 1}, "column 'c' (string): an object is not a text"),
    ("text", None, [1], "column 'c' (text): a list is not a text"),
    ("text", "code", b"x", "column 'c' (code): b'x' is not a text"),
]


@pytest.mark.parametrize(("kind", "fhir_type", "value", "message"), MISFITS)
def test_a_value_of_the_wrong_type_is_refused(kind: str, fhir_type: str | None, value: Any, message: str) -> None:
    wanted = column(kind, fhir_type)
    with pytest.raises(_Mismatch) as caught:
        _value(wanted, value)
    assert str(caught.value) == message and caught.value.column is wanted


def refusal(view: dict[str, Any], resources: list[dict[str, Any]]) -> ViewEvaluationError:
    stream = io.BytesIO()
    with pytest.raises(ViewEvaluationError) as caught:
        run_to_stdout(named(view), ResourceList(resources), "ndjson", stream)
    assert stream.getvalue() == b""  # nothing written
    return caught.value


def one_column(name: str, **spec: Any) -> dict[str, Any]:
    return {"name": "v", "resource": "Patient", "select": [{"column": [{"name": name, **spec}]}]}


def test_a_wrong_value_names_the_view_the_column_and_the_resource() -> None:
    caught = refusal(
        one_column("n", path="gender", type="integer"),
        [{"resourceType": "Patient", "id": "a"}, {"resourceType": "Patient", "id": "b", "gender": "male"}],
    )
    message = "column 'n' (integer): 'male' is not a integer"
    assert str(caught) == f"view 'v': {message}"
    assert caught.source == "Patient/b"
    assert [(p.location, p.message) for p in caught.problems] == [("view 'v' column 'n'", message)]


def test_each_value_of_a_collection_is_checked() -> None:
    caught = refusal(
        one_column("given", path="name.given", type="integer", collection=True),
        [{"resourceType": "Patient", "id": "a", "name": [{"given": ["x"]}]}],
    )
    assert str(caught) == "view 'v': column 'given' (integer): 'x' is not a integer"
    assert caught.source == "Patient/a"


def test_an_object_in_an_untyped_column_is_refused() -> None:
    caught = refusal(
        one_column("x", path="extension.value"),
        [{"resourceType": "Patient", "id": "a", "extension": [{"url": "u", "valueCoding": {"code": "c"}}]}],
    )
    assert str(caught) == "view 'v': column 'x' (text): an object is not a text"


def test_a_resource_the_view_cannot_read_names_the_view() -> None:
    caught = refusal(
        one_column("g", path="name.given"),
        [
            {"resourceType": "Patient", "id": "a"},
            {"resourceType": "Patient", "id": "b", "name": [{"given": ["x", "y"]}]},
        ],
    )
    message = "Patient/b: column 'g' gives 2 values; only a column with collection: true may"
    assert str(caught) == f"view 'v': {message}"
    assert caught.source == "Patient/b"
    assert [(p.location, p.message) for p in caught.problems] == [("select[0].column[0].path", message)]


def test_a_collection_of_decimals_is_floats_and_untyped_scalars_are_text() -> None:
    resources = [
        {"resourceType": "Patient", "extension": [{"url": "a", "valueInteger": 2}, {"url": "b", "valueInteger": -3}]},
        {"resourceType": "Patient", "extension": [{"url": "a", "valueBoolean": True}]},
    ]
    view = {
        "name": "v",
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "w", "path": "extension.value.ofType(integer)", "type": "decimal", "collection": True},
                    {"name": "x", "path": "extension.value.ofType(boolean)", "collection": True, "type": "string"},
                ]
            }
        ],
    }
    stream = io.BytesIO()
    assert run_to_stdout(named(view), ResourceList(resources), "ndjson", stream) == 2
    assert stream.getvalue() == b'{"w":[2.0,-3.0],"x":[]}\n{"w":[],"x":["true"]}\n'


# -- names, instants, schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fallback", "name"),
    [
        ("my-file.v2", "my_file_v2"),
        ("Obs", "Obs"),
        ("a-1", "a_1"),
        ("1st", "view_1st"),
        ("_x", "view__x"),
        ("", "view_"),
    ],
)
def test_a_view_without_a_name_is_named_from_its_file(fallback: str, name: str) -> None:
    plan = read_view({"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]})
    assert output_name(plan, fallback) == name


def test_a_named_view_keeps_its_name() -> None:
    assert output_name(read_view(FAMILY), "other") == "family"


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (dt.datetime(2026, 3, 4, 5, 6, 7, 999_999, tzinfo=dt.UTC), "2026-03-04T05:06:07Z"),  # truncated, not rounded
        (dt.datetime(2026, 3, 4, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))), "2026-03-03T23:00:00Z"),
    ],
)
def test_an_instant_is_utc_to_the_second(moment: dt.datetime, text: str) -> None:
    assert instant(moment) == text


def test_the_arrow_schema_carries_the_types_and_the_fhir_type() -> None:
    schema = arrow_schema(named(PATIENTS))
    assert [(f.name, f.type, f.metadata) for f in schema] == [
        ("id", pa.string(), {b"fhir_type": b"string"}),
        ("active", pa.bool_(), {b"fhir_type": b"boolean"}),
        ("born", pa.string(), {b"fhir_type": b"date"}),
        ("births", pa.int64(), {b"fhir_type": b"integer"}),
        ("died", pa.string(), {b"fhir_type": b"dateTime"}),
        ("family", pa.string(), {b"fhir_type": b"string"}),
        ("given", pa.list_(pa.string()), {b"fhir_type": b"string"}),
        ("names", pa.list_(pa.string()), {b"fhir_type": b"HumanName"}),
        ("marital", pa.string(), {b"fhir_type": b"CodeableConcept"}),
        ("weight", pa.float64(), {b"fhir_type": b"decimal"}),
    ]
    untyped = arrow_schema(named(one_column("x", path="id & gender")))
    assert [(f.name, f.type, f.metadata) for f in untyped] == [("x", pa.string(), None)]


def test_parquet_rows_are_typed_and_objects_are_json_text(tmp_path: Path) -> None:
    target = tmp_path / "p.parquet"
    assert run_to_file([named(PATIENTS)], ResourceList(PATIENT_ROWS), "parquet", target) == {"patients": 3}
    assert pq.read_table(target).to_pylist() == [
        {
            "id": "a",
            "active": True,
            "born": "2001-02",
            "births": 2,
            "died": "2020-01-02T03:04:05+01:00",
            "family": 'O\'Neil, "Jr"',
            "given": ["Ann", "=B"],
            "names": ['{"family":"O\'Neil, \\"Jr\\"","given":["Ann","=B"]}'],
            "marital": '{"text":"M"}',
            "weight": 2.0,
        },
        {
            "id": "b",
            "active": False,
            "born": None,
            "births": 0,
            "died": None,
            "family": None,
            "given": [],
            "names": [],
            "marital": None,
            "weight": None,
        },
        {
            "id": "c",
            "active": None,
            "born": None,
            "births": None,
            "died": None,
            "family": None,
            "given": [],
            "names": [],
            "marital": None,
            "weight": -0.5,
        },
    ]


@pytest.mark.parametrize(("count", "groups"), [(BATCH_ROWS - 1, 1), (BATCH_ROWS, 1), (BATCH_ROWS + 1, 2)])
def test_parquet_is_written_in_batches_of_at_most_batch_rows(tmp_path: Path, count: int, groups: int) -> None:
    target = tmp_path / "p.parquet"
    rows = ((str(i),) for i in range(count))
    assert write_parquet(target, named(FAMILY), rows) == count
    meta = pq.ParquetFile(target).metadata
    assert (meta.num_rows, meta.num_row_groups) == (count, groups)
    assert meta.row_group(0).num_rows == min(count, BATCH_ROWS)
    ids = pq.read_table(target).column("family").to_pylist()
    assert ids[0] == "0" and ids[-1] == str(count - 1) and len(ids) == count


def test_an_empty_parquet_file_has_the_columns(tmp_path: Path) -> None:
    target = tmp_path / "p.parquet"
    assert run_to_file([named(PATIENTS)], ResourceList([]), "parquet", target) == {"patients": 0}
    table = pq.read_table(target)
    assert table.num_rows == 0 and table.column_names == [c["name"] for c in PATIENTS["select"][0]["column"]]


def test_duckdb_tables_are_typed(tmp_path: Path) -> None:
    target = tmp_path / "v.duckdb"
    family = named(FAMILY)
    assert run_to_file([named(PATIENTS), family], ResourceList(PATIENT_ROWS), "duckdb", target) == {
        "patients": 3,
        "family": 3,
    }
    with duckdb.connect(str(target), read_only=True) as db:
        assert db.sql("describe patients").fetchall()[:4] == [
            ("id", "VARCHAR", "YES", None, None, None),
            ("active", "BOOLEAN", "YES", None, None, None),
            ("born", "VARCHAR", "YES", None, None, None),
            ("births", "BIGINT", "YES", None, None, None),
        ]
        assert db.sql("select id, names, marital, weight from patients order by id").fetchall() == [
            ("a", ['{"family":"O\'Neil, \\"Jr\\"","given":["Ann","=B"]}'], '{"text":"M"}', 2.0),
            ("b", [], None, None),
            ("c", [], None, -0.5),
        ]
        assert db.sql("select family from family order by family").fetchall() == [('O\'Neil, "Jr"',), (None,), (None,)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.duckdb"]


# -- one file -------------------------------------------------------------------------------------------------


def family_rows(*families: str, updated: str = "2026-01-05T00:00:00Z") -> ResourceList:
    return ResourceList(
        [
            {"resourceType": "Patient", "id": f"p{i}", "meta": {"lastUpdated": updated}, "name": [{"family": f}]}
            for i, f in enumerate(families)
        ]
    )


def refused(call: Any, *args: Any, **kwargs: Any) -> InputError:
    with pytest.raises(InputError) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(("count", "fmt"), [(0, "csv"), (2, "ndjson"), (2, "parquet")])
def test_one_file_holds_one_view(tmp_path: Path, count: int, fmt: str) -> None:
    target = tmp_path / f"a\x1bb.{fmt}"  # the name shown with its control character escaped
    caught = refused(run_to_file, [named(FAMILY)] * count, family_rows("x"), fmt, target)
    assert str(caught) == f"one {fmt} file holds one view, not {count}: give a folder"
    assert caught.source == str(tmp_path / f"a\\x1bb.{fmt}")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    target = tmp_path / "x\x1b.csv"
    target.mkdir()
    caught = refused(run_to_file, [named(FAMILY)], family_rows("x"), "csv", target)
    assert (str(caught), caught.source) == ("a folder, not a file", str(tmp_path / "x\\x1b.csv"))


def test_two_views_whose_names_differ_in_case_only_are_refused(tmp_path: Path) -> None:
    views = [named(FAMILY), named({**FAMILY, "name": "Pat"}), named({**FAMILY, "name": "FAMILY"})]
    views.append(named({**FAMILY, "name": "pat"}))
    caught = refused(run_to_file, views, family_rows("x"), "duckdb", tmp_path / "v\x1b.duckdb")
    assert str(caught) == "two views write the same output (names ignore case): family, pat"
    assert caught.source == str(tmp_path / "v\\x1b.duckdb")
    assert list(tmp_path.iterdir()) == []


def test_a_file_is_written_in_new_folders_and_replaces_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f.csv"
    assert run_to_file([named(FAMILY)], family_rows("x", "y"), "csv", target) == {"family": 2}
    assert target.read_bytes() == b"family\r\nx\r\ny\r\n"
    assert run_to_file([named(FAMILY)], family_rows("z"), "csv", target) == {"family": 1}
    assert target.read_bytes() == b"family\r\nz\r\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.csv"]


BAD = ResourceList(
    [
        {"resourceType": "Patient", "id": "ok", "name": [{"family": "x"}]},
        {"resourceType": "Patient", "id": "bad", "name": [{"family": "x"}, {"family": "y"}]},
    ]
)


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet", "duckdb"])
def test_a_failure_leaves_the_previous_file_as_it_was(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"f.{fmt}"
    run_to_file([named(FAMILY)], family_rows("old"), fmt, target)
    before = target.read_bytes()
    with pytest.raises(ViewEvaluationError, match="Patient/bad: column 'family' gives 2 values"):
        run_to_file([named(FAMILY)], BAD, fmt, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f.{fmt}"]  # no temporary, no DuckDB write-ahead log


# -- a folder -------------------------------------------------------------------------------------------------

STARTED = dt.datetime(2026, 1, 1, 10, 0, 0, 500, tzinfo=dt.UTC)
FAMILY_HASH = view_digest(FAMILY)


def test_the_manifest_file_is_exact(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = run_to_folder([named(FAMILY)], family_rows("x"), "csv", out, started=STARTED)
    text = (out / "manifest.json").read_text()
    assert text == (
        "{\n"
        '  "format": "csv",\n'
        '  "source": "resources",\n'
        '  "transactionTime": "2026-01-01T10:00:00Z",\n'
        '  "since": null,\n'
        '  "started": "2026-01-01T10:00:00Z",\n'
        '  "views": [\n'
        "    {\n"
        '      "name": "family",\n'
        '      "resource": "Patient",\n'
        f'      "hash": "{FAMILY_HASH}",\n'
        '      "format": "csv",\n'
        '      "rows": 1,\n'
        '      "files": [\n'
        "        {\n"
        '          "file": "family.csv",\n'
        '          "rows": 1,\n'
        '          "since": null,\n'
        '          "transactionTime": "2026-01-01T10:00:00Z"\n'
        "        }\n"
        "      ]\n"
        "    }\n"
        "  ]\n"
        "}\n"
    )
    assert json.loads(text) == manifest
    assert (out / "family.csv").read_bytes() == b"family\r\nx\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_without_a_start_is_stamped_now(tmp_path: Path) -> None:
    before = dt.datetime.now(dt.UTC).replace(microsecond=0)
    manifest = run_to_folder([named(FAMILY)], family_rows("x"), "ndjson", tmp_path / "out")
    after = dt.datetime.now(dt.UTC)
    stamp = dt.datetime.fromisoformat(manifest["started"])
    assert before <= stamp <= after and manifest["transactionTime"] == manifest["started"]


def test_each_view_gets_its_file_and_duckdb_one_database(tmp_path: Path) -> None:
    views = [named(FAMILY), named(PATIENTS)]
    rows = ResourceList(PATIENT_ROWS)
    for fmt, files in [
        ("ndjson", ["family.ndjson", "manifest.json", "patients.ndjson"]),
        ("parquet", ["family.parquet", "manifest.json", "patients.parquet"]),
        ("duckdb", ["manifest.json", "views.duckdb"]),
    ]:
        manifest = run_to_folder(views, rows, fmt, tmp_path / fmt, started=STARTED)
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == files
        assert [(v["name"], v["rows"], [(f["file"], f["rows"]) for f in v["files"]]) for v in manifest["views"]] == [
            ("family", 3, [(files[0] if fmt != "duckdb" else "views.duckdb", 3)]),
            ("patients", 3, [(files[2] if fmt != "duckdb" else "views.duckdb", 3)]),
        ]
    with duckdb.connect(str(tmp_path / "duckdb" / "views.duckdb"), read_only=True) as db:
        assert db.sql("select id from patients order by id").fetchall() == [("a",), ("b",), ("c",)]


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("2026-13-01", "since: '2026-13-01' is not a date (YYYY-MM-DD) or an instant (YYYY-MM-DDThh:mm:ssZ)"),
        ("2026-01-01T00:00:00", "since: '2026-01-01T00:00:00' needs its time zone (Z or +hh:mm)"),
    ],
)
def test_a_since_that_is_not_an_instant_is_refused(tmp_path: Path, since: str, message: str) -> None:
    out = tmp_path / "o\x1b"
    caught = refused(run_to_folder, [named(FAMILY)], family_rows("x"), "csv", out, since=since)
    assert (str(caught), caught.source) == (message, str(tmp_path / "o\\x1b"))
    assert list(tmp_path.iterdir()) == []


def test_since_last_needs_a_previous_manifest(tmp_path: Path) -> None:
    caught = refused(run_to_folder, [named(FAMILY)], family_rows("x"), "csv", tmp_path / "o\x1b", since="last")
    assert str(caught) == "--since last: no manifest.json in the output folder to take it from"
    assert caught.source == str(tmp_path / "o\\x1b")


def test_an_incremental_run_keeps_the_format(tmp_path: Path) -> None:
    out = tmp_path / "o\x1b"
    run_to_folder([named(FAMILY)], family_rows("x"), "csv", out, started=STARTED)
    caught = refused(run_to_folder, [named(FAMILY)], family_rows("x"), "ndjson", out, since="last")
    assert str(caught) == "the folder holds csv files; an incremental run adds the same format, not ndjson"
    assert caught.source == str(tmp_path / "o\\x1b")
    caught = refused(run_to_folder, [named(FAMILY)], family_rows("x"), "ndjson", out, since="2026-01-01")
    assert str(caught).startswith("the folder holds csv files")
    # A full run may change the format: the folder is replaced.
    run_to_folder([named(FAMILY)], family_rows("x"), "ndjson", out)
    assert sorted(p.name for p in out.iterdir()) == ["family.ndjson", "manifest.json"]


def test_a_first_run_since_a_moment_takes_the_resources_changed_since(tmp_path: Path) -> None:
    rows = ResourceList(
        [
            {"resourceType": "Patient", "meta": {"lastUpdated": "2026-01-01T23:59:59Z"}, "name": [{"family": "old"}]},
            {"resourceType": "Patient", "meta": {"lastUpdated": "2026-01-02T00:00:00Z"}, "name": [{"family": "new"}]},
        ]
    )
    manifest = run_to_folder([named(FAMILY)], rows, "csv", tmp_path / "out", since="2026-01-02", started=STARTED)
    assert manifest["since"] == "2026-01-02"
    assert manifest["views"][0]["files"] == [
        {"file": "family.csv", "rows": 1, "since": "2026-01-02", "transactionTime": "2026-01-01T10:00:00Z"}
    ]
    assert (tmp_path / "out" / "family.csv").read_bytes() == b"family\r\nnew\r\n"


def incremental(tmp_path: Path, fmt: str) -> Path:
    """A folder of a first run at STARTED, then a run since then: a delta file."""
    out = tmp_path / "out"
    run_to_folder([named(FAMILY)], family_rows("a", updated="2025-12-31T00:00:00Z"), fmt, out, started=STARTED)
    return out


def test_an_incremental_run_adds_a_delta_file_and_links_the_previous_ones(tmp_path: Path) -> None:
    out = incremental(tmp_path, "csv")
    keep = tmp_path / "keep"
    os.link(out / "family.csv", keep)  # its inode stays in use: a copy could not get its number
    later = STARTED + dt.timedelta(days=1)
    run_to_folder([named(FAMILY)], family_rows("b"), "csv", out, since="last", started=later)
    manifest = run_to_folder([named(FAMILY)], family_rows("c"), "csv", out, since="last", started=later)
    assert manifest["since"] == "2026-01-02T10:00:00Z"
    assert manifest["views"][0]["rows"] == 3
    assert manifest["views"][0]["files"] == [
        {"file": "family.csv", "rows": 1, "since": None, "transactionTime": "2026-01-01T10:00:00Z"},
        {"file": "family.2.csv", "rows": 1, "since": "2026-01-01T10:00:00Z", "transactionTime": "2026-01-02T10:00:00Z"},
        {"file": "family.3.csv", "rows": 1, "since": "2026-01-02T10:00:00Z", "transactionTime": "2026-01-02T10:00:00Z"},
    ]
    assert [(out / f).read_bytes() for f in ("family.csv", "family.2.csv", "family.3.csv")] == [
        b"family\r\na\r\n",
        b"family\r\nb\r\n",
        b"family\r\nc\r\n",
    ]
    assert os.path.samefile(out / "family.csv", keep)  # carried by a hard link, never copied nor rewritten
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "out"]


def test_an_incremental_run_keeps_views_not_run_now(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_to_folder([named(FAMILY), named(PATIENTS)], ResourceList(PATIENT_ROWS), "ndjson", out, started=STARTED)
    manifest = run_to_folder([named(PATIENTS)], family_rows("x"), "ndjson", out, since="last")
    assert [(v["name"], v["rows"], len(v["files"])) for v in manifest["views"]] == [
        ("family", 3, 1),
        ("patients", 4, 2),
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "family.ndjson",
        "manifest.json",
        "patients.2.ndjson",
        "patients.ndjson",
    ]


def test_a_view_from_another_source_runs_in_full(tmp_path: Path) -> None:
    out = incremental(tmp_path, "csv")
    other = family_rows("b", updated="2025-01-01T00:00:00Z")
    other.name = "elsewhere"
    manifest = run_to_folder([named(FAMILY)], other, "csv", out, since="last")
    assert [(f["file"], f["rows"], f["since"]) for f in manifest["views"][0]["files"]] == [("family.csv", 1, None)]
    assert (out / "family.csv").read_bytes() == b"family\r\nb\r\n"
    assert manifest["views"][0]["rows"] == 1


def test_a_changed_view_replaces_its_delta_files(tmp_path: Path) -> None:
    out = incremental(tmp_path, "ndjson")
    run_to_folder([named(FAMILY)], family_rows("b"), "ndjson", out, since="last")
    assert sorted(p.name for p in out.iterdir()) == ["family.2.ndjson", "family.ndjson", "manifest.json"]
    changed = named({**FAMILY, "description": "changed"})
    manifest = run_to_folder([changed], family_rows("c"), "ndjson", out, since="last")
    assert manifest["views"][0]["hash"] == changed.digest
    assert [(f["file"], f["rows"], f["since"]) for f in manifest["views"][0]["files"]] == [("family.ndjson", 1, None)]
    assert sorted(p.name for p in out.iterdir()) == ["family.ndjson", "manifest.json"]
    assert (out / "family.ndjson").read_bytes() == b'{"family":"c"}\n'


def test_an_incremental_duckdb_run_appends_to_a_copy(tmp_path: Path) -> None:
    out = incremental(tmp_path, "duckdb")
    manifest = run_to_folder([named(FAMILY)], family_rows("b"), "duckdb", out, since="last")
    assert [(f["file"], f["rows"]) for f in manifest["views"][0]["files"]] == [
        ("views.duckdb", 1),
        ("views.duckdb", 1),
    ]
    with duckdb.connect(str(out / "views.duckdb"), read_only=True) as db:
        assert db.sql("select family from family order by family").fetchall() == [("a",), ("b",)]
    before = (out / "views.duckdb").read_bytes()
    inode = (out / "views.duckdb").stat().st_ino
    # A failure after the first view was appended to: the previous database is as it was.
    with pytest.raises(ViewEvaluationError):
        run_to_folder([named(FAMILY), named({**FAMILY, "name": "second"})], BAD, "duckdb", out, since="last")
    assert (out / "views.duckdb").read_bytes() == before and (out / "views.duckdb").stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # A changed view's table is replaced, not appended to.
    manifest = run_to_folder([named({**FAMILY, "title": "t"})], family_rows("c"), "duckdb", out, since="last")
    with duckdb.connect(str(out / "views.duckdb"), read_only=True) as db:
        assert db.sql("select family from family").fetchall() == [("c",)]
    assert [(f["file"], f["rows"]) for f in manifest["views"][0]["files"]] == [("views.duckdb", 1)]


# -- a folder replaced only if it is ours ---------------------------------------------------------------------


def ours(tmp_path: Path, manifest: Any, *files: str) -> Path:
    folder = tmp_path / "o\x1b"
    folder.mkdir()
    for name in files:
        (folder / name).write_text("x")
    (folder / "manifest.json").write_bytes(manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())
    return folder


def entry(*files: Any) -> dict[str, Any]:
    return {"name": "v", "files": [{"file": f} for f in files]}


@pytest.mark.parametrize(
    ("manifest", "files", "message"),
    [
        (b"{", (), "not JSON: unexpected end of data: line 1 column 2 (char 1)"),
        ([], (), "not a views manifest (no views list)"),
        ({"views": {}}, (), "not a views manifest (no views list)"),
        ({"views": ["x"]}, (), "views[0].files: not a list of objects"),
        ({"views": [{"files": {}}]}, (), "views[0].files: not a list of objects"),
        ({"views": [entry("a.csv"), {"files": ["a.csv"]}]}, ("a.csv",), "views[1].files: not a list of objects"),
        ({"views": [entry(3)]}, (), "views[0].files: 3 is not a file of the folder"),
        ({"views": [entry("../x.csv")]}, (), "views[0].files: '../x.csv' is not a file of the folder"),
        ({"views": [entry(".hidden")]}, (".hidden",), "views[0].files: '.hidden' is not a file of the folder"),
        ({"views": [entry("gone.csv")]}, (), "views[0].files: 'gone.csv' is not a file of the folder"),
        ({"views": [entry("a.csv")]}, ("a.csv",), "transactionTime: missing"),
        ({"views": [], "transactionTime": 3}, (), "transactionTime: missing"),
    ],
)
def test_a_manifest_that_is_not_ours_is_refused(
    tmp_path: Path, manifest: Any, files: tuple[str, ...], message: str
) -> None:
    folder = ours(tmp_path, manifest, *files)
    caught = refused(read_manifest, folder)
    assert (str(caught), caught.source) == (message, str(tmp_path / "o\\x1b" / "manifest.json"))


def test_a_folder_with_files_its_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    manifest = {"views": [entry("a.csv", "b.csv")], "transactionTime": "2026-01-01T00:00:00Z"}
    folder = ours(tmp_path, manifest, "a.csv", "b.csv", "f", "e", "d", "c", "b", "a")
    caught = refused(read_manifest, folder)
    assert str(caught) == "files its manifest does not list: a, b, c, d, e: not replaced"
    assert caught.source == str(tmp_path / "o\\x1b")
    (folder / "subfolder").mkdir()
    for name in "abcdef":
        (folder / name).unlink()
    assert str(refused(read_manifest, folder)) == "files its manifest does not list: subfolder: not replaced"
    (folder / "subfolder").rmdir()
    assert read_manifest(folder) == manifest


def test_a_folder_without_a_manifest_is_not_ours(tmp_path: Path) -> None:
    folder = tmp_path / "o\x1b"
    folder.mkdir()
    assert read_manifest(folder) is None  # empty: nothing to lose
    (folder / "notes.txt").write_text("mine")
    caught = refused(read_manifest, folder)
    assert str(caught) == "a folder without manifest.json (not a views output): not replaced"
    assert caught.source == str(tmp_path / "o\\x1b")
    assert read_manifest(tmp_path / "none") is None


def test_a_file_or_a_link_is_not_a_folder_to_replace(tmp_path: Path) -> None:
    (tmp_path / "f\x1b").write_text("x")
    caught = refused(read_manifest, tmp_path / "f\x1b")
    assert (str(caught), caught.source) == ("not a folder: not replaced", str(tmp_path / "f\\x1b"))
    out = tmp_path / "out"
    run_to_folder([named(FAMILY)], family_rows("x"), "csv", out, started=STARTED)
    (tmp_path / "link").symlink_to(out)
    assert str(refused(read_manifest, tmp_path / "link")) == "not a folder: not replaced"
    caught = refused(run_to_folder, [named(FAMILY)], family_rows("y"), "csv", tmp_path / "f\x1b")
    assert str(caught) == "not a folder: not replaced"
    assert (tmp_path / "f\x1b").read_text() == "x"


def test_a_folder_of_ours_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_to_folder([named(FAMILY), named(PATIENTS)], ResourceList(PATIENT_ROWS), "csv", out, started=STARTED)
    run_to_folder([named(FAMILY)], family_rows("y"), "ndjson", out, started=STARTED)
    assert sorted(p.name for p in out.iterdir()) == ["family.ndjson", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old folder removed, no temporary left


def test_a_manifest_is_read_up_to_64_mib(tmp_path: Path) -> None:
    folder = tmp_path / "o\x1b"
    folder.mkdir()
    with (folder / "manifest.json").open("wb") as fh:
        fh.truncate(64 * 1024 * 1024 + 1)  # one byte over (sparse: nothing is written)
    caught = refused(read_manifest, folder)
    assert str(caught) == "the file is larger than the limit of 67,108,864 bytes"
    assert caught.source == str(tmp_path / "o\\x1b" / "manifest.json")


class Watched(ResourceList):
    """Resources that note, as each is read, the names in ``where`` (the temporaries being written)."""

    def __init__(self, where: Path, resources: list[dict[str, Any]]) -> None:
        super().__init__(resources)
        self.where = where
        self.seen: list[list[str]] = []

    def resources(self, resource_type: str, since: str | None) -> Any:
        for resource in super().resources(resource_type, since):
            self.seen.append(sorted(p.name for p in self.where.iterdir()))
            yield resource


def test_a_file_is_written_under_a_hidden_temporary_name_beside_it(tmp_path: Path) -> None:
    source = Watched(tmp_path, [{"resourceType": "Patient", "name": [{"family": "x"}]}])
    run_to_file([named(FAMILY)], source, "csv", tmp_path / "f.csv")
    [[temporary]] = source.seen
    assert temporary.startswith(".f.csv.tmp-") and len(temporary) == len(".f.csv.tmp-") + 12
    assert int(temporary.removeprefix(".f.csv.tmp-"), 16) >= 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.csv"]


def test_a_folder_is_filled_under_a_hidden_temporary_name_beside_it(tmp_path: Path) -> None:
    parent = tmp_path / "a"  # made by the run
    for existing in ([], ["out"]):
        source = Watched(parent, [{"resourceType": "Patient", "name": [{"family": "x"}]}])
        run_to_folder([named(FAMILY)], source, "csv", parent / "out", started=STARTED)
        [[temporary, *others]] = source.seen
        assert others == existing
        assert temporary.startswith(".out.tmp-") and len(temporary) == len(".out.tmp-") + 12
        assert sorted(p.name for p in parent.iterdir()) == ["out"]


def test_a_file_that_cannot_be_linked_is_copied(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("previous")
    (tmp_path / "new").write_text("in the way")  # a link cannot replace a file: copied over it
    _carry(tmp_path / "old", tmp_path / "new")
    assert (tmp_path / "new").read_text() == "previous"
    assert (tmp_path / "new").stat().st_ino != (tmp_path / "old").stat().st_ino


def test_a_folder_whose_replacement_fails_is_put_back(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept").write_text("x")
    with pytest.raises(FileNotFoundError):
        _swap(tmp_path / "missing", out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "kept").read_text() == "x"


def test_a_changed_view_in_duckdb_keeps_the_other_tables(tmp_path: Path) -> None:
    out = tmp_path / "out"
    second = named({**FAMILY, "name": "second"})
    run_to_folder([named(FAMILY), second], family_rows("a"), "duckdb", out, started=STARTED)
    manifest = run_to_folder([named({**FAMILY, "title": "t"})], family_rows("b"), "duckdb", out, since="last")
    assert [(v["name"], v["files"][0]["file"], v["rows"]) for v in manifest["views"]] == [
        ("family", "views.duckdb", 1),
        ("second", "views.duckdb", 1),
    ]
    with duckdb.connect(str(out / "views.duckdb"), read_only=True) as db:
        assert db.sql("select family from family").fetchall() == [("b",)]
        assert db.sql("select family from second").fetchall() == [("a",)]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "views.duckdb"]


def test_csv_is_utf_8_whatever_the_locale() -> None:
    import locale

    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # a locale whose encoding is ASCII
    try:
        stream = io.BytesIO()
        write_csv(stream, named(FAMILY), [("Ærø ✓",)])
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert stream.getvalue() == "family\r\nÆrø ✓\r\n".encode()


TWO_TIMES = ResourceList(
    [
        {"resourceType": "Patient", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}, "name": [{"family": "old"}]},
        {"resourceType": "Patient", "meta": {"lastUpdated": "2026-02-01T00:00:00Z"}, "name": [{"family": "new"}]},
    ]
)


def test_standard_output_since_a_moment(tmp_path: Path) -> None:
    stream = io.BytesIO()
    assert run_to_stdout(named(FAMILY), TWO_TIMES, "ndjson", stream, since="2026-01-15") == 1
    assert stream.getvalue() == b'{"family":"new"}\n'


@pytest.mark.parametrize("fmt", ["csv", "duckdb"])
def test_a_file_since_a_moment(tmp_path: Path, fmt: str) -> None:
    target = tmp_path / f"f.{fmt}"
    assert run_to_file([named(FAMILY)], TWO_TIMES, fmt, target, since="2026-01-15") == {"family": 1}
    if fmt == "csv":
        assert target.read_bytes() == b"family\r\nnew\r\n"
    else:
        with duckdb.connect(str(target), read_only=True) as db:
            assert db.sql("select family from family").fetchall() == [("new",)]


def test_a_folder_is_written_in_new_folders_once_its_names_are_checked(tmp_path: Path) -> None:
    views = [named(FAMILY), named({**FAMILY, "name": "Family"})]
    caught = refused(run_to_folder, views, family_rows("x"), "csv", tmp_path / "a" / "o\x1b")
    assert str(caught) == "two views write the same output (names ignore case): family"
    assert caught.source == str(tmp_path / "a" / "o\\x1b")
    assert list(tmp_path.iterdir()) == []
    for _ in range(2):  # the parents made, then there
        run_to_folder([named(FAMILY)], family_rows("x"), "csv", tmp_path / "a" / "b" / "out", started=STARTED)
        assert (tmp_path / "a" / "b" / "out" / "family.csv").read_bytes() == b"family\r\nx\r\n"


def test_a_null_collection_stays_null() -> None:
    """The runner gives a collection a list ([] when empty); a null one (a row made by hand) stays null, and each
    value of a list is typed."""
    given = Column("given", "string", True, "text")
    births = Column("births", "integer", True, "integer")
    names = Column("names", "HumanName", True, "json")
    assert _typed_row([given, births, names], (None, [1, 2], None)) == (None, [1, 2], None)
    with pytest.raises(_Mismatch, match=r"^column 'births' \(integer\): 'x' is not a integer$"):
        _typed_row([given, births, names], (["x"], ["x"], None))


def test_null_columns_keep_their_arrow_types(tmp_path: Path) -> None:
    """A batch whose column has only nulls, a collection among them: typed by the schema, not inferred."""
    target = tmp_path / "p.parquet"
    rows = [tuple(None for _ in PATIENTS["select"][0]["column"])]
    assert write_parquet(target, named(PATIENTS), rows) == 1
    table = pq.read_table(target)
    assert table.schema.equals(arrow_schema(named(PATIENTS)), check_metadata=False)
    assert table.to_pylist() == [dict.fromkeys(table.column_names)]
    with duckdb.connect() as db:
        assert write_duckdb(db, named(PATIENTS), rows, append=False) == 1
        assert db.sql("select count(*), count(names), count(births) from patients").fetchall() == [(1, 0, 0)]
        kinds = [row[1] for row in db.sql("describe patients").fetchall()]
        assert kinds == [
            *("VARCHAR", "BOOLEAN", "VARCHAR", "BIGINT", "VARCHAR", "VARCHAR"),
            *("VARCHAR[]", "VARCHAR[]", "VARCHAR", "DOUBLE"),
        ]


def test_write_duckdb_leaves_no_registered_rows_on_the_connection() -> None:
    with duckdb.connect() as db:
        assert write_duckdb(db, named(FAMILY), [("a",)], append=False) == 1
        assert write_duckdb(db, named(FAMILY), [("b",), ("c",)], append=True) == 2
        assert db.sql("select family from family order by family").fetchall() == [("a",), ("b",), ("c",)]
        with pytest.raises(duckdb.CatalogException):
            db.sql("select * from casebridge_rows")


@pytest.mark.parametrize("fmt", ["ndjson", "csv", "parquet", "duckdb"])
def test_an_integer_beyond_64_bits_is_refused_naming_its_input(tmp_path: Path, fmt: str) -> None:
    """JSON readers give integers up to 2^64 - 1; Arrow's int64 failed on one with an OverflowError that named
    neither the resource nor the column. Every format refuses it the same way."""
    resources = [
        {"resourceType": "Patient", "id": "a", "multipleBirthInteger": 2**63 - 1},
        {"resourceType": "Patient", "id": "b", "multipleBirthInteger": 2**63},
    ]
    view = one_column("n", path="multipleBirth.ofType(integer)")
    with pytest.raises(ViewEvaluationError) as caught:
        run_to_file([named(view)], ResourceList(resources), fmt, tmp_path / f"v.{fmt}")
    assert str(caught.value) == "view 'v': column 'n' (integer): 9223372036854775808 is not a 64-bit integer"
    assert caught.value.source == "Patient/b"
    assert list(tmp_path.iterdir()) == []


def test_a_json_column_holds_the_json_text_of_any_value(tmp_path: Path) -> None:
    target = tmp_path / "p.parquet"
    view = named(one_column("x", path="maritalStatus"))
    assert write_parquet(target, view, [([1, {"a": 2}],), ({"b": True},), ("t",), (None,)]) == 4
    assert pq.read_table(target).column("x").to_pylist() == ['[1,{"a":2}]', '{"b":true}', "t", None]


def test_a_failure_after_a_view_was_appended_leaves_the_previous_database(tmp_path: Path) -> None:
    out = incremental(tmp_path, "duckdb")
    run_to_folder([named(FAMILY), named(GIVEN)], family_rows("b"), "duckdb", out, since="last")
    before = (out / "views.duckdb").read_bytes()
    keep = tmp_path / "keep"
    os.link(out / "views.duckdb", keep)
    # family gets its row appended (the copy's), then given fails: two given names where one column has one.
    two_given = ResourceList([{"resourceType": "Patient", "id": "x", "name": [{"family": "z", "given": ["a", "b"]}]}])
    with pytest.raises(ViewEvaluationError, match="Patient/x: column 'given' gives 2 values"):
        run_to_folder([named(FAMILY), named(GIVEN)], two_given, "duckdb", out, since="last")
    assert (out / "views.duckdb").read_bytes() == before and os.path.samefile(out / "views.duckdb", keep)


GIVEN: dict[str, Any] = {
    "name": "given",
    "resource": "Patient",
    "select": [{"column": [{"name": "given", "path": "name.given"}]}],
}


def test_an_instant_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "IST-5:30")  # a POSIX zone: no time zone files needed
    time.tzset()
    try:
        assert instant(dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)) == "2026-03-04T05:06:07Z"
    finally:
        monkeypatch.undo()
        time.tzset()
