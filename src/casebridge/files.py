"""Reading and writing files safely: bounded reads of regular files only, all-or-nothing writes; file names
made safe to print; CSV cells a spreadsheet cannot run as formulas."""

from __future__ import annotations

import os
import re
import stat
import tempfile
import unicodedata
from pathlib import Path

from casebridge.errors import InputError

# Characters a terminal acts on or that hide or reorder text: controls (C0, DEL, C1), format characters (bidi
# overrides and isolates, zero-width ones), line and paragraph separators; and the lone surrogates a name that
# is not UTF-8 decodes to.
_HIDDEN = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_NOT_PLAIN = re.compile(r"[^\x20-\x7e\n]")


def shown(value: str | os.PathLike[str], *, keep_newlines: bool = False) -> str:
    """``value`` (a file name, a path, a message naming one) as it may be printed: every control, format or
    separator character escaped (``\\n``, ``\\x1b``, ``\\u202e``), so a name cannot fake an output line, move
    the cursor or reverse the text after it. A byte of a name that is not UTF-8 is shown as ``\\xNN``.
    ``keep_newlines``: for a message whose line breaks are the program's own. Backslashes are left alone, so
    escaping twice changes nothing (text already escaped can pass through again)."""
    text = os.fspath(value)
    if text.isprintable() or (keep_newlines and text.replace("\n", "").isprintable()):
        return text
    out = []
    for char in text:
        if char.isprintable() or (keep_newlines and char == "\n") or unicodedata.category(char) not in _HIDDEN:
            out.append(char)
        elif char in _NAMED:
            out.append(_NAMED[char])
        elif 0xDC80 <= ord(char) <= 0xDCFF:  # a byte os.fsdecode could not decode (surrogateescape)
            out.append(f"\\x{ord(char) - 0xDC00:02x}")
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out)


def json_for_terminals(data: bytes) -> bytes:
    """JSON text with the characters ``shown`` escapes written as ``\\uXXXX`` escapes: the same JSON once
    parsed, but printing it (``cat report.json``) cannot move the cursor or reorder text. JSON escapes C0
    controls itself; not DEL, C1 controls or format characters."""
    text = data.decode()

    def escape(match: re.Match[str]) -> str:
        char = match.group()
        if unicodedata.category(char) not in _HIDDEN:
            return char
        encoded = char.encode("utf-16-be", "surrogatepass")
        return "".join(f"\\u{int.from_bytes(encoded[i : i + 2]):04x}" for i in range(0, len(encoded), 2))

    return _NOT_PLAIN.sub(escape, text).encode()


def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, for a message."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISLNK(mode):
        return "a link"
    return "not a regular file"


def open_regular(path: Path, *, follow: bool = True) -> tuple[int, os.stat_result]:
    """An open descriptor of ``path`` and its status, if it is a regular file; else ``InputError`` saying what
    it is. Checked before opening (a FIFO's open blocks until a writer comes; a device's may act), and again
    on the descriptor: the name may be swapped for something else in between. ``follow=False``: a link is
    refused too (ELOOP)."""
    source = shown(path)
    try:
        status = os.stat(path, follow_symlinks=follow)
        if not stat.S_ISREG(status.st_mode):
            raise InputError(f"{kind_of(status.st_mode)}, not a regular file: not read", source=source)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise InputError("no such file", source=source) from exc
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", source=source) from exc
    opened = os.fstat(fd)
    if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (status.st_dev, status.st_ino):
        os.close(fd)
        raise InputError("the file changed while it was opened: not read", source=source)
    return fd, opened


def read_at_most(fd: int, limit: int) -> bytes:
    """At most ``limit`` bytes of an open file (fewer at its end); the descriptor is closed."""
    with os.fdopen(fd, "rb") as fh:
        return fh.read(limit)


def read_bounded(path: Path, limit: int) -> bytes:
    """The file's bytes, refusing anything that is not a regular file or is larger than ``limit``.

    Reads at most ``limit + 1`` bytes, so neither a huge file nor a device (/dev/zero) nor a pipe that
    never ends is pulled into memory to be rejected; a FIFO or a device is never opened.
    """
    fd, _ = open_regular(path)
    try:
        data = read_at_most(fd, limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read the file: {exc.strerror}", source=shown(path)) from exc
    if len(data) > limit:
        raise InputError(f"the file is larger than the limit of {limit:,} bytes", source=shown(path))
    return data


def write_atomically(path: Path, data: bytes) -> None:
    """Write all or nothing: a temporary file beside the target, then an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# What a spreadsheet may run as a formula: =, +, -, @ (or their full-width forms) after any white space, or a
# leading tab or CR.
_FORMULA = re.compile(r"\s*[=+\-@\uff1d\uff0b\uff0d\uff20]|[\t\r]")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


def csv_cell(text: str) -> str:
    """``text`` as a CSV cell: one a spreadsheet would evaluate as a formula gets a leading apostrophe (formula
    injection); a plain negative number is left as it is."""
    if _FORMULA.match(text) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text
