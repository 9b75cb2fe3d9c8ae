"""validate and convert name their FILE escaped in every message: a name's control or bidi characters never
reach the terminal raw."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from tests.paths import PROJECT_ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "casebridge", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=dict(os.environ),
        timeout=120,
        check=False,
    )


def hidden(text: str) -> list[str]:
    return [c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")]


@pytest.mark.parametrize(
    ("command", "content", "words"),
    [
        ("validate", "{", "malformed JSON"),
        ("validate", '{"resourceType": "Nope"}', "unknown resourceType"),
        ("validate", "[1]", "not a FHIR resource"),
        ("convert", "{", "malformed JSON"),
    ],
)
def test_a_file_name_is_escaped_in_the_message_about_it(command: str, content: str, words: str, tmp_path: Path) -> None:
    file = tmp_path / "bad\x1b[2J\u202e\nline.json"
    file.write_text(content)
    result = run(command, str(file))
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    # The file's name, escaped, then where in it when that is known (file:line:column), then what is wrong.
    name = re.escape(f"{tmp_path}/bad\\x1b[2J\\u202e\\nline.json")
    assert re.search(f"{name}(:[0-9]+:[0-9]+)?: {re.escape(words)}", output), output
    assert hidden(output) == [], output
