"""The CSV and view writers' rules, exactly: cells defused, line ends, quoting, typed values."""

from __future__ import annotations

from casebridge.pull import csv_rows


def test_csv_rows_defuses_formulas_and_ends_lines_with_crlf() -> None:
    assert csv_rows([["a", "=1+1"], ["+x", "b,c"]]) == "a,'=1+1\r\n'+x,\"b,c\"\r\n"
