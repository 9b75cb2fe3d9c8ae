"""CSV cells a spreadsheet would run as formulas (casebridge.files.csv_cell, used by pull's CSV and the views' CSV):
each leading character a spreadsheet reads as a formula, or a TAB or CR that starts one, gets an apostrophe; a
plain negative number, a value starting with a digit and plain text stay as they are."""

from __future__ import annotations

import pytest

from casebridge.files import csv_cell

# Each value as written, and as the cell must read. Pull's and the views' CSV tests write these end to end.
CELLS = [
    ("=HYPERLINK(1)", "'=HYPERLINK(1)"),
    ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("\tcmd", "'\tcmd"),
    ("\rcmd", "'\rcmd"),
    (" =1+1", "' =1+1"),  # after white space a spreadsheet still reads a formula
    ("\u3000=1+1", "'\u3000=1+1"),
    ("\uff1d1+1", "'\uff1d1+1"),  # full-width forms
    ("\uff0b1", "'\uff0b1"),
    ("+5", "'+5"),  # only a minus number is read as a plain number
    ("-5", "-5"),
    ("-2.5", "-2.5"),
    ("5-3", "5-3"),
    ("2026-01-01", "2026-01-01"),
    ("Dystrophic calcification", "Dystrophic calcification"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "cell"), CELLS)
def test_csv_cell(text: str, cell: str) -> None:
    assert csv_cell(text) == cell
