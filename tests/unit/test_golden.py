"""Golden files: the Bundle of every fixture case, committed in tests/golden/.

The test only compares: it fails when a Bundle differs from its golden file, and never writes one. After an
intended mapping change, regenerate with ``make golden`` (scripts/update_golden.py) and review the diff.
"""

from __future__ import annotations

import datetime as dt
import difflib
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


def golden_file(case_file: Path) -> Path:
    return GOLDEN / f"{case_file.stem}.bundle.json"


def render(mappings: MappingSet, case_file: Path) -> bytes:
    """The case's Bundle as its golden file holds it: converted at the real time, the volatile paths masked."""
    # The real conversion time, not a fixed one: the mask list must be what makes this stable.
    bundle = mask(mappings.convert(load_case(case_file)), volatile_paths())
    return orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"


@pytest.mark.parametrize("case_file", GOLDEN_CASES, ids=[p.name for p in GOLDEN_CASES])
def test_bundle_matches_golden_file(mappings: MappingSet, case_file: Path) -> None:
    rendered = render(mappings, case_file)
    golden = golden_file(case_file)
    assert golden.is_file(), f"no golden file {golden.name}: run make golden and review it"
    expected = orjson.dumps(orjson.loads(golden.read_bytes()), option=orjson.OPT_INDENT_2) + b"\n"
    if expected != rendered:
        diff = difflib.unified_diff(
            expected.decode().splitlines(), rendered.decode().splitlines(), golden.name, "converted", lineterm="", n=2
        )
        pytest.fail(
            f"{case_file.name} differs from {golden.name} (if the change is intended: make golden, then review "
            "the diff):\n" + "\n".join(list(diff)[:80])
        )


def leaves(node: Any, path: str = "") -> dict[str, Any]:
    """Every scalar of a document by its path."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in leaves(value, f"{path}.{key}" if path else key).items()}
    if isinstance(node, list):
        return {k: v for i, value in enumerate(node) for k, v in leaves(value, f"{path}[{i}]").items()}
    return {path: node}


@pytest.mark.parametrize("case_file", GOLDEN_CASES, ids=[p.name for p in GOLDEN_CASES])
def test_provenance_recorded_is_the_conversion_time(mappings: MappingSet, case_file: Path) -> None:
    """The golden files mask Provenance.recorded: here it must be the time given to convert, and two conversions
    at different times differ only there (and in the Provenance narrative that shows it)."""
    case = load_case(case_file)
    times = [dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2027, 3, 4, 5, 6, 7, tzinfo=dt.UTC)]
    bundles = [mappings.convert(case, recorded=t) for t in times]
    for bundle, time in zip(bundles, times, strict=True):
        provenances = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
        assert provenances, "no Provenance in the Bundle"
        assert [p["recorded"] for p in provenances] == [time.isoformat(timespec="seconds")] * len(provenances)
    first, second = leaves(bundles[0]), leaves(bundles[1])
    assert first.keys() == second.keys()
    differing = {path for path in first if first[path] != second[path]}
    provenance_paths = {
        f"entry[{i}].resource.{name}"
        for i, e in enumerate(bundles[0]["entry"])
        if e["resource"]["resourceType"] == "Provenance"
        for name in ("recorded", "text.div")
    }
    assert differing == provenance_paths
    shown = [t.isoformat(timespec="seconds") for t in times]
    assert all(first[p].replace(shown[0], shown[1]) == second[p] for p in differing)


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
