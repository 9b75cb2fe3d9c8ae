"""Rewrite the golden files of tests/golden/ from the current mappings: run after an intended mapping change
(`make golden`), then review the diff (`git diff tests/golden`) and commit it with the change.

    .venv/bin/python scripts/update_golden.py

The findings of the conformance slices (tests/golden/conformance-findings.json) are rewritten too. Each golden
case's Bundle is converted and masked exactly as tests/unit/test_golden.py compares it (the paths of
tests/golden/VOLATILE_PATHS); a file is written only when it differs. The test never writes: it fails on any
difference, so a golden file changes only by this script.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from casebridge.config import Settings  # noqa: E402
from casebridge.mapping.engine import MappingSet  # noqa: E402
from tests.conftest import TERMINOLOGY  # noqa: E402
from tests.unit import test_conformance_findings as conformance  # noqa: E402
from tests.unit.test_golden import GOLDEN_CASES, golden_file, render  # noqa: E402


def main() -> int:
    mappings = MappingSet.load(Settings().mappings_dir, terminology=TERMINOLOGY)
    changed = 0
    for case_file in GOLDEN_CASES:
        golden = golden_file(case_file)
        rendered = render(mappings, case_file)
        if golden.is_file() and golden.read_bytes() == rendered:
            continue
        golden.write_bytes(rendered)
        changed += 1
        print(f"wrote {golden.relative_to(ROOT)}")
    # Our validator's errors on the HL7 conformance slices (tests/unit/test_conformance_findings.py).
    findings = conformance.render(conformance.base_index())
    if not (conformance.GOLDEN.is_file() and conformance.GOLDEN.read_bytes() == findings):
        conformance.GOLDEN.write_bytes(findings)
        changed += 1
        print(f"wrote {conformance.GOLDEN.relative_to(ROOT)}")
    print(f"golden: {changed} of {len(GOLDEN_CASES) + 1} files rewritten; review them with git diff tests/golden")
    return 0


if __name__ == "__main__":
    sys.exit(main())
