"""Golden files: the Bundle of every fixture case, committed in tests/golden/.

After an intended mapping change, regenerate with ``UPDATE_GOLDEN=1 make test`` and review the diff.
"""

from __future__ import annotations

import difflib
import os
import re
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from casebridge.mapping.engine import MappingSet
from casebridge.mapping.functions import ID_NAMESPACE, name_uuid, name_uuid_bytes
from tests.conftest import CASE_FILES, FIXTURES, load_case
from tests.paths import TESTS_DIR

GOLDEN = TESTS_DIR / "golden"
MASK = "<volatile>"
# Two of the MACCROBAT fixtures, of shapes the packaged cases lack: a child's tumour staged by CT and PET-CT and
# settled by histopathology, with metastatic disease excluded; and an infection found by ultrasound and endoscopy
# and settled by laparoscopic exploration, with a series of procedures.
GOLDEN_FIXTURES = [FIXTURES / "cases" / "26629302.yaml", FIXTURES / "cases" / "28353561.yaml"]
GOLDEN_CASES = CASE_FILES + GOLDEN_FIXTURES


def volatile_paths() -> list[re.Pattern[str]]:
    lines = (GOLDEN / "VOLATILE_PATHS").read_text().splitlines()
    return [
        re.compile("^" + re.escape(line.strip()).replace(r"\[\*\]", r"\[\d+\]") + "$")
        for line in lines
        if line.strip() and not line.startswith("#")
    ]


def mask(doc: Any, patterns: list[re.Pattern[str]]) -> Any:
    """Mask the values at the volatile paths, and those same values wherever else they appear
    (the conversion time also shows in the Provenance narrative)."""
    values: set[str] = set()

    def collect(node: Any, path: str) -> None:
        if any(p.match(path) for p in patterns):
            values.add(str(node))
        elif isinstance(node, dict):
            for k, v in node.items():
                collect(v, f"{path}.{k}" if path else k)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                collect(v, f"{path}[{i}]")

    def replace(node: Any, path: str) -> Any:
        if any(p.match(path) for p in patterns):
            return MASK
        if isinstance(node, dict):
            return {k: replace(v, f"{path}.{k}" if path else k) for k, v in node.items()}
        if isinstance(node, list):
            return [replace(v, f"{path}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, str):
            for value in values:
                node = node.replace(value, MASK)
        return node

    collect(doc, "")
    return replace(doc, "")


@pytest.mark.parametrize("case_file", GOLDEN_CASES, ids=[p.name for p in GOLDEN_CASES])
def test_bundle_matches_golden_file(mappings: MappingSet, case_file: Path) -> None:
    # The real conversion time, not a fixed one: the mask list must be what makes this stable.
    bundle = mask(mappings.convert(load_case(case_file)), volatile_paths())
    golden = GOLDEN / f"{case_file.stem}.bundle.json"
    rendered = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_bytes(rendered)
    assert golden.is_file(), f"no golden file {golden.name}: run UPDATE_GOLDEN=1 make test and review it"
    expected = orjson.dumps(orjson.loads(golden.read_bytes()), option=orjson.OPT_INDENT_2) + b"\n"
    if expected != rendered:
        diff = difflib.unified_diff(
            expected.decode().splitlines(), rendered.decode().splitlines(), golden.name, "converted", lineterm="", n=2
        )
        pytest.fail(f"{case_file.name} differs from {golden.name}:\n" + "\n".join(list(diff)[:80]))


def test_mask_list_masks_only_what_it_names() -> None:
    patterns = volatile_paths()
    doc = {
        "entry": [
            {
                "resource": {
                    "recorded": "2026-01-01T10:00:00",
                    "id": "x",
                    "text": {"div": "<td>2026-01-01T10:00:00</td><td>2026-01-01</td>"},
                }
            }
        ]
    }
    assert mask(doc, patterns) == {
        "entry": [{"resource": {"recorded": MASK, "id": "x", "text": {"div": f"<td>{MASK}</td><td>2026-01-01</td>"}}}]
    }


@given(st.text())
def test_resource_ids_are_uuid5_of_their_seeds(seed: str) -> None:
    # Ids already sent to servers were made by uuid.uuid5: the faster computation must give the same ones.
    try:
        expected = uuid.uuid5(ID_NAMESPACE, seed)
    except UnicodeEncodeError:  # a lone surrogate: no id either way
        with pytest.raises(UnicodeEncodeError):
            name_uuid(seed)
        return
    assert name_uuid(seed) == str(expected)
    assert int.from_bytes(name_uuid_bytes(seed)) == expected.int
