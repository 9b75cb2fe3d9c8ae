"""casebridge.files in the test process (the CLI tests run it in subprocesses, out of a mutation run's sight):
names escaped for printing, JSON safe for terminals, bounded reads of regular files only, all-or-nothing writes."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from casebridge import files
from casebridge.errors import InputError
from casebridge.files import json_for_terminals, kind_of, open_regular, read_at_most, read_bounded, shown


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain name.json", "plain name.json"),
        ("a\nb\tc\rd", "a\\nb\\tc\\rd"),
        ("x\x1b[2J", "x\\x1b[2J"),
        ("x\x85y\x7f", "x\\x85y\\x7f"),  # C1 and DEL
        ("a\u202eb\u200b", "a\\u202eb\\u200b"),  # bidi override, zero width space
        ("a\U000e0001", "a\\U000e0001"),  # a format character beyond the BMP
        ("a\u2028b", "a\\u2028b"),
        (os.fsdecode(b"n\x80\xff"), "n\\x80\\xff"),  # bytes that are not UTF-8, first and last of the range
        ("n\udc7f\udd00", "n\\udc7f\\udd00"),  # lone surrogates just outside it
        ("é ü 中 \u3000", "é ü 中 \u3000"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_shown_escapes_what_a_terminal_acts_on_and_nothing_else(value: str, expected: str) -> None:
    assert shown(value) == expected
    assert shown(expected) == expected  # escaping twice changes nothing


def test_shown_keeps_the_programs_own_line_breaks_when_asked() -> None:
    assert shown("line one\nline two\x1b", keep_newlines=True) == "line one\nline two\\x1b"
    assert shown("line one\nline two", keep_newlines=True) == "line one\nline two"
    assert shown(Path("dir") / "a\nb") == "dir/a\\nb"


def test_json_for_terminals_escapes_hidden_characters_and_keeps_the_json() -> None:
    data = '{"a": "x\x7f\x85\u202e\U000e0001 é \u3000"}'.encode()
    out = json_for_terminals(data)
    assert out == b'{"a": "x\\u007f\\u0085\\u202e\\udb40\\udc01 \xc3\xa9 \xe3\x80\x80"}'
    import json

    assert json.loads(out) == json.loads(data)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [
        (stat.S_IFDIR, "a folder"),
        (stat.S_IFIFO, "a FIFO (named pipe)"),
        (stat.S_IFSOCK, "a socket"),
        (stat.S_IFCHR, "a character device"),
        (stat.S_IFBLK, "a block device"),
        (stat.S_IFLNK, "a link"),
        (0, "not a regular file"),
    ],
)
def test_kind_of_names_each_kind(mode: int, kind: str) -> None:
    assert kind_of(mode | 0o644) == kind


def _refused(path: Path, message: str, **options: bool) -> None:
    with pytest.raises(InputError) as caught:
        open_regular(path, **options)
    assert str(caught.value) == message
    assert caught.value.source == shown(path)


def test_open_regular_follows_links_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "case.json"
    target.write_bytes(b"0123456789")
    link = tmp_path / "link\x1b.json"
    link.symlink_to(target)
    fd, status = open_regular(link)
    assert status.st_ino == target.stat().st_ino
    assert read_at_most(fd, 3) == b"012"  # a limit is kept, and the descriptor is readable
    _refused(link, "a link, not a regular file: not read", follow=False)
    fd, _ = open_regular(target, follow=False)
    assert read_at_most(fd, 100) == b"0123456789"


def test_open_regular_names_a_missing_file_and_other_errors(tmp_path: Path) -> None:
    _refused(tmp_path / "missing\n.json", "no such file")
    (tmp_path / "file").write_text("x")
    _refused(tmp_path / "file" / "below", "cannot read the file: Not a directory")


def test_open_regular_refuses_a_file_swapped_between_the_check_and_the_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = tmp_path / "checked.json"
    checked.write_text("{}")
    other = tmp_path / "other.json"
    other.write_text("{}")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    real_stat = os.stat

    def stat_of_checked(path: object, *, follow_symlinks: bool = True) -> os.stat_result:
        return real_stat(checked)

    monkeypatch.setattr(files.os, "stat", stat_of_checked)
    # A regular file of another inode, and a FIFO: opened without blocking (O_NONBLOCK), then refused.
    _refused(other, "the file changed while it was opened: not read")
    _refused(fifo, "the file changed while it was opened: not read")
    # A link where the check saw a regular file: not followed when links are refused (O_NOFOLLOW).
    link = tmp_path / "link.json"
    link.symlink_to(checked)
    _refused(link, "cannot read the file: Too many levels of symbolic links", follow=False)


def test_read_bounded_reads_up_to_the_limit_and_refuses_one_byte_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big\x1b.json"
    path.write_bytes(b"x" * 1000)
    assert read_bounded(path, 1000) == b"x" * 1000
    with pytest.raises(InputError) as caught:
        read_bounded(path, 999)
    assert str(caught.value) == "the file is larger than the limit of 999 bytes"
    assert caught.value.source == shown(path)
    with pytest.raises(InputError, match="limit of 1,000 bytes"):
        path.write_bytes(b"x" * 1001)
        read_bounded(path, 1000)
    asked = []
    real = files.read_at_most
    monkeypatch.setattr(files, "read_at_most", lambda fd, limit: asked.append(limit) or real(fd, limit))
    with pytest.raises(InputError):
        read_bounded(path, 10)
    assert asked == [11]  # never more than one byte past the limit is read


def test_read_bounded_names_a_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad\x1b.json"
    path.write_text("{}")

    def failing(fd: int, limit: int) -> bytes:
        os.close(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files, "read_at_most", failing)
    with pytest.raises(InputError) as caught:
        read_bounded(path, 10)
    assert str(caught.value) == "cannot read the file: Input/output error"
    assert caught.value.source == shown(path)


def test_write_atomically_writes_everything_beside_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "new" / "folder" / "out.json"
    files.write_atomically(path, b"first")
    assert path.read_bytes() == b"first"
    synced = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    renamed: list[tuple[str, Path]] = []

    def replace(src: str, dst: Path) -> None:
        renamed.append((src, dst))
        assert Path(src).read_bytes() == b"second"  # complete and synced before the rename
        assert synced
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    files.write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    ((tmp, target),) = renamed
    assert target == path and Path(tmp).parent == path.parent and Path(tmp).name.startswith(".out.json.")
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"]


def test_write_atomically_leaves_the_old_file_and_no_temporary_one_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.json"
    path.write_bytes(b"old")

    def failing(src: str, dst: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", failing)
    with pytest.raises(OSError, match="No space left"):
        files.write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
