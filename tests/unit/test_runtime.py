"""Process-level tuning (service/runtime.py), in a fresh process so this one's collector is left alone."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import SEED
from tests.paths import PROJECT_ROOT

SCRIPT = """
import gc, json, sys
from casebridge.api.routes.cases import convert_to_json
from casebridge.api.workers import Workbench
from casebridge.config import Settings
from casebridge.runtime import settle_heap

bench = Workbench.build(Settings())
data = open(sys.argv[1], "rb").read()
counts = []
gc.callbacks.append(lambda phase, info: phase == "start" and counts.append(info["generation"]))

def young_collections():
    counts.clear()
    for _ in range(8):
        body, issues = convert_to_json(bench, data, "application/yaml")
        assert body and len(issues) == 2
    return counts.count(0)

before = young_collections()
settle_heap()
print(json.dumps({"before": before, "after": young_collections(), "frozen": gc.get_freeze_count()}))
"""


def test_after_settling_the_collector_stays_out_of_a_case() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(SEED)], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    result = json.loads(out.splitlines()[-1])
    assert result["before"] >= 8, result  # the default threshold: about one young collection per case
    assert result["after"] == 0, result
    assert result["frozen"] > 100_000, result  # the definitions out of its sight
