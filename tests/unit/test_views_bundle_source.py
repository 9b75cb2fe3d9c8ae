"""A converted transaction Bundle as a view source: its urn:uuid references are read as the server stores them
(``Type/id``), so every shipped view gives the same rows over the Bundle file as over the resources the server
keeps (tests/unit/test_views_shipped.py's ``server_resources``), keys included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from casebridge.views import LocalSource, run_to_dicts
from casebridge.views.shipped import load_shipped_views
from tests.unit.test_views_shipped import server_resources


def test_views_over_a_converted_bundle_give_the_servers_keys(
    all_bundles: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    plans = load_shipped_views()
    for case, bundle in all_bundles.items():
        path = tmp_path / f"{case}.json"
        path.write_text(json.dumps(bundle))
        stored = server_resources(bundle)
        for name, plan in plans.items():
            from_file = run_to_dicts(plan, LocalSource(path).resources(plan.resource, None))
            assert from_file == run_to_dicts(plan, stored), (case, name)
    # The references were urn:uuid: without the rewrite, no subject would have a key.
    rows = run_to_dicts(plans["condition"], LocalSource(path).resources("Condition", None))
    assert rows and all(r["subject_ref"] for r in rows)
    assert any(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])


def test_a_reference_to_no_entry_and_an_entry_without_id_stay_as_they_are(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient"}},
            {"fullUrl": "urn:uuid:q", "resource": {"resourceType": "Patient", "id": "q1"}},
            {
                "fullUrl": "urn:uuid:o",
                "resource": {
                    "resourceType": "Observation",
                    "id": "o1",
                    "subject": {"reference": "urn:uuid:p"},
                    "focus": [{"reference": "urn:uuid:q"}, {"reference": "urn:uuid:elsewhere"}],
                    "derivedFrom": [{"reference": "Observation/x", "display": "urn:uuid:q"}],
                },
            },
        ],
    }
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bundle))
    (observation,) = [r for r in LocalSource(path).resources("Observation", None) if r["resourceType"] == "Observation"]
    assert observation["subject"] == {"reference": "urn:uuid:p"}
    assert observation["focus"] == [{"reference": "Patient/q1"}, {"reference": "urn:uuid:elsewhere"}]
    assert observation["derivedFrom"] == [{"reference": "Observation/x", "display": "urn:uuid:q"}]
