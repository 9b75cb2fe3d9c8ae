"""File names printed escaped; a folder source's links out of it, broken links, FIFOs and devices reported and
never read; a FIFO or a device given as the file of a command refused at once."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import httpx
import pytest

from casebridge.domain.reader import validate_case
from casebridge.files import json_for_terminals, read_bounded, shown
from casebridge.ingest.job import prepare
from casebridge.ingest.report import summary
from casebridge.ingest.sources import CaseSource
from casebridge.mapping.engine import MappingSet
from casebridge.tools.synth import generate
from tests.paths import DATA_DIR, PROJECT_ROOT


def run(*args: str, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        cwd=PROJECT_ROOT,
        env={**os.environ, "CASEBRIDGE_LOCK_DIR": str(tmp / "locks")},
        timeout=timeout,  # a FIFO that blocked would end the test here
        check=False,
    )


def hidden(text: str) -> list[str]:
    """The characters of ``text`` that no terminal line should carry: controls (but the line breaks), format
    characters, separators."""
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


def test_shown_escapes_controls_format_characters_and_undecodable_bytes() -> None:
    assert shown("x\n12 pushed, 0 failed.yaml") == "x\\n12 pushed, 0 failed.yaml"
    assert shown("a\x1b[2Jb\rc\td\x7fe\x9bf") == "a\\x1b[2Jb\\rc\\td\\x7fe\\x9bf"
    assert shown("evil\u202etxt.yaml\u2066\u200b\u2028\U000e0001") == (
        "evil\\u202etxt.yaml\\u2066\\u200b\\u2028\\U000e0001"
    )
    assert shown(os.fsdecode(b"case-\xff.yaml")) == "case-\\xff.yaml"  # a name that is not UTF-8
    assert shown(Path("Ωmega dir/cas é.yaml")) == "Ωmega dir/cas é.yaml"  # printable text is left as it is
    assert shown(shown("a\nb\x1b")) == shown("a\nb\x1b")  # escaping twice changes nothing
    assert shown("line one\nline two \x1b[1m", keep_newlines=True) == "line one\nline two \\x1b[1m"


def test_json_for_terminals_is_the_same_json_without_raw_controls() -> None:
    doc = {"location": "a\u202eb\x7f\x85\U000e0001\u2028c", "n": [1, 2]}
    data = json_for_terminals(json.dumps(doc, ensure_ascii=False, indent=2).encode())
    assert json.loads(data) == doc
    assert hidden(data.decode()) == []


def test_the_summary_prints_no_control_character_even_from_raw_rows() -> None:
    """A state written before locations were stored escaped still holds raw names: the summary escapes them."""
    row = {"key": "k", "location": "x\n3 pushed.yaml", "case_id": None, "on_server": False, "outcome": None}
    report: dict[str, Any] = {
        "cases": 1,
        "source": "/in\x1b[2J",
        "server": "http://h/fhir",
        "counts": {"pushed": 0, "invalid": 1, "failed": 0, "sending": 0, "pending": 0},
        "stale": 0,
        "stopped": None,
        "this_run": {"invalid": 1},
        "resources": {"created": 0, "already_there": 0, "uncertain": 0, "unanswered": 0},
        "timings": {"seconds": 0.1, "cases_per_second": 10, "push_p50_ms": None},
        "orphaned": [],
        "reasserted": [],
        "unsettled": [],
        "invalid": [{**row, "reason": "x\n3 pushed.yaml: malformed \x1b]0;title\x07"}],
        "failed": [],
        "unfinished": [],
        "warnings": [],
    }
    lines = summary(report)
    assert all(hidden(line) == [] and "\n" not in line for line in lines), lines
    assert "  invalid: x\\n3 pushed.yaml: malformed \\x1b]0;title\\x07" in lines


def mknod_null(path: Path) -> bool:
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        return False
    return True


def test_a_folder_reports_links_out_broken_links_and_special_files_and_reads_none_of_them(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.yaml"
    secret.write_text("case_id: from-outside\n")
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "a.yaml").write_text("case_id: a\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.yaml").write_text("case_id: inner\n")
    (folder / "b-out.yaml").symlink_to(secret)  # a link to a file out of the folder
    (folder / "c-relative.yaml").symlink_to(Path("..") / "outside" / "secret.yaml")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "d-through.yaml").symlink_to(Path("linked") / "secret.yaml")  # through a linked folder
    (folder / "e-broken.yaml").symlink_to(folder / "nothing.yaml")
    (folder / "f-loop.yaml").symlink_to(folder / "f-loop.yaml")
    os.mkfifo(folder / "g-fifo.yaml")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "h-socket.json"))
    (folder / "i-folder.yaml").mkdir()
    device = mknod_null(folder / "j-device.yaml")
    (folder / "k-inside.yaml").symlink_to(folder / "sub" / "inner.yaml")  # inside: read, as its own item
    (folder / "l-alias.yaml").symlink_to("a.yaml")  # inside, to a case of the folder: the same case twice
    (folder / "m-to-fifo.yaml").symlink_to("g-fifo.yaml")

    items = {Path(i.source).name: i for i in CaseSource(folder, max_bytes=10_000)}  # a blocked open would hang

    assert all(b"from-outside" not in i.data for i in items.values())  # nothing out of the folder is read
    reasons = {name: i.data.decode() for name, i in items.items() if i.suffix == ".refused"}
    for name in ("b-out.yaml", "c-relative.yaml", "d-through.yaml"):
        assert reasons[name] == "a link out of the source folder: not read"
    assert reasons["e-broken.yaml"] == "skipped: a broken link (what it names does not exist)"
    assert reasons["f-loop.yaml"].startswith("skipped: a link that cannot be followed")
    assert reasons["g-fifo.yaml"] == "skipped: a FIFO (named pipe), not a regular file: not read"
    assert reasons["m-to-fifo.yaml"] == reasons["g-fifo.yaml"]
    assert reasons["h-socket.json"] == "skipped: a socket, not a regular file: not read"
    assert reasons["i-folder.yaml"] == "skipped: a folder, not a regular file: not read"
    if device:
        assert reasons["j-device.yaml"] == "skipped: a character device, not a regular file: not read"
    assert items["k-inside.yaml"].key == "case:inner" and items["k-inside.yaml"].suffix == ".yaml"
    assert items["a.yaml"].key == "case:a" and items["a.yaml"].duplicate_of is None
    assert items["l-alias.yaml"].duplicate_of == str(folder / "a.yaml")
    assert "inner.yaml" not in items  # subfolders are not descended
    assert items["b-out.yaml"].key == "file:b-out.yaml"
    none: Any = None  # refused before anything is converted or validated
    refused = prepare(items["b-out.yaml"], none, none)
    assert getattr(refused, "reason", "") == f"{folder / 'b-out.yaml'}: a link out of the source folder: not read"


def test_a_fifo_or_a_device_given_as_the_source_is_refused_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "cases.ndjson"
    os.mkfifo(fifo)
    result = run("ingest", str(fifo), "--server", "http://127.0.0.1:9/fhir", tmp=tmp_path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{fifo}: a FIFO (named pipe), not a regular file: not read" in result.stderr
    registry = tmp_path / "registry.csv"
    os.mkfifo(registry)
    result = run("ingest", str(registry), "--server", "http://127.0.0.1:9/fhir", tmp=tmp_path, timeout=60)
    assert result.returncode == 2 and "registry.csv: a FIFO" in result.stderr, result.stderr
    zero = tmp_path / "zero.ndjson"
    zero.symlink_to("/dev/zero")  # a device the user named: still not read (it never ends)
    result = run("ingest", str(zero), "--server", "http://127.0.0.1:9/fhir", tmp=tmp_path, timeout=60)
    assert result.returncode == 2 and "/dev/zero: a character device" in result.stderr, result.stderr
    assert not list(tmp_path.glob("*.sqlite"))  # refused before a state was made


@pytest.mark.parametrize("command", ["validate", "push", "convert"])
def test_a_fifo_or_a_device_as_the_file_of_a_command_is_exit_2_naming_it(command: str, tmp_path: Path) -> None:
    fifo = tmp_path / "input\x1b[2J.json"
    os.mkfifo(fifo)
    extra = ["--server", "http://127.0.0.1:9/fhir"] if command == "push" else []
    result = run(command, str(fifo), *extra, tmp=tmp_path, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "input\\x1b[2J.json: a FIFO (named pipe), not a regular file: not read" in output
    assert hidden(output) == []
    result = run(command, "/dev/zero", *extra, tmp=tmp_path, timeout=120)
    assert result.returncode == 2 and "/dev/zero: a character device" in result.stdout + result.stderr


def test_read_bounded_refuses_what_is_not_a_regular_file_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "p.json"
    os.mkfifo(fifo)
    for path, kind in ((fifo, "a FIFO"), (Path("/dev/null"), "a character device"), (tmp_path, "a folder")):
        with pytest.raises(Exception, match=kind) as caught:
            read_bounded(path, 100)
        assert getattr(caught.value, "source", None) == str(path)


def refs(doc: dict[str, Any]) -> set[str]:
    bundle = MappingSet.load(DATA_DIR / "mappings").convert(validate_case(doc, source="x"))
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}


def test_an_ingest_prints_one_line_per_item_escaped_and_pushes_nothing_from_outside(
    fhir_server: str, tmp_path: Path
) -> None:
    docs = [c.doc for c in generate(3, seed=131)]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "elsewhere.json").write_text(json.dumps(docs[2]))  # valid: it would be pushed if followed
    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "one.json").write_text(json.dumps(docs[0]))
    (folder / "two\u202eredlof.json").write_text(json.dumps(docs[1]))  # valid, its name reversed on a terminal
    fake = "x\n12 pushed, 0 failed.yaml"
    (folder / fake).write_text("case_id: [unclosed 1\n")  # invalid: named in the summary
    (folder / "y\x1b[2J\x1b[1;1H.yaml").write_text("case_id: [unclosed 2\n")
    (folder / "z\r.yaml").write_text("case_id: [unclosed 3\n")
    (folder / "link-out.json").symlink_to(outside / "elsewhere.json")
    (folder / "broken.yaml").symlink_to(folder / "gone.yaml")
    os.mkfifo(folder / "pipe.yaml")
    (folder / "old\x1b[1m").mkdir()
    (folder / "old\x1b[1m" / "three.json").write_text(json.dumps(docs[2]))  # subfolders are not read
    state = tmp_path / "job.sqlite"

    result = run("ingest", str(folder), "--server", fhir_server, "--state", str(state), tmp=tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr  # some invalid, none failed
    assert hidden(result.stdout) == [] and hidden(result.stderr) == [], (result.stdout, result.stderr)
    assert "ingest: subfolders are not read (these hold case files: old\\x1b[1m)" in result.stderr
    lines = result.stdout.splitlines()
    assert not any(line.startswith("12 pushed") for line in lines)
    invalid = [line for line in lines if line.startswith("  invalid: ")]
    assert len(invalid) == 6, lines  # one line per refused item, no more
    expected = {
        "x\\n12 pushed, 0 failed.yaml": "malformed YAML",
        "y\\x1b[2J\\x1b[1;1H.yaml": "malformed YAML",
        "z\\r.yaml": "malformed YAML",
        "link-out.json": "a link out of the source folder: not read",
        "broken.yaml": "skipped: a broken link",
        "pipe.yaml": "skipped: a FIFO (named pipe), not a regular file: not read",
    }
    for name in expected:  # (a summary line is cut at 240 characters: the reasons are read in the report)
        assert any(line.startswith(f"  invalid: {folder}/{name}: ") for line in invalid), "\n".join(invalid)
    report = json.loads(state.with_name(state.stem + ".report.json").read_bytes())
    assert report["counts"] == {"pushed": 2, "invalid": 6, "failed": 0, "sending": 0, "pending": 0}
    reasons = {row["location"]: row["reason"] for row in report["invalid"]}
    assert reasons.keys() == {f"{folder}/{name}" for name in expected}
    for name, reason in expected.items():
        # the file's name, then the line and column when the reader could tell (file:line:column: ...)
        assert (
            reasons[f"{folder}/{name}"].removeprefix(f"{folder}/{name}").lstrip(":0123456789").startswith(f" {reason}")
        ), reasons[f"{folder}/{name}"]
    assert hidden(state.with_name(state.stem + ".report.json").read_text()) == []
    for ref in refs(docs[2]) - refs(docs[0]) - refs(docs[1]):  # what only the case outside would write
        answer = httpx.get(f"{fhir_server}/{ref}", headers={"Accept": "application/fhir+json"})
        assert answer.status_code in (404, 410), ref


def test_a_file_name_that_is_not_utf8_is_stored_and_reported_escaped(tmp_path: Path) -> None:
    from casebridge.ingest.state import JobState

    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / os.fsdecode(b"bad-\xff.yaml")).write_text("case_id: [unclosed\n")
    items = list(CaseSource(folder, max_bytes=1000))
    assert [i.source for i in items] == [f"{folder}/bad-\\xff.yaml"]
    state = JobState(tmp_path / "job.sqlite")  # a raw name (a lone surrogate) could not be stored: the job crashed
    state.begin_run()
    state.register([(i.key, i.source, i.digest, n) for n, i in enumerate(items)], None)
    assert [row.location for row in state.rows()] == [f"{folder}/bad-\\xff.yaml"]
    state.close()


def test_a_link_whose_folder_is_swapped_after_the_check_is_still_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the check of a link's target and its open, a folder on the way may become a link out: what was
    opened is checked too."""
    import casebridge.ingest.sources as sources

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.yaml").write_text("case_id: from-outside\n")
    folder = tmp_path / "cases"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "inner.yaml").write_text("case_id: inner\n")
    (folder / "link.yaml").symlink_to(Path("sub") / "inner.yaml")
    checked = sources._inside

    def swapped_after_the_check(file: Path, root: Path) -> tuple[Path | None, str]:
        target, why = checked(file, root)
        if file.name == "link.yaml":  # the checked target, then sub swapped for a link out
            (folder / "sub").rename(folder / "was-sub")
            (folder / "sub").symlink_to(outside, target_is_directory=True)
            (outside / "inner.yaml").write_text("case_id: from-outside-too\n")
        return target, why

    monkeypatch.setattr(sources, "_inside", swapped_after_the_check)
    (item,) = CaseSource(folder, max_bytes=1000)
    assert item.suffix == ".refused" and b"from-outside" not in item.data
    assert item.data == b"a link out of the source folder: not read"
