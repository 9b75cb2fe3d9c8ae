"""The shipped views over a FHIR server: every case pushed to an embedded server of the test's own (one transaction
each), the resources fetched back by search, every shipped view run over them.

The server's copies must give the same rows as the Bundles' resources (with their references stored as ``Type/id``,
as tests/unit/test_views_shipped.py checks them against the case files): the same row counts, the same keys, the
references joining, the same values.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from casebridge.fhir.client import FhirClient
from casebridge.fhir.search import Search
from casebridge.views import run_to_dicts
from casebridge.views.shipped import load_shipped_views
from tests.unit.test_views_shipped import server_resources


def _row_key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def test_shipped_views_over_the_server_match_the_case_files(
    empty_fhir_server: str, all_bundles: dict[str, dict[str, Any]]
) -> None:
    plans = load_shipped_views()
    expected_resources = [r for bundle in all_bundles.values() for r in server_resources(bundle)]
    with FhirClient(empty_fhir_server) as client:
        for bundle in all_bundles.values():
            answer = client.transaction(bundle)
            assert all(e["response"]["status"].startswith("201") for e in answer["entry"])
        kinds = sorted({plan.resource for plan in plans.values()})
        stored = {kind: list(client.resources(Search(kind).count(200))) for kind in kinds}

    for kind in kinds:
        assert len(stored[kind]) == sum(r["resourceType"] == kind for r in expected_resources), kind
    for name, plan in plans.items():
        from_server = list(run_to_dicts(plan, stored[plan.resource]))
        from_bundles = list(run_to_dicts(plan, [r for r in expected_resources if r["resourceType"] == plan.resource]))
        assert len(from_server) == len(from_bundles), name
        assert Counter(map(_row_key, from_server)) == Counter(map(_row_key, from_bundles)), name

    # The keys join on the server's data: every subject is a patient row, every report result an observation row.
    patients = {r["patient_id"] for r in run_to_dicts(plans["patient"], stored["Patient"])}
    observations = {r["observation_id"] for r in run_to_dicts(plans["observation"], stored["Observation"])}
    assert len(patients) == len(all_bundles)
    for name in ("condition", "observation", "diagnostic_report", "imaging_study", "medication", "procedure"):
        plan = plans[name]
        subjects = {r["subject_ref"] for r in run_to_dicts(plan, stored[plan.resource])}
        # Every case has conditions, observations and reports; not every case has a medication or a procedure.
        assert (
            subjects == patients if name in ("condition", "observation", "diagnostic_report") else subjects < patients
        )
    links = list(run_to_dicts(plans["report_result"], stored["DiagnosticReport"]))
    assert len(links) == 183
    assert {r["result_ref"] for r in links} <= observations
